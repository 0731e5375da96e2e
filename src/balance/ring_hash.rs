//! Ring hash (ketama-style, Envoy's RING_HASH): each endpoint owns points on a 64-bit ring in
//! proportion to its weight; a request goes to the first point at or after its key's hash.
//! Removing a node moves only the keys it owned. Picks are a binary search: O(log n).

use outrigger_discovery::Endpoint;
use xxhash_rust::xxh3::xxh3_64;

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
        let mut ring = Vec::new();
        for (i, (e, w)) in endpoints.iter().zip(&weights).enumerate() {
            let points = ((w / mean) * per_node).round().max(1.0) as usize;
            // Points are named by address, not position, so a node keeps its points whatever
            // else joins or leaves.
            let name = e.addr.to_string();
            for p in 0..points {
                ring.push((xxh3_64(format!("{name}-{p}").as_bytes()), i as u32));
            }
        }
        ring.sort_unstable();
        RingHash {
            key,
            ring: ring.into_boxed_slice(),
            fallback: WeightedRandom::new(endpoints),
        }
    }
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
