//! The client workload: operations drawn from the seed, run through the
//! same `Replica` API an application uses, and reads of what they left.
//!
//! Every document has the same shape, made by the change that creates it:
//!
//! ```text
//! ROOT
//! ├── set:     list of u64      grow-only set (list, so duplicates show)
//! ├── counter: counter          increments and decrements
//! ├── reg:     map k0..k4 → u64 registers written concurrently
//! ├── text:    text             inserts and deletes of unique characters
//! └── deps:    map aN/bN → N    causal pairs: bN only written after aN seen
//! ```

use std::collections::BTreeMap;

use automerge::transaction::{Transactable, Transaction};
use automerge::{Automerge, AutomergeError, ObjId, ObjType, ReadDoc, ScalarValue, ROOT};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::history::{Function, ReadValue, Value};
use crate::params::Params;

/// How many register keys the workload contends on.
pub const REGISTER_KEYS: u8 = 5;
/// Text characters are drawn from this block of code points, one per
/// insert, so each is unique (CJK ideographs: one UTF-16 unit, one code
/// point).
pub const TEXT_CHAR_BASE: u32 = 0x4E00;

/// One operation of the schedule, with every random choice made except
/// those that depend on what the node sees when it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "kebab-case")]
pub enum OpSpec {
    /// Add `element` to the set.
    Add {
        /// Document index (modulo the documents that exist).
        doc: u32,
        /// The element (unique in the schedule).
        element: u64,
    },
    /// Add `delta` to the counter.
    Increment {
        /// Document index.
        doc: u32,
        /// The delta (never zero).
        delta: i64,
    },
    /// Write `value` under register `key`.
    Put {
        /// Document index.
        doc: u32,
        /// The key, below [`REGISTER_KEYS`].
        key: u8,
        /// The value (unique in the schedule).
        value: u64,
    },
    /// Insert character `id` at `position / 65536` of the text.
    Insert {
        /// Document index.
        doc: u32,
        /// Where, as a fraction of the length.
        position: u16,
        /// Which character (unique in the schedule).
        id: u32,
    },
    /// Delete the character at `position / 65536` of the text.
    Delete {
        /// Document index.
        doc: u32,
        /// Where, as a fraction of the length.
        position: u16,
    },
    /// Write `a` of pair `id`.
    WriteA {
        /// Document index.
        doc: u32,
        /// The pair (unique in the schedule).
        id: u64,
    },
    /// Write `b` of one of the pairs whose `a` the node sees and whose `b`
    /// it does not: the `pick`-th of them, modulo their number.
    WriteB {
        /// Document index.
        doc: u32,
        /// Which candidate.
        pick: u32,
    },
    /// Create a document.
    Create,
    /// Delete a whole document.
    DeleteDoc {
        /// Document index.
        doc: u32,
    },
    /// Read a document.
    Read {
        /// Document index.
        doc: u32,
    },
}

/// An operation at a time, on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledOp {
    /// When, in chaos-phase milliseconds.
    pub at_ms: u64,
    /// On which node.
    pub node: usize,
    /// What.
    #[serde(flatten)]
    pub op: OpSpec,
}

impl OpSpec {
    /// The history function of this operation.
    pub fn function(&self) -> Function {
        match self {
            OpSpec::Add { .. } => Function::Add,
            OpSpec::Increment { .. } => Function::Increment,
            OpSpec::Put { .. } => Function::Put,
            OpSpec::Insert { .. } => Function::Insert,
            OpSpec::Delete { .. } => Function::Delete,
            OpSpec::WriteA { .. } => Function::WriteA,
            OpSpec::WriteB { .. } => Function::WriteB,
            OpSpec::Create => Function::Create,
            OpSpec::DeleteDoc { .. } => Function::DeleteDoc,
            OpSpec::Read { .. } => Function::Read,
        }
    }

    /// The document index the operation names, if any.
    pub fn doc(&self) -> Option<u32> {
        match self {
            OpSpec::Add { doc, .. }
            | OpSpec::Increment { doc, .. }
            | OpSpec::Put { doc, .. }
            | OpSpec::Insert { doc, .. }
            | OpSpec::Delete { doc, .. }
            | OpSpec::WriteA { doc, .. }
            | OpSpec::WriteB { doc, .. }
            | OpSpec::DeleteDoc { doc }
            | OpSpec::Read { doc } => Some(*doc),
            OpSpec::Create => None,
        }
    }
}

