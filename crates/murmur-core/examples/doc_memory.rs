//! Measures what one small document costs in memory once loaded, to check
//! the cache's size estimate (`cache::estimate_bytes`).
//!
//! ```text
//! cargo run --release -p murmur-core --example doc_memory -- 20000
//! ```
//!
//! Writes N small documents (one change each) to a store, reopens the
//! replica on it (nothing loaded), then loads all N (a change that changes
//! nothing loads a document and writes nothing) and reports the growth of
//! the resident set per document.

use std::time::Duration;

use automerge::{transaction::Transactable, ROOT};
use murmur_core::{Config, NodeId, Replica, Time};
use murmur_store::MemStore;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(20_000);
    let mut now = Time::from_millis(1_700_000_000_000);
    let store = MemStore::new();
    let config = Config {
        max_cached_document_bytes: 1 << 20,
        ..Config::new(NodeId([7; 32]))
    };
    let mut ids = Vec::with_capacity(count);
    let mut stored_bytes = 0;
    {
        let mut replica = Replica::open(config.clone(), Box::new(store.clone()), now)?;
        for i in 0..count {
            let doc = replica.create_document(now);
            replica.handle_local_change(now, doc, |tx| tx.put(ROOT, "n", i as i64))?;
            ids.push(doc);
            if i % 1000 == 999 {
                now = now.add(Duration::from_millis(1));
                replica.flush_now(now)?;
                while replica.poll_event().is_some() {}
            }
        }
        replica.flush_now(now)?;
        stored_bytes = replica.metrics().bytes_flushed.max(stored_bytes);
    }
    let config = Config {
        max_cached_document_bytes: usize::MAX,
        ..config
    };
    let mut replica = Replica::open(config, Box::new(store.clone()), now)?;
    let before = rss_kib();
    for doc in &ids {
        replica.handle_local_change(now, *doc, |_| Ok(()))?;
        while replica.poll_event().is_some() {}
    }
    let after = rss_kib();
    replica.handle_timeout(now); // updates the cache gauges
    let metrics = replica.metrics();
    println!(
        "{} documents loaded: resident set grew {} KiB, {:.1} KiB per document \
         (store: {} bytes flushed in all, {:.0} per document); the cache estimated {:.1} KiB each",
        metrics.documents_loaded,
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / count as f64,
        stored_bytes,
        stored_bytes as f64 / count as f64,
        metrics.cached_document_bytes as f64 / 1024.0 / count as f64,
    );
    Ok(())
}
