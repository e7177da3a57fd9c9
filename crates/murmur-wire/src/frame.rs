//! Framing: length prefix, version byte, bounded bincode body.

use bincode::config::Config;
use bincode::enc::write::SizeWriter;
use bincode::error::DecodeError;

use crate::message::LIMIT_ERRORS;
use crate::{Message, WireError, MAX_FRAME_BYTES, WIRE_FORMAT_VERSION};

/// Bytes in the big-endian payload length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// bincode's decode budget, in bytes.
///
/// bincode charges the budget the in-memory size of each integer it reads
/// (8 bytes for a length), not the 1..9 bytes of its varint on the wire, so a
/// valid body of up to `MAX_FRAME_BYTES - 1` bytes can be charged slightly
/// more. The worst case today is a push of [`crate::MAX_CHANGES_PER_PUSH`]
/// changes: about 7 extra bytes per change, ~7 KiB in all. The slack is
/// generous; what matters is that the budget is finite and close to the
/// frame limit.
const DECODE_LIMIT: usize = MAX_FRAME_BYTES + 64 * 1024;

/// The bincode configuration of a message body.
///
/// The limit makes bincode check every claimed length against the budget
/// *before* allocating; without it a 10-byte input claiming a 2^50-byte
/// string makes bincode attempt the allocation and abort the process.
fn bincode_config() -> impl Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Encodes one message as a frame: a 4-byte big-endian payload length, then
/// the payload, which is [`WIRE_FORMAT_VERSION`] followed by the bincode body.
///
/// Fails with [`WireError::Invalid`] if the message breaks a protocol limit
/// (see [`Message::validate`]) and with [`WireError::FrameTooLarge`] if the
/// payload would exceed [`MAX_FRAME_BYTES`]; nothing is allocated in that case.
pub fn encode_frame(msg: &Message) -> Result<Vec<u8>, WireError> {
    msg.validate()?;
    // Measure first, so an oversized message is rejected without building it
    // and the frame is allocated once at its exact size.
    let mut size = SizeWriter::default();
    bincode::serde::encode_into_writer(msg, &mut size, bincode_config())
        .map_err(|e| WireError::Encode(e.to_string()))?;
    let payload_len = 1 + size.bytes_written;
    let too_large = WireError::FrameTooLarge {
        len: payload_len,
        max: MAX_FRAME_BYTES,
    };
    if payload_len > MAX_FRAME_BYTES {
        return Err(too_large);
    }
    let prefix = u32::try_from(payload_len).map_err(|_| too_large)?;

    let mut frame = vec![0u8; LENGTH_PREFIX_BYTES + payload_len];
    frame[..LENGTH_PREFIX_BYTES].copy_from_slice(&prefix.to_be_bytes());
    frame[LENGTH_PREFIX_BYTES] = WIRE_FORMAT_VERSION;
    let written = bincode::serde::encode_into_slice(
        msg,
        &mut frame[LENGTH_PREFIX_BYTES + 1..],
        bincode_config(),
    )
    .map_err(|e| WireError::Encode(e.to_string()))?;
    if written != size.bytes_written {
        return Err(WireError::Encode(format!(
            "encoded size changed between passes ({} then {written})",
            size.bytes_written
        )));
    }
    Ok(frame)
}

