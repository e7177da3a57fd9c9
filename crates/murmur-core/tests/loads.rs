//! Document loads are effects: a document out of memory never loads inside
//! an engine call. Inputs about it wait, bounded, while every other
//! document goes on, and run in order once the driver hands it back.

use automerge::transaction::Transactable;
use automerge::{ReadDoc, ROOT};
use murmur_core::{
    Config, DocumentId, Event, Loaded, Message, NodeId, Origin, Replica, ReplicaError, Residency,
    Time,
};
use murmur_store::MemStore;

const NOW: Time = Time::from_millis(1_700_000_000_000);
const ME: NodeId = NodeId([1; 32]);
const PEER: NodeId = NodeId([2; 32]);

fn config() -> Config {
    let mut config = Config::new(ME);
    config.anti_entropy = false;
    config
}

/// A replica whose store holds `count` documents (each with `k = 0`),
/// reopened so that none is in memory, and connected to `PEER`.
fn cold_replica(config: Config, count: usize) -> (Replica, Vec<DocumentId>) {
    let store = MemStore::new();
    let mut replica = Replica::open(config.clone(), Box::new(store.clone()), NOW).unwrap();
    let docs: Vec<DocumentId> = (0..count)
        .map(|_| {
            let doc = replica.create_document(NOW);
            replica
                .handle_local_change(NOW, doc, |tx| tx.put(ROOT, "k", 0_i64))
                .unwrap();
            doc
        })
        .collect();
    replica.close(NOW).unwrap();
    let mut replica = Replica::open(config, Box::new(store), NOW).unwrap();
    replica.handle_peer_up(NOW, PEER);
    while replica.poll_transmit().is_some() {}
    for doc in &docs {
        assert!(replica.cached_document(*doc).is_err(), "reopened cold");
    }
    (replica, docs)
}

/// Two changes a peer made to `doc` on top of what `replica` stores: `k`
/// set to 1, then to 2 (the second depends on the first).
fn peer_changes(replica: &Replica, doc: DocumentId) -> [Message; 2] {
    let mut theirs = replica.read_document(doc).unwrap().into_owned();
    theirs.set_actor(automerge::ActorId::from(PEER.0[..16].to_vec()));
    [1_i64, 2].map(|value| {
        let mut tx = theirs.transaction();
        tx.put(ROOT, "k", value).unwrap();
        let hash = tx.commit().0.unwrap();
        let change = theirs
            .get_change_by_hash(&hash)
            .unwrap()
            .raw_bytes()
            .to_vec();
        Message::Changes {
            doc,
            changes: vec![change],
        }
    })
}

fn value_of(replica: &Replica, doc: DocumentId) -> i64 {
    let (value, _) = replica
        .cached_document(doc)
        .unwrap()
        .get(ROOT, "k")
        .unwrap()
        .unwrap();
    value.as_i64().unwrap()
}

#[test]
fn a_cold_document_loads_off_the_engine_path_and_what_waited_runs_in_order() {
    let (mut replica, docs) = cold_replica(config(), 1);
    let cold = docs[0];
    let [first, second] = peer_changes(&replica, cold);
    replica.handle_message(NOW, PEER, first).unwrap();
    replica.handle_message(NOW, PEER, second).unwrap();
    assert!(
        replica.cached_document(cold).is_err(),
        "nothing loaded inline"
    );
    assert_eq!(replica.metrics().inputs_parked, 2);
    assert_eq!(replica.metrics().documents_loaded, 0);

    // Meanwhile another document is written at once ...
    let warm = replica.create_document(NOW);
    replica
        .handle_local_change(NOW, warm, |tx| tx.put(ROOT, "k", 7_i64))
        .unwrap();
    // ... and a local change of the cold one is refused until it lands.
    let refused = replica.handle_local_change(NOW, cold, |tx| tx.put(ROOT, "x", 1_i64));
    assert!(matches!(refused, Err(ReplicaError::Loading(doc)) if doc == cold));
    replica.check_invariants().unwrap();

    let load = replica.poll_load().expect("the load is handed out");
    assert_eq!(load.doc(), cold);
    assert!(replica.poll_load().is_none(), "one load per document");
    replica.handle_document_loaded(NOW, load.run()).unwrap();
    replica.check_invariants().unwrap();

    // Applied in arrival order: the second change depends on the first.
    assert_eq!(value_of(&replica, cold), 2);
    assert_eq!(replica.metrics().documents_loaded, 1);
    let remote_changes = std::iter::from_fn(|| replica.poll_event())
        .filter(|event| {
            matches!(event, Event::DocumentChanged { doc, origin: Origin::Remote(p), .. }
                if *doc == cold && *p == PEER)
        })
        .count();
    assert_eq!(remote_changes, 2);
    assert_eq!(replica.request_load(cold).unwrap(), Residency::Resident);
}

#[test]
fn parked_inputs_are_bounded_and_leave_with_their_peer() {
    let mut config = config();
    config.max_parked_inputs = 2;
    let (mut replica, docs) = cold_replica(config, 2);
    let [first, second] = peer_changes(&replica, docs[0]);
    let [third, _] = peer_changes(&replica, docs[1]);
    for message in [first, second, third] {
        replica.handle_message(NOW, PEER, message).unwrap();
    }
    assert_eq!(replica.metrics().inputs_parked, 2);
    assert_eq!(replica.metrics().inputs_dropped_loading, 1);
    replica.check_invariants().unwrap();
    // The third input's document waits for nothing: no load for it.
    let load = replica.poll_load().unwrap();
    assert_eq!(load.doc(), docs[0]);
    assert!(replica.poll_load().is_none());

    // The peer goes: what it sent and was parked goes with it.
    replica.handle_peer_down(NOW, PEER);
    replica.check_invariants().unwrap();
    replica.handle_document_loaded(NOW, load.run()).unwrap();
    assert_eq!(value_of(&replica, docs[0]), 0, "nothing replayed");
    replica.check_invariants().unwrap();
}

#[test]
fn a_failed_load_drops_what_waited_and_the_next_request_loads_again() {
    let (mut replica, docs) = cold_replica(config(), 1);
    let doc = docs[0];
    let [first, _] = peer_changes(&replica, doc);
    replica.handle_message(NOW, PEER, first).unwrap();
    let load = replica.poll_load().unwrap();
    assert!(
        matches!(replica.load_now(NOW, doc), Err(ReplicaError::Loading(_))),
        "a load already out is not run twice"
    );
    let failed = replica.handle_document_loaded(NOW, Loaded::failed(doc, "disk on fire"));
    assert!(matches!(failed, Err(ReplicaError::Storage(_))));
    assert!(replica.cached_document(doc).is_err());
    assert_eq!(replica.metrics().inputs_dropped_loading, 1);
    replica.check_invariants().unwrap();
    // The load that was out lands late: nobody waits for it, and it may
    // have read the store before a later flush, so it is ignored.
    replica.handle_document_loaded(NOW, load.run()).unwrap();
    assert!(replica.cached_document(doc).is_err());

    assert_eq!(replica.request_load(doc).unwrap(), Residency::Loading);
    let load = replica.poll_load().unwrap();
    replica.handle_document_loaded(NOW, load.run()).unwrap();
    assert_eq!(value_of(&replica, doc), 0);
    replica.check_invariants().unwrap();
}
