use std::time::SystemTime;

use crate::Endpoint;

/// The complete, validated set of endpoints of one service at one moment.
///
/// Node sets are immutable values: a change builds a new one, which is then published
/// atomically, so a request always sees one whole set and never a half-applied update.
/// Endpoints are kept sorted by address so that two sets with the same nodes compare equal
/// whatever order the registry listed them in.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSet {
    endpoints: Vec<Endpoint>,
    changed_at: SystemTime,
}

impl NodeSet {
    /// Builds a set from endpoints that have already been validated and de-duplicated.
    pub fn new(mut endpoints: Vec<Endpoint>) -> Self {
        endpoints.sort_by_key(|e| e.addr);
        NodeSet {
            endpoints,
            changed_at: SystemTime::now(),
        }
    }

    /// Rebuilds a set persisted earlier, keeping the time it last changed.
    pub fn restored(endpoints: Vec<Endpoint>, changed_at: SystemTime) -> Self {
        let mut set = NodeSet::new(endpoints);
        set.changed_at = changed_at;
        set
    }

    /// An empty set.
    pub fn empty() -> Self {
        NodeSet::new(Vec::new())
    }

    /// The endpoints, sorted by address.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// True when the set has no endpoint.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// When this content was first accepted.
    pub fn changed_at(&self) -> SystemTime {
        self.changed_at
    }

    /// True when both sets hold the same endpoints with the same attributes, whenever built.
    pub fn same_nodes(&self, other: &NodeSet) -> bool {
        self.endpoints == other.endpoints
    }

    /// How many of `self`'s endpoint addresses are missing from `next`.
    pub fn removed_in(&self, next: &NodeSet) -> usize {
        self.endpoints
            .iter()
            .filter(|e| {
                next.endpoints
                    .binary_search_by_key(&e.addr, |n| n.addr)
                    .is_err()
            })
            .count()
    }
}
