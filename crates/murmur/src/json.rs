//! Documents as JSON: reading a document, changing it with JSON operations,
//! and patches rendered as JSON.
//!
//! This is the format of the `murmur` binary's HTTP API, usable from Rust
//! too. A change is a list of [`Op`]s applied in one Automerge transaction:
//! all of them or none.
//!
//! ```json
//! [
//!   {"op": "put",          "path": ["title"],        "value": "Shopping"},
//!   {"op": "put",          "path": ["items"],        "value": []},
//!   {"op": "insert",       "path": ["items", 0],     "value": {"what": "milk", "done": false}},
//!   {"op": "put_counter",  "path": ["visits"],       "value": 0},
//!   {"op": "increment",    "path": ["visits"],       "by": 1},
//!   {"op": "put_text",     "path": ["notes"],        "text": "hello"},
//!   {"op": "splice_text",  "path": ["notes"],        "pos": 5, "del": 0, "text": " world"},
//!   {"op": "delete",       "path": ["items", 0]}
//! ]
//! ```
//!
//! A path is a list of map keys (strings) and list indexes (non-negative
//! integers) from the document root. JSON values become Automerge values:
//! objects become maps, arrays lists, strings scalar strings (use
//! `put_text` for a collaborative Text object), integers `int` (or `uint`
//! past `i64::MAX`), other numbers `f64`, booleans and null themselves.
//! Counters are made with `put_counter` and changed with `increment`.
//! Text positions (`pos`, `del`) count Unicode code points.
//!
//! ```
//! use murmur::json::{apply_ops, document_to_json, parse_ops};
//! use murmur::automerge::Automerge;
//!
//! let ops = parse_ops(serde_json::json!([
//!     {"op": "put", "path": ["todo"], "value": ["milk"]},
//!     {"op": "insert", "path": ["todo", 1], "value": "eggs"},
//! ]))
//! .unwrap();
//! let mut doc = Automerge::new();
//! doc.transact(|tx| apply_ops(tx, &ops)).unwrap();
//! assert_eq!(document_to_json(&doc), serde_json::json!({"todo": ["milk", "eggs"]}));
//! ```

use std::fmt;

use automerge::transaction::Transactable;
use automerge::{
    AutoSerde, AutomergeError, ObjId, ObjType, Patch, PatchAction, Prop, ReadDoc, ScalarValue,
    Value, ROOT,
};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};

use crate::{Ack, DocHandle, Error, Receipt};

/// One step of a path: a map key or a list index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PathElement {
    /// A key in a map.
    Key(String),
    /// A position in a list or text.
    Index(usize),
}

impl From<PathElement> for Prop {
    fn from(element: PathElement) -> Prop {
        match element {
            PathElement::Key(key) => Prop::Map(key),
            PathElement::Index(index) => Prop::Seq(index),
        }
    }
}

impl fmt::Display for PathElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathElement::Key(key) => write!(f, "{key:?}"),
            PathElement::Index(index) => write!(f, "{index}"),
        }
    }
}

impl<'de> Deserialize<'de> for PathElement {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ElementVisitor;
        impl Visitor<'_> for ElementVisitor {
            type Value = PathElement;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map key (string) or a list index (non-negative integer)")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<PathElement, E> {
                Ok(PathElement::Key(key.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, index: u64) -> Result<PathElement, E> {
                usize::try_from(index)
                    .map(PathElement::Index)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(index), &self))
            }
            fn visit_i64<E: de::Error>(self, index: i64) -> Result<PathElement, E> {
                match u64::try_from(index) {
                    Ok(index) => self.visit_u64(index),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(index), &self)),
                }
            }
        }
        deserializer.deserialize_any(ElementVisitor)
    }
}

/// A path from the document root.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Path(pub Vec<PathElement>);

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, element) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{element}")?;
        }
        f.write_str("]")
    }
}

