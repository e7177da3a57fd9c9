//! `murmur-feed-bench`: the change feed of a real `murmur run` process
//! (issue 12, item 11).
//!
//! ```text
//! cargo build --release -p murmur-node -p murmur-bench
//! target/release/murmur-feed-bench --rounds 3
//! target/release/murmur-feed-bench --rounds 3 --write BENCHMARKS.md
//! ```
//!
//! Three figures, each over `--rounds` rounds (medians reported):
//! - **Feed read throughput**: a consumer reads a feed of `--prefill`
//!   entries from the start over HTTP (NDJSON pages of 1,000) while a
//!   writer goes on at 1,000 changes/s; entries/s. There is no baseline
//!   to run beside it (samod and the JS server have no feed): the write
//!   rate is the reference, a consumer keeps up when it reads faster.
//! - **Sink lag**: `murmur sink sqlite` follows the node while a writer
//!   makes 1,000 durable changes/s for `--secs`; for each change, the time
//!   from its acknowledgement to the commit of a SQLite row holding it
//!   (a trigger logs every row write with SQLite's clock); p50 and p99.
//! - **A consumer that reads nothing**: the node's RSS after `--secs` of
//!   1,000 changes/s with an SSE feed client that never reads, beside the
//!   same run with no client, interleaved.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

#[derive(Debug, Parser)]
#[command(
    about = "The change feed of a real murmur node: read throughput, sink lag, a stalled consumer"
)]
struct Cli {
    /// Rounds of each measurement.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of writing for the sink lag and the stalled consumer.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Feed entries written before the throughput read.
    #[arg(long, default_value_t = 20_000)]
    prefill: u64,
    /// The `murmur` binary.
    #[arg(long, default_value = "target/release/murmur")]
    murmur: PathBuf,
    /// Replaces (or appends) the section in this markdown file.
    #[arg(long)]
    write: Option<PathBuf>,
}

const HEADING: &str = "## The change feed (issue 12)";
const RATE: u64 = 1000;
const DOCS: usize = 100;

type Http = Client<HttpConnector, Full<Bytes>>;

