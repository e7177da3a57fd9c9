//! QUIC between nodes: one connection per peer, frames on one
//! unidirectional stream each way, reconnects with backoff and jitter.
//!
//! The transport knows nothing of documents. It authenticates peers (TLS
//! with pinned keys, see [`crate::tls`]), turns streams into messages and
//! reports what happens as [`NetEvent`]s on one bounded channel, which the
//! driver feeds to the replica. Sending is a bounded queue per connection:
//! when a slow peer fills it, the driver drops the message and lets
//! anti-entropy repair the gap.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use murmur_wire::{
    encode_frame, FrameDecoder, Hello, Message, NodeId, WireError, PROTOCOL_VERSION,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::tls::{self, AllowList, TlsError};
use crate::Identity;

/// Frames queued for one connection before sends are refused.
pub const LINK_QUEUE_FRAMES: usize = 256;
/// Bytes queued for one connection before sends are refused (one frame is
/// always accepted into an empty queue, whatever its size).
pub const LINK_QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Events (mostly received messages) queued for the driver; readers wait
/// past it, which slows the sending peer down through QUIC flow control.
pub const EVENT_QUEUE: usize = 1024;
/// How long the opening Hello may take.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dial waits for its TLS handshake before it gives up and the
/// dial loop tries again (a handshake takes a few round trips: well under
/// a second on any working path).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(4);
/// Bytes read from a stream at a time.
const READ_CHUNK: usize = 64 * 1024;

/// QUIC application close codes.
mod close {
    pub const DUPLICATE: u32 = 1;
    pub const PROTOCOL: u32 = 2;
    pub const SHUTDOWN: u32 = 3;
    pub const REMOVED: u32 = 4;
}

/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket could not be bound.
    #[error("could not listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// quinn refused the configuration.
    #[error("QUIC configuration: {0}")]
    Quic(String),
}

/// Settings of a node's network.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The UDP address to listen on.
    pub listen: SocketAddr,
    /// Peers to dial, with their addresses. Their ids are allowed too.
    pub peers: Vec<(NodeId, SocketAddr)>,
    /// Ids that may connect (in addition to `peers`).
    pub allowed: Vec<NodeId>,
    /// A connection with no traffic for this long is closed: how long a
    /// peer that went silent (crashed, blackholed, unplugged) stays listed
    /// as connected.
    pub idle_timeout: Duration,
    /// Keep-alive interval, well under the idle timeout: five keep-alives
    /// fit in one, so a lossy link that still carries some of them keeps
    /// its connection.
    pub keep_alive: Duration,
    /// First reconnect delay; doubles up to `reconnect_max`, with jitter.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Seeds the network's random choices: its session id, reconnect
    /// jitter and QUIC's own (packet-number skips, padding, greasing). Set
    /// it in a simulation that must replay a seed; `None` (the default)
    /// draws them from the OS. TLS keys stay random either way: they change
    /// bytes on the wire, never their sizes or timing.
    pub seed: Option<u64>,
}

impl NetworkConfig {
    /// Defaults: listen on `listen`, no peers.
    pub fn new(listen: SocketAddr) -> Self {
        NetworkConfig {
            listen,
            peers: Vec::new(),
            allowed: Vec::new(),
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            seed: None,
        }
    }
}

/// A live, authenticated connection to a peer.
#[derive(Debug, Clone)]
pub struct Link {
    /// Unique per connection, so events of an old connection can be told
    /// from those of its replacement.
    pub id: u64,
    /// Who dialed it (for choosing between two connections to one peer).
    pub dialed_by: NodeId,
    /// The peer's session (from its Hello): a connection from a newer
    /// session of the peer replaces one from an older.
    pub session: u64,
    frames: mpsc::Sender<Vec<u8>>,
    /// Bytes in `frames` not yet written to the stream.
    queued_bytes: Arc<AtomicUsize>,
    connection: quinn::Connection,
}

/// The outcome of [`Link::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Queued.
    Queued,
    /// The connection's queue is full: the frame was dropped.
    Full,
    /// The connection is gone.
    Closed,
}

