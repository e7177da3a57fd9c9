//! automerge-repo's network protocol, version "1": the CBOR maps a client
//! and a server exchange over a WebSocket (the `murmur` binary serves it
//! at `GET /sync`). Decoding takes nothing on
//! trust: a frame is bounded before it gets here, nesting is bounded, and
//! every field is checked for its type; anything else is a
//! [`CodecError`], never a panic.
//!
//! Field names follow what `@automerge/automerge-repo` sends. One quirk:
//! the protocol's README calls the metadata of `join` and `peer`
//! `metadata`, while the JavaScript implementation sends `peerMetadata`;
//! both are read, and `peerMetadata` is written.

use std::collections::BTreeMap;

use automerge::ChangeHash;
use ciborium::Value;
use murmur_wire::DocumentId;

/// The protocol version spoken.
pub const PROTOCOL_VERSION: &str = "1";

/// The deepest nesting of CBOR a message may have (the protocol's
/// messages need 4).
const MAX_DEPTH: usize = 16;
/// CBOR's tag for a typed array of bytes (RFC 8746).
const UINT8_ARRAY_TAG: u64 = 64;
/// The most storage ids one subscription change may name.
const MAX_SUBSCRIPTION_IDS: usize = 1024;

/// Why a frame is not a message this server takes.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not CBOR (or nest too deep).
    #[error("the message is not CBOR: {0}")]
    NotCbor(String),
    /// Not a map.
    #[error("a message must be a CBOR map")]
    NotAMap,
    /// A required field is missing.
    #[error("the {kind} message has no `{field}`")]
    Missing {
        /// The message type.
        kind: String,
        /// The field.
        field: &'static str,
    },
    /// A field has the wrong type or value.
    #[error("`{field}` is not {expected}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// The type is not one of the protocol's.
    #[error("unknown message type `{0}`")]
    UnknownType(String),
}

/// What a peer says of itself in `join` and `peer`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerMetadata {
    /// Its storage id, if it keeps what it syncs.
    pub storage_id: Option<String>,
    /// Whether it will not come back with that storage id.
    pub is_ephemeral: bool,
}

/// A message from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// The first message: who the client is.
    Join {
        /// The client's peer id.
        sender_id: String,
        /// The versions it speaks (`None`: it did not say, meaning "1").
        versions: Option<Vec<String>>,
        /// What it says of itself.
        metadata: Option<PeerMetadata>,
    },
    /// The client is going away.
    Leave {
        /// Its peer id.
        sender_id: String,
    },
    /// The client asks for a document it lacks, with a sync message.
    Request {
        /// Its peer id.
        sender_id: String,
        /// The document.
        document_id: DocumentId,
        /// An Automerge sync message.
        data: Vec<u8>,
    },
    /// A sync message about a document.
    Sync {
        /// Its peer id.
        sender_id: String,
        /// The document.
        document_id: DocumentId,
        /// An Automerge sync message.
        data: Vec<u8>,
    },
    /// The client does not have a document either.
    DocUnavailable {
        /// Its peer id.
        sender_id: String,
        /// The document.
        document_id: DocumentId,
    },
    /// An ephemeral message (presence, cursors) for the document's other
    /// clients.
    Ephemeral {
        /// Its peer id.
        sender_id: String,
        /// The document.
        document_id: DocumentId,
        /// The client's ephemeral session.
        session_id: String,
        /// Its count in that session.
        count: u64,
        /// The payload, relayed as it is.
        data: Vec<u8>,
    },
    /// The client changes which storage ids' heads it wants to hear of.
    RemoteSubscriptionChange {
        /// Its peer id.
        sender_id: String,
        /// Storage ids to add.
        add: Vec<String>,
        /// Storage ids to remove.
        remove: Vec<String>,
    },
    /// Heads the client heard of (ignored: clients sync with this node
    /// only).
    RemoteHeadsChanged {
        /// Its peer id.
        sender_id: String,
    },
    /// The client reports an error.
    Error {
        /// What it says.
        message: String,
    },
}

