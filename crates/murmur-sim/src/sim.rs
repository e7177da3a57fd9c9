//! Plays one schedule on real replicas: setup, chaos, liveness, final
//! reads, checks.

use std::collections::BTreeMap;
use std::time::Duration;

use automerge::{ChangeHash, ReadDoc};
use murmur_core::testkit::{self, Cluster, WorldEvent};
use murmur_core::{AckLevel, Config, DocumentId, LocalWrite, Time, WriteId};
use serde::{Deserialize, Serialize};

use crate::check::{self, CheckReport, Finding};
use crate::durable::DurableIndex;
use crate::history::{Ack, Function, History, HistoryEvent, OpType, Value};
use crate::nemesis::{Fault, FaultState, FaultWindow};
use crate::params::{self, Params, Stream};
use crate::scenario::Mechanism;
use crate::schedule::Schedule;
use crate::trace::{run_ms, TraceEvent, TraceLine, TraceRecorder};
use crate::workload::{self, Documents, OpSpec, ScheduledOp};
use crate::PlantedBug;

/// How long setup may take to spread the first documents.
const SETUP_LIMIT: Duration = Duration::from_secs(30);

/// Most driver steps (deliveries and timer firings) in one run: a message
/// storm or livelock becomes a finding instead of a hang.
pub const MAX_STEPS: u64 = 250_000;

/// How to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Keep the trace's lines (for reports); the hash is always made.
    pub keep_trace: bool,
    /// A bug to plant in every replica.
    pub plant: PlantedBug,
}

/// Numbers about one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunStats {
    /// When the chaos began (run milliseconds).
    pub chaos_start_ms: u64,
    /// When every fault was healed (run milliseconds).
    pub heal_ms: u64,
    /// How long after the heal every replica agreed, if they did within the
    /// bound.
    pub convergence_ms: Option<u64>,
    /// When the run ended (run milliseconds).
    pub end_ms: u64,
    /// Client operations in the schedule.
    pub operations: usize,
    /// Client operations completed ok (final reads not counted).
    pub ok: usize,
    /// Failed.
    pub fail: usize,
    /// Indeterminate.
    pub info: usize,
    /// Messages sent.
    pub messages: u64,
    /// Frame bytes sent.
    pub bytes: u64,
    /// Messages the network lost.
    pub dropped: u64,
    /// Messages a replica rejected.
    pub rejected: u64,
    /// Messages per client operation.
    pub messages_per_op: f64,
    /// Bytes per client operation.
    pub bytes_per_op: f64,
    /// Events in the trace.
    pub trace_events: u64,
    /// Dependencies that changes still waited for at the end and that no
    /// replica holds: lost with a crash before they were durable.
    pub orphaned_dependencies: u64,
    /// How often each engine mechanism fired, by name (every mechanism is
    /// listed, fired or not).
    #[serde(default)]
    pub mechanisms: BTreeMap<String, u64>,
    /// Acknowledgements checked against the stores as they were given.
    #[serde(default)]
    pub acks_checked: u64,
}

/// Everything one run produced.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The parameters it ran with.
    pub params: Params,
    /// The history.
    pub history: History,
    /// The checkers' verdict.
    pub report: CheckReport,
    /// SHA-256 of the trace, hex.
    pub trace_hash: String,
    /// The trace (empty unless [`RunOptions::keep_trace`]).
    pub trace: Vec<TraceLine>,
    /// Numbers.
    pub stats: RunStats,
}

/// A local write waiting for its durable acknowledgement.
struct Pending {
    op: usize,
    f: Function,
    value: Value,
}

struct Runner<'a> {
    params: &'a Params,
    cluster: Cluster,
    docs: Documents,
    history: History,
    pending: BTreeMap<(usize, WriteId), Pending>,
    trace: TraceRecorder,
    rejections: Vec<String>,
    findings: Vec<Finding>,
    chaos_start: Time,
    steps: u64,
    /// Dependencies missing at the end that no replica holds.
    orphans: u64,
    /// Set when the step budget ran out: the rest of the run is skipped.
    runaway: bool,
    /// The change each local write made, per node incarnation: what its
    /// acknowledgements promise.
    written: BTreeMap<(usize, WriteId), (DocumentId, ChangeHash)>,
    /// What each node's flushed store holds.
    durable: DurableIndex,
    acks_checked: u64,
    /// Set once an invariant broke (reported once, then not checked).
    invariant_broken: bool,
    /// Documents (by index) whose deletion some node acknowledged durable.
    deleted: std::collections::BTreeSet<usize>,
    /// Set once a replica lost a pushed change (reported once).
    push_lost: bool,
    /// Steps each node took since its invariants were last checked.
    invariant_turns: Vec<u64>,
    storage_crashes: u64,
    graceful_restarts: u64,
    /// Nodes to crash just before their next flush of writes already
    /// pushed to peers (the end of a `restart-crash` window).
    crash_before_flush: std::collections::BTreeSet<usize>,
    bursts: u64,
    membership_deliveries: u64,
}

/// Plays `schedule` with `params` and checks the result.
pub fn run(params: &Params, schedule: &Schedule, options: RunOptions) -> RunOutcome {
    let mut runner = Runner::new(params, options);
    runner.setup();
    runner.chaos(schedule);
    let heal_ms = run_ms(runner.cluster.now());
    let convergence_ms = if runner.runaway {
        None
    } else {
        runner.liveness()
    };
    if !runner.runaway {
        runner.final_reads(schedule.ops.len());
        runner.structural_checks();
        runner.reopen_check();
    }
    runner.finish(schedule, heal_ms, convergence_ms)
}

