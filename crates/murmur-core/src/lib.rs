//! Murmur's replication engine: Automerge documents replicated between
//! peers, with no I/O.
//!
//! A [`Replica`] holds the documents of one node (in its store, the ones
//! in use in memory) and all the rules of replicating them. It owns no
//! socket, thread or clock and reads no global
//! randomness: time comes in as an argument, randomness from a seed in its
//! [`Config`], and everything it wants done comes out as data. Two drivers
//! run the very same engine: `murmur`'s driver over QUIC with a real clock and
//! sled, and the simulator (and `testkit`) with virtual time and a
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
//!    - [`Replica::handle_message`] (a message arrived from a peer), or
//!      [`Replica::handle_messages`] for all those found queued at once (a
//!      node behind on a peer's pushes then applies them in one batch),
//!    - [`Replica::handle_timeout`] (the time [`Replica::poll_timeout`] asked
//!      for has come),
//!    - [`Replica::handle_flush_complete`] (a group commit handed out by
//!      `poll_flush` was written, or failed),
//!    - [`Replica::handle_document_loaded`] (a document load handed out by
//!      `poll_load` landed);
//! 3. after every input, drains the outputs:
//!    - [`Replica::poll_transmit`] until `None`: messages to send,
//!    - [`Replica::poll_event`] until `None`: documents that changed (with
//!      Automerge patches of what changed, for the documents the driver
//!      [`Replica::observe`]s) and writes that reached an acknowledgement
//!      level,
//!    - [`Replica::poll_flush`]: a group commit ([`Flush`]) that is due, for
//!      the driver to write off the engine's path (on a blocking thread) and
//!      report with `handle_flush_complete`. One is in flight at a time;
//!      writes that arrive meanwhile gather for the next (pipelined group
//!      commit),
//!    - [`Replica::poll_load`] until `None`: documents to load ([`Load`]),
//!      on a blocking thread, for `handle_document_loaded`,
//!    - [`Replica::poll_timeout`]: when to call `handle_timeout` next.
//!
//! Writes and document loads leave the engine as those effects: no engine
//! call waits for a flush or decodes a stored document. Before a local
//! change or read, the driver asks [`Replica::request_load`]; a document
//! still loading is waited for there, while the engine answers everything
//! else. The engine still reads small records of its store directly,
//! through the narrow [`murmur_store::Storage`] trait: whether a document
//! exists, and the reconciliation digest's nodes and buckets.
//! [`Replica::flush_now`], [`Replica::load_now`] and [`Replica::close`]
//! run on the calling thread, for shutdown, tests and examples.
//!
//! # Memory: lazy loading and a bounded cache
//!
//! [`Replica::open`] scans nothing and loads nothing. A document loads from
//! the store on first use (a local change, a peer's message about it, a
//! reconciliation that finds it differing), as an effect: what needs it
//! is parked (at most [`Config::max_parked_inputs`] inputs, the rest
//! dropped for repair to resend) until the load lands, and replayed in
//! arrival order. It then stays in a cache bounded by
//! [`Config::max_cached_document_bytes`] (estimated bytes); past it, the
//! least recently used documents that are fully flushed are evicted. So a
//! node holds a million documents with a few thousand in memory.
//! [`Replica::read_document`] reads any document, in memory or not;
//! [`Replica::document_ids`] lists every one (an index scan, O(N)).
//!
//! # How documents replicate
//!
//! * **Eager push.** A local change goes at once, as raw change bytes, to
//!   every connected peer, joined with other changes still queued for the
//!   same peer and document. A receiver applies it directly; one whose
//!   dependencies are missing is kept (Automerge queues it) and the receiver
//!   asks for what is missing with the sync protocol.
//! * **Anti-entropy: document sets first.** Every
//!   [`Config::anti_entropy_interval`] (with jitter) the replica reconciles
//!   with one peer picked at random, and when a peer connects. It does not
//!   sync every document: it first works out which documents differ,
//!   through a digest kept in the store (a hash trie over document ids,
//!   fanout 16, five levels; each node the xor of a hash of (id, heads) of
//!   the documents below and their count). The digest is updated in place
//!   at each flush, in the same write batch as the documents, and never
//!   rebuilt by a scan. The root goes to the peer; each side answers the
//!   nodes that differ from its own with its children of them, down to
//!   buckets of documents, whose (id, hash) lists are compared. A round in
//!   which nothing differs is one message; d differing documents among N
//!   cost O(d log N) bytes and about five round trips. Only the documents
//!   found to differ then run the Automerge sync protocol, after resetting
//!   the in-flight part of their sync state, so a lost message cannot
//!   stall it.
//! * **Peers create documents only with content.** A document a peer
//!   names that this node lacks (in a digest, or a sync message) is synced
//!   from an empty copy kept in memory only; it is stored once a change of
//!   it applies, and dropped if the peer goes away first. At most
//!   [`Config::max_new_documents_per_peer`] documents from one peer are
//!   new here at a time (named, or created and not flushed yet). A
//!   document with no change yet is not reconciled: it reaches a peer with
//!   its first change.
//! * **Sync state** per (peer, document) is stored, so a reconnect sends
//!   only what is missing. A conversation that lost a message is restarted
//!   three ways: a side that receives no progress resends once; a
//!   reconciliation resets what was in flight; and a conversation whose
//!   peer stays quiet for [`Config::sync_retry`] (doubling, a few times)
//!   is restarted by its own timer, unless both sides last said the same
//!   heads.
//! * **Acknowledgements.** A local write is [`AckLevel::Applied`] when
//!   `handle_local_change` returns (its eager push is queued then too) and
//!   [`AckLevel::Durable`] when the flush that carries it completes.
//!   Flushes are group commits: every write since the last one goes out in
//!   one batch and one `flush`, and while one is in flight the next
//!   gathers. Sync states alone wait up to
//!   [`Config::sync_state_flush_delay`]: no fsync per sync message. A peer that applies our changes
//!   reports its heads after its own flush; a durable write included in k
//!   peers' heads is [`AckLevel::Replicated`]`(k)`.
//! * **Membership.** With [`Config::membership_addr`] set, SWIM (foca) runs
//!   inside the replica as one more message kind: members learn of each
//!   other through any connected peer ([`Event::MemberUp`], with the address
//!   to dial) and failed ones are declared down ([`Event::MemberDown`]).
//! * **Incarnations.** Each opening of the store is a new incarnation that
//!   writes as its own Automerge actor: a change pushed before its flush can
//!   survive a crash on the peers, so its sequence number must never be
//!   reused.
//! * **Bounds.** Each peer's queue is bounded in bytes
//!   ([`Config::max_outbox_bytes_per_peer`]; one message always fits an
//!   empty queue): past it, messages are dropped and anti-entropy repairs
//!   the gap; memory does not grow.
//! * **Checking itself.** [`Replica::check_invariants`] (cheap, for every
//!   simulator step) and [`Replica::check_digest`] (O(documents)) say
//!   whether the engine's own bookkeeping still agrees with itself and
//!   with its store.
//!
//! # Where things live
//!
//! `replica.rs` holds the [`Replica`] struct, [`Replica::open`] and the
//! `handle_*`/`poll_*` entry points, and hands each input to the part that
//! owns it, under `replica/`: `local` (new documents, local changes, the
//! disk-space guard), `sync` (eager pushes, batched receipt, the sync
//! protocol and its retries), `reconcile` (the digest protocol; `digest.rs`
//! is the trie), `durability` (the group-commit pipeline, compaction,
//! close), `documents` (residency, loads, reads, eviction), `acks`
//! (`Replicated(k)`), `peers` (connections, outbox, membership glue),
//! `events` and `inspect` (invariants). State lives in types that own it:
//! `cache::Documents` (the documents in memory, loading, quarantined),
//! `outbox::Outbox`, `Durability`, `Events`, `digest::Digest`,
//! `replication::Replication`, `retry::SyncRetries`, and `incarnation`.
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
//! let (value, _) = bob.cached_document(doc)?.get(ROOT, "greeting")?.expect("replicated");
//! assert_eq!(value.as_str(), Some("hello"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `testkit` (behind the `testkit` feature, off in a node's build) does
//! this for N replicas with virtual time, seeded delays and faults.

