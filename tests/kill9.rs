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

use std::collections::BTreeMap;
use std::time::Duration;

use process::{call, free_tcp_addr, free_udp_addr, init, try_call, NodeProcess};
use rand::{Rng, SeedableRng};
use serde_json::json;

const NODES: usize = 3;
/// How long the nodes may take to converge after the last kill (a bound
/// against hanging, not a performance target).
const PATIENCE: Duration = Duration::from_secs(60);

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

/// What the writer learned of each write: acknowledged durable, refused,
/// or unknown (the connection broke: it may or may not have happened).
#[derive(Debug, Default)]
struct Ledger {
    acked: Vec<String>,
    unknown: Vec<String>,
    refused: usize,
}

/// One write: a unique item inserted at the head of `items` and the
/// counter incremented, in one change acknowledged `durable`.
async fn write(url: &str, doc: &str, item: &str, ledger: &mut Ledger) {
    let change = json!({
        "ops": [
            {"op": "insert", "path": ["items", 0], "value": item},
            {"op": "increment", "path": ["count"], "by": 1},
        ],
        "ack": "durable",
    })
    .to_string();
    let url = format!("{url}/docs/{doc}/changes");
    match tokio::time::timeout(
        Duration::from_secs(10),
        try_call("POST", &url, Some(&change)),
    )
    .await
    {
        Ok(Some(answer)) if answer.status == 200 => ledger.acked.push(item.to_owned()),
        // A dying node may answer 503 while it stops: the change may
        // have been made.
        Ok(Some(answer)) if answer.status >= 500 => ledger.unknown.push(item.to_owned()),
        Ok(Some(_)) => ledger.refused += 1,
        // The node died under the request, or was down.
        Ok(None) | Err(_) => ledger.unknown.push(item.to_owned()),
    }
}

/// A writer: writes to random nodes until `stop`, each write a new item.
async fn writer(
    id: usize,
    urls: Vec<String>,
    doc: String,
    seed: u64,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Ledger {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ledger = Ledger::default();
    let mut n = 0;
    while !*stop.borrow() {
        let url = &urls[rng.gen_range(0..urls.len())];
        write(url, &doc, &format!("w{id}-{n}"), &mut ledger).await;
        n += 1;
    }
    ledger
}

/// Reads the document on `node`: its items and counter, and its heads.
async fn read(node: &NodeProcess, doc: &str) -> Option<(Vec<String>, i64, serde_json::Value)> {
    let answer = try_call("GET", &node.at(&format!("/docs/{doc}")), None).await?;
    if answer.status != 200 {
        return None;
    }
    let json = answer.json();
    let content = &json["content"];
    let items = content["items"]
        .as_array()?
        .iter()
        .map(|item| item.as_str().unwrap_or_default().to_owned())
        .collect();
    let count = content["count"].as_i64()?;
    Some((items, count, json["heads"].clone()))
}

/// Waits until every node lists every other as connected.
async fn wait_meshed(nodes: &[NodeProcess]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut connected = Vec::new();
        for node in nodes {
            let peers = try_call("GET", &node.at("/peers"), None).await;
            let count = peers.map_or(0, |answer| {
                answer.json()["peers"].as_array().map_or(0, Vec::len)
            });
            connected.push(count);
        }
        if connected.iter().all(|&count| count == nodes.len() - 1) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nodes never all connected: peers per node {connected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    wait_meshed(&nodes).await;
    let created = call("POST", &nodes[0].at("/docs"), None, None).await.json();
    let doc = created["id"].as_str().unwrap().to_owned();
    let setup = json!({
        "ops": [{"op": "put", "path": ["items"], "value": []}, {"op": "put_counter", "path": ["count"]}],
        "ack": "replicated:2",
    })
    .to_string();
    let answer = call(
        "POST",
        &nodes[0].at(&format!("/docs/{doc}/changes")),
        None,
        Some(&setup),
    )
    .await;
    if answer.status != 200 {
        let mut peers = Vec::new();
        for node in &nodes {
            peers.push(
                try_call("GET", &node.at("/peers"), None)
                    .await
                    .map(|a| a.body),
            );
        }
        panic!("setup: {} {}; peers: {peers:?}", answer.status, answer.body);
    }

    // Writers run all along; the killer strikes at random moments, so
    // writes are in flight when a node dies.
    let urls: Vec<String> = nodes.iter().map(|node| node.url.clone()).collect();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let writers: Vec<_> = (0..3)
        .map(|id| {
            tokio::spawn(writer(
                id,
                urls.clone(),
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
        let done = writer.await.unwrap();
        ledger.acked.extend(done.acked);
        ledger.unknown.extend(done.unknown);
        ledger.refused += done.refused;
    }
    let written = ledger.acked.len() + ledger.unknown.len() + ledger.refused;

    // Converge: every node reads the same heads, items and counter.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let states = loop {
        let mut states = Vec::new();
        for node in &nodes {
            states.push(read(node, &doc).await);
        }
        let all: Vec<_> = states.iter().flatten().collect();
        if all.len() == NODES && all.windows(2).all(|pair| pair[0] == pair[1]) {
            break states;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nodes did not converge: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (items, count, _) = states[0].clone().unwrap();

    // Set-full: every acknowledged item is there exactly once; nothing is
    // there that was never written, or twice.
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for item in &items {
        *seen.entry(item.as_str()).or_default() += 1;
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "items present more than once: {doubled:?}"
    );
    let lost: Vec<_> = ledger
        .acked
        .iter()
        .filter(|item| !seen.contains_key(item.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged durable, then lost: {lost:?}");
    let unknown: std::collections::BTreeSet<&str> =
        ledger.unknown.iter().map(String::as_str).collect();
    let acked: std::collections::BTreeSet<&str> = ledger.acked.iter().map(String::as_str).collect();
    let invented: Vec<_> = seen
        .keys()
        .filter(|item| !acked.contains(*item) && !unknown.contains(*item))
        .collect();
    assert!(invented.is_empty(), "items nobody wrote: {invented:?}");
    // Counter: one increment per item, in the same change.
    assert_eq!(
        count,
        items.len() as i64,
        "the counter and the items disagree"
    );
    let kept_unknown = items.len() - ledger.acked.len();
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
