//! Murmur's driver: runs a [`murmur_core::Replica`] with real I/O.
//!
//! * [`identity`]: the node's Ed25519 key pair, kept in its data directory;
//!   the public key is the node id.
//! * [`driver`]: the tokio task that owns the replica, feeds it commands
//!   and timer expiries with the wall clock, and carries out its outputs.
//!
//! * [`tls`]: TLS 1.3 with pinned peer keys: a self-signed certificate per
//!   node, accepted only if its key is on the allow-list.
//! * [`transport`]: QUIC (quinn): one connection per peer, frames on one
//!   stream each way, reconnects with backoff and jitter.

pub mod driver;
pub mod identity;
pub mod tls;
pub mod transport;

pub use driver::{spawn, Command, DriverClosed, DriverHandle};
pub use identity::{Identity, IdentityError};
