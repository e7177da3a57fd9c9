//! No change is visible without its dependencies.
//!
//! Two ways. In Automerge's terms: every read also counts the changes in
//! the reading node's document whose dependencies that document does not
//! hold, and that count must be zero. In the workload's terms: a node
//! writes `b` of a pair only when it sees the pair's `a`, so `b`'s change
//! depends on `a`'s; no read, anywhere, may show `b` without `a`. And at
//! the end, every acknowledged `a` and `b` is there.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{reads, sample, Finding, Read};
use crate::history::{Completed, Function, OpType, Value};

/// What the dependency checker found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DepsReport {
    /// `a` writes attempted.
    pub a_writes: usize,
    /// `b` writes made.
    pub b_writes: usize,
    /// Reads checked.
    pub reads_checked: usize,
}

/// Checks every read for changes or pairs without their dependencies.
pub fn check(operations: &[Completed<'_>]) -> (DepsReport, Vec<Finding>) {
    let (mut report, acknowledged) = collect(operations);
    let mut findings = Vec::new();
    for read in reads(operations) {
        report.reads_checked += 1;
        findings.extend(check_read(&read, &acknowledged));
    }
    (report, findings)
}

/// Per document, the pairs whose `a` and whose `b` were acknowledged.
type Pairs = BTreeMap<usize, (BTreeSet<u64>, BTreeSet<u64>)>;

fn collect(operations: &[Completed<'_>]) -> (DepsReport, Pairs) {
    let mut report = DepsReport::default();
    let mut acknowledged = Pairs::new();
    for op in operations {
        let Value::Pair { doc, id: Some(id) } = op.value() else {
            continue;
        };
        let entry = acknowledged.entry(*doc).or_default();
        let ok = op.outcome() == OpType::Ok;
        match op.invoke.f {
            Function::WriteA => {
                report.a_writes += 1;
                if ok {
                    entry.0.insert(*id);
                }
            }
            Function::WriteB => {
                report.b_writes += 1;
                if ok {
                    entry.1.insert(*id);
                }
            }
            _ => {}
        }
    }
    (report, acknowledged)
}

fn check_read(read: &Read<'_>, acknowledged: &Pairs) -> Vec<Finding> {
    let (doc, node) = (read.doc, read.node);
    let mut findings = Vec::new();
    if read.seen.changes_missing_deps > 0 {
        let message = format!(
            "document {doc}: node {node} shows {} changes whose dependencies it does not hold",
            read.seen.changes_missing_deps
        );
        findings.push(Finding::new("deps", message));
    }
    let a: BTreeSet<u64> = read.seen.deps_a.iter().copied().collect();
    let orphans: Vec<u64> = read
        .seen
        .deps_b
        .iter()
        .copied()
        .filter(|b| !a.contains(b))
        .collect();
    if !orphans.is_empty() {
        let message = format!(
            "document {doc}: node {node} at {} ms sees b without its a for pairs {}",
            read.time_ms,
            sample(&orphans)
        );
        findings.push(Finding::new("deps", message));
    }
    if read.final_read {
        let b: BTreeSet<u64> = read.seen.deps_b.iter().copied().collect();
        let (want_a, want_b) = acknowledged.get(&doc).cloned().unwrap_or_default();
        let missing: Vec<String> = want_a
            .difference(&a)
            .map(|id| format!("a{id}"))
            .chain(want_b.difference(&b).map(|id| format!("b{id}")))
            .collect();
        if !missing.is_empty() {
            let message = format!(
                "document {doc}: node {node} ends without acknowledged writes {}",
                sample(&missing)
            );
            findings.push(Finding::new("deps", message));
        }
    }
    findings
}
