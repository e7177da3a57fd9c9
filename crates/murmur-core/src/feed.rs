//! The change feed: every change a replica applies, local or a peer's, in
//! the order it applied them, numbered densely and kept in the store.
//!
//! A change is applied in memory first and becomes durable with a later
//! group commit. Its feed entry is numbered when that commit is built and
//! written in the same batch as the change, so a crash keeps both or
//! neither: the feed has no gap, no number pointing at nothing, and its
//! numbering goes on after a restart. Readers see only what is durable
//! ([`Replica::feed_end`](crate::Replica::feed_end)), so a number a reader
//! has seen never means something else after a crash.
//!
//! An entry says which document, which changes, the heads after them, who
//! made them ([`Origin`]) and when; never the document's content (a
//! consumer reads that from the document).
//!
//! Retention keeps the newest [`Config::feed_max_entries`](crate::Config::feed_max_entries);
//! reading from before the oldest kept entry is [`FeedError::Trimmed`]: the
//! reader must start again from a snapshot of the documents.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use automerge::{ChangeHash, ReadDoc};
use murmur_store::layout;
use murmur_store::{Storage, StoreError, WriteBatch};
use murmur_wire::{DocumentId, NodeId};

use crate::{Origin, Time};

/// Entries a [`FeedReader::read`] returns at most, whatever it is asked.
pub const MAX_FEED_PAGE: usize = 1024;

/// Format version of a stored entry.
const ENTRY_VERSION: u8 = 1;
/// Changes or heads one stored entry may name, at most.
const MAX_HASHES: usize = 1 << 16;

/// One entry of the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    /// Its sequence number: dense and increasing on this node, from 1.
    pub seq: u64,
    /// The document the changes belong to.
    pub doc: DocumentId,
    /// The changes applied, in the order they were applied.
    pub changes: Vec<ChangeHash>,
    /// The document's heads just after them.
    pub heads: Vec<ChangeHash>,
    /// Who made them: this node's application, or the peer they came from.
    pub origin: Origin,
    /// When this node applied them.
    pub time: Time,
    /// True for the entry of a deletion: the document is gone (`changes`
    /// and `heads` are empty).
    pub deleted: bool,
}

/// Why a feed read has no entries to give.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The entries from the cursor on were removed by retention (or
    /// predate the feed): start again from a snapshot of the documents,
    /// then follow from `first - 1`.
    #[error("the feed no longer holds entry {from}: its oldest entry is {first}; start again from a snapshot")]
    Trimmed {
        /// The sequence number asked for.
        from: u64,
        /// The oldest entry the feed holds.
        first: u64,
    },
    /// The store failed, or holds an entry that does not decode.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The replica is closed.
    #[error("the replica is closed")]
    Closed,
}

impl FeedEntry {
    fn encode(&self) -> Vec<u8> {
        let hashes = self.changes.len() + self.heads.len();
        let mut out = Vec::with_capacity(1 + 16 + 8 + 33 + 8 + 32 * hashes);
        out.push(ENTRY_VERSION);
        out.push(u8::from(self.deleted));
        out.extend_from_slice(self.doc.as_bytes());
        out.extend_from_slice(&self.time.as_millis().to_be_bytes());
        match self.origin {
            Origin::Local => out.push(0),
            Origin::Remote(peer) => {
                out.push(1);
                out.extend_from_slice(&peer.0);
            }
        }
        for list in [&self.changes, &self.heads] {
            out.extend_from_slice(&(list.len() as u32).to_be_bytes());
            for hash in list {
                out.extend_from_slice(&hash.0);
            }
        }
        out
    }