impl Inbound {
    /// The message's `type`, as the protocol names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Inbound::Join { .. } => "join",
            Inbound::Leave { .. } => "leave",
            Inbound::Request { .. } => "request",
            Inbound::Sync { .. } => "sync",
            Inbound::DocUnavailable { .. } => "doc-unavailable",
            Inbound::Ephemeral { .. } => "ephemeral",
            Inbound::RemoteSubscriptionChange { .. } => "remote-subscription-change",
            Inbound::RemoteHeadsChanged { .. } => "remote-heads-changed",
            Inbound::Error { .. } => "error",
        }
    }

    /// The sender id the message names, if its type has one.
    pub fn sender_id(&self) -> Option<&str> {
        match self {
            Inbound::Join { sender_id, .. }
            | Inbound::Leave { sender_id }
            | Inbound::Request { sender_id, .. }
            | Inbound::Sync { sender_id, .. }
            | Inbound::DocUnavailable { sender_id, .. }
            | Inbound::Ephemeral { sender_id, .. }
            | Inbound::RemoteSubscriptionChange { sender_id, .. }
            | Inbound::RemoteHeadsChanged { sender_id } => Some(sender_id),
            Inbound::Error { .. } => None,
        }
    }
}

/// Decodes one frame from a client.
///
/// ```
/// use murmur::repo_protocol::{decode, encode, CodecError, Inbound, Outbound};
/// use murmur::DocumentId;
///
/// // An ephemeral message as the node relays it, read back as a client's.
/// let doc = DocumentId([7; 16]);
/// let frame = encode("node", &Outbound::Ephemeral {
///     sender_id: "alice",
///     target_id: "bob",
///     document_id: doc,
///     session_id: "cursor",
///     count: 3,
///     data: b"x=1",
/// });
/// let Inbound::Ephemeral { sender_id, document_id, count, .. } = decode(&frame)? else {
///     unreachable!()
/// };
/// assert_eq!((sender_id.as_str(), document_id, count), ("alice", doc, 3));
/// // Anything else is a typed error, never a panic.
/// assert!(matches!(decode(&[0xff, 0x00]), Err(CodecError::NotCbor(_))));
/// # Ok::<(), CodecError>(())
/// ```
pub fn decode(frame: &[u8]) -> Result<Inbound, CodecError> {
    let value: Value = ciborium::de::from_reader_with_recursion_limit(frame, MAX_DEPTH)
        .map_err(|error| CodecError::NotCbor(error.to_string()))?;
    let Value::Map(entries) = value else {
        return Err(CodecError::NotAMap);
    };
    let fields = Fields::new(entries)?;
    let kind = fields.text("type", "?")?;
    let sender = || fields.text("senderId", &kind);
    let document = || fields.document_id(&kind);
    let data = || fields.bytes("data", &kind);
    Ok(match kind.as_str() {
        "join" => Inbound::Join {
            sender_id: sender()?,
            versions: fields.optional_texts("supportedProtocolVersions")?,
            metadata: fields.metadata()?,
        },
        "leave" => Inbound::Leave {
            sender_id: sender()?,
        },
        "request" => Inbound::Request {
            sender_id: sender()?,
            document_id: document()?,
            data: data()?,
        },
        "sync" => Inbound::Sync {
            sender_id: sender()?,
            document_id: document()?,
            data: data()?,
        },
        "doc-unavailable" => Inbound::DocUnavailable {
            sender_id: sender()?,
            document_id: document()?,
        },
        "ephemeral" => Inbound::Ephemeral {
            sender_id: sender()?,
            document_id: document()?,
            session_id: fields.text("sessionId", &kind)?,
            count: fields.count(&kind)?,
            data: data()?,
        },
        "remote-subscription-change" => Inbound::RemoteSubscriptionChange {
            sender_id: sender()?,
            add: fields.optional_texts("add")?.unwrap_or_default(),
            remove: fields.optional_texts("remove")?.unwrap_or_default(),
        },
        "remote-heads-changed" => Inbound::RemoteHeadsChanged {
            sender_id: sender()?,
        },
        "error" => Inbound::Error {
            message: fields.text("message", &kind)?,
        },
        _ => return Err(CodecError::UnknownType(kind)),
    })
}

