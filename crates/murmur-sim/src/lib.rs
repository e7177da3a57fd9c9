//! Murmur's deterministic, Jepsen-style simulator.
//!
//! It runs the real [`murmur_core::Replica`] (never a model of it), N of
//! them on crashable in-memory stores, on a simulated network with virtual
//! time ([`murmur_core::testkit::Cluster`] carries every message). One `u64`
//! seed decides everything:
//!
//! 1. **Parameters** ([`Params`]): a [`Scenario`] fixes some (the fault it
//!    is about, say) and leaves the rest to the seed: node count, latency,
//!    loss and duplication, fault mix, workload mix (swarm testing).
//! 2. **Schedule** ([`Schedule`]): the client operations (set adds, counter
//!    deltas, register writes, text edits, causal pairs, reads, new
//!    documents) and the fault windows (partitions of every Jepsen shape,
//!    flaky links, crashes, pauses, clock jumps).
//! 3. **Run** ([`sim::run`]): setup, then chaos (operations and faults),
//!    then liveness (heal everything, restart everyone, faults off, and
//!    converge within a bound), then a final read of every document on
//!    every node.
//! 4. **Check** ([`check`]): identical heads and content everywhere;
//!    Jepsen's set-full per element; counters against acknowledged and
//!    indeterminate deltas; registers, text and causal pairs; no change
//!    without its dependencies; no rejected message; every write
//!    acknowledged durable.
//!
//! The same seed on the same commit gives a byte-identical event trace
//! ([`RunOutcome::trace_hash`]). A failing run can be shrunk ([`shrink`])
//! and saved as a [`Repro`] that `murmur-sim replay` plays exactly.
//!
//! ```
//! use murmur_sim::{run_seed, RunOptions, Scenario};
//!
//! let scenario = Scenario::parse(
//!     "nodes = 3\noperations = 30\nchaos_ms = 3000\n[nemesis]\nfaults = [\"partition-halves\"]",
//!     std::path::Path::new("example.toml"),
//!     "example",
//! )?;
//! let outcome = run_seed(&scenario, 7, RunOptions::default());
//! assert!(outcome.report.valid, "{:?}", outcome.report.findings);
//! // The same seed, the same trace.
//! assert_eq!(outcome.trace_hash, run_seed(&scenario, 7, RunOptions::default()).trace_hash);
//! # Ok::<(), murmur_sim::ScenarioError>(())
//! ```

pub mod check;
pub mod history;
pub mod nemesis;
pub mod params;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod schedule;
pub mod shrink;
pub mod sim;
pub mod spec;
pub mod stats;
pub mod trace;
pub mod workload;

use murmur_core::FaultInjection;
use serde::{Deserialize, Serialize};

pub use check::{CheckReport, Finding};
pub use history::History;
pub use params::Params;
pub use scenario::{Scenario, ScenarioError};
pub use schedule::{Repro, Schedule};
pub use sim::{RunOptions, RunOutcome};

/// A bug the simulator can plant in every replica, to show that the
/// checkers catch it (see `tests/planted_bug.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlantedBug {
    /// None: the engine as written.
    #[default]
    None,
    /// Writes are acknowledged durable before their flush.
    AckDurableBeforeFlush,
}

impl PlantedBug {
    /// The engine's switch for it.
    pub fn fault_injection(self) -> FaultInjection {
        match self {
            PlantedBug::None => FaultInjection::None,
            PlantedBug::AckDurableBeforeFlush => FaultInjection::AckDurableBeforeFlush,
        }
    }

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::None => "none",
            PlantedBug::AckDurableBeforeFlush => "ack-durable-before-flush",
        }
    }
}

/// Runs `seed` of `scenario`: draws its parameters and schedule and plays
/// them.
pub fn run_seed(scenario: &Scenario, seed: u64, options: RunOptions) -> RunOutcome {
    let repro = Repro::from_seed(scenario, seed, options.plant);
    sim::run(&repro.params, &repro.schedule, options)
}
