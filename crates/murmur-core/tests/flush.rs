//! Group commit as an effect: the engine hands out a flush, the driver
//! writes it and reports back; nothing is durable before that report.

use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::ROOT;
use murmur_core::{AckLevel, Config, Event, NodeId, Replica, ReplicaError, Time, WriteId};
use murmur_store::MemStore;

const NOW: Time = Time::from_millis(1_700_000_000_000);

fn durable_acks(replica: &mut Replica) -> Vec<WriteId> {
    let mut durable = Vec::new();
    while let Some(event) = replica.poll_event() {
        if let Event::Acknowledged {
            write,
            level: AckLevel::Durable,
            ..
        } = event
        {
            durable.push(write);
        }
    }
    durable
}

#[test]
fn a_write_is_durable_only_when_its_flush_completes() {
    let store = MemStore::new();
    let mut replica =
        Replica::open(Config::new(NodeId([1; 32])), Box::new(store.clone()), NOW).unwrap();
    let doc = replica.create_document(NOW);
    let first = replica
        .handle_local_change(NOW, doc, |tx| tx.put(ROOT, "a", 1_i64))
        .unwrap();
    let flush = replica.poll_flush().expect("a flush is due");
    assert!(
        replica.poll_flush().is_none(),
        "one flush in flight at a time"
    );
    // Written while the flush is in flight: it waits for the next one.
    let second = replica
        .handle_local_change(NOW, doc, |tx| tx.put(ROOT, "b", 2_i64))
        .unwrap();
    assert!(durable_acks(&mut replica).is_empty());
    assert_eq!(replica.writes_awaiting_flush(), 2);
    // close/flush_now refuse while a flush is out.
    assert!(matches!(
        replica.flush_now(NOW),
        Err(ReplicaError::FlushInFlight)
    ));

    flush.write().unwrap();
    assert!(
        durable_acks(&mut replica).is_empty(),
        "written but not reported"
    );
    replica.handle_flush_complete(NOW, Ok(()));
    assert_eq!(durable_acks(&mut replica), vec![first.write]);
    assert_eq!(replica.writes_awaiting_flush(), 1);

    // The next one was gathering meanwhile and is due at once.
    replica
        .poll_flush()
        .expect("the next flush")
        .write()
        .unwrap();
    replica.handle_flush_complete(NOW, Ok(()));
    assert_eq!(durable_acks(&mut replica), vec![second.write]);
    assert!(!replica.flush_pending());
}

#[test]
fn a_failed_flush_acknowledges_nothing_and_is_retried() {
    let store = MemStore::new();
    let config = Config {
        flush_retry_delay: Duration::from_millis(100),
        ..Config::new(NodeId([2; 32]))
    };
    let mut replica = Replica::open(config, Box::new(store.clone()), NOW).unwrap();
    let doc = replica.create_document(NOW);
    let write = replica
        .handle_local_change(NOW, doc, |tx| tx.put(ROOT, "a", 1_i64))
        .unwrap();
    store.fail_after(0);
    let result = replica.poll_flush().expect("a flush is due").write();
    assert!(result.is_err());
    replica.handle_flush_complete(NOW, result);
    assert!(durable_acks(&mut replica).is_empty());
    assert_eq!(replica.writes_awaiting_flush(), 1);
    assert_eq!(replica.metrics().flush_failures, 1);
    // Not before the retry delay...
    assert!(replica.poll_flush().is_none());
    // ... then again, on a store that works now.
    store.crash();
    let later = NOW.add(Duration::from_millis(100));
    replica.handle_timeout(later);
    replica.poll_flush().expect("retried").write().unwrap();
    replica.handle_flush_complete(later, Ok(()));
    assert_eq!(durable_acks(&mut replica), vec![write.write]);
    // And what was acknowledged is in the flushed store.
    let reopened = Replica::open(Config::new(NodeId([2; 32])), Box::new(store.clone()), later);
    let reopened = reopened.unwrap();
    let document = reopened.read_document(doc).unwrap();
    assert!(automerge::ReadDoc::get(&*document, ROOT, "a")
        .unwrap()
        .is_some());
}
