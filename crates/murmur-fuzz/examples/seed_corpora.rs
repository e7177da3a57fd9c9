//! Writes the seed inputs of every fuzz target into `fuzz/corpus/TARGET/`
//! (as `seed-*` files), built from the same fixtures the targets use, so
//! that the fuzzer starts from inputs that reach deep: real frames, real
//! sync messages and changes about the fixture's document, real change
//! requests. Run it again after changing a fixture:
//!
//! ```sh
//! cargo run -p murmur-fuzz --example seed_corpora
//! ```

use std::path::{Path, PathBuf};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ObjType, ReadDoc, ROOT};
use murmur_fuzz::{encode_records, PeerFixture};
use murmur_wire::{encode_frame, ChangeHash, DigestNode, DocumentId, Hello, Message, NodeId};

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let fixture = PeerFixture::new();
    let (peer_doc, changes) = peer_edits(&fixture.document());
    write(&root, "frames", frames(fixture.doc, &changes))?;
    write(
        &root,
        "sync_messages",
        sync_seeds(&fixture.document(), &peer_doc),
    )?;
    write(&root, "foreign_changes", change_seeds(&changes))?;
    write(&root, "json_changes", json_seeds())?;
    write(&root, "stored_values", store_seeds())?;
    Ok(())
}

fn write(root: &Path, target: &str, seeds: Vec<Vec<u8>>) -> std::io::Result<()> {
    let dir: PathBuf = root.join(target);
    std::fs::create_dir_all(&dir)?;
    for (index, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{index:02}")), seed)?;
    }
    println!("{target}: {} seeds in {}", seeds.len(), dir.display());
    Ok(())
}

/// The peer's copy of the fixture's document after three edits of its own,
/// and those edits' raw change bytes.
fn peer_edits(doc: &Automerge) -> (Automerge, Vec<Vec<u8>>) {
    let mut peer = doc.fork().with_actor(ActorId::from([2u8; 16]));
    let before = peer.get_heads();
    let mut tx = peer.transaction();
    tx.put(ROOT, "title", "groceries, weekly").unwrap();
    let items = tx.get(ROOT, "items").unwrap().unwrap().1;
    tx.insert(&items, 1, "bread").unwrap();
    tx.commit();
    let mut tx = peer.transaction();
    let notes = tx.get(ROOT, "notes").unwrap().unwrap().1;
    tx.splice_text(&notes, 0, 0, "please ").unwrap();
    tx.increment(ROOT, "count", 5).unwrap();
    tx.commit();
    let mut tx = peer.transaction();
    tx.put_object(ROOT, "extra", ObjType::Map).unwrap();
    tx.commit();
    let changes = peer
        .get_changes(&before)
        .iter()
        .map(|change| change.raw_bytes().to_vec())
        .collect();
    (peer, changes)
}

fn frames(doc: DocumentId, changes: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let messages = [
        Message::Hello(Hello {
            protocol_version: murmur_wire::PROTOCOL_VERSION,
            node_id: NodeId([2; 32]),
            session: 7,
        }),
        Message::Changes {
            doc,
            changes: changes.to_vec(),
        },
        Message::Sync {
            doc,
            message: vec![0x42, 0, 0, 0, 0, 0],
        },
        Message::Heads {
            doc,
            heads: vec![ChangeHash([3; 32])],
        },
        Message::Membership {
            data: vec![1, 2, 3],
        },
        Message::DigestNodes {
            nodes: vec![DigestNode {
                level: 0,
                prefix: 0,
                xor: 9,
                count: 1,
            }],
        },
        Message::DigestLeaves {
            bucket: murmur_wire::digest_bucket(&doc),
            after: None,
            entries: vec![(doc, 5)],
            through_end: true,
        },
    ];
    let encoded: Vec<Vec<u8>> = messages
        .iter()
        .map(|message| encode_frame(message).expect("a seed message encodes"))
        .collect();
    let mut seeds = encoded.clone();
    // As a stream: a chunk size, then every frame back to back.
    seeds.push([vec![7], encoded.concat()].concat());
    seeds
}

