//! The replica: every document a node holds and every rule of replicating
//! them, with no I/O.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use automerge::transaction::{CommitOptions, Transactable, Transaction};
use automerge::{ActorId, AutomergeError, Change, ChangeHash, ReadDoc};
use murmur_store::layout;
use murmur_store::{Storage, StoreError, WriteBatch};
use murmur_wire::{DigestNode, DocumentId, Message, NodeId, MAX_DIGEST_NODES};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::cache::Documents;
use crate::digest::{self, Digest, LeafUpdate, NodeValue, LEAF_LEVEL};
use crate::document::{self, Document, LoadError, SyncReply};
use crate::flush::{Flush, InFlight};
use crate::incarnation;
use crate::load::{Load, Loaded, Loads, Parked, Parking, Residency};
use crate::membership::{Member, Membership, MembershipEvent};
use crate::outbox::Outbox;
use crate::replication::Replication;
use crate::retry::{SyncRetries, MAX_ATTEMPTS};
use crate::{Config, FaultInjection, Metrics, ReplicaError, Time};

/// Identifies one local write, for matching its acknowledgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteId(pub u64);

/// How far a write has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AckLevel {
    /// Applied to the document in memory; lost if the node crashes now.
    Applied,
    /// Written to storage and flushed: it survives a crash.
    Durable,
    /// Durable here, and held by this many peers (each confirmed it after
    /// its own flush).
    Replicated(u32),
}

/// Where a change to a document came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// This node's application.
    Local,
    /// A peer.
    Remote(NodeId),
}

/// Something the application (or the driver) should hear about.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A document's heads moved.
    DocumentChanged {
        /// The document.
        doc: DocumentId,
        /// Its new heads.
        heads: Vec<ChangeHash>,
        /// Who changed it.
        origin: Origin,
        /// What changed, as Automerge patches, if the document is observed
        /// ([`Replica::observe`]): computed from the changes just applied
        /// (Automerge's patch log), so they cost what changed, never a
        /// walk of the whole document. `None` for an unobserved document.
        patches: Option<Vec<automerge::Patch>>,
    },
    /// A local write reached `level`.
    Acknowledged {
        /// The write.
        write: WriteId,
        /// The document it changed.
        doc: DocumentId,
        /// How far it got.
        level: AckLevel,
    },
    /// Membership (SWIM) believes `node` is alive and reachable at `addr`:
    /// the driver may connect to it.
    MemberUp {
        /// The node.
        node: NodeId,
        /// Where it says it can be reached.
        addr: String,
    },
    /// Membership declared `node` down (it failed its probes).
    MemberDown {
        /// The node.
        node: NodeId,
    },
}

/// A message for the driver to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The peer to send it to.
    pub to: NodeId,
    /// The message.
    pub message: Message,
}

/// What a local change did.
#[derive(Debug)]
pub struct LocalWrite<O> {
    /// Its id: [`Event::Acknowledged`] events name it.
    pub write: WriteId,
    /// The Automerge change it made, or `None` if the closure changed
    /// nothing (then it is acknowledged `Durable` at once).
    pub change: Option<ChangeHash>,
    /// How many Automerge operations the change holds (at most
    /// [`Config::max_change_ops`]).
    pub ops: usize,
    /// What the closure returned.
    pub output: O,
}

/// The most pushed changes [`Replica::handle_messages`] applies in one
/// Automerge batch: a bound on one batch's time (each message is bounded by
/// its frame already).
pub const MAX_BATCHED_CHANGES: usize = 4096;

/// Pushes of one peer about one document gathered by
/// [`Replica::handle_messages`], to apply in one batch.
struct PushBatch {
    from: NodeId,
    doc: DocumentId,
    /// Changes in all its messages.
    changes: usize,
    /// Each message's changes, in arrival order.
    messages: Vec<Vec<Vec<u8>>>,
}

/// The replication engine of one node. See the crate documentation for the
/// order in which a driver calls it.
pub struct Replica {
    config: Config,
    actor: ActorId,
    /// This opening's incarnation (see [`Replica::close`]).
    incarnation: u64,
    store: std::sync::Arc<dyn Storage>,
    rng: ChaCha8Rng,
    /// Documents in memory (loaded on first use, evicted when cold), with
    /// their use order and size estimates.
    docs: Documents,
    /// Documents waiting to load, with the inputs parked until they land.
    loads: Loads,
    /// The reconciliation digest's nodes seen so far.
    digest: Digest,
    quarantined: BTreeMap<DocumentId, String>,
    /// Connected peers.
    peers: BTreeSet<NodeId>,
    /// Messages to send, with each peer's byte budget.
    outbox: Outbox,
    events: VecDeque<Event>,
    next_write: u64,
    /// Writes waiting for the next flush to become durable.
    awaiting_flush: Vec<(WriteId, DocumentId)>,
    dirty_docs: BTreeSet<DocumentId>,
    dirty_sync: BTreeSet<(DocumentId, NodeId)>,
    replication: Replication,
    /// Documents whose changes come with patches (someone subscribes).
    observed: BTreeSet<DocumentId>,
    /// Sync conversations waiting for the peer's answer.
    retries: SyncRetries,
    membership: Option<Membership>,
    /// When the next group commit is due (none: nothing to flush).
    flush_at: Option<Time>,
    /// The group commit the driver is carrying out, if any.
    flushing: Option<InFlight>,
    anti_entropy_at: Time,
    /// The time of the latest input.
    now: Time,
    metrics: Metrics,
}