impl<'a> Runner<'a> {
    fn new(params: &'a Params, options: RunOptions) -> Self {
        let group_commit = Duration::from_millis(params.group_commit_ms);
        let fault_injection = options.plant.fault_injection();
        let world_seed = params::sub_seed(params.seed, Stream::World);
        let limits = params.limits;
        let (anti_entropy, membership) = (params.anti_entropy, params.membership);
        let interval = Duration::from_millis(params.anti_entropy_interval_ms);
        let sync_retry_ms = params.sync_retry_ms;
        let mut cluster = Cluster::with_config(params.nodes, world_seed, |config: Config| {
            let mut config = limits.apply(config);
            config.group_commit_delay = group_commit;
            config.fault_injection = fault_injection;
            config.anti_entropy = anti_entropy;
            config.anti_entropy_interval = interval;
            config.anti_entropy_jitter = interval / 4;
            if sync_retry_ms == 0 {
                config.max_watched_syncs = 0;
            } else {
                config.sync_retry = Duration::from_millis(sync_retry_ms);
            }
            if membership {
                config.membership_addr = Some(format!("sim:{}", config.node_id.short()));
            }
            config
        });
        cluster.record_trace(true);
        cluster.disk = limits.disk();
        cluster.turn_window = Duration::from_micros(limits.turn_window_us);
        Runner {
            params,
            cluster,
            docs: Documents::default(),
            history: History::default(),
            pending: BTreeMap::new(),
            trace: TraceRecorder::new(options.keep_trace),
            rejections: Vec::new(),
            findings: Vec::new(),
            chaos_start: Time::ZERO,
            steps: 0,
            orphans: 0,
            runaway: false,
            written: BTreeMap::new(),
            durable: DurableIndex::default(),
            acks_checked: 0,
            invariant_broken: false,
            deleted: std::collections::BTreeSet::new(),
            push_lost: false,
            invariant_turns: vec![0; params.nodes],
            storage_crashes: 0,
            graceful_restarts: 0,
            crash_before_flush: std::collections::BTreeSet::new(),
            bursts: 0,
            membership_deliveries: 0,
        }
    }

    fn now_ms(&self) -> u64 {
        run_ms(self.cluster.now())
    }

    /// Moves the world's trace into ours, completing writes that became
    /// durable.
    fn drain_world(&mut self) {
        for entry in self.cluster.take_trace() {
            self.trace.record_world(&entry);
            match entry.event {
                WorldEvent::Acknowledged {
                    node, write, level, ..
                } => {
                    self.check_ack(node, write, level);
                    if level < AckLevel::Durable {
                        continue;
                    }
                    if let Some(pending) = self.pending.remove(&(node, write)) {
                        if let (Function::DeleteDoc, Value::Document { doc: Some(doc) }) =
                            (pending.f, &pending.value)
                        {
                            self.deleted.insert(*doc);
                        }
                        let event = HistoryEvent {
                            op: pending.op,
                            kind: OpType::Ok,
                            time_ms: run_ms(entry.time),
                            node,
                            f: pending.f,
                            value: pending.value,
                            ack: Some(Ack::Durable),
                            error: None,
                        };
                        self.push(event);
                    }
                }
                WorldEvent::Rejected { from, to, error } => {
                    self.rejections.push(format!(
                        "node {to} rejected a message from node {from}: {error}"
                    ));
                }
                WorldEvent::PushLost {
                    from,
                    to,
                    doc,
                    change,
                } if !self.push_lost => {
                    self.push_lost = true;
                    let at = run_ms(entry.time);
                    self.findings.push(Finding::new(
                        "pushes",
                        format!("node {to} at {at} ms lost change {change} of document {doc} pushed by node {from}: it holds the change's dependencies but not the change, and refused nothing"),
                    ));
                }
                WorldEvent::StorageCrashed { node, .. } => {
                    self.storage_crashes += 1;
                    self.check_crash_kept_flushed(node);
                    self.writes_indeterminate(node, "node crashed: its store failed mid-call");
                }
                WorldEvent::Delivered {
                    kind: "membership", ..
                } => self.membership_deliveries += 1,
                _ => {}
            }
        }
    }

    fn push(&mut self, event: HistoryEvent) {
        let value_hash = serde_json::to_vec(&event.value)
            .map(|bytes| murmur_core::testkit::fnv1a(&bytes))
            .unwrap_or(0);
        self.trace.record(
            event.time_ms,
            TraceEvent::Op {
                op: event.op,
                node: event.node,
                kind: event.kind,
                f: event.f,
                value_hash,
            },
        );
        self.history.push(event);
    }

    fn event(
        &self,
        op: usize,
        kind: OpType,
        node: usize,
        f: Function,
        value: Value,
    ) -> HistoryEvent {
        HistoryEvent {
            op,
            kind,
            time_ms: self.now_ms(),
            node,
            f,
            value,
            ack: None,
            error: None,
        }
    }

    fn phase(&mut self, name: &'static str) {
        let now = self.now_ms();
        self.trace.record(now, TraceEvent::Phase { name });
    }

    // ----- phases -------------------------------------------------------

