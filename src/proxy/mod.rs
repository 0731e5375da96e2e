//! The request path: name the service, pick an endpoint, forward, stream the answer back.
//!
//! Nothing here locks or waits on discovery: the service table is fixed at start, and each
//! service's pool is read through `ArcSwap`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body as _, Incoming};

use crate::access_log;
use crate::balance::PickContext;
use crate::health::state::{now_ns, ns_at, EndpointHealth, Failure};
use crate::node_client::connect::SendError;
use crate::node_client::h1::{LeanBody, Outgoing};
use crate::node_client::pool;
use crate::node_client::secure;
use crate::node_client::tls::TlsFailure;
use crate::request_body::{Recorded, Recording};
use crate::request_head;
use crate::upstream::{Picked, Pool, Routes, Upstream};

mod attempt;
mod body;
mod grpc;
mod headers;

pub use body::{StreamIdle, Tracked};
use headers::{append_forwarded, upgrade_token};
pub use headers::{strip_hop_by_hop, X_OUTRIGGER_ERROR};

/// W3C trace context's header.
const TRACEPARENT: &str = "traceparent";

/// Response bodies: streamed from the upstream, or a short error text of Outrigger's own.
pub type ProxyBody = Either<Tracked, Full<Bytes>>;

/// A response body as it comes from a node: through hyper's client (left), or the lean one
/// (right), which returns its connection by itself.
pub type UpstreamBody = Either<Incoming, LeanBody>;

/// How requests are timed and retried.
#[derive(Debug, Clone, Copy)]
pub struct ProxySettings {
    /// How long a response body may go without a byte from the node before the request is
    /// ended (`OUTRIGGER_STREAM_IDLE_TIMEOUT`).
    pub stream_idle_timeout: Duration,
    /// Header fields at most in a request (`OUTRIGGER_MAX_HEADERS`): hyper counts them over
    /// HTTP/1.1, this over HTTP/2, so that both answer 431 alike.
    pub max_request_headers: u32,
    /// Count every attempt per endpoint too (`OUTRIGGER_METRICS_PER_ENDPOINT`): a series per
    /// node, so off by default.
    pub per_endpoint_metrics: bool,
}

pub use crate::request_body::RETRY_BUFFER;
pub use crate::upstream::RetryReason;
/// Attempts per request at most, whatever `OUTRIGGER_RETRIES` says.
pub const MAX_ATTEMPTS: usize = 6;

/// The proxy: the routing table and how requests are timed and retried. Connections are
/// opened by each service's `Connector` and kept idle per worker thread (`node_client::pool`).
#[derive(Clone)]
pub struct Proxy {
    routes: Arc<Routes>,
    settings: ProxySettings,
}

/// A request body as far as retries are concerned.
enum Body {
    /// Known in full (or empty): can be sent again.
    Replayable(Bytes),
    /// Streamed from the app: can be sent once, and again from its recording once that is
    /// complete.
    Streaming {
        /// The body, until an attempt takes it (and back if the attempt sent none of it).
        body: Option<Recorded>,
        recording: Recording,
    },
}

impl Body {
    /// Whether another attempt can send the body: known in full, not sent yet, or streamed
    /// and recorded in full (then it becomes known in full).
    fn can_resend(&mut self) -> bool {
        if let Body::Streaming {
            body: None,
            recording,
        } = self
        {
            if let Some(bytes) = recording.get() {
                *self = Body::Replayable(bytes.clone());
            }
        }
        !matches!(self, Body::Streaming { body: None, .. })
    }

