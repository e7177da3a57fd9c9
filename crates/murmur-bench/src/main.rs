//! `murmur-bench`: Murmur, samod and the bare libraries ("floor") side by
//! side on the workloads of issue 9, in one run, interleaved by round.
//!
//! ```text
//! cargo run --release -p murmur-bench -- all                 # everything, 3 rounds
//! cargo run --release -p murmur-bench -- latency --quick     # one workload, ~10x smaller
//! cargo run --release -p murmur-bench -- all --write BENCHMARKS.md
//! ```
//!
//! Each round runs every case once on each system (Murmur, then samod,
//! then the floor), each on a fresh cluster in a fresh temporary directory
//! and a fresh 2-thread tokio runtime, under a time limit. The report gives
//! the median over the rounds and Murmur's ratio to the others, and checks
//! the issue's targets.

mod report;
mod system;
mod systems {
    pub mod floor;
    pub mod murmur;
    pub mod samod;
}
mod workloads;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use clap::{Parser, ValueEnum};

use report::{replace_section, utc_date, verdict, Outcome, Results, BEGIN_MARKER, END_MARKER};
use system::{System, Unsupported};
use systems::{floor::Floor, murmur::Murmur, samod::Samod};
use workloads::{run_case, Case, Sizes};

/// The heading of the section the suite owns in BENCHMARKS.md.
const HEADING: &str = "## Side by side with samod (issue 9)";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Every workload below.
    All,
    /// Replication latency at fixed rates, 2 and 3 nodes.
    Latency,
    /// Many documents written on one node until the other holds them.
    Bulk,
    /// A sustained burst: what the peer delivers, and its catch-up.
    Burst,
    /// Bytes on the wire per change.
    Wire,
    /// Durable local writes (1 and 16 writers) and Applied write latency.
    Durable,
    /// Applied (in-memory) local write latency only.
    Applied,
    /// A large document read cold while small requests go on.
    ColdRead,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SystemName {
    Murmur,
    Samod,
    Floor,
}

#[derive(Debug, Parser)]
#[command(about = "Murmur, samod and bare Automerge + sled side by side (issue 9)")]
struct Cli {
    /// Workloads to run.
    #[arg(value_enum, default_value = "all")]
    workloads: Vec<Workload>,
    /// Rounds; each runs every case on every system once.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Shrinks every size about 10x for a quick look.
    #[arg(long)]
    quick: bool,
    /// Replaces (or appends) the suite's section in this markdown file.
    #[arg(long)]
    write: Option<PathBuf>,
    /// Systems to run, in report order (Murmur's ratios need it first).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "murmur,samod,floor"
    )]
    systems: Vec<SystemName>,
    /// Time limit for one case on one system, in seconds.
    #[arg(long)]
    timeout_secs: Option<u64>,
    /// Latency workload: changes per second.
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<u32>>,
    /// Latency workload: cluster sizes.
    #[arg(long, value_delimiter = ',')]
    latency_nodes: Option<Vec<usize>>,
    /// Latency workload: seconds of writing at each rate.
    #[arg(long)]
    latency_secs: Option<f64>,
    /// Bulk workload: documents.
    #[arg(long)]
    bulk_docs: Option<usize>,
    /// Bulk workload: changes per document.
    #[arg(long)]
    bulk_changes: Option<usize>,
    /// Bulk workload: concurrent writers.
    #[arg(long)]
    bulk_writers: Option<usize>,
    /// Burst workload: seconds.
    #[arg(long)]
    burst_secs: Option<f64>,
    /// Wire workload: changes (at 500/s).
    #[arg(long)]
    wire_changes: Option<usize>,
    /// Durable workload: seconds of writing.
    #[arg(long)]
    durable_secs: Option<f64>,
    /// Durable workload: writer counts.
    #[arg(long, value_delimiter = ',')]
    durable_writers: Option<Vec<usize>>,
    /// Applied workload: sequential writes.
    #[arg(long)]
    applied_writes: Option<usize>,
    /// Cold-read workload: changes in the large document.
    #[arg(long)]
    cold_changes: Option<usize>,
    /// Cold-read workload: text bytes per change.
    #[arg(long)]
    cold_value_bytes: Option<usize>,
}

