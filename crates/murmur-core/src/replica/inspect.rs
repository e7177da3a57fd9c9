//! The engine's internal invariants, checked by the simulator after every
//! step.

use super::Replica;

impl Replica {
    /// Checks the engine's internal invariants, cheaply (O(documents in
    /// memory + queued messages)): the simulator calls it after every step.
    /// `Err` names the first one broken; that is always a bug in the engine.
    ///
    /// - the cache's byte total is the sum of its entries, and the cache
    ///   lists exactly the documents in memory;
    /// - each peer's queued bytes are what is queued for it, and nothing is
    ///   queued for a peer that is not connected;
    /// - unflushed state (dirty documents, writes awaiting their flush,
    ///   dirty sync states) implies a scheduled flush, and every dirty
    ///   document, and every one the flush in flight writes, is in memory
    ///   (evicting one would lose it).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.docs.check()?;
        self.check_queues()?;
        self.retries.check()?;
        self.creations.check(
            |doc| self.docs.get(doc).is_some_and(|d| d.heads().is_empty()),
            |doc| self.durability.is_dirty(doc),
        )?;
        self.durability.check(
            |doc| self.docs.contains_key(doc) || self.is_deleted(doc),
            |doc| self.docs.is_rebuilding(doc),
        )
    }

    /// Roughly how many entries [`Replica::check_invariants`] walks:
    /// documents in memory, watched sync conversations, queued messages.
    /// A caller checking after every step can space its checks by it.
    pub fn invariant_check_size(&self) -> usize {
        self.docs.len() + self.retries.len() + self.outbox.len()
    }

    pub(super) fn check_queues(&self) -> Result<(), String> {
        self.outbox.check(|peer| self.peers.contains(peer))
    }

    /// Messages waiting in the outbox.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }
}
