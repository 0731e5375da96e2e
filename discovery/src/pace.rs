//! Pacing for registry watch loops: a token bucket against churn, backoff with jitter against
//! failures.

use std::time::Duration;

use tokio::time::Instant;

use backon::{BackoffBuilder, ExponentialBuilder};

/// A token bucket: `burst` requests at once, then one per `refill`.
///
/// A watch loop takes a token before each request, so a registry that changes constantly is
/// polled at a bounded rate instead of being hammered by back-to-back blocking queries. A quiet
/// registry is never delayed: the bucket is full whenever a change arrives. Small enough that a
/// rate-limiting crate would add more than it saves.
#[derive(Debug)]
pub struct TokenBucket {
    burst: f64,
    tokens: f64,
    refill: Duration,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket holding `burst` tokens, refilled one per `refill`.
    pub fn new(burst: u32, refill: Duration) -> Self {
        TokenBucket {
            burst: f64::from(burst),
            tokens: f64::from(burst),
            refill,
            last: Instant::now(),
        }
    }

    /// Waits until a token is available and takes it.
    pub async fn take(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() / self.refill.as_secs_f64();
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = now;
        if self.tokens < 1.0 {
            let wait = self.refill.mul_f64(1.0 - self.tokens);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.last = Instant::now();
        }
        self.tokens -= 1.0;
    }
}

/// Delays between retries after registry errors: exponential from 100 ms to 10 s, with jitter
/// so that many sidecars do not retry in step.
#[derive(Debug, Default)]
pub struct Backoff {
    current: Option<backon::ExponentialBackoff>,
}

impl Backoff {
    /// The delay before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        self.current
            .get_or_insert_with(|| {
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(10))
                    .with_jitter()
                    .without_max_times()
                    .build()
            })
            .next()
            .unwrap_or(Duration::from_secs(10))
    }

    /// Forgets past failures after a success.
    pub fn reset(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_a_burst_then_paces() {
        let mut bucket = TokenBucket::new(2, Duration::from_millis(100));
        let start = tokio::time::Instant::now();
        bucket.take().await;
        bucket.take().await;
        assert!(start.elapsed() < Duration::from_millis(5));
        bucket.take().await;
        assert!(
            start.elapsed() >= Duration::from_millis(95),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn backoff_grows_and_resets() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(20));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(200));
    }
}
