//! Replicating changes: eager pushes (sent to every peer, received in
//! batches), the Automerge sync protocol, and restarting sync
//! conversations that went quiet.

use automerge::{AutomergeError, Change, ReadDoc};
use murmur_wire::{DocumentId, Message, NodeId};

use super::{Origin, Replica};
use crate::document::{self, SyncReply};
use crate::load::Parked;
use crate::retry::MAX_ATTEMPTS;
use crate::{FaultInjection, ReplicaError, Time};

/// The most pushed changes [`Replica::handle_messages`] applies in one
/// Automerge batch: a bound on one batch's time (each message is bounded by
/// its frame already).
pub const MAX_BATCHED_CHANGES: usize = 4096;

/// Pushes of one peer about one document gathered by
/// [`Replica::handle_messages`], to apply in one batch.
pub(super) struct PushBatch {
    from: NodeId,
    doc: DocumentId,
    /// Changes in all its messages.
    changes: usize,
    /// Each message's changes, in arrival order.
    messages: Vec<Vec<Vec<u8>>>,
}

impl PushBatch {
    /// Adds one `Changes` message to the open batch of the same peer and
    /// document, or opens one (after the others, and when the open one
    /// would pass [`MAX_BATCHED_CHANGES`]).
    pub(super) fn gather(
        batches: &mut Vec<PushBatch>,
        from: NodeId,
        doc: DocumentId,
        changes: Vec<Vec<u8>>,
    ) {
        let open = batches.iter_mut().find(|batch| {
            batch.from == from
                && batch.doc == doc
                && batch.changes + changes.len() <= MAX_BATCHED_CHANGES
        });
        match open {
            Some(batch) => {
                batch.changes += changes.len();
                batch.messages.push(changes);
            }
            None => batches.push(PushBatch {
                from,
                doc,
                changes: changes.len(),
                messages: vec![changes],
            }),
        }
    }
}

impl Replica {
    pub(super) fn apply_batches(
        &mut self,
        now: Time,
        batches: &mut Vec<PushBatch>,
        errors: &mut Vec<(NodeId, ReplicaError)>,
    ) {
        for PushBatch {
            from,
            doc,
            messages,
            ..
        } in batches.drain(..)
        {
            let rejected = self.receive_changes(now, from, doc, messages);
            errors.extend(rejected.into_iter().map(|error| (from, error)));
        }
    }

    /// Applies the changes of one or more `Changes` messages from `from`
    /// about `doc`, in arrival order, in one Automerge batch: applying
    /// walks the document's ops at each changed key once per batch, so a
    /// batch of a hundred costs about what one change does. A message with
    /// an undecodable change is rejected whole; the others still apply.
    /// Returns one error per rejected message.
    pub(super) fn receive_changes(
        &mut self,
        now: Time,
        from: NodeId,
        doc: DocumentId,
        messages: Vec<Vec<Vec<u8>>>,
    ) -> Vec<ReplicaError> {
        let _span =
            tracing::debug_span!("receive_changes", peer = %from.short(), doc = %doc).entered();
        let invalid = |reason: String| ReplicaError::InvalidPeerData {
            peer: from,
            doc,
            what: "change",
            reason,
        };
        let Some(messages) = self.unless_loading(from, doc, messages) else {
            return Vec::new();
        };
        let (mut decoded, mut errors) = decode_pushes(messages, invalid);
        if decoded.is_empty() {
            return errors;
        }
        self.metrics.pushes_batched += decoded.len() as u64 - 1;
        let count: usize = decoded.iter().map(Vec::len).sum();
        if self
            .config
            .planted(FaultInjection::BatchAppliesFirstPushOnly)
        {
            decoded.truncate(1);
        }
        let drop_orphans = self
            .config
            .planted(FaultInjection::DropPushWithMissingDependencies);
        let observed = self.events.observed(doc);
        let document = match self.admitted(from, doc) {
            Ok(Some(document)) => document,
            Ok(None) => return errors,
            Err(error) => {
                errors.push(error);
                return errors;
            }
        };
        let before = document.heads();
        let mut log = automerge::PatchLog::new(observed);
        let applied = document.apply_verified(|document| {
            apply_pushes(&mut document.doc, decoded, &mut log, drop_orphans)
        });
        let (rejected, authors) = match applied {
            Ok(applied) => applied,
            Err(reason) => {
                self.rebuild_document(doc, Some(from), &reason);
                errors.push(invalid(reason));
                return errors;
            }
        };
        errors.extend(rejected.into_iter().map(|error| invalid(error.to_string())));
        let patches = observed.then(|| document.doc.make_patches(&mut log));
        let after = document.heads();
        let missing = !document.doc.get_missing_deps(&[]).is_empty();
        self.metrics.changes_received += count as u64;
        if before != after {
            self.changed(now, doc, Origin::Remote(from), patches);
            self.owe_heads(doc, from, &authors);
        }
        if missing {
            // Keep the change (Automerge queues it) and fetch what it needs.
            tracing::debug!(peer = %from.short(), doc = %doc, "pushed change misses dependencies; syncing");
            self.metrics.missing_dependency_syncs += 1;
            self.sync_with(doc, from, true);
        }
        errors
    }