/// The character of text insert `id`.
pub fn text_char(id: u32) -> char {
    char::from_u32(TEXT_CHAR_BASE + id).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// Draws the operations of a run: times spread uniformly over the chaos
/// phase, kinds by weight, nodes and documents uniformly; with chance
/// [`Params::burst`] an operation shares the time and node of the one
/// before it, and runs in the same driver turn.
pub fn generate(params: &Params, rng: &mut impl Rng) -> Vec<ScheduledOp> {
    let mut times: Vec<u64> = (0..params.operations)
        .map(|_| rng.gen_range(0..params.chaos_ms.max(1)))
        .collect();
    times.sort_unstable();
    let mut documents = params.documents.max(1) as u32;
    let mut ops: Vec<ScheduledOp> = Vec::with_capacity(times.len());
    for (index, at_ms) in times.into_iter().enumerate() {
        let doc = rng.gen_range(0..documents);
        let op = draw_op(params, rng, index, doc);
        if op == OpSpec::Create {
            documents += 1;
        }
        let node = rng.gen_range(0..params.nodes);
        // A burst: this operation joins the turn of the one before it.
        let burst = params.burst > 0.0 && rng.gen_bool(params.burst.clamp(0.0, 1.0));
        let (at_ms, node) = match ops.last() {
            Some(previous) if burst => (previous.at_ms, previous.node),
            _ => (at_ms, node),
        };
        ops.push(ScheduledOp { at_ms, node, op });
    }
    ops
}

fn draw_op(params: &Params, rng: &mut impl Rng, index: usize, doc: u32) -> OpSpec {
    let w = &params.weights;
    let mut roll = rng.gen_range(0..w.total().max(1));
    let mut next = |weight: u64| {
        let hit = roll < weight;
        roll = roll.saturating_sub(weight);
        hit
    };
    let unique = index as u64 + 1;
    if next(w.set) {
        OpSpec::Add {
            doc,
            element: unique,
        }
    } else if next(w.counter) {
        let magnitude = rng.gen_range(1..=5);
        let delta = if rng.gen_bool(0.5) {
            magnitude
        } else {
            -magnitude
        };
        OpSpec::Increment { doc, delta }
    } else if next(w.register) {
        let key = rng.gen_range(0..REGISTER_KEYS);
        OpSpec::Put {
            doc,
            key,
            value: unique,
        }
    } else if next(w.text) {
        let position = rng.gen();
        if rng.gen_bool(0.3) {
            OpSpec::Delete { doc, position }
        } else {
            OpSpec::Insert {
                doc,
                position,
                id: index as u32,
            }
        }
    } else if next(w.deps) {
        if rng.gen_bool(0.5) {
            OpSpec::WriteA { doc, id: unique }
        } else {
            OpSpec::WriteB {
                doc,
                pick: rng.gen(),
            }
        }
    } else if next(w.read) {
        OpSpec::Read { doc }
    } else if next(w.delete_doc) {
        OpSpec::DeleteDoc { doc }
    } else {
        OpSpec::Create
    }
}

/// Makes a new document's shape.
pub fn init_document(tx: &mut Transaction<'_>) -> Result<(), AutomergeError> {
    tx.put_object(ROOT, "set", ObjType::List)?;
    tx.put(ROOT, "counter", ScalarValue::counter(0))?;
    tx.put_object(ROOT, "reg", ObjType::Map)?;
    tx.put_object(ROOT, "text", ObjType::Text)?;
    tx.put_object(ROOT, "deps", ObjType::Map)?;
    Ok(())
}

/// The object under `ROOT/key`, or an error if this node has not got it.
fn object(doc: &impl ReadDoc, key: &str) -> Result<ObjId, AutomergeError> {
    match doc.get(ROOT, key)? {
        Some((automerge::Value::Object(_), id)) => Ok(id),
        _ => Err(AutomergeError::InvalidObjId(format!(
            "document has no `{key}` yet"
        ))),
    }
}

fn as_u64(value: &automerge::Value<'_>) -> Option<u64> {
    value.as_u64()
}

fn register_values(doc: &impl ReadDoc, reg: &ObjId, key: u8) -> Result<Vec<u64>, AutomergeError> {
    let mut values: Vec<u64> = doc
        .get_all(reg, format!("k{key}"))?
        .iter()
        .filter_map(|(value, _)| as_u64(value))
        .collect();
    // `get` returns the winner; put it first.
    if let Some(winner) = doc
        .get(reg, format!("k{key}"))?
        .and_then(|(value, _)| as_u64(&value))
    {
        values.retain(|v| *v != winner);
        values.insert(0, winner);
    }
    Ok(values)
}

/// What running an operation's closure produced: the history value, and
/// whether it changed nothing (then it certainly did not happen).
pub struct Outcome {
    /// The value to record.
    pub value: Value,
    /// Why nothing was done, if nothing was.
    pub nothing_done: Option<String>,
}

/// Runs a write operation inside a transaction. `doc` is the resolved
/// document index.
pub fn write(tx: &mut Transaction<'_>, op: &OpSpec, doc: usize) -> Result<Outcome, AutomergeError> {
    let done = |value| {
        Ok(Outcome {
            value,
            nothing_done: None,
        })
    };
    match *op {
        OpSpec::Add { element, .. } => {
            let list = object(tx, "set")?;
            let len = tx.length(&list);
            tx.insert(&list, len, element)?;
            done(Value::Element { doc, element })
        }
        OpSpec::Increment { delta, .. } => {
            if !matches!(tx.get(ROOT, "counter")?, Some((value, _)) if value.is_counter()) {
                return Err(AutomergeError::MissingCounter);
            }
            tx.increment(ROOT, "counter", delta)?;
            done(Value::Delta { doc, delta })
        }
        OpSpec::Put { key, value, .. } => {
            let reg = object(tx, "reg")?;
            let overwrote = register_values(tx, &reg, key)?;
            tx.put(&reg, format!("k{key}"), value)?;
            done(Value::Register {
                doc,
                key,
                value,
                overwrote,
            })
        }
        OpSpec::Insert { position, id, .. } => {
            let text = object(tx, "text")?;
            let len = tx.length(&text);
            let at = (usize::from(position) * (len + 1)) >> 16;
            let ch = text_char(id);
            tx.splice_text(&text, at.min(len), 0, &ch.to_string())?;
            done(Value::Char { doc, ch: Some(ch) })
        }
        OpSpec::Delete { position, .. } => delete(tx, position, doc),
        OpSpec::WriteA { id, .. } => {
            let deps = object(tx, "deps")?;
            tx.put(&deps, format!("a{id}"), id)?;
            done(Value::Pair { doc, id: Some(id) })
        }
        OpSpec::WriteB { pick, .. } => write_b(tx, pick, doc),
        OpSpec::Create | OpSpec::Read { .. } | OpSpec::DeleteDoc { .. } => {
            unreachable!("{op:?} is not a write; the runner handles it")
        }
    }
}

fn delete(tx: &mut Transaction<'_>, position: u16, doc: usize) -> Result<Outcome, AutomergeError> {
    let text = object(tx, "text")?;
    let content: Vec<char> = tx.text(&text)?.chars().collect();
    if content.is_empty() {
        return Ok(Outcome {
            value: Value::Char { doc, ch: None },
            nothing_done: Some("the text is empty".into()),
        });
    }
    let at = (usize::from(position) * content.len()) >> 16;
    let at = at.min(content.len() - 1);
    tx.splice_text(&text, at, 1, "")?;
    Ok(Outcome {
        value: Value::Char {
            doc,
            ch: Some(content[at]),
        },
        nothing_done: None,
    })
}

fn write_b(tx: &mut Transaction<'_>, pick: u32, doc: usize) -> Result<Outcome, AutomergeError> {
    let deps = object(tx, "deps")?;
    let (a, b) = pairs(tx, &deps);
    let candidates: Vec<u64> = a.into_iter().filter(|id| !b.contains(id)).collect();
    if candidates.is_empty() {
        return Ok(Outcome {
            value: Value::Pair { doc, id: None },
            nothing_done: Some("no pair whose a is visible and b is not".into()),
        });
    }
    let id = candidates[pick as usize % candidates.len()];
    tx.put(&deps, format!("b{id}"), id)?;
    Ok(Outcome {
        value: Value::Pair { doc, id: Some(id) },
        nothing_done: None,
    })
}

/// The pair ids whose `a` and whose `b` are visible.
fn pairs(doc: &impl ReadDoc, deps: &ObjId) -> (Vec<u64>, Vec<u64>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for key in doc.keys(deps) {
        let (side, id) = key.split_at(1.min(key.len()));
        let Ok(id) = id.parse::<u64>() else { continue };
        match side {
            "a" => a.push(id),
            "b" => b.push(id),
            _ => {}
        }
    }
    a.sort_unstable();
    b.sort_unstable();
    (a, b)
}

/// Reads everything the workload wrote to `doc`. With `check_changes`,
/// also counts changes whose dependencies `doc` lacks (a walk over every
/// change: the final reads do it, reads during the chaos rely on the
/// cheaper causal-pair check).
pub fn read(doc: &Automerge, check_changes: bool) -> ReadValue {
    let mut value = ReadValue::default();
    if let Ok(list) = object(doc, "set") {
        value.set = doc
            .list_range(&list, ..)
            .filter_map(|item| as_u64(&automerge::Value::from(item.value)))
            .collect();
    }
    value.counter = doc
        .get(ROOT, "counter")
        .ok()
        .flatten()
        .and_then(|(v, _)| v.as_i64());
    if let Ok(reg) = object(doc, "reg") {
        for key in 0..REGISTER_KEYS {
            if let Ok(values) = register_values(doc, &reg, key) {
                if !values.is_empty() {
                    value.registers.insert(key, values);
                }
            }
        }
    }
    if let Ok(text) = object(doc, "text") {
        value.text = doc.text(&text).unwrap_or_default();
    }
    if let Ok(deps) = object(doc, "deps") {
        (value.deps_a, value.deps_b) = pairs(doc, &deps);
    }
    if check_changes {
        value.changes_missing_deps = changes_missing_deps(doc);
    }
    value
}

/// How many changes of `doc` have a dependency `doc` does not hold: a
/// change visible without its dependencies. Always zero for a sound
/// engine.
pub fn changes_missing_deps(doc: &Automerge) -> usize {
    let changes = doc.get_changes_meta(&[]);
    let hashes: std::collections::BTreeSet<_> = changes.iter().map(|c| c.hash).collect();
    changes
        .iter()
        .filter(|change| change.deps.iter().any(|dep| !hashes.contains(dep)))
        .count()
}

/// The documents known to the simulation, in creation order.
#[derive(Debug, Default, Clone)]
pub struct Documents {
    ids: Vec<murmur_core::DocumentId>,
    /// Index of each id.
    index: BTreeMap<murmur_core::DocumentId, usize>,
}

impl Documents {
    /// Records a new document; returns its index.
    pub fn add(&mut self, id: murmur_core::DocumentId) -> usize {
        let index = self.ids.len();
        self.ids.push(id);
        self.index.insert(id, index);
        index
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True if none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The document a schedule index names (modulo the count), with its
    /// resolved index.
    pub fn resolve(&self, doc: u32) -> Option<(usize, murmur_core::DocumentId)> {
        if self.ids.is_empty() {
            return None;
        }
        let index = doc as usize % self.ids.len();
        Some((index, self.ids[index]))
    }

    /// Every id, in creation order.
    pub fn ids(&self) -> &[murmur_core::DocumentId] {
        &self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> Automerge {
        let mut doc = Automerge::new();
        doc.transact(init_document).expect("init");
        doc
    }

    fn run(doc: &mut Automerge, op: OpSpec) -> Outcome {
        doc.transact(|tx| write(tx, &op, 0))
            .map(|success| success.result)
            .expect("runs")
    }

    #[test]
    fn every_write_shows_in_a_read() {
        let mut doc = fresh();
        run(&mut doc, OpSpec::Add { doc: 0, element: 7 });
        run(&mut doc, OpSpec::Increment { doc: 0, delta: -3 });
        run(
            &mut doc,
            OpSpec::Put {
                doc: 0,
                key: 1,
                value: 9,
            },
        );
        run(
            &mut doc,
            OpSpec::Insert {
                doc: 0,
                position: 0,
                id: 0,
            },
        );
        run(&mut doc, OpSpec::WriteA { doc: 0, id: 4 });
        let b = run(&mut doc, OpSpec::WriteB { doc: 0, pick: 17 });
        assert_eq!(
            b.value,
            Value::Pair {
                doc: 0,
                id: Some(4)
            }
        );
        let seen = read(&doc, true);
        assert_eq!(seen.set, vec![7]);
        assert_eq!(seen.counter, Some(-3));
        assert_eq!(seen.registers.get(&1), Some(&vec![9]));
        assert_eq!(seen.text, text_char(0).to_string());
        assert_eq!((seen.deps_a, seen.deps_b), (vec![4], vec![4]));
        assert_eq!(seen.changes_missing_deps, 0);
    }

    #[test]
    fn a_delete_names_the_character_it_removed_and_an_empty_text_does_nothing() {
        let mut doc = fresh();
        let empty = run(
            &mut doc,
            OpSpec::Delete {
                doc: 0,
                position: 0,
            },
        );
        assert!(empty.nothing_done.is_some());
        run(
            &mut doc,
            OpSpec::Insert {
                doc: 0,
                position: 0,
                id: 3,
            },
        );
        let deleted = run(
            &mut doc,
            OpSpec::Delete {
                doc: 0,
                position: 60_000,
            },
        );
        assert_eq!(
            deleted.value,
            Value::Char {
                doc: 0,
                ch: Some(text_char(3))
            }
        );
        assert_eq!(read(&doc, true).text, "");
    }

    #[test]
    fn a_put_records_what_it_replaced() {
        let mut doc = fresh();
        run(
            &mut doc,
            OpSpec::Put {
                doc: 0,
                key: 0,
                value: 1,
            },
        );
        let second = run(
            &mut doc,
            OpSpec::Put {
                doc: 0,
                key: 0,
                value: 2,
            },
        );
        assert_eq!(
            second.value,
            Value::Register {
                doc: 0,
                key: 0,
                value: 2,
                overwrote: vec![1]
            }
        );
    }

    #[test]
    fn writes_on_a_document_without_its_shape_fail() {
        let mut doc = Automerge::new();
        let result = doc.transact(|tx| write(tx, &OpSpec::Increment { doc: 0, delta: 1 }, 0));
        assert!(result.is_err());
    }
}
