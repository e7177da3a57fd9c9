//! A peer's data that breaks a document in memory (Automerge panics, or
//! the document no longer saves what it holds) is refused, and the
//! document is rebuilt from the store and the changes applied since its
//! last durable save: the node keeps running, nothing acknowledged is lost,
//! and what the store holds still loads with the heads memory had.

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, Change, ExpandedChange, ReadDoc, ROOT};
use murmur_core::{
    AckLevel, Config, DocumentId, Event, Message, NodeId, Replica, ReplicaError, Time, WriteId,
};
use murmur_store::MemStore;

const NOW: Time = Time::from_millis(1_700_000_000_000);
const ME: NodeId = NodeId([1; 32]);
const PEER: NodeId = NodeId([2; 32]);

fn open(store: &MemStore) -> Replica {
    let mut config = Config::new(ME);
    config.anti_entropy = false;
    Replica::open(config, Box::new(store.clone()), NOW).unwrap()
}

/// A replica on `store` holding one flushed document, connected to PEER.
fn with_stored_document(store: &MemStore) -> (Replica, DocumentId) {
    let mut replica = open(store);
    let doc = replica.create_document(NOW);
    replica.flush_now(NOW).unwrap();
    replica.handle_peer_up(NOW, PEER);
    (replica, doc)
}

fn put(replica: &mut Replica, doc: DocumentId, key: &str, value: i64) -> WriteId {
    replica
        .handle_local_change(NOW, doc, |tx| tx.put(ROOT, key, value))
        .unwrap()
        .write
}

/// A change by `actor` on a copy of `base` setting `key`.
fn change_on(base: &Automerge, actor: u8, key: &str, value: i64) -> Change {
    let mut theirs = base.fork().with_actor(ActorId::from(vec![actor; 16]));
    let mut tx = theirs.transaction();
    tx.put(ROOT, key, value).unwrap();
    tx.commit();
    theirs.get_last_local_change().unwrap().clone()
}

/// A change that Automerge takes into its queue (it depends on `waits_for`,
/// not held yet) and that panics inside Automerge once `waits_for` arrives:
/// it overwrites an op of an actor the document has never seen, which no
/// change of its history introduces.
fn poisoned_change(waits_for: &Change) -> Change {
    let mut other = Automerge::new().with_actor(ActorId::from(vec![0xaa; 16]));
    let mut tx = other.transaction();
    tx.put(ROOT, "x", 1).unwrap();
    tx.commit();
    let mut later = other.fork().with_actor(ActorId::from(vec![9; 16]));
    let mut tx = later.transaction();
    tx.put(ROOT, "x", 2).unwrap();
    tx.commit();
    let mut expanded: ExpandedChange = later.get_last_local_change().unwrap().decode();
    expanded.deps = vec![waits_for.hash()];
    expanded.hash = None;
    Change::from(expanded)
}

/// Breaks `doc` in `replica`'s memory with a peer's data: the poisoned
/// change waits in Automerge's queue, the honest change it depends on
/// releases it, and Automerge panics. Checks that the message is refused
/// and the document rebuilt; returns the honest change (refused with it).
fn break_document(replica: &mut Replica, doc: DocumentId) -> Change {
    let base = replica.read_document(doc).unwrap().into_owned();
    let release = change_on(&base, 8, "c", 3);
    replica
        .handle_message(NOW, PEER, push(doc, &poisoned_change(&release)))
        .unwrap();
    let refused = replica.handle_message(NOW, PEER, push(doc, &release));
    assert!(
        matches!(refused, Err(ReplicaError::InvalidPeerData { .. })),
        "{refused:?}"
    );
    assert_eq!(replica.metrics().documents_rebuilt, 1);
    release
}

fn push(doc: DocumentId, change: &Change) -> Message {
    Message::Changes {
        doc,
        changes: vec![change.raw_bytes().to_vec()],
    }
}

fn durable(replica: &mut Replica) -> Vec<WriteId> {
    let mut writes = Vec::new();
    while let Some(event) = replica.poll_event() {
        if let Event::Acknowledged {
            write,
            level: AckLevel::Durable,
            ..
        } = event
        {
            writes.push(write);
        }
    }
    writes
}

fn value(replica: &Replica, doc: DocumentId, key: &str) -> Option<i64> {
    let document = replica.read_document(doc).unwrap();
    let (value, _) = document.get(ROOT, key).unwrap()?;
    match value {
        automerge::Value::Scalar(scalar) => scalar.as_i64(),
        _ => None,
    }
}

