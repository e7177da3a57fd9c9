//! One client's WebSocket session: the join handshake, then a sync
//! conversation per document, run through the node's engine one step at a
//! time (a step never waits inside the engine for the client).
//!
//! Bounds: frames ([`super::MAX_FRAME_BYTES`]), frames waiting to be sent
//! ([`OUTBOX_FRAMES`]; a client that does not read is disconnected when
//! they are full, so it costs at most that), documents per session
//! ([`MAX_DOCS_PER_SESSION`]) and messages waiting per document
//! ([`MAX_WAITING_MESSAGES`]). A socket that answers nothing for
//! [`DEAD_AFTER`] is dropped; the node pings every [`PING_INTERVAL`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use automerge::sync::{self, State};
use automerge::ChangeHash;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use murmur::ClientState;
use murmur::{ClientSyncReply, DocHandle, DocumentId};
use murmur_core::ReplicaError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::SyncHub;
use crate::access::Access;
use murmur::repo_protocol::{self as codec, Inbound, Outbound, PeerMetadata, PROTOCOL_VERSION};

/// How often the node pings a client.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// How long a client may stay silent (not even a pong) before its socket
/// is dropped.
pub const DEAD_AFTER: Duration = Duration::from_secs(15);
/// The most frames waiting to be sent to one client; a client that lets
/// them fill up (it does not read) is disconnected.
pub const OUTBOX_FRAMES: usize = 256;
/// While this many frames wait for a client, the node makes no new sync
/// message for it: a client that reads slowly gets fewer, larger messages
/// (each carries all it lacks), and what waits for it stays a few messages
/// however far behind it falls.
pub const OUTBOX_BACKLOG: usize = 4;
/// The most documents one session syncs at once.
pub const MAX_DOCS_PER_SESSION: usize = 4096;
/// The most sync messages about one document waiting for the step in the
/// engine (the next step takes them all), and their most bytes.
pub const MAX_WAITING_MESSAGES: usize = 1024;
/// See [`MAX_WAITING_MESSAGES`].
pub const MAX_WAITING_BYTES: usize = 16 * 1024 * 1024;
/// How long the node gathers changes to a document before it sends a
/// client what it lacks: changes made in a burst (many typists) go in one
/// message, which the client acknowledges once.
pub const SEND_COALESCE: Duration = Duration::from_millis(20);
/// How long a client has to join after connecting.
const JOIN_PATIENCE: Duration = Duration::from_secs(15);
/// Sync messages larger than this are decoded on a blocking thread.
const INLINE_DECODE_BYTES: usize = 64 * 1024;
/// The most ephemeral sessions whose counts a session remembers.
const MAX_EPHEMERAL_SESSIONS: usize = 64;
/// WebSocket close code: the client broke the protocol.
const CLOSE_PROTOCOL: u16 = 1002;
/// WebSocket close code: policy (replaced, too slow, too much).
const CLOSE_POLICY: u16 = 1008;

/// Why a session ends.
struct Ending {
    code: u16,
    /// Said to the client in an `error` message and the close frame, and
    /// logged.
    reason: String,
}

impl Ending {
    fn protocol(reason: impl Into<String>) -> Self {
        Ending {
            code: CLOSE_PROTOCOL,
            reason: reason.into(),
        }
    }

    fn policy(reason: impl Into<String>) -> Self {
        Ending {
            code: CLOSE_POLICY,
            reason: reason.into(),
        }
    }
}

