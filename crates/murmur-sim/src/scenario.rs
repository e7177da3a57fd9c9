//! Scenario files: what a simulation runs, as TOML.
//!
//! Every field is optional. A field the file leaves out is drawn from a wide
//! range for each seed (swarm testing), so the smallest scenario file, an
//! empty one, is "everything random". A file fixes what its test is about:
//! `partition-halves.toml` fixes the fault to halves and the network to a
//! clean one, and leaves the rest to the seed.
//!
//! ```toml
//! # What this scenario tests, in a sentence or two.
//! name = "partition-halves"
//! nodes = 5                      # or a range: [3, 7]
//! operations = 200
//! chaos_ms = 20000
//! liveness_ms = 30000            # convergence bound after the heal
//!
//! [network]
//! latency_min_ms = 1
//! latency_max_ms = 20
//! loss = 0.0
//!
//! [nemesis]
//! faults = ["partition-halves"]
//! gap_ms = [500, 3000]
//! duration_ms = [1000, 5000]
//!
//! [workload]
//! set = 4
//! read = 2
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::nemesis::FaultKind;
use crate::spec::Spec;

/// Most nodes a scenario may ask for.
pub const MAX_NODES: u64 = 16;
/// Most operations a scenario may ask for (text characters are drawn from a
/// block of this many distinct code points).
pub const MAX_OPERATIONS: u64 = 20_000;
/// Longest chaos phase, in virtual milliseconds (one virtual day).
pub const MAX_CHAOS_MS: u64 = 86_400_000;

/// Why a scenario file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped fields.
    #[error("scenario {path} does not parse: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's words (with line and column).
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("scenario {path}: `{field}`: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field, dotted (`network.loss`).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// A simulation scenario, as written in its file with every missing field
/// filled in with its swarm range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name (default: the file name without `.toml`).
    #[serde(default)]
    pub name: String,
    /// How many replicas.
    #[serde(default = "defaults::nodes")]
    pub nodes: Spec<u64>,
    /// How many client operations in the chaos phase.
    #[serde(default = "defaults::operations")]
    pub operations: Spec<u64>,
    /// How long the chaos phase lasts, in virtual milliseconds.
    #[serde(default = "defaults::chaos_ms")]
    pub chaos_ms: Spec<u64>,
    /// The bound on convergence after the heal, in virtual milliseconds.
    #[serde(default = "defaults::liveness_ms")]
    pub liveness_ms: u64,
    /// Each replica's group-commit delay, in milliseconds. A longer one
    /// leaves a wider window for a crash between a write and its flush.
    #[serde(default = "defaults::group_commit_ms")]
    pub group_commit_ms: Spec<u64>,
    /// The network between faults.
    #[serde(default)]
    pub network: NetworkSpec,
    /// The faults.
    #[serde(default)]
    pub nemesis: NemesisSpec,
    /// The client operations.
    #[serde(default)]
    pub workload: WorkloadSpec,
    /// The engine's bounds, drawn small so that they are reached.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Anti-entropy (document-set reconciliation). `false` proves that
    /// eager push and the missing-dependency sync alone converge: only on
    /// a network that loses nothing (no loss, no partitions, no crashes,
    /// no full queues).
    #[serde(default = "defaults::anti_entropy")]
    pub anti_entropy: bool,
    /// How often each replica reconciles with one peer, in milliseconds.
    /// A long one leaves the sync protocol's own recovery (after a lost
    /// message) to do the repair.
    #[serde(default = "defaults::anti_entropy_interval_ms")]
    pub anti_entropy_interval_ms: Spec<u64>,
    /// How long a sync conversation waits for the peer before its timer
    /// restarts it, in milliseconds; 0 turns the timer off, leaving the
    /// other two stall safeguards (resend on a stall, reset on
    /// reconciliation) alone to do the work.
    #[serde(default = "defaults::sync_retry_ms")]
    pub sync_retry_ms: Spec<u64>,
    /// SWIM membership (foca) on every replica.
    #[serde(default)]
    pub membership: bool,
    /// Mechanisms this scenario claims to exercise: the summary fails it
    /// if one of them never fired in any of its seeds.
    #[serde(default)]
    pub exercises: Vec<Mechanism>,
}

