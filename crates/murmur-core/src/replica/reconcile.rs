//! Document-set reconciliation: the digest protocol between two peers
//! (`digest.rs` is the trie it walks), run when a connection comes up and
//! in anti-entropy rounds.

use std::collections::{BTreeMap, BTreeSet};

use murmur_store::layout;
use murmur_wire::{DigestNode, DocumentId, Message, NodeId, MAX_DIGEST_NODES};
use rand::Rng;

use super::Replica;
use crate::digest::{NodeValue, LEAF_LEVEL};
use crate::load::Parked;
use crate::{FaultInjection, ReplicaError, Time};

impl Replica {
    /// Reconciles the document set with one peer picked at random: sends
    /// it the digest's root.
    pub(super) fn anti_entropy_round(&mut self) {
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

    /// Starts reconciling the document sets with `peer`: sends it the
    /// digest's root. If the roots match, that one message is all.
    pub(super) fn start_reconciliation(&mut self, peer: NodeId) {
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

    pub(super) fn send_digest(&mut self, peer: NodeId, message: Message) {
        if self.enqueue(peer, message) {
            self.metrics.digest_messages_sent += 1;
        }
    }

    pub(super) fn receive_digest(
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
    pub(super) fn receive_digest_nodes(
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
    /// [`Config::max_digest_leaves`](crate::Config::max_digest_leaves) (itself at most [`murmur_wire::MAX_DIGEST_LEAVES`]).
    pub(super) fn send_bucket(&mut self, peer: NodeId, bucket: u16) -> Result<(), ReplicaError> {
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
    pub(super) fn receive_digest_leaves(
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
            if self.is_deleted(&doc) {
                // Our leaf is the tombstone's: the peer still holds content.
                self.metrics.deletions_reconciled += 1;
                self.answer_deleted(from, doc);
            } else if theirs.get(&doc) == Some(&crate::digest::tombstone_leaf(&doc)) {
                self.metrics.deletions_reconciled += 1;
                self.receive_deleted(now, from, doc);
            } else {
                self.reconcile_document(now, from, doc);
            }
        }
        Ok(())
    }

    /// Syncs one document found to differ from `peer`'s; one only the peer
    /// holds is named here (see [`super::creations`]), within its cap.
    pub(super) fn reconcile_document(&mut self, now: Time, peer: NodeId, doc: DocumentId) {
        match self.admitted(peer, doc) {
            Ok(Some(_)) => {}
            Ok(None) => return,
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
        if !self.creations.is_named(&doc) {
            self.schedule_flush(now);
        }
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
}
