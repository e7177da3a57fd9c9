//! The counter checker.
//!
//! A counter takes increments and decrements. At the end, after
//! convergence, every node's counter must equal the sum of the
//! acknowledged (`ok`) deltas plus the sum of *some subset* of the
//! indeterminate (`info`) ones; failed deltas must count for nothing.
//! Because deltas have both signs, "between the sum and the sum plus the
//! indeterminate ones" is not enough: the checker decides exactly whether
//! the difference is a subset sum of the indeterminate deltas.
//!
//! During the chaos, a read sees some of the deltas invoked before it, so
//! its value must be a subset sum of the non-failed deltas invoked before
//! it. A document without a counter (its creating change was lost in a
//! crash) reads as zero.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{reads, sample, Finding};
use crate::history::{Completed, Function, OpType, Value};

/// What the counter checker found, per document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterReport {
    /// Per document with any increments.
    pub documents: Vec<CounterDocument>,
    /// Reads checked.
    pub reads_checked: usize,
}

/// One document's counter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterDocument {
    /// The document index.
    pub doc: usize,
    /// Sum of acknowledged deltas.
    pub acknowledged_sum: i64,
    /// Indeterminate deltas.
    pub indeterminate: Vec<i64>,
    /// What each final read saw.
    pub final_values: Vec<Option<i64>>,
}

/// Which values a sum of some subset of deltas can take.
#[derive(Debug, Clone)]
pub struct SubsetSums {
    /// `reachable[i]` says whether `i - offset` is a subset sum.
    reachable: Vec<bool>,
    offset: i64,
}

impl SubsetSums {
    /// Only the empty sum, 0, with room for deltas whose magnitudes add up
    /// to `bound`.
    pub fn new(bound: i64) -> SubsetSums {
        let bound = bound.max(0);
        let mut reachable = vec![false; (2 * bound + 1) as usize];
        reachable[bound as usize] = true;
        SubsetSums {
            reachable,
            offset: bound,
        }
    }

    /// The subset sums of `deltas`.
    pub fn of(deltas: &[i64]) -> SubsetSums {
        let mut sums = SubsetSums::new(deltas.iter().map(|d| d.abs()).sum());
        for &delta in deltas {
            sums.add(delta);
        }
        sums
    }

    /// Adds one more delta that may or may not be included.
    pub fn add(&mut self, delta: i64) {
        let shift = delta.unsigned_abs() as usize;
        if shift == 0 || shift >= self.reachable.len() {
            return;
        }
        let previous = self.reachable.clone();
        for (index, &was) in previous.iter().enumerate() {
            if !was {
                continue;
            }
            let target = if delta > 0 {
                index.checked_add(shift)
            } else {
                index.checked_sub(shift)
            };
            if let Some(slot) = target.and_then(|t| self.reachable.get_mut(t)) {
                *slot = true;
            }
        }
    }

    /// True if some subset sums to `value`.
    pub fn contains(&self, value: i64) -> bool {
        let index = value + self.offset;
        index >= 0 && self.reachable.get(index as usize).copied().unwrap_or(false)
    }
}

struct Increment {
    index: usize,
    doc: usize,
    delta: i64,
    outcome: OpType,
}

/// Checks every counter in the history.
pub fn check(operations: &[Completed<'_>]) -> (CounterReport, Vec<Finding>) {
    let increments: Vec<Increment> = operations
        .iter()
        .filter(|op| op.invoke.f == Function::Increment)
        .filter_map(|op| match op.invoke.value {
            Value::Delta { doc, delta } => Some(Increment {
                index: op.invoke_index,
                doc,
                delta,
                outcome: op.outcome(),
            }),
            _ => None,
        })
        .collect();
    let docs: BTreeSet<usize> = increments.iter().map(|i| i.doc).collect();
    let reads = reads(operations);
    let mut report = CounterReport::default();
    let mut findings = Vec::new();
    for doc in docs {
        let mine: Vec<&Increment> = increments.iter().filter(|i| i.doc == doc).collect();
        let doc_reads: Vec<_> = reads.iter().filter(|r| r.doc == doc).collect();
        report.reads_checked += doc_reads.len();
        let (summary, found) = check_document(doc, &mine, &doc_reads);
        report.documents.push(summary);
        findings.extend(found);
    }
    (report, findings)
}

fn check_document(
    doc: usize,
    increments: &[&Increment],
    reads: &[&super::Read<'_>],
) -> (CounterDocument, Vec<Finding>) {
    let acknowledged_sum: i64 = increments
        .iter()
        .filter(|i| i.outcome == OpType::Ok)
        .map(|i| i.delta)
        .sum();
    let indeterminate: Vec<i64> = increments
        .iter()
        .filter(|i| i.outcome == OpType::Info)
        .map(|i| i.delta)
        .collect();
    let mut findings = Vec::new();
    let finals = SubsetSums::of(&indeterminate);
    let mut final_values = Vec::new();
    for read in reads.iter().filter(|r| r.final_read) {
        let value = read.seen.counter;
        final_values.push(value);
        // No counter at all (a document whose creating change was lost)
        // counts as zero: every increment on it failed.
        let fits = finals.contains(value.unwrap_or(0) - acknowledged_sum);
        if !fits {
            findings.push(Finding::new(
                "counter",
                format!(
                    "document {doc}: node {} ends with counter {value:?}, but the acknowledged deltas sum to {acknowledged_sum} and no subset of the {} indeterminate deltas {} makes up the difference",
                    read.node,
                    indeterminate.len(),
                    sample(&indeterminate)
                ),
            ));
        }
    }
    findings.extend(check_chaos_reads(doc, increments, reads));
    let summary = CounterDocument {
        doc,
        acknowledged_sum,
        indeterminate,
        final_values,
    };
    (summary, findings)
}

/// Each read during the chaos must be a subset sum of the non-failed
/// deltas invoked before it.
fn check_chaos_reads(
    doc: usize,
    increments: &[&Increment],
    reads: &[&super::Read<'_>],
) -> Vec<Finding> {
    let possible: Vec<&&Increment> = increments
        .iter()
        .filter(|i| i.outcome != OpType::Fail)
        .collect();
    let bound = possible.iter().map(|i| i.delta.abs()).sum();
    let mut sums = SubsetSums::new(bound);
    let mut next = 0;
    let mut findings = Vec::new();
    let mut by_index: BTreeMap<usize, &super::Read<'_>> = BTreeMap::new();
    for read in reads.iter().filter(|r| !r.final_read) {
        by_index.insert(read.index, read);
    }
    for (index, read) in by_index {
        while next < possible.len() && possible[next].index < index {
            sums.add(possible[next].delta);
            next += 1;
        }
        if let Some(value) = read.seen.counter {
            if !sums.contains(value) {
                findings.push(Finding::new(
                    "counter",
                    format!(
                        "document {doc}: node {} read counter {value} at {} ms, which no subset of the deltas invoked before it sums to",
                        read.node, read.time_ms
                    ),
                ));
            }
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_sums_with_both_signs_are_exact() {
        let sums = SubsetSums::of(&[3, -2, 5]);
        let expected: BTreeSet<i64> = [0, 3, -2, 5, 1, 8, 3, 6].into_iter().collect();
        for value in -10..=10 {
            assert_eq!(sums.contains(value), expected.contains(&value), "{value}");
        }
        // 4 lies between the smallest and largest sums but is none of them.
        assert!(!sums.contains(4));
    }
}
