//! The HTTP API of a real `murmur run` process (real QUIC endpoint, real
//! sled), end to end.

mod process;

use std::time::Duration;

use process::{call, get_with, init, next_event, open, read_until, NodeProcess};
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(20);

/// A node in a fresh directory, initialised with `extra` init flags.
fn node(extra: &[&str]) -> (tempfile::TempDir, NodeProcess) {
    let dir = tempfile::tempdir().expect("temp dir");
    init(dir.path(), extra);
    let node = NodeProcess::start(&dir.path().join("config.toml"));
    (dir, node)
}

async fn create_doc(node: &NodeProcess) -> String {
    let created = call("POST", &node.at("/docs"), None, None).await;
    assert_eq!(created.status, 201, "{}", created.body);
    created.json()["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn documents_are_created_changed_read_and_listed() {
    let (_dir, node) = node(&[]);
    let doc = create_doc(&node).await;

    let change = json!({
        "ops": [
            {"op": "put", "path": ["title"], "value": "Shopping"},
            {"op": "put", "path": ["items"], "value": ["milk"]},
            {"op": "insert", "path": ["items", 1], "value": {"what": "eggs", "n": 12}},
            {"op": "put_counter", "path": ["visits"], "value": 1},
            {"op": "increment", "path": ["visits"], "by": 2},
            {"op": "put_text", "path": ["notes"], "text": "hi"},
            {"op": "splice_text", "path": ["notes"], "pos": 2, "text": " there"},
        ],
        "ack": "durable",
    });
    let url = node.at(&format!("/docs/{doc}/changes"));
    let applied = call("POST", &url, None, Some(&change.to_string())).await;
    assert_eq!(applied.status, 200, "{}", applied.body);
    let applied = applied.json();
    let hash = applied["change"].as_str().expect("a change hash");
    assert_eq!(applied["heads"], json!([hash]));

    let read = call("GET", &node.at(&format!("/docs/{doc}")), None, None).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(
        read.json(),
        json!({
            "id": doc,
            "heads": [hash],
            "content": {
                "title": "Shopping",
                "items": ["milk", {"what": "eggs", "n": 12}],
                "visits": 3,
                "notes": "hi there",
            },
        })
    );

    let bare = json!([{"op": "delete", "path": ["title"]}]).to_string();
    let deleted = call("POST", &url, None, Some(&bare)).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);

    let listed = call("GET", &node.at("/docs"), None, None).await;
    assert_eq!(listed.json(), json!({"documents": [doc]}));
}