impl Cli {
    fn sizes(&self) -> Sizes {
        let quick = self.quick;
        Sizes {
            rates: self
                .rates
                .clone()
                .unwrap_or_else(|| vec![500, 2_000, 5_000]),
            latency_nodes: self.latency_nodes.clone().unwrap_or_else(|| vec![2, 3]),
            latency_secs: self.latency_secs.unwrap_or(pick(quick, 1.0, 3.0)),
            bulk_docs: self.bulk_docs.unwrap_or(pick(quick, 100, 1_000)),
            bulk_changes: self.bulk_changes.unwrap_or(100),
            bulk_writers: self.bulk_writers.unwrap_or(4),
            burst_secs: self.burst_secs.unwrap_or(pick(quick, 1.0, 5.0)),
            wire_changes: self.wire_changes.unwrap_or(pick(quick, 200, 2_000)),
            durable_secs: self.durable_secs.unwrap_or(pick(quick, 0.5, 3.0)),
            durable_writers: self.durable_writers.clone().unwrap_or_else(|| vec![1, 16]),
            applied_writes: self.applied_writes.unwrap_or(pick(quick, 500, 5_000)),
            cold_changes: self.cold_changes.unwrap_or(pick(quick, 300, 3_000)),
            cold_value_bytes: self.cold_value_bytes.unwrap_or(1_000),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(
            self.timeout_secs
                .unwrap_or(if self.quick { 60 } else { 300 }),
        )
    }
}

/// `quick_value` for a quick run, else `full_value`.
fn pick<T>(quick: bool, quick_value: T, full_value: T) -> T {
    if quick {
        quick_value
    } else {
        full_value
    }
}

/// The cases of the chosen workloads, in run order, without repeats.
fn cases(workloads: &[Workload], sizes: &Sizes) -> Vec<Case> {
    let mut cases = Vec::new();
    let all = workloads.contains(&Workload::All);
    let wanted = |workload| all || workloads.contains(&workload);
    if wanted(Workload::Latency) {
        for &nodes in &sizes.latency_nodes {
            for &rate in &sizes.rates {
                cases.push(Case::Latency { nodes, rate });
            }
        }
    }
    if wanted(Workload::Bulk) {
        cases.push(Case::Bulk);
    }
    if wanted(Workload::Burst) {
        cases.push(Case::Burst);
    }
    if wanted(Workload::Wire) {
        cases.push(Case::Wire);
    }
    if wanted(Workload::Durable) {
        for &writers in &sizes.durable_writers {
            cases.push(Case::Durable { writers });
        }
    }
    if wanted(Workload::Durable) || wanted(Workload::Applied) {
        cases.push(Case::Applied);
    }
    if wanted(Workload::ColdRead) {
        cases.push(Case::ColdRead);
    }
    cases
}

/// Runs one case on a fresh `S` in its own runtime and directory, bounded
/// by `limit`: a stall becomes [`Outcome::TimedOut`], never a hang.
fn run_one<S: System>(case: Case, sizes: &Sizes, limit: Duration) -> Outcome {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return Outcome::Failed(format!("tokio runtime: {error}")),
    };
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(error) => return Outcome::Failed(format!("temp dir: {error}")),
    };
    let path = dir.path().to_path_buf();
    let result = runtime
        .block_on(async { tokio::time::timeout(limit, run_case::<S>(case, sizes, path)).await });
    // Whatever is still running (a stalled case) is abandoned here.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match result {
        Err(_) => Outcome::TimedOut,
        Ok(Ok(samples)) => Outcome::Measured(samples),
        Ok(Err(error)) => match error.downcast_ref::<Unsupported>() {
            Some(unsupported) => Outcome::Skipped(unsupported.to_string()),
            None => Outcome::Failed(format!("{error:#}")),
        },
    }
}

