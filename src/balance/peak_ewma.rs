//! Peak EWMA (linkerd2-proxy's default, tower's `p2c` over `PeakEwma`): the power of two
//! choices (drawn in proportion to weight) over each endpoint's expected latency times the
//! requests it already has. A slow node's estimate jumps up at its first slow answer and comes down only
//! gradually (10 s decay, 30 ms assumed for a new node), so traffic leaves slow nodes fast and
//! returns carefully.

use std::sync::Arc;

use outrigger_discovery::Endpoint;

use super::least_request::two_choices;
use super::load::{EndpointLoad, DECAY};
use super::random::AliasTable;
use super::{PickContext, Picker, Weights};

/// How much cheaper the second choice must be to beat the first.
const TIE: f64 = 0.95;

/// P2C over peak-EWMA cost.
#[derive(Debug)]
pub struct PeakEwma {
    draw: Option<AliasTable>,
    weights: Vec<f64>,
    loads: Vec<Arc<EndpointLoad>>,
}

impl PeakEwma {
    /// A picker over `endpoints`, reading `loads` (one per endpoint, same order).
    pub fn new(endpoints: &[Endpoint], loads: &[Arc<EndpointLoad>]) -> Self {
        let weights = endpoints.weights();
        PeakEwma {
            draw: AliasTable::new(&weights),
            weights,
            loads: loads.to_vec(),
        }
    }
}

impl Picker for PeakEwma {
    fn pick(&self, _ctx: &PickContext<'_>) -> Option<usize> {
        let draw = self.draw.as_ref()?;
        let (a, b) = two_choices(draw, self.weights.len());
        // Costs within 5% are a tie, won by the first (weighted) draw: estimates of idle
        // endpoints differ only by how long ago they decayed, and that noise must not
        // override weights.
        // Decayed cost = undecayed * e^(-(now - stamp)/decay), so
        // cost_b / cost_a = (undecayed_b / undecayed_a) * e^((stamp_b - stamp_a)/decay):
        // one exponential and no clock read per pick.
        let (cost_a, stamp_a) = self.loads[a].undecayed_cost();
        let (cost_b, stamp_b) = self.loads[b].undecayed_cost();
        let relative = ((stamp_b as f64 - stamp_a as f64) / DECAY.as_nanos() as f64).exp();
        Some(if cost_b * relative < cost_a * TIE {
            b
        } else {
            a
        })
    }
}
