//! A cold document loads on a blocking thread: while its load is stuck in
//! the store, the node answers reads, writes and status for every other
//! document, and what asked for the cold one waits for it and then runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{Automerge, ReadDoc, ROOT};
use murmur::driver;
use murmur::driver::{Command, DriverHandle};
use murmur_core::{AckLevel, Config, DocumentId, NodeId, Replica};
use murmur_store::{KeyValue, MemStore, Storage, StoreError, WriteBatch};

/// A store whose scans of one document's keys wait until the gate opens.
struct GatedStore {
    inner: MemStore,
    doc: DocumentId,
    open: Mutex<bool>,
    opened: Condvar,
    waiting: AtomicBool,
}

impl GatedStore {
    fn open_gate(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl Storage for GatedStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        let id = self.doc.as_bytes();
        if prefix.windows(id.len()).any(|window| window == id) {
            let mut open = self.open.lock().unwrap();
            while !*open {
                self.waiting.store(true, Ordering::SeqCst);
                open = self.opened.wait(open).unwrap();
            }
        }
        self.inner.scan_prefix(prefix)
    }
    fn scan_range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.scan_range(start, end, limit)
    }
    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.inner.apply(batch)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
}

fn value_of_k(doc: &Automerge) -> Option<i64> {
    doc.get(ROOT, "k")
        .ok()
        .flatten()
        .and_then(|(value, _)| value.as_i64())
}

async fn read_k(handle: &DriverHandle, doc: DocumentId) -> Option<i64> {
    handle.read(doc, value_of_k).await.unwrap().unwrap()
}

async fn change(handle: &DriverHandle, doc: DocumentId, value: i64) {
    handle
        .change(doc, AckLevel::Applied, move |tx| tx.put(ROOT, "k", value))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_cold_load_blocks_nothing_but_what_needs_that_document() {
    let config = Config::new(NodeId([9; 32]));
    let now = driver::wall_clock();
    let inner = MemStore::new();
    let mut replica = Replica::open(config.clone(), Box::new(inner.clone()), now).unwrap();
    let [cold, warm] = [0, 1].map(|_| {
        let doc = replica.create_document(now);
        replica
            .handle_local_change(now, doc, |tx| tx.put(ROOT, "k", 1_i64))
            .unwrap();
        doc
    });
    replica.close(now).unwrap();

    let store = Arc::new(GatedStore {
        inner,
        doc: cold,
        open: Mutex::new(false),
        opened: Condvar::new(),
        waiting: AtomicBool::new(false),
    });
    let replica = Replica::open(config, Box::new(store.clone()), now).unwrap();
    let (handle, task) = driver::spawn(replica, None, None, driver::Environment::default());

    let cold_read = {
        let handle = handle.clone();
        tokio::spawn(async move { read_k(&handle, cold).await })
    };
    // Once the load is stuck, the read has reached the driver (it asked
    // for the load): the write, sent only now, comes after it.
    while !store.waiting.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let cold_write = {
        let handle = handle.clone();
        tokio::spawn(async move { change(&handle, cold, 5).await })
    };

    // The cold document's load is stuck in the store. Everything else is
    // answered, the warm document's own cold load included.
    assert_eq!(read_k(&handle, warm).await, Some(1));
    for value in 2..20 {
        change(&handle, warm, value).await;
    }
    assert_eq!(read_k(&handle, warm).await, Some(19));
    let status = handle
        .request(|reply| Command::Status { reply })
        .await
        .unwrap();
    assert_eq!(status.metrics.documents_loaded, 1, "only the warm one");
    assert!(!cold_read.is_finished() && !cold_write.is_finished());

    store.open_gate();
    // What waited runs in the order it came: the read, then the write.
    assert_eq!(cold_read.await.unwrap(), Some(1));
    cold_write.await.unwrap();
    assert_eq!(read_k(&handle, cold).await, Some(5));

    let (reply, stopped) = tokio::sync::oneshot::channel();
    handle.send(Command::Shutdown { reply }).await.unwrap();
    stopped.await.unwrap().unwrap();
    task.await.unwrap();
}
