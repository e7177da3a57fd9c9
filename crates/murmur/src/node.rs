//! Opening, running and stopping a node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::driver::{self, Command, DriverHandle, Environment, PeerInfo, Status};
use murmur_core::{Config, DocumentId, NodeId, Replica, Time};
use murmur_net::socket::AsyncUdpSocket;
use murmur_net::transport::{NetEvent, Network, NetworkConfig};
use murmur_net::Identity;
use murmur_store::{MemStore, SledStore, Storage};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{DocHandle, Error};

/// Where a node keeps its data.
#[derive(Debug, Clone)]
enum Location {
    Directory(PathBuf),
    Memory,
}

/// What a node needs to run inside a deterministic network simulation,
/// such as [turmoil](https://docs.rs/turmoil)'s, where one seed must
/// replay the same run ([`NodeBuilder::simulated`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Simulation {
    /// Seeds the engine's random choices and the network's (session id,
    /// reconnect jitter, QUIC's own).
    pub seed: u64,
    /// The simulation's clock, for example milliseconds since turmoil's
    /// epoch.
    pub clock: fn() -> Time,
    /// The simulated UDP socket QUIC runs over: the node listens on its
    /// address.
    pub socket: Arc<dyn AsyncUdpSocket>,
}

impl Simulation {
    /// A simulation seeded with `seed`, timed by `clock`, over `socket`.
    pub fn new(seed: u64, clock: fn() -> Time, socket: Arc<dyn AsyncUdpSocket>) -> Self {
        Simulation {
            seed,
            clock,
            socket,
        }
    }
}

/// Configures and starts a [`Node`].
///
/// Two nodes on loopback that allow each other, and a change that returns
/// once the other node holds it durably too
/// ([`Ack::Replicated(1)`](crate::Ack::Replicated)):
///
/// ```
/// use murmur::automerge::{transaction::Transactable, ReadDoc, ROOT};
/// use murmur::{Ack, Identity, Node};
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), murmur::Error> {
/// let (a_key, b_key) = (Identity::generate()?, Identity::generate()?);
/// let (a_id, b_id) = (a_key.node_id(), b_key.node_id());
/// let any_port = "127.0.0.1:0".parse().expect("an address");
/// let a = Node::builder().in_memory().identity(a_key).listen(any_port).allow(b_id).start().await?;
/// let b = Node::builder().in_memory().identity(b_key).listen(any_port).allow(a_id).start().await?;
/// let b_addr = b.local_addr().await?.expect("b listens");
/// a.add_peer(b_id, b_addr).await?;
///
/// let doc = a.create_doc().await?;
/// let receipt = doc
///     .change_with(Ack::Replicated(1), |tx| tx.put(ROOT, "title", "Shopping"))
///     .await?;
/// assert!(receipt.change.is_some());
///
/// // b holds the change already: Replicated(1) waited for it.
/// let copy = b.doc(doc.id()).await?;
/// assert!(copy.read(|d| d.get(ROOT, "title").ok().flatten().is_some()).await?);
/// # a.shutdown().await?;
/// # b.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    location: Location,
    anti_entropy_interval: Option<Duration>,
    group_commit_delay: Option<Duration>,
    listen: Option<SocketAddr>,
    advertise: Option<SocketAddr>,
    peers: Vec<(NodeId, SocketAddr)>,
    allowed: Vec<NodeId>,
    identity: Option<std::sync::Arc<Identity>>,
    min_free_bytes: Option<u64>,
    feed_max_entries: Option<u64>,
    simulation: Option<Simulation>,
}

