//! The sled-backed store a real node runs on.

use std::path::Path;

use crate::{layout, KeyValue, Storage, StoreError, WriteBatch, WriteOp};

/// A [`Storage`] on sled 0.34, in one directory.
///
/// Batches are applied with sled's atomic batch; [`Storage::flush`] calls
/// sled's `flush`, which syncs to disk. (sled also flushes on its own in the
/// background and when dropped; Murmur never relies on either.)
#[derive(Clone, Debug)]
pub struct SledStore {
    db: sled::Db,
}

fn backend(error: sled::Error) -> StoreError {
    StoreError::Backend(error.to_string())
}

impl SledStore {
    /// Opens (creating if needed) the store in `dir` and checks its schema
    /// version: a new store is stamped with the current one; a store of
    /// another version is refused with [`StoreError::UnsupportedSchema`].
    ///
    /// sled's page cache is bounded at [`SledStore::DEFAULT_CACHE_BYTES`]
    /// (sled's own default, 1 GiB, is more than a node's whole memory
    /// budget); [`SledStore::open_with_cache`] picks another bound.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, Self::DEFAULT_CACHE_BYTES)
    }

    /// The bound on sled's page cache that [`SledStore::open`] sets: 64 MiB.
    pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

    /// Like [`SledStore::open`], with sled's page cache bounded at
    /// `cache_bytes`.
    pub fn open_with_cache(dir: impl AsRef<Path>, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir.as_ref())
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|error| match error {
                // sled's words when another process holds the lock.
                sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock") => {
                    StoreError::Locked {
                        dir: dir.as_ref().display().to_string(),
                    }
                }
                other => backend(other),
            })?;
        let store = Self { db };
        layout::ensure_schema(&store)?;
        Ok(store)
    }

    /// Bytes sled reports on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(backend)
    }
}

impl Storage for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .db
            .get(key)
            .map_err(backend)?
            .map(|value| value.to_vec()))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        self.db
            .scan_prefix(prefix)
            .map(|entry| {
                entry
                    .map(|(key, value)| (key.to_vec(), value.to_vec()))
                    .map_err(backend)
            })
            .collect()
    }

    fn scan_range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        self.db
            .range(start..end)
            .take(limit)
            .map(|entry| {
                entry
                    .map(|(key, value)| (key.to_vec(), value.to_vec()))
                    .map_err(backend)
            })
            .collect()
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut sled_batch = sled::Batch::default();
        for op in batch.into_ops() {
            match op {
                WriteOp::Put { key, value } => sled_batch.insert(key, value),
                WriteOp::Delete { key } => sled_batch.remove(key),
            }
        }
        self.db.apply_batch(sled_batch).map_err(backend)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(backend)
    }
}
