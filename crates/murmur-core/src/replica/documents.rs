//! The documents a replica holds: which are in memory, loading them as
//! effects (with the inputs that wait for them), reading any of them, and
//! evicting cold ones.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use automerge::{ChangeHash, ReadDoc};
use murmur_store::layout;
use murmur_wire::{DocumentId, NodeId};

use super::Replica;
use crate::digest::{self};
use crate::document::{Document, LoadError, Unsaved};
use crate::load::{Load, Loaded, Parked, Parking, Residency};
use crate::{FaultInjection, ReplicaError, Time};

impl Replica {
    /// Asks for `doc` to be in memory, for a change or read of it:
    /// [`Residency::Resident`] if it is (counting a use), otherwise
    /// [`Residency::Loading`]: its [`Load`] is handed out by
    /// [`Replica::poll_load`], and the caller retries once
    /// [`Replica::handle_document_loaded`] has taken it. Fails if this node
    /// does not hold `doc` or it is quarantined.
    pub fn request_load(&mut self, doc: DocumentId) -> Result<Residency, ReplicaError> {
        match self.resident(doc) {
            Ok(true) => Ok(Residency::Resident),
            Ok(false) => Err(ReplicaError::UnknownDocument(doc)),
            Err(ReplicaError::Loading(_)) => {
                self.docs.loads_mut().want(doc);
                Ok(Residency::Loading)
            }
            Err(error) => Err(error),
        }
    }

    /// A document load handed out by [`Replica::poll_load`] landed: the
    /// document is cached (or, if its stored bytes do not load, set aside
    /// as quarantined), and the inputs parked for it run now, in the order
    /// they arrived. An `Err` is the store's failure to read it: the
    /// document stays stored and out of memory, the inputs parked for it
    /// are dropped (repair resends them), and a change or read waiting for
    /// it should fail with this error.
    pub fn handle_document_loaded(
        &mut self,
        now: Time,
        loaded: Loaded,
    ) -> Result<(), ReplicaError> {
        self.observe_clock(now);
        let doc = loaded.doc;
        let _span = tracing::debug_span!("document_loaded", doc = %doc).entered();
        let Some(parked) = self.docs.loads_mut().land(doc) else {
            // Not the load out for it (one from before a `load_now`, say):
            // it may have read the store before a later flush.
            tracing::warn!(doc = %doc, "a document load nobody waits for landed; ignored");
            return Ok(());
        };
        if self.is_deleted(&doc) {
            // Deleted while it loaded: what waited for it is refused as
            // for any deleted document.
            self.docs.take_rebuilding(doc);
            for input in parked {
                self.replay(now, doc, input);
            }
            return Ok(());
        }
        match loaded.result {
            Ok(mut document) => {
                // Nothing about a loading document runs, so it cannot be in
                // memory already; if it were, the one in memory is newer.
                if !self.docs.contains_key(&doc) {
                    let rebuilt = self
                        .docs
                        .take_rebuilding(doc)
                        .map(|unsaved| reapply(&mut document, unsaved));
                    self.docs.insert(doc, document);
                    self.metrics.documents_loaded += 1;
                    self.count_cached();
                    if let Some(result) = rebuilt {
                        self.rebuilt(now, doc, result);
                    }
                }
            }
            Err(LoadError::Automerge(error)) => {
                tracing::error!(doc = %doc, %error, "document does not load; set aside, stored bytes kept");
                self.docs.quarantine(doc, error.to_string());
            }
            Err(LoadError::Store(error)) => {
                tracing::warn!(doc = %doc, %error, dropped = parked.len(), "cannot read document from the store; inputs waiting for it dropped");
                self.metrics.inputs_dropped_loading += parked.len() as u64;
                return Err(error.into());
            }
        }
        for input in parked {
            self.replay(now, doc, input);
        }
        Ok(())
    }

