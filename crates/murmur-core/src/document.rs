//! One document held by a replica: its Automerge state, where it stands in
//! storage, and its sync state with each peer.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use automerge::sync::{self, SyncDoc};
use automerge::{ActorId, Automerge, Change, ChangeHash, ReadDoc};
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
    /// The changes applied lately, in order, while clients sync this
    /// document (see [`RecentChanges`]).
    pub(crate) recent: Option<RecentChanges>,
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

/// Where a client stands in a document's [`RecentChanges`]: it has every
/// change before `index` of the log numbered `log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    log: u64,
    index: u64,
}

/// The most changes [`RecentChanges`] keeps: 25 s of 256 clients typing
/// 10 changes a second (a client further behind than this is answered by
/// Automerge's walk, which costs far more the further behind it is).
const RECENT_MAX_CHANGES: usize = 65_536;
/// The most bytes of changes [`RecentChanges`] keeps.
const RECENT_MAX_BYTES: usize = 16 * 1024 * 1024;
/// How many bytes of changes [`RecentChanges`] takes between two records
/// of the document's heads (at the end of the apply that passes it).
const CHECKPOINT_BYTES: usize = 64 * 1024;

/// Numbers each [`RecentChanges`] log, so a [`Mark`] in one is never read
/// in another (the document was loaded again or rebuilt since).
static NEXT_LOG: AtomicU64 = AtomicU64::new(1);

/// The changes a document applied since clients started syncing it (the
/// last [`RECENT_MAX_CHANGES`], at most [`RECENT_MAX_BYTES`]), in the
/// order applied, with their bytes. With a client's [`Mark`] it says what
/// the client may lack in O(new changes): Automerge's own answer walks the
/// change graph from the client's last known heads, which grows with the
/// number of concurrent writers (most of a node's CPU with 256 clients
/// typing into one document).
#[derive(Debug)]
pub(crate) struct RecentChanges {
    log: u64,
    /// The index of `changes[0]` in the log.
    base: u64,
    changes: VecDeque<(ChangeHash, Vec<u8>)>,
    bytes: usize,
    /// The document's heads at some places in the log, in order: (index,
    /// heads after the changes before it). An answer too large to send in
    /// one message stops at one of them (see [`RecentChanges::cut`]).
    checkpoints: VecDeque<(u64, Vec<ChangeHash>)>,
    /// Bytes of changes taken since the last checkpoint.
    since_checkpoint: usize,
}

impl RecentChanges {
    pub(crate) fn new() -> Self {
        RecentChanges {
            log: NEXT_LOG.fetch_add(1, Ordering::Relaxed),
            base: 0,
            changes: VecDeque::new(),
            bytes: 0,
            checkpoints: VecDeque::new(),
            since_checkpoint: 0,
        }
    }

    fn push(&mut self, change: &Change) {
        let raw = change.raw_bytes().to_vec();
        self.bytes += raw.len();
        self.since_checkpoint += raw.len();
        self.changes.push_back((change.hash(), raw));
        while self.changes.len() > RECENT_MAX_CHANGES || self.bytes > RECENT_MAX_BYTES {
            let Some((_, raw)) = self.changes.pop_front() else {
                break;
            };
            self.bytes -= raw.len();
            self.base += 1;
        }
        while self
            .checkpoints
            .front()
            .is_some_and(|(index, _)| *index < self.base)
        {
            self.checkpoints.pop_front();
        }
    }

    /// Records the document's `heads` after every change taken so far, if
    /// [`CHECKPOINT_BYTES`] of changes came since the last record (at most
    /// one per that many bytes kept, so their number is bounded).
    fn checkpoint(&mut self, heads: impl FnOnce() -> Vec<ChangeHash>) {
        if self.since_checkpoint >= CHECKPOINT_BYTES {
            self.since_checkpoint = 0;
            let end = self.end().index;
            self.checkpoints.push_back((end, heads()));
        }
    }

    /// Where an answer of the changes since `mark` stops when they come to
    /// more than `max_bytes`: after how many of them, and the document's
    /// heads there, which the client holds once it has them. That is the
    /// last checkpoint within `max_bytes`, or the first one past `mark` if
    /// even that is further. `None`: every change since fits (or no
    /// checkpoint follows `mark`), so the answer carries them all.
    pub(crate) fn cut(&self, mark: Mark, max_bytes: usize) -> Option<(usize, &[ChangeHash])> {
        let skip = usize::try_from(mark.index.checked_sub(self.base)?)
            .ok()
            .filter(|skip| *skip <= self.changes.len() && mark.log == self.log)?;
        let mut checkpoints = self
            .checkpoints
            .iter()
            .skip_while(|(index, _)| *index <= mark.index)
            .peekable();
        let mut bytes = 0;
        let mut best = None;
        for (taken, (_, raw)) in (1..).zip(self.changes.range(skip..)) {
            bytes += raw.len();
            let at = mark.index + taken as u64;
            if let Some((_, heads)) = checkpoints.next_if(|(index, _)| *index == at) {
                if bytes <= max_bytes || best.is_none() {
                    best = Some((taken, heads.as_slice()));
                }
            }
            if bytes > max_bytes && best.is_some() {
                return best;
            }
        }
        None
    }

