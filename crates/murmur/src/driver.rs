//! The driver: one tokio task that owns a [`Replica`] and carries out what
//! it asks for with a real clock.
//!
//! Applications never touch the replica: they send [`Command`]s through a
//! bounded channel (a [`DriverHandle`]) and get answers on oneshot
//! channels. The task feeds commands and timer expiries to the replica and,
//! after every input, drains its outputs: acknowledgements go back to the
//! callers waiting for them, document changes to subscribers.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use automerge::transaction::Transaction;
use automerge::{Automerge, ChangeHash};
use murmur_core::{
    AckLevel, DocumentId, Event, Load, Loaded, NodeId, Origin, Replica, ReplicaError, Residency,
    Time, Transmit, WriteId,
};
use murmur_store::StoreError;
use murmur_wire::encode_frame;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use murmur_net::transport::{Link, NetEvent, Network, SendOutcome};

pub use crate::change::{
    ChangeFailed, ChangeOutcome, ChangeReceipt, ChangeRequest, DocumentChange, NotReplicated,
    ReadRequest, REPLICATION_TIMEOUT,
};
use crate::change::{TypedChange, TypedRead};
pub use crate::status::{PeerInfo, Status, Traffic};

/// Most commands waiting in the channel; senders wait past it.
pub const COMMAND_QUEUE: usize = 1024;
/// Most commands handled before the driver looks at its timers again.
const COMMAND_BATCH: usize = 256;
/// Most Automerge operations the changes of one turn may hold: past it the
/// driver looks at its timers, peers and flushes before it takes the next
/// command, so a run of big changes delays everything else by a bounded
/// amount (each change holds at most `Config::max_change_ops`).
pub const TURN_OPS_BUDGET: usize = 20_000;
/// Most commands waiting for their documents to load; past it the driver
/// takes no new command until a load lands (the senders wait).
pub const MAX_PARKED_COMMANDS: usize = 1024;
/// Changes a subscriber may fall behind before it misses some (and is told
/// so by the broadcast channel).
pub const SUBSCRIBER_BACKLOG: usize = 1024;
/// How often, at most, the driver publishes its status for readers that
/// must not wait for it ([`DriverHandle::last_status`]).
pub const STATUS_PUBLISH_INTERVAL: Duration = Duration::from_millis(50);

/// What applications ask of the driver.
pub enum Command {
    /// Create a document.
    CreateDocument {
        /// The id to give it (restoring a backup); `None`: a new one.
        id: Option<DocumentId>,
        /// Gets the new id, or why not (a nearly full disk).
        reply: oneshot::Sender<Result<DocumentId, ReplicaError>>,
    },
    /// Change a document and answer once the change reaches `ack`.
    Change {
        /// The document.
        doc: DocumentId,
        /// The acknowledgement level to wait for.
        ack: AckLevel,
        /// The change, which answers its caller itself.
        request: Box<dyn ChangeRequest>,
    },
    /// Read a document.
    Read {
        /// The document.
        doc: DocumentId,
        /// The read, which answers its caller itself.
        request: Box<dyn ReadRequest>,
    },
    /// Subscribe to a document's changes.
    Subscribe {
        /// The document.
        doc: DocumentId,
        /// Gets the receiver.
        reply: oneshot::Sender<Result<broadcast::Receiver<DocumentChange>, ReplicaError>>,
    },
    /// Go on with a client's sync conversation about a document (see
    /// [`DocHandle::sync_client`](crate::DocHandle::sync_client)).
    ClientSync {
        /// The document.
        doc: DocumentId,
        /// The client's sync state, handed back with the answer.
        state: Box<murmur_core::ClientState>,
        /// What the client sent since its last step, in order.
        messages: Vec<automerge::sync::Message>,
        /// Whether to produce the message to send the client.
        answer: bool,
        /// Gets the state and the message to send the client, if any.
        reply: oneshot::Sender<Result<ClientSyncReply, ReplicaError>>,
    },
    /// Watch a document's heads move (see
    /// [`DocHandle::watch`](crate::DocHandle::watch)).
    Watch {
        /// The document.
        doc: DocumentId,
        /// Gets a receiver that changes whenever the document does.
        reply: oneshot::Sender<Result<watch::Receiver<u64>, ReplicaError>>,
    },
    /// List the documents held.
    ListDocuments {
        /// Gets the ids, in order.
        reply: oneshot::Sender<Vec<DocumentId>>,
    },
    /// Report the node's state.
    Status {
        /// Gets the status.
        reply: oneshot::Sender<Status>,
    },
    /// Allow a peer and keep a connection to it.
    AddPeer {
        /// Its id.
        peer: NodeId,
        /// Its address.
        addr: std::net::SocketAddr,
        /// Answered with whether the node is networked.
        reply: oneshot::Sender<bool>,
    },
    /// Stop allowing a peer and close any connection to it.
    RemovePeer {
        /// Its id.
        peer: NodeId,
        /// Answered with whether the node is networked.
        reply: oneshot::Sender<bool>,
    },
    /// Flush and stop.
    Shutdown {
        /// Answered once the node stopped: `Ok` if everything was flushed
        /// and the store marked clean, otherwise why not.
        reply: oneshot::Sender<Result<(), ReplicaError>>,
    },
}