    /// A peer's data broke `doc` in memory (Automerge panicked applying
    /// it, or the document no longer saves what it holds: see
    /// [`crate::foreign`]); `from` is the peer, if the break showed while
    /// applying its data (its message is refused), `None` if it showed only
    /// when saving. The document is dropped from memory, its stored part
    /// reloads (once the flush in flight, which may be writing it, has
    /// landed) and the changes applied since its last durable save are
    /// applied again. Meanwhile its inputs wait as for any load, and its
    /// writes wait for the flush after.
    pub(super) fn rebuild_document(&mut self, doc: DocumentId, from: Option<NodeId>, reason: &str) {
        if self.drop_named(doc) {
            // Nothing of it is stored or unsaved: it is simply dropped.
            tracing::error!(peer = ?from.map(|p| p.short()), doc = %doc, reason, "a peer's data broke a document new here (an Automerge bug); refused it, dropped the document");
            return;
        }
        let Some(document) = self.docs.remove(doc) else {
            return;
        };
        let unsaved = document.into_unsaved();
        let unsaved_changes = unsaved.changes.len();
        match from {
            Some(peer) => tracing::error!(
                peer = %peer.short(), doc = %doc, reason, unsaved = unsaved_changes,
                "a peer's data broke the document in memory (an Automerge bug); refused it, rebuilding the document from the store"
            ),
            None => tracing::error!(
                doc = %doc, reason, unsaved = unsaved_changes,
                "the document no longer saves (an Automerge bug); rebuilding it from the store"
            ),
        }
        self.metrics.documents_rebuilt += 1;
        self.durability.forget_document(doc);
        let flushing = self.durability.flushing_document(doc);
        self.docs.rebuild(doc, unsaved, flushing);
        self.count_cached();
    }

    /// A rebuilt document is back in memory with `result` of applying
    /// again what was unsaved: it is saved with the next flush (which
    /// acknowledges the writes that waited for it).
    fn rebuilt(&mut self, now: Time, doc: DocumentId, result: Result<usize, String>) {
        match result {
            Ok(changes) => {
                tracing::warn!(doc = %doc, changes, "document rebuilt from the store and the changes since its last flush");
            }
            Err(reason) => {
                // Our own and verified changes, on the stored document they
                // were made on: this does not happen, but if it does the
                // document is not trusted either way.
                tracing::error!(doc = %doc, reason, "rebuilding the document failed; set aside");
                self.docs.remove(doc);
                self.docs.quarantine(doc, reason);
                return;
            }
        }
        self.mark_dirty(now, doc);
    }

    /// Loads `doc` on the calling thread if it is stored and not in memory,
    /// blocking for as long as that takes, and runs what waited for it:
    /// for tests, tools and applications that drive a replica from one
    /// thread. A driver that must keep answering uses
    /// [`Replica::poll_load`] instead. Fails if this node does not hold
    /// `doc`, it is quarantined or unreadable, or its load is already
    /// handed out ([`ReplicaError::Loading`]: wait for that one).
    ///
    /// ```
    /// # use murmur_core::{Config, NodeId, Replica, Time};
    /// # use murmur_store::MemStore;
    /// # let store = MemStore::new();
    /// # let now = Time::from_millis(1_700_000_000_000);
    /// let mut replica = Replica::open(Config::new(NodeId([1; 32])), Box::new(store.clone()), now)?;
    /// let doc = replica.create_document(now);
    /// replica.close(now)?;
    /// // Reopened, the document is stored but not in memory.
    /// let mut replica = Replica::open(Config::new(NodeId([1; 32])), Box::new(store), now)?;
    /// assert!(replica.cached_document(doc).is_err());
    /// replica.load_now(now, doc)?;
    /// assert!(replica.cached_document(doc).is_ok());
    /// # Ok::<(), murmur_core::ReplicaError>(())
    /// ```
    pub fn load_now(&mut self, now: Time, doc: DocumentId) -> Result<(), ReplicaError> {
        if self.request_load(doc)? == Residency::Resident {
            return Ok(());
        }
        if !self.docs.loads_mut().take_now(doc) {
            return Err(ReplicaError::Loading(doc));
        }
        let loaded = Load::new(doc, self.store.clone(), self.actor.clone()).run();
        self.handle_document_loaded(now, loaded)?;
        if self.docs.contains_key(&doc) {
            Ok(())
        } else {
            Err(self.missing(doc))
        }
    }