fn run_system(
    name: SystemName,
    case: Case,
    sizes: &Sizes,
    limit: Duration,
) -> (&'static str, Outcome) {
    match name {
        SystemName::Murmur => (Murmur::NAME, run_one::<Murmur>(case, sizes, limit)),
        SystemName::Samod => (Samod::NAME, run_one::<Samod>(case, sizes, limit)),
        SystemName::Floor => (Floor::NAME, run_one::<Floor>(case, sizes, limit)),
    }
}

fn outcome_summary(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Measured(samples) => samples
            .iter()
            .take(3)
            .map(|s| format!("{} {}", s.metric, report::format_value(s.value, s.unit)))
            .collect::<Vec<_>>()
            .join(", "),
        Outcome::Skipped(why) => format!("skipped ({why})"),
        Outcome::TimedOut => "TIMED OUT".to_string(),
        Outcome::Failed(error) => format!("FAILED: {error}"),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let sizes = cli.sizes();
    let cases = cases(&cli.workloads, &sizes);
    let limit = cli.timeout();
    let machine = machine_note();
    let mut results = Results::default();
    let started = Instant::now();
    for round in 1..=cli.rounds {
        for case in &cases {
            let label = case.label(&sizes);
            for &name in &cli.systems {
                let run_started = Instant::now();
                let (system, outcome) = run_system(name, *case, &sizes, limit);
                eprintln!(
                    "[round {round}/{}] {label} | {system}: {} ({:.1} s)",
                    cli.rounds,
                    outcome_summary(&outcome),
                    run_started.elapsed().as_secs_f64()
                );
                results.record(&label, system, outcome);
            }
        }
    }
    let section = render(&cli, &sizes, &results, &machine, started.elapsed());
    print!("{section}");
    if let Some(path) = &cli.write {
        let existing = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(error.into()),
        };
        std::fs::write(path, replace_section(&existing, &section))?;
        eprintln!("wrote the section to {}", path.display());
    }
    Ok(())
}

/// Cores, CPU model and load, for the report.
fn machine_note() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    format!(
        "{cores} cores ({model}), load average {} at the start",
        load_average()
    )
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn git_commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!("{commit} (with uncommitted changes)"),
            _ => commit,
        },
        None => "unknown".to_string(),
    }
}

fn render(cli: &Cli, sizes: &Sizes, results: &Results, machine: &str, took: Duration) -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let systems: Vec<&str> = cli
        .systems
        .iter()
        .map(|name| match name {
            SystemName::Murmur => Murmur::NAME,
            SystemName::Samod => Samod::NAME,
            SystemName::Floor => Floor::NAME,
        })
        .collect();
    let mut out = format!("{BEGIN_MARKER}\n{HEADING}\n\n");
    out.push_str(&format!(
        "- command: `cargo run --release -p murmur-bench -- {}`\n\
         - date: {}; commit {}; {} round(s), interleaved (each round runs every case on {} in turn); took {:.0} s\n\
         - machine: {machine}; load average {} at the end. A shared 2-core machine: \
           other jobs may have run at the same time.\n\
         - sizes: {sizes:?}\n\n",
        args.join(" "),
        utc_date(unix),
        git_commit(),
        cli.rounds,
        systems.join(", "),
        took.as_secs_f64(),
        load_average(),
    ));
    out.push_str(HOW);
    out.push_str(
        "\n### Targets (Murmur)\n\n| target | measured (medians) | met |\n|---|---|:-:|\n",
    );
    for (target, measured, met) in targets(sizes, results) {
        out.push_str(&format!("| {target} | {measured} | {} |\n", verdict(met)));
    }
    out.push_str("\n### Results (median over the rounds)\n\n");
    for case in &results.cases {
        out.push_str(&case.table(&systems, cli.rounds));
        out.push('\n');
    }
    out.push_str(END_MARKER);
    out.push('\n');
    out
}

