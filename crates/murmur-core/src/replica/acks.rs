//! `Replicated(k)` acknowledgements: heads a peer reports after its flush
//! count as copies of this node's writes, and this node reports its own
//! after each flush that made a peer's changes durable.

use std::collections::BTreeSet;

use automerge::{ActorId, ChangeHash};
use murmur_wire::{DocumentId, Message, NodeId};

use super::{AckLevel, Replica, WriteId};
use crate::load::Parked;
use crate::{FaultInjection, ReplicaError};

impl Replica {
    /// This node applied changes of `doc` that came from `from`. After the
    /// flush that makes them durable it tells `from` its heads, and also
    /// each connected peer that wrote some of them (`authors`): a writer
    /// counts copies of its writes, which may reach this node through
    /// another peer (a sync, a partition's other side).
    pub(super) fn owe_heads(&mut self, doc: DocumentId, from: NodeId, authors: &[ActorId]) {
        self.replication.owe(doc, from);
        for peer in &self.peers {
            let wrote = |actor| crate::incarnation::is_actor_of(actor, peer);
            if *peer != from && authors.iter().any(wrote) {
                self.replication.owe(doc, *peer);
            }
        }
    }

    /// Tells each peer whose changes a flush just made durable what this
    /// node now durably holds (the heads as saved, not any newer ones in
    /// memory), so it can count copies of its writes.
    pub(super) fn send_owed_heads(&mut self, owed: Vec<(DocumentId, NodeId)>) {
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
    pub(super) fn receive_heads(
        &mut self,
        peer: NodeId,
        doc: DocumentId,
        heads: &[murmur_wire::ChangeHash],
    ) {
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

    pub(super) fn acknowledge_replicated(
        &mut self,
        write: WriteId,
        doc: DocumentId,
        copies: usize,
    ) {
        let copies = if self.config.planted(FaultInjection::ReplicatedOvercount) {
            copies + 1
        } else {
            copies
        };
        self.events.acknowledged(
            write,
            doc,
            AckLevel::Replicated(u32::try_from(copies).unwrap_or(u32::MAX)),
        );
    }
}
