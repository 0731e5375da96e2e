//! Selection of one endpoint per request.
//!
//! Each policy lives in its own file behind the [`Picker`] trait. A picker is built off the
//! request path whenever a service's node set changes, and its `pick` must not lock: it runs on
//! every request.

mod round_robin;

use std::net::IpAddr;

use http::HeaderMap;
use outrigger_discovery::NodeSet;

pub use round_robin::SmoothRoundRobin;

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

/// A load-balancing policy over one node set.
pub trait Picker: Send + Sync {
    /// The index, in the node set it was built for, of the endpoint to use; `None` when no
    /// endpoint may take traffic.
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize>;
}

/// Builds the default policy (smooth weighted round robin) for `nodes`.
pub fn build(nodes: &NodeSet) -> Box<dyn Picker> {
    Box::new(SmoothRoundRobin::new(nodes))
}
