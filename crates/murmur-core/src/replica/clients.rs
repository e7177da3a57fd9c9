//! Clients that sync a document through this node with Automerge's own
//! sync protocol (automerge-repo's browsers and apps, over a WebSocket).
//! A client is not a peer: it has no node id, no durable acks of its own
//! and no say in reconciliation. Its caller keeps its sync state; what it
//! sends is applied like a local merge (acknowledged, flushed, pushed to
//! every peer, reported in the feed as local).

use automerge::sync::{self, SyncDoc};
use automerge::ChangeHash;
use murmur_wire::DocumentId;

use super::{LocalWrite, Origin, Replica, WriteId};
use crate::{ReplicaError, Time};

/// What [`Replica::handle_client_sync`] did.
#[derive(Debug)]
pub struct ClientSync {
    /// The client's changes, applied as one local write (`None`: they
    /// brought nothing new, or there were none).
    pub write: Option<LocalWrite<()>>,
    /// The sync message to send the client next, encoded, if there is one.
    pub reply: Option<Vec<u8>>,
    /// The document's heads now.
    pub heads: Vec<ChangeHash>,
}

impl Replica {
    /// Goes on with a client's sync conversation about `doc`: applies the
    /// client's `messages` in order (those that arrived while its last step
    /// ran: one step takes them all) with its sync `state`, then produces
    /// the next message for it. With none this only asks what to send (the
    /// document changed since the client last heard).
    ///
    /// The document must be in memory ([`ReplicaError::Loading`]
    /// otherwise, as for a local change). A message whose changes name
    /// actors or dependencies it cannot, or that Automerge fails to apply,
    /// is refused with [`ReplicaError::ForeignData`]; a failure halfway
    /// rebuilds the document from what is stored, as for a peer's data.
    /// Changes are refused while the disk is nearly full
    /// ([`ReplicaError::DiskFull`]).
    pub fn handle_client_sync(
        &mut self,
        now: Time,
        doc: DocumentId,
        state: &mut sync::State,
        messages: Vec<sync::Message>,
    ) -> Result<ClientSync, ReplicaError> {
        let _span = tracing::debug_span!("client_sync", doc = %doc).entered();
        self.observe_clock(now);
        let mut write: Option<LocalWrite<()>> = None;
        for message in messages {
            if let Some(applied) = self.apply_client_message(now, doc, state, message)? {
                let ops = write.as_ref().map_or(0, |w| w.ops);
                write = Some(LocalWrite {
                    ops: ops + applied.ops,
                    ..applied
                });
            }
        }
        let document = self.document_mut(doc)?;
        let reply = crate::document::next_sync_message(&document.doc, state);
        let heads = document.heads();
        Ok(ClientSync {
            write,
            reply,
            heads,
        })
    }

    fn apply_client_message(
        &mut self,
        now: Time,
        doc: DocumentId,
        state: &mut sync::State,
        message: sync::Message,
    ) -> Result<Option<LocalWrite<()>>, ReplicaError> {
        let changes = message.changes.len();
        if changes > 0 {
            self.check_writable()?;
        }
        let observed = self.events.observed(doc);
        let document = self.document_mut(doc)?;
        let refuse = |reason: String| ReplicaError::ForeignData { reason };
        crate::foreign::check_sync_message(&document.doc, &message).map_err(refuse)?;
        let before = document.heads();
        let mut log = automerge::PatchLog::new(observed);
        let outcome = document.apply_verified(|document| {
            document
                .doc
                .receive_sync_message_log_patches(state, message, &mut log)
        });
        let result = match outcome {
            Ok((result, _authors)) => result,
            Err(reason) => {
                self.rebuild_document(doc, None, &reason);
                return Err(refuse(reason));
            }
        };
        let patches = observed.then(|| document.doc.make_patches(&mut log));
        let heads = document.heads();
        let added = document.unsaved_since(&before);
        // What Automerge applied before an error still counts (and is
        // reported below); the error refuses the rest.
        let write = self.accept_client_changes(now, doc, &before, &heads, added, patches, changes);
        result.map_err(|error| refuse(error.to_string()))?;
        Ok(write)
    }

    /// Makes the changes a client's message added to `doc` (its heads went
    /// from `before` to `heads`) a local write: pushed to every peer,
    /// awaiting the next flush, in the feed.
    #[allow(clippy::too_many_arguments)]
    fn accept_client_changes(
        &mut self,
        now: Time,
        doc: DocumentId,
        before: &[ChangeHash],
        heads: &[ChangeHash],
        added: Vec<Vec<u8>>,
        patches: Option<Vec<automerge::Patch>>,
        changes: usize,
    ) -> Option<LocalWrite<()>> {
        // A change nothing else depends on is a head: any new change
        // makes one.
        let &hash = heads.iter().find(|head| !before.contains(head))?;
        for raw in added {
            self.push_to_all(doc, raw);
        }
        let write = WriteId(self.next_write);
        self.next_write += 1;
        self.accept_local_write(write, doc, hash);
        self.changed(now, doc, Origin::Local, patches);
        Some(LocalWrite {
            write,
            change: Some(hash),
            ops: changes,
            output: (),
        })
    }
}
