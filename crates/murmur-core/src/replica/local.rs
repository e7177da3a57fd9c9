//! Local inputs: new documents and local changes, and the disk-space guard
//! that refuses them when the disk is nearly full.

use automerge::transaction::{CommitOptions, Transactable, Transaction};
use automerge::{AutomergeError, Change, ChangeHash, ReadDoc};
use murmur_store::layout;
use murmur_wire::{DocumentId, NodeId};
use rand::Rng;

use super::{AckLevel, Origin, Replica, WriteId};
use crate::document::Document;
use crate::{FaultInjection, ReplicaError, Time};

/// What a local change did.
#[derive(Debug)]
pub struct LocalWrite<O> {
    /// Its id: [`Event::Acknowledged`](crate::Event::Acknowledged) events name it.
    pub write: WriteId,
    /// The Automerge change it made, or `None` if the closure changed
    /// nothing (then it is acknowledged `Durable` at once).
    pub change: Option<ChangeHash>,
    /// How many Automerge operations the change holds (at most
    /// [`Config::max_change_ops`](crate::Config::max_change_ops)).
    pub ops: usize,
    /// What the closure returned.
    pub output: O,
}

impl Replica {
    /// Creates a new, empty document with a random id, and announces it to
    /// the connected peers.
    pub fn create_document(&mut self, now: Time) -> DocumentId {
        self.observe_clock(now);
        let id = loop {
            let id = DocumentId::from_bytes(self.rng.gen());
            if !self.holds(id).unwrap_or(false) {
                break id;
            }
        };
        self.add_document(now, id);
        id
    }

    /// Creates an empty document under a given id (restoring a backup,
    /// say: merge its data into it next). Refused with
    /// [`ReplicaError::DocumentExists`] if this node holds one with that id
    /// (in memory, stored or quarantined).
    pub fn create_document_with_id(
        &mut self,
        now: Time,
        id: DocumentId,
    ) -> Result<(), ReplicaError> {
        self.observe_clock(now);
        if self.holds(id)? {
            return Err(ReplicaError::DocumentExists(id));
        }
        self.add_document(now, id);
        Ok(())
    }

    /// Whether `id` is a document here: in memory, quarantined or stored.
    fn holds(&self, id: DocumentId) -> Result<bool, ReplicaError> {
        Ok(self.is_deleted(&id)
            || self.docs.contains_key(&id)
            || self.docs.is_quarantined(&id)
            || layout::document_exists(&*self.store, id.as_bytes())?)
    }

    /// Adds the new, empty document `id` and announces it to every peer.
    fn add_document(&mut self, now: Time, id: DocumentId) {
        self.docs.insert(id, Document::new(self.actor.clone()));
        self.mark_dirty(now, id);
        // Announce it: a sync message makes every connected peer hold it.
        let peers: Vec<NodeId> = self.peers.iter().copied().collect();
        for peer in peers {
            self.sync_with(id, peer, false);
        }
        tracing::debug!(doc = %id, "created document");
    }

