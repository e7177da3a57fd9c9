//! Handles to documents.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use crate::change::{DeleteRequest, MergeRequest};
use crate::driver::{Command, DocumentChange, DriverHandle};
use automerge::transaction::Transaction;
use automerge::{Automerge, AutomergeError, ChangeHash};
use murmur_core::{AckLevel, ClientState, DocumentId, ReplicaError};
use tokio::sync::broadcast;

use crate::view::{self, Conflict, History, View, ViewError, ViewOptions};
use crate::Error;

/// Decodes Automerge data from outside on a blocking thread.
pub(crate) async fn decode(bytes: Vec<u8>) -> Result<Vec<automerge::Change>, Error> {
    tokio::task::spawn_blocking(move || murmur_core::decode_automerge(&bytes))
        .await
        .map_err(|_| Error::Closed)?
        .map_err(|reason| Error::Replica(ReplicaError::ForeignData { reason }))
}

/// One document on a node. Cheap to clone; every clone talks to the same
/// node.
///
/// ```
/// use murmur::automerge::{transaction::Transactable, ReadDoc, ROOT};
/// use murmur::{Ack, Node};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), murmur::Error> {
/// let node = Node::builder().in_memory().start().await?;
/// let doc = node.create_doc().await?;
///
/// // Durable on return (the default)...
/// doc.change(|tx| tx.put(ROOT, "title", "Shopping")).await?;
/// // ...or only applied in memory, with the change function's output.
/// let receipt = doc
///     .change_with(Ack::Applied, |tx| {
///         tx.put(ROOT, "items", 3)?;
///         Ok("three items")
///     })
///     .await?;
/// assert_eq!(receipt.output, "three items");
///
/// let items = doc
///     .read(|d| d.get(ROOT, "items").ok().flatten().and_then(|(v, _)| v.as_i64()))
///     .await?;
/// assert_eq!(items, Some(3));
/// assert_eq!(doc.heads().await?, vec![receipt.change.expect("a change")]);
/// # node.shutdown().await?;
/// # Ok(())
/// # }
/// ```
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

    /// Like [`DocHandle::change`], returning once the change reaches `ack`:
    /// [`Ack::Applied`](crate::Ack::Applied) (in memory, pushed to peers),
    /// [`Ack::Durable`](crate::Ack::Durable) (flushed here) or
    /// [`Ack::Replicated(k)`](crate::Ack::Replicated) (durable here and on
    /// k peers; see the example on [`NodeBuilder`](crate::NodeBuilder)). A
    /// `Replicated(k)` that no k peers confirm within 30 s fails with
    /// [`Error::NotReplicated`], saying how far the change got: it stays
    /// and keeps replicating.
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
        self.try_change_described(ack, None, f).await
    }

    /// Like [`DocHandle::change_with`], the change carrying `message`
    /// (Automerge's change message, which [`DocHandle::history`] shows).
    ///
    /// ```
    /// use murmur::automerge::{transaction::Transactable, ROOT};
    /// use murmur::{Ack, Node};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), murmur::Error> {
    /// let node = Node::builder().in_memory().start().await?;
    /// let doc = node.create_doc().await?;
    /// doc.change_described(Ack::Durable, "set the title", |tx| tx.put(ROOT, "title", "Notes"))
    ///     .await?;
    /// let history = doc.history(0, 10).await?;
    /// assert_eq!(history.changes[0].message.as_deref(), Some("set the title"));
    /// # node.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn change_described<R, F>(
        &self,
        ack: AckLevel,
        message: impl Into<String>,
        f: F,
    ) -> Result<Receipt<R>, Error>
    where
        R: Send + 'static,
        F: FnOnce(&mut Transaction<'_>) -> Result<R, AutomergeError> + Send + 'static,
    {
        match self
            .try_change_described(ack, Some(message.into()), f)
            .await?
        {
            Ok(receipt) => Ok(receipt),
            Err(error) => Err(Error::Replica(ReplicaError::ChangeRejected(error))),
        }
    }

    /// [`DocHandle::try_change_with`], the change carrying `message` if
    /// given.
    pub async fn try_change_described<R, E, F>(
        &self,
        ack: AckLevel,
        message: Option<String>,
        f: F,
    ) -> Result<Result<Receipt<R>, E>, Error>
    where
        R: Send + 'static,
        E: Send + 'static,
        F: FnOnce(&mut Transaction<'_>) -> Result<R, E> + Send + 'static,
    {
        let outcome = self
            .handle
            .change_described(self.id, ack, message, f)
            .await?
            .map_err(Error::from)?;
        Ok(outcome.map(|receipt| Receipt {
            change: receipt.change,
            output: receipt.output,
        }))
    }

    /// Deletes the document on every node: a tombstone replicates, every
    /// node frees its content and answers [`ReplicaError::Deleted`] for it
    /// from then on, and the feed reports the deletion. A deletion wins
    /// over every change, concurrent ones included. Returns once the
    /// tombstone is durable here.
    ///
    /// ```
    /// use murmur::automerge::{transaction::Transactable, ROOT};
    /// use murmur::{Error, Node, ReplicaError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), murmur::Error> {
    /// let node = Node::builder().in_memory().start().await?;
    /// let doc = node.create_doc().await?;
    /// doc.change(|tx| tx.put(ROOT, "n", 1)).await?;
    /// doc.delete().await?;
    /// assert!(matches!(doc.heads().await, Err(Error::Replica(ReplicaError::Deleted(_)))));
    /// assert!(node.documents().await?.is_empty());
    /// # node.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete(&self) -> Result<(), Error> {
        let deleted = self
            .handle
            .request(|reply| Command::Change {
                doc: self.id,
                ack: AckLevel::Durable,
                request: Box::new(DeleteRequest { reply }),
            })
            .await?;
        deleted.map_err(Error::from)
    }

    /// The document as Automerge saves it (`Automerge::save`): what
    /// `Automerge.load` in JavaScript, or [`Node::import`](crate::Node::import)
    /// on another node, loads with the same history and heads.
    pub async fn save(&self) -> Result<Vec<u8>, Error> {
        self.read(|doc| doc.save()).await
    }

    /// Merges Automerge data made elsewhere into this document: a saved
    /// document or changes (`Automerge.save`, `getChanges`, or
    /// [`DocHandle::save`] of another node). The changes keep their
    /// history, so the copy they came from and this one merge again later.
    /// Returns once the merge reaches `ack`, with one of the new heads
    /// (`None`: nothing was new). Data that does not decode, or misses
    /// changes it depends on, is refused with
    /// [`ReplicaError::ForeignData`] and nothing changes.
    ///
    /// ```
    /// use murmur::automerge::{transaction::Transactable, Automerge, ReadDoc, ROOT};
    /// use murmur::{Ack, Node};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut elsewhere = Automerge::new();
    /// elsewhere.transact(|tx| tx.put(ROOT, "from", "elsewhere"))
    ///     .map_err(|failure| failure.error)?;
    /// let node = Node::builder().in_memory().start().await?;
    /// let doc = node.import(elsewhere.save()).await?;
    /// assert_eq!(doc.heads().await?, elsewhere.get_heads());
    /// let more = {
    ///     let mut copy = elsewhere.fork();
    ///     copy.transact(|tx| tx.put(ROOT, "more", 1)).map_err(|failure| failure.error)?;
    ///     copy.save_after(&elsewhere.get_heads())
    /// };
    /// doc.merge(more, Ack::Durable).await?;
    /// assert_eq!(doc.read(|d| d.length(ROOT)).await?, 2);
    /// # node.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn merge(&self, bytes: Vec<u8>, ack: AckLevel) -> Result<Option<ChangeHash>, Error> {
        let changes = decode(bytes).await?;
        self.merge_changes(changes, ack).await
    }

    /// Merges changes already decoded ([`murmur_core::decode_automerge`]).
    pub(crate) async fn merge_changes(
        &self,
        changes: Vec<automerge::Change>,
        ack: AckLevel,
    ) -> Result<Option<ChangeHash>, Error> {
        let merged = self
            .handle
            .request(|reply| Command::Change {
                doc: self.id,
                ack,
                request: Box::new(MergeRequest {
                    changes: Some(changes),
                    reply,
                }),
            })
            .await?;
        merged.map_err(Error::from)
    }

    /// Reads the document as JSON, as `options` ask: at older heads, with
    /// types marked, with its conflicts (see [`ViewOptions`]).
    ///
    /// ```
    /// use murmur::automerge::{transaction::Transactable, ROOT};
    /// use murmur::view::ViewOptions;
    /// use murmur::Node;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), murmur::Error> {
    /// let node = Node::builder().in_memory().start().await?;
    /// let doc = node.create_doc().await?;
    /// doc.change(|tx| tx.put(ROOT, "title", "First")).await?;
    /// let first = doc.heads().await?;
    /// doc.change(|tx| tx.put(ROOT, "title", "Second")).await?;
    /// let then = doc.view(ViewOptions { at: Some(first), ..ViewOptions::default() }).await?;
    /// assert_eq!(then.content["title"], "First");
    /// # node.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn view(&self, options: ViewOptions) -> Result<View, Error> {
        Ok(self.read(move |doc| view::view(doc, &options)).await??)
    }

    /// The keys and list elements where concurrent changes left several
    /// values, each with the change that put it. An app resolves one by
    /// putting the value it wants.
    pub async fn conflicts(&self) -> Result<Vec<Conflict>, Error> {
        let options = ViewOptions {
            conflicts: true,
            ..ViewOptions::default()
        };
        Ok(self.view(options).await?.conflicts)
    }

    /// The patches that take the document from heads `from` to heads `to`.
    pub async fn diff(
        &self,
        from: Vec<ChangeHash>,
        to: Vec<ChangeHash>,
    ) -> Result<Vec<automerge::Patch>, Error> {
        Ok(self
            .read(move |doc| {
                view::check_heads(doc, &from)?;
                view::check_heads(doc, &to)?;
                Ok::<_, ViewError>(doc.diff(&from, &to))
            })
            .await??)
    }

    /// At most `limit` changes of the document's history, from the
    /// `offset`-th on, in causal order.
    /// A change's writer is named when it is this node or one it knows
    /// (a peer, a member, an allowed node).
    pub async fn history(&self, offset: usize, limit: usize) -> Result<History, Error> {
        let status = self.handle.last_status();
        let mut known = vec![status.node_id];
        known.extend(status.peers.iter().map(|peer| peer.id));
        known.extend(status.members.iter().map(|(node, _)| *node));
        known.extend(status.allowed.iter().copied());
        self.read(move |doc| view::history(doc, offset, limit, &known))
            .await
    }

    /// Reads the document.
    pub async fn read<R, F>(&self, f: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&Automerge) -> R + Send + 'static,
    {
        Ok(self.handle.read(self.id, f).await??)
    }

    /// Goes on with a client's Automerge sync conversation about this
    /// document: applies what the client sent (`messages`, in order) with the
    /// client's sync `state` ([`ClientState`]: Automerge's, and where the
    /// client stands in the document's recent changes, which spares the
    /// node a walk of the change graph per message), and returns the state with the encoded sync
    /// message to send the client next if `answer` and there is one, and the
    /// document's heads. The caller keeps
    /// one state per client and document; with no message it only asks
    /// what to send (after [`DocHandle::watch`] said the document
    /// changed). The client's changes are applied like [`DocHandle::merge`]
    /// (pushed to peers, durable with the next flush, local in the feed);
    /// changes it cannot use are refused ([`murmur_core::ReplicaError::ForeignData`]).
    ///
    /// ```
    /// use murmur::automerge::sync::{State, SyncDoc};
    /// use murmur::automerge::{transaction::Transactable, Automerge, ReadDoc, ROOT};
    /// use murmur::{ClientState, Node};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let node = Node::builder().in_memory().start().await?;
    /// let doc = node.create_doc().await?;
    /// doc.change(|tx| tx.put(ROOT, "title", "from the node")).await?;
    ///
    /// // A client that has nothing syncs with the node until both agree.
    /// let (mut client, mut client_state) = (Automerge::new(), State::new());
    /// let mut node_state = Box::new(ClientState::default());
    /// let mut to_node = client.generate_sync_message(&mut client_state);
    /// loop {
    ///     let messages = to_node.take().into_iter().collect();
    ///     let step = doc.sync_client(node_state, messages, true).await?;
    ///     node_state = step.state;
    ///     let Some(reply) = step.message else { break };
    ///     let reply = murmur::automerge::sync::Message::decode(&reply)?;
    ///     client.receive_sync_message(&mut client_state, reply)?;
    ///     to_node = client.generate_sync_message(&mut client_state);
    ///     if to_node.is_none() { break; }
    /// }
    /// let title = client.get(ROOT, "title")?.map(|(value, _)| value.to_string());
    /// assert_eq!(title.as_deref(), Some("\"from the node\""));
    /// # node.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn sync_client(
        &self,
        state: Box<ClientState>,
        messages: Vec<automerge::sync::Message>,
        answer: bool,
    ) -> Result<crate::ClientSyncReply, Error> {
        let doc = self.id;
        let outcome = self
            .handle
            .request(|reply| Command::ClientSync {
                doc,
                state,
                messages,
                answer,
                reply,
            })
            .await?;
        Ok(outcome?)
    }

    /// A receiver whose value changes whenever this document does (a
    /// local change, a peer's, a client's); it closes when the document is
    /// deleted. Cheaper than [`DocHandle::changes`]: no patches are made.
    pub async fn watch(&self) -> Result<tokio::sync::watch::Receiver<u64>, Error> {
        let doc = self.id;
        let receiver = self
            .handle
            .request(|reply| Command::Watch { doc, reply })
            .await?;
        Ok(receiver?)
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
        Ok(ChangeStream::new(receiver))
    }
}

