//! Murmur: a peer replication engine for Automerge documents.
//!
//! A [`Node`] keeps documents in a data directory (sled) and replicates
//! them to its peers; a [`DocHandle`] edits, reads and watches one
//! document. Every edit is one Automerge change, acknowledged at the level
//! you ask for: [`Ack::Applied`] (in memory), [`Ack::Durable`] (flushed to
//! disk, the default) or [`Ack::Replicated(k)`](Ack::Replicated) (durable
//! here and on k peers).
//!
//! ```
//! use murmur::{automerge::{transaction::Transactable, ReadDoc, ROOT}, Node};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), murmur::Error> {
//! let dir = tempfile::tempdir().expect("temp dir");
//! let node = Node::builder().data_dir(dir.path()).start().await?;
//!
//! let doc = node.create_doc().await?;
//! let mut changes = doc.changes().await?;
//! doc.change(|tx| tx.put(ROOT, "title", "Shopping")).await?; // durable on return
//!
//! let title = doc
//!     .read(|d| d.get(ROOT, "title").ok().flatten().map(|(v, _)| v.to_string()))
//!     .await?;
//! assert_eq!(title.as_deref(), Some("\"Shopping\""));
//! let change = changes.next().await.expect("a change")?;
//! assert_eq!(change.patches.len(), 1);
//!
//! let id = doc.id();
//! node.shutdown().await?;
//!
//! // Everything acknowledged Durable is there after a restart.
//! let node = Node::builder().data_dir(dir.path()).start().await?;
//! let doc = node.doc(id).await?;
//! assert!(doc.read(|d| d.get(ROOT, "title").ok().flatten().is_some()).await?);
//! # node.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Crate map
//!
//! | crate | what it owns |
//! |---|---|
//! | `murmur` (this) | the public API: [`Node`], [`NodeBuilder`], [`DocHandle`], and the [`driver`] task that runs the engine with a real clock, sled and QUIC |
//! | `murmur-node` | the `murmur` binary: CLI, config, loopback HTTP API, metrics |
//! | `murmur-net` | node identity, TLS between nodes, the QUIC transport |
//! | `murmur-core` | the replication engine, with no I/O |
//! | `murmur-store` | the `Storage` trait, sled and in-memory stores, the key layout |
//! | `murmur-wire` | every message on the network, framed and bounded |

mod change;
mod doc;
pub mod driver;
pub mod feed;
pub mod json;
mod node;
pub mod repo_protocol;
mod status;
pub mod view;

pub use doc::{ChangeStream, DocHandle, Receipt};
pub use driver::ClientSyncReply;
pub use feed::{Cursor, FeedEntry, FeedStream};
pub use node::{Node, NodeBuilder, Simulation};

pub use automerge;
pub use change::{DocumentChange, NotReplicated};
pub use murmur_core::{
    AckLevel as Ack, ClientState, Figure, FigureKind, Metrics, Origin, ReplicaError, Time,
};
pub use murmur_net::{socket, Identity};
pub use murmur_wire::{DocumentId, NodeId};
pub use status::{PeerInfo, Status, Traffic};

/// What can go wrong using a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store could not be opened or written.
    #[error(transparent)]
    Store(#[from] murmur_store::StoreError),
    /// The node identity could not be read or created.
    #[error(transparent)]
    Identity(#[from] murmur_net::IdentityError),
    /// The engine refused the request (unknown document, rolled-back
    /// change, ...).
    #[error(transparent)]
    Replica(#[from] murmur_core::ReplicaError),
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The network could not start (address in use, TLS set-up, ...).
    #[error(transparent)]
    Network(#[from] murmur_net::transport::NetError),
    /// The node listens on an unspecified address (`0.0.0.0` or `::`),
    /// which other nodes cannot dial: it needs
    /// [`NodeBuilder::advertise`] to say where they can reach it.
    #[error("listening on {listen}, which other nodes cannot dial: set the address they reach this node at (`advertise`)")]
    AdvertiseRequired {
        /// The listen address.
        listen: std::net::SocketAddr,
    },
    /// The node was started without a listen address, so it has no
    /// network to add peers to.
    #[error("the node is not networked: start it with a listen address")]
    NotNetworked,
    /// The change was made but not confirmed by enough peers in time; it
    /// stays and keeps replicating.
    #[error(transparent)]
    NotReplicated(#[from] NotReplicated),
    /// The node has shut down.
    #[error("the node has shut down")]
    Closed,
    /// [`Node::shutdown`] gave up: the node did not stop within this time
    /// (a flush stuck on the disk, or an engine turn that does not end).
    /// Writes not acknowledged `Durable` may be lost, as in a crash.
    #[error("the node did not stop within {0:?}")]
    ShutdownTimedOut(std::time::Duration),
    /// A subscriber fell more than this many changes behind and missed
    /// them; read the document to catch up.
    #[error("fell behind and missed {0} document changes")]
    Lagged(u64),
    /// A document cannot be read as asked (heads it does not hold).
    #[error(transparent)]
    View(#[from] view::ViewError),
    /// The feed no longer holds the entries from the cursor on (retention
    /// removed them, or they predate the feed): start again from a
    /// snapshot of the documents, then follow from `first - 1`.
    #[error("the feed no longer holds entry {from} (its oldest is {first}): start again from a snapshot")]
    FeedTrimmed {
        /// The sequence number asked for.
        from: u64,
        /// The oldest entry the feed holds.
        first: u64,
    },
}

impl From<driver::ChangeFailed> for Error {
    fn from(failed: driver::ChangeFailed) -> Self {
        match failed {
            driver::ChangeFailed::Rejected(error) => Error::Replica(error),
            driver::ChangeFailed::NotReplicated(missed) => Error::NotReplicated(missed),
        }
    }
}

impl From<driver::DriverClosed> for Error {
    fn from(_: driver::DriverClosed) -> Self {
        Error::Closed
    }
}
