//! Deleting documents: a tombstone that replicates, frees the content,
//! shows in the feed, and wins over a concurrent edit.

use automerge::transaction::Transactable;
use automerge::ROOT;
use murmur_core::{feed, Config, DocumentId, NodeId, Replica, ReplicaError, Time};
use murmur_store::{layout, MemStore, Storage};

const NOW: Time = Time::from_millis(1_700_000_000_000);
const ALICE: NodeId = NodeId([1; 32]);
const BOB: NodeId = NodeId([2; 32]);

fn open(id: NodeId, store: &MemStore) -> Replica {
    Replica::open(Config::new(id), Box::new(store.clone()), NOW).unwrap()
}

fn exchange(a: &mut Replica, b: &mut Replica, now: Time) {
    loop {
        let mut moved = false;
        while let Some(t) = a.poll_transmit() {
            b.handle_message(now, a.node_id(), t.message).unwrap();
            moved = true;
        }
        while let Some(t) = b.poll_transmit() {
            a.handle_message(now, b.node_id(), t.message).unwrap();
            moved = true;
        }
        if !moved {
            break;
        }
    }
}

fn write(replica: &mut Replica, doc: DocumentId, key: &str, now: Time) {
    replica
        .handle_local_change(now, doc, |tx| tx.put(ROOT, key, 1_i64))
        .unwrap();
}

/// The store holds no content of `doc`, and its tombstone.
fn only_tombstone(store: &MemStore, doc: DocumentId) {
    assert!(!layout::document_exists(store, doc.as_bytes()).unwrap());
    let mut prefix = vec![b'd'];
    prefix.extend_from_slice(doc.as_bytes());
    assert!(
        store.scan_prefix(&prefix).unwrap().is_empty(),
        "content left"
    );
    assert!(store
        .get(&layout::tombstone_key(doc.as_bytes()))
        .unwrap()
        .is_some());
}

#[test]
fn a_deletion_replicates_frees_content_and_is_in_the_feed() {
    let (store_a, store_b) = (MemStore::new(), MemStore::new());
    let (mut alice, mut bob) = (open(ALICE, &store_a), open(BOB, &store_b));
    alice.handle_peer_up(NOW, BOB);
    bob.handle_peer_up(NOW, ALICE);
    let doc = alice.create_document(NOW);
    write(&mut alice, doc, "a", NOW);
    let kept = alice.create_document(NOW);
    write(&mut alice, kept, "k", NOW);
    exchange(&mut alice, &mut bob, NOW);
    alice.flush_now(NOW).unwrap();
    bob.flush_now(NOW).unwrap();
    assert!(bob.document_ids().unwrap().contains(&doc));

    alice.delete_document(NOW, doc).unwrap();
    assert!(matches!(
        alice.cached_document(doc),
        Err(ReplicaError::Deleted(_))
    ));
    exchange(&mut alice, &mut bob, NOW);
    alice.flush_now(NOW).unwrap();
    bob.flush_now(NOW).unwrap();
    for (replica, store) in [(&alice, &store_a), (&bob, &store_b)] {
        assert!(replica.is_deleted(&doc));
        assert_eq!(replica.document_ids().unwrap(), vec![kept]);
        only_tombstone(store, doc);
        replica.check_digest().unwrap();
        feed::verify(store).unwrap();
        let entries = replica
            .feed_reader()
            .read(1, replica.feed_end(), 100)
            .unwrap();
        let deletion = entries.last().unwrap();
        assert!(deletion.deleted && deletion.doc == doc);
    }
    assert_eq!(bob.metrics().documents_held, 1);
    // Nothing more happens to it: no change, no new document by its id.
    assert!(matches!(
        bob.handle_local_change(NOW, doc, |tx| tx.put(ROOT, "b", 1_i64)),
        Err(ReplicaError::Deleted(_))
    ));
    assert!(bob.create_document_with_id(NOW, doc).is_err());
    // Deleting it again is acknowledged; an unknown document is refused.
    alice.delete_document(NOW, doc).unwrap();
    assert!(matches!(
        alice.delete_document(NOW, DocumentId::from_bytes([9; 16])),
        Err(ReplicaError::UnknownDocument(_))
    ));
    // Across a restart, the tombstone stays.
    drop(bob);
    let bob = open(BOB, &store_b);
    assert!(bob.is_deleted(&doc));
}

#[test]
fn a_deletion_wins_over_an_edit_made_apart_and_reconciliation_spreads_it() {
    let (store_a, store_b) = (MemStore::new(), MemStore::new());
    let (mut alice, mut bob) = (open(ALICE, &store_a), open(BOB, &store_b));
    alice.handle_peer_up(NOW, BOB);
    bob.handle_peer_up(NOW, ALICE);
    let doc = alice.create_document(NOW);
    write(&mut alice, doc, "a", NOW);
    exchange(&mut alice, &mut bob, NOW);
    // Apart: alice deletes, bob edits.
    alice.handle_peer_down(NOW, BOB);
    bob.handle_peer_down(NOW, ALICE);
    alice.delete_document(NOW, doc).unwrap();
    write(&mut bob, doc, "b", NOW);
    alice.flush_now(NOW).unwrap();
    bob.flush_now(NOW).unwrap();
    // They meet again: reconciliation finds the difference.
    let later = NOW.add(std::time::Duration::from_secs(5));
    alice.handle_peer_up(later, BOB);
    bob.handle_peer_up(later, ALICE);
    for step in 0..20 {
        let now = later.add(std::time::Duration::from_secs(step));
        alice.handle_timeout(now);
        bob.handle_timeout(now);
        exchange(&mut alice, &mut bob, now);
    }
    alice.flush_now(later).unwrap();
    bob.flush_now(later).unwrap();
    assert!(bob.is_deleted(&doc), "the deletion wins");
    only_tombstone(&store_b, doc);
    bob.check_digest().unwrap();
    feed::verify(&store_b).unwrap();
    assert_eq!(alice.digest_root().unwrap(), bob.digest_root().unwrap());
}