/// A client's sync step waiting for the others of its turn.
struct PendingClientStep {
    doc: DocumentId,
    state: Box<murmur_core::ClientState>,
    messages: Vec<automerge::sync::Message>,
    answer: bool,
    reply: oneshot::Sender<Result<ClientSyncReply, ReplicaError>>,
}

/// What a client's sync step answers (see
/// [`DocHandle::sync_client`](crate::DocHandle::sync_client)).
#[derive(Debug)]
pub struct ClientSyncReply {
    /// The client's sync state, to pass to its next step.
    pub state: Box<murmur_core::ClientState>,
    /// The encoded sync message to send the client, if any.
    pub message: Option<Vec<u8>>,
    /// The document's heads after the step.
    pub heads: Vec<ChangeHash>,
}

/// Sends commands to a running driver; cheap to clone.
#[derive(Clone)]
pub struct DriverHandle {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<Status>,
    feed: crate::feed::FeedSource,
}

/// The driver is gone (shut down, or its task ended).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the node has shut down")]
pub struct DriverClosed;

impl DriverHandle {
    /// The status the driver published last (at most
    /// [`STATUS_PUBLISH_INTERVAL`] older than its last turn). Never waits
    /// for the driver: it answers even while the engine is busy.
    pub fn last_status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// The change feed from `cursor` on (see [`crate::feed`]).
    pub fn feed(&self, cursor: crate::feed::Cursor) -> crate::feed::FeedStream {
        self.feed.stream(cursor)
    }

    /// Sends `command`, waiting for room in the queue.
    pub async fn send(&self, command: Command) -> Result<(), DriverClosed> {
        self.commands.send(command).await.map_err(|_| DriverClosed)
    }

    /// Sends a command built around a fresh reply channel and waits for the
    /// answer.
    pub async fn request<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, DriverClosed> {
        let (reply, answer) = oneshot::channel();
        self.send(command(reply)).await?;
        answer.await.map_err(|_| DriverClosed)
    }

    /// Changes `doc` in one transaction with `change` and answers once the
    /// change reaches `ack`. If `change` fails with its own error `E`,
    /// nothing changes and the answer is `Ok(Err(error))`.
    pub async fn change<R, E, F>(
        &self,
        doc: DocumentId,
        ack: AckLevel,
        change: F,
    ) -> Result<ChangeOutcome<R, E>, DriverClosed>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
    {
        self.change_described(doc, ack, None, change).await
    }

    /// [`DriverHandle::change`], the change carrying `message`.
    pub async fn change_described<R, E, F>(
        &self,
        doc: DocumentId,
        ack: AckLevel,
        message: Option<String>,
        change: F,
    ) -> Result<ChangeOutcome<R, E>, DriverClosed>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
    {
        self.request(|reply| Command::Change {
            doc,
            ack,
            request: Box::new(TypedChange {
                change: Some(change),
                message,
                output: None,
                reply,
            }),
        })
        .await
    }

    /// Reads `doc` with `read`.
    pub async fn read<R, F>(
        &self,
        doc: DocumentId,
        read: F,
    ) -> Result<Result<R, ReplicaError>, DriverClosed>
    where
        F: FnOnce(&Automerge) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.request(|reply| Command::Read {
            doc,
            request: Box::new(TypedRead { read, reply }),
        })
        .await
    }
}

/// What the driver takes from the world around it: a clock, and where its
/// blocking work runs.
#[derive(Debug, Clone, Copy)]
pub struct Environment {
    /// Engine time now: [`wall_clock`], or a simulation's clock.
    pub clock: fn() -> Time,
    /// Runs storage work (flushes, document loads, the final close) as
    /// tasks on the driver's own runtime instead of on blocking threads.
    /// A simulation wants this: its storage is in memory and quick, and
    /// work on other threads would finish at moments no seed decides.
    pub inline_effects: bool,
}

impl Default for Environment {
    /// The wall clock, and blocking threads for storage work.
    fn default() -> Self {
        Environment {
            clock: wall_clock,
            inline_effects: false,
        }
    }
}

impl Environment {
    /// Engine time now.
    pub(crate) fn now(&self) -> Time {
        (self.clock)()
    }

    /// Runs `work` on a blocking thread, or as a task of this runtime with
    /// inline effects.
    fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        if self.inline_effects {
            tokio::spawn(async move { work() })
        } else {
            tokio::task::spawn_blocking(work)
        }
    }

    /// [`Environment::run`], into `set`.
    fn run_in<T: Send + 'static>(
        &self,
        set: &mut JoinSet<T>,
        work: impl FnOnce() -> T + Send + 'static,
    ) {
        if self.inline_effects {
            set.spawn(async move { work() });
        } else {
            set.spawn_blocking(work);
        }
    }
}

/// What woke the driver.
enum Wake {
    Command(Option<Command>),
    Timer,
    Net(Option<NetEvent>),
    Flushed(Result<(), StoreError>),
    /// Boxed: a loaded document's state is large.
    Loaded(Box<Result<Loaded, tokio::task::JoinError>>),
    Probed(std::io::Result<u64>),
}

/// How many sources [`Driver::next_wake`] waits on.
const WAKE_SOURCES: usize = 6;