    /// `messages` from `from` about `doc`, unless `doc` is loading: then
    /// each waits for the load as the message it came in.
    fn unless_loading(
        &mut self,
        from: NodeId,
        doc: DocumentId,
        messages: Vec<Vec<Vec<u8>>>,
    ) -> Option<Vec<Vec<Vec<u8>>>> {
        if let Err(ReplicaError::Loading(_)) = self.resident(doc) {
            for changes in messages {
                let message = Message::Changes { doc, changes };
                self.park(doc, Parked::Message { from, message });
            }
            return None;
        }
        Some(messages)
    }

    pub(super) fn receive_sync(
        &mut self,
        now: Time,
        from: NodeId,
        doc: DocumentId,
        bytes: &[u8],
    ) -> Result<(), ReplicaError> {
        let _span =
            tracing::debug_span!("receive_sync", peer = %from.short(), doc = %doc).entered();
        if let Err(ReplicaError::Loading(_)) = self.resident(doc) {
            let message = Message::Sync {
                doc,
                message: bytes.to_vec(),
            };
            self.park(doc, Parked::Message { from, message });
            return Ok(());
        }
        let invalid = |reason: String| ReplicaError::InvalidPeerData {
            peer: from,
            doc,
            what: "sync message",
            reason,
        };
        let message =
            automerge::sync::Message::decode(bytes).map_err(|e| invalid(e.to_string()))?;
        self.retries.heard(doc, from);
        let observed = self.events.observed(doc);
        let Some(document) = self.admitted(from, doc)? else {
            return Ok(());
        };
        let before = document.heads();
        let their_before = document.sync.entry(from).or_default().their_heads.clone();
        // Automerge may have applied part of the message before failing; the
        // heads comparison below still records what changed.
        let mut log = automerge::PatchLog::new(observed);
        // Outer `Err`: the document is broken in memory (rebuilt below);
        // inner: the message is refused.
        let outcome = document.apply_verified(|document| {
            crate::foreign::check_sync_message(&document.doc, &message)?;
            let state = document.sync.entry(from).or_default();
            automerge::sync::SyncDoc::receive_sync_message_log_patches(
                &mut document.doc,
                state,
                message,
                &mut log,
            )
            .map_err(|error| error.to_string())
        });
        let (result, authors) = match outcome {
            Ok(outcome) => outcome,
            Err(reason) => {
                self.rebuild_document(doc, Some(from), &reason);
                return Err(invalid(reason));
            }
        };
        let patches = observed.then(|| document.doc.make_patches(&mut log));
        let after = document.heads();
        let reply = document.after_sync_message(from, &before, their_before.as_deref());
        self.mark_sync_dirty(doc, from);
        self.metrics.sync_messages_received += 1;
        if before != after {
            self.changed(now, doc, Origin::Remote(from), patches);
            self.owe_heads(doc, from, &authors);
        }
        result.map_err(invalid)?;
        self.answer_sync(doc, from, reply);
        Ok(())
    }

