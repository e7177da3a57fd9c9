//! Patches for observed documents come from the changes just applied, and
//! say the same as a diff of the whole document would.

use automerge::{transaction::Transactable, ObjType, ReadDoc, ROOT};
use murmur_core::{Config, Event, Replica, Time};
use murmur_store::MemStore;
use murmur_wire::NodeId;

fn pair() -> (Replica, Replica, NodeId, NodeId, Time) {
    let now = Time::from_millis(1_700_000_000_000);
    let (a, b) = (NodeId([1; 32]), NodeId([2; 32]));
    let mut alice = Replica::open(Config::new(a), Box::new(MemStore::new()), now).unwrap();
    let mut bob = Replica::open(Config::new(b), Box::new(MemStore::new()), now).unwrap();
    alice.handle_peer_up(now, b);
    bob.handle_peer_up(now, a);
    (alice, bob, a, b, now)
}

fn deliver(alice: &mut Replica, bob: &mut Replica, a: NodeId, b: NodeId, now: Time) {
    loop {
        let mut delivered = false;
        while let Some(t) = alice.poll_transmit() {
            bob.handle_message(now, a, t.message).unwrap();
            delivered = true;
        }
        while let Some(t) = bob.poll_transmit() {
            alice.handle_message(now, b, t.message).unwrap();
            delivered = true;
        }
        if !delivered {
            break;
        }
    }
}

/// The patches of every `DocumentChanged` event queued on `replica`.
fn patches(replica: &mut Replica) -> Vec<Option<Vec<automerge::Patch>>> {
    let mut all = Vec::new();
    while let Some(event) = replica.poll_event() {
        if let Event::DocumentChanged { patches, .. } = event {
            all.push(patches);
        }
    }
    all
}

#[test]
fn an_observed_document_reports_what_each_change_did_local_and_remote() {
    let (mut alice, mut bob, a, b, now) = pair();
    let doc = alice.create_document(now);
    deliver(&mut alice, &mut bob, a, b, now);
    alice.observe(doc, true);
    bob.observe(doc, true);
    patches(&mut alice);
    patches(&mut bob);

    let before = bob.cached_document(doc).unwrap().get_heads();
    alice
        .handle_local_change(now, doc, |tx| {
            tx.put(ROOT, "title", "groceries")?;
            let text = tx.put_object(ROOT, "notes", ObjType::Text)?;
            tx.splice_text(&text, 0, 0, "milk")
        })
        .unwrap();
    let local = patches(&mut alice);
    assert_eq!(local.len(), 1);
    assert_eq!(local[0].as_ref().map(Vec::len), Some(3), "{local:?}");

    deliver(&mut alice, &mut bob, a, b, now);
    let remote: Vec<automerge::Patch> = patches(&mut bob).into_iter().flatten().flatten().collect();
    let after = bob.cached_document(doc).unwrap().get_heads();
    // The same as diffing the whole document, without walking it.
    assert_eq!(
        remote,
        bob.cached_document(doc).unwrap().diff(&before, &after)
    );
}

#[test]
fn an_unobserved_document_costs_no_patches_and_a_failed_change_leaves_none() {
    let (mut alice, _bob, _a, _b, now) = pair();
    let doc = alice.create_document(now);
    alice
        .handle_local_change(now, doc, |tx| tx.put(ROOT, "x", 1_i64))
        .unwrap();
    assert_eq!(patches(&mut alice), vec![None]);

    alice.observe(doc, true);
    let failed = alice.handle_local_change(now, doc, |tx| {
        tx.put(ROOT, "half", 1_i64)?;
        tx.insert(ROOT, 0, "a map has no index")
    });
    assert!(failed.is_err());
    assert!(
        patches(&mut alice).is_empty(),
        "a rolled-back change reports nothing"
    );
    assert!(alice
        .cached_document(doc)
        .unwrap()
        .get(ROOT, "half")
        .unwrap()
        .is_none());
}
