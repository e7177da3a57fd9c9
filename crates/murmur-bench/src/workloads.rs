//! The workloads of issue 9, each written once against [`System`] and run
//! the same way on Murmur, samod and the floor.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use automerge::ChangeHash;
use tokio::sync::mpsc;

use crate::report::{deliveries, percentile, thousands, Sample, Unit};
use crate::system::{Arrival, Edit, Level, System};

/// How long a peer may take to catch up after the writer stops before the
/// changes it lacks count as undelivered.
const CATCH_UP_MAX: Duration = Duration::from_secs(30);
/// How often the cold-read workload makes one of its other requests.
const REQUEST_INTERVAL: Duration = Duration::from_millis(1);
/// How long a workload waits for everything to arrive in bulk.
const BULK_SYNC_MAX: Duration = Duration::from_secs(600);

/// The sizes of every workload.
#[derive(Clone, Debug)]
pub struct Sizes {
    /// Change rates for the latency workload.
    pub rates: Vec<u32>,
    /// Cluster sizes for the latency workload.
    pub latency_nodes: Vec<usize>,
    /// How long the writer writes at each rate.
    pub latency_secs: f64,
    /// Documents in the bulk workload.
    pub bulk_docs: usize,
    /// Changes per document in the bulk workload.
    pub bulk_changes: usize,
    /// Concurrent writers in the bulk workload.
    pub bulk_writers: usize,
    /// How long the burst lasts.
    pub burst_secs: f64,
    /// Changes in the wire workload (at 500/s).
    pub wire_changes: usize,
    /// How long the durable writers write.
    pub durable_secs: f64,
    /// Writer counts for the durable workload.
    pub durable_writers: Vec<usize>,
    /// Sequential writes in the Applied latency workload.
    pub applied_writes: usize,
    /// Changes in the large document of the cold-read workload.
    pub cold_changes: usize,
    /// Bytes of text in each of those changes.
    pub cold_value_bytes: usize,
}

/// One measured unit: a workload at one size, run once per system a round.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Case {
    /// Replication latency at a fixed rate.
    Latency {
        /// Nodes in the cluster (one writer, the rest subscribe).
        nodes: usize,
        /// Changes per second.
        rate: u32,
    },
    /// Many documents written on one node, until the other holds them all.
    Bulk,
    /// The writer as fast as it can go; what the peer keeps up with.
    Burst,
    /// Bytes on the wire per change.
    Wire,
    /// Local durable writes.
    Durable {
        /// Concurrent writers, each on its own document.
        writers: usize,
    },
    /// Local in-memory (Applied) write latency.
    Applied,
    /// A large document loaded cold while small requests go on.
    ColdRead,
}

impl Case {
    /// The case as the report shows it (also its key in the results).
    pub fn label(&self, sizes: &Sizes) -> String {
        match self {
            Case::Latency { nodes, rate } => {
                format!(
                    "latency: {nodes} nodes, {} changes/s",
                    thousands(f64::from(*rate))
                )
            }
            Case::Bulk => format!(
                "bulk: {} documents × {} changes, 2 nodes",
                thousands(sizes.bulk_docs as f64),
                sizes.bulk_changes
            ),
            Case::Burst => format!(
                "burst: {} s as fast as one writer goes, 2 nodes",
                sizes.burst_secs
            ),
            Case::Wire => format!(
                "wire: {} changes at 500/s, 2 nodes",
                thousands(sizes.wire_changes as f64)
            ),
            Case::Durable { writers: 1 } => "durable: 1 writer, 1 node".to_string(),
            Case::Durable { writers } => format!("durable: {writers} writers, 1 node"),
            Case::Applied => "local Applied write, 1 node".to_string(),
            Case::ColdRead => format!(
                "cold read: {} changes × {} B text, just restarted, 1 node; \
                 meanwhile a small write or read to another document every ms",
                thousands(sizes.cold_changes as f64),
                sizes.cold_value_bytes
            ),
        }
    }
}

