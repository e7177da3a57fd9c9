//! Group commit as an effect: the engine builds a [`Flush`], the driver
//! carries it out off the engine's path and reports back.
//!
//! The engine never waits for a disk. When writes are due to become
//! durable, [`Replica::poll_flush`](crate::Replica::poll_flush) hands out one
//! [`Flush`]: a write batch (every dirty document's new chunk or snapshot,
//! its digest moves, dirty sync states) and what to delete once it is
//! durable (the chunks a new snapshot replaces). The driver runs it on a
//! blocking thread ([`Flush::write`]) and gives the result to
//! [`Replica::handle_flush_complete`](crate::Replica::handle_flush_complete).
//! While it is in flight, new writes gather for the next one: one fsync
//! covers everything that arrived meanwhile (pipelined group commit). At
//! most one flush is in flight, so each batch is built on a store that holds
//! every earlier one.

use std::collections::BTreeSet;
use std::sync::Arc;

use murmur_store::layout::{self, DocKey};
use murmur_store::{Storage, StoreError, WriteBatch};
use murmur_wire::{DocumentId, NodeId};

use crate::digest;
use crate::document::PendingSave;
use crate::replica::WriteId;
use crate::Time;

/// One group commit for the driver to carry out: write it with
/// [`Flush::write`] (on a thread that may block), then hand the result to
/// [`Replica::handle_flush_complete`](crate::Replica::handle_flush_complete).
///
/// Dropping it unwritten is a crash as far as the writes in it are
/// concerned: none of them is acknowledged `Durable` until its flush
/// completes.
pub struct Flush {
    batch: WriteBatch,
    /// Snapshots in `batch`: (document, the sequence number it covers).
    /// What they replace is deleted once the batch is durable.
    snapshots: Vec<(DocKey, u64)>,
    /// Documents deleted in this batch: their content's keys are added to
    /// it (read from the store where the flush runs) before it is applied.
    deletions: Vec<DocKey>,
    /// The planted bug [`crate::FaultInjection::CompactDeletesBeforeSnapshot`].
    delete_first: bool,
    store: Arc<dyn Storage>,
}

impl std::fmt::Debug for Flush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flush")
            .field("writes", &self.batch.len())
            .field("bytes", &self.batch.payload_bytes())
            .field("snapshots", &self.snapshots.len())
            .finish()
    }
}

impl Flush {
    pub(crate) fn new(
        batch: WriteBatch,
        snapshots: Vec<(DocKey, u64)>,
        deletions: Vec<DocKey>,
        delete_first: bool,
        store: Arc<dyn Storage>,
    ) -> Self {
        Flush {
            batch,
            snapshots,
            deletions,
            delete_first,
            store,
        }
    }

    /// Bytes of keys and values the batch writes.
    pub fn bytes(&self) -> usize {
        self.batch.payload_bytes()
    }

    /// Carries the flush out: applies the batch, makes it durable, then
    /// deletes what its snapshots replaced (durable with the next flush;
    /// a crash before that leaves keys that loading skips). Blocks on the
    /// disk: run it on a blocking thread, never on an async worker or in
    /// an engine turn.
    pub fn write(mut self) -> Result<(), StoreError> {
        self.apply()?;
        self.finish()
    }

    /// The first half of [`Flush::write`]: applies the batch without
    /// making it durable. For a simulator that lets time pass (or crashes
    /// the node) between the two halves.
    pub fn apply(&mut self) -> Result<(), StoreError> {
        for doc in std::mem::take(&mut self.deletions) {
            layout::delete_content(&*self.store, &doc, &mut self.batch)?;
        }
        if self.delete_first {
            for &(doc, covers) in &self.snapshots {
                self.store
                    .apply(layout::covered_by(&*self.store, &doc, covers)?)?;
            }
        }
        self.store.apply(std::mem::take(&mut self.batch))
    }

    /// The second half of [`Flush::write`]: flushes, then deletes what the
    /// new snapshots replaced.
    pub fn finish(self) -> Result<(), StoreError> {
        self.store.flush()?;
        if !self.delete_first {
            for &(doc, covers) in &self.snapshots {
                self.store
                    .apply(layout::covered_by(&*self.store, &doc, covers)?)?;
            }
        }
        Ok(())
    }
}

/// What the engine remembers of the flush in flight, to settle it when the
/// driver reports back.
pub(crate) struct InFlight {
    /// Each document written, and what its save will record.
    pub(crate) saves: Vec<(DocumentId, PendingSave)>,
    /// The digest nodes the batch writes.
    pub(crate) staged: digest::Staged,
    /// Local writes that become durable with it.
    pub(crate) writes: Vec<(WriteId, DocumentId)>,
    /// Sync states it writes.
    pub(crate) sync: Vec<(DocumentId, NodeId)>,
    /// Deletions it makes durable (back to waiting if it fails).
    pub(crate) deletions: Vec<(DocumentId, crate::feed::Record)>,
    /// Peers owed our heads of a document once it is durable.
    pub(crate) owed: Vec<(DocumentId, NodeId)>,
    /// What it does to the change feed.
    pub(crate) feed: crate::feed::Staged,
    /// Bytes it writes.
    pub(crate) bytes: usize,
    /// When it was handed out.
    pub(crate) started: Time,
    /// Every document it writes something of: they stay in memory until it
    /// settles (a reload would miss what is not stored yet).
    pub(crate) pinned: BTreeSet<DocumentId>,
}
