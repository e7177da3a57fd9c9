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

/// The most hashes a client's sync state may hold as sent-but-unconfirmed
/// for its messages to take [`receive_without_pruning`]'s short path;
/// past it, Automerge's own walk prunes them.
const FAST_ACK_MAX_SENT: usize = 4096;

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
    /// the next message for it if `answer` (a caller that gathers sends asks
    /// for it in a later step). With no messages this only asks what to send
    /// (the document changed since the client last heard).
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
        answer: bool,
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
        let reply = answer
            .then(|| crate::document::next_sync_message(&document.doc, state))
            .flatten();
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
        let short = state.sent_hashes.len() <= FAST_ACK_MAX_SENT && !state.read_only;
        if changes == 0 && short {
            let mut log = automerge::PatchLog::new(false);
            // With no changes nothing is applied, and nothing can fail.
            receive_without_pruning(&mut document.doc, state, message, &mut log)
                .map_err(|error| refuse(error.to_string()))?;
            return Ok(None);
        }
        let before = document.heads();
        let mut log = automerge::PatchLog::new(observed);
        let outcome = document.apply_verified(|document| {
            if short {
                receive_without_pruning(&mut document.doc, state, message, &mut log)
            } else {
                document
                    .doc
                    .receive_sync_message_log_patches(state, message, &mut log)
            }
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

/// Takes a client's sync message into its sync `state` (applying its
/// changes to `doc`, their patches into `log`) as Automerge's
/// `receive_sync_message` does, less one step: Automerge prunes the hashes
/// it sent from `sent_hashes` by walking every ancestor of the client's
/// heads, the whole history on every message (half a node's CPU with 16
/// typing clients, nine tenths with 64). Here they are all dropped when the
/// client has everything this document has, and otherwise kept. Keeping
/// one the client already has only means it is not sent again, which it
/// need not be: a WebSocket delivers what was sent, in order, or the
/// session ends (and a new one starts from a new state). The set stays
/// bounded: past [`FAST_ACK_MAX_SENT`] Automerge's own path runs.
fn receive_without_pruning(
    doc: &mut automerge::Automerge,
    state: &mut sync::State,
    message: sync::Message,
    log: &mut automerge::PatchLog,
) -> Result<(), automerge::AutomergeError> {
    use automerge::sync::{Capability, MessageFlags};
    let sync::Message {
        heads,
        need,
        have,
        changes,
        flags,
        ..
    } = message;
    state.in_flight = false;
    if let Some(flags) = flags {
        let mut capabilities = vec![Capability::MessageV2];
        if flags.contains(MessageFlags::SUPPORTS_SYNC_RESET) {
            capabilities.push(Capability::SyncReset);
        }
        state.their_capabilities = Some(capabilities);
        if flags.contains(MessageFlags::SYNC_RESET) {
            state.sent_hashes.clear();
        }
        state.peer_read_only = flags.contains(MessageFlags::READ_ONLY);
    }
    let no_changes = changes.is_empty();
    if !no_changes {
        let before = doc.get_heads();
        for chunk in changes.iter() {
            doc.load_incremental_log_patches(chunk, log)?;
        }
        let after = doc.get_heads();
        // The shared heads advance to the new heads, and keep those of the
        // old shared heads that are still heads.
        let mut shared: Vec<ChangeHash> = after
            .iter()
            .filter(|head| !before.contains(head) || state.shared_heads.contains(head))
            .copied()
            .collect();
        shared.sort_unstable();
        shared.dedup();
        state.shared_heads = shared;
    }
    let ours = doc.get_heads();
    let mut theirs = heads.clone();
    theirs.sort_unstable();
    let mut sorted_ours = ours.clone();
    sorted_ours.sort_unstable();
    if theirs == sorted_ours {
        state.sent_hashes.clear();
    }
    if no_changes && heads == ours {
        state.last_sent_heads.clone_from(&heads);
    }
    let known: Vec<ChangeHash> = heads
        .iter()
        .filter(|head| doc.get_change_meta_by_hash(head).is_some())
        .copied()
        .collect();
    if known.len() == heads.len() {
        state.shared_heads.clone_from(&heads);
        if heads.is_empty() {
            state.last_sent_heads = Vec::new();
            state.sent_hashes = Default::default();
        }
    } else {
        let mut shared: Vec<ChangeHash> =
            state.shared_heads.iter().chain(&known).copied().collect();
        shared.sort_unstable();
        shared.dedup();
        state.shared_heads = shared;
    }
    state.their_have = Some(have);
    state.their_heads = Some(heads);
    state.their_need = Some(need);
    Ok(())
}

#[cfg(test)]
mod tests {
    use automerge::sync::{self, SyncDoc};
    use automerge::transaction::Transactable;
    use automerge::{Automerge, ROOT};

    /// A node and a client editing one document in turns, syncing after
    /// each edit: every message the node receives (acknowledgements and
    /// changes) is taken both ways, and the short path leaves the document
    /// and the state as Automerge does, but for `sent_hashes`, which holds
    /// at least what Automerge's does; and the node's next message is the
    /// same either way.
    #[test]
    fn a_client_message_leaves_the_state_as_automerge_would() {
        let (mut node, mut client) = (Automerge::new(), Automerge::new());
        let (mut node_state, mut client_state) = (sync::State::new(), sync::State::new());
        let (mut acknowledgements, mut with_changes) = (0, 0);
        for round in 0..120 {
            let edit = |doc: &mut Automerge, who: &str| {
                let mut tx = doc.transaction();
                tx.put(ROOT, format!("{who}{round}"), round as i64).unwrap();
                tx.commit();
            };
            match round % 3 {
                0 => edit(&mut node, "n"),
                1 => edit(&mut client, "c"),
                _ => {
                    edit(&mut node, "n");
                    edit(&mut client, "c");
                }
            }
            for _ in 0..8 {
                let to_client = node.generate_sync_message(&mut node_state);
                if round % 4 == 3 {
                    // The node moves on while its message travels: the
                    // acknowledgement names heads it has left behind.
                    edit(&mut node, "m");
                }
                if let Some(message) = &to_client {
                    client
                        .receive_sync_message(&mut client_state, message.clone())
                        .unwrap();
                }
                let to_node = client.generate_sync_message(&mut client_state);
                let Some(message) = to_node else {
                    if to_client.is_none() {
                        break;
                    }
                    continue;
                };
                let had_changes = !message.changes.is_empty();
                let mut automerge_doc = node.clone();
                let mut automerge_way = node_state.clone();
                automerge_doc
                    .receive_sync_message(&mut automerge_way, message.clone())
                    .unwrap();
                let mut log = automerge::PatchLog::new(false);
                super::receive_without_pruning(&mut node, &mut node_state, message, &mut log)
                    .unwrap();
                assert_eq!(node.get_heads(), automerge_doc.get_heads());
                assert!(node_state
                    .sent_hashes
                    .is_superset(&automerge_way.sent_hashes));
                let mut ours = node_state.clone();
                ours.sent_hashes = automerge_way.sent_hashes.clone();
                assert_eq!(ours.encode(), automerge_way.encode());
                assert_eq!(
                    (
                        &ours.their_heads,
                        &ours.their_need,
                        &ours.last_sent_heads,
                        ours.in_flight
                    ),
                    (
                        &automerge_way.their_heads,
                        &automerge_way.their_need,
                        &automerge_way.last_sent_heads,
                        automerge_way.in_flight
                    )
                );
                assert_eq!(ours.their_capabilities, automerge_way.their_capabilities);
                // With the sent hashes it kept, the node says the same.
                let next_ours = node.generate_sync_message(&mut node_state.clone());
                let next_automerge =
                    automerge_doc.generate_sync_message(&mut automerge_way.clone());
                assert_eq!(
                    next_ours.map(sync::Message::encode),
                    next_automerge.map(sync::Message::encode)
                );
                if had_changes {
                    with_changes += 1;
                } else {
                    acknowledgements += 1;
                }
            }
        }
        assert_eq!(node.get_heads(), client.get_heads());
        assert!(
            acknowledgements > 60 && with_changes > 30,
            "only {acknowledgements} acknowledgements and {with_changes} messages with changes compared"
        );
    }
}
