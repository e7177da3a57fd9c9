//! How a replica is tuned.

use std::time::Duration;

use murmur_wire::{NodeId, MAX_CHANGES_PER_PUSH, MAX_DIGEST_LEAVES};

/// Settings of one [`Replica`](crate::Replica). Every bound the engine
/// keeps is here.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id. Its first 16 bytes begin each of the node's
    /// Automerge actors: one per incarnation of the store (the opening
    /// count follows them from the second incarnation on), so a node that
    /// crashed never reuses a sequence number.
    pub node_id: NodeId,
    /// Seeds the engine's random choices (document ids, jitter, which peer
    /// anti-entropy picks). Same seed, same inputs: same outputs.
    pub seed: u64,
    /// How often, on average, the replica reconciles with one peer.
    pub anti_entropy_interval: Duration,
    /// Up to this much is added to or taken from each interval, so that
    /// nodes do not fall into step.
    pub anti_entropy_jitter: Duration,
    /// How long writes may wait for a flush so that many share one. Zero
    /// makes the flush due at once: [`poll_flush`](crate::Replica::poll_flush)
    /// hands it out after the input that made it due, and everything that
    /// arrives while it is in flight shares the next one.
    pub group_commit_delay: Duration,
    /// How long a changed sync state may wait for a group commit when no
    /// write needs one sooner. A sync state lost in a crash only costs
    /// bandwidth, so sync messages alone do not cost an fsync each.
    pub sync_state_flush_delay: Duration,
    /// Free bytes the disk holding the store must keep: below it (as the
    /// driver measures it, [`Replica::handle_disk_space`](crate::Replica::handle_disk_space)),
    /// new local writes are refused with
    /// [`ReplicaError::DiskFull`](crate::ReplicaError::DiskFull), like
    /// etcd's NOSPACE alarm. sled must never reach ENOSPC: it then hangs in
    /// a flush or aborts. 0 turns the check off.
    pub min_free_bytes: u64,
    /// Most Automerge operations in one local change. A bigger one is
    /// rolled back and refused with
    /// [`ReplicaError::ChangeTooLarge`](crate::ReplicaError::ChangeTooLarge):
    /// one change must not hold the engine for long (Automerge 0.12 makes
    /// about 60,000 list insertions a second on one core) nor be too big
    /// to push to peers in one message.
    pub max_change_ops: usize,
    /// How long to wait before retrying a flush that failed.
    pub flush_retry_delay: Duration,
    /// How long a sync conversation may wait for the peer's answer before
    /// it is restarted (a message was probably lost); doubled on each
    /// restart, a few times, then left to anti-entropy.
    pub sync_retry: Duration,
    /// Most sync conversations watched for a lost message at once.
    pub max_watched_syncs: usize,
    /// Most changes in one eager push message.
    pub max_push_batch: usize,
    /// Most bytes queued for one peer. Past it, eager pushes to that peer
    /// are dropped (anti-entropy will carry them) instead of growing memory.
    pub max_outbox_bytes_per_peer: usize,
    /// A document's incremental chunks are folded into a new snapshot once
    /// they hold more bytes than the snapshot and more than this.
    pub compaction_min_bytes: usize,
    /// ... or once there are more chunks than this.
    pub compaction_max_chunks: usize,
    /// Most bytes (estimated) of documents held in memory. Past it, the
    /// least recently used documents that are fully flushed are evicted;
    /// they load again from the store on their next use. Documents with
    /// unflushed state stay, so the bound can be overshot briefly.
    pub max_cached_document_bytes: usize,
    /// Most document loads handed out by
    /// [`poll_load`](crate::Replica::poll_load) and not yet landed.
    pub max_loads_in_flight: usize,
    /// Most inputs (peer messages, owed syncs) parked while their
    /// documents load, and most documents waiting to load. Past it, a
    /// peer's message about a document out of memory is dropped (and
    /// counted): sync retries and anti-entropy repair what it carried.
    pub max_parked_inputs: usize,
    /// Most (document, leaf) entries in one reconciliation message; a
    /// bucket holding more is sent as several id ranges. At most (and by
    /// default) the wire's limit, [`MAX_DIGEST_LEAVES`].
    pub max_digest_leaves: usize,
    /// Most documents new to this node that one peer may have it track at
    /// a time: documents the peer named (in a digest or a sync message)
    /// that hold no change here yet, which live in memory only and are
    /// never stored, plus documents its content created that wait for
    /// their first flush. Past it, the peer's messages about further new
    /// documents are not taken up (they come again through sync retries
    /// and anti-entropy). Bounds what one peer can make this node hold.
    pub max_new_documents_per_peer: usize,
    /// Most entries the change feed keeps: older ones are trimmed (a
    /// little per group commit), and a reader asking for them is told to
    /// start again from a snapshot ([`crate::feed::FeedError::Trimmed`]).
    pub feed_max_entries: u64,
    /// Most local writes whose copies on peers are counted at once (for
    /// `Replicated(k)` acknowledgements); past it the oldest is forgotten.
    pub max_tracked_replications: usize,
    /// Reconciles document sets with peers: every
    /// [`Config::anti_entropy_interval`] and when a peer connects. On in
    /// every real node; the simulator turns it off to prove that eager push
    /// and the missing-dependency sync alone deliver every change on a
    /// network that loses nothing (repair must not hide their bugs).
    pub anti_entropy: bool,
    /// Runs SWIM membership (foca), advertising this address to peers.
    /// `None` turns membership off.
    pub membership_addr: Option<String>,
    /// A deliberate bug, for tests that check the simulator catches it.
    /// Always [`FaultInjection::None`] outside such tests.
    pub fault_injection: FaultInjection,
}

