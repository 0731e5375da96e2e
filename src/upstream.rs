//! The per-service state shared between the request path and the discovery task.
//!
//! The discovery task writes, requests read, and nothing locks: the routable node set and its
//! picker are published together as one [`Pool`] through `ArcSwap`, so a request either sees
//! the old pool or the new one, never a mix.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use http::uri::Authority;
use metrics::{Counter, Histogram};
use outrigger_discovery::{Endpoint, GuardState, NodeSet};

use crate::balance::load::EndpointLoad;
use crate::balance::{self, PickContext, Picker, Policy};

/// A node set with the picker built for it.
pub struct Pool {
    /// The endpoints the registry gave (validated), for the admin API.
    pub nodes: NodeSet,
    /// The policy's endpoints: the highest-priority tier that has endpoints of positive
    /// weight. Lower tiers get traffic only when no endpoint of a higher tier can take it.
    active: Vec<Endpoint>,
    /// Each active endpoint's address as a URI authority, built once so requests need not
    /// format it.
    authorities: Vec<Authority>,
    /// Each active endpoint's load, shared with earlier and later pools of the service.
    loads: Vec<Arc<EndpointLoad>>,
    picker: Box<dyn Picker>,
}

/// The endpoint chosen for one request, with what the request path needs of it.
pub struct Picked<'a> {
    /// The endpoint.
    pub endpoint: &'a Endpoint,
    /// Its address as a URI authority.
    pub authority: &'a Authority,
    /// Its load record, to count the request and its latency.
    pub load: &'a Arc<EndpointLoad>,
}

impl Pool {
    /// Builds the pool for `nodes` under `policy`, taking each endpoint's load record from
    /// `book` (and adding records for new addresses). Done off the request path.
    pub fn new(
        nodes: NodeSet,
        policy: &Policy,
        book: &mut HashMap<SocketAddr, Arc<EndpointLoad>>,
    ) -> Self {
        let tier = nodes
            .endpoints()
            .iter()
            .filter(|e| e.weight > 0.0)
            .map(|e| e.priority)
            .min();
        let active: Vec<Endpoint> = nodes
            .endpoints()
            .iter()
            .filter(|e| e.weight > 0.0 && Some(e.priority) == tier)
            .cloned()
            .collect();
        let authorities = active
            .iter()
            .map(|e| {
                Authority::try_from(e.addr.to_string())
                    .expect("a socket address is a valid URI authority")
            })
            .collect();
        let loads: Vec<Arc<EndpointLoad>> = active
            .iter()
            .map(|e| book.entry(e.addr).or_default().clone())
            .collect();
        let picker = balance::build(policy, &active, &loads);
        Pool {
            nodes,
            active,
            authorities,
            loads,
            picker,
        }
    }

    /// Chooses the endpoint for one request.
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<Picked<'_>> {
        let i = self.picker.pick(ctx)?;
        Some(Picked {
            endpoint: self.active.get(i)?,
            authority: self.authorities.get(i)?,
            load: self.loads.get(i)?,
        })
    }
}

/// What the last-known-good guard reports about a service, for the admin API.
#[derive(Debug, Clone)]
pub struct Report {
    /// The guard's state.
    pub state: GuardState,
    /// A held update, its reason and since when.
    pub pending: Option<HeldUpdate>,
    /// The last registry error and when it happened.
    pub last_error: Option<(String, SystemTime)>,
    /// When the registry last gave a usable answer.
    pub last_good: Option<Instant>,
}

/// A held update as the admin API shows it.
#[derive(Debug, Clone)]
pub struct HeldUpdate {
    /// The endpoints the registry asked for.
    pub nodes: NodeSet,
    /// Why it was held.
    pub reason: String,
    /// When it was first seen, and when it will be applied if the registry stands by it.
    pub since: SystemTime,
    /// When it will be applied if the registry stands by it.
    pub applies_at: SystemTime,
}

