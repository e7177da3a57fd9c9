//! `murmur sink sqlite`, end to end: a real node under write load, the
//! sink process killed with SIGKILL at 20 random moments and restarted;
//! at the end the SQLite table equals the node's documents exactly. A
//! sink whose cursor was trimmed from the feed takes a snapshot.
//!
//! `MURMUR_SINK_KILLS` sets the number of kills, `MURMUR_SINK_SEED` their
//! schedule (the writer races the kills, so a run is not replayed exactly).

mod process;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use process::{call, get_with, init, read_until, text, NodeProcess, MURMUR};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

fn start_sink(db: &Path, node: &NodeProcess, once: bool) -> Child {
    let mut command = Command::new(MURMUR);
    command
        .args([
            "sink",
            "sqlite",
            "--db",
            db.to_str().unwrap(),
            "--node",
            &node.url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if once {
        command.arg("--once");
    }
    command.spawn().expect("start the sink")
}

/// Every document the node holds: id -> (heads, content).
async fn node_documents(node: &NodeProcess) -> Vec<(String, Value, Value)> {
    let listed = call("GET", &node.at("/docs"), None, None).await.json();
    let mut docs = Vec::new();
    for id in listed["documents"].as_array().unwrap() {
        let id = id.as_str().unwrap();
        let read = call("GET", &node.at(&format!("/docs/{id}")), None, None)
            .await
            .json();
        docs.push((
            id.to_owned(),
            read["heads"].clone(),
            read["content"].clone(),
        ));
    }
    docs.sort_by(|a, b| a.0.cmp(&b.0));
    docs
}

/// Every row of the sink's table, and its cursor.
fn table(db: &Path) -> (Vec<(String, Value, Value)>, Option<i64>) {
    let db = rusqlite::Connection::open(db).unwrap();
    let mut statement = db
        .prepare("SELECT id, heads, content FROM documents ORDER BY id")
        .unwrap();
    let rows = statement
        .query_map([], |row| {
            let heads: String = row.get(1)?;
            let content: String = row.get(2)?;
            Ok((
                row.get::<_, String>(0)?,
                serde_json::from_str(&heads).unwrap(),
                serde_json::from_str(&content).unwrap(),
            ))
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let cursor = db
        .query_row("SELECT seq FROM murmur_sink", [], |row| row.get(0))
        .ok();
    (rows, cursor)
}

/// The feed's entries up to and including `last`.
async fn feed_upto(node: &NodeProcess, last: u64) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut since = 0;
    while since < last {
        let limit = (last - since).min(1000);
        let url = node.at(&format!("/feed?since={since}&follow=false&limit={limit}"));
        let response = get_with(&url, &[("accept", "application/x-ndjson")]).await;
        let mut body = response.into_body();
        let page = read_until(&mut body, Duration::from_secs(30), |_| false).await;
        let page: Vec<Value> = page
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(!page.is_empty(), "the feed ends before {last}");
        since = page.last().unwrap()["seq"].as_u64().unwrap();
        entries.extend(page);
    }
    entries
}

/// Every change `heads` descend from (themselves included), from the
/// document's history on the node.
async fn ancestors(node: &NodeProcess, doc: &str, heads: &Value) -> BTreeSet<String> {
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut offset = 0;
    loop {
        let url = node.at(&format!("/docs/{doc}/history?offset={offset}&limit=1000"));
        let page = call("GET", &url, None, None).await.json();
        for change in page["changes"].as_array().unwrap() {
            let hash = change["hash"].as_str().unwrap().to_owned();
            let of: Vec<String> = serde_json::from_value(change["deps"].clone()).unwrap();
            deps.insert(hash, of);
        }
        match page["next_offset"].as_u64() {
            Some(next) => offset = next,
            None => break,
        }
    }
    let mut seen = BTreeSet::new();
    let mut stack: Vec<String> = serde_json::from_value(heads.clone()).unwrap();
    while let Some(hash) = stack.pop() {
        if seen.insert(hash.clone()) {
            stack.extend(deps.get(&hash).cloned().unwrap_or_default());
        }
    }
    seen
}

/// What a crash of the sink may leave: for every feed entry up to its
/// cursor, the row of its document holds the entry's changes. (Nothing
/// past the cursor is promised; a row may be newer.)
async fn check_table_covers_cursor(db: &Path, node: &NodeProcess) -> usize {
    let (rows, cursor) = table(db);
    let Some(cursor) = cursor else {
        assert!(rows.is_empty(), "rows without a cursor");
        return 0;
    };
    let entries = feed_upto(node, cursor as u64).await;
    let rows: BTreeMap<String, Value> =
        rows.into_iter().map(|(id, heads, _)| (id, heads)).collect();
    let mut needed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in &entries {
        let changes: Vec<String> = serde_json::from_value(entry["changes"].clone()).unwrap();
        needed
            .entry(entry["doc"].as_str().unwrap().to_owned())
            .or_default()
            .extend(changes);
    }
    for (doc, changes) in &needed {
        let heads = rows
            .get(doc)
            .unwrap_or_else(|| panic!("cursor {cursor}: no row for {doc}"));
        let covered = ancestors(node, doc, heads).await;
        for change in changes {
            assert!(
                covered.contains(change),
                "cursor {cursor}: the row of {doc} lacks change {change}"
            );
        }
    }
    entries.len()
}

/// Runs the sink once to the end of the feed; its stderr.
fn catch_up(db: &Path, node: &NodeProcess) -> String {
    let output = start_sink(db, node, true).wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "sink --once: {}",
        text(&output.stderr)
    );
    text(&output.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_killed_at_random_moments_ends_with_exactly_the_nodes_documents() {
    let kills: usize = std::env::var("MURMUR_SINK_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("MURMUR_SINK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &[]);
    let node = NodeProcess::start(&dir.path().join("config.toml"));
    let db = dir.path().join("sink.sqlite");

    // A writer: ten documents, changed as fast as durable acks come.
    let api = node.api();
    let mut docs = Vec::new();
    for _ in 0..10 {
        docs.push(
            api.call("POST", "/docs", None).await.json()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn({
        let (api, docs) = (api.clone(), docs.clone());
        async move {
            let mut written = 0_u64;
            while !*stopped.borrow() {
                // Bursts of 40 changes to one document, then the next: a
                // row the sink lost is not repaired by a later write soon.
                let doc = &docs[((written / 40) % docs.len() as u64) as usize];
                let change = json!([{"op": "put", "path": ["n"], "value": written}]).to_string();
                let answer = api
                    .call("POST", &format!("/docs/{doc}/changes"), Some(&change))
                    .await;
                assert_eq!(answer.status, 200, "{}", answer.body);
                written += 1;
            }
            written
        }
    });

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut sink = start_sink(&db, &node, false);
    let mut checked = 0;
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..300))).await;
        sink.kill().unwrap(); // SIGKILL
        sink.wait().unwrap();
        checked = checked.max(check_table_covers_cursor(&db, &node).await);
        sink = start_sink(&db, &node, false);
    }
    assert!(
        checked > 0,
        "no kill found the sink past the start of the feed"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    sink.kill().unwrap();
    sink.wait().unwrap();
    stop.send(true).unwrap();
    let written = writer.await.unwrap();
    check_table_covers_cursor(&db, &node).await;
    assert!(written > 100, "the writer wrote {written} changes");

    // A deletion deletes the row.
    let gone = call(
        "DELETE",
        &node.at(&format!("/docs/{}", docs[3])),
        None,
        None,
    )
    .await;
    assert_eq!(gone.status, 200, "{}", gone.body);
    catch_up(&db, &node);
    let (rows, cursor) = table(&db);
    let expected = node_documents(&node).await;
    assert_eq!(rows.len(), 9);
    assert_eq!(rows, expected, "the table is the node's documents, exactly");
    let status = call("GET", &node.at("/status"), None, None).await.json();
    assert_eq!(cursor, Some(status["feed_end"].as_i64().unwrap() - 1));
    eprintln!(
        "{kills} kills, {written} writes, a deletion: the table equals the node's 9 documents"
    );
}

#[tokio::test]
async fn a_sink_whose_cursor_was_trimmed_takes_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &[]);
    let config = dir.path().join("config.toml");
    let settings = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("feed_max_entries = 3\n{settings}")).unwrap();
    let node = NodeProcess::start(&config);
    let api = node.api();
    let db = dir.path().join("sink.sqlite");
    let first = api.call("POST", "/docs", None).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let put = json!([{"op": "put", "path": ["n"], "value": 1}]).to_string();
    api.call("POST", &format!("/docs/{first}/changes"), Some(&put))
        .await;
    catch_up(&db, &node);
    // Many changes later, the sink's cursor is gone from the feed.
    let second = api.call("POST", "/docs", None).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for n in 0..10 {
        let put = json!([{"op": "put", "path": ["n"], "value": n}]).to_string();
        api.call("POST", &format!("/docs/{second}/changes"), Some(&put))
            .await;
    }
    let said = catch_up(&db, &node);
    assert!(said.contains("taking a snapshot"), "{said}");
    assert_eq!(table(&db).0, node_documents(&node).await);
}