    /// Creates the first documents on node 0 and lets every node learn
    /// them on a clean network.
    fn setup(&mut self) {
        self.phase("setup");
        for _ in 0..self.params.documents.max(1) {
            let id = self.cluster.create_document(0);
            if let Err(error) = self.cluster.try_change(0, id, workload::init_document) {
                self.findings
                    .push(Finding::new("setup", format!("init failed: {error}")));
            }
            self.docs.add(id);
        }
        if let Err(problem) = self.converge(SETUP_LIMIT) {
            self.findings.push(Finding::new(
                "setup",
                format!("setup did not converge: {problem}"),
            ));
        }
        self.drain_world();
        self.chaos_start = self.cluster.now();
    }

    fn chaos(&mut self, schedule: &Schedule) {
        self.phase("chaos");
        self.cluster.network = self.params.network.network();
        let mut open: Vec<usize> = Vec::new();
        let items = timeline(schedule, self.params.chaos_ms);
        // A node whose outputs wait: operations at the same moment on the
        // same node share one driver turn (a burst).
        let mut holding: Option<usize> = None;
        for (position, item) in items.iter().enumerate() {
            let same_turn = |a: &Item<'_>, b: Option<&Item<'_>>| match (a, b) {
                (Item::Op(_, x), Some(Item::Op(_, y))) => x.at_ms == y.at_ms && x.node == y.node,
                _ => false,
            };
            let joins_turn =
                position > 0 && same_turn(item, items.get(position - 1)) && holding.is_some();
            if !joins_turn {
                if let Some(node) = holding.take() {
                    self.cluster.release(node);
                    self.drain_world();
                }
            }
            let at = self.chaos_start.add(Duration::from_millis(item.at_ms()));
            if !joins_turn && !self.advance_to(at) {
                return;
            }
            if !joins_turn && same_turn(item, items.get(position + 1)) {
                if let Item::Op(_, op) = item {
                    if self.cluster.is_up(op.node) && !self.cluster.is_paused(op.node) {
                        self.cluster.hold(op.node);
                        holding = Some(op.node);
                        self.bursts += 1;
                    }
                }
            }
            let item = *item;
            match item {
                Item::Start(index, _) => {
                    open.push(index);
                    self.apply_faults(&schedule.faults, &open, true, index);
                }
                Item::End(index, _) => {
                    open.retain(|&i| i != index);
                    self.apply_faults(&schedule.faults, &open, false, index);
                }
                Item::Op(index, op) => self.run_op(index, op),
            }
            self.drain_world();
        }
        if let Some(node) = holding.take() {
            self.cluster.release(node);
            self.drain_world();
        }
        let end = self
            .chaos_start
            .add(Duration::from_millis(self.params.chaos_ms));
        self.advance_to(end);
    }

    /// Runs the world up to `until`, within the step budget. Returns false
    /// (and records a finding) if the budget ran out.
    fn advance_to(&mut self, until: Time) -> bool {
        while self.cluster.next_event_time().is_some_and(|t| t <= until) {
            if !self.step() {
                return false;
            }
        }
        self.cluster.run_until(until);
        self.drain_world();
        true
    }

    /// One driver step, within the budget.
    fn step(&mut self) -> bool {
        if self.steps >= MAX_STEPS {
            if !self.runaway {
                self.runaway = true;
                let traffic = self.cluster.traffic();
                self.findings.push(Finding::new(
                    "runaway",
                    format!(
                        "more than {MAX_STEPS} deliveries and timers by {} ms ({} messages sent, {} in flight): a message storm or livelock",
                        self.now_ms(),
                        traffic.messages,
                        self.cluster.in_flight()
                    ),
                ));
            }
            return false;
        }
        if !self.crash_before_flush.is_empty() {
            self.crash_before_next_flush();
        }
        self.cluster.step();
        self.steps += 1;
        // Acknowledgements are checked against the stores as they are now,
        // before anything else happens.
        self.drain_world();
        if let Some(node) = self.cluster.last_stepped() {
            self.check_invariants(node);
        }
        true
    }

    /// Checks node `node`'s engine invariants (if it runs); the first
    /// violation is a finding.
    fn check_invariants(&mut self, node: usize) {
        if self.invariant_broken {
            return;
        }
        let Some(replica) = self.cluster.try_replica(node) else {
            return;
        };
        // The check walks the documents in memory and the watched sync
        // conversations: with thousands of them (a setup making a thousand
        // documents, a flush in flight pinning every one it writes), check
        // every k-th step of the node, so a run stays O(steps x 64). A
        // broken invariant stays broken: it is still caught, steps later.
        let every = (replica.invariant_check_size() as u64 / 64).max(1);
        let turns = &mut self.invariant_turns[node];
        *turns += 1;
        if *turns < every {
            return;
        }
        *turns = 0;
        if let Err(problem) = replica.check_invariants() {
            self.invariant_broken = true;
            let at = self.now_ms();
            self.findings.push(Finding::new(
                "invariants",
                format!("node {node} at {at} ms: {problem}"),
            ));
        }
    }

    // ----- acknowledgements -----------------------------------------------

