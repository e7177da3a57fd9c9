//! A peer creates a document on this node only by sending content, and
//! has at most `Config::max_new_documents_per_peer` documents new here at a
//! time. A document a peer only names (in a reconciliation digest or a sync
//! message) is synced from an empty copy in memory, never stored, and
//! dropped when the peer goes away.

use std::time::Duration;

use automerge::sync::SyncDoc;
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ReadDoc, ROOT};

use murmur_core::testkit::Cluster;
use murmur_core::{Config, DocumentId, Message, NodeId, Replica, Time, Transmit};
use murmur_store::MemStore;
use murmur_wire::{digest_bucket, MAX_DIGEST_LEAVES};

const NOW: Time = Time::from_millis(1_700_000_000_000);
const ME: NodeId = NodeId([1; 32]);
const PEER: NodeId = NodeId([2; 32]);
const OTHER_PEER: NodeId = NodeId([3; 32]);

fn open(store: &MemStore, cap: usize) -> Replica {
    let mut config = Config::new(ME);
    config.anti_entropy = false;
    config.max_new_documents_per_peer = cap;
    let mut replica = Replica::open(config, Box::new(store.clone()), NOW).unwrap();
    replica.handle_peer_up(NOW, PEER);
    replica.handle_peer_up(NOW, OTHER_PEER);
    drain(&mut replica);
    replica
}

fn drain(replica: &mut Replica) -> Vec<Transmit> {
    std::iter::from_fn(|| replica.poll_transmit()).collect()
}

/// Documents this node holds (stored, or in memory and not merely named).
fn held(replica: &Replica) -> Vec<DocumentId> {
    replica.document_ids().unwrap()
}

/// A document id in digest bucket `bucket`.
fn id_in_bucket(bucket: u16, n: u32) -> DocumentId {
    let mut bytes = [0u8; 16];
    bytes[..2].copy_from_slice(&bucket.to_be_bytes());
    bytes[12..].copy_from_slice(&n.to_be_bytes());
    DocumentId::from_bytes(bytes)
}

/// A peer's copy of a document holding one change.
fn peer_document(n: u8) -> Automerge {
    let mut doc = Automerge::new().with_actor(ActorId::from(vec![n; 16]));
    let mut tx = doc.transaction();
    tx.put(ROOT, "n", i64::from(n)).unwrap();
    tx.commit();
    doc
}

fn push_of(doc: DocumentId, automerge: &Automerge) -> Message {
    Message::Changes {
        doc,
        changes: automerge
            .get_changes(&[])
            .iter()
            .map(|change| change.raw_bytes().to_vec())
            .collect(),
    }
}

/// The sync messages in `sent` about `doc`, decoded.
fn syncs_about(sent: &[Transmit], doc: DocumentId) -> Vec<automerge::sync::Message> {
    sent.iter()
        .filter_map(|transmit| match &transmit.message {
            Message::Sync {
                doc: about,
                message,
            } if *about == doc => Some(automerge::sync::Message::decode(message).unwrap()),
            _ => None,
        })
        .collect()
}

#[test]
fn naming_documents_stores_none_and_keeps_at_most_the_cap_in_memory() {
    let store = MemStore::new();
    let mut replica = open(&store, 100);
    // One reconciliation message naming a full bucket of documents this
    // node has never seen.
    let bucket = 7;
    let entries: Vec<(DocumentId, u64)> = (0..MAX_DIGEST_LEAVES as u32)
        .map(|n| (id_in_bucket(bucket, n), u64::from(n)))
        .collect();
    assert!(entries.iter().all(|(doc, _)| digest_bucket(doc) == bucket));
    replica
        .handle_message(
            NOW,
            PEER,
            Message::DigestLeaves {
                bucket,
                after: None,
                entries: entries.clone(),
                through_end: true,
            },
        )
        .unwrap();
    replica.flush_now(NOW).unwrap();
    replica.check_invariants().unwrap();
    assert!(held(&replica).is_empty(), "naming a document created it");
    assert_eq!(replica.digest_root().unwrap().1, 0);
    let reopened = Replica::open(Config::new(ME), Box::new(store.clone()), NOW).unwrap();
    assert!(
        reopened.document_ids().unwrap().is_empty(),
        "nothing stored"
    );
    // Those within the cap are synced from an empty copy in memory (which
    // asks the peer for them); the rest wait for a later round.
    let sent = drain(&mut replica);
    let asked = entries
        .iter()
        .filter(|(doc, _)| !syncs_about(&sent, *doc).is_empty())
        .count();
    assert_eq!(asked, 100);
    assert_eq!(replica.cached_document_ids().count(), 100);
    let deferred = replica.metrics().documents_deferred;
    assert_eq!(deferred, MAX_DIGEST_LEAVES as u64 - 100);
    // The peer goes away without sending any: they are dropped.
    replica.handle_peer_down(NOW, PEER);
    replica.check_invariants().unwrap();
    assert_eq!(replica.cached_document_ids().count(), 0);
}

