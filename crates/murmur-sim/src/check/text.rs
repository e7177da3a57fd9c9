//! The text checker: inserts and deletes of unique characters.
//!
//! Every insert puts in a character no other insert uses, so the text can
//! be checked like a set that also shrinks:
//!
//! * no read shows a character twice, or one never inserted (or whose
//!   insert failed);
//! * at the end, a character whose insert was acknowledged and that no
//!   delete (acknowledged or indeterminate) removed is present;
//! * at the end, a character an acknowledged delete removed is absent.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{reads, sample, Finding};
use crate::history::{Completed, Function, OpType, Value};

/// What the text checker found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TextReport {
    /// Inserts attempted.
    pub inserts: usize,
    /// Deletes attempted.
    pub deletes: usize,
    /// Length of the final text, per document.
    pub final_lengths: BTreeMap<usize, usize>,
}

#[derive(Default)]
struct Doc {
    /// Insert outcome per character.
    inserted: BTreeMap<char, OpType>,
    /// Delete outcomes per character.
    deleted: BTreeMap<char, Vec<OpType>>,
}

/// Checks every text in the history.
pub fn check(operations: &[Completed<'_>]) -> (TextReport, Vec<Finding>) {
    let mut docs: BTreeMap<usize, Doc> = BTreeMap::new();
    let mut report = TextReport::default();
    for op in operations.iter() {
        let (f, Value::Char { doc, ch }) = (op.invoke.f, op.value()) else {
            continue;
        };
        let entry = docs.entry(*doc).or_default();
        match (f, ch) {
            (Function::Insert, Some(ch)) => {
                report.inserts += 1;
                entry.inserted.insert(*ch, op.outcome());
            }
            (Function::Delete, Some(ch)) => {
                report.deletes += 1;
                entry.deleted.entry(*ch).or_default().push(op.outcome());
            }
            (Function::Delete, None) => report.deletes += 1,
            _ => {}
        }
    }
    let mut findings = Vec::new();
    let empty = Doc::default();
    for read in reads(operations) {
        let doc = docs.get(&read.doc).unwrap_or(&empty);
        findings.extend(check_read(read.doc, read.node, &read.seen.text, doc));
        if read.final_read {
            report
                .final_lengths
                .insert(read.doc, read.seen.text.chars().count());
            findings.extend(check_final(read.doc, read.node, &read.seen.text, doc));
        }
    }
    (report, findings)
}

fn check_read(doc_index: usize, node: usize, text: &str, doc: &Doc) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut seen = BTreeSet::new();
    let mut twice = Vec::new();
    let mut foreign = Vec::new();
    for ch in text.chars() {
        if !seen.insert(ch) {
            twice.push(ch);
        }
        let valid = doc
            .inserted
            .get(&ch)
            .is_some_and(|outcome| *outcome != OpType::Fail);
        if !valid {
            foreign.push(ch);
        }
    }
    if !twice.is_empty() {
        findings.push(Finding::new(
            "text",
            format!(
                "document {doc_index}: node {node} read characters twice: {}",
                sample(&twice)
            ),
        ));
    }
    if !foreign.is_empty() {
        findings.push(Finding::new(
            "text",
            format!(
                "document {doc_index}: node {node} read characters never inserted (or whose insert failed): {}",
                sample(&foreign)
            ),
        ));
    }
    findings
}

fn check_final(doc_index: usize, node: usize, text: &str, doc: &Doc) -> Vec<Finding> {
    let present: BTreeSet<char> = text.chars().collect();
    let mut lost = Vec::new();
    let mut resurrected = Vec::new();
    for (ch, outcome) in &doc.inserted {
        let deletes = doc.deleted.get(ch);
        let maybe_deleted = deletes.is_some_and(|d| d.iter().any(|o| *o != OpType::Fail));
        let surely_deleted = deletes.is_some_and(|d| d.contains(&OpType::Ok));
        if *outcome == OpType::Ok && !maybe_deleted && !present.contains(ch) {
            lost.push(*ch);
        }
        if surely_deleted && present.contains(ch) {
            resurrected.push(*ch);
        }
    }
    let mut findings = Vec::new();
    if !lost.is_empty() {
        findings.push(Finding::new(
            "text",
            format!("document {doc_index}: node {node} ends without acknowledged characters no delete removed: {}", sample(&lost)),
        ));
    }
    if !resurrected.is_empty() {
        findings.push(Finding::new(
            "text",
            format!("document {doc_index}: node {node} ends with characters an acknowledged delete removed: {}", sample(&resurrected)),
        ));
    }
    findings
}
