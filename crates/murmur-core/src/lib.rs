//! Murmur's replication engine: Automerge documents replicated between
//! peers, with no I/O.
//!
//! A [`Replica`] holds every document of one node and all the rules of
//! replicating them. It owns no socket, thread or clock and reads no global
//! randomness: time comes in as an argument, randomness from a seed in its
//! [`Config`], and everything it wants done comes out as data. Two drivers
//! run the very same engine: `murmur-net` over QUIC with a real clock and
//! sled, and the simulator (and [`testkit`]) with virtual time and a
//! crashable in-memory store.
//!
//! # The event loop
//!
//! Inputs are `handle_*(now, ..)`; outputs are `poll_*()`. A driver:
//!
//! 1. opens the replica on a store: [`Replica::open`];
//! 2. feeds it what happens, each call stamped with the current time:
//!    - [`Replica::handle_local_change`] (the application edits a document;
//!      [`Replica::create_document`] makes a new one),
//!    - [`Replica::handle_peer_up`] / [`Replica::handle_peer_down`] (a
//!      connection to a peer opened or closed),
//!    - [`Replica::handle_message`] (a message arrived from a peer),
//!    - [`Replica::handle_timeout`] (the time [`Replica::poll_timeout`] asked
//!      for has come);
//! 3. after every input, drains the outputs:
//!    - [`Replica::poll_transmit`] until `None`: messages to send,
//!    - [`Replica::poll_event`] until `None`: documents that changed and
//!      writes that reached an acknowledgement level,
//!    - [`Replica::poll_timeout`]: when to call `handle_timeout` next.
//!
//! Storage is the one thing the engine touches directly, through the narrow
//! [`murmur_store::Storage`] trait, and only at two points: when a document
//! loads, and at a flush.
//!
//! # How documents replicate
//!
//! * **Eager push.** A local change goes at once, as raw change bytes, to
//!   every connected peer, joined with other changes still queued for the
//!   same peer and document. A receiver applies it directly; one whose
//!   dependencies are missing is kept (Automerge queues it) and the receiver
//!   asks for what is missing with the sync protocol.
//! * **Anti-entropy.** Every [`Config::anti_entropy_interval`] (with
//!   jitter) the replica runs the Automerge sync protocol for each document
//!   with one peer picked at random, after resetting the in-flight part of
//!   the sync state, so a lost message cannot stall it. When a peer
//!   connects, every document syncs with it the same way.
//! * **Sync state** per (peer, document) is stored, so a reconnect sends
//!   only what is missing.
//! * **Acknowledgements.** A local write is [`AckLevel::Applied`] when
//!   `handle_local_change` returns and [`AckLevel::Durable`] after the next
//!   flush. Flushes are group commits: every write since the last flush goes
//!   out in one batch and one `flush`.
//! * **Bounds.** Each peer's queue is bounded in bytes
//!   ([`Config::max_outbox_bytes_per_peer`]): past it, pushes are dropped
//!   and anti-entropy repairs the gap; memory does not grow.
//!
//! # Example
//!
//! Two replicas, wired by hand:
//!
//! ```
//! use automerge::{transaction::Transactable, ReadDoc, ROOT};
//! use murmur_core::{Config, Replica, Time};
//! use murmur_store::MemStore;
//! use murmur_wire::NodeId;
//!
//! let now = Time::from_millis(1_700_000_000_000);
//! let (alice_id, bob_id) = (NodeId([1; 32]), NodeId([2; 32]));
//! let mut alice = Replica::open(Config::new(alice_id), Box::new(MemStore::new()), now)?;
//! let mut bob = Replica::open(Config::new(bob_id), Box::new(MemStore::new()), now)?;
//! alice.handle_peer_up(now, bob_id);
//! bob.handle_peer_up(now, alice_id);
//!
//! let doc = alice.create_document(now);
//! alice.handle_local_change(now, doc, |tx| tx.put(ROOT, "greeting", "hello"))?;
//!
//! // Deliver messages both ways until nothing is left to say.
//! loop {
//!     let mut delivered = false;
//!     while let Some(t) = alice.poll_transmit() {
//!         bob.handle_message(now, alice_id, t.message)?;
//!         delivered = true;
//!     }
//!     while let Some(t) = bob.poll_transmit() {
//!         alice.handle_message(now, bob_id, t.message)?;
//!         delivered = true;
//!     }
//!     if !delivered { break; }
//! }
//! let (value, _) = bob.document(doc)?.get(ROOT, "greeting")?.expect("replicated");
//! assert_eq!(value.as_str(), Some("hello"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`testkit`] does this for N replicas with virtual time, seeded delays and
//! faults.

mod config;
mod document;
mod error;
mod membership;
mod replica;
mod replication;
pub mod testkit;
mod time;

pub use config::{Config, FaultInjection};
pub use error::ReplicaError;
pub use membership::Member;
pub use replica::{AckLevel, Event, LocalWrite, Origin, Replica, Transmit, WriteId};
pub use time::Time;

pub use automerge;
pub use murmur_wire::{ChangeHash as WireChangeHash, DocumentId, Message, NodeId};

/// Counters a replica keeps about its own work.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Local changes made.
    pub local_changes: u64,
    /// Changes sent in eager pushes (one per change per peer).
    pub changes_pushed: u64,
    /// Changes received in eager pushes (duplicates included).
    pub changes_received: u64,
    /// Sync messages queued.
    pub sync_messages_sent: u64,
    /// Sync messages received.
    pub sync_messages_received: u64,
    /// Messages handed to the driver.
    pub messages_sent: u64,
    /// Messages received from peers.
    pub messages_received: u64,
    /// Messages dropped because a peer's queue was full.
    pub messages_dropped_backpressure: u64,
    /// Pushed changes that missed dependencies and started a sync.
    pub missing_dependency_syncs: u64,
    /// Anti-entropy rounds run.
    pub anti_entropy_rounds: u64,
    /// Sync conversations restarted because they stopped making progress
    /// (a lost message).
    pub sync_restarts: u64,
    /// Successful flushes.
    pub flushes: u64,
    /// Failed flushes.
    pub flush_failures: u64,
    /// Bytes written by flushes.
    pub bytes_flushed: u64,
    /// Documents compacted.
    pub compactions: u64,
}
