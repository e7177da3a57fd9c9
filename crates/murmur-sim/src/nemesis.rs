//! The nemesis: fault windows, drawn from the seed, and what they do to
//! the simulated world while they are open.
//!
//! A fault is a window: it starts, it ends. Whatever windows are open at a
//! moment decide the world's state at that moment (links cut, directions
//! blocked, network flakiness, nodes crashed or paused, clock offsets), so
//! windows can overlap, and dropping one (as the shrinker does) leaves a
//! consistent schedule.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use murmur_core::testkit::{Cluster, Network};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::params::{NetworkParams, Params};
use crate::spec::Draw;

/// A kind of fault a scenario can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// The nodes split into two halves (in node order).
    PartitionHalves,
    /// The nodes split into two random halves.
    PartitionRandomHalves,
    /// One random node is cut off from the rest.
    PartitionIsolate,
    /// Every node sees a majority, and no two see the same one: the nodes
    /// stand in a random ring and each sees its nearest neighbours.
    PartitionMajoritiesRing,
    /// Two halves that cannot see each other, and one node that sees both.
    PartitionBridge,
    /// Messages from one random half to the other are dropped, the other
    /// way works, and the connections stay up.
    PartitionOneWay,
    /// The network turns bad: loss, duplication, long delays.
    Flaky,
    /// A node crashes (losing what it had not flushed) and restarts from
    /// its store when the window ends.
    Crash,
    /// A node stops: it hears nothing and its timers stand still, while
    /// messages to it queue; it resumes when the window ends.
    Pause,
    /// A node's clock jumps (forwards or backwards) and jumps back when the
    /// window ends.
    ClockJump,
    /// A node's store fails after a few more applies and flushes; the node
    /// crashes inside that engine call (keeping a random prefix of its
    /// unflushed batches) and stays down until the window ends.
    StorageCrash,
    /// A node closes cleanly and reopens at the window's start.
    Restart,
    /// A node closes cleanly and reopens at the window's start, then
    /// crashes (losing what it had not flushed) and reopens at its end.
    RestartCrash,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 13] = [
        FaultKind::PartitionHalves,
        FaultKind::PartitionRandomHalves,
        FaultKind::PartitionIsolate,
        FaultKind::PartitionMajoritiesRing,
        FaultKind::PartitionBridge,
        FaultKind::PartitionOneWay,
        FaultKind::Flaky,
        FaultKind::Crash,
        FaultKind::Pause,
        FaultKind::ClockJump,
        FaultKind::StorageCrash,
        FaultKind::Restart,
        FaultKind::RestartCrash,
    ];
}

/// One fault, with every random choice already made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// Links cut (connections close) and directions blocked.
    Partition {
        /// Which shape, for people.
        shape: FaultKind,
        /// The groups, for people (`[0 1] [2 3 4]`).
        groups: String,
        /// Unordered pairs of nodes that cannot talk.
        cut: Vec<(usize, usize)>,
        /// (from, to): messages this way are dropped.
        one_way: Vec<(usize, usize)>,
    },
    /// A bad network.
    Flaky {
        /// Chance of loss.
        loss: f64,
        /// Chance of duplication.
        duplicate: f64,
        /// Chance of a long delay.
        delay: f64,
        /// Longest delay.
        delay_max_ms: u64,
    },
    /// A crash, and a restart at the end.
    Crash {
        /// The node.
        node: usize,
        /// Unflushed write batches that survive.
        keep_batches: usize,
    },
    /// A pause, and a resume at the end.
    Pause {
        /// The node.
        node: usize,
    },
    /// A clock jump, and back at the end.
    ClockJump {
        /// The node.
        node: usize,
        /// How far (negative: backwards).
        offset_ms: i64,
    },
    /// The node's store fails after `after_ops` more operations; the node
    /// crashes there and stays down until the window ends.
    StorageCrash {
        /// The node.
        node: usize,
        /// Applies and flushes let through first.
        after_ops: u64,
    },
    /// A clean restart at the start; with `then_crash`, a crash and restart
    /// at the end.
    Restart {
        /// The node.
        node: usize,
        /// Crash at the window's end too.
        then_crash: bool,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition { shape, groups, .. } => {
                let name = serde_json::to_value(shape)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                write!(f, "{name} {groups}")
            }
            Fault::Flaky {
                loss,
                duplicate,
                delay,
                delay_max_ms,
            } => write!(
                f,
                "flaky loss={loss:.2} dup={duplicate:.2} delay={delay:.2}<={delay_max_ms}ms"
            ),
            Fault::Crash { node, keep_batches } => {
                write!(f, "crash n{node} (keeps {keep_batches} unflushed batches)")
            }
            Fault::Pause { node } => write!(f, "pause n{node}"),
            Fault::ClockJump { node, offset_ms } => write!(f, "clock n{node} {offset_ms:+}ms"),
            Fault::StorageCrash { node, after_ops } => {
                write!(f, "storage fails n{node} after {after_ops} ops")
            }
            Fault::Restart { node, then_crash } => {
                let then = if *then_crash { ", then crash" } else { "" };
                write!(f, "clean restart n{node}{then}")
            }
        }
    }
}

