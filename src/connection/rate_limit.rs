//! The client-event rate limit (Pusher's: `client_events_per_sec` per socket).

use tokio::time::Instant;

/// A token bucket: `per_sec` client events per second, bursts up to `per_sec`.
///
/// Boxed, and only once the socket sends its first client event: most sockets never send one,
/// and every socket's task would otherwise carry the bucket (24 bytes).
#[derive(Default)]
pub struct ClientEventBudget(Option<Box<Bucket>>);

struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

impl ClientEventBudget {
    /// Takes one event's token; false if the socket is over its rate.
    pub fn take(&mut self, per_sec: u32) -> bool {
        let now = Instant::now();
        let capacity = f64::from(per_sec);
        let bucket = self.0.get_or_insert_with(|| Box::new(Bucket { tokens: capacity, refilled_at: now }));
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.refilled_at).as_secs_f64() * capacity).min(capacity);
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A burst of `per_sec` passes, the next is refused, and the budget refills with time.
    #[tokio::test(start_paused = true)]
    async fn bursts_up_to_the_rate_then_refills() {
        let mut budget = ClientEventBudget::default();
        assert!((0..10).all(|_| budget.take(10)));
        assert!(!budget.take(10), "the eleventh event within the second");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(budget.take(10), "a tenth of a second refills one token");
        assert!(!budget.take(10));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!((0..20).filter(|_| budget.take(10)).count(), 10, "never more than one second's worth");
    }
}
