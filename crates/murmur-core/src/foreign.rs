//! Checks on what peers send that Automerge does not make itself. Each
//! was found by a fuzz target (`fuzz/`), and each input is kept in the
//! corpus that `cargo test` replays.
//!
//! * **Unknown actors.** Automerge 0.12 registers a change's author as an
//!   actor of the document only for the author's first change (sequence
//!   number 1), and then looks up every actor a change names with an
//!   `unwrap` (`import_ops` in `op_set2/change/batch.rs`). A change naming
//!   an actor the document has never seen panics inside `apply_changes` or
//!   `receive_sync_message` and leaves the document half-updated. A
//!   well-formed change never does this: the actors it names are its own
//!   (first change) or those of changes in its history.
//! * **Non-canonical changes.** Automerge accepts a change whose bytes are
//!   not the canonical encoding of its content, under the hash of those
//!   bytes; saving re-encodes it, so the document loaded back has another
//!   hash for it. The stored document then no longer matches the one in
//!   memory (nor the digest leaf), and after a restart the node holds a
//!   change its peers know under another name (they cannot sync it: same
//!   actor, same sequence number). A change Automerge made is canonical.
//! * **Malformed ops.** Automerge's own decoder (`Change::decode`, used
//!   for the check above) unwraps each op's actor index; an op naming an
//!   index past the change's actor list panics there. That panic is caught
//!   (decoding mutates nothing) and the change refused.
//! * **Bloom filters without bits.** A sync message's `have` carries a
//!   Bloom filter; one that claims entries but holds no bits (or asks for
//!   billions of probes) makes Automerge divide by zero (or loop) the next
//!   time it answers.

use automerge::sync::{ChunkList, Have};
use automerge::{ActorId, Automerge, Change, ChangeHash, ReadDoc};

/// Most probes a peer's Bloom filter may ask for per hash (Automerge uses
/// 7).
const MAX_BLOOM_PROBES: u64 = 64;
/// Most bits per entry a peer's Bloom filter may have (Automerge uses 10).
const MAX_BLOOM_BITS_PER_ENTRY: u64 = 64;

/// Refuses `changes` (in the order they will be handed to Automerge) if one
/// is not canonically encoded, or has its dependencies met yet names an
/// actor that `doc` does not know and that no earlier change of the batch
/// introduces (its author's first change, with its dependencies met): a
/// well-formed change never does. A change waiting for dependencies is
/// left to Automerge's queue unchecked.
pub(crate) fn check_changes(doc: &Automerge, changes: &[Change]) -> Result<(), String> {
    let mut introduced: Vec<&ActorId> = Vec::new();
    let mut ready: Vec<ChangeHash> = Vec::new();
    for change in changes {
        let Some(canonical) = canonical_hash(change) else {
            return Err(format!(
                "change {} is malformed (an op names an actor the change does not list)",
                change.hash()
            ));
        };
        if canonical != change.hash() {
            return Err(format!(
                "change {} is not canonically encoded (re-encoded, its hash is {canonical})",
                change.hash()
            ));
        }
        let deps_met = change
            .deps()
            .iter()
            .all(|dep| ready.contains(dep) || doc.get_change_by_hash(dep).is_some());
        if !deps_met {
            // It may honestly name actors that only its missing
            // dependencies introduce (a node that lost the first change of
            // an author in a crash): Automerge queues it and the sync for
            // the missing ones brings them. Its actors are not checked
            // (fuzz/open/README.md: the hole this leaves).
            continue;
        }
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
        ready.push(change.hash());
        if change.seq() == 1 {
            introduced.push(change.actor_id());
        }
    }
    Ok(())
}

/// The hash of `change` re-encoded canonically, or `None` if Automerge
/// cannot decode it. Its decoder unwraps the actor of every op, so a change
/// whose ops name an actor index past its own list panics there (found by
/// `foreign_changes`). Decoding reads the change and builds a new value,
/// nothing else, so the panic is caught and the change refused.
fn canonical_hash(change: &Change) -> Option<ChangeHash> {
    let reencode = std::panic::AssertUnwindSafe(|| Change::from(change.decode()).hash());
    std::panic::catch_unwind(reencode).ok()
}

/// [`check_changes`] for the chunks of a sync message (each one change or
/// a whole document, whose changes are checked in its order; a chunk that
/// is neither is left to Automerge, which refuses it), and the message's
/// Bloom filters.
pub(crate) fn check_sync_message(
    doc: &Automerge,
    message: &automerge::sync::Message,
) -> Result<(), String> {
    message.have.iter().try_for_each(check_bloom)?;
    check_changes(doc, &chunk_changes(&message.changes))
}

fn chunk_changes(chunks: &ChunkList) -> Vec<Change> {
    let mut changes = Vec::new();
    for chunk in chunks.iter() {
        if let Ok(change) = Change::from_bytes(chunk.to_vec()) {
            changes.push(change);
        } else if let Ok(document) = Automerge::load(chunk) {
            changes.extend(document.get_changes(&[]));
        }
    }
    changes
}

/// A Bloom filter is empty, or has entries, bits, and sane parameters.
fn check_bloom(have: &Have) -> Result<(), String> {
    let bytes = have.bloom.to_bytes();
    let mut rest = bytes.as_slice();
    if rest.is_empty() {
        return Ok(());
    }
    let mut field = || leb128::read::unsigned(&mut rest).map_err(|e| e.to_string());
    let (entries, bits_per_entry, probes) = (field()?, field()?, field()?);
    let sane = entries > 0
        && (1..=MAX_BLOOM_BITS_PER_ENTRY).contains(&bits_per_entry)
        && (1..=MAX_BLOOM_PROBES).contains(&probes)
        && !rest.is_empty();
    if sane {
        Ok(())
    } else {
        Err(format!(
            "a Bloom filter of {entries} entries, {bits_per_entry} bits each, {probes} probes and {} bytes",
            rest.len()
        ))
    }
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
    fn a_change_waiting_for_its_authors_first_is_left_to_the_queue() {
        let mut theirs = Automerge::new().with_actor(ActorId::from([9u8; 16]));
        for value in 0..2_i64 {
            let mut tx = theirs.transaction();
            tx.put(ROOT, "x", value).unwrap();
            tx.commit();
        }
        let all = changes_of(&theirs);
        let ours = Automerge::new();
        assert!(check_changes(&ours, &all).is_ok(), "history in order");
        // The second alone waits for the first: left to Automerge's queue.
        assert!(check_changes(&ours, &all[1..]).is_ok());
        // Once the first change is held, the second is fine on its own.
        let mut ours = ours;
        ours.apply_changes(all[..1].to_vec()).unwrap();
        assert!(check_changes(&ours, &all[1..]).is_ok());
    }
}
