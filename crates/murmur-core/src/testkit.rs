//! A deterministic driver: N replicas wired together in memory, with
//! virtual time and a seeded network.
//!
//! [`Cluster`] runs real [`Replica`]s on [`MemStore`]s. Every message is
//! framed and decoded with `murmur-wire` on its way, so byte counts are what
//! a real link would carry. Delivery time is drawn from a seeded RNG between
//! [`Network::latency_min`] and [`Network::latency_max`] (so messages
//! reorder), and messages can be lost or duplicated. Links can be cut and
//! healed; nodes can crash (losing what their store had not flushed) and
//! restart from their store. Time only moves when [`Cluster::step`] jumps
//! it to the next delivery or timer, so a run is fast and the same seed
//! always gives the same run.
//!
//! ```
//! use automerge::{transaction::Transactable, ROOT};
//! use murmur_core::testkit::Cluster;
//!
//! let mut cluster = Cluster::new(3, 42);
//! let doc = cluster.create_document(0);
//! cluster.change(0, doc, |tx| tx.put(ROOT, "x", 1_i64));
//! cluster.run_until_converged(std::time::Duration::from_secs(10)).expect("converges");
//! assert!(cluster.replica(2).document(doc).is_ok());
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use automerge::transaction::Transaction;
use automerge::AutomergeError;
use murmur_store::MemStore;
use murmur_wire::{decode_frame, encode_frame, DocumentId, NodeId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{AckLevel, Config, Event, Replica, Time, WriteId};

/// How the simulated network behaves.
#[derive(Debug, Clone)]
pub struct Network {
    /// Shortest delivery time.
    pub latency_min: Duration,
    /// Longest delivery time.
    pub latency_max: Duration,
    /// Chance that a message is lost, in [0, 1].
    pub loss: f64,
    /// Chance that a message is delivered twice, in [0, 1].
    pub duplicate: f64,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            latency_min: Duration::from_millis(1),
            latency_max: Duration::from_millis(10),
            loss: 0.0,
            duplicate: 0.0,
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
    /// Messages lost by the network (loss, or a link that went down).
    pub dropped: u64,
    /// Messages a replica rejected.
    pub rejected: u64,
}

struct Node {
    id: NodeId,
    store: MemStore,
    config: Config,
    replica: Option<Replica>,
    /// Peers this node currently has a connection to.
    connected: BTreeSet<usize>,
    acks: BTreeMap<WriteId, AckLevel>,
}

struct InFlight {
    from: usize,
    to: usize,
    frame: Vec<u8>,
}

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
    /// The network's behaviour; change it at any time.
    pub network: Network,
    traffic: Traffic,
}

