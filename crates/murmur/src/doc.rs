//! Handles to documents.

use automerge::transaction::Transaction;
use automerge::{Automerge, AutomergeError, ChangeHash};
use murmur_core::{AckLevel, DocumentId, ReplicaError};
use murmur_net::driver::{ChangeFailed, Command, DocumentChange, DriverHandle};
use tokio::sync::broadcast;

use crate::Error;

/// One document on a node. Cheap to clone; every clone talks to the same
/// node.
#[derive(Clone)]
pub struct DocHandle {
    id: DocumentId,
    handle: DriverHandle,
}

/// What an acknowledged change returns.
#[derive(Debug)]
pub struct Receipt<R> {
    /// The Automerge change made, or `None` if the function changed nothing.
    pub change: Option<ChangeHash>,
    /// What the change function returned.
    pub output: R,
}

impl DocHandle {
    pub(crate) fn new(id: DocumentId, handle: DriverHandle) -> Self {
        DocHandle { id, handle }
    }

    /// The document's id.
    pub fn id(&self) -> DocumentId {
        self.id
    }

    /// Changes the document in one transaction and returns once the change
    /// is durable (flushed to disk). If `f` fails, nothing changes.
    ///
    /// With [`Ack::Replicated(k)`](crate::Ack::Replicated) (through
    /// [`DocHandle::change_with`]) it returns once k peers hold the change
    /// durably too, or fails with [`Error::NotReplicated`] after 30 s: the
    /// change then stays and keeps replicating.
    pub async fn change<R, F>(&self, f: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&mut Transaction<'_>) -> Result<R, AutomergeError> + Send + 'static,
    {
        Ok(self.change_with(AckLevel::Durable, f).await?.output)
    }

    /// Like [`DocHandle::change`], returning once the change reaches `ack`.
    pub async fn change_with<R, F>(&self, ack: AckLevel, f: F) -> Result<Receipt<R>, Error>
    where
        R: Send + 'static,
        F: FnOnce(&mut Transaction<'_>) -> Result<R, AutomergeError> + Send + 'static,
    {
        match self.try_change_with(ack, f).await? {
            Ok(receipt) => Ok(receipt),
            Err(error) => Err(Error::Replica(ReplicaError::ChangeRejected(error))),
        }
    }

    /// Like [`DocHandle::change_with`], for a change function with an error
    /// type of its own: if it fails, nothing changes and its error comes
    /// back as `Ok(Err(error))`; `Err` is the node's.
    pub async fn try_change_with<R, E, F>(
        &self,
        ack: AckLevel,
        f: F,
    ) -> Result<Result<Receipt<R>, E>, Error>
    where
        R: Send + 'static,
        E: Send + 'static,
        F: FnOnce(&mut Transaction<'_>) -> Result<R, E> + Send + 'static,
    {
        let outcome =
            self.handle
                .change(self.id, ack, f)
                .await?
                .map_err(|failed| match failed {
                    ChangeFailed::Rejected(error) => Error::Replica(error),
                    ChangeFailed::NotReplicated(missed) => Error::NotReplicated(missed),
                    other => Error::Change(other.to_string()),
                })?;
        Ok(outcome.map(|receipt| Receipt {
            change: receipt.change,
            output: receipt.output,
        }))
    }

    /// Reads the document.
    pub async fn read<R, F>(&self, f: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&Automerge) -> R + Send + 'static,
    {
        Ok(self.handle.read(self.id, f).await??)
    }

    /// The document's heads.
    pub async fn heads(&self) -> Result<Vec<ChangeHash>, Error> {
        self.read(|doc| doc.get_heads()).await
    }

    /// A stream of this document's changes (local and from peers), from now
    /// on, each with the patches that describe it. While a stream is open
    /// the node records patches as it applies this document's changes
    /// (Automerge's patch log): a subscriber costs work proportional to
    /// what changed, never a walk of the whole document.
    pub async fn changes(&self) -> Result<ChangeStream, Error> {
        let doc = self.id;
        let receiver = self
            .handle
            .request(|reply| Command::Subscribe { doc, reply })
            .await??;
        Ok(ChangeStream { receiver })
    }
}

/// Changes to one document, in order. Bounded: a subscriber that falls too
/// far behind gets [`Error::Lagged`] once and then the newer changes.
pub struct ChangeStream {
    receiver: broadcast::Receiver<DocumentChange>,
}

impl ChangeStream {
    /// The next change; `None` once the node has shut down.
    pub async fn next(&mut self) -> Option<Result<DocumentChange, Error>> {
        match self.receiver.recv().await {
            Ok(change) => Some(Ok(change)),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Err(Error::Lagged(missed))),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}
