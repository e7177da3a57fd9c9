//! The `sync_messages` and `foreign_changes` targets: what a peer sends
//! about documents, handled by a real replica on an in-memory store.

use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ScalarValue, ROOT};
use murmur_core::{Config, Replica, Time};
use murmur_store::MemStore;
use murmur_wire::{DocumentId, Message, NodeId, MAX_CHANGES_PER_PUSH};

use crate::records;

/// The replica under test: node `[1; 32]`, holding one document with a
/// map, a list, a text and a counter, durable, with peer `[2; 32]`
/// connected. Built the same way every time, so a corpus made from it (its
/// document's changes, sync messages about it) stays meaningful.
pub struct PeerFixture {
    /// The replica.
    pub replica: Replica,
    /// Its store, shared with the replica.
    pub store: MemStore,
    /// The document it holds.
    pub doc: DocumentId,
    /// The connected peer.
    pub peer: NodeId,
    /// The replica's clock.
    pub now: Time,
}

impl PeerFixture {
    /// Builds the fixture.
    pub fn new() -> PeerFixture {
        let store = MemStore::new();
        let now = Time::from_millis(1_700_000_000_000);
        let config = Config::new(NodeId([1; 32]));
        let mut replica =
            Replica::open(config, Box::new(store.clone()), now).expect("open an empty store");
        let doc = replica.create_document(now);
        replica
            .handle_local_change(now, doc, |tx| {
                tx.put(ROOT, "title", "groceries")?;
                let items = tx.put_object(ROOT, "items", ObjType::List)?;
                tx.insert(&items, 0, "milk")?;
                let notes = tx.put_object(ROOT, "notes", ObjType::Text)?;
                tx.splice_text(&notes, 0, 0, "buy early")?;
                tx.put(ROOT, "count", ScalarValue::counter(1))
            })
            .expect("the fixture's first change");
        replica.flush_now(now).expect("flush to memory");
        let peer = NodeId([2; 32]);
        replica.handle_peer_up(now, peer);
        let mut fixture = PeerFixture {
            replica,
            store,
            doc,
            peer,
            now,
        };
        fixture.settle();
        fixture
    }

    /// A copy of the fixture's document as it stands.
    pub fn document(&self) -> Automerge {
        self.replica
            .read_document(self.doc)
            .expect("the fixture's document")
            .into_owned()
    }

    /// Delivers `message` from the peer, then lets the replica finish what
    /// it started (loads, flushes). A rejected message is fine: it must
    /// only be rejected cleanly.
    pub fn deliver(&mut self, message: Message) {
        if message.validate().is_err() {
            return;
        }
        let _rejected = self.replica.handle_message(self.now, self.peer, message);
        self.settle();
    }

    /// Lets `millis` pass on the replica's clock and runs its timers.
    pub fn advance(&mut self, millis: u64) {
        self.now = self.now.add(Duration::from_millis(millis));
        self.replica.handle_timeout(self.now);
        self.settle();
    }

    /// Runs the loads and flushes the replica asks for, and drops what it
    /// sends, until it asks for nothing more.
    fn settle(&mut self) {
        for _ in 0..16 {
            let mut busy = false;
            while self.replica.poll_transmit().is_some() || self.replica.poll_event().is_some() {
                busy = true;
            }
            while let Some(load) = self.replica.poll_load() {
                busy = true;
                let _failed = self.replica.handle_document_loaded(self.now, load.run());
            }
            if self.replica.flush_pending() {
                busy = true;
                self.replica.flush_now(self.now).expect("flush to memory");
            }
            if !busy {
                return;
            }
        }
    }

    /// The promises after any input: the replica's invariants and digest
    /// hold, and its store, closed and reopened, gives back every document
    /// it holds with the same heads.
    pub fn check(self) {
        let PeerFixture {
            replica,
            store,
            now,
            ..
        } = self;
        replica.check_invariants().expect("replica invariants");
        replica.check_digest().expect("the stored digest");
        let docs = replica.document_ids().expect("list the documents");
        let heads: Vec<_> = docs
            .iter()
            .map(|doc| replica.read_document(*doc).map(|d| d.get_heads()))
            .collect();
        replica.close(now).expect("close to memory");
        let mut reopened = Replica::open(Config::new(NodeId([1; 32])), Box::new(store), now)
            .expect("the store reopens");
        for (doc, before) in docs.iter().zip(heads) {
            let before = before.expect("a held document reads");
            reopened.load_now(now, *doc).expect("a held document loads");
            let after = reopened.cached_document(*doc).expect("loaded").get_heads();
            assert_eq!(before, after, "{doc} reopened with other heads");
        }
    }
}

impl Default for PeerFixture {
    fn default() -> Self {
        PeerFixture::new()
    }
}

/// A document id the fixture does not hold (tag bit 0x80 picks it).
pub const UNKNOWN_DOC: DocumentId = DocumentId([0x42; 16]);

fn target_doc(fixture: &PeerFixture, tag: u8) -> DocumentId {
    if tag & 0x80 == 0 {
        fixture.doc
    } else {
        UNKNOWN_DOC
    }
}

/// Records: tag `0`/`0x80` a sync message about the held/unknown
/// document, `1` lets time pass (the first byte × 100 ms), `2` drops and
/// reconnects the peer.
pub fn sync_messages(data: &[u8]) {
    let mut fixture = PeerFixture::new();
    for (tag, bytes) in records(data).take(64) {
        match tag & 0x7f {
            0 => {
                let doc = target_doc(&fixture, tag);
                fixture.deliver(Message::Sync {
                    doc,
                    message: bytes.to_vec(),
                });
            }
            1 => fixture.advance(u64::from(bytes.first().copied().unwrap_or(1)) * 100),
            2 => reconnect(&mut fixture),
            _ => {}
        }
    }
    fixture.check();
}

/// Records: tag `0`/`0x80` one change for the held/unknown document (runs
/// of them go in one push), `1` ends a push, `2` lets time pass.
pub fn foreign_changes(data: &[u8]) {
    let mut fixture = PeerFixture::new();
    let mut push: Vec<Vec<u8>> = Vec::new();
    let mut push_doc = fixture.doc;
    for (tag, bytes) in records(data).take(256) {
        match tag & 0x7f {
            0 => {
                let doc = target_doc(&fixture, tag);
                if doc != push_doc || push.len() == MAX_CHANGES_PER_PUSH {
                    send_push(&mut fixture, push_doc, &mut push);
                }
                push_doc = doc;
                push.push(bytes.to_vec());
            }
            1 => send_push(&mut fixture, push_doc, &mut push),
            2 => fixture.advance(u64::from(bytes.first().copied().unwrap_or(1)) * 100),
            _ => {}
        }
    }
    send_push(&mut fixture, push_doc, &mut push);
    fixture.check();
}

fn send_push(fixture: &mut PeerFixture, doc: DocumentId, push: &mut Vec<Vec<u8>>) {
    if !push.is_empty() {
        let changes = std::mem::take(push);
        fixture.deliver(Message::Changes { doc, changes });
    }
}

fn reconnect(fixture: &mut PeerFixture) {
    fixture.replica.handle_peer_down(fixture.now, fixture.peer);
    fixture.replica.handle_peer_up(fixture.now, fixture.peer);
    fixture.settle();
}
