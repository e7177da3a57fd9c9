//! A node on a real sled directory, through the public API.

use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ReadDoc, ROOT};
use murmur::{Ack, DocumentId, Error, Node, Origin};

async fn read_int(doc: &murmur::DocHandle, key: &'static str) -> Option<i64> {
    doc.read(move |d| {
        d.get(ROOT, key)
            .ok()
            .flatten()
            .and_then(|(v, _)| v.as_i64())
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn durable_changes_survive_a_restart_of_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::builder().data_dir(dir.path()).start().await.unwrap();
    let first_id = node.id();
    let doc = node.create_doc().await.unwrap();
    for i in 0..50_i64 {
        doc.change(move |tx| tx.put(ROOT, format!("k{i}"), i))
            .await
            .unwrap();
    }
    let id = doc.id();
    node.shutdown().await.unwrap();

    let node = Node::builder().data_dir(dir.path()).start().await.unwrap();
    assert_eq!(
        node.id(),
        first_id,
        "the identity is kept in the data directory"
    );
    assert_eq!(node.documents().await.unwrap(), vec![id]);
    let doc = node.doc(id).await.unwrap();
    assert_eq!(doc.read(|d| d.length(ROOT)).await.unwrap(), 50);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn dropping_the_node_flushes_applied_writes() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let node = Node::builder().data_dir(dir.path()).start().await.unwrap();
        let doc = node.create_doc().await.unwrap();
        id = doc.id();
        doc.change_with(Ack::Applied, |tx| tx.put(ROOT, "x", 1_i64))
            .await
            .unwrap();
        drop(doc);
        drop(node);
    }
    // The driver task flushes once its last handle is gone, then lets go
    // of the store: it reopens once the flush is done.
    let node = reopen_when_released(dir.path()).await;
    let doc = node.doc(id).await.unwrap();
    assert_eq!(read_int(&doc, "x").await, Some(1));
    node.shutdown().await.unwrap();
}

/// Starts a node on `dir` as soon as the node that held it has let go of
/// its store (waiting for that evidence, up to a generous deadline).
async fn reopen_when_released(dir: &std::path::Path) -> Node {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match Node::builder().data_dir(dir).start().await {
            Ok(node) => return node,
            Err(Error::Store(murmur_store::StoreError::Locked { .. }))
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("cannot reopen the data directory: {error}"),
        }
    }
}