impl Link {
    /// Queues a frame without waiting; refuses it when the connection's
    /// queue is full in frames or in bytes.
    pub fn send(&self, frame: Vec<u8>) -> SendOutcome {
        let len = frame.len();
        let queued = self.queued_bytes.load(Ordering::Acquire);
        if queued > 0 && queued + len > LINK_QUEUE_BYTES {
            return SendOutcome::Full;
        }
        match self.frames.try_send(frame) {
            Ok(()) => {
                self.queued_bytes.fetch_add(len, Ordering::AcqRel);
                SendOutcome::Queued
            }
            Err(mpsc::error::TrySendError::Full(_)) => SendOutcome::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => SendOutcome::Closed,
        }
    }

    /// Closes the connection because a better one to the same peer exists.
    pub fn close_duplicate(&self) {
        self.connection
            .close(close::DUPLICATE.into(), b"duplicate connection");
    }

    /// Closes the connection because the peer was removed.
    pub fn close_removed(&self) {
        self.connection
            .close(close::REMOVED.into(), b"peer removed");
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// The current round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.connection.rtt()
    }
}

/// What the network tells the driver.
#[derive(Debug)]
pub enum NetEvent {
    /// A connection to `peer` is up and authenticated.
    Up {
        /// The peer.
        peer: NodeId,
        /// The connection.
        link: Link,
    },
    /// Connection `link` to `peer` closed.
    Down {
        /// The peer.
        peer: NodeId,
        /// Which connection.
        link: u64,
        /// Why.
        reason: String,
    },
    /// `peer` sent `message` on connection `link`.
    Message {
        /// The peer.
        peer: NodeId,
        /// Which connection.
        link: u64,
        /// The message.
        message: Message,
        /// Its size on the wire.
        bytes: usize,
    },
}

/// The running network: an endpoint, its accept loop and one dialer per
/// configured peer.
pub struct Network {
    endpoint: quinn::Endpoint,
    connected: watch::Sender<BTreeSet<NodeId>>,
    allowed: AllowList,
    shared: Arc<Shared>,
    config: NetworkConfig,
    /// The address of every peer a dialer runs for; a dialer reads it
    /// before each attempt, so an address can change.
    dialing: Addresses,
}

/// Where to dial a peer, and whether the operator said so (a configured
/// address always wins over one membership gossiped).
#[derive(Debug, Clone, Copy)]
struct DialAddress {
    addr: SocketAddr,
    configured: bool,
}

type Addresses = Arc<std::sync::Mutex<std::collections::BTreeMap<NodeId, DialAddress>>>;

fn address_of(addresses: &Addresses, peer: &NodeId) -> Option<SocketAddr> {
    addresses
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(peer)
        .map(|dial| dial.addr)
}

struct Shared {
    me: NodeId,
    /// This network's session, sent in every Hello.
    session: u64,
    events: mpsc::Sender<NetEvent>,
    next_link: AtomicU64,
    /// Reconnect jitter.
    rng: std::sync::Mutex<StdRng>,
}

impl Shared {
    /// The span of this node's network tasks: every line they log carries
    /// the node id, in its short form (as the driver's do).
    fn span(&self) -> tracing::Span {
        tracing::info_span!("node", node = %self.me.short())
    }

    /// A factor in `0.5..1.5` to spread reconnects out.
    fn jitter(&self) -> f64 {
        self.rng
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .gen_range(0.5..1.5)
    }
}

impl Network {
    /// Binds the endpoint and starts accepting and dialing. Must run inside
    /// a tokio runtime.
    pub fn start(
        identity: &Identity,
        config: NetworkConfig,
    ) -> Result<(Network, mpsc::Receiver<NetEvent>), NetError> {
        Network::start_with(identity, config, None)
    }

    /// Starts the network on `socket` instead of binding `config.listen`:
    /// a simulated network's socket (turmoil's, with faults of its own),
    /// where the node's QUIC runs unchanged. The endpoint's timers follow
    /// tokio's clock, so a paused or simulated runtime's time is the
    /// network's time.
    pub fn start_on(
        identity: &Identity,
        config: NetworkConfig,
        socket: Arc<dyn quinn::AsyncUdpSocket>,
    ) -> Result<(Network, mpsc::Receiver<NetEvent>), NetError> {
        Network::start_with(identity, config, Some(socket))
    }

