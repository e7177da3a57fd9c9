//! Counting which peers hold each local write, for `Replicated(k)`
//! acknowledgements.
//!
//! A peer that applies changes from us (pushed or synced) answers, after
//! its own flush, with its heads for that document. A write is held by a
//! peer once the peer's heads include it. Only writes that are durable here
//! are acknowledged `Replicated`, so `Replicated(k)` means k + 1 durable
//! copies.

use std::collections::{BTreeMap, BTreeSet};

use automerge::ChangeHash;
use murmur_wire::{DocumentId, NodeId};

use crate::WriteId;

struct Tracked {
    hash: ChangeHash,
    durable: bool,
    peers: BTreeSet<NodeId>,
    /// Peers the write was pushed to that were not yet asked for their
    /// heads on a later connection (see [`Replication::questions_for`]).
    unasked: BTreeSet<NodeId>,
}

/// The writes waiting for more copies, and the heads reports this node
/// owes its peers.
#[derive(Default)]
pub(crate) struct Replication {
    /// Every tracked write's document, oldest write first (for eviction).
    order: BTreeMap<WriteId, DocumentId>,
    /// The tracked writes of each document: a heads report only looks at
    /// its own document's writes.
    by_doc: BTreeMap<DocumentId, BTreeMap<WriteId, Tracked>>,
    /// (document, peer) pairs whose changes this node applied and must
    /// confirm with its heads after the next flush.
    owed: BTreeSet<(DocumentId, NodeId)>,
}

impl Replication {
    /// Starts counting copies of `write`, just pushed to `pushed_to`. Past
    /// `limit` tracked writes the oldest is forgotten (its waiter, if any,
    /// times out in the driver).
    pub(crate) fn track(
        &mut self,
        write: WriteId,
        doc: DocumentId,
        hash: ChangeHash,
        limit: usize,
        pushed_to: BTreeSet<NodeId>,
    ) {
        self.order.insert(write, doc);
        self.by_doc.entry(doc).or_default().insert(
            write,
            Tracked {
                hash,
                durable: false,
                peers: BTreeSet::new(),
                unasked: pushed_to,
            },
        );
        while self.order.len() > limit.max(1) {
            if let Some((oldest, doc)) = self.order.pop_first() {
                self.forget(oldest, doc);
            }
        }
    }

    fn forget(&mut self, write: WriteId, doc: DocumentId) {
        if let Some(writes) = self.by_doc.get_mut(&doc) {
            writes.remove(&write);
            if writes.is_empty() {
                self.by_doc.remove(&doc);
            }
        }
    }

    /// `write` of `doc` is durable here; returns how many peers already
    /// hold it.
    pub(crate) fn made_durable(&mut self, write: WriteId, doc: DocumentId) -> usize {
        match self.by_doc.get_mut(&doc).and_then(|w| w.get_mut(&write)) {
            Some(tracked) => {
                tracked.durable = true;
                tracked.peers.len()
            }
            None => 0,
        }
    }

    /// True if some write of `doc` still waits for `peer`.
    pub(crate) fn waits_for(&self, doc: DocumentId, peer: NodeId) -> bool {
        self.by_doc
            .get(&doc)
            .is_some_and(|writes| writes.values().any(|t| !t.peers.contains(&peer)))
    }

    /// `peer` reported heads for `doc`; `is_held` says whether a change is
    /// among them or their ancestors. Returns the durable writes whose copy
    /// count grew, with the new count.
    pub(crate) fn confirm(
        &mut self,
        doc: DocumentId,
        peer: NodeId,
        is_held: impl Fn(&ChangeHash) -> bool,
    ) -> Vec<(WriteId, usize)> {
        let mut grown = Vec::new();
        let Some(writes) = self.by_doc.get_mut(&doc) else {
            return grown;
        };
        for (write, tracked) in writes.iter_mut() {
            if !tracked.peers.contains(&peer) && is_held(&tracked.hash) {
                tracked.peers.insert(peer);
                if tracked.durable {
                    grown.push((*write, tracked.peers.len()));
                }
            }
        }
        grown
    }

    /// This node applied changes of `doc` from `peer`.
    pub(crate) fn owe(&mut self, doc: DocumentId, peer: NodeId) {
        self.owed.insert((doc, peer));
    }

    /// The heads reports due now that a flush succeeded.
    pub(crate) fn take_owed(&mut self) -> BTreeSet<(DocumentId, NodeId)> {
        std::mem::take(&mut self.owed)
    }

    /// The documents to ask `peer` for its heads again, now that a new
    /// connection to it is up: those with a write pushed to it (over an
    /// earlier connection, which may have lost its report) that it is not
    /// known to hold. Each write asks each peer once: a peer that lacked
    /// the write reports anyway once it syncs it, and writes made while the
    /// peer was away were never pushed to it.
    pub(crate) fn questions_for(&mut self, peer: NodeId) -> Vec<DocumentId> {
        let mut docs = Vec::new();
        for (doc, writes) in &mut self.by_doc {
            let mut ask = false;
            for tracked in writes.values_mut() {
                ask |= tracked.unasked.remove(&peer) && !tracked.peers.contains(&peer);
            }
            if ask {
                docs.push(*doc);
            }
        }
        docs
    }
}
