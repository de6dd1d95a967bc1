//! Deadlines kept in a socket, in coarse ticks, for the one sweeper that looks at all of them
//! (`connection::registry`).

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How often deadlines are looked at: a ping goes out at most this late. Pusher's intervals are
/// whole seconds.
pub const TICK: Duration = Duration::from_millis(250);

/// A point in time, in ticks since the process started: what a socket's deadline is kept in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tick(u32);

impl Tick {
    /// A deadline that never comes.
    pub const NEVER: Tick = Tick(u32::MAX);

    pub fn now() -> Tick {
        static START: LazyLock<Instant> = LazyLock::new(Instant::now);
        Tick::saturating(START.elapsed().as_millis() / TICK.as_millis())
    }

    /// `self` plus `duration`, rounded up to a whole tick (a deadline is never early).
    pub fn after(self, duration: Duration) -> Tick {
        let ticks = duration.as_millis().div_ceil(TICK.as_millis());
        Tick::saturating(u128::from(self.0).saturating_add(ticks))
    }

    fn saturating(ticks: u128) -> Tick {
        // u32 ticks of 250 ms last 34 years.
        Tick(u32::try_from(ticks).unwrap_or(u32::MAX - 1))
    }
}

/// A socket's deadline: when its connection should be woken to look at its client's silence.
#[derive(Debug)]
pub struct Deadline(AtomicU32);

impl Default for Deadline {
    fn default() -> Self {
        Deadline(AtomicU32::new(Tick::NEVER.0))
    }
}

impl Deadline {
    pub fn set(&self, at: Tick) {
        self.0.store(at.0, Ordering::Relaxed);
    }

    /// Whether it passed at `now`; if so, it is cleared (it fires once).
    pub fn take_if_passed(&self, now: Tick) -> bool {
        let at = self.0.load(Ordering::Relaxed);
        at <= now.0 && self.0.compare_exchange(at, Tick::NEVER.0, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_fires_once_and_not_before_its_tick() {
        let deadline = Deadline::default();
        let now = Tick::now();
        assert!(!deadline.take_if_passed(now), "unset");
        deadline.set(now.after(Duration::from_millis(1)));
        assert!(!deadline.take_if_passed(now), "rounded up to the next tick, not early");
        let later = now.after(TICK);
        assert!(deadline.take_if_passed(later));
        assert!(!deadline.take_if_passed(later), "fired once");
    }
}