mod cache;
mod config;
mod digest;
mod document;
mod error;
pub mod feed;
mod flush;
mod foreign;
mod incarnation;
mod load;
mod membership;
mod outbox;
mod replica;
mod replication;
mod retry;
#[cfg(feature = "testkit")]
pub mod testkit;
mod time;

pub use config::{Config, FaultInjection};
pub use error::ReplicaError;
pub use flush::Flush;
pub use foreign::decode_automerge;
pub use load::{Load, Loaded, Residency};
pub use membership::Member;
pub use replica::{
    AckLevel, ClientState, ClientStep, ClientSync, Event, LocalWrite, Origin, Replica, Transmit,
    WriteId, MAX_BATCHED_CHANGES,
};
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
    /// Pushes applied in one batch with an earlier push of the same peer
    /// about the same document ([`Replica::handle_messages`]).
    pub pushes_batched: u64,
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
    /// Local writes made durable by flushes (over `flushes`: how many
    /// writes one fsync covers).
    pub writes_flushed: u64,
    /// Documents compacted.
    pub compactions: u64,
    /// Documents loaded from the store into memory.
    pub documents_loaded: u64,
    /// Peer messages and owed syncs parked while their document loaded.
    pub inputs_parked: u64,
    /// Peer messages and owed syncs dropped because too many were parked
    /// already (or their document's load failed): repaired by sync retries
    /// and anti-entropy.
    pub inputs_dropped_loading: u64,
    /// Documents evicted from memory (clean and cold).
    pub documents_evicted: u64,
    /// Documents dropped from memory and rebuilt from the store because a
    /// peer's data broke them there (an Automerge bug; the data was
    /// refused).
    pub documents_rebuilt: u64,
    /// Documents in memory now (a gauge).
    pub cached_documents: u64,
    /// Documents in the store that hold a change (a gauge), as of the last
    /// flush: the reconciliation digest's count. A document with no change
    /// yet is neither counted nor reconciled.
    pub documents_held: u64,
    /// Estimated bytes of the documents in memory now (a gauge).
    pub cached_document_bytes: u64,
    /// Document-set reconciliation messages queued (digest nodes and
    /// leaves).
    pub digest_messages_sent: u64,
    /// Document-set reconciliation messages received.
    pub digest_messages_received: u64,
    /// Documents that reconciliation found to differ from a peer's and
    /// synced.
    pub documents_reconciled: u64,
    /// Documents new to this node that a peer's message named or carried
    /// past [`Config::max_new_documents_per_peer`]: not taken up now; they
    /// come again through sync retries and anti-entropy.
    pub documents_deferred: u64,
    /// Change-feed entries made durable.
    pub feed_entries: u64,
    /// Documents deleted here (tombstones laid, local or told by peers).
    pub documents_deleted: u64,
    /// Deletions reconciliation found (either side of a differing leaf).
    pub deletions_reconciled: u64,
    /// Digest buckets too big for one message, sent as several id ranges.
    pub digest_buckets_split: u64,
    /// Sync conversations restarted because the peer went quiet (a lost
    /// message, most likely).
    pub sync_retries: u64,
    /// Free bytes on the store's disk as last measured (a gauge; 0 until
    /// measured).
    pub disk_free_bytes: u64,
    /// 1 while local writes are refused for want of disk space (a gauge).
    pub disk_full: u64,
    /// Local writes refused for want of disk space.
    pub writes_refused_disk_full: u64,
}

