//! Document-set reconciliation, lazy loading and the bounded cache.
//!
//! Anti-entropy first works out which documents differ, top-down through a
//! digest kept in the store; only those then sync. Documents load on first
//! use and cold ones leave memory.

use std::time::Duration;

use automerge::{transaction::Transactable, ReadDoc, ROOT};
use murmur_core::testkit::Cluster;
use murmur_core::{Config, DocumentId, Message, Replica, ReplicaError, Time};
use murmur_store::MemStore;
use murmur_wire::{DigestNode, NodeId};

fn converge(cluster: &mut Cluster) -> Duration {
    cluster
        .run_until_converged(Duration::from_secs(120))
        .unwrap_or_else(|problem| panic!("did not converge: {problem}"))
}

/// Creates `count` documents on `node`, one small change each, and lets
/// them replicate.
fn many_documents(cluster: &mut Cluster, node: usize, count: usize) -> Vec<DocumentId> {
    let mut docs = Vec::with_capacity(count);
    for i in 0..count {
        let doc = cluster.create_document(node);
        cluster.change(node, doc, |tx| tx.put(ROOT, "n", i as i64));
        docs.push(doc);
        if i % 100 == 99 {
            cluster.run_for(Duration::from_millis(20));
        }
    }
    converge(cluster);
    docs
}

#[test]
fn reconciliation_after_a_partition_finds_exactly_the_differing_documents() {
    // Step 1: two nodes share 2,000 documents.
    let mut cluster = Cluster::new(2, 11);
    let docs = many_documents(&mut cluster, 0, 2_000);

    // Step 2: apart, each side edits five documents of its own.
    cluster.partition(&[0], &[1]);
    let edited: Vec<DocumentId> = docs.iter().step_by(200).copied().collect();
    assert_eq!(edited.len(), 10);
    for (i, doc) in edited.iter().enumerate() {
        cluster.change(i % 2, *doc, |tx| tx.put(ROOT, "edited", i as i64));
    }
    cluster.run_for(Duration::from_millis(50));
    let reconciled_before: u64 = (0..2)
        .map(|n| cluster.replica(n).metrics().documents_reconciled)
        .sum();
    let before = cluster.traffic();

    // Step 3: heal; reconciliation finds the ten and nothing else.
    cluster.heal();
    converge(&mut cluster);
    let traffic = cluster.traffic();
    let (messages, bytes) = (
        traffic.messages - before.messages,
        traffic.bytes - before.bytes,
    );
    let reconciled: u64 = (0..2)
        .map(|n| cluster.replica(n).metrics().documents_reconciled)
        .sum::<u64>()
        - reconciled_before;
    // Each side reconciles each differing document (it found it itself).
    assert!(
        (10..=20).contains(&reconciled),
        "{reconciled} documents reconciled"
    );
    // What one side would send to exchange every document's heads.
    let naive_bytes = docs.len() as u64 * (16 + 32);
    eprintln!("reconciled {reconciled} documents in {messages} messages, {bytes} bytes (naive {naive_bytes})");
    assert!(messages < 100, "{messages} messages to reconcile");
    assert!(
        bytes * 4 < naive_bytes,
        "{bytes} bytes to reconcile; a per-document exchange is {naive_bytes}"
    );
    for (i, doc) in edited.iter().enumerate() {
        for node in 0..2 {
            let document = cluster.replica(node).read_document(*doc).unwrap();
            assert!(document.get(ROOT, "edited").unwrap().is_some(), "{i}");
        }
    }
}

#[test]
fn a_round_in_which_nothing_differs_costs_one_message_per_round() {
    let mut cluster = Cluster::new(3, 12);
    many_documents(&mut cluster, 1, 50);
    cluster.run_for(Duration::from_secs(3));
    let totals = |cluster: &Cluster| {
        (0..3).fold((0, 0, 0), |(rounds, digests, syncs), n| {
            let m = cluster.replica(n).metrics();
            (
                rounds + m.anti_entropy_rounds,
                digests + m.digest_messages_sent,
                syncs + m.sync_messages_sent,
            )
        })
    };
    let (rounds_before, digests_before, syncs_before) = totals(&cluster);
    let traffic_before = cluster.traffic();
    cluster.run_for(Duration::from_secs(10));
    let (rounds, digests, syncs) = totals(&cluster);
    let rounds = rounds - rounds_before;
    assert!(rounds >= 20, "only {rounds} rounds");
    assert_eq!(
        digests - digests_before,
        rounds,
        "one digest message per round"
    );
    assert_eq!(syncs, syncs_before, "nothing to sync");
    assert_eq!(cluster.traffic().messages - traffic_before.messages, rounds);
}

