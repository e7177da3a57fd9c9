//! `GET /metrics`: the node's counters in the Prometheus text format.
//!
//! There is no single "replication lag" number a node can know on its own;
//! three gauges stand for it: `murmur_writes_awaiting_flush` (local writes
//! not yet durable), `murmur_outbox_messages` (messages queued for peers but
//! not yet sent) and `murmur_peer_rtt_seconds` (per peer round trip). A
//! healthy node keeps the first two near zero.

use std::fmt::Write;
use std::time::Duration;

use murmur::{FigureKind, Status};

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
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders `status` (and the uptime) as Prometheus text: every figure of
/// [`Status::figures`], which `/status` shows too, and the two labelled
/// families (the node's id, each peer's round trip).
pub fn render(status: &Status, uptime: Duration) -> String {
    let mut out = Exposition {
        text: String::new(),
    };
    let node_id = status.node_id.to_string();
    out.family(
        "murmur_info",
        "gauge",
        "This node's id (the value is always 1).",
    );
    out.sample("murmur_info", &[("node_id", &node_id)], 1.0);
    out.family(
        "murmur_uptime_seconds",
        "gauge",
        "Seconds since the HTTP API started.",
    );
    out.sample("murmur_uptime_seconds", &[], uptime.as_secs_f64());
    for (_, figure) in status.figures() {
        let kind = match figure.kind {
            FigureKind::Counter => "counter",
            FigureKind::Gauge => "gauge",
        };
        out.family(figure.metric, kind, figure.help);
        out.sample(figure.metric, &[], figure.value as f64);
    }
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
    out.text
}
