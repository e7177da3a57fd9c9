//! Untrusted input: garbage, truncation, oversized claims, future versions and
//! limit violations all produce typed errors, never panics or huge allocations.

use murmur_wire::{
    decode_frame, decode_payload, encode_frame, ChangeHash, DigestNode, DocumentId, FrameDecoder,
    Hello, Message, NodeId, WireError, LENGTH_PREFIX_BYTES, MAX_CHANGES_PER_PUSH,
    MAX_DIGEST_LEAVES, MAX_DIGEST_NODES, MAX_FRAME_BYTES, MAX_HEADS, WIRE_FORMAT_VERSION,
};
use proptest::collection::vec;
use proptest::prelude::*;

const DOC: DocumentId = DocumentId([0x42; 16]);

/// bincode variant indexes of `Message` (single-byte varints).
const CHANGES: u8 = 1;
const SYNC: u8 = 2;
const HEADS: u8 = 3;

/// bincode's varint encoding of 2^50: marker 253 (u64 follows), little-endian.
fn varint_two_pow_50() -> Vec<u8> {
    let mut out = vec![253];
    out.extend((1u64 << 50).to_le_bytes());
    out
}

/// A payload for `variant` about `DOC`, followed by `rest`.
fn payload(variant: u8, rest: &[u8]) -> Vec<u8> {
    let mut out = vec![WIRE_FORMAT_VERSION, variant];
    out.extend(DOC.0);
    out.extend(rest);
    out
}

/// Prefixes a payload with its length.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend(payload);
    out
}

/// A payload encoded without validation, as a misbehaving peer might send.
fn unvalidated_payload(msg: &Message) -> Vec<u8> {
    let mut out = vec![WIRE_FORMAT_VERSION];
    out.extend(bincode::serde::encode_to_vec(msg, bincode::config::standard()).unwrap());
    out
}

fn valid_frame() -> Vec<u8> {
    encode_frame(&Message::Changes {
        doc: DOC,
        changes: vec![b"first change".to_vec(), vec![7; 300]],
    })
    .unwrap()
}

