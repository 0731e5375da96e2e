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
use http::uri::Authority;

use metrics::{Counter, Histogram};
use outrigger_discovery::{Endpoint, EndpointMeta, GuardState, NodeSet};
use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use crate::balance::load::EndpointLoad;
use crate::balance::{self, PickContext, Picker, Policy};
use crate::by_address::carried;
use crate::health::state::{now_ns, EndpointHealth};
use crate::health::HealthPolicy;
use crate::node_client::connect::Connector;
use crate::node_client::secure::SecureNodes;
use crate::retry::RetryBudget;

pub use crate::request_body::RequestBody;

/// What the service keeps per address for as long as the address stays in its node set.
#[derive(Debug, Default, Clone)]
pub struct EndpointState {
    /// Requests in flight and latency estimate.
    pub load: Arc<EndpointLoad>,
    /// Active and passive health.
    pub health: Arc<EndpointHealth>,
}

/// A node set with the picker built for its routable endpoints.
pub struct Pool {
    /// The endpoints the registry gave (validated), for the admin API.
    pub nodes: NodeSet,
    /// Each node's health, in the order of `nodes`.
    pub health: Vec<Arc<EndpointHealth>>,
    /// True when too few endpoints are healthy and health is ignored (panic mode).
    pub panic: bool,
    /// Indices (into `nodes`) of the routable endpoints, as the supervisor compares them.
    routable: Vec<usize>,
    /// The routable endpoints: healthy (unless in panic), positive weight, highest tier.
    active: Vec<Endpoint>,
    /// Each active endpoint's state.
    states: Vec<EndpointState>,
    /// The picker and authorities for `active`, shared with the next pool when that routes to
    /// the same addresses with the same weights.
    selection: Arc<Selection>,
    /// With a subset rule: the active endpoints in the subset, and their picker (`None`: the
    /// subset is empty).
    subset: Option<SubsetPool>,
}

/// The part of a pool a subset rule selects.
struct SubsetPool {
    active: Vec<Endpoint>,
    states: Vec<EndpointState>,
    selection: Selection,
}

/// What a pool builds from its active endpoints' addresses and weights alone, and nothing else.
///
/// Registries often publish changes that leave those alone: metadata, a check's output, a
/// Consul index bump, Eureka's timestamps. Such an update reuses the selection instead of
/// rebuilding it, which for a hash ring of 10,000 nodes is most of an update's cost
/// (bench/churn.sh).
struct Selection {
    picker: Box<dyn Picker>,
    /// Each active endpoint's address as a URI authority, built once.
    authorities: Vec<Authority>,
}

impl Selection {
    /// Builds the selection for `active`, reusing what `previous` (with the endpoints it was
    /// built for) already has for the addresses that stay.
    fn new(
        policy: &Policy,
        active: &[Endpoint],
        states: &[EndpointState],
        previous: Option<(&[Endpoint], &Selection)>,
    ) -> Self {
        let loads: Vec<Arc<EndpointLoad>> = states.iter().map(|s| s.load.clone()).collect();
        Selection {
            picker: balance::rebuild(
                policy,
                active,
                &loads,
                previous.map(|(_, p)| p.picker.as_ref()),
            ),
            authorities: authorities(active, previous.map(|(e, p)| (e, &*p.authorities))),
        }
    }
}

/// The URI authority of each of `active`, taken from `previous` for addresses it had: formatting
/// and parsing 10,000 addresses was a tenth of a rolling deploy's update (bench/HISTORY.md).
/// Both lists are sorted by address, so one merge pass pairs them.
fn authorities(
    active: &[Endpoint],
    previous: Option<(&[Endpoint], &[Authority])>,
) -> Vec<Authority> {
    let (old_endpoints, old_authorities) = previous.unwrap_or_default();
    let old = old_endpoints.iter().map(|e| e.addr).zip(old_authorities);
    carried(old, active.iter().map(|e| e.addr))
        .map(|(addr, kept)| match kept {
            Some(authority) => authority.clone(),
            None => Authority::try_from(addr.to_string())
                .expect("a socket address is a valid URI authority"),
        })
        .collect()
}

/// True when `a` and `b` route alike: the same addresses, in order, with the same weights.
/// Same addresses also mean the same per-endpoint state, since the book keeps an address's
/// state for as long as it stays.
fn same_routing(a: &[Endpoint], b: &[Endpoint]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(a, b)| a.addr == b.addr && a.weight.to_bits() == b.weight.to_bits())
}

/// Each endpoint's state by address, sorted like a [`NodeSet`]: the load and health an
/// address has built up outlive the node sets that list it.
type Book = Vec<(SocketAddr, EndpointState)>;

