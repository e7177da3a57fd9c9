//! `murmur-typists`: the typists benchmark's load generator (issue 13,
//! item 7), in Rust, so that one core of generator can drive 256 clients.
//!
//! ```text
//! cargo build --release -p murmur-bench
//! target/release/murmur-typists --url ws://127.0.0.1:7601/sync --n 64 [--secs 20 --rate 10 --drain 30]
//!                               [--server-pid PID]
//! ```
//!
//! `bench/ws/run.mjs --typists target/release/murmur-typists` uses it in
//! place of `typists.mjs`; it prints the same one line of JSON.
//!
//! N clients speak automerge-repo's network protocol "1" (CBOR over a
//! WebSocket) to one server and type into one document, each at `--rate`
//! changes/s for `--secs` seconds, as `typists.mjs --shape counter` does:
//! client 0 makes a document with a map `c<i>` per client, and keystroke k
//! of client i is one change putting `c<i>.n = k`, whose deps are every
//! change the client has (its heads), so the change graph is the one real
//! typists make.
//!
//! What makes a client light (it never materialises the document):
//! - It keeps the set of changes it has (a bit per change), its heads and
//!   the highest op counter, which is all the sync protocol and a new
//!   change need. A change it gets is applied once its deps are all there,
//!   as Automerge applies them; the keystroke (actor, seq) is then seen.
//! - Every change is parsed and verified (its hash checked) by Automerge's
//!   own `Change::from_bytes` once per generator; the other clients that
//!   get the same bytes find them in a shared table keyed by the change's
//!   checksum and compared byte for byte. A browser parses every change
//!   itself, on its own CPU: here 256 clients share one core.
//! - Its sync messages are built directly: heads, `have` with its heads as
//!   `lastSync` (an empty bloom filter: it has nothing beyond them), `need`
//!   for any heads or deps it lacks, and the changes the server asked for.
//!   It replies to a server message when its heads moved since it last
//!   sent them, or something is needed, as Automerge's sync state does.
//! - Messages are version 1 (0x42): the client never advertises version 2,
//!   so both servers send it one change per chunk.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroU64;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use automerge::legacy::{OpId, OpType};
use automerge::sync::{BloomFilter, ChunkList, Have, Message as SyncMessage, MessageVersion};
use automerge::transaction::Transactable;
use automerge::{
    ActorId, AutoCommit, Change, ChangeHash, ExpandedChange, ObjType, ReadDoc, ScalarValue, ROOT,
};
use ciborium::Value;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// As the node: freed pages are reused, not faulted in again for every
/// large frame (a quarter to a half of the generator's CPU at 256 clients
/// with glibc's allocator).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser, Clone)]
#[command(
    about = "N typists in one document through one automerge-repo sync server (protocol 1 over WebSocket)"
)]
struct Args {
    /// The server's WebSocket URL, e.g. ws://127.0.0.1:7601/sync.
    #[arg(long)]
    url: String,
    /// Number of clients.
    #[arg(long, default_value_t = 4)]
    n: usize,
    /// Changes per second per client.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds of typing.
    #[arg(long, default_value_t = 20.0)]
    secs: f64,
    /// Seconds after typing ends before a keystroke not seen by all counts as lost.
    #[arg(long, default_value_t = 30.0)]
    drain: f64,
    /// The server's pid, for its CPU time and RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Clients that connect and fetch the document at a time.
    #[arg(long, default_value_t = 16)]
    connect_batch: usize,
}

// ---------------------------------------------------------------- changes, shared by all clients

/// Hashes a `ChangeHash` by its first eight bytes: they are a SHA-256 digest's.
#[derive(Default)]
struct PrefixHasher(u64);
impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (8 * i);
        }
    }
    fn write_usize(&mut self, _: usize) {}
    fn write_u32(&mut self, v: u32) {
        self.0 ^= u64::from(v);
    }
}
type Fast = BuildHasherDefault<PrefixHasher>;

/// One change as the generator knows it.
struct Info {
    hash: ChangeHash,
    deps: Vec<ChangeHash>,
    /// The deps' indices, sorted, when all were known at insert (always,
    /// unless a server sends a change whose deps it never sent): every
    /// client that gets the change tests and drops its deps by index.
    dep_idx: Option<Vec<u32>>,
    max_op: u64,
    /// The keystroke it is: (client, k).
    keystroke: Option<(u32, u32)>,
    bytes: Vec<u8>,
}