    /// Checks the promise of an acknowledgement as it is given: `Durable`,
    /// the change is in the node's flushed store; `Replicated(k)`, also in
    /// the flushed stores of at least k other nodes.
    fn check_ack(&mut self, node: usize, write: WriteId, level: AckLevel) {
        let Some(&(doc, hash)) = self.written.get(&(node, write)) else {
            return;
        };
        let copies_promised = match level {
            AckLevel::Applied => return,
            AckLevel::Durable => 0,
            AckLevel::Replicated(copies) => copies as usize,
        };
        self.acks_checked += 1;
        let at = self.now_ms();
        if !self.durably_holds(node, doc, hash) {
            self.findings.push(Finding::new(
                "durable-ack",
                format!("node {node} acknowledged write {} {level:?} at {at} ms, but its flushed store lacks change {hash}", write.0),
            ));
            return;
        }
        if copies_promised == 0 {
            return;
        }
        let holders: Vec<usize> = (0..self.params.nodes)
            .filter(|&other| other != node && self.durably_holds(other, doc, hash))
            .collect();
        if holders.len() < copies_promised {
            self.findings.push(Finding::new(
                "replicated-ack",
                format!("node {node} acknowledged write {} Replicated({copies_promised}) at {at} ms, but only nodes {holders:?} hold change {hash} in their flushed stores", write.0),
            ));
        }
    }

    /// True if `node`'s flushed store (what a crash would leave) holds
    /// change `hash` of `doc`.
    fn durably_holds(&mut self, node: usize, doc: DocumentId, hash: ChangeHash) -> bool {
        self.durable
            .holds(node, self.cluster.store(node), doc, hash)
    }

    /// Node `node` just crashed: what its flushed store held must all still
    /// be there (a crash loses only what was never flushed).
    fn check_crash_kept_flushed(&mut self, node: usize) {
        let problems = self
            .durable
            .verify_after_crash(node, self.cluster.store(node));
        let at = self.now_ms();
        for problem in problems {
            self.findings.push(Finding::new(
                "durable-lost",
                format!("node {node} crashed at {at} ms and lost flushed data: {problem}"),
            ));
        }
        self.check_feed(node, "after a crash");
    }

    /// The deletion rule, once converged: a document deleted anywhere is
    /// deleted on every running node (a deletion wins over every change),
    /// one whose deletion was acknowledged too, and a durable tombstone
    /// leaves no content in the store.
    fn check_deletions(&mut self) {
        let running: Vec<usize> = (0..self.params.nodes)
            .filter(|&n| self.cluster.is_up(n))
            .collect();
        for (index, &doc) in self.docs.ids().iter().enumerate() {
            let deleted: Vec<usize> = running
                .iter()
                .copied()
                .filter(|&n| {
                    self.cluster
                        .try_replica(n)
                        .is_some_and(|r| r.is_deleted(&doc))
                })
                .collect();
            let acknowledged = self.deleted.contains(&index);
            if (acknowledged || !deleted.is_empty()) && deleted.len() != running.len() {
                self.findings.push(Finding::new(
                    "deletion",
                    format!("document {index} ({doc}) is deleted on nodes {deleted:?} of the running {running:?} (deletion acknowledged: {acknowledged})"),
                ));
            }
            for &node in &deleted {
                let store: &dyn murmur_store::Storage = self.cluster.store(node);
                let durable = store
                    .get(&murmur_store::layout::tombstone_key(doc.as_bytes()))
                    .ok()
                    .flatten()
                    .is_some();
                let mut prefix = vec![b'd'];
                prefix.extend_from_slice(doc.as_bytes());
                let content = store
                    .scan_prefix(&prefix)
                    .map(|keys| keys.len())
                    .unwrap_or(0);
                if durable && content > 0 {
                    self.findings.push(Finding::new(
                        "deletion",
                        format!("node {node} holds the tombstone of document {index} and {content} keys of its content"),
                    ));
                }
            }
        }
    }

    /// Node `node`'s change feed, as its store holds it now: dense, no
    /// change twice, every change its documents hold in it exactly once.
    fn check_feed(&mut self, node: usize, when: &str) {
        if let Err(problem) = murmur_core::feed::verify(self.cluster.store(node)) {
            let at = self.now_ms();
            self.findings.push(Finding::new(
                "feed",
                format!("node {node}'s change feed at {at} ms ({when}): {problem}"),
            ));
        }
    }

    /// Forgets node `node`'s writes: its write ids start again.
    fn forget_writes(&mut self, node: usize) {
        self.written.retain(|(writer, _), _| *writer != node);
    }

    /// Runs until every running replica holds the same documents with the
    /// same heads and nothing is in flight, or `limit` passes. Returns how
    /// long it took, or what still differs.
    fn converge(&mut self, limit: Duration) -> Result<Duration, String> {
        let start = self.cluster.now();
        let until = start.add(limit);
        loop {
            if self.cluster.in_flight() == 0 && self.cluster.heads_divergence().is_none() {
                return Ok(self.cluster.now().since(start));
            }
            let due = self.cluster.next_event_time().is_some_and(|t| t <= until);
            if !due || !self.step() {
                let problem = self.cluster.heads_divergence();
                return Err(
                    problem.unwrap_or_else(|| "messages still in flight at the limit".into())
                );
            }
        }
    }

    fn apply_faults(
        &mut self,
        windows: &[FaultWindow],
        open: &[usize],
        start: bool,
        changed: usize,
    ) {
        let fault = windows[changed].fault.to_string();
        let now = self.now_ms();
        let event = if start {
            TraceEvent::FaultStart { fault }
        } else {
            TraceEvent::FaultEnd { fault }
        };
        self.trace.record(now, event);
        let state = FaultState::of(self.params.nodes, open.iter().map(|&i| &windows[i].fault));
        let crashed = state.apply(&mut self.cluster, &self.params.network);
        for node in crashed {
            self.check_crash_kept_flushed(node);
            self.writes_indeterminate(node, "node crashed before the write was durable");
        }
        if let Fault::Restart { node, then_crash } = windows[changed].fault {
            self.restart_event(node, start, then_crash);
        }
    }