/// Makes `book` list exactly the addresses of `nodes`, keeping the state of those that stay
/// and starting fresh ones for new addresses (pending their first probe when `new_wait`), and
/// returns the states in the order of `nodes`.
///
/// One merge pass of two sorted lists: a hash map cost a SipHash and a lookup per endpoint,
/// and forgetting departed addresses a binary search each (a fifth of a 10,000-endpoint
/// update's CPU between them, bench/HISTORY.md).
fn carry_states(book: &mut Book, nodes: &NodeSet, new_wait: bool) -> Vec<EndpointState> {
    let addrs = nodes.endpoints().iter().map(|e| e.addr);
    // A node that joins a running service starts slowly (when slow start is on); the first
    // set is trusted at full weight, or nothing would take traffic at start.
    let joining = !book.is_empty();
    let now = now_ns();
    let fresh = || {
        let state = if new_wait {
            EndpointState {
                health: Arc::new(EndpointHealth::pending()),
                ..EndpointState::default()
            }
        } else {
            EndpointState::default()
        };
        if joining {
            state.health.start_warming(now);
        }
        state
    };
    *book = carried(std::mem::take(book), addrs)
        .map(|(addr, state)| (addr, state.unwrap_or_else(fresh)))
        .collect();
    book.iter().map(|(_, state)| state.clone()).collect()
}

/// The endpoint chosen for one request, with what the request path needs of it.
pub struct Picked<'a> {
    /// The endpoint.
    pub endpoint: &'a Endpoint,
    /// Its address as a URI authority.
    pub authority: &'a Authority,
    /// Its load and health.
    pub state: &'a EndpointState,
}

/// Which endpoints of `nodes` may take traffic now, and whether the service is in panic.
///
/// The tier is chosen by health first: the highest-priority tier (lowest number) whose healthy
/// share of positive-weight endpoints reaches `panic_threshold` serves, with its healthy
/// endpoints, so that a dead primary tier fails over to a healthy standby instead of dragging
/// it into panic. Only when no tier is healthy enough is the service in panic (Envoy's panic
/// mode), judged within the tier with the largest healthy share (the higher priority on ties):
/// its every positive-weight endpoint takes traffic, health ignored, rather than crushing the
/// few left.
fn routable(
    nodes: &NodeSet,
    health: &[Arc<EndpointHealth>],
    panic_threshold: f64,
    now: u64,
) -> (Vec<usize>, bool) {
    // Endpoints pending their first probe count for nothing, unless nothing else is there.
    let settled = |i: usize| !health[i].is_pending();
    if (0..nodes.len()).any(settled) {
        choose_tier(nodes, health, panic_threshold, now, &settled)
    } else {
        choose_tier(nodes, health, panic_threshold, now, &|_| true)
    }
}

/// [`routable`] over the endpoints that `counted` admits.
fn choose_tier(
    nodes: &NodeSet,
    health: &[Arc<EndpointHealth>],
    panic_threshold: f64,
    now: u64,
    counted: &dyn Fn(usize) -> bool,
) -> (Vec<usize>, bool) {
    let endpoints = nodes.endpoints();
    let weighted = |i: usize| endpoints[i].weight > 0.0 && counted(i);
    let mut tiers: Vec<u32> = (0..endpoints.len())
        .filter(|&i| weighted(i))
        .map(|i| endpoints[i].priority)
        .collect();
    tiers.sort_unstable();
    tiers.dedup();
    let in_tier = |tier: u32| {
        (0..endpoints.len()).filter(move |&i| weighted(i) && endpoints[i].priority == tier)
    };
    // (tier, healthy share) of the best tier so far, for panic.
    let mut fallback: Option<(u32, f64)> = None;
    for &tier in &tiers {
        let weighted = in_tier(tier).count();
        let healthy: Vec<usize> = in_tier(tier).filter(|&i| !health[i].is_down(now)).collect();
        let share = healthy.len() as f64 / weighted as f64;
        if !healthy.is_empty() && share >= panic_threshold {
            return (healthy, false);
        }
        if fallback.is_none_or(|(_, best)| share > best) {
            fallback = Some((tier, share));
        }
    }
    match fallback {
        Some((tier, _)) => (in_tier(tier).collect(), true),
        None => (Vec::new(), false),
    }
}

