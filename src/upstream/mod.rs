//! The per-service state shared between the request path, the discovery task and the health
//! supervisor.
//!
//! Writers build, requests read, and nothing on the request path locks: the routable endpoints
//! and the picker built for them are published together as one [`Pool`] through `ArcSwap`, so
//! a request sees the old pool or the new one, never a mix.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use metrics::{Counter, Histogram};
use outrigger_discovery::{EndpointMeta, GuardState, NodeSet};
use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use crate::balance::Policy;
use crate::health::state::now_ns;
use crate::health::HealthPolicy;
use crate::node_client::connect::Connector;
use crate::node_client::secure::SecureNodes;
use crate::retry::RetryBudget;

pub use crate::request_body::RequestBody;

mod pool;

use pool::{routable, Book};
pub use pool::{EndpointState, Picked, Pool, ZoneView};

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
    /// The last held update applied before its window because the nodes it removed were
    /// failing: why, and when.
    pub last_replacement: Option<(String, SystemTime)>,
    /// The operator's pin, while pinned.
    pub pin: Option<PinInfo>,
    /// While pinned: the registry's newest answer, read and not applied.
    pub behind_pin: Option<BehindPin>,
    /// A held update an operator refused, while the registry keeps giving it: its endpoint
    /// count.
    pub refused: Option<usize>,
    /// With several sources (`OUTRIGGER_DISCOVERY_<SERVICE>`), each one's state; empty with
    /// one.
    pub sources: Vec<SourceState>,
}

/// One source of a service fed by several, as the admin API shows it.
#[derive(Debug, Clone)]
pub struct SourceState {
    /// The source's description (its URL without credentials).
    pub source: String,
    /// How many endpoints its last usable answer gave (or the restored set holds for it);
    /// `None` before either.
    pub endpoints: Option<usize>,
    /// True while its endpoints are those of the set restored at start, before it answered
    /// usably.
    pub restored: bool,
    /// Why its latest answer was refused (an error, or every entry invalid), and since when;
    /// `None` while its answers are used.
    pub error: Option<(String, SystemTime)>,
    /// When its latest answer came, usable or not.
    pub last_answer: Option<SystemTime>,
    /// When its latest usable answer came.
    pub last_usable: Option<SystemTime>,
}

/// An operator's pin as the admin API shows it.
#[derive(Debug, Clone)]
pub struct PinInfo {
    /// The history entry that records the pin.
    pub version: u64,
    /// The history version pinned to (`None`: the set in use then).
    pub pinned_to: Option<u64>,
    /// When.
    pub since: SystemTime,
    /// Who (the admin peer).
    pub by: String,
}

/// The registry's newest answer while a service is pinned.
#[derive(Debug, Clone)]
pub enum BehindPin {
    /// A usable answer: its endpoints, and how it differs from the pinned set.
    Nodes {
        /// The endpoints it holds.
        endpoints: usize,
        /// Added, removed, changed against the pinned set.
        diff: crate::history::Diff,
    },
    /// An unusable answer: why.
    Error(String),
}

/// A held update as the admin API shows it.
#[derive(Debug, Clone)]
pub struct HeldUpdate {
    /// The endpoints the registry asked for.
    pub nodes: NodeSet,
    /// Why it was held.
    pub reason: String,
    /// When it was first seen.
    pub since: SystemTime,
    /// When it will be applied if the registry stands by it.
    pub applies_at: SystemTime,
}

/// Why a request was sent again: what went wrong with the attempt before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The node answered with a retryable 5xx.
    Status5xx = 0,
    /// The connection could not be made.
    Connect = 1,
    /// The node did not answer within the attempt's time.
    Timeout = 2,
    /// The node broke the exchange.
    Reset = 3,
    /// The TLS session could not be set up.
    Tls = 4,
    /// A kept-alive connection was closed by the node as it was reused.
    StaleConnection = 5,
    /// Anything else.
    Other = 6,
}

impl RetryReason {
    /// Every reason, in index order.
    pub const ALL: [RetryReason; 7] = [
        RetryReason::Status5xx,
        RetryReason::Connect,
        RetryReason::Timeout,
        RetryReason::Reset,
        RetryReason::Tls,
        RetryReason::StaleConnection,
        RetryReason::Other,
    ];

    /// The `reason` label of `outrigger_retries_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Status5xx => "5xx",
            RetryReason::Connect => "connect_failure",
            RetryReason::Timeout => "timeout",
            RetryReason::Reset => "reset",
            RetryReason::Tls => "tls",
            RetryReason::StaleConnection => "stale_connection",
            RetryReason::Other => "other",
        }
    }
}

