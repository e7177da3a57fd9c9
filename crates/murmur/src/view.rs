//! Reading a document beyond its current JSON: as it was at older heads,
//! with its types marked, with the conflicting values Automerge kept, as
//! the patches between two versions, and its history of changes. All of it
//! comes from Automerge itself.

use automerge::{Automerge, ChangeHash, ObjType, Prop, ReadDoc, ScalarValue, Value, ROOT};
use serde_json::{json, Map, Value as Json};

use crate::json::{patch_to_json, scalar_json};
use crate::NodeId;

/// How to read a document as JSON ([`view`], `DocHandle::view`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewOptions {
    /// The document as it was at these heads (`None`: as it is).
    pub at: Option<Vec<ChangeHash>>,
    /// Marks the values plain JSON cannot tell apart: Text
    /// (`{"type": "text", "value": "..."}`, edit it with `splice_text`),
    /// counters (`{"type": "counter", "value": n}`, change them with
    /// `increment`), timestamps (`{"type": "timestamp", "value": ms}`),
    /// bytes (`{"type": "bytes", "hex": "..."}`) and unsigned integers.
    pub types: bool,
    /// Also lists every key or list element where concurrent changes left
    /// several values ([`View::conflicts`]).
    pub conflicts: bool,
}

/// A document read with [`ViewOptions`].
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// The heads it was read at.
    pub heads: Vec<ChangeHash>,
    /// Its content as JSON; where values conflict, the one Automerge
    /// picks (the same on every replica).
    pub content: Json,
    /// The conflicts, if asked for; empty otherwise.
    pub conflicts: Vec<Conflict>,
}

/// A key or list element where concurrent changes each put a value, and
/// Automerge kept them all (showing one, the same everywhere). An app
/// resolves it by putting the value it wants: the next change supersedes
/// every one of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// Where: map keys and list indexes from the root.
    pub path: Vec<Json>,
    /// Every value kept, the one shown last.
    pub values: Vec<ConflictValue>,
}

/// One of the values of a [`Conflict`].
#[derive(Debug, Clone, PartialEq)]
pub struct ConflictValue {
    /// The value (an object shows as `{}`, `[]` or `""`).
    pub value: Json,
    /// The change that put it.
    pub change: Option<ChangeHash>,
    /// The Automerge actor that made that change.
    pub actor: String,
}

/// Why a document cannot be read as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// A head asked for is not a change this node holds of the document
    /// (it may not have arrived yet).
    #[error("this node does not hold change {0} of the document")]
    UnknownChange(ChangeHash),
}

/// One change in a document's history ([`history`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Its hash.
    pub hash: ChangeHash,
    /// The Automerge actor that made it, as hex.
    pub actor: String,
    /// The Murmur node and incarnation that wrote it, when its actor is
    /// one of a node this node knows (itself, a peer, a member, an allowed
    /// node); `None` for any other actor (a JavaScript client's, say).
    pub writer: Option<(NodeId, u64)>,
    /// Its sequence number among the actor's changes.
    pub seq: u64,
    /// Its timestamp, as its author set it (Murmur: seconds since the
    /// Unix epoch).
    pub timestamp: i64,
    /// Its message, if it carries one.
    pub message: Option<String>,
    /// The changes it depends on.
    pub deps: Vec<ChangeHash>,
    /// How many operations it holds.
    pub ops: u64,
}

/// A page of a document's history ([`history`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// Changes in the document.
    pub total: usize,
    /// The page, in causal order (every change after its dependencies).
    pub changes: Vec<HistoryEntry>,
}

/// Checks that `doc` holds every change in `heads`.
pub fn check_heads(doc: &Automerge, heads: &[ChangeHash]) -> Result<(), ViewError> {
    match heads
        .iter()
        .find(|hash| doc.get_change_meta_by_hash(hash).is_none())
    {
        Some(hash) => Err(ViewError::UnknownChange(*hash)),
        None => Ok(()),
    }
}

