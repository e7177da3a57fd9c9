//! `GET /sync`, automerge-repo's sync protocol on a WebSocket, against a
//! real `murmur run`: a bare protocol client written here (CBOR frames,
//! Automerge sync states) checks the handshake, syncing both ways, the
//! bounds and refusals, tokens, kept sync states and ephemeral relaying.
//! The real `@automerge/automerge-repo` client and a real browser run in
//! `tests/js/` (see `real_clients_*` below).

mod process;

use std::time::Duration;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ReadDoc, ROOT};
use ciborium::Value;
use futures_util::{SinkExt, StreamExt};
use process::{init, murmur, text, NodeProcess};
use tokio_tungstenite::tungstenite::Message;

/// A client's connection: TCP, or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Socket = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

/// How long any one expected message may take.
const PATIENCE: Duration = Duration::from_secs(20);

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("config.toml")
}

fn start_node(extra: &[&str]) -> (tempfile::TempDir, NodeProcess) {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), extra);
    let node = NodeProcess::start(&config(dir.path()));
    (dir, node)
}

/// A document on `node` holding `{"title": TITLE}`.
async fn make_doc(node: &NodeProcess, title: &str) -> String {
    let api = node.api();
    let created = api.call("POST", "/docs", None).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let body = format!(r#"{{"ops": [{{"op": "put", "path": ["title"], "value": "{title}"}}]}}"#);
    let changed = api
        .call("POST", &format!("/docs/{id}/changes"), Some(&body))
        .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    id
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(key, value)| (Value::Text(key.into()), value))
            .collect(),
    )
}

fn s(text: &str) -> Value {
    Value::Text(text.into())
}

fn cbor(value: &Value) -> Vec<u8> {
    let mut bytes = Vec::new();
    ciborium::ser::into_writer(value, &mut bytes).unwrap();
    bytes
}

/// The field `key` of a decoded message.
fn field<'a>(message: &'a Value, key: &str) -> Option<&'a Value> {
    message
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

fn field_text(message: &Value, key: &str) -> String {
    field(message, key)
        .and_then(Value::as_text)
        .unwrap_or_else(|| panic!("no text `{key}` in {message:?}"))
        .to_owned()
}

/// A bare protocol client.
struct Client {
    socket: Socket,
    peer: String,
    /// Sends its sync messages as an old client would: version 1, with
    /// no capabilities advertised.
    legacy: bool,
}

/// Opens `/sync` on `node` with `token` (in the query); `Err(status)` if the
/// upgrade is refused.
async fn connect(node: &NodeProcess, token: Option<&str>) -> Result<Socket, u16> {
    let addr = node.url.strip_prefix("http://").expect("a plain HTTP node");
    let url = match token {
        Some(token) => format!("ws://{addr}/sync?token={token}"),
        None => format!("ws://{addr}/sync"),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    match tokio_tungstenite::client_async(url, Box::new(tcp) as Box<dyn Io>).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(error) => panic!("cannot connect: {error}"),
    }
}

impl Client {
    /// Connects and joins as `peer`, with a storage id if `storage` (then
    /// not ephemeral); checks the `peer` answer.
    async fn join(
        node: &NodeProcess,
        token: Option<&str>,
        peer: &str,
        storage: Option<&str>,
    ) -> Client {
        let socket = connect(node, token).await.expect("the upgrade is accepted");
        let mut client = Client {
            socket,
            peer: peer.into(),
            legacy: false,
        };
        client.join_as(peer, storage, node).await;
        client
    }

    /// Sends `join` as `peer` and checks the `peer` answer.
    async fn join_as(&mut self, peer: &str, storage: Option<&str>, node: &NodeProcess) {
        let client = self;
        let metadata = match storage {
            Some(storage) => map(vec![
                ("storageId", s(storage)),
                ("isEphemeral", Value::Bool(false)),
            ]),
            None => map(vec![("isEphemeral", Value::Bool(true))]),
        };
        client
            .send(&map(vec![
                ("type", s("join")),
                ("senderId", s(peer)),
                ("supportedProtocolVersions", Value::Array(vec![s("1")])),
                ("peerMetadata", metadata),
            ]))
            .await;
        let answer = client.recv().await.expect("an answer to join");
        assert_eq!(field_text(&answer, "type"), "peer", "{answer:?}");
        assert_eq!(field_text(&answer, "targetId"), peer);
        assert_eq!(field_text(&answer, "selectedProtocolVersion"), "1");
        assert_eq!(field_text(&answer, "senderId"), node.node_id);
        let metadata = field(&answer, "peerMetadata").expect("peerMetadata");
        assert_eq!(field_text(metadata, "storageId"), node.node_id);
        assert_eq!(field(metadata, "isEphemeral"), Some(&Value::Bool(false)));
    }

