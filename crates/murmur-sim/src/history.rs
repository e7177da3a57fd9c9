//! The history: every operation as an invocation, then its outcome.
//!
//! As in Jepsen, an operation is invoked, then completes as `ok` (it
//! happened), `fail` (it certainly did not) or `info` (nobody can tell).
//! A write here completes `ok` when its replica acknowledges it
//! [`Ack::Durable`]; `fail` when the replica refused it (node down, document
//! unknown to that node); `info` when its node crashed after applying it but
//! before it was durable. Reads complete at once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What an event says about its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    /// The operation began.
    Invoke,
    /// It happened.
    Ok,
    /// It certainly did not happen.
    Fail,
    /// It may or may not have happened.
    Info,
}

/// How far a write got, as its replica said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ack {
    /// In memory.
    Applied,
    /// Flushed to the store.
    Durable,
}

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Function {
    /// Add an element to the grow-only set.
    Add,
    /// Add a delta (positive or negative) to the counter.
    Increment,
    /// Write a register (a shared map key).
    Put,
    /// Insert a character into the text.
    Insert,
    /// Delete a character from the text.
    Delete,
    /// Write `a` of a causal pair.
    WriteA,
    /// Write `b` of a causal pair, having seen its `a`.
    WriteB,
    /// Create a document.
    Create,
    /// Delete a whole document.
    DeleteDoc,
    /// Read a document.
    Read,
}

/// What a read saw of one document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadValue {
    /// The set's elements, in list order (duplicates kept).
    pub set: Vec<u64>,
    /// The counter, if the document has one.
    pub counter: Option<i64>,
    /// Each register key's values (the winner first, then any conflicts).
    pub registers: BTreeMap<u8, Vec<u64>>,
    /// The text.
    pub text: String,
    /// Causal pairs whose `a` is visible.
    pub deps_a: Vec<u64>,
    /// Causal pairs whose `b` is visible.
    pub deps_b: Vec<u64>,
    /// Changes whose dependencies are not all present (must be zero;
    /// counted by the final reads).
    pub changes_missing_deps: usize,
}

/// An operation's argument and, once known, its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Value {
    /// Nothing.
    None,
    /// A set element.
    Element {
        /// Document index.
        doc: usize,
        /// The element.
        element: u64,
    },
    /// A counter delta.
    Delta {
        /// Document index.
        doc: usize,
        /// The delta.
        delta: i64,
    },
    /// A register write.
    Register {
        /// Document index.
        doc: usize,
        /// The key.
        key: u8,
        /// The value written.
        value: u64,
        /// The values the writer saw under the key and replaced.
        overwrote: Vec<u64>,
    },
    /// A text insert or delete.
    Char {
        /// Document index.
        doc: usize,
        /// The character inserted, or deleted (if there was one to delete).
        ch: Option<char>,
    },
    /// A causal pair's `a` or `b`.
    Pair {
        /// Document index.
        doc: usize,
        /// The pair, if one was written.
        id: Option<u64>,
    },
    /// A created document's index.
    Document {
        /// Its index, once created.
        doc: Option<usize>,
    },
    /// A read.
    Read {
        /// Document index.
        doc: usize,
        /// True for the reads after convergence, on every node.
        final_read: bool,
        /// What it saw (on `ok`).
        seen: Option<Box<ReadValue>>,
    },
}

impl Value {
    /// The document index the operation is about, if any.
    pub fn doc(&self) -> Option<usize> {
        match self {
            Value::Element { doc, .. }
            | Value::Delta { doc, .. }
            | Value::Register { doc, .. }
            | Value::Char { doc, .. }
            | Value::Pair { doc, .. }
            | Value::Read { doc, .. } => Some(*doc),
            Value::Document { doc } => *doc,
            Value::None => None,
        }
    }
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// The operation (its index in the schedule; final reads come after).
    pub op: usize,
    /// Invoke, ok, fail or info.
    #[serde(rename = "type")]
    pub kind: OpType,
    /// Virtual milliseconds since the run began.
    pub time_ms: u64,
    /// The node it ran on.
    pub node: usize,
    /// What it does.
    pub f: Function,
    /// Argument and result.
    pub value: Value,
    /// The acknowledgement level reached (writes).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ack: Option<Ack>,
    /// Why it failed or is indeterminate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// The whole history, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The events.
    pub events: Vec<HistoryEvent>,
}

/// One operation, from its invocation and completion events.
#[derive(Debug, Clone, Copy)]
pub struct Completed<'a> {
    /// The invocation.
    pub invoke: &'a HistoryEvent,
    /// Its position in the history.
    pub invoke_index: usize,
    /// The completion (`None` if it never completed).
    pub complete: Option<&'a HistoryEvent>,
    /// Its position in the history.
    pub complete_index: Option<usize>,
}

impl Completed<'_> {
    /// ok, fail or info (`info` if it never completed).
    pub fn outcome(&self) -> OpType {
        self.complete.map_or(OpType::Info, |event| event.kind)
    }

    /// The completion's value if there is one, else the invocation's.
    pub fn value(&self) -> &Value {
        self.complete
            .map_or(&self.invoke.value, |event| &event.value)
    }
}

impl History {
    /// Appends an event.
    pub fn push(&mut self, event: HistoryEvent) {
        self.events.push(event);
    }

    /// Every operation with its completion, in invocation order.
    pub fn operations(&self) -> Vec<Completed<'_>> {
        let mut by_op: BTreeMap<usize, usize> = BTreeMap::new();
        let mut operations: Vec<Completed<'_>> = Vec::new();
        for (index, event) in self.events.iter().enumerate() {
            match event.kind {
                OpType::Invoke => {
                    by_op.insert(event.op, operations.len());
                    operations.push(Completed {
                        invoke: event,
                        invoke_index: index,
                        complete: None,
                        complete_index: None,
                    });
                }
                _ => {
                    if let Some(&slot) = by_op.get(&event.op) {
                        operations[slot].complete = Some(event);
                        operations[slot].complete_index = Some(index);
                    }
                }
            }
        }
        operations
    }

    /// Counts of (ok, fail, info) completions of operations numbered below
    /// `below` (the schedule's, not the final reads), never-completed
    /// counted as info.
    pub fn outcome_counts(&self, below: usize) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for operation in self.operations().iter().filter(|op| op.invoke.op < below) {
            match operation.outcome() {
                OpType::Ok => counts.0 += 1,
                OpType::Fail => counts.1 += 1,
                _ => counts.2 += 1,
            }
        }
        counts
    }
}
