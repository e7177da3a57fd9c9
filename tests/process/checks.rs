//! The workload and the checkers of the real-process fault tests (kill -9,
//! network partitions), written once.
//!
//! The workload: writers insert unique items into the list `items` and
//! increment the counter `count` in the same change, acknowledged
//! `durable`, and keep a [`Ledger`] of what each write's answer says. The
//! checkers: the nodes converge to identical heads and content
//! ([`wait_converged`]); every acknowledged item is there exactly once,
//! nothing is there that was never written, and the counter equals the
//! items ([`check_items`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::json;

use super::{next_event, open, Api};

/// How long the nodes may take to connect or to converge (a bound against
/// hanging, not a performance target).
pub const PATIENCE: Duration = Duration::from_secs(60);
/// How long one write may take before its outcome counts as unknown.
const WRITE_PATIENCE: Duration = Duration::from_secs(10);
/// How often [`wait_converged`] reads the document on every node.
const POLL: Duration = Duration::from_millis(100);

/// What the writers learned of their writes: acknowledged durable,
/// refused, or unknown (no answer, or the node failed: it may or may not
/// have happened).
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// Items acknowledged `durable`.
    pub acked: Vec<String>,
    /// Items whose write may or may not have happened.
    pub unknown: Vec<String>,
    /// Writes refused (4xx): they did not happen.
    pub refused: usize,
}

impl Ledger {
    /// Adds what `other` learned.
    pub fn absorb(&mut self, other: Ledger) {
        self.acked.extend(other.acked);
        self.unknown.extend(other.unknown);
        self.refused += other.refused;
    }

    /// Writes attempted.
    pub fn written(&self) -> usize {
        self.acked.len() + self.unknown.len() + self.refused
    }
}

/// Creates the document on `apis[0]` with an empty `items` list and a
/// `count` counter, acknowledged once every other node holds it; returns
/// its id. Panics, saying who was connected, if that fails.
pub async fn create_document(apis: &[Api]) -> String {
    let created = apis[0].call("POST", "/docs", None).await.json();
    let doc = created["id"].as_str().expect("a document id").to_owned();
    let setup = json!({
        "ops": [{"op": "put", "path": ["items"], "value": []}, {"op": "put_counter", "path": ["count"]}],
        "ack": format!("replicated:{}", apis.len() - 1),
    })
    .to_string();
    let answer = apis[0]
        .call("POST", &format!("/docs/{doc}/changes"), Some(&setup))
        .await;
    if answer.status != 200 {
        let mut peers = Vec::new();
        for api in apis {
            peers.push(api.try_call("GET", "/peers", None).await.map(|a| a.body));
        }
        panic!("setup: {} {}; peers: {peers:?}", answer.status, answer.body);
    }
    doc
}

/// One write: the unique `item` inserted at the head of `items` and the
/// counter incremented, in one change acknowledged `durable`.
pub async fn write(api: &Api, doc: &str, item: &str, ledger: &mut Ledger) {
    let change = json!({
        "ops": [
            {"op": "insert", "path": ["items", 0], "value": item},
            {"op": "increment", "path": ["count"], "by": 1},
        ],
        "ack": "durable",
    })
    .to_string();
    let path = format!("/docs/{doc}/changes");
    match tokio::time::timeout(WRITE_PATIENCE, api.try_call("POST", &path, Some(&change))).await {
        Ok(Some(answer)) if answer.status == 200 => ledger.acked.push(item.to_owned()),
        // A dying node may answer 503 while it stops: the change may
        // have been made.
        Ok(Some(answer)) if answer.status >= 500 => ledger.unknown.push(item.to_owned()),
        Ok(Some(_)) => ledger.refused += 1,
        // The node died under the request, was down, or did not answer
        // in time.
        Ok(None) | Err(_) => ledger.unknown.push(item.to_owned()),
    }
}

/// A writer: writes to a random one of `apis` until `stop`, each write a
/// new item `NAME-N`.
pub async fn writer(
    name: String,
    apis: Vec<Api>,
    doc: String,
    seed: u64,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Ledger {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ledger = Ledger::default();
    let mut n = 0;
    while !*stop.borrow() {
        let api = &apis[rng.gen_range(0..apis.len())];
        write(api, &doc, &format!("{name}-{n}"), &mut ledger).await;
        n += 1;
    }
    ledger
}

/// The document as one node reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    /// The list `items`.
    pub items: Vec<String>,
    /// The counter `count`.
    pub count: i64,
    /// The document's heads.
    pub heads: serde_json::Value,
}

/// Reads the document on `api`; `None` if the node did not answer with
/// it.
pub async fn read(api: &Api, doc: &str) -> Option<Replica> {
    let answer = api.try_call("GET", &format!("/docs/{doc}"), None).await?;
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
    Some(Replica {
        items,
        count,
        heads: json["heads"].clone(),
    })
}