    async fn send(&mut self, message: &Value) {
        self.send_raw(cbor(message)).await;
    }

    async fn send_raw(&mut self, frame: Vec<u8>) {
        self.socket
            .send(Message::Binary(frame.into()))
            .await
            .expect("send a frame");
    }

    /// The next message, skipping pings; `None` once the socket closed.
    async fn recv(&mut self) -> Option<Value> {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("a message in time");
            match frame {
                Some(Ok(Message::Binary(bytes))) => {
                    return Some(ciborium::de::from_reader(&bytes[..]).expect("CBOR from the node"))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Sends a `sync` (or `request`) message about `doc`.
    async fn sync_message(&mut self, kind: &str, doc: &str, mut data: Vec<u8>) {
        if self.legacy {
            let mut message = sync::Message::decode(&data).unwrap();
            message.flags = None;
            message.version = sync::MessageVersion::V1;
            data = message.encode();
        }
        let message = map(vec![
            ("type", s(kind)),
            ("senderId", s(&self.peer.clone())),
            ("targetId", s("server")),
            ("documentId", s(doc)),
            ("data", Value::Bytes(data)),
        ]);
        self.send(&message).await;
    }

    /// The next message that is not ephemeral or heads news, skipping
    /// those.
    async fn recv_sync(&mut self) -> Option<Value> {
        loop {
            let message = self.recv().await?;
            let kind = field_text(&message, "type");
            if kind != "remote-heads-changed" && kind != "ephemeral" {
                return Some(message);
            }
        }
    }

    /// Syncs `doc` (held locally in `local` with `state`) with the node
    /// until `done(local)` holds, answering every sync message. Returns
    /// the first byte of every sync message the node sent.
    async fn sync_until(
        &mut self,
        doc_id: &str,
        local: &mut Automerge,
        state: &mut sync::State,
        first: &str,
        done: impl Fn(&Automerge) -> bool,
    ) -> Vec<u8> {
        let mut kinds = Vec::new();
        if let Some(message) = local.generate_sync_message(state) {
            self.sync_message(first, doc_id, message.encode()).await;
        }
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !done(local) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "sync never got there"
            );
            let message = self.recv_sync().await.expect("the socket stays open");
            assert_eq!(field_text(&message, "type"), "sync", "{message:?}");
            assert_eq!(field_text(&message, "documentId"), doc_id);
            kinds.push(self.answer(doc_id, &message, local, state).await);
        }
        kinds
    }

    /// Applies the node's sync `message` about `doc` to `local` and sends
    /// the reply, if any; returns the message's first byte (its version).
    async fn answer(
        &mut self,
        doc_id: &str,
        message: &Value,
        local: &mut Automerge,
        state: &mut sync::State,
    ) -> u8 {
        let Some(Value::Bytes(data)) = field(message, "data") else {
            panic!("no data in {message:?}");
        };
        local
            .receive_sync_message(state, sync::Message::decode(data).unwrap())
            .unwrap();
        if let Some(reply) = local.generate_sync_message(state) {
            self.sync_message("sync", doc_id, reply.encode()).await;
        }
        data[0]
    }

    /// Answers the node's sync messages about `doc` until it is quiet for
    /// a moment.
    async fn pump(&mut self, doc_id: &str, local: &mut Automerge, state: &mut sync::State) {
        self.pump_kinds(doc_id, local, state, &mut Vec::new()).await;
    }

    /// [`Client::pump`], noting the first byte of each sync message.
    async fn pump_kinds(
        &mut self,
        doc_id: &str,
        local: &mut Automerge,
        state: &mut sync::State,
        kinds: &mut Vec<u8>,
    ) {
        loop {
            let Ok(frame) =
                tokio::time::timeout(Duration::from_millis(300), self.socket.next()).await
            else {
                return;
            };
            let Some(Ok(Message::Binary(bytes))) = frame else {
                continue;
            };
            let message: Value = ciborium::de::from_reader(&bytes[..]).unwrap();
            if field_text(&message, "type") != "sync" {
                continue;
            }
            kinds.push(self.answer(doc_id, &message, local, state).await);
        }
    }

    /// Expects an `error` message saying `says`, then the socket closing.
    async fn expect_error_and_close(&mut self, says: &str) {
        let message = self
            .recv()
            .await
            .expect("an error message before the close");
        assert_eq!(field_text(&message, "type"), "error", "{message:?}");
        let reason = field_text(&message, "message");
        assert!(reason.contains(says), "{reason:?} does not say {says:?}");
        assert!(
            self.recv().await.is_none(),
            "the socket stays open after: {reason}"
        );
    }
}

fn title(doc: &Automerge) -> Option<String> {
    doc.get(ROOT, "title").ok().flatten().map(|(value, _)| {
        value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned)
    })
}

