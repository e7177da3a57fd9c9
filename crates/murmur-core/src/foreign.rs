//! What peers send, checked and applied so that no change of theirs can
//! stop the engine or corrupt what it stores. Each case was found by a fuzz
//! target (`fuzz/`), and each input is kept in the corpus that `cargo test`
//! replays.
//!
//! Checked before applying, cheaply:
//! * **Unknown actors.** Automerge 0.12 registers a change's author as an
//!   actor of the document only for the author's first change (sequence
//!   number 1), and then looks up every actor a change names with an
//!   `unwrap` (`import_ops` in `op_set2/change/batch.rs`). A change naming
//!   an actor the document has never seen panics inside `apply_changes` or
//!   `receive_sync_message`. A well-formed change never does this: the
//!   actors it names are its own (first change) or those of changes in its
//!   history.
//! * **Bloom filters without bits.** A sync message's `have` carries a
//!   Bloom filter; one that claims entries but holds no bits (or asks for
//!   billions of probes) makes Automerge divide by zero (or loop) the next
//!   time it answers.
//!
//! Guarded while applying ([`guarded`]) and verified after
//! ([`verify_applied`]), because no check beforehand catches them all:
//! * **Panics inside Automerge.** An op naming an actor index past its
//!   change's list panics in Automerge's decoder; a change waiting in
//!   Automerge's queue is not checked for actors (an honest one may name an
//!   author whose first change the node lost in a crash) and panics when
//!   its dependencies arrive; a change that passes every check may still
//!   leave the document's change collector asserting on the next save.
//! * **Changes that do not come back as they went in.** Automerge keeps a
//!   change under the hash of its bytes, but saves it re-encoded from its
//!   ops. A change that is not canonically encoded, or whose ops Automerge
//!   reorders, comes back under another hash: the stored document would
//!   load with other heads than the one in memory, and after a restart
//!   the node would hold a change its peers know under another name.
//!
//! The caller applies under [`guarded`], then asks [`verify_applied`] to
//! rebuild every change the apply added (what the next flush will write)
//! and to find each under the hash Automerge keeps for it. A panic or a
//! mismatch means the document in memory can no longer be trusted: the
//! message is refused and the document is rebuilt from the store and the
//! changes verified since its last durable save
//! ([`crate::Replica`]'s `rebuild_document`).

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};

use automerge::sync::Have;
use automerge::{ActorId, Automerge, Change, ChangeHash};

/// Most probes a peer's Bloom filter may ask for per hash (Automerge uses
/// 7).
const MAX_BLOOM_PROBES: u64 = 64;
/// Most bits per entry a peer's Bloom filter may have (Automerge uses 10).
const MAX_BLOOM_BITS_PER_ENTRY: u64 = 64;

/// Refuses `changes` (in the order they will be handed to Automerge) if
/// one has its dependencies met yet names an actor that `doc` does not know
/// and that no earlier change of the batch introduces (its author's first
/// change, with its dependencies met): a well-formed change never does. A
/// change waiting for dependencies is left to Automerge's queue unchecked.
pub(crate) fn check_changes(doc: &Automerge, changes: &[Change]) -> Result<(), String> {
    let mut introduced: BTreeSet<&ActorId> = BTreeSet::new();
    let mut ready: BTreeSet<ChangeHash> = BTreeSet::new();
    for change in changes {
        let deps_met = change
            .deps()
            .iter()
            .all(|dep| ready.contains(dep) || doc.get_change_meta_by_hash(dep).is_some());
        if !deps_met {
            // It may honestly name actors that only its missing
            // dependencies introduce (a node that lost the first change of
            // an author in a crash): Automerge queues it and the sync for
            // the missing ones brings them. If it panics once they do,
            // `guarded` catches that.
            continue;
        }
        for actor in change.actors() {
            let first_of_its_author = actor == change.actor_id() && change.seq() == 1;
            if !first_of_its_author && !introduced.contains(actor) && !knows(doc, actor) {
                return Err(format!(
                    "change {} (seq {}) names actor {actor}, which the document does not know",
                    change.hash(),
                    change.seq()
                ));
            }
        }
        ready.insert(change.hash());
        if change.seq() == 1 {
            introduced.insert(change.actor_id());
        }
    }
    Ok(())
}

/// [`check_changes`] for the chunks of a sync message that are single
/// changes (a chunk holding a whole document or a bundle is left to the
/// guarded apply: listing its changes would decode it twice), and the
/// message's Bloom filters.
pub(crate) fn check_sync_message(
    doc: &Automerge,
    message: &automerge::sync::Message,
) -> Result<(), String> {
    check_messages(doc, std::slice::from_ref(message), false).map(|_| ())
}