/// The wall clock as engine time.
pub fn wall_clock() -> Time {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        });
    Time::from_millis(millis)
}

struct PendingWrite {
    wanted: AckLevel,
    reached: AckLevel,
    change: Option<ChangeHash>,
    request: Box<dyn ChangeRequest>,
}

struct Subscription {
    sender: broadcast::Sender<DocumentChange>,
    /// The heads the last notification ended at.
    heads: Vec<ChangeHash>,
}

struct Driver {
    replica: Replica,
    commands: mpsc::Receiver<Command>,
    network: Option<Network>,
    net_events: Option<mpsc::Receiver<NetEvent>>,
    links: BTreeMap<NodeId, Link>,
    traffic: Traffic,
    pending: BTreeMap<WriteId, PendingWrite>,
    /// When waits for `Replicated(k)` give up, soonest first.
    replication_deadlines: std::collections::BTreeSet<(tokio::time::Instant, WriteId)>,
    subscriptions: BTreeMap<DocumentId, Subscription>,
    /// Documents watched ([`Command::Watch`]): each counts its changes.
    watchers: BTreeMap<DocumentId, watch::Sender<u64>>,
    shutdown: Option<oneshot::Sender<Result<(), ReplicaError>>>,
    /// Where the number after the newest durable feed entry is published.
    feed_end: watch::Sender<u64>,
    /// Where the status is published, and when it last was.
    published: watch::Sender<Status>,
    published_at: tokio::time::Instant,
    /// The group commit running on a blocking thread, if any.
    flushing: Option<JoinHandle<Result<(), StoreError>>>,
    /// Document loads running on blocking threads.
    loads: JoinSet<Loaded>,
    /// Commands waiting for their document to load, in arrival order.
    parked: BTreeMap<DocumentId, Vec<Command>>,
    /// Commands in `parked`.
    parked_commands: usize,
    /// Client sync steps of this turn, run together per document
    /// ([`Driver::run_client_steps`]) before any other command and at the
    /// end of the turn.
    client_steps: Vec<PendingClientStep>,
    /// Automerge operations applied by local changes in this turn.
    turn_ops: usize,
    /// Where the store's disk is, to watch its free space.
    disk: Option<std::path::PathBuf>,
    /// A free-space measurement running on a blocking thread, and when the
    /// last one started.
    disk_probe: Option<JoinHandle<std::io::Result<u64>>>,
    disk_probed_at: Option<tokio::time::Instant>,
    /// The clock, and where blocking work runs.
    env: Environment,
    /// Counts the driver's turns; which wake source it polls first.
    turn: usize,
}

/// Starts the driver task for `replica`, on `network` if given; it runs
/// until a shutdown command or until every handle is dropped.
///
/// With `disk` (a path on the disk holding the store), the driver measures
/// its free space every [`DISK_PROBE_INTERVAL`] and tells the replica
/// ([`Replica::handle_disk_space`]), which refuses new writes below its
/// watermark.
pub fn spawn(
    replica: Replica,
    network: Option<(Network, mpsc::Receiver<NetEvent>)>,
    disk: Option<std::path::PathBuf>,
    env: Environment,
) -> (DriverHandle, JoinHandle<()>) {
    let (sender, commands) = mpsc::channel(COMMAND_QUEUE);
    let (network, net_events) = match network {
        Some((network, events)) => (Some(network), Some(events)),
        None => (None, None),
    };
    let (published, status) = watch::channel(Status::starting(replica.node_id()));
    let (feed_end, feed_end_rx) = watch::channel(replica.feed_end());
    let feed = crate::feed::FeedSource {
        reader: replica.feed_reader(),
        end: feed_end_rx,
        inline: env.inline_effects,
    };
    let mut driver = Driver {
        replica,
        commands,
        network,
        net_events,
        links: BTreeMap::new(),
        traffic: Traffic::default(),
        pending: BTreeMap::new(),
        replication_deadlines: std::collections::BTreeSet::new(),
        subscriptions: BTreeMap::new(),
        shutdown: None,
        feed_end,
        published,
        published_at: tokio::time::Instant::now(),
        flushing: None,
        loads: JoinSet::new(),
        parked: BTreeMap::new(),
        parked_commands: 0,
        client_steps: Vec::new(),
        watchers: BTreeMap::new(),
        turn_ops: 0,
        disk,
        disk_probe: None,
        disk_probed_at: None,
        env,
        turn: 0,
    };
    driver.publish_status();
    let node = driver.replica.node_id().short();
    let task = tokio::spawn(tracing::Instrument::instrument(
        driver.run(),
        tracing::info_span!("node", node = %node),
    ));
    (
        DriverHandle {
            commands: sender,
            status,
            feed,
        },
        task,
    )
}

