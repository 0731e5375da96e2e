//! Weighted random: each pick independent, proportional to weight, O(1) by Vose's alias
//! method (the tables are built once per node set).

use outrigger_discovery::Endpoint;

use super::{PickContext, Picker, Weights};

/// Vose alias tables over the endpoints' weights.
#[derive(Debug)]
pub struct WeightedRandom {
    alias: AliasTable,
}

/// Samples an index in proportion to its weight in O(1).
#[derive(Debug, Clone)]
pub struct AliasTable {
    prob: Box<[f64]>,
    alias: Box<[u32]>,
}

impl AliasTable {
    /// Builds the table; `None` when no weight is positive.
    pub fn new(weights: &[f64]) -> Option<Self> {
        let n = weights.len();
        let total: f64 = weights.iter().sum();
        if n == 0 || total <= 0.0 {
            return None;
        }
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut prob = vec![0.0; n];
        let mut alias = vec![0u32; n];
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            prob[s] = scaled[s];
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        for i in large.into_iter().chain(small) {
            prob[i] = 1.0;
        }
        Some(AliasTable {
            prob: prob.into_boxed_slice(),
            alias: alias.into_boxed_slice(),
        })
    }

    /// One index, weighted.
    pub fn sample(&self) -> usize {
        let i = rand::random_range(0..self.prob.len());
        if rand::random::<f64>() < self.prob[i] {
            i
        } else {
            self.alias[i] as usize
        }
    }
}

impl WeightedRandom {
    /// Tables for `endpoints`; zero-weight endpoints are never picked.
    pub fn new(endpoints: &[Endpoint]) -> Self {
        WeightedRandom {
            alias: AliasTable::new(&endpoints.weights()).unwrap_or(AliasTable {
                prob: Box::new([]),
                alias: Box::new([]),
            }),
        }
    }
}

impl Picker for WeightedRandom {
    fn pick(&self, _ctx: &PickContext<'_>) -> Option<usize> {
        (!self.alias.prob.is_empty()).then(|| self.alias.sample())
    }
}
