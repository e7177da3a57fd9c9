//! The messages peers exchange, and the limits they must respect.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{
    ChangeHash, DocumentId, NodeId, WireError, DIGEST_LEAF_LEVEL, MAX_CHANGES_PER_PUSH,
    MAX_DIGEST_LEAVES, MAX_DIGEST_NODES, MAX_HEADS, MAX_MEMBERSHIP_BYTES,
};

/// Why a message breaks a limit. These are also raised *while* decoding (see
/// [`bounded`]), and [`crate::decode_payload`] maps them back to
/// [`WireError::Invalid`], so the error does not depend on where it was caught.
pub(crate) const TOO_MANY_CHANGES: &str = "too many changes in one push";
pub(crate) const EMPTY_CHANGE: &str = "empty change";
pub(crate) const EMPTY_SYNC_MESSAGE: &str = "empty sync message";
pub(crate) const TOO_MANY_HEADS: &str = "too many heads in one message";
pub(crate) const BAD_MEMBERSHIP_SIZE: &str = "membership message empty or over its size limit";

pub(crate) const TOO_MANY_DIGEST_NODES: &str = "too many digest nodes in one message";
pub(crate) const BAD_DIGEST_NODE: &str = "digest node level or prefix out of range";
pub(crate) const TOO_MANY_DIGEST_LEAVES: &str = "too many digest leaves in one message";
pub(crate) const BAD_DIGEST_LEAVES: &str =
    "digest leaves outside their bucket, out of order, or an empty partial message";

/// Limit violations that the decoder can report through bincode's error type.
pub(crate) const LIMIT_ERRORS: [&str; 4] = [
    TOO_MANY_CHANGES,
    TOO_MANY_HEADS,
    TOO_MANY_DIGEST_NODES,
    TOO_MANY_DIGEST_LEAVES,
];

/// One node of a peer's reconciliation digest: a trie over the document-id
/// space, fanout 16, one nibble of the id per level.
///
/// The node at `level` (0 to [`DIGEST_LEAF_LEVEL`]) with `prefix` (the id's
/// first `level` nibbles, so `prefix < 16^level`) covers every document
/// whose id starts with those nibbles; `xor` is the xor of their leaf
/// values (a hash of the id and the document's heads) and `count` how many
/// there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DigestNode {
    /// Depth in the trie: 0 is the root.
    pub level: u8,
    /// The first `level` nibbles of the ids below, as a number.
    pub prefix: u32,
    /// Xor of the leaf values below.
    pub xor: u64,
    /// Documents below.
    pub count: u32,
}

impl DigestNode {
    /// True if `level` and `prefix` name a node of the trie.
    pub fn is_valid_position(level: u8, prefix: u32) -> bool {
        level <= DIGEST_LEAF_LEVEL && u64::from(prefix) < 1u64 << (4 * u32::from(level))
    }
}

/// The first message on every connection: who is speaking, and which protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
    pub protocol_version: u16,
    /// The sender's node id.
    pub node_id: NodeId,
    /// Drawn at random each time the sender's network starts: a connection
    /// from a new session of a node replaces the one from its old session
    /// (a process that was killed leaves a connection its peers still hold
    /// until it times out).
    pub session: u64,
}