/// An engine mechanism whose firing a run counts (see
/// [`crate::sim::RunStats::mechanisms`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mechanism {
    /// A message dropped because a peer's queue in the engine was full.
    Backpressure,
    /// A message dropped because a connection's send queue was full.
    QueueFull,
    /// A cold document evicted from memory.
    Eviction,
    /// A document loaded from the store on use.
    LazyLoad,
    /// A document's chunks compacted into a snapshot.
    Compaction,
    /// A digest bucket sent as several id ranges.
    DigestSplit,
    /// A document found differing by reconciliation and synced.
    Reconciliation,
    /// A stalled sync conversation resent.
    SyncRestart,
    /// A quiet sync conversation restarted by its timer.
    SyncRetry,
    /// A pushed change missing dependencies, fetched by sync.
    MissingDependencySync,
    /// A node crashed between two storage operations of one engine call.
    StorageCrash,
    /// A node closed cleanly and reopened.
    GracefulRestart,
    /// Several writes in one driver turn.
    Burst,
    /// A SWIM membership message delivered.
    Membership,
    /// A node crashed while a group commit was in flight.
    CrashMidFlush,
    /// A peer's message (or an owed sync) waited for its document to load.
    LoadParked,
    /// Pushes that arrived in one turn applied in one batch.
    PushBatched,
    /// A document's tombstone laid (deleted here, or told by a peer).
    Deletion,
    /// A deletion found by reconciliation (a node that still held the
    /// document, or one that deleted it, on either side).
    DeletionReconciled,
}

impl Mechanism {
    /// Every mechanism, in report order.
    pub const ALL: [Mechanism; 19] = [
        Mechanism::Backpressure,
        Mechanism::QueueFull,
        Mechanism::Eviction,
        Mechanism::LazyLoad,
        Mechanism::Compaction,
        Mechanism::DigestSplit,
        Mechanism::Reconciliation,
        Mechanism::SyncRestart,
        Mechanism::SyncRetry,
        Mechanism::MissingDependencySync,
        Mechanism::StorageCrash,
        Mechanism::GracefulRestart,
        Mechanism::Burst,
        Mechanism::Membership,
        Mechanism::CrashMidFlush,
        Mechanism::LoadParked,
        Mechanism::PushBatched,
        Mechanism::Deletion,
        Mechanism::DeletionReconciled,
    ];

    /// Its name in scenario files and reports.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Backpressure => "backpressure",
            Mechanism::QueueFull => "queue-full",
            Mechanism::Eviction => "eviction",
            Mechanism::LazyLoad => "lazy-load",
            Mechanism::Compaction => "compaction",
            Mechanism::DigestSplit => "digest-split",
            Mechanism::Reconciliation => "reconciliation",
            Mechanism::SyncRestart => "sync-restart",
            Mechanism::SyncRetry => "sync-retry",
            Mechanism::MissingDependencySync => "missing-dependency-sync",
            Mechanism::StorageCrash => "storage-crash",
            Mechanism::GracefulRestart => "graceful-restart",
            Mechanism::Burst => "burst",
            Mechanism::Membership => "membership",
            Mechanism::CrashMidFlush => "crash-mid-flush",
            Mechanism::LoadParked => "load-parked",
            Mechanism::PushBatched => "push-batched",
            Mechanism::Deletion => "deletion",
            Mechanism::DeletionReconciled => "deletion-reconciled",
        }
    }
}

/// The engine's bounds and the connections' capacity, each drawn per seed.
/// The defaults are small, so that backpressure, eviction, lazy loading,
/// compaction and split digest buckets happen in most seeds; a scenario
/// that must not lose a message (no anti-entropy) sets large ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Bytes the engine queues per peer before it drops messages.
    #[serde(default = "defaults::outbox_bytes")]
    pub outbox_bytes: Spec<u64>,
    /// Estimated bytes of documents kept in memory.
    #[serde(default = "defaults::cache_bytes")]
    pub cache_bytes: Spec<u64>,
    /// Chunk bytes past which a document is compacted.
    #[serde(default = "defaults::compaction_min_bytes")]
    pub compaction_min_bytes: Spec<u64>,
    /// Chunks past which a document is compacted.
    #[serde(default = "defaults::compaction_max_chunks")]
    pub compaction_max_chunks: Spec<u64>,
    /// Changes per eager push message.
    #[serde(default = "defaults::push_batch")]
    pub push_batch: Spec<u64>,
    /// (document, leaf) entries per reconciliation message.
    #[serde(default = "defaults::digest_leaves")]
    pub digest_leaves: Spec<u64>,
    /// Bytes one direction of a connection holds before it drops.
    #[serde(default = "defaults::link_queue_bytes")]
    pub link_queue_bytes: Spec<u64>,
    /// How fast a connection sends, bytes per millisecond (0: at once).
    #[serde(default = "defaults::link_bytes_per_ms")]
    pub link_bytes_per_ms: Spec<u64>,
    /// Longest group commit on the simulated disk, in microseconds (each
    /// takes between a quarter of it and all of it). Slow disks make writes
    /// gather behind the flush in flight and crashes strike during one.
    #[serde(default = "defaults::flush_max_us")]
    pub flush_max_us: Spec<u64>,
    /// Document loads out at once (each takes up to half the longest
    /// flush); inputs about a loading document wait for it.
    #[serde(default = "defaults::loads_in_flight")]
    pub loads_in_flight: Spec<u64>,
    /// How long a node's turn gathers the messages due for it, in
    /// microseconds: they are handed to the engine together (0: only those
    /// due at once). See `Cluster::turn_window`.
    #[serde(default = "defaults::turn_window_us")]
    pub turn_window_us: Spec<u64>,
}

