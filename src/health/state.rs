//! Health of one endpoint, as active probes and passive outlier detection see it.
//!
//! Shared by the request path (which reads it and reports outcomes) and the service's health
//! supervisor (which probes and rebuilds the pool). All atomics: nothing here locks. Like load,
//! an endpoint's health is kept by address across node-set updates, so a node that stays keeps
//! its state (APISIX reset it on every update: apache/apisix#13282).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What active probes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Active {
    /// No probe configured, or none finished yet: counts as healthy.
    Unknown = 0,
    /// The last `healthy_threshold` probes passed.
    Healthy = 1,
    /// The last `unhealthy_threshold` probes failed.
    Unhealthy = 2,
    /// Appeared in the registry after the service's first node set, with active checks on,
    /// and not probed yet: no traffic until its first probe passes (Envoy's
    /// `ignore_new_hosts_until_first_hc`), unless no other endpoint can take it.
    Pending = 3,
}

impl Active {
    /// Label for the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Active::Unknown => "unknown",
            Active::Healthy => "healthy",
            Active::Unhealthy => "unhealthy",
            Active::Pending => "pending",
        }
    }
}

/// Why a node was ejected by passive outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Failure {
    /// No failure recorded.
    None = 0,
    /// The node answered 5xx.
    Status5xx = 1,
    /// The connection could not be made.
    Connect = 2,
    /// The node did not answer in time.
    Timeout = 3,
    /// The node broke the exchange (reset, protocol error).
    Reset = 4,
    /// The TLS session could not be set up (certificate refused, client certificate required).
    Tls = 5,
}

impl Failure {
    /// Label for metrics and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::None => "none",
            Failure::Status5xx => "5xx",
            Failure::Connect => "connect_failure",
            Failure::Timeout => "timeout",
            Failure::Reset => "reset",
            Failure::Tls => "tls",
        }
    }

    fn from_u8(v: u8) -> Failure {
        match v {
            1 => Failure::Status5xx,
            2 => Failure::Connect,
            3 => Failure::Timeout,
            4 => Failure::Reset,
            5 => Failure::Tls,
            _ => Failure::None,
        }
    }
}

/// Nanoseconds since the process started: a clock atomics can hold.
pub fn now_ns() -> u64 {
    ns_at(Instant::now())
}

/// `at` on the [`now_ns`] clock, for callers that already read the clock.
pub fn ns_at(at: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    at.saturating_duration_since(*START.get_or_init(Instant::now))
        .as_nanos() as u64
}

/// Health of one endpoint.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    active: AtomicU8,
    consecutive_failures: AtomicU32,
    /// Ejected until this time (ns since start); 0 when never ejected.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    last_failure: AtomicU8,
    /// Set when an ejection ends: the next request is a probe of one.
    probation: AtomicBool,
    /// Claimed by the one request allowed through while on probation.
    probation_claimed: AtomicBool,
    /// When its slow start began (ns since start, +1 so that 0 means none): it joined a
    /// running service or came back from an ejection or a failed check.
    warm_since: AtomicU64,
}

/// The least share of its weight a node in slow start gets (Envoy's `min_weight_percent`
/// default).
pub const SLOW_START_MIN_SHARE: f64 = 0.1;

impl EndpointHealth {
    /// True when the endpoint must not be routed to now: probes fail, or it is ejected.
    pub fn is_down(&self, now: u64) -> bool {
        matches!(self.active(), Active::Unhealthy | Active::Pending)
            || self.ejected_until.load(Ordering::Acquire) > now
    }

    /// True when the endpoint does not serve now: down ([`EndpointHealth::is_down`]: ejected,
    /// failing its probes or not yet probed), or its last request could not connect to it.
    pub fn is_failing(&self, now: u64) -> bool {
        self.is_down(now)
            || (self.consecutive_failures.load(Ordering::Relaxed) > 0
                && self.last_failure() == Failure::Connect)
    }

    /// A new endpoint that waits for its first passing probe before it takes traffic.
    pub fn pending() -> Self {
        let h = EndpointHealth::default();
        h.set_active(Active::Pending);
        h
    }

    /// Whether it waits for its first probe ([`Active::Pending`]).
    pub fn is_pending(&self) -> bool {
        self.active() == Active::Pending
    }

    /// What active probes say.
    pub fn active(&self) -> Active {
        match self.active.load(Ordering::Acquire) {
            1 => Active::Healthy,
            2 => Active::Unhealthy,
            3 => Active::Pending,
            _ => Active::Unknown,
        }
    }

    /// Records the probe verdict; returns true when it changed.
    pub fn set_active(&self, state: Active) -> bool {
        self.active.swap(state as u8, Ordering::AcqRel) != state as u8
    }

    /// Until when it is ejected (ns since start), if it is now.
    pub fn ejected_until(&self, now: u64) -> Option<u64> {
        let until = self.ejected_until.load(Ordering::Acquire);
        (until > now).then_some(until)
    }

