//! Errors of the replication engine.

use murmur_store::StoreError;
use murmur_wire::{DocumentId, NodeId};

/// What a replica call can fail with. Each variant says whether state
/// changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// Storage failed. For `open` nothing was loaded; for a flush the writes
    /// stay in memory, unacknowledged, and the flush is retried.
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
    /// No document with this id is held. Nothing changed.
    #[error("unknown document {0}")]
    UnknownDocument(DocumentId),
    /// The document was deleted (on this node or another): its content is
    /// gone and it cannot be changed or made again.
    #[error("document {0} was deleted")]
    Deleted(DocumentId),
    /// A document with this id exists here already (restoring one under
    /// its id: merge into it instead).
    #[error("document {0} exists on this node already")]
    DocumentExists(DocumentId),
    /// The document's stored data does not load; it is set aside
    /// (quarantined) and its stored bytes are left as they are.
    #[error("document {doc} is corrupt in storage and was set aside: {reason}")]
    CorruptDocument {
        /// The document.
        doc: DocumentId,
        /// What failed when loading it.
        reason: String,
    },
    /// A message came from a peer that is not connected. Nothing changed.
    #[error("message from {0:?}, which is not a connected peer")]
    PeerNotConnected(NodeId),
    /// The document is stored but not in memory: its load was requested
    /// ([`crate::Replica::poll_load`]). Nothing changed; retry once
    /// [`crate::Replica::handle_document_loaded`] has taken it.
    #[error("document {0} is loading; retry once it has loaded")]
    Loading(DocumentId),
    /// A peer sent bytes that are not valid Automerge data. Stored state
    /// stays valid, but "nothing changed" is not promised: a document this
    /// node did not hold may now exist (empty), and a sync message may have
    /// applied the changes before the bad one. The driver may count it
    /// against the peer.
    #[error("peer {peer:?} sent an invalid {what} for document {doc}: {reason}")]
    InvalidPeerData {
        /// The peer.
        peer: NodeId,
        /// The document.
        doc: DocumentId,
        /// "change" or "sync message".
        what: &'static str,
        /// The decoder's words.
        reason: String,
    },
    /// A peer sent a membership packet that does not decode. Membership
    /// state may have taken what preceded the fault; nothing else changed.
    #[error("peer {peer:?} sent an invalid membership packet: {reason}")]
    InvalidMembership {
        /// The peer.
        peer: NodeId,
        /// foca's words.
        reason: String,
    },
    /// A peer sent a reconciliation digest message that breaks the
    /// protocol (a node outside the trie, a leaf outside its bucket, ...).
    /// Nothing changed.
    #[error("peer {peer:?} sent an invalid digest message: {reason}")]
    InvalidDigest {
        /// The peer.
        peer: NodeId,
        /// What is wrong with it.
        reason: String,
    },
    /// The application's change function failed; the transaction was rolled
    /// back and nothing changed.
    #[error("the change was rolled back: {0}")]
    ChangeRejected(#[source] automerge::AutomergeError),
    /// Automerge bytes from outside (a saved document, or changes) that do
    /// not decode or cannot join this document: nothing changed.
    #[error("the Automerge data cannot be merged: {reason}")]
    ForeignData {
        /// What is wrong with it.
        reason: String,
    },
    /// The change holds more Automerge operations than
    /// [`crate::Config::max_change_ops`]: it was rolled back and nothing
    /// changed. Split it into several changes.
    #[error("the change holds {ops} operations, more than the limit of {max_ops}: split it into smaller changes")]
    ChangeTooLarge {
        /// Operations in the refused change.
        ops: usize,
        /// The limit.
        max_ops: usize,
    },
    /// A call that flushes on the calling thread ([`crate::Replica::flush_now`],
    /// [`crate::Replica::close`]) came while a flush handed out by
    /// [`crate::Replica::poll_flush`] was still in flight. Nothing changed:
    /// complete that one first.
    #[error("a flush is still in flight; complete it first")]
    FlushInFlight,
    /// The disk holding the store has less free space than
    /// [`crate::Config::min_free_bytes`]: new local writes are refused
    /// (nothing changed) until space is freed. Reads, replication and
    /// flushes of what the node holds go on.
    #[error(
        "the disk is nearly full ({free_bytes} bytes free, {min_free_bytes} kept in reserve): \
         the write was refused; free some space and retry"
    )]
    DiskFull {
        /// Free bytes the driver last measured.
        free_bytes: u64,
        /// The watermark.
        min_free_bytes: u64,
    },
}
