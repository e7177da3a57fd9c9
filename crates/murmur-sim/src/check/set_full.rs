//! Jepsen's set-full checker, per element of the grow-only set.
//!
//! For each element added, over the reads of its document that began after
//! the add began:
//!
//! * **known**: the earlier of the add's `ok` and the first read that saw
//!   it. An element no read saw and whose add is not `ok` is **never-read**.
//! * **lost**: known, and the last read missing it came after the last read
//!   seeing it. For an add acknowledged `ok` (durable), that is a bug; for
//!   an indeterminate one it is allowed and counted as **lost-unacked**.
//! * **stable** otherwise, with a **stable latency**: how long after it was
//!   known the last read that missed it ran. A stable element with a
//!   positive latency is **stale**: normal for an eventually consistent
//!   store, reported as a distribution.
//!
//! Every read is also checked for **unexpected** elements (never added, or
//! whose add certainly failed) and **duplicated** ones (seen more than once
//! in one read). Jepsen's own duplicate check cannot fire; this one counts
//! occurrences within each read.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{reads, sample, Finding, Read};
use crate::history::{Completed, Function, OpType, Value};
use crate::stats::Percentiles;

/// What set-full found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SetFullReport {
    /// Adds attempted.
    pub attempts: usize,
    /// Adds acknowledged ok.
    pub acknowledged: usize,
    /// Elements stable.
    pub stable: usize,
    /// Stable elements some read missed after they were known.
    pub stale: usize,
    /// Acknowledged elements lost: a bug.
    pub lost: Vec<u64>,
    /// Indeterminate elements seen, then lost: allowed.
    pub lost_unacked: Vec<u64>,
    /// Indeterminate elements no read ever saw.
    pub never_read: usize,
    /// Elements read that were never added, or whose add failed: a bug.
    pub unexpected: Vec<u64>,
    /// Elements seen more than once in a read, with the most copies: a bug.
    pub duplicated: BTreeMap<u64, usize>,
    /// Stable latency, in virtual milliseconds.
    pub stable_latency_ms: Percentiles,
    /// The stalest elements: (element, stable latency).
    pub worst_stale: Vec<(u64, u64)>,
    /// Every stable element's latency, for plots (not saved in JSON).
    #[serde(skip)]
    pub stable_latencies_ms: Vec<u64>,
}

struct Add<'a> {
    doc: usize,
    element: u64,
    op: &'a Completed<'a>,
}

/// Checks every set element in the history.
pub fn check(operations: &[Completed<'_>]) -> (SetFullReport, Vec<Finding>) {
    let adds: Vec<Add<'_>> = operations
        .iter()
        .filter(|op| op.invoke.f == Function::Add)
        .filter_map(|op| match op.invoke.value {
            Value::Element { doc, element } => Some(Add { doc, element, op }),
            _ => None,
        })
        .collect();
    let reads = reads(operations);
    let mut report = SetFullReport {
        attempts: adds.len(),
        acknowledged: adds.iter().filter(|a| a.op.outcome() == OpType::Ok).count(),
        ..SetFullReport::default()
    };
    check_reads(&adds, &reads, &mut report);
    let mut latencies = Vec::new();
    for add in adds.iter().filter(|add| add.op.outcome() != OpType::Fail) {
        classify(add, &reads, &mut report, &mut latencies);
    }
    report.stable_latency_ms = Percentiles::of(latencies.iter().map(|(_, l)| *l));
    report.stable_latencies_ms = latencies.iter().map(|(_, l)| *l).collect();
    latencies.sort_by_key(|(element, latency)| (std::cmp::Reverse(*latency), *element));
    report.worst_stale = latencies
        .into_iter()
        .filter(|(_, l)| *l > 0)
        .take(5)
        .collect();
    (report.clone(), findings(&report))
}

/// Unexpected and duplicated elements, read by read.
fn check_reads(adds: &[Add<'_>], reads: &[Read<'_>], report: &mut SetFullReport) {
    let valid: BTreeSet<(usize, u64)> = adds
        .iter()
        .filter(|add| add.op.outcome() != OpType::Fail)
        .map(|add| (add.doc, add.element))
        .collect();
    let mut unexpected = BTreeSet::new();
    for read in reads {
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for element in &read.seen.set {
            *counts.entry(*element).or_default() += 1;
        }
        for (element, count) in counts {
            if count > 1 {
                let worst = report.duplicated.entry(element).or_default();
                *worst = (*worst).max(count);
            }
            if !valid.contains(&(read.doc, element)) {
                unexpected.insert(element);
            }
        }
    }
    report.unexpected = unexpected.into_iter().collect();
}

fn classify(
    add: &Add<'_>,
    reads: &[Read<'_>],
    report: &mut SetFullReport,
    latencies: &mut Vec<(u64, u64)>,
) {
    let after: Vec<(&Read<'_>, bool)> = reads
        .iter()
        .filter(|read| read.doc == add.doc && read.index > add.op.invoke_index)
        .map(|read| (read, read.seen.set.contains(&add.element)))
        .collect();
    let first_seen = after
        .iter()
        .find(|(_, present)| *present)
        .map(|(r, _)| r.time_ms);
    let acknowledged = (add.op.outcome() == OpType::Ok)
        .then(|| add.op.complete.map(|c| c.time_ms))
        .flatten();
    let known = match (acknowledged, first_seen) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let last_present = after.iter().filter(|(_, p)| *p).map(|(r, _)| r.index).max();
    let last_absent = after
        .iter()
        .filter(|(_, p)| !*p)
        .map(|(r, _)| (r.index, r.time_ms))
        .max();
    let Some(known) = known else {
        report.never_read += 1;
        return;
    };
    if after.is_empty() {
        report.never_read += 1;
        return;
    }
    let lost = match (last_absent, last_present) {
        (Some((absent, _)), Some(present)) => absent > present,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if lost {
        if acknowledged.is_some() {
            report.lost.push(add.element);
        } else {
            report.lost_unacked.push(add.element);
        }
        return;
    }
    let latency = last_absent.map_or(0, |(_, time)| time.saturating_sub(known));
    report.stable += 1;
    if latency > 0 {
        report.stale += 1;
    }
    latencies.push((add.element, latency));
}

fn findings(report: &SetFullReport) -> Vec<Finding> {
    let mut findings = Vec::new();
    if !report.lost.is_empty() {
        findings.push(Finding::new(
            "set",
            format!(
                "{} acknowledged (durable) elements lost: {}",
                report.lost.len(),
                sample(&report.lost)
            ),
        ));
    }
    if !report.unexpected.is_empty() {
        findings.push(Finding::new(
            "set",
            format!(
                "{} unexpected elements (never added, or their add failed): {}",
                report.unexpected.len(),
                sample(&report.unexpected)
            ),
        ));
    }
    if !report.duplicated.is_empty() {
        let duplicated: Vec<(u64, usize)> =
            report.duplicated.iter().map(|(e, c)| (*e, *c)).collect();
        findings.push(Finding::new(
            "set",
            format!(
                "{} elements appear more than once in a read (element, copies): {}",
                duplicated.len(),
                sample(&duplicated)
            ),
        ));
    }
    findings
}
