//! What the engine does at its bounds: a queue smaller than one message, a
//! cache smaller than one document, and a sync message lost with nothing
//! else to repair it.

use std::time::Duration;

use automerge::{transaction::Transactable, ROOT};
use murmur_core::testkit::Cluster;
use murmur_core::Config;

fn without_anti_entropy(config: Config) -> Config {
    Config {
        anti_entropy: false,
        ..config
    }
}

#[test]
fn a_change_over_the_operation_bound_is_refused_whole() {
    let mut cluster = Cluster::with_config(1, 1, |config| Config {
        max_change_ops: 100,
        ..config
    });
    let doc = cluster.create_document(0);
    let heads = cluster.replica(0).heads(doc).unwrap();
    let refused = cluster.try_change(0, doc, |tx| {
        for i in 0..101_i64 {
            tx.put(ROOT, format!("k{i}"), i)?;
        }
        Ok(())
    });
    assert!(matches!(
        refused,
        Err(murmur_core::ReplicaError::ChangeTooLarge {
            ops: 101,
            max_ops: 100
        })
    ));
    assert_eq!(cluster.replica(0).heads(doc).unwrap(), heads, "rolled back");
    let write = cluster
        .try_change(0, doc, |tx| {
            for i in 0..100_i64 {
                tx.put(ROOT, format!("k{i}"), i)?;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(write.ops, 100);
}

#[test]
fn a_queue_bound_below_one_message_still_lets_one_message_through() {
    let mut cluster = Cluster::with_config(2, 1, |config| Config {
        max_outbox_bytes_per_peer: 1,
        ..without_anti_entropy(config)
    });
    let doc = cluster.create_document(0);
    cluster.change(0, doc, |tx| tx.put(ROOT, "x", 1_i64));
    cluster
        .run_until_converged(Duration::from_secs(10))
        .expect("one message at a time gets through");
    for node in 0..2 {
        cluster
            .replica(node)
            .check_invariants()
            .expect("invariants hold");
    }
}

#[test]
fn replicas_whose_cache_holds_no_document_fall_quiet_once_in_sync() {
    let mut cluster = Cluster::with_config(3, 2, |config| Config {
        max_cached_document_bytes: 0,
        ..config
    });
    let docs: Vec<_> = (0..3).map(|_| cluster.create_document(0)).collect();
    cluster
        .run_until_converged(Duration::from_secs(30))
        .expect("every node learns the documents");
    for (i, doc) in docs.iter().enumerate() {
        cluster.change(i % 3, *doc, |tx| tx.put(ROOT, "x", i as i64));
    }
    cluster
        .run_until_converged(Duration::from_secs(30))
        .expect("converges");
    // Documents leave memory after every use; before the fix, each one
    // reloaded from the store forgot it had already answered, and every
    // pair of replicas exchanged empty sync messages forever.
    let sent_before = cluster.traffic().messages;
    cluster.run_for(Duration::from_secs(10));
    let sync_sent: u64 = (0..3)
        .map(|node| cluster.replica(node).metrics().sync_messages_sent)
        .sum();
    let sent = cluster.traffic().messages - sent_before;
    // Ten seconds of anti-entropy with nothing to repair: a few digest
    // messages per node and round, no sync storm.
    assert!(
        sent < 200,
        "{sent} messages in 10 quiet seconds ({sync_sent} sync messages in all)"
    );
    for node in 0..3 {
        assert!(cluster.replica(node).metrics().documents_evicted > 0);
    }
}

#[test]
fn a_lost_sync_message_is_sent_again_when_the_peer_stays_quiet() {
    let mut cluster = Cluster::with_config(2, 3, without_anti_entropy);
    // Node 0's announcement of a new document is lost on the way.
    cluster.block(0, 1);
    let doc = cluster.create_document(0);
    cluster.change(0, doc, |tx| tx.put(ROOT, "x", 1_i64));
    cluster.run_for(Duration::from_millis(100));
    cluster.set_links([], []);
    assert!(
        cluster.replica(1).cached_document(doc).is_err(),
        "not yet there"
    );
    // No anti-entropy and no new change: only the retry timer can repair.
    cluster
        .run_until_converged(Duration::from_secs(10))
        .expect("the quiet conversation is restarted");
    assert!(cluster.replica(0).metrics().sync_retries > 0);
    cluster
        .replica(1)
        .cached_document(doc)
        .expect("node 1 holds it");
}
