//! Maglev (Google's consistent hashing, Envoy's MAGLEV): a lookup table of 65537 slots filled
//! from per-endpoint permutations, in proportion to weight. Picks are one table lookup: O(1).
//! Removing a node remaps about its own share of keys.

use outrigger_discovery::Endpoint;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::hash_key::HashKey;
use super::random::WeightedRandom;
use super::{nth_distinct, PickContext, Picker, Weights};

/// Table size: a prime well above the node count, as the paper and Envoy use.
pub const TABLE_SIZE: usize = 65537;
const EMPTY: u32 = u32::MAX;

/// The filled lookup table.
#[derive(Debug)]
pub struct Maglev {
    key: HashKey,
    table: Box<[u32]>,
    fallback: WeightedRandom,
}

impl Maglev {
    /// Fills the table for `endpoints` (off the request path).
    pub fn new(endpoints: &[Endpoint], key: HashKey) -> Self {
        let m = TABLE_SIZE as u64;
        let weights = endpoints.weights();
        let max_w = weights.iter().cloned().fold(0.0, f64::max);
        let mut table = vec![EMPTY; TABLE_SIZE];
        if !endpoints.is_empty() && max_w > 0.0 {
            let perms: Vec<(u64, u64)> = endpoints
                .iter()
                .map(|e| {
                    let name = e.addr.to_string();
                    let offset = xxh3_64_with_seed(name.as_bytes(), 0) % m;
                    let skip = xxh3_64_with_seed(name.as_bytes(), 1) % (m - 1) + 1;
                    (offset, skip)
                })
                .collect();
            let mut next = vec![0u64; endpoints.len()];
            let mut credit = vec![0.0f64; endpoints.len()];
            let mut filled = 0;
            // Each round every node earns weight/max_weight of a turn, so heavier nodes fill
            // proportionally more slots while each still follows its own permutation.
            'fill: loop {
                for i in 0..endpoints.len() {
                    credit[i] += weights[i] / max_w;
                    while credit[i] >= 1.0 {
                        credit[i] -= 1.0;
                        let (offset, skip) = perms[i];
                        let mut slot = ((offset + next[i] * skip) % m) as usize;
                        while table[slot] != EMPTY {
                            next[i] += 1;
                            slot = ((offset + next[i] * skip) % m) as usize;
                        }
                        table[slot] = i as u32;
                        next[i] += 1;
                        filled += 1;
                        if filled == TABLE_SIZE {
                            break 'fill;
                        }
                    }
                }
            }
        }
        Maglev {
            key,
            table: table.into_boxed_slice(),
            fallback: WeightedRandom::new(endpoints),
        }
    }
}

impl Picker for Maglev {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        if self.table[0] == EMPTY {
            return None;
        }
        let Some(h) = self.key.hash(ctx) else {
            return self.fallback.pick(ctx);
        };
        Some(self.table[(h % TABLE_SIZE as u64) as usize] as usize)
    }

    fn pick_next(&self, ctx: &PickContext<'_>, attempt: usize) -> Option<usize> {
        if attempt == 0 || self.table[0] == EMPTY {
            return self.pick(ctx);
        }
        let Some(h) = self.key.hash(ctx) else {
            return self.fallback.pick(ctx);
        };
        // The slots after the key's, each a lookup of its own: the `attempt`-th endpoint not
        // met before, as stable for the key as its first choice.
        let start = (h % TABLE_SIZE as u64) as usize;
        let slots = (0..TABLE_SIZE).map(|step| self.table[(start + step) % TABLE_SIZE]);
        nth_distinct(slots, attempt)
    }
}
