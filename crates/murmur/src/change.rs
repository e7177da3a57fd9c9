//! Changes and reads on their way through the driver, typed at both ends,
//! and what a change's caller and a subscriber hear back.

use std::time::Duration;

use automerge::transaction::Transaction;
use automerge::{Automerge, AutomergeError, ChangeHash, Patch};
use murmur_core::{AckLevel, DocumentId, Origin, ReplicaError};
use tokio::sync::oneshot;

/// A local change on its way through the driver, typed at both ends: the
/// driver runs it in a transaction, then tells it the outcome once the
/// change reaches the level asked for, and it answers its caller with the
/// caller's own types. Make one with [`DriverHandle::change`](crate::driver::DriverHandle::change).
pub trait ChangeRequest: Send {
    /// Runs the change in `tx`. An error rolls the transaction back.
    fn run(&mut self, tx: &mut Transaction<'_>) -> Result<(), AutomergeError>;
    /// The message the change carries, if any (history shows it).
    fn message(&mut self) -> Option<String> {
        None
    }
    /// Changes from outside to merge instead of running a change function
    /// (see [`crate::DocHandle::merge`]).
    fn merge(&mut self) -> Option<Vec<automerge::Change>> {
        None
    }
    /// Deletes the document instead (see [`crate::DocHandle::delete`]).
    fn deletes(&self) -> bool {
        false
    }
    /// The outcome: the change made (`None`: the change function changed
    /// nothing), or why the change was not acknowledged.
    fn finish(self: Box<Self>, outcome: Result<Option<ChangeHash>, ChangeFailed>);
}

/// A read on its way through the driver, typed at both ends. Make one with
/// [`DriverHandle::read`](crate::driver::DriverHandle::read).
pub trait ReadRequest: Send {
    /// Reads the document, or hears why it cannot be read.
    fn run(self: Box<Self>, doc: Result<&Automerge, ReplicaError>);
}

/// What [`DriverHandle::change`](crate::driver::DriverHandle::change) answers: the receipt; or `Ok(Err(e))`, the
/// change function refused with its own error `e` and nothing changed; or
/// why the node did not acknowledge the change.
pub type ChangeOutcome<R, E> = Result<Result<ChangeReceipt<R>, E>, ChangeFailed>;

/// A change function with the channel its caller waits on.
pub(crate) struct TypedChange<F, R, E> {
    pub(crate) change: Option<F>,
    pub(crate) message: Option<String>,
    pub(crate) output: Option<Result<R, E>>,
    pub(crate) reply: oneshot::Sender<ChangeOutcome<R, E>>,
}

impl<F, R, E> ChangeRequest for TypedChange<F, R, E>
where
    F: FnOnce(&mut Transaction<'_>) -> Result<R, E> + Send,
    R: Send,
    E: Send,
{
    fn run(&mut self, tx: &mut Transaction<'_>) -> Result<(), AutomergeError> {
        let change = self.change.take().ok_or(AutomergeError::Fail)?;
        let output = change(tx);
        let refused = output.is_err();
        self.output = Some(output);
        if refused {
            // The caller hears its own error from `finish`.
            return Err(AutomergeError::Fail);
        }
        Ok(())
    }

    fn message(&mut self) -> Option<String> {
        self.message.take()
    }

    fn finish(self: Box<Self>, outcome: Result<Option<ChangeHash>, ChangeFailed>) {
        let answer = match (self.output, outcome) {
            (Some(Err(refused)), _) => Ok(Err(refused)),
            (_, Err(failed)) => Err(failed),
            (Some(Ok(output)), Ok(change)) => Ok(Ok(ChangeReceipt { change, output })),
            // A change acknowledged without running: the driver never does
            // this, and the caller is told rather than left waiting.
            (None, Ok(_)) => Err(ChangeFailed::Rejected(ReplicaError::ChangeRejected(
                AutomergeError::Fail,
            ))),
        };
        let _ = self.reply.send(answer);
    }
}

/// A read function with the channel its caller waits on.
pub(crate) struct TypedRead<F, R> {
    pub(crate) read: F,
    pub(crate) reply: oneshot::Sender<Result<R, ReplicaError>>,
}

impl<F, R> ReadRequest for TypedRead<F, R>
where
    F: FnOnce(&Automerge) -> R + Send,
    R: Send,
{
    fn run(self: Box<Self>, doc: Result<&Automerge, ReplicaError>) {
        let _ = self.reply.send(doc.map(self.read));
    }
}

/// The result of a change, once acknowledged at the level asked for.
#[derive(Debug)]
pub struct ChangeReceipt<R> {
    /// The Automerge change made (none if the function changed nothing).
    pub change: Option<ChangeHash>,
    /// What the change function returned.
    pub output: R,
}

/// Why a change was not acknowledged at the level asked for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeFailed {
    /// The engine refused it; nothing changed.
    #[error(transparent)]
    Rejected(#[from] ReplicaError),
    /// The change was made, but not enough peers confirmed it within
    /// [`REPLICATION_TIMEOUT`]. It stays and keeps replicating.
    #[error(transparent)]
    NotReplicated(#[from] NotReplicated),
}

/// A change was made, but did not reach the acknowledgement level asked
/// for in time (`Replicated(k)` waits at most [`REPLICATION_TIMEOUT`]). It
/// stays and keeps replicating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the change reached {reached:?} but not {wanted:?} in time; it stays and keeps replicating"
)]
pub struct NotReplicated {
    /// The level asked for.
    pub wanted: AckLevel,
    /// The level reached.
    pub reached: AckLevel,
}

/// How long a change waits for `Replicated(k)` before the caller is told
/// how far it got.
pub const REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);

/// A change to a document, as subscribers see it.
#[derive(Debug, Clone)]
pub struct DocumentChange {
    /// The document.
    pub doc: DocumentId,
    /// Its heads after the change.
    pub heads: Vec<ChangeHash>,
    /// Who made it.
    pub origin: Origin,
    /// What changed, as Automerge patches against the previous heads this
    /// subscription saw: computed from the changes just applied, so they
    /// cost what changed, whatever the document's size.
    pub patches: Vec<Patch>,
}

/// Changes from outside to merge, with the channel its caller waits on.
pub(crate) struct MergeRequest {
    pub(crate) changes: Option<Vec<automerge::Change>>,
    pub(crate) reply: oneshot::Sender<Result<Option<ChangeHash>, ChangeFailed>>,
}

impl ChangeRequest for MergeRequest {
    fn run(&mut self, _tx: &mut Transaction<'_>) -> Result<(), AutomergeError> {
        // The driver merges `changes` instead; a transaction changes nothing.
        Ok(())
    }

    fn merge(&mut self) -> Option<Vec<automerge::Change>> {
        self.changes.take()
    }

    fn finish(self: Box<Self>, outcome: Result<Option<ChangeHash>, ChangeFailed>) {
        let _ = self.reply.send(outcome);
    }
}

/// A deletion, with the channel its caller waits on.
pub(crate) struct DeleteRequest {
    pub(crate) reply: oneshot::Sender<Result<(), ChangeFailed>>,
}

impl ChangeRequest for DeleteRequest {
    fn run(&mut self, _tx: &mut Transaction<'_>) -> Result<(), AutomergeError> {
        Ok(())
    }

    fn deletes(&self) -> bool {
        true
    }

    fn finish(self: Box<Self>, outcome: Result<Option<ChangeHash>, ChangeFailed>) {
        let _ = self.reply.send(outcome.map(|_| ()));
    }
}
