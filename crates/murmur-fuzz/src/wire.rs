//! The `frames` target: what a peer sends on a stream.

use murmur_wire::{decode_frame, encode_frame, FrameDecoder};

/// Decodes `data` as one frame, then as a stream fed in chunks whose sizes
/// the first byte picks. Every message that decodes must encode again and
/// decode to itself.
pub fn frames(data: &[u8]) {
    if let Ok(message) = decode_frame(data) {
        round_trip(&message);
    }
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let mut decoder = FrameDecoder::new();
    for piece in stream.chunks(usize::from(chunk).max(1)) {
        if decoder.push(piece).is_err() {
            return;
        }
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => round_trip(&message),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn round_trip(message: &murmur_wire::Message) {
    let frame = encode_frame(message).expect("a decoded message failed to encode");
    let again = decode_frame(&frame).expect("an encoded message failed to decode");
    assert!(again == *message, "a message changed in a round trip");
}
