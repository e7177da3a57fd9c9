//! The driver: one tokio task that owns a [`Replica`] and carries out what
//! it asks for with a real clock.
//!
//! Applications never touch the replica: they send [`Command`]s through a
//! bounded channel (a [`DriverHandle`]) and get answers on oneshot
//! channels. The task feeds commands and timer expiries to the replica and,
//! after every input, drains its outputs: acknowledgements go back to the
//! callers waiting for them, document changes to subscribers.

use std::any::Any;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use automerge::transaction::Transaction;
use automerge::{Automerge, AutomergeError, ChangeHash, Patch};
use murmur_core::{
    AckLevel, DocumentId, Event, Metrics, NodeId, Origin, Replica, ReplicaError, Time, WriteId,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

/// A change function, type-erased to cross the channel.
pub type ChangeFn =
    Box<dyn FnOnce(&mut Transaction<'_>) -> Result<Box<dyn Any + Send>, AutomergeError> + Send>;
/// A read function, type-erased to cross the channel.
pub type ReadFn = Box<dyn FnOnce(&Automerge) -> Box<dyn Any + Send> + Send>;

/// Most commands waiting in the channel; senders wait past it.
pub const COMMAND_QUEUE: usize = 1024;
/// Most commands handled before the driver looks at its timers again.
const COMMAND_BATCH: usize = 256;
/// Changes a subscriber may fall behind before it misses some (and is told
/// so by the broadcast channel).
pub const SUBSCRIBER_BACKLOG: usize = 1024;

/// The result of a change, once acknowledged at the level asked for.
pub struct ChangeReceipt {
    /// The Automerge change made (none if the function changed nothing).
    pub change: Option<ChangeHash>,
    /// What the change function returned.
    pub output: Box<dyn Any + Send>,
}

/// A change to a document, as subscribers see it.
#[derive(Debug, Clone)]
pub struct DocumentChange {
    /// The document.
    pub doc: DocumentId,
    /// Its heads after the change.
    pub heads: Vec<ChangeHash>,
    /// Who made it.
    pub origin: Origin,
    /// What changed, as Automerge patches against the previous heads this
    /// subscription saw.
    pub patches: Vec<Patch>,
}

/// A snapshot of the node's state.
#[derive(Debug, Clone)]
pub struct Status {
    /// This node.
    pub node_id: NodeId,
    /// Documents held in memory.
    pub documents: usize,
    /// Connected peers.
    pub peers: Vec<NodeId>,
    /// Local writes not yet durable.
    pub writes_awaiting_flush: usize,
    /// Messages waiting to be sent.
    pub outbox: usize,
    /// The engine's counters.
    pub metrics: Metrics,
}

/// What applications ask of the driver.
pub enum Command {
    /// Create a document.
    CreateDocument {
        /// Gets the new id.
        reply: oneshot::Sender<DocumentId>,
    },
    /// Change a document and answer once the change reaches `ack`.
    Change {
        /// The document.
        doc: DocumentId,
        /// The change.
        change: ChangeFn,
        /// The acknowledgement level to wait for.
        ack: AckLevel,
        /// Gets the receipt or the error.
        reply: oneshot::Sender<Result<ChangeReceipt, ReplicaError>>,
    },
    /// Read a document.
    Read {
        /// The document.
        doc: DocumentId,
        /// The read.
        read: ReadFn,
        /// Gets what the read returned.
        reply: oneshot::Sender<Result<Box<dyn Any + Send>, ReplicaError>>,
    },
    /// Subscribe to a document's changes.
    Subscribe {
        /// The document.
        doc: DocumentId,
        /// Gets the receiver.
        reply: oneshot::Sender<Result<broadcast::Receiver<DocumentChange>, ReplicaError>>,
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
    /// Flush and stop.
    Shutdown {
        /// Answered once everything is flushed.
        reply: oneshot::Sender<()>,
    },
}

/// Sends commands to a running driver; cheap to clone.
#[derive(Clone)]
pub struct DriverHandle {
    commands: mpsc::Sender<Command>,
}

/// The driver is gone (shut down, or its task ended).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the node has shut down")]
pub struct DriverClosed;

impl DriverHandle {
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
}

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
    change: Option<ChangeHash>,
    output: Box<dyn Any + Send>,
    reply: oneshot::Sender<Result<ChangeReceipt, ReplicaError>>,
}

struct Subscription {
    sender: broadcast::Sender<DocumentChange>,
    /// The heads the last notification ended at.
    heads: Vec<ChangeHash>,
}

struct Driver {
    replica: Replica,
    commands: mpsc::Receiver<Command>,
    pending: BTreeMap<WriteId, PendingWrite>,
    subscriptions: BTreeMap<DocumentId, Subscription>,
    shutdown: Option<oneshot::Sender<()>>,
}

/// Starts the driver task for `replica`; it runs until a shutdown command
/// or until every handle is dropped.
pub fn spawn(replica: Replica) -> (DriverHandle, JoinHandle<()>) {
    let (sender, commands) = mpsc::channel(COMMAND_QUEUE);
    let driver = Driver {
        replica,
        commands,
        pending: BTreeMap::new(),
        subscriptions: BTreeMap::new(),
        shutdown: None,
    };
    let node = driver.replica.node_id().short();
    let task = tokio::spawn(tracing::Instrument::instrument(
        driver.run(),
        tracing::info_span!("node", node = %node),
    ));
    (DriverHandle { commands: sender }, task)
}

impl Driver {
    async fn run(mut self) {
        loop {
            let now = wall_clock();
            let wait = self.replica.poll_timeout().since(now);
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.handle_commands(command),
                    None => break,
                },
                () = tokio::time::sleep(wait) => {}
            }
            let now = wall_clock();
            // Commands arriving without pause must not starve the timers
            // (the group-commit flush among them).
            if self.replica.poll_timeout() <= now {
                self.replica.handle_timeout(now);
            }
            self.drain();
            if self.shutdown.is_some() {
                break;
            }
        }
        self.stop();
    }

    /// Handles `first` and whatever else is already queued, up to a bound,
    /// so that concurrent writers share one flush.
    fn handle_commands(&mut self, first: Command) {
        self.handle(first);
        for _ in 1..COMMAND_BATCH {
            match self.commands.try_recv() {
                Ok(command) => self.handle(command),
                Err(_) => break,
            }
        }
    }

    fn handle(&mut self, command: Command) {
        let now = wall_clock();
        match command {
            Command::CreateDocument { reply } => {
                let _ = reply.send(self.replica.create_document(now));
            }
            Command::Change {
                doc,
                change,
                ack,
                reply,
            } => self.change(now, doc, change, ack, reply),
            Command::Read { doc, read, reply } => {
                let _ = reply.send(self.replica.document(doc).map(read));
            }
            Command::Subscribe { doc, reply } => {
                let _ = reply.send(self.subscribe(doc));
            }
            Command::ListDocuments { reply } => {
                let _ = reply.send(self.replica.document_ids().collect());
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Shutdown { reply } => self.shutdown = Some(reply),
        }
    }

    fn change(
        &mut self,
        now: Time,
        doc: DocumentId,
        change: ChangeFn,
        wanted: AckLevel,
        reply: oneshot::Sender<Result<ChangeReceipt, ReplicaError>>,
    ) {
        match self.replica.handle_local_change(now, doc, change) {
            Ok(write) => {
                self.pending.insert(
                    write.write,
                    PendingWrite {
                        wanted,
                        change: write.change,
                        output: write.output,
                        reply,
                    },
                );
            }
            Err(error) => {
                let _ = reply.send(Err(error));
            }
        }
    }

    fn subscribe(
        &mut self,
        doc: DocumentId,
    ) -> Result<broadcast::Receiver<DocumentChange>, ReplicaError> {
        let heads = self.replica.heads(doc)?;
        let subscription = self
            .subscriptions
            .entry(doc)
            .or_insert_with(|| Subscription {
                sender: broadcast::channel(SUBSCRIBER_BACKLOG).0,
                heads,
            });
        Ok(subscription.sender.subscribe())
    }

    fn status(&self) -> Status {
        Status {
            node_id: self.replica.node_id(),
            documents: self.replica.document_ids().count(),
            peers: self.replica.connected_peers().collect(),
            writes_awaiting_flush: self.replica.writes_awaiting_flush(),
            outbox: self.replica.outbox_len(),
            metrics: self.replica.metrics().clone(),
        }
    }

    /// Carries out the replica's outputs.
    fn drain(&mut self) {
        // No network yet: a replica with no connected peers sends nothing.
        while self.replica.poll_transmit().is_some() {}
        while let Some(event) = self.replica.poll_event() {
            match event {
                Event::Acknowledged { write, level, .. } => self.acknowledge(write, level),
                Event::DocumentChanged { doc, heads, origin } => self.notify(doc, heads, origin),
            }
        }
    }

    fn acknowledge(&mut self, write: WriteId, level: AckLevel) {
        if self.pending.get(&write).is_some_and(|p| level >= p.wanted) {
            if let Some(pending) = self.pending.remove(&write) {
                let _ = pending.reply.send(Ok(ChangeReceipt {
                    change: pending.change,
                    output: pending.output,
                }));
            }
        }
    }

    fn notify(&mut self, doc: DocumentId, heads: Vec<ChangeHash>, origin: Origin) {
        let Some(subscription) = self.subscriptions.get_mut(&doc) else {
            return;
        };
        if subscription.sender.receiver_count() == 0 {
            self.subscriptions.remove(&doc);
            return;
        }
        let Ok(document) = self.replica.document(doc) else {
            return;
        };
        let patches = document.diff(&subscription.heads, &heads);
        subscription.heads = heads.clone();
        let _ = subscription.sender.send(DocumentChange {
            doc,
            heads,
            origin,
            patches,
        });
    }

    /// Flushes what is left and answers the shutdown.
    fn stop(mut self) {
        self.replica.flush_now(wall_clock());
        self.drain();
        tracing::info!(unacknowledged = self.pending.len(), "node stopped");
        if let Some(reply) = self.shutdown.take() {
            let _ = reply.send(());
        }
    }
}

/// How long to wait for a graceful stop before giving up on it.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
