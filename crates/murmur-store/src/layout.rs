//! Where everything lives in a store, and the document log.
//!
//! Keys are prefix-ordered so that one document's data is one range:
//!
//! ```text
//! \0schema                     u32 big-endian: the layout version
//! \0node/<name>                node metadata (identity, ...)
//! i<doc:16>                    "this document exists" (empty value)
//! d<doc:16>s<seq:u64 BE>       the document's snapshot, covering chunks <= seq
//! d<doc:16>c<seq:u64 BE>       an incremental chunk of changes
//! d<doc:16>p<peer:32>          persisted Automerge sync state with a peer
//! h<doc:16>                    the document's digest leaf: u64 big-endian
//! t<level:u8><prefix:u32 BE>   a digest trie node: xor u64 BE ++ count u32 BE
//! f<seq:u64 BE>                a change-feed entry (encoded by murmur-core)
//! x<doc:16>                    a deleted document's tombstone: the deletion
//!                              time, u64 big-endian milliseconds
//! \0node/feed_next             u64 big-endian: the next feed sequence number
//! ```
//!
//! The change feed is one key per entry, in sequence order, written in the
//! same batch as the changes it reports: a crash keeps both or neither.
//! Its numbers are dense from the oldest entry kept to `feed_next - 1`;
//! retention deletes from the oldest end.
//!
//! The reconciliation digest is a fixed-shape trie over the document-id
//! space: fanout 16 (one nibble of the id per level), levels 0 to
//! [`DIGEST_LEAF_LEVEL`]. A node at level `l` covers the ids whose first `l`
//! nibbles are its `prefix`; its value is the xor of the leaf values of the
//! documents below it and their count. Level-4 nodes are *buckets*: the ids
//! sharing their first two bytes, whose `h` keys are one prefix scan
//! ([`scan_bucket`]). Because xor is its own inverse, a document's change
//! updates the five nodes on its path in place; the trie is never rebuilt.
//! A node or leaf absent from the store is zero (no documents).
//!
//! A document is one snapshot plus the incremental chunks written after it.
//! [`compact`] folds them into a new snapshot and removes the old keys only
//! after the new snapshot is flushed, so a crash at any point leaves a
//! loadable document. Loading takes the newest snapshot and every chunk
//! newer than it; leftovers of an interrupted compaction are reported as
//! [`DocumentLog::stale_keys`] for the next compaction to remove.

use crate::{Storage, StoreError, WriteBatch};

/// The layout version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 2;

/// The first feed sequence number of a store that had documents before it
/// had a feed (schema 1): everything before it is "trimmed", so a consumer
/// starting from the beginning is told to start from a snapshot instead of
/// silently missing those documents.
pub const FEED_MIGRATED_START: u64 = 2;

/// The key of the schema version.
pub const SCHEMA_KEY: &[u8] = b"\0schema";

const NODE_PREFIX: &[u8] = b"\0node/";
const INDEX_PREFIX: u8 = b'i';
const DOC_PREFIX: u8 = b'd';
const SNAPSHOT_TAG: u8 = b's';
const CHUNK_TAG: u8 = b'c';
const SYNC_STATE_TAG: u8 = b'p';
const LEAF_PREFIX: u8 = b'h';
const TRIE_PREFIX: u8 = b't';
const FEED_PREFIX: u8 = b'f';
const TOMBSTONE_PREFIX: u8 = b'x';
const FEED_NEXT: &str = "feed_next";

/// The deepest level of the digest trie: its nodes are buckets of the
/// documents sharing the first two bytes of their id.
pub const DIGEST_LEAF_LEVEL: u8 = 4;

/// A document id as the store sees it.
pub type DocKey = [u8; 16];
/// A peer id as the store sees it.
pub type PeerKey = [u8; 32];

/// Checks the store's schema version, stamping (and flushing) an unstamped
/// store with [`SCHEMA_VERSION`].
pub fn ensure_schema(store: &dyn Storage) -> Result<(), StoreError> {
    match store.get(SCHEMA_KEY)? {
        Some(value) => {
            let bytes: [u8; 4] = value
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::corrupt(SCHEMA_KEY, "schema version is not 4 bytes"))?;
            let found = u32::from_be_bytes(bytes);
            if found == SCHEMA_VERSION {
                Ok(())
            } else if found == 1 {
                // Schema 1 had no change feed: the feed starts after a
                // "trimmed" first number (see [`FEED_MIGRATED_START`]).
                let mut batch = WriteBatch::new();
                batch.put(SCHEMA_KEY.to_vec(), SCHEMA_VERSION.to_be_bytes().to_vec());
                put_feed_next(&mut batch, FEED_MIGRATED_START);
                store.apply(batch)?;
                store.flush()
            } else {
                Err(StoreError::UnsupportedSchema {
                    found,
                    supported: SCHEMA_VERSION,
                })
            }
        }
        None => {
            let mut batch = WriteBatch::new();
            batch.put(SCHEMA_KEY.to_vec(), SCHEMA_VERSION.to_be_bytes().to_vec());
            store.apply(batch)?;
            store.flush()
        }
    }
}

