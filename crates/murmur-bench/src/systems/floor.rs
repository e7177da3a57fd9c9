//! The floor: what the libraries alone cost. Bare Automerge 0.12 documents;
//! each change's bytes appended to the node's sled 0.34 database (one key
//! per change) and pushed as they are to every peer over loopback TCP with
//! Nagle off, where `apply_changes` applies them. Durable writes share
//! flushes: writers queue, one flusher calls `Db::flush` and acknowledges
//! every write that flush covered.
//!
//! It is deliberately minimal: one lock per node, no acknowledgements, no
//! anti-entropy (the links never drop), no batching beyond the socket's,
//! changes only from the writer to each peer (the cluster is a full mesh,
//! so nothing needs forwarding), and a graceful stop that compacts every
//! document to one snapshot. It first used `automerge::sync` messages per
//! change, but a sync round per change fell behind at a few hundred
//! changes a second, which is no floor for an eager push.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use automerge::{ActorId, Automerge, ChangeHash, ReadDoc, ROOT};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use crate::system::{Arrival, Edit, Level, System};

/// How long a document may take to appear on a peer.
const PATIENCE: Duration = Duration::from_secs(30);
/// The largest frame a node accepts.
const FRAME_BYTES_MAX: usize = 256 << 20;
/// Frame header: document id (u64) and length (u32), big-endian.
const HEADER_BYTES: usize = 12;

/// Floor nodes in this process.
pub struct Floor {
    nodes: Vec<Arc<FloorNode>>,
    paths: Vec<PathBuf>,
    bytes_sent: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

struct FloorNode {
    index: u64,
    actor: ActorId,
    db: sled::Db,
    docs: Mutex<HashMap<u64, FloorDoc>>,
    /// Frames to each peer, by peer slot.
    peers: Vec<mpsc::UnboundedSender<Vec<u8>>>,
    next_doc: AtomicU64,
    /// Durable writers waiting for the next flush.
    flush_waiters: Mutex<Vec<oneshot::Sender<()>>>,
    flush_wanted: Notify,
}

struct FloorDoc {
    doc: Automerge,
    next_chunk: u64,
    subscribers: Vec<mpsc::UnboundedSender<Arrival>>,
}

impl FloorDoc {
    fn new(doc: Automerge, next_chunk: u64) -> Self {
        FloorDoc {
            doc,
            next_chunk,
            subscribers: Vec::new(),
        }
    }

    fn notify(&mut self) {
        let arrival = (Instant::now(), self.doc.get_heads());
        self.subscribers
            .retain(|subscriber| subscriber.send(arrival.clone()).is_ok());
    }
}

fn chunk_key(doc: u64, chunk: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&doc.to_be_bytes());
    key[8..].copy_from_slice(&chunk.to_be_bytes());
    key
}

