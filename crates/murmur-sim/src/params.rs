//! The parameters of one run: a scenario with every range drawn from the
//! seed.

use std::time::Duration;

use murmur_core::testkit::Network;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::scenario::{NemesisSpec, Scenario};
use crate::spec::Draw;

/// Independent random streams derived from one seed, so that a change in
/// how one is used (say, more workload operations) leaves the others alone.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    /// The simulator's parameters.
    Params = 1,
    /// The operations.
    Workload = 2,
    /// The fault windows.
    Nemesis = 3,
    /// The world: latencies, losses, node ids, replica seeds.
    World = 4,
    /// Parameters added after the first ones, each from its own stream:
    /// adding one leaves every seed's earlier draws as they were (so a
    /// baseline compares the engine, not a reshuffle of the seeds).
    TurnWindow = 5,
    /// The weight of document deletions.
    DeleteDoc = 6,
}

/// SplitMix64: a stable, well-mixed derivation of sub-seeds.
pub fn sub_seed(seed: u64, stream: Stream) -> u64 {
    let mut z = seed
        .wrapping_add((stream as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seeded RNG for `stream`.
pub fn rng(seed: u64, stream: Stream) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(sub_seed(seed, stream))
}

/// The network outside fault windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkParams {
    /// Shortest latency.
    pub latency_min_ms: u64,
    /// Longest latency.
    pub latency_max_ms: u64,
    /// Chance of loss.
    pub loss: f64,
    /// Chance of duplication.
    pub duplicate: f64,
    /// Chance of a long delay.
    pub delay: f64,
    /// Longest delay.
    pub delay_max_ms: u64,
    /// Bytes one direction of a connection holds before it drops (0: no
    /// bound).
    #[serde(default)]
    pub link_queue_bytes: u64,
    /// How fast a connection sends, bytes per millisecond (0: at once).
    #[serde(default)]
    pub link_bytes_per_ms: u64,
}

impl NetworkParams {
    /// As the driver wants it.
    pub fn network(&self) -> Network {
        Network {
            latency_min: Duration::from_millis(self.latency_min_ms),
            latency_max: Duration::from_millis(self.latency_max_ms.max(self.latency_min_ms)),
            loss: self.loss,
            duplicate: self.duplicate,
            delay: self.delay,
            delay_max: Duration::from_millis(self.delay_max_ms),
            link_queue_bytes: usize::try_from(self.link_queue_bytes).unwrap_or(usize::MAX),
            link_bytes_per_ms: self.link_bytes_per_ms,
        }
    }

    /// The same latencies with every fault off: the liveness network.
    pub fn clean(&self) -> NetworkParams {
        NetworkParams {
            loss: 0.0,
            duplicate: 0.0,
            delay: 0.0,
            ..self.clone()
        }
    }
}

/// The engine's bounds for one run (see [`crate::scenario::LimitsSpec`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Bytes the engine queues per peer.
    pub outbox_bytes: u64,
    /// Estimated bytes of documents in memory.
    pub cache_bytes: u64,
    /// Chunk bytes past which a document is compacted.
    pub compaction_min_bytes: u64,
    /// Chunks past which a document is compacted.
    pub compaction_max_chunks: u64,
    /// Changes per eager push.
    pub push_batch: u64,
    /// Entries per reconciliation message.
    pub digest_leaves: u64,
    /// Longest group commit on the simulated disk, in microseconds.
    #[serde(default)]
    pub flush_max_us: u64,
    /// Document loads out at once.
    #[serde(default = "one")]
    pub loads_in_flight: u64,
    /// How long a node's turn gathers the messages due for it, in
    /// microseconds.
    #[serde(default)]
    pub turn_window_us: u64,
}

fn one() -> u64 {
    1
}

impl Limits {
    /// `config` with these bounds.
    pub fn apply(&self, mut config: murmur_core::Config) -> murmur_core::Config {
        let size = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
        config.max_outbox_bytes_per_peer = size(self.outbox_bytes);
        config.max_cached_document_bytes = size(self.cache_bytes);
        config.compaction_min_bytes = size(self.compaction_min_bytes);
        config.compaction_max_chunks = size(self.compaction_max_chunks);
        config.max_push_batch = size(self.push_batch);
        config.max_digest_leaves = size(self.digest_leaves);
        config.max_loads_in_flight = size(self.loads_in_flight).max(1);
        config
    }

    /// The simulated disk: each flush takes between a quarter of the
    /// longest and the longest, each load between a sixteenth and a half.
    pub fn disk(&self) -> murmur_core::testkit::Disk {
        let max = Duration::from_micros(self.flush_max_us);
        murmur_core::testkit::Disk {
            flush_min: max / 4,
            flush_max: max,
            load_min: max / 16,
            load_max: max / 2,
        }
    }
}

/// Relative weights of the operation kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    /// Set adds.
    pub set: u64,
    /// Counter increments.
    pub counter: u64,
    /// Register writes.
    pub register: u64,
    /// Text edits.
    pub text: u64,
    /// Causal pairs.
    pub deps: u64,
    /// Reads.
    pub read: u64,
    /// Document creations.
    pub create: u64,
    /// Document deletions.
    #[serde(default)]
    pub delete_doc: u64,
}

impl Weights {
    /// The sum of the weights.
    pub fn total(&self) -> u64 {
        self.set
            + self.counter
            + self.register
            + self.text
            + self.deps
            + self.read
            + self.create
            + self.delete_doc
    }
}

