//! A deterministic driver: N replicas wired together in memory, with
//! virtual time and a seeded network.
//!
//! [`Cluster`] runs real [`Replica`]s on [`MemStore`]s. Every message is
//! framed and decoded with `murmur-wire` on its way, so byte counts are what
//! a real link would carry. Delivery time is drawn from a seeded RNG between
//! [`Network::latency_min`] and [`Network::latency_max`] (so messages
//! reorder), plus now and then a long [`Network::delay`]; messages can be
//! lost or duplicated. Links can be cut (the connection closes) or blocked
//! in one direction (the connection stays up, messages one way vanish);
//! nodes can crash (losing what their store had not flushed) and restart
//! from their store, be paused (they hear nothing and their timers stand
//! still while messages to them queue up), and have their clock jump. Each
//! group commit takes a drawn time on a simulated [`Disk`], so writes
//! gather behind the flush in flight and a crash can strike in the middle
//! of one. Time
//! only moves when [`Cluster::step`] jumps it to the next delivery or timer,
//! so a run is fast and the same seed always gives the same run.
//!
//! The simulator (`murmur-sim`) is built on this driver; with
//! [`Cluster::record_trace`] on, every delivery, drop, timer and
//! acknowledgement is recorded for its event trace.
//!
//! ```
//! use automerge::{transaction::Transactable, ROOT};
//! use murmur_core::testkit::Cluster;
//!
//! let mut cluster = Cluster::new(3, 42);
//! let doc = cluster.create_document(0);
//! cluster.change(0, doc, |tx| tx.put(ROOT, "x", 1_i64));
//! cluster.run_until_converged(std::time::Duration::from_secs(10)).expect("converges");
//! assert!(cluster.replica(2).cached_document(doc).is_ok());
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use automerge::transaction::Transaction;
use automerge::AutomergeError;
use murmur_store::MemStore;
use murmur_wire::{decode_frame, encode_frame, DocumentId, Message, NodeId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{AckLevel, Config, Event, LocalWrite, Replica, ReplicaError, Time, WriteId};

/// How the simulated network behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    /// Shortest delivery time.
    pub latency_min: Duration,
    /// Longest delivery time (before any extra [`Network::delay`]).
    pub latency_max: Duration,
    /// Chance that a message is lost, in [0, 1].
    pub loss: f64,
    /// Chance that a message is delivered twice, in [0, 1].
    pub duplicate: f64,
    /// Chance that a message is held up by an extra delay of up to
    /// [`Network::delay_max`], in [0, 1]. Delayed messages overtake nothing
    /// but are overtaken by everything: reordering at its worst.
    pub delay: f64,
    /// Longest extra delay.
    pub delay_max: Duration,
    /// Bytes one direction of a connection may hold waiting to be sent;
    /// past it, a message is dropped (as murmur-net's send queue drops
    /// frames when a slow peer fills it). 0: no bound.
    pub link_queue_bytes: usize,
    /// How fast one direction of a connection sends, in bytes per
    /// millisecond: a message waits for those queued before it. 0: at once.
    pub link_bytes_per_ms: u64,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            latency_min: Duration::from_millis(1),
            latency_max: Duration::from_millis(10),
            loss: 0.0,
            duplicate: 0.0,
            delay: 0.0,
            delay_max: Duration::ZERO,
            link_queue_bytes: 0,
            link_bytes_per_ms: 0,
        }
    }
}

/// How the simulated disk behaves: how long a group commit
/// ([`crate::Flush`]) takes from being handed out to its completion, drawn
/// uniformly per flush. The batch is applied when the flush is handed out
/// and made durable when it completes; a crash in between keeps a random
/// prefix of what was applied, or none of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disk {
    /// Shortest flush.
    pub flush_min: Duration,
    /// Longest flush.
    pub flush_max: Duration,
    /// Shortest document load.
    pub load_min: Duration,
    /// Longest document load.
    pub load_max: Duration,
}

impl Default for Disk {
    fn default() -> Self {
        Disk {
            flush_min: Duration::from_micros(200),
            flush_max: Duration::from_millis(2),
            load_min: Duration::from_micros(50),
            load_max: Duration::from_millis(1),
        }
    }
}

/// Traffic counted on the simulated network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Messages sent.
    pub messages: u64,
    /// Frame bytes sent (length prefix included).
    pub bytes: u64,
    /// Messages lost by the network (loss, a blocked direction, or a
    /// connection that closed).
    pub dropped: u64,
    /// Messages a replica rejected.
    pub rejected: u64,
    /// Messages dropped because their connection's send queue was full
    /// (included in `dropped`).
    pub queue_full: u64,
}

/// Why the network did not deliver a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Random loss ([`Network::loss`]).
    Loss,
    /// The direction was blocked ([`Cluster::block`]).
    Blocked,
    /// The connection it was sent on closed before it arrived.
    Closed,
    /// The connection's send queue was full ([`Network::link_queue_bytes`]).
    QueueFull,
}

/// The changes of every push among `messages`, with sender and document
/// (those that do not decode are refused by the replica, not lost).
fn pushed_changes(messages: &[(NodeId, Message)]) -> Vec<(NodeId, DocumentId, automerge::Change)> {
    let mut pushed = Vec::new();
    for (sender, message) in messages {
        if let Message::Changes { doc, changes } = message {
            for raw in changes {
                if let Ok(change) = automerge::Change::from_bytes(raw.clone()) {
                    pushed.push((*sender, *doc, change));
                }
            }
        }
    }
    pushed
}