/// Feeds bytes to a decoder in chunks until an error; returns the error, if any.
fn drive_decoder(bytes: &[u8], chunk: usize) -> Option<WireError> {
    let mut decoder = FrameDecoder::new();
    for piece in bytes.chunks(chunk.max(1)) {
        if let Err(e) = decoder.push(piece) {
            return Some(e);
        }
        loop {
            match decoder.next_message() {
                Ok(Some(msg)) => assert!(msg.validate().is_ok()),
                Ok(None) => break,
                Err(e) => return Some(e),
            }
        }
        assert!(decoder.buffered() <= LENGTH_PREFIX_BYTES + MAX_FRAME_BYTES + piece.len());
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic_any_decoder(
        bytes in vec(any::<u8>(), 0..4096),
        chunk in 1usize..600,
    ) {
        if let Ok(msg) = decode_frame(&bytes) {
            prop_assert!(msg.validate().is_ok());
        }
        if let Ok(msg) = decode_payload(&bytes) {
            prop_assert!(msg.validate().is_ok());
        }
        drive_decoder(&bytes, chunk);
    }

    /// Plain random bytes rarely get past the version byte; this aims at bincode.
    #[test]
    fn random_bodies_after_a_valid_version_byte_never_panic(
        variant in 0u8..6,
        body in vec(any::<u8>(), 0..4096),
    ) {
        let mut bytes = vec![WIRE_FORMAT_VERSION, variant];
        bytes.extend(body);
        if let Ok(msg) = decode_payload(&bytes) {
            prop_assert!(msg.validate().is_ok());
        }
        drive_decoder(&frame(&bytes), 97);
    }

    #[test]
    fn corrupted_valid_frames_never_panic(
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = valid_frame();
        for (index, value) in flips {
            let i = index.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok(msg) = decode_frame(&bytes) {
            prop_assert!(msg.validate().is_ok());
        }
        drive_decoder(&bytes, 5);
    }
}

#[test]
fn every_proper_prefix_of_a_frame_is_truncated() {
    let frame = valid_frame();
    for cut in 0..frame.len() {
        let prefix = &frame[..cut];
        let needed = if cut < LENGTH_PREFIX_BYTES {
            LENGTH_PREFIX_BYTES
        } else {
            frame.len()
        };
        assert_eq!(
            decode_frame(prefix),
            Err(WireError::Truncated { needed, have: cut })
        );

        let mut decoder = FrameDecoder::new();
        decoder.push(prefix).unwrap();
        assert_eq!(decoder.next_message(), Ok(None), "prefix of {cut} bytes");
        assert_eq!(decoder.buffered(), cut);
    }
}

#[test]
fn bytes_after_a_frame_are_trailing_bytes() {
    let mut bytes = valid_frame();
    bytes.extend([0, 0]);
    assert_eq!(
        decode_frame(&bytes),
        Err(WireError::TrailingBytes { extra: 2 })
    );
}

#[test]
fn bytes_after_the_message_inside_a_payload_are_trailing_bytes() {
    let mut bytes = payload(SYNC, &[2, 0xaa, 0xbb]);
    bytes.push(0xcc);
    assert_eq!(
        decode_payload(&bytes),
        Err(WireError::TrailingBytes { extra: 1 })
    );
    assert_eq!(
        decode_frame(&frame(&bytes)),
        Err(WireError::TrailingBytes { extra: 1 })
    );
}

#[test]
fn length_prefix_over_limit_is_rejected_before_buffering() {
    let claim = MAX_FRAME_BYTES + 1;
    let prefix = (claim as u32).to_be_bytes();
    let too_large = WireError::FrameTooLarge {
        len: claim,
        max: MAX_FRAME_BYTES,
    };
    assert_eq!(decode_frame(&prefix), Err(too_large.clone()));

    // Arriving a byte at a time, the error comes with the prefix's last byte.
    let mut decoder = FrameDecoder::new();
    for byte in &prefix[..3] {
        decoder.push(&[*byte]).unwrap();
    }
    assert_eq!(decoder.push(&prefix[3..]), Err(too_large.clone()));
    assert_eq!(decoder.buffered(), 0);

    // The largest possible claim, too.
    assert!(matches!(
        decode_frame(&[0xff; 4]),
        Err(WireError::FrameTooLarge { len, .. }) if len == u32::MAX as usize
    ));
}

#[test]
fn oversized_prefix_behind_a_valid_frame_fails_the_push() {
    let mut bytes = valid_frame();
    bytes.extend(((MAX_FRAME_BYTES + 1) as u32).to_be_bytes());
    let mut decoder = FrameDecoder::new();
    assert!(matches!(
        decoder.push(&bytes),
        Err(WireError::FrameTooLarge { .. })
    ));
}

#[test]
fn decoder_is_poisoned_after_an_error() {
    let mut decoder = FrameDecoder::new();
    let err = decoder.push(&[0xff; 4]).unwrap_err();
    assert_eq!(decoder.push(&valid_frame()), Err(err.clone()));
    assert_eq!(decoder.next_message(), Err(err.clone()));

    // Same for an error found while decoding a payload.
    let mut decoder = FrameDecoder::new();
    decoder.push(&frame(&[2, 0])).unwrap();
    let err = decoder.next_message().unwrap_err();
    assert!(matches!(err, WireError::UnsupportedVersion { .. }));
    assert_eq!(decoder.push(&valid_frame()), Err(err.clone()));
    assert_eq!(decoder.next_message(), Err(err));
}

#[test]
fn payload_larger_than_the_limit_is_rejected() {
    let mut bytes = vec![0u8; MAX_FRAME_BYTES + 1];
    bytes[0] = WIRE_FORMAT_VERSION;
    assert_eq!(
        decode_payload(&bytes),
        Err(WireError::FrameTooLarge {
            len: MAX_FRAME_BYTES + 1,
            max: MAX_FRAME_BYTES
        })
    );
}

/// The bincode limit test. Without `with_limit`, bincode allocates a claimed
/// length before reading it; a 2^50-byte allocation aborts the process, so
/// these tests passing at all shows nothing of the claimed size was allocated.
#[test]
fn byte_string_claiming_two_pow_50_bytes_is_a_decode_error() {
    let sync = payload(SYNC, &varint_two_pow_50());
    assert!(matches!(decode_payload(&sync), Err(WireError::Decode(_))));
    assert!(matches!(
        decode_frame(&frame(&sync)),
        Err(WireError::Decode(_))
    ));
    assert!(matches!(
        drive_decoder(&frame(&sync), 3),
        Some(WireError::Decode(_))
    ));

    // A single change of 2^50 bytes inside a push.
    let mut rest = vec![1];
    rest.extend(varint_two_pow_50());
    let changes = payload(CHANGES, &rest);
    assert!(matches!(
        decode_payload(&changes),
        Err(WireError::Decode(_))
    ));
}

/// Checks bincode itself, for the types the serde path would otherwise
/// allocate up front (`deserialize_byte_buf`, `deserialize_string`): with our
/// configuration the claimed length is checked against the limit first.
#[test]
fn bincode_limit_bounds_owned_byte_buf_and_string_claims() {
    let config = bincode::config::standard().with_limit::<MAX_FRAME_BYTES>();
    let claim = varint_two_pow_50();
    let bytes = bincode::serde::decode_from_slice::<serde_bytes::ByteBuf, _>(&claim, config);
    assert!(matches!(
        bytes,
        Err(bincode::error::DecodeError::LimitExceeded)
    ));
    let string = bincode::serde::decode_from_slice::<String, _>(&claim, config);
    assert!(matches!(
        string,
        Err(bincode::error::DecodeError::LimitExceeded)
    ));
}

#[test]
fn element_count_claims_over_the_limit_are_invalid_before_reading_elements() {
    // A claimed count of 2^50 with no elements following: rejected on the count,
    // not by running out of input.
    for variant in [CHANGES, HEADS] {
        let bytes = payload(variant, &varint_two_pow_50());
        assert!(
            matches!(decode_payload(&bytes), Err(WireError::Invalid(_))),
            "variant {variant}"
        );
    }
    // Just over the limit (1025 = varint marker 251 + u16).
    let over = (MAX_CHANGES_PER_PUSH as u16 + 1).to_le_bytes();
    let bytes = payload(CHANGES, &[251, over[0], over[1]]);
    assert_eq!(
        decode_payload(&bytes),
        Err(WireError::Invalid("too many changes in one push"))
    );
}

#[test]
fn a_frame_of_many_tiny_changes_is_rejected() {
    // 1025 empty changes: one byte each on the wire, a Vec each in memory.
    let over = (MAX_CHANGES_PER_PUSH as u16 + 1).to_le_bytes();
    let mut rest = vec![251, over[0], over[1]];
    rest.extend(vec![0; MAX_CHANGES_PER_PUSH + 1]);
    assert!(matches!(
        decode_frame(&frame(&payload(CHANGES, &rest))),
        Err(WireError::Invalid(_))
    ));
}

#[test]
fn future_wire_version_is_unsupported() {
    let mut bytes = valid_frame();
    bytes[LENGTH_PREFIX_BYTES] = 2;
    let expected = Err(WireError::UnsupportedVersion {
        version: 2,
        supported: WIRE_FORMAT_VERSION,
    });
    assert_eq!(decode_frame(&bytes), expected);
    assert_eq!(decode_payload(&bytes[LENGTH_PREFIX_BYTES..]), expected);
    assert!(matches!(
        decode_payload(&[0]),
        Err(WireError::UnsupportedVersion { version: 0, .. })
    ));
}

#[test]
fn zero_length_payload_is_an_empty_frame() {
    assert_eq!(decode_frame(&[0, 0, 0, 0]), Err(WireError::EmptyFrame));
    assert_eq!(decode_payload(&[]), Err(WireError::EmptyFrame));
    assert_eq!(drive_decoder(&[0, 0, 0, 0], 4), Some(WireError::EmptyFrame));
}

#[test]
fn unknown_message_variant_is_a_decode_error() {
    let bytes = [WIRE_FORMAT_VERSION, 200, 0, 0];
    assert!(matches!(decode_payload(&bytes), Err(WireError::Decode(_))));
}

#[test]
fn well_formed_messages_breaking_invariants_are_invalid_on_decode() {
    let cases = [
        Message::Sync {
            doc: DOC,
            message: vec![],
        },
        Message::Changes {
            doc: DOC,
            changes: vec![vec![1], vec![]],
        },
        Message::Changes {
            doc: DOC,
            changes: vec![vec![1]; MAX_CHANGES_PER_PUSH + 1],
        },
        Message::Heads {
            doc: DOC,
            heads: vec![ChangeHash([0; 32]); MAX_HEADS + 1],
        },
        digest_nodes(5, 0),
        digest_nodes(1, 16),
        digest_nodes(4, 65_536),
        Message::DigestNodes {
            nodes: vec![node(0, 0); MAX_DIGEST_NODES + 1],
        },
        // A leaf outside its bucket.
        leaves(0x4242, None, vec![(DocumentId([0x43; 16]), 1)], true),
        // Out of order.
        leaves(
            0x4242,
            None,
            vec![(DOC, 1), (DocumentId([0x42; 16]), 2)],
            true,
        ),
        // `after` not below the entries.
        leaves(0x4242, Some(DOC), vec![(DOC, 1)], true),
        // A partial range with no entries.
        leaves(0x4242, None, vec![], false),
        Message::DigestLeaves {
            bucket: 0x4242,
            after: None,
            entries: vec![(DOC, 0); MAX_DIGEST_LEAVES + 1],
            through_end: true,
        },
    ];
    for msg in cases {
        let bytes = unvalidated_payload(&msg);
        assert!(
            matches!(decode_payload(&bytes), Err(WireError::Invalid(_))),
            "{msg:?}"
        );
        assert!(matches!(encode_frame(&msg), Err(WireError::Invalid(_))));
    }
}

fn node(level: u8, prefix: u32) -> DigestNode {
    DigestNode {
        level,
        prefix,
        xor: 1,
        count: 1,
    }
}

fn digest_nodes(level: u8, prefix: u32) -> Message {
    Message::DigestNodes {
        nodes: vec![node(0, 0), node(level, prefix)],
    }
}

fn leaves(
    bucket: u16,
    after: Option<DocumentId>,
    entries: Vec<(DocumentId, u64)>,
    through_end: bool,
) -> Message {
    Message::DigestLeaves {
        bucket,
        after,
        entries,
        through_end,
    }
}

#[test]
fn digest_count_claims_over_the_limit_are_invalid_before_reading_elements() {
    // DigestNodes is variant 5: its only field is the node sequence.
    let mut bytes = vec![WIRE_FORMAT_VERSION, 5];
    bytes.extend(varint_two_pow_50());
    assert_eq!(
        decode_payload(&bytes),
        Err(WireError::Invalid("too many digest nodes in one message"))
    );
    // DigestLeaves is variant 6: bucket (varint u16), after (None = 0),
    // then the entry sequence.
    let mut bytes = vec![WIRE_FORMAT_VERSION, 6, 7, 0];
    bytes.extend(varint_two_pow_50());
    assert_eq!(
        decode_payload(&bytes),
        Err(WireError::Invalid("too many digest leaves in one message"))
    );
}

#[test]
fn push_over_the_change_limit_cannot_be_encoded() {
    let msg = Message::Changes {
        doc: DOC,
        changes: vec![vec![1]; MAX_CHANGES_PER_PUSH + 1],
    };
    assert_eq!(
        encode_frame(&msg),
        Err(WireError::Invalid("too many changes in one push"))
    );
}

#[test]
fn sync_message_over_the_frame_limit_cannot_be_encoded() {
    let msg = Message::Sync {
        doc: DOC,
        message: vec![1; MAX_FRAME_BYTES],
    };
    assert!(matches!(
        encode_frame(&msg),
        Err(WireError::FrameTooLarge { len, max: MAX_FRAME_BYTES }) if len > MAX_FRAME_BYTES
    ));
    // One byte over: version + variant + doc + 5-byte length = 23 bytes of overhead.
    let msg = Message::Sync {
        doc: DOC,
        message: vec![1; MAX_FRAME_BYTES - 22],
    };
    assert_eq!(
        encode_frame(&msg),
        Err(WireError::FrameTooLarge {
            len: MAX_FRAME_BYTES + 1,
            max: MAX_FRAME_BYTES
        })
    );
}

#[test]
fn hello_with_any_protocol_version_decodes() {
    // Protocol negotiation is the core's job; the wire layer carries the number.
    let msg = Message::Hello(Hello {
        protocol_version: u16::MAX,
        node_id: NodeId([1; 32]),
        session: u64::MAX,
    });
    assert_eq!(decode_frame(&encode_frame(&msg).unwrap()), Ok(msg));
}