/// Runs one case on a fresh cluster of `S` under `dir`.
pub async fn run_case<S: System>(
    case: Case,
    sizes: &Sizes,
    dir: PathBuf,
) -> anyhow::Result<Vec<Sample>> {
    match case {
        Case::Latency { nodes, rate } => latency::<S>(dir, nodes, rate, sizes.latency_secs).await,
        Case::Bulk => bulk::<S>(dir, sizes).await,
        Case::Burst => burst::<S>(dir, sizes.burst_secs).await,
        Case::Wire => wire::<S>(dir, sizes.wire_changes).await,
        Case::Durable { writers } => durable::<S>(dir, writers, sizes.durable_secs).await,
        Case::Applied => applied::<S>(dir, sizes.applied_writes).await,
        Case::ColdRead => cold_read::<S>(dir, sizes).await,
    }
}

/// What a stream of writes on node 0 looked like from the other nodes.
struct Stream {
    /// Each write's change and when its call began.
    writes: Vec<(ChangeHash, Instant)>,
    /// When the last of the peers had each write (`None`: some never did).
    visible: Vec<Option<Instant>>,
    started: Instant,
    ended: Instant,
    /// Bytes every node sent during the stream and its catch-up.
    bytes: u64,
}

impl Stream {
    fn latencies_ms(&self) -> Vec<f64> {
        self.writes
            .iter()
            .zip(&self.visible)
            .filter_map(|((_, sent), seen)| {
                seen.map(|seen| ms(seen.saturating_duration_since(*sent)))
            })
            .collect()
    }

    fn undelivered(&self) -> usize {
        self.visible.iter().filter(|seen| seen.is_none()).count()
    }

    fn write_secs(&self) -> f64 {
        (self.ended - self.started).as_secs_f64().max(1e-9)
    }

    /// Delivered changes per second, from the first write to the last
    /// delivery.
    fn delivered_per_sec(&self) -> f64 {
        let last = self
            .visible
            .iter()
            .flatten()
            .max()
            .copied()
            .unwrap_or(self.started);
        let delivered = self.visible.len() - self.undelivered();
        delivered as f64 / (last - self.started).as_secs_f64().max(1e-9)
    }

    fn latency_samples(&self) -> Vec<Sample> {
        latency_samples(&self.latencies_ms())
    }
}

/// The p50 and p99 of `latencies` (milliseconds).
fn latency_samples(latencies: &[f64]) -> Vec<Sample> {
    [("p50 latency", 50.0), ("p99 latency", 99.0)]
        .into_iter()
        .map(|(name, p)| {
            Sample::new(
                name,
                Unit::Millis,
                percentile(latencies, p).unwrap_or(f64::NAN),
            )
        })
        .collect()
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Receives arrivals until one includes `last` or `deadline` passes.
async fn arrivals_until(
    subscription: &mut mpsc::UnboundedReceiver<Arrival>,
    last: &ChangeHash,
    deadline: Instant,
) -> anyhow::Result<Vec<Arrival>> {
    let mut arrivals = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline.into(), subscription.recv()).await {
            Ok(Some(arrival)) => {
                let done = arrival.1.contains(last);
                arrivals.push(arrival);
                if done {
                    return Ok(arrivals);
                }
            }
            Ok(None) => bail!("the subscription ended"),
            Err(_) => return Ok(arrivals),
        }
    }
}

