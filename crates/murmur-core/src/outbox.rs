//! Messages waiting for the driver, in the order they were queued: each
//! peer's share of them in bytes (its budget), and the pushes still open
//! for more changes (so a burst travels in few messages).

use std::collections::{BTreeMap, VecDeque};

use murmur_wire::{DocumentId, Message, NodeId};

use crate::replica::Transmit;

/// The engine's queue of messages to send.
#[derive(Default)]
pub(crate) struct Outbox {
    /// Messages to send, each with its sequence number (ascending).
    queue: VecDeque<(u64, Transmit)>,
    /// The sequence number the next queued message takes.
    next: u64,
    /// Per (document, peer), the queued push that more changes may join.
    open_pushes: BTreeMap<(DocumentId, NodeId), u64>,
    /// Bytes (roughly: payload sizes) queued per peer.
    queued: BTreeMap<NodeId, usize>,
}

impl Outbox {
    /// Messages waiting.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Bytes queued for `peer`.
    pub(crate) fn queued_bytes(&self, peer: NodeId) -> usize {
        self.queued.get(&peer).copied().unwrap_or(0)
    }

    /// Queues `message` for `to` unless `to`'s queue would pass
    /// `max_bytes`; `Err` holds the bytes already queued for it. One message
    /// always fits an empty queue, whatever its size: a bound below one
    /// message must slow a peer down, not starve it (the simulator found a
    /// reconciliation that could never be sent).
    pub(crate) fn push(
        &mut self,
        to: NodeId,
        message: Message,
        max_bytes: usize,
    ) -> Result<(), usize> {
        let bytes = message_bytes(&message);
        let queued = self.queued.entry(to).or_default();
        if *queued > 0 && *queued + bytes > max_bytes {
            return Err(*queued);
        }
        *queued += bytes;
        let seq = self.next;
        self.next += 1;
        if let Message::Changes { doc, .. } = &message {
            self.open_pushes.insert((*doc, to), seq);
        }
        self.queue.push_back((seq, Transmit { to, message }));
        Ok(())
    }

    /// Adds `change` to the push of `doc` still queued for `to`, if there
    /// is one holding fewer than `max_changes`. Returns whether it did.
    pub(crate) fn join_push(
        &mut self,
        doc: DocumentId,
        to: NodeId,
        change: &[u8],
        max_changes: usize,
    ) -> bool {
        let Some(&seq) = self.open_pushes.get(&(doc, to)) else {
            return false;
        };
        let Ok(index) = self.queue.binary_search_by_key(&seq, |(seq, _)| *seq) else {
            return false;
        };
        let Some((_, Transmit { message, .. })) = self.queue.get_mut(index) else {
            return false;
        };
        let Message::Changes { changes, .. } = message else {
            return false;
        };
        if changes.len() >= max_changes {
            return false;
        }
        changes.push(change.to_vec());
        *self.queued.entry(to).or_default() += change.len();
        true
    }

    /// The next message to send. `leak` (a planted bug) keeps its bytes
    /// charged to the peer.
    pub(crate) fn pop(&mut self, leak: bool) -> Option<Transmit> {
        let (seq, transmit) = self.queue.pop_front()?;
        if let Message::Changes { doc, .. } = &transmit.message {
            if self.open_pushes.get(&(*doc, transmit.to)) == Some(&seq) {
                self.open_pushes.remove(&(*doc, transmit.to));
            }
        }
        if let Some(queued) = self.queued.get_mut(&transmit.to).filter(|_| !leak) {
            *queued = queued.saturating_sub(message_bytes(&transmit.message));
        }
        Some(transmit)
    }

    /// Drops everything queued for `peer` (its connection closed). Returns
    /// how many messages that was.
    pub(crate) fn forget_peer(&mut self, peer: NodeId) -> usize {
        let before = self.queue.len();
        self.queue.retain(|(_, transmit)| transmit.to != peer);
        self.open_pushes.retain(|(_, to), _| *to != peer);
        self.queued.remove(&peer);
        before - self.queue.len()
    }

    /// Messages queued, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Transmit> + '_ {
        self.queue.iter().map(|(_, transmit)| transmit)
    }

    /// Checks that only connected peers have messages queued and that each
    /// peer is charged exactly the bytes queued for it.
    pub(crate) fn check(&self, connected: impl Fn(&NodeId) -> bool) -> Result<(), String> {
        let mut actual: BTreeMap<NodeId, usize> = BTreeMap::new();
        for transmit in self.iter() {
            if !connected(&transmit.to) {
                return Err(format!(
                    "a {} message is queued for {}, which is not connected",
                    transmit.message.kind(),
                    transmit.to.short()
                ));
            }
            *actual.entry(transmit.to).or_default() += message_bytes(&transmit.message);
        }
        for (peer, charged) in &self.queued {
            let queued = actual.get(peer).copied().unwrap_or(0);
            if *charged != queued {
                return Err(format!(
                    "peer {} is charged {charged} queued bytes, {queued} are queued",
                    peer.short()
                ));
            }
        }
        if let Some(peer) = actual.keys().find(|peer| !self.queued.contains_key(peer)) {
            return Err(format!(
                "messages are queued for {}, which is charged nothing",
                peer.short()
            ));
        }
        Ok(())
    }
}

/// A message's size for queue accounting: its variable-length payload.
fn message_bytes(message: &Message) -> usize {
    const OVERHEAD: usize = 64;
    OVERHEAD
        + match message {
            Message::Changes { changes, .. } => changes.iter().map(Vec::len).sum(),
            Message::Sync { message, .. } => message.len(),
            Message::Heads { heads, .. } => heads.len() * 32,
            Message::Membership { data } => data.len(),
            Message::Hello(_) | Message::HeadsWanted { .. } | Message::Deleted { .. } => 0,
            Message::DigestNodes { nodes } => nodes.len() * 17,
            Message::DigestLeaves { entries, .. } => entries.len() * 24,
        }
}