/// The start of virtual time: a plausible wall clock, so Automerge change
/// timestamps look real.
pub const EPOCH: Time = Time::from_millis(1_700_000_000_000);

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
                    connected: BTreeSet::new(),
                    acks: BTreeMap::new(),
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
            network: Network::default(),
            traffic: Traffic::default(),
        };
        cluster.refresh_connections();
        cluster
    }

    /// Virtual time now.
    pub fn now(&self) -> Time {
        self.now
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
        self.nodes[index]
            .replica
            .as_ref()
            .unwrap_or_else(|| panic!("node {index} is crashed"))
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

    /// True if node `index` is running.
    pub fn is_up(&self, index: usize) -> bool {
        self.nodes[index].replica.is_some()
    }

    /// The highest acknowledgement node `index` has given `write`.
    pub fn ack(&self, index: usize, write: WriteId) -> Option<AckLevel> {
        self.nodes[index].acks.get(&write).copied()
    }

    /// Creates a document on node `index`.
    pub fn create_document(&mut self, index: usize) -> DocumentId {
        let now = self.now;
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
        let now = self.now;
        let write = self
            .replica_mut(index)
            .handle_local_change(now, doc, change)
            .unwrap_or_else(|e| panic!("change on node {index} failed: {e}"))
            .write;
        self.drain(index);
        write
    }

    /// Cuts the links between every node of `side_a` and every node of
    /// `side_b`.
    pub fn partition(&mut self, side_a: &[usize], side_b: &[usize]) {
        for &a in side_a {
            for &b in side_b {
                if a != b {
                    self.cut.insert((a.min(b), a.max(b)));
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

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
        self.refresh_connections();
    }

    /// Crashes node `index`: its replica is dropped, its store loses what
    /// was not flushed, its connections close.
    pub fn crash(&mut self, index: usize) {
        self.nodes[index].replica = None;
        self.nodes[index].store.crash();
        self.refresh_connections();
    }

    /// Restarts a crashed node from its store.
    pub fn restart(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        assert!(node.replica.is_none(), "node {index} is running");
        let replica = Replica::open(node.config.clone(), Box::new(node.store.clone()), self.now)
            .unwrap_or_else(|e| panic!("node {index} does not reopen: {e}"));
        node.replica = Some(replica);
        self.refresh_connections();
    }

    /// Brings every connection in line with which nodes are up and which
    /// links are cut, telling each replica of peers that came and went.
    fn refresh_connections(&mut self) {
        let now = self.now;
        for a in 0..self.nodes.len() {
            for b in 0..self.nodes.len() {
                if a == b {
                    continue;
                }
                let should = self.nodes[a].replica.is_some()
                    && self.nodes[b].replica.is_some()
                    && !self.cut.contains(&(a.min(b), a.max(b)));
                let is = self.nodes[a].connected.contains(&b);
                let peer = self.nodes[b].id;
                if should && !is {
                    self.nodes[a].connected.insert(b);
                    self.replica_mut(a).handle_peer_up(now, peer);
                } else if !should && is {
                    self.nodes[a].connected.remove(&b);
                    if let Some(replica) = self.nodes[a].replica.as_mut() {
                        replica.handle_peer_down(now, peer);
                    }
                }
            }
        }
        for index in 0..self.nodes.len() {
            self.drain(index);
        }
    }

    /// Takes node `index`'s outputs: messages onto the wire, events into
    /// the acknowledgement log.
    fn drain(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        let mut transmits = Vec::new();
        while let Some(transmit) = replica.poll_transmit() {
            transmits.push(transmit);
        }
        while let Some(event) = replica.poll_event() {
            if let Event::Acknowledged { write, level, .. } = event {
                let entry = node.acks.entry(write).or_insert(level);
                *entry = (*entry).max(level);
            }
        }
        for transmit in transmits {
            let Some(to) = self.nodes.iter().position(|n| n.id == transmit.to) else {
                continue;
            };
            let frame = encode_frame(&transmit.message)
                .unwrap_or_else(|e| panic!("replica produced an unencodable message: {e}"));
            self.send(index, to, frame);
        }
    }

    fn send(&mut self, from: usize, to: usize, frame: Vec<u8>) {
        self.traffic.messages += 1;
        self.traffic.bytes += frame.len() as u64;
        if self.rng.gen_bool(self.network.loss.clamp(0.0, 1.0)) {
            self.traffic.dropped += 1;
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
                (self.now.add(latency), self.sent),
                InFlight {
                    from,
                    to,
                    frame: frame.clone(),
                },
            );
        }
    }

    fn latency(&mut self) -> Duration {
        let min = self.network.latency_min.as_micros() as u64;
        let max = (self.network.latency_max.as_micros() as u64).max(min);
        Duration::from_micros(self.rng.gen_range(min..=max))
    }

    /// Moves time to the next delivery or timer and runs it. Returns the
    /// new time.
    pub fn step(&mut self) -> Time {
        let next_delivery = self.in_flight.keys().next().map(|(time, _)| *time);
        let next_timer = (0..self.nodes.len())
            .filter_map(|i| {
                self.nodes[i]
                    .replica
                    .as_ref()
                    .map(|r| (r.poll_timeout(), i))
            })
            .min();
        match (next_delivery, next_timer) {
            (Some(delivery), Some((timer, _))) if delivery <= timer => self.deliver_next(),
            (Some(_), None) => self.deliver_next(),
            (_, Some((timer, index))) => {
                self.now = self.now.max(timer);
                let now = self.now;
                self.replica_mut(index).handle_timeout(now);
                self.drain(index);
            }
            (None, None) => {}
        }
        self.now
    }

    fn deliver_next(&mut self) {
        let Some(((time, _), message)) = self.in_flight.pop_first() else {
            return;
        };
        self.now = self.now.max(time);
        let InFlight { from, to, frame } = message;
        // A message on a connection that has since closed is lost with it.
        if !self.nodes[to].connected.contains(&from) {
            self.traffic.dropped += 1;
            return;
        }
        let message = decode_frame(&frame)
            .unwrap_or_else(|e| panic!("a frame we encoded does not decode: {e}"));
        let (now, sender) = (self.now, self.nodes[from].id);
        if let Err(error) = self.replica_mut(to).handle_message(now, sender, message) {
            tracing::debug!(%error, "replica rejected a message");
            self.traffic.rejected += 1;
        }
        self.drain(to);
    }

    /// Runs until virtual time reaches `now + duration`.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now.add(duration);
        while self.next_event_time().is_some_and(|t| t <= until) {
            self.step();
        }
        self.now = self.now.max(until);
    }

    fn next_event_time(&self) -> Option<Time> {
        let delivery = self.in_flight.keys().next().map(|(time, _)| *time);
        let timer = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref().map(Replica::poll_timeout))
            .min();
        match (delivery, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs until every running node holds the same documents with the same
    /// heads and nothing is in flight, or `limit` of virtual time passes.
    /// Returns how long it took, or an error describing the divergence.
    pub fn run_until_converged(&mut self, limit: Duration) -> Result<Duration, String> {
        let start = self.now;
        let until = start.add(limit);
        loop {
            if self.in_flight.is_empty() && self.heads_divergence().is_none() {
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

    fn compare(&self, content: bool) -> Option<String> {
        let running: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.is_up(i)).collect();
        let first = *running.first()?;
        let reference = self.replica(first);
        let docs: Vec<DocumentId> = reference.document_ids().collect();
        for &other in &running[1..] {
            let replica = self.replica(other);
            let other_docs: Vec<DocumentId> = replica.document_ids().collect();
            if other_docs != docs {
                return Some(format!(
                    "node {first} holds {} documents, node {other} holds {}",
                    docs.len(),
                    other_docs.len()
                ));
            }
            for &doc in &docs {
                let (a, b) = (reference.document(doc).ok()?, replica.document(doc).ok()?);
                if a.get_heads() != b.get_heads() {
                    return Some(format!(
                        "document {doc}: heads differ between node {first} and node {other}"
                    ));
                }
                if content && a.hydrate(None) != b.hydrate(None) {
                    return Some(format!("document {doc}: same heads but different content on nodes {first} and {other}"));
                }
            }
        }
        None
    }
}
