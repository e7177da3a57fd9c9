//! What every system under test does for the workloads: the one interface
//! the harness drives Murmur, samod and the bare-library floor through.

use std::future::Future;
use std::path::PathBuf;
use std::time::Instant;

use automerge::transaction::{Transactable, Transaction};
use automerge::{AutomergeError, ChangeHash, ROOT};
use tokio::sync::mpsc;

/// How far a write must get before the call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// In memory on the writing node.
    Applied,
    /// Flushed to disk on the writing node.
    Durable,
}

/// One small edit: a single Automerge change.
#[derive(Clone, Debug)]
pub enum Edit {
    /// Sets the key `n` to a number.
    Counter(i64),
    /// Sets `key` to a string.
    Text {
        /// The key at the document root.
        key: String,
        /// The value.
        value: String,
    },
}

impl Edit {
    /// Applies the edit in an open transaction (the same code for all three
    /// systems, so they make the same changes).
    pub fn apply(&self, tx: &mut Transaction<'_>) -> Result<(), AutomergeError> {
        match self {
            Edit::Counter(n) => tx.put(ROOT, "n", *n),
            Edit::Text { key, value } => tx.put(ROOT, key.as_str(), value.as_str()),
        }
    }
}

/// When a node saw a document reach these heads.
pub type Arrival = (Instant, Vec<ChangeHash>);

/// Returned (wrapped in `anyhow::Error`) by a system that cannot run a
/// workload at all; the report says "skipped" with the reason.
#[derive(Debug)]
pub struct Unsupported(pub &'static str);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Unsupported {}

/// A cluster of `nodes` replicas of one system in this process, on loopback
/// and on disk under one directory. Nodes are numbered from 0; every node
/// is connected to every other.
pub trait System: Sized + Send + Sync + 'static {
    /// How the system names a document.
    type Doc: Clone + Send + Sync + 'static;

    /// The system's name in the report.
    const NAME: &'static str;

    /// Starts `nodes` nodes with their data under `dir` and waits until
    /// they are all connected.
    fn start(dir: PathBuf, nodes: usize) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// Stops every node cleanly and starts it again on the same data (used
    /// with one node: nothing is in memory afterwards).
    fn restart(self) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// Creates an empty document on `node`.
    fn create(&self, node: usize) -> impl Future<Output = anyhow::Result<Self::Doc>> + Send;

    /// Returns once `node` holds `doc`, in memory and ready: loaded from
    /// disk, or received from a peer.
    fn open(&self, node: usize, doc: &Self::Doc)
        -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Makes `edit` as one change on `node` and returns its hash once it
    /// reached `level`.
    fn write(
        &self,
        node: usize,
        doc: &Self::Doc,
        edit: Edit,
        level: Level,
    ) -> impl Future<Output = anyhow::Result<ChangeHash>> + Send;

    /// Reads `doc` on `node`: the number of keys at its root.
    fn read(
        &self,
        node: usize,
        doc: &Self::Doc,
    ) -> impl Future<Output = anyhow::Result<usize>> + Send;

    /// The heads of `doc` on `node`, or `None` if the node does not hold it
    /// (yet).
    fn heads(
        &self,
        node: usize,
        doc: &Self::Doc,
    ) -> impl Future<Output = anyhow::Result<Option<Vec<ChangeHash>>>> + Send;

    /// Every change `node` applies to `doc` from now on, timestamped when
    /// the system tells its subscriber.
    fn subscribe(
        &self,
        node: usize,
        doc: &Self::Doc,
    ) -> impl Future<Output = anyhow::Result<mpsc::UnboundedReceiver<Arrival>>> + Send;

    /// Bytes all nodes have sent to peers so far.
    fn wire_bytes(&self) -> impl Future<Output = anyhow::Result<u64>> + Send;

    /// Stops every node.
    fn shutdown(self) -> impl Future<Output = anyhow::Result<()>> + Send;
}