/// Whether a [`Figure`] only grows or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FigureKind {
    /// Only grows (from the replica's opening).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One number a node reports: its key in `/status`, its Prometheus name in
/// `/metrics`, its kind, what it means and its value. Reports are generated
/// from these, so the two endpoints cannot drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figure {
    /// The key in `/status`.
    pub key: &'static str,
    /// The Prometheus metric name.
    pub metric: &'static str,
    /// Counter or gauge.
    pub kind: FigureKind,
    /// What it counts (the Prometheus help text).
    pub help: &'static str,
    /// The value now.
    pub value: u64,
}

impl Figure {
    /// A counter.
    pub const fn counter(
        key: &'static str,
        metric: &'static str,
        help: &'static str,
        value: u64,
    ) -> Figure {
        Figure {
            key,
            metric,
            kind: FigureKind::Counter,
            help,
            value,
        }
    }

    /// A gauge.
    pub const fn gauge(
        key: &'static str,
        metric: &'static str,
        help: &'static str,
        value: u64,
    ) -> Figure {
        Figure {
            key,
            metric,
            kind: FigureKind::Gauge,
            help,
            value,
        }
    }
}

impl Metrics {
    /// Every counter and gauge, for reports. (Listing the fields by
    /// destructuring makes a new field a compile error until it is here.)
    pub fn figures(&self) -> Vec<Figure> {
        let Metrics {
            local_changes,
            changes_pushed,
            changes_received,
            sync_messages_sent,
            sync_messages_received,
            messages_sent,
            messages_received,
            messages_dropped_backpressure,
            missing_dependency_syncs,
            pushes_batched,
            anti_entropy_rounds,
            sync_restarts,
            flushes,
            flush_failures,
            bytes_flushed,
            writes_flushed,
            compactions,
            documents_loaded,
            inputs_parked,
            inputs_dropped_loading,
            documents_evicted,
            documents_rebuilt,
            cached_documents,
            documents_held,
            cached_document_bytes,
            digest_messages_sent,
            digest_messages_received,
            documents_reconciled,
            documents_deferred,
            feed_entries,
            documents_deleted,
            deletions_reconciled,
            digest_buckets_split,
            sync_retries,
            disk_free_bytes,
            disk_full,
            writes_refused_disk_full,
        } = *self;
        use Figure as F;
        vec![
            F::gauge("documents_held", "murmur_documents", "Documents this node holds in its store with at least one change (as of the last flush).", documents_held),
            F::gauge("cached_documents", "murmur_cached_documents", "Documents in memory now.", cached_documents),
            F::gauge("cached_document_bytes", "murmur_cached_document_bytes", "Estimated bytes of the documents in memory.", cached_document_bytes),
            F::counter("documents_loaded", "murmur_documents_loaded_total", "Documents loaded from the store into memory.", documents_loaded),
            F::counter("documents_evicted", "murmur_documents_evicted_total", "Documents evicted from memory (clean and cold).", documents_evicted),
            F::counter("documents_rebuilt", "murmur_documents_rebuilt_total", "Documents rebuilt from the store because a peer's data broke them in memory (the data was refused).", documents_rebuilt),
            F::counter("inputs_parked", "murmur_inputs_parked_total", "Peer messages and owed syncs that waited for their document to load.", inputs_parked),
            F::counter("inputs_dropped_loading", "murmur_inputs_dropped_loading_total", "Peer messages and owed syncs dropped while too many waited for loads (repair resends them).", inputs_dropped_loading),
            F::counter("local_changes", "murmur_local_changes_total", "Changes made on this node (applied locally).", local_changes),
            F::counter("changes_pushed", "murmur_changes_pushed_total", "Changes sent to peers in eager pushes (one per change per peer).", changes_pushed),
            F::counter("changes_received", "murmur_changes_received_total", "Changes received from peers in eager pushes (duplicates included).", changes_received),
            F::counter("pushes_batched", "murmur_pushes_batched_total", "Pushes applied in one batch with an earlier push of the same peer and document.", pushes_batched),
            F::counter("missing_dependency_syncs", "murmur_missing_dependency_syncs_total", "Pushed changes that missed dependencies and started a sync.", missing_dependency_syncs),
            F::counter("sync_messages_sent", "murmur_sync_messages_sent_total", "Automerge sync messages queued (catch-up and anti-entropy).", sync_messages_sent),
            F::counter("sync_messages_received", "murmur_sync_messages_received_total", "Automerge sync messages received.", sync_messages_received),
            F::counter("sync_restarts", "murmur_sync_restarts_total", "Sync conversations resent because they stopped making progress (a lost message).", sync_restarts),
            F::counter("sync_retries", "murmur_sync_retries_total", "Sync conversations restarted by their timer because the peer went quiet.", sync_retries),
            F::counter("messages_sent", "murmur_engine_messages_sent_total", "Messages the engine handed to the network.", messages_sent),
            F::counter("messages_received", "murmur_engine_messages_received_total", "Peer messages the engine took in.", messages_received),
            F::counter("messages_dropped_backpressure", "murmur_messages_dropped_backpressure_total", "Messages the engine dropped because a peer's queue was full (anti-entropy carries them later).", messages_dropped_backpressure),
            F::counter("anti_entropy_rounds", "murmur_anti_entropy_rounds_total", "Anti-entropy (reconciliation) rounds run.", anti_entropy_rounds),
            F::counter("digest_messages_sent", "murmur_digest_messages_sent_total", "Reconciliation digest messages queued.", digest_messages_sent),
            F::counter("digest_messages_received", "murmur_digest_messages_received_total", "Reconciliation digest messages received.", digest_messages_received),
            F::counter("documents_reconciled", "murmur_documents_reconciled_total", "Documents reconciliation found differing from a peer's, and synced.", documents_reconciled),
            F::counter("documents_deferred", "murmur_documents_deferred_total", "Documents new to this node a peer named or sent past the per-peer cap (they come again later).", documents_deferred),
            F::counter("documents_deleted", "murmur_documents_deleted_total", "Documents deleted here (tombstones laid, by this node or told by peers).", documents_deleted),
            F::counter("deletions_reconciled", "murmur_deletions_reconciled_total", "Deletions reconciliation found differing from a peer (sent or taken up).", deletions_reconciled),
            F::counter("feed_entries", "murmur_feed_entries_total", "Change-feed entries made durable (one per application of changes to a document).", feed_entries),
            F::counter("digest_buckets_split", "murmur_digest_buckets_split_total", "Digest buckets too big for one message, sent as several id ranges.", digest_buckets_split),
            F::counter("flushes", "murmur_flushes_total", "Successful flushes to disk.", flushes),
            F::counter("flush_failures", "murmur_flush_failures_total", "Failed flushes (retried).", flush_failures),
            F::counter("bytes_flushed", "murmur_flushed_bytes_total", "Bytes written by flushes.", bytes_flushed),
            F::counter("writes_flushed", "murmur_flushed_writes_total", "Local writes made durable by flushes (over murmur_flushes_total: writes per fsync).", writes_flushed),
            F::counter("compactions", "murmur_compactions_total", "Documents compacted into a new snapshot.", compactions),
            F::gauge("disk_free_bytes", "murmur_disk_free_bytes", "Free bytes on the data directory's disk, as last measured.", disk_free_bytes),
            F::gauge("disk_full", "murmur_disk_full", "1 while new writes are refused because the disk is nearly full.", disk_full),
            F::counter("writes_refused_disk_full", "murmur_writes_refused_disk_full_total", "Writes refused because the disk was nearly full.", writes_refused_disk_full),
        ]
    }