    /// Decodes entry `seq` stored under `key`; anything malformed is
    /// [`StoreError::Corrupt`].
    fn decode(seq: u64, key: &[u8], bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |why: &'static str| StoreError::corrupt(key, why);
        let mut input = Reader(bytes);
        if input.take(1) != Some(&[ENTRY_VERSION][..]) {
            return Err(corrupt("feed entry has an unknown version"));
        }
        let deleted = match input.take(1) {
            Some([0]) => false,
            Some([1]) => true,
            _ => return Err(corrupt("feed entry has an unknown kind")),
        };
        let doc = input
            .array::<16>()
            .ok_or_else(|| corrupt("feed entry is truncated"))?;
        let time = input
            .array::<8>()
            .ok_or_else(|| corrupt("feed entry is truncated"))?;
        let origin = match input.take(1) {
            Some([0]) => Origin::Local,
            Some([1]) => Origin::Remote(NodeId(
                input
                    .array::<32>()
                    .ok_or_else(|| corrupt("feed entry is truncated"))?,
            )),
            _ => return Err(corrupt("feed entry has an unknown origin")),
        };
        let changes = input
            .hashes()
            .ok_or_else(|| corrupt("feed entry's changes are malformed"))?;
        let heads = input
            .hashes()
            .ok_or_else(|| corrupt("feed entry's heads are malformed"))?;
        if !input.0.is_empty() {
            return Err(corrupt("feed entry has trailing bytes"));
        }
        Ok(FeedEntry {
            seq,
            doc: DocumentId(doc),
            changes,
            heads,
            origin,
            time: Time::from_millis(u64::from_be_bytes(time)),
            deleted,
        })
    }
}

/// A cursor over bytes that never reads past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|bytes| bytes.try_into().ok())
    }

    fn hashes(&mut self) -> Option<Vec<ChangeHash>> {
        let count = u32::from_be_bytes(self.array::<4>()?) as usize;
        // The count is checked against what is there before allocating.
        if count > MAX_HASHES || count * 32 > self.0.len() {
            return None;
        }
        (0..count)
            .map(|_| self.array::<32>().map(ChangeHash))
            .collect()
    }
}

/// Reads the feed from a store, off the engine's path (it blocks on the
/// store: run it on a blocking thread). Cheap to clone. It does not keep
/// the store open: once the replica is gone, reads fail with
/// [`FeedError::Closed`].
#[derive(Clone)]
pub struct FeedReader {
    store: Weak<dyn Storage>,
}

impl std::fmt::Debug for FeedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedReader").finish_non_exhaustive()
    }
}

impl FeedReader {
    pub(crate) fn new(store: &Arc<dyn Storage>) -> Self {
        FeedReader {
            store: Arc::downgrade(store),
        }
    }

    fn store(&self) -> Result<Arc<dyn Storage>, FeedError> {
        self.store.upgrade().ok_or(FeedError::Closed)
    }

    /// The entries numbered `from` up to (not including) `end`, at most
    /// `limit` of them (and at most [`MAX_FEED_PAGE`]). Pass
    /// [`Replica::feed_end`](crate::Replica::feed_end) as `end`: entries
    /// past it may not be durable yet. Empty when `from >= end` (nothing
    /// new yet); [`FeedError::Trimmed`] when entry `from` is gone.
    pub fn read(&self, from: u64, end: u64, limit: usize) -> Result<Vec<FeedEntry>, FeedError> {
        read_page(&*self.store()?, from, end, limit)
    }

    /// The oldest entry the feed holds, or `end` if it holds none before
    /// `end`.
    pub fn first(&self, end: u64) -> Result<u64, FeedError> {
        Ok(first_entry(&*self.store()?, end)?)
    }
}

/// [`FeedReader::read`] on a borrowed store.
fn read_page(
    store: &dyn Storage,
    from: u64,
    end: u64,
    limit: usize,
) -> Result<Vec<FeedEntry>, FeedError> {
    if from >= end || limit == 0 {
        return Ok(Vec::new());
    }
    let limit = limit.min(MAX_FEED_PAGE);
    let page = layout::scan_feed(store, from, end, limit)?;
    // The feed is dense: a first entry other than `from` means the
    // ones before it were trimmed.
    match page.first() {
        Some((first, _)) if *first == from => {}
        first => {
            return Err(FeedError::Trimmed {
                from,
                first: first.map_or(end, |(seq, _)| *seq),
            })
        }
    }
    page.into_iter()
        .enumerate()
        .map(|(i, (seq, bytes))| {
            if seq != from + i as u64 {
                return Err(
                    StoreError::corrupt(&layout::feed_key(seq), "the feed has a gap").into(),
                );
            }
            Ok(FeedEntry::decode(seq, &layout::feed_key(seq), &bytes)?)
        })
        .collect()
}

/// The oldest feed entry `store` holds below `end`, or `end`.
fn first_entry(store: &dyn Storage, end: u64) -> Result<u64, StoreError> {
    let page = layout::scan_feed(store, 0, end, 1)?;
    Ok(page.first().map_or(end, |(seq, _)| *seq))
}

