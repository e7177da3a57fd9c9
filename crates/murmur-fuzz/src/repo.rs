//! The `repo_messages` target: frames a sync client sends on `GET /sync`.

use murmur::repo_protocol::{decode, encode, Inbound, Outbound};

/// One frame from a WebSocket client. Decoding refuses what it cannot use
/// with a typed error and never panics; the sync message a `sync` or
/// `request` carries is refused by Automerge's decoder without panicking;
/// an ephemeral message, which the node relays, re-encodes and decodes
/// back to the same fields.
pub fn repo_messages(data: &[u8]) {
    let Ok(message) = decode(data) else {
        return;
    };
    match message {
        Inbound::Sync { data, .. } | Inbound::Request { data, .. } => {
            let _ = automerge::sync::Message::decode(&data);
        }
        Inbound::Ephemeral {
            sender_id,
            document_id,
            session_id,
            count,
            data,
        } => {
            let relayed = encode(
                "node",
                &Outbound::Ephemeral {
                    sender_id: &sender_id,
                    target_id: "other",
                    document_id,
                    session_id: &session_id,
                    count,
                    data: &data,
                },
            );
            let Ok(Inbound::Ephemeral {
                sender_id: sender_again,
                document_id: doc_again,
                session_id: session_again,
                count: count_again,
                data: data_again,
            }) = decode(&relayed)
            else {
                panic!("a relayed ephemeral message does not decode");
            };
            assert_eq!(
                (
                    sender_again,
                    doc_again,
                    session_again,
                    count_again,
                    data_again
                ),
                (sender_id, document_id, session_id, count, data)
            );
        }
        _ => {}
    }
}
