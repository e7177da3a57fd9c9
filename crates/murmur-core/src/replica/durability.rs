//! Durability: the group-commit pipeline (what waits for the next flush,
//! the flush in flight, and what its completion acknowledges), compaction
//! riding on it, and a clean close.

use std::collections::BTreeSet;

use murmur_store::{layout, StoreError, WriteBatch};
use murmur_wire::{DocumentId, NodeId};

use super::{AckLevel, Replica, WriteId};
use crate::digest::{self, LeafUpdate};
use crate::document::PendingSave;
use crate::flush::{Flush, InFlight};
use crate::{incarnation, FaultInjection, ReplicaError, Time};

/// A document's new digest leaf value.
type Leaf = (DocumentId, u64);

/// What waits to become durable, and the group commit in flight.
#[derive(Default)]
pub(super) struct Durability {
    /// Local writes waiting for the next flush, in order.
    awaiting: Vec<(WriteId, DocumentId)>,
    /// Documents changed in memory since their last save.
    dirty_docs: BTreeSet<DocumentId>,
    /// Sync states changed since they were last saved.
    dirty_sync: BTreeSet<(DocumentId, NodeId)>,
    /// When the next group commit is due (none: nothing to flush).
    flush_at: Option<Time>,
    /// The group commit the driver is carrying out, if any.
    flushing: Option<InFlight>,
}

impl Durability {
    /// A local write waits for the next flush to become durable.
    pub(super) fn await_write(&mut self, write: WriteId, doc: DocumentId) {
        self.awaiting.push((write, doc));
    }

    /// Whether a group commit is due at `now` and none is in flight.
    pub(super) fn due(&self, now: Time) -> bool {
        self.flushing.is_none() && self.flush_at.is_some_and(|at| at <= now)
    }

    /// When the next group commit falls due, unless one is in flight (the
    /// next one then waits for it, not for the clock).
    pub(super) fn next_due(&self) -> Option<Time> {
        self.flush_at.filter(|_| self.flushing.is_none())
    }

    /// Brings a due time that a clock jumping backwards pushed past
    /// `latest` back to `now`.
    pub(super) fn observe_clock(&mut self, now: Time, latest: Time) {
        if self.flush_at.is_some_and(|at| at > latest) {
            self.flush_at = Some(now);
        }
    }

    /// The documents that must stay in memory: changed and unsaved, with
    /// a write or a sync state waiting for a flush, or in the flush in
    /// flight (evicting one would lose what is unsaved).
    pub(super) fn pinned(&self) -> BTreeSet<DocumentId> {
        let mut pinned = self.dirty_docs.clone();
        pinned.extend(self.awaiting.iter().map(|(_, doc)| *doc));
        pinned.extend(self.dirty_sync.iter().map(|(doc, _)| *doc));
        if let Some(flight) = &self.flushing {
            pinned.extend(flight.pinned.iter().copied());
        }
        pinned
    }

    /// Whether the flush in flight carries `doc`.
    pub(super) fn flushing_document(&self, doc: DocumentId) -> bool {
        self.flushing
            .as_ref()
            .is_some_and(|flight| flight.pinned.contains(&doc))
    }

    /// Whether `doc` changed in memory since its last save.
    pub(super) fn is_dirty(&self, doc: &DocumentId) -> bool {
        self.dirty_docs.contains(doc)
    }

    /// Whether a sync state waits for a flush.
    pub(super) fn sync_states_dirty(&self) -> bool {
        !self.dirty_sync.is_empty()
    }

