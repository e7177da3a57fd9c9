//! `GET /sync`: automerge-repo's network protocol (version "1") on a
//! WebSocket, so that browsers and apps using `@automerge/automerge-repo`
//! sync documents through this node, which replicates them to its peers.
//!
//! Each socket is one client session (see [`session`]): it joins, then
//! syncs documents with Automerge's sync protocol. The client's sync state
//! for each document lives in its session while it is connected, and is
//! kept by storage id for a client that says it will come back
//! ([`SavedStates`]). Every buffer is bounded: a frame, the messages a
//! session waits to send, the documents one session syncs, the states kept.

mod session;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use automerge::sync::State;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Query, State as AxumState};
use axum::response::{IntoResponse, Response};
use murmur::{DocumentId, Node};
use tokio::sync::mpsc;

use crate::access::Access;
use crate::http::AppState;

/// The largest frame a client may send (a sync message carrying a
/// document's whole history must fit).
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// How much a socket reads at once. The WebSocket library zeroes this much
/// before every read: at its default (128 KiB) that was an eighth of a
/// node's CPU with 256 clients sending keystrokes of a few hundred bytes.
const READ_BUFFER_BYTES: usize = 8 * 1024;
/// The most clients whose sync states are kept after they disconnect.
pub const MAX_SAVED_CLIENTS: usize = 10_000;

/// What the sync sessions of one node share.
pub struct SyncHub {
    node: Arc<Node>,
    /// This node's peer id and storage id in the protocol: its node id.
    peer_id: String,
    sessions: Mutex<Sessions>,
    saved: Mutex<SavedStates>,
}

/// The connected clients, by peer id.
#[derive(Default)]
struct Sessions {
    next_id: u64,
    by_peer: BTreeMap<String, SessionEntry>,
}

/// One connected client, as other sessions see it.
struct SessionEntry {
    id: u64,
    /// Frames to send it (bounded; see [`session::OUTBOX_FRAMES`]).
    outbox: mpsc::Sender<Message>,
    /// Ends it, saying why (a newer socket with the same peer id, its
    /// token revoked).
    replaced: Option<tokio::sync::oneshot::Sender<String>>,
    /// The documents it syncs, for relaying ephemeral messages.
    docs: BTreeSet<DocumentId>,
    /// Whether it may read each of those (its token's scope).
    access: Access,
}

/// Sync states of clients that went away saying they will come back,
/// by storage id: what they shared with this node, so that they do not
/// send everything again. At most [`MAX_SAVED_CLIENTS`]; the client
/// unheard of longest goes first.
#[derive(Default)]
struct SavedStates {
    clock: u64,
    by_storage: BTreeMap<String, (u64, BTreeMap<DocumentId, Vec<u8>>)>,
}

impl SavedStates {
    fn take(&mut self, storage_id: &str) -> BTreeMap<DocumentId, Vec<u8>> {
        self.by_storage
            .remove(storage_id)
            .map(|(_, states)| states)
            .unwrap_or_default()
    }

    fn keep(&mut self, storage_id: String, states: BTreeMap<DocumentId, Vec<u8>>) {
        self.clock += 1;
        self.by_storage.insert(storage_id, (self.clock, states));
        while self.by_storage.len() > MAX_SAVED_CLIENTS {
            let oldest = self
                .by_storage
                .iter()
                .min_by_key(|(_, (stamp, _))| *stamp)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => self.by_storage.remove(&id),
                None => break,
            };
        }
    }
}

impl SyncHub {
    /// The hub of `node`'s sync sessions.
    pub fn new(node: Arc<Node>) -> Self {
        SyncHub {
            peer_id: node.id().to_string(),
            node,
            sessions: Mutex::default(),
            saved: Mutex::default(),
        }
    }

