//! The `stored_values` target: a store whose keys and values were
//! damaged (a bad disk, a bug of an older version, a hand edit).

use std::sync::OnceLock;

use automerge::transaction::Transactable;
use automerge::ROOT;
use murmur_core::{Config, Replica, Time};
use murmur_store::{layout, KeyValue, MemStore, Storage, WriteBatch};
use murmur_wire::NodeId;

use crate::{records, PeerFixture};

/// Copies a healthy store (two documents, one compacted into a snapshot
/// with chunks after it, sync states, the digest, incarnation marks), edits
/// it as the records say, then opens it, loads and writes every document it
/// lists. Each step may fail with a typed error; none may panic.
///
/// Records: the first byte picks a key (modulo their count), the second a
/// cut point, the rest is data. Tag `0` replaces the key's value with the
/// data, `1` puts the data under the key cut short and extended with the
/// data, `2` deletes the key, `3` cuts the value short.
pub fn stored_values(data: &[u8]) {
    let healthy = healthy_store();
    let store = MemStore::new();
    let mut batch = WriteBatch::new();
    for (key, value) in healthy {
        batch.put(key.clone(), value.clone());
    }
    for (tag, bytes) in records(data).take(32) {
        let [pick, cut, rest @ ..] = bytes else {
            continue;
        };
        let (key, value) = &healthy[usize::from(*pick) % healthy.len()];
        let cut_key = &key[..usize::from(*cut) % (key.len() + 1)];
        match tag % 4 {
            0 => batch.put(key.clone(), rest.to_vec()),
            1 => batch.put([cut_key, rest].concat(), rest.to_vec()),
            2 => batch.delete(key.clone()),
            _ => batch.put(
                key.clone(),
                value[..usize::from(*cut) % (value.len() + 1)].to_vec(),
            ),
        }
        let _ = layout::decode_leaf(key, rest);
        let _ = layout::decode_trie_node(key, rest);
    }
    store.apply(batch).expect("apply to memory");
    store.flush().expect("flush memory");
    open_and_use(store);
}

fn open_and_use(store: MemStore) {
    let now = Time::from_millis(1_800_000_000_000);
    let config = Config::new(NodeId([1; 32]));
    let Ok(mut replica) = Replica::open(config, Box::new(store), now) else {
        return;
    };
    let _ = replica.check_digest();
    let _ = replica.digest_root();
    let Ok(docs) = replica.document_ids() else {
        return;
    };
    replica.handle_peer_up(now, NodeId([2; 32]));
    for doc in docs {
        let _ = replica.read_document(doc);
        if replica.load_now(now, doc).is_ok() {
            let _ = replica.handle_local_change(now, doc, |tx| tx.put(ROOT, "checked", true));
        }
    }
    let _ = replica.flush_now(now);
    let _ = replica.check_invariants();
    let _ = replica.feed_reader().read(0, replica.feed_end(), 1024);
}

/// The healthy store's pairs, built once.
fn healthy_store() -> &'static [KeyValue] {
    static PAIRS: OnceLock<Vec<KeyValue>> = OnceLock::new();
    PAIRS.get_or_init(|| {
        let mut fixture = PeerFixture::new();
        let first = fixture.doc;
        let now = fixture.now;
        // 1 KiB a change: past 16 KiB of chunks the document is compacted
        // into a snapshot, and the last changes are chunks after it.
        for round in 0..40 {
            let text = format!("{round:>1024}");
            fixture
                .replica
                .handle_local_change(now, first, |tx| tx.put(ROOT, "round", text.as_str()))
                .expect("a fixture change");
            fixture.replica.flush_now(now).expect("flush to memory");
        }
        let second = fixture.replica.create_document(now);
        fixture
            .replica
            .handle_local_change(now, second, |tx| tx.put(ROOT, "second", "yes"))
            .expect("a fixture change");
        fixture.advance(2_000);
        let store = fixture.store.clone();
        fixture.check();
        store.scan_prefix(&[]).expect("scan memory")
    })
}
