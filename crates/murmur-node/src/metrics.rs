//! `GET /metrics`: the node's counters in the Prometheus text format.
//!
//! There is no single "replication lag" number a node can know on its own;
//! three gauges stand for it: `murmur_writes_awaiting_flush` (local writes
//! not yet durable), `murmur_outbox_messages` (messages queued for peers but
//! not yet sent) and `murmur_peer_rtt_seconds` (per peer round trip). A
//! healthy node keeps the first two near zero.

use std::fmt::Write;
use std::time::Duration;

use murmur::Status;

/// The Prometheus text exposition format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family being written.
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(key, value)| format!("{key}=\"{}\"", escape(value)))
                .collect();
            let _ = write!(self.text, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.text, " {value}");
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value as f64);
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders `status` (and the uptime) as Prometheus text.
pub fn render(status: &Status, uptime: Duration) -> String {
    let mut out = Exposition {
        text: String::new(),
    };
    identity(&mut out, status, uptime);
    replication(&mut out, status);
    traffic(&mut out, status);
    storage(&mut out, status);
    out.text
}

fn identity(out: &mut Exposition, status: &Status, uptime: Duration) {
    let node_id = status.node_id.to_string();
    out.family(
        "murmur_info",
        "gauge",
        "This node's id (the value is always 1).",
    );
    out.sample("murmur_info", &[("node_id", &node_id)], 1.0);
    out.gauge(
        "murmur_uptime_seconds",
        "Seconds since the HTTP API started.",
        uptime.as_secs_f64(),
    );
    out.gauge(
        "murmur_documents",
        "Documents this node holds.",
        status.documents as f64,
    );
    out.gauge(
        "murmur_peers_connected",
        "Peers connected now.",
        status.peers.len() as f64,
    );
    out.gauge(
        "murmur_peers_allowed",
        "Node ids allowed to connect.",
        status.allowed.len() as f64,
    );
    out.gauge(
        "murmur_members",
        "Cluster members SWIM membership believes alive.",
        status.members.len() as f64,
    );
    out.family(
        "murmur_peer_rtt_seconds",
        "gauge",
        "Round-trip time estimate per connected peer.",
    );
    for peer in &status.peers {
        let id = peer.id.to_string();
        out.sample(
            "murmur_peer_rtt_seconds",
            &[("peer", &id)],
            peer.rtt.as_secs_f64(),
        );
    }
}

fn replication(out: &mut Exposition, status: &Status) {
    let m = &status.metrics;
    out.counter(
        "murmur_local_changes_total",
        "Changes made on this node (applied locally).",
        m.local_changes,
    );
    out.counter(
        "murmur_changes_pushed_total",
        "Changes sent to peers in eager pushes (one per change per peer).",
        m.changes_pushed,
    );
    out.counter(
        "murmur_changes_received_total",
        "Changes received from peers in eager pushes (duplicates included).",
        m.changes_received,
    );
    out.counter(
        "murmur_sync_messages_sent_total",
        "Automerge sync messages sent (catch-up and anti-entropy).",
        m.sync_messages_sent,
    );
    out.counter(
        "murmur_sync_messages_received_total",
        "Automerge sync messages received.",
        m.sync_messages_received,
    );
    out.counter(
        "murmur_anti_entropy_rounds_total",
        "Anti-entropy (reconciliation) rounds run.",
        m.anti_entropy_rounds,
    );
    out.counter(
        "murmur_sync_restarts_total",
        "Sync conversations restarted because they stopped making progress (a lost message).",
        m.sync_restarts,
    );
    out.counter(
        "murmur_sync_retries_total",
        "Sync conversations restarted by their timer because the peer went quiet.",
        m.sync_retries,
    );
    out.counter(
        "murmur_missing_dependency_syncs_total",
        "Pushed changes that missed dependencies and started a sync.",
        m.missing_dependency_syncs,
    );
    out.counter(
        "murmur_pushes_batched_total",
        "Pushes applied in one batch with an earlier push of the same peer and document.",
        m.pushes_batched,
    );
    out.gauge(
        "murmur_writes_awaiting_flush",
        "Local writes applied but not yet durable (durability lag).",
        status.writes_awaiting_flush as f64,
    );
    out.gauge(
        "murmur_outbox_messages",
        "Messages queued for peers and not yet sent (send lag).",
        status.outbox as f64,
    );
}

fn traffic(out: &mut Exposition, status: &Status) {
    let t = &status.traffic;
    out.counter(
        "murmur_messages_sent_total",
        "Messages sent to peers.",
        t.messages_out,
    );
    out.counter(
        "murmur_messages_received_total",
        "Messages received from peers.",
        t.messages_in,
    );
    out.counter(
        "murmur_bytes_sent_total",
        "Frame bytes sent to peers.",
        t.bytes_out,
    );
    out.counter(
        "murmur_bytes_received_total",
        "Frame bytes received from peers.",
        t.bytes_in,
    );
    out.family(
        "murmur_messages_dropped_total",
        "counter",
        "Messages dropped because a queue was full (anti-entropy carries them later).",
    );
    out.sample(
        "murmur_messages_dropped_total",
        &[("queue", "engine")],
        status.metrics.messages_dropped_backpressure as f64,
    );
    out.sample(
        "murmur_messages_dropped_total",
        &[("queue", "connection")],
        t.dropped_full as f64,
    );
    out.counter(
        "murmur_messages_rejected_total",
        "Messages from peers that the engine rejected.",
        t.rejected,
    );
}

fn storage(out: &mut Exposition, status: &Status) {
    let m = &status.metrics;
    out.counter(
        "murmur_flushes_total",
        "Successful flushes to disk.",
        m.flushes,
    );
    out.counter(
        "murmur_flush_failures_total",
        "Failed flushes (retried).",
        m.flush_failures,
    );
    out.counter(
        "murmur_flushed_bytes_total",
        "Bytes written by flushes.",
        m.bytes_flushed,
    );
    out.counter(
        "murmur_flushed_writes_total",
        "Local writes made durable by flushes (over murmur_flushes_total: writes per fsync).",
        m.writes_flushed,
    );
    out.counter(
        "murmur_compactions_total",
        "Documents compacted into a new snapshot.",
        m.compactions,
    );
    out.gauge(
        "murmur_disk_free_bytes",
        "Free bytes on the data directory's disk, as last measured.",
        m.disk_free_bytes as f64,
    );
    out.gauge(
        "murmur_disk_full",
        "1 while new writes are refused because the disk is nearly full.",
        m.disk_full as f64,
    );
    out.counter(
        "murmur_writes_refused_disk_full_total",
        "Writes refused because the disk was nearly full.",
        m.writes_refused_disk_full,
    );
}
