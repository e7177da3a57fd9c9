//! The shrinker: makes a failing schedule smaller while it still fails.
//!
//! It removes fault windows, then operations, in chunks that halve down to
//! single items (delta debugging), re-running the schedule after each
//! removal and keeping it when the run still fails the same way: the
//! checker behind the original run's first finding must still find
//! something. Removing items changes what the seed's random streams do
//! later in the run, so a shrunk schedule is a different run; that is why
//! it is saved and replayed as data, never re-derived from the seed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::schedule::{Repro, Schedule};
use crate::sim::{self, RunOptions};

/// How much work the shrinker may do.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Most runs.
    pub max_runs: usize,
    /// Most wall-clock time.
    pub max_time: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_runs: 500,
            max_time: Duration::from_secs(120),
        }
    }
}

/// What shrinking did.
#[derive(Debug, Clone)]
pub struct Shrunk {
    /// The smallest failing repro found.
    pub repro: Repro,
    /// The checkers that fail on it.
    pub signature: BTreeSet<String>,
    /// Runs made.
    pub runs: usize,
}

struct Shrinker<'a> {
    repro: Repro,
    primary: String,
    signature: BTreeSet<String>,
    runs: usize,
    budget: Budget,
    started: Instant,
    progress: &'a mut dyn FnMut(&Schedule, usize),
}

/// Shrinks `repro`, whose run fails first with checker `primary`.
pub fn shrink(
    repro: &Repro,
    primary: &str,
    budget: Budget,
    progress: &mut dyn FnMut(&Schedule, usize),
) -> Shrunk {
    let mut shrinker = Shrinker {
        repro: repro.clone(),
        primary: primary.to_owned(),
        signature: BTreeSet::new(),
        runs: 0,
        budget,
        started: Instant::now(),
        progress,
    };
    loop {
        let before = (
            shrinker.repro.schedule.ops.len(),
            shrinker.repro.schedule.faults.len(),
        );
        shrinker.minimise(Part::Faults);
        shrinker.minimise(Part::Ops);
        let after = (
            shrinker.repro.schedule.ops.len(),
            shrinker.repro.schedule.faults.len(),
        );
        if after == before || shrinker.out_of_budget() {
            break;
        }
    }
    if shrinker.signature.is_empty() {
        shrinker.signature = shrinker
            .failing(&shrinker.repro.schedule.clone())
            .unwrap_or_default();
    }
    Shrunk {
        repro: shrinker.repro,
        signature: shrinker.signature,
        runs: shrinker.runs,
    }
}

#[derive(Clone, Copy)]
enum Part {
    Ops,
    Faults,
}

impl Shrinker<'_> {
    fn out_of_budget(&self) -> bool {
        self.runs >= self.budget.max_runs || self.started.elapsed() >= self.budget.max_time
    }

    /// The failing checkers if `schedule` still fails the same way.
    fn failing(&mut self, schedule: &Schedule) -> Option<BTreeSet<String>> {
        self.runs += 1;
        let options = RunOptions {
            keep_trace: false,
            plant: self.repro.plant,
        };
        let outcome = sim::run(&self.repro.params, schedule, options);
        let signature = outcome.report.signature();
        signature.contains(&self.primary).then_some(signature)
    }

    fn len(&self, part: Part) -> usize {
        match part {
            Part::Ops => self.repro.schedule.ops.len(),
            Part::Faults => self.repro.schedule.faults.len(),
        }
    }

    fn without(&self, part: Part, start: usize, count: usize) -> Schedule {
        let mut schedule = self.repro.schedule.clone();
        match part {
            Part::Ops => drop(schedule.ops.drain(start..start + count)),
            Part::Faults => drop(schedule.faults.drain(start..start + count)),
        }
        schedule
    }

    /// Delta debugging over one part: remove chunks, halving their size.
    fn minimise(&mut self, part: Part) {
        let mut chunk = self.len(part).div_ceil(2).max(1);
        while self.len(part) > 0 {
            let mut start = 0;
            while start < self.len(part) && !self.out_of_budget() {
                let count = chunk.min(self.len(part) - start);
                let candidate = self.without(part, start, count);
                if let Some(signature) = self.failing(&candidate) {
                    self.repro.schedule = candidate;
                    self.signature = signature;
                    (self.progress)(&self.repro.schedule, self.runs);
                } else {
                    start += count;
                }
            }
            if chunk == 1 || self.out_of_budget() {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
    }
}
