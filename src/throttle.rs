//! Log lines for things that can happen thousands of times a second (accept errors, connections
//! over the cap, refused requests): the first occurrence is logged at once, then at most one
//! line per [`LOG_INTERVAL`], counting the occurrences it stands for. A flood must not become a
//! flood of log lines.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// At most one line per this long for each throttled kind of occurrence.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Counts occurrences of one kind and says when to log them: the first time, then at most once
/// per [`LOG_INTERVAL`], with how many occurred since the last line.
#[derive(Debug, Default)]
pub struct Throttled {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl Throttled {
    /// Counts one occurrence at `now`; returns the count to log, if a line is due.
    pub fn count(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self.last_logged.is_some_and(|last| now.duration_since(last) < LOG_INTERVAL) {
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// One [`Throttled`] per key (a refusal's status, say), for a static shared by every request.
pub struct ThrottledByKey<K> {
    keys: Mutex<Vec<(K, Throttled)>>,
}

impl<K: PartialEq> ThrottledByKey<K> {
    pub const fn new() -> Self {
        ThrottledByKey { keys: Mutex::new(Vec::new()) }
    }

    /// Counts one occurrence of `key` at `now`; returns the count to log, if a line is due.
    pub fn count(&self, key: K, now: Instant) -> Option<u64> {
        // A few keys at most (statuses, codes): a Vec beats a map.
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let index = keys.iter().position(|(known, _)| *known == key).unwrap_or_else(|| {
            keys.push((key, Throttled::default()));
            keys.len() - 1
        });
        keys[index].1.count(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood of occurrences gives one line per interval, which counts the ones it stood for.
    #[test]
    fn occurrences_are_logged_once_per_interval_with_their_count() {
        let start = Instant::now();
        let mut throttled = Throttled::default();
        assert_eq!(throttled.count(start), Some(1));
        for _ in 0..999 {
            assert_eq!(throttled.count(start + LOG_INTERVAL / 2), None);
        }
        assert_eq!(throttled.count(start + LOG_INTERVAL), Some(1000));
        assert_eq!(throttled.count(start + LOG_INTERVAL), None);
    }

    /// Each key has its own interval and count.
    #[test]
    fn keys_are_throttled_apart() {
        let start = Instant::now();
        let by_status = ThrottledByKey::new();
        assert_eq!(by_status.count(401, start), Some(1));
        assert_eq!(by_status.count(401, start), None);
        assert_eq!(by_status.count(404, start), Some(1));
        assert_eq!(by_status.count(401, start + LOG_INTERVAL), Some(2));
        assert_eq!(by_status.count(404, start + LOG_INTERVAL), Some(1));
    }
}