/// The network outside fault windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Shortest message latency.
    #[serde(default = "defaults::latency_min_ms")]
    pub latency_min_ms: Spec<u64>,
    /// Longest message latency (spread between the two reorders messages).
    #[serde(default = "defaults::latency_max_ms")]
    pub latency_max_ms: Spec<u64>,
    /// Chance a message is lost.
    #[serde(default = "defaults::loss")]
    pub loss: Spec<f64>,
    /// Chance a message is delivered twice.
    #[serde(default = "defaults::duplicate")]
    pub duplicate: Spec<f64>,
    /// Chance a message is held up by an extra delay.
    #[serde(default = "defaults::delay")]
    pub delay: Spec<f64>,
    /// Longest extra delay.
    #[serde(default = "defaults::delay_max_ms")]
    pub delay_max_ms: Spec<u64>,
}

/// The nemesis: which faults, how often, how long, how hard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NemesisSpec {
    /// The faults to draw from; empty for none.
    #[serde(default = "defaults::faults")]
    pub faults: Vec<FaultKind>,
    /// How many independent fault sequences run side by side (so faults
    /// overlap when more than one).
    #[serde(default = "defaults::tracks")]
    pub tracks: Spec<u64>,
    /// Quiet time before each fault window.
    #[serde(default = "defaults::gap_ms")]
    pub gap_ms: Spec<u64>,
    /// How long each fault window lasts.
    #[serde(default = "defaults::duration_ms")]
    pub duration_ms: Spec<u64>,
    /// How far a clock jumps (negative: backwards).
    #[serde(default = "defaults::clock_jump_ms")]
    pub clock_jump_ms: Spec<i64>,
    /// How many unflushed write batches a crash keeps (a background
    /// flusher may have written some).
    #[serde(default = "defaults::crash_keep_batches")]
    pub crash_keep_batches: Spec<u64>,
    /// Storage operations (applies and flushes) a `storage-crash` window
    /// lets through before the store fails and the node crashes.
    #[serde(default = "defaults::storage_crash_after_ops")]
    pub storage_crash_after_ops: Spec<u64>,
    /// Loss in a `flaky` window.
    #[serde(default = "defaults::flaky_loss")]
    pub flaky_loss: Spec<f64>,
    /// Duplication in a `flaky` window.
    #[serde(default = "defaults::flaky_duplicate")]
    pub flaky_duplicate: Spec<f64>,
    /// Chance of a long delay in a `flaky` window.
    #[serde(default = "defaults::flaky_delay")]
    pub flaky_delay: Spec<f64>,
    /// Longest delay in a `flaky` window.
    #[serde(default = "defaults::flaky_delay_max_ms")]
    pub flaky_delay_max_ms: Spec<u64>,
}

/// The client operations: relative weights of each kind, and documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Documents created (and made known to every node) before the chaos.
    #[serde(default = "defaults::documents")]
    pub documents: Spec<u64>,
    /// Grow-only set adds.
    #[serde(default = "defaults::weight")]
    pub set: Spec<u64>,
    /// Counter increments and decrements.
    #[serde(default = "defaults::weight")]
    pub counter: Spec<u64>,
    /// Concurrent writes to a few shared map keys.
    #[serde(default = "defaults::weight")]
    pub register: Spec<u64>,
    /// Text inserts and deletes.
    #[serde(default = "defaults::weight")]
    pub text: Spec<u64>,
    /// Causal pairs: `b` written only by a node that saw `a`.
    #[serde(default = "defaults::weight")]
    pub deps: Spec<u64>,
    /// Reads on random nodes.
    #[serde(default = "defaults::weight")]
    pub read: Spec<u64>,
    /// New documents created during the chaos.
    #[serde(default = "defaults::create")]
    pub create: Spec<u64>,
    /// Whole documents deleted during the chaos (none unless asked: a
    /// deleted document's later operations all fail).
    #[serde(default = "defaults::zero")]
    pub delete_doc: Spec<u64>,
    /// Chance that an operation runs in the same driver turn as the one
    /// before it, on the same node (several inputs, one drain).
    #[serde(default = "defaults::burst")]
    pub burst: Spec<f64>,
}