impl NodeBuilder {
    /// Keeps the node's data (identity and sled database) in `dir`,
    /// creating it if needed. This is the default, in `./murmur-data`.
    pub fn data_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.location = Location::Directory(dir.as_ref().to_path_buf());
        self
    }

    /// Keeps everything in memory (a fresh identity, nothing survives the
    /// process). For tests and examples.
    pub fn in_memory(mut self) -> Self {
        self.location = Location::Memory;
        self
    }

    /// Listens for peers on this UDP address (QUIC). Without it the node is
    /// local only: it replicates nothing.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// The address other nodes dial to reach this one, which membership
    /// tells them: a public address, a NAT's or a proxy's. Defaults to the
    /// address the node listens on; a node listening on an unspecified
    /// address (`0.0.0.0` or `::`) must be told one, or it refuses to
    /// start ([`Error::AdvertiseRequired`](crate::Error::AdvertiseRequired)).
    pub fn advertise(mut self, addr: SocketAddr) -> Self {
        self.advertise = Some(addr);
        self
    }

    /// Dials `id` at `addr` (and keeps redialing it). `id` is allowed to
    /// connect. Needs [`NodeBuilder::listen`]. This address always wins over
    /// one that membership gossips for `id`.
    pub fn peer(mut self, id: NodeId, addr: SocketAddr) -> Self {
        self.peers.push((id, addr));
        self
    }

    /// Dials every `(id, addr)` of `peers`; see [`NodeBuilder::peer`].
    pub fn peers(mut self, peers: impl IntoIterator<Item = (NodeId, SocketAddr)>) -> Self {
        self.peers.extend(peers);
        self
    }

    /// Lets `id` connect without dialing it (its address is not known).
    pub fn allow(mut self, id: NodeId) -> Self {
        self.allowed.push(id);
        self
    }

    /// Uses `identity` instead of the one in the data directory (for
    /// in-memory nodes that must keep one id across restarts).
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(std::sync::Arc::new(identity));
        self
    }

    /// How often the node reconciles with a peer.
    pub fn anti_entropy_interval(mut self, interval: Duration) -> Self {
        self.anti_entropy_interval = Some(interval);
        self
    }

    /// Most entries the change feed keeps (default 1,000,000): older ones
    /// are trimmed, and a reader behind them gets [`crate::Error::FeedTrimmed`].
    pub fn feed_max_entries(mut self, entries: u64) -> Self {
        self.feed_max_entries = Some(entries);
        self
    }

    /// Free bytes the data directory's disk must keep (default 64 MiB):
    /// below it, new writes are refused with
    /// [`ReplicaError::DiskFull`](murmur_core::ReplicaError::DiskFull) until
    /// space is freed, while reads and replication go on. 0 turns the check
    /// off. An in-memory node has no disk to watch.
    pub fn min_free_bytes(mut self, bytes: u64) -> Self {
        self.min_free_bytes = Some(bytes);
        self
    }

    /// How long writes may wait so that more share one flush (default:
    /// none beyond the writes already queued together).
    pub fn group_commit_delay(mut self, delay: Duration) -> Self {
        self.group_commit_delay = Some(delay);
        self
    }

    /// Runs the node inside a deterministic simulation: QUIC over the
    /// simulation's socket (whose address the node listens on), time from
    /// its clock, every random choice from its seed, and storage work on
    /// the node's own runtime, where the simulation schedules it. Two runs
    /// with the same seed and the same inputs then make the same moves.
    /// The TLS handshakes' keys stay random: they change bytes on the wire,
    /// never their sizes or timing. See `tests/turmoil_driver.rs`.
    pub fn simulated(mut self, simulation: Simulation) -> Self {
        self.simulation = Some(simulation);
        self
    }

    /// Opens the store, loads the identity (creating it on first start) and
    /// starts the node's task on the current tokio runtime.
    pub async fn start(self) -> Result<Node, Error> {
        let (identity, store) = match &self.location {
            Location::Directory(dir) => open_directory(dir.clone()).await?,
            Location::Memory => {
                let store: Box<dyn Storage> = Box::new(MemStore::new());
                (std::sync::Arc::new(Identity::generate()?), store)
            }
        };
        let identity = self.identity.clone().unwrap_or(identity);
        let node_id = identity.node_id();
        let mut config = Config::new(node_id);
        let mut env = Environment::default();
        if let Some(simulation) = &self.simulation {
            config.seed = simulation.seed;
            env = Environment {
                clock: simulation.clock,
                inline_effects: true,
            };
        }
        if let Some(interval) = self.anti_entropy_interval {
            config.anti_entropy_interval = interval;
        }
        if let Some(delay) = self.group_commit_delay {
            config.group_commit_delay = delay;
        }
        if let Some(entries) = self.feed_max_entries {
            config.feed_max_entries = entries;
        }
        if let Some(bytes) = self.min_free_bytes {
            config.min_free_bytes = bytes;
        }
        let disk = match &self.location {
            Location::Directory(dir) => Some(dir.clone()),
            Location::Memory => None,
        };
        let network = self.start_network(&identity, &mut config)?;
        let replica = Replica::open(config, store, env.now())?;
        let (handle, task) = driver::spawn(replica, network, disk, env);
        tracing::info!(node = %node_id.short(), node_id = %node_id, "node started");
        Ok(Node {
            node_id,
            handle,
            task,
        })
    }
}