/// Writes on node 0 of `sys` — `rate` changes per second, or as fast as
/// one writer can if `None` — for `duration`, and records when every other
/// node saw each change.
async fn stream<S: System>(
    sys: &S,
    nodes: usize,
    rate: Option<u32>,
    duration: Duration,
) -> anyhow::Result<Stream> {
    let doc = sys.create(0).await?;
    let mut subscriptions = Vec::new();
    for node in 1..nodes {
        sys.open(node, &doc).await?;
        subscriptions.push(sys.subscribe(node, &doc).await?);
    }
    // Warm up: one change every peer has seen, so sync states are settled.
    let warm = sys
        .write(0, &doc, Edit::Counter(-1), Level::Applied)
        .await?;
    for subscription in &mut subscriptions {
        let seen = arrivals_until(subscription, &warm, Instant::now() + CATCH_UP_MAX).await?;
        if !seen.last().is_some_and(|(_, heads)| heads.contains(&warm)) {
            bail!("a peer did not get the warm-up change within {CATCH_UP_MAX:?}");
        }
    }
    let bytes_before = sys.wire_bytes().await?;
    let started = Instant::now();
    let planned = rate.map(|rate| (f64::from(rate) * duration.as_secs_f64()).round() as u64);
    let mut writes = Vec::new();
    for seq in 0.. {
        // A writer slower than the rate stops on time too (and the case
        // reports the rate it reached).
        if started.elapsed() >= duration {
            break;
        }
        if let (Some(rate), Some(planned)) = (rate, planned) {
            if seq >= planned {
                break;
            }
            // tokio's timer ticks in milliseconds: at 5,000/s the writer
            // makes about 5 changes a tick, each timed from its own call.
            let due = started + Duration::from_secs_f64(seq as f64 / f64::from(rate));
            tokio::time::sleep_until(due.into()).await;
        }
        let at = Instant::now();
        let hash = sys
            .write(0, &doc, Edit::Counter(seq as i64), Level::Applied)
            .await?;
        writes.push((hash, at));
        // samod's and the floor's writes complete without awaiting
        // anything: let the nodes' other tasks run, as any app would.
        tokio::task::yield_now().await;
    }
    let ended = Instant::now();
    let (last, _) = *writes.last().context("the writer made no change")?;
    let hashes: Vec<ChangeHash> = writes.iter().map(|(hash, _)| *hash).collect();
    let deadline = Instant::now() + CATCH_UP_MAX;
    let mut visible: Vec<Option<Instant>> = vec![Some(started); writes.len()];
    for subscription in &mut subscriptions {
        let arrivals = arrivals_until(subscription, &last, deadline).await?;
        for (slot, seen) in visible.iter_mut().zip(deliveries(&hashes, &arrivals)) {
            *slot = match (*slot, seen) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
    }
    // Let acknowledgements of the last changes go out before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bytes = sys.wire_bytes().await? - bytes_before;
    Ok(Stream {
        writes,
        visible,
        started,
        ended,
        bytes,
    })
}

async fn latency<S: System>(
    dir: PathBuf,
    nodes: usize,
    rate: u32,
    secs: f64,
) -> anyhow::Result<Vec<Sample>> {
    let sys = S::start(dir, nodes).await?;
    let run = stream(&sys, nodes, Some(rate), Duration::from_secs_f64(secs)).await?;
    sys.shutdown().await?;
    let offered = run.writes.len() as f64 / run.write_secs();
    let delivered = run.delivered_per_sec();
    let behind = run.undelivered() > 0 || delivered < 0.95 * f64::from(rate);
    let mut samples = run.latency_samples();
    samples.extend([
        Sample::new("writer reached", Unit::PerSecond, offered),
        Sample::new("delivered", Unit::PerSecond, delivered),
        Sample::new(
            "peer fell behind",
            Unit::Flag,
            if behind { 1.0 } else { 0.0 },
        ),
    ]);
    Ok(samples)
}

async fn burst<S: System>(dir: PathBuf, secs: f64) -> anyhow::Result<Vec<Sample>> {
    let sys = S::start(dir, 2).await?;
    let run = stream(&sys, 2, None, Duration::from_secs_f64(secs)).await?;
    sys.shutdown().await?;
    let during = run
        .visible
        .iter()
        .flatten()
        .filter(|seen| **seen <= run.ended)
        .count();
    let last = run
        .visible
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or(run.ended);
    let mut samples = vec![
        Sample::new(
            "writer",
            Unit::PerSecond,
            run.writes.len() as f64 / run.write_secs(),
        ),
        Sample::new(
            "peer delivered during the burst",
            Unit::PerSecond,
            during as f64 / run.write_secs(),
        ),
        Sample::new(
            "catch-up after the burst",
            Unit::Seconds,
            (last.saturating_duration_since(run.ended)).as_secs_f64(),
        ),
        Sample::new(
            "changes never delivered",
            Unit::Count,
            run.undelivered() as f64,
        ),
    ];
    samples.extend(run.latency_samples());
    Ok(samples)
}

async fn wire<S: System>(dir: PathBuf, changes: usize) -> anyhow::Result<Vec<Sample>> {
    let sys = S::start(dir, 2).await?;
    let rate = 500;
    let run = stream(
        &sys,
        2,
        Some(rate),
        Duration::from_secs_f64(changes as f64 / f64::from(rate)),
    )
    .await?;
    sys.shutdown().await?;
    Ok(vec![
        Sample::new(
            "bytes per change (both directions)",
            Unit::Bytes,
            run.bytes as f64 / run.writes.len() as f64,
        ),
        Sample::new("bytes in all", Unit::Bytes, run.bytes as f64),
    ])
}

async fn bulk<S: System>(dir: PathBuf, sizes: &Sizes) -> anyhow::Result<Vec<Sample>> {
    let sys = Arc::new(S::start(dir, 2).await?);
    let started = Instant::now();
    let writers = sizes.bulk_writers.clamp(1, sizes.bulk_docs.max(1));
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let (sys, docs, changes) = (sys.clone(), sizes.bulk_docs, sizes.bulk_changes);
        tasks.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for _ in (writer..docs).step_by(writers) {
                let doc = sys.create(0).await?;
                for change in 0..changes {
                    sys.write(0, &doc, Edit::Counter(change as i64), Level::Applied)
                        .await?;
                    tokio::task::yield_now().await;
                }
                made.push(doc);
            }
            anyhow::Ok(made)
        }));
    }
    let mut remaining = Vec::new();
    for task in tasks {
        for doc in task.await?? {
            let heads = sys
                .heads(0, &doc)
                .await?
                .context("the writer lost a document")?;
            remaining.push((doc, heads));
        }
    }
    let written = started.elapsed();
    let deadline = Instant::now() + BULK_SYNC_MAX;
    while !remaining.is_empty() {
        let mut still = Vec::new();
        for (doc, heads) in remaining {
            if sys.heads(1, &doc).await?.as_ref() != Some(&heads) {
                still.push((doc, heads));
            }
        }
        remaining = still;
        if Instant::now() > deadline {
            bail!(
                "node 1 still lacks {} documents after {BULK_SYNC_MAX:?}",
                remaining.len()
            );
        }
        if !remaining.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let synced = started.elapsed();
    shutdown_shared(sys).await?;
    let changes = (sizes.bulk_docs * sizes.bulk_changes) as f64;
    Ok(vec![
        Sample::new(
            "node 1 holds everything",
            Unit::Seconds,
            synced.as_secs_f64(),
        ),
        Sample::new("node 0 done writing", Unit::Seconds, written.as_secs_f64()),
        Sample::new(
            "changes end to end",
            Unit::PerSecond,
            changes / synced.as_secs_f64(),
        ),
    ])
}

