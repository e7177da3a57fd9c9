//! Pushes that arrive together apply together: `handle_messages` gives a
//! peer's pushes about one document to Automerge in one batch, with the same
//! outcome as handling them one by one, and rejects only the messages at
//! fault.

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ReadDoc, ROOT};
use murmur_core::{
    Config, DocumentId, Event, Message, NodeId, Replica, ReplicaError, Time, MAX_BATCHED_CHANGES,
};
use murmur_store::MemStore;

const NOW: Time = Time::from_millis(1_700_000_000_000);
const ME: NodeId = NodeId([1; 32]);
const PEER: NodeId = NodeId([2; 32]);
const OTHER: NodeId = NodeId([3; 32]);

fn replica() -> (Replica, DocumentId) {
    let mut config = Config::new(ME);
    config.anti_entropy = false;
    let mut replica = Replica::open(config, Box::new(MemStore::new()), NOW).unwrap();
    let doc = replica.create_document(NOW);
    replica.handle_peer_up(NOW, PEER);
    replica.handle_peer_up(NOW, OTHER);
    while replica.poll_transmit().is_some() {}
    while replica.poll_event().is_some() {}
    (replica, doc)
}

/// `count` pushes of one change each, made by `actor` on a copy of `base`:
/// `n` set to 0, 1, 2, ...
fn pushes(base: &Automerge, doc: DocumentId, actor: u8, count: i64) -> Vec<Message> {
    pushes_from(base, doc, actor, 0, count)
}

/// The same, setting `n` to `first`, `first + 1`, ...
fn pushes_from(
    base: &Automerge,
    doc: DocumentId,
    actor: u8,
    first: i64,
    count: i64,
) -> Vec<Message> {
    let mut theirs = base.fork().with_actor(ActorId::from(vec![actor; 16]));
    (first..first + count)
        .map(|value| {
            let mut tx = theirs.transaction();
            tx.put(ROOT, "n", value).unwrap();
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
        .collect()
}

fn base(replica: &Replica, doc: DocumentId) -> Automerge {
    replica.read_document(doc).unwrap().into_owned()
}

fn changed_events(replica: &mut Replica) -> usize {
    let mut count = 0;
    while let Some(event) = replica.poll_event() {
        if matches!(event, Event::DocumentChanged { .. }) {
            count += 1;
        }
    }
    count
}

#[test]
fn a_peers_pushes_apply_in_one_batch_with_the_outcome_of_one_by_one() {
    let (mut batched, doc) = replica();
    let (mut single, doc2) = replica();
    assert_eq!(
        doc, doc2,
        "two fresh replicas name their first document alike"
    );
    let messages = pushes(&base(&batched, doc), doc, 9, 50);

    let rejected = batched.handle_messages(NOW, messages.iter().map(|m| (PEER, m.clone())));
    assert!(rejected.is_empty(), "{rejected:?}");
    for message in &messages {
        single.handle_message(NOW, PEER, message.clone()).unwrap();
    }

    assert_eq!(batched.metrics().pushes_batched, 49);
    assert_eq!(batched.metrics().changes_received, 50);
    assert_eq!(batched.metrics().messages_received, 50);
    assert_eq!(single.metrics().pushes_batched, 0);
    assert_eq!(
        batched.cached_document(doc).unwrap().get_heads(),
        single.cached_document(doc).unwrap().get_heads()
    );
    let (value, _) = batched
        .cached_document(doc)
        .unwrap()
        .get(ROOT, "n")
        .unwrap()
        .unwrap();
    assert_eq!(value.as_i64(), Some(49));
    // One event for the batch, where one by one makes fifty.
    assert_eq!(changed_events(&mut batched), 1);
    assert_eq!(changed_events(&mut single), 50);
}

#[test]
fn another_message_splits_the_batch_and_peers_batch_apart() {
    let (mut replica, doc) = replica();
    let base = base(&replica, doc);
    let mine = pushes(&base, doc, 9, 5);
    let theirs = pushes(&base, doc, 8, 2);
    let heads = Message::Heads {
        doc,
        heads: Vec::new(),
    };
    let input = vec![
        (PEER, mine[0].clone()),
        (OTHER, theirs[0].clone()),
        (PEER, mine[1].clone()),
        (OTHER, theirs[1].clone()),
        (PEER, mine[2].clone()),
        (PEER, heads),
        (PEER, mine[3].clone()),
        (PEER, mine[4].clone()),
    ];
    let rejected = replica.handle_messages(NOW, input);
    assert!(rejected.is_empty(), "{rejected:?}");
    // PEER: 3 pushes in one batch, then 2 after the heads (2 + 1 joined);
    // OTHER: 2 in one batch (1 joined).
    assert_eq!(replica.metrics().pushes_batched, 4);
    assert_eq!(replica.metrics().changes_received, 7);
    assert_eq!(replica.cached_document(doc).unwrap().get_heads().len(), 2);
}

#[test]
fn only_the_messages_at_fault_are_rejected() {
    let (mut replica, doc) = replica();
    let base = base(&replica, doc);
    let good = pushes(&base, doc, 9, 3);
    // Another history under the same actor: its first change has the
    // sequence number of good[0] with other contents.
    let forged = pushes_from(&base, doc, 9, 100, 1);
    let garbage = Message::Changes {
        doc,
        changes: vec![vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3]],
    };
    let stranger = NodeId([4; 32]);
    let input = vec![
        (PEER, good[0].clone()),
        (PEER, garbage),
        (PEER, good[1].clone()),
        (PEER, forged[0].clone()),
        (stranger, good[2].clone()),
        (PEER, good[2].clone()),
    ];
    let rejected = replica.handle_messages(NOW, input);
    let kinds: Vec<(NodeId, &str)> = rejected
        .iter()
        .map(|(peer, error)| {
            let kind = match error {
                ReplicaError::InvalidPeerData { .. } => "invalid",
                ReplicaError::PeerNotConnected(_) => "not connected",
                _ => "other",
            };
            (*peer, kind)
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (stranger, "not connected"),
            (PEER, "invalid"),
            (PEER, "invalid")
        ],
        "{rejected:?}"
    );
    // Every good change applied: the batch failed on the forged change
    // and was applied message by message.
    let (value, _) = replica
        .cached_document(doc)
        .unwrap()
        .get(ROOT, "n")
        .unwrap()
        .unwrap();
    assert_eq!(value.as_i64(), Some(2));
    assert_eq!(
        replica.cached_document(doc).unwrap().get_changes(&[]).len(),
        base.get_changes(&[]).len() + 3
    );
}

#[test]
fn a_batch_holds_at_most_max_batched_changes() {
    let (mut replica, doc) = replica();
    let count = MAX_BATCHED_CHANGES as i64 + 10;
    let messages = pushes(&base(&replica, doc), doc, 9, count);
    let rejected = replica.handle_messages(NOW, messages.into_iter().map(|m| (PEER, m)));
    assert!(rejected.is_empty(), "{rejected:?}");
    // Two batches: all but the first push of each joined one.
    assert_eq!(replica.metrics().pushes_batched, count as u64 - 2);
    assert_eq!(changed_events(&mut replica), 2);
}