/// Every message that crosses the network.
///
/// **Variant order is part of the wire format**: a variant is encoded as its
/// index. Never reorder or remove variants; new variants go only at the
/// end, and changing the meaning of an existing one needs a new
/// [`WIRE_FORMAT_VERSION`](crate::WIRE_FORMAT_VERSION).
///
/// `Debug` prints byte payloads as sizes, so messages are safe to log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// First message on every connection.
    Hello(Hello),
    /// Eager push: raw Automerge change bytes (each one `Change::raw_bytes()`),
    /// in causal order when possible.
    ///
    /// At most [`MAX_CHANGES_PER_PUSH`] changes, none of them empty.
    Changes {
        /// The document the changes belong to.
        doc: DocumentId,
        /// The changes' raw bytes.
        #[serde(with = "bounded::changes")]
        changes: Vec<Vec<u8>>,
    },
    /// One Automerge sync-protocol message (`sync::Message::encode()` bytes)
    /// for one document. Never empty.
    Sync {
        /// The document being synced.
        doc: DocumentId,
        /// The encoded sync message.
        #[serde(with = "bounded::bytes")]
        message: Vec<u8>,
    },
    /// "My heads for this document are now these": sent after applying a push,
    /// so the pusher can count replicas. At most [`MAX_HEADS`] heads.
    Heads {
        /// The document.
        doc: DocumentId,
        /// The sender's current heads of `doc`.
        #[serde(deserialize_with = "bounded::heads")]
        heads: Vec<ChangeHash>,
    },
    /// One SWIM membership packet (foca's encoding), opaque to the wire
    /// layer. Never empty; at most [`MAX_MEMBERSHIP_BYTES`].
    Membership {
        /// The packet.
        #[serde(with = "bounded::bytes")]
        data: Vec<u8>,
    },
    /// Document-set reconciliation: some nodes of the sender's digest. The
    /// receiver answers each node that differs from its own with its own
    /// children of it (or, for a bucket, its leaves). At most
    /// [`MAX_DIGEST_NODES`], each at a valid position.
    DigestNodes {
        /// The nodes.
        #[serde(deserialize_with = "bounded::digest_nodes")]
        nodes: Vec<DigestNode>,
    },
    /// Document-set reconciliation: the sender's leaves (document id, leaf
    /// value) of one bucket, or of one id range of it when the bucket holds
    /// more than [`MAX_DIGEST_LEAVES`] documents. The message covers the
    /// ids of the bucket after `after` (from the bucket's start if `None`)
    /// up to its end if `through_end`, else up to and including the last
    /// entry. Entries are in strictly ascending id order, all in the bucket.
    DigestLeaves {
        /// The bucket: the first two bytes of its ids, big-endian.
        bucket: u16,
        /// Ids up to and including this one are not covered.
        after: Option<DocumentId>,
        /// The entries.
        #[serde(deserialize_with = "bounded::digest_leaves")]
        entries: Vec<(DocumentId, u64)>,
        /// True if the message covers the bucket to its end.
        through_end: bool,
    },
    /// "Send me your heads of this document": the sender waits for copies
    /// of its writes of `doc` and may have lost the receiver's [`Heads`]
    /// report with a connection that closed. The receiver answers with a
    /// report of its durable heads if it holds the document.
    ///
    /// [`Heads`]: Message::Heads
    HeadsWanted {
        /// The document.
        doc: DocumentId,
    },
    /// "This document is deleted": the sender holds its tombstone. The
    /// receiver deletes it too (a deletion wins over every change).
    Deleted {
        /// The document.
        doc: DocumentId,
    },
}

/// The digest bucket `doc` belongs to: the first two bytes of its id.
pub fn digest_bucket(doc: &DocumentId) -> u16 {
    u16::from_be_bytes([doc.0[0], doc.0[1]])
}

fn validate_digest_leaves(
    bucket: u16,
    after: Option<&DocumentId>,
    entries: &[(DocumentId, u64)],
    through_end: bool,
) -> Result<(), WireError> {
    if entries.len() > MAX_DIGEST_LEAVES {
        return Err(WireError::Invalid(TOO_MANY_DIGEST_LEAVES));
    }
    let in_bucket = |doc: &DocumentId| digest_bucket(doc) == bucket;
    let ordered = entries.windows(2).all(|pair| pair[0].0 < pair[1].0);
    let after_ok = match (after, entries.first()) {
        (Some(after), Some((first, _))) => in_bucket(after) && after < first,
        (Some(after), None) => in_bucket(after),
        (None, _) => true,
    };
    let partial_ok = through_end || !entries.is_empty();
    if ordered && after_ok && partial_ok && entries.iter().all(|(doc, _)| in_bucket(doc)) {
        Ok(())
    } else {
        Err(WireError::Invalid(BAD_DIGEST_LEAVES))
    }
}