#[test]
fn a_restarted_node_loads_nothing_up_front_yet_converges() {
    let mut cluster = Cluster::new(2, 13);
    let docs = many_documents(&mut cluster, 0, 100);
    cluster.crash(1);
    for doc in docs.iter().take(5) {
        cluster.change(0, *doc, |tx| tx.put(ROOT, "late", 1_i64));
    }
    cluster.restart(1);
    assert_eq!(cluster.replica(1).metrics().documents_loaded, 0);
    assert_eq!(cluster.replica(1).cached_document_ids().count(), 0);
    // Yet every document is there to read and list.
    assert_eq!(cluster.replica(1).document_ids().unwrap().len(), 100);
    converge(&mut cluster);
    let loaded = cluster.replica(1).metrics().documents_loaded;
    assert!(loaded <= 10, "{loaded} documents loaded to catch up on 5");
    for doc in docs.iter().take(5) {
        let document = cluster.replica(1).read_document(*doc).unwrap();
        assert!(document.get(ROOT, "late").unwrap().is_some());
    }
}

#[test]
fn eviction_keeps_the_cache_under_its_bound_and_evicted_documents_reload() {
    // Room for about ten small documents.
    let bound = 10 * 21 * 1024;
    let mut cluster = Cluster::with_config(2, 14, |config| Config {
        max_cached_document_bytes: bound,
        ..config
    });
    let docs = many_documents(&mut cluster, 0, 300);
    cluster.run_for(Duration::from_secs(2));
    for node in 0..2 {
        let metrics = cluster.replica(node).metrics();
        assert!(
            metrics.cached_document_bytes <= bound as u64,
            "node {node}: {} bytes cached",
            metrics.cached_document_bytes
        );
        assert!(metrics.documents_evicted >= 250, "node {node}: {metrics:?}");
        assert!(cluster.replica(node).cached_document_ids().count() <= 10);
    }
    // An evicted document loads again, takes a change and replicates.
    let first = docs[0];
    assert!(
        cluster.replica(1).cached_document(first).is_err(),
        "evicted"
    );
    cluster.change(1, first, |tx| tx.put(ROOT, "again", 2_i64));
    converge(&mut cluster);
    for node in 0..2 {
        let document = cluster.replica(node).read_document(first).unwrap();
        assert!(document.get(ROOT, "again").unwrap().is_some());
        assert!(document.get(ROOT, "n").unwrap().is_some());
    }
}

#[test]
fn the_digest_matches_a_recomputation_after_crashes() {
    let mut cluster = Cluster::new(3, 15);
    let docs = many_documents(&mut cluster, 0, 60);
    for round in 0..6 {
        let node = round % 3;
        for (i, doc) in docs.iter().enumerate().skip(round).step_by(7) {
            cluster.change(node, *doc, |tx| tx.put(ROOT, "r", (round * 100 + i) as i64));
        }
        // Crash with some writes unflushed, keeping some batches.
        cluster.crash_keeping(node, round % 2);
        cluster
            .verify_digest(node)
            .unwrap_or_else(|problem| panic!("after crash {round}: {problem}"));
        cluster.restart(node);
        cluster.run_for(Duration::from_millis(200));
    }
    converge(&mut cluster);
    cluster.run_for(Duration::from_millis(100));
    for node in 0..3 {
        cluster
            .verify_digest(node)
            .unwrap_or_else(|problem| panic!("node {node}: {problem}"));
    }
}