/// The key of `doc`'s tombstone.
pub fn tombstone_key(doc: &DocKey) -> Vec<u8> {
    let mut key = vec![TOMBSTONE_PREFIX];
    key.extend_from_slice(doc);
    key
}

/// Every deleted document (each tombstone key).
pub fn list_tombstones(store: &dyn Storage) -> Result<Vec<DocKey>, StoreError> {
    store
        .scan_prefix(&[TOMBSTONE_PREFIX])?
        .into_iter()
        .map(|(key, _)| {
            key[1..]
                .try_into()
                .map_err(|_| StoreError::corrupt(&key, "tombstone key has no 16-byte document id"))
        })
        .collect()
}

/// Adds the deletion of every key of `doc`'s content (index, snapshot,
/// chunks, sync states) to `batch`. Reads the store: run it where the
/// flush runs, never in an engine turn.
pub fn delete_content(
    store: &dyn Storage,
    doc: &DocKey,
    batch: &mut WriteBatch,
) -> Result<(), StoreError> {
    batch.delete(index_key(doc));
    for (key, _) in store.scan_prefix(&doc_prefix(doc))? {
        batch.delete(key);
    }
    Ok(())
}

/// The key of feed entry `seq`.
pub fn feed_key(seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(FEED_PREFIX);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The sequence number of a feed key.
pub fn feed_seq(key: &[u8]) -> Result<u64, StoreError> {
    match key {
        [FEED_PREFIX, rest @ ..] => <[u8; 8]>::try_from(rest)
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::corrupt(key, "feed key has no 8-byte sequence number")),
        _ => Err(StoreError::corrupt(key, "not a feed key")),
    }
}

/// The feed's next sequence number as stored (1 for a store that never
/// wrote an entry).
pub fn load_feed_next(store: &dyn Storage) -> Result<u64, StoreError> {
    let key = node_key(FEED_NEXT);
    match store.get(&key)? {
        None => Ok(1),
        Some(value) => <[u8; 8]>::try_from(value.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::corrupt(&key, "feed_next is not 8 bytes")),
    }
}

/// Records the feed's next sequence number in `batch`.
pub fn put_feed_next(batch: &mut WriteBatch, next: u64) {
    batch.put(node_key(FEED_NEXT), next.to_be_bytes().to_vec());
}

/// At most `limit` feed entries with sequence numbers in `from..end`, in
/// order, as (sequence number, encoded entry).
pub fn scan_feed(
    store: &dyn Storage,
    from: u64,
    end: u64,
    limit: usize,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    store
        .scan_range(&feed_key(from), &feed_key(end), limit)?
        .into_iter()
        .map(|(key, value)| Ok((feed_seq(&key)?, value)))
        .collect()
}

/// The key of a piece of node metadata.
pub fn node_key(name: &str) -> Vec<u8> {
    [NODE_PREFIX, name.as_bytes()].concat()
}

fn doc_prefix(doc: &DocKey) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + 16 + 1 + 32);
    key.push(DOC_PREFIX);
    key.extend_from_slice(doc);
    key
}

fn tagged(doc: &DocKey, tag: u8) -> Vec<u8> {
    let mut key = doc_prefix(doc);
    key.push(tag);
    key
}

fn sequenced(doc: &DocKey, tag: u8, seq: u64) -> Vec<u8> {
    let mut key = tagged(doc, tag);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The key marking that `doc` exists.
pub fn index_key(doc: &DocKey) -> Vec<u8> {
    let mut key = vec![INDEX_PREFIX];
    key.extend_from_slice(doc);
    key
}

/// The key of the sync state of `doc` with `peer`.
pub fn sync_state_key(doc: &DocKey, peer: &PeerKey) -> Vec<u8> {
    let mut key = tagged(doc, SYNC_STATE_TAG);
    key.extend_from_slice(peer);
    key
}

/// Every sync state stored for `doc`, by peer.
pub fn load_sync_states(
    store: &dyn Storage,
    doc: &DocKey,
) -> Result<Vec<(PeerKey, Vec<u8>)>, StoreError> {
    let prefix = tagged(doc, SYNC_STATE_TAG);
    store
        .scan_prefix(&prefix)?
        .into_iter()
        .map(|(key, value)| {
            let peer: PeerKey = key[prefix.len()..]
                .try_into()
                .map_err(|_| StoreError::corrupt(&key, "sync state key has no 32-byte peer id"))?;
            Ok((peer, value))
        })
        .collect()
}

/// Every document the store holds. Walks the document index: one key per
/// document, no document data.
pub fn list_documents(store: &dyn Storage) -> Result<Vec<DocKey>, StoreError> {
    store
        .scan_prefix(&[INDEX_PREFIX])?
        .into_iter()
        .map(|(key, _)| {
            key[1..]
                .try_into()
                .map_err(|_| StoreError::corrupt(&key, "index key has no 16-byte document id"))
        })
        .collect()
}

/// The key of `doc`'s digest leaf.
pub fn leaf_key(doc: &DocKey) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    key.push(LEAF_PREFIX);
    key.extend_from_slice(doc);
    key
}

