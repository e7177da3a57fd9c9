//! Benchmark: document-set reconciliation between two nodes on real sled.
//!
//! ```text
//! cargo run --release -p murmur-core --example reconcile -- --docs 100000 --differ 10
//! cargo run --release -p murmur-core --example reconcile -- --docs 1000000 --differ 10
//! ```
//!
//! 1. **Build** (this process): node A writes `--docs` small documents (one
//!    small change each) through the engine into a `SledStore`, in group
//!    commits of 5,000; then its store directory is copied to node B, so
//!    both hold the same documents at the same heads.
//! 2. **Measure** (a child process, so its peak RSS is its own): opens
//!    both nodes, edits `--differ` documents (half on each side), connects
//!    them and delivers messages in waves until both are quiet, counting
//!    frame bytes and round trips; then checks that the next anti-entropy
//!    round costs one message; reads the peak RSS (`VmHWM`); and finally
//!    closes node A and times reopening it (`SledStore::open` +
//!    `Replica::open`) until a first document read is answered.
//!
//! The naive figure is what one side sends to exchange every document's
//! heads: N × (16-byte id + 32 bytes per head), one head each here.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use automerge::{transaction::Transactable, ReadDoc, ROOT};
use murmur_core::{Config, DocumentId, Message, NodeId, Replica, Time};
use murmur_store::SledStore;
use murmur_wire::encode_frame;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const NODE_A: NodeId = NodeId([0xa0; 32]);
const NODE_B: NodeId = NodeId([0xb0; 32]);
const GROUP_COMMIT_DOCS: usize = 5_000;
/// How many document ids the build remembers (evenly spaced) for edits.
const SAMPLE_IDS: usize = 1_000;

struct Args {
    docs: usize,
    differ: usize,
    dir: Option<PathBuf>,
    phase_measure: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        docs: 100_000,
        differ: 10,
        dir: None,
        phase_measure: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--docs" => args.docs = it.next().ok_or("--docs N")?.parse()?,
            "--differ" => args.differ = it.next().ok_or("--differ D")?.parse()?,
            "--dir" => args.dir = Some(it.next().ok_or("--dir PATH")?.into()),
            "--measure" => args.phase_measure = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if args.phase_measure {
        let dir = args.dir.ok_or("--measure needs --dir")?;
        return measure(&dir, args.docs, args.differ);
    }
    let temp = tempfile::tempdir()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let started = Instant::now();
    build(&dir, args.docs)?;
    let built = started.elapsed();
    copy_dir(&dir.join("a"), &dir.join("b"))?;
    println!(
        "built {} documents in {:.1} s ({:.0} docs/s); store {} MiB per node",
        args.docs,
        built.as_secs_f64(),
        args.docs as f64 / built.as_secs_f64(),
        dir_size(&dir.join("a"))? / (1024 * 1024)
    );
    let status = Command::new(std::env::current_exe()?)
        .args(["--measure", "--docs", &args.docs.to_string()])
        .args(["--differ", &args.differ.to_string()])
        .arg("--dir")
        .arg(&dir)
        .status()?;
    if !status.success() {
        return Err("the measuring process failed".into());
    }
    Ok(())
}

fn config(node: NodeId) -> Config {
    // Anti-entropy only when the benchmark says so.
    Config {
        anti_entropy_interval: Duration::from_secs(3600),
        anti_entropy_jitter: Duration::ZERO,
        ..Config::new(node)
    }
}

fn open(dir: &Path, node: NodeId, now: Time) -> Result<(SledStore, Replica)> {
    let store = SledStore::open(dir)?;
    let replica = Replica::open(config(node), Box::new(store.clone()), now)?;
    Ok((store, replica))
}

/// Node A writes `docs` documents, one small change each.
fn build(dir: &Path, docs: usize) -> Result<()> {
    let mut now = Time::from_millis(1_700_000_000_000);
    let (_store, mut replica) = open(&dir.join("a"), NODE_A, now)?;
    let mut sample = Vec::new();
    let step = (docs / SAMPLE_IDS).max(1);
    for i in 0..docs {
        let doc = replica.create_document(now);
        replica.handle_local_change(now, doc, |tx| tx.put(ROOT, "n", i as i64))?;
        if i % step == 0 {
            sample.push(doc);
        }
        if i % GROUP_COMMIT_DOCS == GROUP_COMMIT_DOCS - 1 || i + 1 == docs {
            now = now.add(Duration::from_millis(1));
            replica.flush_now(now)?;
            while replica.poll_event().is_some() {}
            if i % 100_000 == 99_999 {
                eprintln!("  {} documents written", i + 1);
            }
        }
    }
    replica.flush_now(now)?;
    let ids: Vec<u8> = sample.iter().flat_map(|d| d.as_bytes().to_vec()).collect();
    std::fs::write(dir.join("sample-ids"), ids)?;
    Ok(())
}

