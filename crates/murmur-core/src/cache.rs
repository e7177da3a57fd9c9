//! The documents of a replica as one type: those in memory, in
//! least-recently-used order with roughly how many bytes they take (so a
//! document and its cache entry come and go together), those loading (with
//! the inputs waiting for them), those being rebuilt because a peer's data
//! broke them in memory, and those set aside because they do not load.
//!
//! The order is a counter bumped on every use, kept in a `BTreeMap`, so
//! eviction is deterministic (same inputs, same evictions): the simulator
//! depends on it.

use std::collections::BTreeMap;

use murmur_store::{layout, Storage};
use murmur_wire::DocumentId;

use crate::document::{Document, Unsaved};
use crate::load::Loads;
use crate::ReplicaError;

/// The documents in memory with their use order and size estimates, the
/// documents loading, and the quarantined ones.
#[derive(Default)]
pub(crate) struct Documents {
    docs: BTreeMap<DocumentId, Document>,
    cache: Cache,
    /// Documents waiting to load, with the inputs parked until they land.
    loads: Loads,
    /// Documents whose stored data does not load, with the reason.
    quarantined: BTreeMap<DocumentId, String>,
    /// Documents dropped from memory because a peer's data broke them,
    /// reloading, with the changes applied since their last durable save
    /// (to apply again once the stored part has loaded).
    rebuilding: BTreeMap<DocumentId, Unsaved>,
}

impl Documents {
    /// Whether `doc` is in memory, counting a use of it: `Ok(true)` if it
    /// is, `Ok(false)` if `store` does not hold it, and
    /// [`ReplicaError::Loading`] if it is stored and not in memory (its
    /// load is then requested: nothing loads inline).
    pub(crate) fn resident(
        &mut self,
        store: &dyn Storage,
        doc: DocumentId,
    ) -> Result<bool, ReplicaError> {
        if self.touch(doc) {
            return Ok(true);
        }
        if self.quarantined.contains_key(&doc) {
            return Err(self.missing(doc));
        }
        if self.loads.is_loading(&doc) {
            return Err(ReplicaError::Loading(doc));
        }
        if self.rebuilding.contains_key(&doc) {
            // Its load failed (a storage error): ask again. It may not be
            // stored at all yet (never flushed), and still must not be
            // taken for a new document.
            self.loads.request(doc);
            self.loads.want(doc);
            return Err(ReplicaError::Loading(doc));
        }
        if !layout::document_exists(store, doc.as_bytes())? {
            return Ok(false);
        }
        self.loads.request(doc);
        Err(ReplicaError::Loading(doc))
    }

    /// The error for `doc` not being in memory: quarantined, or unknown.
    pub(crate) fn missing(&self, doc: DocumentId) -> ReplicaError {
        match self.quarantined.get(&doc) {
            Some(reason) => ReplicaError::CorruptDocument {
                doc,
                reason: reason.clone(),
            },
            None => ReplicaError::UnknownDocument(doc),
        }
    }

    /// Sets `doc` aside: its stored data does not load.
    pub(crate) fn quarantine(&mut self, doc: DocumentId, reason: String) {
        self.quarantined.insert(doc, reason);
    }

    /// Drops `doc` from memory to rebuild it: its stored part loads (once
    /// the flush in flight has landed, if `flush_in_flight`) and `unsaved`
    /// (the changes applied since its last durable save) is applied again.
    pub(crate) fn rebuild(&mut self, doc: DocumentId, unsaved: Unsaved, flush_in_flight: bool) {
        self.remove(doc);
        self.rebuilding.insert(doc, unsaved);
        if !self.loads.is_loading(&doc) {
            self.loads.request(doc);
        }
        self.loads.want(doc);
        if flush_in_flight {
            self.loads.hold(doc);
        }
    }

    /// Whether `doc` is being rebuilt ([`Documents::rebuild`]).
    pub(crate) fn is_rebuilding(&self, doc: &DocumentId) -> bool {
        self.rebuilding.contains_key(doc)
    }

    /// The documents being rebuilt, in order.
    pub(crate) fn rebuilding(&self) -> Vec<DocumentId> {
        self.rebuilding.keys().copied().collect()
    }

