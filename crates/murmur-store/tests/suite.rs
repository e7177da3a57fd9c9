//! One behaviour suite, run against every `Storage` implementation.

use std::sync::Mutex;

use murmur_store::layout::{self, DocKey};
use murmur_store::{KeyValue, MemStore, SledStore, Storage, StoreError, WriteBatch};

const DOC: DocKey = [7; 16];
const OTHER_DOC: DocKey = [8; 16];

fn put(store: &dyn Storage, key: &[u8], value: &[u8]) {
    let mut batch = WriteBatch::new();
    batch.put(key.to_vec(), value.to_vec());
    store.apply(batch).unwrap();
}

fn reads_back_what_was_written(store: &dyn Storage) {
    put(store, b"a", b"1");
    put(store, b"b", b"2");
    assert_eq!(store.get(b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(store.get(b"missing").unwrap(), None);
    let mut batch = WriteBatch::new();
    batch.delete(b"a".to_vec());
    batch.put(b"b".to_vec(), b"3".to_vec());
    store.apply(batch).unwrap();
    assert_eq!(store.get(b"a").unwrap(), None);
    assert_eq!(store.get(b"b").unwrap(), Some(b"3".to_vec()));
}

fn scans_only_the_prefix_in_key_order(store: &dyn Storage) {
    for key in [&b"p/2"[..], b"p/1", b"q/1", b"p", b"o/9", b"p/10"] {
        put(store, key, key);
    }
    let keys: Vec<Vec<u8>> = store
        .scan_prefix(b"p/")
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(
        keys,
        vec![b"p/1".to_vec(), b"p/10".to_vec(), b"p/2".to_vec()]
    );
}

fn document_log_round_trips_and_compacts(store: &dyn Storage) {
    let mut batch = WriteBatch::new();
    layout::put_chunk(&mut batch, &DOC, 0, b"c0".to_vec());
    layout::put_chunk(&mut batch, &DOC, 1, b"c1".to_vec());
    layout::put_chunk(&mut batch, &OTHER_DOC, 0, b"other".to_vec());
    store.apply(batch).unwrap();

    let log = layout::load_document(store, &DOC).unwrap();
    assert_eq!(log.snapshot, None);
    assert_eq!(log.chunks.len(), 2);
    assert_eq!(log.next_seq(), 2);

    layout::compact(store, &DOC, 1, b"snap".to_vec()).unwrap();
    let mut batch = WriteBatch::new();
    layout::put_chunk(&mut batch, &DOC, 2, b"c2".to_vec());
    store.apply(batch).unwrap();

    let log = layout::load_document(store, &DOC).unwrap();
    assert_eq!(
        log.snapshot.as_ref().map(|r| (r.seq, r.bytes.as_slice())),
        Some((1, &b"snap"[..]))
    );
    assert_eq!(
        log.chunks.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![2]
    );
    assert!(
        log.stale_keys.is_empty(),
        "compaction left {:?}",
        log.stale_keys
    );
    assert_eq!(log.next_seq(), 3);
    // The other document is untouched.
    assert_eq!(
        layout::load_document(store, &OTHER_DOC)
            .unwrap()
            .chunks
            .len(),
        1
    );
    assert_eq!(layout::list_documents(store).unwrap(), vec![DOC, OTHER_DOC]);
}

fn sync_states_are_kept_per_peer(store: &dyn Storage) {
    put(store, &layout::sync_state_key(&DOC, &[1; 32]), b"s1");
    put(store, &layout::sync_state_key(&DOC, &[2; 32]), b"s2");
    put(store, &layout::sync_state_key(&OTHER_DOC, &[1; 32]), b"x");
    let states = layout::load_sync_states(store, &DOC).unwrap();
    assert_eq!(
        states,
        vec![([1; 32], b"s1".to_vec()), ([2; 32], b"s2".to_vec())]
    );
}

fn digest_records_round_trip_and_buckets_are_one_prefix(store: &dyn Storage) {
    let in_bucket_a: DocKey = [0xab, 0xcd, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let in_bucket_b: DocKey = [0xab, 0xcd, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let other_bucket: DocKey = [0xab, 0xce, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut batch = WriteBatch::new();
    for (doc, leaf) in [(in_bucket_b, 2u64), (other_bucket, 3), (in_bucket_a, 1)] {
        batch.put(layout::leaf_key(&doc), layout::encode_leaf(leaf));
    }
    batch.put(layout::trie_key(4, 0xabcd), layout::encode_trie_node(3, 2));
    store.apply(batch).unwrap();
    assert_eq!(
        layout::scan_bucket(store, [0xab, 0xcd]).unwrap(),
        vec![(in_bucket_a, 1), (in_bucket_b, 2)]
    );
    assert_eq!(layout::load_leaf(store, &other_bucket).unwrap(), Some(3));
    assert_eq!(layout::load_leaf(store, &DOC).unwrap(), None);
    assert_eq!(layout::load_trie_node(store, 4, 0xabcd).unwrap(), (3, 2));
    assert_eq!(layout::load_trie_node(store, 0, 0).unwrap(), (0, 0));
    // A bad length is a typed error, never a panic.
    put(store, &layout::trie_key(1, 2), b"short");
    put(store, &layout::leaf_key(&DOC), b"bad");
    assert!(matches!(
        layout::load_trie_node(store, 1, 2),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        layout::load_leaf(store, &DOC),
        Err(StoreError::Corrupt { .. })
    ));
}

fn run_suite(open: &dyn Fn() -> Box<dyn Storage>) {
    digest_records_round_trip_and_buckets_are_one_prefix(&*open());
    reads_back_what_was_written(&*open());
    scans_only_the_prefix_in_key_order(&*open());
    document_log_round_trips_and_compacts(&*open());
    sync_states_are_kept_per_peer(&*open());
}

#[test]
fn memstore_passes_the_suite() {
    run_suite(&|| Box::new(MemStore::new()));
}

#[test]
fn sledstore_passes_the_suite() {
    let dirs = Mutex::new(Vec::new());
    run_suite(&|| {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        dirs.lock().unwrap().push(dir);
        Box::new(store)
    });
}

#[test]
fn sledstore_keeps_flushed_data_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        let mut batch = WriteBatch::new();
        layout::put_chunk(&mut batch, &DOC, 0, b"chunk".to_vec());
        store.apply(batch).unwrap();
        store.flush().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    let log = layout::load_document(&store, &DOC).unwrap();
    assert_eq!(log.chunks.len(), 1);
    assert_eq!(log.chunks[0].bytes, b"chunk");
}

#[test]
fn sledstore_refuses_an_unknown_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        put(&store, layout::SCHEMA_KEY, &99u32.to_be_bytes());
        store.flush().unwrap();
    }
    match SledStore::open(dir.path()) {
        Err(StoreError::UnsupportedSchema {
            found: 99,
            supported,
        }) => {
            assert_eq!(supported, layout::SCHEMA_VERSION)
        }
        other => panic!("expected UnsupportedSchema, got {other:?}"),
    }
}

#[test]
fn a_malformed_schema_record_is_reported_as_corrupt() {
    let store = MemStore::unversioned();
    put(&store, layout::SCHEMA_KEY, b"xx");
    assert!(matches!(
        layout::ensure_schema(&store),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn memstore_crash_loses_exactly_the_unflushed_batches() {
    let store = MemStore::new();
    put(&store, b"flushed", b"1");
    store.flush().unwrap();
    put(&store, b"first", b"2");
    put(&store, b"second", b"3");
    let clone = store.clone();
    clone.crash_keeping(1);
    assert_eq!(store.get(b"flushed").unwrap(), Some(b"1".to_vec()));
    assert_eq!(store.get(b"first").unwrap(), Some(b"2".to_vec()));
    assert_eq!(store.get(b"second").unwrap(), None);
    put(&store, b"third", b"4");
    store.crash();
    assert_eq!(store.get(b"third").unwrap(), None);
    assert_eq!(store.get(b"first").unwrap(), Some(b"2".to_vec()));
}

/// Records the order of applies and flushes.
struct Recording {
    inner: MemStore,
    events: Mutex<Vec<String>>,
}

impl Storage for Recording {
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
        let deletes = batch
            .ops()
            .iter()
            .filter(|op| matches!(op, murmur_store::WriteOp::Delete { .. }))
            .count();
        self.events.lock().unwrap().push(format!(
            "apply puts={} deletes={deletes}",
            batch.len() - deletes
        ));
        self.inner.apply(batch)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.events.lock().unwrap().push("flush".into());
        self.inner.flush()
    }
}

#[test]
fn compaction_deletes_old_keys_only_after_the_snapshot_is_flushed() {
    let store = Recording {
        inner: MemStore::new(),
        events: Mutex::new(Vec::new()),
    };
    let mut batch = WriteBatch::new();
    for seq in 0..3 {
        layout::put_chunk(&mut batch, &DOC, seq, vec![seq as u8]);
    }
    store.apply(batch).unwrap();
    store.events.lock().unwrap().clear();

    layout::compact(&store, &DOC, 2, b"snapshot".to_vec()).unwrap();
    let events = store.events.lock().unwrap().clone();
    assert_eq!(
        events,
        vec!["apply puts=2 deletes=0", "flush", "apply puts=0 deletes=3"]
    );
}

#[test]
fn a_crash_during_compaction_leaves_a_loadable_document() {
    let store = MemStore::new();
    let mut batch = WriteBatch::new();
    layout::put_chunk(&mut batch, &DOC, 0, b"c0".to_vec());
    layout::put_chunk(&mut batch, &DOC, 1, b"c1".to_vec());
    store.apply(batch).unwrap();
    store.flush().unwrap();

    layout::compact(&store, &DOC, 1, b"snap".to_vec()).unwrap();
    // The snapshot was flushed; the deletes were not.
    store.crash();
    let log = layout::load_document(&store, &DOC).unwrap();
    assert_eq!(log.snapshot.map(|r| r.bytes), Some(b"snap".to_vec()));
    assert!(log.chunks.is_empty());
    assert_eq!(
        log.stale_keys.len(),
        2,
        "the covered chunks are reported stale"
    );
}

#[test]
fn a_planted_failure_lets_k_operations_through_then_fails_until_the_crash() {
    let store = MemStore::new();
    let put = |key: &[u8]| {
        let mut batch = WriteBatch::new();
        batch.put(key.to_vec(), b"v".to_vec());
        batch
    };
    store.apply(put(b"flushed")).expect("apply");
    store.flush().expect("flush");
    store.fail_after(2);
    store.apply(put(b"a")).expect("first of two");
    store.apply(put(b"b")).expect("second of two");
    assert!(store.apply(put(b"c")).is_err(), "the third fails");
    assert!(store.flush().is_err(), "and so does everything after");
    assert!(store.tripped());
    // The durable view shows only what a crash would keep.
    assert_eq!(
        store.durable_view().get(b"flushed").expect("reads"),
        Some(b"v".to_vec())
    );
    assert_eq!(store.durable_view().get(b"a").expect("reads"), None);
    let generation = store.durable_generation();
    // The crash keeps a prefix of the unflushed batches: here, "a".
    store.crash_keeping(1);
    assert!(!store.tripped() && !store.armed());
    assert!(store.durable_generation() > generation);
    assert_eq!(store.get(b"a").expect("reads"), Some(b"v".to_vec()));
    assert_eq!(store.get(b"b").expect("reads"), None);
    store.apply(put(b"d")).expect("works again after the crash");
}

#[test]
fn a_store_held_open_elsewhere_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let _held = SledStore::open(dir.path()).unwrap();
    match SledStore::open(dir.path()) {
        Err(StoreError::Locked { dir: said }) => {
            assert_eq!(said, dir.path().display().to_string());
        }
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a locked store opened twice"),
    }
}
