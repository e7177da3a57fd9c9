//! Replicas converge: the engine driven by the deterministic test driver.

use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ObjType, ReadDoc, ROOT};
use murmur_core::testkit::Cluster;
use murmur_core::{AckLevel, DocumentId};

const LIMIT: Duration = Duration::from_secs(60);

fn counter_key(node: usize, i: usize) -> String {
    format!("n{node}-{i}")
}

/// A document created on node 0 and known to every node.
fn shared_document(cluster: &mut Cluster) -> DocumentId {
    let doc = cluster.create_document(0);
    converge(cluster);
    doc
}

fn converge(cluster: &mut Cluster) -> Duration {
    cluster
        .run_until_converged(LIMIT)
        .unwrap_or_else(|problem| panic!("did not converge: {problem}"))
}

/// Every node writes `writes` keys into `doc`, interleaved, with a little
/// network time between writes so that pushes cross in flight.
fn concurrent_writes(cluster: &mut Cluster, doc: DocumentId, writes: usize) {
    for i in 0..writes {
        for node in 0..cluster.len() {
            let key = counter_key(node, i);
            cluster.change(node, doc, |tx| tx.put(ROOT, key, i as i64));
            // Everyone also writes the same contended key.
            cluster.change(node, doc, |tx| tx.put(ROOT, "contended", node as i64));
        }
        cluster.run_for(Duration::from_millis(3));
    }
}

fn assert_has_every_key(cluster: &Cluster, doc: DocumentId, writes: usize) {
    for node in 0..cluster.len() {
        let document = cluster.replica(node).read_document(doc).unwrap();
        for writer in 0..cluster.len() {
            for i in 0..writes {
                let key = counter_key(writer, i);
                assert!(
                    document.get(ROOT, &key).unwrap().is_some(),
                    "node {node} lacks {key}"
                );
            }
        }
    }
}

#[test]
fn two_replicas_converge_under_concurrent_edits_to_one_document() {
    let mut cluster = Cluster::new(2, 1);
    let doc = shared_document(&mut cluster);
    concurrent_writes(&mut cluster, doc, 50);
    converge(&mut cluster);
    assert_has_every_key(&cluster, doc, 50);
}

#[test]
fn five_replicas_converge_under_concurrent_edits_to_same_and_different_documents() {
    let mut cluster = Cluster::new(5, 2);
    let shared = cluster.create_document(0);
    let own: Vec<DocumentId> = (0..5).map(|node| cluster.create_document(node)).collect();
    for round in 0..20 {
        for (node, doc) in own.iter().enumerate() {
            cluster.change(node, *doc, |tx| {
                tx.put(ROOT, format!("k{round}"), round as i64)
            });
        }
        cluster.run_for(Duration::from_millis(2));
    }
    // The shared document reaches the others before they write to it.
    converge(&mut cluster);
    concurrent_writes(&mut cluster, shared, 20);
    converge(&mut cluster);
    assert_has_every_key(&cluster, shared, 20);
    for (node, doc) in own.iter().enumerate() {
        for other in 0..5 {
            let document = cluster.replica(other).read_document(*doc).unwrap();
            assert_eq!(
                document.length(ROOT),
                20,
                "node {other} has all of node {node}'s document"
            );
        }
    }
}

#[test]
fn concurrent_text_edits_converge_to_the_same_text() {
    let mut cluster = Cluster::new(3, 3);
    let doc = cluster.create_document(0);
    cluster.change(0, doc, |tx| {
        tx.put_object(ROOT, "text", ObjType::Text).map(|_| ())
    });
    converge(&mut cluster);
    let text = cluster
        .replica(0)
        .read_document(doc)
        .unwrap()
        .get(ROOT, "text")
        .unwrap()
        .unwrap()
        .1;
    for round in 0..10 {
        for node in 0..3 {
            let text = text.clone();
            cluster.change(node, doc, |tx| {
                tx.splice_text(&text, 0, 0, &format!("{node}{round} "))
            });
        }
        cluster.run_for(Duration::from_millis(1));
    }
    converge(&mut cluster);
    let content: Vec<String> = (0..3)
        .map(|node| {
            cluster
                .replica(node)
                .read_document(doc)
                .unwrap()
                .text(&text)
                .unwrap()
        })
        .collect();
    assert_eq!(content[0].len(), 30 * 3);
    assert!(content.iter().all(|c| *c == content[0]));
}