/// The swarm ranges: what a scenario that says nothing gets.
mod defaults {
    use super::*;

    pub fn nodes() -> Spec<u64> {
        Spec::Range([3, 7])
    }
    pub fn operations() -> Spec<u64> {
        Spec::Fixed(200)
    }
    pub fn chaos_ms() -> Spec<u64> {
        Spec::Range([10_000, 30_000])
    }
    pub fn liveness_ms() -> u64 {
        60_000
    }
    pub fn group_commit_ms() -> Spec<u64> {
        Spec::Range([0, 30])
    }
    pub fn latency_min_ms() -> Spec<u64> {
        Spec::Range([0, 5])
    }
    pub fn latency_max_ms() -> Spec<u64> {
        Spec::Range([5, 100])
    }
    pub fn loss() -> Spec<f64> {
        Spec::Range([0.0, 0.1])
    }
    pub fn duplicate() -> Spec<f64> {
        Spec::Range([0.0, 0.1])
    }
    pub fn delay() -> Spec<f64> {
        Spec::Range([0.0, 0.05])
    }
    pub fn delay_max_ms() -> Spec<u64> {
        Spec::Range([100, 2_000])
    }
    pub fn faults() -> Vec<FaultKind> {
        FaultKind::ALL.to_vec()
    }
    pub fn tracks() -> Spec<u64> {
        Spec::Range([1, 3])
    }
    pub fn gap_ms() -> Spec<u64> {
        Spec::Range([200, 5_000])
    }
    pub fn duration_ms() -> Spec<u64> {
        Spec::Range([200, 8_000])
    }
    pub fn clock_jump_ms() -> Spec<i64> {
        Spec::Range([-3_600_000, 3_600_000])
    }
    pub fn crash_keep_batches() -> Spec<u64> {
        Spec::Range([0, 2])
    }
    pub fn flaky_loss() -> Spec<f64> {
        Spec::Range([0.1, 0.6])
    }
    pub fn flaky_duplicate() -> Spec<f64> {
        Spec::Range([0.0, 0.4])
    }
    pub fn flaky_delay() -> Spec<f64> {
        Spec::Range([0.0, 0.3])
    }
    pub fn flaky_delay_max_ms() -> Spec<u64> {
        Spec::Range([100, 5_000])
    }
    pub fn documents() -> Spec<u64> {
        Spec::Range([1, 3])
    }
    pub fn weight() -> Spec<u64> {
        Spec::Range([0, 4])
    }
    pub fn zero() -> Spec<u64> {
        Spec::Fixed(0)
    }
    pub fn create() -> Spec<u64> {
        Spec::Range([0, 1])
    }
    pub fn burst() -> Spec<f64> {
        Spec::Range([0.0, 0.3])
    }
    pub fn anti_entropy() -> bool {
        true
    }
    pub fn anti_entropy_interval_ms() -> Spec<u64> {
        Spec::Fixed(1_000)
    }
    pub fn sync_retry_ms() -> Spec<u64> {
        Spec::Fixed(500)
    }
    pub fn storage_crash_after_ops() -> Spec<u64> {
        Spec::Range([0, 6])
    }
    pub fn outbox_bytes() -> Spec<u64> {
        Spec::Range([64, 1_024])
    }
    pub fn cache_bytes() -> Spec<u64> {
        Spec::Range([0, 131_072])
    }
    pub fn compaction_min_bytes() -> Spec<u64> {
        Spec::Range([256, 16_384])
    }
    pub fn compaction_max_chunks() -> Spec<u64> {
        Spec::Range([2, 64])
    }
    pub fn push_batch() -> Spec<u64> {
        Spec::Range([1, 4])
    }
    pub fn digest_leaves() -> Spec<u64> {
        Spec::Range([1, 64])
    }
    pub fn link_queue_bytes() -> Spec<u64> {
        Spec::Range([512, 16_384])
    }
    pub fn link_bytes_per_ms() -> Spec<u64> {
        Spec::Range([20, 2_000])
    }
    pub fn flush_max_us() -> Spec<u64> {
        Spec::Range([50, 20_000])
    }
    pub fn loads_in_flight() -> Spec<u64> {
        Spec::Range([1, 4])
    }
    pub fn turn_window_us() -> Spec<u64> {
        Spec::Range([0, 4_000])
    }
}