/// Deliberate bugs a test can plant in a replica, to prove that the
/// simulator's checkers notice them (a harness that cannot fail proves
/// nothing). Production code never sets one.
///
/// The switches only exist in builds with the `planted-bugs` feature
/// (which the simulator turns on). Without it, [`Config::fault_injection`]
/// is ignored and every check of it is a constant `false` the compiler
/// removes: a node's release build carries none of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum FaultInjection {
    /// No bug: the engine as written.
    #[default]
    None,
    /// Acknowledge every local write [`Durable`](crate::AckLevel::Durable)
    /// as soon as it is applied, before the flush that makes it so.
    AckDurableBeforeFlush,
    /// A pushed change whose dependencies are missing is counted as
    /// received, then dropped: never applied, never asked for.
    DropPushWithMissingDependencies,
    /// A sync conversation that stalled (a lost message) is not resent:
    /// the first of the two stall safeguards is gone.
    NoSyncResend,
    /// Reconciliation syncs a differing document without resetting the
    /// in-flight part of its sync state: the second safeguard is gone.
    NoSyncResetOnReconcile,
    /// Compaction deletes the old chunks before the snapshot that replaces
    /// them is on disk.
    CompactDeletesBeforeSnapshot,
    /// An eager push to a peer that already has something queued is
    /// silently skipped.
    SkipPushToBusyPeer,
    /// `Replicated(k)` counts one copy more than the peers reported.
    ReplicatedOvercount,
    /// Opening the store does not spend the clean-close mark, so a crash
    /// after a clean restart reuses the actor (and its sequence numbers).
    ReuseActorAfterCleanClose,
    /// Eviction takes documents with unflushed changes too.
    EvictDirtyDocuments,
    /// A flush does not update the reconciliation digest's leaves.
    StaleDigestLeaf,
    /// Sending a message does not give back its bytes to the peer's queue
    /// budget.
    LeakQueuedBytes,
    /// A sync conversation that went quiet is never restarted by its timer.
    NoSyncRetry,
    /// Pushes batched together ([`crate::Replica::handle_messages`]) apply
    /// only the first push's changes; the rest are counted and dropped.
    BatchAppliesFirstPushOnly,
    /// Changes from peers get no feed entry.
    FeedSkipsPeerChanges,
    /// A peer's word that a document is deleted (its push, or its
    /// tombstone's digest leaf) is ignored: deletions do not spread.
    IgnorePeerDeletions,
}

impl FaultInjection {
    /// Every planted bug (not [`FaultInjection::None`]).
    pub const ALL: [FaultInjection; 15] = [
        FaultInjection::AckDurableBeforeFlush,
        FaultInjection::DropPushWithMissingDependencies,
        FaultInjection::NoSyncResend,
        FaultInjection::NoSyncResetOnReconcile,
        FaultInjection::CompactDeletesBeforeSnapshot,
        FaultInjection::SkipPushToBusyPeer,
        FaultInjection::ReplicatedOvercount,
        FaultInjection::ReuseActorAfterCleanClose,
        FaultInjection::EvictDirtyDocuments,
        FaultInjection::StaleDigestLeaf,
        FaultInjection::LeakQueuedBytes,
        FaultInjection::NoSyncRetry,
        FaultInjection::BatchAppliesFirstPushOnly,
        FaultInjection::FeedSkipsPeerChanges,
        FaultInjection::IgnorePeerDeletions,
    ];

    /// True when this build can plant bugs (the `planted-bugs` feature).
    pub const AVAILABLE: bool = cfg!(feature = "planted-bugs");
}

impl Config {
    /// Defaults for a node with id `node_id`.
    pub fn new(node_id: NodeId) -> Self {
        Config {
            node_id,
            seed: u64::from_le_bytes([
                node_id.0[0],
                node_id.0[1],
                node_id.0[2],
                node_id.0[3],
                node_id.0[4],
                node_id.0[5],
                node_id.0[6],
                node_id.0[7],
            ]),
            anti_entropy_interval: Duration::from_secs(1),
            anti_entropy_jitter: Duration::from_millis(250),
            group_commit_delay: Duration::ZERO,
            max_change_ops: 100_000,
            flush_retry_delay: Duration::from_millis(100),
            sync_state_flush_delay: Duration::from_millis(500),
            min_free_bytes: 64 * 1024 * 1024,
            sync_retry: Duration::from_millis(500),
            max_watched_syncs: 65_536,
            max_push_batch: 256,
            max_outbox_bytes_per_peer: 8 * 1024 * 1024,
            compaction_min_bytes: 16 * 1024,
            compaction_max_chunks: 512,
            max_cached_document_bytes: 256 * 1024 * 1024,
            max_loads_in_flight: 4,
            max_parked_inputs: 4096,
            max_digest_leaves: MAX_DIGEST_LEAVES,
            max_new_documents_per_peer: 4096,
            feed_max_entries: 1_000_000,
            max_tracked_replications: 65_536,
            anti_entropy: true,
            membership_addr: None,
            fault_injection: FaultInjection::None,
        }
    }

    /// The same settings with another seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// True when `bug` is planted. A constant `false` without the
    /// `planted-bugs` feature.
    #[inline(always)]
    pub(crate) fn planted(&self, bug: FaultInjection) -> bool {
        FaultInjection::AVAILABLE && self.fault_injection == bug
    }

    pub(crate) fn digest_leaves_per_message(&self) -> usize {
        self.max_digest_leaves.clamp(1, MAX_DIGEST_LEAVES)
    }

    pub(crate) fn push_batch(&self) -> usize {
        self.max_push_batch.clamp(1, MAX_CHANGES_PER_PUSH)
    }
}