impl Driver {
    async fn run(mut self) {
        loop {
            let now = self.env.now();
            let mut wait = self.replica.poll_timeout().since(now);
            if let Some((deadline, _)) = self.replication_deadlines.first() {
                wait = wait.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            }
            if self.disk.is_some() {
                wait = wait.min(DISK_PROBE_INTERVAL);
            }
            match self.next_wake(wait).await {
                Wake::Command(Some(command)) => self.handle_commands(command),
                Wake::Command(None) => break,
                Wake::Timer => {}
                Wake::Net(Some(event)) => self.handle_net_events(event),
                Wake::Net(None) => self.net_events = None,
                Wake::Flushed(result) => {
                    self.flushing = None;
                    self.replica.handle_flush_complete(self.env.now(), result);
                    let end = self.replica.feed_end();
                    self.feed_end
                        .send_if_modified(|published| std::mem::replace(published, end) != end);
                }
                Wake::Loaded(joined) => self.load_done(*joined),
                Wake::Probed(measured) => {
                    self.disk_probe = None;
                    match measured {
                        Ok(free) => self.replica.handle_disk_space(self.env.now(), free),
                        Err(error) => tracing::warn!(%error, "cannot measure the free disk space"),
                    }
                }
            }
            // What the inputs produced (`Applied` acknowledgements, eager
            // pushes, replies) goes out before any flush runs: none of it
            // waits for an fsync. Only `Durable` and stronger do.
            self.drain();
            let now = self.env.now();
            // Commands arriving without pause must not starve the timers
            // (the group-commit flush among them).
            if self.replica.poll_timeout() <= now {
                self.replica.handle_timeout(now);
            }
            self.expire_replication_waits();
            self.drain();
            self.start_flush();
            self.start_loads();
            self.probe_disk();
            if self.published_at.elapsed() >= STATUS_PUBLISH_INTERVAL {
                self.publish_status();
            }
            if self.shutdown.is_some() {
                break;
            }
        }
        self.stop().await;
    }

