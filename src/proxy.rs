//! The request path: name the service, pick an endpoint, forward, stream the answer back.
//!
//! Nothing here locks or waits on discovery: the service table is fixed at start, and each
//! service's pool is read through `ArcSwap`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;

use outrigger_discovery::error_chain;

use crate::balance::load::InFlight;
use crate::balance::PickContext;
use crate::connection_pool::{self, Lease};
use crate::connector::SendError;
use crate::h1_client::{LeanBody, Outgoing};
use crate::header_list;
use crate::health::state::{now_ns, ns_at, EndpointHealth, Failure};
use crate::request_head;
use crate::upstream::{Picked, Pool, Routes, Upstream};

/// Response bodies: streamed from the upstream, or a short error text of Outrigger's own.
pub type ProxyBody = Either<Tracked, Full<Bytes>>;

/// How long a failed attempt counts as having taken, for latency-aware policies.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// A response body as it comes from a node: through hyper's client (left), or the lean one
/// (right), which returns its connection by itself.
pub type UpstreamBody = Either<Incoming, LeanBody>;

/// An upstream response body that keeps its request counted as in flight until it ends, and
/// then returns its connection for the next request.
pub struct Tracked {
    body: UpstreamBody,
    in_flight: Option<InFlight>,
    slot: Option<ServiceSlot>,
    /// The connection the body arrives on; `None` once released, or for a protocol switch,
    /// whose connection becomes the tunnel.
    lease: Option<Lease>,
    ended: bool,
    /// Ends the body when the node sends nothing for `OUTRIGGER_STREAM_IDLE_TIMEOUT`; made the
    /// first time the body has to wait, so a body that arrived with its head costs nothing.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A frame arrived since the timer was last set.
    progressed: bool,
}

/// `OUTRIGGER_STREAM_IDLE_TIMEOUT`, set once when the proxy is made: kept out of every
/// response body, which the request path moves several times.
static STREAM_IDLE_TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

fn stream_idle_timeout() -> Duration {
    STREAM_IDLE_TIMEOUT
        .get()
        .copied()
        .unwrap_or(Duration::from_secs(60))
}

/// A response body that stopped arriving (`OUTRIGGER_STREAM_IDLE_TIMEOUT`).
#[derive(Debug, thiserror::Error)]
#[error("the node sent nothing of the response body for {0:?} (OUTRIGGER_STREAM_IDLE_TIMEOUT)")]
pub struct StreamIdle(Duration);