fn sync_seeds(ours: &Automerge, theirs: &Automerge) -> Vec<Vec<u8>> {
    // The first messages the peer would send, fresh and after our answer.
    let mut their_state = sync::State::new();
    let mut our_state = sync::State::new();
    let mut ours = ours.clone();
    let first = theirs
        .generate_sync_message(&mut their_state)
        .expect("a first sync message")
        .encode();
    ours.receive_sync_message(&mut our_state, sync::Message::decode(&first).unwrap())
        .unwrap();
    let answer = ours.generate_sync_message(&mut our_state).unwrap();
    let mut theirs = theirs.clone();
    theirs
        .receive_sync_message(&mut their_state, answer)
        .unwrap();
    let second = theirs
        .generate_sync_message(&mut their_state)
        .map(|m| m.encode())
        .unwrap_or_default();
    let stranger = Automerge::new()
        .generate_sync_message(&mut sync::State::new())
        .unwrap()
        .encode();
    vec![
        encode_records([(0, &first[..])]),
        encode_records([(0, &first[..]), (0, &second[..])]),
        encode_records([
            (0, &first[..]),
            (1, &[20][..]),
            (2, &[][..]),
            (0, &second[..]),
        ]),
        encode_records([(0x80, &stranger[..]), (0, &first[..])]),
    ]
}

fn change_seeds(changes: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let all: Vec<(u8, &[u8])> = changes.iter().map(|c| (0, &c[..])).collect();
    let reversed: Vec<(u8, &[u8])> = all.iter().rev().copied().collect();
    let mut stranger = Automerge::new();
    let mut tx = stranger.transaction();
    tx.put(ROOT, "elsewhere", 1).unwrap();
    tx.commit();
    let foreign = stranger.get_changes(&[])[0].raw_bytes().to_vec();
    vec![
        encode_records(all.clone()),
        encode_records(reversed),
        encode_records([
            (0, &changes[0][..]),
            (1, &[][..]),
            (2, &[5][..]),
            (0, &changes[1][..]),
        ]),
        encode_records([(0x80, &foreign[..]), (0, &changes[0][..])]),
    ]
}

fn json_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"ops":[{"op":"put","path":["title"],"value":"x"}]}"#,
        r#"{"ops":[{"op":"put","path":["obj"],"value":{"a":[1,2.5,null,true,{"b":"c"}]}}],"ack":"durable"}"#,
        r#"{"ops":[{"op":"insert","path":["items",0],"value":"eggs"},{"op":"delete","path":["items",1]}]}"#,
        r#"{"ops":[{"op":"put_text","path":["t"],"text":"héllo"},{"op":"splice_text","path":["notes"],"pos":3,"del":2,"text":"ZZ"}]}"#,
        r#"{"ops":[{"op":"put_counter","path":["c"],"value":-4},{"op":"increment","path":["count"],"by":1}]}"#,
        r#"{"ops":[{"op":"increment","path":["count"],"by":9}]}"#,
        r#"{"ops":[{"op":"put","path":["items",1,"qty"],"value":3},{"op":"delete","path":["nope"]}]}"#,
        r#"{"ops":[{"op":"insert","path":["items",99],"value":1}],"ack":"replicated:2"}"#,
    ]
    .iter()
    .map(|seed| seed.as_bytes().to_vec())
    .collect()
}

fn store_seeds() -> Vec<Vec<u8>> {
    vec![
        encode_records([(0, &[0, 0, 1, 2, 3][..])]),
        encode_records([(1, &[5, 17, 0xff][..]), (2, &[9, 0][..])]),
        encode_records([(3, &[12, 40][..]), (3, &[13, 3][..])]),
        encode_records([(2, &[0, 0][..]), (2, &[1, 0][..]), (2, &[2, 0][..])]),
    ]
}