    /// The changes to apply again to `doc`, just loaded, if it is being
    /// rebuilt; it no longer is.
    pub(crate) fn take_rebuilding(&mut self, doc: DocumentId) -> Option<Unsaved> {
        self.rebuilding.remove(&doc)
    }

    /// Forgets that `doc` was set aside (it was deleted).
    pub(crate) fn forget_quarantined(&mut self, doc: DocumentId) {
        self.quarantined.remove(&doc);
    }

    /// Whether `doc` is set aside.
    pub(crate) fn is_quarantined(&self, doc: &DocumentId) -> bool {
        self.quarantined.contains_key(doc)
    }

    /// The documents set aside, with the reason.
    pub(crate) fn quarantined(&self) -> &BTreeMap<DocumentId, String> {
        &self.quarantined
    }

    /// The documents loading.
    pub(crate) fn loads(&self) -> &Loads {
        &self.loads
    }

    /// The documents loading, to request, hand out or land loads.
    pub(crate) fn loads_mut(&mut self) -> &mut Loads {
        &mut self.loads
    }

    /// Takes `document` into memory (replacing any held as `doc`), as just
    /// used.
    pub(crate) fn insert(&mut self, doc: DocumentId, document: Document) {
        self.cache
            .touch(doc, estimate_bytes(document.stored_bytes()));
        self.docs.insert(doc, document);
    }

    /// Lets go of `doc`.
    pub(crate) fn remove(&mut self, doc: DocumentId) -> Option<Document> {
        self.cache.remove(doc);
        self.docs.remove(&doc)
    }

    /// Records a use of `doc`; false if it is not in memory.
    pub(crate) fn touch(&mut self, doc: DocumentId) -> bool {
        let Some(document) = self.docs.get(&doc) else {
            return false;
        };
        self.cache
            .touch(doc, estimate_bytes(document.stored_bytes()));
        true
    }

    /// Updates `doc`'s size estimate (after a flush), without counting a
    /// use.
    pub(crate) fn resize(&mut self, doc: DocumentId) {
        if let Some(document) = self.docs.get(&doc) {
            self.cache
                .resize(doc, estimate_bytes(document.stored_bytes()));
        }
    }

    pub(crate) fn get(&self, doc: &DocumentId) -> Option<&Document> {
        self.docs.get(doc)
    }

    pub(crate) fn get_mut(&mut self, doc: &DocumentId) -> Option<&mut Document> {
        self.docs.get_mut(doc)
    }

    pub(crate) fn contains_key(&self, doc: &DocumentId) -> bool {
        self.docs.contains_key(doc)
    }

    /// The ids in memory, in order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &DocumentId> + '_ {
        self.docs.keys()
    }

    pub(crate) fn len(&self) -> usize {
        self.docs.len()
    }

    /// Estimated bytes of every document in memory.
    pub(crate) fn bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// Documents in memory, least recently used first, with their sizes.
    pub(crate) fn coldest(&self) -> impl Iterator<Item = (DocumentId, usize)> + '_ {
        self.cache.coldest()
    }

    /// Checks that the cache lists exactly the documents in memory, and
    /// that no document loading is in memory.
    pub(crate) fn check(&self) -> Result<(), String> {
        self.cache.check()?;
        self.loads.check(|doc| self.docs.contains_key(doc))?;
        if self.cache.len() != self.docs.len() {
            return Err(format!(
                "{} documents in memory, {} in the cache",
                self.docs.len(),
                self.cache.len()
            ));
        }
        if let Some(doc) = self.docs.keys().find(|doc| !self.cache.contains(doc)) {
            return Err(format!("document {doc} is in memory but not in the cache"));
        }
        if let Some(doc) = self
            .rebuilding
            .keys()
            .find(|doc| self.docs.contains_key(doc))
        {
            return Err(format!("document {doc} is being rebuilt but in memory"));
        }
        if let Some(doc) = self
            .docs
            .iter()
            .find_map(|(id, d)| (!d.all_recorded()).then_some(id))
        {
            return Err(format!(
                "document {doc} holds applied changes with no feed record"
            ));
        }
        Ok(())
    }
}

