//! One document held by a replica: its Automerge state, where it stands in
//! storage, and its sync state with each peer.

use std::collections::BTreeMap;

use automerge::sync::{self, SyncDoc};
use automerge::{ActorId, Automerge, Change, ChangeHash};
use murmur_store::layout::{self, DocumentLog};
use murmur_store::{Storage, StoreError, WriteBatch};
use murmur_wire::{DocumentId, NodeId};

use crate::feed::Record;

/// A document in memory.
pub(crate) struct Document {
    pub(crate) doc: Automerge,
    /// Heads as last written to storage (not necessarily flushed).
    saved_heads: Vec<ChangeHash>,
    /// The sequence number the next chunk takes.
    next_seq: u64,
    /// The sequence number the current snapshot covers, if any.
    snapshot_bytes: usize,
    chunk_bytes: usize,
    chunk_count: usize,
    /// True until the index key is written.
    pub(crate) unindexed: bool,
    /// Keys an interrupted compaction left; deleted with the next write.
    stale_keys: Vec<Vec<u8>>,
    /// Sync state with each peer that ever synced this document.
    pub(crate) sync: BTreeMap<NodeId, sync::State>,
    /// Per peer, (our heads, their heads) when a sync conversation with it
    /// last stalled and was answered with a resend (see
    /// [`Document::after_sync_message`]).
    stalls: BTreeMap<NodeId, (Vec<ChangeHash>, Vec<ChangeHash>)>,
    /// Every change applied since the last durable save (local ones, and
    /// peers' once verified), in order: with the store, what rebuilds the
    /// document should a peer's data break it in memory. Trimmed as saves
    /// become durable, so it holds about one group commit's worth.
    unsaved: Vec<Change>,
    /// The applications of [`Document::unsaved`]'s changes, for the
    /// change feed: numbered and written with the save that makes them
    /// durable.
    records: Vec<Record>,
    /// How many of [`Document::unsaved`]'s changes `records` cover (all
    /// of them between engine turns).
    recorded: usize,
}

/// What a document held unsaved when it was given up: the changes and
/// their feed records, to apply again to its stored part.
pub(crate) struct Unsaved {
    pub(crate) changes: Vec<Change>,
    pub(crate) records: Vec<Record>,
}

/// How to answer a sync message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncReply {
    /// As Automerge says (often: nothing).
    Continue,
    /// The conversation stalled; what was sent in it was forgotten, so the
    /// answer sends again whatever the peer still lacks.
    Resend,
    /// It stalled again in the same place after a resend: say nothing and
    /// leave it to anti-entropy.
    Quiet,
}

/// What a pending write of a document will do to it once it is applied.
pub(crate) struct PendingSave {
    heads: Vec<ChangeHash>,
    written: Option<Written>,
    /// How many of [`Document::unsaved`]'s changes it covers.
    unsaved: usize,
    /// How many of [`Document::records`] it covers.
    records: usize,
}

/// What a save wrote.
enum Written {
    /// One more chunk, of this many bytes.
    Chunk(usize),
    /// A snapshot of everything, at sequence number `covers`.
    Snapshot { covers: u64, bytes: usize },
}

impl PendingSave {
    /// The sequence number a snapshot written by this save covers: once it
    /// is durable, older snapshots and chunks up to it can go.
    pub(crate) fn snapshot_covers(&self) -> Option<u64> {
        match self.written {
            Some(Written::Snapshot { covers, .. }) => Some(covers),
            _ => None,
        }
    }
}

impl Document {
    /// A new, empty document written by `actor`.
    pub(crate) fn new(actor: ActorId) -> Self {
        Document {
            doc: Automerge::new().with_actor(actor),
            saved_heads: Vec::new(),
            next_seq: 0,
            snapshot_bytes: 0,
            chunk_bytes: 0,
            chunk_count: 0,
            unindexed: true,
            stale_keys: Vec::new(),
            sync: BTreeMap::new(),
            stalls: BTreeMap::new(),
            unsaved: Vec::new(),
            records: Vec::new(),
            recorded: 0,
        }
    }

