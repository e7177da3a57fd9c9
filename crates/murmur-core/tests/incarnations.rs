//! Which Automerge actor a node writes as across restarts.

use automerge::transaction::Transactable;
use automerge::{ActorId, ROOT};
use murmur_core::{Config, NodeId, Replica, Time};
use murmur_store::MemStore;

const NOW: Time = Time::from_millis(1_700_000_000_000);

fn open(store: &MemStore) -> Replica {
    Replica::open(Config::new(NodeId([5; 32])), Box::new(store.clone()), NOW).unwrap()
}

/// Makes one change to `doc` and returns the actor it was written as.
fn write(replica: &mut Replica, doc: murmur_core::DocumentId) -> ActorId {
    replica.load_now(NOW, doc).unwrap();
    replica
        .handle_local_change(NOW, doc, |tx| tx.put(ROOT, "k", 1_i64))
        .unwrap();
    replica.read_document(doc).unwrap().get_actor().clone()
}

#[test]
fn a_clean_close_keeps_the_actor_and_a_crash_changes_it() {
    let store = MemStore::new();
    let mut replica = open(&store);
    let doc = replica.create_document(NOW);
    let first = write(&mut replica, doc);
    replica.close(NOW).unwrap();

    let mut replica = open(&store);
    assert_eq!(
        write(&mut replica, doc),
        first,
        "a clean close keeps the actor"
    );
    replica.flush_now(NOW).unwrap();
    // A crash: no close. Changes may have reached peers before a flush, so
    // the next start must not reuse this actor's sequence numbers.
    drop(replica);
    store.crash();

    let mut replica = open(&store);
    let after_crash = write(&mut replica, doc);
    assert_ne!(after_crash, first);
    replica.close(NOW).unwrap();
    let mut replica = open(&store);
    assert_eq!(write(&mut replica, doc), after_crash);
}

#[test]
fn reopening_after_a_clean_close_never_draws_the_same_document_id() {
    let store = MemStore::new();
    let mut replica = open(&store);
    let first = replica.create_document(NOW);
    replica.close(NOW).unwrap();
    let mut replica = open(&store);
    assert_ne!(replica.create_document(NOW), first);
}
