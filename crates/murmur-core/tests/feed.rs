//! The change feed: dense numbers written with the changes they report,
//! readable only once durable, continued after a crash, trimmed with a
//! distinct answer.

use automerge::transaction::Transactable;
use automerge::ROOT;
use murmur_core::feed::{self, FeedError};
use murmur_core::{Config, NodeId, Origin, Replica, Time};
use murmur_store::{layout, MemStore, Storage, WriteBatch};

const NOW: Time = Time::from_millis(1_700_000_000_000);
const ALICE: NodeId = NodeId([1; 32]);
const BOB: NodeId = NodeId([2; 32]);

fn open(id: NodeId, store: &MemStore, config: impl FnOnce(&mut Config)) -> Replica {
    let mut settings = Config::new(id);
    config(&mut settings);
    Replica::open(settings, Box::new(store.clone()), NOW).unwrap()
}

fn write(replica: &mut Replica, doc: murmur_core::DocumentId, n: i64) {
    replica
        .handle_local_change(NOW, doc, |tx| tx.put(ROOT, "n", n))
        .unwrap();
}

/// Delivers every message both ways until neither side has more.
fn exchange(a: &mut Replica, b: &mut Replica) {
    loop {
        let mut moved = false;
        while let Some(t) = a.poll_transmit() {
            b.handle_message(NOW, a.node_id(), t.message).unwrap();
            moved = true;
        }
        while let Some(t) = b.poll_transmit() {
            a.handle_message(NOW, b.node_id(), t.message).unwrap();
            moved = true;
        }
        if !moved {
            break;
        }
    }
}

#[test]
fn local_and_peer_changes_are_numbered_densely_once_durable() {
    let (store_a, store_b) = (MemStore::new(), MemStore::new());
    let mut alice = open(ALICE, &store_a, |_| {});
    let mut bob = open(BOB, &store_b, |_| {});
    alice.handle_peer_up(NOW, BOB);
    bob.handle_peer_up(NOW, ALICE);
    let first = alice.create_document(NOW);
    let second = alice.create_document(NOW);
    write(&mut alice, first, 1);
    write(&mut alice, second, 2);
    write(&mut alice, first, 3);
    // Applied, not durable: nobody may read them yet.
    assert_eq!(alice.feed_end(), 1);
    let reader = alice.feed_reader();
    assert!(reader.read(1, alice.feed_end(), 10).unwrap().is_empty());
    alice.flush_now(NOW).unwrap();
    assert_eq!(alice.feed_end(), 4);
    let entries = reader.read(1, alice.feed_end(), 10).unwrap();
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    let docs: Vec<_> = entries.iter().map(|e| e.doc).collect();
    assert_eq!(
        docs,
        [first, second, first],
        "numbered in the order applied"
    );
    assert!(entries
        .iter()
        .all(|e| e.origin == Origin::Local && e.changes.len() == 1));
    assert_eq!(entries[2].heads, entries[2].changes);
    // Pages, and a cursor past the end.
    assert_eq!(reader.read(2, alice.feed_end(), 1).unwrap()[0].seq, 2);
    assert!(reader.read(4, alice.feed_end(), 10).unwrap().is_empty());

    exchange(&mut alice, &mut bob);
    bob.flush_now(NOW).unwrap();
    let theirs = bob.feed_reader().read(1, bob.feed_end(), 10).unwrap();
    assert!(!theirs.is_empty());
    assert!(theirs.iter().all(|e| e.origin == Origin::Remote(ALICE)));
    let received: usize = theirs.iter().map(|e| e.changes.len()).sum();
    assert_eq!(received, 3, "every change alice made, once");
    for store in [&store_a, &store_b] {
        let summary = feed::verify(store).unwrap();
        assert_eq!(summary.changes, 3);
    }
}

#[test]
fn a_crash_loses_unflushed_entries_with_their_changes_and_numbering_goes_on() {
    let store = MemStore::new();
    let mut replica = open(ALICE, &store, |_| {});
    let doc = replica.create_document(NOW);
    write(&mut replica, doc, 1);
    replica.flush_now(NOW).unwrap();
    write(&mut replica, doc, 2);
    // The second write's flush is written but never made durable.
    let mut flush = replica.poll_flush().expect("a flush is due");
    flush.apply().unwrap();
    drop(replica);
    store.crash();
    assert_eq!(feed::verify(&store).unwrap().end, 2);

    let mut replica = open(ALICE, &store, |_| {});
    assert_eq!(replica.feed_end(), 2);
    replica.load_now(NOW, doc).unwrap();
    write(&mut replica, doc, 3);
    replica.flush_now(NOW).unwrap();
    let entries = replica
        .feed_reader()
        .read(1, replica.feed_end(), 10)
        .unwrap();
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert_ne!(entries[0].changes, entries[1].changes);
    assert_eq!(feed::verify(&store).unwrap().changes, 2);
}

#[test]
fn retention_trims_the_oldest_and_a_reader_behind_it_is_told() {
    let store = MemStore::new();
    let mut replica = open(ALICE, &store, |config| config.feed_max_entries = 5);
    let doc = replica.create_document(NOW);
    for n in 0..20 {
        write(&mut replica, doc, n);
        replica.flush_now(NOW).unwrap();
    }
    let end = replica.feed_end();
    assert_eq!(end, 21);
    let reader = replica.feed_reader();
    assert_eq!(reader.first(end).unwrap(), 16);
    match reader.read(3, end, 10) {
        Err(FeedError::Trimmed { from: 3, first: 16 }) => {}
        other => panic!("expected Trimmed, got {other:?}"),
    }
    let kept = reader.read(16, end, 10).unwrap();
    assert_eq!(kept.len(), 5);
    let summary = feed::verify(&store).unwrap();
    assert_eq!((summary.first, summary.end), (16, 21));
}

#[test]
fn a_store_from_before_the_feed_starts_it_trimmed() {
    let store = MemStore::new();
    let mut replica = open(ALICE, &store, |_| {});
    let doc = replica.create_document(NOW);
    write(&mut replica, doc, 1);
    replica.close(NOW).unwrap();
    // Make it look like a schema-1 store: no feed, the old version stamp.
    let mut batch = WriteBatch::new();
    batch.put(layout::SCHEMA_KEY.to_vec(), 1u32.to_be_bytes().to_vec());
    batch.delete(layout::feed_key(1));
    batch.delete(layout::node_key("feed_next"));
    store.apply(batch).unwrap();
    store.flush().unwrap();

    let replica = open(ALICE, &store, |_| {});
    assert_eq!(replica.feed_end(), layout::FEED_MIGRATED_START);
    match replica.feed_reader().read(1, replica.feed_end(), 10) {
        Err(FeedError::Trimmed { from: 1, first: 2 }) => {}
        other => panic!("a reader from the start must snapshot first, got {other:?}"),
    }
}

#[test]
fn a_corrupt_entry_is_an_error_not_a_panic() {
    let store = MemStore::new();
    let mut replica = open(ALICE, &store, |_| {});
    let doc = replica.create_document(NOW);
    write(&mut replica, doc, 1);
    replica.flush_now(NOW).unwrap();
    for garbage in [&b""[..], b"\x01", b"\x09abc", &[1u8; 40]] {
        let mut batch = WriteBatch::new();
        batch.put(layout::feed_key(1), garbage.to_vec());
        store.apply(batch).unwrap();
        assert!(matches!(
            replica.feed_reader().read(1, 2, 10),
            Err(FeedError::Store(_))
        ));
    }
}
