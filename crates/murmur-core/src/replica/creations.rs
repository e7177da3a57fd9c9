//! Documents new to this node that peers bring: stored only once they hold
//! content, and only so many per peer at a time.
//!
//! A peer names documents this node lacks in reconciliation digests and in
//! sync messages. Such a document is synced from an empty copy kept in
//! memory only: *named*, never stored, never counted as held. It becomes a
//! stored document when a change of it applies (the peer answers the sync
//! with its content), and it is dropped if that peer goes away first, if
//! the cache evicts it, or if a peer's data breaks it. So naming ids makes
//! this node store nothing. A document with no change yet (just made by
//! [`Replica::create_document`]) has no leaf in the reconciliation digest:
//! it reaches the peers that missed its announcement with its first
//! change, and costs nothing at rest meanwhile.
//!
//! One peer may have at most [`Config::max_new_documents_per_peer`]
//! documents new to this node at a time: named ones, and ones its content
//! created that wait for their first flush. Past it, its messages about
//! further new documents are not taken up, counted in
//! [`Metrics::documents_deferred`]; sync retries and anti-entropy bring
//! them again.
//!
//! [`Config::max_new_documents_per_peer`]: crate::Config::max_new_documents_per_peer
//! [`Metrics::documents_deferred`]: crate::Metrics::documents_deferred

use std::collections::{BTreeMap, BTreeSet};

use murmur_wire::{DocumentId, NodeId};

use super::Replica;
use crate::document::Document;
use crate::ReplicaError;

/// The documents peers brought that are new here: named ones (in memory
/// only) and ones created by content that are not flushed yet.
#[derive(Default)]
pub(super) struct Creations {
    /// Named documents, with the peer that named them.
    named: BTreeMap<DocumentId, NodeId>,
    /// How many documents each peer has named.
    named_by: BTreeMap<NodeId, usize>,
    /// Documents each peer's content created, until their first flush.
    unflushed: BTreeMap<NodeId, BTreeSet<DocumentId>>,
    /// Peers told (in the log) that they reached the cap, since the last
    /// flush: one line per peer and flush, not one per message.
    warned: BTreeSet<NodeId>,
}

impl Creations {
    /// How many documents new here `peer` accounts for now.
    fn used(&self, peer: NodeId) -> usize {
        let named = self.named_by.get(&peer).copied().unwrap_or(0);
        named + self.unflushed.get(&peer).map_or(0, BTreeSet::len)
    }

    /// Whether `doc` is named: in memory only, holding no change.
    pub(super) fn is_named(&self, doc: &DocumentId) -> bool {
        self.named.contains_key(doc)
    }

    fn name(&mut self, peer: NodeId, doc: DocumentId) {
        if self.named.insert(doc, peer).is_none() {
            *self.named_by.entry(peer).or_default() += 1;
        }
    }

    /// Stops tracking `doc` as named; returns the peer that named it.
    pub(super) fn forget(&mut self, doc: DocumentId) -> Option<NodeId> {
        let peer = self.named.remove(&doc)?;
        if let Some(count) = self.named_by.get_mut(&peer) {
            *count -= 1;
            if *count == 0 {
                self.named_by.remove(&peer);
            }
        }
        Some(peer)
    }

    /// `doc` holds a change now: if it was named, it counts against its
    /// peer until its first flush. Returns whether it was named.
    pub(super) fn promote(&mut self, doc: DocumentId) -> bool {
        match self.forget(doc) {
            Some(peer) => {
                self.unflushed.entry(peer).or_default().insert(doc);
                true
            }
            None => false,
        }
    }

    /// `peer` went away: the documents it named, to drop from memory.
    pub(super) fn forget_peer(&mut self, peer: NodeId) -> Vec<DocumentId> {
        let docs: Vec<DocumentId> = self
            .named
            .iter()
            .filter(|(_, by)| **by == peer)
            .map(|(doc, _)| *doc)
            .collect();
        for doc in &docs {
            self.forget(*doc);
        }
        self.unflushed.remove(&peer);
        docs
    }

    /// A flush landed: only documents still waiting for one (`dirty`)
    /// count against their peer now.
    pub(super) fn flushed(&mut self, dirty: &BTreeSet<DocumentId>) {
        for docs in self.unflushed.values_mut() {
            docs.retain(|doc| dirty.contains(doc));
        }
        self.unflushed.retain(|_, docs| !docs.is_empty());
        self.warned.clear();
    }

