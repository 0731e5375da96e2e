//! Smooth weighted round robin, as nginx does it: weights are respected exactly over each
//! cycle, and a heavy node's turns are spread through the cycle instead of bunched together.
//!
//! nginx mutates per-node counters on every pick, which needs a lock. Here the cycle is
//! computed once per node set (earliest-deadline-first, which yields the same smooth
//! interleaving) and a pick is one atomic increment and an index.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};

use outrigger_discovery::Endpoint;

use super::{PickContext, Picker};

/// Longest cycle kept; larger weight totals are scaled down to fit, keeping proportions.
const MAX_CYCLE: u64 = 1 << 16;

/// The precomputed smooth cycle of a node set and a shared position in it.
#[derive(Debug)]
pub struct SmoothRoundRobin {
    cycle: Box<[u32]>,
    next: AtomicUsize,
}

/// Integer weights in proportion to the endpoints' weights, reduced by their common divisor.
fn integer_weights(endpoints: &[Endpoint]) -> Vec<u64> {
    let raw: Vec<f64> = endpoints.iter().map(|e| e.weight).collect();
    // Fractional weights (Nacos uses 0.5, 1.5) keep two decimals of precision.
    let scale = if raw.iter().all(|w| w.fract() == 0.0) {
        1.0
    } else {
        100.0
    };
    let mut weights: Vec<u64> = raw
        .iter()
        .map(|w| {
            let scaled = (w * scale).round().min(u32::MAX as f64) as u64;
            // A positive weight, however small, still gets some traffic.
            if *w > 0.0 {
                scaled.max(1)
            } else {
                0
            }
        })
        .collect();
    let divisor = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
    if divisor > 1 {
        weights.iter_mut().for_each(|w| *w /= divisor);
    }
    let total: u64 = weights.iter().sum();
    if total > MAX_CYCLE {
        let factor = MAX_CYCLE as f64 / total as f64;
        weights
            .iter_mut()
            .filter(|w| **w > 0)
            .for_each(|w| *w = ((*w as f64 * factor).round() as u64).max(1));
    }
    weights
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl SmoothRoundRobin {
    /// Computes the cycle for `endpoints`; zero-weight endpoints never appear in it.
    pub fn new(endpoints: &[Endpoint]) -> Self {
        let weights = integer_weights(endpoints);
        // Equal weights (all 1 once reduced, the common case) make every node's first turn due
        // at the same time, so the earliest-deadline-first cycle is the nodes in order. Taking
        // that shortcut spares a rolling deploy of 10,000 equal nodes the heap, a tenth of its
        // update (bench/HISTORY.md).
        let cycle = if weights.iter().all(|w| *w <= 1) {
            in_order(&weights)
        } else {
            earliest_deadline_first(&weights)
        };
        SmoothRoundRobin {
            cycle: cycle.into_boxed_slice(),
            next: AtomicUsize::new(0),
        }
    }
}

/// The cycle when every weight is 0 or 1: each weighted node once, in order.
fn in_order(weights: &[u64]) -> Vec<u32> {
    (0..weights.len() as u32)
        .filter(|&i| weights[i as usize] > 0)
        .collect()
}

/// The smooth cycle for any integer weights.
fn earliest_deadline_first(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let mut cycle = Vec::with_capacity(total as usize);
    // Each node's k-th turn is due at (k + 1/2) / weight of the cycle; serving turns in
    // deadline order spreads every node's turns evenly. Deadlines are compared exactly as
    // fractions (2k+1)/(2w) by cross-multiplying.
    #[derive(PartialEq, Eq)]
    struct Turn {
        num: u64,
        den: u64,
        index: u32,
    }
    impl Ord for Turn {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            (self.num as u128 * other.den as u128)
                .cmp(&(other.num as u128 * self.den as u128))
                .then(self.index.cmp(&other.index))
        }
    }
    impl PartialOrd for Turn {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    let mut heap: BinaryHeap<Reverse<Turn>> = weights
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > 0)
        .map(|(i, w)| {
            Reverse(Turn {
                num: 1,
                den: 2 * w,
                index: i as u32,
            })
        })
        .collect();
    while (cycle.len() as u64) < total {
        let Some(Reverse(turn)) = heap.pop() else {
            break;
        };
        cycle.push(turn.index);
        heap.push(Reverse(Turn {
            num: turn.num + 2,
            ..turn
        }));
    }
    cycle
}

impl Picker for SmoothRoundRobin {
    fn pick(&self, _ctx: &PickContext<'_>) -> Option<usize> {
        if self.cycle.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.cycle.len();
        Some(self.cycle[turn] as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_discovery::Endpoint;

    fn set(weights: &[f64]) -> Vec<Endpoint> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let mut e = Endpoint::new(format!("127.0.0.1:{}", 1000 + i).parse().unwrap());
                e.weight = *w;
                e
            })
            .collect()
    }

    fn picks(rr: &SmoothRoundRobin, n: usize) -> Vec<usize> {
        let headers = http::HeaderMap::new();
        let ctx = PickContext {
            client: [127, 0, 0, 1].into(),
            headers: &headers,
            path: "/",
        };
        (0..n).map(|_| rr.pick(&ctx).unwrap()).collect()
    }

    #[test]
    fn cycle_is_exact_and_smooth() {
        let rr = SmoothRoundRobin::new(&set(&[5.0, 1.0, 1.0]));
        let seq = picks(&rr, 7);
        assert_eq!(seq.iter().filter(|i| **i == 0).count(), 5);
        // The heavy node never takes more than three turns in a row (nginx: a a b a c a a).
        assert!(
            !seq.windows(4).any(|w| w.iter().all(|i| *i == 0)),
            "{seq:?}"
        );
        assert_eq!(picks(&rr, 7), seq, "the cycle repeats");
    }

    #[test]
    fn equal_weights_take_turns_in_order_as_the_general_cycle_would() {
        for weights in [vec![1, 0, 1, 1], vec![1; 1000], vec![0, 0, 1], vec![]] {
            assert_eq!(in_order(&weights), earliest_deadline_first(&weights));
        }
        let rr = SmoothRoundRobin::new(&set(&[2.0, 0.0, 2.0, 2.0]));
        assert_eq!(&*rr.cycle, &[0, 2, 3]);
    }

    #[test]
    fn weights_are_reduced_scaled_and_zero_means_no_traffic() {
        let rr = SmoothRoundRobin::new(&set(&[300.0, 100.0, 0.0]));
        assert_eq!(rr.cycle.len(), 4);
        assert!(!picks(&rr, 100).contains(&2));
        let rr = SmoothRoundRobin::new(&set(&[0.5, 1.5]));
        assert_eq!(rr.cycle.len(), 4);
        let rr = SmoothRoundRobin::new(&set(&[0.0]));
        let headers = http::HeaderMap::new();
        let ctx = PickContext {
            client: [127, 0, 0, 1].into(),
            headers: &headers,
            path: "/",
        };
        assert_eq!(rr.pick(&ctx), None);
        let rr = SmoothRoundRobin::new(&set(&[1e9, 1.0]));
        assert!(rr.cycle.len() as u64 <= MAX_CYCLE + 1);
        assert!(rr.cycle.contains(&1));
    }
}