    fn start_with(
        identity: &Identity,
        config: NetworkConfig,
        socket: Option<Arc<dyn quinn::AsyncUdpSocket>>,
    ) -> Result<(Network, mpsc::Receiver<NetEvent>), NetError> {
        let allowed = AllowList::new(
            config
                .allowed
                .iter()
                .copied()
                .chain(config.peers.iter().map(|(id, _)| *id)),
        );
        let mut rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let endpoint = endpoint(identity, &config, allowed.clone(), rng.gen(), socket)?;
        let (events, receiver) = mpsc::channel(EVENT_QUEUE);
        let shared = Arc::new(Shared {
            me: identity.node_id(),
            session: rng.gen(),
            events,
            next_link: AtomicU64::new(0),
            rng: std::sync::Mutex::new(rng),
        });
        let (connected, _) = watch::channel(BTreeSet::new());
        tokio::spawn(accept_loop(endpoint.clone(), shared.clone()).instrument(shared.span()));
        let bound = endpoint.local_addr().unwrap_or(config.listen);
        tracing::info!(addr = %bound, peers = config.peers.len(), "network started");
        let network = Network {
            endpoint,
            connected,
            allowed,
            shared,
            dialing: Addresses::default(),
            config: config.clone(),
        };
        for (peer, addr) in &config.peers {
            network.add_peer(*peer, *addr);
        }
        Ok((network, receiver))
    }

    /// Allows `peer` and keeps a connection to it at `addr` (dialing,
    /// and redialing with backoff, whenever it is not connected). Adding a
    /// known peer again updates its address.
    pub fn add_peer(&self, peer: NodeId, addr: SocketAddr) {
        self.allowed.insert(peer);
        self.dial(peer, addr, true);
    }

    /// Keeps a connection to `peer` at `addr` if it is on the allow-list
    /// (membership found it, at the address it advertises); returns whether
    /// it is. An address the operator configured for `peer` is kept.
    pub fn dial_if_allowed(&self, peer: NodeId, addr: SocketAddr) -> bool {
        if !self.allowed.allows(&peer) {
            return false;
        }
        self.dial(peer, addr, false);
        true
    }

    /// Runs a dialer for `peer` if none runs, at `addr` unless the peer
    /// has a configured address and this one is not.
    fn dial(&self, peer: NodeId, addr: SocketAddr, configured: bool) {
        if peer == self.shared.me {
            return;
        }
        let known = {
            let mut dialing = self
                .dialing
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let known = dialing.get(&peer).copied();
            if configured || !known.is_some_and(|dial| dial.configured) {
                dialing.insert(peer, DialAddress { addr, configured });
            }
            known.is_some()
        };
        if !known {
            let dialer = dial_loop(
                self.endpoint.clone(),
                self.shared.clone(),
                peer,
                self.dialing.clone(),
                self.connected.subscribe(),
                self.config.clone(),
            );
            tokio::spawn(dialer.instrument(self.shared.span()));
        }
    }

    /// Stops allowing and dialing `peer`. The caller closes a live
    /// connection to it ([`Link::close_removed`]).
    pub fn remove_peer(&self, peer: &NodeId) {
        self.allowed.remove(peer);
        self.dialing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(peer);
        // Wake its dialer so that it sees it has no address any more.
        self.connected.send_modify(|_| {});
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// Tells the dialers which peers are connected, so they do not dial a
    /// peer that already has a connection.
    pub fn set_connected(&self, peers: BTreeSet<NodeId>) {
        self.connected.send_replace(peers);
    }

    /// The ids allowed to connect.
    pub fn allowed(&self) -> &AllowList {
        &self.allowed
    }

    /// Closes every connection and the endpoint.
    pub async fn shutdown(&self) {
        self.endpoint
            .close(close::SHUTDOWN.into(), b"node shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// The QUIC endpoint: bound to `config.listen`, or on `socket` if given.
/// `quic_seed` seeds quinn's random choices.
fn endpoint(
    identity: &Identity,
    config: &NetworkConfig,
    allowed: AllowList,
    quic_seed: [u8; 32],
    socket: Option<Arc<dyn quinn::AsyncUdpSocket>>,
) -> Result<quinn::Endpoint, NetError> {
    let quic = |e: &dyn std::fmt::Display| NetError::Quic(e.to_string());
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(config.idle_timeout).map_err(|e| quic(&e))?,
        ))
        .keep_alive_interval(Some(config.keep_alive));
    let transport = Arc::new(transport);

    let server_tls = tls::server_config(identity, allowed.clone())?;
    let server_crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).map_err(|e| quic(&e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());

    let client_tls = tls::client_config(identity, allowed)?;
    let client_crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).map_err(|e| quic(&e))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);