#[test]
fn a_change_that_panics_automerge_is_refused_and_the_document_rebuilt_with_nothing_lost() {
    let store = MemStore::new();
    let (mut replica, doc) = with_stored_document(&store);
    durable(&mut replica);

    // Before the bad data: a local write and an honest push, in the flush
    // now in flight; then a local write waiting for the next flush.
    let in_flight = put(&mut replica, doc, "a", 1);
    let base = replica.read_document(doc).unwrap().into_owned();
    let honest = change_on(&base, 7, "h", 1);
    replica
        .handle_message(NOW, PEER, push(doc, &honest))
        .unwrap();
    let flush = replica.poll_flush().expect("a flush is due");
    let waiting = put(&mut replica, doc, "b", 2);
    let heads_before = replica.cached_document(doc).unwrap().get_heads();

    let release = break_document(&mut replica, doc);
    replica.check_invariants().unwrap();

    // Out of memory until the flush in flight has landed: no load before.
    assert!(replica.cached_document(doc).is_err());
    assert!(
        replica.poll_load().is_none(),
        "loaded under the flush in flight"
    );
    replica.handle_flush_complete(NOW, flush.write());
    assert_eq!(durable(&mut replica), vec![in_flight]);
    // The write whose document is rebuilding is not flushed without it.
    if let Some(flush) = replica.poll_flush() {
        replica.handle_flush_complete(NOW, flush.write());
    }
    assert_eq!(durable(&mut replica), vec![]);
    assert_eq!(replica.writes_awaiting_flush(), 1);
    replica.check_invariants().unwrap();

    let load = replica.poll_load().expect("the rebuild's load");
    replica.handle_document_loaded(NOW, load.run()).unwrap();
    assert_eq!(
        replica.cached_document(doc).unwrap().get_heads(),
        heads_before,
        "rebuilt as it was before the bad data"
    );
    let flush = replica.poll_flush().expect("the rebuilt document is saved");
    replica.handle_flush_complete(NOW, flush.write());
    assert_eq!(durable(&mut replica), vec![waiting]);
    replica.check_invariants().unwrap();
    replica.check_digest().unwrap();

    // The honest change alone applies now.
    replica
        .handle_message(NOW, PEER, push(doc, &release))
        .unwrap();
    assert_eq!(value(&replica, doc, "c"), Some(3));
    let heads = replica.cached_document(doc).unwrap().get_heads();
    replica.close(NOW).unwrap();

    // What the store holds loads with the heads memory had.
    let mut reopened = open(&store);
    reopened.load_now(NOW, doc).unwrap();
    assert_eq!(reopened.cached_document(doc).unwrap().get_heads(), heads);
    for (key, expected) in [("a", 1), ("b", 2), ("h", 1), ("c", 3)] {
        assert_eq!(value(&reopened, doc, key), Some(expected), "{key}");
    }
    assert_eq!(value(&reopened, doc, "x"), None);
}

#[test]
fn a_document_broken_before_its_first_flush_is_rebuilt_from_nothing_but_its_changes() {
    let store = MemStore::new();
    let mut replica = open(&store);
    replica.handle_peer_up(NOW, PEER);
    // A document this node first hears of from the peer, never flushed.
    let doc = DocumentId::from_bytes([5; 16]);
    let first = change_on(&Automerge::new(), 7, "h", 1);
    replica
        .handle_message(NOW, PEER, push(doc, &first))
        .unwrap();
    break_document(&mut replica, doc);
    // Not mistaken for a new, empty document while it loads.
    assert!(matches!(
        replica.handle_local_change(NOW, doc, |tx| tx.put(ROOT, "z", 1)),
        Err(ReplicaError::Loading(_))
    ));
    let load = replica.poll_load().expect("the rebuild's load");
    replica.handle_document_loaded(NOW, load.run()).unwrap();
    assert_eq!(value(&replica, doc, "h"), Some(1));
    replica.flush_now(NOW).unwrap();
    replica.check_invariants().unwrap();
    replica.close(NOW).unwrap();
    let mut reopened = open(&store);
    reopened.load_now(NOW, doc).unwrap();
    assert_eq!(value(&reopened, doc, "h"), Some(1));
}

#[test]
fn a_clean_close_while_a_document_is_rebuilt_saves_what_it_held() {
    let store = MemStore::new();
    let (mut replica, doc) = with_stored_document(&store);
    put(&mut replica, doc, "a", 1);
    break_document(&mut replica, doc);
    // Closed before the driver ran the rebuild's load.
    replica.close(NOW).unwrap();
    let mut reopened = open(&store);
    reopened.load_now(NOW, doc).unwrap();
    assert_eq!(value(&reopened, doc, "a"), Some(1));
}
