//! The replica: every document a node holds and every rule of replicating
//! them, with no I/O.

use std::collections::BTreeSet;

use automerge::ActorId;
use murmur_store::layout;
use murmur_store::Storage;
use murmur_wire::{Message, NodeId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::cache::Documents;
use crate::digest::{self, Digest};
use crate::flush::Flush;
use crate::incarnation;
use crate::load::Load;
use crate::membership::{Member, Membership};
use crate::outbox::Outbox;
use crate::replication::Replication;
use crate::retry::SyncRetries;
use crate::{Config, FaultInjection, Metrics, ReplicaError, Time};

mod acks;
mod clients;
mod creations;
mod deletion;
mod documents;
mod durability;
mod events;
mod inspect;
mod local;
mod peers;
mod reconcile;
mod sync;

pub use clients::{ClientState, ClientStep, ClientSync};
use durability::Durability;
use events::Events;
pub use events::{AckLevel, Event, Origin, Transmit, WriteId};
pub use local::LocalWrite;
use sync::PushBatch;
pub use sync::MAX_BATCHED_CHANGES;

/// The replication engine of one node. See the crate documentation for the
/// order in which a driver calls it.
pub struct Replica {
    config: Config,
    actor: ActorId,
    /// This opening's incarnation (see [`Replica::close`]).
    incarnation: u64,
    store: std::sync::Arc<dyn Storage>,
    rng: ChaCha8Rng,
    /// Documents in memory (loaded on first use, evicted when cold), with
    /// their use order and size estimates, those loading and those set
    /// aside.
    docs: Documents,
    /// The reconciliation digest's nodes seen so far.
    digest: Digest,
    /// Connected peers.
    peers: BTreeSet<NodeId>,
    /// Messages to send, with each peer's byte budget.
    outbox: Outbox,
    /// Events for the driver, and the documents observed.
    events: Events,
    next_write: u64,
    /// What waits for the next group commit, and the one in flight.
    durability: Durability,
    replication: Replication,
    /// Sync conversations waiting for the peer's answer.
    retries: SyncRetries,
    /// Documents new here that peers named or whose content created them
    /// (not flushed yet), per peer, within its cap.
    creations: creations::Creations,
    /// The change feed's numbering.
    feed: crate::feed::FeedLog,
    /// Deleted documents: every tombstone, stored or waiting for a flush.
    deletions: BTreeSet<murmur_wire::DocumentId>,
    /// Deletions waiting for the next flush, with their feed records.
    pending_deletions: Vec<(murmur_wire::DocumentId, crate::feed::Record)>,
    membership: Option<Membership>,
    anti_entropy_at: Time,
    /// The time of the latest input.
    now: Time,
    metrics: Metrics,
}

impl Replica {
    /// Opens the replica stored in `store` (an empty store gives an empty
    /// replica). Nothing is scanned and no document is loaded: documents
    /// load on first use. Documents whose data does not load are set aside
    /// then and reported by [`Replica::quarantined`].
    pub fn open(config: Config, store: Box<dyn Storage>, now: Time) -> Result<Self, ReplicaError> {
        layout::ensure_schema(&*store)?;
        let incarnation::Incarnation {
            actor: incarnation,
            opening,
        } = incarnation::next(
            &*store,
            config.planted(FaultInjection::ReuseActorAfterCleanClose),
        )?;
        digest::rebuild_if_missing(&*store)?;
        let feed = crate::feed::FeedLog::open(&*store)?;
        let deletions = layout::list_tombstones(&*store)?
            .into_iter()
            .map(murmur_wire::DocumentId::from_bytes)
            .collect();
        let actor = incarnation::actor(&config.node_id, incarnation);
        let mut replica = Replica {
            // Each opening draws afresh: a restarted node must not make the
            // document ids it made before a crash again.
            rng: ChaCha8Rng::seed_from_u64(
                config
                    .seed
                    .wrapping_add(opening.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            ),
            actor,
            incarnation,
            store: std::sync::Arc::from(store),
            docs: Documents::default(),
            digest: Digest::default(),
            peers: BTreeSet::new(),
            outbox: Outbox::default(),
            events: Events::default(),
            next_write: 0,
            durability: Durability::default(),
            replication: Replication::default(),
            retries: SyncRetries::default(),
            creations: creations::Creations::default(),
            feed,
            deletions,
            pending_deletions: Vec::new(),
            membership: None,
            anti_entropy_at: now,
            now,
            metrics: Metrics::default(),
            config,
        };
        replica.anti_entropy_at = now.add(replica.next_anti_entropy_interval());
        // The digest's root counts the documents in the store.
        let root = replica.digest.node(&*replica.store, 0, 0)?;
        replica.metrics.documents_held =
            u64::from(root.count).saturating_sub(replica.deletions.len() as u64);
        if let Some(addr) = replica.config.membership_addr.clone() {
            let me = Member {
                node: replica.config.node_id,
                addr,
                bump: u32::try_from(now.as_millis() / 1000).unwrap_or(u32::MAX),
            };
            let seed = replica.rng.gen();
            replica.membership = Some(Membership::new(me, seed));
        }
        tracing::info!(
            node = %replica.config.node_id.short(),
            incarnation,
            "replica opened"
        );
        Ok(replica)
    }

    /// A message arrived from `from`. An error means the message was
    /// rejected; what that may still have changed is said with each error
    /// (see [`ReplicaError::InvalidPeerData`]).
    pub fn handle_message(
        &mut self,
        now: Time,
        from: NodeId,
        message: Message,
    ) -> Result<(), ReplicaError> {
        if !self.peers.contains(&from) {
            return Err(ReplicaError::PeerNotConnected(from));
        }
        self.observe_clock(now);
        self.metrics.messages_received += 1;
        self.dispatch(now, from, message)
    }

    /// Several messages that arrived together (what a driver finds queued
    /// when it next reads its input), in arrival order: the same as
    /// [`Replica::handle_message`] on each, but cheaper under load. The
    /// pushed changes about one document from one peer are applied in one
    /// Automerge batch, which costs about what one push does; the further
    /// behind a node is, the more it catches up per turn. Pushes are
    /// gathered until any other message arrives (that one sees them
    /// applied), and at most [`MAX_BATCHED_CHANGES`] changes to a batch.
    /// Returns the rejected messages' senders and errors, as
    /// [`Replica::handle_message`] would.
    pub fn handle_messages(
        &mut self,
        now: Time,
        messages: impl IntoIterator<Item = (NodeId, Message)>,
    ) -> Vec<(NodeId, ReplicaError)> {
        let mut errors = Vec::new();
        // Gathered pushes, in the order their first message came.
        let mut batches: Vec<PushBatch> = Vec::new();
        for (from, message) in messages {
            if !self.peers.contains(&from) {
                errors.push((from, ReplicaError::PeerNotConnected(from)));
                continue;
            }
            self.observe_clock(now);
            self.metrics.messages_received += 1;
            match message {
                Message::Changes { doc, changes } => {
                    PushBatch::gather(&mut batches, from, doc, changes);
                }
                other => {
                    self.apply_batches(now, &mut batches, &mut errors);
                    if let Err(error) = self.dispatch(now, from, other) {
                        errors.push((from, error));
                    }
                }
            }
        }
        self.apply_batches(now, &mut batches, &mut errors);
        errors
    }

    fn dispatch(&mut self, now: Time, from: NodeId, message: Message) -> Result<(), ReplicaError> {
        match message {
            Message::Changes { doc, changes } => {
                match self.receive_changes(now, from, doc, vec![changes]).pop() {
                    Some(error) => Err(error),
                    None => Ok(()),
                }
            }
            Message::Sync { doc, message } => self.receive_sync(now, from, doc, &message),
            // A peer's heads confirm which of this node's changes it holds
            // durably (for `Replicated(k)` acknowledgements).
            Message::Heads { doc, heads } => {
                self.receive_heads(from, doc, &heads);
                Ok(())
            }
            Message::Deleted { doc } => {
                self.receive_deleted(now, from, doc);
                Ok(())
            }
            // A peer lost our report with a connection: report again.
            Message::HeadsWanted { doc } => {
                self.send_owed_heads(vec![(doc, from)]);
                Ok(())
            }
            Message::Membership { data } => self.receive_membership(now, from, &data),
            // Connection set-up is the driver's business.
            Message::Hello(_) => Ok(()),
            Message::DigestNodes { .. } | Message::DigestLeaves { .. } => {
                self.receive_digest(now, from, message)
            }
        }
    }

    /// Runs what is due at `now`: membership probes, quiet sync
    /// conversations, a round of anti-entropy with one peer, eviction. (A
    /// group commit that falls due is handed out by
    /// [`Replica::poll_flush`].)
    pub fn handle_timeout(&mut self, now: Time) {
        self.observe_clock(now);
        if let Some(membership) = self.membership.as_mut() {
            membership.handle_timeout(now);
            self.drain_membership(now);
        }
        if self.retries.next_due().is_some_and(|at| at <= now) {
            self.restart_quiet_syncs(now);
        }
        if self.anti_entropy_at <= now {
            self.anti_entropy_at = now.add(self.next_anti_entropy_interval());
            if self.config.anti_entropy {
                self.anti_entropy_round();
            }
        }
        self.evict_cold_documents(now);
    }

    /// Re-arms timers that a clock jumping backwards has pushed further
    /// away than their own interval, so a jump delays nothing for long.
    fn observe_clock(&mut self, now: Time) {
        self.now = now;
        if let Some(membership) = self.membership.as_mut() {
            membership.observe_clock(now);
        }
        let latest_anti_entropy =
            now.add(self.config.anti_entropy_interval + self.config.anti_entropy_jitter);
        if self.anti_entropy_at > latest_anti_entropy {
            tracing::warn!(%now, deadline = %self.anti_entropy_at, "clock went backwards; re-arming timers");
            self.anti_entropy_at = now;
        }
        let latest_flush = now.add(
            self.config
                .group_commit_delay
                .max(self.config.flush_retry_delay)
                .max(self.config.sync_state_flush_delay),
        );
        self.durability.observe_clock(now, latest_flush);
    }

    // ----- outputs ------------------------------------------------------

    /// The next message to send, if any. Call until `None` after every
    /// input.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let leak = self.config.planted(FaultInjection::LeakQueuedBytes);
        let transmit = self.outbox.pop(leak)?;
        self.metrics.messages_sent += 1;
        Some(transmit)
    }

    /// The next application event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop()
    }

    /// The next group commit for the driver to carry out, if one is due
    /// and none is in flight. Call it after every input, like
    /// [`Replica::poll_transmit`]; write the [`Flush`] off the engine's path
    /// (a blocking thread) and report with
    /// [`Replica::handle_flush_complete`]. Writes that arrive meanwhile
    /// gather for the next one.
    pub fn poll_flush(&mut self) -> Option<Flush> {
        if !self.durability.due(self.now) {
            return None;
        }
        self.start_flush(self.now)
    }

    /// The next document load for the driver to carry out, if one is
    /// requested and fewer than [`Config::max_loads_in_flight`] are out.
    /// Call it after every input, like [`Replica::poll_flush`]; run the
    /// [`Load`] off the engine's path (a blocking thread) and hand the
    /// result to [`Replica::handle_document_loaded`]. Meanwhile every other
    /// document goes on; inputs about this one wait for it.
    pub fn poll_load(&mut self) -> Option<Load> {
        let doc = self
            .docs
            .loads_mut()
            .next(self.config.max_loads_in_flight)?;
        Some(Load::new(doc, self.store.clone(), self.actor.clone()))
    }

    /// When [`Replica::handle_timeout`] must next run (or, for a due group
    /// commit, [`Replica::poll_flush`]).
    pub fn poll_timeout(&self) -> Time {
        let membership = self.membership.as_ref().and_then(Membership::poll_timeout);
        let flush = self.durability.next_due();
        [flush, membership, self.retries.next_due()]
            .into_iter()
            .flatten()
            .fold(self.anti_entropy_at, Time::min)
    }

    // ----- getters ------------------------------------------------------

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// The number after the newest durable feed entry: a reader may read
    /// every entry below it ([`crate::feed::FeedReader::read`]).
    pub fn feed_end(&self) -> u64 {
        self.feed.end()
    }

    /// A reader of this replica's change feed, for a thread that may block.
    pub fn feed_reader(&self) -> crate::feed::FeedReader {
        crate::feed::FeedReader::new(&self.store)
    }

    /// Counters since the replica opened.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn next_anti_entropy_interval(&mut self) -> std::time::Duration {
        let base = self.config.anti_entropy_interval;
        let jitter = self.config.anti_entropy_jitter.min(base / 2);
        let jitter_ms = u64::try_from(jitter.as_millis()).unwrap_or(0);
        let offset = self.rng.gen_range(0..=2 * jitter_ms);
        (base - jitter) + std::time::Duration::from_millis(offset)
    }
}
