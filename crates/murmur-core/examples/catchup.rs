//! How much it costs to bring a replica that missed 1,000 documents x 100
//! changes up to date, through the deterministic test driver, against the
//! bare Automerge sync protocol run document by document.
//!
//! `cargo run --release -p murmur-core --example catchup [DOCS] [CHANGES]`

use std::time::{Duration, Instant};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT};
use murmur_core::testkit::Cluster;

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let docs = args.next().unwrap_or(1000);
    let changes = args.next().unwrap_or(100);

    let mut cluster = Cluster::new(2, 1);
    cluster.isolate(1);
    let ids: Vec<_> = (0..docs).map(|_| cluster.create_document(0)).collect();
    for round in 0..changes {
        for id in &ids {
            cluster.change(0, *id, |tx| {
                tx.put(ROOT, format!("k{}", round % 10), round as i64)
            });
        }
    }
    cluster.run_for(Duration::from_millis(10));
    let before = cluster.traffic();
    let started = Instant::now();
    cluster.heal();
    let virtual_time = cluster
        .run_until_converged(Duration::from_secs(600))
        .expect("the replica catches up");
    let wall = started.elapsed();
    let traffic = cluster.traffic();
    let (messages, bytes) = (
        traffic.messages - before.messages,
        traffic.bytes - before.bytes,
    );

    // Baseline: the same documents synced one by one with bare Automerge
    // (fresh sync states, as a peer with nothing would).
    let mut sources: Vec<Automerge> = ids
        .iter()
        .map(|id| {
            cluster
                .replica(0)
                .cached_document(*id)
                .expect("held")
                .clone()
        })
        .collect();
    let started = Instant::now();
    let (mut bare_messages, mut bare_bytes) = (0u64, 0u64);
    for source in &mut sources {
        let (m, b) = bare_sync(source);
        bare_messages += m;
        bare_bytes += b;
    }
    let bare_wall = started.elapsed();

    println!(
        "catch-up of {docs} documents x {changes} changes ({} changes)",
        docs * changes
    );
    println!("| | messages | bytes | wall time |");
    println!("|---|---:|---:|---:|");
    println!(
        "| murmur (test driver) | {messages} | {bytes} | {:.0} ms |",
        wall.as_secs_f64() * 1e3
    );
    println!(
        "| bare automerge sync | {bare_messages} | {bare_bytes} | {:.0} ms |",
        bare_wall.as_secs_f64() * 1e3
    );
    println!(
        "ratio murmur/bare: bytes {:.2}, time {:.2}; virtual time to converge {} ms",
        bytes as f64 / bare_bytes as f64,
        wall.as_secs_f64() / bare_wall.as_secs_f64(),
        virtual_time.as_millis()
    );
}

/// Syncs `source` into an empty document; returns messages and bytes.
fn bare_sync(source: &mut Automerge) -> (u64, u64) {
    let mut target = Automerge::new();
    let (mut a, mut b) = (sync::State::new(), sync::State::new());
    let (mut messages, mut bytes) = (0, 0);
    loop {
        let forward = deliver(source, &mut a, &mut target, &mut b);
        let back = deliver(&mut target, &mut b, source, &mut a);
        for sent in [forward, back].into_iter().flatten() {
            (messages, bytes) = (messages + 1, bytes + sent);
        }
        if forward.is_none() && back.is_none() {
            return (messages, bytes);
        }
    }
}

/// Sends `from`'s next sync message (if any) through its encoding to `to`;
/// returns its size.
fn deliver(
    from: &mut Automerge,
    from_state: &mut sync::State,
    to: &mut Automerge,
    to_state: &mut sync::State,
) -> Option<u64> {
    let encoded = from.generate_sync_message(from_state)?.encode();
    let message = sync::Message::decode(&encoded).expect("decodes");
    to.receive_sync_message(to_state, message).expect("applies");
    Some(encoded.len() as u64)
}
