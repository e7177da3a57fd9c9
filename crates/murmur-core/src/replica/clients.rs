//! Clients that sync a document through this node with Automerge's own
//! sync protocol (automerge-repo's browsers and apps, over a WebSocket).
//! A client is not a peer: it has no node id, no durable acks of its own
//! and no say in reconciliation. Its caller keeps its sync state; what it
//! sends is applied like a local merge (acknowledged, flushed, pushed to
//! every peer, reported in the feed as local).

use automerge::sync::{self, SyncDoc};
use automerge::ChangeHash;
use murmur_wire::DocumentId;

use super::{LocalWrite, Origin, Replica, WriteId};
use crate::document::{Mark, RecentChanges};
use crate::{ReplicaError, Time};

/// The most hashes a client's sync state may hold as sent-but-unconfirmed
/// for its messages to take [`receive_without_pruning`]'s short path;
/// past it, Automerge's own walk prunes them.
const FAST_ACK_MAX_SENT: usize = 4096;

/// The most bytes of changes one answer made from the recent changes
/// carries (give or take one apply's worth, see [`RecentChanges::cut`]): a
/// client far behind gets what it lacks in pieces, so the frames waiting
/// for it, and those it must read before it can answer a ping, stay small.
const ANSWER_MAX_BYTES: usize = 1024 * 1024;

/// A client's sync state for one document: Automerge's, and how far into
/// the document's recent changes the client is known to have everything,
/// which lets this node answer it without walking the change graph.
/// Kept by the caller between steps, one per client and document.
///
/// ```
/// use murmur_core::ClientState;
/// use murmur_core::automerge::sync;
///
/// let fresh = ClientState::default();
/// // A state kept from an earlier session (what the node knew the
/// // client had); its place in the recent changes is not kept.
/// let restored = ClientState::from(sync::State::new());
/// assert_eq!(fresh.sync, restored.sync);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ClientState {
    /// Automerge's sync state with the client.
    pub sync: sync::State,
    /// The client has every change before this mark of the document's
    /// [`RecentChanges`](crate::document::RecentChanges).
    has_before: Option<Mark>,
}

impl ClientState {
    /// Whether its messages take [`receive_without_pruning`] (else
    /// Automerge's own `receive_sync_message`).
    fn takes_short_path(&self) -> bool {
        self.sync.sent_hashes.len() <= FAST_ACK_MAX_SENT && !self.sync.read_only
    }

    /// Takes what a message said about the client's heads.
    fn stands(&mut self, stands: Stands, recent: Option<&RecentChanges>) {
        match stands {
            Stands::HasAll => self.has_before = recent.map(RecentChanges::end),
            Stands::HasNothing => self.has_before = None,
            Stands::Unknown => {}
        }
    }
}

/// What a client's message says it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stands {
    /// Its heads are this document's: it has every change.
    HasAll,
    /// It has no heads: it has lost everything (or never had it).
    HasNothing,
    /// Something in between.
    Unknown,
}

impl From<sync::State> for ClientState {
    fn from(sync: sync::State) -> Self {
        ClientState {
            sync,
            has_before: None,
        }
    }
}

/// What [`Replica::handle_client_sync`] did.
#[derive(Debug)]
pub struct ClientSync {
    /// The client's changes, applied as one local write (`None`: they
    /// brought nothing new, or there were none, or they were applied in
    /// the same batch as another client's and the write is reported with
    /// that one's step).
    pub write: Option<LocalWrite<()>>,
    /// The sync message to send the client next, encoded, if there is one.
    pub reply: Option<Vec<u8>>,
    /// The document's heads now.
    pub heads: Vec<ChangeHash>,
}

/// One client's step in [`Replica::handle_client_steps`].
#[derive(Debug)]
pub struct ClientStep<'a> {
    /// The client's sync state, kept by the caller between steps.
    pub state: &'a mut ClientState,
    /// What the client sent since its last step, in order.
    pub messages: Vec<sync::Message>,
    /// Whether to produce the message to send the client next.
    pub answer: bool,
}

impl Replica {
    /// Goes on with a client's sync conversation about `doc`: applies the
    /// client's `messages` in order (those that arrived while its last step
    /// ran: one step takes them all) with its sync `state`, then produces
    /// the next message for it if `answer` (a caller that gathers sends asks
    /// for it in a later step). With no messages this only asks what to send
    /// (the document changed since the client last heard).
    ///
    /// The document must be in memory ([`ReplicaError::Loading`]
    /// otherwise, as for a local change). A message whose changes name
    /// actors or dependencies it cannot, or that Automerge fails to apply,
    /// is refused with [`ReplicaError::ForeignData`]; a failure halfway
    /// rebuilds the document from what is stored, as for a peer's data.
    /// Changes are refused while the disk is nearly full
    /// ([`ReplicaError::DiskFull`]).
    pub fn handle_client_sync(
        &mut self,
        now: Time,
        doc: DocumentId,
        state: &mut ClientState,
        messages: Vec<sync::Message>,
        answer: bool,
    ) -> Result<ClientSync, ReplicaError> {
        let step = ClientStep {
            state,
            messages,
            answer,
        };
        self.handle_client_steps(now, doc, vec![step])
            .pop()
            .expect("one result per step")
    }