#[derive(Default)]
struct Changes {
    infos: Vec<Info>,
    by_hash: HashMap<ChangeHash, u32, Fast>,
    /// Change chunk checksum (bytes 4..8, the hash's first four) → indices.
    by_checksum: HashMap<u32, Vec<u32>, Fast>,
    /// Actor → client index (a typing change's seq is k + 1).
    actors: HashMap<ActorId, u32>,
    /// Changes Automerge parsed (each once).
    parsed: u64,
}

impl Changes {
    fn checksum(bytes: &[u8]) -> Option<u32> {
        bytes
            .get(4..8)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }

    fn insert(&mut self, change: &Change, bytes: Vec<u8>) -> u32 {
        let hash = change.hash();
        if let Some(&idx) = self.by_hash.get(&hash) {
            return idx;
        }
        let idx = self.infos.len() as u32;
        let keystroke = self
            .actors
            .get(change.actor_id())
            .map(|&c| (c, (change.seq() - 1) as u32));
        if let Some(sum) = Self::checksum(&bytes) {
            self.by_checksum.entry(sum).or_default().push(idx);
        }
        let dep_idx = self.resolve(change.deps());
        self.infos.push(Info {
            hash,
            deps: change.deps().to_vec(),
            dep_idx,
            max_op: change.max_op(),
            keystroke,
            bytes,
        });
        self.by_hash.insert(hash, idx);
        idx
    }

    /// The indices of `deps`, sorted; `None` while one is not known.
    fn resolve(&self, deps: &[ChangeHash]) -> Option<Vec<u32>> {
        let mut indices: Vec<u32> = deps
            .iter()
            .map(|d| self.by_hash.get(d).copied())
            .collect::<Option<_>>()?;
        indices.sort_unstable();
        Some(indices)
    }

    /// The indices of change idx's deps, sorted; `None` while one is not
    /// known.
    fn dep_indices(&self, idx: u32) -> Option<std::borrow::Cow<'_, [u32]>> {
        let info = &self.infos[idx as usize];
        match &info.dep_idx {
            Some(deps) => Some(std::borrow::Cow::Borrowed(deps)),
            None => self.resolve(&info.deps).map(std::borrow::Cow::Owned),
        }
    }

    /// The index of a change chunk from the wire; Automerge parses and
    /// verifies it the first time any client gets these bytes.
    fn intern(&mut self, bytes: &[u8]) -> anyhow::Result<u32> {
        if let Some(sum) = Self::checksum(bytes) {
            if let Some(cands) = self.by_checksum.get(&sum) {
                for &idx in cands {
                    if self.infos[idx as usize].bytes == bytes {
                        return Ok(idx);
                    }
                }
            }
        }
        let change =
            Change::from_bytes(bytes.to_vec()).context("a change chunk that Automerge refuses")?;
        self.parsed += 1;
        Ok(self.insert(&change, bytes.to_vec()))
    }
}

// ---------------------------------------------------------------- clients

struct Client {
    i: u32,
    actor: ActorId,
    tx: Option<mpsc::UnboundedSender<WsMessage>>,
    server_id: Option<String>,
    joined: bool,
    unavailable: u32,
    /// A bit per change index: the client has it.
    known: Vec<u64>,
    heads: Vec<u32>,
    max_op: u64,
    /// Changes waiting for deps.
    pending: Vec<u32>,
    last_sent_heads: Option<Vec<u32>>,
    template: Option<ExpandedChange>,
    prev_op: Option<u64>,
    sent: u32,
    /// Foreign keystrokes seen.
    seen: u64,
}

impl Client {
    fn has(&self, idx: u32) -> bool {
        self.known
            .get(idx as usize / 64)
            .is_some_and(|w| w & (1 << (idx % 64)) != 0)
    }
    fn set(&mut self, idx: u32) {
        let w = idx as usize / 64;
        if self.known.len() <= w {
            self.known.resize(w + 1, 0);
        }
        self.known[w] |= 1 << (idx % 64);
    }
    fn heads_hashes(&self, ch: &Changes) -> Vec<ChangeHash> {
        let mut h: Vec<ChangeHash> = self
            .heads
            .iter()
            .map(|&i| ch.infos[i as usize].hash)
            .collect();
        h.sort();
        h
    }
}