    /// Loads `id` from `store`. A document whose bytes do not load is an
    /// error with the reason; its keys are left untouched.
    pub(crate) fn load(
        store: &dyn Storage,
        id: DocumentId,
        actor: ActorId,
    ) -> Result<Self, LoadError> {
        let key = *id.as_bytes();
        let log = layout::load_document(store, &key)?;
        let doc = assemble(&log).map_err(LoadError::Automerge)?;
        let mut sync = BTreeMap::new();
        for (peer, bytes) in layout::load_sync_states(store, &key)? {
            // A sync state that does not decode only costs bandwidth: start
            // that peer afresh rather than refuse the document.
            match sync::State::decode(&bytes) {
                Ok(state) => {
                    sync.insert(NodeId(peer), settled(state, &doc.get_heads()));
                }
                Err(error) => tracing::warn!(
                    doc = %id, peer = %NodeId(peer).short(), %error,
                    "stored sync state does not decode; syncing from scratch"
                ),
            }
        }
        Ok(Document {
            saved_heads: doc.get_heads(),
            doc: doc.with_actor(actor),
            next_seq: log.next_seq(),
            snapshot_bytes: log.snapshot_bytes(),
            chunk_bytes: log.chunk_bytes(),
            chunk_count: log.chunks.len(),
            // Nothing stored (a document rebuilt before its first flush):
            // its first save writes the index key.
            unindexed: log.snapshot.is_none() && log.chunks.is_empty(),
            stale_keys: log.stale_keys,
            sync,
            stalls: BTreeMap::new(),
            unsaved: Vec::new(),
            records: Vec::new(),
            recorded: 0,
        })
    }