    /// [`Replica::handle_client_sync`] for several clients of `doc` at
    /// once, one result per step, in order. Their changes are applied as
    /// one batch with one integrity check (which rebuilds the changes from
    /// the document's ops, a pass over all of them: with a step each, that
    /// pass was most of a node's time at 256 typing clients), and every
    /// answer is made after all of them, so it carries every client's
    /// changes.
    ///
    /// A client's data that fails the checks beforehand, or that Automerge
    /// refuses, fails its step only. A failure of the integrity check (an
    /// Automerge bug) fails every step whose changes were in the batch, and
    /// the document is rebuilt from what is stored: the steps after it fail
    /// as any command does while a document loads.
    ///
    /// ```
    /// use murmur_core::automerge::sync::{self, SyncDoc};
    /// use murmur_core::automerge::transaction::Transactable;
    /// use murmur_core::automerge::{Automerge, ROOT};
    /// use murmur_core::{ClientState, ClientStep, Config, Replica, Time};
    /// use murmur_store::MemStore;
    /// use murmur_wire::NodeId;
    ///
    /// let now = Time::from_millis(1_700_000_000_000);
    /// let config = Config::new(NodeId([1; 32]));
    /// let mut replica = Replica::open(config, Box::new(MemStore::new()), now)?;
    /// let doc = replica.create_document(now);
    /// // Two clients: their documents, their sync states, and the node's
    /// // state for each.
    /// let mut clients: Vec<(Automerge, sync::State, ClientState)> = (0..2)
    ///     .map(|_| (Automerge::new(), sync::State::new(), ClientState::default()))
    ///     .collect();
    /// let mut tx = clients[0].0.transaction();
    /// tx.put(ROOT, "title", "hello")?;
    /// tx.commit();
    /// for _ in 0..8 {
    ///     let outgoing: Vec<Vec<sync::Message>> = clients
    ///         .iter_mut()
    ///         .map(|(am, state, _)| am.generate_sync_message(state).into_iter().collect())
    ///         .collect();
    ///     let steps = clients
    ///         .iter_mut()
    ///         .zip(outgoing)
    ///         .map(|((_, _, state), messages)| ClientStep { state, messages, answer: true })
    ///         .collect();
    ///     let results = replica.handle_client_steps(now, doc, steps);
    ///     for ((am, state, _), result) in clients.iter_mut().zip(results) {
    ///         if let Some(reply) = result?.reply {
    ///             am.receive_sync_message(state, sync::Message::decode(&reply)?)?;
    ///         }
    ///     }
    /// }
    /// // The second client has the first one's change, through the replica.
    /// assert_eq!(clients[1].0.get_heads(), clients[0].0.get_heads());
    /// assert!(!clients[1].0.get_heads().is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn handle_client_steps(
        &mut self,
        now: Time,
        doc: DocumentId,
        mut steps: Vec<ClientStep<'_>>,
    ) -> Vec<Result<ClientSync, ReplicaError>> {
        let _span =
            tracing::debug_span!("client_sync", doc = %doc, clients = steps.len()).entered();
        self.observe_clock(now);
        if let Ok(document) = self.document_mut(doc) {
            document.recent.get_or_insert_with(RecentChanges::new);
        }
        let short: Vec<bool> = steps
            .iter()
            .map(|step| step.state.takes_short_path())
            .collect();
        let mut outcomes: Vec<Result<Option<LocalWrite<()>>, ReplicaError>> =
            steps.iter().map(|_| Ok(None)).collect();
        // Automerge's own path takes a client's messages one by one.
        for (i, step) in steps.iter_mut().enumerate().filter(|(i, _)| !short[*i]) {
            for message in std::mem::take(&mut step.messages) {
                match self.apply_client_message(now, doc, step.state, message) {
                    Ok(Some(applied)) => {
                        let ops = outcomes[i]
                            .as_ref()
                            .ok()
                            .and_then(Option::as_ref)
                            .map_or(0, |w| w.ops);
                        outcomes[i] = Ok(Some(LocalWrite {
                            ops: ops + applied.ops,
                            ..applied
                        }));
                    }
                    Ok(None) => {}
                    Err(error) => {
                        outcomes[i] = Err(error);
                        break;
                    }
                }
            }
        }
        let batch: Vec<usize> = (0..steps.len())
            .filter(|&i| short[i] && !steps[i].messages.is_empty())
            .collect();
        self.apply_client_batch(now, doc, &mut steps, &batch, &mut outcomes);
        let mut heads = None;
        steps
            .into_iter()
            .zip(outcomes)
            .map(|(step, outcome)| {
                let write = outcome?;
                let document = self.document_mut(doc)?;
                let recent = document.recent.get_or_insert_with(RecentChanges::new);
                // The document does not change while its steps are
                // answered: its heads are read once.
                let ours = heads.get_or_insert_with(|| document.doc.get_heads());
                let reply = if step.answer {
                    match message_from_recent(&document.doc, ours, recent, step.state) {
                        Some(message) => message.map(sync::Message::encode),
                        None => {
                            crate::document::next_sync_message(&document.doc, &mut step.state.sync)
                        }
                    }
                } else {
                    None
                };
                Ok(ClientSync {
                    write,
                    reply,
                    heads: ours.clone(),
                })
            })
            .collect()
    }

    /// Applies the messages of the steps in `batch` (clients on the short
    /// path, [`receive_without_pruning`]): those with changes as one
    /// verified apply, the rest (acknowledgements) on their own. What
    /// fails goes to `outcomes`, the write to the first step of the batch
    /// that did not fail.
    fn apply_client_batch(
        &mut self,
        now: Time,
        doc: DocumentId,
        steps: &mut [ClientStep<'_>],
        batch: &[usize],
        outcomes: &mut [Result<Option<LocalWrite<()>>, ReplicaError>],
    ) {
        let refuse = |reason: String| ReplicaError::ForeignData { reason };
        // Each client's data is checked on its own: one's refusal is not
        // another's. Those with changes are applied below.
        let mut changing: Vec<(usize, Option<Vec<ChangeHash>>, usize)> = Vec::new();
        // Nothing changes the document in this loop.
        let mut heads_now = None;
        for &i in batch {
            let document = match self.document_mut(doc) {
                Ok(document) => document,
                Err(error) => {
                    outcomes[i] = Err(error);
                    continue;
                }
            };
            let step = &mut steps[i];
            let hashes = match crate::foreign::check_sync_messages(&document.doc, &step.messages) {
                Ok(hashes) => hashes,
                Err(reason) => {
                    outcomes[i] = Err(refuse(reason));
                    continue;
                }
            };
            let changes: usize = step.messages.iter().map(|m| m.changes.len()).sum();
            if changes > 0 {
                changing.push((i, hashes, changes));
                continue;
            }
            for message in std::mem::take(&mut step.messages) {
                let mut log = automerge::PatchLog::new(false);
                // With no changes nothing is applied.
                match receive_without_pruning(
                    &mut document.doc,
                    &mut step.state.sync,
                    message,
                    &mut log,
                    &mut heads_now,
                ) {
                    Ok(stands) => step.state.stands(stands, document.recent.as_ref()),
                    Err(error) => {
                        outcomes[i] = Err(refuse(error.to_string()));
                        break;
                    }
                }
            }
        }
        if changing.is_empty() {
            return;
        }
        if self.check_writable().is_err() {
            for &(i, _, _) in &changing {
                if let Err(error) = self.check_writable() {
                    outcomes[i] = Err(error);
                }
            }
            return;
        }
        let observed = self.events.observed(doc);
        let document = match self.document_mut(doc) {
            Ok(document) => document,
            Err(_) => {
                for &(i, _, _) in &changing {
                    outcomes[i] = self.document_mut(doc).map(|_| None);
                }
                return;
            }
        };
        // The hashes of all their changes, when every chunk could be
        // decoded (see `check_sync_messages`): what they add is then found
        // among them.
        let hashes: Option<Vec<ChangeHash>> = changing
            .iter()
            .map(|(_, hashes, _)| hashes.clone())
            .collect::<Option<Vec<Vec<ChangeHash>>>>()
            .map(|all| all.concat());
        let start = document.recent.as_ref().map(RecentChanges::end);
        let before = document.heads();
        let mut heads_now = Some(before.clone());
        let mut log = automerge::PatchLog::new(observed);
        let outcome = document.apply_verified_with(hashes.as_deref(), |document| {
            changing
                .iter()
                .map(|&(i, _, _)| {
                    let step = &mut steps[i];
                    // What the last message that said anything said.
                    let mut stands = Stands::Unknown;
                    for message in std::mem::take(&mut step.messages) {
                        let said = receive_without_pruning(
                            &mut document.doc,
                            &mut step.state.sync,
                            message,
                            &mut log,
                            &mut heads_now,
                        )?;
                        if said != Stands::Unknown {
                            stands = said;
                        }
                    }
                    Ok(stands)
                })
                .collect::<Vec<Result<Stands, automerge::AutomergeError>>>()
        });
        let (results, added) = match outcome {
            Ok((results, _authors, added)) => (results, added),
            Err(reason) => {
                self.rebuild_document(doc, None, &reason);
                for &(i, _, _) in &changing {
                    outcomes[i] = Err(refuse(reason.clone()));
                }
                return;
            }
        };
        // The changes of the batch up to each client's own, which it has.
        let mut seen: Option<Vec<ChangeHash>> = Some(Vec::new());
        for (&(i, ref hashes, _), result) in changing.iter().zip(results) {
            let client = &mut *steps[i].state;
            match (&mut seen, hashes) {
                (Some(seen), Some(hashes)) => seen.extend(hashes),
                (seen, _) => *seen = None,
            }
            match result {
                Ok(Stands::HasAll) => {
                    // It has what the document had before the batch, and
                    // the batch's changes up to its own (not those after).
                    client.has_before = start.filter(|_| seen.is_some());
                    client
                        .sync
                        .sent_hashes
                        .extend(seen.iter().flatten().copied());
                }
                Ok(stands) => {
                    // It has what it sent: never sent back.
                    client
                        .sync
                        .sent_hashes
                        .extend(hashes.iter().flatten().copied());
                    client.stands(stands, None);
                }
                Err(error) => outcomes[i] = Err(refuse(error.to_string())),
            }
        }
        let patches = observed.then(|| document.doc.make_patches(&mut log));
        let heads = document.heads();
        let added = document.unsaved_tail(added);
        let changes = changing.iter().map(|(_, _, changes)| changes).sum();
        // What Automerge applied before an error still counts (and is
        // reported): the error refuses the rest of that client's step.
        let write = self.accept_client_changes(now, doc, &before, &heads, added, patches, changes);
        if let Some(&(first, _, _)) = changing.iter().find(|(i, _, _)| outcomes[*i].is_ok()) {
            outcomes[first] = Ok(write);
        }
    }

    /// Applies one client message on Automerge's own path
    /// (`receive_sync_message`, which prunes the sent hashes).
    fn apply_client_message(
        &mut self,
        now: Time,
        doc: DocumentId,
        client: &mut ClientState,
        message: sync::Message,
    ) -> Result<Option<LocalWrite<()>>, ReplicaError> {
        let changes = message.changes.len();
        if changes > 0 {
            self.check_writable()?;
        }
        let observed = self.events.observed(doc);
        let document = self.document_mut(doc)?;
        let refuse = |reason: String| ReplicaError::ForeignData { reason };
        let messages = std::slice::from_ref(&message);
        let hashes =
            crate::foreign::check_sync_messages(&document.doc, messages).map_err(refuse)?;
        let before = document.heads();
        let mut log = automerge::PatchLog::new(observed);
        let outcome = document.apply_verified_with(hashes.as_deref(), |document| {
            document
                .doc
                .receive_sync_message_log_patches(&mut client.sync, message, &mut log)
        });
        let (result, added) = match outcome {
            Ok((result, _authors, added)) => (result, added),
            Err(reason) => {
                self.rebuild_document(doc, None, &reason);
                return Err(refuse(reason));
            }
        };
        if result.is_ok() {
            // It has what it sent: never sent back.
            client
                .sync
                .sent_hashes
                .extend(hashes.iter().flatten().copied());
        }
        let patches = observed.then(|| document.doc.make_patches(&mut log));
        let heads = document.heads();
        let added = document.unsaved_tail(added);
        // What Automerge applied before an error still counts (and is
        // reported below); the error refuses the rest.
        let write = self.accept_client_changes(now, doc, &before, &heads, added, patches, changes);
        result.map_err(|error| refuse(error.to_string()))?;
        Ok(write)
    }

    /// Makes the changes a client's message added to `doc` (its heads went
    /// from `before` to `heads`) a local write: pushed to every peer,
    /// awaiting the next flush, in the feed.
    #[allow(clippy::too_many_arguments)]
    fn accept_client_changes(
        &mut self,
        now: Time,
        doc: DocumentId,
        before: &[ChangeHash],
        heads: &[ChangeHash],
        added: Vec<Vec<u8>>,
        patches: Option<Vec<automerge::Patch>>,
        changes: usize,
    ) -> Option<LocalWrite<()>> {
        // A change nothing else depends on is a head: any new change
        // makes one.
        let &hash = heads.iter().find(|head| !before.contains(head))?;
        for raw in added {
            self.push_to_all(doc, raw);
        }
        let write = WriteId(self.next_write);
        self.next_write += 1;
        self.accept_local_write(write, doc, hash);
        self.changed(now, doc, Origin::Local, patches);
        Some(LocalWrite {
            write,
            change: Some(hash),
            ops: changes,
            output: (),
        })
    }
}