/// Runs one client's session on `socket` until it ends.
pub async fn run(hub: Arc<SyncHub>, socket: WebSocket, access: Access) {
    let (sink, mut stream) = socket.split();
    let (outbox, frames) = mpsc::channel::<Message>(OUTBOX_FRAMES);
    let writer = tokio::spawn(write_frames(sink, frames));

    // The handshake: the first message must be `join`.
    let joined = tokio::time::timeout(JOIN_PATIENCE, stream.next()).await;
    let join = match joined {
        Ok(Some(Ok(Message::Binary(frame)))) => codec::decode(&frame),
        Ok(Some(Ok(_))) => Err(codec::CodecError::NotAMap),
        _ => {
            writer.abort();
            return;
        }
    };
    let (peer, metadata) = match join {
        Ok(Inbound::Join {
            sender_id,
            versions,
            metadata,
        }) => {
            let speaks =
                versions.is_none_or(|versions| versions.iter().any(|v| v == PROTOCOL_VERSION));
            if !speaks {
                let ending = Ending::protocol("unsupported protocol version");
                close(&hub, &outbox, Some(&sender_id), &ending).await;
                return finish(writer).await;
            }
            (sender_id, metadata.unwrap_or_default())
        }
        Ok(other) => {
            let ending = Ending::protocol(format!(
                "the first message must be `join`, not {}",
                other.kind()
            ));
            close(&hub, &outbox, None, &ending).await;
            return finish(writer).await;
        }
        Err(error) => {
            let ending = Ending::protocol(error.to_string());
            close(&hub, &outbox, None, &ending).await;
            return finish(writer).await;
        }
    };
    let (id, replaced) = hub.register(&peer, outbox.clone(), access.clone());
    let span = tracing::info_span!("client", client = %peer);
    async {
        tracing::info!(storage = ?metadata.storage_id, ephemeral = metadata.is_ephemeral, "client joined");
        let _ = outbox.try_send(frame(
            &hub,
            &Outbound::Peer {
                target_id: &peer,
                storage_id: &hub.peer_id,
            },
        ));
        let mut session = Session::new(hub.clone(), peer.clone(), id, metadata, access, outbox);
        let ending = session.serve(&mut stream, replaced).await;
        session.save_states();
        hub.unregister(&peer, id);
        if let Some(ending) = ending {
            tracing::info!(reason = %ending.reason, "client disconnected");
            close(&hub, &session.outbox, Some(&peer), &ending).await;
        } else {
            tracing::info!("client disconnected");
        }
        drop(session);
        finish(writer).await;
    }
    .instrument(span)
    .await;
}

/// Sends a session's frames, in order, until the session drops its
/// sender or the client goes.
async fn write_frames(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut frames: mpsc::Receiver<Message>,
) {
    while let Some(frame) = frames.recv().await {
        let closing = matches!(frame, Message::Close(_));
        if sink.send(frame).await.is_err() || closing {
            break;
        }
    }
    let _ = sink.close().await;
}

/// Waits a little for the writer to send what is queued (the error and
/// close frames), then stops it.
async fn finish(writer: tokio::task::JoinHandle<()>) {
    let abort = writer.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), writer)
        .await
        .is_err()
    {
        abort.abort();
    }
}

/// Tells the client why its session ends, then closes the socket.
async fn close(hub: &SyncHub, outbox: &mpsc::Sender<Message>, peer: Option<&str>, ending: &Ending) {
    let error = frame(
        hub,
        &Outbound::Error {
            target_id: peer,
            message: &ending.reason,
        },
    );
    let mut reason = ending.reason.clone();
    // A close frame's reason is at most 123 bytes.
    while reason.len() > 120 {
        reason.pop();
    }
    let close = Message::Close(Some(CloseFrame {
        code: ending.code,
        reason: reason.into(),
    }));
    // The queue may be full (the client does not read): then it hears
    // nothing more, and the writer is stopped.
    let _ = outbox.try_send(error);
    let _ = outbox.try_send(close);
}

fn frame(hub: &SyncHub, message: &Outbound<'_>) -> Message {
    Message::Binary(codec::encode(&hub.peer_id, message).into())
}

/// One document's sync conversation with the client.
struct DocSync {
    handle: DocHandle,
    /// The client's sync state; `None` while a step is in the engine.
    state: Option<Box<ClientState>>,
    /// Client messages waiting for that step, and their bytes.
    waiting: Vec<sync::Message>,
    waiting_bytes: usize,
    /// The document changed while a step was in the engine: ask again.
    dirty: bool,
    /// The heads last told the client in `remote-heads-changed`.
    told_heads: Vec<ChangeHash>,
    /// The task that watches the document (in the session's `watchers`).
    watcher: tokio::task::AbortHandle,
}