    let bind_error = |source| NetError::Bind {
        addr: config.listen,
        source,
    };
    let runtime = Arc::new(quinn::TokioRuntime);
    let socket = match socket {
        Some(socket) => socket,
        None => {
            let socket = std::net::UdpSocket::bind(config.listen).map_err(bind_error)?;
            quinn::Runtime::wrap_udp_socket(&*runtime, socket).map_err(bind_error)?
        }
    };
    // As `Endpoint::server` does, with quinn's random choices seeded.
    let mut endpoint_config = quinn::EndpointConfig::default();
    endpoint_config.rng_seed(Some(quic_seed));
    let mut endpoint =
        quinn::Endpoint::new_with_abstract_socket(endpoint_config, Some(server), socket, runtime)
            .map_err(bind_error)?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(
            async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(connection) => {
                        if let Some(peer) = authenticated_peer(&connection) {
                            run_connection(shared, connection, peer, peer).await;
                        }
                    }
                    // Includes peers refused by the allow-list.
                    Err(error) => tracing::info!(%remote, %error, "incoming connection failed"),
                }
            }
            .in_current_span(),
        );
    }
}

async fn dial_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    peer: NodeId,
    addresses: Addresses,
    mut connected: watch::Receiver<BTreeSet<NodeId>>,
    config: NetworkConfig,
) {
    let mut delay = config.reconnect_min;
    loop {
        // Another connection (perhaps the peer dialed us) serves already.
        if connected
            .wait_for(|peers| !peers.contains(&peer) || address_of(&addresses, &peer).is_none())
            .await
            .is_err()
        {
            return;
        }
        let Some(addr) = address_of(&addresses, &peer) else {
            return;
        };
        let started = tokio::time::Instant::now();
        match dial(&endpoint, addr, peer).await {
            Ok(connection) => {
                run_connection(shared.clone(), connection, peer, shared.me).await;
                if started.elapsed() > config.reconnect_max {
                    delay = config.reconnect_min;
                }
            }
            Err(reason) => {
                tracing::debug!(peer = %peer.short(), %addr, %reason, "dial failed");
            }
        }
        if shared.events.is_closed() {
            return; // the driver is gone
        }
        tokio::time::sleep(delay.mul_f64(shared.jitter())).await;
        delay = (delay * 2).min(config.reconnect_max);
    }
}