#[test]
fn a_restarted_replica_catches_up_from_its_store_and_its_peers() {
    let mut cluster = Cluster::new(3, 4);
    let doc = shared_document(&mut cluster);
    concurrent_writes(&mut cluster, doc, 10);
    converge(&mut cluster);
    cluster.crash(2);
    concurrent_writes_on(&mut cluster, doc, &[0, 1], 30);
    cluster.restart(2);
    // Before any message: the restarted node has everything it flushed.
    assert_has_every_key_from(&cluster, 2, doc, 3, 10);
    converge(&mut cluster);
    assert_has_every_key_from(&cluster, 2, doc, 2, 30);
}

fn concurrent_writes_on(cluster: &mut Cluster, doc: DocumentId, nodes: &[usize], writes: usize) {
    for i in 0..writes {
        for &node in nodes {
            cluster.change(node, doc, |tx| {
                tx.put(ROOT, format!("late-{node}-{i}"), i as i64)
            });
        }
        cluster.run_for(Duration::from_millis(3));
    }
}

fn assert_has_every_key_from(
    cluster: &Cluster,
    node: usize,
    doc: DocumentId,
    writers: usize,
    writes: usize,
) {
    let document = cluster.replica(node).read_document(doc).unwrap();
    let count = (0..writers)
        .flat_map(|w| (0..writes).map(move |i| (w, i)))
        .filter(|(w, i)| {
            document.get(ROOT, counter_key(*w, *i)).unwrap().is_some()
                || document
                    .get(ROOT, format!("late-{w}-{i}"))
                    .unwrap()
                    .is_some()
        })
        .count();
    assert_eq!(count, writers * writes, "node {node} misses keys");
}

#[test]
fn durable_writes_survive_a_crash_and_applied_ones_are_acknowledged_first() {
    let mut cluster = Cluster::new(1, 5);
    let doc = cluster.create_document(0);
    let write = cluster.change(0, doc, |tx| tx.put(ROOT, "kept", 1_i64));
    assert_eq!(cluster.ack(0, write), Some(AckLevel::Applied));
    // The flush takes up to `Disk::flush_max` of simulated disk time.
    cluster.run_for(Duration::from_millis(5));
    assert_eq!(cluster.ack(0, write), Some(AckLevel::Durable));
    // A write that was never flushed is not acknowledged durable and is lost.
    let lost = cluster.change(0, doc, |tx| tx.put(ROOT, "lost", 1_i64));
    assert_eq!(cluster.ack(0, lost), Some(AckLevel::Applied));
    cluster.crash(0);
    cluster.restart(0);
    let document = cluster.replica(0).read_document(doc).unwrap();
    assert!(document.get(ROOT, "kept").unwrap().is_some());
    assert!(document.get(ROOT, "lost").unwrap().is_none());
}

#[test]
fn writes_arriving_during_a_flush_share_the_next_one() {
    let mut cluster = Cluster::new(1, 6);
    let doc = cluster.create_document(0);
    cluster.run_for(Duration::from_millis(5));
    let flushes_before = cluster.store(0).flush_count();
    // The first write starts a flush at once; the 99 that come while it is
    // in flight gather for the next: pipelined group commit.
    let writes: Vec<_> = (0..100)
        .map(|i| cluster.change(0, doc, |tx| tx.put(ROOT, format!("k{i}"), i as i64)))
        .collect();
    assert!(cluster.replica(0).flush_in_flight());
    assert_eq!(cluster.replica(0).writes_awaiting_flush(), 100);
    cluster.run_for(Duration::from_millis(10));
    assert_eq!(cluster.store(0).flush_count() - flushes_before, 2);
    assert!(writes
        .iter()
        .all(|w| cluster.ack(0, *w) == Some(AckLevel::Durable)));
}

