//! What a replica tells its driver: the public event types, and the queue
//! of events with the set of documents whose changes carry patches.

use std::collections::{BTreeSet, VecDeque};

use automerge::ChangeHash;
use murmur_wire::{DocumentId, Message, NodeId};

use super::Replica;
use crate::Time;

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
    /// A document was deleted (its tombstone laid here): its content is
    /// gone with the next flush, and every read or change of it is
    /// refused with [`ReplicaError::Deleted`](crate::ReplicaError::Deleted).
    DocumentDeleted {
        /// The document.
        doc: DocumentId,
        /// Who deleted it: this node's application, or the peer that told
        /// this node.
        origin: Origin,
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

/// The events waiting for the driver, and the documents observed (whose
/// [`Event::DocumentChanged`](crate::Event::DocumentChanged) carries patches).
#[derive(Debug, Default)]
pub(super) struct Events {
    queue: VecDeque<Event>,
    observed: BTreeSet<DocumentId>,
}

impl Events {
    /// Whether changes to `doc` come with patches.
    pub(super) fn observed(&self, doc: DocumentId) -> bool {
        self.observed.contains(&doc)
    }

    /// A local write reached `level`.
    pub(super) fn acknowledged(&mut self, write: WriteId, doc: DocumentId, level: AckLevel) {
        self.queue
            .push_back(Event::Acknowledged { write, doc, level });
    }

    pub(super) fn push(&mut self, event: Event) {
        self.queue.push_back(event);
    }

    pub(super) fn pop(&mut self) -> Option<Event> {
        self.queue.pop_front()
    }
}

impl Replica {
    /// Starts (`true`) or stops (`false`) computing patches for `doc`: while
    /// it is observed, every [`Event::DocumentChanged`](crate::Event::DocumentChanged) about it carries the
    /// patches of the changes just applied. The driver observes the
    /// documents someone subscribes to, and only those: patches cost work.
    pub fn observe(&mut self, doc: DocumentId, on: bool) {
        if on {
            self.events.observed.insert(doc);
        } else {
            self.events.observed.remove(&doc);
        }
    }

    /// `doc` changed (its heads moved): it is flushed with the next group
    /// commit, and the driver hears of it.
    pub(super) fn changed(
        &mut self,
        now: Time,
        doc: DocumentId,
        origin: Origin,
        patches: Option<Vec<automerge::Patch>>,
    ) {
        self.promote(doc);
        self.mark_dirty(now, doc);
        let order = self.feed.next_order();
        let skip = self
            .config
            .planted(crate::FaultInjection::FeedSkipsPeerChanges)
            && matches!(origin, Origin::Remote(_));
        if let Some(document) = self.docs.get_mut(&doc) {
            if skip {
                document.skip_record();
            } else {
                document.record(origin, now, order);
            }
        }
        if let Some(document) = self.docs.get(&doc) {
            self.events.push(Event::DocumentChanged {
                doc,
                heads: document.heads(),
                origin,
                patches,
            });
        }
    }
}