/// Takes a client's sync message into its sync `state` (applying its
/// changes to `doc`, their patches into `log`) as Automerge's
/// `receive_sync_message` does, less one step: Automerge prunes the hashes
/// it sent from `sent_hashes` by walking every ancestor of the client's
/// heads, the whole history on every message (half a node's CPU with 16
/// typing clients, nine tenths with 64). Here they are all dropped when the
/// client has everything this document has, and otherwise kept. Keeping
/// one the client already has only means it is not sent again, which it
/// need not be: a WebSocket delivers what was sent, in order, or the
/// session ends (and a new one starts from a new state). The set stays
/// bounded: past [`FAST_ACK_MAX_SENT`] Automerge's own path runs.
///
/// `heads_now` carries `doc`'s heads (as `get_heads` gives them, sorted)
/// from one message to the next: taken when `Some`, and left as the heads
/// after this message when it was taken in.
fn receive_without_pruning(
    doc: &mut automerge::Automerge,
    state: &mut sync::State,
    message: sync::Message,
    log: &mut automerge::PatchLog,
    heads_now: &mut Option<Vec<ChangeHash>>,
) -> Result<Stands, automerge::AutomergeError> {
    use automerge::sync::{Capability, MessageFlags};
    let sync::Message {
        heads,
        need,
        have,
        changes,
        flags,
        ..
    } = message;
    state.in_flight = false;
    if let Some(flags) = flags {
        let mut capabilities = vec![Capability::MessageV2];
        if flags.contains(MessageFlags::SUPPORTS_SYNC_RESET) {
            capabilities.push(Capability::SyncReset);
        }
        state.their_capabilities = Some(capabilities);
        if flags.contains(MessageFlags::SYNC_RESET) {
            state.sent_hashes.clear();
        }
        state.peer_read_only = flags.contains(MessageFlags::READ_ONLY);
    }
    let no_changes = changes.is_empty();
    // Automerge's heads are sorted; with many typists there are hundreds,
    // so they are read once per change of state and looked up by search.
    let before = match heads_now.take() {
        Some(heads) => heads,
        None => doc.get_heads(),
    };
    let ours = if no_changes {
        before
    } else {
        for chunk in changes.iter() {
            doc.load_incremental_log_patches(chunk, log)?;
        }
        let after = doc.get_heads();
        // The shared heads advance to the new heads, and keep those of the
        // old shared heads that are still heads.
        let mut old_shared = std::mem::take(&mut state.shared_heads);
        old_shared.sort_unstable();
        let shared: Vec<ChangeHash> = after
            .iter()
            .filter(|head| {
                before.binary_search(head).is_err() || old_shared.binary_search(head).is_ok()
            })
            .copied()
            .collect();
        state.shared_heads = shared;
        after
    };
    *heads_now = Some(ours.clone());
    let mut theirs = heads.clone();
    theirs.sort_unstable();
    let mut sorted_ours = ours.clone();
    sorted_ours.sort_unstable();
    let stands = if heads.is_empty() {
        Stands::HasNothing
    } else if theirs == sorted_ours {
        state.sent_hashes.clear();
        Stands::HasAll
    } else {
        Stands::Unknown
    };
    if no_changes && heads == ours {
        state.last_sent_heads.clone_from(&heads);
    }
    let unknown = unknown_of(doc, &heads);
    let known: Vec<ChangeHash> = heads
        .iter()
        .filter(|head| !unknown.contains(head))
        .copied()
        .collect();
    if known.len() == heads.len() {
        state.shared_heads.clone_from(&heads);
        if heads.is_empty() {
            state.last_sent_heads = Vec::new();
            state.sent_hashes = Default::default();
        }
    } else {
        let mut shared: Vec<ChangeHash> =
            state.shared_heads.iter().chain(&known).copied().collect();
        shared.sort_unstable();
        shared.dedup();
        state.shared_heads = shared;
    }
    state.their_have = Some(have);
    state.their_heads = Some(heads);
    state.their_need = Some(need);
    Ok(stands)
}