/// [`check_sync_message`] for messages applied one after the other: their
/// changes are checked as one batch, in order. Returns their hashes when
/// every chunk is one change, or a bundle or document of at most
/// [`SMALL_CHUNK_BYTES`] (`None` if one is larger or does not decode),
/// decoded once here for both: a client's version-2 messages carry their
/// changes that way, and the apply then finds what they added among them.
pub(crate) fn check_sync_messages(
    doc: &Automerge,
    messages: &[automerge::sync::Message],
) -> Result<Option<Vec<ChangeHash>>, String> {
    check_messages(doc, messages, true)
}

/// The checks of [`check_sync_messages`]; bundles and documents are opened
/// only if `open_small` (a peer's apply does not use the hashes, so it
/// would decode them twice for nothing).
fn check_messages(
    doc: &Automerge,
    messages: &[automerge::sync::Message],
    open_small: bool,
) -> Result<Option<Vec<ChangeHash>>, String> {
    for message in messages {
        message.have.iter().try_for_each(check_bloom)?;
    }
    let mut changes = Vec::new();
    // Whether every change the messages carry is among `changes`: not when
    // one is in a whole document, or in a chunk that does not decode
    // (Automerge's apply refuses it, or skips it as a partial chunk).
    let mut all_known = true;
    for chunk in messages.iter().flat_map(|message| message.changes.iter()) {
        for piece in storage_chunks(chunk) {
            match piece {
                Ok((kind, bytes)) if CHANGE_CHUNKS.contains(&kind) => {
                    match Change::from_bytes(bytes.to_vec()) {
                        Ok(change) => changes.push(change),
                        Err(_) => all_known = false,
                    }
                }
                // A small bundle of changes, or a small document (what
                // version-2 messages from Automerge 0.12 carry, a
                // keystroke's worth): opened here, their changes are
                // checked and their hashes known like single ones. A large
                // one is left to the apply (opened once, not twice).
                Ok((kind @ (BUNDLE_CHUNK | DOCUMENT_CHUNK), bytes))
                    if open_small && bytes.len() <= SMALL_CHUNK_BYTES =>
                {
                    let opened = guarded(|| {
                        if kind == BUNDLE_CHUNK {
                            automerge::Bundle::try_from(bytes)
                                .ok()
                                .and_then(|bundle| bundle.to_changes().ok())
                        } else {
                            Automerge::load(bytes)
                                .ok()
                                .map(|loaded| loaded.get_changes(&[]))
                        }
                    });
                    match opened {
                        Ok(Some(opened)) => changes.extend(opened),
                        _ => all_known = false,
                    }
                }
                _ => all_known = false,
            }
        }
    }
    check_changes(doc, &changes)?;
    Ok(all_known.then(|| changes.iter().map(Change::hash).collect()))
}

/// The first bytes of every Automerge storage chunk.
const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// The chunk type of a whole document.
const DOCUMENT_CHUNK: u8 = 0;
/// The chunk types of one change, plain or compressed.
const CHANGE_CHUNKS: [u8; 2] = [1, 2];
/// The chunk type of a bundle of changes.
const BUNDLE_CHUNK: u8 = 3;
/// The largest bundle or document chunk in a sync message whose changes
/// [`check_sync_messages`] decodes to learn their hashes (in the engine's
/// turn: a keystroke's worth, not a document's history).
const SMALL_CHUNK_BYTES: usize = 64 * 1024;

/// The changes in `bytes` from outside: a saved document, changes
/// (`save_after`, `getChanges` concatenated), or both, as Automerge
/// stores them. Each chunk is decoded on its own, so changes that depend
/// on changes held elsewhere (the document they will join) decode too.
/// Nothing that does not decode, never a panic. Blocks for as long as
/// decoding takes: run it off the engine's path.
pub fn decode_automerge(bytes: &[u8]) -> Result<Vec<Change>, String> {
    let mut changes = Vec::new();
    for chunk in storage_chunks(bytes) {
        let (kind, chunk) = chunk?;
        if CHANGE_CHUNKS.contains(&kind) {
            let change = guarded(|| Change::from_bytes(chunk.to_vec()))?;
            changes.push(change.map_err(|error| format!("a change does not decode: {error}"))?);
        } else {
            // A document (or a bundle of changes): loaded on its own, it
            // must hold its whole history.
            let loaded = guarded(|| Automerge::load(chunk))?.map_err(|error| {
                let what = if kind == DOCUMENT_CHUNK {
                    "a document"
                } else {
                    "a chunk"
                };
                format!("{what} does not load: {error}")
            })?;
            changes.extend(guarded(|| loaded.get_changes(&[]))?);
        }
    }
    Ok(changes)
}

