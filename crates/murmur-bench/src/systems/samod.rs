//! samod 0.16 (the Rust automerge-repo): each repo keeps its documents in
//! samod's `FilesystemStorage` (one directory per repo, the on-disk layout
//! of automerge-repo's Node.js storage), and repos talk over real TCP on
//! 127.0.0.1 with samod's own length-delimited framing
//! (`Transport::from_tokio_io`), Nagle off on both ends.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use automerge::{Automerge, ChangeHash, ReadDoc, ROOT};
use futures_util::StreamExt;
use samod::storage::TokioFilesystemStorage as FilesystemStorage;
use samod::{BackoffConfig, DialError, Dialer, DocHandle, DocumentId, PeerId, Repo, Transport};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::system::{Arrival, Edit, Level, System, Unsupported};

/// How long a cluster may take to connect or a document to appear.
const PATIENCE: Duration = Duration::from_secs(30);

/// samod repos in this process.
pub struct Samod {
    repos: Vec<Repo>,
    dirs: Vec<PathBuf>,
    /// Bytes written to every TCP socket, framing included.
    bytes_sent: Arc<AtomicU64>,
    accept_loops: Vec<JoinHandle<()>>,
    handles: Mutex<HashMap<(usize, DocumentId), DocHandle>>,
}

fn peer_id(node: usize) -> PeerId {
    PeerId::from(format!("node{node}"))
}

impl Samod {
    async fn start_dirs(dirs: Vec<PathBuf>) -> anyhow::Result<Self> {
        let mut repos = Vec::new();
        for (node, dir) in dirs.iter().enumerate() {
            std::fs::create_dir_all(dir)?;
            let repo = Repo::build_tokio()
                .with_storage(FilesystemStorage::new(dir))
                .with_peer_id(peer_id(node))
                .load()
                .await;
            repos.push(repo);
        }
        let bytes_sent = Arc::new(AtomicU64::new(0));
        let mut accept_loops = Vec::new();
        // Node j listens; every node i < j dials it.
        for j in 1..repos.len() {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let url = url::Url::parse(&format!("tcp://{addr}"))?;
            let acceptor = repos[j]
                .make_acceptor(url.clone())
                .map_err(|_| anyhow::anyhow!("repo stopped"))?;
            let bytes = bytes_sent.clone();
            accept_loops.push(tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    if stream.set_nodelay(true).is_err() {
                        continue;
                    }
                    let io = CountingStream::new(stream, bytes.clone());
                    if acceptor.accept(Transport::from_tokio_io(io)).is_err() {
                        break;
                    }
                }
            }));
            for repo in &repos[..j] {
                let dialer = NodelayDialer {
                    url: url.clone(),
                    addr,
                    bytes_sent: bytes_sent.clone(),
                };
                repo.dial(BackoffConfig::default(), Arc::new(dialer))
                    .map_err(|_| anyhow::anyhow!("repo stopped"))?;
            }
        }
        for (i, repo) in repos.iter().enumerate() {
            for j in (0..repos.len()).filter(|j| *j != i) {
                tokio::time::timeout(PATIENCE, repo.when_connected(peer_id(j)))
                    .await
                    .context("samod repos did not connect")?
                    .map_err(|_| anyhow::anyhow!("repo stopped"))?;
            }
        }
        Ok(Samod {
            repos,
            dirs,
            bytes_sent,
            accept_loops,
            handles: Mutex::new(HashMap::new()),
        })
    }

    fn lock_handles(&self) -> std::sync::MutexGuard<'_, HashMap<(usize, DocumentId), DocHandle>> {
        self.handles
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cached(&self, node: usize, doc: &DocumentId) -> Option<DocHandle> {
        self.lock_handles().get(&(node, doc.clone())).cloned()
    }

    /// The handle if the repo has (or can load or fetch) the document.
    async fn find(&self, node: usize, doc: &DocumentId) -> anyhow::Result<Option<DocHandle>> {
        if let Some(handle) = self.cached(node, doc) {
            return Ok(Some(handle));
        }
        let found = self.repos[node]
            .find(doc.clone())
            .await
            .map_err(|_| anyhow::anyhow!("repo stopped"))?;
        if let Some(handle) = &found {
            self.lock_handles()
                .insert((node, doc.clone()), handle.clone());
        }
        Ok(found)
    }

    async fn handle(&self, node: usize, doc: &DocumentId) -> anyhow::Result<DocHandle> {
        self.find(node, doc)
            .await?
            .with_context(|| format!("node {node} does not hold {doc}"))
    }
}

