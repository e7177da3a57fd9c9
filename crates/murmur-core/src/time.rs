//! Time as the engine sees it: a number the driver passes in.

use std::fmt;
use std::time::Duration;

/// A point in time: milliseconds since the Unix epoch, as the driver's clock
/// says. The engine never reads a clock; a real driver passes the wall
/// clock, the simulator passes virtual time (and can make it jump).
///
/// It stamps Automerge changes and schedules timers. The engine tolerates
/// it going backwards: a timer whose deadline lies further ahead than its
/// own interval is pulled back (see [`crate::Replica::poll_timeout`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(u64);

impl Time {
    /// The epoch itself.
    pub const ZERO: Time = Time(0);

    /// `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Time(millis)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch, as Automerge stamps changes.
    pub fn as_automerge_seconds(self) -> i64 {
        i64::try_from(self.0 / 1000).unwrap_or(i64::MAX)
    }

    /// This time plus `duration`, saturating (also `time + duration`).
    #[allow(clippy::should_implement_trait)] // it is implemented, below
    pub fn add(self, duration: Duration) -> Self {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(millis))
    }

    /// How long after `earlier` this is (zero if it is not after it).
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl std::ops::Add<Duration> for Time {
    type Output = Time;

    fn add(self, duration: Duration) -> Time {
        Time::add(self, duration)
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}
