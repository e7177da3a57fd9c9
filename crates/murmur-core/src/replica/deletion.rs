//! Deleting documents: a tombstone that replicates and wins.
//!
//! Deleting a document writes a tombstone (`x<doc>`) in place of its
//! content: the group commit that carries it also removes its index key,
//! snapshot, chunks and sync states, sets its digest leaf to the
//! tombstone's value, and adds a deletion entry to the feed, all in one
//! batch. A tombstone is never removed, so the document cannot come back.
//!
//! **The rule: a deletion wins.** Once a node holds a document's tombstone,
//! every change of it, earlier or concurrent, is discarded there, and the
//! tombstone spreads to every node: it is pushed to connected peers
//! (`Message::Deleted`); a node asked to sync a document it deleted
//! answers with the tombstone; and reconciliation, whose digest leaf of a
//! deleted document is the tombstone's own value, finds every node that
//! still holds content and tells it. An edit made on a partitioned node
//! while another deleted the document is lost when they meet: the
//! simulator checks that every node ends with the tombstone and no content.

use murmur_store::layout;
use murmur_wire::{DocumentId, Message, NodeId};

use super::{AckLevel, Event, Origin, Replica, WriteId};
use crate::feed::Record;
use crate::{ReplicaError, Time};

impl Replica {
    /// Deletes `doc` on every node (see the module docs for the rule with
    /// concurrent edits). Acknowledged like a local change: `Applied` now,
    /// `Durable` once the tombstone is flushed. Deleting a deleted
    /// document is acknowledged at once; an unknown one is
    /// [`ReplicaError::UnknownDocument`].
    pub fn delete_document(&mut self, now: Time, doc: DocumentId) -> Result<WriteId, ReplicaError> {
        self.observe_clock(now);
        let write = WriteId(self.next_write);
        if self.is_deleted(&doc) {
            self.next_write += 1;
            self.events.acknowledged(write, doc, AckLevel::Durable);
            return Ok(write);
        }
        self.check_writable()?;
        let held = self.docs.contains_key(&doc)
            || self.docs.is_quarantined(&doc)
            || layout::document_exists(&*self.store, doc.as_bytes())?;
        if !held || self.creations.is_named(&doc) {
            return Err(ReplicaError::UnknownDocument(doc));
        }
        self.next_write += 1;
        self.tombstone(now, doc, Origin::Local);
        self.durability.await_write(write, doc);
        self.events.acknowledged(write, doc, AckLevel::Applied);
        Ok(write)
    }

    /// Whether `doc` is deleted here (its tombstone flushed or waiting for
    /// the next flush).
    pub fn is_deleted(&self, doc: &DocumentId) -> bool {
        self.deletions.contains(doc)
    }

    /// A peer says `doc` is deleted: so it is here too.
    pub(super) fn receive_deleted(&mut self, now: Time, from: NodeId, doc: DocumentId) {
        if self
            .config
            .planted(crate::FaultInjection::IgnorePeerDeletions)
        {
            return;
        }
        if !self.is_deleted(&doc) {
            tracing::info!(peer = %from.short(), doc = %doc, "a peer deleted the document; deleting it here");
            self.tombstone(now, doc, Origin::Remote(from));
        }
    }

    /// `from` spoke of `doc`, which is deleted here: it is told so, and
    /// its message is not taken up.
    pub(super) fn answer_deleted(&mut self, from: NodeId, doc: DocumentId) {
        self.enqueue(from, Message::Deleted { doc });
    }

    /// Lays `doc`'s tombstone: out of memory and every table, its content
    /// removed with the next flush, its peers told.
    fn tombstone(&mut self, now: Time, doc: DocumentId, origin: Origin) {
        self.deletions.insert(doc);
        self.metrics.documents_deleted += 1;
        self.drop_named(doc);
        self.docs.remove(doc);
        self.docs.forget_quarantined(doc);
        self.durability.forget_document(doc);
        self.count_cached();
        let order = self.feed.next_order();
        self.pending_deletions
            .push((doc, Record::deletion(order, origin, now)));
        self.schedule_flush(now);
        let peers: Vec<NodeId> = self.peers.iter().copied().collect();
        for peer in peers {
            if origin != Origin::Remote(peer) {
                self.enqueue(peer, Message::Deleted { doc });
            }
        }
        self.events.push(Event::DocumentDeleted { doc, origin });
    }
}