/// Those of `hashes` that `doc` does not hold, and (conservatively) any
/// dependency its queued changes wait for: Automerge's missing-dependency
/// check, a hash lookup each, where `get_change_meta_by_hash` builds a
/// change's metadata (a third of a node's CPU at 256 typists, with as many
/// heads).
fn unknown_of(doc: &automerge::Automerge, hashes: &[ChangeHash]) -> Vec<ChangeHash> {
    use automerge::ReadDoc;
    doc.get_missing_deps(hashes)
}

/// The next message for a client, made from the document's recent changes
/// (`Some`; `Some(None)`: nothing to send), or `None` when Automerge's own
/// `generate_sync_message` must make it: the client's place in them is not
/// known, it needs or lacks something only Automerge can work out, or the
/// state is in a mode this does not handle (read-only, a reset).
///
/// The message is what Automerge would send, but for two things. Its
/// changes are every recent change since the client's mark that it was not
/// sent and did not send (Automerge sends those not covered by the client's
/// Bloom filter, which are the same unless the filter has a false
/// positive). And its `have` says this node has everything up to its heads,
/// with an empty Bloom filter (Automerge summarises the changes since the
/// heads both sides share, a walk of the change graph): true, and the
/// client knows every one of those heads once it applies this message.
/// Afterwards the client has every change applied so far, so its mark moves
/// to the end and the sent hashes are dropped. Version 2 (one chunk of
/// changes) goes to a client that said it reads it, as Automerge does.
///
/// When the changes since the mark come to more than [`ANSWER_MAX_BYTES`],
/// the message stops where [`RecentChanges::cut`] says and gives the
/// document's heads there instead of its heads now (both as its heads and
/// its `have`): the client holds them once it applies the message, and its
/// mark moves there. The next answer (to its acknowledgement, or when the
/// document changes) goes on from there.
fn message_from_recent(
    doc: &automerge::Automerge,
    ours: &[ChangeHash],
    recent: &RecentChanges,
    client: &mut ClientState,
) -> Option<Option<sync::Message>> {
    use automerge::sync::{BloomFilter, Capability, ChunkList, Have, MessageFlags, MessageVersion};
    let state = &client.sync;
    let fallback = |why: &str| {
        tracing::trace!(why, "a client's answer is left to Automerge");
        None
    };
    if state.read_only || state.needs_reset || state.peer_read_only {
        return fallback("mode");
    }
    let (Some(their_heads), Some(their_need), Some(their_have)) =
        (&state.their_heads, &state.their_need, &state.their_have)
    else {
        return fallback("not heard");
    };
    if their_heads.is_empty() || !their_need.is_empty() {
        return fallback("needs");
    }
    if !unknown_of(doc, their_heads).is_empty() {
        return fallback("unknown heads");
    }
    if let Some(have) = their_have.first() {
        if !unknown_of(doc, &have.last_sync).is_empty() {
            return fallback("unknown last sync");
        }
    }
    let Some(mark) = client.has_before else {
        return fallback("no mark");
    };
    let Some(since) = recent.since(mark) else {
        return fallback("mark too old");
    };
    // A client far behind is sent what it lacks a bounded piece at a time,
    // each with the heads the document had there, which the client then
    // holds.
    let cut = recent.cut(mark, ANSWER_MAX_BYTES);
    let (count, heads) = match cut {
        Some((count, heads)) => (count, heads),
        None => (usize::MAX, ours),
    };
    let changes: Vec<&[u8]> = since
        .take(count)
        .filter(|(hash, _)| !state.sent_hashes.contains(hash))
        .map(|(_, raw)| raw.as_slice())
        .collect();
    if state.last_sent_heads == ours && state.have_responded {
        if their_heads == ours && changes.is_empty() {
            return Some(None);
        }
        if state.in_flight {
            return Some(None);
        }
    }
    let state = &mut client.sync;
    state.have_responded = true;
    state.last_sent_heads = heads.to_vec();
    state.in_flight = true;
    match cut {
        Some((count, _)) => client.has_before = Some(RecentChanges::after(mark, count)),
        None => {
            state.sent_hashes.clear();
            client.has_before = Some(recent.end());
        }
    }
    let mut flags = MessageFlags::new();
    flags.set(MessageFlags::SUPPORTS_SYNC_RESET);
    // A client that reads version 2 gets the changes as one chunk, as
    // Automerge sends them.
    let v2 = state
        .their_capabilities
        .as_ref()
        .is_some_and(|capabilities| capabilities.contains(&Capability::MessageV2));
    let (version, chunks) = if v2 {
        let chunks = if changes.is_empty() {
            Vec::new()
        } else {
            vec![changes.concat()]
        };
        (MessageVersion::V2, chunks)
    } else {
        (
            MessageVersion::V1,
            changes.into_iter().map(<[u8]>::to_vec).collect(),
        )
    };
    Some(Some(sync::Message {
        heads: heads.to_vec(),
        need: Vec::new(),
        have: vec![Have {
            last_sync: heads.to_vec(),
            bloom: BloomFilter::default(),
        }],
        changes: ChunkList::from(chunks),
        flags: Some(flags),
        version,
    }))
}

