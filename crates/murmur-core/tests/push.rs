//! Eager pushes batch per peer: changes made in one burst reach each peer
//! in one message per document, however many peers and documents there are.

use automerge::transaction::Transactable;
use automerge::ROOT;
use murmur_core::{Config, Message, NodeId, Replica, Time};
use murmur_store::MemStore;

const NOW: Time = Time::from_millis(1_700_000_000_000);

#[test]
fn a_burst_to_three_peers_and_two_documents_is_one_push_per_peer_and_document() {
    let mut replica =
        Replica::open(Config::new(NodeId([1; 32])), Box::new(MemStore::new()), NOW).unwrap();
    let docs = [replica.create_document(NOW), replica.create_document(NOW)];
    let peers = [NodeId([2; 32]), NodeId([3; 32]), NodeId([4; 32])];
    for peer in peers {
        replica.handle_peer_up(NOW, peer);
    }
    // Whatever connecting queued (reconciliation, sync) goes first.
    while replica.poll_transmit().is_some() {}

    for i in 0..10_i64 {
        let doc = docs[i as usize % 2];
        replica
            .handle_local_change(NOW, doc, |tx| tx.put(ROOT, format!("k{i}"), i))
            .unwrap();
    }
    let mut pushes = Vec::new();
    while let Some(transmit) = replica.poll_transmit() {
        if let Message::Changes { doc, changes } = transmit.message {
            pushes.push((transmit.to, doc, changes.len()));
        }
    }
    pushes.sort();
    let mut expected: Vec<_> = peers
        .iter()
        .flat_map(|peer| docs.iter().map(move |doc| (*peer, *doc, 5)))
        .collect();
    expected.sort();
    assert_eq!(pushes, expected);
}
