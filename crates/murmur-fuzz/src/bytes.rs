//! The `automerge_bytes` target: Automerge bytes a client posts to
//! `POST /docs` or `POST /docs/{id}/changes` (a saved document, changes,
//! or anything else).

use murmur_core::{decode_automerge, feed, Config, Replica, Time};
use murmur_store::MemStore;
use murmur_wire::NodeId;

/// Decodes `data` as Automerge bytes and merges what decodes into a
/// stored document of a replica: each step may refuse with a typed error,
/// none may panic; after it, the replica's invariants, digest and feed
/// hold, and its store reopens with the same heads.
pub fn automerge_bytes(data: &[u8]) {
    let Ok(changes) = decode_automerge(data) else {
        return;
    };
    let now = Time::from_millis(1_800_000_000_000);
    let store = MemStore::new();
    let config = Config::new(NodeId([1; 32]));
    let Ok(mut replica) = Replica::open(config.clone(), Box::new(store.clone()), now) else {
        panic!("a fresh store does not open");
    };
    let doc = replica.create_document(now);
    let _ = replica.handle_local_merge(now, doc, changes);
    replica.flush_now(now).expect("flush to memory");
    replica
        .check_invariants()
        .expect("invariants after a merge");
    replica.check_digest().expect("the digest after a merge");
    feed::verify(&store).expect("the feed after a merge");
    let heads = replica
        .cached_document(doc)
        .map(|d| d.get_heads())
        .unwrap_or_default();
    replica.close(now).expect("close");
    let reopened = Replica::open(config, Box::new(store), now).expect("reopen");
    if !heads.is_empty() {
        let stored = reopened
            .read_document(doc)
            .expect("the merged document loads");
        assert_eq!(
            stored.get_heads(),
            heads,
            "the store reopens with other heads"
        );
    }
}