/// Encodes a digest leaf value.
pub fn encode_leaf(leaf: u64) -> Vec<u8> {
    leaf.to_be_bytes().to_vec()
}

/// Decodes a digest leaf value read under `key`.
pub fn decode_leaf(key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(value)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::corrupt(key, "digest leaf is not 8 bytes"))
}

/// `doc`'s digest leaf, if it has one.
pub fn load_leaf(store: &dyn Storage, doc: &DocKey) -> Result<Option<u64>, StoreError> {
    let key = leaf_key(doc);
    store
        .get(&key)?
        .map(|value| decode_leaf(&key, &value))
        .transpose()
}

/// The key of the digest trie node at `level` with `prefix`.
pub fn trie_key(level: u8, prefix: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(6);
    key.push(TRIE_PREFIX);
    key.push(level);
    key.extend_from_slice(&prefix.to_be_bytes());
    key
}

/// Encodes a digest trie node value: xor, then count.
pub fn encode_trie_node(xor: u64, count: u32) -> Vec<u8> {
    let mut value = Vec::with_capacity(12);
    value.extend_from_slice(&xor.to_be_bytes());
    value.extend_from_slice(&count.to_be_bytes());
    value
}

/// Decodes a digest trie node value read under `key` into (xor, count).
pub fn decode_trie_node(key: &[u8], value: &[u8]) -> Result<(u64, u32), StoreError> {
    let bytes: [u8; 12] = value
        .try_into()
        .map_err(|_| StoreError::corrupt(key, "digest trie node is not 12 bytes"))?;
    let mut xor = [0u8; 8];
    let mut count = [0u8; 4];
    xor.copy_from_slice(&bytes[..8]);
    count.copy_from_slice(&bytes[8..]);
    Ok((u64::from_be_bytes(xor), u32::from_be_bytes(count)))
}

/// The digest trie node at `level` with `prefix` as (xor, count); a node
/// never written is (0, 0).
pub fn load_trie_node(
    store: &dyn Storage,
    level: u8,
    prefix: u32,
) -> Result<(u64, u32), StoreError> {
    let key = trie_key(level, prefix);
    match store.get(&key)? {
        Some(value) => decode_trie_node(&key, &value),
        None => Ok((0, 0)),
    }
}

/// Every digest leaf of the documents in `bucket` (the first two bytes of
/// their ids), in id order: one prefix scan.
pub fn scan_bucket(store: &dyn Storage, bucket: [u8; 2]) -> Result<Vec<(DocKey, u64)>, StoreError> {
    store
        .scan_prefix(&[LEAF_PREFIX, bucket[0], bucket[1]])?
        .into_iter()
        .map(|(key, value)| {
            let doc: DocKey = key[1..].try_into().map_err(|_| {
                StoreError::corrupt(&key, "digest leaf key has no 16-byte document id")
            })?;
            Ok((doc, decode_leaf(&key, &value)?))
        })
        .collect()
}

/// True if `doc` exists (its index key is stored).
pub fn document_exists(store: &dyn Storage, doc: &DocKey) -> Result<bool, StoreError> {
    Ok(store.get(&index_key(doc))?.is_some())
}

/// One record of a document log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number within the document.
    pub seq: u64,
    /// The Automerge bytes (`save()` for a snapshot, `save_incremental()`
    /// or raw changes for a chunk).
    pub bytes: Vec<u8>,
}

/// A document as stored: the newest snapshot and the chunks after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocumentLog {
    /// The newest snapshot, if one was ever written.
    pub snapshot: Option<Record>,
    /// Chunks newer than the snapshot, oldest first.
    pub chunks: Vec<Record>,
    /// Keys an interrupted compaction left behind (older snapshots, chunks
    /// the snapshot covers). Their data is already in the snapshot.
    pub stale_keys: Vec<Vec<u8>>,
}