impl Fault {
    /// The node this fault is about, if it is about one node.
    pub fn node(&self) -> Option<usize> {
        match self {
            Fault::Crash { node, .. }
            | Fault::Pause { node }
            | Fault::ClockJump { node, .. }
            | Fault::StorageCrash { node, .. }
            | Fault::Restart { node, .. } => Some(*node),
            Fault::Partition { .. } | Fault::Flaky { .. } => None,
        }
    }
}

/// A fault open from `start_ms` to `end_ms` (chaos-phase milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultWindow {
    /// When it opens.
    pub start_ms: u64,
    /// When it closes.
    pub end_ms: u64,
    /// What it is.
    pub fault: Fault,
}

/// Draws the fault windows of a run: `tracks` independent sequences of
/// gap, window, gap, window ... starting within the chaos phase. The last
/// window of a track may still be open when the chaos ends: the liveness
/// phase heals it, so that convergence after the heal is measured on a
/// cluster that really was divided.
pub fn generate(params: &Params, rng: &mut impl Rng) -> Vec<FaultWindow> {
    let nemesis = &params.nemesis;
    let mut windows = Vec::new();
    if nemesis.faults.is_empty() {
        return windows;
    }
    for _ in 0..params.tracks {
        let mut at = 0;
        loop {
            at += nemesis.gap_ms.draw(rng);
            let duration = nemesis.duration_ms.draw(rng).max(1);
            if at >= params.chaos_ms {
                break;
            }
            let kind = *nemesis.faults.choose(rng).unwrap_or(&FaultKind::Flaky);
            windows.push(FaultWindow {
                start_ms: at,
                end_ms: at + duration,
                fault: draw_fault(kind, params, rng),
            });
            at += duration;
        }
    }
    windows.sort_by_key(|window| (window.start_ms, window.end_ms));
    windows
}

fn draw_fault(kind: FaultKind, params: &Params, rng: &mut impl Rng) -> Fault {
    let nemesis = &params.nemesis;
    let node = rng.gen_range(0..params.nodes);
    match kind {
        FaultKind::Flaky => Fault::Flaky {
            loss: nemesis.flaky_loss.draw(rng),
            duplicate: nemesis.flaky_duplicate.draw(rng),
            delay: nemesis.flaky_delay.draw(rng),
            delay_max_ms: nemesis.flaky_delay_max_ms.draw(rng),
        },
        FaultKind::Crash => Fault::Crash {
            node,
            keep_batches: nemesis.crash_keep_batches.draw(rng) as usize,
        },
        FaultKind::Pause => Fault::Pause { node },
        FaultKind::StorageCrash => Fault::StorageCrash {
            node,
            after_ops: nemesis.storage_crash_after_ops.draw(rng),
        },
        FaultKind::Restart => Fault::Restart {
            node,
            then_crash: false,
        },
        FaultKind::RestartCrash => Fault::Restart {
            node,
            then_crash: true,
        },
        FaultKind::ClockJump => Fault::ClockJump {
            node,
            offset_ms: nemesis.clock_jump_ms.draw(rng),
        },
        shape => partition(shape, params.nodes, rng),
    }
}

