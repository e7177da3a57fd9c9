//! The checkers: what "correct" means, applied to a history.
//!
//! Each checker reads the history (and the final reads in it) and returns a
//! report plus [`Finding`]s, one per problem. A run is valid when no
//! checker, and none of the runner's own structural checks (convergence,
//! liveness, dependencies, rejected messages, durable acknowledgements),
//! found anything.

pub mod counter;
pub mod deps;
pub mod register;
pub mod set_full;
pub mod text;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::{Completed, Function, History, OpType, ReadValue, Value};

/// One problem a checker found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Finding {
    /// Which checker: `set`, `counter`, `register`, `text`, `deps`,
    /// `documents`, `convergence`, `liveness`, `dependencies`, `rejections`,
    /// `pushes`, `durable-ack`, `setup`.
    pub checker: String,
    /// What it found, in a sentence.
    pub message: String,
}

impl Finding {
    /// A finding of `checker`.
    pub fn new(checker: &str, message: impl Into<String>) -> Finding {
        Finding {
            checker: checker.to_owned(),
            message: message.into(),
        }
    }
}

/// Every checker's verdict on one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// True when nothing was found.
    pub valid: bool,
    /// Everything found.
    pub findings: Vec<Finding>,
    /// The grow-only set, Jepsen's set-full.
    pub set: set_full::SetFullReport,
    /// The counters.
    pub counter: counter::CounterReport,
    /// The registers.
    pub register: register::RegisterReport,
    /// The texts.
    pub text: text::TextReport,
    /// The causal pairs.
    pub deps: deps::DepsReport,
}

impl CheckReport {
    /// The names of the checkers that found something, sorted: what a
    /// shrunk run must still fail with.
    pub fn signature(&self) -> BTreeSet<String> {
        self.findings.iter().map(|f| f.checker.clone()).collect()
    }
}

/// Runs every checker over `history`, adding the runner's own `findings`.
pub fn check(history: &History, findings: Vec<Finding>) -> CheckReport {
    let mut operations = history.operations();
    // A deleted document's operations fail or vanish by the deletion rule
    // (checked by the runner); the checkers below look at the documents
    // that remain. A deletion attempted at all may have spread.
    let deleted: BTreeSet<usize> = operations
        .iter()
        .filter(|op| op.invoke.f == Function::DeleteDoc)
        .filter_map(|op| match op.invoke.value {
            Value::Document { doc } => doc,
            _ => None,
        })
        .collect();
    operations.retain(|op| {
        op.invoke
            .value
            .doc()
            .is_none_or(|doc| !deleted.contains(&doc))
    });
    let mut all = findings;
    let (set, found) = set_full::check(&operations);
    all.extend(found);
    let (counter, found) = counter::check(&operations);
    all.extend(found);
    let (register, found) = register::check(&operations);
    all.extend(found);
    let (text, found) = text::check(&operations);
    all.extend(found);
    let (deps, found) = deps::check(&operations);
    all.extend(found);
    all.extend(documents(&operations));
    CheckReport {
        valid: all.is_empty(),
        findings: all,
        set,
        counter,
        register,
        text,
        deps,
    }
}

/// An ok read: its history index, time, node, document, finality and what
/// it saw.
pub struct Read<'a> {
    /// Position of its completion in the history.
    pub index: usize,
    /// When.
    pub time_ms: u64,
    /// Where.
    pub node: usize,
    /// Which document.
    pub doc: usize,
    /// After convergence?
    pub final_read: bool,
    /// What it saw.
    pub seen: &'a ReadValue,
}

/// Every ok read, in history order.
pub fn reads<'a>(operations: &[Completed<'a>]) -> Vec<Read<'a>> {
    operations
        .iter()
        .filter(|op| op.invoke.f == Function::Read && op.outcome() == OpType::Ok)
        .filter_map(|op| {
            let complete = op.complete?;
            match &complete.value {
                Value::Read {
                    doc,
                    final_read,
                    seen: Some(seen),
                } => Some(Read {
                    index: op.complete_index.unwrap_or(op.invoke_index),
                    time_ms: complete.time_ms,
                    node: complete.node,
                    doc: *doc,
                    final_read: *final_read,
                    seen,
                }),
                _ => None,
            }
        })
        .collect()
}

/// Shortens a list for a message.
pub fn sample<T: std::fmt::Debug>(items: &[T]) -> String {
    const SHOWN: usize = 10;
    if items.len() <= SHOWN {
        format!("{items:?}")
    } else {
        format!("{:?} and {} more", &items[..SHOWN], items.len() - SHOWN)
    }
}

/// Documents: one whose creation was acknowledged (or made before the
/// chaos) must be readable on every node at the end.
fn documents(operations: &[Completed<'_>]) -> Vec<Finding> {
    let mut created: BTreeMap<usize, OpType> = BTreeMap::new();
    for op in operations
        .iter()
        .filter(|op| op.invoke.f == Function::Create)
    {
        if let Value::Document { doc: Some(doc) } = op.invoke.value {
            created.insert(doc, op.outcome());
        }
    }
    let mut findings = Vec::new();
    for op in operations.iter().filter(|op| op.invoke.f == Function::Read) {
        let Value::Read {
            doc,
            final_read: true,
            ..
        } = op.invoke.value
        else {
            continue;
        };
        let acknowledged = created
            .get(&doc)
            .is_none_or(|outcome| *outcome == OpType::Ok);
        if acknowledged && op.outcome() != OpType::Ok {
            let why = op
                .complete
                .and_then(|c| c.error.clone())
                .unwrap_or_default();
            findings.push(Finding::new(
                "documents",
                format!(
                    "document {doc}, created and acknowledged, cannot be read on node {} at the end: {why}",
                    op.invoke.node
                ),
            ));
        }
    }
    findings
}