impl DocumentLog {
    /// True when the document has no data at all.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.chunks.is_empty()
    }

    /// The sequence number the next chunk must take.
    pub fn next_seq(&self) -> u64 {
        let last_chunk = self.chunks.last().map(|record| record.seq);
        let snapshot = self.snapshot.as_ref().map(|record| record.seq);
        last_chunk.max(snapshot).map_or(0, |seq| seq + 1)
    }

    /// Bytes held in chunks.
    pub fn chunk_bytes(&self) -> usize {
        self.chunks.iter().map(|record| record.bytes.len()).sum()
    }

    /// Bytes held in the snapshot.
    pub fn snapshot_bytes(&self) -> usize {
        self.snapshot
            .as_ref()
            .map_or(0, |record| record.bytes.len())
    }
}

fn parse_seq(key: &[u8], prefix_len: usize) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key
        .get(prefix_len..)
        .and_then(|rest| rest.try_into().ok())
        .ok_or_else(|| StoreError::corrupt(key, "log key has no 8-byte sequence number"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Reads `doc`'s log.
pub fn load_document(store: &dyn Storage, doc: &DocKey) -> Result<DocumentLog, StoreError> {
    let snapshot_prefix = tagged(doc, SNAPSHOT_TAG);
    let chunk_prefix = tagged(doc, CHUNK_TAG);
    let mut log = DocumentLog::default();
    for (key, bytes) in store.scan_prefix(&snapshot_prefix)? {
        let seq = parse_seq(&key, snapshot_prefix.len())?;
        // Keys come in ascending order: each newer snapshot supersedes the last.
        if let Some(older) = log.snapshot.replace(Record { seq, bytes }) {
            log.stale_keys.push(sequenced(doc, SNAPSHOT_TAG, older.seq));
        }
    }
    let covered = log.snapshot.as_ref().map(|record| record.seq);
    for (key, bytes) in store.scan_prefix(&chunk_prefix)? {
        let seq = parse_seq(&key, chunk_prefix.len())?;
        if covered.is_some_and(|covered| seq <= covered) {
            log.stale_keys.push(key);
        } else {
            log.chunks.push(Record { seq, bytes });
        }
    }
    Ok(log)
}

/// Adds a chunk of `doc` to `batch` (and marks the document as existing).
pub fn put_chunk(batch: &mut WriteBatch, doc: &DocKey, seq: u64, bytes: Vec<u8>) {
    batch.put(index_key(doc), Vec::new());
    batch.put(sequenced(doc, CHUNK_TAG, seq), bytes);
}

/// Replaces `doc`'s log with `snapshot`, which must contain every change of
/// every record up to and including sequence number `covers`.
///
/// The snapshot is written and flushed first; only then are the older
/// snapshot and the covered chunks deleted. A crash before the flush leaves
/// the old log; a crash after it leaves the new snapshot (plus stale keys
/// that loading skips). Either way nothing is lost.
pub fn compact(
    store: &dyn Storage,
    doc: &DocKey,
    covers: u64,
    snapshot: Vec<u8>,
) -> Result<(), StoreError> {
    store.apply(snapshot_batch(doc, covers, snapshot))?;
    store.flush()?;
    store.apply(covered_by(store, doc, covers)?)
}

/// The batch that writes `doc`'s new snapshot (and marks it existing).
fn snapshot_batch(doc: &DocKey, covers: u64, snapshot: Vec<u8>) -> WriteBatch {
    let mut write = WriteBatch::new();
    put_snapshot(&mut write, doc, covers, snapshot);
    write
}

/// Adds a snapshot of `doc` to `batch` that holds every change of every
/// record up to and including sequence number `covers` (and marks the
/// document as existing). What it replaces goes with [`covered_by`], once
/// it is flushed.
pub fn put_snapshot(batch: &mut WriteBatch, doc: &DocKey, covers: u64, snapshot: Vec<u8>) {
    batch.put(index_key(doc), Vec::new());
    batch.put(sequenced(doc, SNAPSHOT_TAG, covers), snapshot);
}

/// The batch that deletes what a snapshot at `covers` replaces: older
/// snapshots and the chunks up to and including `covers`. Apply it only once
/// the snapshot is flushed.
pub fn covered_by(
    store: &dyn Storage,
    doc: &DocKey,
    covers: u64,
) -> Result<WriteBatch, StoreError> {
    let mut remove = WriteBatch::new();
    let snapshot_prefix = tagged(doc, SNAPSHOT_TAG);
    for (key, _) in store.scan_prefix(&snapshot_prefix)? {
        if parse_seq(&key, snapshot_prefix.len())? < covers {
            remove.delete(key);
        }
    }
    let chunk_prefix = tagged(doc, CHUNK_TAG);
    for (key, _) in store.scan_prefix(&chunk_prefix)? {
        if parse_seq(&key, chunk_prefix.len())? <= covers {
            remove.delete(key);
        }
    }
    Ok(remove)
}