    /// The edges of a restart window: a clean restart at its start; with
    /// `then_crash`, at its end the node is marked to crash (losing every
    /// unflushed write) just before its next flush, and restart.
    fn restart_event(&mut self, node: usize, start: bool, then_crash: bool) {
        if node >= self.params.nodes || !self.cluster.is_up(node) {
            return;
        }
        if start {
            self.graceful_restarts += 1;
            let closed = self.cluster.restart_gracefully(node);
            // Acknowledgements from the final flush come first.
            self.drain_world();
            let why = match closed {
                Ok(()) => "node restarted before the write was acknowledged",
                Err(_) => "node crashed while closing",
            };
            self.writes_indeterminate(node, why);
        } else if then_crash {
            self.crash_before_flush.insert(node);
        }
    }

    /// If the next step would flush writes that a node has already pushed
    /// to its peers and it is marked to crash before then, crashes it now
    /// and restarts it, cut off: the point where a reused sequence number
    /// would show.
    fn crash_before_next_flush(&mut self) {
        let Some(node) = self.cluster.next_timer_node() else {
            return;
        };
        if !self.crash_before_flush.contains(&node) {
            return;
        }
        let waiting = self
            .cluster
            .try_replica(node)
            .is_some_and(|replica| replica.writes_awaiting_flush() > 0);
        if !waiting {
            return;
        }
        self.crash_before_flush.remove(&node);
        self.cluster.crash(node);
        self.check_crash_kept_flushed(node);
        self.writes_indeterminate(node, "node crashed before the write was durable");
        // It comes back alone (until the next fault window opens or
        // closes), so its clients may write before any peer has told it
        // what it lost.
        self.cluster.isolate(node);
        self.cluster.restart(node);
        self.drain_world();
    }