fn key(doc: &Automerge, key: &str) -> Option<String> {
    doc.get(ROOT, key)
        .ok()
        .flatten()
        .and_then(|(value, _)| value.as_str().map(str::to_owned))
}

/// Status `sync_clients` of `node`.
async fn clients(node: &NodeProcess) -> u64 {
    node.api().call("GET", "/status", None).await.json()["sync_clients"]
        .as_u64()
        .unwrap()
}

async fn wait_for_clients(node: &NodeProcess, count: u64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while clients(node).await != count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sync_clients never became {count}: {}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_client_syncs_a_document_both_ways_with_v1_then_v2_messages() {
    let (_dir, node) = start_node(&[]);
    let doc = make_doc(&node, "from murmur").await;
    let mut client = Client::join(&node, None, "client-a", None).await;

    // What automerge-repo's find() sends for a document it lacks: a
    // request carrying an empty document's sync message, which starts
    // with 0x42 and says the client reads 0x43 messages.
    let (mut local, mut state) = (Automerge::new(), sync::State::new());
    let request = local.generate_sync_message(&mut state).unwrap().encode();
    assert_eq!(request[0], 0x42);
    client.sync_message("request", &doc, request).await;
    let mut kinds = Vec::new();
    client
        .pump_kinds(&doc, &mut local, &mut state, &mut kinds)
        .await;
    assert_eq!(title(&local).as_deref(), Some("from murmur"));

    // The client's change reaches the node.
    let mut tx = local.transaction();
    tx.put(ROOT, "fromClient", "hello").unwrap();
    tx.commit();
    let message = local
        .generate_sync_message(&mut state)
        .expect("a change to send");
    client.sync_message("sync", &doc, message.encode()).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        client
            .pump_kinds(&doc, &mut local, &mut state, &mut kinds)
            .await;
        let read = node
            .api()
            .call("GET", &format!("/docs/{doc}"), None)
            .await
            .json();
        if read["content"]["fromClient"] == "hello" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change never reached the node: {read}"
        );
    }

    // A change made on the node reaches the client unasked.
    let body = r#"{"ops": [{"op": "put", "path": ["fromNode"], "value": "hi"}]}"#;
    let api = node.api();
    assert_eq!(
        api.call("POST", &format!("/docs/{doc}/changes"), Some(body))
            .await
            .status,
        200
    );
    let later = client
        .sync_until(&doc, &mut local, &mut state, "sync", |d| {
            key(d, "fromNode").as_deref() == Some("hi")
        })
        .await;
    kinds.extend(later);
    // The client said it reads 0x43: the node sends those.
    assert!(
        !kinds.is_empty() && kinds.iter().all(|k| *k == 0x43),
        "{kinds:x?}"
    );

    // An older client, which never says so, gets 0x42 messages only, and
    // its 0x42 messages are taken.
    let mut old = Client::join(&node, None, "old-client", None).await;
    old.legacy = true;
    let (mut local, mut state) = (Automerge::new(), sync::State::new());
    let kinds = old
        .sync_until(&doc, &mut local, &mut state, "request", |d| {
            key(d, "fromNode").as_deref() == Some("hi")
        })
        .await;
    assert!(
        !kinds.is_empty() && kinds.iter().all(|k| *k == 0x42),
        "{kinds:x?}"
    );
    let mut tx = local.transaction();
    tx.put(ROOT, "fromOld", "v1").unwrap();
    tx.commit();
    let message = local
        .generate_sync_message(&mut state)
        .expect("a change to send");
    old.sync_message("sync", &doc, message.encode()).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while read(&node, &doc).await["content"]["fromOld"] != "v1" {
        old.pump(&doc, &mut local, &mut state).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old client's change never arrived"
        );
    }
}

#[tokio::test]
async fn unknown_documents_are_unavailable_and_announced_ones_are_created() {
    let (_dir, node) = start_node(&[]);
    let mut client = Client::join(&node, None, "client-b", None).await;
    let missing = murmur::DocumentId([41; 16]).to_string();
    let missing = missing.as_str();
    let empty = Automerge::new()
        .generate_sync_message(&mut sync::State::new())
        .unwrap();
    client
        .sync_message("request", missing, empty.encode())
        .await;
    let answer = client.recv_sync().await.unwrap();
    assert_eq!(field_text(&answer, "type"), "doc-unavailable");
    assert_eq!(field_text(&answer, "documentId"), missing);

    // A document the client made, announced with `sync`: the node makes it.
    let new_id = murmur::DocumentId([42; 16]).to_string();
    let new_id = new_id.as_str();
    let mut local = Automerge::new();
    let mut tx = local.transaction();
    tx.put(ROOT, "title", "made by a client").unwrap();
    tx.commit();
    let mut state = sync::State::new();
    let first = local.generate_sync_message(&mut state).unwrap();
    client.sync_message("sync", new_id, first.encode()).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        client.pump(new_id, &mut local, &mut state).await;
        let read = node
            .api()
            .call("GET", &format!("/docs/{new_id}"), None)
            .await;
        if read.status == 200 && read.json()["content"]["title"] == "made by a client" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never created: {}",
            read.body
        );
    }
}