    /// How many times it has been ejected.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// The failure that last counted against it.
    pub fn last_failure(&self) -> Failure {
        Failure::from_u8(self.last_failure.load(Ordering::Relaxed))
    }

    /// True while an ended ejection waits for one successful request.
    pub fn on_probation(&self) -> bool {
        self.probation.load(Ordering::Acquire)
    }

    /// For a node on probation, claims the single request it may take; false when another
    /// request already has it. Always true for a node not on probation.
    pub fn admit(&self) -> bool {
        !self.on_probation()
            || self
                .probation_claimed
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Records a successful request: clears failures and ends probation.
    pub fn succeeded(&self) {
        // Read before writing: on the common path nothing changes, and a write would pull the
        // cache line away from the other worker threads on every request.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.probation.load(Ordering::Acquire) && self.probation.swap(false, Ordering::AcqRel) {
            self.probation_claimed.store(false, Ordering::Release);
        }
    }

    /// Records a failed request. Returns true when the failures reach `threshold` (or the
    /// node was on probation), i.e. when it should now be ejected.
    pub fn failed(&self, failure: Failure, threshold: u32) -> bool {
        self.last_failure.store(failure as u8, Ordering::Relaxed);
        let n = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        self.on_probation() || (threshold > 0 && n >= threshold)
    }

    /// Ejects the endpoint until `now + base * 2^(ejections)`, capped at `max`.
    pub fn eject(&self, now: u64, base: Duration, max: Duration) -> Duration {
        let n = self.ejections.fetch_add(1, Ordering::AcqRel);
        let time = base.checked_mul(1u32 << n.min(16)).unwrap_or(max).min(max);
        self.ejected_until
            .store(now + time.as_nanos() as u64, Ordering::Release);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.probation.store(false, Ordering::Release);
        self.probation_claimed.store(false, Ordering::Release);
        time
    }

    /// Called by the supervisor when an ejection has run out: back in the pool, on probation.
    /// Returns true if this call ended an ejection.
    pub fn end_ejection(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        if until == 0 || until > now {
            return false;
        }
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.probation_claimed.store(false, Ordering::Release);
        self.probation.store(true, Ordering::Release);
        self.start_warming(now);
        true
    }

    /// Starts its slow start at `now` (ns since start).
    pub fn start_warming(&self, now: u64) {
        self.warm_since
            .store(now.saturating_add(1), Ordering::Release);
    }

    /// The share of its weight it gets at `now` in a slow start of `window`: from
    /// [`SLOW_START_MIN_SHARE`] up to 1 linearly over the window; 1 outside a slow start
    /// (which ends here once the window has passed).
    pub fn warm_share(&self, now: u64, window: Duration) -> f64 {
        let since = self.warm_since.load(Ordering::Acquire);
        if since == 0 {
            return 1.0;
        }
        let elapsed = now.saturating_sub(since - 1);
        let window = window.as_nanos() as u64;
        if window == 0 || elapsed >= window {
            self.warm_since.store(0, Ordering::Release);
            return 1.0;
        }
        (elapsed as f64 / window as f64).max(SLOW_START_MIN_SHARE)
    }

    /// Whether it is in a slow start.
    pub fn is_warming(&self) -> bool {
        self.warm_since.load(Ordering::Acquire) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_ramps_linearly_from_the_least_share() {
        let h = EndpointHealth::default();
        let window = Duration::from_secs(10);
        assert_eq!(h.warm_share(5, window), 1.0);
        h.start_warming(1_000);
        assert_eq!(h.warm_share(1_000, window), SLOW_START_MIN_SHARE);
        let half = h.warm_share(1_000 + 5_000_000_000, window);
        assert!((half - 0.5).abs() < 1e-9, "{half}");
        assert_eq!(h.warm_share(1_000 + 10_000_000_000, window), 1.0);
        assert!(!h.is_warming(), "the slow start ends with its window");
    }

    #[test]
    fn ejection_grows_and_probation_admits_one() {
        let h = EndpointHealth::default();
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(5);
        assert!(!h.failed(Failure::Connect, 3));
        assert!(!h.failed(Failure::Connect, 3));
        assert!(h.failed(Failure::Connect, 3));
        assert_eq!(h.eject(0, base, max), Duration::from_secs(1));
        assert!(h.is_down(500_000_000));
        assert!(!h.end_ejection(500_000_000));
        assert!(h.end_ejection(1_000_000_001));
        assert!(!h.is_down(1_000_000_001));
        assert!(h.admit());
        assert!(!h.admit(), "only one request on probation");
        // The probe fails: ejected again, for longer.
        assert!(h.failed(Failure::Status5xx, 3));
        assert_eq!(h.eject(0, base, max), Duration::from_secs(2));
        h.eject(0, base, max);
        assert_eq!(h.eject(0, base, max), max, "capped");
        assert!(h.end_ejection(u64::MAX / 2));
        assert!(h.admit());
        h.succeeded();
        assert!(!h.on_probation());
        assert!(h.admit() && h.admit(), "healthy again: no limit");
    }
}