/// One application of changes to a document, waiting in memory for the
/// group commit that makes it durable (and numbers it).
#[derive(Debug, Clone)]
pub(crate) struct Record {
    /// The replica-wide order of applications, so a commit numbers
    /// entries of different documents in the order they happened.
    pub(crate) order: u64,
    pub(crate) changes: Vec<ChangeHash>,
    pub(crate) heads: Vec<ChangeHash>,
    pub(crate) origin: Origin,
    pub(crate) time: Time,
    /// A deletion's record (no changes, no heads).
    pub(crate) deleted: bool,
}

impl Record {
    /// The record of a deletion.
    pub(crate) fn deletion(order: u64, origin: Origin, time: Time) -> Self {
        Record {
            order,
            changes: Vec::new(),
            heads: Vec::new(),
            origin,
            time,
            deleted: true,
        }
    }
}

/// The feed's numbering, as the engine keeps it.
#[derive(Debug)]
pub(crate) struct FeedLog {
    /// The next number: every entry below it is durable.
    next: u64,
    /// The oldest entry kept (`next` when there is none).
    first: u64,
    /// The next application's order.
    order: u64,
    /// The end of a batch that failed: the store may hold its entries
    /// (applied, not flushed), which the next batch must overwrite or
    /// delete.
    attempted_end: Option<u64>,
}

/// What one group commit does to the feed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Staged {
    /// The number after its last entry.
    end: u64,
    /// The oldest entry kept once it is durable.
    first: u64,
}

impl Staged {
    /// Entries it adds to `log` (before it is committed).
    pub(crate) fn added(&self, log: &FeedLog) -> u64 {
        self.end.saturating_sub(log.next)
    }
}

impl FeedLog {
    /// The feed as `store` holds it.
    pub(crate) fn open(store: &dyn Storage) -> Result<Self, StoreError> {
        let next = layout::load_feed_next(store)?;
        let first = first_entry(store, next)?;
        Ok(FeedLog {
            next,
            first,
            order: 0,
            attempted_end: None,
        })
    }

    /// The number after the last durable entry.
    pub(crate) fn end(&self) -> u64 {
        self.next
    }

    /// The order of the next application.
    pub(crate) fn next_order(&mut self) -> u64 {
        self.order += 1;
        self.order
    }

    /// Numbers `records` (of the documents a commit saves) in the order
    /// they were applied, from the next number, and adds them to `batch`
    /// with the new next number; trims beyond `max_entries`, at most as
    /// many entries per commit as it adds and 1,024 more.
    pub(crate) fn stage<'a>(
        &self,
        records: impl IntoIterator<Item = (DocumentId, &'a Record)>,
        max_entries: u64,
        batch: &mut WriteBatch,
    ) -> Staged {
        let mut ordered: BTreeMap<u64, (DocumentId, &Record)> = BTreeMap::new();
        for (doc, record) in records {
            ordered.insert(record.order, (doc, record));
        }
        let mut seq = self.next;
        for (doc, record) in ordered.into_values() {
            let entry = FeedEntry {
                seq,
                doc,
                changes: record.changes.clone(),
                heads: record.heads.clone(),
                origin: record.origin,
                time: record.time,
                deleted: record.deleted,
            };
            batch.put(layout::feed_key(seq), entry.encode());
            seq += 1;
        }
        let added = seq - self.next;
        if let Some(attempted) = self.attempted_end {
            for stale in seq..attempted {
                batch.delete(layout::feed_key(stale));
            }
        }
        if added > 0 || self.attempted_end.is_some() {
            layout::put_feed_next(batch, seq);
        }
        let keep_from = seq.saturating_sub(max_entries.max(1)).max(self.first);
        let first = keep_from.min(self.first + added + 1024);
        for trimmed in self.first..first {
            batch.delete(layout::feed_key(trimmed));
        }
        Staged { end: seq, first }
    }

    /// The commit that staged `staged` is durable.
    pub(crate) fn committed(&mut self, staged: Staged) {
        self.next = staged.end;
        self.first = staged.first.min(staged.end);
        self.attempted_end = None;
    }

    /// The commit that staged `staged` failed: the store may hold its
    /// entries.
    pub(crate) fn failed(&mut self, staged: Staged) {
        let end = self.attempted_end.unwrap_or(0).max(staged.end);
        self.attempted_end = (end > self.next).then_some(end);
    }
}