impl Default for LimitsSpec {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|e| unreachable!("defaults parse: {e}"))
    }
}

impl LimitsSpec {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let at = |field: &'static str| move |reason: String| (field, reason);
        self.outbox_bytes
            .check(64, 1 << 30)
            .map_err(at("limits.outbox_bytes"))?;
        self.cache_bytes
            .check(0, 1 << 40)
            .map_err(at("limits.cache_bytes"))?;
        self.compaction_min_bytes
            .check(0, 1 << 30)
            .map_err(at("limits.compaction_min_bytes"))?;
        self.compaction_max_chunks
            .check(1, 1 << 20)
            .map_err(at("limits.compaction_max_chunks"))?;
        self.push_batch
            .check(1, murmur_wire::MAX_CHANGES_PER_PUSH as u64)
            .map_err(at("limits.push_batch"))?;
        self.digest_leaves
            .check(1, murmur_wire::MAX_DIGEST_LEAVES as u64)
            .map_err(at("limits.digest_leaves"))?;
        self.link_queue_bytes
            .check(0, 1 << 30)
            .map_err(at("limits.link_queue_bytes"))?;
        self.link_bytes_per_ms
            .check(0, 1 << 30)
            .map_err(at("limits.link_bytes_per_ms"))?;
        self.flush_max_us
            .check(0, 10_000_000)
            .map_err(at("limits.flush_max_us"))?;
        self.loads_in_flight
            .check(1, 1_024)
            .map_err(at("limits.loads_in_flight"))?;
        self.turn_window_us
            .check(0, 1_000_000)
            .map_err(at("limits.turn_window_us"))
    }
}

impl Default for NetworkSpec {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|e| unreachable!("defaults parse: {e}"))
    }
}

impl Default for NemesisSpec {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|e| unreachable!("defaults parse: {e}"))
    }
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|e| unreachable!("defaults parse: {e}"))
    }
}

impl Scenario {
    /// Reads and checks a scenario file. Its name defaults to the file name.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.to_owned(),
            source,
        })?;
        let default_name = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scenario".to_owned());
        Self::parse(&text, path, &default_name)
    }

    /// Parses and checks scenario text; `path` only labels errors.
    pub fn parse(text: &str, path: &Path, default_name: &str) -> Result<Scenario, ScenarioError> {
        let mut scenario: Scenario =
            toml::from_str(text).map_err(|source| ScenarioError::Parse {
                path: path.to_owned(),
                source: Box::new(source),
            })?;
        if scenario.name.is_empty() {
            scenario.name = default_name.to_owned();
        }
        scenario
            .validate()
            .map_err(|(field, reason)| ScenarioError::Invalid {
                path: path.to_owned(),
                field,
                reason,
            })?;
        Ok(scenario)
    }

    /// True when the network of this scenario loses nothing by itself: no
    /// random loss and no fault windows. (Full queues can still drop: a
    /// scenario without anti-entropy sets its limits large.)
    pub fn lossless(&self) -> bool {
        self.network.loss.bounds().1 == 0.0 && self.nemesis.faults.is_empty()
    }

    /// The swarm scenario: every parameter drawn from the seed.
    pub fn swarm() -> Scenario {
        let mut scenario: Scenario =
            toml::from_str("").unwrap_or_else(|e| unreachable!("defaults parse: {e}"));
        scenario.name = "swarm".to_owned();
        scenario
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        let at = |field: &'static str| move |reason: String| (field, reason);
        self.nodes.check(1, MAX_NODES).map_err(at("nodes"))?;
        self.operations
            .check(0, MAX_OPERATIONS)
            .map_err(at("operations"))?;
        self.chaos_ms
            .check(1, MAX_CHAOS_MS)
            .map_err(at("chaos_ms"))?;
        Spec::Fixed(self.liveness_ms)
            .check(1, MAX_CHAOS_MS)
            .map_err(at("liveness_ms"))?;
        self.group_commit_ms
            .check(0, 10_000)
            .map_err(at("group_commit_ms"))?;
        self.anti_entropy_interval_ms
            .check(10, MAX_CHAOS_MS)
            .map_err(at("anti_entropy_interval_ms"))?;
        if !self.anti_entropy && !self.lossless() {
            return Err((
                "anti_entropy",
                "without anti-entropy nothing repairs a lost message: only a lossless network (loss = 0, no faults) may turn it off".into(),
            ));
        }
        self.network.validate()?;
        self.nemesis.validate()?;
        self.limits.validate()?;
        self.workload.validate()
    }
}