/// Estimated memory of a document in memory that holds `stored_bytes` in
/// the store: a fixed cost (an empty Automerge document with its indexes and
/// our bookkeeping) plus a multiple of its compressed size (the in-memory
/// op set is several times the columnar encoding). Measured with
/// `examples/doc_memory.rs` (automerge 0.12, release): loading 20,000
/// one-change documents (186 bytes flushed each) grew the resident set by 18.1
/// KiB each; this estimates 20.2 KiB.
fn estimate_bytes(stored_bytes: usize) -> usize {
    const FIXED_BYTES: usize = 20 * 1024;
    const PER_STORED_BYTE: usize = 4;
    FIXED_BYTES.saturating_add(stored_bytes.saturating_mul(PER_STORED_BYTE))
}

#[derive(Default)]
struct Cache {
    clock: u64,
    /// Use stamp -> document, oldest first.
    order: BTreeMap<u64, DocumentId>,
    /// Document -> (use stamp, estimated bytes).
    entries: BTreeMap<DocumentId, (u64, usize)>,
    bytes: usize,
}

impl Cache {
    /// Records a use of `doc` (inserting it if new) with its current size
    /// estimate.
    pub(crate) fn touch(&mut self, doc: DocumentId, estimated_bytes: usize) {
        self.clock += 1;
        if let Some((stamp, bytes)) = self.entries.insert(doc, (self.clock, estimated_bytes)) {
            self.order.remove(&stamp);
            self.bytes -= bytes;
        }
        self.order.insert(self.clock, doc);
        self.bytes += estimated_bytes;
    }

    /// Updates `doc`'s size estimate without counting a use.
    pub(crate) fn resize(&mut self, doc: DocumentId, estimated_bytes: usize) {
        if let Some((_, bytes)) = self.entries.get_mut(&doc) {
            self.bytes = self.bytes - *bytes + estimated_bytes;
            *bytes = estimated_bytes;
        }
    }

    /// Forgets `doc`.
    pub(crate) fn remove(&mut self, doc: DocumentId) {
        if let Some((stamp, bytes)) = self.entries.remove(&doc) {
            self.order.remove(&stamp);
            self.bytes -= bytes;
        }
    }

    /// Estimated bytes of every document in memory.
    /// Checks that the byte total and the use order agree with the entries.
    pub(crate) fn check(&self) -> Result<(), String> {
        let sum: usize = self.entries.values().map(|(_, bytes)| bytes).sum();
        if sum != self.bytes {
            return Err(format!(
                "cache counts {} bytes, its entries hold {sum}",
                self.bytes
            ));
        }
        if self.order.len() != self.entries.len() {
            return Err(format!(
                "cache order lists {} documents, entries {}",
                self.order.len(),
                self.entries.len()
            ));
        }
        for (stamp, doc) in &self.order {
            if self.entries.get(doc).map(|(s, _)| s) != Some(stamp) {
                return Err(format!("cache order and entries disagree on {doc}"));
            }
        }
        Ok(())
    }

    pub(crate) fn contains(&self, doc: &DocumentId) -> bool {
        self.entries.contains_key(doc)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Documents in memory, least recently used first, with their sizes.
    pub(crate) fn coldest(&self) -> impl Iterator<Item = (DocumentId, usize)> + '_ {
        self.order
            .values()
            .map(|doc| (*doc, self.entries.get(doc).map_or(0, |(_, bytes)| *bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_comes_first_and_bytes_add_up() {
        let (a, b, c) = (
            DocumentId::from_bytes([1; 16]),
            DocumentId::from_bytes([2; 16]),
            DocumentId::from_bytes([3; 16]),
        );
        let mut cache = Cache::default();
        cache.touch(a, 10);
        cache.touch(b, 20);
        cache.touch(c, 30);
        cache.touch(a, 15);
        assert_eq!(cache.bytes(), 65);
        let order: Vec<DocumentId> = cache.coldest().map(|(doc, _)| doc).collect();
        assert_eq!(order, vec![b, c, a]);
        cache.remove(c);
        cache.resize(b, 5);
        assert_eq!(cache.bytes(), 20);
    }
}