impl From<crate::health::state::Failure> for RetryReason {
    fn from(f: crate::health::state::Failure) -> Self {
        use crate::health::state::Failure;
        match f {
            Failure::Status5xx => RetryReason::Status5xx,
            Failure::Connect => RetryReason::Connect,
            Failure::Timeout => RetryReason::Timeout,
            Failure::Reset => RetryReason::Reset,
            Failure::Tls => RetryReason::Tls,
            Failure::None => RetryReason::Other,
        }
    }
}

/// Metric handles registered once per service, so the request path never looks them up.
pub struct UpstreamMetrics {
    /// Request latency to the response head.
    pub latency: Histogram,
    /// Failed connections to the service's nodes.
    pub connect_errors: Counter,
    /// Failed TLS sessions with the service's nodes.
    pub tls_errors: Counter,
    /// Retries sent, by [`RetryReason`] (indexed by its value).
    pub retries: [Counter; RetryReason::ALL.len()],
    /// Retries refused because the budget was spent.
    pub retry_budget_exhausted: Counter,
    /// Requests refused by the concurrency limits.
    pub overloaded: Counter,
    /// Responses refused for heads beyond `OUTRIGGER_MAX_HEADERS` or
    /// `OUTRIGGER_MAX_RESPONSE_HEADERS`.
    pub over_limit: Counter,
    /// 1 while the service is in panic (too few healthy endpoints: all of them take traffic).
    pub panic: metrics::Gauge,
    /// Requests by status code, registered on first use of each code.
    by_status: OnceLock<Box<[OnceLock<Counter>]>>,
}

