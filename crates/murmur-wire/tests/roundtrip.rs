//! Valid messages survive encoding and decoding, whole or in arbitrary pieces.

use murmur_wire::{
    decode_frame, decode_payload, encode_frame, ChangeHash, DigestNode, DocumentId, FrameDecoder,
    Hello, Message, NodeId, LENGTH_PREFIX_BYTES, MAX_CHANGES_PER_PUSH, MAX_DIGEST_LEAVES,
    MAX_DIGEST_NODES, MAX_FRAME_BYTES, MAX_HEADS, PROTOCOL_VERSION, WIRE_FORMAT_VERSION,
};
use proptest::collection::vec;
use proptest::prelude::*;

fn doc_id() -> impl Strategy<Value = DocumentId> {
    any::<[u8; 16]>().prop_map(DocumentId)
}

/// Any valid message. Lengths cross bincode's varint boundaries (251, 2^16)
/// without making each case slow; the limits themselves are tested below.
fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u16>(), any::<[u8; 32]>(), any::<u64>()).prop_map(
            |(protocol_version, key, session)| {
                Message::Hello(Hello {
                    protocol_version,
                    node_id: NodeId(key),
                    session,
                })
            }
        ),
        (doc_id(), vec(vec(any::<u8>(), 1..300), 0..20))
            .prop_map(|(doc, changes)| Message::Changes { doc, changes }),
        (doc_id(), vec(any::<u8>(), 1..70_000))
            .prop_map(|(doc, message)| Message::Sync { doc, message }),
        (
            doc_id(),
            vec(any::<[u8; 32]>().prop_map(ChangeHash), 0..300)
        )
            .prop_map(|(doc, heads)| Message::Heads { doc, heads }),
        vec(any::<u8>(), 1..2000).prop_map(|data| Message::Membership { data }),
        vec(digest_node(), 0..300).prop_map(|nodes| Message::DigestNodes { nodes }),
        digest_leaves(),
        doc_id().prop_map(|doc| Message::HeadsWanted { doc }),
        doc_id().prop_map(|doc| Message::Deleted { doc }),
    ]
}

/// A digest node at a valid position.
fn digest_node() -> impl Strategy<Value = DigestNode> {
    (0u8..=4, any::<u32>(), any::<u64>(), any::<u32>()).prop_map(|(level, prefix, xor, count)| {
        DigestNode {
            level,
            prefix: (u64::from(prefix) % (1u64 << (4 * u32::from(level)))) as u32,
            xor,
            count,
        }
    })
}

/// A valid `DigestLeaves`: sorted, distinct ids of one bucket.
fn digest_leaves() -> impl Strategy<Value = Message> {
    (
        any::<u16>(),
        proptest::collection::btree_map(any::<[u8; 14]>(), any::<u64>(), 0..300),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(bucket, entries, with_after, through_end)| {
            let id = |rest: &[u8; 14]| {
                let mut bytes = [0u8; 16];
                bytes[..2].copy_from_slice(&bucket.to_be_bytes());
                bytes[2..].copy_from_slice(rest);
                DocumentId(bytes)
            };
            let mut entries: Vec<(DocumentId, u64)> = entries
                .iter()
                .map(|(rest, leaf)| (id(rest), *leaf))
                .collect();
            // An `after` below every entry: the smallest id, taken out.
            let after = if with_after && !entries.is_empty() {
                Some(entries.remove(0).0)
            } else {
                None
            };
            Message::DigestLeaves {
                bucket,
                after,
                through_end: through_end || entries.is_empty(),
                entries,
            }
        })
}

/// Feeds `stream` to a decoder in chunks of the given sizes (cycled), draining
/// complete messages after every push.
fn decode_in_chunks(stream: &[u8], chunk_sizes: &[usize]) -> Vec<Message> {
    let mut decoder = FrameDecoder::new();
    let mut out = Vec::new();
    let mut rest = stream;
    for &size in chunk_sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        decoder.push(chunk).unwrap();
        while let Some(msg) = decoder.next_message().unwrap() {
            out.push(msg);
        }
    }
    assert_eq!(decoder.buffered(), 0, "bytes left after the last frame");
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn every_valid_message_round_trips_through_a_frame(msg in message()) {
        let frame = encode_frame(&msg).unwrap();
        let payload_len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(payload_len, frame.len() - LENGTH_PREFIX_BYTES);
        prop_assert_eq!(frame[LENGTH_PREFIX_BYTES], WIRE_FORMAT_VERSION);
        prop_assert_eq!(&decode_frame(&frame).unwrap(), &msg);
        prop_assert_eq!(decode_payload(&frame[LENGTH_PREFIX_BYTES..]).unwrap(), msg);
    }

    #[test]
    fn concatenated_frames_decode_in_order_from_any_chunking(
        msgs in vec(message(), 1..6),
        chunk_sizes in vec(1usize..5_000, 1..20),
    ) {
        let stream: Vec<u8> = msgs.iter().flat_map(|m| encode_frame(m).unwrap()).collect();
        prop_assert_eq!(decode_in_chunks(&stream, &chunk_sizes), msgs);
    }

    #[test]
    fn byte_at_a_time_delivery_decodes_every_frame(msgs in vec(message(), 1..3)) {
        let stream: Vec<u8> = msgs.iter().flat_map(|m| encode_frame(m).unwrap()).collect();
        prop_assert_eq!(decode_in_chunks(&stream, &[1]), msgs);
    }
}