fn format_groups(groups: &[Vec<usize>]) -> String {
    groups
        .iter()
        .map(|group| {
            let names: Vec<String> = group.iter().map(|n| n.to_string()).collect();
            format!("[{}]", names.join(" "))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn all_pairs_between(a: &[usize], b: &[usize]) -> Vec<(usize, usize)> {
    let mut pairs = BTreeSet::new();
    for &x in a {
        for &y in b {
            if x != y {
                pairs.insert((x.min(y), x.max(y)));
            }
        }
    }
    pairs.into_iter().collect()
}

/// A partition of `nodes` nodes in the given shape.
pub fn partition(shape: FaultKind, nodes: usize, rng: &mut impl Rng) -> Fault {
    let mut order: Vec<usize> = (0..nodes).collect();
    if shape != FaultKind::PartitionHalves {
        order.shuffle(rng);
    }
    let half = nodes / 2;
    let (groups, cut, one_way) = match shape {
        FaultKind::PartitionIsolate => {
            let (alone, rest) = order.split_at(1);
            let groups = vec![alone.to_vec(), rest.to_vec()];
            (groups, all_pairs_between(alone, rest), Vec::new())
        }
        FaultKind::PartitionMajoritiesRing => majorities_ring(&order),
        FaultKind::PartitionBridge => bridge(&order),
        FaultKind::PartitionOneWay => {
            let (from, to) = order.split_at(half.max(1).min(nodes));
            let blocked = from
                .iter()
                .flat_map(|&a| to.iter().map(move |&b| (a, b)))
                .collect();
            (vec![from.to_vec(), to.to_vec()], Vec::new(), blocked)
        }
        _ => {
            let (a, b) = order.split_at(half);
            (
                vec![a.to_vec(), b.to_vec()],
                all_pairs_between(a, b),
                Vec::new(),
            )
        }
    };
    let mut groups = groups;
    for group in &mut groups {
        group.sort_unstable();
    }
    let separator = if shape == FaultKind::PartitionOneWay {
        " -x-> "
    } else {
        " "
    };
    let groups = groups
        .iter()
        .map(|g| format_groups(std::slice::from_ref(g)))
        .collect::<Vec<_>>()
        .join(separator);
    Fault::Partition {
        shape,
        groups,
        cut,
        one_way,
    }
}

type Shape = (Vec<Vec<usize>>, Vec<(usize, usize)>, Vec<(usize, usize)>);

/// Each node sees the nodes within `reach` of it on the ring, where `reach`
/// is the least that makes what it sees (itself included) a majority.
fn majorities_ring(ring: &[usize]) -> Shape {
    let n = ring.len();
    let majority = n / 2 + 1;
    let reach = (majority - 1).div_ceil(2);
    let mut cut = BTreeSet::new();
    for i in 0..n {
        for j in i + 1..n {
            let distance = (j - i).min(n - (j - i));
            if distance > reach {
                let (a, b) = (ring[i], ring[j]);
                cut.insert((a.min(b), a.max(b)));
            }
        }
    }
    let groups = (0..n)
        .map(|i| {
            (0..n)
                .filter(|&j| {
                    let d = i.abs_diff(j);
                    d.min(n - d) <= reach
                })
                .map(|j| ring[j])
                .collect()
        })
        .collect();
    (groups, cut.into_iter().collect(), Vec::new())
}

/// Two halves cut from each other, and a bridge node that sees both.
fn bridge(order: &[usize]) -> Shape {
    let Some((&bridge, rest)) = order.split_first() else {
        return (Vec::new(), Vec::new(), Vec::new());
    };
    let (a, b) = rest.split_at(rest.len() / 2);
    let mut side_a = a.to_vec();
    side_a.push(bridge);
    let mut side_b = b.to_vec();
    side_b.push(bridge);
    (
        vec![side_a, vec![bridge], side_b],
        all_pairs_between(a, b),
        Vec::new(),
    )
}

/// What the open windows, together, do to the world.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultState {
    /// Cut pairs.
    pub cut: BTreeSet<(usize, usize)>,
    /// Blocked directions.
    pub blocked: BTreeSet<(usize, usize)>,
    /// Crashed nodes, with how many unflushed batches the crash keeps.
    pub crashed: Vec<Option<usize>>,
    /// Nodes whose store is to fail after this many more operations.
    pub storage_crash: Vec<Option<u64>>,
    /// Paused nodes.
    pub paused: Vec<bool>,
    /// Clock offsets.
    pub clock_offset_ms: Vec<i64>,
    /// The worst flakiness open: (loss, duplicate, delay, delay_max_ms).
    pub flaky: Option<(f64, f64, f64, u64)>,
}

impl FaultState {
    /// The state that `open` windows make on `nodes` nodes.
    pub fn of<'a>(nodes: usize, open: impl IntoIterator<Item = &'a Fault>) -> FaultState {
        let mut state = FaultState {
            crashed: vec![None; nodes],
            storage_crash: vec![None; nodes],
            paused: vec![false; nodes],
            clock_offset_ms: vec![0; nodes],
            ..FaultState::default()
        };
        for fault in open {
            state.add(fault);
        }
        state
    }

    fn add(&mut self, fault: &Fault) {
        match fault {
            Fault::Partition { cut, one_way, .. } => {
                self.cut.extend(cut.iter().copied());
                self.blocked.extend(one_way.iter().copied());
            }
            Fault::Flaky {
                loss,
                duplicate,
                delay,
                delay_max_ms,
            } => {
                let (l, d, y, m) = self.flaky.unwrap_or((0.0, 0.0, 0.0, 0));
                self.flaky = Some((
                    l.max(*loss),
                    d.max(*duplicate),
                    y.max(*delay),
                    m.max(*delay_max_ms),
                ));
            }
            Fault::Crash { node, keep_batches } => {
                if let Some(slot) = self.crashed.get_mut(*node) {
                    *slot = Some(slot.unwrap_or(0).max(*keep_batches));
                }
            }
            Fault::Pause { node } => {
                if let Some(slot) = self.paused.get_mut(*node) {
                    *slot = true;
                }
            }
            Fault::StorageCrash { node, after_ops } => {
                if let Some(slot) = self.storage_crash.get_mut(*node) {
                    *slot = Some(slot.map_or(*after_ops, |ops| ops.min(*after_ops)));
                }
            }
            // An event at the window's edges, not a state: the runner does it.
            Fault::Restart { .. } => {}
            Fault::ClockJump { node, offset_ms } => {
                if let Some(slot) = self.clock_offset_ms.get_mut(*node) {
                    *slot = slot.saturating_add(*offset_ms);
                }
            }
        }
    }

    /// The network: `base`, made worse by any open flaky window.
    pub fn network(&self, base: &NetworkParams) -> Network {
        let mut network = base.network();
        if let Some((loss, duplicate, delay, delay_max_ms)) = self.flaky {
            network.loss = network.loss.max(loss);
            network.duplicate = network.duplicate.max(duplicate);
            network.delay = network.delay.max(delay);
            network.delay_max = network.delay_max.max(Duration::from_millis(delay_max_ms));
        }
        network
    }

    /// Makes the cluster match this state. Returns the nodes that crashed
    /// now (so their pending writes become indeterminate).
    pub fn apply(&self, cluster: &mut Cluster, base: &NetworkParams) -> Vec<usize> {
        cluster.network = self.network(base);
        cluster.set_links(self.cut.iter().copied(), self.blocked.iter().copied());
        let mut crashed_now = Vec::new();
        for node in 0..cluster.len() {
            match (self.crashed[node], cluster.is_up(node)) {
                (Some(keep), true) => {
                    cluster.crash_keeping(node, keep);
                    crashed_now.push(node);
                }
                // A node whose store failed stays down while its window is
                // open.
                (None, false) if self.storage_crash[node].is_none() => cluster.restart(node),
                _ => {}
            }
            match self.storage_crash[node] {
                Some(ops) if cluster.is_up(node) && !cluster.storage_armed(node) => {
                    cluster.fail_storage_after(node, ops);
                }
                None => cluster.disarm_storage(node),
                _ => {}
            }
            if self.paused[node] && cluster.is_up(node) {
                cluster.pause(node);
            } else if !self.paused[node] && cluster.is_paused(node) {
                cluster.resume(node);
            }
            cluster.set_clock_offset(node, self.clock_offset_ms[node]);
        }
        crashed_now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn cut_of(fault: &Fault) -> Vec<(usize, usize)> {
        match fault {
            Fault::Partition { cut, .. } => cut.clone(),
            _ => panic!("not a partition"),
        }
    }

    fn sees(cut: &[(usize, usize)], n: usize, node: usize) -> usize {
        (0..n)
            .filter(|&other| other == node || !cut.contains(&(node.min(other), node.max(other))))
            .count()
    }

    #[test]
    fn halves_cut_every_link_between_the_halves_and_none_within() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let cut = cut_of(&partition(FaultKind::PartitionHalves, 5, &mut rng));
        assert_eq!(cut.len(), 2 * 3);
        assert!(cut.iter().all(|&(a, b)| a < 2 && b >= 2));
    }

    #[test]
    fn in_a_majorities_ring_every_node_sees_a_majority_and_no_two_the_same() {
        for n in [4, 5, 6, 7] {
            let mut rng = ChaCha8Rng::seed_from_u64(n as u64);
            let cut = cut_of(&partition(FaultKind::PartitionMajoritiesRing, n, &mut rng));
            for node in 0..n {
                assert!(sees(&cut, n, node) > n / 2, "n={n} node={node}");
            }
            let views: BTreeSet<Vec<usize>> = (0..n)
                .map(|node| {
                    (0..n)
                        .filter(|&o| o == node || !cut.contains(&(node.min(o), node.max(o))))
                        .collect()
                })
                .collect();
            if n == 5 {
                assert_eq!(views.len(), n, "every view differs");
            }
            assert!(!cut.is_empty(), "n={n}: something is cut");
        }
    }

    #[test]
    fn a_bridge_node_sees_everyone_and_the_halves_see_only_themselves() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let cut = cut_of(&partition(FaultKind::PartitionBridge, 5, &mut rng));
        let bridge = (0..5).find(|&node| sees(&cut, 5, node) == 5);
        assert!(bridge.is_some());
        assert_eq!(cut.len(), 4);
    }

    #[test]
    fn a_one_way_partition_blocks_one_direction_and_cuts_nothing() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        match partition(FaultKind::PartitionOneWay, 4, &mut rng) {
            Fault::Partition { cut, one_way, .. } => {
                assert!(cut.is_empty());
                assert_eq!(one_way.len(), 4);
                for (a, b) in &one_way {
                    assert!(!one_way.contains(&(*b, *a)));
                }
            }
            _ => panic!("not a partition"),
        }
    }

    #[test]
    fn overlapping_windows_combine() {
        let faults = [
            Fault::ClockJump {
                node: 1,
                offset_ms: 10,
            },
            Fault::ClockJump {
                node: 1,
                offset_ms: -30,
            },
            Fault::Crash {
                node: 0,
                keep_batches: 1,
            },
        ];
        let state = FaultState::of(3, faults.iter());
        assert_eq!(state.clock_offset_ms, vec![0, -20, 0]);
        assert_eq!(state.crashed, vec![Some(1), None, None]);
    }
}
