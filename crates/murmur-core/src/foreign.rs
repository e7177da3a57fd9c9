//! A check on changes from peers that Automerge does not make itself.
//!
//! Automerge 0.12 registers a change's author as an actor of the document
//! only for the author's first change (sequence number 1), and then looks
//! up every actor a change names with an `unwrap` (`import_ops` in
//! `op_set2/change/batch.rs`). A change that names an actor the document
//! has never seen (a later change of an unknown author, or ops that refer
//! to an unknown actor) therefore panics inside `apply_changes` or
//! `receive_sync_message`, and leaves the document half-updated. Our
//! `foreign_changes` fuzz target found it within seconds. A well-formed
//! change never does this: the actors it names are its own (first change)
//! or those of changes in its history, which a document applying it holds.
//! So such a change is refused before Automerge sees it.

use automerge::sync::ChunkList;
use automerge::{ActorId, Automerge, Change, ChangeHash, ReadDoc};

/// Refuses `changes` (in the order they will be handed to Automerge) if one
/// names an actor that `doc` does not know and that no earlier change of
/// the batch introduces (its first change, with its dependencies met).
/// A change waiting for dependencies must name only known actors too: it
/// may be applied later, from Automerge's queue, without another check.
pub(crate) fn check_actors(doc: &Automerge, changes: &[Change]) -> Result<(), String> {
    let mut introduced: Vec<&ActorId> = Vec::new();
    let mut ready: Vec<ChangeHash> = Vec::new();
    for change in changes {
        for actor in change.actors() {
            let first_of_its_author = actor == change.actor_id() && change.seq() == 1;
            if !first_of_its_author && !introduced.contains(&actor) && !knows(doc, actor) {
                return Err(format!(
                    "change {} (seq {}) names actor {actor}, which the document does not know",
                    change.hash(),
                    change.seq()
                ));
            }
        }
        let deps_met = change
            .deps()
            .iter()
            .all(|dep| ready.contains(dep) || doc.get_change_by_hash(dep).is_some());
        if deps_met {
            ready.push(change.hash());
            if change.seq() == 1 {
                introduced.push(change.actor_id());
            }
        }
    }
    Ok(())
}

/// [`check_actors`] for the chunks of a sync message: each is one change
/// or a whole document (whose changes are checked in its order). A chunk
/// that is neither is left to Automerge, which refuses it.
pub(crate) fn check_chunks(doc: &Automerge, chunks: &ChunkList) -> Result<(), String> {
    let mut changes = Vec::new();
    for chunk in chunks.iter() {
        if let Ok(change) = Change::from_bytes(chunk.to_vec()) {
            changes.push(change);
        } else if let Ok(document) = Automerge::load(chunk) {
            changes.extend(document.get_changes(&[]));
        }
    }
    check_actors(doc, &changes)
}

/// True if `actor` is in `doc`'s actor table (Automerge has no direct
/// query; resolving an object id of that actor is one).
fn knows(doc: &Automerge, actor: &ActorId) -> bool {
    doc.import_obj(&format!("1@{actor}")).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::ROOT;

    fn changes_of(doc: &Automerge) -> Vec<Change> {
        doc.get_changes(&[])
    }

    #[test]
    fn a_later_change_of_an_unknown_author_is_refused_and_history_in_order_is_not() {
        let mut theirs = Automerge::new().with_actor(ActorId::from([9u8; 16]));
        for value in 0..2_i64 {
            let mut tx = theirs.transaction();
            tx.put(ROOT, "x", value).unwrap();
            tx.commit();
        }
        let all = changes_of(&theirs);
        let ours = Automerge::new();
        assert!(check_actors(&ours, &all).is_ok(), "history in order");
        let error = check_actors(&ours, &all[1..]).unwrap_err();
        assert!(error.contains("does not know"), "{error}");
        // Once the first change is held, the second is fine on its own.
        let mut ours = ours;
        ours.apply_changes(all[..1].to_vec()).unwrap();
        assert!(check_actors(&ours, &all[1..]).is_ok());
    }
}
