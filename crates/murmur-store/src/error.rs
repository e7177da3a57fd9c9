//! The one error type of the storage layer.

/// What can go wrong reading or writing a store.
///
/// None of these leaves the store half-written: a failed
/// [`apply`](crate::Storage::apply) applied nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backing database failed (I/O error, full disk, ...). The write
    /// that returned it did not happen; the store may still be usable.
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The store was written by a version of Murmur whose layout this one
    /// does not know. Nothing was changed.
    #[error(
        "store schema version {found} is not supported (this build reads version {supported}); \
         use the Murmur release that wrote it, or start from an empty data directory"
    )]
    UnsupportedSchema {
        /// The version found in the store.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// Another process holds the store open (sled locks its directory):
    /// another node on the same data directory, most likely. Nothing was
    /// changed.
    #[error(
        "the store in {dir} is in use by another process (another murmur on the same data \
         directory?): stop it, or give this node a directory of its own"
    )]
    Locked {
        /// The store's directory.
        dir: String,
    },
    /// A value in the store does not have the shape its key promises
    /// (bit rot, or a writer with a bug). Nothing was changed.
    #[error("corrupt record under key {key}: {reason}")]
    Corrupt {
        /// The key, printed as escaped bytes.
        key: String,
        /// What is wrong with the value.
        reason: &'static str,
    },
}

impl StoreError {
    /// A [`StoreError::Corrupt`] for `key`.
    pub fn corrupt(key: &[u8], reason: &'static str) -> Self {
        StoreError::Corrupt {
            key: key.escape_ascii().to_string(),
            reason,
        }
    }
}