/// Waits until every node lists every other as connected; returns each
/// node's `peers` list.
pub async fn wait_meshed(apis: &[Api]) -> Vec<Vec<serde_json::Value>> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut peers = Vec::new();
        for api in apis {
            let answer = api.try_call("GET", "/peers", None).await;
            let listed = answer.and_then(|answer| answer.json()["peers"].as_array().cloned());
            peers.push(listed.unwrap_or_default());
        }
        if peers.iter().all(|listed| listed.len() == apis.len() - 1) {
            return peers;
        }
        let connected: Vec<usize> = peers.iter().map(Vec::len).collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nodes never all connected: peers per node {connected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to [`PATIENCE`]) until every node reads the same heads,
/// items and counter; returns what they read.
pub async fn wait_converged(apis: &[Api], doc: &str) -> Replica {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut replicas = Vec::new();
        for api in apis {
            replicas.push(read(api, doc).await);
        }
        let all: Vec<&Replica> = replicas.iter().flatten().collect();
        if all.len() == apis.len() && all.windows(2).all(|pair| pair[0] == pair[1]) {
            return all[0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nodes did not converge: {replicas:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits (up to [`PATIENCE`]) until every node reports the same heads for
/// `doc`. It follows each node's event stream (`GET /docs/{id}/events`)
/// rather than reading the document over and over: a read costs the node
/// about 4 ms per 1,000 list items (release build), which would slow the
/// very convergence being timed.
pub async fn wait_identical_heads(apis: &[Api], doc: &str) {
    let (sender, mut reports) = tokio::sync::mpsc::channel(1024);
    let watchers = Watchers(
        apis.iter()
            .enumerate()
            .map(|(node, api)| {
                let watch = watch_heads(node, api.clone(), doc.to_owned(), sender.clone());
                tokio::spawn(watch)
            })
            .collect(),
    );
    drop(sender);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut heads: Vec<Option<serde_json::Value>> = vec![None; apis.len()];
    while !(heads.iter().all(Option::is_some) && heads.windows(2).all(|pair| pair[0] == pair[1])) {
        match tokio::time::timeout_at(deadline, reports.recv()).await {
            Ok(Some((node, now))) => heads[node] = Some(now),
            Ok(None) => panic!("the event streams ended; heads per node: {heads:?}"),
            Err(_) => panic!("the nodes did not reach identical heads: {heads:?}"),
        }
    }
    drop(watchers);
}

/// Tasks that end when this is dropped.
struct Watchers(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Watchers {
    fn drop(&mut self) {
        for watcher in &self.0 {
            watcher.abort();
        }
    }
}

/// Reports `node`'s heads for `doc` as its event stream tells them: those
/// of the `ready` event, then those after each change.
async fn watch_heads(
    node: usize,
    api: Api,
    doc: String,
    reports: tokio::sync::mpsc::Sender<(usize, serde_json::Value)>,
) {
    let url = format!("{}/docs/{doc}/events", api.url);
    let mut response = open("GET", &url, api.token.as_deref(), None).await;
    assert_eq!(response.status(), 200, "GET {url}");
    let mut buffer = String::new();
    loop {
        let event = next_event(response.body_mut(), &mut buffer, PATIENCE, |_| true).await;
        let heads = match event["event"].as_str() {
            Some("ready" | "change") => event["heads"].clone(),
            // The stream skipped changes: read the heads instead.
            Some("lagged") => match read(&api, &doc).await {
                Some(replica) => replica.heads,
                None => continue,
            },
            _ => continue,
        };
        if reports.send((node, heads)).await.is_err() {
            return;
        }
    }
}

/// Checks the converged `replica` against what the writers learned:
/// every acknowledged item is there exactly once, nothing is there that
/// was never written, and the counter (incremented in the same change as
/// each insert) equals the items. Returns how many of the unknown writes
/// happened.
pub fn check_items(replica: &Replica, ledger: &Ledger) -> usize {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for item in &replica.items {
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
    let acked: BTreeSet<&str> = ledger.acked.iter().map(String::as_str).collect();
    let unknown: BTreeSet<&str> = ledger.unknown.iter().map(String::as_str).collect();
    let invented: Vec<_> = seen
        .keys()
        .filter(|item| !acked.contains(*item) && !unknown.contains(*item))
        .collect();
    assert!(invented.is_empty(), "items nobody wrote: {invented:?}");
    assert_eq!(
        replica.count,
        replica.items.len() as i64,
        "the counter and the items disagree"
    );
    replica.items.len() - ledger.acked.len()
}