/// Shuts down a system shared with tasks that have all finished.
async fn shutdown_shared<S: System>(sys: Arc<S>) -> anyhow::Result<()> {
    match Arc::try_unwrap(sys) {
        Ok(sys) => sys.shutdown().await,
        Err(_) => bail!("a task still holds the system"),
    }
}

async fn durable<S: System>(
    dir: PathBuf,
    writers: usize,
    secs: f64,
) -> anyhow::Result<Vec<Sample>> {
    let sys = Arc::new(S::start(dir, 1).await?);
    let duration = Duration::from_secs_f64(secs);
    let mut docs = Vec::new();
    for _ in 0..writers {
        docs.push(sys.create(0).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for doc in docs {
        let sys = sys.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < duration {
                let at = Instant::now();
                sys.write(
                    0,
                    &doc,
                    Edit::Counter(latencies.len() as i64),
                    Level::Durable,
                )
                .await?;
                latencies.push(ms(at.elapsed()));
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    shutdown_shared(sys).await?;
    let mut samples = vec![Sample::new(
        "durable writes",
        Unit::PerSecond,
        latencies.len() as f64 / elapsed,
    )];
    samples.extend(latency_samples(&latencies));
    Ok(samples)
}

async fn applied<S: System>(dir: PathBuf, writes: usize) -> anyhow::Result<Vec<Sample>> {
    let sys = S::start(dir, 1).await?;
    let doc = sys.create(0).await?;
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(writes);
    for seq in 0..writes {
        let at = Instant::now();
        sys.write(0, &doc, Edit::Counter(seq as i64), Level::Applied)
            .await?;
        latencies.push(ms(at.elapsed()));
        tokio::task::yield_now().await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    sys.shutdown().await?;
    let mut samples = latency_samples(&latencies);
    samples.push(Sample::new(
        "writes (one after another)",
        Unit::PerSecond,
        writes as f64 / elapsed,
    ));
    Ok(samples)
}

/// Text that does not compress: `bytes` pseudo-random letters.
fn noise(seed: u64, bytes: usize) -> String {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect()
}

async fn cold_read<S: System>(dir: PathBuf, sizes: &Sizes) -> anyhow::Result<Vec<Sample>> {
    let sys = S::start(dir, 1).await?;
    let small = sys.create(0).await?;
    sys.write(0, &small, Edit::Counter(0), Level::Applied)
        .await?;
    let large = sys.create(0).await?;
    for i in 0..sizes.cold_changes {
        let edit = Edit::Text {
            key: format!("k{i}"),
            value: noise(i as u64, sizes.cold_value_bytes),
        };
        sys.write(0, &large, edit, Level::Applied).await?;
        tokio::task::yield_now().await;
    }
    let heads = sys
        .heads(0, &large)
        .await?
        .context("the large document is gone")?;
    let sys = Arc::new(sys.restart().await?);
    sys.open(0, &small).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (sys, stop, small) = (sys.clone(), stop.clone(), small.clone());
        tokio::spawn(async move {
            let mut requests: Vec<(Instant, f64)> = Vec::new();
            // Paced, not a closed loop: samod's writes return before its
            // storage has them, so a closed loop grows samod's storage queue
            // without bound and its cold load never got its turn.
            let mut tick = tokio::time::interval(REQUEST_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let at = Instant::now();
                if requests.len().is_multiple_of(2) {
                    // The set-up wrote 0: every write here changes something.
                    let edit = Edit::Counter(requests.len() as i64 + 1);
                    sys.write(0, &small, edit, Level::Applied).await?;
                } else {
                    sys.read(0, &small).await?;
                }
                requests.push((at, ms(at.elapsed())));
            }
            anyhow::Ok(requests)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let load_started = Instant::now();
    sys.open(0, &large).await?;
    let keys = sys.read(0, &large).await?;
    let load_ended = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let requests = background.await??;
    if keys != sizes.cold_changes || sys.heads(0, &large).await?.as_ref() != Some(&heads) {
        bail!("the large document came back different after the restart ({keys} keys)");
    }
    shutdown_shared(sys).await?;
    // Every request whose time overlapped the load.
    let during: Vec<f64> = requests
        .iter()
        .filter(|(at, latency)| {
            *at <= load_ended && *at + Duration::from_secs_f64(latency / 1000.0) >= load_started
        })
        .map(|(_, latency)| *latency)
        .collect();
    let before: Vec<f64> = requests
        .iter()
        .filter(|(at, _)| *at < load_started)
        .map(|(_, latency)| *latency)
        .collect();
    Ok(vec![
        Sample::new(
            "cold read (load and first read)",
            Unit::Millis,
            ms(load_ended - load_started),
        ),
        Sample::new(
            "other requests during the load: p99",
            Unit::Millis,
            percentile(&during, 99.0).unwrap_or(f64::NAN),
        ),
        Sample::new(
            "other requests during the load: max",
            Unit::Millis,
            during.iter().copied().fold(f64::NAN, f64::max),
        ),
        Sample::new(
            "other requests during the load: count",
            Unit::Count,
            during.len() as f64,
        ),
        Sample::new(
            "other requests before the load: p99",
            Unit::Millis,
            percentile(&before, 99.0).unwrap_or(f64::NAN),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_deterministic_letters_of_the_asked_length() {
        assert_eq!(noise(7, 64), noise(7, 64));
        assert_ne!(noise(7, 64), noise(8, 64));
        assert_eq!(noise(1, 1000).len(), 1000);
        assert!(noise(3, 100).bytes().all(|b| b.is_ascii_lowercase()));
    }
}
