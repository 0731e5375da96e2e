//! Pacing for registry watch loops: a token bucket against churn, spacing in proportion to the
//! size of what was read against churn of very large services, backoff with jitter against
//! failures.

use std::collections::HashMap;
use std::sync::Arc;
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

/// The least time between two reads of a service's node set that keeps changing, in proportion
/// to its size.
///
/// Every registry answer is the whole set, so a change to a 10,000-endpoint service costs the
/// control plane the whole set's work (about 70 M instructions: reading, validating, guarding,
/// building the picker), whatever changed. On a machine the app and the proxy already keep
/// busy, four such updates a second raised the request path's p99 by 10-30%, and one a second
/// did not measurably (bench/README.md). So after a read, a watch loop waits `at_10k` for a
/// set of 10,000 endpoints or more and proportionally less for smaller ones (1,000 endpoints:
/// a tenth): the control plane then spends about the same small share of a core whatever the
/// size. A quiet registry is never delayed, since the wait follows a read, and the read that
/// ends it returns the newest state, so intermediate states are skipped, never lost. This is
/// the debounce Istio's control plane and Traefik's provider throttle apply to large
/// configurations; Envoy merges only non-membership changes, which would not help a rolling
/// deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateSpacing {
    at_10k: Duration,
}

impl UpdateSpacing {
    /// The set size at and above which the wait is the whole `at_10k`.
    const FULL_AT: u32 = 10_000;

    /// Spacing that waits `at_10k` after reading 10,000 endpoints or more; zero never waits.
    pub fn new(at_10k: Duration) -> Self {
        UpdateSpacing { at_10k }
    }

    /// How long to wait after reading `endpoints` endpoints before the next read.
    pub fn after(&self, endpoints: usize) -> Duration {
        let n = u32::try_from(endpoints)
            .unwrap_or(u32::MAX)
            .min(Self::FULL_AT);
        self.at_10k * n / Self::FULL_AT
    }
}

impl Default for UpdateSpacing {
    /// One second at 10,000 endpoints: about 2% of a core for a service whose every answer
    /// changes, and a delay of the order of r-nacos's own push batching (0.8 s) and Envoy's
    /// merge window (1 s).
    fn default() -> Self {
        UpdateSpacing::new(Duration::from_secs(1))
    }
}

/// [`UpdateSpacing`] for a registry that pushes its changes (Nacos) instead of being asked: a
/// service's pushed list goes on at once if its spacing since the last list it forwarded has
/// passed, and is otherwise held until then, the newest replacing any held before.
#[derive(Debug)]
pub struct SpacedPushes<T> {
    spacing: UpdateSpacing,
    /// Per service: when its next list may go on, and the newest list waiting for that.
    services: HashMap<Arc<str>, (Instant, Option<Vec<T>>)>,
}

impl<T> SpacedPushes<T> {
    /// Nothing held yet; every service's first list goes on at once.
    pub fn new(spacing: UpdateSpacing) -> Self {
        SpacedPushes {
            spacing,
            services: HashMap::new(),
        }
    }

    /// Takes a list pushed for `service` at `now`; returns it if it may go on now.
    pub fn offer(&mut self, service: Arc<str>, list: Vec<T>, now: Instant) -> Option<Vec<T>> {
        let (due, held) = self.services.entry(service).or_insert((now, None));
        if now >= *due {
            *due = now + self.spacing.after(list.len());
            *held = None;
            Some(list)
        } else {
            *held = Some(list);
            None
        }
    }

    /// When the earliest held list falls due, if any is held.
    pub fn next_due(&self) -> Option<Instant> {
        self.services
            .values()
            .filter(|(_, held)| held.is_some())
            .map(|&(due, _)| due)
            .min()
    }

    /// The held lists due at `now`, with their services; each one's spacing starts again.
    pub fn take_due(&mut self, now: Instant) -> Vec<(Arc<str>, Vec<T>)> {
        let mut ready = Vec::new();
        for (service, (due, held)) in &mut self.services {
            if *due <= now {
                if let Some(list) = held.take() {
                    *due = now + self.spacing.after(list.len());
                    ready.push((service.clone(), list));
                }
            }
        }
        ready
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
    fn spacing_grows_with_the_set_up_to_its_full_wait() {
        let spacing = UpdateSpacing::new(Duration::from_secs(1));
        assert_eq!(spacing.after(0), Duration::ZERO);
        assert_eq!(spacing.after(20), Duration::from_millis(2));
        assert_eq!(spacing.after(1_000), Duration::from_millis(100));
        assert_eq!(spacing.after(10_000), Duration::from_secs(1));
        assert_eq!(spacing.after(250_000), Duration::from_secs(1));
        assert_eq!(
            UpdateSpacing::new(Duration::ZERO).after(50_000),
            Duration::ZERO
        );
    }

    #[test]
    fn pushes_within_a_services_spacing_are_held_and_only_the_newest_goes_on() {
        // 1 s at 10,000 endpoints: 100 ms for a 1,000-endpoint list.
        let mut pushes = SpacedPushes::new(UpdateSpacing::new(Duration::from_secs(1)));
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let (orders, users): (Arc<str>, Arc<str>) = ("orders".into(), "users".into());
        assert_eq!(
            pushes
                .offer(orders.clone(), vec![1; 1_000], t0)
                .map(|l| l.len()),
            Some(1_000)
        );
        assert_eq!(pushes.next_due(), None);
        assert!(pushes
            .offer(orders.clone(), vec![2; 1_000], ms(30))
            .is_none());
        assert!(pushes
            .offer(orders.clone(), vec![3; 1_000], ms(60))
            .is_none());
        // Another service has its own spacing.
        assert!(pushes.offer(users.clone(), vec![9; 10], ms(60)).is_some());
        assert_eq!(pushes.next_due(), Some(ms(100)));
        assert!(pushes.take_due(ms(99)).is_empty());
        let due = pushes.take_due(ms(100));
        assert_eq!(due.len(), 1);
        assert_eq!((&*due[0].0, due[0].1[0]), ("orders", 3));
        // Forwarding the held list started the spacing again.
        assert!(pushes
            .offer(orders.clone(), vec![4; 1_000], ms(150))
            .is_none());
        assert!(pushes.offer(orders, vec![5; 1_000], ms(200)).is_some());
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