/// Reads `doc` as `options` ask.
pub fn view(doc: &Automerge, options: &ViewOptions) -> Result<View, ViewError> {
    if let Some(at) = &options.at {
        check_heads(doc, at)?;
    }
    let mut walker = Walker {
        doc,
        at: options.at.as_deref(),
        types: options.types,
        conflicts: options.conflicts.then(Vec::new),
        path: Vec::new(),
    };
    let content = walker.object(&ROOT, ObjType::Map);
    Ok(View {
        heads: options.at.clone().unwrap_or_else(|| doc.get_heads()),
        content,
        conflicts: walker.conflicts.unwrap_or_default(),
    })
}

/// The patches that take `doc` from `from` to `to`, as JSON (the shape of
/// the event streams' patches).
pub fn diff(
    doc: &Automerge,
    from: &[ChangeHash],
    to: &[ChangeHash],
) -> Result<Vec<Json>, ViewError> {
    check_heads(doc, from)?;
    check_heads(doc, to)?;
    Ok(doc.diff(from, to).iter().map(patch_to_json).collect())
}

/// The patches of one feed entry: from the heads just before `changes`
/// (their dependencies outside them, and `heads` other than them) to
/// `heads`, the heads just after.
pub fn entry_patches(
    doc: &Automerge,
    changes: &[ChangeHash],
    heads: &[ChangeHash],
) -> Result<Vec<Json>, ViewError> {
    check_heads(doc, heads)?;
    let inside: std::collections::BTreeSet<&ChangeHash> = changes.iter().collect();
    let mut before: std::collections::BTreeSet<ChangeHash> = heads
        .iter()
        .filter(|hash| !inside.contains(hash))
        .copied()
        .collect();
    for change in changes {
        let meta = doc
            .get_change_meta_by_hash(change)
            .ok_or(ViewError::UnknownChange(*change))?;
        before.extend(meta.deps.iter().filter(|dep| !inside.contains(dep)));
    }
    let before: Vec<ChangeHash> = before.into_iter().collect();
    Ok(doc.diff(&before, heads).iter().map(patch_to_json).collect())
}

/// At most `limit` changes of `doc`'s history from the `offset`-th on;
/// `known` are the nodes whose actors it may name as writers.
pub fn history(doc: &Automerge, offset: usize, limit: usize, known: &[NodeId]) -> History {
    let all = doc.get_changes_meta(&[]);
    let total = all.len();
    let changes = all
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|meta| {
            let actor = meta.actor.to_bytes();
            HistoryEntry {
                hash: meta.hash,
                actor: meta.actor.to_hex_string(),
                writer: murmur_writer(actor, known),
                seq: meta.seq,
                timestamp: meta.timestamp,
                message: meta.message.map(|m| m.into_owned()),
                deps: meta.deps,
                ops: (meta.max_op + 1).saturating_sub(meta.start_op),
            }
        })
        .collect();
    History { total, changes }
}

/// The node and incarnation behind a Murmur actor (the node id's first 16
/// bytes, then the incarnation as 8 bytes big-endian unless it is 0), if
/// the node is one of `known`.
fn murmur_writer(actor: &[u8], known: &[NodeId]) -> Option<(NodeId, u64)> {
    let (prefix, incarnation) = actor.split_at_checked(16)?;
    let incarnation = match incarnation {
        [] => 0,
        bytes => u64::from_be_bytes(bytes.try_into().ok()?),
    };
    let node = known.iter().find(|node| node.0[..16] == *prefix)?;
    Some((*node, incarnation))
}

/// Walks a document to JSON.
struct Walker<'a> {
    doc: &'a Automerge,
    at: Option<&'a [ChangeHash]>,
    types: bool,
    /// The conflicts found, if asked for.
    conflicts: Option<Vec<Conflict>>,
    /// Where the walk is.
    path: Vec<Json>,
}