/// What a finished engine step says: its document, whether it took client
/// messages (then it did not answer: the answer is gathered with the next
/// send), and its outcome.
type StepDone = (DocumentId, bool, Result<ClientSyncReply, murmur::Error>);

struct Session {
    hub: Arc<SyncHub>,
    peer: String,
    id: u64,
    metadata: PeerMetadata,
    access: Access,
    outbox: mpsc::Sender<Message>,
    docs: BTreeMap<DocumentId, DocSync>,
    /// States kept from this client's earlier sessions (non-ephemeral
    /// clients with a storage id), used as their documents come up.
    restored: BTreeMap<DocumentId, State>,
    steps: JoinSet<StepDone>,
    watchers: JoinSet<()>,
    changed_tx: mpsc::Sender<DocumentId>,
    changed: mpsc::Receiver<DocumentId>,
    /// The highest count seen per ephemeral session of this client.
    ephemeral_counts: BTreeMap<String, u64>,
    /// Whether the client asked for this node's heads.
    heads_subscribed: bool,
    /// Documents that changed, to tell the client of when `send_at` comes.
    changed_docs: std::collections::BTreeSet<DocumentId>,
    send_at: Option<tokio::time::Instant>,
}

impl Session {
    fn new(
        hub: Arc<SyncHub>,
        peer: String,
        id: u64,
        metadata: PeerMetadata,
        access: Access,
        outbox: mpsc::Sender<Message>,
    ) -> Self {
        let restored = match (&metadata.storage_id, metadata.is_ephemeral) {
            (Some(storage), false) => hub.saved_states(storage),
            _ => BTreeMap::new(),
        };
        let (changed_tx, changed) = mpsc::channel(MAX_DOCS_PER_SESSION);
        Session {
            hub,
            peer,
            id,
            metadata,
            access,
            outbox,
            docs: BTreeMap::new(),
            restored,
            steps: JoinSet::new(),
            watchers: JoinSet::new(),
            changed_tx,
            changed,
            ephemeral_counts: BTreeMap::new(),
            heads_subscribed: false,
            changed_docs: std::collections::BTreeSet::new(),
            send_at: None,
        }
    }

    /// Serves the client until it leaves (`None`) or the session must end.
    async fn serve(
        &mut self,
        stream: &mut futures_util::stream::SplitStream<WebSocket>,
        mut replaced: oneshot::Receiver<String>,
    ) -> Option<Ending> {
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = tokio::time::Instant::now();
        loop {
            let outcome = tokio::select! {
                frame = stream.next() => {
                    heard = tokio::time::Instant::now();
                    match frame {
                        Some(Ok(Message::Binary(bytes))) => self.receive(&bytes).await,
                        Some(Ok(Message::Text(_))) => Err(Ending::protocol("messages must be binary CBOR frames")),
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                        // Pings are answered by the WebSocket layer.
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                    }
                }
                Some(done) = self.steps.join_next() => match done {
                    Ok((doc, took_messages, result)) => {
                        if took_messages {
                            self.send_soon(doc);
                        }
                        self.stepped(doc, result)
                    }
                    Err(error) => Err(Ending::policy(format!("a sync step failed: {error}"))),
                },
                Some(doc) = self.changed.recv() => {
                    self.send_soon(doc);
                    Ok(())
                }
                // A watcher ends when its document is deleted or dropped.
                Some(_) = self.watchers.join_next() => Ok(()),
                () = sleep_until(self.send_at), if self.send_at.is_some() => {
                    if OUTBOX_FRAMES - self.outbox.capacity() >= OUTBOX_BACKLOG {
                        // The client reads slower than the node sends:
                        // wait, then say it all in one message (each sync
                        // message carries everything the client lacks).
                        self.send_at = Some(tokio::time::Instant::now() + SEND_COALESCE);
                        Ok(())
                    } else {
                        self.send_at = None;
                        let docs = std::mem::take(&mut self.changed_docs);
                        docs.into_iter().try_for_each(|doc| self.document_changed(doc))
                    }
                }
                _ = ping.tick() => {
                    if heard.elapsed() > DEAD_AFTER {
                        Err(Ending::policy(format!("no answer for {DEAD_AFTER:?}; dropping the socket")))
                    } else {
                        self.send(Message::Ping(Vec::new().into()))
                    }
                }
                reason = &mut replaced => Err(Ending::policy(reason.unwrap_or_else(|_| "closed by the node".into()))),
            };
            if let Err(ending) = outcome {
                return Some(ending);
            }
        }
    }