#[cfg(test)]
mod tests {
    use automerge::sync::{self, SyncDoc};
    use automerge::transaction::Transactable;
    use automerge::{Automerge, ROOT};

    /// A replica on memory with one document, which has one change.
    fn replica_with_a_document() -> (crate::Replica, murmur_wire::DocumentId, crate::Time) {
        use crate::{Config, Replica, Time};
        use murmur_store::MemStore;
        use murmur_wire::NodeId;

        let now = Time::from_millis(1_700_000_000_000);
        let mut replica =
            Replica::open(Config::new(NodeId([1; 32])), Box::new(MemStore::new()), now).unwrap();
        let doc = replica.create_document(now);
        replica
            .handle_local_change(now, doc, |tx| tx.put(ROOT, "title", "typists"))
            .unwrap();
        (replica, doc, now)
    }

    /// A node and a client editing one document in turns, syncing after
    /// each edit: every message the node receives (acknowledgements and
    /// changes) is taken both ways, and the short path leaves the document
    /// and the state as Automerge does, but for `sent_hashes`, which holds
    /// at least what Automerge's does; and the node's next message is the
    /// same either way.
    #[test]
    fn a_client_message_leaves_the_state_as_automerge_would() {
        let (mut node, mut client) = (Automerge::new(), Automerge::new());
        let (mut node_state, mut client_state) = (sync::State::new(), sync::State::new());
        let (mut acknowledgements, mut with_changes) = (0, 0);
        for round in 0..120 {
            let edit = |doc: &mut Automerge, who: &str| {
                let mut tx = doc.transaction();
                tx.put(ROOT, format!("{who}{round}"), round as i64).unwrap();
                tx.commit();
            };
            match round % 3 {
                0 => edit(&mut node, "n"),
                1 => edit(&mut client, "c"),
                _ => {
                    edit(&mut node, "n");
                    edit(&mut client, "c");
                }
            }
            for _ in 0..8 {
                let to_client = node.generate_sync_message(&mut node_state);
                if round % 4 == 3 {
                    // The node moves on while its message travels: the
                    // acknowledgement names heads it has left behind.
                    edit(&mut node, "m");
                }
                if let Some(message) = &to_client {
                    client
                        .receive_sync_message(&mut client_state, message.clone())
                        .unwrap();
                }
                let to_node = client.generate_sync_message(&mut client_state);
                let Some(message) = to_node else {
                    if to_client.is_none() {
                        break;
                    }
                    continue;
                };
                let had_changes = !message.changes.is_empty();
                let mut automerge_doc = node.clone();
                let mut automerge_way = node_state.clone();
                automerge_doc
                    .receive_sync_message(&mut automerge_way, message.clone())
                    .unwrap();
                let mut log = automerge::PatchLog::new(false);
                super::receive_without_pruning(
                    &mut node,
                    &mut node_state,
                    message,
                    &mut log,
                    &mut None,
                )
                .unwrap();
                assert_eq!(node.get_heads(), automerge_doc.get_heads());
                assert!(node_state
                    .sent_hashes
                    .is_superset(&automerge_way.sent_hashes));
                let mut ours = node_state.clone();
                ours.sent_hashes = automerge_way.sent_hashes.clone();
                assert_eq!(ours.encode(), automerge_way.encode());
                assert_eq!(
                    (
                        &ours.their_heads,
                        &ours.their_need,
                        &ours.last_sent_heads,
                        ours.in_flight
                    ),
                    (
                        &automerge_way.their_heads,
                        &automerge_way.their_need,
                        &automerge_way.last_sent_heads,
                        automerge_way.in_flight
                    )
                );
                assert_eq!(ours.their_capabilities, automerge_way.their_capabilities);
                // With the sent hashes it kept, the node says the same.
                let next_ours = node.generate_sync_message(&mut node_state.clone());
                let next_automerge =
                    automerge_doc.generate_sync_message(&mut automerge_way.clone());
                assert_eq!(
                    next_ours.map(sync::Message::encode),
                    next_automerge.map(sync::Message::encode)
                );
                if had_changes {
                    with_changes += 1;
                } else {
                    acknowledgements += 1;
                }
            }
        }
        assert_eq!(node.get_heads(), client.get_heads());
        assert!(
            acknowledgements > 60 && with_changes > 30,
            "only {acknowledgements} acknowledgements and {with_changes} messages with changes compared"
        );
    }