impl Drop for Tracked {
    fn drop(&mut self) {
        // Only a body read to the end leaves the connection ready for another request; hyper
        // closes one whose body was abandoned.
        if self.ended || self.body.is_end_stream() {
            if let Some(lease) = self.lease.take() {
                lease.release();
            }
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(_)) => this.progressed = true,
            Poll::Pending => {
                let timeout = stream_idle_timeout();
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if std::mem::take(&mut this.progressed) {
                    idle.as_mut().reset(tokio::time::Instant::now() + timeout);
                }
                if idle.as_mut().poll(cx).is_ready() {
                    metrics::counter!("outrigger_stream_idle_timeouts_total").increment(1);
                    this.in_flight = None;
                    return Poll::Ready(Some(Err(Box::new(StreamIdle(timeout)))));
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

/// Headers that describe one connection, not the message; never forwarded (RFC 9110 §7.6.1).
/// `Trailer` is not one of them: it names the message's trailer fields, and hyper sends over
/// HTTP/1.1 only the trailer fields it names. `Expect` is on the list too, as nginx drops it:
/// hyper answers the app's `100-continue` itself when the body is read, and a node sent both
/// the expectation and the body in one write could answer early and read the body as a new
/// request.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::EXPECT,
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// Names the cause of every response Outrigger makes itself, so apps and operators can tell
/// a proxy error from an upstream's.
pub static X_OUTRIGGER_ERROR: HeaderName = HeaderName::from_static("x-outrigger-error");

/// How requests are timed and retried.
#[derive(Debug, Clone, Copy)]
pub struct ProxySettings {
    /// Time from receiving a request to sending the response head, retries included.
    pub request_timeout: Duration,
    /// Time one attempt may take.
    pub try_timeout: Duration,
    /// Retries after the first attempt, at most.
    pub max_retries: u32,
    /// How long a response body may go without a byte from the node before the request is
    /// ended (`OUTRIGGER_STREAM_IDLE_TIMEOUT`).
    pub stream_idle_timeout: Duration,
}

/// Request bodies up to this size are kept so a retry can resend them; larger ones stream
/// through once and are not retried once sent.
pub const RETRY_BUFFER: u64 = 64 * 1024;
/// Attempts per request at most, whatever `OUTRIGGER_RETRIES` says.
pub const MAX_ATTEMPTS: usize = 6;

/// The proxy: the routing table and how requests are timed and retried. Connections are
/// opened by each service's `Connector` and kept idle per worker thread (`connection_pool`).
#[derive(Clone)]
pub struct Proxy {
    routes: Arc<Routes>,
    settings: ProxySettings,
}

/// A request body as far as retries are concerned.
enum Body {
    /// Known in full (or empty): can be sent again.
    Replayable(Bytes),
    /// Streamed from the app: can be sent once.
    Streaming(Option<Incoming>),
}

/// How one attempt ended.
struct Attempt {
    response: Response<ProxyBody>,
    /// What counts against the endpoint's health, if anything.
    failure: Option<Failure>,
    /// Whether another endpoint may be tried.
    retryable: bool,
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// What the proxy knows of one connection from the app, worked out once per connection
/// rather than once per request.
pub struct AppConnection {
    /// The app's address.
    pub addr: SocketAddr,
    /// The service of a dedicated listener; `None` when each request names its service.
    pub dedicated: Option<Arc<Upstream>>,
    /// The app's IP as an X-Forwarded-For value: formatting an address costs more than the
    /// rest of the header work together.
    forwarded_for: HeaderValue,
}

impl AppConnection {
    /// The connection from `addr`, on a dedicated listener of `dedicated` if given.
    pub fn new(addr: SocketAddr, dedicated: Option<Arc<Upstream>>) -> Self {
        let forwarded_for = HeaderValue::from_maybe_shared(Bytes::from(addr.ip().to_string()))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        AppConnection {
            addr,
            dedicated,
            forwarded_for,
        }
    }
}

/// Counts one request against its service's concurrency limit until dropped.
pub struct ServiceSlot(Arc<Upstream>);

impl Drop for ServiceSlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Proxy {
    /// A proxy over `routes`.
    pub fn new(routes: Arc<Routes>, settings: ProxySettings) -> Self {
        // One process, one setting: a second proxy (tests) keeps the first one's.
        let _ = STREAM_IDLE_TIMEOUT.set(settings.stream_idle_timeout);
        Proxy { routes, settings }
    }

    /// Handles one request arriving on `app`'s connection.
    pub async fn serve(
        &self,
        mut req: Request<Incoming>,
        app: &AppConnection,
    ) -> Response<ProxyBody> {
        let target = match request_head::target(&req) {
            Ok(target) => target,
            Err(e) => {
                let (status, cause, message) = e.parts();
                return error(status, cause, message);
            }
        };
        let upstream = match &app.dedicated {
            Some(u) => u,
            None => match self.route(target.service) {
                Ok(u) => u,
                Err(e) => return e.response(),
            },
        };
        // The node sees the authority the request was routed by.
        if let Some(host) = target.replace_host {
            req.headers_mut().insert(header::HOST, host);
        }
        let started = Instant::now();
        let max = upstream.settings.max_requests;
        let resp = if upstream.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
            upstream.in_flight.fetch_sub(1, Ordering::AcqRel);
            upstream.metrics.overloaded.increment(1);
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "max-requests",
                &format!(
                    "service {:?} already has {max} requests in flight (OUTRIGGER_MAX_REQUESTS)",
                    upstream.name
                ),
            )
        } else {
            let slot = ServiceSlot(upstream.clone());
            upstream.budget.deposit(started);
            self.forward(req, app, upstream, slot, started).await
        };
        upstream
            .metrics
            .latency
            .record(started.elapsed().as_secs_f64());
        upstream
            .metrics
            .count(&upstream.name, resp.status().as_u16());
        resp
    }

    /// The service a request names; on failure, the response explaining why it has none.
    fn route(&self, service: Option<&str>) -> Result<&Arc<Upstream>, RouteError> {
        let host = service.ok_or(RouteError::Unnamed)?;
        let found = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.routes.get(&host.to_ascii_lowercase())
        } else {
            self.routes.get(host)
        };
        found.ok_or_else(|| RouteError::Unknown(host.to_string()))
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        app: &AppConnection,
        upstream: &Upstream,
        slot: ServiceSlot,
        started: Instant,
    ) -> Response<ProxyBody> {
        let deadline = started + self.settings.request_timeout;
        let (mut parts, incoming) = req.into_parts();

        // An app that asks to switch protocols (WebSocket) keeps its Upgrade headers; every
        // other hop-by-hop header stops here.
        let upgrade = upgrade_token(&parts.headers);
        let mut client_upgrade = upgrade
            .is_some()
            .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
            .flatten();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(token) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, token.clone());
        }
        // HTTP/1.1 requires a Host; a request that named none (HTTP/1.0 on a dedicated
        // listener) gets the node's address, as a direct client would send.
        let has_host = parts.headers.contains_key(header::HOST);
        append_forwarded(&mut parts.headers, app);
        let path = request_head::origin_form(&parts.uri);

        let mut body = if incoming.is_end_stream() {
            Body::Replayable(Bytes::new())
        } else if incoming
            .size_hint()
            .exact()
            .is_some_and(|n| n <= RETRY_BUFFER)
        {
            // Boxed, like every path a plain GET does not take, to keep the request future small.
            match Box::pin(tokio::time::timeout_at(deadline.into(), incoming.collect())).await {
                Ok(Ok(collected)) => Body::Replayable(collected.to_bytes()),
                Ok(Err(e)) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "request-body-failed",
                        &format!("reading the request body failed: {e}"),
                    )
                }
                Err(_) => {
                    return error(
                        StatusCode::REQUEST_TIMEOUT,
                        "request-body-timeout",
                        "the request body did not arrive within OUTRIGGER_REQUEST_TIMEOUT",
                    )
                }
            }
        } else {
            Body::Streaming(Some(incoming))
        };
        let may_repeat = idempotent(&parts.method);
        // Ejections are checked against the request's own clock reading.
        let now = ns_at(started);
        // Only latency-aware policies read the estimate; the others skip its clock read and
        // exponential.
        let observe_latency = upstream.settings.policy.uses_latency();
        let track_load = upstream.settings.policy.uses_load();
        let attempts = (self.settings.max_retries as usize + 1).min(MAX_ATTEMPTS);
        let mut tried = [None::<SocketAddr>; MAX_ATTEMPTS];
        let mut last: Option<Response<ProxyBody>> = None;

        for attempt in 0..attempts {
            let pool = upstream.pool.load();
            let ctx = PickContext {
                client: app.addr.ip(),
                headers: &parts.headers,
                path: path.path(),
            };
            let Some(picked) = pick_untried(&pool, &ctx, &tried[..attempt], now) else {
                break;
            };
            // A retry is counted and charged once it has somewhere to go.
            if attempt > 0 && !charge_retry(upstream) {
                break;
            }
            let addr = picked.endpoint.addr;
            tried[attempt] = Some(addr);
            let state = picked.state.clone();
            let node_host = (!has_host)
                .then(|| HeaderValue::from_str(picked.authority.as_str()).ok())
                .flatten();
            drop(pool);
            let last_attempt = attempt + 1 == attempts;
            let in_flight = track_load.then(|| state.load.start());
            // The first attempt starts with the request: one clock read fewer per request.
            let try_started = if attempt == 0 {
                started
            } else {
                Instant::now()
            };
            let budget = self
                .settings
                .try_timeout
                .min(deadline.saturating_duration_since(try_started));
            let until = (try_started + budget).into();
            // A body known in full and no protocol switch: the lean client, which borrows the
            // request's parts (a retry resends them without a copy). Anything else: hyper's.
            let sent = match &mut body {
                Body::Replayable(bytes) if upgrade.is_none() => {
                    let outgoing = Outgoing {
                        method: &parts.method,
                        path: &path,
                        headers: &parts.headers,
                        host: node_host.as_ref(),
                        body: bytes,
                    };
                    // A resend after a stale kept-alive connection is a retry like any other.
                    let resend = || charge_retry(upstream);
                    let exchange = connection_pool::exchange(
                        &upstream.connector,
                        addr,
                        outgoing,
                        may_repeat,
                        resend,
                    );
                    tokio::time::timeout_at(until, exchange)
                        .await
                        .map(|r| r.map(|resp| (resp.map(Either::Right), None)))
                }
                body => {
                    let send_body = match body {
                        Body::Replayable(bytes) => Either::Right(Full::new(bytes.clone())),
                        Body::Streaming(stream) => match stream.take() {
                            Some(incoming) => Either::Left(incoming),
                            None => break,
                        },
                    };
                    let mut request = Request::new(send_body);
                    *request.method_mut() = parts.method.clone();
                    // Origin form: the node is connected to directly, not through a proxy.
                    *request.uri_mut() = Uri::from(path.clone());
                    *request.headers_mut() = if last_attempt {
                        std::mem::take(&mut parts.headers)
                    } else {
                        parts.headers.clone()
                    };
                    if let Some(host) = node_host.clone() {
                        request.headers_mut().insert(header::HOST, host);
                    }
                    let send = connection_pool::send(&upstream.connector, addr, request);
                    tokio::time::timeout_at(until, send)
                        .await
                        .map(|r| r.map(|(resp, lease)| (resp.map(Either::Left), Some(lease))))
                }
            };
            let replayable = matches!(body, Body::Replayable(_));
            let outcome = match sent {
                Err(_) => {
                    if observe_latency {
                        state.load.observe(budget);
                    }
                    Attempt {
                        response: error(
                            StatusCode::GATEWAY_TIMEOUT,
                            "request-timeout",
                            &format!("{addr} did not answer within {budget:?} (OUTRIGGER_TRY_TIMEOUT / OUTRIGGER_REQUEST_TIMEOUT)"),
                        ),
                        failure: Some(Failure::Timeout),
                        retryable: may_repeat && replayable,
                    }
                }
                Ok(Err(e)) => {
                    // A failed node must not look fast to latency-aware policies.
                    if observe_latency {
                        state
                            .load
                            .observe(FAILURE_PENALTY.max(try_started.elapsed()));
                    }
                    upstream_failure(&e, addr, upstream, may_repeat, replayable)
                }
                Ok(Ok((mut resp, lease))) => {
                    if observe_latency {
                        state.load.observe(try_started.elapsed());
                    }
                    let status = resp.status();
                    let gateway = matches!(status.as_u16(), 502..=504);
                    let failure = status.is_server_error().then_some(Failure::Status5xx);
                    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
                    if switching {
                        if let Some(client_upgrade) = client_upgrade.take() {
                            let upstream_upgrade = hyper::upgrade::on(&mut resp);
                            tokio::spawn(tunnel(client_upgrade, upstream_upgrade));
                        }
                    } else {
                        // The app hears Outrigger's own version (RFC 9110 6.2), so an HTTP/1.0
                        // node does not end the app's keep-alive connection.
                        *resp.version_mut() = http::Version::HTTP_11;
                        strip_hop_by_hop(resp.headers_mut());
                        // The lean client's length is the one it reads the body by (it refuses
                        // anything ambiguous); hyper's client may keep a length its framing
                        // ignored.
                        if lease.is_some() {
                            regenerate_framing(&parts.method, &mut resp);
                        }
                    }
                    Attempt {
                        response: resp.map(|body| {
                            Either::Left(Tracked {
                                body,
                                in_flight,
                                slot: None,
                                lease: lease.filter(|_| !switching),
                                ended: false,
                                idle: None,
                                progressed: false,
                            })
                        }),
                        failure,
                        retryable: gateway && may_repeat && replayable,
                    }
                }
            };
            report(upstream, &state.health, outcome.failure, addr);
            if !outcome.retryable || last_attempt {
                return finish(outcome.response, slot);
            }
            tracing::debug!(service = %upstream.name, endpoint = %addr, attempt, "retrying on another endpoint");
            last = Some(outcome.response);
        }
        match last {
            Some(resp) => finish(resp, slot),
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-endpoint",
                &format!("service {:?} has no endpoint to send to", upstream.name),
            ),
        }
    }
}

