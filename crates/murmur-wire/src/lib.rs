//! Murmur's wire protocol: every message that crosses the network between
//! Murmur nodes, its versioned encoding, frame size limits, and typed decode
//! errors.
//!
//! Everything read from the network is untrusted. Decoding checks every length
//! against a limit *before* allocating, validates the message, and reports any
//! problem as a [`WireError`]; it never panics.
//!
//! # Frame layout
//!
//! ```text
//! +----------------+---------+---------------------------------+
//! | payload length | version | bincode body (Message)          |
//! | u32 big-endian | u8 = 1  | standard config: varint ints    |
//! +----------------+---------+---------------------------------+
//!     4 bytes      '------------- payload (1..=MAX_FRAME_BYTES) -'
//! ```
//!
//! The length prefix counts the payload only. The version byte
//! ([`WIRE_FORMAT_VERSION`]) lets a future encoding be told apart from this one
//! before the body is parsed. [`PROTOCOL_VERSION`], carried in [`Hello`], is
//! the separate, higher-level protocol version that peers negotiate.
//!
//! # Limits, and why
//!
//! * [`MAX_FRAME_BYTES`] (16 MiB payload): bounds the memory one frame can
//!   demand. A length prefix over it is rejected as soon as its 4 bytes arrive.
//! * [`MAX_CHANGES_PER_PUSH`] (1024) and [`MAX_HEADS`] (1024): bound the
//!   number of allocations one frame can cause. They are checked against the
//!   *claimed* element count before any element is decoded, so a frame full of
//!   tiny elements cannot multiply into hundreds of megabytes of `Vec`s.
//! * [`MAX_DIGEST_NODES`] (4096) and [`MAX_DIGEST_LEAVES`] (16,384): the
//!   same, for document-set reconciliation messages, whose positions and
//!   bucket membership are validated too.
//! * Byte strings are checked against the bytes actually present before they
//!   are copied; bincode runs with a size limit so no claimed length is ever
//!   allocated up front.
//!
//! Senders are held to the same limits: [`encode_frame`] refuses a message
//! that the receiver would reject. Split large pushes across several frames.
//!
//! # Example
//!
//! ```
//! use murmur_wire::{decode_frame, encode_frame, DocumentId, FrameDecoder, Message};
//!
//! let doc: DocumentId = DocumentId::from_bytes([7; 16]);
//! let msg = Message::Changes { doc, changes: vec![b"raw automerge change".to_vec()] };
//!
//! let frame = encode_frame(&msg)?;
//! assert_eq!(decode_frame(&frame)?, msg);
//!
//! // On a stream, frames arrive in arbitrary pieces.
//! let mut decoder = FrameDecoder::new();
//! let (first, second) = frame.split_at(3);
//! decoder.push(first)?;
//! assert_eq!(decoder.next_message()?, None);
//! decoder.push(second)?;
//! assert_eq!(decoder.next_message()?, Some(msg));
//! # Ok::<(), murmur_wire::WireError>(())
//! ```

mod error;
mod frame;
mod ids;
mod message;

pub use error::WireError;
pub use frame::{decode_frame, decode_payload, encode_frame, FrameDecoder, LENGTH_PREFIX_BYTES};
pub use ids::{ChangeHash, DocumentId, NodeId, ParseIdError};
pub use message::{digest_bucket, DigestNode, Hello, Message};

/// The protocol version a node announces in [`Hello`].
/// Version 2: [`Hello`] carries the sender's session. Version 3:
/// [`Message::HeadsWanted`].
pub const PROTOCOL_VERSION: u16 = 3;

/// The first byte of every frame payload: the version of this encoding.
pub const WIRE_FORMAT_VERSION: u8 = 1;

/// Largest frame payload, in bytes, excluding the 4-byte length prefix.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Most changes one [`Message::Changes`] push may carry.
pub const MAX_CHANGES_PER_PUSH: usize = 1024;

/// Most change hashes any one message may carry.
pub const MAX_HEADS: usize = 1024;

/// Largest [`Message::Membership`] packet, in bytes (SWIM packets are
/// small: foca keeps them under a UDP datagram).
pub const MAX_MEMBERSHIP_BYTES: usize = 64 * 1024;

/// Most nodes one [`Message::DigestNodes`] may carry (256 nodes' worth of
/// children).
pub const MAX_DIGEST_NODES: usize = 4096;

/// Most entries one [`Message::DigestLeaves`] may carry; a larger bucket is
/// sent as several id ranges.
pub const MAX_DIGEST_LEAVES: usize = 16_384;

/// The deepest level of the reconciliation digest (see [`DigestNode`]).
pub const DIGEST_LEAF_LEVEL: u8 = 4;

// The length prefix is a u32.
const _: () = assert!(MAX_FRAME_BYTES <= u32::MAX as usize);