fn frame(doc: u64, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_BYTES + body.len());
    frame.extend_from_slice(&doc.to_be_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Loads a document from its chunks (a snapshot and/or changes).
fn load(db: &sled::Db, doc: u64, actor: ActorId) -> anyhow::Result<Option<FloorDoc>> {
    let mut loaded = Automerge::new().with_actor(actor);
    let mut chunks = 0;
    for entry in db.scan_prefix(doc.to_be_bytes()) {
        let (_, bytes) = entry?;
        if !bytes.is_empty() {
            loaded.load_incremental(&bytes)?;
        }
        chunks += 1;
    }
    Ok((chunks > 0).then(|| FloorDoc::new(loaded, chunks)))
}

impl FloorNode {
    /// Appends `bytes` (changes or a snapshot) to the document's chunks.
    fn persist(&self, id: u64, entry: &mut FloorDoc, bytes: &[u8]) -> anyhow::Result<()> {
        self.db.insert(chunk_key(id, entry.next_chunk), bytes)?;
        entry.next_chunk += 1;
        Ok(())
    }

    /// Sends `bytes` (changes of document `id`) to every peer.
    fn push(&self, id: u64, bytes: &[u8]) {
        let frame = frame(id, bytes);
        for frames in &self.peers {
            let _ = frames.send(frame.clone());
        }
    }

    fn receive(&self, id: u64, bytes: &[u8]) -> anyhow::Result<()> {
        let mut docs = lock(&self.docs);
        let entry = docs
            .entry(id)
            .or_insert_with(|| FloorDoc::new(Automerge::new().with_actor(self.actor.clone()), 0));
        if !bytes.is_empty() {
            let change = automerge::Change::from_bytes(bytes.to_vec())?;
            entry.doc.apply_changes([change])?;
            self.persist(id, entry, bytes)?;
            entry.notify();
        }
        Ok(())
    }

    /// Waits for a flush that covers every write made before the call.
    async fn flushed(&self) -> anyhow::Result<()> {
        let (done, wait) = oneshot::channel();
        lock(&self.flush_waiters).push(done);
        self.flush_wanted.notify_one();
        wait.await.context("the flush failed")
    }

    /// Replaces every document's chunks with one snapshot and flushes.
    fn compact(&self) -> anyhow::Result<()> {
        let docs = lock(&self.docs);
        for (id, entry) in docs.iter() {
            for key in self.db.scan_prefix(id.to_be_bytes()).keys() {
                self.db.remove(key?)?;
            }
            self.db.insert(chunk_key(*id, 0), entry.doc.save())?;
        }
        self.db.flush()?;
        Ok(())
    }
}

/// Group commit: each flush acknowledges every writer that queued before it.
async fn flusher(node: Arc<FloorNode>) {
    loop {
        node.flush_wanted.notified().await;
        loop {
            let batch = std::mem::take(&mut *lock(&node.flush_waiters));
            if batch.is_empty() {
                break;
            }
            let db = node.db.clone();
            match tokio::task::spawn_blocking(move || db.flush()).await {
                Ok(Ok(_)) => batch.into_iter().for_each(|waiter| {
                    let _ = waiter.send(());
                }),
                // Dropping the waiters fails their writes.
                _ => return,
            }
        }
    }
}

async fn send_loop(
    socket: OwnedWriteHalf,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    bytes_sent: Arc<AtomicU64>,
) {
    let mut out = BufWriter::new(socket);
    while let Some(frame) = frames.recv().await {
        let mut batch = vec![frame];
        while let Ok(frame) = frames.try_recv() {
            batch.push(frame);
        }
        for frame in batch {
            if out.write_all(&frame).await.is_err() {
                return;
            }
            bytes_sent.fetch_add(frame.len() as u64, Ordering::Relaxed);
        }
        if out.flush().await.is_err() {
            return;
        }
    }
}

async fn receive_loop(node: Arc<FloorNode>, socket: OwnedReadHalf) {
    let mut input = BufReader::new(socket);
    let mut header = [0u8; HEADER_BYTES];
    while input.read_exact(&mut header).await.is_ok() {
        let mut id = [0u8; 8];
        id.copy_from_slice(&header[..8]);
        let mut length = [0u8; 4];
        length.copy_from_slice(&header[8..]);
        let length = u32::from_be_bytes(length) as usize;
        if length > FRAME_BYTES_MAX {
            eprintln!("floor: a {length}-byte frame is over the limit; closing");
            return;
        }
        let mut body = vec![0; length];
        if input.read_exact(&mut body).await.is_err() {
            return;
        }
        if let Err(error) = node.receive(u64::from_be_bytes(id), &body) {
            eprintln!("floor: bad changes: {error:#}");
            return;
        }
    }
}

/// A connected pair of loopback TCP sockets, Nagle off.
async fn socket_pair() -> anyhow::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (dialed, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (dialed, (accepted, _)) = (dialed?, accepted?);
    dialed.set_nodelay(true)?;
    accepted.set_nodelay(true)?;
    Ok((dialed, accepted))
}

/// sled takes a file lock: a database just dropped may hold it a moment.
async fn open_db(path: &Path) -> anyhow::Result<sled::Db> {
    let mut attempts = 0;
    loop {
        let path = path.to_path_buf();
        match tokio::task::spawn_blocking(move || sled::open(path)).await? {
            Ok(db) => return Ok(db),
            Err(error) if attempts >= 100 => return Err(error.into()),
            Err(_) => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

impl Floor {
    async fn start_paths(paths: Vec<PathBuf>) -> anyhow::Result<Self> {
        let count = paths.len();
        let bytes_sent = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        let mut peers: Vec<Vec<mpsc::UnboundedSender<Vec<u8>>>> = vec![Vec::new(); count];
        // (node, socket) for the receive loops, once nodes exist.
        let mut inputs = Vec::new();
        for a in 0..count {
            for b in a + 1..count {
                let (to_b, to_a) = socket_pair().await?;
                for (node, socket) in [(a, to_b), (b, to_a)] {
                    let (input, output) = socket.into_split();
                    let (frames, queued) = mpsc::unbounded_channel();
                    inputs.push((node, input));
                    peers[node].push(frames);
                    tasks.push(tokio::spawn(send_loop(output, queued, bytes_sent.clone())));
                }
            }
        }
        let mut nodes = Vec::new();
        for (index, (path, peers)) in paths.iter().zip(peers).enumerate() {
            let node = Arc::new(FloorNode {
                index: index as u64,
                actor: ActorId::random(),
                db: open_db(path).await?,
                docs: Mutex::new(HashMap::new()),
                peers,
                next_doc: AtomicU64::new(0),
                flush_waiters: Mutex::new(Vec::new()),
                flush_wanted: Notify::new(),
            });
            tasks.push(tokio::spawn(flusher(node.clone())));
            nodes.push(node);
        }
        for (node, input) in inputs {
            tasks.push(tokio::spawn(receive_loop(nodes[node].clone(), input)));
        }
        Ok(Floor {
            nodes,
            paths,
            bytes_sent,
            tasks,
        })
    }

    /// Stops every task and waits until they have let go of the nodes.
    async fn stop(self) -> Vec<PathBuf> {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        self.paths
    }
}

impl System for Floor {
    type Doc = u64;
    const NAME: &'static str = "floor";

    async fn start(dir: PathBuf, nodes: usize) -> anyhow::Result<Self> {
        let paths = (0..nodes).map(|n| dir.join(format!("node{n}"))).collect();
        Floor::start_paths(paths).await
    }

    async fn restart(self) -> anyhow::Result<Self> {
        for node in &self.nodes {
            let node = node.clone();
            tokio::task::spawn_blocking(move || node.compact()).await??;
        }
        let paths = self.stop().await;
        Floor::start_paths(paths).await
    }

    async fn create(&self, node: usize) -> anyhow::Result<u64> {
        let node = &self.nodes[node];
        let id = node.index << 32 | node.next_doc.fetch_add(1, Ordering::Relaxed);
        let mut docs = lock(&node.docs);
        let entry = docs
            .entry(id)
            .or_insert_with(|| FloorDoc::new(Automerge::new().with_actor(node.actor.clone()), 0));
        // An empty chunk marks the document as held, on disk and on peers.
        node.persist(id, entry, &[])?;
        node.push(id, &[]);
        Ok(id)
    }

    async fn open(&self, node: usize, doc: &u64) -> anyhow::Result<()> {
        let node = &self.nodes[node];
        let deadline = Instant::now() + PATIENCE;
        loop {
            if lock(&node.docs).contains_key(doc) {
                return Ok(());
            }
            let (db, id, actor) = (node.db.clone(), *doc, node.actor.clone());
            if let Some(loaded) =
                tokio::task::spawn_blocking(move || load(&db, id, actor)).await??
            {
                lock(&node.docs).entry(id).or_insert(loaded);
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the floor node did not get document {doc} within {PATIENCE:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn write(
        &self,
        node: usize,
        doc: &u64,
        edit: Edit,
        level: Level,
    ) -> anyhow::Result<ChangeHash> {
        let node = &self.nodes[node];
        let hash = {
            let mut docs = lock(&node.docs);
            let entry = docs.get_mut(doc).context("unknown document")?;
            let made = entry.doc.transact(|tx| edit.apply(tx));
            let made = made.map_err(|failure| anyhow::anyhow!("{}", failure.error))?;
            let hash = made.hash.context("the edit made no change")?;
            let mut change = entry
                .doc
                .get_change_by_hash(&hash)
                .context("the change just made")?;
            let bytes = change.bytes();
            node.persist(*doc, entry, &bytes)?;
            node.push(*doc, &bytes);
            entry.notify();
            hash
        };
        if level == Level::Durable {
            node.flushed().await?;
        }
        Ok(hash)
    }

    async fn read(&self, node: usize, doc: &u64) -> anyhow::Result<usize> {
        let docs = lock(&self.nodes[node].docs);
        Ok(docs.get(doc).context("unknown document")?.doc.length(ROOT))
    }

    async fn heads(&self, node: usize, doc: &u64) -> anyhow::Result<Option<Vec<ChangeHash>>> {
        Ok(lock(&self.nodes[node].docs)
            .get(doc)
            .map(|entry| entry.doc.get_heads()))
    }

    async fn subscribe(
        &self,
        node: usize,
        doc: &u64,
    ) -> anyhow::Result<mpsc::UnboundedReceiver<Arrival>> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut docs = lock(&self.nodes[node].docs);
        docs.get_mut(doc)
            .context("unknown document")?
            .subscribers
            .push(sender);
        Ok(receiver)
    }

    async fn wire_bytes(&self) -> anyhow::Result<u64> {
        Ok(self.bytes_sent.load(Ordering::Relaxed))
    }

    async fn shutdown(self) -> anyhow::Result<()> {
        for node in &self.nodes {
            let db = node.db.clone();
            tokio::task::spawn_blocking(move || db.flush()).await??;
        }
        self.stop().await;
        Ok(())
    }
}