/// Something that happened in the simulated world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorldEvent {
    /// A message reached a replica.
    Delivered {
        /// Sender.
        from: usize,
        /// Receiver.
        to: usize,
        /// `hello`, `changes`, `sync` or `heads`.
        kind: &'static str,
        /// Frame bytes.
        bytes: usize,
        /// FNV-1a hash of the frame.
        frame_hash: u64,
    },
    /// A message was lost.
    Dropped {
        /// Sender.
        from: usize,
        /// Intended receiver.
        to: usize,
        /// Message kind.
        kind: &'static str,
        /// Frame bytes.
        bytes: usize,
        /// Why.
        reason: DropReason,
    },
    /// A replica rejected a message (with the error's words).
    Rejected {
        /// Sender.
        from: usize,
        /// Receiver.
        to: usize,
        /// The replica's error.
        error: String,
    },
    /// A node's timer fired.
    Timer {
        /// The node.
        node: usize,
    },
    /// A node acknowledged one of its local writes.
    Acknowledged {
        /// The node.
        node: usize,
        /// The write (numbered per incarnation of the node).
        write: WriteId,
        /// The document.
        doc: DocumentId,
        /// The level reached.
        level: AckLevel,
    },
    /// A replica handled a push without refusing it, yet does not hold a
    /// change of it whose dependencies it holds: it lost the change
    /// (Automerge applies such a change at once, or queues it until its
    /// dependencies arrive). Always an engine bug.
    PushLost {
        /// Sender.
        from: usize,
        /// Receiver.
        to: usize,
        /// The document.
        doc: DocumentId,
        /// The change lost.
        change: automerge::ChangeHash,
    },
    /// A connection between two nodes opened.
    Connected {
        /// Lower-numbered node.
        a: usize,
        /// Higher-numbered node.
        b: usize,
    },
    /// A connection between two nodes closed.
    Disconnected {
        /// Lower-numbered node.
        a: usize,
        /// Higher-numbered node.
        b: usize,
    },
    /// A document load landed on a node (`ok`), or the store failed to
    /// read it.
    Loaded {
        /// The node.
        node: usize,
        /// The document.
        doc: DocumentId,
        /// Whether the store read it.
        ok: bool,
    },
    /// A node's group commit completed (`ok`) or failed.
    Flushed {
        /// The node.
        node: usize,
        /// Whether it succeeded.
        ok: bool,
    },
    /// A node crashed because its store failed in the middle of an engine
    /// call ([`Cluster::fail_storage_after`]): what that call produced was
    /// lost with it, and the store kept the oldest `kept` unflushed
    /// batches.
    StorageCrashed {
        /// The node.
        node: usize,
        /// Unflushed batches that survived.
        kept: usize,
    },
}

/// One entry of the world's trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEntry {
    /// Virtual time.
    pub time: Time,
    /// What happened.
    pub event: WorldEvent,
}

struct Node {
    id: NodeId,
    store: MemStore,
    config: Config,
    replica: Option<Replica>,
    acks: BTreeMap<WriteId, AckLevel>,
    paused: bool,
    /// Added to virtual time to make this node's clock.
    clock_offset_ms: i64,
    /// When the driver wakes this node for its timer (virtual time). Armed
    /// after every input like a monotonic sleep: a later clock jump does
    /// not move it.
    wake_at: Option<Time>,
    /// Messages that arrived while the node was paused, oldest first.
    held: VecDeque<InFlight>,
    /// Counters of this node's earlier incarnations.
    retired_metrics: crate::Metrics,
    /// Outputs wait for [`Cluster::release`] (several inputs in one turn).
    holding: bool,
    /// The group commit the "driver" is carrying out.
    flushing: Option<Flushing>,
    /// Document loads the "driver" is carrying out, with when each lands.
    loads: Vec<(Time, crate::Load)>,
}

/// A flush on the simulated disk: applied, durable at `done_at`.
struct Flushing {
    done_at: Time,
    flush: crate::Flush,
    /// What applying the batch returned.
    applied: Result<(), murmur_store::StoreError>,
}

/// One direction of a connection: what it is still sending.
#[derive(Default)]
struct LinkQueue {
    /// When each queued message finishes sending, and its bytes.
    sending: VecDeque<(Time, usize)>,
    /// When the last queued message finishes sending.
    busy_until: Time,
}

struct InFlight {
    from: usize,
    to: usize,
    /// The connection it was sent on.
    generation: u64,
    kind: &'static str,
    frame: Vec<u8>,
}

/// The most messages one delivery hands a node together (see
/// [`Cluster::turn_window`]).
pub const MAX_TURN_MESSAGES: usize = 64;

/// N replicas on a simulated network. Nodes are numbered from 0.
pub struct Cluster {
    now: Time,
    rng: ChaCha8Rng,
    nodes: Vec<Node>,
    /// Messages on the wire, by delivery time then send order.
    in_flight: BTreeMap<(Time, u64), InFlight>,
    sent: u64,
    /// Links that are cut (unordered pairs, smaller index first).
    cut: BTreeSet<(usize, usize)>,
    /// Directions whose messages are dropped, as (from, to).
    blocked: BTreeSet<(usize, usize)>,
    /// Open connections (unordered pairs) and the generation of each.
    links: BTreeMap<(usize, usize), u64>,
    /// Send queues of open connections, by direction (from, to).
    queues: BTreeMap<(usize, usize), LinkQueue>,
    generations: u64,
    /// The node the last [`Cluster::step`] ran, if any.
    last_stepped: Option<usize>,
    /// The network's behaviour; change it at any time.
    pub network: Network,
    /// The disk's behaviour; change it at any time.
    pub disk: Disk,
    /// How a busy node takes its input: delivering a message to a node
    /// also hands it, in the same [`Replica::handle_messages`] call, the
    /// messages for it due within this window after the first (at most
    /// [`MAX_TURN_MESSAGES`]), as a node finds them queued when it next
    /// reads its input. Zero: only those due at the same instant (as the
    /// messages a paused node held arrive on resuming).
    pub turn_window: Duration,
    traffic: Traffic,
    trace: Option<Vec<TraceEntry>>,
    /// Crashes that struck while the node had a flush in flight.
    crashes_mid_flush: u64,
}

/// The start of virtual time: a plausible wall clock, so Automerge change
/// timestamps look real.
pub const EPOCH: Time = Time::from_millis(1_700_000_000_000);

/// The kind of a message, as a trace names it.
pub fn message_kind(message: &Message) -> &'static str {
    message.kind()
}