/// Changes to one document, in order, as a [`futures_core::Stream`] (or
/// with [`ChangeStream::next`]). Bounded: a subscriber that falls more than
/// 1,024 changes behind gets [`Error::Lagged`] once, with how many it
/// missed, and then the newer changes. The document itself is never behind:
/// read it to catch up.
///
/// ```
/// use murmur::automerge::{transaction::Transactable, ReadDoc, ROOT};
/// use murmur::{Ack, Error, Node};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), murmur::Error> {
/// let node = Node::builder().in_memory().start().await?;
/// let doc = node.create_doc().await?;
/// let mut changes = doc.changes().await?;
///
/// // A subscriber that does not keep up...
/// for n in 0..1_500_i64 {
///     doc.change_with(Ack::Applied, move |tx| tx.put(ROOT, "n", n)).await?;
/// }
/// // ...hears that it missed some, then gets the newer changes.
/// let mut missed = 0;
/// while let Some(change) = changes.next().await {
///     match change {
///         Ok(change) if change.heads == doc.heads().await? => break,
///         Ok(_) => {}
///         Err(Error::Lagged(n)) => {
///             missed += n;
///             // What it missed is in the document: read it again.
///             let n = doc.read(|d| d.get(ROOT, "n").ok().flatten().is_some()).await?;
///             assert!(n);
///         }
///         Err(other) => return Err(other),
///     }
/// }
/// assert!(missed > 0);
/// # node.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub struct ChangeStream {
    /// The receive in progress; it hands the receiver back with the result.
    next: Pin<Box<dyn Future<Output = Received> + Send>>,
}

type Received = (
    Result<DocumentChange, broadcast::error::RecvError>,
    broadcast::Receiver<DocumentChange>,
);

async fn receive(mut receiver: broadcast::Receiver<DocumentChange>) -> Received {
    let result = receiver.recv().await;
    (result, receiver)
}

impl ChangeStream {
    fn new(receiver: broadcast::Receiver<DocumentChange>) -> Self {
        ChangeStream {
            next: Box::pin(receive(receiver)),
        }
    }

    /// The next change; `None` once the node has shut down.
    pub async fn next(&mut self) -> Option<Result<DocumentChange, Error>> {
        std::future::poll_fn(|cx| self.poll_change(cx)).await
    }

    fn poll_change(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<DocumentChange, Error>>> {
        let (result, receiver) = ready!(self.next.as_mut().poll(cx));
        self.next = Box::pin(receive(receiver));
        Poll::Ready(match result {
            Ok(change) => Some(Ok(change)),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Err(Error::Lagged(missed))),
            Err(broadcast::error::RecvError::Closed) => None,
        })
    }
}

impl futures_core::Stream for ChangeStream {
    type Item = Result<DocumentChange, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_change(cx)
    }
}