#[tokio::test]
async fn the_event_stream_delivers_each_change_with_its_patches() {
    let (_dir, node) = node(&[]);
    let doc = create_doc(&node).await;
    let response = open("GET", &node.at(&format!("/docs/{doc}/events")), None, None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = response.into_body();
    let mut buffer = String::new();
    let ready = next_event(&mut body, &mut buffer, PATIENCE, |_| true).await;
    assert_eq!(ready["event"], "ready");

    let change = json!({"ops": [{"op": "put", "path": ["greeting"], "value": "hello"}]});
    let url = node.at(&format!("/docs/{doc}/changes"));
    let applied = call("POST", &url, None, Some(&change.to_string())).await;
    assert_eq!(applied.status, 200, "{}", applied.body);

    let event = next_event(&mut body, &mut buffer, PATIENCE, |e| e["event"] == "change").await;
    assert_eq!(event["doc"], json!(doc));
    assert_eq!(event["origin"], "local");
    assert_eq!(event["heads"], applied.json()["heads"]);
    assert_eq!(
        event["patches"],
        json!([{"action": "put", "path": ["greeting"], "value": "hello"}])
    );
}

#[tokio::test]
async fn status_peers_and_prometheus_metrics_are_served() {
    let (_dir, node) = node(&[]);
    let doc = create_doc(&node).await;
    let change = json!([{"op": "put", "path": ["n"], "value": 1}]).to_string();
    call(
        "POST",
        &node.at(&format!("/docs/{doc}/changes")),
        None,
        Some(&change),
    )
    .await;

    let status = call("GET", &node.at("/status"), None, None).await.json();
    assert_eq!(status["node_id"], json!(node.node_id));
    assert_eq!(status["documents"], 1);
    assert_eq!(status["engine"]["local_changes"], 1);
    assert_eq!(status["engine"]["documents_held"], 1);
    assert!(status["engine"]["cached_document_bytes"].is_u64());
    assert!(status["traffic"]["bytes_out"].is_u64());
    assert_eq!(status["node"]["writes_awaiting_flush"], 0);
    let peers = call("GET", &node.at("/peers"), None, None).await.json();
    assert_eq!(peers, json!({"peers": []}));

    let metrics = call("GET", &node.at("/metrics"), None, None).await;
    assert_eq!(metrics.status, 200);
    for line in [
        "# TYPE murmur_documents gauge",
        "murmur_documents 1",
        "murmur_local_changes_total 1",
        "# TYPE murmur_changes_pushed_total counter",
        "# HELP murmur_bytes_sent_total",
        "murmur_bytes_received_total 0",
        "murmur_sync_messages_sent_total",
        "murmur_anti_entropy_rounds_total",
        "murmur_peers_connected 0",
        "murmur_writes_awaiting_flush 0",
        "murmur_outbox_messages",
        "# TYPE murmur_peer_rtt_seconds gauge",
        "murmur_messages_dropped_backpressure_total 0",
        "murmur_connection_messages_dropped_total 0",
        "# TYPE murmur_cached_documents gauge",
        "murmur_documents_loaded_total",
        "murmur_digest_messages_sent_total",
        "murmur_documents_reconciled_total",
    ] {
        assert!(
            metrics.body.contains(line),
            "no `{line}` in:\n{}",
            metrics.body
        );
    }
}

#[tokio::test]
async fn malformed_requests_get_a_4xx_that_says_what_is_wrong() {
    let (_dir, node) = node(&[]);
    let doc = create_doc(&node).await;
    let changes = node.at(&format!("/docs/{doc}/changes"));
    let big = format!("[\"{}\"]", "x".repeat(2 * 1024 * 1024));
    let unknown_doc = murmur::DocumentId::from([7; 16]).to_string(); // valid, but held by no node
    let cases: Vec<(&str, String, Option<&str>, u16, &str)> = vec![
        (
            "POST",
            changes.clone(),
            Some("{\"ops\": ["),
            400,
            "the body is not valid JSON",
        ),
        (
            "POST",
            changes.clone(),
            Some("[{\"op\": \"frob\", \"path\": []}]"),
            400,
            "ops[0]: unknown variant `frob`",
        ),
        (
            "POST",
            changes.clone(),
            Some("{\"ops\": [], \"ack\": \"durable\"}"),
            400,
            "ops is empty",
        ),
        (
            "POST",
            changes.clone(),
            Some("{\"ops\": [{\"op\": \"delete\", \"path\": [\"a\"]}], \"ack\": \"often\"}"),
            400,
            "ack `often`",
        ),
        (
            "POST",
            changes.clone(),
            Some("{\"ops\": [{\"op\": \"delete\", \"path\": [\"a\"]}]}"),
            422,
            "no key \\\"a\\\" in the map",
        ),
        (
            "POST",
            changes.clone(),
            Some("{\"ops\": [{\"op\": \"put\", \"path\": [\"a\", -1], \"value\": 1}]}"),
            400,
            "non-negative integer",
        ),
        (
            "POST",
            changes.clone(),
            Some("42"),
            400,
            "expected {\\\"ops\\\"",
        ),
        (
            "POST",
            changes.clone(),
            Some(big.as_str()),
            413,
            "larger than the limit",
        ),
        (
            "GET",
            node.at("/docs/not-an-id"),
            None,
            400,
            "`not-an-id` is not a document id",
        ),
        (
            "GET",
            node.at(&format!("/docs/{unknown_doc}")),
            None,
            404,
            "no document",
        ),
        (
            "POST",
            node.at(&format!("/docs/{unknown_doc}/changes")),
            Some("[{\"op\":\"put\",\"path\":[\"a\"],\"value\":1}]"),
            404,
            "no document",
        ),
        (
            "GET",
            node.at("/nowhere"),
            None,
            404,
            "no route GET /nowhere",
        ),
        (
            "DELETE",
            node.at("/docs"),
            None,
            405,
            "DELETE is not allowed on /docs",
        ),
        // axum's own rejection (a path segment that is not UTF-8).
        ("GET", node.at("/docs/%FF"), None, 400, "UTF-8"),
    ];
    for (method, url, body, status, message) in cases {
        let answer = call(method, &url, None, body).await;
        assert_eq!(answer.status, status, "{method} {url}: {}", answer.body);
        assert!(
            answer.body.contains(message),
            "{method} {url}: `{}` should say `{message}`",
            answer.body
        );
        assert!(answer.json()["error"].is_string());
    }
    // Nothing above changed the document.
    let read = call("GET", &node.at(&format!("/docs/{doc}")), None, None).await;
    assert_eq!(read.json()["content"], json!({}));
}

#[tokio::test]
async fn a_configured_token_is_required_on_every_route() {
    let (_dir, node) = node(&["--token", "s3cret"]);
    for path in ["/status", "/docs", "/metrics"] {
        let missing = call("GET", &node.at(path), None, None).await;
        assert_eq!(missing.status, 401, "{path}");
        assert!(
            missing.body.contains("missing bearer token"),
            "{}",
            missing.body
        );
        let wrong = call("GET", &node.at(path), Some("guess"), None).await;
        assert_eq!(wrong.status, 401, "{path}");
        assert!(wrong.body.contains("wrong bearer token"), "{}", wrong.body);
        let right = call("GET", &node.at(path), Some("s3cret"), None).await;
        assert_eq!(right.status, 200, "{path}: {}", right.body);
    }
}

/// Writes `n` changes to `doc` (each acknowledged durable, so its feed
/// entry is readable when the call returns).
async fn write_changes(node: &NodeProcess, doc: &str, n: usize) {
    let url = node.at(&format!("/docs/{doc}/changes"));
    for i in 0..n {
        let change = json!({"ops": [{"op": "put", "path": ["n"], "value": i}], "ack": "durable"});
        let applied = call("POST", &url, None, Some(&change.to_string())).await;
        assert_eq!(applied.status, 200, "{}", applied.body);
    }
}

/// The NDJSON lines of a whole (non-following) feed response.
async fn feed_lines(node: &NodeProcess, query: &str) -> Vec<serde_json::Value> {
    let response = get_with(
        &node.at(&format!("/feed?{query}")),
        &[("accept", "application/x-ndjson")],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let mut body = response.into_body();
    let text = read_until(&mut body, PATIENCE, |_| false).await;
    text.lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

#[tokio::test]
async fn the_feed_numbers_every_change_and_resumes_from_a_cursor() {
    let (_dir, node) = node(&[]);
    let first = create_doc(&node).await;
    let second = create_doc(&node).await;
    write_changes(&node, &first, 2).await;
    write_changes(&node, &second, 1).await;

    // NDJSON, up to now.
    let all = feed_lines(&node, "follow=false").await;
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(all[0]["doc"], json!(first));
    assert_eq!(all[2]["doc"], json!(second));
    assert_eq!(all[0]["origin"], "local");
    assert_eq!(all[2]["changes"].as_array().unwrap().len(), 1);
    assert_eq!(all[2]["heads"], all[2]["changes"]);
    assert_eq!(feed_lines(&node, "since=1&follow=false").await, all[1..]);
    assert_eq!(feed_lines(&node, "since=0&limit=1").await, all[..1]);
    let only_second = feed_lines(&node, &format!("follow=false&doc={second}")).await;
    assert_eq!(only_second, all[2..]);
    // Beyond the end, not following: empty.
    assert!(feed_lines(&node, "since=99&follow=false").await.is_empty());
    assert!(feed_lines(&node, "since=now&follow=false").await.is_empty());

    // SSE: each event's id is its sequence number, and Last-Event-ID
    // resumes after it.
    let response = get_with(&node.at("/feed"), &[]).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let text = read_until(&mut body, PATIENCE, |t| t.contains("id: 3\n")).await;
    assert!(
        text.contains("id: 1\n") && text.contains("id: 2\n"),
        "{text}"
    );
    assert!(text.contains("event: change\n"), "{text}");
    let response = get_with(&node.at("/feed?since=0"), &[("last-event-id", "2")]).await;
    let mut body = response.into_body();
    let text = read_until(&mut body, PATIENCE, |t| t.contains("id: 3\n")).await;
    assert!(!text.contains("id: 2\n"), "resumed after 2: {text}");

    // Following: a new change arrives on an open stream.
    let response = get_with(&node.at("/feed?since=3"), &[]).await;
    let mut body = response.into_body();
    write_changes(&node, &first, 1).await;
    let text = read_until(&mut body, PATIENCE, |t| t.contains("id: 4\n")).await;
    assert!(!text.contains("id: 3\n"), "{text}");
}

#[tokio::test]
async fn an_idle_feed_sends_heartbeats() {
    let (_dir, node) = node(&[]);
    let response = get_with(
        &node.at("/feed?since=now&heartbeat_ms=200"),
        &[("accept", "application/x-ndjson")],
    )
    .await;
    let mut body = response.into_body();
    let text = read_until(&mut body, PATIENCE, |t| t.lines().count() >= 2).await;
    let beat: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(beat, json!({"heartbeat": true, "end": 1}));
    let response = get_with(&node.at("/feed?since=now&heartbeat_ms=200"), &[]).await;
    let mut body = response.into_body();
    let text = read_until(&mut body, PATIENCE, |t| t.contains(": heartbeat")).await;
    assert!(text.contains(": heartbeat end=1"), "{text}");
}

#[tokio::test]
async fn bad_feed_cursors_get_400_and_a_trimmed_one_410() {
    let dir = tempfile::tempdir().expect("temp dir");
    init(dir.path(), &[]);
    let config = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("feed_max_entries = 2\n{text}")).unwrap();
    let node = NodeProcess::start(&config);
    for query in [
        "since=x",
        "since=-1",
        "limit=0",
        "follow=maybe",
        "doc=nope",
        "heartbeat_ms=1",
    ] {
        let answer = call("GET", &node.at(&format!("/feed?{query}")), None, None).await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.body);
        assert!(answer.json()["error"].is_string(), "{query}");
    }
    let doc = create_doc(&node).await;
    write_changes(&node, &doc, 5).await;
    let trimmed = call("GET", &node.at("/feed?since=1"), None, None).await;
    assert_eq!(trimmed.status, 410, "{}", trimmed.body);
    assert!(
        trimmed.json()["error"]
            .as_str()
            .unwrap()
            .contains("snapshot"),
        "{}",
        trimmed.body
    );
    // The entries kept are still served.
    let kept = feed_lines(&node, "since=3&follow=false").await;
    assert_eq!(
        kept.iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [4, 5]
    );
}

#[tokio::test]
async fn history_older_heads_diffs_and_typed_reads() {
    let (_dir, node) = node(&[]);
    let doc = create_doc(&node).await;
    let url = node.at(&format!("/docs/{doc}/changes"));
    let first = json!({
        "ops": [
            {"op": "put_text", "path": ["notes"], "text": "hi"},
            {"op": "put_counter", "path": ["visits"], "value": 1},
            {"op": "put", "path": ["title"], "value": "One"},
        ],
        "message": "start the notes",
    });
    let first = call("POST", &url, None, Some(&first.to_string()))
        .await
        .json();
    let second = json!({"ops": [{"op": "put", "path": ["title"], "value": "Two"}]});
    let second = call("POST", &url, None, Some(&second.to_string()))
        .await
        .json();

    let history = call("GET", &node.at(&format!("/docs/{doc}/history")), None, None).await;
    assert_eq!(history.status, 200, "{}", history.body);
    let history = history.json();
    assert_eq!(history["total"], 2);
    assert_eq!(history["next_offset"], serde_json::Value::Null);
    let changes = history["changes"].as_array().unwrap();
    assert_eq!(changes[0]["hash"], first["change"]);
    assert_eq!(changes[0]["message"], "start the notes");
    assert_eq!(changes[0]["seq"], 1);
    assert!(changes[0]["ops"].as_u64().unwrap() >= 4, "{}", changes[0]);
    assert!(changes[0]["node"].is_string() && changes[0]["incarnation"].is_u64());
    assert_eq!(changes[1]["deps"], json!([first["change"]]));
    assert_eq!(changes[1]["message"], serde_json::Value::Null);
    let page = call(
        "GET",
        &node.at(&format!("/docs/{doc}/history?limit=1")),
        None,
        None,
    )
    .await;
    assert_eq!(page.json()["next_offset"], 1);
    assert_eq!(page.json()["changes"].as_array().unwrap().len(), 1);

    let first_heads = first["heads"][0].as_str().unwrap();
    let then = call(
        "GET",
        &node.at(&format!("/docs/{doc}?at={first_heads}")),
        None,
        None,
    )
    .await;
    assert_eq!(then.status, 200, "{}", then.body);
    assert_eq!(then.json()["content"]["title"], "One");
    assert_eq!(then.json()["heads"], first["heads"]);
    let diff = call(
        "GET",
        &node.at(&format!("/docs/{doc}/diff?from={first_heads}")),
        None,
        None,
    )
    .await;
    assert_eq!(diff.status, 200, "{}", diff.body);
    assert_eq!(
        diff.json()["patches"],
        json!([{"action": "put", "path": ["title"], "value": "Two"}])
    );
    assert_eq!(diff.json()["to"], second["heads"]);

    let typed = call(
        "GET",
        &node.at(&format!("/docs/{doc}?types=true&conflicts=true")),
        None,
        None,
    )
    .await;
    assert_eq!(typed.status, 200, "{}", typed.body);
    let typed = typed.json();
    assert_eq!(
        typed["content"]["notes"],
        json!({"type": "text", "value": "hi"})
    );
    assert_eq!(
        typed["content"]["visits"],
        json!({"type": "counter", "value": 1})
    );
    assert_eq!(typed["content"]["title"], "Two");
    assert_eq!(typed["conflicts"], json!([]));

    // Unknown documents and changes, malformed heads and flags.
    let missing = murmur::DocumentId::from([7; 16]);
    let unknown = call(
        "GET",
        &node.at(&format!("/docs/{missing}/history")),
        None,
        None,
    )
    .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let absent = "0".repeat(64);
    let at = call(
        "GET",
        &node.at(&format!("/docs/{doc}?at={absent}")),
        None,
        None,
    )
    .await;
    assert_eq!(at.status, 404, "{}", at.body);
    for query in [
        "?at=zz",
        "?types=yes",
        "?conflicts=1",
        "/history?limit=0",
        "/history?limit=x",
        "/diff?to=nothex",
    ] {
        let (path, q) = query.split_at(query.find('?').unwrap());
        let answer = call(
            "GET",
            &node.at(&format!("/docs/{doc}{path}{q}")),
            None,
            None,
        )
        .await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.body);
    }
}