/// A message's fields by name (the last of a repeated name wins).
struct Fields(BTreeMap<String, Value>);

impl Fields {
    fn new(entries: Vec<(Value, Value)>) -> Result<Self, CodecError> {
        let mut fields = BTreeMap::new();
        for (key, value) in entries {
            let Value::Text(key) = key else {
                return Err(CodecError::Invalid {
                    field: "a key",
                    expected: "a string",
                });
            };
            fields.insert(key, value);
        }
        Ok(Fields(fields))
    }

    fn get(&self, field: &'static str, kind: &str) -> Result<&Value, CodecError> {
        self.0.get(field).ok_or_else(|| CodecError::Missing {
            kind: kind.to_string(),
            field,
        })
    }

    fn text(&self, field: &'static str, kind: &str) -> Result<String, CodecError> {
        match self.get(field, kind)? {
            Value::Text(text) => Ok(text.clone()),
            _ => Err(CodecError::Invalid {
                field,
                expected: "a string",
            }),
        }
    }

    fn bytes(&self, field: &'static str, kind: &str) -> Result<Vec<u8>, CodecError> {
        match self.get(field, kind)? {
            Value::Bytes(bytes) => Ok(bytes.clone()),
            // cbor-x's default for a Uint8Array (automerge-repo turns it
            // off; other clients may not): tag 64 around the bytes.
            Value::Tag(UINT8_ARRAY_TAG, inner) => match inner.as_ref() {
                Value::Bytes(bytes) => Ok(bytes.clone()),
                _ => Err(CodecError::Invalid {
                    field,
                    expected: "a byte string",
                }),
            },
            _ => Err(CodecError::Invalid {
                field,
                expected: "a byte string",
            }),
        }
    }

    /// A list of strings, absent or null meaning none.
    fn optional_texts(&self, field: &'static str) -> Result<Option<Vec<String>>, CodecError> {
        let invalid = CodecError::Invalid {
            field,
            expected: "a list of strings",
        };
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) if items.len() <= MAX_SUBSCRIPTION_IDS => items
                .iter()
                .map(|item| match item {
                    Value::Text(text) => Ok(text.clone()),
                    _ => Err(CodecError::Invalid {
                        field,
                        expected: "a list of strings",
                    }),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(invalid),
        }
    }

    /// `documentId`: the bs58check string automerge-repo sends (an
    /// `automerge:` prefix is tolerated), or the 16 raw bytes.
    fn document_id(&self, kind: &str) -> Result<DocumentId, CodecError> {
        let invalid = CodecError::Invalid {
            field: "documentId",
            expected: "a document id",
        };
        match self.get("documentId", kind)? {
            Value::Text(text) => text
                .strip_prefix("automerge:")
                .unwrap_or(text)
                .parse()
                .map_err(|_| invalid),
            Value::Bytes(bytes) => <[u8; 16]>::try_from(bytes.as_slice())
                .map(DocumentId)
                .map_err(|_| invalid),
            _ => Err(invalid),
        }
    }

    /// `count`: an integer, or a float with an integer value (JavaScript
    /// numbers may be encoded either way).
    fn count(&self, kind: &str) -> Result<u64, CodecError> {
        let invalid = CodecError::Invalid {
            field: "count",
            expected: "a non-negative integer",
        };
        match self.get("count", kind)? {
            Value::Integer(count) => u64::try_from(*count).map_err(|_| invalid),
            Value::Float(count) if count.is_finite() && *count >= 0.0 && count.fract() == 0.0 => {
                // In range: below 2^64, checked by the cast saturating.
                Ok(*count as u64)
            }
            _ => Err(invalid),
        }
    }