    /// Every write still pending on `node` becomes `info`.
    fn writes_indeterminate(&mut self, node: usize, why: &str) {
        self.forget_writes(node);
        let keys: Vec<(usize, WriteId)> = self
            .pending
            .range((node, WriteId(0))..=(node, WriteId(u64::MAX)))
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            if let Some(pending) = self.pending.remove(&key) {
                let mut event =
                    self.event(pending.op, OpType::Info, node, pending.f, pending.value);
                event.ack = Some(Ack::Applied);
                event.error = Some(why.to_owned());
                self.push(event);
            }
        }
    }

    /// Heals everything and waits for convergence; returns how long it took.
    fn liveness(&mut self) -> Option<u64> {
        self.phase("liveness");
        self.crash_before_flush.clear();
        let state = FaultState::of(self.params.nodes, []);
        state.apply(&mut self.cluster, &self.params.network.clean());
        self.drain_world();
        let limit = Duration::from_millis(self.params.liveness_ms);
        let result = self.converge(limit);
        self.drain_world();
        // Let the group commits due or in flight at convergence finish (a
        // few flush times; the bound only stops a flush that never ends).
        let flush_ms = self.params.limits.flush_max_us / 1000 + 1;
        let settle = Duration::from_millis(self.params.group_commit_ms + 1);
        let until = self.cluster.now().add(settle);
        self.advance_to(until);
        for _ in 0..10 {
            if !self.cluster.flushes_pending() && !self.cluster.loads_pending() {
                break;
            }
            let until = self.cluster.now().add(Duration::from_millis(flush_ms));
            self.advance_to(until);
        }
        match result {
            Ok(took) => Some(took.as_millis() as u64),
            Err(problem) => {
                self.findings.push(Finding::new(
                    "liveness",
                    format!(
                        "replicas did not converge within {} ms of the heal: {problem}",
                        self.params.liveness_ms
                    ),
                ));
                None
            }
        }
    }

    fn final_reads(&mut self, first_op: usize) {
        self.phase("final");
        let mut op = first_op;
        for node in 0..self.params.nodes {
            for doc in 0..self.docs.len() {
                self.read(op, node, doc as u32, true);
                op += 1;
            }
        }
    }

    fn structural_checks(&mut self) {
        if let Some(problem) = self.cluster.divergence() {
            self.findings.push(Finding::new("convergence", problem));
        }
        self.missing_dependencies();
        if let Some(first) = self.rejections.first() {
            self.findings.push(Finding::new(
                "rejections",
                format!(
                    "{} messages from honest peers were rejected; first: {first}",
                    self.rejections.len()
                ),
            ));
        }
        let stuck: Vec<usize> = self.pending.values().map(|p| p.op).collect();
        if !stuck.is_empty() {
            self.findings.push(Finding::new(
                "durable-ack",
                format!(
                    "{} writes on running nodes were never acknowledged durable (ops {stuck:?})",
                    stuck.len()
                ),
            ));
        }
        let nodes: Vec<usize> = (0..self.params.nodes).collect();
        for node in nodes {
            self.writes_indeterminate(node, "never acknowledged durable");
            self.check_feed(node, "at the end");
        }
        self.check_deletions();
    }

    /// What node `node` holds: every document id with its heads
    /// fingerprint.
    fn holdings(&self, node: usize) -> Result<Holdings, String> {
        let replica = self
            .cluster
            .try_replica(node)
            .ok_or_else(|| format!("node {node} is down"))?;
        let ids = replica.document_ids().map_err(|e| e.to_string())?;
        ids.into_iter()
            .map(|doc| {
                let fingerprint = replica.heads_fingerprint(doc).map_err(|e| e.to_string())?;
                Ok((doc, fingerprint))
            })
            .collect()
    }

    /// The end of every run: each replica's digest is checked against its
    /// documents (and converged replicas must have equal roots); then every
    /// replica is crashed, losing whatever it had not flushed, reopened
    /// from its store, and must hold exactly what it held before, with a
    /// digest that still agrees. Checking memory alone would miss a write
    /// that never reached the disk.
    fn reopen_check(&mut self) {
        self.phase("reopen");
        let nodes = self.params.nodes;
        let converged = self.cluster.heads_divergence().is_none();
        self.check_digests("before the final crash");
        let roots: Vec<(usize, (u64, u64))> = (0..nodes)
            .filter_map(|node| {
                let root = self.cluster.try_replica(node)?.digest_root().ok()?;
                Some((node, root))
            })
            .collect();
        if converged && roots.windows(2).any(|pair| pair[0].1 != pair[1].1) {
            self.findings.push(Finding::new(
                "digest",
                format!("converged replicas have different digest roots: {roots:?}"),
            ));
        }
        let before: Vec<Option<Holdings>> =
            (0..nodes).map(|node| self.holdings(node).ok()).collect();
        for node in 0..nodes {
            if self.cluster.is_up(node) {
                self.cluster.crash(node);
                self.check_crash_kept_flushed(node);
            }
        }
        for node in 0..nodes {
            self.cluster.restart(node);
        }
        self.drain_world();
        for (node, held) in before.into_iter().enumerate() {
            let Some(held) = held else { continue };
            match self.holdings(node) {
                Ok(now) if now == held => {}
                Ok(now) => self.findings.push(Finding::new(
                    "reopen",
                    describe_reopen_difference(node, &held, &now),
                )),
                Err(error) => self.findings.push(Finding::new(
                    "reopen",
                    format!("node {node} does not read back after reopening: {error}"),
                )),
            }
        }
        self.check_digests("after reopening");
    }

    fn check_digests(&mut self, when: &str) {
        for node in 0..self.params.nodes {
            let Some(replica) = self.cluster.try_replica(node) else {
                continue;
            };
            if let Err(problem) = replica.check_digest() {
                self.findings.push(Finding::new(
                    "digest",
                    format!(
                        "node {node} {when}: the digest disagrees with the documents: {problem}"
                    ),
                ));
            }
        }
    }

    /// Changes still queued for missing dependencies after convergence. A
    /// dependency no replica holds was lost with a crash before it was
    /// durable (so the queued change's own write was never acknowledged):
    /// counted as an orphan. A dependency some replica holds is a change
    /// that replication failed to deliver: a finding.
    fn missing_dependencies(&mut self) {
        let replicas: Vec<(usize, &murmur_core::Replica)> = (0..self.params.nodes)
            .filter_map(|node| self.cluster.try_replica(node).map(|r| (node, r)))
            .collect();
        let mut findings = Vec::new();
        for &id in self.docs.ids() {
            for &(node, replica) in &replicas {
                let Ok(doc) = replica.read_document(id) else {
                    continue;
                };
                for missing in doc.get_missing_deps(&[]) {
                    let holder = replicas.iter().find(|(_, other)| {
                        other
                            .read_document(id)
                            .is_ok_and(|d| d.get_change_by_hash(&missing).is_some())
                    });
                    match holder {
                        Some((other, _)) => findings.push(Finding::new(
                            "dependencies",
                            format!("node {node} document {id}: a change still waits for dependency {missing}, which node {other} holds"),
                        )),
                        None => self.orphans += 1,
                    }
                }
            }
        }
        self.findings.extend(findings);
    }

    fn finish(
        mut self,
        schedule: &Schedule,
        heal_ms: u64,
        convergence_ms: Option<u64>,
    ) -> RunOutcome {
        self.drain_world();
        let report = check::check(&self.history, std::mem::take(&mut self.findings));
        let traffic = self.cluster.traffic();
        let mechanisms = self.mechanisms(&traffic);
        let operations = schedule.ops.len();
        let (ok, fail, info) = self.history.outcome_counts(operations);
        let per_op = |value: u64| value as f64 / operations.max(1) as f64;
        let stats = RunStats {
            chaos_start_ms: run_ms(self.chaos_start),
            heal_ms,
            convergence_ms,
            end_ms: self.now_ms(),
            operations,
            ok,
            fail,
            info,
            messages: traffic.messages,
            bytes: traffic.bytes,
            dropped: traffic.dropped,
            rejected: traffic.rejected,
            messages_per_op: per_op(traffic.messages),
            bytes_per_op: per_op(traffic.bytes),
            trace_events: self.trace.len(),
            orphaned_dependencies: self.orphans,
            mechanisms,
            acks_checked: self.acks_checked,
        };
        let (trace_hash, trace) = self.trace.finish();
        RunOutcome {
            params: self.params.clone(),
            history: self.history,
            report,
            trace_hash,
            trace,
            stats,
        }
    }

    /// How often each mechanism fired in this run.
    fn mechanisms(&self, traffic: &testkit::Traffic) -> BTreeMap<String, u64> {
        let metrics = self.cluster.total_metrics();
        Mechanism::ALL
            .iter()
            .map(|&mechanism| {
                let count = match mechanism {
                    Mechanism::Backpressure => metrics.messages_dropped_backpressure,
                    Mechanism::QueueFull => traffic.queue_full,
                    Mechanism::Eviction => metrics.documents_evicted,
                    Mechanism::LazyLoad => metrics.documents_loaded,
                    Mechanism::Compaction => metrics.compactions,
                    Mechanism::DigestSplit => metrics.digest_buckets_split,
                    Mechanism::Reconciliation => metrics.documents_reconciled,
                    Mechanism::SyncRestart => metrics.sync_restarts,
                    Mechanism::SyncRetry => metrics.sync_retries,
                    Mechanism::MissingDependencySync => metrics.missing_dependency_syncs,
                    Mechanism::StorageCrash => self.storage_crashes,
                    Mechanism::GracefulRestart => self.graceful_restarts,
                    Mechanism::Burst => self.bursts,
                    Mechanism::Membership => self.membership_deliveries,
                    Mechanism::CrashMidFlush => self.cluster.crashes_mid_flush(),
                    Mechanism::LoadParked => metrics.inputs_parked,
                    Mechanism::PushBatched => metrics.pushes_batched,
                    Mechanism::Deletion => metrics.documents_deleted,
                    Mechanism::DeletionReconciled => metrics.deletions_reconciled,
                };
                (mechanism.name().to_owned(), count)
            })
            .collect()
    }

    // ----- operations ---------------------------------------------------

    fn run_op(&mut self, index: usize, scheduled: &ScheduledOp) {
        let node = scheduled.node;
        let down = if !self.cluster.is_up(node) {
            Some("node is down")
        } else if self.cluster.is_paused(node) {
            Some("node is paused")
        } else {
            None
        };
        if let Some(why) = down {
            let value = self.intent(&scheduled.op);
            self.fail_at_once(index, node, scheduled.op.function(), value, why.to_owned());
            return;
        }
        match scheduled.op {
            OpSpec::Create => self.create(index, node),
            OpSpec::DeleteDoc { doc } => self.delete_doc(index, node, doc),
            OpSpec::Read { doc } => self.read(index, node, doc, false),
            ref op => self.write(index, node, op),
        }
    }

    /// The value a write means to write, before it runs.
    fn intent(&self, op: &OpSpec) -> Value {
        let doc = op
            .doc()
            .and_then(|d| self.docs.resolve(d))
            .map_or(0, |(index, _)| index);
        match *op {
            OpSpec::Add { element, .. } => Value::Element { doc, element },
            OpSpec::Increment { delta, .. } => Value::Delta { doc, delta },
            OpSpec::Put { key, value, .. } => Value::Register {
                doc,
                key,
                value,
                overwrote: Vec::new(),
            },
            OpSpec::Insert { id, .. } => Value::Char {
                doc,
                ch: Some(workload::text_char(id)),
            },
            OpSpec::Delete { .. } => Value::Char { doc, ch: None },
            OpSpec::WriteA { id, .. } => Value::Pair { doc, id: Some(id) },
            OpSpec::WriteB { .. } => Value::Pair { doc, id: None },
            OpSpec::Create => Value::Document { doc: None },
            OpSpec::DeleteDoc { .. } => Value::Document { doc: Some(doc) },
            OpSpec::Read { .. } => Value::Read {
                doc,
                final_read: false,
                seen: None,
            },
        }
    }

    fn fail_at_once(&mut self, op: usize, node: usize, f: Function, value: Value, why: String) {
        self.push(self.event(op, OpType::Invoke, node, f, value.clone()));
        let mut fail = self.event(op, OpType::Fail, node, f, value);
        fail.error = Some(why);
        self.push(fail);
    }

    fn write(&mut self, op: usize, node: usize, spec: &OpSpec) {
        let f = spec.function();
        let Some((doc_index, doc_id)) = spec.doc().and_then(|d| self.docs.resolve(d)) else {
            let value = self.intent(spec);
            return self.fail_at_once(op, node, f, value, "no documents".into());
        };
        let result = self
            .cluster
            .try_change(node, doc_id, |tx| workload::write(tx, spec, doc_index));
        match result {
            Err(error) => {
                let value = self.intent(spec);
                self.fail_at_once(op, node, f, value, error.to_string());
            }
            Ok(LocalWrite {
                output,
                write,
                change,
                ..
            }) => match output.nothing_done {
                Some(why) => self.fail_at_once(op, node, f, output.value, why),
                None => {
                    self.remember_write(node, write, doc_id, change);
                    self.pending_write(op, node, f, output.value, write);
                }
            },
        }
    }

    fn remember_write(
        &mut self,
        node: usize,
        write: WriteId,
        doc: DocumentId,
        change: Option<ChangeHash>,
    ) {
        if let Some(hash) = change {
            self.written.insert((node, write), (doc, hash));
        }
    }

    fn pending_write(&mut self, op: usize, node: usize, f: Function, value: Value, write: WriteId) {
        let mut invoke = self.event(op, OpType::Invoke, node, f, value.clone());
        invoke.ack = Some(Ack::Applied);
        self.push(invoke);
        self.pending.insert((node, write), Pending { op, f, value });
    }

    fn create(&mut self, op: usize, node: usize) {
        let id = self.cluster.create_document(node);
        let doc = self.docs.add(id);
        let value = Value::Document { doc: Some(doc) };
        if !self.cluster.is_up(node) {
            // The store failed inside the creation (a storage crash):
            // whether the document survives is unknown.
            self.push(self.event(op, OpType::Invoke, node, Function::Create, value.clone()));
            let mut info = self.event(op, OpType::Info, node, Function::Create, value);
            info.error = Some("node crashed: its store failed mid-call".to_owned());
            self.push(info);
            return;
        }
        match self.cluster.try_change(node, id, workload::init_document) {
            Ok(write) => {
                self.remember_write(node, write.write, id, write.change);
                self.pending_write(op, node, Function::Create, value, write.write);
            }
            Err(error) => self.fail_at_once(op, node, Function::Create, value, error.to_string()),
        }
    }

    fn delete_doc(&mut self, op: usize, node: usize, doc: u32) {
        let Some((doc_index, id)) = self.docs.resolve(doc) else {
            let value = Value::Document { doc: None };
            return self.fail_at_once(op, node, Function::DeleteDoc, value, "no documents".into());
        };
        let value = Value::Document {
            doc: Some(doc_index),
        };
        match self.cluster.delete_document(node, id) {
            Ok(write) => self.pending_write(op, node, Function::DeleteDoc, value, write),
            Err(error) => {
                self.fail_at_once(op, node, Function::DeleteDoc, value, error.to_string())
            }
        }
    }

    fn read(&mut self, op: usize, node: usize, doc: u32, final_read: bool) {
        let resolved = self.docs.resolve(doc);
        let doc_index = resolved.map_or(0, |(index, _)| index);
        let value = |seen| Value::Read {
            doc: doc_index,
            final_read,
            seen,
        };
        let seen = match (resolved, self.cluster.try_replica(node)) {
            (None, _) => Err("no documents".to_owned()),
            (_, None) => Err("node is down".to_owned()),
            (Some((_, id)), Some(replica)) => replica
                .read_document(id)
                .map(|d| workload::read(&d, final_read))
                .map_err(|e| e.to_string()),
        };
        match seen {
            Ok(seen) => {
                self.push(self.event(op, OpType::Invoke, node, Function::Read, value(None)));
                let ok = self.event(
                    op,
                    OpType::Ok,
                    node,
                    Function::Read,
                    value(Some(Box::new(seen))),
                );
                self.push(ok);
            }
            Err(why) => self.fail_at_once(op, node, Function::Read, value(None), why),
        }
    }
}