fn probability(spec: &Spec<f64>, field: &'static str) -> Result<(), (&'static str, String)> {
    spec.check(0.0, 1.0).map_err(|reason| (field, reason))
}

fn millis(spec: &Spec<u64>, field: &'static str) -> Result<(), (&'static str, String)> {
    spec.check(0, MAX_CHAOS_MS)
        .map_err(|reason| (field, reason))
}

impl NetworkSpec {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        millis(&self.latency_min_ms, "network.latency_min_ms")?;
        millis(&self.latency_max_ms, "network.latency_max_ms")?;
        probability(&self.loss, "network.loss")?;
        probability(&self.duplicate, "network.duplicate")?;
        probability(&self.delay, "network.delay")?;
        millis(&self.delay_max_ms, "network.delay_max_ms")?;
        if self.loss.bounds().1 >= 1.0 {
            return Err((
                "network.loss",
                "a network that loses every message outside fault windows cannot converge".into(),
            ));
        }
        Ok(())
    }
}

impl NemesisSpec {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        self.tracks
            .check(1, 8)
            .map_err(|reason| ("nemesis.tracks", reason))?;
        millis(&self.gap_ms, "nemesis.gap_ms")?;
        millis(&self.duration_ms, "nemesis.duration_ms")?;
        if self.gap_ms.bounds().1 + self.duration_ms.bounds().1 == 0 {
            return Err((
                "nemesis.gap_ms",
                "gap and duration cannot both be zero".into(),
            ));
        }
        self.clock_jump_ms
            .check(-(MAX_CHAOS_MS as i64), MAX_CHAOS_MS as i64)
            .map_err(|reason| ("nemesis.clock_jump_ms", reason))?;
        self.crash_keep_batches
            .check(0, 64)
            .map_err(|reason| ("nemesis.crash_keep_batches", reason))?;
        self.storage_crash_after_ops
            .check(0, 10_000)
            .map_err(|reason| ("nemesis.storage_crash_after_ops", reason))?;
        probability(&self.flaky_loss, "nemesis.flaky_loss")?;
        probability(&self.flaky_duplicate, "nemesis.flaky_duplicate")?;
        probability(&self.flaky_delay, "nemesis.flaky_delay")?;
        millis(&self.flaky_delay_max_ms, "nemesis.flaky_delay_max_ms")
    }
}

impl WorkloadSpec {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        self.documents
            .check(1, 1_000)
            .map_err(|reason| ("workload.documents", reason))?;
        let weights = [
            ("workload.set", &self.set),
            ("workload.counter", &self.counter),
            ("workload.register", &self.register),
            ("workload.text", &self.text),
            ("workload.deps", &self.deps),
            ("workload.read", &self.read),
            ("workload.create", &self.create),
        ];
        for (field, weight) in weights {
            weight.check(0, 1_000).map_err(|reason| (field, reason))?;
        }
        probability(&self.burst, "workload.burst")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(text, Path::new("test.toml"), "test")
    }

    #[test]
    fn an_empty_file_is_the_swarm() {
        let scenario = parse("").expect("parses");
        assert_eq!(scenario.nodes, Spec::Range([3, 7]));
        assert_eq!(scenario.nemesis.faults, FaultKind::ALL.to_vec());
        assert_eq!(scenario.name, "test");
    }

    #[test]
    fn an_unknown_field_is_an_error_that_names_it() {
        let error = parse("nodez = 3").expect_err("rejected");
        assert!(error.to_string().contains("nodez"), "{error}");
    }

    #[test]
    fn an_unknown_fault_is_an_error_that_names_it() {
        let error = parse("[nemesis]\nfaults = [\"meteor\"]").expect_err("rejected");
        assert!(error.to_string().contains("meteor"), "{error}");
    }

    #[test]
    fn an_out_of_range_value_is_an_error_that_names_the_field() {
        let error = parse("[network]\nloss = [0.0, 2.0]").expect_err("rejected");
        assert!(error.to_string().contains("network.loss"), "{error}");
        let error = parse("nodes = 0").expect_err("rejected");
        assert!(error.to_string().contains("nodes"), "{error}");
    }
}