/// Runs the same writes, made while every node is cut off, then heals on
/// the given network; returns the final heads of every document.
fn offline_writes_then_heal(loss_free_chaos: bool) -> Vec<Vec<automerge::ChangeHash>> {
    let mut cluster = Cluster::new(3, 7);
    for node in 0..3 {
        cluster.isolate(node);
    }
    let docs: Vec<DocumentId> = (0..3).map(|node| cluster.create_document(node)).collect();
    for i in 0..20 {
        for (node, doc) in docs.iter().enumerate() {
            cluster.change(node, *doc, |tx| tx.put(ROOT, format!("k{i}"), i as i64));
        }
    }
    if loss_free_chaos {
        cluster.network.duplicate = 0.5;
        cluster.network.latency_min = Duration::from_millis(1);
        cluster.network.latency_max = Duration::from_millis(200);
    }
    cluster.heal();
    converge(&mut cluster);
    docs.iter()
        .map(|doc| cluster.replica(0).heads(*doc).unwrap())
        .collect()
}

#[test]
fn duplicated_and_reordered_messages_change_nothing() {
    assert_eq!(
        offline_writes_then_heal(false),
        offline_writes_then_heal(true)
    );
}

#[test]
fn lost_messages_are_repaired_by_anti_entropy() {
    let mut cluster = Cluster::new(3, 8);
    cluster.network.loss = 0.3;
    let doc = shared_document(&mut cluster);
    concurrent_writes(&mut cluster, doc, 30);
    cluster.network.loss = 0.0;
    converge(&mut cluster);
    assert_has_every_key(&cluster, doc, 30);
}

#[test]
fn a_change_missing_its_dependencies_is_kept_and_completed() {
    let mut cluster = Cluster::new(2, 9);
    let doc = cluster.create_document(0);
    converge(&mut cluster);
    // Lose every message for a while: node 1 misses the first changes ...
    cluster.network.loss = 1.0;
    for i in 0..5 {
        cluster.change(0, doc, |tx| tx.put(ROOT, format!("early{i}"), i as i64));
    }
    cluster.run_for(Duration::from_millis(50));
    // ... then receives a push that depends on them.
    cluster.network.loss = 0.0;
    cluster.change(0, doc, |tx| tx.put(ROOT, "late", 1_i64));
    cluster.run_for(Duration::from_millis(100));
    let replica = cluster.replica(1);
    assert!(replica.metrics().missing_dependency_syncs > 0);
    let document = replica.read_document(doc).unwrap();
    assert!(document.get(ROOT, "late").unwrap().is_some());
    assert!(document.get(ROOT, "early0").unwrap().is_some());
}

#[test]
fn a_replica_offline_for_a_thousand_changes_catches_up() {
    let mut cluster = Cluster::new(3, 10);
    let doc = cluster.create_document(0);
    converge(&mut cluster);
    cluster.isolate(2);
    for i in 0..1000 {
        cluster.change(i % 2, doc, |tx| tx.put(ROOT, format!("k{i}"), i as i64));
        if i % 50 == 0 {
            cluster.run_for(Duration::from_millis(5));
        }
    }
    converge_partial(&mut cluster);
    cluster.heal();
    converge(&mut cluster);
    assert_eq!(
        cluster.replica(2).read_document(doc).unwrap().length(ROOT),
        1000
    );
}

/// Lets the connected part settle before a heal.
fn converge_partial(cluster: &mut Cluster) {
    cluster.run_for(Duration::from_secs(3));
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = |seed| {
        let mut cluster = Cluster::new(3, seed);
        let doc = shared_document(&mut cluster);
        cluster.network.loss = 0.1;
        cluster.network.duplicate = 0.1;
        concurrent_writes(&mut cluster, doc, 10);
        cluster.network.loss = 0.0;
        let took = converge(&mut cluster);
        (
            took,
            cluster.traffic(),
            cluster.replica(0).heads(doc).unwrap(),
        )
    };
    assert_eq!(run(11), run(11));
}