    /// Whether `peer` reaching the cap is news for the log.
    fn first_refusal(&mut self, peer: NodeId) -> bool {
        self.warned.insert(peer)
    }

    /// Every named document is in memory, holds no change, and waits for
    /// no flush; the counts add up.
    pub(super) fn check(
        &self,
        empty_in_memory: impl Fn(&DocumentId) -> bool,
        dirty: impl Fn(&DocumentId) -> bool,
    ) -> Result<(), String> {
        for doc in self.named.keys() {
            if !empty_in_memory(doc) {
                return Err(format!(
                    "named document {doc} is not an empty one in memory"
                ));
            }
            if dirty(doc) {
                return Err(format!("named document {doc} waits for a flush"));
            }
        }
        let counted: usize = self.named_by.values().sum();
        if counted != self.named.len() {
            return Err(format!(
                "{counted} named documents counted by peer, {} named",
                self.named.len()
            ));
        }
        Ok(())
    }
}

impl Replica {
    /// Makes way for `from`'s message about `doc`: `true` if it may go on
    /// (the document is held, or new here and now named: an empty copy in
    /// memory that is stored once a change of it applies), `false` if it
    /// is deferred at `from`'s cap. An error if `doc` is set aside or
    /// loading (its load is then requested).
    fn admit(&mut self, from: NodeId, doc: DocumentId) -> Result<bool, ReplicaError> {
        if self.is_deleted(&doc) {
            self.answer_deleted(from, doc);
            return Ok(false);
        }
        if self.docs.is_quarantined(&doc) {
            return Err(self.missing(doc));
        }
        if self.resident(doc)? {
            return Ok(true);
        }
        let cap = self.config.max_new_documents_per_peer;
        if self.creations.used(from) >= cap {
            self.metrics.documents_deferred += 1;
            if self.creations.first_refusal(from) {
                tracing::warn!(peer = %from.short(), doc = %doc, cap, "a peer brings more new documents than its cap (max_new_documents_per_peer); leaving the rest until some are stored");
            }
            return Ok(false);
        }
        self.docs.insert(doc, Document::new(self.actor.clone()));
        self.creations.name(from, doc);
        Ok(true)
    }

    /// The document `from`'s message is about, as [`Replica::admit`] makes
    /// way for it: `None` if deferred.
    pub(super) fn admitted(
        &mut self,
        from: NodeId,
        doc: DocumentId,
    ) -> Result<Option<&mut Document>, ReplicaError> {
        if !self.admit(from, doc)? {
            return Ok(None);
        }
        self.docs
            .get_mut(&doc)
            .map(Some)
            .ok_or(ReplicaError::UnknownDocument(doc))
    }

    /// `doc`'s heads moved: a named document holds a change now, so it is
    /// stored with the next flush (the caller marks it dirty), with its
    /// sync states.
    pub(super) fn promote(&mut self, doc: DocumentId) {
        if !self.creations.promote(doc) {
            return;
        }
        tracing::debug!(doc = %doc, "a document new here holds a change; storing it");
        let peers: Vec<NodeId> = self
            .docs
            .get(&doc)
            .map(|document| document.sync.keys().copied().collect())
            .unwrap_or_default();
        for peer in peers {
            self.mark_sync_dirty(doc, peer);
        }
    }

    /// Drops the named document `doc` from memory, if it is one (it holds
    /// nothing to save). Returns whether it was.
    pub(super) fn drop_named(&mut self, doc: DocumentId) -> bool {
        if self.creations.forget(doc).is_none() {
            return false;
        }
        self.docs.remove(doc);
        self.count_cached();
        true
    }

    /// `peer` went away: the documents it named are dropped from memory.
    pub(super) fn drop_named_by(&mut self, peer: NodeId) {
        let docs = self.creations.forget_peer(peer);
        if docs.is_empty() {
            return;
        }
        tracing::debug!(peer = %peer.short(), documents = docs.len(), "dropping the documents the peer named and never sent");
        for doc in docs {
            self.docs.remove(doc);
        }
        self.count_cached();
    }
}