    /// `peerMetadata`, or `metadata` as the protocol's README spells it.
    fn metadata(&self) -> Result<Option<PeerMetadata>, CodecError> {
        let Some(value) = self
            .0
            .get("peerMetadata")
            .or_else(|| self.0.get("metadata"))
        else {
            return Ok(None);
        };
        let entries = match value {
            Value::Null => return Ok(None),
            Value::Map(entries) => entries.clone(),
            _ => {
                return Err(CodecError::Invalid {
                    field: "peerMetadata",
                    expected: "a map",
                })
            }
        };
        let fields = Fields::new(entries)?;
        let storage_id = match fields.0.get("storageId") {
            None | Some(Value::Null) => None,
            Some(Value::Text(id)) => Some(id.clone()),
            Some(_) => {
                return Err(CodecError::Invalid {
                    field: "storageId",
                    expected: "a string",
                })
            }
        };
        let is_ephemeral = match fields.0.get("isEphemeral") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(ephemeral)) => *ephemeral,
            Some(_) => {
                return Err(CodecError::Invalid {
                    field: "isEphemeral",
                    expected: "a boolean",
                })
            }
        };
        Ok(Some(PeerMetadata {
            storage_id,
            is_ephemeral,
        }))
    }
}

/// A message to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound<'a> {
    /// The answer to `join`.
    Peer {
        /// The client's peer id.
        target_id: &'a str,
        /// This node's storage id.
        storage_id: &'a str,
    },
    /// A sync message about a document.
    Sync {
        /// The client's peer id.
        target_id: &'a str,
        /// The document.
        document_id: DocumentId,
        /// An Automerge sync message.
        data: &'a [u8],
    },
    /// This node has no document by that id (or the client may not read
    /// it).
    DocUnavailable {
        /// The client's peer id.
        target_id: &'a str,
        /// The document.
        document_id: DocumentId,
    },
    /// Another client's ephemeral message, relayed.
    Ephemeral {
        /// Who sent it.
        sender_id: &'a str,
        /// The client it goes to.
        target_id: &'a str,
        /// The document.
        document_id: DocumentId,
        /// The sender's ephemeral session.
        session_id: &'a str,
        /// Its count in that session.
        count: u64,
        /// The payload.
        data: &'a [u8],
    },
    /// This node's heads of a document moved.
    RemoteHeadsChanged {
        /// The client's peer id.
        target_id: &'a str,
        /// The document.
        document_id: DocumentId,
        /// This node's storage id.
        storage_id: &'a str,
        /// The heads.
        heads: &'a [ChangeHash],
        /// Milliseconds since the Unix epoch.
        timestamp: u64,
    },
    /// Something the client sent is refused.
    Error {
        /// The client's peer id, if it is known.
        target_id: Option<&'a str>,
        /// What is wrong.
        message: &'a str,
    },
}