fn default_anti_entropy_interval_ms() -> u64 {
    1_000
}

fn default_sync_retry_ms() -> u64 {
    500
}

/// Everything about one run except its schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// The scenario's name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Replicas.
    pub nodes: usize,
    /// Client operations.
    pub operations: usize,
    /// Chaos phase length.
    pub chaos_ms: u64,
    /// Convergence bound after the heal.
    pub liveness_ms: u64,
    /// Group-commit delay of every replica.
    pub group_commit_ms: u64,
    /// Documents made before the chaos.
    pub documents: usize,
    /// Operation weights.
    pub weights: Weights,
    /// The network between faults.
    pub network: NetworkParams,
    /// Independent fault sequences.
    pub tracks: u64,
    /// Fault ranges (drawn per window).
    pub nemesis: NemesisSpec,
    /// The engine's bounds.
    pub limits: Limits,
    /// Anti-entropy on.
    pub anti_entropy: bool,
    /// How often anti-entropy runs.
    #[serde(default = "default_anti_entropy_interval_ms")]
    pub anti_entropy_interval_ms: u64,
    /// The sync retry timer (0: off).
    #[serde(default = "default_sync_retry_ms")]
    pub sync_retry_ms: u64,
    /// SWIM membership on.
    pub membership: bool,
    /// Chance an operation shares the turn of the one before it.
    pub burst: f64,
}

impl Params {
    /// `scenario` with every range drawn from `seed`.
    pub fn resolve(scenario: &Scenario, seed: u64) -> Params {
        let mut rng = rng(seed, Stream::Params);
        let network = &scenario.network;
        let latency_min_ms = network.latency_min_ms.draw(&mut rng);
        let latency_max_ms = network.latency_max_ms.draw(&mut rng).max(latency_min_ms);
        let workload = &scenario.workload;
        let mut weights = Weights {
            set: workload.set.draw(&mut rng),
            counter: workload.counter.draw(&mut rng),
            register: workload.register.draw(&mut rng),
            text: workload.text.draw(&mut rng),
            deps: workload.deps.draw(&mut rng),
            read: workload.read.draw(&mut rng),
            create: workload.create.draw(&mut rng),
            delete_doc: workload
                .delete_doc
                .draw(&mut self::rng(seed, Stream::DeleteDoc)),
        };
        if weights.total() == 0 {
            // A swarm draw of all zeros still needs something to do.
            weights.set = 1;
        }
        Params {
            scenario: scenario.name.clone(),
            seed,
            nodes: scenario.nodes.draw(&mut rng) as usize,
            operations: scenario.operations.draw(&mut rng) as usize,
            chaos_ms: scenario.chaos_ms.draw(&mut rng),
            liveness_ms: scenario.liveness_ms,
            group_commit_ms: scenario.group_commit_ms.draw(&mut rng),
            documents: workload.documents.draw(&mut rng) as usize,
            weights,
            network: NetworkParams {
                latency_min_ms,
                latency_max_ms,
                loss: network.loss.draw(&mut rng),
                duplicate: network.duplicate.draw(&mut rng),
                delay: network.delay.draw(&mut rng),
                delay_max_ms: network.delay_max_ms.draw(&mut rng),
                link_queue_bytes: scenario.limits.link_queue_bytes.draw(&mut rng),
                link_bytes_per_ms: scenario.limits.link_bytes_per_ms.draw(&mut rng),
            },
            tracks: scenario.nemesis.tracks.draw(&mut rng),
            nemesis: scenario.nemesis.clone(),
            limits: Limits {
                outbox_bytes: scenario.limits.outbox_bytes.draw(&mut rng),
                cache_bytes: scenario.limits.cache_bytes.draw(&mut rng),
                compaction_min_bytes: scenario.limits.compaction_min_bytes.draw(&mut rng),
                compaction_max_chunks: scenario.limits.compaction_max_chunks.draw(&mut rng),
                push_batch: scenario.limits.push_batch.draw(&mut rng),
                digest_leaves: scenario.limits.digest_leaves.draw(&mut rng),
                flush_max_us: scenario.limits.flush_max_us.draw(&mut rng),
                loads_in_flight: scenario.limits.loads_in_flight.draw(&mut rng),
                turn_window_us: scenario
                    .limits
                    .turn_window_us
                    .draw(&mut self::rng(seed, Stream::TurnWindow)),
            },
            anti_entropy: scenario.anti_entropy,
            anti_entropy_interval_ms: scenario.anti_entropy_interval_ms.draw(&mut rng),
            sync_retry_ms: scenario.sync_retry_ms.draw(&mut rng),
            membership: scenario.membership,
            burst: workload.burst.draw(&mut rng),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_parameters_and_others_differ() {
        let swarm = Scenario::swarm();
        assert_eq!(Params::resolve(&swarm, 7), Params::resolve(&swarm, 7));
        let distinct: std::collections::BTreeSet<usize> = (0..50)
            .map(|seed| Params::resolve(&swarm, seed).nodes)
            .collect();
        assert!(distinct.len() >= 4, "node counts vary: {distinct:?}");
        assert!(distinct.iter().all(|n| (3..=7).contains(n)));
    }

    #[test]
    fn sub_seeds_differ_by_stream() {
        assert_ne!(sub_seed(1, Stream::World), sub_seed(1, Stream::Workload));
        assert_ne!(sub_seed(1, Stream::World), sub_seed(2, Stream::World));
    }
}