    /// Eight Automerge clients type concurrently into one document through
    /// a replica, each sending every keystroke (now and then three in one
    /// step, applied as one batch), and the replica answering every client
    /// after each one (as a node's sessions do): every client
    /// ends with the replica's heads and every keystroke; most answers that
    /// carry changes come from the recent changes (their `have` is the
    /// replica's heads); and no client ever asks for a reset (which it
    /// would if an answer named heads it could not get).
    #[test]
    fn concurrent_clients_converge_on_answers_from_recent_changes() {
        use super::ClientState;
        use crate::Replica;
        use automerge::ReadDoc;

        let (mut replica, doc, now) = replica_with_a_document();
        const CLIENTS: usize = 8;
        let mut clients: Vec<(Automerge, sync::State, ClientState)> = (0..CLIENTS)
            .map(|_| (Automerge::new(), sync::State::new(), ClientState::default()))
            .collect();
        let (mut from_recent, mut with_changes, mut resets) = (0, 0, 0);
        let mut exchange = |replica: &mut Replica,
                            client: &mut (Automerge, sync::State, ClientState),
                            first: Vec<sync::Message>,
                            counting: bool| {
            let (ref mut am, ref mut am_state, ref mut node_state) = *client;
            let mut to_node = first;
            for _ in 0..16 {
                let step = replica
                    .handle_client_sync(now, doc, node_state, std::mem::take(&mut to_node), true)
                    .unwrap();
                let Some(reply) = step.reply else { break };
                let reply = sync::Message::decode(&reply).unwrap();
                if counting && !reply.changes.is_empty() {
                    with_changes += 1;
                    if reply
                        .have
                        .first()
                        .is_some_and(|h| h.last_sync == reply.heads)
                    {
                        from_recent += 1;
                    }
                }
                am.receive_sync_message(am_state, reply).unwrap();
                // The client resets when the replica's `have` names heads
                // it does not hold.
                let named = am_state
                    .their_have
                    .iter()
                    .flatten()
                    .flat_map(|h| &h.last_sync);
                if named
                    .clone()
                    .any(|head| am.get_change_meta_by_hash(head).is_none())
                {
                    resets += 1;
                }
                to_node = am.generate_sync_message(am_state).into_iter().collect();
                if to_node.is_empty() {
                    break;
                }
            }
        };
        for client in &mut clients {
            let first = client.0.generate_sync_message(&mut client.1);
            exchange(&mut replica, client, first.into_iter().collect(), false);
        }
        for round in 0..40_i64 {
            for typist in 0..CLIENTS {
                // Now and then three keystrokes reach the replica in one
                // step, as they do when its engine is busy.
                let strokes = if (round + typist as i64) % 5 == 0 {
                    3
                } else {
                    1
                };
                let (am, am_state, _) = &mut clients[typist];
                let mut keystrokes = Vec::new();
                for stroke in 0..strokes {
                    let mut tx = am.transaction();
                    tx.put(ROOT, format!("c{typist}"), round).unwrap();
                    tx.put(ROOT, format!("s{typist}"), stroke).unwrap();
                    tx.commit();
                    keystrokes.extend(am.generate_sync_message(am_state));
                }
                exchange(&mut replica, &mut clients[typist], keystrokes, true);
                // Every other client hears of it (in turn, so that some
                // hear while others type).
                for other in
                    (0..CLIENTS).filter(|&c| c != typist && !(c + round as usize).is_multiple_of(3))
                {
                    exchange(&mut replica, &mut clients[other], Vec::new(), true);
                }
            }
        }
        for _ in 0..3 {
            for client in &mut clients {
                let pending = client.0.generate_sync_message(&mut client.1);
                exchange(&mut replica, client, pending.into_iter().collect(), true);
            }
        }
        let heads = replica.cached_document(doc).unwrap().get_heads();
        for (i, (am, _, _)) in clients.iter().enumerate() {
            assert_eq!(am.get_heads(), heads, "client {i}");
            for typist in 0..CLIENTS {
                let (value, _) = am.get(ROOT, format!("c{typist}")).unwrap().unwrap();
                assert_eq!(value.as_i64(), Some(39), "client {i} has c{typist}");
            }
        }
        assert_eq!(resets, 0);
        assert!(
            from_recent * 2 > with_changes && with_changes > 200,
            "{from_recent} of {with_changes} answers with changes came from the recent changes"
        );
    }

