//! Typed errors for encoding and decoding frames.

/// Why a frame could not be encoded or decoded.
///
/// Every decoding failure of untrusted input maps to one of these; decoding
/// never panics. A peer that sends anything producing an error should be
/// disconnected: after an error the byte stream can no longer be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A frame's claimed or actual payload length is over the limit.
    #[error("frame payload of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// Claimed or actual payload length.
        len: usize,
        /// The limit, [`MAX_FRAME_BYTES`](crate::MAX_FRAME_BYTES).
        max: usize,
    },
    /// The input ended inside a frame.
    #[error("truncated frame: needed {needed} bytes, have {have}")]
    Truncated {
        /// Bytes the frame needs (prefix included), as far as known so far.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// A frame with a zero-length payload (no version byte).
    #[error("empty frame payload")]
    EmptyFrame,
    /// The payload's first byte is not a wire format version this build speaks.
    #[error("unsupported wire format version {version} (this build speaks {supported})")]
    UnsupportedVersion {
        /// The version byte received.
        version: u8,
        /// The version this build supports, [`WIRE_FORMAT_VERSION`](crate::WIRE_FORMAT_VERSION).
        supported: u8,
    },
    /// The payload is not a well-formed message (bincode rejected it).
    #[error("malformed message: {0}")]
    Decode(String),
    /// The payload held a complete message followed by extra bytes.
    #[error("{extra} unexpected bytes after the message")]
    TrailingBytes {
        /// Number of bytes left over.
        extra: usize,
    },
    /// A well-formed message that breaks a protocol limit or invariant
    /// (too many changes or heads, an empty change or sync message).
    #[error("invalid message: {0}")]
    Invalid(&'static str),
    /// The message could not be serialized.
    #[error("cannot encode message: {0}")]
    Encode(String),
}