    pub(crate) fn heads(&self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// True if the digest leaf as stored may not match the document: it
    /// was never written, or the heads moved since the last save.
    pub(crate) fn leaf_outdated(&self) -> bool {
        self.unindexed || self.doc.get_heads() != self.saved_heads
    }

    /// Bytes the document takes in the store (snapshot and chunks).
    pub(crate) fn stored_bytes(&self) -> usize {
        self.snapshot_bytes + self.chunk_bytes
    }

    /// Adds whatever is not yet stored to `batch`; returns what to record
    /// once the batch is durable. A document whose chunks outgrew its
    /// snapshot (`compact_at`: (min bytes, max chunks)) is written as a new
    /// snapshot of everything instead of one more chunk; the keys it
    /// replaces go once it is flushed ([`PendingSave::snapshot_covers`]).
    pub(crate) fn save_into(
        &mut self,
        id: DocumentId,
        batch: &mut WriteBatch,
        compact_at: (usize, usize),
    ) -> PendingSave {
        let key = *id.as_bytes();
        if self.unindexed {
            batch.put(layout::index_key(&key), Vec::new());
        }
        for stale in &self.stale_keys {
            batch.delete(stale.clone());
        }
        let heads = self.doc.get_heads();
        let mut written = None;
        if self.wants_compaction(compact_at.0, compact_at.1) {
            let snapshot = self.doc.save();
            written = Some(Written::Snapshot {
                covers: self.next_seq,
                bytes: snapshot.len(),
            });
            layout::put_snapshot(batch, &key, self.next_seq, snapshot);
        } else if heads != self.saved_heads {
            let bytes = self.doc.save_after(&self.saved_heads);
            if !bytes.is_empty() {
                written = Some(Written::Chunk(bytes.len()));
                layout::put_chunk(batch, &key, self.next_seq, bytes);
            }
        }
        PendingSave {
            heads,
            written,
            unsaved: self.unsaved.len(),
            records: self.records.len(),
        }
    }

    /// Records changes just applied (local ones, or those
    /// [`Document::apply_verified`] checked) until a save of them is
    /// durable.
    pub(crate) fn applied(&mut self, changes: impl IntoIterator<Item = Change>) {
        self.unsaved.extend(changes);
    }

    /// Runs `apply` (which changes this document with data from outside:
    /// a peer's, or changes applied again on a rebuild) under
    /// [`crate::foreign::guarded`], then verifies with
    /// [`crate::foreign::verify_applied`] that what it added saves as it
    /// holds it, and records that as unsaved. Returns `apply`'s output and
    /// the actors whose changes it added, each once, in order. An `Err`
    /// says the document is broken in memory and must not be used again
    /// (the caller rebuilds it).
    pub(crate) fn apply_verified<T>(
        &mut self,
        apply: impl FnOnce(&mut Document) -> T,
    ) -> Result<(T, Vec<ActorId>), String> {
        let before = self.heads();
        let output = crate::foreign::guarded(|| apply(&mut *self))?;
        let added = crate::foreign::verify_applied(&self.doc, &before)?;
        let authors: std::collections::BTreeSet<&ActorId> =
            added.iter().map(Change::actor_id).collect();
        let authors = authors.into_iter().cloned().collect();
        self.applied(added);
        Ok((output, authors))
    }

    /// The changes applied since the last durable save, in order, and
    /// their feed records; the document is given up (a peer's data broke
    /// it in memory).
    pub(crate) fn into_unsaved(self) -> Unsaved {
        Unsaved {
            changes: self.unsaved,
            records: self.records,
        }
    }

    /// Gives back the feed records of changes applied again on a rebuild
    /// (they were made before it).
    pub(crate) fn restore_records(&mut self, records: Vec<Record>) {
        self.records = records;
        self.recorded = self.unsaved.len();
    }

    /// Records the changes applied since the last record as one feed
    /// application, by `origin` at `time`; nothing if there are none.
    pub(crate) fn record(&mut self, origin: crate::Origin, time: crate::Time, order: u64) {
        let changes: Vec<ChangeHash> = self.unsaved[self.recorded.min(self.unsaved.len())..]
            .iter()
            .map(Change::hash)
            .collect();
        self.recorded = self.unsaved.len();
        if changes.is_empty() {
            return;
        }
        self.records.push(Record {
            order,
            changes,
            heads: self.doc.get_heads(),
            origin,
            time,
            deleted: false,
        });
    }

    /// The raw bytes of the changes applied since `before` was the
    /// document's heads (its newest unsaved changes), in the order applied.
    pub(crate) fn unsaved_since(&self, before: &[ChangeHash]) -> Vec<Vec<u8>> {
        let new: std::collections::BTreeSet<ChangeHash> = self
            .doc
            .get_changes_meta(before)
            .into_iter()
            .map(|meta| meta.hash)
            .collect();
        self.unsaved
            .iter()
            .filter(|change| new.contains(&change.hash()))
            .map(|change| change.raw_bytes().to_vec())
            .collect()
    }

    /// Leaves the changes applied since the last record out of the feed
    /// (the planted bug [`crate::FaultInjection::FeedSkipsPeerChanges`]).
    pub(crate) fn skip_record(&mut self) {
        self.recorded = self.unsaved.len();
    }

    /// The feed records a save covers.
    pub(crate) fn records_of(&self, save: &PendingSave) -> &[Record] {
        &self.records[..save.records.min(self.records.len())]
    }

    /// Whether every change applied has a feed record (between turns).
    pub(crate) fn all_recorded(&self) -> bool {
        self.recorded == self.unsaved.len()
    }

    /// Records that the batch built by [`Document::save_into`] is durable.
    pub(crate) fn saved(&mut self, pending: PendingSave) {
        self.unindexed = false;
        self.stale_keys.clear();
        self.saved_heads = pending.heads;
        let drained = pending.unsaved.min(self.unsaved.len());
        self.unsaved.drain(..drained);
        self.recorded = self.recorded.saturating_sub(drained);
        self.records
            .drain(..pending.records.min(self.records.len()));
        match pending.written {
            Some(Written::Chunk(bytes)) => {
                self.chunk_bytes += bytes;
                self.chunk_count += 1;
            }
            Some(Written::Snapshot { bytes, .. }) => {
                tracing::debug!(
                    chunks = self.chunk_count,
                    chunk_bytes = self.chunk_bytes,
                    snapshot_bytes = bytes,
                    "compacted document"
                );
                self.snapshot_bytes = bytes;
                self.chunk_bytes = 0;
                self.chunk_count = 0;
            }
            None => return,
        }
        self.next_seq += 1;
    }

    /// The heads as last saved: after a flush settles, what the store
    /// durably holds.
    pub(crate) fn saved_heads(&self) -> &[ChangeHash] {
        &self.saved_heads
    }

    /// Decides how to answer a sync message from `peer` that has just been
    /// received; `heads_before` and `their_before` are our heads and the
    /// peer's (as the sync state knew them) before it.
    ///
    /// A message that moved neither side, while the two still differ, means
    /// the conversation is stuck: typically a message carrying changes was
    /// lost, and Automerge will not send those changes again because it
    /// remembers having sent them (automerge #1284). Answering as usual
    /// ping-pongs empty messages as fast as the network carries them, and
    /// every duplicated message starts another such loop: an exponential
    /// storm (the simulator found it). So the first stall in a given place
    /// forgets what was sent, and the answer sends it again; a second stall
    /// in the same place gets no answer, and anti-entropy (which restarts
    /// the conversation) retries later.
    pub(crate) fn after_sync_message(
        &mut self,
        peer: NodeId,
        heads_before: &[ChangeHash],
        their_before: Option<&[ChangeHash]>,
    ) -> SyncReply {
        let ours = self.doc.get_heads();
        let Some(state) = self.sync.get_mut(&peer) else {
            return SyncReply::Continue;
        };
        let theirs = state.their_heads.clone();
        if theirs.as_deref() == Some(ours.as_slice()) {
            self.stalls.remove(&peer);
            return SyncReply::Continue;
        }
        let moved = heads_before != ours.as_slice() || their_before != theirs.as_deref();
        let place = (ours, theirs.unwrap_or_default());
        if self.stalls.get(&peer) == Some(&place) {
            return SyncReply::Quiet;
        }
        if moved {
            return SyncReply::Continue;
        }
        state.sent_hashes.clear();
        state.in_flight = false;
        self.stalls.insert(peer, place);
        SyncReply::Resend
    }

    /// Starts the sync conversation with `peer` afresh: drops its in-flight
    /// part (see [`reset_in_flight`]) and any record of it stalling.
    pub(crate) fn restart_sync(&mut self, peer: NodeId) {
        reset_in_flight(self.sync.entry(peer).or_default());
        self.stalls.remove(&peer);
    }

    /// True when the chunks have outgrown the snapshot.
    pub(crate) fn wants_compaction(&self, min_bytes: usize, max_chunks: usize) -> bool {
        self.chunk_count > 0
            && (self.chunk_count > max_chunks
                || self.chunk_bytes > self.snapshot_bytes.max(min_bytes))
    }
}

/// Builds a document from its stored log. The chunks go to Automerge in
/// one call: applying them one `load_incremental` at a time cost a batch
/// apply each, and a document written in many small flushes loaded several
/// times slower.
pub(crate) fn assemble(log: &DocumentLog) -> Result<Automerge, automerge::AutomergeError> {
    let mut doc = match &log.snapshot {
        Some(snapshot) => Automerge::load(&snapshot.bytes)?,
        None => Automerge::new(),
    };
    match log.chunks.as_slice() {
        [] => {}
        [chunk] => {
            doc.load_incremental(&chunk.bytes)?;
        }
        chunks => {
            let joined: Vec<u8> = chunks
                .iter()
                .flat_map(|chunk| chunk.bytes.iter().copied())
                .collect();
            doc.load_incremental(&joined)?;
        }
    }
    Ok(doc)
}

/// Why a document did not load.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("automerge data does not load: {0}")]
    Automerge(automerge::AutomergeError),
}

