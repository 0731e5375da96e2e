//! Ring hash (ketama-style, Envoy's RING_HASH): each endpoint owns points on a 64-bit ring in
//! proportion to its weight; a request goes to the first point at or after its key's hash.
//! Removing a node moves only the keys it owned. Picks are a binary search: O(log n).
//!
//! A membership change updates the previous ring rather than building a new one: the points of
//! nodes that stay are kept (already hashed and sorted), those of nodes that left are dropped,
//! and only the new nodes' points are hashed and merged in. For 10,000 nodes with 1% of them
//! replaced, that is a copy of the ring instead of a million hashes and a sort.
//!
//! A point is 8 bytes: the top 32 bits of its hash and the endpoint's index. That halves the
//! ring against a 64-bit hash (which needs 16 with padding): 6.4 MB for 10,000 nodes of weight 1,
//! 26 KB for a 20-node service.

use std::net::SocketAddr;

use outrigger_discovery::Endpoint;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::hash_key::HashKey;
use super::random::WeightedRandom;
use super::{nth_distinct, PickContext, Picker, Weights};
use crate::by_address::carried;

/// Points per unit of weight, as ketama gives a node of weight 1.
const POINTS_PER_WEIGHT: f64 = 160.0;
/// The most points a ring holds before every weight is scaled down (8 bytes a point, so about
/// 8 MB); see [`point_counts`].
const MAX_POINTS: f64 = (1 << 20) as f64;

/// A sorted ring of (hash, endpoint) points.
#[derive(Debug)]
pub struct RingHash {
    key: HashKey,
    ring: Box<[(u32, u32)]>,
    /// Each endpoint's address and point count, in endpoint order, for the next update.
    nodes: Vec<(SocketAddr, u32)>,
    fallback: WeightedRandom,
}

/// An update that adds or drops more than one node in this many builds the ring anew: past
/// that, copying the kept points saves little over hashing them again.
const MAX_CHANGED_SHARE: usize = 4;

/// How many points each endpoint gets: [`POINTS_PER_WEIGHT`] per unit of its own weight (at
/// least one), so that a node's place on the ring depends on its own address and weight only:
/// when another node joins, leaves or changes weight, only the keys of that node move (the
/// minimal-disruption property; an average-weight unit moved keys between untouched nodes).
///
/// Only a ring that would hold more than [`MAX_POINTS`] (6,553 nodes of weight 1, say) is
/// scaled: every count is divided by the same power of two, the smallest that fits, so the
/// scale changes only when the set's total weight crosses a power of two.
fn point_counts(endpoints: &[Endpoint]) -> Vec<u32> {
    let weights = endpoints.weights();
    let total: f64 = weights
        .iter()
        .map(|w| (w * POINTS_PER_WEIGHT).max(1.0))
        .sum();
    let mut scale = 1.0;
    while total / scale > MAX_POINTS {
        scale *= 2.0;
    }
    weights
        .iter()
        .map(|w| (w * POINTS_PER_WEIGHT / scale).round().max(1.0) as u32)
        .collect()
}

