//! Murmur's driver: runs a [`murmur_core::Replica`] with real I/O.
//!
//! * [`identity`]: the node's Ed25519 key pair, kept in its data directory;
//!   the public key is the node id.
//! * [`driver`]: the tokio task that owns the replica, feeds it commands
//!   and timer expiries with the wall clock, and carries out its outputs.
//!
//! The QUIC transport (quinn, rustls with pinned peer keys) plugs into the
//! driver's loop next; until then a node replicates nothing and is a local
//! store of documents.

pub mod driver;
pub mod identity;

pub use driver::{spawn, Command, DriverClosed, DriverHandle};
pub use identity::{Identity, IdentityError};