/// Recomputes the reconciliation digest of `store` from the documents it
/// holds and checks it against the stored one: `Err` says what differs.
/// O(documents): for tests and offline checks.
pub fn verify_digest(store: &dyn murmur_store::Storage) -> Result<(), String> {
    crate::digest::verify(store)
}

/// Loads document `doc` from `store` as the engine would (snapshot plus
/// chunks), to check what a store holds: pass
/// [`MemStore::durable_view`] to see what survives a crash.
pub fn load_stored_document(
    store: &dyn murmur_store::Storage,
    doc: DocumentId,
) -> Result<automerge::Automerge, String> {
    crate::document::Document::load(store, doc, automerge::ActorId::from(vec![0u8; 16]))
        .map(|document| document.doc)
        .map_err(|error| error.to_string())
}

/// 64-bit FNV-1a: a stable hash, the same on every platform and release.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn shifted(time: Time, offset_ms: i64) -> Time {
    Time::from_millis(time.as_millis().saturating_add_signed(offset_ms))
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Cluster {
    /// `nodes` replicas, all connected, on a clean network; `seed` decides
    /// every random choice.
    pub fn new(nodes: usize, seed: u64) -> Self {
        Self::with_config(nodes, seed, |config| config)
    }

    /// Like [`Cluster::new`], letting `tune` adjust each node's config.
    pub fn with_config(nodes: usize, seed: u64, tune: impl Fn(Config) -> Config) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let nodes = (0..nodes)
            .map(|index| {
                let mut id = [0u8; 32];
                rng.fill(&mut id[..]);
                id[0] = index as u8;
                let id = NodeId(id);
                let config = tune(Config::new(id).with_seed(rng.gen()));
                let store = MemStore::new();
                let replica = Replica::open(config.clone(), Box::new(store.clone()), EPOCH);
                Node {
                    id,
                    store,
                    config,
                    replica: Some(
                        replica.unwrap_or_else(|e| panic!("a fresh MemStore opens: {e}")),
                    ),
                    acks: BTreeMap::new(),
                    paused: false,
                    clock_offset_ms: 0,
                    wake_at: None,
                    held: VecDeque::new(),
                    retired_metrics: crate::Metrics::default(),
                    holding: false,
                    flushing: None,
                    loads: Vec::new(),
                }
            })
            .collect();
        let mut cluster = Cluster {
            now: EPOCH,
            rng,
            nodes,
            in_flight: BTreeMap::new(),
            sent: 0,
            cut: BTreeSet::new(),
            blocked: BTreeSet::new(),
            links: BTreeMap::new(),
            queues: BTreeMap::new(),
            generations: 0,
            last_stepped: None,
            network: Network::default(),
            disk: Disk::default(),
            turn_window: Duration::ZERO,
            traffic: Traffic::default(),
            trace: None,
            crashes_mid_flush: 0,
        };
        for index in 0..cluster.nodes.len() {
            cluster.drain(index);
        }
        cluster.refresh_connections();
        cluster
    }

    /// Virtual time now.
    pub fn now(&self) -> Time {
        self.now
    }

    /// What node `index`'s clock reads now: virtual time plus its offset.
    pub fn local_now(&self, index: usize) -> Time {
        shifted(self.now, self.nodes[index].clock_offset_ms)
    }

    /// How many nodes there are (crashed ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True for a cluster of no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `index`'s id.
    pub fn node_id(&self, index: usize) -> NodeId {
        self.nodes[index].id
    }

    /// Node `index`'s replica. Panics if the node is crashed.
    pub fn replica(&self, index: usize) -> &Replica {
        self.try_replica(index)
            .unwrap_or_else(|| panic!("node {index} is crashed"))
    }

    /// Node `index`'s replica, or `None` if the node is crashed.
    pub fn try_replica(&self, index: usize) -> Option<&Replica> {
        self.nodes[index].replica.as_ref()
    }

    fn replica_mut(&mut self, index: usize) -> &mut Replica {
        self.nodes[index]
            .replica
            .as_mut()
            .unwrap_or_else(|| panic!("node {index} is crashed"))
    }

    /// Node `index`'s store (it outlives crashes).
    pub fn store(&self, index: usize) -> &MemStore {
        &self.nodes[index].store
    }

    /// Traffic so far.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// True if node `index` is running (paused counts as running).
    pub fn is_up(&self, index: usize) -> bool {
        self.nodes[index].replica.is_some()
    }

    /// True if node `index` is paused.
    pub fn is_paused(&self, index: usize) -> bool {
        self.nodes[index].paused
    }

    /// The highest acknowledgement node `index`'s current incarnation has
    /// given `write`.
    pub fn ack(&self, index: usize, write: WriteId) -> Option<AckLevel> {
        self.nodes[index].acks.get(&write).copied()
    }

    /// Starts (or stops) recording a [`TraceEntry`] for everything that
    /// happens; [`Cluster::take_trace`] hands them over.
    pub fn record_trace(&mut self, on: bool) {
        self.trace = on.then(Vec::new);
    }

    /// The trace entries recorded since the last call.
    pub fn take_trace(&mut self) -> Vec<TraceEntry> {
        self.trace.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn record(&mut self, event: WorldEvent) {
        if let Some(trace) = self.trace.as_mut() {
            trace.push(TraceEntry {
                time: self.now,
                event,
            });
        }
    }

    /// Creates a document on node `index`.
    pub fn create_document(&mut self, index: usize) -> DocumentId {
        let now = self.local_now(index);
        let doc = self.replica_mut(index).create_document(now);
        self.drain(index);
        doc
    }

    /// Applies a local change on node `index`; panics if it fails.
    pub fn change<O>(
        &mut self,
        index: usize,
        doc: DocumentId,
        change: impl FnOnce(&mut Transaction<'_>) -> Result<O, AutomergeError>,
    ) -> WriteId {
        self.try_change(index, doc, change)
            .unwrap_or_else(|e| panic!("change on node {index} failed: {e}"))
            .write
    }

    /// Applies a local change on node `index` (which must be running),
    /// stamped with its clock, and returns what the replica returned.
    pub fn try_change<O>(
        &mut self,
        index: usize,
        doc: DocumentId,
        change: impl FnOnce(&mut Transaction<'_>) -> Result<O, AutomergeError>,
    ) -> Result<LocalWrite<O>, ReplicaError> {
        self.load_now(index, doc);
        let now = self.local_now(index);
        let result = self
            .replica_mut(index)
            .handle_local_change(now, doc, change);
        self.drain(index);
        result
    }

    /// Deletes `doc` on node `index` (see [`Replica::delete_document`]).
    pub fn delete_document(
        &mut self,
        index: usize,
        doc: DocumentId,
    ) -> Result<WriteId, ReplicaError> {
        let now = self.local_now(index);
        let result = self.replica_mut(index).delete_document(now, doc);
        self.drain(index);
        result
    }

    /// Cuts the links between every node of `side_a` and every node of
    /// `side_b`.
    pub fn partition(&mut self, side_a: &[usize], side_b: &[usize]) {
        for &a in side_a {
            for &b in side_b {
                if a != b {
                    self.cut.insert(pair(a, b));
                }
            }
        }
        self.refresh_connections();
    }

    /// Cuts node `index` off from every other node.
    pub fn isolate(&mut self, index: usize) {
        let others: Vec<usize> = (0..self.nodes.len()).filter(|&i| i != index).collect();
        self.partition(&[index], &others);
    }

    /// Drops every message from `from` to `to` from now on (those in flight
    /// included), while the connection stays up and the other direction
    /// works: a one-way partition.
    pub fn block(&mut self, from: usize, to: usize) {
        self.blocked.insert((from, to));
    }

    /// Replaces every cut link and blocked direction at once: afterwards
    /// exactly the unordered pairs in `cut` are cut and the (from, to)
    /// directions in `blocked` are blocked.
    pub fn set_links(
        &mut self,
        cut: impl IntoIterator<Item = (usize, usize)>,
        blocked: impl IntoIterator<Item = (usize, usize)>,
    ) {
        self.cut = cut.into_iter().map(|(a, b)| pair(a, b)).collect();
        self.blocked = blocked.into_iter().collect();
        self.refresh_connections();
    }

    /// Restores every link and unblocks every direction.
    pub fn heal(&mut self) {
        self.set_links([], []);
    }

    /// Crashes node `index`: its replica is dropped, its store loses what
    /// was not flushed, its connections close.
    pub fn crash(&mut self, index: usize) {
        self.crash_keeping(index, 0);
    }

    /// Crashes node `index` like [`Cluster::crash`], except that the oldest
    /// `keep` unflushed batches survive (a background flusher wrote them).
    pub fn crash_keeping(&mut self, index: usize, keep: usize) {
        let node = &mut self.nodes[index];
        if let Some(replica) = node.replica.take() {
            node.retired_metrics.accumulate(replica.metrics());
        }
        node.holding = false;
        // A flush in flight dies with the process: what it applied is
        // unflushed, and the store keeps a prefix of that or nothing.
        if node.flushing.take().is_some() {
            self.crashes_mid_flush += 1;
        }
        // Loads in flight die with it too (they only read).
        node.loads.clear();
        node.store.crash_keeping(keep);
        // Acknowledgements belong to an incarnation: write ids start again.
        node.acks.clear();
        node.wake_at = None;
        node.paused = false;
        node.held.clear();
        self.refresh_connections();
    }

    /// Restarts a crashed node from its store.
    /// A storage failure still planted on it is removed first: a crash
    /// while opening is not one the simulator models.
    pub fn restart(&mut self, index: usize) {
        let now = self.local_now(index);
        let node = &mut self.nodes[index];
        assert!(node.replica.is_none(), "node {index} is running");
        node.store.disarm();
        let replica = Replica::open(node.config.clone(), Box::new(node.store.clone()), now)
            .unwrap_or_else(|e| panic!("node {index} does not reopen: {e}"));
        node.replica = Some(replica);
        self.drain(index);
        self.refresh_connections();
    }

    /// Restarts node `index` gracefully: closes its replica
    /// ([`Replica::close`]: a final flush and the clean-close mark) and
    /// opens it again from its store. Returns the close's error, if it
    /// failed (the node is then crashed instead, losing nothing flushed).
    pub fn restart_gracefully(&mut self, index: usize) -> Result<(), String> {
        let now = self.local_now(index);
        let node = &mut self.nodes[index];
        if node.replica.is_none() {
            return Err(format!("node {index} is not running"));
        }
        // A node shutting down flushes and reports what became durable
        // before it closes.
        node.holding = false;
        if self.nodes[index].flushing.is_some() {
            self.complete_flush(index);
        }
        if let Some(replica) = self.nodes[index].replica.as_mut() {
            // An error is retried by `close`, which then reports it.
            let _ = replica.flush_now(now);
        }
        self.drain(index);
        let node = &mut self.nodes[index];
        let Some(replica) = node.replica.take() else {
            return Err(format!("node {index} crashed in its final flush"));
        };
        node.retired_metrics.accumulate(replica.metrics());
        let closed = replica.close(now).map_err(|e| e.to_string());
        if closed.is_err() {
            node.store.crash();
        }
        node.acks.clear();
        node.wake_at = None;
        node.paused = false;
        node.held.clear();
        node.holding = false;
        node.loads.clear();
        // The connections close with the old process...
        self.refresh_connections();
        // ... and open again with the new one.
        self.restart(index);
        closed
    }

    /// Plants a storage failure in node `index`'s store: its next `ops`
    /// applies and flushes succeed, the one after fails, and the node
    /// crashes right after the engine call that hit it (that call's
    /// outputs never leave; the store keeps a random prefix of its
    /// unflushed batches). A [`WorldEvent::StorageCrashed`] records it.
    pub fn fail_storage_after(&mut self, index: usize, ops: u64) {
        self.nodes[index].store.fail_after(ops);
    }

    /// Removes a storage failure planted on node `index` that has not gone
    /// off.
    pub fn disarm_storage(&mut self, index: usize) {
        self.nodes[index].store.disarm();
    }

    /// True while node `index` has a planted storage failure waiting.
    pub fn storage_armed(&self, index: usize) -> bool {
        self.nodes[index].store.armed()
    }

    /// Holds node `index`'s outputs: the inputs given to it until
    /// [`Cluster::release`] form one driver turn (their messages go out
    /// together, after the last).
    pub fn hold(&mut self, index: usize) {
        self.nodes[index].holding = true;
    }

    /// Ends a turn begun with [`Cluster::hold`]: drains node `index`.
    pub fn release(&mut self, index: usize) {
        self.nodes[index].holding = false;
        self.drain(index);
    }

    /// The engine's counters summed over every node and every incarnation
    /// of it (crashed and restarted ones included).
    pub fn total_metrics(&self) -> crate::Metrics {
        let mut total = crate::Metrics::default();
        for node in &self.nodes {
            total.accumulate(&node.retired_metrics);
            if let Some(replica) = &node.replica {
                total.accumulate(replica.metrics());
            }
        }
        total
    }

    /// True while a running node has a group commit due or in flight.
    pub fn flushes_pending(&self) -> bool {
        self.nodes.iter().any(|node| {
            node.flushing.is_some() || node.replica.as_ref().is_some_and(Replica::flush_pending)
        })
    }

    /// True while a running node waits for a document load.
    pub fn loads_pending(&self) -> bool {
        self.nodes.iter().any(|node| {
            !node.loads.is_empty() || node.replica.as_ref().is_some_and(Replica::loads_pending)
        })
    }

    /// How many crashes struck a node while it had a flush in flight.
    pub fn crashes_mid_flush(&self) -> u64 {
        self.crashes_mid_flush
    }

    /// The node the last [`Cluster::step`] delivered to or woke, if any.
    pub fn last_stepped(&self) -> Option<usize> {
        self.last_stepped
    }

    /// Pauses node `index`: it receives nothing (messages to it wait) and
    /// its timers do not fire until [`Cluster::resume`]. Its connections
    /// stay open, but no new one opens.
    pub fn pause(&mut self, index: usize) {
        if self.nodes[index].replica.is_some() {
            self.nodes[index].paused = true;
        }
    }

    /// Resumes a paused node: the messages that waited arrive now, in the
    /// order they came, and overdue timers fire.
    pub fn resume(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        if !node.paused {
            return;
        }
        node.paused = false;
        let held = std::mem::take(&mut node.held);
        for message in held {
            self.sent += 1;
            self.in_flight.insert((self.now, self.sent), message);
        }
        self.refresh_connections();
    }

    /// Sets node `index`'s clock to virtual time plus `offset_ms` (which
    /// may be negative): a clock jump. Timers already armed keep their
    /// virtual deadline, as a monotonic sleep would.
    pub fn set_clock_offset(&mut self, index: usize, offset_ms: i64) {
        self.nodes[index].clock_offset_ms = offset_ms;
    }

    /// Brings every connection in line with which nodes are up and which
    /// links are cut, telling each replica of peers that came and went.
    fn refresh_connections(&mut self) {
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                self.refresh_link(a, b);
            }
        }
        for index in 0..self.nodes.len() {
            self.drain(index);
        }
    }

    fn refresh_link(&mut self, a: usize, b: usize) {
        let is = self.links.contains_key(&(a, b));
        let (node_a, node_b) = (&self.nodes[a], &self.nodes[b]);
        let both_up = node_a.replica.is_some() && node_b.replica.is_some();
        // A paused node keeps its connections but accepts no new one.
        let can_open = is || (!node_a.paused && !node_b.paused);
        let should = both_up && can_open && !self.cut.contains(&(a, b));
        if should && !is {
            self.generations += 1;
            self.links.insert((a, b), self.generations);
            self.record(WorldEvent::Connected { a, b });
            let (id_a, id_b) = (self.nodes[a].id, self.nodes[b].id);
            let (now_a, now_b) = (self.local_now(a), self.local_now(b));
            self.replica_mut(a).handle_peer_up(now_a, id_b);
            self.replica_mut(b).handle_peer_up(now_b, id_a);
        } else if !should && is {
            self.links.remove(&(a, b));
            self.queues.remove(&(a, b));
            self.queues.remove(&(b, a));
            self.record(WorldEvent::Disconnected { a, b });
            for (me, other) in [(a, b), (b, a)] {
                let (now, peer) = (self.local_now(me), self.nodes[other].id);
                if let Some(replica) = self.nodes[me].replica.as_mut() {
                    replica.handle_peer_down(now, peer);
                }
            }
        }
    }

    /// Takes node `index`'s outputs: messages onto the wire, events into
    /// the acknowledgement log; then arms its timer.
    fn drain(&mut self, index: usize) {
        if self.nodes[index].holding {
            return;
        }
        if self.nodes[index].store.tripped() {
            self.storage_crash(index);
            return;
        }
        let local_now = self.local_now(index);
        let node = &mut self.nodes[index];
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        let mut transmits = Vec::new();
        while let Some(transmit) = replica.poll_transmit() {
            transmits.push(transmit);
        }
        let mut acks = Vec::new();
        while let Some(event) = replica.poll_event() {
            if let Event::Acknowledged { write, doc, level } = event {
                let entry = node.acks.entry(write).or_insert(level);
                *entry = (*entry).max(level);
                acks.push((write, doc, level));
            }
        }
        let flush = if node.flushing.is_none() {
            replica.poll_flush()
        } else {
            None
        };
        let mut loads = Vec::new();
        while let Some(load) = replica.poll_load() {
            loads.push(load);
        }
        let delay = replica.poll_timeout().since(local_now);
        node.wake_at = Some(self.now.add(delay));
        for (write, doc, level) in acks {
            self.record(WorldEvent::Acknowledged {
                node: index,
                write,
                doc,
                level,
            });
        }
        for transmit in transmits {
            let Some(to) = self.nodes.iter().position(|n| n.id == transmit.to) else {
                continue;
            };
            let frame = encode_frame(&transmit.message)
                .unwrap_or_else(|e| panic!("replica produced an unencodable message: {e}"));
            self.send(index, to, message_kind(&transmit.message), frame);
        }
        for load in loads {
            let done_at = self
                .now
                .add(self.draw(self.disk.load_min, self.disk.load_max));
            self.nodes[index].loads.push((done_at, load));
        }
        if let Some(flush) = flush {
            self.start_flush(index, flush);
        }
    }

    /// A delay drawn between `min` and `max` (at least `min`).
    fn draw(&mut self, min: Duration, max: Duration) -> Duration {
        let (min, max) = (min.as_micros() as u64, max.max(min).as_micros() as u64);
        Duration::from_micros(self.rng.gen_range(min..=max))
    }

    /// Node `index`'s load number `at` (in its list) lands: the replica
    /// takes the document and runs what waited for it.
    fn complete_load(&mut self, index: usize, at: usize) {
        let (_, load) = self.nodes[index].loads.remove(at);
        let doc = load.doc();
        let loaded = load.run();
        let now = self.local_now(index);
        let Some(replica) = self.nodes[index].replica.as_mut() else {
            return;
        };
        let ok = replica.handle_document_loaded(now, loaded).is_ok();
        self.record(WorldEvent::Loaded {
            node: index,
            doc,
            ok,
        });
        self.drain(index);
    }

    /// Makes `doc` (if node `index` holds it) in memory there before a
    /// local change, as a driver does: it asks for the load, and the
    /// simulated disk completes every load out at once, that one among
    /// them.
    fn load_now(&mut self, index: usize, doc: DocumentId) {
        loop {
            let Some(replica) = self.nodes[index].replica.as_mut() else {
                return;
            };
            if !matches!(replica.request_load(doc), Ok(crate::Residency::Loading)) {
                return;
            }
            self.drain(index);
            if self.nodes[index].loads.is_empty() {
                return;
            }
            while !self.nodes[index].loads.is_empty() {
                self.complete_load(index, 0);
            }
        }
    }

    /// Node `index` handed out a group commit: the disk applies it now and
    /// makes it durable after a drawn delay (or the node crashes first).
    fn start_flush(&mut self, index: usize, mut flush: crate::Flush) {
        let applied = flush.apply();
        if self.nodes[index].store.tripped() {
            self.storage_crash(index);
            return;
        }
        let (min, max) = (
            self.disk.flush_min,
            self.disk.flush_max.max(self.disk.flush_min),
        );
        let delay = self.draw(min, max);
        self.nodes[index].flushing = Some(Flushing {
            done_at: self.now.add(delay),
            flush,
            applied,
        });
    }

    /// Node `index`'s flush reaches the disk: it completes (or fails) and
    /// the replica hears of it.
    fn complete_flush(&mut self, index: usize) {
        let Some(Flushing { flush, applied, .. }) = self.nodes[index].flushing.take() else {
            return;
        };
        let result = applied.and_then(|()| flush.finish());
        if self.nodes[index].store.tripped() {
            self.storage_crash(index);
            return;
        }
        self.record(WorldEvent::Flushed {
            node: index,
            ok: result.is_ok(),
        });
        let now = self.local_now(index);
        if let Some(replica) = self.nodes[index].replica.as_mut() {
            replica.handle_flush_complete(now, result);
        }
        self.drain(index);
    }

    /// The node's store failed inside the engine call just made: the
    /// process died there. Nothing that call produced leaves; the store
    /// keeps a random prefix of its unflushed batches.
    fn storage_crash(&mut self, index: usize) {
        let unflushed = self.nodes[index].store.unflushed_batches();
        let kept = self.rng.gen_range(0..=unflushed);
        self.record(WorldEvent::StorageCrashed { node: index, kept });
        self.crash_keeping(index, kept);
    }

    /// Queues `bytes` on the connection `from` → `to`: `Some(when it is
    /// sent)`, or `None` if the queue is full.
    fn enqueue_on_link(&mut self, from: usize, to: usize, bytes: usize) -> Option<Time> {
        let (capacity, rate) = (
            self.network.link_queue_bytes,
            self.network.link_bytes_per_ms,
        );
        if rate == 0 {
            return Some(self.now);
        }
        let now = self.now;
        let queue = self.queues.entry((from, to)).or_default();
        while queue.sending.front().is_some_and(|(done, _)| *done <= now) {
            queue.sending.pop_front();
        }
        let queued: usize = queue.sending.iter().map(|(_, bytes)| bytes).sum();
        // One message always fits an empty queue, whatever its size.
        if capacity > 0 && queued > 0 && queued + bytes > capacity {
            return None;
        }
        let micros = (bytes as u64).saturating_mul(1000) / rate;
        let done = queue.busy_until.max(now).add(Duration::from_micros(micros));
        queue.busy_until = done;
        queue.sending.push_back((done, bytes));
        Some(done)
    }

    fn send(&mut self, from: usize, to: usize, kind: &'static str, frame: Vec<u8>) {
        self.traffic.messages += 1;
        self.traffic.bytes += frame.len() as u64;
        let Some(&generation) = self.links.get(&pair(from, to)) else {
            self.drop_message(from, to, kind, frame.len(), DropReason::Closed);
            return;
        };
        let Some(sent_at) = self.enqueue_on_link(from, to, frame.len()) else {
            self.traffic.queue_full += 1;
            self.drop_message(from, to, kind, frame.len(), DropReason::QueueFull);
            return;
        };
        if self.rng.gen_bool(self.network.loss.clamp(0.0, 1.0)) {
            self.drop_message(from, to, kind, frame.len(), DropReason::Loss);
            return;
        }
        let copies = if self.rng.gen_bool(self.network.duplicate.clamp(0.0, 1.0)) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let latency = self.latency();
            self.sent += 1;
            self.in_flight.insert(
                (sent_at.add(latency), self.sent),
                InFlight {
                    from,
                    to,
                    generation,
                    kind,
                    frame: frame.clone(),
                },
            );
        }
    }

    fn drop_message(
        &mut self,
        from: usize,
        to: usize,
        kind: &'static str,
        bytes: usize,
        reason: DropReason,
    ) {
        self.traffic.dropped += 1;
        self.record(WorldEvent::Dropped {
            from,
            to,
            kind,
            bytes,
            reason,
        });
    }

    fn latency(&mut self) -> Duration {
        let min = self.network.latency_min.as_micros() as u64;
        let max = (self.network.latency_max.as_micros() as u64).max(min);
        let mut micros = self.rng.gen_range(min..=max);
        if self.network.delay > 0.0 && self.rng.gen_bool(self.network.delay.clamp(0.0, 1.0)) {
            micros += self
                .rng
                .gen_range(0..=self.network.delay_max.as_micros() as u64);
        }
        Duration::from_micros(micros)
    }

    /// The next timer or flush completion due: (virtual time, node), among
    /// running, unpaused nodes; the lowest-numbered node first on a tie.
    fn next_timer(&self) -> Option<(Time, usize)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, node)| node.replica.is_some() && !node.paused)
            .filter_map(|(index, node)| {
                let flushed = node.flushing.as_ref().map(|flushing| flushing.done_at);
                let loaded = node.loads.iter().map(|(at, _)| *at).min();
                [node.wake_at, flushed, loaded]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|at| (at, index))
            })
            .min()
    }

    /// The node whose timer the next [`Cluster::step`] fires, if the next
    /// step is a timer (and not a delivery).
    pub fn next_timer_node(&self) -> Option<usize> {
        let next_delivery = self.in_flight.keys().next().map(|(time, _)| *time);
        match (next_delivery, self.next_timer()) {
            (Some(delivery), Some((timer, _))) if delivery <= timer => None,
            (_, timer) => timer.map(|(_, node)| node),
        }
    }

    /// Moves time to the next delivery or timer and runs it. Returns the
    /// new time.
    pub fn step(&mut self) -> Time {
        let next_delivery = self.in_flight.keys().next().map(|(time, _)| *time);
        match (next_delivery, self.next_timer()) {
            (Some(delivery), Some((timer, _))) if delivery <= timer => self.deliver_next(),
            (Some(_), None) => self.deliver_next(),
            (_, Some((timer, index))) => self.fire_timer(timer, index),
            (None, None) => {}
        }
        self.now
    }

    fn fire_timer(&mut self, timer: Time, index: usize) {
        self.now = self.now.max(timer);
        self.last_stepped = Some(index);
        let node = &self.nodes[index];
        if node.flushing.as_ref().is_some_and(|f| f.done_at <= timer) {
            self.complete_flush(index);
            return;
        }
        // The load landing soonest (the first listed on a tie).
        let due = node
            .loads
            .iter()
            .enumerate()
            .filter(|(_, (at, _))| *at <= timer)
            .min_by_key(|(_, (at, _))| *at)
            .map(|(at, _)| at);
        if let Some(at) = due {
            self.complete_load(index, at);
            return;
        }
        self.record(WorldEvent::Timer { node: index });
        let now = self.local_now(index);
        self.replica_mut(index).handle_timeout(now);
        self.drain(index);
    }

    fn deliver_next(&mut self) {
        let Some(((time, _), message)) = self.in_flight.pop_first() else {
            return;
        };
        self.now = self.now.max(time);
        let (from, to, kind) = (message.from, message.to, message.kind);
        self.last_stepped = Some(to);
        // A message on a connection that has since closed is lost with it.
        if self.links.get(&pair(from, to)) != Some(&message.generation) {
            self.drop_message(from, to, kind, message.frame.len(), DropReason::Closed);
            return;
        }
        if self.blocked.contains(&(from, to)) {
            self.drop_message(from, to, kind, message.frame.len(), DropReason::Blocked);
            return;
        }
        if self.nodes[to].paused {
            self.nodes[to].held.push_back(message);
            return;
        }
        self.deliver(message);
    }

    /// Delivers `first` (due now) with the messages for the same node due
    /// within [`Cluster::turn_window`], in their order, as one turn. A
    /// message whose connection is gone or blocked now is left to meet
    /// its fate at its own time.
    fn deliver(&mut self, first: InFlight) {
        let to = first.to;
        let until = self.now.add(self.turn_window);
        let gathered: Vec<(Time, u64)> = self
            .in_flight
            .range(..=(until, u64::MAX))
            .filter(|(_, m)| {
                m.to == to
                    && self.links.get(&pair(m.from, m.to)) == Some(&m.generation)
                    && !self.blocked.contains(&(m.from, m.to))
            })
            .map(|(key, _)| *key)
            .take(MAX_TURN_MESSAGES - 1)
            .collect();
        let mut turn = vec![first];
        for key in gathered {
            if let Some(message) = self.in_flight.remove(&key) {
                turn.push(message);
            }
        }
        let mut messages = Vec::with_capacity(turn.len());
        for InFlight {
            from, kind, frame, ..
        } in turn
        {
            let decoded = decode_frame(&frame)
                .unwrap_or_else(|e| panic!("a frame we encoded does not decode: {e}"));
            self.record(WorldEvent::Delivered {
                from,
                to,
                kind,
                bytes: frame.len(),
                frame_hash: fnv1a(&frame),
            });
            messages.push((self.nodes[from].id, decoded));
        }
        let now = self.local_now(to);
        let index_of = |id: NodeId, nodes: &[Node]| nodes.iter().position(|n| n.id == id);
        let pushes = pushed_changes(&messages);
        let rejected = self.replica_mut(to).handle_messages(now, messages);
        let refused: BTreeSet<NodeId> = rejected.iter().map(|(sender, _)| *sender).collect();
        for (sender, doc, change) in self.lost_pushes(to, pushes, &refused) {
            let from = index_of(sender, &self.nodes).unwrap_or(to);
            self.record(WorldEvent::PushLost {
                from,
                to,
                doc,
                change,
            });
        }
        for (sender, error) in rejected {
            tracing::debug!(%error, "replica rejected a message");
            self.traffic.rejected += 1;
            let from = index_of(sender, &self.nodes).unwrap_or(to);
            self.record(WorldEvent::Rejected {
                from,
                to,
                error: error.to_string(),
            });
        }
        self.drain(to);
    }

    /// The pushed changes node `to` does not hold although it holds their
    /// dependencies and refused nothing from their sender (see
    /// [`WorldEvent::PushLost`]). A document not in memory now (its load
    /// parked the push) is not checked.
    fn lost_pushes(
        &self,
        to: usize,
        pushes: Vec<(NodeId, DocumentId, automerge::Change)>,
        refused: &BTreeSet<NodeId>,
    ) -> Vec<(NodeId, DocumentId, automerge::ChangeHash)> {
        let Some(replica) = self.try_replica(to) else {
            return Vec::new();
        };
        let held = |doc: &automerge::Automerge, hash: &automerge::ChangeHash| {
            doc.get_change_meta_by_hash(hash).is_some()
        };
        pushes
            .into_iter()
            .filter(|(sender, _, _)| !refused.contains(sender))
            .filter_map(|(sender, doc, change)| {
                let document = replica.cached_document(doc).ok()?;
                let lost = change.deps().iter().all(|dep| held(document, dep))
                    && !held(document, &change.hash());
                lost.then(|| (sender, doc, change.hash()))
            })
            .collect()
    }

    /// Runs until virtual time reaches `now + duration`.
    pub fn run_for(&mut self, duration: Duration) {
        self.run_until(self.now.add(duration));
    }

    /// Runs every delivery and timer due up to `until`, then sets the time
    /// to `until` (if it is later than now).
    pub fn run_until(&mut self, until: Time) {
        while self.next_event_time().is_some_and(|t| t <= until) {
            self.step();
        }
        self.now = self.now.max(until);
    }

    /// When the next delivery or timer is due, if anything is.
    pub fn next_event_time(&self) -> Option<Time> {
        let delivery = self.in_flight.keys().next().map(|(time, _)| *time);
        let timer = self.next_timer().map(|(time, _)| time);
        match (delivery, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Messages on the wire or waiting for a paused node.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len() + self.nodes.iter().map(|node| node.held.len()).sum::<usize>()
    }

    fn nothing_in_flight(&self) -> bool {
        self.in_flight() == 0
    }

    /// Runs until every running node holds the same documents with the same
    /// heads and nothing is in flight, or `limit` of virtual time passes.
    /// Returns how long it took, or an error describing the divergence.
    pub fn run_until_converged(&mut self, limit: Duration) -> Result<Duration, String> {
        let start = self.now;
        let until = start.add(limit);
        loop {
            if self.nothing_in_flight() && self.heads_divergence().is_none() {
                // Same heads must mean same content; anything else is a bug
                // in the engine (or in Automerge), not slow convergence.
                return match self.divergence() {
                    None => Ok(self.now.since(start)),
                    Some(problem) => Err(problem),
                };
            }
            match self.next_event_time() {
                Some(t) if t <= until => {
                    self.step();
                }
                _ => {
                    return Err(self
                        .divergence()
                        .unwrap_or_else(|| "messages still in flight at the limit".into()))
                }
            }
        }
    }

    /// `None` if every running node holds the same documents with the same
    /// heads and the same content; otherwise what differs.
    pub fn divergence(&self) -> Option<String> {
        self.compare(true)
    }

    /// Like [`Cluster::divergence`], comparing heads only (cheap).
    pub fn heads_divergence(&self) -> Option<String> {
        self.compare(false)
    }

    /// Compares every document holding a change that each running node
    /// holds, in memory or only in its store (documents load lazily): heads
    /// through their fingerprints (cheap), content by reading each document
    /// (loading stored ones read-only, which leaves the replicas' caches
    /// alone). A document with no change is not replicated: peers store a
    /// document once a change of it reaches them.
    fn compare(&self, content: bool) -> Option<String> {
        let running: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.is_up(i)).collect();
        let first = *running.first()?;
        let reference = self.replica(first);
        let docs = match with_changes(reference) {
            Ok(docs) => docs,
            Err(error) => return Some(format!("node {first} cannot list documents: {error}")),
        };
        for &other in &running[1..] {
            let replica = self.replica(other);
            let other_docs = match with_changes(replica) {
                Ok(docs) => docs,
                Err(error) => return Some(format!("node {other} cannot list documents: {error}")),
            };
            if other_docs != docs {
                return Some(format!(
                    "node {first} holds {} documents, node {other} holds {}",
                    docs.len(),
                    other_docs.len()
                ));
            }
            for &doc in &docs {
                let fingerprints = (
                    reference.heads_fingerprint(doc),
                    replica.heads_fingerprint(doc),
                );
                match fingerprints {
                    (Ok(Some(a)), Ok(Some(b))) if a == b => {}
                    _ => {
                        return Some(format!(
                            "document {doc}: heads differ between node {first} and node {other}"
                        ))
                    }
                }
                if content {
                    let (a, b) = match (reference.read_document(doc), replica.read_document(doc)) {
                        (Ok(a), Ok(b)) => (a, b),
                        (Err(error), _) | (_, Err(error)) => {
                            return Some(format!("document {doc} does not read: {error}"))
                        }
                    };
                    if a.get_heads() != b.get_heads() {
                        return Some(format!(
                            "document {doc}: heads differ between node {first} and node {other}"
                        ));
                    }
                    if a.hydrate(None) != b.hydrate(None) {
                        return Some(format!("document {doc}: same heads but different content on nodes {first} and {other}"));
                    }
                }
            }
        }
        None
    }

    /// Recomputes node `index`'s reconciliation digest from the documents
    /// in its store and checks it against the stored one (every leaf and
    /// every node). O(documents); works on a crashed node's store too.
    pub fn verify_digest(&self, index: usize) -> Result<(), String> {
        verify_digest(&self.nodes[index].store)
    }
}

/// The documents `replica` holds that hold a change, in order.
fn with_changes(replica: &Replica) -> Result<Vec<DocumentId>, ReplicaError> {
    let mut held = Vec::new();
    for doc in replica.document_ids()? {
        if replica.heads_fingerprint(doc)?.is_some() {
            held.push(doc);
        }
    }
    Ok(held)
}