/// The storage chunks `bytes` holds one after the other, each with its
/// type; an `Err` (and nothing after it) where no chunk starts or one's
/// length runs past the data.
fn storage_chunks(bytes: &[u8]) -> impl Iterator<Item = Result<(u8, &[u8]), String>> + '_ {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() < 9 || rest[..4] != CHUNK_MAGIC {
            let at = bytes.len() - rest.len();
            rest = &[];
            return Some(Err(format!(
                "not Automerge data: no chunk starts at byte {at}"
            )));
        }
        let kind = rest[8];
        let mut length_field = &rest[9..];
        let Some(length) = leb128::read::unsigned(&mut length_field)
            .ok()
            .and_then(|length| usize::try_from(length).ok())
            .filter(|length| *length <= length_field.len())
        else {
            rest = &[];
            return Some(Err(
                "a chunk's length is malformed or runs past the data".to_owned()
            ));
        };
        let header = rest.len() - length_field.len();
        let (chunk, tail) = rest.split_at(header + length);
        rest = tail;
        Some(Ok((kind, chunk)))
    })
}

/// Runs `apply` (which changes a document with a peer's data), turning a
/// panic inside Automerge into an error that says where it came from. After
/// an `Err` the document may be half-changed: the caller must not use it
/// again.
pub(crate) fn guarded<T>(apply: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(apply)).map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic with no message".to_owned());
        format!("Automerge panicked applying it: {what}")
    })
}

/// The changes `doc` gained since `before` (its heads before an apply),
/// rebuilt from its ops as the next flush will write them, each checked to
/// come back under the hash Automerge holds it by. An `Err` (a mismatch, or
/// a panic while rebuilding) means `doc` no longer saves what it holds.
pub(crate) fn verify_applied(
    doc: &Automerge,
    before: &[ChangeHash],
) -> Result<Vec<Change>, String> {
    if doc.get_heads() == before {
        return Ok(Vec::new());
    }
    let (rebuilt, held) = guarded(|| {
        let rebuilt = doc.get_changes(before);
        let held: BTreeSet<ChangeHash> = doc
            .get_changes_meta(before)
            .iter()
            .map(|meta| meta.hash)
            .collect();
        (rebuilt, held)
    })?;
    let came_back: BTreeSet<ChangeHash> = rebuilt.iter().map(Change::hash).collect();
    if came_back != held {
        let stray = came_back
            .difference(&held)
            .next()
            .or(held.difference(&came_back).next());
        return Err(format!(
            "the document no longer saves what it holds: {} changes held since the last heads, \
             {} rebuilt, differing at {}",
            held.len(),
            rebuilt.len(),
            stray.map_or_else(|| "?".to_owned(), ToString::to_string)
        ));
    }
    Ok(rebuilt)
}

/// [`verify_applied`] for an apply that could only add `fresh` (changes
/// `doc` lacked before it, when Automerge's queue of changes waiting for
/// dependencies was empty, so that nothing else could come out of it):
/// those of them `doc` holds now, rebuilt from its ops and checked to come
/// back under their hashes, in an order where dependencies come first.
/// Unlike [`verify_applied`] it never computes a vector clock of the old
/// heads, which costs time in proportion to how many heads there are and
/// how far back they reach (most of a node's CPU with 256 clients typing
/// concurrently).
pub(crate) fn verify_applied_hashes(
    doc: &Automerge,
    fresh: &[ChangeHash],
) -> Result<Vec<Change>, String> {
    let held: Vec<ChangeHash> = fresh
        .iter()
        .filter(|hash| doc.get_change_meta_by_hash(hash).is_some())
        .copied()
        .collect();
    if held.is_empty() {
        return Ok(Vec::new());
    }
    // All rebuilt in one pass over the op set (one pass per change costs
    // about as much as one for all of them: they are recent).
    let rebuilt = guarded(|| {
        doc.bundle(held.iter().copied())
            .and_then(|bundle| bundle.to_changes())
            .map_err(|error| error.to_string())
    })??;
    let mut by_hash: std::collections::BTreeMap<ChangeHash, Change> = rebuilt
        .into_iter()
        .map(|change| (change.hash(), change))
        .collect();
    let mut pending = Vec::with_capacity(held.len());
    for hash in &held {
        let Some(change) = by_hash.remove(hash) else {
            return Err(format!(
                "the document no longer saves what it holds: {} changes held, differing at {hash}",
                held.len()
            ));
        };
        pending.push(change);
    }
    // Dependencies first: a change goes once none of the others it
    // depends on is still waiting.
    let mut ordered = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let waiting: BTreeSet<ChangeHash> = pending.iter().map(Change::hash).collect();
        let (ready, rest): (Vec<Change>, Vec<Change>) = pending
            .into_iter()
            .partition(|change| change.deps().iter().all(|dep| !waiting.contains(dep)));
        if ready.is_empty() {
            return Err("the document holds changes that depend on each other".to_owned());
        }
        ordered.extend(ready);
        pending = rest;
    }
    Ok(ordered)
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
