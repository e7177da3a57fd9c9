//! The engine does not wait for the disk: while a slow flush is being
//! written on a blocking thread, `Applied` writes and status requests are
//! answered, and the writes that arrive gather for the next flush.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::ROOT;
use murmur::driver;
use murmur::driver::Command;
use murmur_core::{AckLevel, Config, NodeId, Replica};
use murmur_store::{KeyValue, MemStore, Storage, StoreError, WriteBatch};

/// A store whose flush takes `delay` and says when it is running.
struct SlowStore {
    inner: MemStore,
    delay: Duration,
    flushing: AtomicBool,
    flushes: AtomicU64,
}

impl Storage for SlowStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
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
        self.flushing.store(true, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.flushing.store(false, Ordering::SeqCst);
        self.inner.flush()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_writes_and_status_are_answered_while_a_flush_is_written() {
    let store = Arc::new(SlowStore {
        inner: MemStore::new(),
        delay: Duration::from_millis(400),
        flushing: AtomicBool::new(false),
        flushes: AtomicU64::new(0),
    });
    let now = driver::wall_clock();
    let replica =
        Replica::open(Config::new(NodeId([7; 32])), Box::new(store.clone()), now).unwrap();
    let (handle, task) = driver::spawn(replica, None, None, driver::Environment::default());
    let doc = handle
        .request(|reply| Command::CreateDocument { id: None, reply })
        .await
        .unwrap()
        .unwrap();
    // The new document's first change is flushed on its own: wait for it,
    // so that nothing is in flight when the test begins.
    handle
        .change(doc, AckLevel::Durable, |tx| tx.put(ROOT, "setup", 0))
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // A durable write starts a flush, which takes 400 ms.
    let durable = {
        let handle = handle.clone();
        tokio::spawn(async move {
            handle
                .change(doc, AckLevel::Durable, |tx| tx.put(ROOT, "first", 0))
                .await
        })
    };
    while !store.flushing.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let flushes_before = store.flushes.load(Ordering::SeqCst);
    // While it is being written, the engine keeps answering.
    for i in 0..20 {
        handle
            .change(doc, AckLevel::Applied, move |tx| {
                tx.put(ROOT, format!("k{i}"), i)
            })
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    let status = handle
        .request(|reply| Command::Status { reply })
        .await
        .unwrap();
    assert!(
        store.flushing.load(Ordering::SeqCst)
            && store.flushes.load(Ordering::SeqCst) == flushes_before,
        "the Applied writes and the status waited for the flush"
    );
    // The 20 writes wait for the next flush; the first one is in flight.
    assert_eq!(status.writes_awaiting_flush, 21);
    durable.await.unwrap().unwrap().unwrap().unwrap();

    let (reply, stopped) = tokio::sync::oneshot::channel();
    handle.send(Command::Shutdown { reply }).await.unwrap();
    stopped.await.unwrap().unwrap();
    task.await.unwrap();
    // Everything ended up flushed, in few flushes: the 20 writes shared one.
    let total = store.flushes.load(Ordering::SeqCst);
    assert!(total <= flushes_before + 3, "{total} flushes");
}