    /// Queues a frame for the client; a full queue ends the session.
    fn send(&self, frame: Message) -> Result<(), Ending> {
        self.outbox.try_send(frame).map_err(|_| {
            Ending::policy(format!(
                "the client does not read: {OUTBOX_FRAMES} messages wait for it"
            ))
        })
    }

    fn send_message(&self, message: &Outbound<'_>) -> Result<(), Ending> {
        self.send(frame(&self.hub, message))
    }

    async fn receive(&mut self, bytes: &[u8]) -> Result<(), Ending> {
        let message = codec::decode(bytes).map_err(|error| Ending::protocol(error.to_string()))?;
        if let Some(sender) = message.sender_id() {
            if sender != self.peer {
                return Err(Ending::protocol(format!(
                    "senderId {sender:?} is not the peer id this socket joined as ({:?})",
                    self.peer
                )));
            }
        }
        match message {
            Inbound::Join { .. } => Err(Ending::protocol("`join` was already sent on this socket")),
            Inbound::Leave { .. } => Err(Ending::policy("the client left")),
            Inbound::Request {
                document_id, data, ..
            } => self.sync_message(document_id, &data, false).await,
            Inbound::Sync {
                document_id, data, ..
            } => self.sync_message(document_id, &data, true).await,
            Inbound::DocUnavailable { .. } | Inbound::RemoteHeadsChanged { .. } => Ok(()),
            Inbound::Ephemeral {
                document_id,
                session_id,
                count,
                data,
                ..
            } => {
                self.ephemeral(document_id, session_id, count, &data);
                Ok(())
            }
            Inbound::RemoteSubscriptionChange { add, remove, .. } => {
                if add.contains(&self.hub.peer_id) {
                    self.heads_subscribed = true;
                }
                if remove.contains(&self.hub.peer_id) {
                    self.heads_subscribed = false;
                }
                Ok(())
            }
            Inbound::Error { message } => {
                tracing::info!(%message, "the client reported an error");
                Ok(())
            }
        }
    }

    /// A `request` (`announce` false) or `sync` message about `doc`.
    async fn sync_message(
        &mut self,
        doc: DocumentId,
        data: &[u8],
        announce: bool,
    ) -> Result<(), Ending> {
        let unavailable = Outbound::DocUnavailable {
            target_id: &self.peer,
            document_id: doc,
        };
        if !self.access.may_read(doc) {
            return self.send_message(&unavailable);
        }
        let mut message = decode_sync(data).await.map_err(|error| {
            Ending::protocol(format!(
                "the sync message about {doc} does not decode: {error}"
            ))
        })?;
        if !message.changes.is_empty() && !self.access.may_write(doc) {
            // Refused, and said so; the rest of the message (what the
            // client has and wants) still counts, so it can go on reading.
            message.changes = sync::ChunkList::empty();
            let refusal =
                format!("this client's token is read-only: its changes to {doc} were refused");
            tracing::info!(doc = %doc, "refused a read-only client's changes");
            self.send_message(&Outbound::Error {
                target_id: Some(&self.peer),
                message: &refusal,
            })?;
        }
        if !self.docs.contains_key(&doc) {
            let Some(handle) = self.open(doc, announce && self.access.may_create()).await else {
                return self.send_message(&unavailable);
            };
            self.start(doc, handle)?;
        }
        let entry = self.docs.get_mut(&doc).expect("opened above");
        if let Some(state) = entry.state.take() {
            self.step(doc, state, vec![message]);
        } else if entry.waiting.len() < MAX_WAITING_MESSAGES
            && entry.waiting_bytes + data.len() <= MAX_WAITING_BYTES
        {
            entry.waiting_bytes += data.len();
            entry.waiting.push(message);
        } else {
            return Err(Ending::policy(format!(
                "more than {MAX_WAITING_MESSAGES} sync messages (or {MAX_WAITING_BYTES} bytes) \
                 about {doc} wait to be applied"
            )));
        }
        Ok(())
    }