/// Heads and content of `doc` on `node`, as JSON.
async fn read(node: &NodeProcess, doc: &str) -> serde_json::Value {
    node.api()
        .call("GET", &format!("/docs/{doc}"), None)
        .await
        .json()
}

#[tokio::test]
async fn garbage_unknown_types_and_wrong_sender_ids_close_the_socket_and_change_nothing() {
    let (_dir, node) = start_node(&[]);
    let doc = make_doc(&node, "untouched").await;
    let before = read(&node, &doc).await;
    let sync_from = |sender: &str| {
        let data = Automerge::new()
            .generate_sync_message(&mut sync::State::new())
            .unwrap();
        cbor(&map(vec![
            ("type", s("sync")),
            ("senderId", s(sender)),
            ("targetId", s("server")),
            ("documentId", s(&doc)),
            ("data", Value::Bytes(data.encode())),
        ]))
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0xff, 0x13, 0x37], "not CBOR"),
        (cbor(&s("just a string")), "CBOR map"),
        (
            cbor(&map(vec![("type", s("teleport")), ("senderId", s("bad"))])),
            "unknown message type",
        ),
        (sync_from("somebody-else"), "is not the peer id"),
        (
            cbor(&map(vec![
                ("type", s("sync")),
                ("senderId", s("bad")),
                ("targetId", s("server")),
                ("documentId", s(&doc)),
                ("data", Value::Bytes(vec![0x42, 0xff, 0xff, 0xff])),
            ])),
            "does not decode",
        ),
        (
            cbor(&map(vec![
                ("type", s("sync")),
                ("senderId", s("bad")),
                ("documentId", s("not a document id")),
                ("data", Value::Bytes(vec![])),
            ])),
            "documentId",
        ),
    ];
    for (frame, says) in cases {
        let mut client = Client::join(&node, None, "bad", None).await;
        client.send_raw(frame).await;
        client.expect_error_and_close(says).await;
    }
    // Before `join`, anything else is refused too.
    let mut socket = connect(&node, None).await.unwrap();
    socket
        .send(Message::Binary(sync_from("early").into()))
        .await
        .unwrap();
    let mut early = Client {
        socket,
        peer: "early".into(),
        legacy: false,
    };
    early.expect_error_and_close("must be `join`").await;

    // The node is up, and nothing stored changed.
    assert_eq!(read(&node, &doc).await, before);
    wait_for_clients(&node, 0, PATIENCE).await;
    let listed = node.api().call("GET", "/docs", None).await.json();
    assert_eq!(listed["documents"], serde_json::json!([doc]));
}

#[tokio::test]
async fn an_unsupported_protocol_version_gets_an_error() {
    let (_dir, node) = start_node(&[]);
    let socket = connect(&node, None).await.unwrap();
    let mut client = Client {
        socket,
        peer: "future".into(),
        legacy: false,
    };
    client
        .send(&map(vec![
            ("type", s("join")),
            ("senderId", s("future")),
            ("supportedProtocolVersions", Value::Array(vec![s("2")])),
        ]))
        .await;
    client
        .expect_error_and_close("unsupported protocol version")
        .await;
}

#[tokio::test]
async fn a_second_join_with_the_same_peer_id_replaces_the_first_socket() {
    let (_dir, node) = start_node(&[]);
    let doc = make_doc(&node, "shared").await;
    let mut first = Client::join(&node, None, "same-peer", None).await;
    let mut second = Client::join(&node, None, "same-peer", None).await;
    first.expect_error_and_close("replaced").await;
    // The new socket works.
    let (mut local, mut state) = (Automerge::new(), sync::State::new());
    second
        .sync_until(&doc, &mut local, &mut state, "request", |d| {
            title(d).as_deref() == Some("shared")
        })
        .await;
    wait_for_clients(&node, 1, PATIENCE).await;
}

