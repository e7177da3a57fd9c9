//! What each node's flushed store holds, read incrementally: the
//! acknowledgement checker asks after every `Durable` and `Replicated(k)`
//! whether a change is in a store's flushed data, and loading whole
//! documents for each question would cost more than the run itself.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{Automerge, ChangeHash};
use murmur_core::testkit;
use murmur_core::DocumentId;
use murmur_store::{layout, MemStore};

/// One document as a node's flushed store holds it.
struct Loaded {
    /// The store's durable generation when last read.
    generation: u64,
    /// The snapshot it was built on (its sequence number).
    snapshot: Option<u64>,
    /// The newest chunk applied.
    last_chunk: Option<u64>,
    doc: Automerge,
}

/// Per (node, document), the flushed state, brought up to date only when
/// the store's durable generation moves.
#[derive(Default)]
pub struct DurableIndex {
    loaded: BTreeMap<(usize, DocumentId), Loaded>,
    /// Changes seen in a node's flushed store, per document. Flushed data
    /// only grows (compaction keeps every change), so a yes stays a yes;
    /// [`DurableIndex::verify_after_crash`] checks that it did.
    known: BTreeMap<(usize, DocumentId), BTreeSet<ChangeHash>>,
}

impl DurableIndex {
    /// True if node `node`'s flushed store holds change `hash` of `doc`.
    pub fn holds(
        &mut self,
        node: usize,
        store: &MemStore,
        doc: DocumentId,
        hash: ChangeHash,
    ) -> bool {
        // A durable deletion supersedes every change of the document: its
        // content is gone on purpose.
        if durably_deleted(store, doc) {
            return true;
        }
        if self
            .known
            .get(&(node, doc))
            .is_some_and(|hashes| hashes.contains(&hash))
        {
            return true;
        }
        let generation = store.durable_generation();
        let stale = self
            .loaded
            .get(&(node, doc))
            .is_none_or(|loaded| loaded.generation != generation);
        if stale && !self.refresh(node, store, doc, generation) {
            self.loaded.remove(&(node, doc));
            return false;
        }
        let held = self
            .loaded
            .get(&(node, doc))
            .is_some_and(|loaded| loaded.doc.get_change_meta_by_hash(&hash).is_some());
        if held {
            self.known.entry((node, doc)).or_default().insert(hash);
        }
        held
    }

    /// After node `node` crashed: every change ever seen in its flushed
    /// store must still be there, read afresh (no cached document). Returns
    /// what is missing, one line per document.
    pub fn verify_after_crash(&mut self, node: usize, store: &MemStore) -> Vec<String> {
        self.loaded.retain(|(holder, _), _| *holder != node);
        let mut problems = Vec::new();
        for ((holder, doc), hashes) in &self.known {
            if *holder != node || durably_deleted(store, *doc) {
                continue;
            }
            let stored = testkit::load_stored_document(&store.durable_view(), *doc);
            let missing: Vec<&ChangeHash> = match &stored {
                Ok(stored) => hashes
                    .iter()
                    .filter(|hash| stored.get_change_meta_by_hash(hash).is_none())
                    .collect(),
                Err(_) => hashes.iter().collect(),
            };
            if !missing.is_empty() {
                let how = match &stored {
                    Ok(_) => String::new(),
                    Err(error) => format!(" (the document does not load: {error})"),
                };
                problems.push(format!(
                    "document {doc}: {} of {} changes its flushed store held are gone{how}, first {}",
                    missing.len(),
                    hashes.len(),
                    missing[0]
                ));
            }
        }
        problems
    }

    /// Brings the cached document up to the store's flushed state: new
    /// chunks are applied on top, a new snapshot (compaction) reloads.
    /// False if the document does not load from the flushed data.
    fn refresh(&mut self, node: usize, store: &MemStore, doc: DocumentId, generation: u64) -> bool {
        let Ok(log) = layout::load_document(&store.durable_view(), doc.as_bytes()) else {
            return false;
        };
        let snapshot = log.snapshot.as_ref().map(|record| record.seq);
        let reusable = self
            .loaded
            .get(&(node, doc))
            .is_some_and(|loaded| loaded.snapshot == snapshot);
        if !reusable {
            let base = match &log.snapshot {
                Some(record) => match Automerge::load(&record.bytes) {
                    Ok(doc) => doc,
                    Err(_) => return false,
                },
                None => Automerge::new(),
            };
            self.loaded.insert(
                (node, doc),
                Loaded {
                    generation,
                    snapshot,
                    last_chunk: None,
                    doc: base,
                },
            );
        }
        let Some(loaded) = self.loaded.get_mut(&(node, doc)) else {
            return false;
        };
        // New chunks go to Automerge in one call (one batch apply).
        let fresh: Vec<&layout::Record> = log
            .chunks
            .iter()
            .filter(|chunk| loaded.last_chunk.is_none_or(|last| chunk.seq > last))
            .collect();
        if let Some(newest) = fresh.last().map(|chunk| chunk.seq) {
            let joined: Vec<u8> = fresh
                .iter()
                .flat_map(|chunk| chunk.bytes.iter().copied())
                .collect();
            if loaded.doc.load_incremental(&joined).is_err() {
                return false;
            }
            loaded.last_chunk = Some(newest);
        }
        loaded.generation = generation;
        true
    }
}

/// Whether `store`'s flushed data holds `doc`'s tombstone.
fn durably_deleted(store: &MemStore, doc: DocumentId) -> bool {
    use murmur_store::Storage;
    store
        .durable_view()
        .get(&layout::tombstone_key(doc.as_bytes()))
        .ok()
        .flatten()
        .is_some()
}