    /// Waits for the next input: a command (while fewer than
    /// [`MAX_PARKED_COMMANDS`] wait for loads), the timer (`wait`), a
    /// network event, or a flush, load or disk probe finishing. Each turn
    /// polls the sources from the next one round, so none starves another,
    /// in an order that only the turn decides (`tokio::select!` picks at
    /// random): a simulation's seed replays exactly.
    async fn next_wake(&mut self, wait: Duration) -> Wake {
        let room = self.parked_commands < MAX_PARKED_COMMANDS;
        let mut timer = std::pin::pin!(tokio::time::sleep(wait));
        self.turn = self.turn.wrapping_add(1);
        let first = self.turn % WAKE_SOURCES;
        std::future::poll_fn(|cx| {
            (0..WAKE_SOURCES)
                .map(|offset| (first + offset) % WAKE_SOURCES)
                .find_map(
                    |source| match self.poll_source(source, room, timer.as_mut(), cx) {
                        Poll::Ready(wake) => Some(wake),
                        Poll::Pending => None,
                    },
                )
                .map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }

    /// Polls wake source `source` of [`Driver::next_wake`].
    fn poll_source(
        &mut self,
        source: usize,
        room: bool,
        timer: Pin<&mut tokio::time::Sleep>,
        cx: &mut Context<'_>,
    ) -> Poll<Wake> {
        match source {
            0 if room => self.commands.poll_recv(cx).map(Wake::Command),
            1 => timer.poll(cx).map(|()| Wake::Timer),
            2 if self.net_events.is_some() => std::pin::pin!(next_net_event(&mut self.net_events))
                .poll(cx)
                .map(Wake::Net),
            3 => std::pin::pin!(flush_done(&mut self.flushing))
                .poll(cx)
                .map(Wake::Flushed),
            4 if !self.loads.is_empty() => match self.loads.poll_join_next(cx) {
                Poll::Ready(Some(joined)) => Poll::Ready(Wake::Loaded(Box::new(joined))),
                _ => Poll::Pending,
            },
            5 => std::pin::pin!(task_done(&mut self.disk_probe))
                .poll(cx)
                .map(Wake::Probed),
            _ => Poll::Pending,
        }
    }

    /// Hands the group commit that is due, if any, to a blocking thread:
    /// the engine goes on while it is written, and what arrives meanwhile
    /// gathers for the next one.
    fn start_flush(&mut self) {
        if self.flushing.is_some() {
            return;
        }
        if let Some(flush) = self.replica.poll_flush() {
            self.flushing = Some(self.env.run(move || flush.write()));
        }
    }

    /// Hands the document loads the engine asks for to blocking threads:
    /// a large document decodes there for as long as it takes, while the
    /// engine answers everything else.
    fn start_loads(&mut self) {
        while let Some(load) = self.replica.poll_load() {
            self.env.run_in(&mut self.loads, move || run_load(load));
        }
    }

    /// A document load landed: the engine takes it, then the commands that
    /// waited for it run, in the order they came.
    fn load_done(&mut self, joined: Result<Loaded, tokio::task::JoinError>) {
        let loaded = match joined {
            Ok(loaded) => loaded,
            // Only a runtime shutting down cancels one.
            Err(error) => {
                tracing::warn!(%error, "a document load did not finish");
                return;
            }
        };
        let doc = loaded.doc();
        let result = self.replica.handle_document_loaded(self.env.now(), loaded);
        let waiting = self.parked.remove(&doc).unwrap_or_default();
        self.parked_commands -= waiting.len();
        for command in waiting {
            match &result {
                Ok(()) => self.handle(command),
                Err(error) => command.fail(ReplicaError::Storage(StoreError::Backend(
                    error.to_string(),
                ))),
            }
        }
        self.run_client_steps();
        self.drain();
    }

    /// Starts a free-space measurement of the store's disk on a blocking
    /// thread, if one is due.
    fn probe_disk(&mut self) {
        let Some(path) = &self.disk else {
            return;
        };
        let due = self
            .disk_probed_at
            .is_none_or(|at| at.elapsed() >= DISK_PROBE_INTERVAL);
        if self.disk_probe.is_some() || !due {
            return;
        }
        self.disk_probed_at = Some(tokio::time::Instant::now());
        let path = path.clone();
        self.disk_probe = Some(self.env.run(move || free_bytes(&path)));
    }

    /// Handles `first` and whatever other network events are already
    /// queued, up to a bound. The messages among them go to the engine
    /// together ([`Replica::handle_messages`]): a node behind on pushes
    /// applies what queued up in one batch per document and catches up.
    fn handle_net_events(&mut self, first: NetEvent) {
        let mut messages = Vec::new();
        let mut next = Some(first);
        for _ in 0..COMMAND_BATCH {
            let Some(event) = next.take() else {
                break;
            };
            match event {
                NetEvent::Message {
                    peer,
                    link,
                    message,
                    bytes,
                } => {
                    // Not from a connection already replaced.
                    if self.is_current(peer, link) {
                        self.traffic.messages_in += 1;
                        self.traffic.bytes_in += bytes as u64;
                        messages.push((peer, message));
                    }
                }
                other => {
                    // A connection coming or going sees the messages
                    // before it handled.
                    self.handle_messages(std::mem::take(&mut messages));
                    self.handle_link_event(other);
                }
            }
            next = self
                .net_events
                .as_mut()
                .and_then(|events| events.try_recv().ok());
        }
        self.handle_messages(messages);
    }

    fn handle_messages(&mut self, messages: Vec<(NodeId, murmur_core::Message)>) {
        if messages.is_empty() {
            return;
        }
        for (peer, error) in self.replica.handle_messages(self.env.now(), messages) {
            self.traffic.rejected += 1;
            tracing::warn!(peer = %peer.short(), %error, "rejected a message from a peer");
        }
    }

    fn handle_link_event(&mut self, event: NetEvent) {
        let now = self.env.now();
        match event {
            NetEvent::Up { peer, link } => self.link_up(now, peer, link),
            NetEvent::Down { peer, link, reason } => {
                if self.is_current(peer, link) {
                    self.links.remove(&peer);
                    self.replica.handle_peer_down(now, peer);
                    self.publish_connected();
                    tracing::info!(peer = %peer.short(), %reason, "peer disconnected");
                } else {
                    // A connection already replaced by a newer one: nothing
                    // changes, but an operator chasing a flaky link wants
                    // to see why the old one ended.
                    tracing::info!(peer = %peer.short(), %reason, "replaced connection closed");
                }
            }
            NetEvent::Message { .. } => {}
        }
    }

    /// True if `link` is the connection in use for `peer`.
    fn is_current(&self, peer: NodeId, link: u64) -> bool {
        self.links.get(&peer).is_some_and(|l| l.id == link)
    }

    /// A new connection to `peer`. A connection from a new session of the
    /// peer (it restarted, perhaps after a crash that left its old
    /// connection open here) replaces the old one at once. Two connections
    /// of one session (both sides dialed at once) resolve the same way on
    /// both ends: the one dialed by the smaller node id stays.
    fn link_up(&mut self, now: Time, peer: NodeId, link: Link) {
        let me = self.replica.node_id();
        let preferred = |l: &Link| l.dialed_by == me.min(peer);
        if let Some(existing) = self.links.get(&peer) {
            let same_session = existing.session == link.session;
            if same_session && preferred(existing) && !preferred(&link) {
                link.close_duplicate();
                return;
            }
            if !same_session {
                tracing::info!(peer = %peer.short(), "peer restarted; its new connection replaces the old one");
            }
            existing.close_duplicate();
            self.replica.handle_peer_down(now, peer);
        }
        tracing::info!(peer = %peer.short(), addr = %link.remote_address(), "peer connected");
        self.links.insert(peer, link);
        self.replica.handle_peer_up(now, peer);
        self.publish_connected();
    }

    fn publish_connected(&self) {
        if let Some(network) = &self.network {
            network.set_connected(self.links.keys().copied().collect());
        }
    }

    /// Sends `transmit`. `last` holds the previous message sent and its
    /// frame: the same message for the next peer (a push goes to every
    /// peer) is encoded once.
    fn transmit(&mut self, transmit: Transmit, last: &mut Option<(murmur_core::Message, Vec<u8>)>) {
        let Some(link) = self.links.get(&transmit.to) else {
            return;
        };
        let frame = match last.as_ref() {
            Some((message, frame)) if *message == transmit.message => frame.clone(),
            _ => match encode_frame(&transmit.message) {
                Ok(frame) => {
                    *last = Some((transmit.message, frame.clone()));
                    frame
                }
                Err(error) => {
                    tracing::error!(peer = %transmit.to.short(), kind = transmit.message.kind(), %error, "message does not fit a frame; dropped");
                    return;
                }
            },
        };
        let bytes = frame.len() as u64;
        match link.send(frame) {
            SendOutcome::Queued => {
                self.traffic.messages_out += 1;
                self.traffic.bytes_out += bytes;
            }
            SendOutcome::Full => {
                self.traffic.dropped_full += 1;
                tracing::debug!(peer = %transmit.to.short(), "connection queue full; message dropped, anti-entropy will repair");
            }
            SendOutcome::Closed => {}
        }
    }

    /// Handles `first` and whatever else is already queued, up to a bound,
    /// so that concurrent writers share one flush.
    fn handle_commands(&mut self, first: Command) {
        self.turn_ops = 0;
        self.handle(first);
        for _ in 1..COMMAND_BATCH {
            if self.turn_ops >= TURN_OPS_BUDGET {
                break;
            }
            match self.commands.try_recv() {
                Ok(command) => self.handle(command),
                Err(_) => break,
            }
        }
        self.run_client_steps();
    }

    /// Runs the client sync steps gathered in this turn, those of one
    /// document together ([`Replica::handle_client_steps`]: their changes
    /// are applied and checked as one batch), and answers each.
    fn run_client_steps(&mut self) {
        if self.client_steps.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.client_steps);
        let now = self.env.now();
        while let Some(doc) = pending.first().map(|step| step.doc) {
            let (mut group, rest): (Vec<_>, Vec<_>) =
                pending.into_iter().partition(|step| step.doc == doc);
            pending = rest;
            let steps = group
                .iter_mut()
                .map(|step| murmur_core::ClientStep {
                    state: &mut step.state,
                    messages: std::mem::take(&mut step.messages),
                    answer: step.answer,
                })
                .collect();
            let results = self.replica.handle_client_steps(now, doc, steps);
            for (step, result) in group.into_iter().zip(results) {
                let outcome = result.map(|sync| {
                    if let Some(write) = &sync.write {
                        self.turn_ops += write.ops;
                    }
                    ClientSyncReply {
                        state: step.state,
                        message: sync.reply,
                        heads: sync.heads,
                    }
                });
                let _ = step.reply.send(outcome);
            }
        }
    }

    fn handle(&mut self, command: Command) {
        if !matches!(command, Command::ClientSync { .. }) {
            // Commands take effect in the order they came.
            self.run_client_steps();
        }
        let now = self.env.now();
        // A command about a document out of memory waits for its load.
        if let Some(doc) = command.document() {
            match self.replica.request_load(doc) {
                Ok(Residency::Resident) => {}
                Ok(Residency::Loading) => {
                    self.parked.entry(doc).or_default().push(command);
                    self.parked_commands += 1;
                    return;
                }
                Err(error) => return command.fail(error),
            }
        }
        match command {
            Command::CreateDocument { id, reply } => {
                let created = self.replica.check_writable().and_then(|()| match id {
                    Some(id) => self.replica.create_document_with_id(now, id).map(|()| id),
                    None => Ok(self.replica.create_document(now)),
                });
                let _ = reply.send(created);
            }
            Command::Change { doc, ack, request } => self.change(now, doc, request, ack),
            Command::Read { doc, request } => request.run(self.replica.cached_document(doc)),
            Command::Subscribe { doc, reply } => {
                let _ = reply.send(self.subscribe(doc));
            }
            Command::ClientSync {
                doc,
                state,
                messages,
                answer,
                reply,
            } => self.client_steps.push(PendingClientStep {
                doc,
                state,
                messages,
                answer,
                reply,
            }),
            Command::Watch { doc, reply } => {
                let receiver = self
                    .watchers
                    .entry(doc)
                    .or_insert_with(|| watch::channel(0).0)
                    .subscribe();
                let _ = reply.send(Ok(receiver));
            }
            Command::ListDocuments { reply } => {
                // Every document held, not only those in memory (O(N)).
                let ids = self.replica.document_ids().unwrap_or_else(|error| {
                    tracing::warn!(%error, "cannot list documents");
                    Vec::new()
                });
                let _ = reply.send(ids);
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::AddPeer { peer, addr, reply } => {
                if let Some(network) = &self.network {
                    network.add_peer(peer, addr);
                }
                let _ = reply.send(self.network.is_some());
            }
            Command::RemovePeer { peer, reply } => {
                if let Some(network) = &self.network {
                    network.remove_peer(&peer);
                }
                if let Some(link) = self.links.remove(&peer) {
                    link.close_removed();
                    self.replica.handle_peer_down(now, peer);
                    self.publish_connected();
                }
                let _ = reply.send(self.network.is_some());
            }
            Command::Shutdown { reply } => self.shutdown = Some(reply),
        }
    }

    fn change(
        &mut self,
        now: Time,
        doc: DocumentId,
        mut request: Box<dyn ChangeRequest>,
        wanted: AckLevel,
    ) {
        if request.deletes() {
            match self.replica.delete_document(now, doc) {
                Ok(write) => {
                    // A deletion is acknowledged once durable here.
                    let pending = PendingWrite {
                        wanted: wanted.min(AckLevel::Durable),
                        reached: AckLevel::Applied,
                        change: None,
                        request,
                    };
                    self.pending.insert(write, pending);
                }
                Err(error) => request.finish(Err(error.into())),
            }
            return;
        }
        let message = request.message();
        let made = match request.merge() {
            Some(changes) => self.replica.handle_local_merge(now, doc, changes),
            None => self
                .replica
                .handle_local_change_described(now, doc, message, |tx| request.run(tx)),
        };
        let write = match made {
            Ok(write) => {
                self.turn_ops += write.ops;
                write
            }
            Err(error) => return request.finish(Err(error.into())),
        };
        if write.change.is_none() {
            // Nothing changed: there is nothing to wait for at any level.
            return request.finish(Ok(None));
        }
        if matches!(wanted, AckLevel::Replicated(_)) {
            let deadline = tokio::time::Instant::now() + REPLICATION_TIMEOUT;
            self.replication_deadlines.insert((deadline, write.write));
        }
        self.pending.insert(
            write.write,
            PendingWrite {
                wanted,
                reached: AckLevel::Applied,
                change: write.change,
                request,
            },
        );
    }

    fn subscribe(
        &mut self,
        doc: DocumentId,
    ) -> Result<broadcast::Receiver<DocumentChange>, ReplicaError> {
        let heads = self.replica.heads(doc)?;
        self.replica.observe(doc, true);
        let subscription = self
            .subscriptions
            .entry(doc)
            .or_insert_with(|| Subscription {
                sender: broadcast::channel(SUBSCRIBER_BACKLOG).0,
                heads,
            });
        Ok(subscription.sender.subscribe())
    }

    /// Publishes the status for readers that must not wait for a turn.
    fn publish_status(&mut self) {
        self.published.send_replace(self.status());
        self.published_at = tokio::time::Instant::now();
    }

    fn status(&self) -> Status {
        Status {
            node_id: self.replica.node_id(),
            listen: self.network.as_ref().and_then(Network::local_addr),
            documents: self.replica.metrics().documents_held,
            feed_end: self.replica.feed_end(),
            peers: self
                .links
                .iter()
                .map(|(id, link)| PeerInfo {
                    id: *id,
                    addr: link.remote_address(),
                    rtt: link.rtt(),
                })
                .collect(),
            allowed: self
                .network
                .as_ref()
                .map(|n| n.allowed().to_vec())
                .unwrap_or_default(),
            members: self.replica.members(),
            traffic: Traffic {
                handshakes_refused: self.network.as_ref().map_or(0, |n| n.allowed().refused()),
                ..self.traffic
            },
            writes_awaiting_flush: self.replica.writes_awaiting_flush(),
            outbox: self.replica.outbox_len(),
            metrics: self.replica.metrics().clone(),
        }
    }

    /// Carries out the replica's outputs.
    fn drain(&mut self) {
        let mut last = None;
        while let Some(transmit) = self.replica.poll_transmit() {
            self.transmit(transmit, &mut last);
        }
        while let Some(event) = self.replica.poll_event() {
            match event {
                Event::Acknowledged { write, level, .. } => self.acknowledge(write, level),
                Event::DocumentChanged {
                    doc,
                    heads,
                    origin,
                    patches,
                } => {
                    self.wake_watchers(doc);
                    self.notify(doc, heads, origin, patches);
                }
                Event::DocumentDeleted { doc, .. } => {
                    // Its subscribers' streams end, and its watchers hear
                    // it closed.
                    self.subscriptions.remove(&doc);
                    self.watchers.remove(&doc);
                    self.replica.observe(doc, false);
                }
                Event::MemberUp { node, addr } => self.member_up(node, &addr),
                Event::MemberDown { node } => {
                    tracing::info!(peer = %node.short(), "membership declared the peer down");
                }
            }
        }
    }

    /// Membership found `node` at `addr`: keep a connection to it if it is
    /// allowed (membership spreads addresses, never permission).
    fn member_up(&mut self, node: NodeId, addr: &str) {
        let Some(network) = &self.network else {
            return;
        };
        match addr.parse::<std::net::SocketAddr>() {
            Ok(addr) => {
                if !network.dial_if_allowed(node, addr) {
                    tracing::debug!(peer = %node.short(), %addr, "member is not on the allow-list; not dialing");
                }
            }
            Err(_) => {
                tracing::warn!(peer = %node.short(), addr, "member advertises an address that does not parse")
            }
        }
    }

    fn acknowledge(&mut self, write: WriteId, level: AckLevel) {
        answer_if_reached(&mut self.pending, write, level);
    }

    /// Answers the `Replicated(k)` waits whose time is up with how far
    /// their change got.
    fn expire_replication_waits(&mut self) {
        let now = tokio::time::Instant::now();
        while let Some(&(deadline, write)) = self.replication_deadlines.first() {
            if deadline > now {
                return;
            }
            self.replication_deadlines.pop_first();
            if let Some(pending) = self.pending.remove(&write) {
                pending.request.finish(Err(NotReplicated {
                    wanted: pending.wanted,
                    reached: pending.reached,
                }
                .into()));
            }
        }
    }

    /// Tells `doc`'s subscribers what changed. The patches come with the
    /// event, from the changes just applied (the replica observes every
    /// subscribed document); only a change that raced the subscription
    /// falls back to a diff from the heads the subscribers last saw.
    /// Tells the watchers of `doc` that it changed.
    fn wake_watchers(&mut self, doc: DocumentId) {
        if let Some(watcher) = self.watchers.get(&doc) {
            if watcher.receiver_count() == 0 {
                self.watchers.remove(&doc);
            } else {
                watcher.send_modify(|changes| *changes += 1);
            }
        }
    }

    fn notify(
        &mut self,
        doc: DocumentId,
        heads: Vec<ChangeHash>,
        origin: Origin,
        patches: Option<Vec<automerge::Patch>>,
    ) {
        let Some(subscription) = self.subscriptions.get_mut(&doc) else {
            return;
        };
        if subscription.sender.receiver_count() == 0 {
            self.subscriptions.remove(&doc);
            self.replica.observe(doc, false);
            return;
        }
        let patches = match patches {
            Some(patches) => patches,
            None => match self.replica.cached_document(doc) {
                Ok(document) => document.diff(&subscription.heads, &heads),
                // The document may have been evicted since it changed.
                Err(_) => return,
            },
        };
        subscription.heads = heads.clone();
        let _ = subscription.sender.send(DocumentChange {
            doc,
            heads,
            origin,
            patches,
        });
    }

    /// Waits for the flush in flight, flushes what is left, closes the
    /// network and answers the shutdown.
    async fn stop(mut self) {
        if self.flushing.is_some() {
            let result = flush_done(&mut self.flushing).await;
            self.flushing = None;
            self.replica.handle_flush_complete(self.env.now(), result);
        }
        self.drain();
        if let Some(network) = &self.network {
            network.shutdown().await;
        }
        let reply = self.shutdown.take();
        let Driver {
            replica,
            mut pending,
            env,
            ..
        } = self;
        // The last flush and the clean-close mark block on the disk.
        let closed = env
            .run(move || -> (Result<(), ReplicaError>, Vec<_>) {
                let mut replica = replica;
                let flushed = replica.flush_now(env.now());
                let mut durable = Vec::new();
                while let Some(event) = replica.poll_event() {
                    if let Event::Acknowledged { write, level, .. } = event {
                        durable.push((write, level));
                    }
                }
                // Closing cleanly lets the next start keep this Automerge actor.
                (flushed.and_then(|()| replica.close(env.now())), durable)
            })
            .await;
        let result = match closed {
            Ok((result, durable)) => {
                for (write, level) in durable {
                    answer_if_reached(&mut pending, write, level);
                }
                result
            }
            Err(error) => Err(ReplicaError::Storage(StoreError::Backend(format!(
                "the final flush did not finish: {error}"
            )))),
        };
        match &result {
            Ok(()) => tracing::info!(unacknowledged = pending.len(), "node stopped"),
            Err(error) => tracing::error!(
                %error, unacknowledged = pending.len(),
                "the node did not close cleanly; its next start uses a new actor"
            ),
        }
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
}

/// Records that `write` reached `level`, and answers its caller if that is
/// the level it waits for.
fn answer_if_reached(
    pending: &mut BTreeMap<WriteId, PendingWrite>,
    write: WriteId,
    level: AckLevel,
) {
    let Some(entry) = pending.get_mut(&write) else {
        return;
    };
    entry.reached = entry.reached.max(level);
    if level < entry.wanted {
        return;
    }
    if let Some(entry) = pending.remove(&write) {
        entry.request.finish(Ok(entry.change));
    }
}

/// How often the driver measures the free space of the store's disk.
pub const DISK_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes an unprivileged process may still write on the file system that
/// holds `path`.
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// The result of a task running on a blocking thread, or never if none is.
async fn task_done<T>(task: &mut Option<JoinHandle<std::io::Result<T>>>) -> std::io::Result<T> {
    match task {
        Some(task) => task
            .await
            .unwrap_or_else(|error| Err(std::io::Error::other(error))),
        None => std::future::pending().await,
    }
}

/// Runs a document load; a panic in it is the store's failure to read
/// the document, so that what waits for it is answered.
fn run_load(load: Load) -> Loaded {
    let doc = load.doc();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load.run()))
        .unwrap_or_else(|_| Loaded::failed(doc, "the document load panicked"))
}

impl Command {
    /// The document the command needs in memory, if any.
    fn document(&self) -> Option<DocumentId> {
        match self {
            Command::Change { doc, .. }
            | Command::Read { doc, .. }
            | Command::Subscribe { doc, .. }
            | Command::ClientSync { doc, .. }
            | Command::Watch { doc, .. } => Some(*doc),
            _ => None,
        }
    }

    /// Answers a command that needs a document with `error`.
    fn fail(self, error: ReplicaError) {
        match self {
            Command::Change { request, .. } => request.finish(Err(error.into())),
            Command::Read { request, .. } => request.run(Err(error)),
            Command::Subscribe { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::ClientSync { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::Watch { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            _ => tracing::warn!(%error, "command failed"),
        }
    }
}

/// The result of the flush running on a blocking thread, or never if none
/// is.
async fn flush_done(
    flushing: &mut Option<JoinHandle<Result<(), StoreError>>>,
) -> Result<(), StoreError> {
    match flushing {
        Some(task) => match task.await {
            Ok(result) => result,
            Err(error) => Err(StoreError::Backend(format!(
                "the flush task failed: {error}"
            ))),
        },
        None => std::future::pending().await,
    }
}

/// The next network event, or never if the node has no network.
async fn next_net_event(events: &mut Option<mpsc::Receiver<NetEvent>>) -> Option<NetEvent> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

/// How long to wait for a graceful stop before giving up on it.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