    /// Runs an input that waited for `doc` to load.
    pub(super) fn replay(&mut self, now: Time, doc: DocumentId, input: Parked) {
        if !self.peers.contains(&input.peer()) {
            return;
        }
        match input {
            Parked::Message { from, message } => {
                if let Err(error) = self.dispatch(now, from, message) {
                    tracing::debug!(peer = %from.short(), doc = %doc, %error, "message that waited for its document's load rejected");
                }
            }
            Parked::SyncWith { peer, reset } => self.sync_with(doc, peer, reset),
            Parked::Reconcile { peer } => self.reconcile_document(now, peer, doc),
            Parked::OwedHeads { peer } => self.send_owed_heads(vec![(doc, peer)]),
        }
    }

    /// True while a document load is requested or handed out and has not
    /// landed.
    pub fn loads_pending(&self) -> bool {
        !self.docs.loads().is_empty()
    }

    /// The document `doc`, to read (with [`automerge::ReadDoc`]), if it is
    /// in memory. Documents load lazily and cold ones are evicted, so a
    /// document this node holds may not be: [`Replica::read_document`]
    /// reads any document.
    pub fn cached_document(&self, doc: DocumentId) -> Result<&automerge::Automerge, ReplicaError> {
        match self.docs.get(&doc) {
            Some(document) => Ok(&document.doc),
            None => Err(self.missing(doc)),
        }
    }

