//! The simulated world's own faults, on the real engine: clock jumps,
//! pauses, one-way partitions and connections that close under a message.

use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ReadDoc, ROOT};
use murmur_core::testkit::{Cluster, DropReason, WorldEvent};
use murmur_core::{AckLevel, DocumentId};

fn shared_document(cluster: &mut Cluster) -> DocumentId {
    let doc = cluster.create_document(0);
    cluster
        .run_until_converged(Duration::from_secs(10))
        .expect("the document spreads");
    doc
}

fn has_key(cluster: &Cluster, node: usize, doc: DocumentId, key: &str) -> bool {
    let document = cluster.replica(node).read_document(doc).expect("held");
    document.get(ROOT, key).expect("readable").is_some()
}

#[test]
fn after_a_clock_jump_back_an_hour_timers_still_fire_and_writes_become_durable() {
    let mut cluster = Cluster::with_config(3, 1, |mut config| {
        config.group_commit_delay = Duration::from_millis(50);
        config
    });
    let doc = shared_document(&mut cluster);
    cluster.run_for(Duration::from_secs(2));
    // A write waits for its group commit; then the clock jumps back an
    // hour, which puts every armed deadline an hour away on that clock.
    let write = cluster.change(0, doc, |tx| tx.put(ROOT, "k", 1_i64));
    let rounds_before = cluster.replica(0).metrics().anti_entropy_rounds;
    cluster.set_clock_offset(0, -3_600_000);
    cluster.run_for(Duration::from_millis(200));
    assert!(
        matches!(
            cluster.ack(0, write),
            Some(AckLevel::Durable | AckLevel::Replicated(_))
        ),
        "the flush was re-armed: {:?}",
        cluster.ack(0, write)
    );
    cluster.run_for(Duration::from_secs(5));
    let rounds = cluster.replica(0).metrics().anti_entropy_rounds - rounds_before;
    assert!(
        rounds >= 3,
        "anti-entropy kept running: {rounds} rounds in 5 s"
    );
}

#[test]
fn after_a_clock_jump_forward_an_hour_timers_still_fire() {
    let mut cluster = Cluster::new(3, 2);
    let doc = shared_document(&mut cluster);
    cluster.set_clock_offset(1, 3_600_000);
    let rounds_before = cluster.replica(1).metrics().anti_entropy_rounds;
    let write = cluster.change(1, doc, |tx| tx.put(ROOT, "k", 1_i64));
    cluster.run_for(Duration::from_secs(5));
    assert!(matches!(
        cluster.ack(1, write),
        Some(AckLevel::Durable | AckLevel::Replicated(_))
    ));
    let rounds = cluster.replica(1).metrics().anti_entropy_rounds - rounds_before;
    assert!(
        (3..=8).contains(&rounds),
        "{rounds} rounds in 5 s: neither stalled nor spinning"
    );
}

#[test]
fn a_paused_node_hears_nothing_until_it_resumes_then_gets_the_backlog() {
    let mut cluster = Cluster::new(2, 3);
    let doc = shared_document(&mut cluster);
    cluster.pause(1);
    cluster.change(0, doc, |tx| tx.put(ROOT, "while-paused", 1_i64));
    cluster.run_for(Duration::from_secs(3));
    assert!(!has_key(&cluster, 1, doc, "while-paused"));
    assert!(cluster.in_flight() > 0, "messages wait for the paused node");
    cluster.resume(1);
    cluster
        .run_until_converged(Duration::from_secs(10))
        .expect("converges after the resume");
    assert!(has_key(&cluster, 1, doc, "while-paused"));
}

#[test]
fn a_one_way_partition_drops_one_direction_and_keeps_the_connection() {
    let mut cluster = Cluster::new(2, 4);
    let doc = shared_document(&mut cluster);
    cluster.block(0, 1);
    cluster.change(0, doc, |tx| tx.put(ROOT, "from-0", 1_i64));
    cluster.change(1, doc, |tx| tx.put(ROOT, "from-1", 1_i64));
    cluster.run_for(Duration::from_secs(3));
    assert!(!has_key(&cluster, 1, doc, "from-0"), "0 -> 1 is blocked");
    assert!(has_key(&cluster, 0, doc, "from-1"), "1 -> 0 works");
    assert_eq!(
        cluster.replica(1).connected_peers().count(),
        1,
        "the connection stays up"
    );
    cluster.heal();
    cluster
        .run_until_converged(Duration::from_secs(10))
        .expect("converges once unblocked");
    assert!(has_key(&cluster, 1, doc, "from-0"));
}

#[test]
fn a_message_in_flight_when_its_connection_closes_is_not_delivered_on_the_next() {
    let mut cluster = Cluster::new(2, 5);
    let doc = shared_document(&mut cluster);
    cluster.network.latency_min = Duration::from_millis(100);
    cluster.network.latency_max = Duration::from_millis(100);
    cluster.record_trace(true);
    cluster.change(0, doc, |tx| tx.put(ROOT, "k", 1_i64));
    cluster.run_for(Duration::from_millis(10));
    cluster.isolate(0);
    cluster.run_for(Duration::from_millis(10));
    cluster.heal();
    cluster.run_for(Duration::from_millis(200));
    let closed = cluster.take_trace().into_iter().any(|entry| {
        matches!(
            entry.event,
            WorldEvent::Dropped {
                reason: DropReason::Closed,
                ..
            }
        )
    });
    assert!(
        closed,
        "the push sent on the first connection was dropped with it"
    );
    cluster
        .run_until_converged(Duration::from_secs(10))
        .expect("the reconnect syncs it instead");
}
