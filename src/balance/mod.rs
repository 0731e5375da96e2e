//! Selection of one endpoint per request.
//!
//! Each policy lives in its own file behind the [`Picker`] trait. A picker is built off the
//! request path whenever a service's node set (or a node's health) changes, only over the
//! endpoints that may take traffic; its `pick` must not lock, since it runs on every request.
//! Load-aware policies read per-endpoint [`load::EndpointLoad`]s that outlive any one picker.

mod hash_key;
mod least_request;
pub mod load;
mod maglev;
mod peak_ewma;
mod random;
mod ring_hash;
mod round_robin;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use http::HeaderMap;
use outrigger_discovery::Endpoint;

pub use hash_key::HashKey;
pub use least_request::LeastRequest;
pub use maglev::Maglev;
pub use peak_ewma::PeakEwma;
pub use random::{AliasTable, WeightedRandom};
pub use ring_hash::RingHash;
pub use round_robin::SmoothRoundRobin;

use load::EndpointLoad;

/// What a policy may look at when choosing: enough for hashing policies, cheap to build.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    /// The app's address.
    pub client: IpAddr,
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// The request's path.
    pub path: &'a str,
}

/// A load-balancing policy over one set of endpoints, all of positive weight.
pub trait Picker: Send + Sync {
    /// The index, in the endpoints it was built for, of the endpoint to use; `None` when there
    /// is none.
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize>;

    /// The endpoint for the request's `attempt`-th draw (0 is [`Picker::pick`]'s), for a
    /// retry or when the first choice is ejected: hash policies walk to the next distinct
    /// endpoint their key leads to (the next node on the ring, the next Maglev slot), as
    /// pingora's `BackendIter` does, since drawing again would find the same node; the other
    /// policies draw again.
    fn pick_next(&self, ctx: &PickContext<'_>, attempt: usize) -> Option<usize> {
        let _ = attempt;
        self.pick(ctx)
    }

    /// This picker as a hash ring, so that the next update can start from it (see
    /// [`RingHash::updated`]); the other policies are rebuilt from scratch.
    fn as_ring_hash(&self) -> Option<&RingHash> {
        None
    }
}

/// The `n`-th distinct endpoint met along `walk` (a hash policy's points or slots in order
/// from a key's), or the first when it meets fewer: the next-distinct-node walk of
/// [`Picker::pick_next`].
fn nth_distinct(walk: impl Iterator<Item = u32>, n: usize) -> Option<usize> {
    let mut seen: Vec<u32> = Vec::with_capacity(n + 1);
    for i in walk {
        if seen.contains(&i) {
            continue;
        }
        if seen.len() == n {
            return Some(i as usize);
        }
        seen.push(i);
    }
    seen.first().map(|&i| i as usize)
}

/// The weights of a slice of endpoints, for the policies' tables.
trait Weights {
    fn weights(&self) -> Vec<f64>;
}

impl Weights for [Endpoint] {
    fn weights(&self) -> Vec<f64> {
        self.iter().map(|e| e.weight).collect()
    }
}

/// A configured load-balancing policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Policy {
    /// Smooth weighted round robin (nginx's), the default.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Power of two choices over requests in flight.
    LeastRequest,
    /// Power of two choices over peak-EWMA latency times load.
    PeakEwma,
    /// Ketama-style consistent hashing on a key.
    RingHash(HashKey),
    /// Maglev consistent hashing on a key.
    Maglev(HashKey),
}

impl Policy {
    /// Whether the policy reads endpoints' latency estimates, so the request path must keep
    /// them up to date.
    pub fn uses_latency(&self) -> bool {
        matches!(self, Policy::PeakEwma)
    }

    /// Whether the policy reads endpoints' in-flight counts, so the request path must keep
    /// them. The others skip four atomic writes a request to memory shared by all workers.
    pub fn uses_load(&self) -> bool {
        matches!(self, Policy::LeastRequest | Policy::PeakEwma)
    }
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (name, key) = s.split_once(':').unwrap_or((s, ""));
        let hashed = |make: fn(HashKey) -> Policy| -> Result<Policy, String> {
            if key.is_empty() {
                return Err(format!(
                    "{name} needs a hash key: {name}:header:<name>, {name}:cookie:<name>, {name}:client_ip or {name}:path"
                ));
            }
            key.parse().map(make)
        };
        match name {
            "round_robin" if key.is_empty() => Ok(Policy::RoundRobin),
            "random" if key.is_empty() => Ok(Policy::Random),
            "least_request" if key.is_empty() => Ok(Policy::LeastRequest),
            "peak_ewma" if key.is_empty() => Ok(Policy::PeakEwma),
            "ring_hash" => hashed(Policy::RingHash),
            "maglev" => hashed(Policy::Maglev),
            _ => Err(format!(
                "policy {s:?}: expected round_robin, random, least_request, peak_ewma, ring_hash:<key> or maglev:<key>"
            )),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::RoundRobin => f.write_str("round_robin"),
            Policy::Random => f.write_str("random"),
            Policy::LeastRequest => f.write_str("least_request"),
            Policy::PeakEwma => f.write_str("peak_ewma"),
            Policy::RingHash(k) => write!(f, "ring_hash:{k}"),
            Policy::Maglev(k) => write!(f, "maglev:{k}"),
        }
    }
}

/// Builds `policy`'s picker over `endpoints` (all of positive weight), reading `loads` (one per
/// endpoint, same order) where the policy is load-aware.
pub fn build(
    policy: &Policy,
    endpoints: &[Endpoint],
    loads: &[Arc<EndpointLoad>],
) -> Box<dyn Picker> {
    rebuild(policy, endpoints, loads, None)
}

/// Like [`build`], starting from the `previous` picker of the same service where the policy
/// can update one in place of building it anew.
pub fn rebuild(
    policy: &Policy,
    endpoints: &[Endpoint],
    loads: &[Arc<EndpointLoad>],
    previous: Option<&dyn Picker>,
) -> Box<dyn Picker> {
    if let (Policy::RingHash(key), Some(ring)) = (policy, previous.and_then(|p| p.as_ring_hash())) {
        return Box::new(ring.updated(endpoints, key.clone()));
    }
    match policy {
        Policy::RoundRobin => Box::new(SmoothRoundRobin::new(endpoints)),
        Policy::Random => Box::new(WeightedRandom::new(endpoints)),
        Policy::LeastRequest => Box::new(LeastRequest::new(endpoints, loads)),
        Policy::PeakEwma => Box::new(PeakEwma::new(endpoints, loads)),
        Policy::RingHash(key) => Box::new(RingHash::new(endpoints, key.clone())),
        Policy::Maglev(key) => Box::new(Maglev::new(endpoints, key.clone())),
    }
}

#[cfg(test)]
mod tests;