/// Resets the in-flight part of a sync state, keeping what is worth keeping
/// (the heads both sides share). Automerge can loop or stall after a lost
/// message otherwise (automerge issues #1284, #772).
/// A sync state read back from the store (which keeps only the heads both
/// sides shared). If they are this document's heads, the conversation had
/// ended in agreement before the document left memory: say so, so that the
/// next message from the peer is answered only if there is something to
/// say. Without this, a document evicted and reloaded between two
/// messages of an exchange forgets that it has already spoken, answers
/// again, and two peers whose caches are too small for their documents
/// ping-pong empty sync messages forever (the simulator found this with
/// small caches).
fn settled(mut state: sync::State, heads: &[ChangeHash]) -> sync::State {
    let mut shared = state.shared_heads.clone();
    shared.sort_unstable();
    let mut ours = heads.to_vec();
    ours.sort_unstable();
    if shared == ours {
        state.last_sent_heads = heads.to_vec();
        state.their_heads = Some(heads.to_vec());
        state.have_responded = true;
    }
    state
}

pub(crate) fn reset_in_flight(state: &mut sync::State) {
    *state = sync::State::decode(&state.encode()).unwrap_or_default();
}

/// The sync message to send a peer about `doc`, if any.
pub(crate) fn next_sync_message(doc: &Automerge, state: &mut sync::State) -> Option<Vec<u8>> {
    doc.generate_sync_message(state)
        .map(|message| message.encode())
}