const HOW: &str = "How each side runs (all in one process, every node on 127.0.0.1 and its own temporary directory):\n\n\
- **Murmur**: the embedded API (`Node::builder().data_dir(..).listen(..)`, `DocHandle::change_with`), real sled, \
  real QUIC; subscribers use `DocHandle::changes()`; bytes are the frame bytes the nodes report sending \
  (`Status::traffic.bytes_out`: without QUIC/UDP headers).\n\
- **samod** 0.16.0 (`tokio` feature): `Repo` with its `TokioFilesystemStorage` (the on-disk layout of \
  automerge-repo's Node.js storage), connected over TCP with samod's own framing \
  (`Transport::from_tokio_io`) and `set_nodelay(true)` on both ends; writes are `DocHandle::with_document`, \
  subscribers `DocHandle::changes()`; bytes are everything written to the sockets. samod has no durable \
  acknowledgement, so the durable cases are skipped for it.\n\
- **floor**: bare Automerge 0.12 + sled 0.34: each change's bytes appended to sled and pushed as they are over \
  TCP (Nagle off) from the writer to each peer, which applies them with `apply_changes`: no acknowledgements, \
  no anti-entropy, no sync protocol (a per-change `automerge::sync` round, tried first, fell behind at a few \
  hundred changes/s). Durable writes use a group commit: one flusher task calls `Db::flush` and acknowledges \
  every write it covered.\n\
- Latency is from the start of the write call to the moment the last peer's subscriber was told \
  (a notification whose heads include a change covers the ones before it). A peer \"fell behind\" if it \
  delivered under 95% of the offered rate or missed a change. Writers at a fixed rate are paced by tokio's \
  1 ms timer, so at 2,000 and 5,000/s they write in small bursts each tick.\n";