/// Every document a node holds, with its heads fingerprint.
type Holdings = Vec<(DocumentId, Option<u64>)>;

/// A step of the chaos phase.
#[derive(Clone, Copy)]
enum Item<'s> {
    /// A fault window opens.
    Start(usize, u64),
    /// A fault window closes.
    End(usize, u64),
    /// An operation runs.
    Op(usize, &'s ScheduledOp),
}

impl Item<'_> {
    fn at_ms(&self) -> u64 {
        match self {
            Item::Start(_, at) | Item::End(_, at) => *at,
            Item::Op(_, op) => op.at_ms,
        }
    }

    /// At the same millisecond: windows close, then open, then operations.
    fn rank(&self) -> (u64, u8, usize) {
        match self {
            Item::End(index, at) => (*at, 0, *index),
            Item::Start(index, at) => (*at, 1, *index),
            Item::Op(index, op) => (op.at_ms, 2, *index),
        }
    }
}

/// The chaos phase's steps in order. A window still open when the chaos
/// ends (`chaos_ms`) is closed by the liveness phase, not here.
fn timeline(schedule: &Schedule, chaos_ms: u64) -> Vec<Item<'_>> {
    let mut items: Vec<Item<'_>> = Vec::new();
    for (index, window) in schedule.faults.iter().enumerate() {
        if window.start_ms <= chaos_ms {
            items.push(Item::Start(index, window.start_ms));
        }
        if window.end_ms <= chaos_ms {
            items.push(Item::End(index, window.end_ms));
        }
    }
    for (index, op) in schedule.ops.iter().enumerate() {
        if op.at_ms <= chaos_ms {
            items.push(Item::Op(index, op));
        }
    }
    items.sort_by_key(Item::rank);
    items
}

/// Says how what node `node` held before its final crash differs from what
/// it holds after reopening.
fn describe_reopen_difference(
    node: usize,
    before: &[(DocumentId, Option<u64>)],
    after: &[(DocumentId, Option<u64>)],
) -> String {
    let before_map: BTreeMap<_, _> = before.iter().copied().collect();
    let after_map: BTreeMap<_, _> = after.iter().copied().collect();
    let lost: Vec<String> = before_map
        .keys()
        .filter(|doc| !after_map.contains_key(doc))
        .map(|doc| doc.to_string())
        .collect();
    let changed: Vec<String> = before_map
        .iter()
        .filter(|(doc, print)| after_map.get(doc).is_some_and(|now| now != *print))
        .map(|(doc, _)| doc.to_string())
        .collect();
    let appeared = after_map
        .keys()
        .filter(|doc| !before_map.contains_key(doc))
        .count();
    format!(
        "node {node} reopened from its store differs from what it held: documents lost {lost:?}, heads changed {changed:?}, {appeared} documents appeared"
    )
}
