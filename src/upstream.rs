//! The per-service state shared between the request path and the discovery task.
//!
//! The discovery task writes, requests read, and nothing locks: the routable node set and its
//! picker are published together as one [`Pool`] through `ArcSwap`, so a request either sees
//! the old pool or the new one, never a mix.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use http::uri::Authority;
use metrics::{Counter, Histogram};
use outrigger_discovery::{Endpoint, GuardState, NodeSet};

use crate::balance::{self, PickContext, Picker};

/// A node set with the picker built for it.
pub struct Pool {
    /// The endpoints routing may use.
    pub nodes: NodeSet,
    /// Each endpoint's address as a URI authority, built once so requests need not format it.
    authorities: Vec<Authority>,
    picker: Box<dyn Picker>,
}

impl Pool {
    /// Builds the picker for `nodes`; done off the request path.
    pub fn new(nodes: NodeSet) -> Self {
        let picker = balance::build(&nodes);
        let authorities = nodes
            .endpoints()
            .iter()
            .map(|e| {
                Authority::try_from(e.addr.to_string())
                    .expect("a socket address is a valid URI authority")
            })
            .collect();
        Pool {
            nodes,
            authorities,
            picker,
        }
    }

    /// Chooses the endpoint for one request, with its address as a URI authority.
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<(&Endpoint, &Authority)> {
        let i = self.picker.pick(ctx)?;
        Some((self.nodes.endpoints().get(i)?, self.authorities.get(i)?))
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
    pub fn new(name: Arc<str>, source: String) -> Self {
        Upstream {
            metrics: UpstreamMetrics::new(&name),
            name,
            source,
            pool: ArcSwap::from_pointee(Pool::new(NodeSet::empty())),
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
        self.pool.store(Arc::new(Pool::new(nodes)));
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