impl Walker<'_> {
    fn object(&mut self, obj: &automerge::ObjId, kind: ObjType) -> Json {
        match kind {
            ObjType::Map | ObjType::Table => {
                let keys: Vec<String> = match self.at {
                    Some(at) => self.doc.keys_at(obj, at).collect(),
                    None => self.doc.keys(obj).collect(),
                };
                let mut map = Map::new();
                for key in keys {
                    if let Some(value) = self.prop(obj, Prop::Map(key.clone())) {
                        map.insert(key, value);
                    }
                }
                Json::Object(map)
            }
            ObjType::List => {
                let length = match self.at {
                    Some(at) => self.doc.length_at(obj, at),
                    None => self.doc.length(obj),
                };
                Json::Array(
                    (0..length)
                        .filter_map(|index| self.prop(obj, Prop::Seq(index)))
                        .collect(),
                )
            }
            ObjType::Text => {
                let text = match self.at {
                    Some(at) => self.doc.text_at(obj, at),
                    None => self.doc.text(obj),
                }
                .unwrap_or_default();
                if self.types {
                    json!({"type": "text", "value": text})
                } else {
                    Json::String(text)
                }
            }
        }
    }

    /// The value at `prop` of `obj` (the one Automerge shows), noting a
    /// conflict if there are several.
    fn prop(&mut self, obj: &automerge::ObjId, prop: Prop) -> Option<Json> {
        let values = match self.at {
            Some(at) => self.doc.get_all_at(obj, prop.clone(), at),
            None => self.doc.get_all(obj, prop.clone()),
        }
        .ok()?;
        let (shown, id) = values.last()?.clone();
        self.path.push(match &prop {
            Prop::Map(key) => json!(key),
            Prop::Seq(index) => json!(index),
        });
        if values.len() > 1 && self.conflicts.is_some() {
            let conflict = Conflict {
                path: self.path.clone(),
                values: values
                    .iter()
                    .map(|(value, id)| ConflictValue {
                        value: self.shallow(value),
                        change: self.doc.hash_for_opid(id),
                        actor: match id {
                            automerge::ObjId::Id(_, actor, _) => actor.to_hex_string(),
                            automerge::ObjId::Root => String::new(),
                        },
                    })
                    .collect(),
            };
            if let Some(conflicts) = self.conflicts.as_mut() {
                conflicts.push(conflict);
            }
        }
        let value = match shown {
            Value::Object(kind) => self.object(&id, kind),
            Value::Scalar(scalar) => self.scalar(&scalar),
        };
        self.path.pop();
        Some(value)
    }

    /// A value without walking into it (for a conflict's list).
    fn shallow(&self, value: &Value<'_>) -> Json {
        match value {
            Value::Object(ObjType::Map | ObjType::Table) => json!({}),
            Value::Object(ObjType::List) => json!([]),
            Value::Object(ObjType::Text) => json!(""),
            Value::Scalar(scalar) => self.scalar(scalar),
        }
    }

    fn scalar(&self, scalar: &ScalarValue) -> Json {
        if !self.types {
            return scalar_json(scalar);
        }
        match scalar {
            ScalarValue::Counter(counter) => {
                json!({"type": "counter", "value": i64::from(counter)})
            }
            ScalarValue::Timestamp(ms) => json!({"type": "timestamp", "value": ms}),
            ScalarValue::Bytes(bytes) => json!({"type": "bytes", "hex": hex(bytes)}),
            ScalarValue::Uint(n) => json!({"type": "uint", "value": n}),
            ScalarValue::Unknown { type_code, bytes } => {
                json!({"type": "unknown", "type_code": type_code, "hex": hex(bytes)})
            }
            other => scalar_json(other),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;

    fn rich() -> Automerge {
        let mut doc = Automerge::new();
        doc.transact::<_, _, automerge::AutomergeError>(|tx| {
            tx.put(ROOT, "title", "Notes")?;
            let text = tx.put_object(ROOT, "body", ObjType::Text)?;
            tx.splice_text(&text, 0, 0, "hello")?;
            tx.put(ROOT, "visits", ScalarValue::counter(3))?;
            tx.put(ROOT, "at", ScalarValue::Timestamp(1_700_000_000_000))?;
            tx.put(ROOT, "blob", ScalarValue::Bytes(vec![1, 255]))?;
            let list = tx.put_object(ROOT, "items", ObjType::List)?;
            tx.insert(&list, 0, "milk")?;
            let nested = tx.insert_object(&list, 1, ObjType::Map)?;
            tx.put(&nested, "n", 12)?;
            tx.put(ROOT, "none", ())?;
            Ok(())
        })
        .unwrap();
        doc
    }

    #[test]
    fn plain_views_match_the_json_the_api_always_served() {
        let doc = rich();
        let view = view(&doc, &ViewOptions::default()).unwrap();
        assert_eq!(view.content, crate::json::document_to_json(&doc));
        assert_eq!(view.heads, doc.get_heads());
        assert!(view.conflicts.is_empty());
    }

    #[test]
    fn typed_views_mark_text_counters_timestamps_and_bytes() {
        let doc = rich();
        let typed = view(
            &doc,
            &ViewOptions {
                types: true,
                ..ViewOptions::default()
            },
        )
        .unwrap();
        assert_eq!(typed.content["title"], "Notes");
        assert_eq!(
            typed.content["body"],
            json!({"type": "text", "value": "hello"})
        );
        assert_eq!(
            typed.content["visits"],
            json!({"type": "counter", "value": 3})
        );
        assert_eq!(
            typed.content["at"],
            json!({"type": "timestamp", "value": 1_700_000_000_000_i64})
        );
        assert_eq!(
            typed.content["blob"],
            json!({"type": "bytes", "hex": "01ff"})
        );
        assert_eq!(typed.content["items"], json!(["milk", {"n": 12}]));
    }

    #[test]
    fn older_heads_and_diffs_read_the_past() {
        let mut doc = rich();
        let before = doc.get_heads();
        doc.transact::<_, _, automerge::AutomergeError>(|tx| tx.put(ROOT, "title", "Later"))
            .unwrap();
        let then = view(
            &doc,
            &ViewOptions {
                at: Some(before.clone()),
                ..ViewOptions::default()
            },
        )
        .unwrap();
        assert_eq!(then.content["title"], "Notes");
        assert_eq!(then.heads, before);
        let patches = diff(&doc, &before, &doc.get_heads()).unwrap();
        assert_eq!(
            patches,
            [json!({"action": "put", "path": ["title"], "value": "Later"})]
        );
        let unknown = ChangeHash([7; 32]);
        assert_eq!(
            view(
                &doc,
                &ViewOptions {
                    at: Some(vec![unknown]),
                    ..ViewOptions::default()
                }
            ),
            Err(ViewError::UnknownChange(unknown))
        );
        assert!(diff(&doc, &[unknown], &before).is_err());
    }

    #[test]
    fn concurrent_puts_show_as_a_conflict_with_the_change_of_each() {
        let mut a = Automerge::new().with_actor(automerge::ActorId::from([1u8; 24].as_slice()));
        a.transact::<_, _, automerge::AutomergeError>(|tx| tx.put(ROOT, "x", 0))
            .unwrap();
        let mut b = a
            .fork()
            .with_actor(automerge::ActorId::from([2u8; 40].as_slice()));
        a.transact::<_, _, automerge::AutomergeError>(|tx| tx.put(ROOT, "x", "from a"))
            .unwrap();
        b.transact::<_, _, automerge::AutomergeError>(|tx| tx.put(ROOT, "x", "from b"))
            .unwrap();
        a.merge(&mut b).unwrap();
        let seen = view(
            &a,
            &ViewOptions {
                conflicts: true,
                ..ViewOptions::default()
            },
        )
        .unwrap();
        assert_eq!(seen.conflicts.len(), 1);
        let conflict = &seen.conflicts[0];
        assert_eq!(conflict.path, [json!("x")]);
        let values: Vec<&Json> = conflict.values.iter().map(|v| &v.value).collect();
        assert_eq!(values, [&json!("from a"), &json!("from b")]);
        assert_eq!(seen.content["x"], *values[1], "the value shown is the last");
        let changes: Vec<ChangeHash> = conflict.values.iter().filter_map(|v| v.change).collect();
        assert_eq!(changes.len(), 2);
        assert!(changes
            .iter()
            .all(|hash| a.get_change_by_hash(hash).is_some()));
        // The history names both writers.
        let history = history(&a, 0, 10, &[NodeId([1; 32])]);
        assert_eq!(history.total, 3);
        assert_eq!(
            history.changes[0].writer,
            Some((NodeId([1; 32]), u64::from_be_bytes([1; 8])))
        );
        assert_eq!(history.changes[2].writer, None, "an actor of no known node");
        assert_eq!(history.changes[1].deps, [history.changes[0].hash]);
        assert_eq!(history.changes[0].ops, 1);
    }
}
