//! Incarnations: each opening of a store that did not close cleanly writes
//! as a new Automerge actor, so a node that crashed never reuses a sequence
//! number it may already have pushed.

use automerge::ActorId;
use murmur_store::{layout, Storage, WriteBatch};
use murmur_wire::NodeId;

use crate::ReplicaError;

/// Which actor an opening of the store writes as, and how many openings
/// came before it.
pub(crate) struct Incarnation {
    /// The actor's incarnation number (0 for the first).
    pub(crate) actor: u64,
    /// Openings before this one: seeds the RNG, so no two draw alike.
    pub(crate) opening: u64,
}

fn read_counter(store: &dyn Storage, key: &[u8]) -> Result<Option<u64>, ReplicaError> {
    match store.get(key)? {
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
            .map(|bytes| Some(u64::from_be_bytes(bytes)))
            .map_err(|_| murmur_store::StoreError::corrupt(key, "counter is not 8 bytes").into()),
        None => Ok(None),
    }
}

/// Counts this opening of the store (written and flushed before anything
/// else happens) and picks its incarnation: the previous one again if it
/// was closed cleanly ([`crate::Replica::close`]: everything it ever sent was
/// flushed, so no sequence number of its actor can be reused), a new one
/// otherwise.
pub(crate) fn next(
    store: &dyn Storage,
    keep_clean_mark: bool,
) -> Result<Incarnation, ReplicaError> {
    let next_key = layout::node_key("incarnation");
    let clean_key = layout::node_key("clean-close");
    let opening_key = layout::node_key("openings");
    let next = match read_counter(store, &next_key)? {
        Some(next) => next,
        // A store from before incarnations were counted may hold changes
        // of the plain actor that a crash lost: do not reuse it.
        None if !layout::list_documents(store)?.is_empty() => 1,
        None => 0,
    };
    let clean = read_counter(store, &clean_key)?;
    let opening = read_counter(store, &opening_key)?.unwrap_or(0);
    let actor = match clean {
        Some(closed) if next > 0 && closed == next - 1 => closed,
        _ => next,
    };
    let mut batch = WriteBatch::new();
    batch.put(next_key, (actor + 1).to_be_bytes().to_vec());
    batch.put(opening_key, (opening + 1).to_be_bytes().to_vec());
    // The mark is spent: a crash of this incarnation must not look clean.
    if !keep_clean_mark {
        batch.delete(clean_key);
    }
    store.apply(batch)?;
    store.flush()?;
    Ok(Incarnation { actor, opening })
}

/// The Automerge actor of an incarnation of the node.
///
/// A node's changes are pushed to its peers before the group commit makes
/// them durable. If the node crashes in between, it restarts without them,
/// and with a stable actor its next change would reuse the lost change's
/// sequence number: every peer holding the lost one then rejects it
/// ("duplicate seq"), forever, and the replicas never converge again (the
/// simulator found this). So each incarnation writes as its own actor: the
/// node id's first 16 bytes, then, from the second incarnation on, the
/// incarnation number. One actor per restart, never per edit.
pub(crate) fn actor(node: &NodeId, incarnation: u64) -> ActorId {
    let mut actor = node.0[..16].to_vec();
    if incarnation > 0 {
        actor.extend_from_slice(&incarnation.to_be_bytes());
    }
    ActorId::from(actor)
}

/// True if `actor` is an actor of `node` (of any of its incarnations).
pub(crate) fn is_actor_of(actor: &ActorId, node: &NodeId) -> bool {
    actor.to_bytes().get(..16) == Some(&node.0[..16])
}

/// Marks the store closed cleanly by incarnation `incarnation` (after its
/// last flush): the next opening may write as the same actor.
pub(crate) fn mark_clean(store: &dyn Storage, incarnation: u64) -> Result<(), ReplicaError> {
    let mut batch = WriteBatch::new();
    batch.put(
        layout::node_key("clean-close"),
        incarnation.to_be_bytes().to_vec(),
    );
    store.apply(batch)?;
    store.flush()?;
    Ok(())
}
