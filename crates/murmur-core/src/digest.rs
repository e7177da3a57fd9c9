//! The document-set reconciliation digest: a fixed-shape hash trie over the
//! document-id space, kept in the store and updated in place.
//!
//! Every document has a *leaf value*: the first 8 bytes of SHA-256 over its
//! id and its heads (sorted). The trie has fanout 16 (one nibble of the id
//! per level) and levels 0 to [`LEAF_LEVEL`]; a node holds the xor of the
//! leaf values below it and how many documents that is. A level-4 node is a
//! *bucket*: the documents sharing the first two bytes of their id, whose
//! leaves are one prefix scan of the store.
//!
//! Xor is its own inverse, so when a document's heads move its new leaf is
//! xored into the five nodes on its path together with its old one: O(depth)
//! per change, never a scan. The update goes into the same write batch as
//! the document's chunk, so the digest always describes what is durable.
//!
//! Two replicas whose nodes match hold the same documents at the same heads
//! (up to a 64-bit hash collision). Reconciliation walks down from the root
//! only where nodes differ, so d differing documents among N cost
//! O(d log N) bytes and about five round trips; an equal root costs one
//! message.

use std::collections::BTreeMap;

use automerge::ChangeHash;
use murmur_store::layout::{self, DocKey};
use murmur_store::{Storage, StoreError, WriteBatch};
use murmur_wire::{DigestNode, DocumentId};
use sha2::{Digest as _, Sha256};

/// The deepest level: its nodes are buckets.
pub(crate) const LEAF_LEVEL: u8 = murmur_wire::DIGEST_LEAF_LEVEL;

// The store and the wire must agree on the trie's shape.
const _: () = assert!(layout::DIGEST_LEAF_LEVEL == murmur_wire::DIGEST_LEAF_LEVEL);

/// The leaf value of document `doc` at `heads`. Never zero in practice, so
/// a document with no changes still counts.
/// The digest leaf of a deleted document: a value no heads give (their
/// hashes are never all ones), the same on every node, so reconciliation
/// finds a node that still holds content and tells it.
pub(crate) fn tombstone_leaf(doc: &DocumentId) -> u64 {
    leaf_value(doc, &[ChangeHash([0xff; 32])])
}

pub(crate) fn leaf_value(doc: &DocumentId, heads: &[ChangeHash]) -> u64 {
    let mut sorted: Vec<&ChangeHash> = heads.iter().collect();
    sorted.sort();
    let mut hasher = Sha256::new();
    hasher.update(doc.as_bytes());
    for head in sorted {
        hasher.update(head.0);
    }
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(first)
}

/// The prefix of the node at `level` on `doc`'s path.
pub(crate) fn prefix_at(doc: &DocKey, level: u8) -> u32 {
    let top = (u32::from(doc[0]) << 8) | u32::from(doc[1]);
    top >> (4 * u32::from(LEAF_LEVEL - level.min(LEAF_LEVEL)))
}

/// A node's value: xor of the leaves below and how many there are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct NodeValue {
    pub(crate) xor: u64,
    pub(crate) count: u32,
}

impl NodeValue {
    pub(crate) fn at(self, level: u8, prefix: u32) -> DigestNode {
        DigestNode {
            level,
            prefix,
            xor: self.xor,
            count: self.count,
        }
    }
}

/// One document's move in the digest, staged for a flush.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeafUpdate {
    pub(crate) doc: DocumentId,
    /// The leaf as stored now; `None` if the document is new to the digest.
    pub(crate) old: Option<u64>,
    pub(crate) new: u64,
}

/// Node values staged in a write batch, to take once it is durable.
pub(crate) type Staged = BTreeMap<(u8, u32), NodeValue>;

/// The trie nodes this replica has looked at, as stored (durable state).
/// Loaded lazily, one `get` per node on first use; at most 69,905 nodes,
/// about 2 MiB at worst.
#[derive(Default)]
pub(crate) struct Digest {
    nodes: BTreeMap<(u8, u32), NodeValue>,
}

impl Digest {
    /// How many documents the store holds, if the root is in memory (it is
    /// from the first use on, and after every flush).
    pub(crate) fn root_count(&self) -> Option<u32> {
        self.nodes.get(&(0, 0)).map(|root| root.count)
    }

    /// The node at `level` / `prefix`.
    pub(crate) fn node(
        &mut self,
        store: &dyn Storage,
        level: u8,
        prefix: u32,
    ) -> Result<NodeValue, StoreError> {
        if let Some(value) = self.nodes.get(&(level, prefix)) {
            return Ok(*value);
        }
        let (xor, count) = layout::load_trie_node(store, level, prefix)?;
        let value = NodeValue { xor, count };
        self.nodes.insert((level, prefix), value);
        Ok(value)
    }

