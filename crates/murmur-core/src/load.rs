//! Document loads as effects: the engine asks for a document, the driver
//! reads and decodes it off the engine's path and hands it back.
//!
//! A document out of memory is read from the store and assembled from its
//! snapshot and chunks: for a large document that is seconds of decoding.
//! The engine never does it inline. When an input needs a document that
//! is stored but not in memory, the engine requests its load, parks the
//! input (a peer's message, a sync it owes, a heads report), and goes on
//! with every other document. [`Replica::poll_load`](crate::Replica::poll_load)
//! hands out the [`Load`]; the driver runs [`Load::run`] on a blocking
//! thread and gives the [`Loaded`] document to
//! [`Replica::handle_document_loaded`](crate::Replica::handle_document_loaded),
//! which caches it and replays what was parked, in arrival order.
//!
//! A local change or read of such a document is refused with
//! [`ReplicaError::Loading`](crate::ReplicaError::Loading): the driver
//! parks the request itself and retries it once the document has loaded.
//!
//! While a document loads, the engine writes none of its keys (nothing
//! about it runs until the load lands), so the load may read the store at
//! any time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use automerge::ActorId;
use murmur_store::{Storage, StoreError};
use murmur_wire::{DocumentId, Message, NodeId};

use crate::document::{Document, LoadError};

/// One document for the driver to load: run it with [`Load::run`] on a
/// thread that may block, then hand the result to
/// [`Replica::handle_document_loaded`](crate::Replica::handle_document_loaded).
///
/// Dropping it unrun (a crash) loses nothing: the document stays stored.
pub struct Load {
    doc: DocumentId,
    store: Arc<dyn Storage>,
    actor: ActorId,
}

impl std::fmt::Debug for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Load").field("doc", &self.doc).finish()
    }
}

impl Load {
    pub(crate) fn new(doc: DocumentId, store: Arc<dyn Storage>, actor: ActorId) -> Self {
        Load { doc, store, actor }
    }

    /// The document to load.
    pub fn doc(&self) -> DocumentId {
        self.doc
    }

    /// Reads and decodes the document. Blocks on the store and costs CPU
    /// in proportion to the document's history: call it off the engine's
    /// path.
    pub fn run(self) -> Loaded {
        let result = Document::load(&*self.store, self.doc, self.actor);
        Loaded {
            doc: self.doc,
            result,
        }
    }
}

/// A document read by [`Load::run`] (or why it could not be), for
/// [`Replica::handle_document_loaded`](crate::Replica::handle_document_loaded).
pub struct Loaded {
    pub(crate) doc: DocumentId,
    pub(crate) result: Result<Document, LoadError>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("doc", &self.doc)
            .field("ok", &self.result.is_ok())
            .finish()
    }
}

impl Loaded {
    /// The document it is.
    pub fn doc(&self) -> DocumentId {
        self.doc
    }

    /// A load of `doc` that could not run (its thread panicked, say): the
    /// engine takes it as a storage failure.
    pub fn failed(doc: DocumentId, reason: impl Into<String>) -> Self {
        Loaded {
            doc,
            result: Err(LoadError::Store(StoreError::Backend(reason.into()))),
        }
    }
}

/// Whether a document is in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// In memory: a change or read of it runs now.
    Resident,
    /// Stored, and loading: [`Replica::poll_load`](crate::Replica::poll_load)
    /// hands out (or has handed out) its [`Load`]. Retry once it has
    /// landed.
    Loading,
}

/// An input waiting for its document to load.
#[derive(Debug)]
pub(crate) enum Parked {
    /// A peer's message about the document.
    Message { from: NodeId, message: Message },
    /// A sync message owed to `peer`.
    SyncWith { peer: NodeId, reset: bool },
    /// The document differs from `peer`'s (reconciliation found it).
    Reconcile { peer: NodeId },
    /// `peer` is owed the heads a flush made durable.
    OwedHeads { peer: NodeId },
}

impl Parked {
    /// The peer it concerns: parked inputs for a peer that went down are
    /// dropped with its connection.
    pub(crate) fn peer(&self) -> NodeId {
        match self {
            Parked::Message { from, .. } => *from,
            Parked::SyncWith { peer, .. }
            | Parked::Reconcile { peer }
            | Parked::OwedHeads { peer } => *peer,
        }
    }
}

/// A document waiting to load.
#[derive(Debug, Default)]
struct Waiting {
    /// Inputs to replay once it has loaded, in arrival order.
    parked: Vec<Parked>,
    /// The driver asked for it ([`crate::Replica::request_load`]) and waits
    /// for it: the load is kept even if no input is parked.
    wanted: bool,
}

/// What [`Loads::park`] did with an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parking {
    /// It waits for the document.
    Parked,
    /// Too many wait already: it was dropped.
    Dropped,
    /// The document is not loading: nothing was done with it.
    NotLoading,
}