    /// Takes the body back from a request none of which was sent.
    fn restore(&mut self, unsent: Option<Request<crate::upstream::RequestBody>>) {
        if let (Body::Streaming { body, .. }, Some(request)) = (self, unsent) {
            if let Either::Left(recorded) = request.into_body() {
                *body = Some(recorded);
            }
        }
    }
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
        let _ = body::STREAM_IDLE_TIMEOUT.set(settings.stream_idle_timeout);
        Proxy { routes, settings }
    }

    /// Handles one request arriving on `app`'s connection.
    pub async fn serve(
        &self,
        mut req: Request<Incoming>,
        app: &AppConnection,
    ) -> Response<ProxyBody> {
        // gRPC runs over HTTP/2 only: HTTP/1.1 requests skip the header lookups. One async
        // function for the whole request: a nested one cost a copy of its future (about 500
        // instructions a request, bench/instructions.sh).
        let grpc = req.version() == http::Version::HTTP_2 && grpc::is_grpc(req.headers());
        let grpc_timeout = grpc.then(|| grpc::timeout(req.headers())).flatten();
        // A request without a trace, or with one that cannot be read (W3C: restart it), gets
        // a new one when Outrigger starts traces.
        if access_log::starts_traces()
            && req
                .headers()
                .get(TRACEPARENT)
                .and_then(access_log::trace_id)
                .is_none()
        {
            req.headers_mut()
                .insert(TRACEPARENT, access_log::new_traceparent());
        }
        // Off by default: then one atomic load.
        let mut record =
            access_log::enabled().then(|| access_log::Record::begin(&req, Instant::now()));
        let resp = match self.admit(&mut req, app) {
            // Boxed: the refusal is the rare path, and the result is returned by value.
            Err(refused) => *refused,
            Ok((upstream, has_host)) => {
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
                    let timeout = match grpc_timeout {
                        Some(t) => t.min(upstream.settings.request_timeout),
                        None => upstream.settings.request_timeout,
                    };
                    upstream.budget.deposit(started);
                    let time = Timing {
                        started,
                        deadline: started + timeout,
                    };
                    self.forward(req, has_host, app, upstream, slot, time).await
                };
                if let Some(record) = &mut record {
                    record.service = Some(upstream.name.to_string());
                }
                upstream
                    .metrics
                    .latency
                    .record(started.elapsed().as_secs_f64());
                upstream
                    .metrics
                    .count(&upstream.name, resp.status().as_u16());
                resp
            }
        };
        let resp = if grpc { grpc::reshape(resp) } else { resp };
        match record {
            Some(record) => log_response(resp, record),
            None => resp,
        }
    }

    /// Checks a request's head and finds its service: the service and whether the node will
    /// get a Host, or the answer refusing it (boxed). The `Host` becomes the authority routing used.
    fn admit<'a>(
        &'a self,
        req: &mut Request<Incoming>,
        app: &'a AppConnection,
    ) -> Result<(&'a Arc<Upstream>, bool), Box<Response<ProxyBody>>> {
        if req.headers().len() > self.settings.max_request_headers as usize {
            return Err(Box::new(error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request-headers-too-many",
                "the request has more header fields than OUTRIGGER_MAX_HEADERS",
            )));
        }
        let target = request_head::target(req).map_err(|e| {
            let (status, cause, message) = e.parts();
            Box::new(error(status, cause, message))
        })?;
        let upstream = match &app.dedicated {
            Some(u) => u,
            None => self
                .route(target.service)
                .map_err(|e| Box::new(e.response()))?,
        };
        let has_host = target.names_host;
        if let Some(host) = target.replace_host {
            req.headers_mut().insert(header::HOST, host);
        }
        Ok((upstream, has_host))
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

    /// Forwards a routed request: the head rewritten once, then attempts (pick, send,
    /// classify, report) until one may not be retried or the attempts run out.
    async fn forward(
        &self,
        req: Request<Incoming>,
        has_host: bool,
        app: &AppConnection,
        upstream: &Upstream,
        slot: ServiceSlot,
        time: Timing,
    ) -> Response<ProxyBody> {
        let Timing { started, deadline } = time;
        let (mut parts, incoming) = req.into_parts();
        let mut head = rewrite_head(&mut parts, app, has_host);
        let mut client_upgrade = head.client_upgrade.take();
        let mut body = if incoming.is_end_stream() {
            Body::Replayable(Bytes::new())
        } else {
            // Boxed, like every path a plain GET does not take, to keep the request future small.
            match Box::pin(read_body(incoming, deadline)).await {
                Ok(body) => body,
                Err(refused) => return refused,
            }
        };
        let may_repeat = idempotent(&parts.method) || upstream.settings.retry_non_idempotent;
        // Ejections are checked against the request's own clock reading.
        let now = ns_at(started);
        // Only latency-aware policies read the estimate; the others skip its clock read and
        // exponential.
        let observe_latency = upstream.settings.policy.uses_latency();
        let track_load = upstream.settings.policy.uses_load();
        let attempts = (upstream.settings.max_retries as usize + 1).min(MAX_ATTEMPTS);
        let mut tried = [None::<SocketAddr>; MAX_ATTEMPTS];
        let mut last: Option<Response<ProxyBody>> = None;
        let mut last_failure = Failure::None;

        for attempt in 0..attempts {
            // Pick; a retry is counted and charged once it has somewhere to go.
            let chosen = match choose(upstream, app, &parts.headers, &head, &tried[..attempt], now) {
                Ok(chosen) => chosen,
                Err(Unpicked::NoSubset) if attempt == 0 => {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no-subset",
                        &format!(
                            "service {:?} has no endpoint in the subset the request asks for (OUTRIGGER_SUBSET_<SERVICE>)",
                            upstream.name
                        ),
                    )
                }
                Err(_) => break,
            };
            if attempt > 0 && !charge_retry(upstream, RetryReason::from(last_failure)) {
                break;
            }
            let Chosen {
                addr,
                state,
                node_host,
                node_tls,
            } = chosen;
            tried[attempt] = Some(addr);
            let last_attempt = attempt + 1 == attempts;
            let in_flight = track_load.then(|| state.load.start());
            // The first attempt starts with the request: one clock read fewer per request.
            let try_started = if attempt == 0 {
                started
            } else {
                Instant::now()
            };
            let budget = upstream
                .settings
                .try_timeout
                .min(deadline.saturating_duration_since(try_started));
            let until = (try_started + budget).into();
            // Send. A body known in full and no protocol switch: the lean client, which
            // borrows the request's parts (a retry resends them without a copy). Anything
            // else: hyper's.
            let target = match &node_tls {
                None => Ok((&upstream.connector, None)),
                Some(meta) => upstream.connector_for(meta).map_err(|reason| {
                    SendError::Tls(TlsFailure {
                        addr,
                        reason: reason.to_string(),
                    })
                }),
            };
            let sent = match (&mut body, target) {
                (_, Err(e)) => Ok(Err(e)),
                (Body::Replayable(bytes), Ok((connector, _)))
                    if head.upgrade.is_none() && connector.lean() =>
                {
                    let outgoing = Outgoing {
                        method: &parts.method,
                        path: &head.path,
                        headers: &parts.headers,
                        host: node_host.as_ref(),
                        body: bytes,
                    };
                    // A resend after a stale kept-alive connection is a retry like any other.
                    let resend = || charge_retry(upstream, RetryReason::StaleConnection);
                    let exchange = pool::exchange(connector, addr, outgoing, may_repeat, resend);
                    tokio::time::timeout_at(until, exchange)
                        .await
                        .map(|r| r.map(|resp| (resp.map(Either::Right), None)))
                }
                (body, Ok((connector, host_name))) => {
                    let Some(request) =
                        hyper_request(&mut parts, &head.path, body, node_host, last_attempt)
                    else {
                        break;
                    };
                    // Boxed: hyper's client future is twice the lean client's, and every
                    // request's future (moved a few times each) would carry its size.
                    let send = Box::pin(pool::send(connector, addr, host_name, request));
                    tokio::time::timeout_at(until, send).await.map(|r| match r {
                        Ok((resp, lease)) => Ok((resp.map(Either::Left), Some(lease))),
                        Err(unsent) => {
                            body.restore(unsent.request);
                            Err(unsent.error)
                        }
                    })
                }
            };
            // Classify and report.
            let outcome = attempt::classify(
                sent,
                attempt::Sent {
                    addr,
                    upstream,
                    method: &parts.method,
                    may_repeat,
                    replayable: body.can_resend(),
                    latency: attempt::Latency::new(&state.load, try_started, observe_latency),
                    budget,
                    in_flight,
                },
                &mut client_upgrade,
            );
            report(upstream, &state.health, outcome.failure, addr);
            last_failure = outcome.failure.unwrap_or(Failure::None);
            if self.settings.per_endpoint_metrics {
                count_per_endpoint(upstream, addr, last_failure);
            }
            let mut outcome = outcome;
            if access_log::enabled() {
                let trail = access_log::Trail {
                    node: addr,
                    attempts: attempt as u32 + 1,
                };
                outcome.response.extensions_mut().insert(trail);
            }
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

/// When a request started, and when its response head is due (`OUTRIGGER_REQUEST_TIMEOUT`,
/// or a gRPC request's own `grpc-timeout` when sooner).
#[derive(Clone, Copy)]
struct Timing {
    started: Instant,
    deadline: Instant,
}

/// The text of an error Outrigger made itself, kept for a gRPC request's `grpc-message`.
#[derive(Clone)]
struct ErrorText(String);

/// The endpoint an attempt goes to.
struct Chosen {
    addr: SocketAddr,
    state: crate::upstream::EndpointState,
    /// The Host to send when the request named none: the node's address.
    node_host: Option<HeaderValue>,
    /// The node's labels when it is reached otherwise than the service's usual way
    /// ([`secure::node_tls`]).
    node_tls: Option<Arc<outrigger_discovery::EndpointMeta>>,
}

/// Why no endpoint was chosen.
enum Unpicked {
    /// None left to try.
    Exhausted,
    /// The request asks for a subset that is empty, and the rule's fallback is 503.
    NoSubset,
}

/// Picks the endpoint for an attempt ([`pick_untried`]) from the service's current pool, or
/// from its subset when the request asks for it.
fn choose(
    upstream: &Upstream,
    app: &AppConnection,
    headers: &http::HeaderMap,
    head: &Head,
    tried: &[Option<SocketAddr>],
    now: u64,
) -> Result<Chosen, Unpicked> {
    let pool = upstream.pool.load();
    let ctx = PickContext {
        client: app.addr.ip(),
        headers,
        path: head.path.path(),
    };
    let in_subset = match &upstream.settings.subset {
        Some(rule) if rule.wanted(headers) => {
            if !pool.has_subset() && rule.fallback == crate::subset::Fallback::Refuse {
                return Err(Unpicked::NoSubset);
            }
            pool.has_subset()
        }
        _ => false,
    };
    let picked = pick_untried(&pool, &ctx, tried, now, in_subset).ok_or(Unpicked::Exhausted)?;
    Ok(Chosen {
        addr: picked.endpoint.addr,
        state: picked.state.clone(),
        node_host: (!head.has_host)
            .then(|| HeaderValue::from_str(picked.authority.as_str()).ok())
            .flatten(),
        node_tls: secure::node_tls(&picked.endpoint.meta, upstream.connector.is_tls()),
    })
}

/// The request head as every attempt sends it, and what was taken out of it.
struct Head {
    /// The protocol an app asks to switch to (WebSocket), kept in the head.
    upgrade: Option<HeaderValue>,
    /// The app side of that switch, once the node agrees.
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// Whether the request names a Host; one that names none (HTTP/1.0 on a dedicated
    /// listener) gets the node's address, as a direct client would send.
    has_host: bool,
    /// The origin-form target.
    path: PathAndQuery,
}

/// Rewrites `parts` once for every attempt: hop-by-hop headers out (but an Upgrade the app
/// asked for properly), X-Forwarded-For/-Proto in.
fn rewrite_head(parts: &mut http::request::Parts, app: &AppConnection, has_host: bool) -> Head {
    let upgrade = upgrade_token(&parts.headers);
    let client_upgrade = upgrade
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
    append_forwarded(&mut parts.headers, app);
    Head {
        upgrade,
        client_upgrade,
        has_host,
        path: request_head::origin_form(&parts.uri),
    }
}

/// A request body that is not empty: read in full (for resending) when it is small and says
/// its length, streamed otherwise (and recorded while small, see `request_body`); on failure,
/// the answer to give the app.
async fn read_body(incoming: Incoming, deadline: Instant) -> Result<Body, Response<ProxyBody>> {
    if incoming
        .size_hint()
        .exact()
        .is_none_or(|n| n > RETRY_BUFFER)
    {
        let recording = Recording::default();
        return Ok(Body::Streaming {
            body: Some(Recorded::new(incoming, recording.clone())),
            recording,
        });
    }
    match tokio::time::timeout_at(deadline.into(), incoming.collect()).await {
        Ok(Ok(collected)) => Ok(Body::Replayable(collected.to_bytes())),
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            "request-body-failed",
            &format!("reading the request body failed: {e}"),
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "request-body-timeout",
            "the request body did not arrive within OUTRIGGER_REQUEST_TIMEOUT",
        )),
    }
}