#[tokio::test]
async fn automerge_bytes_go_out_to_javascript_and_come_back_in() {
    let Some(js) = process::js_clients() else {
        return;
    };
    let (_dir, node) = node(&[]);
    let doc = create_doc(&node).await;
    let change = json!({"ops": [{"op": "put", "path": ["title"], "value": "from murmur"}]});
    let url = node.at(&format!("/docs/{doc}/changes"));
    assert_eq!(
        call("POST", &url, None, Some(&change.to_string()))
            .await
            .status,
        200
    );
    let base = node.at("");
    let out = tokio::task::spawn_blocking(move || {
        process::run_js(&js, "automerge_bytes.mjs", &[&base, &doc])
    })
    .await
    .unwrap();
    let seen: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(seen["ok"], true, "{out}");
    // The imported document is an ordinary one here too.
    let imported = seen["imported"].as_str().unwrap();
    let read = call("GET", &node.at(&format!("/docs/{imported}")), None, None).await;
    assert_eq!(read.json()["heads"], seen["heads"]);
    assert_eq!(read.json()["content"]["fromJs"], true);
}

#[tokio::test]
async fn post_docs_refuses_a_body_it_cannot_use() {
    let (_dir, node) = node(&[]);
    let json_body = call("POST", &node.at("/docs"), None, Some(r#"{"title": "x"}"#)).await;
    assert_eq!(json_body.status, 415, "{}", json_body.body);
    assert!(json_body.json()["error"]
        .as_str()
        .unwrap()
        .contains("octet-stream"));
    let listed = call("GET", &node.at("/docs"), None, None).await;
    assert_eq!(listed.json(), json!({"documents": []}), "nothing was made");
    let empty = process::post_bytes(&node.at("/docs"), Vec::new()).await;
    assert_eq!(empty.status, 400, "{}", empty.body);
    let garbage = process::post_bytes(&node.at("/docs"), vec![0x85, 0x6f, 0x4a, 0x83, 1]).await;
    assert_eq!(garbage.status, 422, "{}", garbage.body);
    let garbage = process::post_bytes(&node.at("/docs"), b"not automerge".to_vec()).await;
    assert_eq!(garbage.status, 422, "{}", garbage.body);

    // Changes that miss the change they depend on are refused whole.
    use murmur::automerge::{transaction::Transactable, Automerge, ROOT};
    let mut elsewhere = Automerge::new();
    elsewhere.transact(|tx| tx.put(ROOT, "a", 1)).unwrap();
    elsewhere.transact(|tx| tx.put(ROOT, "b", 2)).unwrap();
    let second = elsewhere.get_changes(&[]).pop().unwrap();
    let doc = create_doc(&node).await;
    let url = node.at(&format!("/docs/{doc}/changes"));
    let orphan = process::post_bytes(&url, second.raw_bytes().to_vec()).await;
    assert_eq!(orphan.status, 422, "{}", orphan.body);
    assert!(orphan.body.contains("depends on"), "{}", orphan.body);
    let read = call("GET", &node.at(&format!("/docs/{doc}")), None, None).await;
    assert_eq!(read.json()["heads"], json!([]), "nothing changed");
    // The whole history merges.
    let whole = process::post_bytes(&url, elsewhere.save()).await;
    assert_eq!(whole.status, 200, "{}", whole.body);
    let read = call("GET", &node.at(&format!("/docs/{doc}")), None, None).await;
    assert_eq!(read.json()["content"], json!({"a": 1, "b": 2}));
    let listed = call("GET", &node.at("/docs"), None, None).await;
    assert_eq!(listed.json()["documents"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_document_event_stream_resumes_after_its_last_event_id() {
    let (_dir, node) = node(&[]);
    let doc = create_doc(&node).await;
    let other = create_doc(&node).await;
    write_changes(&node, &doc, 2).await; // feed entries 1 and 2
    write_changes(&node, &other, 1).await; // 3
    write_changes(&node, &doc, 1).await; // 4
    let url = node.at(&format!("/docs/{doc}/events"));
    let response = get_with(&url, &[("last-event-id", "1")]).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let text = read_until(&mut body, PATIENCE, |t| t.contains("id: 4\n")).await;
    assert!(text.contains("id: 2\n"), "{text}");
    assert!(
        !text.contains("id: 1\n") && !text.contains("id: 3\n"),
        "{text}"
    );
    // Each event's patches are its own changes' (entry 4 put n = 0 over 1).
    let last = text
        .split("\n\n")
        .find(|event| event.contains("id: 4\n"))
        .unwrap();
    let data: serde_json::Value = serde_json::from_str(
        last.lines()
            .find_map(|line| line.strip_prefix("data: "))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(data["seq"], 4);
    assert_eq!(
        data["patches"],
        json!([{"action": "put", "path": ["n"], "value": 0}])
    );
    let bad = call("GET", &format!("{url}?since=nope"), None, None).await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn a_deleted_document_is_gone_410_and_in_the_feed() {
    let (_dir, node) = node(&[]);
    let doc = create_doc(&node).await;
    let kept = create_doc(&node).await;
    write_changes(&node, &doc, 2).await;
    write_changes(&node, &kept, 1).await;
    let url = node.at(&format!("/docs/{doc}"));
    let deleted = call("DELETE", &url, None, None).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(deleted.json()["deleted"], true);
    for path in [
        format!("/docs/{doc}"),
        format!("/docs/{doc}/history"),
        format!("/docs/{doc}/events"),
    ] {
        let gone = call("GET", &node.at(&path), None, None).await;
        assert_eq!(gone.status, 410, "{path}: {}", gone.body);
    }
    let change = json!([{"op": "put", "path": ["n"], "value": 9}]).to_string();
    let refused = call(
        "POST",
        &node.at(&format!("/docs/{doc}/changes")),
        None,
        Some(&change),
    )
    .await;
    assert_eq!(refused.status, 410, "{}", refused.body);
    assert_eq!(call("DELETE", &url, None, None).await.status, 410);
    let listed = call("GET", &node.at("/docs"), None, None).await;
    assert_eq!(listed.json(), json!({"documents": [kept]}));
    let feed = feed_lines(&node, "follow=false").await;
    let last = feed.last().unwrap();
    assert_eq!(
        (last["seq"].as_u64(), &last["doc"], &last["deleted"]),
        (Some(4), &json!(doc), &json!(true))
    );
    let missing = murmur::DocumentId::from([7; 16]);
    let unknown = call("DELETE", &node.at(&format!("/docs/{missing}")), None, None).await;
    assert_eq!(unknown.status, 404);
}