    /// Goes on with the sync conversation with `from` about `doc` as
    /// `reply` says, after a sync message of it.
    fn answer_sync(&mut self, doc: DocumentId, from: NodeId, reply: SyncReply) {
        match reply {
            SyncReply::Continue => self.sync_with(doc, from, false),
            SyncReply::Resend if self.config.planted(FaultInjection::NoSyncResend) => {}
            SyncReply::Resend => {
                tracing::debug!(peer = %from.short(), doc = %doc, "sync stalled; sending again what may have been lost");
                self.metrics.sync_restarts += 1;
                self.sync_with(doc, from, false);
            }
            SyncReply::Quiet => {
                tracing::debug!(peer = %from.short(), doc = %doc, "sync stalled again; leaving it to anti-entropy");
            }
        }
    }

    /// Eagerly pushes one new change to every connected peer, joining it to
    /// the push of the same document still queued for that peer (wherever
    /// it is in the queue, up to [`Config::max_push_batch`](crate::Config::max_push_batch) changes): with
    /// many peers and documents, changes made in a burst still travel in
    /// few messages.
    pub(super) fn push_to_all(&mut self, doc: DocumentId, change: Vec<u8>) {
        let peers: Vec<NodeId> = self.peers.iter().copied().collect();
        let batch = self.config.push_batch();
        let skip_busy = self.config.planted(FaultInjection::SkipPushToBusyPeer);
        let max_bytes = self.config.max_outbox_bytes_per_peer;
        for peer in peers {
            let queued = self.outbox.queued_bytes(peer);
            if skip_busy && queued > 0 {
                continue;
            }
            let fits = queued + change.len() <= max_bytes;
            if fits && self.outbox.join_push(doc, peer, &change, batch) {
                self.metrics.changes_pushed += 1;
                continue;
            }
            let message = Message::Changes {
                doc,
                changes: vec![change.clone()],
            };
            if self.enqueue(peer, message) {
                self.metrics.changes_pushed += 1;
            }
        }
    }

    /// Sends `peer` the next sync message for `doc`, if there is one.
    /// `reset` first drops the in-flight part of the sync state, so a
    /// message is sent even if an earlier one is (or was lost) in flight.
    pub(super) fn sync_with(&mut self, doc: DocumentId, peer: NodeId, reset: bool) {
        match self.resident(doc) {
            Ok(_) => {}
            Err(ReplicaError::Loading(_)) => {
                self.park(doc, Parked::SyncWith { peer, reset });
                return;
            }
            Err(error) => {
                tracing::debug!(doc = %doc, %error, "document does not load; not syncing it");
                return;
            }
        }
        let Some(document) = self.docs.get_mut(&doc) else {
            return;
        };
        if reset {
            document.restart_sync(peer);
        }
        let state = document.sync.entry(peer).or_default();
        if let Some(bytes) = document::next_sync_message(&document.doc, state) {
            let (wait, limit) = (self.config.sync_retry, self.config.max_watched_syncs);
            self.retries.spoke(self.now, doc, peer, wait, limit);
            self.mark_sync_dirty(doc, peer);
            if self.enqueue(
                peer,
                Message::Sync {
                    doc,
                    message: bytes,
                },
            ) {
                self.metrics.sync_messages_sent += 1;
            }
        }
    }

    /// Restarts the sync conversations whose peer stayed silent past their
    /// deadline, unless they ended in agreement or were restarted too often
    /// (then anti-entropy will find them). At most 256 per call: an engine
    /// turn is bounded.
    pub(super) fn restart_quiet_syncs(&mut self, now: Time) {
        const PER_TURN: usize = 256;
        let due = self.retries.take_due(now, PER_TURN);
        if self.config.planted(FaultInjection::NoSyncRetry) {
            return;
        }
        for (doc, peer, attempts) in due {
            if !self.peers.contains(&peer) || attempts >= MAX_ATTEMPTS {
                continue;
            }
            let settled = self.docs.get(&doc).is_some_and(|document| {
                let ours = document.heads();
                document
                    .sync
                    .get(&peer)
                    .is_some_and(|state| state.their_heads.as_deref() == Some(ours.as_slice()))
            });
            if settled {
                continue;
            }
            tracing::debug!(peer = %peer.short(), doc = %doc, attempts, "sync went quiet; restarting it");
            self.metrics.sync_retries += 1;
            self.sync_with(doc, peer, true);
            let wait = self.config.sync_retry;
            self.retries.restarted(now, doc, peer, wait, attempts + 1);
        }
    }
}