impl Message {
    /// A short static name for the variant, for metrics and logs:
    /// `"hello"`, `"changes"`, `"sync"`, `"heads"`, `"membership"`,
    /// `"digest_nodes"`, `"digest_leaves"`, `"heads_wanted"` or `"deleted"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Changes { .. } => "changes",
            Message::Sync { .. } => "sync",
            Message::Heads { .. } => "heads",
            Message::Membership { .. } => "membership",
            Message::DigestNodes { .. } => "digest_nodes",
            Message::DigestLeaves { .. } => "digest_leaves",
            Message::HeadsWanted { .. } => "heads_wanted",
            Message::Deleted { .. } => "deleted",
        }
    }

    /// The document this message is about, if any.
    pub fn doc(&self) -> Option<DocumentId> {
        match self {
            Message::Hello(_)
            | Message::Membership { .. }
            | Message::DigestNodes { .. }
            | Message::DigestLeaves { .. } => None,
            Message::Changes { doc, .. }
            | Message::Sync { doc, .. }
            | Message::Heads { doc, .. }
            | Message::HeadsWanted { doc }
            | Message::Deleted { doc } => Some(*doc),
        }
    }

    /// Checks the protocol limits and invariants that the type system does not.
    ///
    /// [`crate::encode_frame`] and the decoders call this; it is public so a
    /// sender can check a message before queueing it.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            Message::Hello(_) | Message::HeadsWanted { .. } | Message::Deleted { .. } => Ok(()),
            Message::Changes { changes, .. } => {
                if changes.len() > MAX_CHANGES_PER_PUSH {
                    Err(WireError::Invalid(TOO_MANY_CHANGES))
                } else if changes.iter().any(Vec::is_empty) {
                    Err(WireError::Invalid(EMPTY_CHANGE))
                } else {
                    Ok(())
                }
            }
            Message::Sync { message, .. } if message.is_empty() => {
                Err(WireError::Invalid(EMPTY_SYNC_MESSAGE))
            }
            Message::Sync { .. } => Ok(()),
            Message::Heads { heads, .. } if heads.len() > MAX_HEADS => {
                Err(WireError::Invalid(TOO_MANY_HEADS))
            }
            Message::Heads { .. } => Ok(()),
            Message::Membership { data }
                if data.is_empty() || data.len() > MAX_MEMBERSHIP_BYTES =>
            {
                Err(WireError::Invalid(BAD_MEMBERSHIP_SIZE))
            }
            Message::Membership { .. } => Ok(()),
            Message::DigestNodes { nodes } if nodes.len() > MAX_DIGEST_NODES => {
                Err(WireError::Invalid(TOO_MANY_DIGEST_NODES))
            }
            Message::DigestNodes { nodes } => {
                if nodes
                    .iter()
                    .all(|node| DigestNode::is_valid_position(node.level, node.prefix))
                {
                    Ok(())
                } else {
                    Err(WireError::Invalid(BAD_DIGEST_NODE))
                }
            }
            Message::DigestLeaves {
                bucket,
                after,
                entries,
                through_end,
            } => validate_digest_leaves(*bucket, after.as_ref(), entries, *through_end),
        }
    }
}

/// Shows byte payloads by size only: a push can be megabytes.
impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Hello(hello) => f.debug_tuple("Hello").field(hello).finish(),
            Message::Changes { doc, changes } => f
                .debug_struct("Changes")
                .field("doc", doc)
                .field("count", &changes.len())
                .field("bytes", &changes.iter().map(Vec::len).sum::<usize>())
                .finish(),
            Message::Sync { doc, message } => f
                .debug_struct("Sync")
                .field("doc", doc)
                .field("bytes", &message.len())
                .finish(),
            Message::Heads { doc, heads } => f
                .debug_struct("Heads")
                .field("doc", doc)
                .field("heads", heads)
                .finish(),
            Message::HeadsWanted { doc } => {
                f.debug_struct("HeadsWanted").field("doc", doc).finish()
            }
            Message::Deleted { doc } => f.debug_struct("Deleted").field("doc", doc).finish(),
            Message::Membership { data } => f
                .debug_struct("Membership")
                .field("bytes", &data.len())
                .finish(),
            Message::DigestNodes { nodes } => f
                .debug_struct("DigestNodes")
                .field("count", &nodes.len())
                .finish(),
            Message::DigestLeaves {
                bucket,
                after,
                entries,
                through_end,
            } => f
                .debug_struct("DigestLeaves")
                .field("bucket", bucket)
                .field("after", after)
                .field("entries", &entries.len())
                .field("through_end", through_end)
                .finish(),
        }
    }
}

