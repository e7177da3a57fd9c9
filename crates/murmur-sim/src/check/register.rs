//! The register checker: concurrent writes to the same map keys.
//!
//! Automerge keeps concurrent writes to a key as conflicts and picks one
//! winner the same way everywhere. What must hold:
//!
//! * every value any read sees under a key was written to that key by a
//!   write that did not fail (nothing appears that was never written);
//! * at the end, a key some acknowledged write wrote is not empty;
//! * at the end, no value is visible that an acknowledged write replaced:
//!   a writer that saw value `v` under a key and wrote over it made `v`
//!   history, and once that write is durable `v` must not come back.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{reads, sample, Finding, Read};
use crate::history::{Completed, Function, OpType, Value};

/// What the register checker found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegisterReport {
    /// Writes attempted.
    pub writes: usize,
    /// Keys written.
    pub keys: usize,
    /// Final reads that showed a conflict (more than one value).
    pub final_conflicts: usize,
}

#[derive(Default)]
struct Key {
    /// Values written by writes that did not fail.
    written: BTreeSet<u64>,
    /// Values replaced by acknowledged writes.
    replaced: BTreeSet<u64>,
    /// Some acknowledged write exists.
    acknowledged: bool,
}

/// Checks every register in the history.
pub fn check(operations: &[Completed<'_>]) -> (RegisterReport, Vec<Finding>) {
    let (mut report, keys) = collect(operations);
    let mut findings = Vec::new();
    for read in reads(operations) {
        findings.extend(check_read(&read, &keys, &mut report));
    }
    (report, findings)
}

type Keys = BTreeMap<(usize, u8), Key>;

/// What was written under each key, and with what outcome.
fn collect(operations: &[Completed<'_>]) -> (RegisterReport, Keys) {
    let mut keys = Keys::new();
    let mut report = RegisterReport::default();
    for op in operations.iter().filter(|op| op.invoke.f == Function::Put) {
        let Value::Register {
            doc,
            key,
            value,
            overwrote,
        } = op.value()
        else {
            continue;
        };
        report.writes += 1;
        let entry = keys.entry((*doc, *key)).or_default();
        match op.outcome() {
            OpType::Fail => {}
            OpType::Ok => {
                entry.written.insert(*value);
                entry.replaced.extend(overwrote.iter().copied());
                entry.acknowledged = true;
            }
            _ => {
                entry.written.insert(*value);
            }
        }
    }
    report.keys = keys.len();
    (report, keys)
}

fn check_read(read: &Read<'_>, keys: &Keys, report: &mut RegisterReport) -> Vec<Finding> {
    let mut findings = Vec::new();
    let empty = Key::default();
    let (doc, node) = (read.doc, read.node);
    for (key, values) in &read.seen.registers {
        let entry = keys.get(&(doc, *key)).unwrap_or(&empty);
        let foreign: Vec<u64> = values
            .iter()
            .copied()
            .filter(|v| !entry.written.contains(v))
            .collect();
        if !foreign.is_empty() {
            let message = format!(
                "document {doc} key k{key}: node {node} read values never written (or whose write failed): {}",
                sample(&foreign)
            );
            findings.push(Finding::new("register", message));
        }
        if !read.final_read {
            continue;
        }
        if values.len() > 1 {
            report.final_conflicts += 1;
        }
        let stale: Vec<u64> = values
            .iter()
            .copied()
            .filter(|v| entry.replaced.contains(v))
            .collect();
        if !stale.is_empty() {
            let message = format!(
                "document {doc} key k{key}: node {node} ends with values an acknowledged write replaced: {}",
                sample(&stale)
            );
            findings.push(Finding::new("register", message));
        }
    }
    if read.final_read {
        for ((_, key), entry) in keys.range((doc, 0)..=(doc, u8::MAX)) {
            if entry.acknowledged && !read.seen.registers.contains_key(key) {
                let message = format!(
                    "document {doc} key k{key}: acknowledged writes, but node {node} ends with the key empty"
                );
                findings.push(Finding::new("register", message));
            }
        }
    }
    findings
}