    /// Six clients' steps go to the replica together, as a node's engine
    /// takes those of one turn: all their keystrokes in one batch, then
    /// every answer. A seventh client's garbage in the same batch fails
    /// its step only. Every client ends with every keystroke, and no
    /// answer made from the recent changes carries a change its client
    /// already has (a client that had everything when its own changes
    /// were applied is not sent the batch's changes before its own).
    /// A client that has everything, then falls 4 MiB behind (forty local
    /// changes of 100 KiB): it is answered from the recent changes in
    /// pieces of at most [`super::ANSWER_MAX_BYTES`], each with heads it
    /// holds once it applies the piece, and ends with everything.
    #[test]
    fn a_client_far_behind_is_answered_in_pieces_it_can_apply() {
        use super::{ClientState, ANSWER_MAX_BYTES};
        use automerge::ReadDoc;

        let (mut replica, doc, now) = replica_with_a_document();
        let (mut am, mut am_state) = (Automerge::new(), sync::State::new());
        let mut state = ClientState::default();
        // One conversation until neither side has anything to say; returns
        // the size of each node message that carried changes.
        let mut converse = |replica: &mut crate::Replica, am: &mut Automerge, recent: bool| {
            let mut pieces = Vec::new();
            let mut outgoing: Vec<sync::Message> = am
                .generate_sync_message(&mut am_state)
                .into_iter()
                .collect();
            for _ in 0..100 {
                let step = replica
                    .handle_client_sync(now, doc, &mut state, std::mem::take(&mut outgoing), true)
                    .unwrap();
                let Some(reply) = step.reply else {
                    if outgoing.is_empty() {
                        return pieces;
                    }
                    continue;
                };
                let message = sync::Message::decode(&reply).unwrap();
                if recent && !message.changes.is_empty() {
                    assert_eq!(
                        message.have.first().map(|have| &have.last_sync),
                        Some(&message.heads),
                        "made from the recent changes"
                    );
                    pieces.push(reply.len());
                }
                let heads = message.heads.clone();
                am.receive_sync_message(&mut am_state, message).unwrap();
                for head in heads {
                    assert!(
                        am.get_change_meta_by_hash(&head).is_some(),
                        "told of a head it does not get: {head}"
                    );
                }
                outgoing.extend(am.generate_sync_message(&mut am_state));
            }
            panic!("no end to the conversation");
        };
        converse(&mut replica, &mut am, false);
        converse(&mut replica, &mut am, false);
        for i in 0..40 {
            replica
                .handle_local_change(now, doc, |tx| {
                    tx.put(
                        ROOT,
                        format!("k{i}"),
                        format!("{i}{}", "x".repeat(100 * 1024)),
                    )
                })
                .unwrap();
        }
        let pieces = converse(&mut replica, &mut am, true);
        assert!(pieces.len() >= 4, "{pieces:?}");
        for piece in &pieces {
            assert!(*piece <= ANSWER_MAX_BYTES + 4096, "{pieces:?}");
        }
        assert_eq!(
            am.get_heads(),
            replica.cached_document(doc).unwrap().get_heads()
        );
        assert!(am.get(ROOT, "k39").unwrap().is_some());
    }