/// Encodes one message from the server `sender_id` (this node's peer id).
pub fn encode(sender_id: &str, message: &Outbound<'_>) -> Vec<u8> {
    let text = |s: &str| Value::Text(s.to_string());
    let mut map = vec![];
    let mut put = |key: &str, value: Value| map.push((text(key), value));
    let kind = match message {
        Outbound::Peer { .. } => "peer",
        Outbound::Sync { .. } => "sync",
        Outbound::DocUnavailable { .. } => "doc-unavailable",
        Outbound::Ephemeral { .. } => "ephemeral",
        Outbound::RemoteHeadsChanged { .. } => "remote-heads-changed",
        Outbound::Error { .. } => "error",
    };
    put("type", text(kind));
    match message {
        Outbound::Ephemeral { sender_id, .. } => put("senderId", text(sender_id)),
        _ => put("senderId", text(sender_id)),
    }
    match *message {
        Outbound::Peer {
            target_id,
            storage_id,
        } => {
            put("targetId", text(target_id));
            put("selectedProtocolVersion", text(PROTOCOL_VERSION));
            put(
                "peerMetadata",
                Value::Map(vec![
                    (text("storageId"), text(storage_id)),
                    (text("isEphemeral"), Value::Bool(false)),
                ]),
            );
        }
        Outbound::Sync {
            target_id,
            document_id,
            data,
        } => {
            put("targetId", text(target_id));
            put("documentId", text(&document_id.to_string()));
            put("data", Value::Bytes(data.to_vec()));
        }
        Outbound::DocUnavailable {
            target_id,
            document_id,
        } => {
            put("targetId", text(target_id));
            put("documentId", text(&document_id.to_string()));
        }
        Outbound::Ephemeral {
            target_id,
            document_id,
            session_id,
            count,
            data,
            ..
        } => {
            put("targetId", text(target_id));
            put("documentId", text(&document_id.to_string()));
            put("sessionId", text(session_id));
            put("count", Value::Integer(count.into()));
            put("data", Value::Bytes(data.to_vec()));
        }
        Outbound::RemoteHeadsChanged {
            target_id,
            document_id,
            storage_id,
            heads,
            timestamp,
        } => {
            put("targetId", text(target_id));
            put("documentId", text(&document_id.to_string()));
            // automerge-repo's heads: each hash's bs58check string.
            let heads = heads
                .iter()
                .map(|head| Value::Text(bs58::encode(head.0).with_check().into_string()))
                .collect();
            let info = Value::Map(vec![
                (text("heads"), Value::Array(heads)),
                (text("timestamp"), Value::Integer(timestamp.into())),
            ]);
            put("newHeads", Value::Map(vec![(text(storage_id), info)]));
        }
        Outbound::Error { target_id, message } => {
            if let Some(target_id) = target_id {
                put("targetId", text(target_id));
            }
            put("message", text(message));
        }
    }
    // Room for the payload and the fields around it, so that a large
    // message is not copied as it grows.
    let payload = match message {
        Outbound::Sync { data, .. } | Outbound::Ephemeral { data, .. } => data.len(),
        _ => 0,
    };
    let mut bytes = Vec::with_capacity(payload + 256);
    ciborium::ser::into_writer(&Value::Map(map), &mut bytes)
        .expect("writing CBOR into memory cannot fail");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbor(value: Value) -> Vec<u8> {
        let mut bytes = Vec::new();
        ciborium::ser::into_writer(&value, &mut bytes).unwrap();
        bytes
    }

    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Value::Text(k.into()), v))
                .collect(),
        )
    }

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn join_reads_peer_metadata_under_either_name() {
        for key in ["peerMetadata", "metadata"] {
            let frame = cbor(map(vec![
                ("type", text("join")),
                ("senderId", text("client-1")),
                ("supportedProtocolVersions", Value::Array(vec![text("1")])),
                (
                    key,
                    map(vec![
                        ("storageId", text("s-1")),
                        ("isEphemeral", Value::Bool(false)),
                    ]),
                ),
            ]));
            assert_eq!(
                decode(&frame).unwrap(),
                Inbound::Join {
                    sender_id: "client-1".into(),
                    versions: Some(vec!["1".into()]),
                    metadata: Some(PeerMetadata {
                        storage_id: Some("s-1".into()),
                        is_ephemeral: false
                    }),
                }
            );
        }
    }

    #[test]
    fn document_ids_are_read_as_text_with_or_without_prefix_or_as_bytes() {
        let id = DocumentId([7; 16]);
        for doc in [
            text(&id.to_string()),
            text(&format!("automerge:{id}")),
            Value::Bytes(vec![7; 16]),
        ] {
            let frame = cbor(map(vec![
                ("type", text("sync")),
                ("senderId", text("c")),
                ("targetId", text("s")),
                ("documentId", doc),
                ("data", Value::Bytes(vec![0x42])),
            ]));
            let Inbound::Sync { document_id, .. } = decode(&frame).unwrap() else {
                panic!("not a sync message");
            };
            assert_eq!(document_id, id);
        }
    }

    #[test]
    fn ephemeral_counts_may_be_floats_with_integer_values() {
        let frame = |count: Value| {
            cbor(map(vec![
                ("type", text("ephemeral")),
                ("senderId", text("c")),
                ("targetId", text("s")),
                ("documentId", text(&DocumentId([1; 16]).to_string())),
                ("sessionId", text("sess")),
                ("count", count),
                ("data", Value::Bytes(vec![1, 2])),
            ]))
        };
        assert!(matches!(
            decode(&frame(Value::Float(3.0))).unwrap(),
            Inbound::Ephemeral { count: 3, .. }
        ));
        assert!(decode(&frame(Value::Float(3.5))).is_err());
        assert!(decode(&frame(Value::Integer((-1).into()))).is_err());
    }

    #[test]
    fn what_automerge_repo_sends_decodes() {
        // Frames made by cbor-x (fuzz/corpus/repo_messages/seed-*, with
        // its default tag 64 on byte strings): join, request, sync,
        // ephemeral, a subscription change whose `remove` is `undefined`,
        // leave.
        let corpus = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/corpus/repo_messages"
        );
        let kinds: Vec<&str> = (0..6)
            .map(|i| {
                let frame = std::fs::read(format!("{corpus}/seed-0{i}")).unwrap();
                match decode(&frame).unwrap_or_else(|e| panic!("seed-0{i}: {e}")) {
                    Inbound::Join { .. } => "join",
                    Inbound::Request { .. } => "request",
                    Inbound::Sync { .. } => "sync",
                    Inbound::Ephemeral { count: 3, .. } => "ephemeral",
                    Inbound::RemoteSubscriptionChange { add, remove, .. } => {
                        assert_eq!((add, remove), (vec!["node".to_string()], vec![]));
                        "subscription"
                    }
                    Inbound::Leave { .. } => "leave",
                    other => panic!("seed-0{i}: {other:?}"),
                }
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "join",
                "request",
                "sync",
                "ephemeral",
                "subscription",
                "leave"
            ]
        );
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let deep = (0..100).fold(Value::Null, |inner, _| Value::Array(vec![inner]));
        for frame in [
            vec![],
            vec![0xff, 0x00, 0x13],
            cbor(text("join")),
            cbor(map(vec![("type", text("bogus")), ("senderId", text("c"))])),
            cbor(map(vec![("type", text("sync")), ("senderId", text("c"))])),
            cbor(map(vec![("type", Value::Integer(3.into()))])),
            cbor(map(vec![("type", text("join")), ("senderId", deep)])),
            cbor(map(vec![
                ("type", text("sync")),
                ("senderId", text("c")),
                ("documentId", text("not-an-id")),
                ("data", Value::Bytes(vec![])),
            ])),
        ] {
            assert!(decode(&frame).is_err(), "{frame:?} decoded");
        }
    }

    #[test]
    fn the_peer_message_carries_peer_metadata() {
        let bytes = encode(
            "node",
            &Outbound::Peer {
                target_id: "client",
                storage_id: "store",
            },
        );
        let value: Value = ciborium::de::from_reader(&bytes[..]).unwrap();
        let expected = map(vec![
            ("type", text("peer")),
            ("senderId", text("node")),
            ("targetId", text("client")),
            ("selectedProtocolVersion", text("1")),
            (
                "peerMetadata",
                map(vec![
                    ("storageId", text("store")),
                    ("isEphemeral", Value::Bool(false)),
                ]),
            ),
        ]);
        assert_eq!(value, expected);
    }
}
