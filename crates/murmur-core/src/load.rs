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
