//! samod baseline for Murmur's document-set reconciliation benchmark (issue 5).
//!
//! ```text
//! cargo run --release --manifest-path bench/samod-compare/Cargo.toml -- --docs 10000
//! ```
//!
//! Same workload as `crates/murmur-core/examples/reconcile.rs`:
//!
//! 1. **Build**: repo A creates `--docs` documents (one small change each,
//!    `n = i`) with `Repo::create`, which persists each to A's storage. A's
//!    storage contents (minus its storage-adapter id) are copied into a fresh
//!    storage for repo B, and B opens every document with `Repo::find`
//!    (loaded from storage; B has no connections yet). Both now hold the same
//!    N documents at the same heads, with every document open, because samod
//!    only synchronises documents that have a running document actor.
//! 2. **Edit**: `--differ` documents are edited while apart, half on each side.
//! 3. **Measure**: B makes an acceptor, A dials it through an in-process
//!    channel transport that counts every wire message (each transport item
//!    is one encoded samod message: CBOR envelope + Automerge sync message),
//!    both directions. Default share policy: read-write, announce.
//!    Stops when the edited documents have the same heads on both sides and
//!    no message has moved for `--quiet-ms`; then checks that all N documents
//!    have identical heads, and reads `VmHWM`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use automerge::{Automerge, ChangeHash, ROOT, transaction::Transactable};
use futures::{SinkExt, StreamExt, channel::mpsc};
use samod::storage::{Storage, StorageKey};
use samod::{AcceptorHandle, BackoffConfig, DialError, Dialer, DocHandle, Repo, Transport};