/// Serde adapters that keep decoding memory proportional to the input.
///
/// bincode's size limit bounds byte strings (each claimed length is checked
/// against the limit, and here we additionally borrow from the input rather
/// than pre-allocating), but its serde path does not apply the limit to the
/// *element count* of a sequence. serde itself caps pre-allocation at 1 MiB, so
/// a huge claimed count cannot abort the process, yet a 16 MiB frame of
/// one-byte empty changes would still become 16 Mi `Vec`s (~400 MiB). So the
/// count is checked against the protocol limit before any element is read.
mod bounded {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
    use serde::Deserialize;

    use super::{
        DigestNode, TOO_MANY_CHANGES, TOO_MANY_DIGEST_LEAVES, TOO_MANY_DIGEST_NODES, TOO_MANY_HEADS,
    };
    use crate::{
        ChangeHash, DocumentId, MAX_CHANGES_PER_PUSH, MAX_DIGEST_LEAVES, MAX_DIGEST_NODES,
        MAX_HEADS,
    };

    /// One byte string, serialized with `serialize_bytes` (length + raw bytes).
    pub mod bytes {
        use super::*;

        pub use serde_bytes::serialize;

        /// Deserializes via `deserialize_bytes`, which bincode answers by
        /// borrowing from the input slice: a claimed length longer than the
        /// input fails before anything is allocated.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
            d.deserialize_bytes(BytesVisitor)
        }

        struct BytesVisitor;

        impl Visitor<'_> for BytesVisitor {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }

            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }

        /// A byte string as a sequence element.
        pub struct Owned(pub Vec<u8>);

        impl<'de> Deserialize<'de> for Owned {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                deserialize(d).map(Owned)
            }
        }
    }

    /// `Vec<Vec<u8>>` of at most [`MAX_CHANGES_PER_PUSH`] byte strings.
    pub mod changes {
        use super::*;
        use serde::ser::{SerializeSeq, Serializer};

        pub fn serialize<S: Serializer>(changes: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(changes.len()))?;
            for change in changes {
                seq.serialize_element(serde_bytes::Bytes::new(change))?;
            }
            seq.end()
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
            let owned: Vec<bytes::Owned> =
                d.deserialize_seq(BoundedSeq::new(MAX_CHANGES_PER_PUSH, TOO_MANY_CHANGES))?;
            Ok(owned.into_iter().map(|b| b.0).collect())
        }
    }

    /// `Vec<ChangeHash>` of at most [`MAX_HEADS`] hashes.
    pub fn heads<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ChangeHash>, D::Error> {
        d.deserialize_seq(BoundedSeq::new(MAX_HEADS, TOO_MANY_HEADS))
    }

    /// `Vec<DigestNode>` of at most [`MAX_DIGEST_NODES`] nodes.
    pub fn digest_nodes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<DigestNode>, D::Error> {
        d.deserialize_seq(BoundedSeq::new(MAX_DIGEST_NODES, TOO_MANY_DIGEST_NODES))
    }

    /// `Vec<(DocumentId, u64)>` of at most [`MAX_DIGEST_LEAVES`] entries.
    pub fn digest_leaves<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(DocumentId, u64)>, D::Error> {
        d.deserialize_seq(BoundedSeq::new(MAX_DIGEST_LEAVES, TOO_MANY_DIGEST_LEAVES))
    }

    /// Visits a sequence of at most `max` elements, failing with `too_many`
    /// as soon as the claimed length (or the actual count) is over.
    struct BoundedSeq<T> {
        max: usize,
        too_many: &'static str,
        element: PhantomData<T>,
    }

    impl<T> BoundedSeq<T> {
        fn new(max: usize, too_many: &'static str) -> Self {
            Self {
                max,
                too_many,
                element: PhantomData,
            }
        }
    }

    impl<'de, T: DeserializeOwned> Visitor<'de> for BoundedSeq<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a sequence of at most {} elements", self.max)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            // bincode reports the exact claimed length as the size hint.
            let claimed = seq.size_hint().unwrap_or(0);
            if claimed > self.max {
                return Err(de::Error::custom(self.too_many));
            }
            let mut out = Vec::with_capacity(claimed);
            while let Some(element) = seq.next_element()? {
                if out.len() == self.max {
                    return Err(de::Error::custom(self.too_many));
                }
                out.push(element);
            }
            Ok(out)
        }
    }
}