impl NodeBuilder {
    /// Starts the network, if the node listens (or is simulated), and
    /// puts the address membership spreads into `config`.
    fn start_network(
        &self,
        identity: &Identity,
        config: &mut Config,
    ) -> Result<Option<(Network, mpsc::Receiver<NetEvent>)>, Error> {
        let socket = self.simulation.as_ref().map(|sim| sim.socket.clone());
        // A simulated node listens where its socket is.
        let listen = match &socket {
            Some(socket) => Some(socket.local_addr().map_err(|source| {
                murmur_net::transport::NetError::Bind {
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    source,
                }
            })?),
            None => self.listen,
        };
        let Some(listen) = listen else {
            return Ok(None);
        };
        if listen.ip().is_unspecified() && self.advertise.is_none() {
            return Err(Error::AdvertiseRequired { listen });
        }
        let mut network = NetworkConfig::new(listen);
        network.peers = self.peers.clone();
        network.allowed = self.allowed.clone();
        network.seed = self.simulation.as_ref().map(|sim| sim.seed);
        let (network, events) = match socket {
            Some(socket) => Network::start_on(identity, network, socket)?,
            None => Network::start(identity, network)?,
        };
        // Membership spreads the advertised address, by default the bound
        // one (the real port when asked for port 0).
        let advertised = self.advertise.or(network.local_addr());
        config.membership_addr = advertised.map(|addr| addr.to_string());
        Ok(Some((network, events)))
    }
}

/// Opens (creating if needed) a data directory: its identity and its store.
async fn open_directory(
    dir: PathBuf,
) -> Result<(std::sync::Arc<Identity>, Box<dyn Storage>), Error> {
    // Opening sled reads and may recover its log: keep it off the runtime's
    // worker threads.
    let opened = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        std::fs::create_dir_all(&dir).map_err(|source| Error::DataDir {
            path: dir.clone(),
            source,
        })?;
        let (identity, created) = Identity::load_or_create(&dir)?;
        if created {
            tracing::info!(node = %identity.node_id().short(), node_id = %identity.node_id(), dir = %dir.display(), "created node identity");
        }
        let store: Box<dyn Storage> = Box::new(SledStore::open(dir.join("db"))?);
        Ok((std::sync::Arc::new(identity), store))
    })
    .await;
    opened.map_err(|_| Error::Closed)?
}

/// A running Murmur node.
///
/// Dropping every handle to a node stops it after flushing; prefer
/// [`Node::shutdown`], which waits for that flush.
///
/// ```
/// use murmur::automerge::{transaction::Transactable, ROOT};
/// use murmur::Node;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), murmur::Error> {
/// let dir = tempfile::tempdir().expect("a temporary directory");
/// let node = Node::builder().data_dir(dir.path()).start().await?;
/// let doc = node.create_doc().await?;
/// doc.change(|tx| tx.put(ROOT, "n", 1)).await?;
/// assert_eq!(node.documents().await?, vec![doc.id()]);
/// // Waits for the last flush; what was acknowledged is on disk.
/// node.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub struct Node {
    node_id: NodeId,
    handle: DriverHandle,
    task: JoinHandle<()>,
}

