//! The bodies of Murmur's fuzz targets.
//!
//! Each target is a function of arbitrary bytes that panics when Murmur
//! breaks a promise about untrusted input: it must reject what it cannot
//! use with a typed error, never panic, never allocate without bound, and
//! never leave stored state that does not reopen. `fuzz/` (cargo-fuzz, on
//! nightly) calls these functions from libFuzzer; `tests/corpora.rs` replays
//! every input kept in `fuzz/corpus/` on stable, so `cargo test` checks the
//! corpus on every run.
//!
//! | target | what the bytes are | what it checks |
//! |---|---|---|
//! | [`frames`] | one peer's QUIC stream | decoding never panics; what decodes re-encodes to the same message |
//! | [`sync_messages`] | Automerge sync messages from a peer, about a stored document | the replica stays consistent and its store reopens with the same heads |
//! | [`foreign_changes`] | pushed change bytes, about a stored or an unknown document | the same |
//! | [`json_changes`] | an HTTP change request body | parsing is typed; a refused request changes nothing; what applies saves and reloads |
//! | [`stored_values`] | edits to a store's keys and values | opening and loading fail with typed errors only |
//! | [`automerge_bytes`] | Automerge bytes a client posts (a document, changes) | decoding and merging refuse with typed errors; invariants, digest and feed hold; the store reopens with the same heads |
//! | [`repo_messages`] | a frame a sync client sends on `GET /sync` (automerge-repo's CBOR) | decoding is typed; sync data is refused without a panic; a relayed ephemeral message round-trips |
//!
//! Inputs that carry several items are a sequence of records: a tag byte,
//! a little-endian `u16` length, then that many bytes ([`records`]).

mod bytes;
mod json;
mod peer;
mod repo;
mod store;
mod wire;

pub use bytes::automerge_bytes;
pub use json::json_changes;
pub use peer::{foreign_changes, sync_messages, PeerFixture};
pub use repo::repo_messages;
pub use store::stored_values;
pub use wire::frames;

/// Called once before fuzzing (`fuzz_target!(init: ...)`): puts back the
/// default panic hook in place of libfuzzer-sys's, which aborts on every
/// panic, even one Murmur catches on purpose (Automerge's change decoder
/// panics on some malformed changes; `murmur-core` catches that and
/// refuses the change). A panic that escapes a target still aborts the
/// fuzzer: libfuzzer-sys catches it at the top and aborts.
pub fn init() {
    let _libfuzzer_hook = std::panic::take_hook();
}

/// A target's body: arbitrary bytes in, a panic if a promise broke.
pub type Target = fn(&[u8]);

/// The names of the targets, as `fuzz/fuzz_targets/` and `fuzz/corpus/`
/// name them, with their functions.
pub const TARGETS: &[(&str, Target)] = &[
    ("frames", frames),
    ("sync_messages", sync_messages),
    ("foreign_changes", foreign_changes),
    ("json_changes", json_changes),
    ("stored_values", stored_values),
    ("automerge_bytes", automerge_bytes),
    ("repo_messages", repo_messages),
];

/// Splits `data` into records: a tag byte, a little-endian `u16` length,
/// then the bytes (fewer if the input ends first).
pub fn records(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&tag, rest) = data.split_first()?;
        let (len, rest) = match rest {
            [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
            _ => (rest.len(), &[][..]),
        };
        let (record, rest) = rest.split_at(len.min(rest.len()));
        data = rest;
        Some((tag, record))
    })
}

/// Encodes records in the form [`records`] reads, for seeding corpora.
pub fn encode_records<'a>(records: impl IntoIterator<Item = (u8, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, bytes) in records {
        let len = u16::try_from(bytes.len()).expect("a seed record over 64 KiB");
        out.push(tag);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_short_input_ends_the_sequence() {
        let encoded = encode_records([(1, &b"abc"[..]), (2, &b""[..]), (3, &b"z"[..])]);
        let read: Vec<(u8, &[u8])> = records(&encoded).collect();
        assert_eq!(read, vec![(1, &b"abc"[..]), (2, &b""[..]), (3, &b"z"[..])]);
        let cut: Vec<(u8, &[u8])> = records(&[7, 9, 0, 1, 2]).collect();
        assert_eq!(cut, vec![(7, &[1u8, 2][..])]);
    }
}
