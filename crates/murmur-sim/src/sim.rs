//! Plays one schedule on real replicas: setup, chaos, liveness, final
//! reads, checks.

use std::collections::BTreeMap;
use std::time::Duration;

use automerge::ReadDoc;
use murmur_core::testkit::{Cluster, WorldEvent};
use murmur_core::{AckLevel, Config, LocalWrite, Time, WriteId};
use serde::{Deserialize, Serialize};

use crate::check::{self, CheckReport, Finding};
use crate::history::{Ack, Function, History, HistoryEvent, OpType, Value};
use crate::nemesis::{FaultState, FaultWindow};
use crate::params::{self, Params, Stream};
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
    }
    runner.finish(schedule, heal_ms, convergence_ms)
}

impl<'a> Runner<'a> {
    fn new(params: &'a Params, options: RunOptions) -> Self {
        let group_commit = Duration::from_millis(params.group_commit_ms);
        let fault_injection = options.plant.fault_injection();
        let world_seed = params::sub_seed(params.seed, Stream::World);
        let mut cluster = Cluster::with_config(params.nodes, world_seed, |config: Config| {
            let mut config = config;
            config.group_commit_delay = group_commit;
            config.fault_injection = fault_injection;
            config
        });
        cluster.record_trace(true);
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
                    node,
                    write,
                    level: AckLevel::Durable,
                    ..
                } => {
                    if let Some(pending) = self.pending.remove(&(node, write)) {
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
        for item in timeline(schedule, self.params.chaos_ms) {
            let at = self.chaos_start.add(Duration::from_millis(item.at_ms()));
            if !self.advance_to(at) {
                return;
            }
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
        self.cluster.step();
        self.steps += 1;
        if self.steps.is_multiple_of(4096) {
            self.drain_world();
        }
        true
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
            self.writes_indeterminate(node, "node crashed before the write was durable");
        }
    }

    /// Every write still pending on `node` becomes `info`.
    fn writes_indeterminate(&mut self, node: usize, why: &str) {
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
        let state = FaultState::of(self.params.nodes, []);
        state.apply(&mut self.cluster, &self.params.network.clean());
        self.drain_world();
        let limit = Duration::from_millis(self.params.liveness_ms);
        let result = self.converge(limit);
        self.drain_world();
        // Let flush timers due right after convergence run.
        let settle = Duration::from_millis(self.params.group_commit_ms + 1);
        let until = self.cluster.now().add(settle);
        self.advance_to(until);
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
            Ok(LocalWrite { output, write, .. }) => match output.nothing_done {
                Some(why) => self.fail_at_once(op, node, f, output.value, why),
                None => self.pending_write(op, node, f, output.value, write),
            },
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
        match self.cluster.try_change(node, id, workload::init_document) {
            Ok(write) => self.pending_write(op, node, Function::Create, value, write.write),
            Err(error) => self.fail_at_once(op, node, Function::Create, value, error.to_string()),
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

/// A step of the chaos phase.
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
