//! Cluster membership: SWIM, by foca, carried as one more message kind.
//!
//! foca is itself sans-I/O: it takes packets and timer expiries and hands
//! back packets to send, timers to set and notifications. This module runs
//! it with the replica's clock and seed, so membership runs in the
//! simulator exactly as it does on a real node. Packets go only over
//! connections the driver already has; a member the driver cannot reach
//! fails its probes, which is what SWIM should conclude.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer};
use murmur_wire::NodeId;
use rand_foca::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::Time;

/// A member as SWIM knows it: the node, where to reach it, and a counter
/// that orders the node's incarnations across restarts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The node.
    pub node: NodeId,
    /// The address peers dial to reach it (opaque to the engine; the
    /// driver's transport parses it).
    pub addr: String,
    /// Seconds since the epoch when this incarnation started (plus one per
    /// automatic rejoin), so a restarted node's identity wins over its old
    /// one.
    pub bump: u32,
}

impl foca::Identity for Member {
    type Addr = NodeId;

    fn renew(&self) -> Option<Self> {
        Some(Member {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> NodeId {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // Newer wins, comparing with wrap-around.
        (self.bump.wrapping_sub(adversary.bump) as i32) > 0
    }
}

/// What membership tells the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MembershipEvent {
    Up(Member),
    Down(Member),
}

type Swim = Foca<Member, PostcardCodec, rand_foca::rngs::StdRng, NoCustomBroadcast>;

pub(crate) struct Membership {
    foca: Swim,
    runtime: AccumulatingRuntime<Member>,
    /// foca's timers by deadline (then by order set, for determinism).
    timers: BTreeMap<(Time, u64), Timer<Member>>,
    timers_set: u64,
    /// The latest time seen, to notice the clock going backwards.
    last_now: Option<Time>,
}

/// Timers past which membership logs, once, that it keeps an unusual
/// number: foca keeps a handful per member, and its contract is that every
/// timer is delivered, so none is ever dropped. What bounds them is the
/// member table, which only allowed peers can grow.
const MANY_TIMERS: usize = 16 * 1024;

impl Membership {
    pub(crate) fn new(me: Member, seed: u64) -> Self {
        let size = NonZeroU32::new(16).unwrap_or(NonZeroU32::MIN);
        let config = foca::Config::new_lan(size);
        let rng = rand_foca::rngs::StdRng::seed_from_u64(seed);
        Membership {
            foca: Foca::new(me, config, rng, PostcardCodec),
            runtime: AccumulatingRuntime::new(),
            timers: BTreeMap::new(),
            timers_set: 0,
            last_now: None,
        }
    }

    /// Introduces this node to a newly connected peer.
    pub(crate) fn announce(&mut self, peer: NodeId) -> Result<(), foca::Error> {
        // The peer's real identity arrives with its answer; this one only
        // routes the announcement.
        let placeholder = Member {
            node: peer,
            addr: String::new(),
            bump: 0,
        };
        self.foca.announce(placeholder, &mut self.runtime)
    }

    pub(crate) fn handle_data(&mut self, data: &[u8]) -> Result<(), foca::Error> {
        self.foca.handle_data(data, &mut self.runtime)
    }

    /// Fires every timer due at `now`.
    pub(crate) fn handle_timeout(&mut self, now: Time) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            if let Err(error) = self.foca.handle_timer(timer, &mut self.runtime) {
                tracing::debug!(%error, "membership timer failed");
            }
        }
    }

    /// Keeps `timer` until `at`. Every timer is kept: foca's contract is
    /// that each is delivered.
    fn schedule(&mut self, at: Time, timer: Timer<Member>) {
        self.timers_set += 1;
        self.timers.insert((at, self.timers_set), timer);
        if self.timers.len() == MANY_TIMERS {
            tracing::warn!(
                timers = MANY_TIMERS,
                members = self.foca.num_members(),
                "membership keeps an unusual number of timers (a very large or flooded member table)"
            );
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Time> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    /// Takes what foca produced: packets to send (by node) and events; sets
    /// the timers it asked for.
    pub(crate) fn drain(&mut self, now: Time) -> (Vec<(NodeId, Vec<u8>)>, Vec<MembershipEvent>) {
        let mut sends = Vec::new();
        while let Some((to, data)) = self.runtime.to_send() {
            sends.push((to.node, data.to_vec()));
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.schedule(now.add(after), timer);
        }
        let mut events = Vec::new();
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(member) => events.push(MembershipEvent::Up(member)),
                OwnedNotification::MemberDown(member) => events.push(MembershipEvent::Down(member)),
                OwnedNotification::Rename(old, new) => {
                    tracing::debug!(node = %new.node.short(), old = old.bump, new = new.bump, "member rejoined")
                }
                other => tracing::debug!(notification = ?other, "membership"),
            }
        }
        (sends, events)
    }

    /// The members currently believed alive (this node excluded), in order.
    pub(crate) fn members(&self) -> Vec<Member> {
        let mut members: Vec<Member> = self.foca.iter_members().map(|m| m.id().clone()).collect();
        members.sort();
        members
    }

    /// Keeps timers at the same distance from `now` when the clock goes
    /// backwards (foca sets some timers hours ahead, so a horizon check
    /// would not do).
    pub(crate) fn observe_clock(&mut self, now: Time) {
        if let Some(last) = self.last_now {
            if now < last {
                let back = last.since(now);
                let timers = std::mem::take(&mut self.timers);
                for ((at, seq), timer) in timers {
                    let moved =
                        Time::from_millis(at.as_millis().saturating_sub(back.as_millis() as u64));
                    self.timers.insert((moved, seq), timer);
                }
            }
        }
        self.last_now = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_timer_is_kept_and_delivered_however_many() {
        let me = Member {
            node: NodeId([1; 32]),
            addr: "a".into(),
            bump: 0,
        };
        let mut membership = Membership::new(me, 7);
        let start = Time::from_millis(1_000);
        let count = 2 * MANY_TIMERS;
        for i in 0..count {
            let at = start.add(std::time::Duration::from_millis(i as u64 % 100));
            membership.schedule(at, Timer::PeriodicGossip(0));
        }
        assert_eq!(membership.timers.len(), count);
        membership.handle_timeout(start.add(std::time::Duration::from_secs(1)));
        // Each was due, and each was handed to foca.
        assert!(membership.timers.is_empty());
    }
}
