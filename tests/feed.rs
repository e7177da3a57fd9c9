//! The node-wide change feed of real nodes (real sled, real QUIC on
//! loopback): every change once, local or a peer's, numbered densely, and
//! the numbering survives a restart.

use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::ROOT;
use futures_util::StreamExt;
use murmur::{Cursor, FeedEntry, Identity, Node, Origin};

/// A bound against hanging, not a performance target.
const PATIENCE: Duration = Duration::from_secs(30);

async fn next(feed: &mut murmur::FeedStream) -> FeedEntry {
    tokio::time::timeout(PATIENCE, feed.next())
        .await
        .expect("a feed entry in time")
        .expect("the node runs")
        .expect("a readable entry")
}

#[tokio::test]
async fn a_peers_changes_reach_the_feed_once_and_numbering_survives_a_restart() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let id_a = Identity::load_or_create(dir_a.path()).unwrap().0.node_id();
    let id_b = Identity::load_or_create(dir_b.path()).unwrap().0.node_id();
    let start = |dir: std::path::PathBuf, allow| async move {
        Node::builder()
            .data_dir(dir)
            .listen("127.0.0.1:0".parse().unwrap())
            .allow(allow)
            .start()
            .await
            .unwrap()
    };
    let a = start(dir_a.path().to_owned(), id_b).await;
    let b = start(dir_b.path().to_owned(), id_a).await;
    let addr_b = b.local_addr().await.unwrap().unwrap();
    a.add_peer(id_b, addr_b).await.unwrap();

    let mut b_feed = b.feed(Cursor::Start);
    let doc = a.create_doc().await.unwrap();
    for n in 0..5_i64 {
        doc.change(move |tx| tx.put(ROOT, "n", n)).await.unwrap();
    }
    let a_entries: Vec<FeedEntry> = a
        .feed(Cursor::Start)
        .into_stream()
        .take(5)
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert_eq!(
        a_entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(a_entries
        .iter()
        .all(|e| e.origin == Origin::Local && e.doc == doc.id()));

    // Node b gets the five changes from a, each once, in some entries.
    let mut received = Vec::new();
    let mut expected_seq = 1;
    while received.len() < 5 {
        let entry = next(&mut b_feed).await;
        assert_eq!(entry.origin, Origin::Remote(id_a));
        assert_eq!(entry.seq, expected_seq, "dense");
        expected_seq += 1;
        received.extend(entry.changes.iter().map(|hash| (entry.seq, *hash)));
    }
    let mut hashes: Vec<_> = received.iter().map(|(_, hash)| *hash).collect();
    hashes.sort();
    hashes.dedup();
    assert_eq!(hashes.len(), 5, "each change once");

    // A restart of b: its feed goes on from where it was.
    let last = received.last().unwrap().0;
    b.shutdown().await.unwrap();
    let b = start(dir_b.path().to_owned(), id_a).await;
    let mut resumed = b.feed(Cursor::After(last));
    let mut now = b.feed(Cursor::Now);
    let local = b.doc(doc.id()).await.unwrap();
    local.change(|tx| tx.put(ROOT, "b", 1)).await.unwrap();
    let entry = next(&mut resumed).await;
    assert_eq!((entry.seq, entry.origin), (last + 1, Origin::Local));
    assert_eq!(next(&mut now).await, entry);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