    /// Adds `other`'s counters to these (gauges add up too: the sum over
    /// several replicas).
    pub fn accumulate(&mut self, other: &Metrics) {
        let Metrics {
            local_changes,
            changes_pushed,
            changes_received,
            sync_messages_sent,
            sync_messages_received,
            messages_sent,
            messages_received,
            messages_dropped_backpressure,
            missing_dependency_syncs,
            pushes_batched,
            anti_entropy_rounds,
            sync_restarts,
            flushes,
            flush_failures,
            bytes_flushed,
            writes_flushed,
            compactions,
            documents_loaded,
            inputs_parked,
            inputs_dropped_loading,
            documents_evicted,
            documents_rebuilt,
            cached_documents,
            documents_held,
            cached_document_bytes,
            digest_messages_sent,
            digest_messages_received,
            documents_reconciled,
            documents_deferred,
            feed_entries,
            documents_deleted,
            deletions_reconciled,
            digest_buckets_split,
            sync_retries,
            disk_free_bytes,
            disk_full,
            writes_refused_disk_full,
        } = other;
        self.local_changes += local_changes;
        self.changes_pushed += changes_pushed;
        self.changes_received += changes_received;
        self.sync_messages_sent += sync_messages_sent;
        self.sync_messages_received += sync_messages_received;
        self.messages_sent += messages_sent;
        self.messages_received += messages_received;
        self.messages_dropped_backpressure += messages_dropped_backpressure;
        self.missing_dependency_syncs += missing_dependency_syncs;
        self.pushes_batched += pushes_batched;
        self.anti_entropy_rounds += anti_entropy_rounds;
        self.sync_restarts += sync_restarts;
        self.flushes += flushes;
        self.flush_failures += flush_failures;
        self.bytes_flushed += bytes_flushed;
        self.writes_flushed += writes_flushed;
        self.compactions += compactions;
        self.documents_loaded += documents_loaded;
        self.inputs_parked += inputs_parked;
        self.inputs_dropped_loading += inputs_dropped_loading;
        self.documents_evicted += documents_evicted;
        self.documents_rebuilt += documents_rebuilt;
        self.cached_documents += cached_documents;
        self.documents_held += documents_held;
        self.cached_document_bytes += cached_document_bytes;
        self.digest_messages_sent += digest_messages_sent;
        self.digest_messages_received += digest_messages_received;
        self.documents_reconciled += documents_reconciled;
        self.documents_deferred += documents_deferred;
        self.feed_entries += feed_entries;
        self.documents_deleted += documents_deleted;
        self.deletions_reconciled += deletions_reconciled;
        self.digest_buckets_split += digest_buckets_split;
        self.sync_retries += sync_retries;
        self.disk_free_bytes += disk_free_bytes;
        self.disk_full += disk_full;
        self.writes_refused_disk_full += writes_refused_disk_full;
    }
}