fn sample_ids(dir: &Path) -> Result<Vec<DocumentId>> {
    let bytes = std::fs::read(dir.join("sample-ids"))?;
    Ok(bytes
        .chunks_exact(16)
        .map(|chunk| {
            let mut id = [0u8; 16];
            id.copy_from_slice(chunk);
            DocumentId::from_bytes(id)
        })
        .collect())
}

#[derive(Default)]
struct Tally {
    messages: u64,
    bytes: u64,
    digest_messages: u64,
    digest_bytes: u64,
    waves: u64,
}

/// Delivers messages between the two replicas in waves (everything one
/// side has queued, then the other's answers) until both are quiet. Two
/// waves make a round trip.
fn exchange(a: &mut Replica, b: &mut Replica, now: &mut Time, tally: &mut Tally) -> Result<()> {
    for _ in 0..10_000 {
        let mut quiet = true;
        for side in 0..2 {
            let (from, to, from_id) = if side == 0 {
                (&mut *a, &mut *b, NODE_A)
            } else {
                (&mut *b, &mut *a, NODE_B)
            };
            // Flushes (and evictions) due now.
            from.handle_timeout(*now);
            from.flush_now(*now)?;
            let mut batch = Vec::new();
            while let Some(transmit) = from.poll_transmit() {
                batch.push(transmit.message);
            }
            while from.poll_event().is_some() {}
            if batch.is_empty() {
                continue;
            }
            quiet = false;
            tally.waves += 1;
            for message in batch {
                let bytes = encode_frame(&message)?.len() as u64;
                tally.messages += 1;
                tally.bytes += bytes;
                if matches!(
                    message,
                    Message::DigestNodes { .. } | Message::DigestLeaves { .. }
                ) {
                    tally.digest_messages += 1;
                    tally.digest_bytes += bytes;
                }
                to.handle_message(*now, from_id, message)?;
            }
            *now = now.add(Duration::from_millis(1));
        }
        if quiet {
            return Ok(());
        }
    }
    Err("the exchange did not settle".into())
}

fn measure(dir: &Path, docs: usize, differ: usize) -> Result<()> {
    let mut now = Time::from_millis(1_700_000_100_000);
    let (_store_a, mut a) = open(&dir.join("a"), NODE_A, now)?;
    let (_store_b, mut b) = open(&dir.join("b"), NODE_B, now)?;
    let sample = sample_ids(dir)?;
    let edited: Vec<DocumentId> = sample.iter().copied().take(differ).collect();
    for (i, doc) in edited.iter().enumerate() {
        let replica = if i % 2 == 0 { &mut a } else { &mut b };
        replica.handle_local_change(now, *doc, |tx| tx.put(ROOT, "edited", i as i64))?;
    }
    now = now.add(Duration::from_millis(1));
    a.flush_now(now)?;
    b.flush_now(now)?;
    while a.poll_event().is_some() {}
    while b.poll_event().is_some() {}

    let started = Instant::now();
    a.handle_peer_up(now, NODE_B);
    b.handle_peer_up(now, NODE_A);
    let mut tally = Tally::default();
    exchange(&mut a, &mut b, &mut now, &mut tally)?;
    let reconcile_time = started.elapsed();
    for doc in &edited {
        if a.heads_fingerprint(*doc)? != b.heads_fingerprint(*doc)? {
            return Err(format!("document {doc} did not converge").into());
        }
    }
    // The next anti-entropy round, with nothing left to find: one message.
    now = now.add(Duration::from_secs(7200));
    let mut idle = Tally::default();
    exchange(&mut a, &mut b, &mut now, &mut idle)?;
    let naive = docs as u64 * (16 + 32);
    let hwm_kib = peak_rss_kib()?;
    let loaded = a.metrics().documents_loaded + b.metrics().documents_loaded;

    drop(a);
    drop(_store_a);
    let restart = Instant::now();
    let (_store, replica) = open(&dir.join("a"), NODE_A, now)?;
    let first = replica.read_document(sample[sample.len() / 2])?;
    let restart_time = restart.elapsed();
    let _ = first.get(ROOT, "n")?;

    println!("| N | d | reconcile bytes (digest / total) | messages | round trips | naive per-document heads bytes | ratio | reconcile time | idle round | peak RSS (both nodes) | restart to first read |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {docs} | {differ} | {} / {} | {} | {} | {naive} | {:.0}x | {:.0} ms | {} msg, {} B | {} MiB | {:.0} ms |",
        tally.digest_bytes,
        tally.bytes,
        tally.messages,
        tally.waves.div_ceil(2),
        naive as f64 / tally.bytes as f64,
        reconcile_time.as_secs_f64() * 1000.0,
        idle.messages,
        idle.bytes,
        hwm_kib / 1024,
        restart_time.as_secs_f64() * 1000.0,
    );
    println!("documents loaded during reconciliation (both nodes): {loaded}");
    Ok(())
}

fn peak_rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .ok_or("no VmHWM in /proc/self/status")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or("bad VmHWM line")?
        .parse()?)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        total += if entry.file_type()?.is_dir() {
            dir_size(&entry.path())?
        } else {
            entry.metadata()?.len()
        };
    }
    Ok(total)
}
