//! The event trace: everything that happened in a run, in order, with its
//! virtual time, and its SHA-256 hash.
//!
//! The trace holds every delivered or dropped message (with a hash of its
//! frame), every timer that fired, every acknowledgement, every connection
//! change, every operation event and every fault. The same seed on the same
//! commit gives the same trace, byte for byte: the hash says so in 64 hex
//! digits.

use murmur_core::testkit::{DropReason, TraceEntry, WorldEvent, EPOCH};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::history::{Function, OpType};

/// One traced event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum TraceEvent {
    /// A message arrived.
    Deliver {
        /// Sender.
        from: usize,
        /// Receiver.
        to: usize,
        /// Message kind.
        kind: &'static str,
        /// Frame bytes.
        bytes: usize,
        /// FNV-1a of the frame.
        frame_hash: u64,
    },
    /// A message was lost.
    Drop {
        /// Sender.
        from: usize,
        /// Receiver.
        to: usize,
        /// Message kind.
        kind: &'static str,
        /// Frame bytes.
        bytes: usize,
        /// `loss`, `blocked` or `closed`.
        reason: &'static str,
    },
    /// A replica rejected a message.
    Reject {
        /// Sender.
        from: usize,
        /// Receiver.
        to: usize,
        /// The replica's error.
        error: String,
    },
    /// A replica lost a pushed change (see `WorldEvent::PushLost`).
    PushLost {
        /// Sender.
        from: usize,
        /// Receiver.
        to: usize,
        /// The document.
        doc: String,
        /// The change.
        change: String,
    },
    /// A timer fired.
    Timer {
        /// The node.
        node: usize,
    },
    /// A write was acknowledged.
    Ack {
        /// The node.
        node: usize,
        /// The write id (per incarnation).
        write: u64,
        /// `applied`, `durable` or `replicated(k)`.
        level: String,
    },
    /// A connection opened.
    Connect {
        /// One end.
        a: usize,
        /// The other.
        b: usize,
    },
    /// A connection closed.
    Disconnect {
        /// One end.
        a: usize,
        /// The other.
        b: usize,
    },
    /// A document load landed on a node (or the store failed to read it).
    Load {
        /// The node.
        node: usize,
        /// The document.
        doc: String,
        /// Whether the store read it.
        ok: bool,
    },
    /// A node's group commit completed (or failed).
    Flush {
        /// The node.
        node: usize,
        /// Whether it succeeded.
        ok: bool,
    },
    /// A node's store failed inside an engine call and the node crashed.
    StorageCrash {
        /// The node.
        node: usize,
        /// Unflushed batches the store kept.
        kept: usize,
    },
    /// An operation event (see the history for its value).
    Op {
        /// The operation.
        op: usize,
        /// The node.
        node: usize,
        /// Invoke, ok, fail, info.
        kind: OpType,
        /// What it does.
        f: Function,
        /// FNV-1a of the event's value as JSON.
        value_hash: u64,
    },
    /// A fault window opened.
    FaultStart {
        /// The fault.
        fault: String,
    },
    /// A fault window closed.
    FaultEnd {
        /// The fault.
        fault: String,
    },
    /// A phase began: `setup`, `chaos`, `liveness`, `final`.
    Phase {
        /// Its name.
        name: &'static str,
    },
}

/// One line of the trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceLine {
    /// Virtual milliseconds since the run began.
    pub time_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: TraceEvent,
}

/// Hashes the trace as it goes, and keeps it if asked.
pub struct TraceRecorder {
    hasher: Sha256,
    lines: Option<Vec<TraceLine>>,
    events: u64,
}

/// Milliseconds since the run began.
pub fn run_ms(time: murmur_core::Time) -> u64 {
    time.as_millis().saturating_sub(EPOCH.as_millis())
}

impl TraceRecorder {
    /// A recorder that keeps the lines if `keep`.
    pub fn new(keep: bool) -> TraceRecorder {
        TraceRecorder {
            hasher: Sha256::new(),
            lines: keep.then(Vec::new),
            events: 0,
        }
    }

    /// Records an event at `time_ms`.
    pub fn record(&mut self, time_ms: u64, event: TraceEvent) {
        self.events += 1;
        self.hasher.update(time_ms.to_le_bytes());
        feed(&mut self.hasher, &event);
        if let Some(lines) = self.lines.as_mut() {
            lines.push(TraceLine { time_ms, event });
        }
    }

    /// Records a world event.
    pub fn record_world(&mut self, entry: &TraceEntry) {
        self.record(run_ms(entry.time), from_world(&entry.event));
    }

    /// How many events were recorded.
    pub fn len(&self) -> u64 {
        self.events
    }

    /// True if none were.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// The hash (hex) and the lines kept.
    pub fn finish(self) -> (String, Vec<TraceLine>) {
        let digest = self.hasher.finalize();
        let hex = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        (hex, self.lines.unwrap_or_default())
    }
}

