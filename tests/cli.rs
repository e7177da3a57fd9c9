//! The `murmur` binary as a user runs it: `init`, `run` (a child
//! process, stopped with SIGTERM), config errors, the client subcommands,
//! and two nodes set up by `init` replicating.

mod process;

use std::path::Path;
use std::time::Duration;

use process::{call, init, murmur, text, NodeProcess};
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(20);

fn config(dir: &Path) -> std::path::PathBuf {
    dir.join("config.toml")
}

#[tokio::test]
async fn init_then_run_serves_status_and_keeps_data_across_a_sigterm_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node_id = init(dir.path(), &[]);
    assert!(dir.path().join("node.key").exists());
    let written = std::fs::read_to_string(config(dir.path())).unwrap();
    assert!(written.contains("listen = \"127.0.0.1:0\""), "{written}");

    let again = murmur(&["init", "--dir", dir.path().to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("pass --force"),
        "{}",
        text(&again.stderr)
    );

    let node = NodeProcess::start(&config(dir.path()));
    assert_eq!(node.node_id, node_id);
    let status = call("GET", &node.at("/status"), None, None).await;
    assert_eq!(status.status, 200, "{}", status.body);
    assert_eq!(status.json()["node_id"], json!(node_id));
    let created = call("POST", &node.at("/docs"), None, None).await.json();
    let doc = created["id"].as_str().unwrap().to_owned();
    let change = json!([{"op": "put", "path": ["kept"], "value": true}]).to_string();
    let url = node.at(&format!("/docs/{doc}/changes"));
    assert_eq!(call("POST", &url, None, Some(&change)).await.status, 200);

    // An open event stream must not hold the shutdown up.
    let events = process::open("GET", &node.at(&format!("/docs/{doc}/events")), None, None).await;
    assert_eq!(events.status(), 200);
    let stopping = std::time::Instant::now();
    let exit = node.terminate();
    assert!(exit.success(), "murmur run exited with {exit} on SIGTERM");
    assert!(
        stopping.elapsed() < Duration::from_secs(4),
        "shutdown waited for the stream"
    );
    drop(events);

    // The identity and the durable write survive the restart.
    let node = NodeProcess::start(&config(dir.path()));
    assert_eq!(node.node_id, node_id);
    let read = call("GET", &node.at(&format!("/docs/{doc}")), None, None).await;
    assert_eq!(read.json()["content"], json!({"kept": true}));
}

#[test]
fn config_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path());
    let cases = [
        (
            "listen = \"127.0.0.1:0\"\ncolour = \"blue\"\n",
            "unknown field `colour`",
        ),
        ("http = \"0.0.0.0:7401\"\n", "http_token is required"),
        (
            "[[peers]]\nid = \"xyz\"\naddr = \"127.0.0.1:1\"\n",
            "`xyz` is not a node id",
        ),
    ];
    for (text_of_config, expected) in cases {
        std::fs::write(&path, text_of_config).unwrap();
        let output = murmur(&["run", "--config", path.to_str().unwrap()]);
        assert!(!output.status.success(), "{text_of_config} was accepted");
        let stderr = text(&output.stderr);
        assert!(
            stderr.contains(expected),
            "`{stderr}` should say `{expected}`"
        );
        assert!(
            stderr.contains("config.toml"),
            "`{stderr}` should name the file"
        );
    }
    let missing = murmur(&["run", "--config", "/nonexistent/config.toml"]);
    assert!(text(&missing.stderr).contains("murmur init"));
}

#[test]
fn init_generates_a_token_when_the_api_is_not_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let output = murmur(&["init", "--dir", dir_arg, "--http", "0.0.0.0:0"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("token"));
    let written = std::fs::read_to_string(config(dir.path())).unwrap();
    assert!(written.contains("\nhttp_token = \""), "{written}");
}

/// Runs a client subcommand against `node`; returns stdout, or panics with
/// stderr.
fn client(node: &NodeProcess, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--node", node.url.as_str()]);
    let output = murmur(&all);
    assert!(
        output.status.success(),
        "murmur {args:?}: {}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

#[tokio::test]
async fn client_subcommands_drive_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &[]);
    let node = NodeProcess::start(&config(dir.path()));

    let doc = client(&node, &["doc", "create"]).trim().to_owned();
    client(
        &node,
        &[
            "doc",
            "put",
            &doc,
            "title=Hello, world",
            "count:=3",
            "items:=[\"a\"]",
        ],
    );
    let ops = r#"[{"op":"insert","path":["items",1],"value":"b"}]"#;
    client(
        &node,
        &["doc", "put", &doc, "--json", ops, "--ack", "applied"],
    );
    let content: serde_json::Value =
        serde_json::from_str(&client(&node, &["doc", "get", &doc])).unwrap();
    assert_eq!(
        content,
        json!({"title": "Hello, world", "count": 3, "items": ["a", "b"]})
    );
    assert_eq!(client(&node, &["doc", "list"]).trim(), doc);
    let status: serde_json::Value = serde_json::from_str(&client(&node, &["status"])).unwrap();
    assert_eq!(status["documents"], 1);
    assert_eq!(client(&node, &["peers"]).trim(), "no peers connected");

    let url = node.url.clone();
    let refused = murmur(&["doc", "put", &doc, "items.9=x", "--node", &url]);
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("422") && stderr.contains("out of range"),
        "{stderr}"
    );
    let unreachable = murmur(&["status", "--node", "http://127.0.0.1:9"]);
    assert!(text(&unreachable.stderr).contains("cannot reach the node"));
}

/// A free UDP port on 127.0.0.1 (free when asked; taken soon after).
fn free_udp_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

#[tokio::test]
async fn two_nodes_set_up_with_init_replicate_a_document() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let quic_a = format!("127.0.0.1:{}", free_udp_port());
    let quic_b = format!("127.0.0.1:{}", free_udp_port());
    let id_a = init(dir_a.path(), &[]);
    let peer_a = format!("{id_a}@{quic_a}");
    let id_b = init(dir_b.path(), &["--listen", &quic_b, "--peer", &peer_a]);
    let peer_b = format!("{id_b}@{quic_b}");
    init(
        dir_a.path(),
        &["--force", "--listen", &quic_a, "--peer", &peer_b],
    );

    let a = NodeProcess::start(&config(dir_a.path()));
    let b = NodeProcess::start(&config(dir_b.path()));
    let doc = call("POST", &a.at("/docs"), None, None).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let change = json!([{"op": "put", "path": ["from"], "value": "a"}]).to_string();
    call(
        "POST",
        &a.at(&format!("/docs/{doc}/changes")),
        None,
        Some(&change),
    )
    .await;

    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let read = call("GET", &b.at(&format!("/docs/{doc}")), None, None).await;
        if read.status == 200 && read.json()["content"] == json!({"from": "a"}) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never got the document: {}",
            read.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peers = call("GET", &b.at("/peers"), None, None).await.json();
    assert_eq!(peers["peers"][0]["id"], json!(id_a));
}
