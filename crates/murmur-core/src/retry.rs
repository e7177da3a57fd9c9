//! Sync conversations that went quiet, and when to restart them.
//!
//! A sync message can be lost. Automerge's sync state then believes the
//! lost changes are on their way, and neither side speaks again: the
//! conversation stalls until something else (a new change, anti-entropy)
//! starts it. A replica remembers each conversation in which it spoke and
//! has not heard back, and if the peer stays silent for
//! [`crate::Config::sync_retry`] it restarts it (in-flight state reset, a
//! fresh message), backing off up to [`MAX_ATTEMPTS`] times before leaving
//! it to anti-entropy. A conversation in which both sides have said the
//! same heads is finished, and is not restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use murmur_wire::{DocumentId, NodeId};

use crate::Time;

/// Restarts of one conversation before it is left to anti-entropy.
pub(crate) const MAX_ATTEMPTS: u32 = 10;
/// The longest wait between two restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Conversations waiting for the peer's answer, by deadline.
#[derive(Default)]
pub(crate) struct SyncRetries {
    due: BTreeSet<(Time, DocumentId, NodeId)>,
    waiting: BTreeMap<(DocumentId, NodeId), (Time, u32)>,
}

impl SyncRetries {
    /// We spoke to `peer` about `doc` at `now`: expect an answer within
    /// `wait` (a conversation already waiting keeps its deadline). At most
    /// `limit` conversations are watched; past it, anti-entropy covers.
    pub(crate) fn spoke(
        &mut self,
        now: Time,
        doc: DocumentId,
        peer: NodeId,
        wait: Duration,
        limit: usize,
    ) {
        if self.waiting.contains_key(&(doc, peer)) || self.waiting.len() >= limit {
            return;
        }
        self.arm(doc, peer, now.add(wait), 0);
    }

    /// `peer` spoke about `doc`: the conversation is alive.
    pub(crate) fn heard(&mut self, doc: DocumentId, peer: NodeId) {
        if let Some((at, _)) = self.waiting.remove(&(doc, peer)) {
            self.due.remove(&(at, doc, peer));
        }
    }

    /// `peer` is gone: its conversations restart when it reconnects.
    pub(crate) fn forget_peer(&mut self, peer: NodeId) {
        self.waiting.retain(|(_, who), _| *who != peer);
        self.due.retain(|(_, _, who)| *who != peer);
    }

    /// When the next conversation is due, if any waits.
    pub(crate) fn next_due(&self) -> Option<Time> {
        self.due.first().map(|(at, _, _)| *at)
    }

    /// Takes up to `limit` conversations due at `now`, with how many times
    /// each was restarted already.
    pub(crate) fn take_due(&mut self, now: Time, limit: usize) -> Vec<(DocumentId, NodeId, u32)> {
        let mut taken = Vec::new();
        while taken.len() < limit {
            let Some(&(at, doc, peer)) = self.due.first() else {
                break;
            };
            if at > now {
                break;
            }
            self.due.remove(&(at, doc, peer));
            let attempts = self.waiting.remove(&(doc, peer)).map_or(0, |(_, n)| n);
            taken.push((doc, peer, attempts));
        }
        taken
    }

    /// A conversation was restarted for the `attempts`-th time: wait twice
    /// as long for it (up to a bound).
    pub(crate) fn restarted(
        &mut self,
        now: Time,
        doc: DocumentId,
        peer: NodeId,
        wait: Duration,
        attempts: u32,
    ) {
        let backoff = wait
            .saturating_mul(1u32 << attempts.min(16))
            .min(MAX_BACKOFF.max(wait));
        self.arm(doc, peer, now.add(backoff), attempts);
    }

    fn arm(&mut self, doc: DocumentId, peer: NodeId, at: Time, attempts: u32) {
        if let Some((old, _)) = self.waiting.insert((doc, peer), (at, attempts)) {
            self.due.remove(&(old, doc, peer));
        }
        self.due.insert((at, doc, peer));
    }

    /// Conversations watched now.
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Checks that the deadline queue and the map agree.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.due.len() != self.waiting.len() {
            return Err(format!(
                "{} sync deadlines for {} waiting conversations",
                self.due.len(),
                self.waiting.len()
            ));
        }
        for (at, doc, peer) in &self.due {
            if self.waiting.get(&(*doc, *peer)).map(|(t, _)| t) != Some(at) {
                return Err(format!(
                    "sync deadline of {doc} with {} disagrees",
                    peer.short()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_peer_is_due_after_the_wait_and_backs_off_after_a_restart() {
        let (doc, peer) = (DocumentId::from_bytes([1; 16]), NodeId([2; 32]));
        let wait = Duration::from_millis(500);
        let mut retries = SyncRetries::default();
        retries.spoke(Time::from_millis(0), doc, peer, wait, 10);
        assert_eq!(retries.next_due(), Some(Time::from_millis(500)));
        assert!(retries.take_due(Time::from_millis(499), 10).is_empty());
        assert_eq!(
            retries.take_due(Time::from_millis(500), 10),
            vec![(doc, peer, 0)]
        );
        retries.restarted(Time::from_millis(500), doc, peer, wait, 1);
        assert_eq!(retries.next_due(), Some(Time::from_millis(1500)));
        retries.heard(doc, peer);
        assert_eq!(retries.next_due(), None);
        retries.check().expect("consistent");
    }

    #[test]
    fn watching_is_bounded_and_a_gone_peer_is_forgotten() {
        let peer = NodeId([2; 32]);
        let mut retries = SyncRetries::default();
        for i in 0..5u8 {
            let doc = DocumentId::from_bytes([i; 16]);
            retries.spoke(Time::from_millis(0), doc, peer, Duration::from_millis(1), 3);
        }
        assert_eq!(retries.len(), 3);
        retries.forget_peer(peer);
        assert_eq!(retries.len(), 0);
        retries.check().expect("consistent");
    }
}