fn from_world(event: &WorldEvent) -> TraceEvent {
    match event {
        WorldEvent::Delivered {
            from,
            to,
            kind,
            bytes,
            frame_hash,
        } => TraceEvent::Deliver {
            from: *from,
            to: *to,
            kind,
            bytes: *bytes,
            frame_hash: *frame_hash,
        },
        WorldEvent::Dropped {
            from,
            to,
            kind,
            bytes,
            reason,
        } => TraceEvent::Drop {
            from: *from,
            to: *to,
            kind,
            bytes: *bytes,
            reason: match reason {
                DropReason::Loss => "loss",
                DropReason::Blocked => "blocked",
                DropReason::Closed => "closed",
                DropReason::QueueFull => "queue-full",
            },
        },
        WorldEvent::Rejected { from, to, error } => TraceEvent::Reject {
            from: *from,
            to: *to,
            error: error.clone(),
        },
        WorldEvent::PushLost {
            from,
            to,
            doc,
            change,
        } => TraceEvent::PushLost {
            from: *from,
            to: *to,
            doc: doc.to_string(),
            change: change.to_string(),
        },
        WorldEvent::Timer { node } => TraceEvent::Timer { node: *node },
        WorldEvent::Acknowledged {
            node, write, level, ..
        } => TraceEvent::Ack {
            node: *node,
            write: write.0,
            level: match level {
                murmur_core::AckLevel::Applied => "applied".to_owned(),
                murmur_core::AckLevel::Durable => "durable".to_owned(),
                murmur_core::AckLevel::Replicated(copies) => format!("replicated({copies})"),
            },
        },
        WorldEvent::Connected { a, b } => TraceEvent::Connect { a: *a, b: *b },
        WorldEvent::Disconnected { a, b } => TraceEvent::Disconnect { a: *a, b: *b },
        WorldEvent::StorageCrashed { node, kept } => TraceEvent::StorageCrash {
            node: *node,
            kept: *kept,
        },
        WorldEvent::Flushed { node, ok } => TraceEvent::Flush {
            node: *node,
            ok: *ok,
        },
        WorldEvent::Loaded { node, doc, ok } => TraceEvent::Load {
            node: *node,
            doc: doc.to_string(),
            ok: *ok,
        },
    }
}

fn feed_str(hasher: &mut Sha256, text: &str) {
    hasher.update((text.len() as u64).to_le_bytes());
    hasher.update(text.as_bytes());
}

fn feed_numbers(hasher: &mut Sha256, tag: u8, numbers: &[u64]) {
    hasher.update([tag]);
    for number in numbers {
        hasher.update(number.to_le_bytes());
    }
}

/// A canonical encoding of `event` into the hash: a tag byte, then each
/// field (numbers little-endian, strings length-prefixed).
fn feed(hasher: &mut Sha256, event: &TraceEvent) {
    match event {
        TraceEvent::Deliver {
            from,
            to,
            kind,
            bytes,
            frame_hash,
        } => {
            feed_numbers(
                hasher,
                1,
                &[*from as u64, *to as u64, *bytes as u64, *frame_hash],
            );
            feed_str(hasher, kind);
        }
        TraceEvent::Drop {
            from,
            to,
            kind,
            bytes,
            reason,
        } => {
            feed_numbers(hasher, 2, &[*from as u64, *to as u64, *bytes as u64]);
            feed_str(hasher, kind);
            feed_str(hasher, reason);
        }
        TraceEvent::Reject { from, to, error } => {
            feed_numbers(hasher, 3, &[*from as u64, *to as u64]);
            feed_str(hasher, error);
        }
        TraceEvent::Timer { node } => feed_numbers(hasher, 4, &[*node as u64]),
        TraceEvent::Ack { node, write, level } => {
            feed_numbers(hasher, 5, &[*node as u64, *write]);
            feed_str(hasher, level);
        }
        TraceEvent::Connect { a, b } => feed_numbers(hasher, 6, &[*a as u64, *b as u64]),
        TraceEvent::Disconnect { a, b } => feed_numbers(hasher, 7, &[*a as u64, *b as u64]),
        TraceEvent::Op {
            op,
            node,
            kind,
            f,
            value_hash,
        } => {
            let numbers = [
                *op as u64,
                *node as u64,
                *kind as u64,
                *f as u64,
                *value_hash,
            ];
            feed_numbers(hasher, 8, &numbers);
        }
        TraceEvent::FaultStart { fault } => {
            feed_numbers(hasher, 9, &[]);
            feed_str(hasher, fault);
        }
        TraceEvent::FaultEnd { fault } => {
            feed_numbers(hasher, 10, &[]);
            feed_str(hasher, fault);
        }
        TraceEvent::Phase { name } => {
            feed_numbers(hasher, 11, &[]);
            feed_str(hasher, name);
        }
        TraceEvent::StorageCrash { node, kept } => {
            feed_numbers(hasher, 12, &[*node as u64, *kept as u64]);
        }
        TraceEvent::Flush { node, ok } => {
            feed_numbers(hasher, 13, &[*node as u64, u64::from(*ok)]);
        }
        TraceEvent::Load { node, doc, ok } => {
            feed_numbers(hasher, 14, &[*node as u64, u64::from(*ok)]);
            feed_str(hasher, doc);
        }
        TraceEvent::PushLost {
            from,
            to,
            doc,
            change,
        } => {
            feed_numbers(hasher, 15, &[*from as u64, *to as u64]);
            feed_str(hasher, doc);
            feed_str(hasher, change);
        }
    }
}