#[tokio::test]
async fn closing_a_shared_node_flushes_even_while_others_hold_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = std::sync::Arc::new(Node::builder().data_dir(dir.path()).start().await.unwrap());
    let held = node.clone();
    let doc = node.create_doc().await.unwrap();
    let id = doc.id();
    doc.change_with(Ack::Applied, |tx| tx.put(ROOT, "x", 7_i64))
        .await
        .unwrap();
    node.close().await.expect("flushed and closed");
    // Every handle now says the node is gone.
    assert!(matches!(held.create_doc().await, Err(Error::Closed)));
    drop((doc, node, held));
    let node = reopen_when_released(dir.path()).await;
    let doc = node.doc(id).await.unwrap();
    assert_eq!(read_int(&doc, "x").await, Some(7));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::builder().data_dir(dir.path()).start().await.unwrap();
    let doc = node.create_doc().await.unwrap();
    let before = node.status().await.unwrap().metrics.flushes;
    let writers: Vec<_> = (0..200_i64)
        .map(|i| {
            let doc = doc.clone();
            tokio::spawn(
                async move { doc.change(move |tx| tx.put(ROOT, format!("k{i}"), i)).await },
            )
        })
        .collect();
    for writer in writers {
        writer.await.unwrap().unwrap();
    }
    let flushes = node.status().await.unwrap().metrics.flushes - before;
    assert!(flushes < 200, "200 durable writes took {flushes} flushes");
    assert_eq!(doc.read(|d| d.length(ROOT)).await.unwrap(), 200);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn subscribers_see_each_change_with_its_patches() {
    let node = Node::builder().in_memory().start().await.unwrap();
    let doc = node.create_doc().await.unwrap();
    let mut changes = doc.changes().await.unwrap();
    doc.change(|tx| tx.put(ROOT, "a", 1_i64)).await.unwrap();
    doc.change(|tx| {
        tx.put(ROOT, "b", 2_i64)?;
        tx.put(ROOT, "c", 3_i64)
    })
    .await
    .unwrap();
    let first = changes.next().await.unwrap().unwrap();
    let second = changes.next().await.unwrap().unwrap();
    assert_eq!(first.origin, Origin::Local);
    assert_eq!((first.patches.len(), second.patches.len()), (1, 2));
    assert_eq!(second.heads, doc.heads().await.unwrap());
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_change_stream_is_a_futures_stream() {
    use futures_util::StreamExt;

    let node = Node::builder().in_memory().start().await.unwrap();
    let doc = node.create_doc().await.unwrap();
    let changes = doc.changes().await.unwrap();
    for n in 0..3_i64 {
        doc.change(move |tx| tx.put(ROOT, "n", n)).await.unwrap();
    }
    let seen: Vec<_> = changes.take(3).collect().await;
    assert_eq!(seen.len(), 3);
    let last = seen.last().unwrap().as_ref().unwrap();
    assert_eq!(last.heads, doc.heads().await.unwrap());
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failed_change_rolls_back_and_says_why() {
    let node = Node::builder().in_memory().start().await.unwrap();
    let doc = node.create_doc().await.unwrap();
    let result = doc
        .change(|tx| {
            tx.put(ROOT, "half", 1_i64)?;
            // Inserting into a map is an error: the whole change rolls back.
            tx.insert(ROOT, 0, "nope")
        })
        .await;
    assert!(
        matches!(
            result,
            Err(Error::Replica(murmur::ReplicaError::ChangeRejected(_)))
        ),
        "{result:?}"
    );
    assert_eq!(read_int(&doc, "half").await, None);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_change_refused_with_its_own_error_hands_that_error_back_typed() {
    #[derive(Debug, PartialEq)]
    struct OutOfStock(&'static str);

    let node = Node::builder().in_memory().start().await.unwrap();
    let doc = node.create_doc().await.unwrap();
    let refused = doc
        .try_change_with(Ack::Durable, |tx| {
            tx.put(ROOT, "half", 1_i64).map_err(|_| OutOfStock("put"))?;
            Err::<(), _>(OutOfStock("widgets"))
        })
        .await
        .unwrap();
    assert_eq!(refused.unwrap_err(), OutOfStock("widgets"));
    assert_eq!(read_int(&doc, "half").await, None, "rolled back");

    let made = doc
        .try_change_with(Ack::Durable, |tx| {
            tx.put(ROOT, "count", 3_i64)
                .map_err(|_| OutOfStock("put"))?;
            Ok::<_, OutOfStock>("done")
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(made.output, "done");
    assert!(made.change.is_some());
    assert_eq!(read_int(&doc, "count").await, Some(3));
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unknown_document_is_a_typed_error() {
    let node = Node::builder().in_memory().start().await.unwrap();
    let missing = DocumentId::from_bytes([9; 16]);
    assert!(matches!(node.doc(missing).await, Err(Error::Replica(_))));
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_data_dir_that_is_a_file_is_a_clear_error() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let error = Node::builder()
        .data_dir(file.path())
        .start()
        .await
        .err()
        .unwrap();
    assert!(matches!(error, Error::DataDir { .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_answers_while_the_engine_is_busy() {
    let node = Node::builder().in_memory().start().await.unwrap();
    let doc = node.create_doc().await.unwrap();
    let (started, engine_busy) = std::sync::mpsc::channel();
    // A change that holds the engine for two seconds.
    let slow = {
        let doc = doc.clone();
        tokio::spawn(async move {
            doc.change(move |tx| {
                let _ = started.send(());
                std::thread::sleep(Duration::from_secs(2));
                tx.put(ROOT, "slow", 1_i64)
            })
            .await
        })
    };
    tokio::task::spawn_blocking(move || engine_busy.recv())
        .await
        .unwrap()
        .unwrap();
    let (status, fresh) = node
        .status_within(std::time::Duration::from_millis(100))
        .await
        .unwrap();
    assert!(!fresh, "the engine is inside the slow change");
    assert_eq!(status.node_id, node.id());
    slow.await.unwrap().unwrap();
    let (_, fresh) = node
        .status_within(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert!(fresh, "an idle engine answers itself");
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_node_listening_on_an_unspecified_address_must_be_told_what_to_advertise() {
    let listen: std::net::SocketAddr = "0.0.0.0:0".parse().unwrap();
    let refused = Node::builder().in_memory().listen(listen).start().await;
    match refused {
        Err(Error::AdvertiseRequired { listen: said }) => assert_eq!(said, listen),
        Err(other) => panic!("expected AdvertiseRequired, got {other}"),
        Ok(_) => panic!("a node listening on 0.0.0.0 started without an advertised address"),
    }
    let node = Node::builder()
        .in_memory()
        .listen(listen)
        .advertise("127.0.0.1:7400".parse().unwrap())
        .start()
        .await
        .expect("starts with an advertised address");
    node.shutdown().await.unwrap();
}