#[test]
fn hostile_digest_messages_are_rejected() {
    let now = Time::from_millis(1_700_000_000_000);
    let (me, peer) = (NodeId([1; 32]), NodeId([2; 32]));
    let mut replica = Replica::open(Config::new(me), Box::new(MemStore::new()), now).unwrap();
    replica.handle_peer_up(now, peer);
    while replica.poll_transmit().is_some() {}
    let node = |level, prefix| DigestNode {
        level,
        prefix,
        xor: 1,
        count: 1,
    };
    let bad = [
        Message::DigestNodes {
            nodes: vec![node(5, 0)],
        },
        Message::DigestNodes {
            nodes: vec![node(2, 256)],
        },
        Message::DigestLeaves {
            bucket: 7,
            after: None,
            entries: vec![(DocumentId::from_bytes([9; 16]), 1)],
            through_end: true,
        },
    ];
    for message in bad {
        let result = replica.handle_message(now, peer, message);
        assert!(
            matches!(result, Err(ReplicaError::InvalidDigest { .. })),
            "{result:?}"
        );
    }
    assert!(replica.poll_transmit().is_none(), "nothing answered");
    // A valid node below the root is answered with our (empty) children.
    replica
        .handle_message(
            now,
            peer,
            Message::DigestNodes {
                nodes: vec![node(3, 0xfff)],
            },
        )
        .unwrap();
    match replica.poll_transmit().map(|t| t.message) {
        Some(Message::DigestNodes { nodes }) => assert_eq!(nodes.len(), 16),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_store_from_before_the_digest_gets_one_when_it_opens() {
    let now = Time::from_millis(1_700_000_000_000);
    let store = MemStore::new();
    let doc = {
        let mut replica =
            Replica::open(Config::new(NodeId([3; 32])), Box::new(store.clone()), now).unwrap();
        let doc = replica.create_document(now);
        replica
            .handle_local_change(now, doc, |tx| tx.put(ROOT, "x", 1_i64))
            .unwrap();
        replica.flush_now(now).unwrap();
        doc
    };
    // Take the digest away, as an older release would have left the store.
    let mut batch = murmur_store::WriteBatch::new();
    for (key, _) in murmur_store::Storage::scan_prefix(&store, b"h").unwrap() {
        batch.delete(key);
    }
    for (key, _) in murmur_store::Storage::scan_prefix(&store, b"t").unwrap() {
        batch.delete(key);
    }
    batch.delete(murmur_store::layout::node_key("digest"));
    murmur_store::Storage::apply(&store, batch).unwrap();
    assert!(murmur_core::testkit::verify_digest(&store).is_err());
    let replica =
        Replica::open(Config::new(NodeId([3; 32])), Box::new(store.clone()), now).unwrap();
    murmur_core::testkit::verify_digest(&store).unwrap();
    assert!(replica.heads_fingerprint(doc).unwrap().is_some());
}

/// Delivers messages between two replicas until both are quiet, flushing
/// as they go.
fn pump(a: &mut Replica, b: &mut Replica, now: Time) {
    let (id_a, id_b) = (a.node_id(), b.node_id());
    for _ in 0..1000 {
        let mut quiet = true;
        for side in 0..2 {
            let (from, to, from_id) = if side == 0 {
                (&mut *a, &mut *b, id_a)
            } else {
                (&mut *b, &mut *a, id_b)
            };
            from.handle_timeout(now);
            while from.poll_event().is_some() {}
            while let Some(transmit) = from.poll_transmit() {
                quiet = false;
                to.handle_message(now, from_id, transmit.message).unwrap();
            }
        }
        if quiet {
            return;
        }
    }
    panic!("the replicas never went quiet");
}

/// Gives `replica` the document `doc` (an id chosen by the test) with one
/// change, as if a third node had pushed it.
fn give_document(replica: &mut Replica, now: Time, doc: DocumentId, value: i64) {
    let third = NodeId([0xee; 32]);
    // Same actor and time on every call: the same change on both sides.
    let mut source = automerge::AutoCommit::new().with_actor(automerge::ActorId::from([9u8; 16]));
    source.put(ROOT, "v", value).unwrap();
    source.commit_with(automerge::transaction::CommitOptions::default().with_time(0));
    let changes = source
        .get_changes(&[])
        .into_iter()
        .map(|change| change.raw_bytes().to_vec())
        .collect();
    replica.handle_peer_up(now, third);
    replica
        .handle_message(now, third, Message::Changes { doc, changes })
        .unwrap();
    replica.handle_peer_down(now, third);
}

#[test]
fn a_bucket_sent_in_several_ranges_still_reconciles_every_document() {
    let now = Time::from_millis(1_700_000_000_000);
    // Three leaves per message, so a bucket of ten is four ranges.
    let config = |node| Config {
        max_digest_leaves: 3,
        ..Config::new(node)
    };
    let (id_a, id_b) = (NodeId([1; 32]), NodeId([2; 32]));
    let mut a = Replica::open(config(id_a), Box::new(MemStore::new()), now).unwrap();
    let mut b = Replica::open(config(id_b), Box::new(MemStore::new()), now).unwrap();
    // Every id in bucket 0x0707: ids 0..6 on A only, 6..8 on both, 8..16
    // on B only. The shared ones are equal, so only the others differ.
    let id = |i: u8| DocumentId::from_bytes([7, 7, i, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    for i in 0..8 {
        give_document(&mut a, now, id(i), i64::from(i));
    }
    for i in 6..16 {
        give_document(&mut b, now, id(i), i64::from(i));
    }
    a.flush_now(now).unwrap();
    b.flush_now(now).unwrap();
    assert_eq!(
        a.heads_fingerprint(id(6)).unwrap(),
        b.heads_fingerprint(id(6)).unwrap()
    );
    a.handle_peer_up(now, id_b);
    b.handle_peer_up(now, id_a);
    pump(&mut a, &mut b, now);
    let reconciled = a.metrics().documents_reconciled + b.metrics().documents_reconciled;
    assert_eq!(reconciled, 14, "exactly the documents one side lacked");
    for i in 0..16 {
        for replica in [&a, &b] {
            let document = replica.read_document(id(i)).unwrap();
            let (value, _) = document.get(ROOT, "v").unwrap().expect("replicated");
            assert_eq!(value.as_i64(), Some(i64::from(i)));
        }
    }
}