#[tokio::test]
async fn the_node_pings_and_drops_a_client_that_never_reads() {
    let (_dir, node) = start_node(&[]);
    let doc = make_doc(&node, "busy").await;
    // A client that reads gets pings (tungstenite answers them as it reads).
    let mut reader = Client::join(&node, None, "reader", None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
    loop {
        let frame = tokio::time::timeout(PATIENCE, reader.socket.next())
            .await
            .unwrap();
        if let Some(Ok(Message::Ping(_))) = frame {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ping from the node"
        );
    }

    // A client that asks for a busy document and then never reads again:
    // no pong, and sync messages pile up for it.
    let mut silent = Client::join(&node, None, "silent", None).await;
    let empty = Automerge::new()
        .generate_sync_message(&mut sync::State::new())
        .unwrap();
    silent.sync_message("request", &doc, empty.encode()).await;
    let api = node.api();
    let big = "x".repeat(200_000);
    for i in 0..60 {
        let body = format!(
            r#"{{"ops": [{{"op": "put", "path": ["k{i}"], "value": "{big}"}}], "ack": "applied"}}"#
        );
        let changed = api
            .call("POST", &format!("/docs/{doc}/changes"), Some(&body))
            .await;
        assert_eq!(changed.status, 200, "{}", changed.body);
    }
    // The node drops it (it is dead to pings, or its queue is full), and
    // keeps answering.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let log = node.log();
        let dropped = log.lines().any(|line| {
            line.contains("client=silent")
                && line.contains("client disconnected")
                && (line.contains("does not read") || line.contains("no answer"))
        });
        if dropped {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the silent client was never dropped"
        );
        // The reader keeps the node honest: it must read to stay.
        let _ = tokio::time::timeout(Duration::from_millis(200), reader.socket.next()).await;
    }
    assert_eq!(api.call("GET", "/status", None).await.status, 200);
    drop(silent);
}

#[tokio::test]
async fn tokens_scope_documents_refuse_read_only_changes_and_can_be_revoked() {
    let (dir, node) = start_node(&["--token", "operator-secret"]);
    let _ = dir;
    let (allowed, hidden) = (
        make_doc(&node, "allowed").await,
        make_doc(&node, "hidden").await,
    );
    // No token, or a wrong one: the upgrade is refused.
    assert_eq!(connect(&node, None).await.err(), Some(401));
    assert_eq!(connect(&node, Some("nope.nope")).await.err(), Some(401));

    // `murmur token create --docs ALLOWED --read-only`, against the node.
    let node_args = ["--node", node.url.as_str(), "--token", "operator-secret"];
    let mut args = vec!["token", "create", "--docs", allowed.as_str(), "--read-only"];
    args.extend(node_args);
    let made = murmur(&args);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let token = text(&made.stdout).trim().to_owned();
    let token_id = token.split_once('.').unwrap().0.to_owned();
    let mut listed = vec!["token", "list"];
    listed.extend(node_args);
    let listing = text(&murmur(&listed).stdout);
    assert!(
        listing.contains(&token_id) && listing.contains("read-only"),
        "{listing}"
    );
    assert!(
        !listing.contains(token.split_once('.').unwrap().1),
        "the secret is listed"
    );

    let mut client = Client::join(&node, Some(&token), "scoped", None).await;
    // A document outside the scope does not exist, as far as it can tell.
    let empty = || {
        Automerge::new()
            .generate_sync_message(&mut sync::State::new())
            .unwrap()
            .encode()
    };
    client.sync_message("request", &hidden, empty()).await;
    let answer = client.recv_sync().await.unwrap();
    assert_eq!(field_text(&answer, "type"), "doc-unavailable");
    assert_eq!(field_text(&answer, "documentId"), hidden);
    // Nor may it create one.
    let mut made_here = Automerge::new();
    let mut tx = made_here.transaction();
    tx.put(ROOT, "title", "sneaky").unwrap();
    tx.commit();
    let sneaky = murmur::DocumentId([43; 16]).to_string();
    let sneaky = sneaky.as_str();
    let announce = made_here
        .generate_sync_message(&mut sync::State::new())
        .unwrap();
    client.sync_message("sync", sneaky, announce.encode()).await;
    assert_eq!(
        field_text(&client.recv_sync().await.unwrap(), "type"),
        "doc-unavailable"
    );

    // It reads the one it may.
    let (mut local, mut state) = (Automerge::new(), sync::State::new());
    client
        .sync_until(&allowed, &mut local, &mut state, "request", |d| {
            title(d).as_deref() == Some("allowed")
        })
        .await;
    // Its change is refused, and it is told so.
    let before = read(&node, &allowed).await;
    let mut tx = local.transaction();
    tx.put(ROOT, "title", "defaced").unwrap();
    tx.commit();
    let change = local.generate_sync_message(&mut state).unwrap();
    client.sync_message("sync", &allowed, change.encode()).await;
    let told = loop {
        let message = client.recv_sync().await.expect("still connected");
        if field_text(&message, "type") == "error" {
            break field_text(&message, "message");
        }
    };
    assert!(told.contains("read-only"), "{told}");
    // The node's next sync message comes after the step that took the
    // refused message: its heads are still the node's old ones.
    let next = loop {
        let message = client.recv_sync().await.expect("still connected");
        if field_text(&message, "type") == "sync" {
            break message;
        }
    };
    let Some(Value::Bytes(data)) = field(&next, "data") else {
        panic!("{next:?}");
    };
    let heads: Vec<String> = sync::Message::decode(data)
        .unwrap()
        .heads
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(serde_json::json!(heads), before["heads"]);
    assert_eq!(read(&node, &allowed).await, before);
    let all = node.api().call("GET", "/docs", None).await.json();
    assert!(
        !all.to_string().contains(sneaky),
        "a read-only client created a document"
    );

    // Revoked: the open session closes, and the token no longer opens one.
    let mut revoke = vec!["token", "revoke", token_id.as_str()];
    revoke.extend(node_args);
    let revoked = murmur(&revoke);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    loop {
        match client.recv().await {
            None => panic!("closed without saying why"),
            Some(message) if field_text(&message, "type") == "error" => {
                assert!(field_text(&message, "message").contains("revoked"));
                break;
            }
            Some(_) => {}
        }
    }
    assert!(client.recv().await.is_none());
    assert_eq!(connect(&node, Some(&token)).await.err(), Some(401));
    // The operator's token opens everything.
    let mut operator = Client::join(&node, Some("operator-secret"), "operator", None).await;
    let (mut local, mut state) = (Automerge::new(), sync::State::new());
    operator
        .sync_until(&hidden, &mut local, &mut state, "request", |d| {
            title(d).as_deref() == Some("hidden")
        })
        .await;
}