    /// The 16 children of a node above the bucket level.
    pub(crate) fn children(
        &mut self,
        store: &dyn Storage,
        level: u8,
        prefix: u32,
    ) -> Result<Vec<DigestNode>, StoreError> {
        debug_assert!(level < LEAF_LEVEL);
        (0..16)
            .map(|child| {
                let child_prefix = prefix * 16 + child;
                self.node(store, level + 1, child_prefix)
                    .map(|value| value.at(level + 1, child_prefix))
            })
            .collect()
    }

    /// Adds `updates` (leaf keys and the nodes on their paths) to `batch`
    /// and returns the new node values, to [`Digest::commit`] once the batch
    /// is durable. Nothing in memory changes.
    pub(crate) fn stage(
        &mut self,
        store: &dyn Storage,
        updates: &[LeafUpdate],
        batch: &mut WriteBatch,
    ) -> Result<Staged, StoreError> {
        let mut staged = Staged::new();
        for update in updates {
            let key = update.doc.as_bytes();
            batch.put(layout::leaf_key(key), layout::encode_leaf(update.new));
            let delta = update.old.unwrap_or(0) ^ update.new;
            let added = u32::from(update.old.is_none());
            if delta == 0 && added == 0 {
                continue;
            }
            for level in 0..=LEAF_LEVEL {
                let prefix = prefix_at(key, level);
                let current = match staged.get(&(level, prefix)) {
                    Some(value) => *value,
                    None => self.node(store, level, prefix)?,
                };
                staged.insert(
                    (level, prefix),
                    NodeValue {
                        xor: current.xor ^ delta,
                        count: current.count.wrapping_add(added),
                    },
                );
            }
        }
        for ((level, prefix), value) in &staged {
            batch.put(
                layout::trie_key(*level, *prefix),
                layout::encode_trie_node(value.xor, value.count),
            );
        }
        Ok(staged)
    }

    /// Takes the values of a batch that is now durable.
    pub(crate) fn commit(&mut self, staged: Staged) {
        self.nodes.extend(staged);
    }

    /// Forgets every cached node (after a failed flush, when the store may
    /// or may not hold the staged values): they reload from the store.
    pub(crate) fn invalidate(&mut self) {
        self.nodes.clear();
    }
}

/// The node-metadata key marking that the store's digest covers every
/// document (written by [`rebuild_if_missing`]).
fn marker_key() -> Vec<u8> {
    layout::node_key("digest")
}

/// Stores written before the digest existed hold documents it does not
/// cover: builds it once for them, from every document (a scan, but only
/// the first time such a store opens), and marks the store so it never
/// happens again. On a store that has the mark this is one `get`.
pub(crate) fn rebuild_if_missing(store: &dyn Storage) -> Result<(), StoreError> {
    if store.get(&marker_key())?.is_some() {
        return Ok(());
    }
    let mut nodes: BTreeMap<(u8, u32), NodeValue> = BTreeMap::new();
    let mut batch = WriteBatch::new();
    let mut documents = 0usize;
    for key in layout::list_documents(store)? {
        let doc = DocumentId::from_bytes(key);
        let Ok(heads) = stored_heads(store, &key) else {
            // It will be quarantined when it is first used; its digest
            // entry comes with its first successful flush.
            tracing::warn!(doc = %doc, "document does not load; left out of the digest");
            continue;
        };
        let leaf = leaf_value(&doc, &heads);
        batch.put(layout::leaf_key(&key), layout::encode_leaf(leaf));
        for level in 0..=LEAF_LEVEL {
            let node = nodes.entry((level, prefix_at(&key, level))).or_default();
            node.xor ^= leaf;
            node.count += 1;
        }
        documents += 1;
    }
    for ((level, prefix), value) in &nodes {
        batch.put(
            layout::trie_key(*level, *prefix),
            layout::encode_trie_node(value.xor, value.count),
        );
    }
    batch.put(marker_key(), Vec::new());
    store.apply(batch)?;
    store.flush()?;
    if documents > 0 {
        tracing::info!(
            documents,
            "built the reconciliation digest of an older store"
        );
    }
    Ok(())
}

/// The heads of the document stored under `key`, from its log.
fn stored_heads(store: &dyn Storage, key: &DocKey) -> Result<Vec<ChangeHash>, String> {
    let log = layout::load_document(store, key).map_err(|e| e.to_string())?;
    let automerge = crate::document::assemble(&log).map_err(|e| e.to_string())?;
    Ok(automerge.get_heads())
}

