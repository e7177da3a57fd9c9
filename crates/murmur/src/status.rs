//! What a node reports about itself: [`Status`], with its peers and
//! traffic, and the one list of figures that `/status` and `/metrics` are
//! both made from.

use std::time::Duration;

use murmur_core::{Figure, Metrics, NodeId};

impl Status {
    /// The status of a node whose driver has not run a turn yet.
    pub(crate) fn starting(node_id: NodeId) -> Status {
        Status {
            node_id,
            listen: None,
            documents: 0,
            feed_end: 1,
            peers: Vec::new(),
            allowed: Vec::new(),
            members: Vec::new(),
            traffic: Traffic::default(),
            writes_awaiting_flush: 0,
            outbox: 0,
            metrics: Metrics::default(),
        }
    }
}

/// A connected peer, as the driver sees it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Its id.
    pub id: NodeId,
    /// Its address.
    pub addr: std::net::SocketAddr,
    /// The round-trip time estimate.
    pub rtt: Duration,
}

/// Traffic the driver has carried.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traffic {
    /// Messages sent to peers.
    pub messages_out: u64,
    /// Frame bytes sent to peers.
    pub bytes_out: u64,
    /// Messages received from peers.
    pub messages_in: u64,
    /// Frame bytes received from peers.
    pub bytes_in: u64,
    /// Messages dropped because a connection's queue was full.
    pub dropped_full: u64,
    /// Messages from peers the replica rejected.
    pub rejected: u64,
    /// TLS handshakes refused because the other side's key was not allowed.
    pub handshakes_refused: u64,
}

impl Traffic {
    /// Every counter, for reports.
    pub fn figures(&self) -> Vec<Figure> {
        let Traffic {
            messages_out,
            bytes_out,
            messages_in,
            bytes_in,
            dropped_full,
            rejected,
            handshakes_refused,
        } = *self;
        use Figure as F;
        vec![
            F::counter("messages_out", "murmur_messages_sent_total", "Messages sent to peers.", messages_out),
            F::counter("bytes_out", "murmur_bytes_sent_total", "Frame bytes sent to peers.", bytes_out),
            F::counter("messages_in", "murmur_messages_received_total", "Messages received from peers.", messages_in),
            F::counter("bytes_in", "murmur_bytes_received_total", "Frame bytes received from peers.", bytes_in),
            F::counter("dropped_full", "murmur_connection_messages_dropped_total", "Messages dropped because a connection's send queue was full (anti-entropy carries them later).", dropped_full),
            F::counter("rejected", "murmur_messages_rejected_total", "Messages from peers that the engine rejected.", rejected),
            F::counter("handshakes_refused", "murmur_handshakes_refused_total", "TLS handshakes refused because the other side's key is not allowed.", handshakes_refused),
        ]
    }
}

/// A snapshot of the node's state.
#[derive(Debug, Clone)]
pub struct Status {
    /// This node.
    pub node_id: NodeId,
    /// The UDP address the node listens on, if it is networked.
    pub listen: Option<std::net::SocketAddr>,
    /// Documents this node holds in its store, as of the last flush (the
    /// engine's `documents_held`; those in memory are `cached_documents`).
    pub documents: u64,
    /// The number after the newest durable change-feed entry: a backup
    /// or snapshot taken after reading it holds every change before it.
    pub feed_end: u64,
    /// Connected peers.
    pub peers: Vec<PeerInfo>,
    /// Node ids allowed to connect.
    pub allowed: Vec<NodeId>,
    /// Members SWIM believes alive, with their advertised addresses.
    pub members: Vec<(NodeId, String)>,
    /// Network traffic.
    pub traffic: Traffic,
    /// Local writes not yet durable.
    pub writes_awaiting_flush: usize,
    /// Messages waiting to be sent.
    pub outbox: usize,
    /// The engine's counters.
    pub metrics: Metrics,
}

impl Status {
    /// Every number the node reports, by section (`node`, `traffic`,
    /// `engine`): `/status` and `/metrics` are both made from this list.
    pub fn figures(&self) -> Vec<(&'static str, Figure)> {
        use Figure as F;
        let count = |n: usize| n as u64;
        let node = [
            F::gauge(
                "peers_connected",
                "murmur_peers_connected",
                "Peers connected now.",
                count(self.peers.len()),
            ),
            F::gauge(
                "peers_allowed",
                "murmur_peers_allowed",
                "Node ids allowed to connect.",
                count(self.allowed.len()),
            ),
            F::gauge(
                "members",
                "murmur_members",
                "Cluster members SWIM membership believes alive.",
                count(self.members.len()),
            ),
            F::gauge(
                "writes_awaiting_flush",
                "murmur_writes_awaiting_flush",
                "Local writes applied but not yet durable (durability lag).",
                count(self.writes_awaiting_flush),
            ),
            F::gauge(
                "outbox",
                "murmur_outbox_messages",
                "Messages queued for peers and not yet sent (send lag).",
                count(self.outbox),
            ),
        ];
        let sections = [
            ("node", node.to_vec()),
            ("traffic", self.traffic.figures()),
            ("engine", self.metrics.figures()),
        ];
        sections
            .into_iter()
            .flat_map(|(section, figures)| figures.into_iter().map(move |figure| (section, figure)))
            .collect()
    }
}