async fn dial(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    expected: NodeId,
) -> Result<quinn::Connection, String> {
    let connecting = endpoint
        .connect(addr, tls::SERVER_NAME)
        .map_err(|e| e.to_string())?;
    // QUIC backs off its handshake retransmissions exponentially: a dial
    // begun during a partition would reach the healed network only after
    // its next, ever later retransmission. A fresh dial starts fresh.
    let connection = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
        .await
        .map_err(|_| format!("no handshake within {HANDSHAKE_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    match authenticated_peer(&connection) {
        Some(peer) if peer == expected => Ok(connection),
        Some(peer) => {
            connection.close(close::PROTOCOL.into(), b"unexpected node");
            Err(format!("{addr} is node {peer}, not the configured peer"))
        }
        None => Err("peer presented no usable certificate".into()),
    }
}

/// The node id the TLS handshake proved, from the peer's certificate.
fn authenticated_peer(connection: &quinn::Connection) -> Option<NodeId> {
    let identity = connection.peer_identity()?;
    let certificates = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    tls::node_id_of(certificates.first()?)
}

/// Runs one authenticated connection until it closes: Hello both ways,
/// then a writer task and the reader loop.
async fn run_connection(
    shared: Arc<Shared>,
    connection: quinn::Connection,
    peer: NodeId,
    dialed_by: NodeId,
) {
    let link_id = shared.next_link.fetch_add(1, Ordering::Relaxed);
    let greeted = tokio::time::timeout(HELLO_TIMEOUT, hello(&shared, &connection, peer))
        .await
        .unwrap_or_else(|_| Err("hello timed out".into()));
    let (send, recv, decoder, session) = match greeted {
        Ok(streams) => streams,
        Err(reason) => {
            tracing::info!(peer = %peer.short(), %reason, "connection refused");
            connection.close(close::PROTOCOL.into(), reason.as_bytes());
            return;
        }
    };
    let (frames, queue) = mpsc::channel(LINK_QUEUE_FRAMES);
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    tokio::spawn(write_frames(send, queue, queued_bytes.clone()).in_current_span());
    let link = Link {
        id: link_id,
        dialed_by,
        session,
        frames,
        queued_bytes,
        connection: connection.clone(),
    };
    if shared
        .events
        .send(NetEvent::Up { peer, link })
        .await
        .is_err()
    {
        return;
    }
    let reason = read_frames(&shared, recv, decoder, peer, link_id).await;
    connection.close(close::PROTOCOL.into(), reason.as_bytes());
    let _ = shared
        .events
        .send(NetEvent::Down {
            peer,
            link: link_id,
            reason,
        })
        .await;
}

/// The streams of a greeted connection, the decoder (which may already
/// hold the frames the peer sent right after its Hello) and the peer's
/// session.
type Greeted = (quinn::SendStream, quinn::RecvStream, FrameDecoder, u64);

/// Opens our stream and sends Hello; accepts theirs and checks their Hello.
async fn hello(
    shared: &Shared,
    connection: &quinn::Connection,
    peer: NodeId,
) -> Result<Greeted, String> {
    let mut send = connection.open_uni().await.map_err(|e| e.to_string())?;
    let frame = encode_frame(&Message::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        node_id: shared.me,
        session: shared.session,
    }))
    .map_err(|e| e.to_string())?;
    send.write_all(&frame).await.map_err(|e| e.to_string())?;
    let mut recv = connection.accept_uni().await.map_err(|e| e.to_string())?;
    let mut decoder = FrameDecoder::new();
    loop {
        if let Some(message) = decoder.next_message().map_err(|e| e.to_string())? {
            return match message {
                Message::Hello(hello) if hello.protocol_version != PROTOCOL_VERSION => {
                    Err(format!(
                        "peer speaks protocol {}, this node {PROTOCOL_VERSION}",
                        hello.protocol_version
                    ))
                }
                Message::Hello(hello) if hello.node_id != peer => {
                    Err("hello names another node than the certificate".into())
                }
                Message::Hello(hello) => Ok((send, recv, decoder, hello.session)),
                other => Err(format!("expected hello, got {}", other.kind())),
            };
        }
        let mut buffer = vec![0; 4096];
        match recv.read(&mut buffer).await.map_err(|e| e.to_string())? {
            Some(read) => decoder.push(&buffer[..read]).map_err(|e| e.to_string())?,
            None => return Err("stream ended before hello".into()),
        }
    }
}

async fn write_frames(
    mut send: quinn::SendStream,
    mut queue: mpsc::Receiver<Vec<u8>>,
    queued_bytes: Arc<AtomicUsize>,
) {
    while let Some(frame) = queue.recv().await {
        let written = send.write_all(&frame).await;
        queued_bytes.fetch_sub(frame.len(), Ordering::AcqRel);
        if written.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

/// Reads frames until the stream ends or breaks; returns why it stopped.
async fn read_frames(
    shared: &Shared,
    mut recv: quinn::RecvStream,
    mut decoder: FrameDecoder,
    peer: NodeId,
    link: u64,
) -> String {
    let mut buffer = vec![0; READ_CHUNK];
    loop {
        loop {
            let before = decoder.buffered();
            match decoder.next_message() {
                Ok(Some(message)) => {
                    let bytes = before - decoder.buffered();
                    let event = NetEvent::Message {
                        peer,
                        link,
                        message,
                        bytes,
                    };
                    if shared.events.send(event).await.is_err() {
                        return "node shutting down".into();
                    }
                }
                Ok(None) => break,
                Err(error) => return protocol_violation(peer, &error),
            }
        }
        match recv.read(&mut buffer).await {
            Ok(Some(read)) => {
                if let Err(error) = decoder.push(&buffer[..read]) {
                    return protocol_violation(peer, &error);
                }
            }
            Ok(None) => return "peer closed its stream".into(),
            // Say why (timed out, reset, closed by the peer), not only that.
            Err(quinn::ReadError::ConnectionLost(error)) => {
                return format!("connection lost: {error}")
            }
            Err(error) => return error.to_string(),
        }
    }
}

fn protocol_violation(peer: NodeId, error: &WireError) -> String {
    tracing::warn!(peer = %peer.short(), %error, "peer sent a bad frame; closing the connection");
    format!("bad frame: {error}")
}