/// Decodes each message's changes; a message with an undecodable change is
/// rejected whole (its error from `invalid`), the others kept in order.
fn decode_pushes(
    messages: Vec<Vec<Vec<u8>>>,
    invalid: impl Fn(String) -> ReplicaError,
) -> (Vec<Vec<Change>>, Vec<ReplicaError>) {
    let mut decoded = Vec::with_capacity(messages.len());
    let mut errors = Vec::new();
    for raw in messages {
        let changes = raw
            .into_iter()
            .map(|bytes| Change::from_bytes(bytes).map_err(|e| invalid(e.to_string())))
            .collect::<Result<Vec<Change>, _>>();
        match changes {
            Ok(changes) => decoded.push(changes),
            Err(error) => errors.push(error),
        }
    }
    (decoded, errors)
}

/// Applies several messages' changes to `doc` in one Automerge batch
/// (which walks the ops at each changed key once, however many changes
/// there are). If the batch fails, applies them message by message (what
/// the batch applied is skipped as known), so only the messages at fault
/// are rejected: their errors are returned.
fn apply_pushes(
    doc: &mut automerge::Automerge,
    mut messages: Vec<Vec<Change>>,
    log: &mut automerge::PatchLog,
    drop_orphans: bool,
) -> Vec<PushError> {
    let keep = |doc: &automerge::Automerge, changes: Vec<Change>| {
        if drop_orphans {
            keep_changes_with_dependencies(doc, changes)
        } else {
            changes
        }
    };
    // One message moves into the batch; several are copied, kept to find
    // the one at fault should the batch fail.
    let single = messages.len() == 1;
    let all: Vec<Change> = if single {
        messages.pop().unwrap_or_default()
    } else {
        messages.iter().flatten().cloned().collect()
    };
    let all = keep(doc, all);
    let error = match crate::foreign::check_changes(doc, &all) {
        Ok(()) => match doc.apply_changes_log_patches(all, log) {
            Ok(_) => return Vec::new(),
            Err(error) => PushError::Automerge(error),
        },
        Err(reason) => PushError::Foreign(reason),
    };
    if single {
        return vec![error];
    }
    messages
        .into_iter()
        .filter_map(|changes| {
            let changes = keep(doc, changes);
            if let Err(reason) = crate::foreign::check_changes(doc, &changes) {
                return Some(PushError::Foreign(reason));
            }
            doc.apply_changes_log_patches(changes, log)
                .err()
                .map(PushError::Automerge)
        })
        .collect()
}

/// Why a push was refused.
#[derive(Debug)]
enum PushError {
    /// Automerge refused it.
    Automerge(AutomergeError),
    /// It fails a check Automerge does not make
    /// ([`crate::foreign::check_changes`]).
    Foreign(String),
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Automerge(error) => error.fmt(f),
            PushError::Foreign(reason) => f.write_str(reason),
        }
    }
}

/// The planted bug [`FaultInjection::DropPushWithMissingDependencies`]:
/// keeps, in order, only the changes whose dependencies `doc` (or an
/// earlier kept change) holds.
fn keep_changes_with_dependencies(doc: &automerge::Automerge, changes: Vec<Change>) -> Vec<Change> {
    let mut kept: Vec<Change> = Vec::new();
    for change in changes {
        let known = change.deps().iter().all(|dep| {
            doc.get_change_by_hash(dep).is_some() || kept.iter().any(|k| k.hash() == *dep)
        });
        if known {
            kept.push(change);
        }
    }
    kept
}