#[derive(Default)]
struct Stats {
    msgs_in: u64,
    msgs_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    disconnects: u64,
    ws_errors: u64,
    doc_unavailable: u64,
    /// Changes a client got that it had already.
    duplicates: u64,
    errors: Vec<String>,
    other_types: std::collections::BTreeMap<String, u64>,
}

impl Stats {
    fn error(&mut self, e: String) {
        if self.errors.len() < 20 {
            self.errors.push(e);
        }
    }
}

struct World {
    args: Args,
    k: usize,
    peer_tag: String,
    doc_id: String,
    ch: Changes,
    clients: Vec<Client>,
    stats: Stats,
    /// Per keystroke (client * K + k): receivers that have it, the latest
    /// arrival among them and the send time (ms since `base`).
    cnt: Vec<u32>,
    max_arr: Vec<f64>,
    sent_at: Vec<f64>,
    lag: Vec<f64>,
    base: Instant,
    stopping: bool,
    last_send: f64,
}

type Shared = Rc<RefCell<World>>;

fn ms_since(base: Instant) -> f64 {
    base.elapsed().as_secs_f64() * 1000.0
}

fn cbor(entries: Vec<(&str, Value)>) -> Vec<u8> {
    let map = Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::Text(k.into()), v))
            .collect(),
    );
    let mut out = Vec::new();
    ciborium::into_writer(&map, &mut out).expect("writing CBOR to a Vec");
    out
}

impl World {
    fn send(&mut self, c: usize, frame: Vec<u8>) {
        let Some(tx) = &self.clients[c].tx else {
            return;
        };
        self.stats.msgs_out += 1;
        self.stats.bytes_out += frame.len() as u64;
        let _ = tx.send(WsMessage::Binary(frame.into()));
    }

    /// Sends client c's sync message: its heads, `have` at its heads, what it
    /// needs, and `changes`.
    fn send_sync(&mut self, c: usize, need: Vec<ChangeHash>, changes: Vec<Vec<u8>>) {
        let cl = &self.clients[c];
        if !cl.joined {
            return;
        }
        let heads = cl.heads_hashes(&self.ch);
        let kind = if heads.is_empty() { "request" } else { "sync" };
        let msg = SyncMessage {
            heads: heads.clone(),
            need,
            have: vec![Have {
                last_sync: heads,
                bloom: BloomFilter::default(),
            }],
            changes: ChunkList::from(changes),
            flags: None,
            version: MessageVersion::V1,
        };
        let frame = cbor(vec![
            ("type", Value::Text(kind.into())),
            ("senderId", Value::Text(self.peer_id(c))),
            (
                "targetId",
                Value::Text(cl.server_id.clone().unwrap_or_default()),
            ),
            ("documentId", Value::Text(self.doc_id.clone())),
            ("data", Value::Bytes(msg.encode())),
        ]);
        let sent = self.clients[c].heads.clone();
        self.clients[c].last_sent_heads = Some(sent);
        self.send(c, frame);
    }

    fn peer_id(&self, c: usize) -> String {
        format!("typist-{}-{c}", self.peer_tag)
    }

