//! The documents in memory, in least-recently-used order, and roughly how
//! many bytes they take: one type, so a document and its cache entry come
//! and go together.
//!
//! The order is a counter bumped on every use, kept in a `BTreeMap`, so
//! eviction is deterministic (same inputs, same evictions): the simulator
//! depends on it.

use std::collections::BTreeMap;

use murmur_wire::DocumentId;

use crate::document::Document;

/// The documents in memory and their use order and size estimates.
#[derive(Default)]
pub(crate) struct Documents {
    docs: BTreeMap<DocumentId, Document>,
    cache: Cache,
}

impl Documents {
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

    /// Checks that the cache lists exactly the documents in memory.
    pub(crate) fn check(&self) -> Result<(), String> {
        self.cache.check()?;
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