    /// Puts what a failed flush covered back among what waits for the next
    /// one, its writes first, in their order. Returns the heads reports it
    /// owed, to owe again.
    /// Documents being rebuilt are left out: they are saved again once
    /// rebuilt.
    fn requeue(
        &mut self,
        flight: InFlight,
        rebuilding: impl Fn(&DocumentId) -> bool,
    ) -> Vec<(DocumentId, NodeId)> {
        self.dirty_docs.extend(
            flight
                .saves
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| !rebuilding(id)),
        );
        self.dirty_sync
            .extend(flight.sync.into_iter().filter(|(doc, _)| !rebuilding(doc)));
        let mut writes = flight.writes;
        writes.append(&mut self.awaiting);
        self.awaiting = writes;
        flight.owed
    }

    /// Forgets what waits to save `doc` (dropped from memory to be
    /// rebuilt); its writes keep waiting, and
    /// [`Durability::take_flushable_writes`] keeps them out of flushes
    /// until it is back.
    pub(super) fn forget_document(&mut self, doc: DocumentId) {
        self.dirty_docs.remove(&doc);
        self.dirty_sync.retain(|(dirty, _)| *dirty != doc);
    }

    /// The writes waiting for the next flush, except those of documents
    /// `rebuilding` (not in memory: the flush cannot carry them), which
    /// keep waiting in order.
    fn take_flushable_writes(
        &mut self,
        rebuilding: impl Fn(&DocumentId) -> bool,
    ) -> Vec<(WriteId, DocumentId)> {
        let (waiting, flushable) = std::mem::take(&mut self.awaiting)
            .into_iter()
            .partition(|(_, doc)| rebuilding(doc));
        self.awaiting = waiting;
        flushable
    }

    /// Unflushed state implies a scheduled flush, and every document it
    /// names is in memory; writes of a document `rebuilding` wait for it
    /// to be back (then it is dirty, and a flush scheduled), and the flush
    /// in flight may have been carrying it.
    pub(super) fn check(
        &self,
        in_memory: impl Fn(&DocumentId) -> bool,
        rebuilding: impl Fn(&DocumentId) -> bool,
    ) -> Result<(), String> {
        let flushable_writes = self.awaiting.iter().filter(|(_, doc)| !rebuilding(doc));
        let unflushed = !self.dirty_docs.is_empty()
            || flushable_writes.clone().next().is_some()
            || !self.dirty_sync.is_empty();
        if unflushed && self.flush_at.is_none() {
            return Err(format!(
                "unflushed state ({} dirty documents, {} writes awaiting a flush, {} sync states) but no flush scheduled",
                self.dirty_docs.len(),
                self.awaiting.len(),
                self.dirty_sync.len()
            ));
        }
        let dirty = self.dirty_docs.iter();
        let awaiting = flushable_writes.map(|(_, doc)| doc);
        let flushing = self
            .flushing
            .iter()
            .flat_map(|flight| flight.pinned.iter())
            .filter(|doc| !rebuilding(doc));
        match dirty
            .chain(awaiting)
            .chain(flushing)
            .find(|doc| !in_memory(doc))
        {
            Some(doc) => Err(format!(
                "document {doc} has unflushed changes but is not in memory"
            )),
            None => Ok(()),
        }
    }
}