#[tokio::test]
async fn tokens_survive_a_restart_of_the_node() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &["--token", "operator-secret"]);
    let node = NodeProcess::start(&config(dir.path()));
    let doc = make_doc(&node, "kept").await;
    let made = murmur(&[
        "token",
        "create",
        "--node",
        &node.url,
        "--token",
        "operator-secret",
    ]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let token = text(&made.stdout).trim().to_owned();
    assert!(node.terminate().success());
    let node = NodeProcess::start(&config(dir.path()));
    let mut client = Client::join(&node, Some(&token), "after-restart", None).await;
    let (mut local, mut state) = (Automerge::new(), sync::State::new());
    client
        .sync_until(&doc, &mut local, &mut state, "request", |d| {
            title(d).as_deref() == Some("kept")
        })
        .await;
}

/// The node's answer to a returning client's first sync message about
/// `doc`: the length of the heads it says the two last shared, or `None`
/// if it had nothing to say.
async fn first_answer(
    client: &mut Client,
    doc: &str,
    local: &Automerge,
    state: &mut sync::State,
) -> Option<usize> {
    let message = local.generate_sync_message(state).expect("a first message");
    client.sync_message("sync", doc, message.encode()).await;
    let frame = tokio::time::timeout(Duration::from_secs(2), client.recv_sync())
        .await
        .ok()??;
    let Some(Value::Bytes(data)) = field(&frame, "data") else {
        panic!("{frame:?}");
    };
    let answer = sync::Message::decode(data).unwrap();
    Some(answer.have.first().map_or(0, |have| have.last_sync.len()))
}

#[tokio::test]
async fn a_returning_client_keeps_its_sync_state_by_storage_id() {
    let (_dir, node) = start_node(&[]);
    let doc = make_doc(&node, "remembered").await;
    let (mut local, mut state) = (Automerge::new(), sync::State::new());
    {
        let mut client = Client::join(&node, None, "keeper", Some("storage-1")).await;
        client
            .sync_until(&doc, &mut local, &mut state, "request", |d| {
                title(d).as_deref() == Some("remembered")
            })
            .await;
        client.pump(&doc, &mut local, &mut state).await;
    }
    wait_for_clients(&node, 0, PATIENCE).await;
    // Offline, the client changes the document; it comes back with it but
    // without a sync state of its own (as after clearing its sync
    // states): what the node kept is all either side remembers.
    let mut tx = local.transaction();
    tx.put(ROOT, "offline", "edit").unwrap();
    tx.commit();
    let mut back = Client::join(&node, None, "keeper-again", Some("storage-1")).await;
    let with_state = first_answer(&mut back, &doc, &local, &mut sync::State::new()).await;
    // A stranger with the same document (another storage id) starts
    // afresh: the node knows nothing it shares with it.
    let mut stranger = Client::join(&node, None, "stranger", Some("storage-2")).await;
    let without = first_answer(&mut stranger, &doc, &local, &mut sync::State::new()).await;
    assert_eq!(
        with_state,
        Some(1),
        "the node forgot what it shared with the client"
    );
    assert_eq!(without, Some(0));
}

