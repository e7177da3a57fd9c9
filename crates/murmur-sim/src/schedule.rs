//! The schedule: a run's operations and fault windows, as data.
//!
//! A seed makes a schedule ([`Schedule::generate`]); the runner plays a
//! schedule. Between the two sits the shrinker, which drops operations and
//! windows from a failing schedule, and the repro file, which saves a
//! schedule so that `murmur-sim replay` plays exactly it again.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::nemesis::{self, FaultWindow};
use crate::params::{self, Params, Stream};
use crate::scenario::Scenario;
use crate::workload::{self, ScheduledOp};
use crate::PlantedBug;

/// Operations and fault windows, in chaos-phase time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Operations, by time.
    pub ops: Vec<ScheduledOp>,
    /// Fault windows, by start time.
    pub faults: Vec<FaultWindow>,
}

impl Schedule {
    /// The schedule `params` (and so the seed) make.
    pub fn generate(params: &Params) -> Schedule {
        let mut workload_rng = params::rng(params.seed, Stream::Workload);
        let mut nemesis_rng = params::rng(params.seed, Stream::Nemesis);
        Schedule {
            ops: workload::generate(params, &mut workload_rng),
            faults: nemesis::generate(params, &mut nemesis_rng),
        }
    }
}

/// Everything needed to replay one run exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repro {
    /// The scenario's parameters for the seed.
    pub params: Params,
    /// The schedule (perhaps shrunk).
    pub schedule: Schedule,
    /// A planted bug, if the run had one.
    #[serde(default)]
    pub plant: PlantedBug,
}

/// Why a repro file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReproError {
    /// Reading or writing the file failed.
    #[error("repro file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a repro.
    #[error("repro file {path} does not parse: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The file names more nodes than its parameters have.
    #[error("repro file {path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl Repro {
    /// The repro of `seed` in `scenario`, unshrunk.
    pub fn from_seed(scenario: &Scenario, seed: u64, plant: PlantedBug) -> Repro {
        let params = Params::resolve(scenario, seed);
        let schedule = Schedule::generate(&params);
        Repro {
            params,
            schedule,
            plant,
        }
    }

    /// Writes it as JSON.
    pub fn save(&self, path: &Path) -> Result<(), ReproError> {
        let io = |source| ReproError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let json = serde_json::to_string_pretty(self).map_err(|source| ReproError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        std::fs::write(path, json).map_err(io)
    }

    /// Reads one, checking that it names only nodes it has.
    pub fn load(path: &Path) -> Result<Repro, ReproError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ReproError::Io {
            path: name.clone(),
            source,
        })?;
        let repro: Repro = serde_json::from_str(&text).map_err(|source| ReproError::Parse {
            path: name.clone(),
            source,
        })?;
        repro
            .validate()
            .map_err(|reason| ReproError::Invalid { path: name, reason })?;
        Ok(repro)
    }

    fn validate(&self) -> Result<(), String> {
        let nodes = self.params.nodes;
        if nodes == 0 || nodes as u64 > crate::scenario::MAX_NODES {
            return Err(format!("{nodes} nodes"));
        }
        if let Some(op) = self.schedule.ops.iter().find(|op| op.node >= nodes) {
            return Err(format!("an operation runs on node {} of {nodes}", op.node));
        }
        for window in &self.schedule.faults {
            let bad_node = window.fault.node().is_some_and(|node| node >= nodes);
            let bad_pair = match &window.fault {
                nemesis::Fault::Partition { cut, one_way, .. } => cut
                    .iter()
                    .chain(one_way)
                    .any(|&(a, b)| a >= nodes || b >= nodes),
                _ => false,
            };
            if bad_node || bad_pair || window.end_ms < window.start_ms {
                return Err(format!("fault window {} is malformed", window.fault));
            }
        }
        Ok(())
    }
}