impl Pool {
    /// Builds the pool for `nodes`, taking each endpoint's state from `book` (adding state for
    /// new addresses) and reusing `previous`'s selection if it routes alike. Done off the
    /// request path.
    fn new(
        nodes: NodeSet,
        settings: &UpstreamSettings,
        book: &mut Book,
        previous: Option<&Pool>,
        new_wait: bool,
    ) -> Self {
        let (policy, panic_threshold) = (&settings.policy, settings.health.panic_threshold);
        let all = carry_states(book, &nodes, new_wait);
        let health: Vec<Arc<EndpointHealth>> = all.iter().map(|s| s.health.clone()).collect();
        let now = now_ns();
        let (chosen, panic) = routable(&nodes, &health, panic_threshold, now);
        // Nodes in slow start take a share of their weight that grows over the window.
        let active: Vec<Endpoint> = chosen
            .iter()
            .map(|&i| {
                let mut e = nodes.endpoints()[i].clone();
                let share = health[i].warm_share(now, settings.slow_start);
                if share < 1.0 {
                    e.weight *= share;
                }
                e
            })
            .collect();
        let states: Vec<EndpointState> = chosen.iter().map(|&i| all[i].clone()).collect();
        let selection = match previous {
            Some(p) if same_routing(&p.active, &active) => p.selection.clone(),
            _ => Arc::new(Selection::new(
                policy,
                &active,
                &states,
                previous.map(|p| (&*p.active, &*p.selection)),
            )),
        };
        let subset = settings.subset.as_ref().and_then(|rule| {
            let (active, states): (Vec<Endpoint>, Vec<EndpointState>) = active
                .iter()
                .zip(&states)
                .filter(|(e, _)| rule.has(&e.meta))
                .map(|(e, s)| (e.clone(), s.clone()))
                .unzip();
            (!active.is_empty()).then(|| SubsetPool {
                selection: Selection::new(policy, &active, &states, None),
                active,
                states,
            })
        });
        Pool {
            nodes,
            health,
            panic,
            routable: chosen,
            active,
            states,
            selection,
            subset,
        }
    }

    /// Whether the subset has endpoints to route to.
    pub fn has_subset(&self) -> bool {
        self.subset.is_some()
    }

    /// How many active endpoints are in the subset.
    pub fn subset_len(&self) -> usize {
        self.subset.as_ref().map_or(0, |s| s.active.len())
    }

    /// [`Pool::pick_next`] among the subset's endpoints.
    pub fn pick_next_in_subset(&self, ctx: &PickContext<'_>, attempt: usize) -> Option<Picked<'_>> {
        let subset = self.subset.as_ref()?;
        let i = subset.selection.picker.pick_next(ctx, attempt)?;
        Some(Picked {
            endpoint: subset.active.get(i)?,
            authority: subset.selection.authorities.get(i)?,
            state: subset.states.get(i)?,
        })
    }

    /// Chooses the endpoint for one request.
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<Picked<'_>> {
        self.pick_next(ctx, 0)
    }

