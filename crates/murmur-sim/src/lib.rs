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
pub mod durable;
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
/// checkers catch it (`murmur-sim mutants`, `tests/planted_bug.rs`). Each
/// is one of the engine's [`FaultInjection`] switches.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PlantedBug {
    /// None: the engine as written.
    #[default]
    None,
    /// Writes are acknowledged durable before their flush.
    AckDurableBeforeFlush,
    /// A pushed change missing dependencies is dropped, never applied.
    DropPushWithMissingDependencies,
    /// A stalled sync is not resent (first stall safeguard gone).
    NoSyncResend,
    /// Reconciliation does not reset in-flight sync state (second
    /// safeguard gone).
    NoSyncResetOnReconcile,
    /// Compaction deletes old chunks before the snapshot is on disk.
    CompactDeletesBeforeSnapshot,
    /// Pushes to a peer with anything queued are silently skipped.
    SkipPushToBusyPeer,
    /// `Replicated(k)` counts one copy too many.
    ReplicatedOvercount,
    /// A clean restart followed by a crash reuses the actor.
    ReuseActorAfterCleanClose,
    /// Eviction takes documents with unflushed changes.
    EvictDirtyDocuments,
    /// Flushes leave the digest's leaves stale.
    StaleDigestLeaf,
    /// Sent messages never give their bytes back to the peer's budget.
    LeakQueuedBytes,
    /// A quiet sync conversation is never restarted by its timer (third
    /// stall safeguard gone).
    NoSyncRetry,
}

impl PlantedBug {
    /// Every bug (not [`PlantedBug::None`]).
    pub const ALL: [PlantedBug; 12] = [
        PlantedBug::AckDurableBeforeFlush,
        PlantedBug::DropPushWithMissingDependencies,
        PlantedBug::NoSyncResend,
        PlantedBug::NoSyncResetOnReconcile,
        PlantedBug::CompactDeletesBeforeSnapshot,
        PlantedBug::SkipPushToBusyPeer,
        PlantedBug::ReplicatedOvercount,
        PlantedBug::ReuseActorAfterCleanClose,
        PlantedBug::EvictDirtyDocuments,
        PlantedBug::StaleDigestLeaf,
        PlantedBug::LeakQueuedBytes,
        PlantedBug::NoSyncRetry,
    ];

    /// The engine's switch for it.
    pub fn fault_injection(self) -> FaultInjection {
        match self {
            PlantedBug::None => FaultInjection::None,
            PlantedBug::AckDurableBeforeFlush => FaultInjection::AckDurableBeforeFlush,
            PlantedBug::DropPushWithMissingDependencies => {
                FaultInjection::DropPushWithMissingDependencies
            }
            PlantedBug::NoSyncResend => FaultInjection::NoSyncResend,
            PlantedBug::NoSyncResetOnReconcile => FaultInjection::NoSyncResetOnReconcile,
            PlantedBug::CompactDeletesBeforeSnapshot => {
                FaultInjection::CompactDeletesBeforeSnapshot
            }
            PlantedBug::SkipPushToBusyPeer => FaultInjection::SkipPushToBusyPeer,
            PlantedBug::ReplicatedOvercount => FaultInjection::ReplicatedOvercount,
            PlantedBug::ReuseActorAfterCleanClose => FaultInjection::ReuseActorAfterCleanClose,
            PlantedBug::EvictDirtyDocuments => FaultInjection::EvictDirtyDocuments,
            PlantedBug::StaleDigestLeaf => FaultInjection::StaleDigestLeaf,
            PlantedBug::LeakQueuedBytes => FaultInjection::LeakQueuedBytes,
            PlantedBug::NoSyncRetry => FaultInjection::NoSyncRetry,
        }
    }

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::None => "none",
            PlantedBug::AckDurableBeforeFlush => "ack-durable-before-flush",
            PlantedBug::DropPushWithMissingDependencies => "drop-push-with-missing-dependencies",
            PlantedBug::NoSyncResend => "no-sync-resend",
            PlantedBug::NoSyncResetOnReconcile => "no-sync-reset-on-reconcile",
            PlantedBug::CompactDeletesBeforeSnapshot => "compact-deletes-before-snapshot",
            PlantedBug::SkipPushToBusyPeer => "skip-push-to-busy-peer",
            PlantedBug::ReplicatedOvercount => "replicated-overcount",
            PlantedBug::ReuseActorAfterCleanClose => "reuse-actor-after-clean-close",
            PlantedBug::EvictDirtyDocuments => "evict-dirty-documents",
            PlantedBug::StaleDigestLeaf => "stale-digest-leaf",
            PlantedBug::LeakQueuedBytes => "leak-queued-bytes",
            PlantedBug::NoSyncRetry => "no-sync-retry",
        }
    }

    /// The bug named `name` (as [`PlantedBug::name`] spells it).
    pub fn from_name(name: &str) -> Option<PlantedBug> {
        std::iter::once(PlantedBug::None)
            .chain(PlantedBug::ALL)
            .find(|bug| bug.name() == name)
    }

    /// Why the mutation suite does not expect to catch this bug, for the
    /// few it cannot: a known gap, printed, not a failure.
    pub fn known_gap(self) -> Option<&'static str> {
        match self {
            PlantedBug::NoSyncResend => Some(
                "redundant with the reset on reconciliation (which both sides run) and the retry timer: no run measured so far converges slower without it",
            ),
            _ => None,
        }
    }

    /// The scenario files (in `simulations/`) whose runs should catch it:
    /// the mutation suite (`murmur-sim mutants`) runs it there.
    pub fn caught_by(self) -> &'static [&'static str] {
        match self {
            PlantedBug::None => &[],
            PlantedBug::AckDurableBeforeFlush => &["crash-restart"],
            PlantedBug::DropPushWithMissingDependencies => &["no-anti-entropy"],
            PlantedBug::NoSyncResend => &["sync-stalls-bare"],
            PlantedBug::NoSyncResetOnReconcile => &["sync-stalls-bare"],
            PlantedBug::CompactDeletesBeforeSnapshot => &["compaction-crash"],
            PlantedBug::SkipPushToBusyPeer => &["no-anti-entropy"],
            PlantedBug::ReplicatedOvercount => &["partition-halves"],
            PlantedBug::ReuseActorAfterCleanClose => &["restarts"],
            PlantedBug::EvictDirtyDocuments => &["many-docs"],
            PlantedBug::StaleDigestLeaf => &["partition-halves"],
            PlantedBug::LeakQueuedBytes => &["partition-halves"],
            PlantedBug::NoSyncRetry => &["sync-stalls"],
        }
    }
}

/// Runs `seed` of `scenario`: draws its parameters and schedule and plays
/// them.
pub fn run_seed(scenario: &Scenario, seed: u64, options: RunOptions) -> RunOutcome {
    let repro = Repro::from_seed(scenario, seed, options.plant);
    sim::run(&repro.params, &repro.schedule, options)
}