    /// A handle to `doc`, creating it if `create` (a client announced a
    /// document it made); `None` if this node has no such document.
    async fn open(&self, doc: DocumentId, create: bool) -> Option<DocHandle> {
        match self.hub.node.doc(doc).await {
            Ok(handle) => Some(handle),
            Err(murmur::Error::Replica(ReplicaError::UnknownDocument(_))) if create => {
                match self.hub.node.create_doc_with_id(doc).await {
                    Ok(handle) => {
                        tracing::info!(doc = %doc, "created a document a client announced");
                        Some(handle)
                    }
                    // Made meanwhile by another client: use it.
                    Err(murmur::Error::Replica(ReplicaError::DocumentExists(_))) => {
                        self.hub.node.doc(doc).await.ok()
                    }
                    Err(error) => {
                        tracing::warn!(doc = %doc, %error, "cannot create a document a client announced");
                        None
                    }
                }
            }
            Err(_) => None,
        }
    }

    /// Starts syncing `doc`: its state (kept from an earlier session, or
    /// new) and a watch on its changes.
    fn start(&mut self, doc: DocumentId, handle: DocHandle) -> Result<(), Ending> {
        if self.docs.len() >= MAX_DOCS_PER_SESSION {
            return Err(Ending::policy(format!(
                "a session syncs at most {MAX_DOCS_PER_SESSION} documents"
            )));
        }
        let state = self.restored.remove(&doc).unwrap_or_default();
        let watched = handle.clone();
        let changed = self.changed_tx.clone();
        let watcher = self.watchers.spawn(async move {
            let Ok(mut watch) = watched.watch().await else {
                return;
            };
            // A watch keeps only the latest change: while this waits for
            // room, later changes fold into the one notice it then sends.
            while watch.changed().await.is_ok() {
                if changed.send(doc).await.is_err() {
                    return;
                }
            }
        });
        self.docs.insert(
            doc,
            DocSync {
                handle,
                state: Some(Box::new(ClientState::from(state))),
                waiting: Vec::new(),
                waiting_bytes: 0,
                dirty: false,
                told_heads: Vec::new(),
                watcher,
            },
        );
        self.hub.syncs(&self.peer, self.id, doc);
        Ok(())
    }

    /// Tells the client what it lacks of `doc` when the gathering window
    /// ([`SEND_COALESCE`]) ends.
    fn send_soon(&mut self, doc: DocumentId) {
        self.changed_docs.insert(doc);
        self.send_at
            .get_or_insert_with(|| tokio::time::Instant::now() + SEND_COALESCE);
    }

    /// Runs one sync step of `doc` in the engine: applies the client's
    /// `messages`, or (with none) makes the message to send it.
    fn step(&mut self, doc: DocumentId, state: Box<ClientState>, messages: Vec<sync::Message>) {
        let handle = self.docs[&doc].handle.clone();
        let took_messages = !messages.is_empty();
        self.steps.spawn(async move {
            let outcome = handle.sync_client(state, messages, !took_messages).await;
            (doc, took_messages, outcome)
        });
    }