    /// The endpoint for the request's `attempt`-th draw ([`Picker::pick_next`]): a hash policy
    /// walks on to the next distinct endpoint instead of finding the same one again.
    pub fn pick_next(&self, ctx: &PickContext<'_>, attempt: usize) -> Option<Picked<'_>> {
        let i = self.selection.picker.pick_next(ctx, attempt)?;
        Some(Picked {
            endpoint: self.active.get(i)?,
            authority: self.selection.authorities.get(i)?,
            state: self.states.get(i)?,
        })
    }

    /// How many endpoints are ejected now.
    pub fn ejected(&self, now: u64) -> usize {
        self.health
            .iter()
            .filter(|h| h.ejected_until(now).is_some())
            .count()
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
        retire(self.pool.swap(Arc::new(pool)));
        true
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
mod tests {
    use super::*;

    fn upstream() -> Upstream {
        let settings = UpstreamSettings {
            policy: "ring_hash:client_ip".parse().expect("a valid policy"),
            max_requests: 100,
            max_pending_connects: 10,
            ..UpstreamSettings::default()
        };
        Upstream::new("orders".into(), "test".into(), settings)
    }

    fn nodes(ports: &[u16], weight: f64, rev: &str) -> NodeSet {
        NodeSet::new(
            ports
                .iter()
                .map(|&p| {
                    let mut e = Endpoint::new(SocketAddr::from(([127, 0, 0, 1], p)));
                    e.weight = weight;
                    let mut meta = outrigger_discovery::EndpointMeta::default();
                    meta.metadata.insert("rev".into(), rev.into());
                    e.meta = Arc::new(meta);
                    e
                })
                .collect(),
        )
    }

    /// Endpoints on ports `1..=n` with the given priorities, and their health (`down` ports
    /// failed their active check).
    fn tiered(priorities: &[u32], down: &[u16]) -> (NodeSet, Vec<Arc<EndpointHealth>>) {
        let set = NodeSet::new(
            priorities
                .iter()
                .enumerate()
                .map(|(i, &p)| {
                    let mut e = Endpoint::new(SocketAddr::from(([127, 0, 0, 1], i as u16 + 1)));
                    e.priority = p;
                    e
                })
                .collect(),
        );
        let health = set
            .endpoints()
            .iter()
            .map(|e| {
                let h = Arc::new(EndpointHealth::default());
                if down.contains(&e.addr.port()) {
                    h.set_active(crate::health::state::Active::Unhealthy);
                }
                h
            })
            .collect();
        (set, health)
    }

    fn ports_of(set: &NodeSet, chosen: &[usize]) -> Vec<u16> {
        chosen
            .iter()
            .map(|&i| set.endpoints()[i].addr.port())
            .collect()
    }

    #[test]
    fn a_dead_primary_tier_fails_over_to_a_healthy_standby_without_panic() {
        let now = now_ns();
        // Three dead primaries, one healthy standby.
        let (set, health) = tiered(&[0, 0, 0, 1], &[1, 2, 3]);
        let (chosen, panic) = routable(&set, &health, 0.5, now);
        assert_eq!((ports_of(&set, &chosen), panic), (vec![4], false));
        // Primaries healthy enough: they serve, the standby waits.
        let (set, health) = tiered(&[0, 0, 0, 0, 1], &[1, 2]);
        let (chosen, panic) = routable(&set, &health, 0.5, now);
        assert_eq!((ports_of(&set, &chosen), panic), (vec![3, 4], false));
        // No tier healthy enough: panic within the healthiest tier, all its nodes.
        let (set, health) = tiered(&[0, 0, 0, 1, 1], &[1, 2, 4, 5]);
        let (chosen, panic) = routable(&set, &health, 0.5, now);
        assert_eq!((ports_of(&set, &chosen), panic), (vec![1, 2, 3], true));
        // Nothing healthy anywhere: panic in the highest tier.
        let (set, health) = tiered(&[0, 1], &[1, 2]);
        let (chosen, panic) = routable(&set, &health, 0.5, now);
        assert_eq!((ports_of(&set, &chosen), panic), (vec![1], true));
    }

    #[test]
    fn a_metadata_only_update_keeps_the_selection_and_shows_the_new_metadata() {
        let u = upstream();
        u.publish(nodes(&[1001, 1002, 1003], 1.0, "a"));
        let before = u.pool.load_full();
        u.publish(nodes(&[1001, 1002, 1003], 1.0, "b"));
        let after = u.pool.load_full();
        assert!(Arc::ptr_eq(&before.selection, &after.selection));
        assert_eq!(after.active[0].meta.metadata["rev"], "b");

        // A weight or membership change builds a new one.
        u.publish(nodes(&[1001, 1002, 1003], 2.0, "b"));
        let reweighted = u.pool.load_full();
        assert!(!Arc::ptr_eq(&after.selection, &reweighted.selection));
        u.publish(nodes(&[1001, 1002], 2.0, "b"));
        assert!(!Arc::ptr_eq(
            &reweighted.selection,
            &u.pool.load_full().selection
        ));
    }

    #[test]
    fn endpoint_state_follows_the_address_across_updates() {
        let u = upstream();
        u.publish(nodes(&[1001, 1003, 1005], 1.0, "a"));
        let first = u.pool.load_full();
        // 1001 leaves, 1002 and 1006 join, 1003 and 1005 stay.
        u.publish(nodes(&[1002, 1003, 1005, 1006], 1.0, "a"));
        let second = u.pool.load_full();
        let same = |a: usize, b: usize| Arc::ptr_eq(&first.health[a], &second.health[b]);
        assert!(
            same(1, 1) && same(2, 2),
            "staying addresses keep their state"
        );
        assert!(
            !(0..3).any(|a| same(a, 0) || same(a, 3)),
            "new addresses start fresh"
        );
        // Authorities carried over or made anew, each still names its own endpoint.
        let named: Vec<String> = second
            .selection
            .authorities
            .iter()
            .map(|a| a.to_string())
            .collect();
        let addrs: Vec<String> = second.active.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(named, addrs);
        let book = u.book.lock().expect("book");
        let addrs: Vec<u16> = book.iter().map(|(a, _)| a.port()).collect();
        assert_eq!(
            addrs,
            [1002, 1003, 1005, 1006],
            "departed addresses are forgotten"
        );
        drop(book);

        // An address that left and came back starts fresh, not from its old state.
        u.publish(nodes(&[1001, 1003], 1.0, "a"));
        assert!(!Arc::ptr_eq(
            &first.health[0],
            &u.pool.load_full().health[0]
        ));
    }

    #[tokio::test]
    async fn a_replaced_pool_is_freed_by_the_control_plane_not_by_its_last_reader() {
        let u = upstream();
        u.publish(nodes(&[1001, 1002], 1.0, "a"));
        let reader = u.pool.load_full();
        let old = Arc::downgrade(&reader);
        u.publish(nodes(&[1001, 1003], 1.0, "a"));
        drop(reader);
        assert!(old.upgrade().is_some(), "the reader's drop freed the pool");
        for _ in 0..100 {
            if old.upgrade().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the replaced pool was never freed");
    }
}
