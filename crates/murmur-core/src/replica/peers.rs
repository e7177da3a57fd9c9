//! Peers: connections coming and going, the outbox they are sent through,
//! and the glue to SWIM membership.

use murmur_wire::{Message, NodeId};

use super::{Event, Replica};
use crate::membership::MembershipEvent;
use crate::{ReplicaError, Time};

impl Replica {
    /// A connection to `peer` is up (and authenticated). Starts document-set
    /// reconciliation with it (one digest message, sent by the side with the
    /// lower node id); the documents found to
    /// differ then sync, from their persisted sync states with the
    /// in-flight part reset. Writes pushed to the peer that it never
    /// confirmed ask it for its heads, once, in case the last connection
    /// lost its report.
    pub fn handle_peer_up(&mut self, now: Time, peer: NodeId) {
        let _span = tracing::debug_span!("peer_up", peer = %peer.short()).entered();
        self.observe_clock(now);
        self.peers.insert(peer);
        if let Some(membership) = self.membership.as_mut() {
            if let Err(error) = membership.announce(peer) {
                tracing::debug!(peer = %peer.short(), %error, "membership announce failed");
            }
            self.drain_membership(now);
        }
        // Reconciliation is symmetric (whichever side finds a document
        // differing syncs it both ways), so one side starting it is enough:
        // the one with the lower id. Anti-entropy rounds start it from
        // either side later, should this message be lost.
        if self.config.anti_entropy && self.config.node_id < peer {
            self.start_reconciliation(peer);
        }
        // The peer's heads reports may have closed with its last
        // connection, and a report is only sent after applying new changes:
        // ask for those of writes pushed to it that it never confirmed.
        for doc in self.replication.questions_for(peer) {
            self.enqueue(peer, Message::HeadsWanted { doc });
        }
        // The driver logs the connection; this is the engine's side of it.
        tracing::debug!(peer = %peer.short(), "peer up");
    }

    /// The connection to `peer` is gone. Drops what was queued for it; the
    /// sync states keep what both sides share.
    pub fn handle_peer_down(&mut self, now: Time, peer: NodeId) {
        let _ = now;
        if !self.peers.remove(&peer) {
            return;
        }
        self.retries.forget_peer(peer);
        let dropped_messages = self.outbox.forget_peer(peer);
        // Inputs parked for it belong to the connection that closed.
        self.docs.loads_mut().forget_peer(peer);
        self.drop_named_by(peer);
        tracing::debug!(
            peer = %peer.short(),
            dropped_messages,
            "peer down"
        );
    }

    pub(super) fn receive_membership(
        &mut self,
        now: Time,
        from: NodeId,
        data: &[u8],
    ) -> Result<(), ReplicaError> {
        let Some(membership) = self.membership.as_mut() else {
            return Ok(()); // membership is off here: ignore it
        };
        let result = membership.handle_data(data);
        self.drain_membership(now);
        result.map_err(|error| ReplicaError::InvalidMembership {
            peer: from,
            reason: error.to_string(),
        })
    }

    /// Sends what membership wants sent and reports what it learned.
    pub(super) fn drain_membership(&mut self, now: Time) {
        let Some(membership) = self.membership.as_mut() else {
            return;
        };
        let (sends, events) = membership.drain(now);
        for (to, data) in sends {
            // Only over connections that exist: an unreachable member fails
            // its probe, which is the truth.
            self.enqueue(to, Message::Membership { data });
        }
        for event in events {
            self.events.push(match event {
                MembershipEvent::Up(member) => {
                    tracing::info!(peer = %member.node.short(), addr = %member.addr, "member up");
                    Event::MemberUp {
                        node: member.node,
                        addr: member.addr,
                    }
                }
                MembershipEvent::Down(member) => {
                    tracing::info!(peer = %member.node.short(), "member down");
                    Event::MemberDown { node: member.node }
                }
            });
        }
    }

    /// The peers currently connected, in order.
    pub fn connected_peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.iter().copied()
    }

    /// The members SWIM believes alive (this node excluded), with their
    /// addresses, in order. Empty when membership is off.
    pub fn members(&self) -> Vec<(NodeId, String)> {
        self.membership
            .as_ref()
            .map(|m| m.members().into_iter().map(|m| (m.node, m.addr)).collect())
            .unwrap_or_default()
    }

    /// Queues `message` for `to`, unless that peer's queue is full. Returns
    /// whether it was queued.
    pub(super) fn enqueue(&mut self, to: NodeId, message: Message) -> bool {
        if !self.peers.contains(&to) {
            return false;
        }
        match self
            .outbox
            .push(to, message, self.config.max_outbox_bytes_per_peer)
        {
            Ok(()) => true,
            Err(queued) => {
                self.metrics.messages_dropped_backpressure += 1;
                tracing::debug!(peer = %to.short(), queued, "peer queue full; dropping message, anti-entropy will repair");
                false
            }
        }
    }
}
