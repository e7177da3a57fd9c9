//! Runs many seeds of a scenario, in parallel, and sums them up.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::check::Finding;
use crate::scenario::Scenario;
use crate::sim::{RunOptions, RunStats};
use crate::stats::Percentiles;
use crate::PlantedBug;

/// One seed's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// True when no checker found anything.
    pub valid: bool,
    /// What the checkers found.
    pub findings: Vec<Finding>,
    /// SHA-256 of the trace.
    pub trace_hash: String,
    /// Nodes in the run.
    pub nodes: usize,
    /// Fault windows in the run.
    pub fault_windows: usize,
    /// Numbers.
    pub stats: RunStats,
    /// Set-full stable latency of the run.
    pub stable_latency_ms: Percentiles,
    /// Wall-clock milliseconds the run took.
    pub wall_ms: f64,
}

/// A scenario's seeds summed up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The scenario.
    pub scenario: String,
    /// Seeds run.
    pub seeds: usize,
    /// Seeds that failed.
    pub failed: Vec<u64>,
    /// Wall-clock seconds.
    pub wall_seconds: f64,
    /// Throughput.
    pub seeds_per_minute: f64,
    /// Convergence time after the heal, over seeds that converged.
    pub convergence_ms: Percentiles,
    /// Stable latency (each seed's p95), over seeds.
    pub stable_latency_p95_ms: Percentiles,
    /// Mean messages per client operation.
    pub messages_per_op: f64,
    /// Mean bytes per client operation.
    pub bytes_per_op: f64,
    /// Operations completed ok / fail / info, over all seeds.
    pub outcomes: (usize, usize, usize),
    /// Per mechanism, in how many seeds it fired.
    #[serde(default)]
    pub mechanisms: BTreeMap<String, usize>,
    /// Mechanisms the scenario claims to exercise that fired in no seed:
    /// the scenario fails.
    #[serde(default)]
    pub unexercised: Vec<String>,
    /// Acknowledgements checked against the stores, over all seeds.
    #[serde(default)]
    pub acks_checked: u64,
}

impl Summary {
    /// True when every seed passed and every claimed mechanism fired.
    pub fn passed(&self) -> bool {
        self.failed.is_empty() && self.unexercised.is_empty()
    }
}

/// Runs one seed and keeps what a summary needs.
pub fn run_one(scenario: &Scenario, seed: u64, plant: PlantedBug) -> SeedResult {
    let started = Instant::now();
    let options = RunOptions {
        keep_trace: false,
        plant,
    };
    let repro = crate::Repro::from_seed(scenario, seed, plant);
    let outcome = crate::sim::run(&repro.params, &repro.schedule, options);
    SeedResult {
        seed,
        valid: outcome.report.valid,
        findings: outcome.report.findings,
        trace_hash: outcome.trace_hash,
        nodes: outcome.params.nodes,
        fault_windows: repro.schedule.faults.len(),
        stats: outcome.stats,
        stable_latency_ms: outcome.report.set.stable_latency_ms,
        wall_ms: started.elapsed().as_secs_f64() * 1000.0,
    }
}

/// Runs `seeds` of `scenario` on `threads` threads, calling `done` as each
/// finishes; returns the results in seed order.
pub fn run_many(
    scenario: &Scenario,
    seeds: Range<u64>,
    threads: usize,
    plant: PlantedBug,
    done: &(dyn Fn(&SeedResult) + Sync),
) -> Vec<SeedResult> {
    let next = AtomicU64::new(seeds.start);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds.end {
                    break;
                }
                let result = run_one(scenario, seed, plant);
                done(&result);
                results
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(result);
            });
        }
    });
    let mut results = results
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    results.sort_by_key(|result| result.seed);
    results
}

/// Sums up `results` of `scenario`, which took `wall_seconds`, and checks
/// that every mechanism it claims to exercise fired in some seed.
pub fn summarise_scenario(
    scenario: &Scenario,
    results: &[SeedResult],
    wall_seconds: f64,
) -> Summary {
    let mut summary = summarise(&scenario.name, results, wall_seconds);
    summary.unexercised = scenario
        .exercises
        .iter()
        .map(|mechanism| mechanism.name().to_owned())
        .filter(|name| summary.mechanisms.get(name).copied().unwrap_or(0) == 0)
        .collect();
    summary
}

/// Sums up `results` of `scenario`, which took `wall_seconds`.
pub fn summarise(scenario: &str, results: &[SeedResult], wall_seconds: f64) -> Summary {
    let mut mechanisms: BTreeMap<String, usize> = BTreeMap::new();
    for result in results {
        for (name, count) in &result.stats.mechanisms {
            *mechanisms.entry(name.clone()).or_default() += usize::from(*count > 0);
        }
    }
    let count = results.len().max(1) as f64;
    let mut outcomes = (0, 0, 0);
    for result in results {
        outcomes.0 += result.stats.ok;
        outcomes.1 += result.stats.fail;
        outcomes.2 += result.stats.info;
    }
    Summary {
        scenario: scenario.to_owned(),
        seeds: results.len(),
        failed: results
            .iter()
            .filter(|r| !r.valid)
            .map(|r| r.seed)
            .collect(),
        wall_seconds,
        seeds_per_minute: results.len() as f64 / wall_seconds.max(1e-9) * 60.0,
        convergence_ms: Percentiles::of(results.iter().filter_map(|r| r.stats.convergence_ms)),
        stable_latency_p95_ms: Percentiles::of(results.iter().map(|r| r.stable_latency_ms.p95)),
        messages_per_op: results.iter().map(|r| r.stats.messages_per_op).sum::<f64>() / count,
        bytes_per_op: results.iter().map(|r| r.stats.bytes_per_op).sum::<f64>() / count,
        outcomes,
        mechanisms,
        unexercised: Vec::new(),
        acks_checked: results.iter().map(|r| r.stats.acks_checked).sum(),
    }
}