    /// A step of `doc` finished: send its message, then take the next.
    fn stepped(
        &mut self,
        doc: DocumentId,
        result: Result<ClientSyncReply, murmur::Error>,
    ) -> Result<(), Ending> {
        let reply = match result {
            Ok(reply) => reply,
            Err(murmur::Error::Replica(
                ReplicaError::UnknownDocument(_) | ReplicaError::Deleted(_),
            )) => {
                if let Some(entry) = self.docs.remove(&doc) {
                    entry.watcher.abort();
                }
                return self.send_message(&Outbound::DocUnavailable {
                    target_id: &self.peer,
                    document_id: doc,
                });
            }
            Err(murmur::Error::Replica(error @ ReplicaError::ForeignData { .. })) => {
                return Err(Ending::protocol(format!(
                    "the changes to {doc} are refused: {error}"
                )));
            }
            Err(murmur::Error::Replica(error @ ReplicaError::DiskFull { .. })) => {
                return Err(Ending::policy(format!(
                    "the node cannot take changes now: {error}"
                )));
            }
            Err(error) => return Err(Ending::policy(format!("syncing {doc} failed: {error}"))),
        };
        if let Some(data) = &reply.message {
            self.send_message(&Outbound::Sync {
                target_id: &self.peer,
                document_id: doc,
                data,
            })?;
        }
        let told = &mut self
            .docs
            .get_mut(&doc)
            .expect("a step's document is synced")
            .told_heads;
        if self.heads_subscribed && *told != reply.heads {
            told.clone_from(&reply.heads);
            let timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64);
            self.send_message(&Outbound::RemoteHeadsChanged {
                target_id: &self.peer,
                document_id: doc,
                storage_id: &self.hub.peer_id,
                heads: &reply.heads,
                timestamp,
            })?;
        }
        let entry = self
            .docs
            .get_mut(&doc)
            .expect("a step's document is synced");
        if !entry.waiting.is_empty() {
            // Every message that came meanwhile, in one step (which also
            // answers whatever made the document dirty).
            let waiting = std::mem::take(&mut entry.waiting);
            entry.waiting_bytes = 0;
            entry.dirty = false;
            self.step(doc, reply.state, waiting);
        } else if std::mem::take(&mut entry.dirty) {
            self.step(doc, reply.state, Vec::new());
        } else {
            entry.state = Some(reply.state);
        }
        Ok(())
    }

    /// `doc` changed in the node: tell the client what it lacks.
    fn document_changed(&mut self, doc: DocumentId) -> Result<(), Ending> {
        let Some(entry) = self.docs.get_mut(&doc) else {
            return Ok(());
        };
        match entry.state.take() {
            Some(state) => self.step(doc, state, Vec::new()),
            None => entry.dirty = true,
        }
        Ok(())
    }

    /// Relays an ephemeral message to the document's other clients, once
    /// per count of the sender's session.
    fn ephemeral(&mut self, doc: DocumentId, session_id: String, count: u64, data: &[u8]) {
        if !self.docs.contains_key(&doc) || !self.access.may_read(doc) {
            return;
        }
        match self.ephemeral_counts.get(&session_id) {
            Some(&seen) if count <= seen => return,
            _ => {}
        }
        if self.ephemeral_counts.len() >= MAX_EPHEMERAL_SESSIONS
            && !self.ephemeral_counts.contains_key(&session_id)
        {
            self.ephemeral_counts.pop_first();
        }
        self.ephemeral_counts.insert(session_id.clone(), count);
        let (peer, hub) = (self.peer.clone(), self.hub.clone());
        hub.relay(&peer, doc, |target| {
            codec::encode(
                &hub.peer_id,
                &Outbound::Ephemeral {
                    sender_id: &peer,
                    target_id: target,
                    document_id: doc,
                    session_id: &session_id,
                    count,
                    data,
                },
            )
        });
    }

    /// Keeps the client's sync states if it will come back.
    fn save_states(&mut self) {
        let (Some(storage), false) = (&self.metadata.storage_id, self.metadata.is_ephemeral) else {
            return;
        };
        // Those of documents it did not come back to this time too.
        let restored = std::mem::take(&mut self.restored);
        let states = restored
            .into_iter()
            .map(|(doc, state)| (doc, state.encode()))
            .chain(self.docs.iter().filter_map(|(doc, entry)| {
                entry
                    .state
                    .as_ref()
                    .map(|state| (*doc, state.sync.encode()))
            }))
            .collect();
        self.hub.keep_states(storage.clone(), states);
    }
}

/// Sleeps until `at` (never, if `None`).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Decodes a client's sync message, on a blocking thread if it is large.
async fn decode_sync(data: &[u8]) -> Result<sync::Message, String> {
    if data.len() <= INLINE_DECODE_BYTES {
        return sync::Message::decode(data).map_err(|error| error.to_string());
    }
    let data = data.to_vec();
    // A panic in the decoder comes back as the task's error.
    tokio::task::spawn_blocking(move || sync::Message::decode(&data).map_err(|e| e.to_string()))
        .await
        .map_err(|error| error.to_string())?
}