struct Args {
    docs: usize,
    differ: usize,
    quiet_ms: u64,
    timeout_s: u64,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        docs: 10_000,
        differ: 10,
        quiet_ms: 2_000,
        timeout_s: 900,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().context("missing value");
        match arg.as_str() {
            "--docs" => args.docs = value()?.parse()?,
            "--differ" => args.differ = value()?.parse()?,
            "--quiet-ms" => args.quiet_ms = value()?.parse()?,
            "--timeout-s" => args.timeout_s = value()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

/// In-memory storage whose contents can be copied (samod's `InMemoryStorage`
/// does not expose its map).
#[derive(Clone, Default)]
struct MemStorage(Arc<Mutex<HashMap<StorageKey, Vec<u8>>>>);

impl Storage for MemStorage {
    fn load(&self, key: StorageKey) -> impl Future<Output = Option<Vec<u8>>> + Send {
        futures::future::ready(self.0.lock().unwrap().get(&key).cloned())
    }
    fn load_range(
        &self,
        prefix: StorageKey,
    ) -> impl Future<Output = HashMap<StorageKey, Vec<u8>>> + Send {
        futures::future::ready(
            self.0
                .lock()
                .unwrap()
                .iter()
                .filter(|(k, _)| prefix.is_prefix_of(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }
    fn put(&self, key: StorageKey, data: Vec<u8>) -> impl Future<Output = ()> + Send {
        self.0.lock().unwrap().insert(key, data);
        futures::future::ready(())
    }
    fn delete(&self, key: StorageKey) -> impl Future<Output = ()> + Send {
        self.0.lock().unwrap().remove(&key);
        futures::future::ready(())
    }
}

#[derive(Default)]
struct Counters {
    messages: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
    /// Milliseconds since `origin` of the last message seen.
    last_ms: AtomicU64,
}

struct Counted {
    counters: Arc<Counters>,
    origin: Instant,
}

impl Counted {
    fn record(&self, dir: usize, len: usize) {
        self.counters.messages[dir].fetch_add(1, Ordering::Relaxed);
        self.counters.bytes[dir].fetch_add(len as u64, Ordering::Relaxed);
        self.counters
            .last_ms
            .fetch_max(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// An in-process dialer (like samod's `ChannelDialer`) whose sinks count
/// every message's encoded length. Direction 0 = A→B, 1 = B→A.
struct CountingDialer {
    acceptor: AcceptorHandle,
    counted: Arc<Counted>,
}

fn counting_sink(
    tx: mpsc::UnboundedSender<Vec<u8>>,
    counted: Arc<Counted>,
    dir: usize,
) -> impl futures::Sink<Vec<u8>, Error = mpsc::SendError> + Send + Unpin + 'static {
    tx.with(move |msg: Vec<u8>| {
        counted.record(dir, msg.len());
        futures::future::ready(Ok::<_, mpsc::SendError>(msg))
    })
}

impl Dialer for CountingDialer {
    type Error = Infallible;

    fn url(&self) -> url::Url {
        url::Url::parse("channel://a-to-b").unwrap()
    }

    fn connect(
        &self,
    ) -> futures::future::BoxFuture<'static, Result<Transport, DialError<Self::Error>>> {
        let acceptor = self.acceptor.clone();
        let counted = self.counted.clone();
        Box::pin(async move {
            let (a_tx, a_rx) = mpsc::unbounded::<Vec<u8>>();
            let (b_tx, b_rx) = mpsc::unbounded::<Vec<u8>>();
            acceptor
                .accept(Transport::new(
                    a_rx.map(Ok::<_, Infallible>),
                    counting_sink(b_tx, counted.clone(), 1),
                ))
                .map_err(DialError::transient)?;
            Ok(Transport::new(
                b_rx.map(Ok::<_, Infallible>),
                counting_sink(a_tx, counted, 0),
            ))
        })
    }
}

fn status_kib(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field}"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("bad line")?
        .parse()?)
}

fn heads(handle: &DocHandle) -> Vec<ChangeHash> {
    handle.with_document(|doc| doc.get_heads())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let n = args.docs;
    let rss0 = status_kib("VmRSS:")?;

    // --- Build A ---
    let storage_a = MemStorage::default();
    let repo_a = Repo::build_tokio()
        .with_storage(storage_a.clone())
        .with_peer_id("a".into())
        .load()
        .await;
    let started = Instant::now();
    let handles_a: Vec<DocHandle> = futures::stream::iter(0..n)
        .map(|i| {
            let repo = repo_a.clone();
            async move {
                let mut doc = Automerge::new();
                doc.transact::<_, _, automerge::AutomergeError>(|tx| {
                    tx.put(ROOT, "n", i as i64)?;
                    Ok(())
                })
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                repo.create(doc)
                    .await
                    .map_err(|_| anyhow::anyhow!("stopped"))
            }
        })
        .buffered(256)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let built_a = started.elapsed();
    let rss_a = status_kib("VmRSS:")?;
    eprintln!(
        "A: created {n} documents in {:.1} s; RSS +{} MiB ({:.1} KiB per open document incl. storage copy)",
        built_a.as_secs_f64(),
        (rss_a - rss0) / 1024,
        (rss_a - rss0) as f64 / n as f64
    );

    // `create` can resolve before every storage write has landed: wait until
    // each document has something in A's storage and the key count is stable.
    let ids: std::collections::HashSet<String> = handles_a
        .iter()
        .map(|h| h.document_id().to_string())
        .collect();
    let mut last_keys = usize::MAX;
    for attempt in 0.. {
        let (stored, keys) = {
            let a = storage_a.0.lock().unwrap();
            let stored: std::collections::HashSet<String> = a
                .keys()
                .filter_map(|k| k.to_string().split('/').next().map(str::to_owned))
                .filter(|first| ids.contains(first))
                .collect();
            (stored.len(), a.len())
        };
        if stored == n && keys == last_keys {
            break;
        }
        if attempt > 600 {
            bail!("A's storage did not settle: {stored} of {n} documents stored");
        }
        last_keys = keys;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // --- Build B from a copy of A's storage ---
    let storage_b = MemStorage::default();
    {
        let a = storage_a.0.lock().unwrap();
        let mut b = storage_b.0.lock().unwrap();
        let id_key = StorageKey::storage_id_path();
        for (k, v) in a.iter().filter(|(k, _)| **k != id_key) {
            b.insert(k.clone(), v.clone());
        }
    }
    let repo_b = Repo::build_tokio()
        .with_storage(storage_b.clone())
        .with_peer_id("b".into())
        .load()
        .await;
    let started = Instant::now();
    let handles_b: Vec<DocHandle> =
        futures::stream::iter(handles_a.iter().map(|h| h.document_id().clone()))
            .map(|id| {
                let repo = repo_b.clone();
                async move {
                    repo.find(id.clone())
                        .await
                        .map_err(|_| anyhow::anyhow!("stopped"))?
                        .with_context(|| format!("B could not load {id}"))
                }
            })
            .buffered(256)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
    let rss_b = status_kib("VmRSS:")?;
    eprintln!(
        "B: opened {n} documents from storage in {:.1} s; RSS +{} MiB ({:.1} KiB per open document)",
        started.elapsed().as_secs_f64(),
        (rss_b.saturating_sub(rss_a)) / 1024,
        rss_b.saturating_sub(rss_a) as f64 / n as f64
    );
    for i in (0..n).step_by((n / 100).max(1)) {
        if heads(&handles_a[i]) != heads(&handles_b[i]) {
            bail!("document {i} differs before the edits");
        }
    }

    // --- Edit d documents while apart, half on each side ---
    let step = (n / args.differ.max(1)).max(1);
    let edited: Vec<usize> = (0..args.differ).map(|k| (k * step) % n).collect();
    for (k, &i) in edited.iter().enumerate() {
        let handle = if k % 2 == 0 {
            &handles_a[i]
        } else {
            &handles_b[i]
        };
        handle.with_document(|doc| {
            doc.transact::<_, _, automerge::AutomergeError>(|tx| {
                tx.put(ROOT, "edited", k as i64)?;
                Ok(())
            })
            .map_err(|e| anyhow::anyhow!("{e:?}"))
        })?;
    }
    // Let the edits persist before connecting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for &i in &edited {
        if heads(&handles_a[i]) == heads(&handles_b[i]) {
            bail!("edit to document {i} did not take");
        }
    }

    // --- Connect and measure ---
    let origin = Instant::now();
    let counters = Arc::new(Counters::default());
    let counted = Arc::new(Counted {
        counters: counters.clone(),
        origin,
    });
    let acceptor = repo_b.make_acceptor(url::Url::parse("channel://b")?)?;
    let dialer = repo_a.dial(
        BackoffConfig::default(),
        Arc::new(CountingDialer { acceptor, counted }),
    )?;
    let deadline = origin + Duration::from_secs(args.timeout_s);
    let mut edited_converged: Option<Duration> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if Instant::now() > deadline {
            bail!(
                "timed out after {} s: {} messages, {} bytes so far (N = {n}; expected about 2N messages); \
                 edited documents converged: {}; VmHWM {} MiB",
                args.timeout_s,
                counters
                    .messages
                    .iter()
                    .map(|m| m.load(Ordering::Relaxed))
                    .sum::<u64>(),
                counters
                    .bytes
                    .iter()
                    .map(|m| m.load(Ordering::Relaxed))
                    .sum::<u64>(),
                edited_converged.is_some(),
                status_kib("VmHWM:")? / 1024
            );
        }
        if edited_converged.is_none()
            && edited
                .iter()
                .all(|&i| heads(&handles_a[i]) == heads(&handles_b[i]))
        {
            edited_converged = Some(origin.elapsed());
        }
        let last = Duration::from_millis(counters.last_ms.load(Ordering::Relaxed));
        if edited_converged.is_some()
            && counters.messages[0].load(Ordering::Relaxed) > 0
            && origin.elapsed() > last + Duration::from_millis(args.quiet_ms)
        {
            break;
        }
    }
    let edited_converged = edited_converged.unwrap();
    let last_message = Duration::from_millis(counters.last_ms.load(Ordering::Relaxed));
    let mut differing = 0;
    for i in 0..n {
        if heads(&handles_a[i]) != heads(&handles_b[i]) {
            differing += 1;
        }
    }
    if differing > 0 {
        bail!("{differing} documents still differ after the exchange went quiet");
    }
    let hwm = status_kib("VmHWM:")?;
    let rss_end = status_kib("VmRSS:")?;
    let m = [0, 1].map(|d| counters.messages[d].load(Ordering::Relaxed));
    let b = [0, 1].map(|d| counters.bytes[d].load(Ordering::Relaxed));
    let total_bytes = b[0] + b[1];
    let total_msgs = m[0] + m[1];
    // Murmur's figures from BENCHMARKS.md (issue 5), total bytes incl. sync.
    let murmur = match n {
        100_000 => Some((12_352u64, 60u64)),
        1_000_000 => Some((16_741, 60)),
        _ => None,
    };

    println!(
        "| N | d | bytes A→B / B→A / total | messages A→B / B→A / total | edited docs converged | last message (quiet) | peak RSS (both repos, one process) | Murmur bytes, messages | samod / Murmur |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {} | {} / {} / {total_bytes} | {} / {} / {total_msgs} | {:.0} ms | {:.0} ms | {} MiB | {} | {} |",
        args.differ,
        b[0],
        b[1],
        m[0],
        m[1],
        edited_converged.as_secs_f64() * 1000.0,
        last_message.as_secs_f64() * 1000.0,
        hwm / 1024,
        murmur.map_or("—".into(), |(mb, mm)| format!("{mb} B, {mm}")),
        murmur.map_or("—".into(), |(mb, mm)| format!(
            "{:.0}× bytes, {:.0}× messages",
            total_bytes as f64 / mb as f64,
            total_msgs as f64 / mm as f64
        )),
    );
    println!(
        "bytes per document: {:.1}; messages per document: {:.2}; RSS now {} MiB; all {n} documents have identical heads",
        total_bytes as f64 / n as f64,
        total_msgs as f64 / n as f64,
        rss_end / 1024
    );
    dialer.close();
    repo_a.stop().await;
    repo_b.stop().await;
    Ok(())
}