/// Decodes one payload (the bytes after the length prefix).
///
/// Checks the version byte, decodes the body with bincode under the size
/// limit, rejects leftover bytes, and validates the message's limits.
pub fn decode_payload(payload: &[u8]) -> Result<Message, WireError> {
    let Some((&version, body)) = payload.split_first() else {
        return Err(WireError::EmptyFrame);
    };
    if payload.len() > MAX_FRAME_BYTES {
        return Err(WireError::FrameTooLarge {
            len: payload.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    if version != WIRE_FORMAT_VERSION {
        return Err(WireError::UnsupportedVersion {
            version,
            supported: WIRE_FORMAT_VERSION,
        });
    }
    let (msg, used): (Message, usize) =
        bincode::serde::decode_from_slice(body, bincode_config()).map_err(decode_error)?;
    if used < body.len() {
        return Err(WireError::TrailingBytes {
            extra: body.len() - used,
        });
    }
    msg.validate()?;
    Ok(msg)
}

/// Maps a bincode error to ours, recognising the limit violations that the
/// bounded deserializers in [`crate::message`] raise mid-decode.
fn decode_error(err: DecodeError) -> WireError {
    if let DecodeError::OtherString(text) = &err {
        if let Some(reason) = LIMIT_ERRORS.into_iter().find(|r| *r == text.as_str()) {
            return WireError::Invalid(reason);
        }
        return WireError::Decode(text.clone());
    }
    WireError::Decode(err.to_string())
}

/// Reads a frame's length prefix, if `bytes` holds one, rejecting a claim over
/// the limit.
fn read_prefix(bytes: &[u8]) -> Result<Option<usize>, WireError> {
    let Some(prefix) = bytes.first_chunk::<LENGTH_PREFIX_BYTES>() else {
        return Ok(None);
    };
    // u32 always fits in usize on the platforms we support (32/64-bit).
    let len = u32::from_be_bytes(*prefix) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(WireError::FrameTooLarge {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
    Ok(Some(len))
}

/// Decodes exactly one whole frame (length prefix and payload).
///
/// Errors on an oversized length claim, on input that ends inside the frame
/// ([`WireError::Truncated`]), and on bytes after the frame
/// ([`WireError::TrailingBytes`]).
pub fn decode_frame(frame: &[u8]) -> Result<Message, WireError> {
    let Some(len) = read_prefix(frame)? else {
        return Err(WireError::Truncated {
            needed: LENGTH_PREFIX_BYTES,
            have: frame.len(),
        });
    };
    let end = LENGTH_PREFIX_BYTES + len;
    match frame.len().cmp(&end) {
        std::cmp::Ordering::Less => Err(WireError::Truncated {
            needed: end,
            have: frame.len(),
        }),
        std::cmp::Ordering::Greater => Err(WireError::TrailingBytes {
            extra: frame.len() - end,
        }),
        std::cmp::Ordering::Equal => decode_payload(&frame[LENGTH_PREFIX_BYTES..]),
    }
}

/// Buffers above this capacity are released once drained, so an idle
/// connection that once received a large frame does not keep it allocated.
const RETAINED_CAPACITY: usize = 64 * 1024;

/// Incremental decoder for a byte stream carrying consecutive frames (one QUIC
/// stream, say).
///
/// Feed received bytes to [`push`](Self::push), then call
/// [`next_message`](Self::next_message) until it returns `Ok(None)`. Used that
/// way, the buffer never holds more than one incomplete frame
/// (< 4 + [`MAX_FRAME_BYTES`] bytes) plus the latest push. Memory grows only
/// with bytes actually received, never with a claimed length, and a length
/// prefix over the limit is rejected as soon as it arrives, before its payload
/// is buffered.
///
/// **Poisoning:** after any error (from `push` or `next_message`) the decoder
/// is poisoned: every later call returns a clone of that same error, because
/// the stream can no longer be trusted. Close the stream.
///
/// At end of stream, a non-zero [`buffered`](Self::buffered) means the peer
/// stopped mid-frame.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    /// Received bytes; `buf[start..]` are not yet decoded.
    buf: Vec<u8>,
    /// Start of the first undecoded frame in `buf`.
    start: usize,
    /// Offset in `buf` of the next length prefix not yet checked by `push`.
    unchecked: usize,
    /// The error that poisoned this decoder, if any.
    poisoned: Option<WireError>,
}

impl FrameDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    ///
    /// Returns [`WireError::FrameTooLarge`] (and poisons the decoder) if any
    /// length prefix now fully buffered claims more than [`MAX_FRAME_BYTES`].
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.check_poison()?;
        self.compact();
        self.buf.extend_from_slice(bytes);
        // Walk the prefixes of every frame that starts in the new bytes.
        while let Some(rest) = self.buf.get(self.unchecked..) {
            match read_prefix(rest) {
                Ok(Some(len)) => self.unchecked += LENGTH_PREFIX_BYTES + len,
                Ok(None) => break,
                Err(e) => return Err(self.poison(e)),
            }
        }
        Ok(())
    }

    /// Decodes the next complete message, if one is fully buffered.
    ///
    /// `Ok(None)` means more bytes are needed. An error poisons the decoder.
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        self.check_poison()?;
        let pending = &self.buf[self.start..];
        let len = match read_prefix(pending) {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.poison(e)),
        };
        let Some(payload) = pending.get(LENGTH_PREFIX_BYTES..LENGTH_PREFIX_BYTES + len) else {
            return Ok(None);
        };
        let decoded = decode_payload(payload);
        self.start += LENGTH_PREFIX_BYTES + len;
        if self.start == self.buf.len() {
            self.reset_buffer();
        }
        match decoded {
            Ok(msg) => Ok(Some(msg)),
            Err(e) => Err(self.poison(e)),
        }
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    fn check_poison(&self) -> Result<(), WireError> {
        match &self.poisoned {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn poison(&mut self, err: WireError) -> WireError {
        self.poisoned = Some(err.clone());
        // Nothing buffered will ever be decoded: free it.
        self.buf = Vec::new();
        self.start = 0;
        self.unchecked = 0;
        err
    }

    /// Drops already-decoded bytes from the front of the buffer.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.unchecked = self.unchecked.saturating_sub(self.start);
            self.start = 0;
        }
    }

    /// Empties the buffer, releasing it if it grew large.
    fn reset_buffer(&mut self) {
        if self.buf.capacity() > RETAINED_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        self.start = 0;
        self.unchecked = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DocumentId;

    fn sync_frame(len: usize) -> Vec<u8> {
        let msg = Message::Sync {
            doc: DocumentId([1; 16]),
            message: vec![9; len],
        };
        encode_frame(&msg).unwrap()
    }

    #[test]
    fn decoded_bytes_are_dropped_before_the_next_push() {
        let frame = sync_frame(10);
        let mut decoder = FrameDecoder::new();
        decoder.push(&frame).unwrap();
        decoder.push(&frame[..5]).unwrap();
        assert!(decoder.next_message().unwrap().is_some());
        assert_eq!(decoder.buffered(), 5);
        decoder.push(&frame[5..]).unwrap();
        // The first frame is gone from the buffer, not just skipped.
        assert_eq!(decoder.buf.len(), frame.len());
        assert!(decoder.next_message().unwrap().is_some());
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn large_buffer_is_released_once_drained() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&sync_frame(1 << 20)).unwrap();
        assert!(decoder.next_message().unwrap().is_some());
        assert!(decoder.buf.capacity() <= RETAINED_CAPACITY);
    }

    #[test]
    fn buffer_grows_with_bytes_received_not_bytes_claimed() {
        let frame = sync_frame(1 << 20);
        let mut decoder = FrameDecoder::new();
        decoder.push(&frame[..100]).unwrap();
        assert!(decoder.buf.capacity() < 4096);
        assert_eq!(decoder.next_message(), Ok(None));
    }

    #[test]
    fn poisoning_frees_the_buffer() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&sync_frame(1000)[..500]).unwrap();
        assert!(
            decoder.push(&[0xff; 4]).is_ok(),
            "inside a payload, not a prefix"
        );
        let mut decoder = FrameDecoder::new();
        let mut bytes = sync_frame(1000);
        bytes.extend([0xff; 4]);
        assert!(decoder.push(&bytes).is_err());
        assert_eq!(decoder.buffered(), 0);
        assert_eq!(decoder.buf.capacity(), 0);
    }
}