impl Replica {
    /// Opens the replica stored in `store` (an empty store gives an empty
    /// replica). Nothing is scanned and no document is loaded: documents
    /// load on first use. Documents whose data does not load are set aside
    /// then and reported by [`Replica::quarantined`].
    pub fn open(config: Config, store: Box<dyn Storage>, now: Time) -> Result<Self, ReplicaError> {
        layout::ensure_schema(&*store)?;
        let incarnation::Incarnation {
            actor: incarnation,
            opening,
        } = incarnation::next(
            &*store,
            config.planted(FaultInjection::ReuseActorAfterCleanClose),
        )?;
        digest::rebuild_if_missing(&*store)?;
        let actor = incarnation::actor(&config.node_id, incarnation);
        let mut replica = Replica {
            // Each opening draws afresh: a restarted node must not make the
            // document ids it made before a crash again.
            rng: ChaCha8Rng::seed_from_u64(
                config
                    .seed
                    .wrapping_add(opening.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            ),
            actor,
            incarnation,
            store: std::sync::Arc::from(store),
            docs: Documents::default(),
            loads: Loads::default(),
            digest: Digest::default(),
            quarantined: BTreeMap::new(),
            peers: BTreeSet::new(),
            outbox: Outbox::default(),
            events: VecDeque::new(),
            next_write: 0,
            awaiting_flush: Vec::new(),
            dirty_docs: BTreeSet::new(),
            dirty_sync: BTreeSet::new(),
            replication: Replication::default(),
            observed: BTreeSet::new(),
            retries: SyncRetries::default(),
            membership: None,
            flush_at: None,
            flushing: None,
            anti_entropy_at: now,
            now,
            metrics: Metrics::default(),
            config,
        };
        replica.anti_entropy_at = now.add(replica.next_anti_entropy_interval());
        // The digest's root counts the documents in the store.
        let root = replica.digest.node(&*replica.store, 0, 0)?;
        replica.metrics.documents_held = u64::from(root.count);
        if let Some(addr) = replica.config.membership_addr.clone() {
            let me = Member {
                node: replica.config.node_id,
                addr,
                bump: u32::try_from(now.as_millis() / 1000).unwrap_or(u32::MAX),
            };
            let seed = replica.rng.gen();
            replica.membership = Some(Membership::new(me, seed));
        }
        tracing::info!(
            node = %replica.config.node_id.short(),
            incarnation,
            "replica opened"
        );
        Ok(replica)
    }

    // ----- inputs -------------------------------------------------------

    /// Creates a new, empty document with a random id, and announces it to
    /// the connected peers.
    pub fn create_document(&mut self, now: Time) -> DocumentId {
        self.observe_clock(now);
        let id = loop {
            let id = DocumentId::from_bytes(self.rng.gen());
            if !self.docs.contains_key(&id)
                && !self.quarantined.contains_key(&id)
                && !layout::document_exists(&*self.store, id.as_bytes()).unwrap_or(false)
            {
                break id;
            }
        };
        self.docs.insert(id, Document::new(self.actor.clone()));
        self.mark_dirty(now, id);
        // Announce it: a sync message makes every connected peer hold it.
        let peers: Vec<NodeId> = self.peers.iter().copied().collect();
        for peer in peers {
            self.sync_with(id, peer, false);
        }
        tracing::debug!(doc = %id, "created document");
        id
    }

    /// Applies a local change to `doc`: runs `change` in one Automerge
    /// transaction stamped with `now`. The change is acknowledged
    /// [`AckLevel::Applied`] when this returns, pushed to every connected
    /// peer, and acknowledged [`AckLevel::Durable`] (an [`Event`]) after the
    /// next flush. Refused with [`ReplicaError::DiskFull`] while the disk is
    /// nearly full ([`Replica::handle_disk_space`]), and with
    /// [`ReplicaError::Loading`] if `doc` is stored but not in memory (its
    /// load is then requested: see [`Replica::request_load`] and
    /// [`Replica::load_now`]); nothing changed then.
    pub fn handle_local_change<O>(
        &mut self,
        now: Time,
        doc: DocumentId,
        change: impl FnOnce(&mut Transaction<'_>) -> Result<O, AutomergeError>,
    ) -> Result<LocalWrite<O>, ReplicaError> {
        let _span = tracing::debug_span!("local_change", doc = %doc).entered();
        self.observe_clock(now);
        self.check_writable()?;
        let observed = self.observed.contains(&doc);
        let max_ops = self.config.max_change_ops;
        let document = self.document_mut(doc)?;
        let options = CommitOptions::default().with_time(now.as_automerge_seconds());
        let Committed {
            result,
            hash,
            patches,
            ops,
        } = transact(&mut document.doc, options, observed, max_ops, change)?;
        let raw_change = hash
            .and_then(|hash| document.doc.get_change_by_hash(&hash))
            .map(|change| change.raw_bytes().to_vec());
        let write = WriteId(self.next_write);
        self.next_write += 1;
        let (Some(hash), Some(raw_change)) = (hash, raw_change) else {
            self.events.push_back(Event::Acknowledged {
                write,
                doc,
                level: AckLevel::Durable,
            });
            return Ok(LocalWrite {
                write,
                change: None,
                ops,
                output: result,
            });
        };
        self.metrics.local_changes += 1;
        self.push_to_all(doc, raw_change);
        self.awaiting_flush.push((write, doc));
        self.replication
            .track(write, doc, hash, self.config.max_tracked_replications);
        self.events.push_back(Event::Acknowledged {
            write,
            doc,
            level: AckLevel::Applied,
        });
        if self.config.planted(FaultInjection::AckDurableBeforeFlush) {
            self.events.push_back(Event::Acknowledged {
                write,
                doc,
                level: AckLevel::Durable,
            });
        }
        self.changed(now, doc, Origin::Local, patches);
        Ok(LocalWrite {
            write,
            change: Some(hash),
            ops,
            output: result,
        })
    }

    /// The driver measured `free_bytes` free on the disk holding the store.
    /// Below [`Config::min_free_bytes`] new local writes are refused
    /// ([`Replica::check_writable`]) until a later measurement is above
    /// it again. Flushes go on: they carry writes already acknowledged
    /// `Applied`, which the reserve is there to hold.
    pub fn handle_disk_space(&mut self, now: Time, free_bytes: u64) {
        let _ = now;
        let min = self.config.min_free_bytes;
        let full = min > 0 && free_bytes < min;
        let was_full = self.metrics.disk_full == 1;
        if full && !was_full {
            tracing::error!(
                free_bytes, min_free_bytes = min,
                "disk nearly full: refusing new writes until space is freed (reads and replication go on)"
            );
        } else if !full && was_full {
            tracing::warn!(
                free_bytes,
                min_free_bytes = min,
                "disk space freed: accepting writes again"
            );
        }
        self.metrics.disk_free_bytes = free_bytes;
        self.metrics.disk_full = u64::from(full);
    }

    /// `Err(`[`ReplicaError::DiskFull`]`)` while new local writes are
    /// refused for want of disk space (counted), `Ok` otherwise.
    pub fn check_writable(&mut self) -> Result<(), ReplicaError> {
        if self.metrics.disk_full == 0 {
            return Ok(());
        }
        self.metrics.writes_refused_disk_full += 1;
        Err(ReplicaError::DiskFull {
            free_bytes: self.metrics.disk_free_bytes,
            min_free_bytes: self.config.min_free_bytes,
        })
    }

    /// Starts (`true`) or stops (`false`) computing patches for `doc`: while
    /// it is observed, every [`Event::DocumentChanged`] about it carries the
    /// patches of the changes just applied. The driver observes the
    /// documents someone subscribes to, and only those: patches cost work.
    pub fn observe(&mut self, doc: DocumentId, on: bool) {
        if on {
            self.observed.insert(doc);
        } else {
            self.observed.remove(&doc);
        }
    }

    /// A connection to `peer` is up (and authenticated). Starts document-set
    /// reconciliation with it (one digest message, sent by the side with the
    /// lower node id); the documents found to
    /// differ then sync, from their persisted sync states with the
    /// in-flight part reset.
    pub fn handle_peer_up(&mut self, now: Time, peer: NodeId) {
        let _span = tracing::debug_span!("peer_up", peer = %peer.short()).entered();
        self.observe_clock(now);
        self.peers.insert(peer);
        if let Some(membership) = self.membership.as_mut() {
            if let Err(error) = membership.announce(peer) {
                tracing::debug!(peer = %peer.short(), %error, "membership announce failed");
            }
            self.drain_membership(now);
        }
        // Reconciliation is symmetric (whichever side finds a document
        // differing syncs it both ways), so one side starting it is enough:
        // the one with the lower id. Anti-entropy rounds start it from
        // either side later, should this message be lost.
        if self.config.anti_entropy && self.config.node_id < peer {
            self.start_reconciliation(peer);
        }
        tracing::info!(peer = %peer.short(), "peer up");
    }

    /// The connection to `peer` is gone. Drops what was queued for it; the
    /// sync states keep what both sides share.
    pub fn handle_peer_down(&mut self, now: Time, peer: NodeId) {
        let _ = now;
        if !self.peers.remove(&peer) {
            return;
        }
        self.retries.forget_peer(peer);
        let dropped_messages = self.outbox.forget_peer(peer);
        // Inputs parked for it belong to the connection that closed.
        self.loads.forget_peer(peer);
        tracing::info!(
            peer = %peer.short(),
            dropped_messages,
            "peer down"
        );
    }

    /// A message arrived from `from`. An error means the message was
    /// rejected; what that may still have changed is said with each error
    /// (see [`ReplicaError::InvalidPeerData`]).
    pub fn handle_message(
        &mut self,
        now: Time,
        from: NodeId,
        message: Message,
    ) -> Result<(), ReplicaError> {
        if !self.peers.contains(&from) {
            return Err(ReplicaError::PeerNotConnected(from));
        }
        self.observe_clock(now);
        self.metrics.messages_received += 1;
        self.dispatch(now, from, message)
    }

    /// Several messages that arrived together (what a driver finds queued
    /// when it next reads its input), in arrival order: the same as
    /// [`Replica::handle_message`] on each, but cheaper under load. The
    /// pushed changes about one document from one peer are applied in one
    /// Automerge batch, which costs about what one push does; the further
    /// behind a node is, the more it catches up per turn. Pushes are
    /// gathered until any other message arrives (that one sees them
    /// applied), and at most [`MAX_BATCHED_CHANGES`] changes to a batch.
    /// Returns the rejected messages' senders and errors, as
    /// [`Replica::handle_message`] would.
    pub fn handle_messages(
        &mut self,
        now: Time,
        messages: impl IntoIterator<Item = (NodeId, Message)>,
    ) -> Vec<(NodeId, ReplicaError)> {
        let mut errors = Vec::new();
        // Gathered pushes, in the order their first message came.
        let mut batches: Vec<PushBatch> = Vec::new();
        for (from, message) in messages {
            if !self.peers.contains(&from) {
                errors.push((from, ReplicaError::PeerNotConnected(from)));
                continue;
            }
            self.observe_clock(now);
            self.metrics.messages_received += 1;
            match message {
                Message::Changes { doc, changes } => {
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
                other => {
                    self.apply_batches(now, &mut batches, &mut errors);
                    if let Err(error) = self.dispatch(now, from, other) {
                        errors.push((from, error));
                    }
                }
            }
        }
        self.apply_batches(now, &mut batches, &mut errors);
        errors
    }

    fn apply_batches(
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

    fn dispatch(&mut self, now: Time, from: NodeId, message: Message) -> Result<(), ReplicaError> {
        match message {
            Message::Changes { doc, changes } => {
                match self.receive_changes(now, from, doc, vec![changes]).pop() {
                    Some(error) => Err(error),
                    None => Ok(()),
                }
            }
            Message::Sync { doc, message } => self.receive_sync(now, from, doc, &message),
            // A peer's heads confirm which of this node's changes it holds
            // durably (for `Replicated(k)` acknowledgements).
            Message::Heads { doc, heads } => {
                self.receive_heads(from, doc, &heads);
                Ok(())
            }
            Message::Membership { data } => self.receive_membership(now, from, &data),
            // Connection set-up is the driver's business.
            Message::Hello(_) => Ok(()),
            Message::DigestNodes { .. } | Message::DigestLeaves { .. } => {
                self.receive_digest(now, from, message)
            }
        }
    }

    /// Applies the changes of one or more `Changes` messages from `from`
    /// about `doc`, in arrival order, in one Automerge batch: applying
    /// walks the document's ops at each changed key once per batch, so a
    /// batch of a hundred costs about what one change does. A message with
    /// an undecodable change is rejected whole; the others still apply.
    /// Returns one error per rejected message.
    fn receive_changes(
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
        if let Err(ReplicaError::Loading(_)) = self.resident(doc) {
            // Each waits for the document's load as the message it came in.
            for changes in messages {
                let message = Message::Changes { doc, changes };
                self.park(doc, Parked::Message { from, message });
            }
            return Vec::new();
        }
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
        let observed = self.observed.contains(&doc);
        let document = match self.document_or_new(now, doc) {
            Ok(document) => document,
            Err(error) => {
                errors.push(error);
                return errors;
            }
        };
        let before = document.heads();
        let mut log = automerge::PatchLog::new(observed);
        let rejected = apply_pushes(&mut document.doc, decoded, &mut log, drop_orphans);
        errors.extend(rejected.into_iter().map(|error| invalid(error.to_string())));
        let patches = observed.then(|| document.doc.make_patches(&mut log));
        let after = document.heads();
        let missing = !document.doc.get_missing_deps(&[]).is_empty();
        self.metrics.changes_received += count as u64;
        if before != after {
            self.changed(now, doc, Origin::Remote(from), patches);
            self.replication.owe(doc, from);
        }
        if missing {
            // Keep the change (Automerge queues it) and fetch what it needs.
            tracing::debug!(peer = %from.short(), doc = %doc, "pushed change misses dependencies; syncing");
            self.metrics.missing_dependency_syncs += 1;
            self.sync_with(doc, from, true);
        }
        errors
    }

    fn receive_sync(
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
        let observed = self.observed.contains(&doc);
        let document = self.document_or_new(now, doc)?;
        let before = document.heads();
        let state = document.sync.entry(from).or_default();
        let their_before = state.their_heads.clone();
        // Automerge may have applied part of the message before failing; the
        // heads comparison below still records what changed.
        let mut log = automerge::PatchLog::new(observed);
        let result = automerge::sync::SyncDoc::receive_sync_message_log_patches(
            &mut document.doc,
            state,
            message,
            &mut log,
        );
        let patches = observed.then(|| document.doc.make_patches(&mut log));
        let after = document.heads();
        let reply = document.after_sync_message(from, &before, their_before.as_deref());
        self.mark_sync_dirty(doc, from);
        self.metrics.sync_messages_received += 1;
        if before != after {
            self.changed(now, doc, Origin::Remote(from), patches);
            self.replication.owe(doc, from);
        }
        result.map_err(|error| invalid(error.to_string()))?;
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
        Ok(())
    }

    /// Runs what is due at `now`: membership probes, quiet sync
    /// conversations, a round of anti-entropy with one peer, eviction. (A
    /// group commit that falls due is handed out by
    /// [`Replica::poll_flush`].)
    pub fn handle_timeout(&mut self, now: Time) {
        self.observe_clock(now);
        if let Some(membership) = self.membership.as_mut() {
            membership.handle_timeout(now);
            self.drain_membership(now);
        }
        if self.retries.next_due().is_some_and(|at| at <= now) {
            self.restart_quiet_syncs(now);
        }
        if self.anti_entropy_at <= now {
            self.anti_entropy_at = now.add(self.next_anti_entropy_interval());
            if self.config.anti_entropy {
                self.anti_entropy_round();
            }
        }
        self.evict_cold_documents(now);
    }

    /// Flushes every pending write now, on the calling thread, whatever
    /// the group-commit timer says: for a graceful shutdown, tests and
    /// examples. It blocks on the disk; a driver's hot path uses
    /// [`Replica::poll_flush`] instead. A flush already handed out must
    /// have completed first ([`ReplicaError::FlushInFlight`]). On a storage
    /// error the writes stay unacknowledged (and the flush is retried
    /// later), as with any flush.
    pub fn flush_now(&mut self, now: Time) -> Result<(), ReplicaError> {
        if self.flushing.is_some() {
            return Err(ReplicaError::FlushInFlight);
        }
        self.observe_clock(now);
        // A flush can leave a document due for compaction, which is one
        // more: two rounds settle everything.
        for _ in 0..2 {
            if self.flush_at.is_none() {
                break;
            }
            self.flush_at = Some(now);
            let Some(flush) = self.poll_flush() else {
                break;
            };
            let result = flush.write();
            let failed = result.as_ref().err().map(ToString::to_string);
            self.handle_flush_complete(now, result);
            if let Some(error) = failed {
                return Err(StoreError::Backend(error).into());
            }
        }
        Ok(())
    }

    /// Closes the replica cleanly: flushes everything and marks the store
    /// so that the next opening may write as the same Automerge actor (a
    /// crash, with no mark, makes the next opening a new actor). Call it
    /// last, after the flush in flight (if any) completed, on a thread that
    /// may block; nothing may change after it.
    pub fn close(mut self, now: Time) -> Result<(), ReplicaError> {
        self.flush_now(now)?;
        if self.flush_at.is_some() {
            return Err(ReplicaError::Storage(StoreError::Backend(
                "the final flush failed; the store is not marked clean".into(),
            )));
        }
        incarnation::mark_clean(&*self.store, self.incarnation)
    }

    /// Re-arms timers that a clock jumping backwards has pushed further
    /// away than their own interval, so a jump delays nothing for long.
    fn observe_clock(&mut self, now: Time) {
        self.now = now;
        if let Some(membership) = self.membership.as_mut() {
            membership.observe_clock(now);
        }
        let latest_anti_entropy =
            now.add(self.config.anti_entropy_interval + self.config.anti_entropy_jitter);
        if self.anti_entropy_at > latest_anti_entropy {
            tracing::warn!(%now, deadline = %self.anti_entropy_at, "clock went backwards; re-arming timers");
            self.anti_entropy_at = now;
        }
        let latest_flush = now.add(
            self.config
                .group_commit_delay
                .max(self.config.flush_retry_delay)
                .max(self.config.sync_state_flush_delay),
        );
        if self.flush_at.is_some_and(|at| at > latest_flush) {
            self.flush_at = Some(now);
        }
    }

    // ----- outputs ------------------------------------------------------

    /// The next message to send, if any. Call until `None` after every
    /// input.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let leak = self.config.planted(FaultInjection::LeakQueuedBytes);
        let transmit = self.outbox.pop(leak)?;
        self.metrics.messages_sent += 1;
        Some(transmit)
    }

    /// The next application event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next group commit for the driver to carry out, if one is due
    /// and none is in flight. Call it after every input, like
    /// [`Replica::poll_transmit`]; write the [`Flush`] off the engine's path
    /// (a blocking thread) and report with
    /// [`Replica::handle_flush_complete`]. Writes that arrive meanwhile
    /// gather for the next one.
    pub fn poll_flush(&mut self) -> Option<Flush> {
        if self.flushing.is_some() || self.flush_at.is_none_or(|at| at > self.now) {
            return None;
        }
        self.start_flush(self.now)
    }

    /// Asks for `doc` to be in memory, for a change or read of it:
    /// [`Residency::Resident`] if it is (counting a use), otherwise
    /// [`Residency::Loading`]: its [`Load`] is handed out by
    /// [`Replica::poll_load`], and the caller retries once
    /// [`Replica::handle_document_loaded`] has taken it. Fails if this node
    /// does not hold `doc` or it is quarantined.
    pub fn request_load(&mut self, doc: DocumentId) -> Result<Residency, ReplicaError> {
        match self.resident(doc) {
            Ok(true) => Ok(Residency::Resident),
            Ok(false) => Err(ReplicaError::UnknownDocument(doc)),
            Err(ReplicaError::Loading(_)) => {
                self.loads.want(doc);
                Ok(Residency::Loading)
            }
            Err(error) => Err(error),
        }
    }

    /// The next document load for the driver to carry out, if one is
    /// requested and fewer than [`Config::max_loads_in_flight`] are out.
    /// Call it after every input, like [`Replica::poll_flush`]; run the
    /// [`Load`] off the engine's path (a blocking thread) and hand the
    /// result to [`Replica::handle_document_loaded`]. Meanwhile every other
    /// document goes on; inputs about this one wait for it.
    pub fn poll_load(&mut self) -> Option<Load> {
        let doc = self.loads.next(self.config.max_loads_in_flight)?;
        Some(Load::new(doc, self.store.clone(), self.actor.clone()))
    }

    /// A document load handed out by [`Replica::poll_load`] landed: the
    /// document is cached (or, if its stored bytes do not load, set aside
    /// as quarantined), and the inputs parked for it run now, in the order
    /// they arrived. An `Err` is the store's failure to read it: the
    /// document stays stored and out of memory, the inputs parked for it
    /// are dropped (repair resends them), and a change or read waiting for
    /// it should fail with this error.
    pub fn handle_document_loaded(
        &mut self,
        now: Time,
        loaded: Loaded,
    ) -> Result<(), ReplicaError> {
        self.observe_clock(now);
        let doc = loaded.doc;
        let _span = tracing::debug_span!("document_loaded", doc = %doc).entered();
        let Some(parked) = self.loads.land(doc) else {
            // Not the load out for it (one from before a `load_now`, say):
            // it may have read the store before a later flush.
            tracing::warn!(doc = %doc, "a document load nobody waits for landed; ignored");
            return Ok(());
        };
        match loaded.result {
            Ok(document) => {
                // Nothing about a loading document runs, so it cannot be in
                // memory already; if it were, the one in memory is newer.
                if !self.docs.contains_key(&doc) {
                    self.docs.insert(doc, document);
                    self.metrics.documents_loaded += 1;
                    self.metrics.cached_documents = self.docs.len() as u64;
                    self.metrics.cached_document_bytes = self.docs.bytes() as u64;
                }
            }
            Err(LoadError::Automerge(error)) => {
                tracing::error!(doc = %doc, %error, "document does not load; set aside, stored bytes kept");
                self.quarantined.insert(doc, error.to_string());
            }
            Err(LoadError::Store(error)) => {
                tracing::warn!(doc = %doc, %error, dropped = parked.len(), "cannot read document from the store; inputs waiting for it dropped");
                self.metrics.inputs_dropped_loading += parked.len() as u64;
                return Err(error.into());
            }
        }
        for input in parked {
            self.replay(now, doc, input);
        }
        Ok(())
    }

    /// Loads `doc` on the calling thread if it is stored and not in memory,
    /// blocking for as long as that takes, and runs what waited for it:
    /// for tests, tools and applications that drive a replica from one
    /// thread. A driver that must keep answering uses
    /// [`Replica::poll_load`] instead. Fails if this node does not hold
    /// `doc`, it is quarantined or unreadable, or its load is already
    /// handed out ([`ReplicaError::Loading`]: wait for that one).
    ///
    /// ```
    /// # use murmur_core::{Config, NodeId, Replica, Time};
    /// # use murmur_store::MemStore;
    /// # let store = MemStore::new();
    /// # let now = Time::from_millis(1_700_000_000_000);
    /// let mut replica = Replica::open(Config::new(NodeId([1; 32])), Box::new(store.clone()), now)?;
    /// let doc = replica.create_document(now);
    /// replica.close(now)?;
    /// // Reopened, the document is stored but not in memory.
    /// let mut replica = Replica::open(Config::new(NodeId([1; 32])), Box::new(store), now)?;
    /// assert!(replica.cached_document(doc).is_err());
    /// replica.load_now(now, doc)?;
    /// assert!(replica.cached_document(doc).is_ok());
    /// # Ok::<(), murmur_core::ReplicaError>(())
    /// ```
    pub fn load_now(&mut self, now: Time, doc: DocumentId) -> Result<(), ReplicaError> {
        if self.request_load(doc)? == Residency::Resident {
            return Ok(());
        }
        if !self.loads.take_now(doc) {
            return Err(ReplicaError::Loading(doc));
        }
        let loaded = Load::new(doc, self.store.clone(), self.actor.clone()).run();
        self.handle_document_loaded(now, loaded)?;
        if self.docs.contains_key(&doc) {
            Ok(())
        } else {
            Err(self.missing(doc))
        }
    }

    /// Runs an input that waited for `doc` to load.
    fn replay(&mut self, now: Time, doc: DocumentId, input: Parked) {
        if !self.peers.contains(&input.peer()) {
            return;
        }
        match input {
            Parked::Message { from, message } => {
                if let Err(error) = self.dispatch(now, from, message) {
                    tracing::debug!(peer = %from.short(), doc = %doc, %error, "message that waited for its document's load rejected");
                }
            }
            Parked::SyncWith { peer, reset } => self.sync_with(doc, peer, reset),
            Parked::Reconcile { peer } => self.reconcile_document(now, peer, doc),
            Parked::OwedHeads { peer } => self.send_owed_heads(vec![(doc, peer)]),
        }
    }

    /// True while a document load is requested or handed out and has not
    /// landed.
    pub fn loads_pending(&self) -> bool {
        !self.loads.is_empty()
    }

    /// When [`Replica::handle_timeout`] must next run (or, for a due group
    /// commit, [`Replica::poll_flush`]).
    pub fn poll_timeout(&self) -> Time {
        let membership = self.membership.as_ref().and_then(Membership::poll_timeout);
        // While a flush is in flight the next one waits for it, not for
        // the clock.
        let flush = self.flush_at.filter(|_| self.flushing.is_none());
        [flush, membership, self.retries.next_due()]
            .into_iter()
            .flatten()
            .fold(self.anti_entropy_at, Time::min)
    }

    // ----- getters ------------------------------------------------------

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// The document `doc`, to read (with [`automerge::ReadDoc`]), if it is
    /// in memory. Documents load lazily and cold ones are evicted, so a
    /// document this node holds may not be: [`Replica::read_document`]
    /// reads any document.
    pub fn cached_document(&self, doc: DocumentId) -> Result<&automerge::Automerge, ReplicaError> {
        match self.docs.get(&doc) {
            Some(document) => Ok(&document.doc),
            None => Err(self.missing(doc)),
        }
    }

    /// The document `doc`, to read: borrowed if it is in memory, otherwise
    /// loaded from the store for this read only (the cache is not changed;
    /// a document out of memory is always fully stored). That load runs on
    /// the calling thread, for as long as it takes: for tests, checkers and
    /// tools. A driver asks with [`Replica::request_load`] and reads with
    /// [`Replica::cached_document`] once the document is in memory.
    pub fn read_document(
        &self,
        doc: DocumentId,
    ) -> Result<Cow<'_, automerge::Automerge>, ReplicaError> {
        if let Some(document) = self.docs.get(&doc) {
            return Ok(Cow::Borrowed(&document.doc));
        }
        if self.quarantined.contains_key(&doc) {
            return Err(self.missing(doc));
        }
        if !layout::document_exists(&*self.store, doc.as_bytes())? {
            return Err(ReplicaError::UnknownDocument(doc));
        }
        match Document::load(&*self.store, doc, self.actor.clone()) {
            Ok(document) => Ok(Cow::Owned(document.doc)),
            Err(LoadError::Store(error)) => Err(error.into()),
            Err(LoadError::Automerge(error)) => Err(ReplicaError::CorruptDocument {
                doc,
                reason: error.to_string(),
            }),
        }
    }

    /// The ids of the documents in memory now, in order. Documents load
    /// lazily, so this is not every document held:
    /// [`Replica::document_ids`] is.
    pub fn cached_document_ids(&self) -> impl Iterator<Item = DocumentId> + '_ {
        self.docs.keys().copied()
    }

    /// The ids of every document this node holds (stored or in memory,
    /// quarantined ones excluded), in order. Walks the store's document
    /// index: O(documents), for listing APIs, never for the hot path.
    pub fn document_ids(&self) -> Result<Vec<DocumentId>, ReplicaError> {
        let mut ids: BTreeSet<DocumentId> = layout::list_documents(&*self.store)?
            .into_iter()
            .map(DocumentId::from_bytes)
            .collect();
        ids.extend(self.docs.keys().copied());
        ids.retain(|id| !self.quarantined.contains_key(id));
        Ok(ids.into_iter().collect())
    }

    /// A 64-bit fingerprint of `doc`'s heads (the reconciliation digest's
    /// leaf: a hash of the id and the heads), or `None` if this node does
    /// not hold `doc`. Cheap, even for a document out of memory; equal
    /// fingerprints on two nodes mean equal heads.
    pub fn heads_fingerprint(&self, doc: DocumentId) -> Result<Option<u64>, ReplicaError> {
        if let Some(document) = self.docs.get(&doc) {
            return Ok(Some(digest::leaf_value(&doc, &document.heads())));
        }
        if self.quarantined.contains_key(&doc) {
            return Err(self.missing(doc));
        }
        Ok(layout::load_leaf(&*self.store, doc.as_bytes())?)
    }

    /// Documents set aside because their stored data does not load, with
    /// the reason (those found so far: documents load lazily).
    pub fn quarantined(&self) -> &BTreeMap<DocumentId, String> {
        &self.quarantined
    }

    /// The heads of `doc` (loading it on the calling thread for this read
    /// if it is not in memory, like [`Replica::read_document`]).
    pub fn heads(&self, doc: DocumentId) -> Result<Vec<ChangeHash>, ReplicaError> {
        self.read_document(doc).map(|d| d.get_heads())
    }

    /// The peers currently connected, in order.
    pub fn connected_peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.iter().copied()
    }

