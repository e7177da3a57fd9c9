//! Murmur's storage: a narrow [`Storage`] trait, two implementations, and
//! the key layout every node uses.
//!
//! The replication engine (`murmur-core`) talks to storage only through
//! [`Storage`]: read a key, scan a prefix, apply an atomic batch, flush.
//! Nothing is durable until [`Storage::flush`] returns; that is the line the
//! engine's `Durable` acknowledgement stands on.
//!
//! * [`SledStore`] (feature `sled`, on by default) keeps the data in sled on
//!   disk. It is what a real node runs.
//! * [`MemStore`] keeps it in memory and can [`MemStore::crash`]: everything
//!   that was not flushed is lost, as a power cut would lose it. The
//!   simulator runs on it.
//!
//! The [`layout`] module says where each piece of a node's state lives and
//! holds the document log: one snapshot plus incremental chunks per
//! document, compacted so that old keys go only after the new snapshot is
//! flushed.
//!
//! ```
//! use murmur_store::{MemStore, Storage, WriteBatch};
//!
//! let store = MemStore::new();
//! let mut batch = WriteBatch::new();
//! batch.put(b"k".to_vec(), b"v".to_vec());
//! store.apply(batch)?;
//! assert_eq!(store.get(b"k")?, Some(b"v".to_vec()));
//! store.crash(); // never flushed: gone
//! assert_eq!(store.get(b"k")?, None);
//! # Ok::<(), murmur_store::StoreError>(())
//! ```

mod error;
pub mod layout;
mod memory;
#[cfg(feature = "sled")]
mod sled_store;

pub use error::StoreError;
pub use memory::{DurableView, MemStore};
#[cfg(feature = "sled")]
pub use sled_store::SledStore;

/// One write in a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove `key` (a no-op when it is absent).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

/// Writes applied together: after a crash either all of them are there or
/// none is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(WriteOp::Put { key, value });
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push(WriteOp::Delete { key });
    }

    /// True when the batch holds no writes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// How many writes the batch holds.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Bytes of keys and values in the batch.
    pub fn payload_bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                WriteOp::Put { key, value } => key.len() + value.len(),
                WriteOp::Delete { key } => key.len(),
            })
            .sum()
    }

    /// The writes, in the order they were added.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    /// Takes the writes out.
    pub fn into_ops(self) -> Vec<WriteOp> {
        self.ops
    }
}

/// A key-value pair returned by a scan.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// The storage the replication engine runs on. Narrow on purpose: every
/// implementation must give the same answers, and the simulator must be able
/// to model every one of them.
///
/// Keys are ordered bytewise; scans return keys in that order.
pub trait Storage: Send + Sync {
    /// The value under `key`, if any (flushed or not).
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every pair whose key starts with `prefix`, in key order. Callers keep
    /// prefixes narrow (one document's keys); it is never used to walk the
    /// whole store on a hot path.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError>;

    /// At most `limit` pairs whose keys are at least `start` and below
    /// `end`, in key order: a page of a long ordered range (the change
    /// feed) without reading the rest of it.
    fn scan_range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError>;

    /// Applies `batch` atomically. Not durable until [`Storage::flush`].
    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError>;

    /// Makes every write applied so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

impl<S: Storage + ?Sized> Storage for std::sync::Arc<S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(key)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        (**self).scan_prefix(prefix)
    }
    fn scan_range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        (**self).scan_range(start, end, limit)
    }
    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        (**self).apply(batch)
    }
    fn flush(&self) -> Result<(), StoreError> {
        (**self).flush()
    }
}

impl<S: Storage + ?Sized> Storage for Box<S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(key)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        (**self).scan_prefix(prefix)
    }
    fn scan_range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        (**self).scan_range(start, end, limit)
    }
    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        (**self).apply(batch)
    }
    fn flush(&self) -> Result<(), StoreError> {
        (**self).flush()
    }
}