    /// Registers a session for `peer`, replacing (and closing) one with
    /// the same peer id. Returns its id and the signal of its own
    /// replacement.
    fn register(
        &self,
        peer: &str,
        outbox: mpsc::Sender<Message>,
        access: Access,
    ) -> (u64, tokio::sync::oneshot::Receiver<String>) {
        let (replace, replaced) = tokio::sync::oneshot::channel();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.next_id += 1;
        let id = sessions.next_id;
        let entry = SessionEntry {
            id,
            outbox,
            replaced: Some(replace),
            docs: BTreeSet::new(),
            access,
        };
        if let Some(mut old) = sessions.by_peer.insert(peer.to_string(), entry) {
            tracing::info!(client = %peer, "a new socket joined with the same peer id; closing the old one");
            if let Some(replace) = old.replaced.take() {
                let _ = replace.send("replaced by a newer socket with the same peer id".into());
            }
        }
        (id, replaced)
    }

    /// Forgets session `id` of `peer` (unless a newer one replaced it).
    fn unregister(&self, peer: &str, id: u64) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions
            .by_peer
            .get(peer)
            .is_some_and(|entry| entry.id == id)
        {
            sessions.by_peer.remove(peer);
        }
    }

    /// Notes that session `id` of `peer` syncs `doc`.
    fn syncs(&self, peer: &str, id: u64, doc: DocumentId) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = sessions.by_peer.get_mut(peer) {
            if entry.id == id {
                entry.docs.insert(doc);
            }
        }
    }

    /// Relays an ephemeral message from `from` about `doc` to every other
    /// client syncing it that may read it. A client whose queue is full
    /// misses it (ephemeral messages may be lost; sync messages never).
    fn relay(&self, from: &str, doc: DocumentId, frame: impl Fn(&str) -> Vec<u8>) -> usize {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let mut relayed = 0;
        for (peer, entry) in &sessions.by_peer {
            if peer == from || !entry.docs.contains(&doc) || !entry.access.may_read(doc) {
                continue;
            }
            if entry
                .outbox
                .try_send(Message::Binary(frame(peer).into()))
                .is_ok()
            {
                relayed += 1;
            }
        }
        relayed
    }

    /// The sync states kept for `storage_id`, decoded (taken: the session
    /// holds them now).
    fn saved_states(&self, storage_id: &str) -> BTreeMap<DocumentId, State> {
        let states = self
            .saved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(storage_id);
        states
            .into_iter()
            .filter_map(|(doc, bytes)| State::decode(&bytes).ok().map(|state| (doc, state)))
            .collect()
    }

    /// Keeps a departing client's sync states under its storage id.
    fn keep_states(&self, storage_id: String, states: BTreeMap<DocumentId, Vec<u8>>) {
        self.saved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keep(storage_id, states);
    }

    /// Closes the sessions that use token `id`; returns how many.
    pub fn revoke(&self, id: &str) -> usize {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let mut closed = 0;
        for entry in sessions.by_peer.values_mut() {
            if entry.access.token.as_deref() == Some(id) {
                if let Some(replace) = entry.replaced.take() {
                    let _ = replace.send(format!("token {id} was revoked"));
                    closed += 1;
                }
            }
        }
        closed
    }

    /// How many clients are connected.
    pub fn clients(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_peer
            .len()
    }
}

/// The query of `GET /sync`.
#[derive(serde::Deserialize)]
pub struct SyncQuery {
    /// A token, for clients that cannot set headers (browsers).
    token: Option<String>,
}

/// `GET /sync`: checks the client's token, then upgrades to a WebSocket
/// session.
pub async fn get_sync(
    AxumState(state): AxumState<AppState>,
    Query(query): Query<SyncQuery>,
    headers: axum::http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let presented = query
        .token
        .as_deref()
        .or_else(|| crate::http::bearer_token(&headers));
    let access = match state.access(presented) {
        Ok(access) => access,
        Err(refusal) => return refusal.into_response(),
    };
    let hub = state.sync_hub();
    upgrade
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| session::run(hub, socket, access))
}
