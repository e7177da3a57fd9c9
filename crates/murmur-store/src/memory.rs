//! An in-memory store that can crash.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{layout, KeyValue, Storage, StoreError, WriteBatch, WriteOp};

/// An in-memory [`Storage`] that models what a crash loses.
///
/// Every applied batch is visible to reads at once; a batch becomes durable
/// when [`Storage::flush`] runs. [`MemStore::crash`] throws away every batch
/// applied since the last flush, exactly what a power cut does to a store
/// that had not synced. [`MemStore::crash_keeping`] keeps a prefix of them,
/// as a store with a background flusher (sled has one) may have written some
/// of them out on its own.
///
/// Clones share the same data, so a simulator can keep a handle to a node's
/// store across the node's "crash" and restart.
#[derive(Clone, Debug)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// What survives a crash.
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Batches applied after the last flush, oldest first.
    unflushed: Vec<WriteBatch>,
    /// `durable` with `unflushed` applied: what reads see.
    current: BTreeMap<Vec<u8>, Vec<u8>>,
    flushes: u64,
    /// Bumped whenever `durable` changes (a flush, a crash that keeps
    /// batches): a cache of what the durable state holds can key on it.
    durable_generation: u64,
    /// A planted failure: `Some(n)` lets `n` more applies and flushes
    /// succeed, then every one fails (the process "died" there).
    fail_after: Option<u64>,
    /// Set when the planted failure went off.
    tripped: bool,
}

impl MemStore {
    /// An empty store, stamped with the current schema version.
    pub fn new() -> Self {
        let store = Self::unversioned();
        // An empty in-memory store cannot fail to take its schema stamp.
        if let Err(error) = layout::ensure_schema(&store) {
            unreachable!("a fresh MemStore rejected its schema stamp: {error}");
        }
        store
    }

    /// An empty store with no schema stamp, for tests of what opening an
    /// unknown store does.
    pub fn unversioned() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner::default())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated
        // (every mutation is a whole assignment), so a poisoned lock is safe
        // to keep using.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Loses every write not yet flushed.
    pub fn crash(&self) {
        self.crash_keeping(0);
    }

    /// Loses the writes not yet flushed, except the oldest `keep` batches
    /// (which a background flusher happened to persist). Batches are never
    /// torn: each survives whole or not at all.
    pub fn crash_keeping(&self, keep: usize) {
        let mut inner = self.lock();
        let unflushed = std::mem::take(&mut inner.unflushed);
        for batch in unflushed.into_iter().take(keep) {
            apply_ops(&mut inner.durable, batch.ops());
        }
        inner.current = inner.durable.clone();
        inner.durable_generation += 1;
        inner.fail_after = None;
        inner.tripped = false;
    }

    /// Plants a failure: the next `ops` applies and flushes succeed, and
    /// every one after them fails, as if the process died right there.
    /// Reads keep working. [`MemStore::tripped`] tells when it went off; a
    /// crash ([`MemStore::crash_keeping`]) clears it. The simulator uses it
    /// to crash a node between two storage operations of one engine call.
    pub fn fail_after(&self, ops: u64) {
        let mut inner = self.lock();
        inner.fail_after = Some(ops);
        inner.tripped = false;
    }

    /// Removes a planted failure that has not gone off.
    pub fn disarm(&self) {
        let mut inner = self.lock();
        if !inner.tripped {
            inner.fail_after = None;
        }
    }

    /// True once a failure planted by [`MemStore::fail_after`] went off.
    pub fn tripped(&self) -> bool {
        self.lock().tripped
    }

    /// True while a failure is planted and has not gone off.
    pub fn armed(&self) -> bool {
        let inner = self.lock();
        inner.fail_after.is_some() && !inner.tripped
    }

    /// A read-only view of what survives a crash now: only flushed data.
    /// Writes through it fail.
    pub fn durable_view(&self) -> DurableView<'_> {
        DurableView { store: self }
    }

    /// Changes whenever the durable state does (a flush that wrote
    /// something, a crash that kept batches).
    pub fn durable_generation(&self) -> u64 {
        self.lock().durable_generation
    }

    /// How many batches were applied since the last flush.
    pub fn unflushed_batches(&self) -> usize {
        self.lock().unflushed.len()
    }

    /// How many times [`Storage::flush`] ran.
    pub fn flush_count(&self) -> u64 {
        self.lock().flushes
    }

    /// Bytes of keys and values currently visible.
    pub fn size_bytes(&self) -> usize {
        self.lock()
            .current
            .iter()
            .map(|(key, value)| key.len() + value.len())
            .sum()
    }
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

fn apply_ops(map: &mut BTreeMap<Vec<u8>, Vec<u8>>, ops: &[WriteOp]) {
    for op in ops {
        match op {
            WriteOp::Put { key, value } => {
                map.insert(key.clone(), value.clone());
            }
            WriteOp::Delete { key } => {
                map.remove(key);
            }
        }
    }
}

/// Every key of `map` starting with `prefix`, in order, with its value.
fn scan(map: &BTreeMap<Vec<u8>, Vec<u8>>, prefix: &[u8]) -> Vec<KeyValue> {
    map.range(prefix.to_vec()..)
        .take_while(|(key, _)| key.starts_with(prefix))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

fn range(
    map: &BTreeMap<Vec<u8>, Vec<u8>>,
    start: &[u8],
    end: &[u8],
    limit: usize,
) -> Vec<KeyValue> {
    if start >= end {
        return Vec::new();
    }
    map.range(start.to_vec()..end.to_vec())
        .take(limit)
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// Counts one write operation against a planted failure: `Err` if the
/// store must fail it.
fn spend_operation(inner: &mut Inner) -> Result<(), StoreError> {
    match inner.fail_after {
        _ if inner.tripped => Err(StoreError::Backend(
            "simulated crash: the store is gone".into(),
        )),
        Some(0) => {
            inner.tripped = true;
            Err(StoreError::Backend(
                "simulated crash: the store is gone".into(),
            ))
        }
        Some(left) => {
            inner.fail_after = Some(left - 1);
            Ok(())
        }
        None => Ok(()),
    }
}

/// What a [`MemStore`] would hold after a crash now: its flushed data only
/// ([`MemStore::durable_view`]). Read-only.
#[derive(Debug, Clone, Copy)]
pub struct DurableView<'a> {
    store: &'a MemStore,
}

impl Storage for DurableView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.store.lock().durable.get(key).cloned())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        Ok(scan(&self.store.lock().durable, prefix))
    }

    fn scan_range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        Ok(range(&self.store.lock().durable, start, end, limit))
    }

    fn apply(&self, _batch: WriteBatch) -> Result<(), StoreError> {
        Err(StoreError::Backend("the durable view is read-only".into()))
    }

    fn flush(&self) -> Result<(), StoreError> {
        Err(StoreError::Backend("the durable view is read-only".into()))
    }
}

impl Storage for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().current.get(key).cloned())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        Ok(scan(&self.lock().current, prefix))
    }

    fn scan_range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        Ok(range(&self.lock().current, start, end, limit))
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut inner = self.lock();
        spend_operation(&mut inner)?;
        apply_ops(&mut inner.current, batch.ops());
        inner.unflushed.push(batch);
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut inner = self.lock();
        spend_operation(&mut inner)?;
        let unflushed = std::mem::take(&mut inner.unflushed);
        if !unflushed.is_empty() {
            inner.durable_generation += 1;
        }
        for batch in &unflushed {
            apply_ops(&mut inner.durable, batch.ops());
        }
        inner.flushes += 1;
        Ok(())
    }
}