impl System for Samod {
    type Doc = DocumentId;
    const NAME: &'static str = "samod";

    async fn start(dir: PathBuf, nodes: usize) -> anyhow::Result<Self> {
        let dirs = (0..nodes).map(|n| dir.join(format!("node{n}"))).collect();
        Samod::start_dirs(dirs).await
    }

    async fn restart(self) -> anyhow::Result<Self> {
        let dirs = self.dirs.clone();
        self.shutdown().await?;
        Samod::start_dirs(dirs).await
    }

    async fn create(&self, node: usize) -> anyhow::Result<DocumentId> {
        let handle = self.repos[node]
            .create(Automerge::new())
            .await
            .map_err(|_| anyhow::anyhow!("repo stopped"))?;
        let id = handle.document_id().clone();
        self.lock_handles().insert((node, id.clone()), handle);
        Ok(id)
    }

    async fn open(&self, node: usize, doc: &DocumentId) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        while self.find(node, doc).await?.is_none() {
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
        if level == Level::Durable {
            return Err(Unsupported(
                "samod 0.16 has no durable acknowledgement: a change returns before \
                 storage sees it, and FilesystemStorage writes files without fsync",
            )
            .into());
        }
        let handle = self.handle(node, doc).await?;
        let made = handle.with_document(|d| {
            d.transact(|tx| edit.apply(tx))
                .map(|success| success.hash)
                .map_err(|failure| anyhow::anyhow!("{}", failure.error))
        });
        made?.context("the edit made no change")
    }

    async fn read(&self, node: usize, doc: &DocumentId) -> anyhow::Result<usize> {
        let handle = self.handle(node, doc).await?;
        Ok(handle.with_document(|d| d.length(ROOT)))
    }

    async fn heads(
        &self,
        node: usize,
        doc: &DocumentId,
    ) -> anyhow::Result<Option<Vec<ChangeHash>>> {
        Ok(self
            .find(node, doc)
            .await?
            .map(|handle| handle.with_document(|d| d.get_heads())))
    }

    async fn subscribe(
        &self,
        node: usize,
        doc: &DocumentId,
    ) -> anyhow::Result<mpsc::UnboundedReceiver<Arrival>> {
        let mut changes = self.handle(node, doc).await?.changes();
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(change) = changes.next().await {
                if sender.send((Instant::now(), change.new_heads)).is_err() {
                    break;
                }
            }
        });
        Ok(receiver)
    }

    async fn wire_bytes(&self) -> anyhow::Result<u64> {
        Ok(self.bytes_sent.load(Ordering::Relaxed))
    }

    async fn shutdown(self) -> anyhow::Result<()> {
        drop(self.handles);
        for repo in &self.repos {
            repo.stop().await;
        }
        for accept_loop in self.accept_loops {
            accept_loop.abort();
        }
        Ok(())
    }
}

/// Dials a repo's listener with Nagle off (samod's own `TcpDialer` leaves
/// it on, which measures Nagle's 40 ms delays rather than samod).
struct NodelayDialer {
    url: url::Url,
    addr: std::net::SocketAddr,
    bytes_sent: Arc<AtomicU64>,
}

type DialFuture =
    Pin<Box<dyn Future<Output = Result<Transport, DialError<std::io::Error>>> + Send>>;

impl Dialer for NodelayDialer {
    type Error = std::io::Error;

    fn url(&self) -> url::Url {
        self.url.clone()
    }

    fn connect(&self) -> DialFuture {
        let addr = self.addr;
        let bytes = self.bytes_sent.clone();
        Box::pin(async move {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(DialError::transient)?;
            stream.set_nodelay(true).map_err(DialError::transient)?;
            Ok(Transport::from_tokio_io(CountingStream::new(stream, bytes)))
        })
    }
}

/// A TCP stream that counts the bytes written to it.
pub struct CountingStream {
    inner: TcpStream,
    bytes_sent: Arc<AtomicU64>,
}

impl CountingStream {
    /// Counts what is written to `inner` into `bytes_sent`.
    pub fn new(inner: TcpStream, bytes_sent: Arc<AtomicU64>) -> Self {
        CountingStream { inner, bytes_sent }
    }
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &written {
            self.bytes_sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
