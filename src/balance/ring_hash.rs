//! Ring hash (ketama-style, Envoy's RING_HASH): each endpoint owns points on a 64-bit ring in
//! proportion to its weight; a request goes to the first point at or after its key's hash.
//! Removing a node moves only the keys it owned. Picks are a binary search: O(log n).

use outrigger_discovery::Endpoint;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::hash_key::HashKey;
use super::random::WeightedRandom;
use super::{PickContext, Picker, Weights};

/// Points per endpoint of average weight, as ketama uses; fewer for very large sets so the
/// ring stays within [`MAX_POINTS`].
const POINTS_PER_NODE: f64 = 160.0;
/// Upper bound on ring size (16 bytes a point).
const MAX_POINTS: f64 = (1 << 20) as f64;

/// A sorted ring of (hash, endpoint) points.
#[derive(Debug)]
pub struct RingHash {
    key: HashKey,
    ring: Box<[(u64, u32)]>,
    fallback: WeightedRandom,
}

impl RingHash {
    /// Builds the ring for `endpoints` (off the request path).
    pub fn new(endpoints: &[Endpoint], key: HashKey) -> Self {
        let weights = endpoints.weights();
        let mean = weights.iter().sum::<f64>() / weights.len().max(1) as f64;
        let per_node = POINTS_PER_NODE.min(MAX_POINTS / weights.len().max(1) as f64);
        let points: Vec<usize> = weights
            .iter()
            .map(|w| ((w / mean) * per_node).round().max(1.0) as usize)
            .collect();
        let mut ring = Vec::with_capacity(points.iter().sum());
        for (i, (e, &points)) in endpoints.iter().zip(&points).enumerate() {
            // Points are named by address, not position, so a node keeps its points whatever
            // else joins or leaves; the point number is the hash seed, so the name is formatted
            // once per node rather than once per point.
            let name = e.addr.to_string();
            for p in 0..points {
                ring.push((xxh3_64_with_seed(name.as_bytes(), p as u64), i as u32));
            }
        }
        sort_by_hash(&mut ring);
        RingHash {
            key,
            ring: ring.into_boxed_slice(),
            fallback: WeightedRandom::new(endpoints),
        }
    }
}

/// Sorts ring points by hash. The hashes are uniform, so one counting pass on their top 16
/// bits puts every point within a bucket of a few; sorting those is linear overall, where a
/// comparison sort of a million points took most of a 10,000-endpoint update (bench/churn.sh).
fn sort_by_hash(ring: &mut Vec<(u64, u32)>) {
    const BITS: u32 = 16;
    if ring.len() < 1 << 12 {
        ring.sort_unstable();
        return;
    }
    let bucket = |h: u64| (h >> (64 - BITS)) as usize;
    let mut starts = vec![0usize; (1 << BITS) + 1];
    for &(h, _) in ring.iter() {
        starts[bucket(h) + 1] += 1;
    }
    for b in 1..starts.len() {
        starts[b] += starts[b - 1];
    }
    let mut next = starts.clone();
    let mut sorted = vec![(0u64, 0u32); ring.len()];
    for &point in ring.iter() {
        let b = bucket(point.0);
        sorted[next[b]] = point;
        next[b] += 1;
    }
    for b in 0..(1 << BITS) {
        sorted[starts[b]..starts[b + 1]].sort_unstable();
    }
    *ring = sorted;
}

impl Picker for RingHash {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let Some(h) = self.key.hash(ctx) else {
            return self.fallback.pick(ctx);
        };
        let at = self.ring.partition_point(|(p, _)| *p < h);
        let (_, i) = self.ring[if at == self.ring.len() { 0 } else { at }];
        Some(i as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_sort_orders_like_a_comparison_sort() {
        let mut ring: Vec<(u64, u32)> = (0..100_000u64)
            .map(|i| (xxh3_64_with_seed(b"node", i), i as u32))
            .collect();
        // Equal hashes too: ties order by index, as sort_unstable on tuples does.
        ring.extend([(u64::MAX, 7), (u64::MAX, 3), (0, 9), (0, 1)]);
        let mut expected = ring.clone();
        expected.sort_unstable();
        sort_by_hash(&mut ring);
        assert_eq!(ring, expected);
    }
}