/// Picks an endpoint not tried yet for this request, not ejected since the pool was built,
/// and not on probation with its one request taken. A few draws, then none: with few
/// endpoints, all may have been tried. Each draw asks the picker for its next choice, so a
/// hash policy walks on to the next node its key leads to.
///
/// The request path ejects endpoints itself but the control plane rebuilds the pool; checking
/// the ejection here (one atomic load, `now` from the request's own clock read) closes the gap
/// in between. In panic mode health is ignored on purpose, ejections included.
fn pick_untried<'a>(
    pool: &'a Pool,
    ctx: &PickContext<'_>,
    tried: &[Option<SocketAddr>],
    now: u64,
) -> Option<Picked<'a>> {
    for draw in 0..8 {
        let picked = pool.pick_next(ctx, draw)?;
        if tried.contains(&Some(picked.endpoint.addr)) {
            continue;
        }
        if !pool.panic && picked.state.health.ejected_until(now).is_some() {
            continue;
        }
        if picked.state.health.admit() {
            return Some(picked);
        }
    }
    None
}

/// Reports an attempt's outcome to the endpoint's health, ejecting it when passive outlier
/// detection says so and the service may lose another endpoint.
fn report(
    upstream: &Upstream,
    health: &EndpointHealth,
    failure: Option<Failure>,
    addr: SocketAddr,
) {
    let outlier = upstream.settings.health.outlier;
    let Some(failure) = failure else {
        health.succeeded();
        return;
    };
    if !health.failed(failure, outlier.consecutive) || outlier.consecutive == 0 {
        return;
    }
    let pool = upstream.pool.load();
    let now = now_ns();
    let allowed = ((pool.nodes.len() as f64 * outlier.max_ejected_share) as usize).max(1);
    if pool.ejected(now) >= allowed {
        return;
    }
    let time = health.eject(now, outlier.base, outlier.max);
    tracing::warn!(service = %upstream.name, endpoint = %addr, reason = failure.as_str(),
        ejected_for = ?time, "endpoint ejected by outlier detection");
    metrics::counter!("outrigger_outlier_ejections_total",
        "service" => upstream.name.to_string(), "reason" => failure.as_str())
    .increment(1);
    upstream.health_events.notify_one();
}

