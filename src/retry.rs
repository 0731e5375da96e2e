//! The retry budget: retries may add at most a share of the requests of the last ten seconds,
//! plus a small floor, so that retries cannot amplify an outage.
//!
//! tower's `TpsBudget` does the same accounting but locks a mutex to rotate its window; this
//! one rotates per-second slots with atomics, so the request path never locks.

use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Instant;

use crate::health::state::{now_ns, ns_at};

const SLOTS: usize = 10;
const SLOT_NS: u64 = 1_000_000_000;

/// Counts of one one-second slot, tagged with the second they belong to.
#[derive(Debug, Default)]
struct Slot {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// A per-service retry budget over a sliding ten-second window.
#[derive(Debug)]
pub struct RetryBudget {
    share: f64,
    min_per_sec: u64,
    slots: [Slot; SLOTS],
}

impl RetryBudget {
    /// Retries may be `share` of requests, plus `min_per_sec` each second.
    pub fn new(share: f64, min_per_sec: u64) -> Self {
        RetryBudget {
            share,
            min_per_sec,
            slots: Default::default(),
        }
    }

    fn slot(&self, second: u64) -> &Slot {
        let slot = &self.slots[(second % SLOTS as u64) as usize];
        let seen = slot.second.load(Ordering::Acquire);
        if seen != second
            && slot
                .second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This slot held an older second: start it afresh. A count racing in between is
            // lost, which only makes the budget slightly stricter for a moment.
            slot.requests.store(0, Ordering::Release);
            slot.retries.store(0, Ordering::Release);
        }
        slot
    }

    fn totals(&self, second: u64) -> (u64, u64) {
        self.slots
            .iter()
            .filter(|s| second.saturating_sub(s.second.load(Ordering::Acquire)) < SLOTS as u64)
            .fold((0, 0), |(req, ret), s| {
                (
                    req + s.requests.load(Ordering::Relaxed),
                    ret + s.retries.load(Ordering::Relaxed),
                )
            })
    }

    /// Counts one original request, received at `at` (the request path has read the clock
    /// already).
    pub fn deposit(&self, at: Instant) {
        let second = ns_at(at) / SLOT_NS;
        self.slot(second).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        let second = now_ns() / SLOT_NS;
        let (requests, retries) = self.totals(second);
        let allowed = (requests as f64 * self.share) as u64 + self.min_per_sec * SLOTS as u64;
        if retries >= allowed {
            return false;
        }
        self.slot(second).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_the_floor_then_a_share_of_requests() {
        let b = RetryBudget::new(0.2, 1);
        // No traffic: only the floor (1/s over 10 s).
        let floor = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(floor, 10);
        for _ in 0..1000 {
            b.deposit(Instant::now());
        }
        let more = (0..1000).filter(|_| b.withdraw()).count();
        assert_eq!(more, 200, "20% of 1000 requests");
    }
}

/// The response statuses a request is retried on (`OUTRIGGER_RETRY_ON`): a set of codes from
/// 400 to 599, by default 502, 503 and 504.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOn([u64; 4]);

impl Default for RetryOn {
    fn default() -> Self {
        let mut set = RetryOn([0; 4]);
        for code in 502..=504 {
            set.insert(code);
        }
        set
    }
}

impl RetryOn {
    fn insert(&mut self, code: u16) {
        let i = usize::from(code - 400);
        self.0[i / 64] |= 1 << (i % 64);
    }

    /// Whether a response with `status` is retried.
    #[inline]
    pub fn contains(&self, status: u16) -> bool {
        (400..600).contains(&status) && {
            let i = usize::from(status - 400);
            self.0[i / 64] & (1 << (i % 64)) != 0
        }
    }

    /// The codes in the set, for the admin API.
    pub fn codes(&self) -> Vec<u16> {
        (400..600).filter(|c| self.contains(*c)).collect()
    }
}

impl std::str::FromStr for RetryOn {
    type Err = String;

    /// Codes and ranges from 400 to 599, comma-separated: `502,503,504`, `500-599`, `429,503`;
    /// `none` for no retry on any status.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut set = RetryOn([0; 4]);
        if s.trim() == "none" {
            return Ok(set);
        }
        let expected = "status codes or ranges from 400 to 599, comma-separated (such as 502,503,504 or 500-599), or none";
        for part in s.split(',').map(str::trim) {
            let (from, to) = part.split_once('-').unwrap_or((part, part));
            let (Ok(from), Ok(to)) = (from.trim().parse::<u16>(), to.trim().parse::<u16>()) else {
                return Err(expected.into());
            };
            if !(400..=599).contains(&from) || !(400..=599).contains(&to) || from > to {
                return Err(expected.into());
            }
            for code in from..=to {
                set.insert(code);
            }
        }
        Ok(set)
    }
}

#[cfg(test)]
mod retry_on_tests {
    use super::RetryOn;

    #[test]
    fn statuses_and_ranges_parse() {
        let d = RetryOn::default();
        assert_eq!(d.codes(), [502, 503, 504]);
        let r: RetryOn = "429, 500-503".parse().expect("valid");
        assert_eq!(r.codes(), [429, 500, 501, 502, 503]);
        assert!(!r.contains(200) && !r.contains(600) && !r.contains(504));
        assert!("none".parse::<RetryOn>().expect("valid").codes().is_empty());
        for bad in ["200", "500-400", "5xx", "", "600"] {
            assert!(bad.parse::<RetryOn>().is_err(), "{bad}");
        }
    }
}
