//! The messages peers exchange, and the limits they must respect.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{
    ChangeHash, DocumentId, NodeId, WireError, MAX_CHANGES_PER_PUSH, MAX_HEADS,
    MAX_MEMBERSHIP_BYTES,
};

/// Why a message breaks a limit. These are also raised *while* decoding (see
/// [`bounded`]), and [`crate::decode_payload`] maps them back to
/// [`WireError::Invalid`], so the error does not depend on where it was caught.
pub(crate) const TOO_MANY_CHANGES: &str = "too many changes in one push";
pub(crate) const EMPTY_CHANGE: &str = "empty change";
pub(crate) const EMPTY_SYNC_MESSAGE: &str = "empty sync message";
pub(crate) const TOO_MANY_HEADS: &str = "too many heads in one message";
pub(crate) const BAD_MEMBERSHIP_SIZE: &str = "membership message empty or over its size limit";

/// Limit violations that the decoder can report through bincode's error type.
pub(crate) const LIMIT_ERRORS: [&str; 2] = [TOO_MANY_CHANGES, TOO_MANY_HEADS];

/// The first message on every connection: who is speaking, and which protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
    pub protocol_version: u16,
    /// The sender's node id.
    pub node_id: NodeId,
}

/// Every message that crosses the network.
///
/// **Variant order is part of the wire format**: a variant is encoded as its
/// index. Never reorder or remove variants; new variants go only at the end
/// (document-set reconciliation is planned), and changing
/// the meaning of an existing one needs a new
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
}

impl Message {
    /// A short static name for the variant, for metrics and logs:
    /// `"hello"`, `"changes"`, `"sync"`, `"heads"` or `"membership"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Changes { .. } => "changes",
            Message::Sync { .. } => "sync",
            Message::Heads { .. } => "heads",
            Message::Membership { .. } => "membership",
        }
    }

    /// The document this message is about, if any.
    pub fn doc(&self) -> Option<DocumentId> {
        match self {
            Message::Hello(_) | Message::Membership { .. } => None,
            Message::Changes { doc, .. }
            | Message::Sync { doc, .. }
            | Message::Heads { doc, .. } => Some(*doc),
        }
    }

    /// Checks the protocol limits and invariants that the type system does not.
    ///
    /// [`crate::encode_frame`] and the decoders call this; it is public so a
    /// sender can check a message before queueing it.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            Message::Hello(_) => Ok(()),
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
            Message::Membership { data } => f
                .debug_struct("Membership")
                .field("bytes", &data.len())
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

    use super::{TOO_MANY_CHANGES, TOO_MANY_HEADS};
    use crate::{ChangeHash, MAX_CHANGES_PER_PUSH, MAX_HEADS};

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