/// What [`verify`] found in a sound feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedSummary {
    /// The oldest entry.
    pub first: u64,
    /// The number after the newest.
    pub end: u64,
    /// Changes the entries name.
    pub changes: usize,
}

/// Checks the feed `store` holds against its documents: numbered densely
/// from its oldest entry to `feed_next - 1`, every entry decodes and names
/// changes its document holds, no change appears twice, and (unless
/// entries were trimmed) every change of every stored document appears.
/// O(store): for the simulator and tests.
pub fn verify(store: &dyn Storage) -> Result<FeedSummary, String> {
    let next = layout::load_feed_next(store).map_err(|e| e.to_string())?;
    let first = first_entry(store, next).map_err(|e| e.to_string())?;
    // A change's hash is unique within its document (two documents can
    // hold byte-identical changes).
    let mut seen: BTreeMap<(DocumentId, ChangeHash), u64> = BTreeMap::new();
    let mut per_doc: BTreeMap<DocumentId, Vec<ChangeHash>> = BTreeMap::new();
    let mut deletions: BTreeMap<DocumentId, usize> = BTreeMap::new();
    let mut from = first;
    while from < next {
        let page = read_page(store, from, next, MAX_FEED_PAGE).map_err(|e| {
            format!("reading the feed from entry {from} (oldest {first}, next {next}): {e}")
        })?;
        for entry in &page {
            for hash in &entry.changes {
                if let Some(earlier) = seen.insert((entry.doc, *hash), entry.seq) {
                    return Err(format!(
                        "change {hash} of document {} is in feed entries {earlier} and {}",
                        entry.doc, entry.seq
                    ));
                }
            }
            per_doc.entry(entry.doc).or_default().extend(&entry.changes);
            if entry.deleted {
                *deletions.entry(entry.doc).or_default() += 1;
            }
        }
        from += page.len() as u64;
    }
    // What is past `feed_next` must not be there.
    let beyond = layout::scan_feed(store, next, u64::MAX, 1).map_err(|e| e.to_string())?;
    if let Some((seq, _)) = beyond.first() {
        return Err(format!("feed entry {seq} is past feed_next {next}"));
    }
    let complete = first <= 1;
    for key in layout::list_documents(store).map_err(|e| e.to_string())? {
        let doc = DocumentId(key);
        let log = layout::load_document(store, &key).map_err(|e| e.to_string())?;
        let held = crate::document::assemble(&log)
            .map_err(|e| format!("document {doc} does not load: {e}"))?;
        let named = per_doc.remove(&doc).unwrap_or_default();
        for hash in &named {
            if held.get_change_by_hash(hash).is_none() {
                return Err(format!(
                    "feed entry {} names change {hash} of document {doc}, which the store lacks",
                    seen[&(doc, *hash)]
                ));
            }
        }
        if complete {
            let all = held.get_changes(&[]);
            if let Some(missing) = all.iter().find(|c| !seen.contains_key(&(doc, c.hash()))) {
                return Err(format!(
                    "document {doc} holds change {} ({} changes, {} in the feed), which no feed entry names",
                    missing.hash(),
                    all.len(),
                    named.len()
                ));
            }
        }
    }
    // What is left names documents the store does not hold: only deleted
    // ones, each with its deletion entry (unless trimmed) and only one.
    let tombstones: std::collections::BTreeSet<DocumentId> = layout::list_tombstones(store)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(DocumentId)
        .collect();
    if let Some(doc) = per_doc.keys().find(|doc| !tombstones.contains(doc)) {
        return Err(format!(
            "the feed names document {doc}, which the store does not hold"
        ));
    }
    for doc in &tombstones {
        let entries = deletions.get(doc).copied().unwrap_or(0);
        if entries > 1 || (complete && entries == 0) {
            return Err(format!(
                "deleted document {doc} has {entries} deletion entries in the feed"
            ));
        }
    }
    if let Some(doc) = deletions.keys().find(|doc| !tombstones.contains(doc)) {
        return Err(format!(
            "the feed says document {doc} was deleted, but it has no tombstone"
        ));
    }
    Ok(FeedSummary {
        first,
        end: next,
        changes: seen.len(),
    })
}