/// The request for hyper's client: the head (moved on the last attempt, copied otherwise) and
/// the body; `None` when a streamed body was already sent once.
fn hyper_request(
    parts: &mut http::request::Parts,
    path: &PathAndQuery,
    body: &mut Body,
    node_host: Option<HeaderValue>,
    last_attempt: bool,
) -> Option<Request<crate::upstream::RequestBody>> {
    let send_body = match body {
        Body::Replayable(bytes) => Either::Right(Full::new(bytes.clone())),
        Body::Streaming { body, .. } => Either::Left(body.take()?),
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
    if let Some(host) = node_host {
        request.headers_mut().insert(header::HOST, host);
    }
    Some(request)
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
    in_subset: bool,
) -> Option<Picked<'a>> {
    for draw in 0..8 {
        let picked = if in_subset {
            pool.pick_next_in_subset(ctx, draw)?
        } else {
            pool.pick_next(ctx, draw)?
        };
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

/// `outrigger_endpoint_attempts_total{service,endpoint,result}`: looked up by its labels on
/// every attempt (an opt-in's cost, stated in bench/README.md), never registered ahead for
/// nodes that may never be tried.
fn count_per_endpoint(upstream: &Upstream, addr: SocketAddr, failure: Failure) {
    let result = match failure {
        Failure::None => "success",
        other => other.as_str(),
    };
    metrics::counter!("outrigger_endpoint_attempts_total", "service" => upstream.name.to_string(),
        "endpoint" => addr.to_string(), "result" => result)
    .increment(1);
}

/// Takes a retry from the service's budget and counts it under `reason` (what went wrong
/// with the attempt before); `false` when the budget is spent.
fn charge_retry(upstream: &Upstream, reason: RetryReason) -> bool {
    if upstream.budget.withdraw() {
        upstream.metrics.retries[reason as usize].increment(1);
        true
    } else {
        upstream.metrics.retry_budget_exhausted.increment(1);
        false
    }
}

/// Completes `record` with what the response says, and logs it once its body has gone to
/// the app (at once for a body Outrigger made itself).
fn log_response(
    mut resp: Response<ProxyBody>,
    mut record: Box<access_log::Record>,
) -> Response<ProxyBody> {
    record.status = resp.status().as_u16();
    record.upstream = Some(record.started.elapsed());
    record.error = resp
        .headers()
        .get(&X_OUTRIGGER_ERROR)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(trail) = resp.extensions().get::<access_log::Trail>() {
        record.node = Some(trail.node);
        record.attempts = trail.attempts;
    }
    match resp.body_mut() {
        Either::Left(tracked) => tracked.log = Some(record),
        Either::Right(full) => {
            record.bytes_out = full.size_hint().exact().unwrap_or(0);
            record.upstream = None;
            access_log::emit(*record);
        }
    }
    resp
}

/// Attaches the service's concurrency slot to a response, so it is held until the body ends.
fn finish(mut resp: Response<ProxyBody>, slot: ServiceSlot) -> Response<ProxyBody> {
    if let Either::Left(tracked) = resp.body_mut() {
        tracked.slot = Some(slot);
    }
    resp
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

/// A response Outrigger makes itself: a short text body and the cause in `x-outrigger-error`.
pub fn error(status: StatusCode, cause: &'static str, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "outrigger: {message}\n"
    )))));
    *resp.status_mut() = status;
    resp.extensions_mut().insert(ErrorText(message.to_string()));
    resp.headers_mut()
        .insert(X_OUTRIGGER_ERROR.clone(), HeaderValue::from_static(cause));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
