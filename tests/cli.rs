//! The `murmur` binary as a user runs it: `init`, `run` (a child
//! process, stopped with SIGTERM), config errors, the client subcommands,
//! and two nodes set up by `init` replicating.

mod process;

use std::path::Path;
use std::time::Duration;

use process::{call, free_udp_addr, init, murmur, text, NodeProcess};
use serde_json::{json, Value};

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
    let exit = node.terminate();
    assert!(exit.success(), "murmur run exited with {exit} on SIGTERM");
    // The node ended the stream itself rather than waiting out the drain
    // period for it (it says so when it has to close requests).
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert!(
        !log.contains("still open"),
        "shutdown waited for the stream:\n{log}"
    );
    assert!(log.contains("stopped"), "{log}");
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
    let printed = text(&output.stdout);
    assert!(printed.contains("token"));
    let written = std::fs::read_to_string(config(dir.path())).unwrap();
    assert!(written.contains("\nhttp_token = \""), "{written}");
    // ... and TLS, so that the token never crosses the network in clear
    // text: a self-signed certificate whose fingerprint it prints.
    assert!(
        written.contains("\nhttp_tls_cert = \"http-cert.pem\""),
        "{written}"
    );
    assert!(
        written.contains("\nhttp_tls_key = \"http-key.pem\""),
        "{written}"
    );
    let fingerprint = printed
        .split("SHA-256 fingerprint ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no fingerprint in {printed}"))
        .to_owned();
    assert_eq!(fingerprint.len(), 95, "{fingerprint}");
    let pem = std::fs::read_to_string(dir.path().join("http-cert.pem")).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    // Run again, the certificate is kept (clients pinned it).
    let again = murmur(&["init", "--force", "--dir", dir_arg, "--http", "0.0.0.0:0"]);
    assert!(text(&again.stdout).contains(&fingerprint));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("http-cert.pem")).unwrap(),
        pem
    );

    // Plain HTTP off loopback only when asked, and the config says so.
    let plain = tempfile::tempdir().unwrap();
    let plain_arg = plain.path().to_str().unwrap();
    let output = murmur(&[
        "init",
        "--dir",
        plain_arg,
        "--http",
        "0.0.0.0:0",
        "--http-plaintext",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let written = std::fs::read_to_string(config(plain.path())).unwrap();
    assert!(
        written.contains("\nhttp_plaintext_token = true"),
        "{written}"
    );
    assert!(!written.contains("\nhttp_tls_cert"), "{written}");
    assert!(!plain.path().join("http-cert.pem").exists());
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

#[tokio::test]
async fn two_nodes_set_up_with_init_replicate_a_document() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (id_a, _) = two_node_configs(dir_a.path(), dir_b.path());
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

/// Two nodes set up by `init`, each dialing the other.
fn two_node_configs(dir_a: &Path, dir_b: &Path) -> (String, String) {
    let (quic_a, quic_b) = (free_udp_addr(), free_udp_addr());
    let id_a = init(dir_a, &[]);
    let peer_a = format!("{id_a}@{quic_a}");
    let id_b = init(dir_b, &["--listen", &quic_b, "--peer", &peer_a]);
    let peer_b = format!("{id_b}@{quic_b}");
    init(dir_a, &["--force", "--listen", &quic_a, "--peer", &peer_b]);
    (id_a, id_b)
}

/// Waits until `node` lists `peer` as connected.
async fn wait_connected(node: &NodeProcess, peer: &str) {
    wait_for_peer(node, peer, None).await;
}

/// Waits until `node` lists `peer` connected, from `addr` if given.
async fn wait_for_peer(node: &NodeProcess, peer: &str, addr: Option<&str>) {
    let listed =
        |p: &Value| p["id"] == json!(peer) && addr.is_none_or(|addr| p["addr"] == json!(addr));
    wait_for_peers(
        node,
        &format!("{peer} connected (from {addr:?})"),
        |peers| peers.iter().any(listed),
    )
    .await;
}

/// Waits until `node` no longer lists `peer` connected.
async fn wait_for_peer_gone(node: &NodeProcess, peer: &str) {
    wait_for_peers(node, &format!("{peer} gone"), |peers| {
        !peers.iter().any(|p| p["id"] == json!(peer))
    })
    .await;
}

/// Waits until the peers `node` lists satisfy `done`.
async fn wait_for_peers(node: &NodeProcess, what: &str, done: impl Fn(&[Value]) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let peers = call("GET", &node.at("/peers"), None, None).await.json();
        if done(peers["peers"].as_array().map_or(&[][..], Vec::as_slice)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {what}: {peers}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_node_restarted_after_kill_9_is_reconnected_at_once() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (id_a, id_b) = two_node_configs(dir_a.path(), dir_b.path());
    let a = NodeProcess::start(&config(dir_a.path()));
    let b = NodeProcess::start(&config(dir_b.path()));
    wait_connected(&a, &id_b).await;
    wait_connected(&b, &id_a).await;
    // Kill the node with the larger id: the connection both keep is the one
    // the smaller id dialed, so the survivor holds a connection to the dead
    // process that a tie-break between connections would prefer.
    let (survivor, victim, victim_dir) = if id_a < id_b {
        (a, b, dir_b.path())
    } else {
        (b, a, dir_a.path())
    };
    drop(victim); // SIGKILL: no connection close reaches the survivor
    let restarted = NodeProcess::start(&config(victim_dir));

    // A write on the restarted node that waits for the survivor's copy
    // succeeds as soon as the two are connected again (before the fix the
    // survivor refused the new connection until the dead one timed out, 30 s).
    let doc = call("POST", &restarted.at("/docs"), None, None)
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let change = json!({"ops": [{"op": "put", "path": ["k"], "value": 1}], "ack": "replicated:1"})
        .to_string();
    let url = restarted.at(&format!("/docs/{doc}/changes"));
    let write = tokio::time::timeout(
        Duration::from_secs(10),
        call("POST", &url, None, Some(&change)),
    )
    .await
    .expect("the restarted node was not reconnected within 10 s");
    assert_eq!(write.status, 200, "{}", write.body);
    assert!(
        restarted.log().contains("peer connected"),
        "{}",
        restarted.log()
    );
    assert!(
        survivor.log().contains("peer restarted"),
        "{}",
        survivor.log()
    );
}

/// A UDP relay for one client: datagrams to `listen` go to `upstream`, the
/// answers back to the client. Counts what it forwards; once blackholed,
/// drops everything both ways.
struct Relay {
    addr: std::net::SocketAddr,
    forwarded: std::sync::Arc<std::sync::atomic::AtomicU64>,
    blackholed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: std::net::SocketAddr) -> Relay {
        use std::sync::atomic::Ordering;
        let outer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let inner = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        inner.connect(upstream).await.unwrap();
        let addr = outer.local_addr().unwrap();
        let forwarded = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = forwarded.clone();
        let blackholed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let dropping = blackholed.clone();
        let task = tokio::spawn(async move {
            let (mut from_client, mut from_upstream) = (vec![0; 65536], vec![0; 65536]);
            let mut client = None;
            loop {
                tokio::select! {
                    Ok((n, peer)) = outer.recv_from(&mut from_client) => {
                        client = Some(peer);
                        if !dropping.load(Ordering::Relaxed) {
                            let _ = inner.send(&from_client[..n]).await;
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(n) = inner.recv(&mut from_upstream) => {
                        if let (Some(peer), false) = (client, dropping.load(Ordering::Relaxed)) {
                            let _ = outer.send_to(&from_upstream[..n], peer).await;
                        }
                    }
                }
            }
        });
        Relay {
            addr,
            forwarded,
            blackholed,
            task,
        }
    }

    fn blackhole(&self) {
        self.blackholed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn forwarded(&self) -> u64 {
        self.forwarded.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_configured_peer_address_wins_over_the_one_membership_gossips() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let quic_a: std::net::SocketAddr = free_udp_addr().parse().unwrap();
    let relay = Relay::start(quic_a).await;
    // b reaches a only through the relay; a does not dial b.
    let id_a = init(dir_a.path(), &["--listen", &quic_a.to_string()]);
    let quic_b = free_udp_addr();
    let via_relay = format!("{id_a}@{}", relay.addr);
    let id_b = init(dir_b.path(), &["--listen", &quic_b, "--peer", &via_relay]);
    let args = ["--force", "--listen", &quic_a.to_string(), "--allow", &id_b];
    init(dir_a.path(), &args);

    let a = NodeProcess::start(&config(dir_a.path()));
    let b = NodeProcess::start(&config(dir_b.path()));
    wait_for_peer(&b, &id_a, Some(&relay.addr.to_string())).await;
    // Membership has told b where a says it listens.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = call("GET", &b.at("/status"), None, None).await.json();
        let members = status["members"].to_string();
        if members.contains(&id_a) && members.contains(&quic_a.to_string()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never learned a's advertised address: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // a restarts: b redials it, through the relay still. Count from the
    // moment b has seen the old connection close, so the old connection's
    // last packets do not count as the redial.
    assert!(a.terminate().success());
    wait_for_peer_gone(&b, &id_a).await;
    let before = relay.forwarded();
    let a = NodeProcess::start(&config(dir_a.path()));
    wait_for_peer(&b, &id_a, Some(&relay.addr.to_string())).await;
    assert!(relay.forwarded() > before, "nothing went through the relay");
    wait_connected(&a, &id_b).await;

    // The relay goes silent: both sides drop the connection once it has
    // been idle for the timeout (10 s), and say why. (a may then dial b at
    // the address membership told it, so the evidence is the log line, not
    // an empty peer list; and if that direct connection came first, the
    // silent one is logged as a replaced connection closing.)
    relay.blackhole();
    for node in [&a, &b] {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !node.log().lines().any(|line| {
            (line.contains("peer disconnected") || line.contains("replaced connection closed"))
                && line.contains("timed out")
        }) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no idle timeout logged: {}",
                node.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[test]
fn id_prints_the_node_id_alone_and_a_closed_pipe_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let id = init(dir.path(), &[]);
    let dir_arg = dir.path().to_str().unwrap();
    let printed = murmur(&["id", "--dir", dir_arg]);
    assert!(printed.status.success(), "{}", text(&printed.stderr));
    assert_eq!(text(&printed.stdout), format!("{id}\n"));
    let empty = tempfile::tempdir().unwrap();
    let missing = murmur(&["id", "--dir", empty.path().to_str().unwrap()]);
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("murmur init"),
        "{}",
        text(&missing.stderr)
    );
    assert!(
        !empty.path().join("node.key").exists(),
        "id created an identity"
    );

    // `murmur init ... | head -0`: stdout is a pipe whose reader is gone
    // before the first line is written.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = std::process::Command::new(process::MURMUR)
        .args([
            "init",
            "--force",
            "--dir",
            dir_arg,
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(output.status.success(), "exit {:?}", output.status);
    assert_eq!(text(&output.stderr), "", "a closed pipe was reported");
}

#[tokio::test]
async fn a_second_node_on_the_same_data_directory_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &[]);
    let _first = NodeProcess::start(&config(dir.path()));
    let second = murmur(&["run", "--config", config(dir.path()).to_str().unwrap()]);
    assert!(!second.status.success());
    let said = text(&second.stderr);
    assert!(said.contains("in use by another process"), "{said}");
}

#[test]
fn a_log_filter_typo_is_a_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &[]);
    let path = config(dir.path());
    let text_of = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text_of.replace("log = \"info\"", "log = \"inf\"")).unwrap();
    let run = murmur(&["run", "--config", path.to_str().unwrap()]);
    assert!(!run.status.success());
    let said = text(&run.stderr);
    assert!(said.contains("`inf` is not a level"), "{said}");
}

#[tokio::test]
async fn peers_are_added_and_removed_at_runtime_over_http_and_the_cli() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let id_a = init(dir_a.path(), &[]);
    let id_b = init(dir_b.path(), &[]);
    let a = NodeProcess::start(&config(dir_a.path()));
    let b = NodeProcess::start(&config(dir_b.path()));
    // Neither knows the other: a adds b with the CLI, b adds a over HTTP.
    let added = client(&a, &["peers", "add", &format!("{id_b}@{}", b.quic)]);
    assert!(added.contains(&id_b), "{added}");
    let body = json!({"id": id_a, "addr": a.quic}).to_string();
    let answer = call("POST", &b.at("/peers"), None, Some(&body)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    wait_connected(&a, &id_b).await;
    wait_connected(&b, &id_a).await;
    // Bad input is a 400 that names the problem.
    let bad = call(
        "POST",
        &b.at("/peers"),
        None,
        Some(r#"{"id": "nope", "addr": "x"}"#),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.json()["error"]
        .as_str()
        .unwrap()
        .contains("not a node id"));
    // Removing b on a closes the connection, and b is no longer let in.
    client(&a, &["peers", "remove", &id_b]);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let peers = call("GET", &a.at("/peers"), None, None).await.json();
        let status = call("GET", &a.at("/status"), None, None).await.json();
        let allowed = status["allowed"].to_string();
        if peers["peers"] == json!([]) && !allowed.contains(&id_b) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b is still connected or allowed: {peers} {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_backup_restores_into_a_new_node_which_then_catches_up() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    two_node_configs(dir_a.path(), dir_b.path());
    let a = NodeProcess::start(&config(dir_a.path()));
    let notes = client(&a, &["doc", "create"]).trim().to_owned();
    let list = client(&a, &["doc", "create"]).trim().to_owned();
    client(&a, &["doc", "put", &notes, "title=Notes", "n:=1"]);
    client(&a, &["doc", "put", &list, "items:=[\"milk\"]"]);

    let backups = tempfile::tempdir().unwrap();
    let target = backups.path().join("one");
    let target = target.to_str().unwrap();
    let said = client(&a, &["backup", target]);
    assert!(said.contains("backed up 2 documents"), "{said}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backups.path().join("one/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["documents"].as_array().unwrap().len(), 2);
    let again = murmur(&["backup", target, "--node", &a.url]);
    assert!(!again.status.success(), "a backup never overwrites another");
    assert!(text(&again.stderr).contains("not empty"));

    // After the backup, a changes on.
    client(&a, &["doc", "put", &notes, "n:=2"]);
    let restored = murmur(&[
        "restore",
        target,
        "--config",
        config(dir_b.path()).to_str().unwrap(),
    ]);
    assert!(restored.status.success(), "{}", text(&restored.stderr));
    assert!(text(&restored.stdout).contains("restored 2 documents"));

    // b starts with the backup's documents under their ids, then catches up.
    let b = NodeProcess::start(&config(dir_b.path()));
    let mut listed: Vec<String> = serde_json::from_str::<serde_json::Value>(
        &call("GET", &b.at("/docs"), None, None).await.body,
    )
    .unwrap()["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let mut expected = vec![notes.clone(), list.clone()];
    expected.sort();
    assert_eq!(listed, expected);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let on_a = call("GET", &a.at(&format!("/docs/{notes}")), None, None)
            .await
            .json();
        let on_b = call("GET", &b.at(&format!("/docs/{notes}")), None, None)
            .await
            .json();
        if on_a == on_b {
            assert_eq!(on_b["content"], json!({"title": "Notes", "n": 2}));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never caught up: {on_b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let items = call("GET", &b.at(&format!("/docs/{list}")), None, None)
        .await
        .json();
    assert_eq!(items["content"], json!({"items": ["milk"]}));
    // A running node cannot be restored into.
    let busy = murmur(&[
        "restore",
        target,
        "--config",
        config(dir_b.path()).to_str().unwrap(),
    ]);
    assert!(!busy.status.success());
    assert!(
        text(&busy.stderr).contains("is it running"),
        "{}",
        text(&busy.stderr)
    );
}