/// The documents waiting to load: requested, handed out, and the inputs
/// parked until they land.
#[derive(Default)]
pub(crate) struct Loads {
    waiting: BTreeMap<DocumentId, Waiting>,
    /// Requested and not yet handed out, oldest first.
    queue: VecDeque<DocumentId>,
    /// Handed out and not landed.
    in_flight: BTreeSet<DocumentId>,
    /// Inputs parked, all documents together.
    parked: usize,
    /// Queued loads not to hand out before the flush in flight lands (a
    /// document rebuilt while that flush writes its keys).
    held: BTreeSet<DocumentId>,
}

impl Loads {
    /// True while `doc`'s load is requested or out.
    pub(crate) fn is_loading(&self, doc: &DocumentId) -> bool {
        self.waiting.contains_key(doc)
    }

    /// True while no load is requested or out.
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Requests `doc`'s load (it is stored, not in memory, not loading).
    pub(crate) fn request(&mut self, doc: DocumentId) {
        self.waiting.insert(doc, Waiting::default());
        self.queue.push_back(doc);
    }

    /// The driver waits for `doc`: its load is kept with no input parked.
    pub(crate) fn want(&mut self, doc: DocumentId) {
        if let Some(waiting) = self.waiting.get_mut(&doc) {
            waiting.wanted = true;
        }
    }

    /// Parks `input` until `doc` lands, unless `max` inputs wait already.
    /// A load nobody waits for any more then gives up its place.
    pub(crate) fn park(&mut self, doc: DocumentId, input: Parked, max: usize) -> Parking {
        let full = self.parked >= max.max(1);
        let Some(waiting) = self.waiting.get_mut(&doc) else {
            return Parking::NotLoading;
        };
        if full {
            if waiting.parked.is_empty() && !waiting.wanted && !self.in_flight.contains(&doc) {
                self.waiting.remove(&doc);
                self.queue.retain(|queued| *queued != doc);
            }
            return Parking::Dropped;
        }
        waiting.parked.push(input);
        self.parked += 1;
        Parking::Parked
    }

    /// The next load to hand out, if fewer than `max_in_flight` are out
    /// (held ones keep their place in the queue).
    pub(crate) fn next(&mut self, max_in_flight: usize) -> Option<DocumentId> {
        if self.in_flight.len() >= max_in_flight.max(1) {
            return None;
        }
        let position = self.queue.iter().position(|doc| !self.held.contains(doc))?;
        let doc = self.queue.remove(position)?;
        self.in_flight.insert(doc);
        Some(doc)
    }

    /// Keeps `doc`'s queued load until [`Loads::release_held`].
    pub(crate) fn hold(&mut self, doc: DocumentId) {
        self.held.insert(doc);
    }

    /// The flush in flight landed: held loads may go.
    pub(crate) fn release_held(&mut self) {
        self.held.clear();
    }

    /// Takes `doc`'s requested load out of the queue to run now (on the
    /// caller's thread); false if it is out already or held.
    pub(crate) fn take_now(&mut self, doc: DocumentId) -> bool {
        if self.in_flight.contains(&doc) || self.held.contains(&doc) {
            return false;
        }
        self.queue.retain(|queued| *queued != doc);
        self.in_flight.insert(doc);
        true
    }

    /// `doc`'s load landed: the inputs that waited, in arrival order;
    /// `None` if that load was not out (a stale one, to ignore).
    pub(crate) fn land(&mut self, doc: DocumentId) -> Option<Vec<Parked>> {
        if !self.in_flight.remove(&doc) {
            return None;
        }
        let parked = self
            .waiting
            .remove(&doc)
            .map(|waiting| waiting.parked)
            .unwrap_or_default();
        self.parked -= parked.len();
        Some(parked)
    }

    /// Drops the inputs parked for `peer` (its connection closed).
    pub(crate) fn forget_peer(&mut self, peer: NodeId) {
        for waiting in self.waiting.values_mut() {
            let before = waiting.parked.len();
            waiting.parked.retain(|input| input.peer() != peer);
            self.parked -= before - waiting.parked.len();
        }
    }

    /// Checks the bookkeeping: the parked count, every queued or
    /// handed-out load waited for once, nothing loading `in_memory`.
    pub(crate) fn check(&self, in_memory: impl Fn(&DocumentId) -> bool) -> Result<(), String> {
        let parked: usize = self.waiting.values().map(|w| w.parked.len()).sum();
        if parked != self.parked {
            return Err(format!(
                "{parked} inputs are parked, {} counted",
                self.parked
            ));
        }
        if let Some(doc) = self.waiting.keys().find(|doc| in_memory(doc)) {
            return Err(format!("document {doc} is loading but already in memory"));
        }
        let queued = self.queue.iter().chain(&self.in_flight);
        if let Some(doc) = queued.clone().find(|doc| !self.waiting.contains_key(doc)) {
            return Err(format!(
                "a load of {doc} is queued or out but not waited for"
            ));
        }
        // Every queued or handed-out load is waited for (above), once: so
        // every document waiting has its load requested.
        if self.queue.len() + self.in_flight.len() != self.waiting.len() {
            return Err(format!(
                "{} documents wait for loads, {} are queued and {} out",
                self.waiting.len(),
                self.queue.len(),
                self.in_flight.len()
            ));
        }
        Ok(())
    }
}