    /// Applies a local change to `doc`: runs `change` in one Automerge
    /// transaction stamped with `now`. The change is acknowledged
    /// [`AckLevel::Applied`] when this returns, pushed to every connected
    /// peer, and acknowledged [`AckLevel::Durable`] (an [`Event`](crate::Event)) after the
    /// next flush. Refused with [`ReplicaError::DiskFull`] while the disk is
    /// nearly full ([`Replica::handle_disk_space`]), and with
    /// [`ReplicaError::Loading`] if `doc` is stored but not in memory (its
    /// load is then requested: see [`Replica::request_load`] and
    /// [`Replica::load_now`]); nothing changed then.
    pub fn handle_local_change<O>(
        &mut self,
        now: Time,
        doc: DocumentId,
        change: impl FnOnce(&mut Transaction<'_>) -> Result<O, AutomergeError>,
    ) -> Result<LocalWrite<O>, ReplicaError> {
        self.handle_local_change_described(now, doc, None, change)
    }

    /// [`Replica::handle_local_change`], with a message the change carries
    /// (Automerge's change message: history shows it).
    pub fn handle_local_change_described<O>(
        &mut self,
        now: Time,
        doc: DocumentId,
        message: Option<String>,
        change: impl FnOnce(&mut Transaction<'_>) -> Result<O, AutomergeError>,
    ) -> Result<LocalWrite<O>, ReplicaError> {
        let _span = tracing::debug_span!("local_change", doc = %doc).entered();
        self.observe_clock(now);
        self.check_writable()?;
        let observed = self.events.observed(doc);
        let max_ops = self.config.max_change_ops;
        let document = self.document_mut(doc)?;
        let mut options = CommitOptions::default().with_time(now.as_automerge_seconds());
        if let Some(message) = message {
            options = options.with_message(message);
        }
        let Committed {
            result,
            hash,
            patches,
            ops,
        } = transact(&mut document.doc, options, observed, max_ops, change)?;
        let made = hash.and_then(|hash| document.doc.get_change_by_hash(&hash));
        let raw_change = made.as_ref().map(|change| change.raw_bytes().to_vec());
        document.applied(made);
        let write = WriteId(self.next_write);
        self.next_write += 1;
        let (Some(hash), Some(raw_change)) = (hash, raw_change) else {
            self.events.acknowledged(write, doc, AckLevel::Durable);
            return Ok(LocalWrite {
                write,
                change: None,
                ops,
                output: result,
            });
        };
        self.push_to_all(doc, raw_change);
        self.accept_local_write(write, doc, hash);
        if self.config.planted(FaultInjection::AckDurableBeforeFlush) {
            self.events.acknowledged(write, doc, AckLevel::Durable);
        }
        self.changed(now, doc, Origin::Local, patches);
        Ok(LocalWrite {
            write,
            change: Some(hash),
            ops,
            output: result,
        })
    }

    /// Merges changes from outside into `doc` (a document made elsewhere,
    /// from [`crate::decode_automerge`]): they keep their history, so the
    /// copy they came from and this one merge later. Acknowledged like a
    /// local change ([`LocalWrite::change`] is one of the new heads); the
    /// changes are pushed to peers and the feed reports them as local.
    /// Refused, with nothing changed, if one misses a dependency neither
    /// the document nor `changes` holds, or names an actor it cannot; an
    /// Automerge failure while applying them rebuilds the document (see
    /// [`ReplicaError::InvalidPeerData`]) and refuses them too.
    pub fn handle_local_merge(
        &mut self,
        now: Time,
        doc: DocumentId,
        changes: Vec<Change>,
    ) -> Result<LocalWrite<()>, ReplicaError> {
        let _span =
            tracing::debug_span!("local_merge", doc = %doc, changes = changes.len()).entered();
        self.observe_clock(now);
        self.check_writable()?;
        let observed = self.events.observed(doc);
        let document = self.document_mut(doc)?;
        let refuse = |reason: String| ReplicaError::ForeignData { reason };
        let mut present: std::collections::BTreeSet<ChangeHash> = std::collections::BTreeSet::new();
        for change in &changes {
            if let Some(dep) = change.deps().iter().find(|dep| {
                !present.contains(*dep) && document.doc.get_change_meta_by_hash(dep).is_none()
            }) {
                return Err(refuse(format!(
                    "change {} depends on {dep}, which neither the document nor the data holds",
                    change.hash()
                )));
            }
            present.insert(change.hash());
        }
        crate::foreign::check_changes(&document.doc, &changes).map_err(refuse)?;
        let ops = changes.iter().map(Change::len).sum();
        let before = document.heads();
        let mut log = automerge::PatchLog::new(observed);
        let hashes: Vec<ChangeHash> = changes.iter().map(Change::hash).collect();
        let applied = document.apply_verified_with(Some(&hashes), |document| {
            document.doc.apply_changes_log_patches(changes, &mut log)
        });
        let added = match applied {
            Ok((Ok(_), _, added)) => document.unsaved_tail(added),
            Ok((Err(error), _, _)) => {
                let reason = error.to_string();
                self.rebuild_document(doc, None, &reason);
                return Err(refuse(reason));
            }
            Err(reason) => {
                self.rebuild_document(doc, None, &reason);
                return Err(refuse(reason));
            }
        };
        let patches = observed.then(|| document.doc.make_patches(&mut log));
        let heads = document.heads();
        let write = WriteId(self.next_write);
        self.next_write += 1;
        let Some(&hash) = heads.iter().find(|head| !before.contains(head)) else {
            // Nothing new: every change was here already.
            self.events.acknowledged(write, doc, AckLevel::Durable);
            return Ok(LocalWrite {
                write,
                change: None,
                ops: 0,
                output: (),
            });
        };
        for raw in added {
            self.push_to_all(doc, raw);
        }
        self.accept_local_write(write, doc, hash);
        self.changed(now, doc, Origin::Local, patches);
        Ok(LocalWrite {
            write,
            change: Some(hash),
            ops,
            output: (),
        })
    }

    /// A local write whose change (`hash`, a new head) is applied and
    /// pushed: it waits for the next flush to be `Durable`, its copies on
    /// the peers it went to are counted, and it is `Applied` now.
    pub(super) fn accept_local_write(&mut self, write: WriteId, doc: DocumentId, hash: ChangeHash) {
        self.metrics.local_changes += 1;
        self.durability.await_write(write, doc);
        let pushed_to = self.peers.clone();
        self.replication.track(
            write,
            doc,
            hash,
            self.config.max_tracked_replications,
            pushed_to,
        );
        self.events.acknowledged(write, doc, AckLevel::Applied);
    }

    /// The driver measured `free_bytes` free on the disk holding the store.
    /// Below [`Config::min_free_bytes`](crate::Config::min_free_bytes) new local writes are refused
    /// ([`Replica::check_writable`]) until a later measurement is above
    /// it again. Flushes go on: they carry writes already acknowledged
    /// `Applied`, which the reserve is there to hold.
    pub fn handle_disk_space(&mut self, now: Time, free_bytes: u64) {
        let _ = now;
        let min = self.config.min_free_bytes;
        let full = min > 0 && free_bytes < min;
        let was_full = self.metrics.disk_full == 1;
        if full && !was_full {
            tracing::error!(
                free_bytes, min_free_bytes = min,
                "disk nearly full: refusing new writes until space is freed (reads and replication go on)"
            );
        } else if !full && was_full {
            tracing::warn!(
                free_bytes,
                min_free_bytes = min,
                "disk space freed: accepting writes again"
            );
        }
        self.metrics.disk_free_bytes = free_bytes;
        self.metrics.disk_full = u64::from(full);
    }

    /// `Err(`[`ReplicaError::DiskFull`]`)` while new local writes are
    /// refused for want of disk space (counted), `Ok` otherwise.
    pub fn check_writable(&mut self) -> Result<(), ReplicaError> {
        if self.metrics.disk_full == 0 {
            return Ok(());
        }
        self.metrics.writes_refused_disk_full += 1;
        Err(ReplicaError::DiskFull {
            free_bytes: self.metrics.disk_free_bytes,
            min_free_bytes: self.config.min_free_bytes,
        })
    }
}

/// A committed local transaction.
struct Committed<O> {
    /// What the closure returned.
    result: O,
    /// The change's hash; none if it changed nothing.
    hash: Option<ChangeHash>,
    /// The patches of what it did, for an observed document.
    patches: Option<Vec<automerge::Patch>>,
    /// Automerge operations in it.
    ops: usize,
}

/// A local change: `change` in one transaction stamped with `options`,
/// rolled back if it fails, with patches for an `observed` document (an
/// inactive patch log costs nothing).
fn transact<O>(
    doc: &mut automerge::Automerge,
    options: CommitOptions,
    observed: bool,
    max_ops: usize,
    change: impl FnOnce(&mut Transaction<'_>) -> Result<O, AutomergeError>,
) -> Result<Committed<O>, ReplicaError> {
    let mut transaction = doc
        .transaction_log_patches(automerge::PatchLog::new(observed))
        .map_err(|mismatch| ReplicaError::ChangeRejected(AutomergeError::from(mismatch)))?;
    match change(&mut transaction) {
        Ok(_) if transaction.pending_ops() > max_ops => {
            let ops = transaction.pending_ops();
            transaction.rollback();
            tracing::warn!(ops, max_ops, "change refused: too many operations");
            Err(ReplicaError::ChangeTooLarge { ops, max_ops })
        }
        Ok(result) => {
            let ops = transaction.pending_ops();
            let (hash, mut log) = transaction.commit_with(options);
            let patches = observed.then(|| doc.make_patches(&mut log));
            Ok(Committed {
                result,
                hash,
                patches,
                ops,
            })
        }
        Err(error) => {
            transaction.rollback();
            Err(ReplicaError::ChangeRejected(error))
        }
    }
}
