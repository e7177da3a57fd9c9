//! Acknowledgement levels: Applied, Durable, Replicated(k).

use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::ROOT;
use murmur_core::testkit::Cluster;
use murmur_core::AckLevel;

#[test]
fn a_write_is_acknowledged_replicated_once_each_peer_has_flushed_it() {
    let mut cluster = Cluster::new(3, 21);
    let doc = cluster.create_document(0);
    cluster
        .run_until_converged(Duration::from_secs(10))
        .unwrap();
    let write = cluster.change(0, doc, |tx| tx.put(ROOT, "x", 1_i64));
    assert_eq!(cluster.ack(0, write), Some(AckLevel::Applied));
    cluster.run_for(Duration::from_millis(100));
    assert_eq!(cluster.ack(0, write), Some(AckLevel::Replicated(2)));
}

#[test]
fn a_write_is_not_acknowledged_replicated_while_its_peers_are_cut_off() {
    let mut cluster = Cluster::new(3, 22);
    let doc = cluster.create_document(0);
    cluster
        .run_until_converged(Duration::from_secs(10))
        .unwrap();
    cluster.partition(&[0], &[2]);
    let write = cluster.change(0, doc, |tx| tx.put(ROOT, "x", 1_i64));
    cluster.run_for(Duration::from_millis(100));
    // Node 1 holds it; node 2 cannot (and node 1 does not forward pushes).
    assert_eq!(cluster.ack(0, write), Some(AckLevel::Replicated(1)));
    cluster.heal();
    cluster
        .run_until_converged(Duration::from_secs(10))
        .unwrap();
    cluster.run_for(Duration::from_millis(100));
    assert_eq!(cluster.ack(0, write), Some(AckLevel::Replicated(2)));
}

/// A cluster of `nodes` sharing a document, in which node 0 wrote to it
/// 100 ms ago while the direction `blocked` (from, to) dropped everything.
fn written_while_blocked(
    nodes: usize,
    seed: u64,
    blocked: (usize, usize),
) -> (Cluster, murmur_core::WriteId) {
    let mut cluster = Cluster::new(nodes, seed);
    let doc = cluster.create_document(0);
    cluster
        .run_until_converged(Duration::from_secs(10))
        .unwrap();
    cluster.block(blocked.0, blocked.1);
    let write = cluster.change(0, doc, |tx| tx.put(ROOT, "x", 1_i64));
    cluster.run_for(Duration::from_millis(100));
    (cluster, write)
}

#[test]
fn a_heads_report_lost_with_its_connection_is_asked_for_again_on_reconnect() {
    // Node 1 takes the write and flushes it, but its report back is lost,
    // as with a connection that closes (replaced, timed out) before it
    // delivered it.
    let (mut cluster, write) = written_while_blocked(2, 23, (1, 0));
    assert_eq!(cluster.ack(0, write), Some(AckLevel::Durable));
    // Both already hold the same heads: nothing syncs after the reconnect,
    // so only a report sent again can count node 1's copy.
    cluster.partition(&[0], &[1]);
    cluster.run_for(Duration::from_millis(100));
    cluster.heal();
    cluster.run_for(Duration::from_millis(500));
    assert_eq!(cluster.ack(0, write), Some(AckLevel::Replicated(1)));
}

#[test]
fn a_copy_that_arrived_through_another_peer_counts_for_the_writer() {
    // Nothing from node 0 reaches node 1 directly: node 1 gets the write
    // only from node 2, by anti-entropy, and must still tell node 0.
    let (mut cluster, write) = written_while_blocked(3, 24, (0, 1));
    assert_eq!(cluster.ack(0, write), Some(AckLevel::Replicated(1)));
    cluster.run_for(Duration::from_secs(30));
    assert_eq!(cluster.ack(0, write), Some(AckLevel::Replicated(2)));
}
