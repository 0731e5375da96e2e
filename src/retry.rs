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
