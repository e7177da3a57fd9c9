//! Nodes over real QUIC on 127.0.0.1 and real sled in temporary
//! directories.

use std::net::SocketAddr;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ReadDoc, ROOT};
use murmur::{Ack, DocumentId, Identity, Node, NodeId};

const ANY_PORT: &str = "127.0.0.1:0";
/// How long convergence may take before a test fails (a bound against
/// hanging, not a performance target).
const PATIENCE: Duration = Duration::from_secs(30);

struct TestNode {
    node: Node,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

async fn start(dir: tempfile::TempDir, allow: &[NodeId]) -> TestNode {
    let mut builder = Node::builder()
        .data_dir(dir.path())
        .listen(ANY_PORT.parse().unwrap())
        .anti_entropy_interval(Duration::from_millis(200));
    for id in allow {
        builder = builder.allow(*id);
    }
    let node = builder.start().await.unwrap();
    let addr = node.local_addr().await.unwrap().unwrap();
    TestNode { node, addr, dir }
}

/// A data directory whose identity exists already, so its id is known.
fn prepared_dir() -> (tempfile::TempDir, NodeId) {
    let dir = tempfile::tempdir().unwrap();
    let (identity, _) = Identity::load_or_create(dir.path()).unwrap();
    (dir, identity.node_id())
}

/// Starts `count` nodes that allow each other and dial each other.
async fn cluster(count: usize) -> Vec<TestNode> {
    let prepared: Vec<_> = (0..count).map(|_| prepared_dir()).collect();
    let ids: Vec<NodeId> = prepared.iter().map(|(_, id)| *id).collect();
    let mut nodes = Vec::new();
    for (dir, _) in prepared {
        nodes.push(start(dir, &ids).await);
    }
    connect_all(&nodes).await;
    nodes
}

async fn connect_all(nodes: &[TestNode]) {
    for a in nodes {
        for b in nodes {
            if a.node.id() != b.node.id() {
                a.node.add_peer(b.node.id(), b.addr).await.unwrap();
            }
        }
    }
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn heads_everywhere(nodes: &[&Node], doc: DocumentId) -> bool {
    let mut all = Vec::new();
    for node in nodes {
        match node.doc(doc).await {
            Ok(handle) => all.push(handle.heads().await.unwrap()),
            Err(_) => return false,
        }
    }
    all.windows(2).all(|pair| pair[0] == pair[1])
}

async fn key_count(node: &Node, doc: DocumentId) -> usize {
    node.doc(doc)
        .await
        .unwrap()
        .read(|d| d.length(ROOT))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_under_concurrent_edits() {
    let nodes = cluster(3).await;
    wait_for("full mesh", async || {
        for n in &nodes {
            if n.node.peers().await.unwrap().len() != 2 {
                return false;
            }
        }
        true
    })
    .await;
    let doc = nodes[0].node.create_doc().await.unwrap().id();
    let refs: Vec<&Node> = nodes.iter().map(|n| &n.node).collect();
    wait_for("the document to reach every node", async || {
        heads_everywhere(&refs, doc).await
    })
    .await;

    let mut writers = Vec::new();
    for (index, n) in nodes.iter().enumerate() {
        let handle = n.node.doc(doc).await.unwrap();
        writers.push(tokio::spawn(async move {
            for i in 0..50_i64 {
                handle
                    .change(move |tx| {
                        tx.put(ROOT, format!("n{index}-{i}"), i)?;
                        tx.put(ROOT, "contended", index as i64)
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    wait_for("convergence", async || heads_everywhere(&refs, doc).await).await;
    for n in &nodes {
        assert_eq!(key_count(&n.node, doc).await, 151);
    }
    // A write acknowledged Replicated(2) is durable on all three nodes.
    let receipt = nodes[1]
        .node
        .doc(doc)
        .await
        .unwrap()
        .change_with(Ack::Replicated(2), |tx| tx.put(ROOT, "everywhere", true))
        .await
        .unwrap();
    assert!(receipt.change.is_some());
    for n in &nodes {
        let handle = n.node.doc(doc).await.unwrap();
        let held = handle.read(|d| d.get(ROOT, "everywhere").unwrap().is_some());
        assert!(held.await.unwrap());
    }
    for n in nodes {
        n.node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_catches_up_after_a_restart() {
    let mut nodes = cluster(3).await;
    // A document reaches the nodes that were not connected at its creation
    // with its first change.
    let created = nodes[0].node.create_doc().await.unwrap();
    created
        .change(|tx| tx.put(ROOT, "created", true))
        .await
        .unwrap();
    let doc = created.id();
    {
        let refs: Vec<&Node> = nodes.iter().map(|n| &n.node).collect();
        wait_for("the document everywhere", async || {
            heads_everywhere(&refs, doc).await
        })
        .await;
    }
    let stopped = nodes.pop().unwrap();
    let stopped_id = stopped.node.id();
    stopped.node.shutdown().await.unwrap();

    let handle = nodes[0].node.doc(doc).await.unwrap();
    for i in 0..100_i64 {
        handle
            .change(move |tx| tx.put(ROOT, format!("while-down-{i}"), i))
            .await
            .unwrap();
    }
    // Restart on the same directory (same identity, same data), new port.
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.node.id()).collect();
    let restarted = start(stopped.dir, &ids).await;
    assert_eq!(restarted.node.id(), stopped_id);
    nodes.push(restarted);
    connect_all(&nodes).await;
    let refs: Vec<&Node> = nodes.iter().map(|n| &n.node).collect();
    wait_for("the restarted node to catch up", async || {
        heads_everywhere(&refs, doc).await
    })
    .await;
    assert_eq!(key_count(&nodes[2].node, doc).await, 101);
    for n in nodes {
        n.node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_off_the_allow_list_can_neither_connect_nor_read_nor_write() {
    let (member_dir, member_id) = prepared_dir();
    let (intruder_dir, intruder_id) = prepared_dir();
    // The member allows nobody; the intruder allows the member and dials it.
    let member = start(member_dir, &[]).await;
    let intruder = start(intruder_dir, &[member_id]).await;
    let secret = member.node.create_doc().await.unwrap();
    secret
        .change(|tx| tx.put(ROOT, "secret", "42"))
        .await
        .unwrap();
    let planted = intruder.node.create_doc().await.unwrap();
    planted
        .change(|tx| tx.put(ROOT, "planted", 1_i64))
        .await
        .unwrap();
    intruder
        .node
        .add_peer(member_id, member.addr)
        .await
        .unwrap();
    // The member also tries to reach the intruder, whose key it does not
    // allow: its dialer must refuse the intruder's certificate.
    member
        .node
        .add_peer(NodeId([0; 32]), intruder.addr)
        .await
        .unwrap();

    // Wait for the evidence: the member refused the intruder's handshake
    // (as a server) and the intruder's certificate (as a client).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let refused = member
            .node
            .status()
            .await
            .unwrap()
            .traffic
            .handshakes_refused;
        if refused >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the member refused {refused} handshakes, not both"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(member.node.peers().await.unwrap().is_empty());
    assert!(intruder.node.peers().await.unwrap().is_empty());
    assert_eq!(member.node.documents().await.unwrap(), vec![secret.id()]);
    assert_eq!(intruder.node.documents().await.unwrap(), vec![planted.id()]);
    let status = member.node.status().await.unwrap();
    assert_eq!(status.traffic.messages_in, 0);
    assert!(!status.allowed.contains(&intruder_id));
    member.node.shutdown().await.unwrap();
    intruder.node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_no_reachable_peer_keeps_writing_and_syncs_later() {
    let (lonely_dir, lonely_id) = prepared_dir();
    let (late_dir, late_id) = prepared_dir();
    let lonely = start(lonely_dir, &[late_id]).await;
    // Reserve an address for the late node, then free it.
    let late_addr = {
        let socket = std::net::UdpSocket::bind(ANY_PORT).unwrap();
        socket.local_addr().unwrap()
    };
    lonely.node.add_peer(late_id, late_addr).await.unwrap();
    let doc = lonely.node.create_doc().await.unwrap();
    for i in 0..20_i64 {
        let receipt = doc
            .change_with(Ack::Durable, move |tx| tx.put(ROOT, format!("k{i}"), i))
            .await
            .unwrap();
        assert!(receipt.change.is_some());
    }
    assert!(lonely.node.peers().await.unwrap().is_empty());

    let late = Node::builder()
        .data_dir(late_dir.path())
        .listen(late_addr)
        .allow(lonely_id)
        .anti_entropy_interval(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let refs = [&lonely.node, &late];
    wait_for("the late node to sync", async || {
        heads_everywhere(&refs, doc.id()).await
    })
    .await;
    assert_eq!(key_count(&late, doc.id()).await, 20);
    lonely.node.shutdown().await.unwrap();
    late.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_know_only_a_seed_find_each_other_through_membership() {
    let prepared: Vec<_> = (0..3).map(|_| prepared_dir()).collect();
    let ids: Vec<NodeId> = prepared.iter().map(|(_, id)| *id).collect();
    let mut nodes = Vec::new();
    for (dir, _) in prepared {
        nodes.push(start(dir, &ids).await);
    }
    // Node 0 is the seed: 1 and 2 know only its address.
    let seed = (nodes[0].node.id(), nodes[0].addr);
    nodes[1].node.add_peer(seed.0, seed.1).await.unwrap();
    nodes[2].node.add_peer(seed.0, seed.1).await.unwrap();
    let (one, two) = (nodes[1].node.id(), nodes[2].node.id());
    wait_for("nodes 1 and 2 to connect through membership", async || {
        let peers = nodes[2].node.peers().await.unwrap();
        peers.iter().any(|p| p.id == one)
    })
    .await;
    let status = nodes[1].node.status().await.unwrap();
    let members: Vec<NodeId> = status.members.iter().map(|(id, _)| *id).collect();
    assert!(
        members.contains(&two) && members.contains(&seed.0),
        "{members:?}"
    );
    for n in nodes {
        n.node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_show_as_the_same_conflict_on_every_node_until_resolved() {
    let nodes = cluster(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let doc = a.node.create_doc().await.unwrap();
    doc.change(|tx| tx.put(ROOT, "x", 0)).await.unwrap();
    wait_for("b to hold the document", async || {
        heads_everywhere(&[&a.node, &b.node], doc.id()).await
    })
    .await;
    // Apart, each puts its own value.
    a.node.remove_peer(b.node.id()).await.unwrap();
    b.node.remove_peer(a.node.id()).await.unwrap();
    doc.change(|tx| tx.put(ROOT, "x", "from a")).await.unwrap();
    let on_b = b.node.doc(doc.id()).await.unwrap();
    on_b.change(|tx| tx.put(ROOT, "x", "from b")).await.unwrap();
    connect_all(&nodes).await;
    wait_for("the edits to merge", async || {
        heads_everywhere(&[&a.node, &b.node], doc.id()).await
            && doc.heads().await.unwrap().len() == 2
    })
    .await;

    let seen_a = doc.conflicts().await.unwrap();
    let seen_b = on_b.conflicts().await.unwrap();
    assert_eq!(seen_a, seen_b, "every node sees the same conflict");
    assert_eq!(seen_a.len(), 1);
    assert_eq!(seen_a[0].path, [serde_json::json!("x")]);
    let mut values: Vec<String> = seen_a[0]
        .values
        .iter()
        .map(|v| v.value.as_str().unwrap().to_owned())
        .collect();
    values.sort();
    assert_eq!(values, ["from a", "from b"]);
    let heads = doc.heads().await.unwrap();
    for value in &seen_a[0].values {
        assert!(
            heads.contains(&value.change.unwrap()),
            "each value names its change"
        );
    }

    // Resolving: put the value wanted; the conflict is gone everywhere.
    doc.change(|tx| tx.put(ROOT, "x", "agreed")).await.unwrap();
    wait_for("the resolution to replicate", async || {
        heads_everywhere(&[&a.node, &b.node], doc.id()).await
    })
    .await;
    assert!(doc.conflicts().await.unwrap().is_empty());
    assert!(on_b.conflicts().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_reaches_every_node_and_nothing_brings_it_back() {
    let nodes = cluster(3).await;
    let doc = nodes[0].node.create_doc().await.unwrap();
    doc.change(|tx| tx.put(ROOT, "x", 1)).await.unwrap();
    let all: Vec<&Node> = nodes.iter().map(|n| &n.node).collect();
    wait_for("every node to hold the document", async || {
        heads_everywhere(&all, doc.id()).await
    })
    .await;
    // Node 2 is cut off and edits; node 0 deletes meanwhile.
    for other in [0, 1] {
        nodes[2]
            .node
            .remove_peer(nodes[other].node.id())
            .await
            .unwrap();
        nodes[other]
            .node
            .remove_peer(nodes[2].node.id())
            .await
            .unwrap();
    }
    let apart = nodes[2].node.doc(doc.id()).await.unwrap();
    apart.change(|tx| tx.put(ROOT, "y", 2)).await.unwrap();
    doc.delete().await.unwrap();
    wait_for("node 1 to delete it", async || {
        deleted_on(&nodes[1].node, doc.id()).await
    })
    .await;
    connect_all(&nodes).await;
    wait_for("the deletion to win on node 2", async || {
        deleted_on(&nodes[2].node, doc.id()).await
    })
    .await;
    // Anti-entropy keeps running: after two more rounds on every node, the
    // document is still deleted everywhere.
    let mut rounds = Vec::new();
    for node in &nodes {
        rounds.push(
            node.node
                .status()
                .await
                .unwrap()
                .metrics
                .anti_entropy_rounds,
        );
    }
    wait_for("two more anti-entropy rounds on every node", async || {
        for (node, before) in nodes.iter().zip(&rounds) {
            let now = node
                .node
                .status()
                .await
                .unwrap()
                .metrics
                .anti_entropy_rounds;
            if now < before + 2 {
                return false;
            }
        }
        true
    })
    .await;
    for node in &nodes {
        assert!(node.node.documents().await.unwrap().is_empty());
        assert!(deleted_on(&node.node, doc.id()).await);
    }
}

/// Whether `node` answers that `doc` was deleted.
async fn deleted_on(node: &Node, doc: DocumentId) -> bool {
    matches!(
        node.doc(doc).await,
        Err(murmur::Error::Replica(murmur::ReplicaError::Deleted(_)))
    )
}
