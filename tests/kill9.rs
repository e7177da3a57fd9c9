//! Crash safety from outside: three real `murmur` processes under HTTP
//! write load, a random one killed with SIGKILL at random moments and
//! restarted. Every write acknowledged `durable` must be on every node
//! exactly once in the end, the stores must reopen, and the nodes must
//! converge.
//!
//! CI runs 10 kills; `MURMUR_KILLS=100 cargo test --release -p murmur-node
//! --test kill9 -- --nocapture` runs more and prints the counts.
//! `MURMUR_KILL_SEED` seeds the kill schedule (the writers race the kills,
//! so a run is not replayed exactly).

mod process;

use std::time::Duration;

use process::checks::{check_items, create_document, wait_converged, wait_meshed, writer, Ledger};
use process::{free_tcp_addr, free_udp_addr, init, Api, NodeProcess};
use rand::{Rng, SeedableRng};

const NODES: usize = 3;

/// Three data directories whose configs name each other, on fixed ports
/// (a restarted node must come back where its peers dial it).
fn configure(dirs: &[tempfile::TempDir]) -> Vec<std::path::PathBuf> {
    let quic: Vec<String> = dirs.iter().map(|_| free_udp_addr()).collect();
    let http: Vec<String> = dirs.iter().map(|_| free_tcp_addr()).collect();
    let ids: Vec<String> = dirs.iter().map(|dir| init(dir.path(), &[])).collect();
    for (i, dir) in dirs.iter().enumerate() {
        let mut args = vec!["--force", "--listen", &quic[i], "--http", &http[i]];
        let peers: Vec<String> = (0..dirs.len())
            .filter(|&j| j != i)
            .map(|j| format!("{}@{}", ids[j], quic[j]))
            .collect();
        for peer in &peers {
            args.extend(["--peer", peer.as_str()]);
        }
        init(dir.path(), &args);
    }
    dirs.iter()
        .map(|dir| dir.path().join("config.toml"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_write_load_loses_and_doubles_no_durable_write() {
    let kills: usize = std::env::var("MURMUR_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("MURMUR_KILL_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!(
        "kill9: {kills} kills, seed {seed} (MURMUR_KILL_SEED={seed} seeds the same kill schedule)"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dirs: Vec<tempfile::TempDir> = (0..NODES).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs = configure(&dirs);
    let mut nodes: Vec<NodeProcess> = configs.iter().map(|c| NodeProcess::start(c)).collect();
    // The API addresses stay the same across restarts (fixed ports).
    let apis: Vec<Api> = nodes.iter().map(NodeProcess::api).collect();
    wait_meshed(&apis).await;
    let doc = create_document(&apis).await;

    // Writers run all along; the killer strikes at random moments, so
    // writes are in flight when a node dies.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let writers: Vec<_> = (0..3)
        .map(|id| {
            tokio::spawn(writer(
                format!("w{id}"),
                apis.clone(),
                doc.clone(),
                seed ^ id as u64,
                stopped.clone(),
            ))
        })
        .collect();
    for kill in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..800))).await;
        let victim = rng.gen_range(0..NODES);
        nodes[victim].kill();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..400))).await;
        nodes[victim] = NodeProcess::start(&configs[victim]);
        println!("kill {}: node {victim}", kill + 1);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send_replace(true);
    let mut ledger = Ledger::default();
    for writer in writers {
        ledger.absorb(writer.await.unwrap());
    }
    let written = ledger.written();

    // Converge: every node reads the same heads, items and counter. Then
    // set-full: every acknowledged item is there exactly once, nothing is
    // there that was never written, and the counter matches the items.
    let replica = wait_converged(&apis, &doc).await;
    let kept_unknown = check_items(&replica, &ledger);
    println!(
        "kill9: {kills} kills, {written} writes: {} acked durable (all present once), {} unknown ({kept_unknown} of them kept), {} refused; converged",
        ledger.acked.len(),
        ledger.unknown.len(),
        ledger.refused
    );
    assert!(
        !ledger.acked.is_empty(),
        "no write was acknowledged: nothing was tested"
    );

    // The stores close cleanly.
    for node in nodes {
        assert!(node.terminate().success());
    }
}