    /// The members SWIM believes alive (this node excluded), with their
    /// addresses, in order. Empty when membership is off.
    pub fn members(&self) -> Vec<(NodeId, String)> {
        self.membership
            .as_ref()
            .map(|m| m.members().into_iter().map(|m| (m.node, m.addr)).collect())
            .unwrap_or_default()
    }

    /// Counters since the replica opened.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Messages waiting in the outbox.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Local writes not yet durable (waiting for a flush, or in the one in
    /// flight).
    pub fn writes_awaiting_flush(&self) -> usize {
        self.awaiting_flush.len() + self.flushing.as_ref().map_or(0, |f| f.writes.len())
    }

    /// True while something waits for a group commit (one is scheduled)
    /// or one is in flight.
    pub fn flush_pending(&self) -> bool {
        self.flush_at.is_some() || self.flushing.is_some()
    }

    /// True while a [`Flush`] handed out by [`Replica::poll_flush`] has not
    /// been reported complete.
    pub fn flush_in_flight(&self) -> bool {
        self.flushing.is_some()
    }

    // ----- invariants ---------------------------------------------------

    /// Checks the engine's internal invariants, cheaply (O(documents in
    /// memory + queued messages)): the simulator calls it after every step.
    /// `Err` names the first one broken; that is always a bug in the engine.
    ///
    /// - the cache's byte total is the sum of its entries, and the cache
    ///   lists exactly the documents in memory;
    /// - each peer's queued bytes are what is queued for it, and nothing is
    ///   queued for a peer that is not connected;
    /// - unflushed state (dirty documents, writes awaiting their flush,
    ///   dirty sync states) implies a scheduled flush, and every dirty
    ///   document, and every one the flush in flight writes, is in memory
    ///   (evicting one would lose it).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.docs.check()?;
        self.check_queues()?;
        self.retries.check()?;
        self.loads.check(|doc| self.docs.contains_key(doc))?;
        let unflushed = !self.dirty_docs.is_empty()
            || !self.awaiting_flush.is_empty()
            || !self.dirty_sync.is_empty();
        if unflushed && self.flush_at.is_none() {
            return Err(format!(
                "unflushed state ({} dirty documents, {} writes awaiting a flush, {} sync states) but no flush scheduled",
                self.dirty_docs.len(),
                self.awaiting_flush.len(),
                self.dirty_sync.len()
            ));
        }
        let dirty = self.dirty_docs.iter();
        let awaiting = self.awaiting_flush.iter().map(|(_, doc)| doc);
        let flushing = self.flushing.iter().flat_map(|flight| flight.pinned.iter());
        if let Some(doc) = dirty
            .chain(awaiting)
            .chain(flushing)
            .find(|doc| !self.docs.contains_key(doc))
        {
            return Err(format!(
                "document {doc} has unflushed changes but is not in memory"
            ));
        }
        Ok(())
    }

    /// Roughly how many entries [`Replica::check_invariants`] walks:
    /// documents in memory, watched sync conversations, queued messages.
    /// A caller checking after every step can space its checks by it.
    pub fn invariant_check_size(&self) -> usize {
        self.docs.len() + self.retries.len() + self.outbox.len()
    }

    fn check_queues(&self) -> Result<(), String> {
        self.outbox.check(|peer| self.peers.contains(peer))
    }

    /// Recomputes the reconciliation digest from the documents in the
    /// store and compares it with the stored one, leaf by leaf and node by
    /// node. O(documents stored): for the end of a simulation, not a step.
    pub fn check_digest(&self) -> Result<(), String> {
        crate::digest::verify(&*self.store)
    }

    /// The reconciliation digest's root: (xor of every leaf, document
    /// count). Two replicas holding the same documents at the same heads
    /// have equal roots.
    pub fn digest_root(&self) -> Result<(u64, u64), ReplicaError> {
        let (xor, count) = layout::load_trie_node(&*self.store, 0, 0)?;
        Ok((xor, u64::from(count)))
    }

    // ----- internals ----------------------------------------------------

    fn missing(&self, doc: DocumentId) -> ReplicaError {
        match self.quarantined.get(&doc) {
            Some(reason) => ReplicaError::CorruptDocument {
                doc,
                reason: reason.clone(),
            },
            None => ReplicaError::UnknownDocument(doc),
        }
    }

    /// Whether `doc` is in memory, counting a use of it: `Ok(true)` if it
    /// is, `Ok(false)` if this node does not hold it, and
    /// [`ReplicaError::Loading`] if it is stored and not in memory (its
    /// load is then requested: nothing loads inline).
    fn resident(&mut self, doc: DocumentId) -> Result<bool, ReplicaError> {
        if self.docs.touch(doc) {
            return Ok(true);
        }
        if self.quarantined.contains_key(&doc) {
            return Err(self.missing(doc));
        }
        if self.loads.is_loading(&doc) {
            return Err(ReplicaError::Loading(doc));
        }
        if !layout::document_exists(&*self.store, doc.as_bytes())? {
            return Ok(false);
        }
        self.loads.request(doc);
        Err(ReplicaError::Loading(doc))
    }

    /// Parks `input` until `doc` (whose load is requested) lands. Past
    /// [`Config::max_parked_inputs`] the input is dropped instead: what it
    /// carried comes again through sync retries and anti-entropy.
    fn park(&mut self, doc: DocumentId, input: Parked) {
        let peer = input.peer();
        match self.loads.park(doc, input, self.config.max_parked_inputs) {
            Parking::Parked => self.metrics.inputs_parked += 1,
            Parking::Dropped => {
                self.metrics.inputs_dropped_loading += 1;
                tracing::debug!(doc = %doc, peer = %peer.short(), "too many inputs wait for loads; dropped one, repair will resend it");
            }
            Parking::NotLoading => {}
        }
    }

    fn document_mut(&mut self, doc: DocumentId) -> Result<&mut Document, ReplicaError> {
        if !self.resident(doc)? {
            return Err(self.missing(doc));
        }
        self.docs
            .get_mut(&doc)
            .ok_or(ReplicaError::UnknownDocument(doc))
    }

    /// The document a peer talks about, created if this node has never
    /// heard of it (every document replicates to every peer).
    fn document_or_new(
        &mut self,
        now: Time,
        doc: DocumentId,
    ) -> Result<&mut Document, ReplicaError> {
        if let Some(reason) = self.quarantined.get(&doc) {
            return Err(ReplicaError::CorruptDocument {
                doc,
                reason: reason.clone(),
            });
        }
        if !self.resident(doc)? {
            self.docs.insert(doc, Document::new(self.actor.clone()));
            self.mark_dirty(now, doc);
        }
        self.docs
            .get_mut(&doc)
            .ok_or(ReplicaError::UnknownDocument(doc))
    }

    fn next_anti_entropy_interval(&mut self) -> std::time::Duration {
        let base = self.config.anti_entropy_interval;
        let jitter = self.config.anti_entropy_jitter.min(base / 2);
        let jitter_ms = u64::try_from(jitter.as_millis()).unwrap_or(0);
        let offset = self.rng.gen_range(0..=2 * jitter_ms);
        (base - jitter) + std::time::Duration::from_millis(offset)
    }

    fn mark_dirty(&mut self, now: Time, doc: DocumentId) {
        self.dirty_docs.insert(doc);
        self.schedule_flush(now);
    }

    /// A sync state changed: it is flushed with the next group commit, or
    /// within [`Config::sync_state_flush_delay`] if nothing else needs one
    /// (a lost sync state only costs bandwidth: no fsync per sync message),
    /// so its document can be evicted after.
    fn mark_sync_dirty(&mut self, doc: DocumentId, peer: NodeId) {
        self.dirty_sync.insert((doc, peer));
        self.schedule_flush_by(self.now.add(self.config.sync_state_flush_delay));
    }

    /// Schedules the group commit after `now`, unless one is scheduled
    /// sooner.
    fn schedule_flush(&mut self, now: Time) {
        self.schedule_flush_by(now.add(self.config.group_commit_delay));
    }

    /// Makes the next group commit due by `at` at the latest.
    fn schedule_flush_by(&mut self, at: Time) {
        self.flush_at = Some(self.flush_at.map_or(at, |due| due.min(at)));
    }

    fn changed(
        &mut self,
        now: Time,
        doc: DocumentId,
        origin: Origin,
        patches: Option<Vec<automerge::Patch>>,
    ) {
        self.mark_dirty(now, doc);
        if let Some(document) = self.docs.get(&doc) {
            self.events.push_back(Event::DocumentChanged {
                doc,
                heads: document.heads(),
                origin,
                patches,
            });
        }
    }

    /// Queues `message` for `to`, unless that peer's queue is full. Returns
    /// whether it was queued.
    fn enqueue(&mut self, to: NodeId, message: Message) -> bool {
        if !self.peers.contains(&to) {
            return false;
        }
        match self
            .outbox
            .push(to, message, self.config.max_outbox_bytes_per_peer)
        {
            Ok(()) => true,
            Err(queued) => {
                self.metrics.messages_dropped_backpressure += 1;
                tracing::debug!(peer = %to.short(), queued, "peer queue full; dropping message, anti-entropy will repair");
                false
            }
        }
    }

    /// Eagerly pushes one new change to every connected peer, joining it to
    /// the push of the same document still queued for that peer (wherever
    /// it is in the queue, up to [`Config::max_push_batch`] changes): with
    /// many peers and documents, changes made in a burst still travel in
    /// few messages.
    fn push_to_all(&mut self, doc: DocumentId, change: Vec<u8>) {
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
    fn sync_with(&mut self, doc: DocumentId, peer: NodeId, reset: bool) {
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
    fn restart_quiet_syncs(&mut self, now: Time) {
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

    /// Reconciles the document set with one peer picked at random: sends
    /// it the digest's root.
    fn anti_entropy_round(&mut self) {
        if self.peers.is_empty() {
            return;
        }
        let index = self.rng.gen_range(0..self.peers.len());
        let Some(peer) = self.peers.iter().nth(index).copied() else {
            return;
        };
        self.metrics.anti_entropy_rounds += 1;
        self.start_reconciliation(peer);
    }

    /// Group commit, first half: builds one batch of every dirty document
    /// (a new chunk, or a snapshot when its chunks outgrew the last one),
    /// its digest leaf and the digest nodes above it, and every dirty sync
    /// state, and hands it out. What it covers is remembered until
    /// [`Replica::handle_flush_complete`]; what changes meanwhile is dirty
    /// again and goes in the next one.
    fn start_flush(&mut self, now: Time) -> Option<Flush> {
        let mut batch = WriteBatch::new();
        let mut saves = Vec::new();
        let mut leaves = Vec::new();
        let compact_at = (
            self.config.compaction_min_bytes,
            self.config.compaction_max_chunks,
        );
        for id in &self.dirty_docs {
            if let Some(document) = self.docs.get_mut(id) {
                if document.leaf_outdated() && !self.config.planted(FaultInjection::StaleDigestLeaf)
                {
                    leaves.push((*id, digest::leaf_value(id, &document.heads())));
                }
                saves.push((*id, document.save_into(*id, &mut batch, compact_at)));
            }
        }
        let staged = match self.stage_digest(&leaves, &mut batch) {
            Ok(staged) => staged,
            Err(error) => {
                self.flush_failed(now, &error);
                return None;
            }
        };
        let sync: Vec<(DocumentId, NodeId)> =
            std::mem::take(&mut self.dirty_sync).into_iter().collect();
        for (doc, peer) in &sync {
            if let Some(state) = self.docs.get(doc).and_then(|d| d.sync.get(peer)) {
                batch.put(
                    layout::sync_state_key(doc.as_bytes(), &peer.0),
                    state.encode(),
                );
            }
        }
        let snapshots = saves
            .iter()
            .filter_map(|(id, save)| {
                save.snapshot_covers()
                    .map(|covers| (*id.as_bytes(), covers))
            })
            .collect();
        let pinned = saves
            .iter()
            .map(|(id, _)| *id)
            .chain(sync.iter().map(|(doc, _)| *doc))
            .collect();
        self.dirty_docs.clear();
        self.flush_at = None;
        self.flushing = Some(InFlight {
            saves,
            staged,
            writes: std::mem::take(&mut self.awaiting_flush),
            sync,
            owed: self.replication.take_owed().into_iter().collect(),
            bytes: batch.payload_bytes(),
            started: now,
            pinned,
        });
        let delete_first = self
            .config
            .planted(FaultInjection::CompactDeletesBeforeSnapshot);
        Some(Flush::new(
            batch,
            snapshots,
            delete_first,
            self.store.clone(),
        ))
    }

    /// The [`Flush`] handed out last was carried out with `result`. On
    /// success its writes are acknowledged `Durable` (and `Replicated(k)`
    /// where k peers already hold them), peers whose changes it made
    /// durable are told our heads, and the next group commit, gathered
    /// meanwhile, is due at once. On failure nothing is acknowledged: its
    /// writes wait for the next flush, retried after
    /// [`Config::flush_retry_delay`]. A completion with no flush in flight
    /// is ignored.
    pub fn handle_flush_complete(&mut self, now: Time, result: Result<(), StoreError>) {
        self.observe_clock(now);
        let Some(flight) = self.flushing.take() else {
            tracing::warn!("a flush completed that was not in flight; ignored");
            return;
        };
        if let Err(error) = result {
            self.requeue(flight);
            self.flush_failed(now, &error);
            return;
        }
        self.digest.commit(flight.staged);
        if let Some(count) = self.digest.root_count() {
            self.metrics.documents_held = u64::from(count);
        }
        self.metrics.flushes += 1;
        self.metrics.bytes_flushed += flight.bytes as u64;
        self.metrics.writes_flushed += flight.writes.len() as u64;
        let compact_at = (
            self.config.compaction_min_bytes,
            self.config.compaction_max_chunks,
        );
        for (id, save) in flight.saves {
            if save.snapshot_covers().is_some() {
                self.metrics.compactions += 1;
            }
            if let Some(document) = self.docs.get_mut(&id) {
                document.saved(save);
                if document.wants_compaction(compact_at.0, compact_at.1) {
                    self.dirty_docs.insert(id);
                }
                self.docs.resize(id);
            }
        }
        for (write, doc) in flight.writes {
            self.events.push_back(Event::Acknowledged {
                write,
                doc,
                level: AckLevel::Durable,
            });
            let copies = self.replication.made_durable(write, doc);
            if copies > 0 {
                self.acknowledge_replicated(write, doc, copies);
            }
        }
        self.send_owed_heads(flight.owed);
        if !self.dirty_docs.is_empty() {
            self.schedule_flush(now);
        }
        tracing::trace!(
            bytes = flight.bytes,
            took_ms = now.since(flight.started).as_millis() as u64,
            "flush complete"
        );
        self.evict_cold_documents(now);
    }

    /// Puts what a failed flush covered back among what waits for the next
    /// one: its writes first, in their order.
    fn requeue(&mut self, flight: InFlight) {
        self.dirty_docs
            .extend(flight.saves.iter().map(|(id, _)| *id));
        self.dirty_sync.extend(flight.sync);
        let mut writes = flight.writes;
        writes.append(&mut self.awaiting_flush);
        self.awaiting_flush = writes;
        for (doc, peer) in flight.owed {
            self.replication.owe(doc, peer);
        }
    }

    fn flush_failed(&mut self, now: Time, error: &StoreError) {
        self.metrics.flush_failures += 1;
        // The store may or may not hold the staged digest nodes: forget the
        // cached ones, they reload from what the store says.
        self.digest.invalidate();
        tracing::error!(%error, waiting_writes = self.awaiting_flush.len(), "flush failed; writes stay unacknowledged, retrying");
        self.flush_at = Some(now.add(self.config.flush_retry_delay));
    }

    /// Adds the digest moves of `leaves` (document, new leaf value) to
    /// `batch`: each document's leaf, and the nodes on the paths of those
    /// whose leaf changed.
    fn stage_digest(
        &mut self,
        leaves: &[(DocumentId, u64)],
        batch: &mut WriteBatch,
    ) -> Result<digest::Staged, murmur_store::StoreError> {
        let mut updates = Vec::with_capacity(leaves.len());
        for &(doc, new) in leaves {
            let old = layout::load_leaf(&*self.store, doc.as_bytes())?;
            if old != Some(new) {
                updates.push(LeafUpdate { doc, old, new });
            }
        }
        self.digest.stage(&*self.store, &updates, batch)
    }

    /// Evicts the least recently used documents that are fully flushed
    /// (and wait for no dependency) until the cache is within its bound.
    /// If documents with unflushed sync states keep it over, a flush is
    /// scheduled so that they can go next time.
    fn evict_cold_documents(&mut self, now: Time) {
        let limit = self.config.max_cached_document_bytes;
        if self.docs.bytes() > limit {
            let awaiting: BTreeSet<DocumentId> =
                self.awaiting_flush.iter().map(|(_, doc)| *doc).collect();
            let syncing: BTreeSet<DocumentId> =
                self.dirty_sync.iter().map(|(doc, _)| *doc).collect();
            let mut excess = self.docs.bytes() - limit;
            let mut victims = Vec::new();
            for (doc, bytes) in self.docs.coldest() {
                if excess == 0 {
                    break;
                }
                let flushing = self
                    .flushing
                    .as_ref()
                    .is_some_and(|flight| flight.pinned.contains(&doc));
                let pinned = self.dirty_docs.contains(&doc)
                    || awaiting.contains(&doc)
                    || syncing.contains(&doc)
                    || flushing;
                if pinned && !self.config.planted(FaultInjection::EvictDirtyDocuments) {
                    continue;
                }
                let waits = self
                    .docs
                    .get(&doc)
                    .is_some_and(|d| !d.doc.get_missing_deps(&[]).is_empty());
                if !waits {
                    victims.push(doc);
                    excess = excess.saturating_sub(bytes);
                }
            }
            for doc in victims {
                self.docs.remove(doc);
                self.metrics.documents_evicted += 1;
            }
            if excess > 0 && !self.dirty_sync.is_empty() {
                self.schedule_flush(now);
            }
        }
        self.metrics.cached_documents = self.docs.len() as u64;
        self.metrics.cached_document_bytes = self.docs.bytes() as u64;
    }

    // ----- document-set reconciliation ----------------------------------

    /// Starts reconciling the document sets with `peer`: sends it the
    /// digest's root. If the roots match, that one message is all.
    fn start_reconciliation(&mut self, peer: NodeId) {
        match self.digest.node(&*self.store, 0, 0) {
            Ok(root) => self.send_digest(
                peer,
                Message::DigestNodes {
                    nodes: vec![root.at(0, 0)],
                },
            ),
            Err(error) => {
                tracing::warn!(%error, "digest root does not read; skipping reconciliation")
            }
        }
    }

    fn send_digest(&mut self, peer: NodeId, message: Message) {
        if self.enqueue(peer, message) {
            self.metrics.digest_messages_sent += 1;
        }
    }

    fn receive_digest(
        &mut self,
        now: Time,
        from: NodeId,
        message: Message,
    ) -> Result<(), ReplicaError> {
        message
            .validate()
            .map_err(|error| ReplicaError::InvalidDigest {
                peer: from,
                reason: error.to_string(),
            })?;
        self.metrics.digest_messages_received += 1;
        match message {
            Message::DigestNodes { nodes } => self.receive_digest_nodes(from, &nodes),
            Message::DigestLeaves {
                bucket,
                after,
                entries,
                through_end,
            } => self.receive_digest_leaves(now, from, bucket, after, entries, through_end),
            _ => Ok(()),
        }
    }

    /// For every node of `from`'s digest that differs from ours: our
    /// children of it (above the buckets) or our leaves of it (a bucket).
    fn receive_digest_nodes(
        &mut self,
        from: NodeId,
        nodes: &[DigestNode],
    ) -> Result<(), ReplicaError> {
        let mut children = Vec::new();
        let mut buckets = Vec::new();
        for node in nodes {
            let mine = self.digest.node(&*self.store, node.level, node.prefix)?;
            let theirs = NodeValue {
                xor: node.xor,
                count: node.count,
            };
            if mine == theirs {
                continue;
            }
            if node.level < LEAF_LEVEL {
                children.extend(
                    self.digest
                        .children(&*self.store, node.level, node.prefix)?,
                );
            } else if let Ok(bucket) = u16::try_from(node.prefix) {
                buckets.push(bucket);
            }
        }
        for chunk in children.chunks(MAX_DIGEST_NODES) {
            self.send_digest(
                from,
                Message::DigestNodes {
                    nodes: chunk.to_vec(),
                },
            );
        }
        for bucket in buckets {
            self.send_bucket(from, bucket)?;
        }
        Ok(())
    }

    /// Sends `peer` our leaves of `bucket`, split into id ranges of at most
    /// [`Config::max_digest_leaves`] (itself at most [`murmur_wire::MAX_DIGEST_LEAVES`]).
    fn send_bucket(&mut self, peer: NodeId, bucket: u16) -> Result<(), ReplicaError> {
        let entries: Vec<(DocumentId, u64)> =
            layout::scan_bucket(&*self.store, bucket.to_be_bytes())?
                .into_iter()
                .map(|(doc, leaf)| (DocumentId::from_bytes(doc), leaf))
                .collect();
        if entries.is_empty() {
            self.send_digest(
                peer,
                Message::DigestLeaves {
                    bucket,
                    after: None,
                    entries,
                    through_end: true,
                },
            );
            return Ok(());
        }
        let per_message = self.config.digest_leaves_per_message();
        let parts = entries.len().div_ceil(per_message);
        if parts > 1 {
            self.metrics.digest_buckets_split += 1;
        }
        let mut after = None;
        for (index, part) in entries.chunks(per_message).enumerate() {
            self.send_digest(
                peer,
                Message::DigestLeaves {
                    bucket,
                    after,
                    entries: part.to_vec(),
                    through_end: index + 1 == parts,
                },
            );
            after = part.last().map(|(doc, _)| *doc);
        }
        Ok(())
    }

    /// Compares `from`'s leaves of (a range of) a bucket with ours and
    /// syncs every document whose leaf differs or that only one side holds.
    fn receive_digest_leaves(
        &mut self,
        now: Time,
        from: NodeId,
        bucket: u16,
        after: Option<DocumentId>,
        entries: Vec<(DocumentId, u64)>,
        through_end: bool,
    ) -> Result<(), ReplicaError> {
        let last = if through_end {
            None
        } else {
            entries.last().map(|(doc, _)| *doc)
        };
        let covered = |doc: &DocumentId| {
            after.is_none_or(|after| *doc > after) && last.is_none_or(|last| *doc <= last)
        };
        let mine: BTreeMap<DocumentId, u64> =
            layout::scan_bucket(&*self.store, bucket.to_be_bytes())?
                .into_iter()
                .map(|(doc, leaf)| (DocumentId::from_bytes(doc), leaf))
                .filter(|(doc, _)| covered(doc))
                .collect();
        let theirs: BTreeMap<DocumentId, u64> = entries.into_iter().collect();
        let mut differing: BTreeSet<DocumentId> = mine
            .iter()
            .filter(|(doc, leaf)| theirs.get(doc) != Some(leaf))
            .map(|(doc, _)| *doc)
            .collect();
        differing.extend(theirs.keys().filter(|doc| !mine.contains_key(doc)));
        for doc in differing {
            self.reconcile_document(now, from, doc);
        }
        Ok(())
    }

    /// Syncs one document found to differ from `peer`'s, creating it here
    /// if only the peer holds it.
    fn reconcile_document(&mut self, now: Time, peer: NodeId, doc: DocumentId) {
        match self.document_or_new(now, doc) {
            Ok(_) => {}
            Err(ReplicaError::Loading(_)) => {
                self.park(doc, Parked::Reconcile { peer });
                return;
            }
            Err(error) => {
                tracing::debug!(doc = %doc, %error, "cannot reconcile document");
                return;
            }
        }
        self.metrics.documents_reconciled += 1;
        let reset = !self.config.planted(FaultInjection::NoSyncResetOnReconcile);
        self.sync_with(doc, peer, reset);
        // Its sync state must be flushed before it can be evicted.
        self.schedule_flush(now);
    }

    fn receive_membership(
        &mut self,
        now: Time,
        from: NodeId,
        data: &[u8],
    ) -> Result<(), ReplicaError> {
        let Some(membership) = self.membership.as_mut() else {
            return Ok(()); // membership is off here: ignore it
        };
        let result = membership.handle_data(data);
        self.drain_membership(now);
        result.map_err(|error| ReplicaError::InvalidMembership {
            peer: from,
            reason: error.to_string(),
        })
    }

    /// Sends what membership wants sent and reports what it learned.
    fn drain_membership(&mut self, now: Time) {
        let Some(membership) = self.membership.as_mut() else {
            return;
        };
        let (sends, events) = membership.drain(now);
        for (to, data) in sends {
            // Only over connections that exist: an unreachable member fails
            // its probe, which is the truth.
            self.enqueue(to, Message::Membership { data });
        }
        for event in events {
            self.events.push_back(match event {
                MembershipEvent::Up(member) => {
                    tracing::info!(peer = %member.node.short(), addr = %member.addr, "member up");
                    Event::MemberUp {
                        node: member.node,
                        addr: member.addr,
                    }
                }
                MembershipEvent::Down(member) => {
                    tracing::info!(peer = %member.node.short(), "member down");
                    Event::MemberDown { node: member.node }
                }
            });
        }
    }

    /// Tells each peer whose changes a flush just made durable what this
    /// node now durably holds (the heads as saved, not any newer ones in
    /// memory), so it can count copies of its writes.
    fn send_owed_heads(&mut self, owed: Vec<(DocumentId, NodeId)>) {
        for (doc, peer) in owed {
            match self.resident(doc) {
                Ok(_) => {}
                Err(ReplicaError::Loading(_)) => {
                    self.park(doc, Parked::OwedHeads { peer });
                    continue;
                }
                Err(_) => continue,
            }
            let Some(document) = self.docs.get(&doc) else {
                continue;
            };
            let heads = document
                .saved_heads()
                .iter()
                .take(murmur_wire::MAX_HEADS)
                .map(|hash| murmur_wire::ChangeHash(hash.0))
                .collect();
            self.enqueue(peer, Message::Heads { doc, heads });
        }
    }

    /// `peer` holds `doc` up to `heads`: count it as a copy of every write
    /// those heads include.
    fn receive_heads(&mut self, peer: NodeId, doc: DocumentId, heads: &[murmur_wire::ChangeHash]) {
        if !self.replication.waits_for(doc, peer) {
            return;
        }
        match self.resident(doc) {
            Ok(_) => {}
            Err(ReplicaError::Loading(_)) => {
                let heads = heads.to_vec();
                self.park(
                    doc,
                    Parked::Message {
                        from: peer,
                        message: Message::Heads { doc, heads },
                    },
                );
                return;
            }
            Err(_) => return,
        }
        let Some(document) = self.docs.get(&doc) else {
            return;
        };
        let heads: Vec<ChangeHash> = heads.iter().map(|hash| ChangeHash(hash.0)).collect();
        // Changes not among the heads' ancestors (heads this node does not
        // know are ignored, which can only undercount until the next report).
        let not_held: BTreeSet<ChangeHash> = document
            .doc
            .get_changes_meta(&heads)
            .into_iter()
            .map(|meta| meta.hash)
            .collect();
        let grown = self.replication.confirm(doc, peer, |hash| {
            document.doc.get_change_meta_by_hash(hash).is_some() && !not_held.contains(hash)
        });
        for (write, copies) in grown {
            self.acknowledge_replicated(write, doc, copies);
        }
    }

    fn acknowledge_replicated(&mut self, write: WriteId, doc: DocumentId, copies: usize) {
        let copies = if self.config.planted(FaultInjection::ReplicatedOvercount) {
            copies + 1
        } else {
            copies
        };
        self.events.push_back(Event::Acknowledged {
            write,
            doc,
            level: AckLevel::Replicated(u32::try_from(copies).unwrap_or(u32::MAX)),
        });
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
) -> Vec<AutomergeError> {
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
    let Err(error) = doc.apply_changes_log_patches(all, log) else {
        return Vec::new();
    };
    if single {
        return vec![error];
    }
    messages
        .into_iter()
        .filter_map(|changes| {
            let changes = keep(doc, changes);
            doc.apply_changes_log_patches(changes, log).err()
        })
        .collect()
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

/// A committed local transaction.
struct Committed<O> {
    /// What the closure returned.
    result: O,
    /// The change's hash; none if it changed nothing.
    hash: Option<ChangeHash>,
    /// The patches of what it did, for an observed document.
    patches: Option<Vec<automerge::Patch>>,
    /// Automerge operations in it.
    ops: usize,
}

/// A local change: `change` in one transaction stamped with `options`,
/// rolled back if it fails, with patches for an `observed` document (an
/// inactive patch log costs nothing).
fn transact<O>(
    doc: &mut automerge::Automerge,
    options: CommitOptions,
    observed: bool,
    max_ops: usize,
    change: impl FnOnce(&mut Transaction<'_>) -> Result<O, AutomergeError>,
) -> Result<Committed<O>, ReplicaError> {
    let mut transaction = doc
        .transaction_log_patches(automerge::PatchLog::new(observed))
        .map_err(|mismatch| ReplicaError::ChangeRejected(AutomergeError::from(mismatch)))?;
    match change(&mut transaction) {
        Ok(_) if transaction.pending_ops() > max_ops => {
            let ops = transaction.pending_ops();
            transaction.rollback();
            tracing::warn!(ops, max_ops, "change refused: too many operations");
            Err(ReplicaError::ChangeTooLarge { ops, max_ops })
        }
        Ok(result) => {
            let ops = transaction.pending_ops();
            let (hash, mut log) = transaction.commit_with(options);
            let patches = observed.then(|| doc.make_patches(&mut log));
            Ok(Committed {
                result,
                hash,
                patches,
                ops,
            })
        }
        Err(error) => {
            transaction.rollback();
            Err(ReplicaError::ChangeRejected(error))
        }
    }
}