    #[test]
    fn steps_taken_together_converge_and_refuse_only_the_bad_one() {
        use super::{ClientState, ClientStep};
        use crate::ReplicaError;
        use automerge::ReadDoc;

        let (mut replica, doc, now) = replica_with_a_document();
        const CLIENTS: usize = 6;
        let mut ams: Vec<(Automerge, sync::State)> = (0..CLIENTS)
            .map(|_| (Automerge::new(), sync::State::new()))
            .collect();
        let mut states: Vec<ClientState> = (0..CLIENTS).map(|_| ClientState::default()).collect();
        let mut outgoing: Vec<Vec<sync::Message>> = ams
            .iter_mut()
            .map(|(am, state)| am.generate_sync_message(state).into_iter().collect())
            .collect();
        let (mut duplicates, mut from_recent, mut refused) = (0, 0, 0);
        for round in 0..40_i64 {
            if (5..30).contains(&round) {
                for (typist, (am, state)) in ams.iter_mut().enumerate() {
                    if (round + typist as i64) % 3 == 0 {
                        continue;
                    }
                    let mut tx = am.transaction();
                    tx.put(ROOT, format!("c{typist}"), round).unwrap();
                    tx.commit();
                    outgoing[typist].extend(am.generate_sync_message(state));
                }
            }
            let mut bad_state = ClientState::default();
            let mut steps: Vec<ClientStep<'_>> = states
                .iter_mut()
                .zip(&mut outgoing)
                .map(|(state, out)| ClientStep {
                    state,
                    messages: std::mem::take(out),
                    answer: true,
                })
                .collect();
            if round == 10 {
                // A change by an author the document does not know, that
                // says it is not the author's first.
                let replica_doc = replica.cached_document(doc).unwrap();
                let mut forged = replica_doc.get_changes(&[]).last().unwrap().decode();
                forged.actor_id = automerge::ActorId::from([7u8; 16]);
                forged.seq = 2;
                forged.hash = None;
                forged.deps = replica_doc.get_heads();
                let forged = automerge::Change::from(forged);
                let garbage = sync::Message {
                    heads: vec![forged.hash()],
                    need: Vec::new(),
                    have: Vec::new(),
                    changes: sync::ChunkList::from(vec![forged.raw_bytes().to_vec()]),
                    flags: None,
                    version: sync::MessageVersion::V1,
                };
                steps.insert(
                    3,
                    ClientStep {
                        state: &mut bad_state,
                        messages: vec![garbage],
                        answer: true,
                    },
                );
            }

            let mut results = replica.handle_client_steps(now, doc, steps);
            if round == 10 {
                let bad = results.remove(3);
                assert!(
                    matches!(bad, Err(ReplicaError::ForeignData { .. })),
                    "{bad:?}"
                );
                refused += 1;
            }
            assert_eq!(results.len(), CLIENTS);
            for (c, result) in results.into_iter().enumerate() {
                let step =
                    result.unwrap_or_else(|error| panic!("client {c}, round {round}: {error}"));
                let (am, state) = &mut ams[c];
                if let Some(reply) = step.reply {
                    let reply = sync::Message::decode(&reply).unwrap();
                    if reply
                        .have
                        .first()
                        .is_some_and(|h| h.last_sync == reply.heads)
                    {
                        from_recent += 1;
                        // Version 2: the changes joined in one chunk.
                        for chunk in reply.changes.iter() {
                            for change in crate::foreign::decode_automerge(chunk).unwrap() {
                                if am.get_change_meta_by_hash(&change.hash()).is_some() {
                                    duplicates += 1;
                                }
                            }
                        }
                    }
                    am.receive_sync_message(state, reply).unwrap();
                }
                outgoing[c].extend(am.generate_sync_message(state));
            }
        }
        let heads = replica.cached_document(doc).unwrap().get_heads();
        for (c, (am, _)) in ams.iter().enumerate() {
            assert_eq!(am.get_heads(), heads, "client {c}");
            for typist in 0..CLIENTS {
                assert!(
                    am.get(ROOT, format!("c{typist}")).unwrap().is_some(),
                    "client {c} has c{typist}"
                );
            }
        }
        assert_eq!(refused, 1);
        assert_eq!(duplicates, 0);
        assert!(
            from_recent > 100,
            "{from_recent} answers came from the recent changes"
        );
    }
}