/// Recomputes the whole digest of `store` from the documents it holds and
/// compares it with the stored one. O(N): for tests and offline checks only.
pub(crate) fn verify(store: &dyn Storage) -> Result<(), String> {
    let mut expected: BTreeMap<(u8, u32), NodeValue> = BTreeMap::new();
    for key in layout::list_documents(store).map_err(|e| e.to_string())? {
        let doc = DocumentId::from_bytes(key);
        let heads = stored_heads(store, &key).map_err(|e| format!("document {doc}: {e}"))?;
        let stored = layout::load_leaf(store, &key).map_err(|e| e.to_string())?;
        if heads.is_empty() {
            // Holding no change, it is not reconciled: no leaf.
            if let Some(leaf) = stored {
                return Err(format!(
                    "document {doc} holds no change, yet has leaf {leaf}"
                ));
            }
            continue;
        }
        let leaf = leaf_value(&doc, &heads);
        if stored != Some(leaf) {
            return Err(format!(
                "document {doc}: stored leaf {stored:?}, recomputed {leaf}"
            ));
        }
        for level in 0..=LEAF_LEVEL {
            let node = expected.entry((level, prefix_at(&key, level))).or_default();
            node.xor ^= leaf;
            node.count += 1;
        }
    }
    for key in layout::list_tombstones(store).map_err(|e| e.to_string())? {
        let doc = DocumentId::from_bytes(key);
        if layout::document_exists(store, &key).map_err(|e| e.to_string())? {
            return Err(format!("document {doc} has a tombstone and content"));
        }
        let leaf = tombstone_leaf(&doc);
        let stored = layout::load_leaf(store, &key).map_err(|e| e.to_string())?;
        if stored != Some(leaf) {
            return Err(format!(
                "deleted document {doc}: stored leaf {stored:?}, tombstone leaf {leaf}"
            ));
        }
        for level in 0..=LEAF_LEVEL {
            let node = expected.entry((level, prefix_at(&key, level))).or_default();
            node.xor ^= leaf;
            node.count += 1;
        }
    }
    if expected.is_empty() {
        let root = layout::load_trie_node(store, 0, 0).map_err(|e| e.to_string())?;
        if root != (0, 0) {
            return Err(format!("no documents, but the stored root is {root:?}"));
        }
    }
    for ((level, prefix), value) in expected {
        let stored = layout::load_trie_node(store, level, prefix).map_err(|e| e.to_string())?;
        if stored != (value.xor, value.count) {
            return Err(format!(
                "node {level}/{prefix}: stored {stored:?}, recomputed {value:?}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use murmur_store::MemStore;

    #[test]
    fn prefixes_follow_the_nibbles_of_the_id() {
        let id = [0xab, 0xcd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let prefixes: Vec<u32> = (0..=LEAF_LEVEL).map(|l| prefix_at(&id, l)).collect();
        assert_eq!(prefixes, vec![0, 0xa, 0xab, 0xabc, 0xabcd]);
        assert_eq!(
            u32::from(murmur_wire::digest_bucket(&DocumentId::from_bytes(id))),
            prefixes[4]
        );
    }

    #[test]
    fn leaf_values_depend_on_id_and_heads_not_their_order() {
        let doc = DocumentId::from_bytes([1; 16]);
        let (a, b) = (ChangeHash([1; 32]), ChangeHash([2; 32]));
        assert_ne!(leaf_value(&doc, &[]), 0);
        assert_ne!(
            leaf_value(&doc, &[]),
            leaf_value(&DocumentId::from_bytes([2; 16]), &[])
        );
        assert_eq!(leaf_value(&doc, &[a, b]), leaf_value(&doc, &[b, a]));
        assert_ne!(leaf_value(&doc, &[a]), leaf_value(&doc, &[a, b]));
    }

    #[test]
    fn staged_updates_reach_every_level_and_undo_themselves() {
        let store = MemStore::new();
        let mut digest = Digest::default();
        let doc = DocumentId::from_bytes([0x12; 16]);
        let mut batch = WriteBatch::new();
        let add = LeafUpdate {
            doc,
            old: None,
            new: 7,
        };
        let staged = digest.stage(&store, &[add], &mut batch).unwrap();
        assert_eq!(staged.len(), 5);
        store.apply(batch).unwrap();
        digest.commit(staged);
        for level in 0..=LEAF_LEVEL {
            let value = digest
                .node(&store, level, prefix_at(doc.as_bytes(), level))
                .unwrap();
            assert_eq!(value, NodeValue { xor: 7, count: 1 });
        }
        let mut batch = WriteBatch::new();
        let change = LeafUpdate {
            doc,
            old: Some(7),
            new: 9,
        };
        let staged = digest.stage(&store, &[change], &mut batch).unwrap();
        store.apply(batch).unwrap();
        digest.commit(staged);
        assert_eq!(
            digest.node(&store, 0, 0).unwrap(),
            NodeValue { xor: 9, count: 1 }
        );
        let mut fresh = Digest::default();
        assert_eq!(
            fresh.node(&store, 0, 0).unwrap(),
            NodeValue { xor: 9, count: 1 }
        );
    }
}