    /// Client c gets change idx; applies it and whatever waited for it.
    fn offer(&mut self, c: usize, idx: u32, now: f64) {
        if self.clients[c].has(idx) || self.clients[c].pending.contains(&idx) {
            self.stats.duplicates += 1;
            return;
        }
        self.clients[c].pending.push(idx);
        loop {
            let mut progressed = false;
            let mut p = 0;
            while p < self.clients[c].pending.len() {
                let cand = self.clients[c].pending[p];
                let ready = self
                    .ch
                    .dep_indices(cand)
                    .is_some_and(|deps| deps.iter().all(|&di| self.clients[c].has(di)));
                if ready {
                    self.clients[c].pending.swap_remove(p);
                    self.apply(c, cand, now);
                    progressed = true;
                } else {
                    p += 1;
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn apply(&mut self, c: usize, idx: u32, now: f64) {
        // Sorted, so that dropping the heads it depends on costs
        // O(heads × log deps): a change made while a client lagged names
        // hundreds of heads.
        let dep_idx = self.ch.dep_indices(idx).unwrap_or_default();
        let info = &self.ch.infos[idx as usize];
        let (max_op, keystroke) = (info.max_op, info.keystroke);
        let cl = &mut self.clients[c];
        cl.set(idx);
        cl.heads.retain(|h| dep_idx.binary_search(h).is_err());
        cl.heads.push(idx);
        cl.max_op = cl.max_op.max(max_op);
        if let Some((from, k)) = keystroke {
            if from != cl.i && (k as usize) < self.k {
                cl.seen += 1;
                let x = from as usize * self.k + k as usize;
                self.cnt[x] += 1;
                if now > self.max_arr[x] {
                    self.max_arr[x] = now;
                }
            }
        }
    }

    fn on_frame(&mut self, c: usize, data: &[u8]) {
        let now = ms_since(self.base);
        self.stats.msgs_in += 1;
        self.stats.bytes_in += data.len() as u64;
        let msg: Value = match ciborium::from_reader(data) {
            Ok(v) => v,
            Err(e) => {
                return self.stats.error(format!(
                    "client {c}: undecodable frame ({} bytes): {e}",
                    data.len()
                ))
            }
        };
        let field = |name: &str| -> Option<&Value> {
            msg.as_map()?
                .iter()
                .find(|(k, _)| k.as_text() == Some(name))
                .map(|(_, v)| v)
        };
        let kind = field("type")
            .and_then(Value::as_text)
            .unwrap_or("")
            .to_string();
        match kind.as_str() {
            "peer" => {
                let sid = field("senderId")
                    .and_then(Value::as_text)
                    .map(str::to_string);
                if field("selectedProtocolVersion").and_then(Value::as_text) != Some("1") {
                    self.stats
                        .error(format!("client {c}: selectedProtocolVersion is not \"1\""));
                }
                let cl = &mut self.clients[c];
                cl.server_id = sid;
                cl.joined = true;
            }
            "sync" | "request" => {
                if field("documentId").and_then(Value::as_text) != Some(self.doc_id.as_str()) {
                    return self
                        .stats
                        .error(format!("client {c}: {kind} for another document"));
                }
                let mut msg = msg;
                let data = msg.as_map_mut().and_then(|map| {
                    map.iter_mut()
                        .find(|(k, _)| k.as_text() == Some("data"))
                        .map(|(_, v)| std::mem::replace(v, Value::Null))
                });
                let data = match data {
                    Some(Value::Bytes(b)) => b,
                    Some(Value::Tag(64, b)) => match *b {
                        Value::Bytes(b) => b,
                        _ => {
                            return self
                                .stats
                                .error(format!("client {c}: tag 64 without bytes"))
                        }
                    },
                    _ => return self.stats.error(format!("client {c}: {kind} without data")),
                };
                if let Err(e) = self.on_sync(c, &data, now) {
                    self.stats.error(format!("client {c}: {e:#}"));
                }
            }
            "doc-unavailable" => {
                self.stats.doc_unavailable += 1;
                self.clients[c].unavailable += 1;
            }
            "error" => {
                let m = field("message")
                    .and_then(Value::as_text)
                    .unwrap_or("")
                    .to_string();
                self.stats.error(format!("client {c}: server error: {m}"));
            }
            other => *self.stats.other_types.entry(other.to_string()).or_default() += 1,
        }
    }

    fn on_sync(&mut self, c: usize, data: &[u8], now: f64) -> anyhow::Result<()> {
        let msg = SyncMessage::decode(data).context("undecodable sync message")?;
        for chunk in msg.changes.iter() {
            let idx = self.ch.intern(chunk)?;
            self.offer(c, idx, now);
        }
        // What it lacks: the server's heads it has not got, and the deps of
        // the changes waiting for them.
        let mut need: Vec<ChangeHash> = Vec::new();
        let cl = &self.clients[c];
        let lacks = |h: &ChangeHash| match self.ch.by_hash.get(h) {
            Some(&i) => !cl.has(i) && !cl.pending.contains(&i),
            None => true,
        };
        for h in &msg.heads {
            if lacks(h) && !need.contains(h) {
                need.push(*h);
            }
        }
        for &p in &cl.pending {
            for d in &self.ch.infos[p as usize].deps {
                if lacks(d) && !need.contains(d) {
                    need.push(*d);
                }
            }
        }
        // What the server asked for.
        let mut changes = Vec::new();
        for h in &msg.need {
            if let Some(&i) = self.ch.by_hash.get(h) {
                if cl.has(i) {
                    changes.push(self.ch.infos[i as usize].bytes.clone());
                }
            }
        }
        let moved = cl.last_sent_heads.as_ref() != Some(&cl.heads);
        if moved || !need.is_empty() || !changes.is_empty() {
            self.send_sync(c, need, changes);
        }
        Ok(())
    }

    /// Keystroke k of client c: one change putting `c<i>.n = k`.
    fn keystroke(&mut self, c: usize, k: usize) {
        let now = ms_since(self.base);
        let cl = &self.clients[c];
        let Some(template) = &cl.template else { return };
        let mut e = template.clone();
        e.seq = k as u64 + 1;
        e.start_op = NonZeroU64::new(cl.max_op + 1).expect("max_op + 1 > 0");
        e.deps = cl.heads_hashes(&self.ch);
        e.hash = None;
        e.time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        e.operations[0].action = OpType::Put(ScalarValue::Int(k as i64));
        e.operations[0].pred = cl
            .prev_op
            .map(|p| vec![OpId(p, cl.actor.clone())])
            .unwrap_or_default()
            .into();
        let start = e.start_op.get();
        let change = Change::from(e);
        let bytes = change.raw_bytes().to_vec();
        let idx = self.ch.insert(&change, bytes.clone());
        self.apply(c, idx, now);
        let cl = &mut self.clients[c];
        cl.prev_op = Some(start);
        cl.sent += 1;
        let i = cl.i as usize;
        self.sent_at[i * self.k + k] = now;
        self.last_send = self.last_send.max(now);
        self.send_sync(c, Vec::new(), vec![bytes]);
    }
}

// ---------------------------------------------------------------- connections

async fn connect(w: &Shared, c: usize) -> anyhow::Result<()> {
    let url = w.borrow().args.url.clone();
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
        .await
        .with_context(|| format!("client {c}: connecting to {url}"))?;
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<WsMessage>();
    tokio::task::spawn_local(async move {
        while let Some(m) = rx.recv().await {
            if sink.feed(m).await.is_err() {
                return;
            }
            while let Ok(m) = rx.try_recv() {
                if sink.feed(m).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    {
        let mut wb = w.borrow_mut();
        let cl = &mut wb.clients[c];
        cl.tx = Some(tx);
        cl.joined = false;
        cl.last_sent_heads = None;
        let join = cbor(vec![
            ("type", Value::Text("join".into())),
            ("senderId", Value::Text(wb.peer_id(c))),
            (
                "supportedProtocolVersions",
                Value::Array(vec![Value::Text("1".into())]),
            ),
            (
                "peerMetadata",
                Value::Map(vec![(Value::Text("isEphemeral".into()), Value::Bool(true))]),
            ),
        ]);
        wb.send(c, join);
    }
    let w2 = w.clone();
    tokio::task::spawn_local(async move {
        let mut why = String::from("closed");
        while let Some(frame) = stream.next().await {
            match frame {
                Ok(WsMessage::Binary(b)) => w2.borrow_mut().on_frame(c, &b),
                Ok(WsMessage::Text(t)) => w2
                    .borrow_mut()
                    .stats
                    .error(format!("client {c}: text frame {t}")),
                Ok(WsMessage::Close(f)) => {
                    why = format!("closed: {f:?}");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    w2.borrow_mut().stats.ws_errors += 1;
                    why = format!("error: {e}");
                    break;
                }
            }
        }
        let mut wb = w2.borrow_mut();
        wb.clients[c].joined = false;
        wb.clients[c].tx = None;
        if wb.stopping {
            return;
        }
        wb.stats.disconnects += 1;
        wb.stats.error(format!("client {c}: {why}"));
        drop(wb);
        // Reconnect after a pause, as automerge-repo's client adapter does.
        let w3 = w2.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if w3.borrow().stopping {
                return;
            }
            if connect(&w3, c).await.is_ok()
                && wait(&w3, Duration::from_secs(30), |w| w.clients[c].joined).await
            {
                w3.borrow_mut().send_sync(c, Vec::new(), Vec::new());
            }
        });
    });
    Ok(())
}

/// Polls `cond` every 5 ms until it holds (true) or `limit` passes (false).
async fn wait(w: &Shared, limit: Duration, cond: impl Fn(&World) -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond(&w.borrow()) {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------- process figures

const CLK_TCK: f64 = 100.0;

fn proc_cpu_ms(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s[s.rfind(')')? + 2..].split(' ').collect();
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) * 1000.0 / CLK_TCK)
}

fn proc_rss_mb(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

fn pct(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

fn round1(x: Option<f64>) -> Option<f64> {
    x.map(|v| (v * 10.0).round() / 10.0)
}

struct Cpu {
    gen: Option<f64>,
    srv: Option<f64>,
    t: f64,
}

// ---------------------------------------------------------------- the run

async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let n = args.n;
    if n < 2 {
        bail!("--n must be at least 2");
    }
    let k_per = (args.rate * args.secs).round() as usize;
    let period_ms = 1000.0 / args.rate;
    let tag = format!(
        "{:08x}",
        u32::from_le_bytes(ActorId::random().to_bytes()[..4].try_into()?)
    );

    // The document: a map c<i> per client, made by an actor of its own.
    let mut creator = AutoCommit::new().with_actor(ActorId::random());
    for i in 0..n {
        creator.put_object(ROOT, format!("c{i}"), ObjType::Map)?;
    }
    creator.commit();
    let initial = creator.save();
    let first = creator
        .get_changes(&[])
        .into_iter()
        .next()
        .context("the new document has a change")?
        .clone();
    // automerge-repo's ids are bs58check of a v4 UUID's 16 bytes (1.x
    // refuses other byte strings).
    let mut id = ActorId::random().to_bytes().to_vec();
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    let doc_id = bs58::encode(&id).with_check().into_string();

    let mut ch = Changes::default();
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let actor = ActorId::random();
        ch.actors.insert(actor.clone(), i as u32);
        // The template of this client's keystroke: one put at c<i>.n.
        let mut doc = AutoCommit::load(&initial)?.with_actor(actor.clone());
        let obj = doc
            .get(ROOT, format!("c{i}"))?
            .context("c<i> in the document")?
            .1;
        doc.put(&obj, "n", 0)?;
        doc.commit();
        let template = doc
            .get_last_local_change()
            .context("the template change")?
            .decode();
        clients.push(Client {
            i: i as u32,
            actor,
            tx: None,
            server_id: None,
            joined: false,
            unavailable: 0,
            known: Vec::new(),
            heads: Vec::new(),
            max_op: 0,
            pending: Vec::new(),
            last_sent_heads: None,
            template: Some(template),
            prev_op: None,
            sent: 0,
            seen: 0,
        });
    }
    let first_idx = ch.insert(&first, first.raw_bytes().to_vec());
    let base = Instant::now();
    let w: Shared = Rc::new(RefCell::new(World {
        k: k_per,
        peer_tag: tag,
        doc_id,
        ch,
        clients,
        stats: Stats::default(),
        cnt: vec![0; n * k_per],
        max_arr: vec![0.0; n * k_per],
        sent_at: vec![0.0; n * k_per],
        lag: Vec::with_capacity(n * k_per),
        base,
        stopping: false,
        last_send: 0.0,
        args: args.clone(),
    }));
    let log = |m: String| eprintln!("[typists-rs {:>8.1}s] {m}", base.elapsed().as_secs_f64());

    // Client 0 sends the document and waits until the server has it (its
    // reply's heads are the document's).
    let t_setup = Instant::now();
    connect(&w, 0).await?;
    if !wait(&w, Duration::from_secs(30), |w| w.clients[0].joined).await {
        bail!("client 0: no peer message within 30 s");
    }
    {
        let mut wb = w.borrow_mut();
        wb.apply(0, first_idx, 0.0);
        let bytes = wb.ch.infos[first_idx as usize].bytes.clone();
        wb.send_sync(0, Vec::new(), vec![bytes]);
    }
    // The server acknowledges with a message at the document's heads; a
    // server that answers with nothing leaves last_sent_heads as sent, so
    // poll the server side by asking again with a fresh request from client 1.
    let want = vec![first_idx];
    log(format!(
        "document {} sent by client 0; connecting {} more clients",
        w.borrow().doc_id,
        n - 1
    ));
    let mut next = 1;
    while next < n {
        let batch: Vec<usize> = (next..(next + args.connect_batch).min(n)).collect();
        next += batch.len();
        for &c in &batch {
            connect(&w, c).await?;
        }
        for &c in &batch {
            if !wait(&w, Duration::from_secs(30), |w| w.clients[c].joined).await {
                bail!("client {c}: no peer message within 30 s");
            }
            w.borrow_mut().send_sync(c, Vec::new(), Vec::new());
        }
        for &c in &batch {
            let mut tries = 0;
            loop {
                if wait(&w, Duration::from_millis(250), |w| {
                    w.clients[c].heads == want
                })
                .await
                {
                    break;
                }
                let mut wb = w.borrow_mut();
                if wb.clients[c].unavailable > 0 {
                    // The server may not have stored the creator's document yet.
                    tries += 1;
                    if tries > 40 {
                        bail!("client {c}: doc-unavailable {tries} times");
                    }
                    wb.clients[c].unavailable = 0;
                    wb.send_sync(c, Vec::new(), Vec::new());
                } else if t_setup.elapsed() > Duration::from_secs(120) {
                    bail!("client {c} did not get the document");
                }
            }
        }
    }
    let setup_ms = t_setup.elapsed().as_secs_f64() * 1000.0;
    log(format!(
        "all {n} clients hold the document ({setup_ms:.0} ms); typing {} s at {}/s",
        args.secs, args.rate
    ));

    // Typing: client i's keystrokes are spread over the period, offset i/N.
    let srv = args.server_pid.map(|p| p.to_string());
    let self_cpu = || proc_cpu_ms("self");
    let t0 = ms_since(base) + 500.0;
    let cpu0 = Cpu {
        gen: self_cpu(),
        srv: srv.as_deref().and_then(proc_cpu_ms),
        t: t0,
    };
    {
        let w = w.clone();
        tokio::task::spawn_local(async move {
            for k in 0..k_per {
                for c in 0..n {
                    let due = t0 + (c as f64 * period_ms) / n as f64 + k as f64 * period_ms;
                    let at = base + Duration::from_secs_f64(due / 1000.0);
                    tokio::time::sleep_until(at.into()).await;
                    let mut wb = w.borrow_mut();
                    let lag = ms_since(base) - due;
                    wb.lag.push(lag);
                    wb.keystroke(c, k);
                }
            }
        });
    }
    let mut rss_max: Option<f64> = None;
    let mut cpu1: Option<Cpu> = None;
    let mut typing_end: Option<f64> = None;
    let drain_end;
    let mut converged = false;
    let want_seen = ((n - 1) * k_per) as u64;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(p) = args.server_pid {
            if let Some(r) = proc_rss_mb(p) {
                rss_max = Some(rss_max.unwrap_or(0.0).max(r));
            }
        }
        let wb = w.borrow();
        let sent: usize = wb.clients.iter().map(|c| c.sent as usize).sum();
        let done = wb.clients.iter().filter(|c| c.seen >= want_seen).count();
        let t = ms_since(base);
        if typing_end.is_none() && sent == n * k_per {
            typing_end = Some(wb.last_send);
            cpu1 = Some(Cpu {
                gen: self_cpu(),
                srv: srv.as_deref().and_then(proc_cpu_ms),
                t,
            });
            log(format!(
                "typing done ({:.1} s); draining up to {} s",
                (wb.last_send - t0) / 1000.0,
                args.drain
            ));
        }
        if let Some(te) = typing_end {
            if done == n {
                drain_end = t;
                converged = true;
                break;
            }
            if t > te + args.drain * 1000.0 {
                drain_end = t;
                break;
            }
        } else if t > t0 + args.secs * 4000.0 + 60_000.0 {
            log("typing did not finish in time (generator far behind schedule)".into());
            drain_end = t;
            break;
        }
    }
    let cpu2 = Cpu {
        gen: self_cpu(),
        srv: srv.as_deref().and_then(proc_cpu_ms),
        t: ms_since(base),
    };
    let cpu1 = cpu1.unwrap_or(Cpu {
        gen: cpu2.gen,
        srv: cpu2.srv,
        t: cpu2.t,
    });

    let mut wb = w.borrow_mut();
    wb.stopping = true;
    for c in wb.clients.iter_mut() {
        if let Some(tx) = c.tx.take() {
            let _ = tx.send(WsMessage::Close(None));
        }
    }
    let mut heads: Vec<Vec<ChangeHash>> =
        wb.clients.iter().map(|c| c.heads_hashes(&wb.ch)).collect();
    heads.sort();
    heads.dedup();
    let (mut lat, mut lost, mut unsent) = (Vec::new(), 0u64, 0u64);
    for x in 0..n * k_per {
        if wb.sent_at[x] == 0.0 {
            unsent += 1;
        } else if wb.cnt[x] as usize >= n - 1 {
            lat.push(wb.max_arr[x] - wb.sent_at[x]);
        } else {
            lost += 1;
        }
    }
    lat.sort_by(f64::total_cmp);
    // How the keystrokes that did not reach everyone are spread: over a
    // few clients far behind, or over all of them.
    let want = ((n - 1) * k_per) as u64;
    let behind: Vec<u64> = wb
        .clients
        .iter()
        .map(|c| want.saturating_sub(c.seen))
        .collect();
    let clients_behind = behind.iter().filter(|&&b| b > 0).count();
    let most_behind = behind.iter().copied().max().unwrap_or(0);
    let mut lag = std::mem::take(&mut wb.lag);
    lag.sort_by(f64::total_cmp);
    let cpu_pct = |a: &Cpu, b: &Cpu, srv: bool| {
        let (x, y) = if srv {
            (a.srv?, b.srv?)
        } else {
            (a.gen?, b.gen?)
        };
        Some(100.0 * (y - x) / (b.t - a.t))
    };
    let gen_typing = cpu_pct(&cpu0, &cpu1, false);
    let loadavg: f64 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split(' ').next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0);
    let s = &wb.stats;
    Ok(json!({
        "url": args.url, "n": n, "rate": args.rate, "secs": args.secs, "drain": args.drain,
        "shape": "counter", "api": "rust", "workers": 1,
        "keystrokes": n * k_per, "unsent": unsent, "lost": lost,
        "p50_ms": round1(pct(&lat, 0.5)), "p99_ms": round1(pct(&lat, 0.99)), "max_ms": round1(lat.last().copied()),
        "converged": converged && lost == 0 && unsent == 0 && heads.len() == 1,
        "distinct_heads": heads.len(),
        "clients_behind": clients_behind, "most_behind": most_behind,
        "setup_ms": setup_ms.round(),
        "typing_s": typing_end.map(|te| ((te - t0) / 100.0).round() / 10.0),
        "drain_s": typing_end.map(|te| ((drain_end - te) / 100.0).round() / 10.0),
        "send_lag_p50_ms": round1(pct(&lag, 0.5)), "send_lag_p99_ms": round1(pct(&lag, 0.99)),
        "server_cpu_typing_pct": round1(cpu_pct(&cpu0, &cpu1, true)),
        "server_cpu_total_pct": round1(cpu_pct(&cpu0, &cpu2, true)),
        "server_rss_max_mb": round1(rss_max),
        "gen_cpu_typing_pct": round1(gen_typing), "gen_cpu_total_pct": round1(cpu_pct(&cpu0, &cpu2, false)),
        "generator_bound": pct(&lag, 0.99).unwrap_or(0.0) > 100.0 || gen_typing.unwrap_or(0.0) > 90.0,
        "changes_parsed": wb.ch.parsed,
        "loadavg_1m": loadavg,
        "msgsIn": s.msgs_in, "msgsOut": s.msgs_out, "bytesIn": s.bytes_in, "bytesOut": s.bytes_out,
        "disconnects": s.disconnects, "wsErrors": s.ws_errors, "docUnavailable": s.doc_unavailable, "duplicateChanges": s.duplicates,
        "errors": s.errors, "otherTypes": s.other_types,
    }))
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let local = tokio::task::LocalSet::new();
    let out = local.block_on(&rt, run(args));
    match out {
        Ok(v) => {
            println!("{v}");
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("[typists-rs] failed: {e:#}");
            println!("{}", json!({ "error": format!("{e:#}") }));
            std::process::exit(1);
        }
    }
}