#[test]
fn push_at_every_limit_round_trips() {
    let doc = DocumentId([9; 16]);
    let changes = Message::Changes {
        doc,
        changes: (0..MAX_CHANGES_PER_PUSH)
            .map(|i| vec![i as u8; 1 + i % 7])
            .collect(),
    };
    let heads = Message::Heads {
        doc,
        heads: (0..MAX_HEADS).map(|i| ChangeHash([i as u8; 32])).collect(),
    };
    let nodes = Message::DigestNodes {
        nodes: (0..MAX_DIGEST_NODES)
            .map(|i| DigestNode {
                level: 4,
                prefix: i as u32,
                xor: u64::MAX - i as u64,
                count: u32::MAX,
            })
            .collect(),
    };
    let leaves = Message::DigestLeaves {
        bucket: 0xfffe,
        after: None,
        entries: (0..MAX_DIGEST_LEAVES)
            .map(|i| {
                let mut id = [0u8; 16];
                id[..2].copy_from_slice(&0xfffeu16.to_be_bytes());
                id[8..].copy_from_slice(&(i as u64).to_be_bytes());
                (DocumentId(id), u64::MAX)
            })
            .collect(),
        through_end: false,
    };
    for msg in [changes, heads, nodes, leaves] {
        assert_eq!(decode_frame(&encode_frame(&msg).unwrap()).unwrap(), msg);
    }
}

/// Payload overhead of a `Sync` whose message is 2^16..2^32 bytes long:
/// version byte, variant index, 16-byte doc id, 5-byte varint length.
const SYNC_OVERHEAD: usize = 1 + 1 + 16 + 5;

#[test]
fn frame_of_exactly_max_frame_bytes_round_trips() {
    let msg = Message::Sync {
        doc: DocumentId([1; 16]),
        message: vec![0xab; MAX_FRAME_BYTES - SYNC_OVERHEAD],
    };
    let frame = encode_frame(&msg).unwrap();
    assert_eq!(frame.len(), LENGTH_PREFIX_BYTES + MAX_FRAME_BYTES);
    assert_eq!(decode_frame(&frame).unwrap(), msg);

    let mut decoder = FrameDecoder::new();
    decoder.push(&frame).unwrap();
    assert_eq!(decoder.next_message().unwrap(), Some(msg));
}

/// bincode charges its decode budget 8 bytes per length read, more than the
/// varint on the wire: a maximal push must still fit.
#[test]
fn push_of_max_changes_filling_the_frame_round_trips() {
    let mut changes = vec![vec![0x5a; 16_380]; MAX_CHANGES_PER_PUSH];
    let probe = Message::Changes {
        doc: DocumentId([3; 16]),
        changes: changes.clone(),
    };
    let spare = MAX_FRAME_BYTES - (encode_frame(&probe).unwrap().len() - LENGTH_PREFIX_BYTES);
    if let Some(last) = changes.last_mut() {
        last.resize(last.len() + spare, 0xa5);
    }
    let msg = Message::Changes {
        doc: DocumentId([3; 16]),
        changes,
    };
    let frame = encode_frame(&msg).unwrap();
    assert_eq!(frame.len(), LENGTH_PREFIX_BYTES + MAX_FRAME_BYTES);
    assert_eq!(decode_frame(&frame).unwrap(), msg);
}

#[test]
fn hello_carries_protocol_version_and_node_id() {
    let hello = Message::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        node_id: NodeId([5; 32]),
        session: 7,
    });
    let frame = encode_frame(&hello).unwrap();
    // prefix, version, variant 0, varint u16 (1 byte), 32-byte key, varint
    // u64 (1 byte).
    assert_eq!(frame.len(), 4 + 1 + 1 + 1 + 32 + 1);
    assert_eq!(decode_frame(&frame).unwrap(), hello);
}

#[test]
fn wire_layout_of_a_sync_message_is_stable() {
    let msg = Message::Sync {
        doc: DocumentId([0xdd; 16]),
        message: vec![1, 2, 3],
    };
    let mut expected = vec![0, 0, 0, 22, WIRE_FORMAT_VERSION, 2];
    expected.extend([0xdd; 16]);
    expected.extend([3, 1, 2, 3]);
    assert_eq!(encode_frame(&msg).unwrap(), expected);
}

#[test]
fn kind_and_doc_describe_the_message() {
    let doc = DocumentId([2; 16]);
    let hello = Message::Hello(Hello {
        protocol_version: 1,
        node_id: NodeId([0; 32]),
        session: 0,
    });
    let cases = [
        (hello, "hello", None),
        (
            Message::Changes {
                doc,
                changes: vec![],
            },
            "changes",
            Some(doc),
        ),
        (
            Message::Sync {
                doc,
                message: vec![1],
            },
            "sync",
            Some(doc),
        ),
        (Message::Heads { doc, heads: vec![] }, "heads", Some(doc)),
        (Message::Membership { data: vec![1] }, "membership", None),
        (Message::DigestNodes { nodes: vec![] }, "digest_nodes", None),
        (
            Message::DigestLeaves {
                bucket: 0,
                after: None,
                entries: vec![],
                through_end: true,
            },
            "digest_leaves",
            None,
        ),
        (Message::HeadsWanted { doc }, "heads_wanted", Some(doc)),
        (Message::Deleted { doc }, "deleted", Some(doc)),
    ];
    for (msg, kind, expected_doc) in cases {
        assert_eq!(msg.kind(), kind);
        assert_eq!(msg.doc(), expected_doc);
    }
}

#[test]
fn debug_output_shows_sizes_not_bytes() {
    let msg = Message::Changes {
        doc: DocumentId([2; 16]),
        changes: vec![vec![0; 1000], vec![0; 24]],
    };
    let text = format!("{msg:?}");
    assert!(text.contains("count: 2"), "{text}");
    assert!(text.contains("bytes: 1024"), "{text}");
    assert!(text.len() < 100, "{text}");
}