/// One operation of a JSON change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// Sets the map key or list index at `path` to `value` (maps and lists
    /// are created as Automerge objects; strings are scalar strings).
    Put {
        /// Where.
        path: Path,
        /// What.
        value: Json,
    },
    /// Sets `path` to a new Text object holding `text`.
    PutText {
        /// Where.
        path: Path,
        /// Its initial content.
        text: String,
    },
    /// Sets `path` to a new counter starting at `value`.
    PutCounter {
        /// Where.
        path: Path,
        /// Its initial value.
        #[serde(default)]
        value: i64,
    },
    /// Inserts `value` into a list; the last element of `path` is the
    /// index (the list's length appends).
    Insert {
        /// The list, then the index.
        path: Path,
        /// What.
        value: Json,
    },
    /// Removes a map key or a list element.
    Delete {
        /// What.
        path: Path,
    },
    /// Adds `by` (may be negative) to the counter at `path`.
    Increment {
        /// The counter.
        path: Path,
        /// How much.
        by: i64,
    },
    /// In the Text object at `path`, deletes `del` characters at `pos` and
    /// inserts `text` there.
    SpliceText {
        /// The Text object.
        path: Path,
        /// Where, in Unicode code points.
        pos: usize,
        /// How many code points to delete.
        #[serde(default)]
        del: usize,
        /// What to insert.
        #[serde(default)]
        text: String,
    },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Put { .. } => "put",
            Op::PutText { .. } => "put_text",
            Op::PutCounter { .. } => "put_counter",
            Op::Insert { .. } => "insert",
            Op::Delete { .. } => "delete",
            Op::Increment { .. } => "increment",
            Op::SpliceText { .. } => "splice_text",
        }
    }

    fn path(&self) -> &Path {
        match self {
            Op::Put { path, .. }
            | Op::PutText { path, .. }
            | Op::PutCounter { path, .. }
            | Op::Insert { path, .. }
            | Op::Delete { path }
            | Op::Increment { path, .. }
            | Op::SpliceText { path, .. } => path,
        }
    }
}

