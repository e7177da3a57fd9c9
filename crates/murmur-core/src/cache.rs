//! Which documents are in memory, in least-recently-used order, and roughly
//! how many bytes they take.
//!
//! The order is a counter bumped on every use, kept in a `BTreeMap`, so
//! eviction is deterministic (same inputs, same evictions): the simulator
//! depends on it.

use std::collections::BTreeMap;

use murmur_wire::DocumentId;

/// Estimated memory of a document in memory that holds `stored_bytes` in
/// the store: a fixed cost (an empty Automerge document with its indexes and
/// our bookkeeping) plus a multiple of its compressed size (the in-memory
/// op set is several times the columnar encoding). Measured with
/// `examples/doc_memory.rs` (automerge 0.12, release): loading 20,000
/// one-change documents (186 bytes flushed each) grew the resident set by 18.1
/// KiB each; this estimates 20.2 KiB.
pub(crate) fn estimate_bytes(stored_bytes: usize) -> usize {
    const FIXED_BYTES: usize = 20 * 1024;
    const PER_STORED_BYTE: usize = 4;
    FIXED_BYTES.saturating_add(stored_bytes.saturating_mul(PER_STORED_BYTE))
}

#[derive(Default)]
pub(crate) struct Cache {
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
