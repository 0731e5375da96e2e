//! Service discovery for Outrigger: registry adapters, the node-set model, and the
//! last-known-good guard that stands between every adapter and the proxy's pools.
//!
//! Data flows one way: an adapter ([`Discovery`]) turns a registry into a stream of
//! [`ServiceUpdate`]s holding raw [`Candidate`]s (what the registry claims); the
//! [`LastKnownGood`] guard validates them into [`Endpoint`]s, rejects or holds what looks wrong,
//! and hands out the [`NodeSet`] that routing may use.

mod candidate;
pub mod consul;
pub mod dns;
mod endpoint;
mod error;
pub mod eureka;
pub mod file;
mod guard;
mod http_body;
pub mod nacos;
mod node_set;
pub mod pace;
pub mod registration;
mod shared_meta;
mod source;
pub mod state_store;
pub mod static_list;
mod validate;

pub use candidate::Candidate;
pub use endpoint::{Endpoint, EndpointMeta};
pub use error::{error_chain, redact_secrets, DiscoveryError};
pub use guard::{Decision, GuardPolicy, GuardState, LastKnownGood, Pending};
pub use node_set::NodeSet;
pub(crate) use shared_meta::{no_meta, SharedMeta};
pub use source::{Discovery, ServiceUpdate, UpdateSink};
pub use validate::{validate, DropReason, Dropped, Validated};

/// Reads a registry capture from `integration/fixtures` (provenance in its PROVENANCE.md), for
/// the adapters' parsing tests.
#[cfg(test)]
pub(crate) fn fixture(registry: &str, name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../integration/fixtures/{registry}/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}