/// Why a JSON change was refused. Either way nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The operation is not well formed (unknown op, missing or mistyped
    /// field).
    #[error("ops[{op}]: {message}")]
    Malformed {
        /// Its position in the list.
        op: usize,
        /// What is wrong.
        message: String,
    },
    /// The ops would make more Automerge operations than one change may
    /// hold ([`MAX_CHANGE_OPS`]): split them into several changes.
    #[error("the ops make {ops} Automerge operations, more than the limit of {max} for one change: split them into several changes")]
    TooLarge {
        /// Operations they would make.
        ops: usize,
        /// The limit.
        max: usize,
    },
    /// An `increment` would take the counter past the range of a 64-bit
    /// integer (Automerge would wrap it around).
    #[error("ops[{op}] (increment at {path}): the counter is {value}: adding {by} overflows a 64-bit integer")]
    CounterOverflow {
        /// Its position in the list.
        op: usize,
        /// Its path, as written.
        path: String,
        /// The counter's value before the op.
        value: i64,
        /// What the op adds.
        by: i64,
    },
    /// The operation is well formed but does not fit the document (no such
    /// key, a list where a map was expected, index out of range, ...).
    #[error("ops[{op}] ({name} at {path}): {message}")]
    DoesNotApply {
        /// Its position in the list.
        op: usize,
        /// The op's name.
        name: &'static str,
        /// Its path, as written.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Why [`apply`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// An operation was refused; nothing changed.
    #[error(transparent)]
    Op(#[from] OpError),
    /// The node refused (unknown document, shut down, ...).
    #[error(transparent)]
    Node(#[from] Error),
}

/// Parses a JSON array of operations, naming the first bad one.
pub fn parse_ops(ops: Json) -> Result<Vec<Op>, OpError> {
    let Json::Array(ops) = ops else {
        return Err(OpError::Malformed {
            op: 0,
            message: format!("expected an array of ops, found {}", json_kind(&ops)),
        });
    };
    ops.into_iter()
        .enumerate()
        .map(|(op, value)| {
            Op::deserialize(value).map_err(|e| OpError::Malformed {
                op,
                message: e.to_string(),
            })
        })
        .collect()
}

/// Applies `ops` in order inside `tx`. On an error the caller must roll
/// the transaction back (as `transact` and [`DocHandle::change`] do when
/// the closure fails): earlier ops may have been applied.
pub fn apply_ops<T: Transactable + ReadDoc>(tx: &mut T, ops: &[Op]) -> Result<(), OpError> {
    for (index, op) in ops.iter().enumerate() {
        if let Op::Increment { path, by } = op {
            if let Some(value) = counter_value(tx, path) {
                if value.checked_add(*by).is_none() {
                    return Err(OpError::CounterOverflow {
                        op: index,
                        path: path.to_string(),
                        value,
                        by: *by,
                    });
                }
            }
        }
        apply_op(tx, op).map_err(|message| OpError::DoesNotApply {
            op: index,
            name: op.name(),
            path: op.path().to_string(),
            message,
        })?;
    }
    Ok(())
}

/// Most Automerge operations one JSON change may make, checked before the
/// change reaches the node, so that a request too big costs it nothing. A
/// change runs on the node's engine task, at about 60,000 list insertions
/// a second on one core (Automerge 0.12): 20,000 held it for 0.3–0.45 s
/// on the project's machine (BENCHMARKS.md). The engine's own bound,
/// [`murmur_core::Config::max_change_ops`], is the backstop.
pub const MAX_CHANGE_OPS: usize = 20_000;

/// How many Automerge operations `ops` make at least: one per value put or
/// inserted (nested ones included), one per character of text inserted or
/// deleted, one per counter change or deletion.
pub fn operation_count(ops: &[Op]) -> usize {
    fn value(json: &Json) -> usize {
        match json {
            Json::Array(items) => 1 + items.iter().map(value).sum::<usize>(),
            Json::Object(entries) => 1 + entries.values().map(value).sum::<usize>(),
            _ => 1,
        }
    }
    ops.iter()
        .map(|op| match op {
            Op::Put { value: json, .. } | Op::Insert { value: json, .. } => value(json),
            Op::PutText { text, .. } => 1 + text.chars().count(),
            Op::SpliceText { del, text, .. } => del.saturating_add(text.chars().count()),
            Op::PutCounter { .. } | Op::Delete { .. } | Op::Increment { .. } => 1,
        })
        .fold(0, usize::saturating_add)
}

/// Applies `ops` to the document in one change acknowledged at `ack`: all
/// of them or, on an error, none. Ops that make more than
/// [`MAX_CHANGE_OPS`] Automerge operations are refused
/// ([`OpError::TooLarge`]) before they reach the node.
pub async fn apply(
    handle: &DocHandle,
    ops: Vec<Op>,
    ack: Ack,
    message: Option<String>,
) -> Result<Receipt<()>, ApplyError> {
    let count = operation_count(&ops);
    if count > MAX_CHANGE_OPS {
        return Err(ApplyError::Op(OpError::TooLarge {
            ops: count,
            max: MAX_CHANGE_OPS,
        }));
    }
    match handle
        .try_change_described(ack, message, move |tx| apply_ops(tx, &ops))
        .await
    {
        Ok(Ok(receipt)) => Ok(receipt),
        Ok(Err(refused)) => Err(ApplyError::Op(refused)),
        Err(error) => Err(ApplyError::Node(error)),
    }
}

/// Step result: `Err` is a message for [`OpError::DoesNotApply`].
type Step<T> = Result<T, String>;

fn apply_op<T: Transactable + ReadDoc>(tx: &mut T, op: &Op) -> Step<()> {
    match op {
        Op::Put { path, value } => {
            let (obj, prop) = target(tx, path, Slot::Existing { or_new_key: true })?;
            put_json(tx, &obj, prop, value)
        }
        Op::PutText { path, text } => {
            let (obj, prop) = target(tx, path, Slot::Existing { or_new_key: true })?;
            let text_obj = tx.put_object(&obj, prop, ObjType::Text).map_err(am)?;
            tx.splice_text(&text_obj, 0, 0, text).map_err(am)
        }
        Op::PutCounter { path, value } => {
            let (obj, prop) = target(tx, path, Slot::Existing { or_new_key: true })?;
            tx.put(&obj, prop, ScalarValue::counter(*value)).map_err(am)
        }
        Op::Insert { path, value } => {
            let (obj, prop) = target(tx, path, Slot::Insert)?;
            let Prop::Seq(index) = prop else {
                unreachable!("target checks that inserts end in an index")
            };
            insert_json(tx, &obj, index, value)
        }
        Op::Delete { path } => {
            let (obj, prop) = target(tx, path, Slot::Existing { or_new_key: false })?;
            tx.delete(&obj, prop).map_err(am)
        }
        Op::Increment { path, by } => increment(tx, path, *by),
        Op::SpliceText {
            path,
            pos,
            del,
            text,
        } => splice_text(tx, path, *pos, *del, text),
    }
}

/// The value of the counter at `path`, if there is one.
fn counter_value<T: Transactable + ReadDoc>(tx: &mut T, path: &Path) -> Option<i64> {
    let (obj, prop) = target(tx, path, Slot::Existing { or_new_key: false }).ok()?;
    match tx.get(&obj, prop).ok()?? {
        (Value::Scalar(scalar), _) => match scalar.as_ref() {
            ScalarValue::Counter(counter) => Some(i64::from(counter)),
            _ => None,
        },
        _ => None,
    }
}

fn increment<T: Transactable + ReadDoc>(tx: &mut T, path: &Path, by: i64) -> Step<()> {
    let (obj, prop) = target(tx, path, Slot::Existing { or_new_key: false })?;
    match tx.get(&obj, prop.clone()).map_err(am)? {
        Some((Value::Scalar(scalar), _)) if matches!(*scalar, ScalarValue::Counter(_)) => {
            tx.increment(&obj, prop, by).map_err(am)
        }
        Some((value, _)) => Err(format!(
            "the value there is {}, not a counter (make one with put_counter)",
            value_kind(&value)
        )),
        None => Err("nothing there".to_owned()),
    }
}

fn splice_text<T: Transactable + ReadDoc>(
    tx: &mut T,
    path: &Path,
    pos: usize,
    del: usize,
    text: &str,
) -> Step<()> {
    let obj = walk(tx, &path.0)?;
    let kind = tx.object_type(&obj).map_err(am)?;
    if kind != ObjType::Text {
        return Err(format!(
            "splice_text needs a Text object there (make one with put_text), found {}",
            obj_kind(kind)
        ));
    }
    let length = tx.length(&obj);
    if pos.checked_add(del).is_none_or(|end| end > length) {
        return Err(format!(
            "pos {pos} + del {del} is past the end of the text (length {length})"
        ));
    }
    let del = isize::try_from(del).map_err(|_| format!("del {del} is too large"))?;
    tx.splice_text(&obj, pos, del, text).map_err(am)
}

/// What the last element of a path must name.
#[derive(Clone, Copy)]
enum Slot {
    /// A key or an index that holds a value (or, with `or_new_key`, any key
    /// of a map).
    Existing { or_new_key: bool },
    /// A list index from 0 to the list's length.
    Insert,
}

/// The object holding the last element of `path`, and that element.
fn target<T: ReadDoc>(tx: &T, path: &Path, slot: Slot) -> Step<(ObjId, Prop)> {
    let Some((last, parents)) = path.0.split_last() else {
        return Err("the path is empty: it must name a key or an index".to_owned());
    };
    let obj = walk(tx, parents)?;
    let kind = tx.object_type(&obj).map_err(am)?;
    match (kind, last, slot) {
        (ObjType::Map | ObjType::Table, PathElement::Key(key), Slot::Existing { or_new_key }) => {
            if !or_new_key && tx.get(&obj, key.as_str()).map_err(am)?.is_none() {
                return Err(format!("no key {key:?} in the map"));
            }
            Ok((obj, Prop::Map(key.clone())))
        }
        (ObjType::List, PathElement::Index(index), slot) => {
            let length = tx.length(&obj);
            let fits = match slot {
                Slot::Existing { .. } => *index < length,
                Slot::Insert => *index <= length,
            };
            if !fits {
                return Err(format!(
                    "index {index} is out of range for a list of length {length}"
                ));
            }
            Ok((obj, Prop::Seq(*index)))
        }
        (ObjType::Map | ObjType::Table, PathElement::Index(index), _) => Err(format!(
            "{index} is a list index but the parent is a map (map keys are strings)"
        )),
        (ObjType::List, PathElement::Key(key), _) => Err(format!(
            "{key:?} is a map key but the parent is a list (list indexes are integers)"
        )),
        (ObjType::Map | ObjType::Table, PathElement::Key(_), Slot::Insert) => {
            Err("insert works on lists; the parent is a map (use put)".to_owned())
        }
        (ObjType::Text, _, _) => {
            Err("the parent is a Text object: change it with splice_text".to_owned())
        }
    }
}

/// Follows `path` from the root to an object.
fn walk<T: ReadDoc>(tx: &T, path: &[PathElement]) -> Step<ObjId> {
    let mut obj = ROOT;
    for (depth, element) in path.iter().enumerate() {
        let here = Path(path[..=depth].to_vec());
        let found = tx
            .get(&obj, Prop::from(element.clone()))
            .map_err(|e| format!("at {here}: {e}"))?;
        match found {
            Some((Value::Object(_), child)) => obj = child,
            Some((value, _)) => {
                return Err(format!(
                    "at {here}: found {}, which is not a map, list or text",
                    value_kind(&value)
                ))
            }
            None => return Err(format!("at {here}: {}", missing(tx, &obj, element))),
        }
    }
    Ok(obj)
}

/// Why `element` names nothing in `obj`.
fn missing<T: ReadDoc>(tx: &T, obj: &ObjId, element: &PathElement) -> String {
    match (tx.object_type(obj), element) {
        (Ok(ObjType::List | ObjType::Text), PathElement::Index(index)) => format!(
            "index {index} is out of range for a list of length {}",
            tx.length(obj)
        ),
        (_, PathElement::Key(key)) => format!("no key {key:?} in the map"),
        _ => "nothing there".to_owned(),
    }
}

fn put_json<T: Transactable>(tx: &mut T, obj: &ObjId, prop: Prop, value: &Json) -> Step<()> {
    match value {
        Json::Object(entries) => {
            let child = tx.put_object(obj, prop, ObjType::Map).map_err(am)?;
            fill_map(tx, &child, entries)
        }
        Json::Array(items) => {
            let child = tx.put_object(obj, prop, ObjType::List).map_err(am)?;
            fill_list(tx, &child, items)
        }
        scalar => tx.put(obj, prop, json_scalar(scalar)).map_err(am),
    }
}

fn insert_json<T: Transactable>(tx: &mut T, obj: &ObjId, index: usize, value: &Json) -> Step<()> {
    match value {
        Json::Object(entries) => {
            let child = tx.insert_object(obj, index, ObjType::Map).map_err(am)?;
            fill_map(tx, &child, entries)
        }
        Json::Array(items) => {
            let child = tx.insert_object(obj, index, ObjType::List).map_err(am)?;
            fill_list(tx, &child, items)
        }
        scalar => tx.insert(obj, index, json_scalar(scalar)).map_err(am),
    }
}

fn fill_map<T: Transactable>(tx: &mut T, map: &ObjId, entries: &Map<String, Json>) -> Step<()> {
    for (key, value) in entries {
        put_json(tx, map, Prop::Map(key.clone()), value)?;
    }
    Ok(())
}

fn fill_list<T: Transactable>(tx: &mut T, list: &ObjId, items: &[Json]) -> Step<()> {
    for (index, value) in items.iter().enumerate() {
        insert_json(tx, list, index, value)?;
    }
    Ok(())
}

/// A JSON scalar (not an object or array) as an Automerge scalar.
fn json_scalar(value: &Json) -> ScalarValue {
    match value {
        Json::Null => ScalarValue::Null,
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                ScalarValue::Int(i)
            } else if let Some(u) = n.as_u64() {
                ScalarValue::Uint(u)
            } else {
                ScalarValue::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => ScalarValue::Str(s.as_str().into()),
        Json::Array(_) | Json::Object(_) => unreachable!("callers handle objects and arrays"),
    }
}

fn am(error: AutomergeError) -> String {
    error.to_string()
}

fn json_kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn obj_kind(kind: ObjType) -> &'static str {
    match kind {
        ObjType::Map | ObjType::Table => "a map",
        ObjType::List => "a list",
        ObjType::Text => "a text",
    }
}

fn value_kind(value: &Value<'_>) -> &'static str {
    match value {
        Value::Object(kind) => obj_kind(*kind),
        Value::Scalar(scalar) => match scalar.as_ref() {
            ScalarValue::Bytes(_) => "bytes",
            ScalarValue::Str(_) => "a string",
            ScalarValue::Int(_) => "an int",
            ScalarValue::Uint(_) => "a uint",
            ScalarValue::F64(_) => "a float",
            ScalarValue::Counter(_) => "a counter",
            ScalarValue::Timestamp(_) => "a timestamp",
            ScalarValue::Boolean(_) => "a boolean",
            ScalarValue::Unknown { .. } => "an unknown value",
            ScalarValue::Null => "null",
        },
    }
}

/// The whole document as JSON: maps as objects, lists as arrays, text as
/// strings, counters and timestamps as numbers.
pub fn document_to_json<R: ReadDoc>(doc: &R) -> Json {
    // Serialising a document to a `serde_json::Value` cannot fail: every
    // key is a string and every number is finite or rendered as null.
    serde_json::to_value(AutoSerde::from(doc)).unwrap_or(Json::Null)
}

/// A patch as JSON, in the shape automerge-js uses: `action` (`put`,
/// `insert`, `splice`, `inc`, `del`, `conflict`, `mark`) and the full
/// `path` to the changed property, with `value`, `values`, `length` or
/// `marks` as the action needs. New objects appear as `{}`, `[]` or `""`
/// and are filled by the patches that follow.
pub fn patch_to_json(patch: &Patch) -> Json {
    let mut path: Vec<Json> = patch.path.iter().map(|(_, prop)| prop_json(prop)).collect();
    let mut at = |prop: Json| {
        path.push(prop);
        Json::Array(std::mem::take(&mut path))
    };
    match &patch.action {
        PatchAction::PutMap {
            key,
            value,
            conflict,
        } => put_patch(at(json!(key)), &value.0, *conflict),
        PatchAction::PutSeq {
            index,
            value,
            conflict,
        } => put_patch(at(json!(index)), &value.0, *conflict),
        PatchAction::Insert { index, values } => {
            let values: Vec<Json> = values.iter().map(|(v, _, _)| value_json(v)).collect();
            json!({"action": "insert", "path": at(json!(index)), "values": values})
        }
        PatchAction::SpliceText { index, value, .. } => {
            json!({"action": "splice", "path": at(json!(index)), "value": value.make_string()})
        }
        PatchAction::Increment { prop, value } => {
            json!({"action": "inc", "path": at(prop_json(prop)), "value": value})
        }
        PatchAction::Conflict { prop } => {
            json!({"action": "conflict", "path": at(prop_json(prop))})
        }
        PatchAction::DeleteMap { key } => json!({"action": "del", "path": at(json!(key))}),
        PatchAction::DeleteSeq { index, length } => {
            json!({"action": "del", "path": at(json!(index)), "length": length})
        }
        PatchAction::Mark { marks } => {
            let marks: Vec<Json> = marks
                .iter()
                .map(|m| json!({"name": m.name(), "value": scalar_json(m.value()), "start": m.start, "end": m.end}))
                .collect();
            json!({"action": "mark", "path": Json::Array(path), "marks": marks})
        }
    }
}

fn put_patch(path: Json, value: &Value<'_>, conflict: bool) -> Json {
    let mut patch = json!({"action": "put", "path": path, "value": value_json(value)});
    if conflict {
        patch["conflict"] = Json::Bool(true);
    }
    patch
}

fn prop_json(prop: &Prop) -> Json {
    match prop {
        Prop::Map(key) => json!(key),
        Prop::Seq(index) => json!(index),
    }
}

fn value_json(value: &Value<'_>) -> Json {
    match value {
        Value::Object(ObjType::Map | ObjType::Table) => json!({}),
        Value::Object(ObjType::List) => json!([]),
        Value::Object(ObjType::Text) => json!(""),
        Value::Scalar(scalar) => scalar_json(scalar),
    }
}

pub(crate) fn scalar_json(scalar: &ScalarValue) -> Json {
    serde_json::to_value(scalar).unwrap_or(Json::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::Automerge;

    fn run(doc: &mut Automerge, ops: Json) -> Result<(), OpError> {
        let ops = parse_ops(ops)?;
        doc.transact(|tx| apply_ops(tx, &ops))
            .map(|_| ())
            .map_err(|failure| failure.error)
    }

    #[test]
    fn a_counter_never_wraps_around() {
        let mut doc = Automerge::new();
        let max = i64::MAX.to_string();
        run(
            &mut doc,
            json!([{"op": "put_counter", "path": ["n"], "value": i64::MAX - 1}]),
        )
        .unwrap();
        run(
            &mut doc,
            json!([{"op": "increment", "path": ["n"], "by": 1}]),
        )
        .unwrap();
        let error = run(
            &mut doc,
            json!([{"op": "increment", "path": ["n"], "by": 1}]),
        )
        .unwrap_err();
        assert_eq!(
            error,
            OpError::CounterOverflow {
                op: 0,
                path: "[\"n\"]".to_owned(),
                value: i64::MAX,
                by: 1
            }
        );
        assert!(error.to_string().contains(&max), "{error}");
        run(
            &mut doc,
            json!([{"op": "put_counter", "path": ["m"], "value": i64::MIN}]),
        )
        .unwrap();
        let error = run(
            &mut doc,
            json!([{"op": "increment", "path": ["m"], "by": -1}]),
        )
        .unwrap_err();
        assert!(matches!(
            error,
            OpError::CounterOverflow {
                value: i64::MIN,
                by: -1,
                ..
            }
        ));
        // Nothing changed: the counters hold their limits.
        let (value, _) = doc.get(automerge::ROOT, "n").unwrap().unwrap();
        assert_eq!(value.as_i64(), Some(i64::MAX));
    }

    #[test]
    fn the_operation_count_is_what_automerge_makes() {
        let mut doc = Automerge::new();
        for ops in [
            json!([{"op": "put", "path": ["items"], "value": [1, {"a": [true, null]}, "x"]}]),
            json!([{"op": "put_text", "path": ["notes"], "text": "héllo"}]),
            json!([
                {"op": "splice_text", "path": ["notes"], "pos": 1, "del": 2, "text": "ey"},
                {"op": "insert", "path": ["items", 0], "value": {"k": 1}},
                {"op": "put_counter", "path": ["n"]},
                {"op": "increment", "path": ["n"], "by": 2},
                {"op": "delete", "path": ["items", 1]},
            ]),
        ] {
            let ops = parse_ops(ops).unwrap();
            let mut tx = doc.transaction();
            apply_ops(&mut tx, &ops).unwrap();
            assert_eq!(operation_count(&ops), tx.pending_ops(), "{ops:?}");
            tx.commit();
        }
    }

    #[test]
    fn every_op_applies_and_reads_back_as_json() {
        let mut doc = Automerge::new();
        run(
            &mut doc,
            json!([
                {"op": "put", "path": ["title"], "value": "Shopping"},
                {"op": "put", "path": ["items"], "value": [{"what": "milk"}]},
                {"op": "insert", "path": ["items", 1], "value": {"what": "eggs", "n": 12}},
                {"op": "put", "path": ["items", 0, "done"], "value": true},
                {"op": "put_counter", "path": ["visits"], "value": 5},
                {"op": "increment", "path": ["visits"], "by": -2},
                {"op": "put_text", "path": ["notes"], "text": "hello"},
                {"op": "splice_text", "path": ["notes"], "pos": 5, "text": " world"},
                {"op": "put", "path": ["gone"], "value": null},
                {"op": "delete", "path": ["gone"]},
                {"op": "put", "path": ["big"], "value": 18446744073709551615u64},
                {"op": "put", "path": ["pi"], "value": 3.5},
            ]),
        )
        .unwrap();
        assert_eq!(
            document_to_json(&doc),
            json!({
                "title": "Shopping",
                "items": [{"what": "milk", "done": true}, {"what": "eggs", "n": 12}],
                "visits": 3,
                "notes": "hello world",
                "big": 18446744073709551615u64,
                "pi": 3.5,
            })
        );
    }

    #[test]
    fn a_failing_op_rolls_back_the_whole_change() {
        let mut doc = Automerge::new();
        let error = run(
            &mut doc,
            json!([
                {"op": "put", "path": ["a"], "value": 1},
                {"op": "put", "path": ["a", "b"], "value": 2},
            ]),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "ops[1] (put at [\"a\", \"b\"]): at [\"a\"]: found an int, which is not a map, list or text"
        );
        assert_eq!(document_to_json(&doc), json!({}));
    }

    #[test]
    fn malformed_ops_name_the_op_and_the_problem() {
        let unknown = parse_ops(json!([{"op": "put", "path": [], "value": 1}, {"op": "frob"}]));
        let message = unknown.unwrap_err().to_string();
        assert!(
            message.starts_with("ops[1]: unknown variant `frob`"),
            "{message}"
        );
        let negative = parse_ops(json!([{"op": "delete", "path": ["a", -1]}]));
        let message = negative.unwrap_err().to_string();
        assert!(message.contains("non-negative integer"), "{message}");
        let extra = parse_ops(json!([{"op": "delete", "path": ["a"], "value": 1}]));
        assert!(extra
            .unwrap_err()
            .to_string()
            .contains("unknown field `value`"));
        let not_array = parse_ops(json!({"op": "delete"}));
        assert_eq!(
            not_array.unwrap_err().to_string(),
            "ops[0]: expected an array of ops, found an object"
        );
    }

    #[test]
    fn ops_that_do_not_fit_the_document_say_why() {
        let mut doc = Automerge::new();
        run(
            &mut doc,
            json!([{"op": "put", "path": ["list"], "value": [1]}]),
        )
        .unwrap();
        let cases = [
            (
                json!({"op": "insert", "path": ["list", 5], "value": 1}),
                "index 5 is out of range for a list of length 1",
            ),
            (
                json!({"op": "put", "path": ["list", "x"], "value": 1}),
                "\"x\" is a map key but the parent is a list",
            ),
            (
                json!({"op": "put", "path": [0], "value": 1}),
                "0 is a list index but the parent is a map",
            ),
            (
                json!({"op": "delete", "path": ["nope"]}),
                "no key \"nope\" in the map",
            ),
            (
                json!({"op": "increment", "path": ["list", 0], "by": 1}),
                "the value there is an int, not a counter",
            ),
            (
                json!({"op": "splice_text", "path": ["list"], "pos": 0, "text": "x"}),
                "found a list",
            ),
            (
                json!({"op": "put", "path": [], "value": 1}),
                "the path is empty",
            ),
            (
                json!({"op": "put", "path": ["missing", "x"], "value": 1}),
                "at [\"missing\"]: no key \"missing\" in the map",
            ),
        ];
        for (op, expected) in cases {
            let message = run(&mut doc, json!([op])).unwrap_err().to_string();
            assert!(
                message.contains(expected),
                "{message} should say {expected}"
            );
        }
    }

    #[test]
    fn patches_render_with_full_paths() {
        let mut doc = Automerge::new();
        let before = doc.get_heads();
        run(
            &mut doc,
            json!([
                {"op": "put", "path": ["items"], "value": ["a"]},
                {"op": "put_text", "path": ["t"], "text": "hi"},
            ]),
        )
        .unwrap();
        let after = doc.get_heads();
        let patches: Vec<Json> = doc
            .diff(&before, &after)
            .iter()
            .map(patch_to_json)
            .collect();
        assert!(patches.contains(&json!({"action": "put", "path": ["items"], "value": []})));
        assert!(
            patches.contains(&json!({"action": "insert", "path": ["items", 0], "values": ["a"]}))
        );
        assert!(patches.contains(&json!({"action": "splice", "path": ["t", 0], "value": "hi"})));
    }
}
