//! Least request: the power of two choices over requests in flight (Envoy's LEAST_REQUEST).
//! Two endpoints are drawn in proportion to weight and the one with fewer requests in flight
//! wins. Weight enters once, through the draw: dividing the load by weight as well would make a
//! heavy node win every tie and take more than its share. O(1) per pick.

use std::sync::Arc;

use outrigger_discovery::Endpoint;

use super::load::EndpointLoad;
use super::random::AliasTable;
use super::{PickContext, Picker, Weights};

/// P2C over in-flight requests.
#[derive(Debug)]
pub struct LeastRequest {
    draw: Option<AliasTable>,
    weights: Vec<f64>,
    loads: Vec<Arc<EndpointLoad>>,
}

impl LeastRequest {
    /// A picker over `endpoints`, reading `loads` (one per endpoint, same order).
    pub fn new(endpoints: &[Endpoint], loads: &[Arc<EndpointLoad>]) -> Self {
        let weights = endpoints.weights();
        LeastRequest {
            draw: AliasTable::new(&weights),
            weights,
            loads: loads.to_vec(),
        }
    }
}

/// Draws two distinct candidates (when there are two) in proportion to weight.
pub(super) fn two_choices(draw: &AliasTable, n: usize) -> (usize, usize) {
    let a = draw.sample();
    let mut b = draw.sample();
    if b == a && n > 1 {
        // One redraw keeps weights honest; failing that, any other endpoint.
        b = draw.sample();
        if b == a {
            b = (a + 1 + rand::random_range(0..n - 1)) % n;
        }
    }
    (a, b)
}

impl Picker for LeastRequest {
    fn pick(&self, _ctx: &PickContext<'_>) -> Option<usize> {
        let draw = self.draw.as_ref()?;
        let (a, b) = two_choices(draw, self.weights.len());
        let score = |i: usize| self.loads[i].in_flight();
        Some(if score(b) < score(a) { b } else { a })
    }
}
