//! Per-endpoint load, shared by the load-aware policies and kept across node-set updates.
//!
//! A service keeps one [`EndpointLoad`] per address for as long as the address stays in its
//! node set, so in-flight counts and latency estimates survive registry updates (APISIX lost
//! them on every update: apache/apisix#13666). Everything is atomics: the request path never
//! locks. tower's `PeakEwma` keeps its estimate behind a mutex, so the same algorithm is
//! written here over atomics instead.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Latency assumed for an endpoint that has not answered yet (linkerd2-proxy's default).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Time constant of the moving average: older samples weigh e^-1 after this long.
pub const DECAY: Duration = Duration::from_secs(10);

fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Load of one endpoint: requests in flight and a peak-sensitive moving average of latency.
#[derive(Debug)]
pub struct EndpointLoad {
    in_flight: AtomicU32,
    /// The estimate in nanoseconds, as f64 bits.
    rtt_ns: AtomicU64,
    /// When the estimate was last updated, in ns since process start.
    stamp_ns: AtomicU64,
}

impl Default for EndpointLoad {
    fn default() -> Self {
        EndpointLoad {
            in_flight: AtomicU32::new(0),
            rtt_ns: AtomicU64::new((DEFAULT_RTT.as_nanos() as f64).to_bits()),
            stamp_ns: AtomicU64::new(now_ns()),
        }
    }
}

/// Counts one request as in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointLoad>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EndpointLoad {
    /// Marks a request as started; the returned guard ends it.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Requests now in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The latency estimate decayed to now: an endpoint that has not been used for a while
    /// drifts back toward zero and gets tried again (as tower's PeakEwma does).
    fn decayed_rtt_ns(&self, now: u64) -> f64 {
        let est = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let elapsed = now.saturating_sub(self.stamp_ns.load(Ordering::Relaxed)) as f64;
        est * (-elapsed / DECAY.as_nanos() as f64).exp()
    }

    /// Records one observed latency: a sample above the estimate replaces it at once (peak),
    /// a lower one is averaged in with a weight that grows with the time since the last one.
    pub fn observe(&self, rtt: Duration) {
        let now = now_ns();
        let sample = rtt.as_nanos() as f64;
        let prior = self.stamp_ns.swap(now, Ordering::Relaxed);
        let elapsed = now.saturating_sub(prior) as f64;
        let keep = (-elapsed / DECAY.as_nanos() as f64).exp();
        // A racing observer may interleave; either result is a valid recent estimate.
        let _ = self
            .rtt_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let est = f64::from_bits(bits);
                let next = if sample > est {
                    sample
                } else {
                    est * keep + sample * (1.0 - keep)
                };
                Some(next.to_bits())
            });
    }

    /// Peak-EWMA cost: expected latency times the queue a new request would join.
    pub fn cost(&self) -> f64 {
        self.decayed_rtt_ns(now_ns()) * f64::from(self.in_flight() + 1)
    }

    /// The cost before decay and when the estimate was last updated. Comparing two endpoints
    /// needs only one exponential of the difference of their ages, not one each.
    pub fn undecayed_cost(&self) -> (f64, u64) {
        let est = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let stamp = self.stamp_ns.load(Ordering::Relaxed);
        (est * f64::from(self.in_flight() + 1), stamp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_guards() {
        let load = Arc::new(EndpointLoad::default());
        let a = load.start();
        let b = load.start();
        assert_eq!(load.in_flight(), 2);
        drop(a);
        assert_eq!(load.in_flight(), 1);
        drop(b);
        assert_eq!(load.in_flight(), 0);
    }

    #[test]
    fn peaks_jump_and_fast_samples_pull_down_slowly() {
        let load = EndpointLoad::default();
        load.observe(Duration::from_millis(500));
        let peak = load.cost();
        assert!(peak > 0.45e9, "{peak}");
        load.observe(Duration::from_millis(1));
        // Back-to-back: the old estimate still dominates.
        assert!(load.cost() > 0.4e9, "{}", load.cost());
        let slow_busy = Arc::new(EndpointLoad::default());
        let _g = slow_busy.start();
        assert!(slow_busy.cost() > EndpointLoad::default().cost());
    }
}