#[test]
fn a_named_document_is_stored_once_its_content_arrives() {
    let store = MemStore::new();
    let mut replica = open(&store, 10);
    let doc = id_in_bucket(9, 1);
    let mut peer_doc = peer_document(5);
    let mut state = automerge::sync::State::new();
    let hello = peer_doc.generate_sync_message(&mut state).unwrap();
    assert!(
        hello.changes.is_empty(),
        "a first sync message only names it"
    );
    let sync = |message: automerge::sync::Message| Message::Sync {
        doc,
        message: message.encode(),
    };
    replica.handle_message(NOW, PEER, sync(hello)).unwrap();
    replica.flush_now(NOW).unwrap();
    assert!(held(&replica).is_empty());
    let answer = syncs_about(&drain(&mut replica), doc);
    assert_eq!(answer.len(), 1, "the sync message is answered");
    assert!(answer[0].heads.is_empty(), "from an empty copy");

    // The answer makes the peer send the content, which is stored.
    peer_doc
        .receive_sync_message(&mut state, answer[0].clone())
        .unwrap();
    let content = peer_doc.generate_sync_message(&mut state).unwrap();
    assert!(!content.changes.is_empty());
    replica.handle_message(NOW, PEER, sync(content)).unwrap();
    replica.check_invariants().unwrap();
    replica.flush_now(NOW).unwrap();
    assert_eq!(held(&replica), vec![doc]);
    let reopened = Replica::open(Config::new(ME), Box::new(store.clone()), NOW).unwrap();
    assert_eq!(reopened.heads(doc).unwrap(), peer_doc.get_heads());
    assert_eq!(reopened.digest_root().unwrap().1, 1);
}

#[test]
fn a_peer_at_its_cap_waits_until_its_new_documents_are_stored() {
    let store = MemStore::new();
    let mut replica = open(&store, 3);
    let docs: Vec<(DocumentId, Automerge)> = (0..5u8)
        .map(|n| (id_in_bucket(1, u32::from(n)), peer_document(10 + n)))
        .collect();
    for (doc, automerge) in &docs {
        replica
            .handle_message(NOW, PEER, push_of(*doc, automerge))
            .unwrap();
    }
    assert_eq!(held(&replica).len(), 3);
    assert_eq!(replica.metrics().documents_deferred, 2);
    // Another peer has a cap of its own.
    let (other, other_doc) = (id_in_bucket(2, 0), peer_document(30));
    replica
        .handle_message(NOW, OTHER_PEER, push_of(other, &other_doc))
        .unwrap();
    assert_eq!(held(&replica).len(), 4);
    // A document held takes the peer's changes at any time.
    let mut more = docs[0].1.clone();
    let mut tx = more.transaction();
    tx.put(ROOT, "more", 1).unwrap();
    tx.commit();
    replica
        .handle_message(NOW, PEER, push_of(docs[0].0, &more))
        .unwrap();
    assert_eq!(replica.heads(docs[0].0).unwrap(), more.get_heads());
    // Once they are stored, the peer may bring more.
    replica.flush_now(NOW).unwrap();
    for (doc, automerge) in &docs[3..] {
        replica
            .handle_message(NOW, PEER, push_of(*doc, automerge))
            .unwrap();
    }
    replica.flush_now(NOW).unwrap();
    assert_eq!(held(&replica).len(), 6);
    for (doc, automerge) in &docs[1..] {
        assert_eq!(replica.heads(*doc).unwrap(), automerge.get_heads());
    }
}

#[test]
fn content_that_is_refused_creates_nothing() {
    let store = MemStore::new();
    let mut replica = open(&store, 10);
    let doc = id_in_bucket(3, 0);
    let refused = replica.handle_message(
        NOW,
        PEER,
        Message::Changes {
            doc,
            changes: vec![b"not an automerge change".to_vec()],
        },
    );
    assert!(refused.is_err());
    replica.flush_now(NOW).unwrap();
    assert!(held(&replica).is_empty());
    assert_eq!(replica.cached_document_ids().count(), 0);
}

#[test]
fn documents_with_no_change_cost_nothing_at_rest_and_travel_with_their_first() {
    let mut cluster = Cluster::new(3, 12);
    let mut empty = Vec::new();
    for i in 0..20 {
        let doc = cluster.create_document(1);
        if i % 2 == 0 {
            empty.push(doc);
        } else {
            cluster.change(1, doc, |tx| tx.put(ROOT, "n", i64::from(i)));
        }
    }
    cluster.run_for(Duration::from_secs(3));
    let totals = |cluster: &Cluster| {
        (0..3).fold((0, 0), |(rounds, syncs), n| {
            let m = cluster.replica(n).metrics();
            (rounds + m.anti_entropy_rounds, syncs + m.sync_messages_sent)
        })
    };
    let (rounds_before, syncs_before) = totals(&cluster);
    let messages_before = cluster.traffic().messages;
    cluster.run_for(Duration::from_secs(10));
    let (rounds, syncs) = totals(&cluster);
    let rounds = rounds - rounds_before;
    assert!(rounds >= 20, "only {rounds} rounds");
    assert_eq!(syncs, syncs_before, "nothing to sync");
    assert_eq!(cluster.traffic().messages - messages_before, rounds);
    for node in 0..3 {
        assert_eq!(cluster.replica(node).metrics().documents_held, 10);
    }
    // Node 2 restarts and no longer holds the empty ones at all; the first
    // change of one brings it there.
    cluster.crash(2);
    cluster.restart(2);
    cluster.run_for(Duration::from_secs(3));
    assert!(cluster.replica(2).heads(empty[0]).is_err());
    cluster.change(1, empty[0], |tx| tx.put(ROOT, "first", 1_i64));
    cluster
        .run_until_converged(Duration::from_secs(10))
        .expect("converges");
    let heads = cluster.replica(1).heads(empty[0]).unwrap();
    for node in [0, 2] {
        assert_eq!(cluster.replica(node).heads(empty[0]).unwrap(), heads);
        let read = cluster.replica(node).read_document(empty[0]).unwrap();
        assert_eq!(
            read.get(ROOT, "first").unwrap().map(|(v, _)| v.as_i64()),
            Some(Some(1))
        );
    }
}