/// The issue's targets, checked against the medians.
fn targets(sizes: &Sizes, results: &Results) -> Vec<(String, String, Option<bool>)> {
    let murmur =
        |case: Case, metric: &str| results.median(&case.label(sizes), Murmur::NAME, metric);
    let samod = |case: Case, metric: &str| results.median(&case.label(sizes), Samod::NAME, metric);
    let floor = |case: Case, metric: &str| results.median(&case.label(sizes), Floor::NAME, metric);
    let show = |value: Option<f64>, unit| {
        value.map_or("—".to_string(), |v| report::format_value(v, unit))
    };
    let ms = report::Unit::Millis;
    let mut targets = Vec::new();

    let at_500: Vec<(usize, Option<f64>)> = sizes
        .latency_nodes
        .iter()
        .filter(|_| sizes.rates.contains(&500))
        .map(|&nodes| {
            (
                nodes,
                murmur(Case::Latency { nodes, rate: 500 }, "p99 latency"),
            )
        })
        .collect();
    targets.push((
        "replication p99 ≤ 1 ms at 500 changes/s".to_string(),
        at_500
            .iter()
            .map(|(nodes, p99)| format!("{nodes} nodes: {}", show(*p99, ms)))
            .collect::<Vec<_>>()
            .join("; "),
        all_known(at_500.iter().map(|(_, p99)| p99.map(|v| v <= 1.0))),
    ));

    let mut comparisons = Vec::new();
    for &nodes in &sizes.latency_nodes {
        for &rate in sizes.rates.iter().filter(|rate| **rate <= 5_000) {
            let case = Case::Latency { nodes, rate };
            for metric in ["p50 latency", "p99 latency"] {
                let pair = murmur(case, metric).zip(samod(case, metric));
                comparisons.push((format!("{nodes}n {rate}/s {}", &metric[..3]), pair));
            }
        }
    }
    targets.push((
        "replication no worse than samod at any rate up to 5,000/s (p50 and p99)".to_string(),
        comparisons
            .iter()
            .map(|(what, pair)| match pair {
                Some((m, s)) => format!("{what}: {} vs {}", show(Some(*m), ms), show(Some(*s), ms)),
                None => format!("{what}: —"),
            })
            .collect::<Vec<_>>()
            .join("; "),
        all_known(
            comparisons
                .iter()
                .map(|(_, pair)| pair.map(|(m, s)| m <= s)),
        ),
    ));

    let burst = murmur(Case::Burst, "peer delivered during the burst");
    targets.push((
        "a peer holds ≥ 20,000 changes/s during a sustained burst".to_string(),
        show(burst, report::Unit::PerSecond),
        burst.map(|v| v >= 20_000.0),
    ));

    let (m, s) = (
        murmur(Case::Applied, "p50 latency"),
        samod(Case::Applied, "p50 latency"),
    );
    targets.push((
        "local Applied write (p50) at or below samod's".to_string(),
        format!("{} vs {}", show(m, ms), show(s, ms)),
        m.zip(s).map(|(m, s)| m <= s),
    ));

    let one = Case::Durable { writers: 1 };
    let (m, f) = (murmur(one, "durable writes"), floor(one, "durable writes"));
    targets.push((
        "durable writes ≥ 0.8× the floor with 1 writer".to_string(),
        format!(
            "{} vs {} ({})",
            show(m, report::Unit::PerSecond),
            show(f, report::Unit::PerSecond),
            report::ratio(m, f, report::Unit::PerSecond)
        ),
        m.zip(f).map(|(m, f)| m >= 0.8 * f),
    ));

    let metric = "node 1 holds everything";
    let (m, f) = (murmur(Case::Bulk, metric), floor(Case::Bulk, metric));
    targets.push((
        "bulk ≤ 1.5× the floor".to_string(),
        format!(
            "{} vs {} ({})",
            show(m, report::Unit::Seconds),
            show(f, report::Unit::Seconds),
            report::ratio(m, f, report::Unit::Seconds)
        ),
        m.zip(f).map(|(m, f)| m <= 1.5 * f),
    ));

    let p99 = murmur(Case::ColdRead, "other requests during the load: p99");
    let cold = murmur(Case::ColdRead, "cold read (load and first read)");
    targets.push((
        "other requests' p99 < 10 ms while a large cold document loads".to_string(),
        format!("{} (cold read {})", show(p99, ms), show(cold, ms)),
        p99.map(|v| v < 10.0),
    ));
    targets
}

/// `Some(true)` if every check is known and true, `Some(false)` if any is
/// false, `None` if some are unknown and none false (or there are none).
fn all_known(checks: impl Iterator<Item = Option<bool>>) -> Option<bool> {
    let checks: Vec<Option<bool>> = checks.collect();
    if checks.contains(&Some(false)) {
        Some(false)
    } else if checks.is_empty() || checks.contains(&None) {
        None
    } else {
        Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_fails_on_any_miss_and_is_unknown_on_a_gap() {
        assert_eq!(all_known([Some(true), Some(true)].into_iter()), Some(true));
        assert_eq!(
            all_known([Some(true), None, Some(false)].into_iter()),
            Some(false)
        );
        assert_eq!(all_known([Some(true), None].into_iter()), None);
        assert_eq!(all_known(std::iter::empty()), None);
    }

    #[test]
    fn all_expands_to_every_case_once() {
        let cli = Cli::parse_from(["murmur-bench", "all", "latency", "--quick"]);
        let sizes = cli.sizes();
        let all = cases(&cli.workloads, &sizes);
        assert_eq!(all.len(), 6 + 1 + 1 + 1 + 2 + 1 + 1);
        assert_eq!(sizes.bulk_docs, 100);
        let durable = cases(&[Workload::Durable], &sizes);
        assert_eq!(
            durable,
            vec![
                Case::Durable { writers: 1 },
                Case::Durable { writers: 16 },
                Case::Applied
            ]
        );
    }
}
