//! Murmur through its embedded API: real sled in a directory per node, real
//! QUIC on 127.0.0.1.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use automerge::{ChangeHash, ReadDoc, ROOT};
use murmur::{Ack, DocHandle, DocumentId, Identity, Node, NodeId};
use tokio::sync::mpsc;

use crate::system::{Arrival, Edit, Level, System};

/// How long a cluster may take to connect or a document to appear.
const PATIENCE: Duration = Duration::from_secs(30);

/// Murmur nodes in this process.
pub struct Murmur {
    nodes: Vec<Node>,
    dirs: Vec<PathBuf>,
    /// `Node::doc` costs a round trip to the engine: keep the handles.
    handles: Mutex<HashMap<(usize, DocumentId), DocHandle>>,
}

impl Murmur {
    async fn handle(&self, node: usize, doc: DocumentId) -> anyhow::Result<DocHandle> {
        if let Some(handle) = self.lock_handles().get(&(node, doc)) {
            return Ok(handle.clone());
        }
        let handle = self.nodes[node].doc(doc).await?;
        self.lock_handles().insert((node, doc), handle.clone());
        Ok(handle)
    }

    fn lock_handles(&self) -> std::sync::MutexGuard<'_, HashMap<(usize, DocumentId), DocHandle>> {
        self.handles
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn start_dirs(dirs: Vec<PathBuf>) -> anyhow::Result<Self> {
        let mut ids: Vec<NodeId> = Vec::new();
        for dir in &dirs {
            std::fs::create_dir_all(dir)?;
            ids.push(Identity::load_or_create(dir)?.0.node_id());
        }
        let mut nodes = Vec::new();
        for dir in &dirs {
            let mut builder = Node::builder().data_dir(dir);
            if dirs.len() > 1 {
                builder = builder.listen("127.0.0.1:0".parse()?);
                for id in &ids {
                    builder = builder.allow(*id);
                }
            }
            nodes.push(builder.start().await?);
        }
        if nodes.len() > 1 {
            connect_all(&nodes).await?;
        }
        Ok(Murmur {
            nodes,
            dirs,
            handles: Mutex::new(HashMap::new()),
        })
    }
}

/// Every node dials every other, then waits for the full mesh.
async fn connect_all(nodes: &[Node]) -> anyhow::Result<()> {
    let mut addrs = Vec::new();
    for node in nodes {
        addrs.push(
            node.local_addr()
                .await?
                .context("a networked node has an address")?,
        );
    }
    for a in nodes {
        for (b, addr) in nodes.iter().zip(&addrs) {
            if a.id() != b.id() {
                a.add_peer(b.id(), *addr).await?;
            }
        }
    }
    let deadline = Instant::now() + PATIENCE;
    for node in nodes {
        while node.peers().await?.len() < nodes.len() - 1 {
            if Instant::now() > deadline {
                bail!("the Murmur nodes did not connect within {PATIENCE:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

impl System for Murmur {
    type Doc = DocumentId;
    const NAME: &'static str = "Murmur";

    async fn start(dir: PathBuf, nodes: usize) -> anyhow::Result<Self> {
        let dirs = (0..nodes).map(|n| dir.join(format!("node{n}"))).collect();
        Murmur::start_dirs(dirs).await
    }

    async fn restart(self) -> anyhow::Result<Self> {
        let dirs = self.dirs.clone();
        self.shutdown().await?;
        Murmur::start_dirs(dirs).await
    }

    async fn create(&self, node: usize) -> anyhow::Result<DocumentId> {
        let handle = self.nodes[node].create_doc().await?;
        let id = handle.id();
        self.lock_handles().insert((node, id), handle);
        Ok(id)
    }

    async fn open(&self, node: usize, doc: &DocumentId) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        while self.handle(node, *doc).await.is_err() {
            if Instant::now() > deadline {
                bail!("node {node} did not get document {doc} within {PATIENCE:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    async fn write(
        &self,
        node: usize,
        doc: &DocumentId,
        edit: Edit,
        level: Level,
    ) -> anyhow::Result<ChangeHash> {
        let ack = match level {
            Level::Applied => Ack::Applied,
            Level::Durable => Ack::Durable,
        };
        let handle = self.handle(node, *doc).await?;
        let receipt = handle.change_with(ack, move |tx| edit.apply(tx)).await?;
        receipt.change.context("the edit made no change")
    }

    async fn read(&self, node: usize, doc: &DocumentId) -> anyhow::Result<usize> {
        let handle = self.handle(node, *doc).await?;
        Ok(handle.read(|d| d.length(ROOT)).await?)
    }

    async fn heads(
        &self,
        node: usize,
        doc: &DocumentId,
    ) -> anyhow::Result<Option<Vec<ChangeHash>>> {
        match self.handle(node, *doc).await {
            Ok(handle) => Ok(Some(handle.heads().await?)),
            Err(error) => match error.downcast_ref::<murmur::Error>() {
                Some(murmur::Error::Replica(_)) => Ok(None),
                _ => Err(error),
            },
        }
    }

    async fn subscribe(
        &self,
        node: usize,
        doc: &DocumentId,
    ) -> anyhow::Result<mpsc::UnboundedReceiver<Arrival>> {
        let mut changes = self.handle(node, *doc).await?.changes().await?;
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(change) = changes.next().await {
                // A lagged subscriber missed some events; the next one's
                // heads still cover everything before it.
                if let Ok(change) = change {
                    if sender.send((Instant::now(), change.heads)).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(receiver)
    }

    async fn wire_bytes(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for node in &self.nodes {
            total += node.status().await?.traffic.bytes_out;
        }
        Ok(total)
    }

    async fn shutdown(self) -> anyhow::Result<()> {
        drop(self.handles);
        for node in self.nodes {
            node.shutdown().await?;
        }
        Ok(())
    }
}