    /// The document `doc`, to read: borrowed if it is in memory, otherwise
    /// loaded from the store for this read only (the cache is not changed;
    /// a document out of memory is always fully stored). That load runs on
    /// the calling thread, for as long as it takes: for tests, checkers and
    /// tools. A driver asks with [`Replica::request_load`] and reads with
    /// [`Replica::cached_document`] once the document is in memory.
    pub fn read_document(
        &self,
        doc: DocumentId,
    ) -> Result<Cow<'_, automerge::Automerge>, ReplicaError> {
        if let Some(document) = self.docs.get(&doc) {
            return Ok(Cow::Borrowed(&document.doc));
        }
        if self.docs.is_quarantined(&doc) || self.is_deleted(&doc) {
            return Err(self.missing(doc));
        }
        if !layout::document_exists(&*self.store, doc.as_bytes())? {
            return Err(ReplicaError::UnknownDocument(doc));
        }
        match Document::load(&*self.store, doc, self.actor.clone()) {
            Ok(document) => Ok(Cow::Owned(document.doc)),
            Err(LoadError::Store(error)) => Err(error.into()),
            Err(LoadError::Automerge(error)) => Err(ReplicaError::CorruptDocument {
                doc,
                reason: error.to_string(),
            }),
        }
    }

    /// The ids of the documents in memory now, in order. Documents load
    /// lazily, so this is not every document held:
    /// [`Replica::document_ids`] is.
    pub fn cached_document_ids(&self) -> impl Iterator<Item = DocumentId> + '_ {
        self.docs.keys().copied()
    }

    /// The ids of every document this node holds (stored or in memory;
    /// not quarantined or deleted ones, nor those a peer named that hold
    /// no change here yet), in order. Walks the store's document index:
    /// O(documents), for listing APIs, never for the hot path.
    pub fn document_ids(&self) -> Result<Vec<DocumentId>, ReplicaError> {
        let mut ids: BTreeSet<DocumentId> = layout::list_documents(&*self.store)?
            .into_iter()
            .map(DocumentId::from_bytes)
            .collect();
        let named = |id: &DocumentId| self.creations.is_named(id);
        ids.extend(self.docs.keys().copied().filter(|id| !named(id)));
        ids.retain(|id| !self.docs.is_quarantined(id) && !self.is_deleted(id));
        Ok(ids.into_iter().collect())
    }

    /// A 64-bit fingerprint of `doc`'s heads (the reconciliation digest's
    /// leaf: a hash of the id and the heads), or `None` if this node holds
    /// no change of `doc` (documents with none are not reconciled). Cheap,
    /// even for a document out of memory; equal fingerprints on two nodes
    /// mean equal heads.
    pub fn heads_fingerprint(&self, doc: DocumentId) -> Result<Option<u64>, ReplicaError> {
        if let Some(document) = self.docs.get(&doc) {
            let heads = document.heads();
            return Ok((!heads.is_empty()).then(|| digest::leaf_value(&doc, &heads)));
        }
        if self.docs.is_quarantined(&doc) {
            return Err(self.missing(doc));
        }
        Ok(layout::load_leaf(&*self.store, doc.as_bytes())?)
    }

    /// Documents set aside because their stored data does not load, with
    /// the reason (those found so far: documents load lazily).
    pub fn quarantined(&self) -> &BTreeMap<DocumentId, String> {
        self.docs.quarantined()
    }

    /// The heads of `doc` (loading it on the calling thread for this read
    /// if it is not in memory, like [`Replica::read_document`]).
    pub fn heads(&self, doc: DocumentId) -> Result<Vec<ChangeHash>, ReplicaError> {
        self.read_document(doc).map(|d| d.get_heads())
    }

    /// Brings the gauges of what is in memory up to date.
    pub(super) fn count_cached(&mut self) {
        self.metrics.cached_documents = self.docs.len() as u64;
        self.metrics.cached_document_bytes = self.docs.bytes() as u64;
    }

    pub(super) fn missing(&self, doc: DocumentId) -> ReplicaError {
        if self.is_deleted(&doc) {
            return ReplicaError::Deleted(doc);
        }
        self.docs.missing(doc)
    }

    /// Whether `doc` is in memory, counting a use of it (see
    /// [`Documents::resident`](crate::cache::Documents::resident)).
    pub(super) fn resident(&mut self, doc: DocumentId) -> Result<bool, ReplicaError> {
        if self.is_deleted(&doc) {
            return Err(ReplicaError::Deleted(doc));
        }
        self.docs.resident(&*self.store, doc)
    }

    /// Parks `input` until `doc` (whose load is requested) lands. Past
    /// [`Config::max_parked_inputs`](crate::Config::max_parked_inputs) the input is dropped instead: what it
    /// carried comes again through sync retries and anti-entropy.
    pub(super) fn park(&mut self, doc: DocumentId, input: Parked) {
        let peer = input.peer();
        match self
            .docs
            .loads_mut()
            .park(doc, input, self.config.max_parked_inputs)
        {
            Parking::Parked => self.metrics.inputs_parked += 1,
            Parking::Dropped => {
                self.metrics.inputs_dropped_loading += 1;
                tracing::debug!(doc = %doc, peer = %peer.short(), "too many inputs wait for loads; dropped one, repair will resend it");
            }
            Parking::NotLoading => {}
        }
    }

    pub(super) fn document_mut(&mut self, doc: DocumentId) -> Result<&mut Document, ReplicaError> {
        if !self.resident(doc)? {
            return Err(self.missing(doc));
        }
        self.docs
            .get_mut(&doc)
            .ok_or(ReplicaError::UnknownDocument(doc))
    }

    /// Evicts the least recently used documents that are fully flushed
    /// (and wait for no dependency) until the cache is within its bound.
    /// If documents with unflushed sync states keep it over, a flush is
    /// scheduled so that they can go next time.
    pub(super) fn evict_cold_documents(&mut self, now: Time) {
        let limit = self.config.max_cached_document_bytes;
        if self.docs.bytes() > limit {
            let pinned = self.durability.pinned();
            let evict_pinned = self.config.planted(FaultInjection::EvictDirtyDocuments);
            let mut excess = self.docs.bytes() - limit;
            let mut victims = Vec::new();
            for (doc, bytes) in self.docs.coldest() {
                if excess == 0 {
                    break;
                }
                if pinned.contains(&doc) && !evict_pinned {
                    continue;
                }
                let waits = self
                    .docs
                    .get(&doc)
                    .is_some_and(|d| !d.doc.get_missing_deps(&[]).is_empty());
                if !waits {
                    victims.push(doc);
                    excess = excess.saturating_sub(bytes);
                }
            }
            for doc in victims {
                self.creations.forget(doc);
                self.docs.remove(doc);
                self.metrics.documents_evicted += 1;
            }
            if excess > 0 && self.durability.sync_states_dirty() {
                self.schedule_flush(now);
            }
        }
        self.count_cached();
    }
}

/// Applies `unsaved` (changes applied before a peer's data broke the
/// document, verified then) to `document` as just loaded from the store:
/// how many, or why that failed.
fn reapply(document: &mut Document, unsaved: Unsaved) -> Result<usize, String> {
    let Unsaved { changes, records } = unsaved;
    let count = changes.len();
    let (applied, _) = document.apply_verified(|document| document.doc.apply_changes(changes))?;
    applied.map_err(|error| error.to_string())?;
    // The feed records of those changes were made when they first applied.
    document.restore_records(records);
    Ok(count)
}
