//! Replays every input kept for the fuzz targets (`fuzz/corpus/TARGET/`),
//! on stable, in a normal `cargo test`: what the fuzzer once found, or
//! learned to reach, is checked on every run.

use std::path::Path;

#[test]
fn every_kept_input_of_every_target_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut failures = Vec::new();
    for (target, run) in murmur_fuzz::TARGETS {
        let dir = root.join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a corpus entry").path())
            .collect();
        inputs.sort();
        assert!(
            inputs.iter().any(|p| p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))),
            "{target}: no seed inputs in {}",
            dir.display()
        );
        for input in &inputs {
            let data = std::fs::read(input).expect("read a corpus input");
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failures.push(format!("{target}: {}", input.display()));
            }
        }
        println!("{target}: {} inputs replayed", inputs.len());
    }
    assert!(
        failures.is_empty(),
        "inputs that fail:\n{}",
        failures.join("\n")
    );
}

/// The seeds reach past the decoders: the first seed of `foreign_changes`
/// (the peer's three edits) and of `sync_messages` (the peer's first sync
/// message) are taken up by the replica, not rejected.
#[test]
fn the_seeds_reach_the_document() {
    use automerge::ReadDoc;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let seed = std::fs::read(root.join("foreign_changes/seed-00")).expect("the seed");
    let mut fixture = murmur_fuzz::PeerFixture::new();
    let changes = murmur_fuzz::records(&seed)
        .map(|(_, bytes)| bytes.to_vec())
        .collect();
    let doc = fixture.doc;
    fixture.deliver(murmur_wire::Message::Changes { doc, changes });
    let document = fixture.document();
    let extra = document.get(automerge::ROOT, "extra").unwrap();
    assert!(extra.is_some(), "the pushed changes were not applied");

    let seed = std::fs::read(root.join("sync_messages/seed-00")).expect("the seed");
    let mut fixture = murmur_fuzz::PeerFixture::new();
    let before = fixture.replica.metrics().clone();
    let (_, message) = murmur_fuzz::records(&seed).next().expect("a record");
    let message = message.to_vec();
    fixture.deliver(murmur_wire::Message::Sync { doc, message });
    let after = fixture.replica.metrics();
    assert!(
        after.sync_messages_received > before.sync_messages_received,
        "the sync message was not taken up"
    );
}

/// The `automerge_bytes` seeds (made by `@automerge/automerge` 3.5.0): a
/// saved document merges with its history; changes alone, whose history
/// the replica lacks, are refused whole.
#[test]
fn the_automerge_bytes_seeds_decode_and_merge() {
    use murmur_core::{decode_automerge, Config, Replica, ReplicaError, Time};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/automerge_bytes");
    let now = Time::from_millis(1_800_000_000_000);
    let merge = |seed: &str| {
        let bytes = std::fs::read(root.join(seed)).expect("the seed");
        let changes = decode_automerge(&bytes).expect("the seed decodes");
        let store = murmur_store::MemStore::new();
        let mut replica = Replica::open(
            Config::new(murmur_wire::NodeId([1; 32])),
            Box::new(store),
            now,
        )
        .unwrap();
        let doc = replica.create_document(now);
        let merged = replica.handle_local_merge(now, doc, changes);
        (
            merged,
            replica.cached_document(doc).unwrap().get_heads().len(),
        )
    };
    let (merged, heads) = merge("seed-00");
    assert!(merged.unwrap().change.is_some());
    assert_eq!(heads, 1);
    let (merged, heads) = merge("seed-01");
    assert!(matches!(merged, Err(ReplicaError::ForeignData { .. })));
    assert_eq!(heads, 0);
    let (merged, _) = merge("seed-02");
    assert!(merged.unwrap().change.is_some());
}