#[tokio::test]
async fn ephemeral_messages_reach_the_documents_other_clients_once_per_count() {
    let (_dir, node) = start_node(&[]);
    let doc = make_doc(&node, "presence").await;
    let other = make_doc(&node, "elsewhere").await;
    let mut clients = Vec::new();
    for (peer, which) in [("alice", &doc), ("bob", &doc), ("carol", &other)] {
        let mut client = Client::join(&node, None, peer, None).await;
        let (mut local, mut state) = (Automerge::new(), sync::State::new());
        client
            .sync_until(which, &mut local, &mut state, "request", |d| {
                title(d).is_some()
            })
            .await;
        client.pump(which, &mut local, &mut state).await;
        clients.push(client);
    }
    let ephemeral = |count: u64, payload: u8| {
        map(vec![
            ("type", s("ephemeral")),
            ("senderId", s("alice")),
            ("targetId", s("server")),
            ("documentId", s(&doc)),
            ("sessionId", s("session-1")),
            ("count", Value::Integer(count.into())),
            ("data", Value::Bytes(vec![payload])),
        ])
    };
    clients[0].send(&ephemeral(1, 10)).await;
    clients[0].send(&ephemeral(1, 11)).await; // the same count again: dropped
    clients[0].send(&ephemeral(2, 12)).await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let message = clients[1].recv().await.expect("bob stays connected");
        if field_text(&message, "type") != "ephemeral" {
            continue;
        }
        assert_eq!(field_text(&message, "senderId"), "alice");
        assert_eq!(field_text(&message, "targetId"), "bob");
        assert_eq!(field_text(&message, "documentId"), doc);
        let Some(Value::Bytes(data)) = field(&message, "data") else {
            panic!()
        };
        seen.push(data[0]);
    }
    assert_eq!(seen, vec![10, 12]);
    // Nothing more for bob, and nothing for carol (another document), nor
    // back to alice.
    for client in &mut clients {
        while let Ok(Some(Ok(frame))) =
            tokio::time::timeout(Duration::from_millis(500), client.socket.next()).await
        {
            if let Message::Binary(bytes) = frame {
                let message: Value = ciborium::de::from_reader(&bytes[..]).unwrap();
                assert_ne!(
                    field_text(&message, "type"),
                    "ephemeral",
                    "{}: {message:?}",
                    client.peer
                );
            }
        }
    }
}

#[tokio::test]
async fn a_subscribed_client_hears_the_nodes_heads() {
    let (_dir, node) = start_node(&[]);
    let doc = make_doc(&node, "heads").await;
    let mut client = Client::join(&node, None, "watcher", Some("storage-w")).await;
    client
        .send(&map(vec![
            ("type", s("remote-subscription-change")),
            ("senderId", s("watcher")),
            ("targetId", s(&node.node_id)),
            ("add", Value::Array(vec![s(&node.node_id)])),
            ("remove", Value::Null),
        ]))
        .await;
    let empty = Automerge::new()
        .generate_sync_message(&mut sync::State::new())
        .unwrap();
    client.sync_message("request", &doc, empty.encode()).await;
    let heads = read(&node, &doc).await["heads"].clone();
    let expected: Vec<String> = heads
        .as_array()
        .unwrap()
        .iter()
        .map(|head| {
            let hex = head.as_str().unwrap();
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            bs58::encode(bytes).with_check().into_string()
        })
        .collect();
    loop {
        let message = client.recv().await.expect("connected");
        if field_text(&message, "type") != "remote-heads-changed" {
            continue;
        }
        let new_heads = field(&message, "newHeads").unwrap();
        let info = field(new_heads, &node.node_id).expect("the node's storage id");
        let told: Vec<String> = field(info, "heads")
            .and_then(Value::as_array)
            .unwrap()
            .iter()
            .map(|h| h.as_text().unwrap().to_owned())
            .collect();
        assert_eq!(told, expected);
        assert!(field(info, "timestamp").is_some());
        break;
    }
}

/// Two nodes replicating over QUIC, set up with `murmur init`.
fn two_nodes() -> (
    tempfile::TempDir,
    tempfile::TempDir,
    NodeProcess,
    NodeProcess,
) {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (quic_a, quic_b) = (process::free_udp_addr(), process::free_udp_addr());
    let id_a = init(dir_a.path(), &[]);
    let id_b = init(
        dir_b.path(),
        &["--listen", &quic_b, "--peer", &format!("{id_a}@{quic_a}")],
    );
    init(
        dir_a.path(),
        &[
            "--force",
            "--listen",
            &quic_a,
            "--peer",
            &format!("{id_b}@{quic_b}"),
        ],
    );
    let a = NodeProcess::start(&config(dir_a.path()));
    let b = NodeProcess::start(&config(dir_b.path()));
    (dir_a, dir_b, a, b)
}

