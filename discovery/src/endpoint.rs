use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// A validated node that routing may send traffic to.
///
/// Everything here has passed the guard: the address is a concrete IP and port, the weight is
/// finite and not negative. Metadata sits behind an `Arc` so that cloning node sets on every
/// update stays cheap.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Relative share of traffic; 0 means the node is known but gets no traffic.
    pub weight: f64,
    /// Priority tier; 0 is the highest.
    pub priority: u32,
    /// Locality and registry labels, for policies and for the admin API.
    pub meta: Arc<EndpointMeta>,
}

/// Labels a registry attaches to a node; carried through for policies and operators.
///
/// Nodes with equal labels share one copy. `Eq` lets comparing two endpoints that share it
/// (node sets, on every update) stop at the pointer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointMeta {
    /// Locality (zone, cluster, datacenter), where the registry gives one.
    pub zone: Option<String>,
    /// Registry tags.
    pub tags: Vec<String>,
    /// Free-form registry metadata.
    pub metadata: BTreeMap<String, String>,
    /// The node's port speaks TLS, as the registry says: Eureka chose the instance's
    /// `securePort`; Consul service `Meta`, Nacos instance `metadata` and file `metadata` hold
    /// `secure=true` (Spring Cloud's convention). Outrigger then connects with TLS whatever
    /// `OUTRIGGER_UPSTREAM_TLS` says.
    pub secure: bool,
    /// The node's DNS name where the registry gives one (Eureka `hostName`): the name a
    /// secure node's certificate is checked against, and sent as SNI, unless
    /// `OUTRIGGER_UPSTREAM_TLS_SERVER_NAME` names another.
    pub host_name: Option<String>,
    /// The configured sources that listed the node, when its service has several
    /// (`OUTRIGGER_DISCOVERY_<SERVICE>` with more than one URL): each source's description,
    /// in the configured order; empty for a service with one source.
    pub sources: Vec<String>,
}

impl Endpoint {
    /// An endpoint with weight 1, priority 0 and no labels.
    pub fn new(addr: SocketAddr) -> Self {
        Endpoint {
            addr,
            weight: 1.0,
            priority: 0,
            meta: crate::no_meta(),
        }
    }
}
