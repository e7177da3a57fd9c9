//! Murmur's network: node identity, TLS between nodes, and the QUIC
//! transport. The driver that runs a replica over it lives in the `murmur`
//! crate, with the public API.
//!
//! * [`identity`]: the node's Ed25519 key pair, kept in its data directory;
//!   the public key is the node id.
//! * [`tls`]: TLS 1.3 with pinned peer keys: a self-signed certificate per
//!   node, accepted only if its key is on the allow-list.
//! * [`transport`]: QUIC (quinn): one connection per peer, frames on one
//!   stream each way, reconnects with backoff and jitter.

pub mod identity;
pub mod tls;
pub mod transport;

pub use identity::{Identity, IdentityError};
/// What a simulated network implements to carry a node's QUIC
/// ([`transport::Network::start_on`]): quinn's socket traits and their
/// packet types.
pub mod socket {
    pub use quinn::udp::{RecvMeta, Transmit};
    pub use quinn::{AsyncUdpSocket, UdpPoller};
}