/// Metric handles registered once per service, so the request path never looks them up.
pub struct UpstreamMetrics {
    /// Request latency to the response head.
    pub latency: Histogram,
    /// Failed connections to the service's nodes.
    pub connect_errors: Counter,
    /// Requests by status code, registered on first use of each code.
    by_status: OnceLock<Box<[OnceLock<Counter>]>>,
}

impl UpstreamMetrics {
    fn new(service: &Arc<str>) -> Self {
        UpstreamMetrics {
            latency: metrics::histogram!("outrigger_request_duration_seconds", "service" => service.to_string()),
            connect_errors: metrics::counter!("outrigger_upstream_connect_errors_total", "service" => service.to_string()),
            by_status: OnceLock::new(),
        }
    }

    /// Counts one response with `status` for this service.
    pub fn count(&self, service: &Arc<str>, status: u16) {
        let slots = self.by_status.get_or_init(|| {
            (100..600)
                .map(|_| OnceLock::new())
                .collect::<Vec<_>>()
                .into_boxed_slice()
        });
        let Some(slot) = slots.get(usize::from(status).wrapping_sub(100)) else {
            return;
        };
        slot.get_or_init(|| {
            metrics::counter!("outrigger_requests_total", "service" => service.to_string(), "status" => status.to_string())
        })
        .increment(1);
    }
}

/// One routable service.
pub struct Upstream {
    /// The name requests use.
    pub name: Arc<str>,
    /// The discovery source, as the admin API shows it.
    pub source: String,
    /// The load-balancing policy.
    pub policy: Policy,
    /// Load records by address, kept while the address stays in the node set. Locked only
    /// when a pool is built, never on the request path.
    loads: Mutex<HashMap<SocketAddr, Arc<EndpointLoad>>>,
    /// The pool requests pick from.
    pub pool: ArcSwap<Pool>,
    /// The guard's latest report.
    pub report: ArcSwap<Report>,
    /// Whether the service has had a first node set (from the registry or from disk).
    pub ready: AtomicBool,
    /// Pre-registered metric handles.
    pub metrics: UpstreamMetrics,
}

impl Upstream {
    /// A service with no nodes yet.
    pub fn new(name: Arc<str>, source: String, policy: Policy) -> Self {
        let mut book = HashMap::new();
        Upstream {
            metrics: UpstreamMetrics::new(&name),
            name,
            source,
            pool: ArcSwap::from_pointee(Pool::new(NodeSet::empty(), &policy, &mut book)),
            loads: Mutex::new(book),
            policy,
            report: ArcSwap::from_pointee(Report {
                state: GuardState::Waiting,
                pending: None,
                last_error: None,
                last_good: None,
            }),
            ready: AtomicBool::new(false),
        }
    }

    /// Publishes a new node set to the request path.
    pub fn publish(&self, nodes: NodeSet) {
        let pool = {
            let mut book = self.loads.lock().unwrap_or_else(|e| e.into_inner());
            // Forget addresses that left; the ones that stay keep their history.
            book.retain(|addr, _| {
                nodes
                    .endpoints()
                    .binary_search_by_key(addr, |e| e.addr)
                    .is_ok()
            });
            Pool::new(nodes, &self.policy, &mut book)
        };
        self.pool.store(Arc::new(pool));
        self.ready.store(true, Ordering::Release);
    }

    /// True once the service has had a first node set.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// All routable services by name; built at start and never changed, so lookups need no lock.
pub struct Routes {
    by_name: HashMap<Arc<str>, Arc<Upstream>>,
    order: Vec<Arc<Upstream>>,
}

impl Routes {
    /// The table for `upstreams`, in configuration order.
    pub fn new(upstreams: Vec<Arc<Upstream>>) -> Self {
        Routes {
            by_name: upstreams
                .iter()
                .map(|u| (u.name.clone(), u.clone()))
                .collect(),
            order: upstreams,
        }
    }

    /// The service named `name` (already lower-cased).
    pub fn get(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.by_name.get(name)
    }

    /// Every service, in configuration order.
    pub fn all(&self) -> &[Arc<Upstream>] {
        &self.order
    }
}