/// Takes a retry from the service's budget and counts it; `false` when the budget is spent.
fn charge_retry(upstream: &Upstream) -> bool {
    if upstream.budget.withdraw() {
        upstream.metrics.retries.increment(1);
        true
    } else {
        upstream.metrics.retry_budget_exhausted.increment(1);
        false
    }
}

/// Drops the node's `content-length`, so that hyper frames the answer to the app from the body
/// actually forwarded (its exact size, or chunked), never from a header the body may not
/// match. A HEAD or 304 answer has no body, and its valid length still describes the resource.
fn regenerate_framing<B>(method: &Method, resp: &mut Response<B>) {
    let describes_resource = *method == Method::HEAD || resp.status() == StatusCode::NOT_MODIFIED;
    if describes_resource {
        let valid = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| crate::h1_client::parse_length(v.as_bytes()).is_some());
        if valid {
            return;
        }
    }
    resp.headers_mut().remove(header::CONTENT_LENGTH);
}

/// Attaches the service's concurrency slot to a response, so it is held until the body ends.
fn finish(mut resp: Response<ProxyBody>, slot: ServiceSlot) -> Response<ProxyBody> {
    if let Either::Left(tracked) = resp.body_mut() {
        tracked.slot = Some(slot);
    }
    resp
}

async fn tunnel(client: hyper::upgrade::OnUpgrade, server: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(client, server) {
        Ok((client, server)) => {
            let _ =
                tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(server))
                    .await;
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}

fn upstream_failure(
    e: &SendError,
    addr: SocketAddr,
    upstream: &Upstream,
    may_repeat: bool,
    replayable: bool,
) -> Attempt {
    if let SendError::PendingConnectsExceeded { .. } = e {
        upstream.metrics.overloaded.increment(1);
        return Attempt {
            response: error(
                StatusCode::SERVICE_UNAVAILABLE,
                "max-pending-connects",
                &format!("service {:?}: {e}", upstream.name),
            ),
            failure: None,
            retryable: false,
        };
    }
    let detail = error_chain(e);
    if e.is_connect() {
        upstream.metrics.connect_errors.increment(1);
        // Nothing reached the node: any request may go to another one.
        let response = if let SendError::ConnectTimeout(after) = e {
            error(
                StatusCode::GATEWAY_TIMEOUT,
                "connect-timeout",
                &format!(
                    "connecting to {addr} timed out after {after:?} (OUTRIGGER_CONNECT_TIMEOUT)"
                ),
            )
        } else {
            error(
                StatusCode::BAD_GATEWAY,
                "connect-failed",
                &format!("cannot connect to {addr}: {detail}"),
            )
        };
        return Attempt {
            response,
            failure: Some(Failure::Connect),
            retryable: replayable,
        };
    }
    Attempt {
        response: error(
            StatusCode::BAD_GATEWAY,
            "upstream-failed",
            &format!("{addr} failed the request: {detail}"),
        ),
        failure: Some(Failure::Reset),
        retryable: may_repeat && replayable,
    }
}

/// Why a request could not be matched to a routable service.
enum RouteError {
    /// Neither the URI nor a Host header names a service.
    Unnamed,
    /// The named service is not in `OUTRIGGER_UPSTREAMS`.
    Unknown(String),
}

impl RouteError {
    fn response(&self) -> Response<ProxyBody> {
        match self {
            RouteError::Unnamed => error(
                StatusCode::BAD_REQUEST,
                "no-service-named",
                "the request names no service: use an absolute URI (http://orders/path) or a Host header",
            ),
            RouteError::Unknown(host) => error(
                StatusCode::NOT_FOUND,
                "unknown-service",
                &format!("service {host:?} is not in OUTRIGGER_UPSTREAMS"),
            ),
        }
    }
}

/// The protocol an app asks to upgrade to, when it asks properly (Connection: upgrade).
fn upgrade_token(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = header_list::lists(headers, header::CONNECTION, "upgrade");
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Whether `name` is in [`HOP_BY_HOP`]; by length first, which settles almost every name.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    let s = name.as_str();
    match s.len() {
        2 => s == "te",
        6 => s == "expect",
        7 => s == "upgrade",
        10 => s == "connection" || s == "keep-alive",
        16 => s == "proxy-connection",
        17 => s == "transfer-encoding",
        18 => s == "proxy-authenticate",
        19 => s == "proxy-authorization",
        _ => false,
    }
}

/// Removes hop-by-hop headers, including any the Connection header names; `te: trailers`
/// stays, as Envoy keeps it: it tells the node the app reads trailers, and gRPC servers refuse
/// requests without it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass of cheap length checks instead of nine hashed
    // removals on every request and response.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let te_trailers = header_list::elements(headers, header::TE).any(|t| {
        let t = t.split(';').next().unwrap_or_default();
        t.trim().eq_ignore_ascii_case("trailers")
    });
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = header_list::elements(headers, header::CONNECTION)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn append_forwarded(headers: &mut HeaderMap, app: &AppConnection) {
    // One lookup of the name, where a get and an insert hashed it twice.
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(slot) => {
            slot.insert(app.forwarded_for.clone());
        }
        Entry::Occupied(mut slot) => {
            let value = slot.get().to_str().ok().and_then(|prior| {
                HeaderValue::from_str(&format!("{prior}, {}", app.addr.ip())).ok()
            });
            if let Some(v) = value {
                slot.insert(v);
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
}

/// A response Outrigger makes itself: a short text body and the cause in `x-outrigger-error`.
pub fn error(status: StatusCode, cause: &'static str, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "outrigger: {message}\n"
    )))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(X_OUTRIGGER_ERROR.clone(), HeaderValue::from_static(cause));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("gzip"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));

        // Of TE, only "trailers" goes on.
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("gzip;q=0.5, Trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]));
    }

    #[test]
    fn the_fast_hop_by_hop_check_knows_exactly_the_list() {
        assert!(HOP_BY_HOP.iter().all(is_hop_by_hop));
        for other in [
            "host",
            "user-agent",
            "content-length",
            "x-forwarded-for",
            "accept",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(other)), "{other}");
        }
    }
}