impl Node {
    /// A builder with the defaults: data in `./murmur-data`.
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            location: Location::Directory(PathBuf::from("murmur-data")),
            anti_entropy_interval: None,
            group_commit_delay: None,
            listen: None,
            advertise: None,
            peers: Vec::new(),
            allowed: Vec::new(),
            identity: None,
            min_free_bytes: None,
            feed_max_entries: None,
            simulation: None,
        }
    }

    /// This node's id (its public key).
    pub fn id(&self) -> NodeId {
        self.node_id
    }

    /// Creates a new, empty document.
    pub async fn create_doc(&self) -> Result<DocHandle, Error> {
        let id = self
            .handle
            .request(|reply| Command::CreateDocument { id: None, reply })
            .await??;
        Ok(DocHandle::new(id, self.handle.clone()))
    }

    /// Creates a new, empty document under a given id (one a client made,
    /// say). Refused with [`murmur_core::ReplicaError::DocumentExists`] if
    /// this node holds, or has deleted, a document with that id.
    pub async fn create_doc_with_id(&self, id: DocumentId) -> Result<DocHandle, Error> {
        self.handle
            .request(|reply| Command::CreateDocument {
                id: Some(id),
                reply,
            })
            .await??;
        Ok(DocHandle::new(id, self.handle.clone()))
    }

    /// A new document holding Automerge data made elsewhere (a saved
    /// document, or changes; see [`DocHandle::merge`]) with its history,
    /// acknowledged `Durable`. Data that does not decode is refused before
    /// a document is made.
    pub async fn import(&self, bytes: Vec<u8>) -> Result<DocHandle, Error> {
        let changes = crate::doc::decode(bytes).await?;
        let doc = self.create_doc().await?;
        doc.merge_changes(changes, murmur_core::AckLevel::Durable)
            .await?;
        Ok(doc)
    }

    /// Restores document `id` from Automerge data (a backup's, made with
    /// [`DocHandle::save`]): creates it under that id if this node does not
    /// hold it, then merges the data in (into the one held, if it does).
    /// Acknowledged `Durable`; returns its heads.
    pub async fn restore(&self, id: DocumentId, bytes: Vec<u8>) -> Result<DocHandle, Error> {
        let changes = crate::doc::decode(bytes).await?;
        let created = self
            .handle
            .request(|reply| Command::CreateDocument {
                id: Some(id),
                reply,
            })
            .await?;
        match created {
            Ok(_) | Err(murmur_core::ReplicaError::DocumentExists(_)) => {}
            Err(error) => return Err(error.into()),
        }
        let doc = DocHandle::new(id, self.handle.clone());
        doc.merge_changes(changes, murmur_core::AckLevel::Durable)
            .await?;
        Ok(doc)
    }

    /// A handle to document `id`, which this node must hold.
    pub async fn doc(&self, id: DocumentId) -> Result<DocHandle, Error> {
        let handle = DocHandle::new(id, self.handle.clone());
        handle.read(|_| ()).await?;
        Ok(handle)
    }

    /// The ids of every document the node holds.
    pub async fn documents(&self) -> Result<Vec<DocumentId>, Error> {
        Ok(self
            .handle
            .request(|reply| Command::ListDocuments { reply })
            .await?)
    }

    /// The change feed from `cursor` on: every change this node applies,
    /// local or from a peer, in any document, once, under a dense sequence
    /// number that survives crashes (see [`crate::feed`]).
    ///
    /// ```
    /// use murmur::automerge::{transaction::Transactable, ROOT};
    /// use murmur::{Cursor, Node};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), murmur::Error> {
    /// let node = Node::builder().in_memory().start().await?;
    /// let doc = node.create_doc().await?;
    /// doc.change(|tx| tx.put(ROOT, "n", 1)).await?;
    /// let mut feed = node.feed(Cursor::Start);
    /// let entry = feed.next().await.expect("the node runs")?;
    /// assert_eq!((entry.seq, entry.doc), (1, doc.id()));
    /// // A consumer stores `entry.seq` with what it made of the entry,
    /// // and resumes with `Cursor::After(seq)`.
    /// # node.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn feed(&self, cursor: crate::Cursor) -> crate::FeedStream {
        self.handle.feed(cursor)
    }

    /// Allows `peer` and keeps a connection to it at `addr`. Fails with
    /// [`Error::NotNetworked`] on a node started without
    /// [`NodeBuilder::listen`].
    pub async fn add_peer(&self, peer: NodeId, addr: SocketAddr) -> Result<(), Error> {
        let networked = self
            .handle
            .request(|reply| Command::AddPeer { peer, addr, reply })
            .await?;
        if networked {
            Ok(())
        } else {
            Err(Error::NotNetworked)
        }
    }

    /// Stops allowing `peer` and closes any connection to it: it can no
    /// longer connect, read or write, until [`Node::add_peer`] again.
    pub async fn remove_peer(&self, peer: NodeId) -> Result<(), Error> {
        let networked = self
            .handle
            .request(|reply| Command::RemovePeer { peer, reply })
            .await?;
        if networked {
            Ok(())
        } else {
            Err(Error::NotNetworked)
        }
    }

    /// The peers connected now.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, Error> {
        Ok(self.status().await?.peers)
    }

    /// The UDP address the node listens on (useful after listening on port
    /// 0), if it is networked.
    pub async fn local_addr(&self) -> Result<Option<SocketAddr>, Error> {
        Ok(self.status().await?.listen)
    }

    /// The node's state and counters.
    pub async fn status(&self) -> Result<Status, Error> {
        Ok(self
            .handle
            .request(|reply| Command::Status { reply })
            .await?)
    }

    /// The node's state, answered even while the engine is busy (a cold
    /// document loading, a flush on a slow disk): asks the engine and waits
    /// up to `wait`; past it, returns the status the engine last published
    /// (at most 50 ms older than its last turn) with `false` for "fresh".
    pub async fn status_within(&self, wait: Duration) -> Result<(Status, bool), Error> {
        match tokio::time::timeout(wait, self.status()).await {
            Ok(status) => Ok((status?, true)),
            Err(_) => Ok((self.handle.last_status(), false)),
        }
    }

    /// Flushes everything and stops the node, within
    /// [`SHUTDOWN_TIMEOUT`](crate::driver::SHUTDOWN_TIMEOUT) whatever it
    /// is doing. `Ok` means every write was flushed and the store marked
    /// clean; an error says what was not (writes not yet acknowledged
    /// `Durable` may then be lost, as in a crash; acknowledged ones never
    /// are).
    pub async fn shutdown(self) -> Result<(), Error> {
        let Node { handle, task, .. } = self;
        bounded_stop(async {
            let closed = request_close(&handle).await;
            let _ = task.await;
            closed
        })
        .await
    }

    /// [`Node::shutdown`] through a shared reference, for a node that
    /// other tasks may still hold (in an `Arc`): flushes everything and
    /// stops the node, with the same bound and the same answer. The node's
    /// task ends on its own after; every later call on any handle answers
    /// [`Error::Closed`].
    pub async fn close(&self) -> Result<(), Error> {
        bounded_stop(request_close(&self.handle)).await
    }
}

/// Asks the driver to flush and stop; answers once the store is closed.
async fn request_close(handle: &DriverHandle) -> Result<(), Error> {
    let closed = handle.request(|reply| Command::Shutdown { reply }).await?;
    closed.map_err(Error::from)
}

/// Runs `stop` for at most [`driver::SHUTDOWN_TIMEOUT`].
async fn bounded_stop(
    stop: impl std::future::Future<Output = Result<(), Error>>,
) -> Result<(), Error> {
    match tokio::time::timeout(driver::SHUTDOWN_TIMEOUT, stop).await {
        Ok(result) => result,
        Err(_) => {
            tracing::error!(
                timeout_s = driver::SHUTDOWN_TIMEOUT.as_secs(),
                "the node did not stop in time (a flush or an engine turn is stuck); giving up on it"
            );
            Err(Error::ShutdownTimedOut(driver::SHUTDOWN_TIMEOUT))
        }
    }
}