    /// The mark after every change applied so far.
    pub(crate) fn end(&self) -> Mark {
        Mark {
            log: self.log,
            index: self.base + self.changes.len() as u64,
        }
    }

    /// The mark `count` changes after `mark` (in the same log).
    pub(crate) fn after(mark: Mark, count: usize) -> Mark {
        Mark {
            log: mark.log,
            index: mark.index + count as u64,
        }
    }

    /// The changes applied since `mark`, or `None` if the mark is of
    /// another log or older than what is kept.
    pub(crate) fn since(
        &self,
        mark: Mark,
    ) -> Option<impl Iterator<Item = &(ChangeHash, Vec<u8>)> + '_> {
        if mark.log != self.log || mark.index < self.base {
            return None;
        }
        let skip = usize::try_from(mark.index - self.base).ok()?;
        (skip <= self.changes.len()).then(|| self.changes.range(skip..))
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
            recent: None,
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
            recent: None,
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
        let from = self.unsaved.len();
        self.unsaved.extend(changes);
        if let Some(recent) = &mut self.recent {
            for change in &self.unsaved[from..] {
                recent.push(change);
            }
            recent.checkpoint(|| self.doc.get_heads());
        }
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
        let (output, authors, _) = self.apply_verified_with(None, apply)?;
        Ok((output, authors))
    }

    /// [`Document::apply_verified`] for an `apply` that hands Automerge
    /// `changes` (hashes: what a caller that decoded them knows), and
    /// nothing else. Then what it added is found among them, without a
    /// vector clock of the old heads, if Automerge's queue was empty (else
    /// it may release queued changes too, and the full walk runs). Also
    /// returns how many changes it added: the last ones of
    /// [`Document::unsaved_tail`].
    pub(crate) fn apply_verified_with<T>(
        &mut self,
        changes: Option<&[ChangeHash]>,
        apply: impl FnOnce(&mut Document) -> T,
    ) -> Result<(T, Vec<ActorId>, usize), String> {
        let fresh: Option<Vec<ChangeHash>> = changes
            .filter(|_| self.doc.get_missing_deps(&[]).is_empty())
            .map(|changes| {
                let mut fresh: Vec<ChangeHash> = changes
                    .iter()
                    .filter(|hash| self.doc.get_change_meta_by_hash(hash).is_none())
                    .copied()
                    .collect();
                fresh.sort_unstable();
                fresh.dedup();
                fresh
            });
        // The heads before, for the full walk (only when it will run).
        let before = fresh.is_none().then(|| self.heads());
        let output = crate::foreign::guarded(|| apply(&mut *self))?;
        let added = match fresh {
            Some(fresh) => crate::foreign::verify_applied_hashes(&self.doc, &fresh)?,
            None => {
                let before = before.unwrap_or_default();
                crate::foreign::verify_applied(&self.doc, &before)?
            }
        };
        let authors: std::collections::BTreeSet<&ActorId> =
            added.iter().map(Change::actor_id).collect();
        let authors = authors.into_iter().cloned().collect();
        let count = added.len();
        self.applied(added);
        Ok((output, authors, count))
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

    /// The raw bytes of the last `count` changes applied (its newest
    /// unsaved changes), in the order applied.
    pub(crate) fn unsaved_tail(&self, count: usize) -> Vec<Vec<u8>> {
        self.unsaved[self.unsaved.len().saturating_sub(count)..]
            .iter()
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

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::ROOT;
    use std::collections::BTreeSet;

    /// Ten changes of 40 KiB each: the heads are recorded every second one
    /// (past 64 KiB), and an answer too large stops at the last record
    /// within its bound, or at the first one when even that is past it.
    #[test]
    fn a_large_answer_stops_where_the_heads_were_recorded() {
        let mut doc = Automerge::new();
        let mut recent = RecentChanges::new();
        let start = recent.end();
        let mut heads_after = Vec::new();
        for i in 0..10 {
            let mut tx = doc.transaction();
            tx.put(ROOT, format!("k{i}"), "x".repeat(40 * 1024))
                .unwrap();
            tx.commit();
            recent.push(&doc.get_last_local_change().unwrap());
            recent.checkpoint(|| doc.get_heads());
            heads_after.push(doc.get_heads());
        }
        let recorded: Vec<u64> = recent.checkpoints.iter().map(|(at, _)| *at).collect();
        assert_eq!(recorded, [2, 4, 6, 8, 10]);
        assert_eq!(recent.cut(start, 1024 * 1024), None, "all of it fits");
        assert_eq!(
            recent.cut(start, 200 * 1024),
            Some((4, heads_after[3].as_slice())),
            "the last record within 200 KiB"
        );
        assert_eq!(
            recent.cut(start, 10 * 1024),
            Some((2, heads_after[1].as_slice())),
            "the first record, past the bound"
        );
        let at_three = RecentChanges::after(start, 3);
        assert_eq!(
            recent.cut(at_three, 100 * 1024),
            Some((1, heads_after[3].as_slice())),
            "from a mark between records"
        );
        assert_eq!(
            recent.cut(RecentChanges::after(start, 9), 10),
            Some((1, heads_after[9].as_slice()))
        );
        // An eleventh change is not recorded (40 KiB since the last): an
        // answer of it has nowhere to stop but its end.
        let mut tx = doc.transaction();
        tx.put(ROOT, "k10", "x".repeat(40 * 1024)).unwrap();
        tx.commit();
        recent.push(&doc.get_last_local_change().unwrap());
        recent.checkpoint(|| doc.get_heads());
        assert_eq!(recent.checkpoints.len(), 5);
        assert_eq!(recent.cut(RecentChanges::after(start, 10), 10), None);
        // Marks past the end, or of another log, cut nothing.
        assert_eq!(recent.cut(RecentChanges::after(start, 12), 10), None);
        assert_eq!(RecentChanges::new().cut(start, 10), None);
    }

    /// Four writers' changes (each on what its writer has seen, merged now
    /// and then) arrive in batches, some before their dependencies (they
    /// wait in Automerge's queue until a later batch brings them). Finding
    /// what each apply added among the batch's hashes records the same
    /// changes as the full walk, with dependencies first, and only when the
    /// queue was empty: a batch that releases queued changes takes the walk.
    #[test]
    fn what_an_apply_added_is_found_among_its_changes() {
        let mut writers: Vec<Automerge> = (1..=4u8)
            .map(|w| Automerge::new().with_actor(ActorId::from([w; 16])))
            .collect();
        let mut all = Vec::new();
        for round in 0..30_i64 {
            for (w, writer) in writers.iter_mut().enumerate() {
                let mut tx = writer.transaction();
                tx.put(ROOT, format!("w{w}"), round).unwrap();
                tx.commit();
                all.push(writer.get_last_local_change().unwrap());
            }
            if round % 3 == 2 {
                let mut merged = writers[0].clone();
                for writer in &writers[1..] {
                    merged.merge(&mut writer.clone()).unwrap();
                }
                for writer in &mut writers {
                    writer.merge(&mut merged.clone()).unwrap();
                }
            }
        }
        let mut batches: Vec<Vec<Change>> = all.chunks(7).map(<[Change]>::to_vec).collect();
        for pair in (0..batches.len() - 1).step_by(4) {
            batches.swap(pair, pair + 1);
        }
        let (mut short, mut walk) = (
            Document::new(ActorId::from([0xaa; 16])),
            Document::new(ActorId::from([0xaa; 16])),
        );
        let (mut fast_batches, mut queued_batches) = (0, 0);
        for batch in batches {
            let hashes: Vec<ChangeHash> = batch.iter().map(Change::hash).collect();
            if short.doc.get_missing_deps(&[]).is_empty() {
                fast_batches += 1;
            } else {
                queued_batches += 1;
            }
            let apply = |document: &mut Document| document.doc.apply_changes(batch.clone());
            let (result, _, added) = short.apply_verified_with(Some(&hashes), apply).unwrap();
            result.unwrap();
            let (result, _, walked) = walk.apply_verified_with(None, apply).unwrap();
            result.unwrap();
            let tail = &short.unsaved[short.unsaved.len() - added..];
            let walked = &walk.unsaved[walk.unsaved.len() - walked..];
            let set = |changes: &[Change]| -> BTreeSet<ChangeHash> {
                changes.iter().map(Change::hash).collect()
            };
            assert_eq!(set(tail), set(walked));
            for (i, change) in tail.iter().enumerate() {
                for dep in change.deps() {
                    let earlier = tail[..i].iter().any(|c| c.hash() == *dep);
                    let held_before = !set(tail).contains(dep);
                    assert!(
                        earlier || held_before,
                        "{} before its dependency {dep}",
                        change.hash()
                    );
                }
            }
        }
        assert_eq!(short.heads(), walk.heads());
        assert_eq!(short.unsaved.len(), all.len());
        assert!(
            fast_batches > 5 && queued_batches > 2,
            "{fast_batches} {queued_batches}"
        );
    }
}