impl UpstreamMetrics {
    fn new(service: &Arc<str>) -> Self {
        let s = || service.to_string();
        UpstreamMetrics {
            latency: metrics::histogram!("outrigger_request_duration_seconds", "service" => s()),
            connect_errors: metrics::counter!("outrigger_upstream_connect_errors_total", "service" => s()),
            tls_errors: metrics::counter!("outrigger_upstream_tls_errors_total", "service" => s()),
            retries: RetryReason::ALL.map(|r| {
                metrics::counter!("outrigger_retries_total", "service" => s(), "reason" => r.as_str())
            }),
            retry_budget_exhausted: metrics::counter!("outrigger_retry_budget_exhausted_total", "service" => s()),
            overloaded: metrics::counter!("outrigger_overloaded_total", "service" => s()),
            over_limit: metrics::counter!("outrigger_response_headers_over_limit_total", "service" => s()),
            panic: metrics::gauge!("outrigger_service_panic", "service" => s()),
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

/// How one service is balanced, checked and limited.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSettings {
    /// Load-balancing policy.
    pub policy: Policy,
    /// Health checking.
    pub health: HealthPolicy,
    /// Time to open a connection to a node (`OUTRIGGER_CONNECT_TIMEOUT`).
    pub connect_timeout: Duration,
    /// Time from receiving a request to sending the response head, retries included
    /// (`OUTRIGGER_REQUEST_TIMEOUT`).
    pub request_timeout: Duration,
    /// Time one attempt may take (`OUTRIGGER_TRY_TIMEOUT`; the request timeout when unset).
    pub try_timeout: Duration,
    /// Retries after the first attempt, at most (`OUTRIGGER_RETRIES`, 0 to 5).
    pub max_retries: u32,
    /// The response statuses retried on another node (`OUTRIGGER_RETRY_ON`).
    pub retry_on: crate::retry::RetryOn,
    /// Requests with a header value go to the nodes with a label (`OUTRIGGER_SUBSET_<SERVICE>`).
    pub subset: Option<crate::subset::SubsetRule>,
    /// Zone-aware routing (`OUTRIGGER_ZONE`); `None`: off.
    pub zone: Option<crate::zone::ZoneRouting>,
    /// How long a node that joins (or comes back from an ejection or a failed check) takes to
    /// ramp from a tenth of its weight to all of it (`OUTRIGGER_SLOW_START`; 0: at once).
    pub slow_start: Duration,
    /// Retry requests whose method is not idempotent (POST, PATCH) too
    /// (`OUTRIGGER_RETRY_NON_IDEMPOTENT`); a refused connection is retried for any method.
    pub retry_non_idempotent: bool,
    /// Requests in flight at most; more get 503.
    pub max_requests: u32,
    /// Connections being opened at most; more get 503.
    pub max_pending_connects: u32,
    /// Retries allowed as a share of requests.
    pub retry_budget_share: f64,
    /// Retries allowed per second whatever the traffic.
    pub retry_budget_floor: u64,
    /// Limits on the nodes' response heads.
    pub response_limits: crate::node_client::h1::HeadLimits,
    /// TLS toward the nodes (`OUTRIGGER_UPSTREAM_TLS*`); `None`: plaintext.
    pub tls: Option<Arc<crate::node_client::tls::NodeTls>>,
    /// The TLS settings as configured, from which `tls` is made.
    pub tls_config: crate::node_client::tls::TlsSettings,
    /// The HTTP version spoken to the nodes (`OUTRIGGER_UPSTREAM_PROTOCOL`).
    pub protocol: crate::node_client::UpstreamProtocol,
}

impl Default for UpstreamSettings {
    /// The documented defaults of every setting (the configuration replaces them with what
    /// the environment says).
    fn default() -> Self {
        UpstreamSettings {
            policy: Policy::default(),
            health: HealthPolicy::default(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(15),
            try_timeout: Duration::from_secs(15),
            max_retries: 2,
            retry_on: crate::retry::RetryOn::default(),
            retry_non_idempotent: false,
            slow_start: Duration::ZERO,
            subset: None,
            zone: None,
            max_requests: 1024,
            max_pending_connects: 256,
            retry_budget_share: 0.2,
            retry_budget_floor: 10,
            response_limits: Default::default(),
            tls: None,
            tls_config: Default::default(),
            protocol: Default::default(),
        }
    }
}

/// One routable service.
pub struct Upstream {
    /// The name requests use.
    pub name: Arc<str>,
    /// The discovery source, as the admin API shows it.
    pub source: String,
    /// How it is balanced, checked and limited.
    pub settings: UpstreamSettings,
    /// The pool requests pick from.
    pub pool: ArcSwap<Pool>,
    /// The guard's latest report.
    pub report: ArcSwap<Report>,
    /// Whether the service has had a first node set (from the registry or from disk).
    pub ready: AtomicBool,
    /// Pre-registered metric handles.
    pub metrics: UpstreamMetrics,
    /// Wakes the health supervisor: an ejection, a probe verdict, a new node set.
    pub health_events: Notify,
    /// Opens connections to this service's nodes (idle ones are kept per worker thread by
    /// `node_client::pool`).
    pub connector: Connector,
    /// Connects to the nodes the registry marks secure when `connector` is plaintext.
    pub secure_nodes: SecureNodes,
    /// Requests in flight to this service.
    pub in_flight: AtomicU32,
    /// The retry budget.
    pub budget: RetryBudget,
    /// The service's recent node-set decisions; written by the discovery task, read by the
    /// admin API, never by requests.
    pub history: Mutex<crate::history::History>,
    /// Endpoint state by address; locked only while a pool is built, never by requests.
    book: Mutex<Book>,
}

impl Upstream {
    /// A service with no nodes yet.
    pub fn new(name: Arc<str>, source: String, settings: UpstreamSettings) -> Self {
        let mut book = Book::new();
        let pool = Pool::new(NodeSet::empty(), &settings, &mut book, None, false);
        let connector = Connector::new(
            settings.connect_timeout,
            settings.max_pending_connects,
            settings.response_limits,
            settings.tls.clone(),
            settings.protocol,
        );
        Upstream {
            metrics: UpstreamMetrics::new(&name),
            budget: RetryBudget::new(settings.retry_budget_share, settings.retry_budget_floor),
            name,
            source,
            pool: ArcSwap::from_pointee(pool),
            report: ArcSwap::from_pointee(Report {
                state: GuardState::Waiting,
                pending: None,
                last_error: None,
                last_good: None,
                last_replacement: None,
                pin: None,
                behind_pin: None,
                refused: None,
                sources: Vec::new(),
            }),
            ready: AtomicBool::new(false),
            health_events: Notify::new(),
            connector,
            secure_nodes: SecureNodes::new(&settings.tls_config),
            history: Mutex::new(crate::history::History::default()),
            in_flight: AtomicU32::new(0),
            settings,
            book: Mutex::new(book),
        }
    }

    /// Whether every address of `addrs` (sorted) is a node of this service that is failing now
    /// ([`EndpointHealth::is_failing`]); false for an empty list or an unknown address.
    pub fn all_failing(&self, addrs: &[SocketAddr]) -> bool {
        let book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_ns();
        !addrs.is_empty()
            && addrs.iter().all(|addr| {
                book.binary_search_by_key(addr, |(a, _)| *a)
                    .is_ok_and(|i| book[i].1.health.is_failing(now))
            })
    }

    /// The connector for a node with labels `meta`, and the name its certificate is checked
    /// against when the settings name none: the service's connector, or for a node the
    /// registry marks secure in a plaintext service, [`SecureNodes`]'.
    ///
    /// Errors: why TLS to secure nodes cannot be set up.
    pub fn connector_for<'a>(
        &'a self,
        meta: &'a EndpointMeta,
    ) -> Result<(&'a Connector, Option<&'a str>), &'a str> {
        let connector = if meta.secure && !self.connector.is_tls() {
            self.secure_nodes.connector(&self.connector, &self.name)?
        } else {
            &self.connector
        };
        Ok((connector, meta.host_name.as_deref()))
    }

    /// Publishes a new node set to the request path.
    pub fn publish(&self, nodes: NodeSet) {
        if !self.connector.is_tls() && nodes.endpoints().iter().any(|e| e.meta.secure) {
            // Made here, on the control plane, rather than by the first request to such a
            // node: it reads files.
            let _ = self.secure_nodes.connector(&self.connector, &self.name);
        }
        {
            // Addresses that left are forgotten; the ones that stay keep their load and health.
            let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
            let previous = self.pool.load();
            // With active checks, a node that joins a running service waits for its first
            // probe; the first node set is trusted, or nothing would route at start.
            let new_wait = self.settings.health.active.is_some() && !book.is_empty();
            let pool = Pool::new(nodes, &self.settings, &mut book, Some(&previous), new_wait);
            self.metrics.panic.set(if pool.panic { 1.0 } else { 0.0 });
            self.note_zones(&pool);
            retire(self.pool.swap(Arc::new(pool)));
        }
        self.ready.store(true, Ordering::Release);
        // New addresses need probes.
        self.health_events.notify_one();
    }

    /// Rebuilds the pool if health has changed which endpoints are routable; returns true if
    /// it did.
    pub fn refresh(&self) -> bool {
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.pool.load_full();
        let (now_routable, panic) = routable(
            &current.nodes,
            &current.health,
            self.settings.health.panic_threshold,
            now_ns(),
        );
        // A slow start in progress (or just over) changes weights, not membership.
        let warming =
            !self.settings.slow_start.is_zero() && current.health.iter().any(|h| h.is_warming());
        if now_routable == current.routable && panic == current.panic && !warming {
            return false;
        }
        let pool = Pool::new(
            current.nodes.clone(),
            &self.settings,
            &mut book,
            Some(&current),
            false,
        );
        if pool.panic != current.panic {
            tracing::warn!(service = %self.name, panic = pool.panic,
                "healthy share crossed the panic threshold");
            self.metrics.panic.set(if pool.panic { 1.0 } else { 0.0 });
        }
        self.note_zones(&pool);
        retire(self.pool.swap(Arc::new(pool)));
        true
    }

    /// Shows `pool`'s zone-aware routing in metrics, for a service with `OUTRIGGER_ZONE`:
    /// `outrigger_zone_routing_active` (1 while zones apply, 0 while they are ignored) and
    /// `outrigger_zone_local_share` (the share of all requests expected in the zone).
    fn note_zones(&self, pool: &Pool) {
        let Some(view) = pool.zone_view() else {
            return;
        };
        let service = self.name.to_string();
        metrics::gauge!("outrigger_zone_routing_active", "service" => service.clone())
            .set(if view.off.is_none() { 1.0 } else { 0.0 });
        metrics::gauge!("outrigger_zone_local_share", "service" => service)
            .set(view.expected_local);
    }

    /// True once the service has had a first node set.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Drops a replaced pool on the control plane once the last request using it is done.
///
/// A request holds the pool it picked from; without this, the request that lets go of it
/// last would free it on a worker, and freeing 10,000 endpoints (their metadata, a hash ring)
/// there is milliseconds of request latency. Outside a runtime (unit tests) it drops at once.
fn retire(old: Arc<Pool>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut old = old;
        loop {
            match Arc::try_unwrap(old) {
                Ok(pool) => return drop(pool),
                Err(still_used) => old = still_used,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

/// All routable services by name; built at start and never changed, so lookups need no lock.
/// FxHash: the keys are the operator's own service names, so a DoS-resistant hash buys nothing
/// on a lookup made for every request.
pub struct Routes {
    by_name: FxHashMap<Arc<str>, Arc<Upstream>>,
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

#[cfg(test)]
mod tests;