/// Where a 64-bit hash sits on the ring: its top 32 bits. Four billion positions keep
/// collisions between a million points rare (about a hundred ties), and a tie only orders two
/// points by index, as in any ring.
fn ring_position(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// Appends endpoint `index`'s points to `ring`. Points are named by address, not position, so
/// a node keeps its points whatever else joins or leaves; the point number is the hash seed,
/// so the name is formatted once per node rather than once per point.
fn push_points(ring: &mut Vec<(u32, u32)>, addr: SocketAddr, points: u32, index: u32) {
    let name = addr.to_string();
    for p in 0..points {
        let hash = xxh3_64_with_seed(name.as_bytes(), u64::from(p));
        ring.push((ring_position(hash), index));
    }
}

impl RingHash {
    /// Builds the ring for `endpoints` (off the request path).
    pub fn new(endpoints: &[Endpoint], key: HashKey) -> Self {
        let counts = point_counts(endpoints);
        let mut ring = Vec::with_capacity(counts.iter().map(|&c| c as usize).sum());
        for (i, (e, &points)) in endpoints.iter().zip(&counts).enumerate() {
            push_points(&mut ring, e.addr, points, i as u32);
        }
        sort_by_hash(&mut ring);
        RingHash {
            key,
            ring: ring.into_boxed_slice(),
            nodes: endpoints.iter().map(|e| e.addr).zip(counts).collect(),
            fallback: WeightedRandom::new(endpoints),
        }
    }

    /// The ring for `endpoints`, updated from this one: the same ring [`RingHash::new`] would
    /// build, at the cost of the change rather than of the whole set.
    pub fn updated(&self, endpoints: &[Endpoint], key: HashKey) -> Self {
        let counts = point_counts(endpoints);
        // Where each old endpoint's points go: its new index, if it stays with as many points.
        // Both lists are sorted by address, so one merge pass pairs them.
        let mut kept = vec![false; endpoints.len()];
        let mut remap: Vec<Option<u32>> = vec![None; self.nodes.len()];
        let old = self
            .nodes
            .iter()
            .enumerate()
            .map(|(o, &(addr, points))| (addr, (o, points)));
        let pairs = carried(old, endpoints.iter().map(|e| e.addr));
        for (i, (_, before)) in pairs.enumerate() {
            if let Some((o, _)) = before.filter(|&(_, points)| points == counts[i]) {
                remap[o] = Some(i as u32);
                kept[i] = true;
            }
        }
        let added: Vec<usize> = (0..endpoints.len()).filter(|&i| !kept[i]).collect();
        let dropped = remap.iter().filter(|r| r.is_none()).count();
        if (added.len() + dropped) * MAX_CHANGED_SHARE > endpoints.len().max(1) {
            return RingHash::new(endpoints, key);
        }
        let mut fresh = Vec::new();
        for &i in &added {
            push_points(&mut fresh, endpoints[i].addr, counts[i], i as u32);
        }
        fresh.sort_unstable();
        // Both runs are sorted by (hash, index): the kept points keep their order because
        // endpoints keep their relative order (node sets are sorted by address).
        let total = self.ring.len() + fresh.len();
        let mut ring = Vec::with_capacity(total);
        let mut fresh = fresh.into_iter().peekable();
        for &(h, old) in self.ring.iter() {
            let Some(i) = remap[old as usize] else {
                continue;
            };
            while let Some(&next) = fresh.peek() {
                if next < (h, i) {
                    ring.push(next);
                    fresh.next();
                } else {
                    break;
                }
            }
            ring.push((h, i));
        }
        ring.extend(fresh);
        RingHash {
            key,
            ring: ring.into_boxed_slice(),
            nodes: endpoints.iter().map(|e| e.addr).zip(counts).collect(),
            fallback: WeightedRandom::new(endpoints),
        }
    }
}

/// Sorts ring points by hash. The hashes are uniform, so one counting pass on their top 16
/// bits puts every point within a bucket of a few; sorting those is linear overall, where a
/// comparison sort of a million points took most of a 10,000-endpoint update (bench/churn.sh).
fn sort_by_hash(ring: &mut Vec<(u32, u32)>) {
    const BITS: u32 = 16;
    if ring.len() < 1 << 12 {
        ring.sort_unstable();
        return;
    }
    let bucket = |h: u32| (h >> (32 - BITS)) as usize;
    let mut starts = vec![0usize; (1 << BITS) + 1];
    for &(h, _) in ring.iter() {
        starts[bucket(h) + 1] += 1;
    }
    for b in 1..starts.len() {
        starts[b] += starts[b - 1];
    }
    let mut next = starts.clone();
    let mut sorted = vec![(0u32, 0u32); ring.len()];
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
    fn as_ring_hash(&self) -> Option<&RingHash> {
        Some(self)
    }

    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let Some(h) = self.key.hash(ctx) else {
            return self.fallback.pick(ctx);
        };
        let h = ring_position(h);
        let at = self.ring.partition_point(|(p, _)| *p < h);
        let (_, i) = self.ring[if at == self.ring.len() { 0 } else { at }];
        Some(i as usize)
    }

    fn pick_next(&self, ctx: &PickContext<'_>, attempt: usize) -> Option<usize> {
        if attempt == 0 || self.ring.is_empty() {
            return self.pick(ctx);
        }
        let Some(h) = self.key.hash(ctx) else {
            return self.fallback.pick(ctx);
        };
        let start = self.ring.partition_point(|(p, _)| *p < ring_position(h));
        // Clockwise from the key, the `attempt`-th endpoint not met before.
        let len = self.ring.len();
        nth_distinct(
            (0..len).map(|step| self.ring[(start + step) % len].1),
            attempt,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_sort_orders_like_a_comparison_sort() {
        let mut ring: Vec<(u32, u32)> = (0..100_000u64)
            .map(|i| (ring_position(xxh3_64_with_seed(b"node", i)), i as u32))
            .collect();
        // Equal hashes too: ties order by index, as sort_unstable on tuples does.
        ring.extend([(u32::MAX, 7), (u32::MAX, 3), (0, 9), (0, 1)]);
        let mut expected = ring.clone();
        expected.sort_unstable();
        sort_by_hash(&mut ring);
        assert_eq!(ring, expected);
    }

    #[test]
    fn a_large_set_gets_a_small_ring_with_points_for_every_node() {
        // 10,000 nodes of weight 1: 80 points each (the weights scaled by 2), 6.4 MB of ring.
        let eps = endpoints(20_000..30_000);
        let ring = RingHash::new(&eps, "client_ip".parse().expect("a valid key"));
        assert_eq!(ring.ring.len(), 800_000);
        assert!(std::mem::size_of_val(&*ring.ring) <= 8 << 20);
        let mut owners = vec![0u32; eps.len()];
        for &(_, i) in ring.ring.iter() {
            owners[i as usize] += 1;
        }
        assert!(owners.iter().all(|&n| n == 80));
        // Sets up to 6,553 nodes of weight 1 keep ketama's 160.
        assert!(point_counts(&endpoints(1000..5000))
            .iter()
            .all(|&c| c == 160));
    }

    fn endpoints(ports: impl IntoIterator<Item = u16>) -> Vec<Endpoint> {
        ports
            .into_iter()
            .map(|p| Endpoint::new(SocketAddr::from(([127, 0, 0, 1], p))))
            .collect()
    }

    #[test]
    fn an_updated_ring_equals_a_fresh_one() {
        let key: HashKey = "client_ip".parse().expect("a valid key");
        let before = endpoints(1000..1500);
        let ring = RingHash::new(&before, key.clone());
        // 2% of the nodes leave, 2% join, one changes weight.
        let mut after = endpoints((1010..1500).chain(2000..2010));
        after[100].weight = 3.0;
        let updated = ring.updated(&after, key.clone());
        // The weight change left the other nodes' counts alone, so this was an update, not a
        // rebuild.
        assert!(point_counts(&after).iter().filter(|&&c| c != 160).count() == 1);
        let fresh = RingHash::new(&after, key.clone());
        assert_eq!(updated.ring, fresh.ring);
        assert_eq!(updated.nodes, fresh.nodes);
        // And again from the updated ring, back to the first set.
        let back = updated.updated(&before, key.clone());
        assert_eq!(back.ring, RingHash::new(&before, key).ring);
    }
}