/// A `murmur run` process in a temporary directory.
struct NodeProc {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl NodeProc {
    fn start(murmur: &Path) -> anyhow::Result<NodeProc> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().to_str().context("utf-8 path")?;
        let init = Command::new(murmur)
            .args([
                "init",
                "--dir",
                d,
                "--listen",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
            ])
            .output()
            .with_context(|| format!("run {}", murmur.display()))?;
        if !init.status.success() {
            bail!("murmur init: {}", String::from_utf8_lossy(&init.stderr));
        }
        let mut child = Command::new(murmur)
            .args(["run", "--config", &format!("{d}/config.toml")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        let url = line
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .with_context(|| format!("no URL in {line:?}"))?
            .to_owned();
        Ok(NodeProc {
            child,
            url,
            _dir: dir,
        })
    }

    /// The process's resident set, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn send(
    http: &Http,
    method: Method,
    url: &str,
    body: Option<String>,
    accept: &str,
) -> anyhow::Result<(u16, Bytes)> {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("accept", accept)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let response = http.request(request).await?;
    let status = response.status().as_u16();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

async fn json(
    http: &Http,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let (status, bytes) = send(
        http,
        method,
        url,
        body.map(|b| b.to_string()),
        "application/json",
    )
    .await?;
    if status >= 400 {
        bail!("{url}: {status} {}", String::from_utf8_lossy(&bytes));
    }
    Ok(serde_json::from_slice(&bytes)?)
}

async fn create_docs(http: &Http, node: &NodeProc) -> anyhow::Result<Vec<String>> {
    let mut docs = Vec::new();
    for _ in 0..DOCS {
        let created = json(http, Method::POST, &format!("{}/docs", node.url), None).await?;
        docs.push(created["id"].as_str().context("id")?.to_owned());
    }
    Ok(docs)
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Writes at `RATE` changes/s (open loop) for `secs`, change n of the run
/// putting `{"n": n}` into document n % DOCS. Returns (doc, n, acked at ms).
async fn write_at_rate(
    http: &Http,
    node: &NodeProc,
    docs: &[String],
    secs: u64,
) -> Vec<(String, u64, f64)> {
    let mut tasks = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    let total = RATE * secs;
    for n in 0..total {
        tokio::time::sleep_until(start + Duration::from_micros(n * 1_000_000 / RATE)).await;
        let (http, doc) = (http.clone(), docs[n as usize % docs.len()].clone());
        let url = format!("{}/docs/{doc}/changes", node.url);
        tasks.spawn(async move {
            let body = json!({"ops": [{"op": "put", "path": ["n"], "value": n}], "ack": "durable"});
            let ok = json(&http, Method::POST, &url, Some(body)).await.is_ok();
            ok.then(|| (doc, n, now_ms()))
        });
    }
    let mut acked = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some(write)) = done {
            acked.push(write);
        }
    }
    acked
}

/// Entries/s of a consumer reading `prefill` entries from the start while
/// a writer goes on at `RATE`/s.
async fn throughput(cli: &Cli, http: &Http) -> anyhow::Result<f64> {
    let node = NodeProc::start(&cli.murmur)?;
    let docs = create_docs(http, &node).await?;
    // Prefill with 16 writers in parallel.
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16 {
        let (http, docs, url) = (http.clone(), docs.clone(), node.url.clone());
        let count = cli.prefill / 16;
        tasks.spawn(async move {
            for n in 0..count {
                // Unique values: a put of the value a key holds is no change.
                let unique = w * count + n;
                let doc = &docs[unique as usize % docs.len()];
                let body = json!([{"op": "put", "path": ["n"], "value": unique}]);
                json(
                    &http,
                    Method::POST,
                    &format!("{url}/docs/{doc}/changes"),
                    Some(body),
                )
                .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let writer = {
        let (http, docs) = (http.clone(), docs.clone());
        let url = node.url.clone();
        tokio::spawn(async move {
            let mut n = 0_u64;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = tick.tick() => {}
                }
                let doc = &docs[n as usize % docs.len()];
                let body = json!([{"op": "put", "path": ["m"], "value": n}]);
                let _ = json(
                    &http,
                    Method::POST,
                    &format!("{url}/docs/{doc}/changes"),
                    Some(body),
                )
                .await;
                n += 1;
            }
        })
    };
    let started = Instant::now();
    let (mut since, mut read) = (0_u64, 0_u64);
    while read < cli.prefill {
        let url = format!("{}/feed?since={since}&follow=false&limit=1000", node.url);
        let (_, page) = send(http, Method::GET, &url, None, "application/x-ndjson").await?;
        let lines: Vec<&[u8]> = page
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        if lines.is_empty() {
            let status = json(http, Method::GET, &format!("{}/status", node.url), None).await?;
            bail!(
                "the feed ended at {since} before {} entries (the node's feed end: {}, local changes {})",
                cli.prefill,
                status["feed_end"],
                status["engine"]["local_changes"]
            );
        }
        let last: Value = serde_json::from_slice(lines[lines.len() - 1])?;
        since = last["seq"].as_u64().context("seq")?;
        read += lines.len() as u64;
    }
    let rate = read as f64 / started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    let _ = writer.await;
    Ok(rate)
}

/// Sink lag p50 and p99 (ms) at `RATE` durable changes/s.
async fn sink_lag(cli: &Cli, http: &Http) -> anyhow::Result<(f64, f64, usize)> {
    let node = NodeProc::start(&cli.murmur)?;
    let docs = create_docs(http, &node).await?;
    let dir = tempfile::tempdir()?;
    let db_path = dir.path().join("sink.sqlite");
    {
        let db = rusqlite::Connection::open(&db_path)?;
        db.execute_batch(
            "CREATE TABLE documents (id TEXT PRIMARY KEY, heads TEXT NOT NULL, content TEXT NOT NULL, updated_at INTEGER NOT NULL);
             CREATE TABLE lag_log (id TEXT, n INTEGER, at REAL);
             CREATE TRIGGER log_insert AFTER INSERT ON documents BEGIN
                 INSERT INTO lag_log VALUES (new.id, json_extract(new.content, '$.n'), (julianday('now') - 2440587.5) * 86400000.0);
             END;
             CREATE TRIGGER log_update AFTER UPDATE ON documents BEGIN
                 INSERT INTO lag_log VALUES (new.id, json_extract(new.content, '$.n'), (julianday('now') - 2440587.5) * 86400000.0);
             END;",
        )?;
    }
    let mut sink = Command::new(&cli.murmur)
        .args([
            "sink",
            "sqlite",
            "--db",
            db_path.to_str().context("path")?,
            "--node",
            &node.url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let acked = write_at_rate(http, &node, &docs, cli.secs).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = sink.kill();
    let _ = sink.wait();
    let db = rusqlite::Connection::open(&db_path)?;
    let mut logged: std::collections::BTreeMap<String, Vec<(i64, f64)>> = Default::default();
    let mut statement = db.prepare("SELECT id, n, at FROM lag_log ORDER BY at")?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, Option<i64>>(1)?,
            row.get::<_, f64>(2)?,
        ))
    })?;
    for row in rows {
        let (id, n, at) = row?;
        if let Some(n) = n {
            logged.entry(id).or_default().push((n, at));
        }
    }
    let mut lags: Vec<f64> = Vec::with_capacity(acked.len());
    let mut missing = 0;
    for (doc, n, acked_at) in &acked {
        // The first row write of the document holding this change or a
        // later one (the values per document increase).
        match logged
            .get(doc)
            .and_then(|log| log.iter().find(|(m, _)| *m >= *n as i64))
        {
            Some((_, at)) => lags.push((at - acked_at).max(0.0)),
            None => missing += 1,
        }
    }
    lags.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        lags.get(((lags.len() as f64 * q) as usize).min(lags.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok((pick(0.5), pick(0.99), missing))
}

/// The node's RSS (KiB) before and after `secs` of writing, with a feed
/// client that never reads (`stalled`) or none.
async fn rss(cli: &Cli, http: &Http, stalled: bool) -> anyhow::Result<(u64, u64)> {
    let node = NodeProc::start(&cli.murmur)?;
    let docs = create_docs(http, &node).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = node.rss_kib();
    // A response whose body is never polled: the node's writes to it block
    // once the socket buffers fill.
    let held = if stalled {
        let request = Request::builder()
            .uri(format!("{}/feed?since=0", node.url))
            .body(Full::new(Bytes::new()))?;
        Some(http.request(request).await?)
    } else {
        None
    };
    let _ = write_at_rate(http, &node, &docs, cli.secs).await;
    let after = node.rss_kib();
    drop(held);
    Ok((before, after))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !cli.murmur.exists() {
        bail!(
            "{} is missing: cargo build --release -p murmur-node",
            cli.murmur.display()
        );
    }
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let (mut reads, mut p50s, mut p99s, mut missed) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let (mut quiet, mut stalled) = (Vec::new(), Vec::new());
    for round in 1..=cli.rounds {
        let rate = throughput(&cli, &http).await?;
        eprintln!("round {round}: feed read {rate:.0} entries/s");
        reads.push(rate);
        let (p50, p99, missing) = sink_lag(&cli, &http).await?;
        eprintln!("round {round}: sink lag p50 {p50:.1} ms, p99 {p99:.1} ms, {missing} changes never in a row");
        p50s.push(p50);
        p99s.push(p99);
        missed += missing;
        let (before, after) = rss(&cli, &http, false).await?;
        eprintln!("round {round}: no consumer: RSS {before} -> {after} KiB");
        quiet.push((after as f64) - (before as f64));
        let (before, after) = rss(&cli, &http, true).await?;
        eprintln!("round {round}: stalled consumer: RSS {before} -> {after} KiB");
        stalled.push((after as f64) - (before as f64));
    }
    let (quiet, stalled) = (median(quiet), median(stalled));
    let table = format!(
        "{HEADING}\n\n\
         `target/release/murmur-feed-bench --rounds {rounds} --secs {secs} --prefill {prefill}` \
         (after `cargo build --release -p murmur-node -p murmur-bench`), on this machine (2 cores), \
         one `murmur run` process per measurement, medians of {rounds} rounds.\n\n\
         | figure | value |\n|---|---:|\n\
         | feed read throughput over HTTP (NDJSON pages of 1,000) while 1,000 changes/s are written | {read:.0} entries/s |\n\
         | `murmur sink sqlite` lag, change acknowledged `durable` to its SQLite row committed, at 1,000 changes/s: p50 | {p50:.1} ms |\n\
         | the same, p99 | {p99:.1} ms |\n\
         | changes never seen in a row (all rounds) | {missed} |\n\
         | node RSS growth over {secs} s of 1,000 changes/s, no feed client | {quiet:.0} KiB |\n\
         | the same with an SSE feed client that reads nothing | {stalled:.0} KiB |\n",
        rounds = cli.rounds,
        secs = cli.secs,
        prefill = cli.prefill,
        read = median(reads),
        p50 = median(p50s),
        p99 = median(p99s),
    );
    println!("{table}");
    if let Some(path) = &cli.write {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let updated = match text.find(HEADING) {
            Some(start) => {
                let rest = &text[start + HEADING.len()..];
                let end = rest
                    .find("\n## ")
                    .map_or(text.len(), |i| start + HEADING.len() + i + 1);
                format!("{}{table}{}", &text[..start], &text[end..])
            }
            None => format!("{}\n{table}", text.trim_end()),
        };
        std::fs::write(path, updated)?;
    }
    Ok(())
}