impl Replica {
    /// Flushes every pending write now, on the calling thread, whatever
    /// the group-commit timer says: for a graceful shutdown, tests and
    /// examples. It blocks on the disk; a driver's hot path uses
    /// [`Replica::poll_flush`] instead. A flush already handed out must
    /// have completed first ([`ReplicaError::FlushInFlight`]). On a storage
    /// error the writes stay unacknowledged (and the flush is retried
    /// later), as with any flush.
    pub fn flush_now(&mut self, now: Time) -> Result<(), ReplicaError> {
        if self.durability.flushing.is_some() {
            return Err(ReplicaError::FlushInFlight);
        }
        self.observe_clock(now);
        // A flush can leave a document due for compaction, which is one
        // more: two rounds settle everything.
        for _ in 0..2 {
            if self.durability.flush_at.is_none() {
                break;
            }
            self.durability.flush_at = Some(now);
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
        // A document being rebuilt still holds changes to save (and writes
        // waiting for them): it loads here, on this thread, and is saved.
        let rebuilding = self.docs.rebuilding();
        if !rebuilding.is_empty() {
            for doc in rebuilding {
                self.load_now(now, doc)?;
            }
            self.flush_now(now)?;
        }
        if self.durability.flush_at.is_some() {
            return Err(ReplicaError::Storage(StoreError::Backend(
                "the final flush failed; the store is not marked clean".into(),
            )));
        }
        incarnation::mark_clean(&*self.store, self.incarnation)
    }

    /// Local writes not yet durable (waiting for a flush, or in the one in
    /// flight).
    pub fn writes_awaiting_flush(&self) -> usize {
        let flying = self.durability.flushing.as_ref();
        self.durability.awaiting.len() + flying.map_or(0, |f| f.writes.len())
    }

    /// True while something waits for a group commit (one is scheduled)
    /// or one is in flight.
    pub fn flush_pending(&self) -> bool {
        self.durability.flush_at.is_some() || self.durability.flushing.is_some()
    }

    /// True while a [`Flush`] handed out by [`Replica::poll_flush`] has not
    /// been reported complete.
    pub fn flush_in_flight(&self) -> bool {
        self.durability.flushing.is_some()
    }

    /// Group commit, first half: builds one batch of every dirty document
    /// (a new chunk, or a snapshot when its chunks outgrew the last one),
    /// its digest leaf and the digest nodes above it, and every dirty sync
    /// state, and hands it out. What it covers is remembered until
    /// [`Replica::handle_flush_complete`]; what changes meanwhile is dirty
    /// again and goes in the next one.
    pub(super) fn start_flush(&mut self, now: Time) -> Option<Flush> {
        let mut batch = WriteBatch::new();
        let (saves, mut leaves) = self.stage_saves(&mut batch);
        let deletions = std::mem::take(&mut self.pending_deletions);
        for (doc, record) in &deletions {
            batch.put(
                layout::tombstone_key(doc.as_bytes()),
                record.time.as_millis().to_be_bytes().to_vec(),
            );
            leaves.push((*doc, digest::tombstone_leaf(doc)));
        }
        let staged = match self.stage_digest(&leaves, &mut batch) {
            Ok(staged) => staged,
            Err(error) => {
                self.pending_deletions = deletions;
                self.flush_failed(now, &error);
                return None;
            }
        };
        let sync = self.stage_sync_states(&mut batch);
        let feed = self.stage_feed(&saves, &deletions, &mut batch);
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
        self.durability.dirty_docs.clear();
        self.durability.flush_at = None;
        self.durability.flushing = Some(InFlight {
            saves,
            staged,
            writes: self
                .durability
                .take_flushable_writes(|doc| self.docs.is_rebuilding(doc)),
            sync,
            owed: self.replication.take_owed().into_iter().collect(),
            deletions,
            feed,
            bytes: batch.payload_bytes(),
            started: now,
            pinned,
        });
        let delete_first = self
            .config
            .planted(FaultInjection::CompactDeletesBeforeSnapshot);
        let deleted = self
            .durability
            .flushing
            .as_ref()
            .map(|flight| {
                flight
                    .deletions
                    .iter()
                    .map(|(doc, _)| *doc.as_bytes())
                    .collect()
            })
            .unwrap_or_default();
        Some(Flush::new(
            batch,
            snapshots,
            deleted,
            delete_first,
            self.store.clone(),
        ))
    }

    /// Adds a save of every dirty document to `batch`: the saves, and the
    /// digest leaves that moved. A document that fails to save (an
    /// Automerge panic) is rebuilt instead.
    fn stage_saves(
        &mut self,
        batch: &mut WriteBatch,
    ) -> (Vec<(DocumentId, PendingSave)>, Vec<Leaf>) {
        let mut saves = Vec::new();
        let mut leaves = Vec::new();
        let compact_at = (
            self.config.compaction_min_bytes,
            self.config.compaction_max_chunks,
        );
        let mut broken = Vec::new();
        for id in &self.durability.dirty_docs {
            if let Some(document) = self.docs.get_mut(id) {
                // A document with no change has nothing to reconcile (and
                // peers store a document only once it has one): no leaf.
                let leaf = (document.leaf_outdated()
                    && !self.config.planted(FaultInjection::StaleDigestLeaf))
                .then(|| document.heads())
                .filter(|heads| !heads.is_empty())
                .map(|heads| digest::leaf_value(id, &heads));
                // Every peer's change was verified to save as it was
                // applied; should a document still fail to (an Automerge
                // panic), it is rebuilt, not the node stopped.
                match crate::foreign::guarded(|| document.save_into(*id, batch, compact_at)) {
                    Ok(save) => {
                        leaves.extend(leaf.map(|leaf| (*id, leaf)));
                        saves.push((*id, save));
                    }
                    Err(reason) => broken.push((*id, reason)),
                }
            }
        }
        for (id, reason) in broken {
            self.rebuild_document(id, None, &reason);
        }
        (saves, leaves)
    }

    /// Adds the feed entries of what `saves` make durable to `batch`,
    /// numbered in the order they were applied.
    fn stage_feed(
        &self,
        saves: &[(DocumentId, PendingSave)],
        deletions: &[(DocumentId, crate::feed::Record)],
        batch: &mut WriteBatch,
    ) -> crate::feed::Staged {
        let records = saves
            .iter()
            .flat_map(|(id, save)| {
                self.docs
                    .get(id)
                    .map(|document| document.records_of(save))
                    .unwrap_or_default()
                    .iter()
                    .map(move |record| (*id, record))
            })
            .chain(deletions.iter().map(|(doc, record)| (*doc, record)));
        self.feed
            .stage(records, self.config.feed_max_entries, batch)
    }

    /// Adds every dirty sync state to `batch`; returns which.
    fn stage_sync_states(&mut self, batch: &mut WriteBatch) -> Vec<(DocumentId, NodeId)> {
        let sync: Vec<(DocumentId, NodeId)> = std::mem::take(&mut self.durability.dirty_sync)
            .into_iter()
            .collect();
        for (doc, peer) in &sync {
            if let Some(state) = self.docs.get(doc).and_then(|d| d.sync.get(peer)) {
                batch.put(
                    layout::sync_state_key(doc.as_bytes(), &peer.0),
                    state.encode(),
                );
            }
        }
        sync
    }

    /// The [`Flush`] handed out last was carried out with `result`. On
    /// success its writes are acknowledged `Durable` (and `Replicated(k)`
    /// where k peers already hold them), peers whose changes it made
    /// durable are told our heads, and the next group commit, gathered
    /// meanwhile, is due at once. On failure nothing is acknowledged: its
    /// writes wait for the next flush, retried after
    /// [`Config::flush_retry_delay`](crate::Config::flush_retry_delay). A completion with no flush in flight
    /// is ignored.
    pub fn handle_flush_complete(&mut self, now: Time, result: Result<(), StoreError>) {
        self.observe_clock(now);
        let Some(mut flight) = self.durability.flushing.take() else {
            tracing::warn!("a flush completed that was not in flight; ignored");
            return;
        };
        // Documents being rebuilt may read the store now.
        self.docs.loads_mut().release_held();
        if let Err(error) = result {
            self.feed.failed(flight.feed);
            let mut deletions = std::mem::take(&mut flight.deletions);
            deletions.append(&mut self.pending_deletions);
            self.pending_deletions = deletions;
            let docs = &self.docs;
            for (doc, peer) in self
                .durability
                .requeue(flight, |doc| docs.is_rebuilding(doc))
            {
                self.replication.owe(doc, peer);
            }
            self.flush_failed(now, &error);
            return;
        }
        self.digest.commit(flight.staged);
        self.metrics.feed_entries += flight.feed.added(&self.feed);
        self.feed.committed(flight.feed);
        if let Some(count) = self.digest.root_count() {
            // The digest counts tombstones too.
            self.metrics.documents_held =
                u64::from(count).saturating_sub(self.deletions.len() as u64);
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
                    self.durability.dirty_docs.insert(id);
                }
                self.docs.resize(id);
            }
        }
        for (write, doc) in flight.writes {
            self.events.acknowledged(write, doc, AckLevel::Durable);
            let copies = self.replication.made_durable(write, doc);
            if copies > 0 {
                self.acknowledge_replicated(write, doc, copies);
            }
        }
        self.send_owed_heads(flight.owed);
        self.creations.flushed(&self.durability.dirty_docs);
        if !self.durability.dirty_docs.is_empty() {
            self.schedule_flush(now);
        }
        tracing::trace!(
            bytes = flight.bytes,
            took_ms = now.since(flight.started).as_millis() as u64,
            "flush complete"
        );
        self.evict_cold_documents(now);
    }

    pub(super) fn flush_failed(&mut self, now: Time, error: &StoreError) {
        self.metrics.flush_failures += 1;
        // The store may or may not hold the staged digest nodes: forget the
        // cached ones, they reload from what the store says.
        self.digest.invalidate();
        tracing::error!(%error, waiting_writes = self.durability.awaiting.len(), "flush failed; writes stay unacknowledged, retrying");
        self.durability.flush_at = Some(now.add(self.config.flush_retry_delay));
    }

    /// Adds the digest moves of `leaves` (document, new leaf value) to
    /// `batch`: each document's leaf, and the nodes on the paths of those
    /// whose leaf changed.
    pub(super) fn stage_digest(
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

    /// `doc` changed in memory: it is saved with the next group commit.
    pub(super) fn mark_dirty(&mut self, now: Time, doc: DocumentId) {
        self.durability.dirty_docs.insert(doc);
        self.schedule_flush(now);
    }

    /// A sync state changed: it is flushed with the next group commit, or
    /// within [`Config::sync_state_flush_delay`](crate::Config::sync_state_flush_delay) if nothing else needs one
    /// (a lost sync state only costs bandwidth: no fsync per sync message),
    /// so its document can be evicted after.
    /// A named document's sync states are not stored (nor is it): see
    /// [`super::creations`].
    pub(super) fn mark_sync_dirty(&mut self, doc: DocumentId, peer: NodeId) {
        if self.creations.is_named(&doc) {
            return;
        }
        self.durability.dirty_sync.insert((doc, peer));
        self.schedule_flush_by(self.now.add(self.config.sync_state_flush_delay));
    }

    /// Schedules the group commit after `now`, unless one is scheduled
    /// sooner.
    pub(super) fn schedule_flush(&mut self, now: Time) {
        self.schedule_flush_by(now.add(self.config.group_commit_delay));
    }

    /// Makes the next group commit due by `at` at the latest.
    pub(super) fn schedule_flush_by(&mut self, at: Time) {
        self.durability.flush_at = Some(self.durability.flush_at.map_or(at, |due| due.min(at)));
    }
}