/// Runs the script `script` of tests/js against two nodes, given a document
/// of node A holding `{"title": "from murmur"}`. The script checks every
/// step and exits non-zero (with the wire trace) if one is not seen in
/// time.
async fn run_script_on_two_nodes(js: std::path::PathBuf, script: &'static str) {
    let (_a_dir, _b_dir, a, b) = two_nodes();
    let doc = make_doc(&a, "from murmur").await;
    let (a_url, b_url) = (a.url.clone(), b.url.clone());
    tokio::task::spawn_blocking(move || process::run_js(&js, script, &[&a_url, &b_url, &doc]))
        .await
        .unwrap();
    let _ = (a, b);
}

/// The real `@automerge/automerge-repo` 2.5.6 client (tests/js): finds a
/// document of node A, edits it, sees node B's edit come over QUIC; a
/// second client on B sees the first one's edit; a document it creates on
/// A is readable on B over HTTP.
#[tokio::test]
async fn real_clients_automerge_repo_syncs_through_two_nodes() {
    let Some(js) = process::js_clients() else {
        return;
    };
    run_script_on_two_nodes(js, "repo_sync.mjs").await;
}

/// A page in headless Chromium (Debian's, driven by playwright-core) syncs
/// a document through node A; the text it types appears on node B.
#[tokio::test]
async fn real_clients_a_browser_page_syncs_through_a_node() {
    let Some(js) = process::js_clients() else {
        return;
    };
    if !std::path::Path::new("/usr/bin/chromium").exists() {
        assert!(
            std::env::var("CI").is_err(),
            "Chromium (/usr/bin/chromium, Debian's `chromium`) is needed for the browser test"
        );
        eprintln!("skipped: /usr/bin/chromium is not installed (apt-get install chromium)");
        return;
    }
    run_script_on_two_nodes(js, "browser_sync.mjs").await;
}

/// A TLS connection to `node` trusting only the certificate in `cert`.
async fn tls_connect(
    node: &NodeProcess,
    cert: &std::path::Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let addr = node.url.strip_prefix("https://").expect("an https URL");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("the TLS handshake with the pinned certificate")
}

#[tokio::test]
async fn https_and_wss_serve_with_the_nodes_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &["--http-tls", "--token", "operator-secret"]);
    let node = NodeProcess::start(&config(dir.path()));
    assert!(node.url.starts_with("https://"), "{}", node.url);
    let cert = dir.path().join("http-cert.pem");

    // HTTPS: a plain HTTP/1.1 request over TLS.
    let mut tls = tls_connect(&node, &cert).await;
    tls.write_all(
        b"POST /docs HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer operator-secret\r\n\
          content-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let doc = answer
        .split("\"id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();

    // wss: the protocol over the same TLS, syncing the document.
    let tls = tls_connect(&node, &cert).await;
    let (socket, _) = tokio_tungstenite::client_async(
        "wss://localhost/sync?token=operator-secret",
        Box::new(tls) as Box<dyn Io>,
    )
    .await
    .unwrap();
    let mut client = Client {
        socket,
        peer: "tls-client".into(),
        legacy: false,
    };
    client.join_as("tls-client", None, &node).await;
    let (mut local, mut state) = (Automerge::new(), sync::State::new());
    let body = r#"{"ops": [{"op": "put", "path": ["title"], "value": "over tls"}]}"#;
    let mut tls = tls_connect(&node, &cert).await;
    let request = format!(
        "POST /docs/{doc}/changes HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer operator-secret\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    client
        .sync_until(&doc, &mut local, &mut state, "request", |d| {
            title(d).as_deref() == Some("over tls")
        })
        .await;

    // The CLI speaks HTTPS too, trusting the certificate it is given.
    let cert_arg = cert.to_str().unwrap();
    let status = murmur(&[
        "status",
        "--node",
        &node.url,
        "--token",
        "operator-secret",
        "--ca-cert",
        cert_arg,
    ]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    assert!(text(&status.stdout).contains(&node.node_id));
    let untrusting = murmur(&["status", "--node", &node.url, "--token", "operator-secret"]);
    assert!(!untrusting.status.success());
    assert!(
        text(&untrusting.stderr).contains("--ca-cert"),
        "{}",
        text(&untrusting.stderr)
    );
    let stranger = tempfile::tempdir().unwrap();
    init(stranger.path(), &["--http-tls"]);
    let wrong = stranger.path().join("http-cert.pem");
    let refused = murmur(&[
        "status",
        "--node",
        &node.url,
        "--token",
        "operator-secret",
        "--ca-cert",
        wrong.to_str().unwrap(),
    ]);
    assert!(
        !refused.status.success(),
        "another node's certificate was trusted"
    );

    // Plain HTTP on the TLS port gets nowhere.
    let plain = node.url.replacen("https://", "http://", 1);
    assert!(process::try_call("GET", &format!("{plain}/status"), None)
        .await
        .is_none_or(|a| a.status != 200));
}
