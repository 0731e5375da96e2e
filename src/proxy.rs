//! The request path: name the service, pick an endpoint, forward, stream the answer back.
//!
//! Nothing here locks or waits on discovery: the service table is fixed at start, and each
//! service's pool is read through `ArcSwap`.

use std::error::Error as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::balance::load::InFlight;
use crate::balance::PickContext;
use crate::upstream::{Routes, Upstream};

/// Response bodies: streamed from the upstream, or a short error text of Outrigger's own.
pub type ProxyBody = Either<Tracked, Full<Bytes>>;

/// How long a failed attempt counts as having taken, for latency-aware policies.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// An upstream response body that keeps its request counted as in flight until it ends.
pub struct Tracked {
    body: Incoming,
    in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
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
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// Names the cause of every response Outrigger makes itself, so apps and operators can tell
/// a proxy error from an upstream's.
pub static X_OUTRIGGER_ERROR: HeaderName = HeaderName::from_static("x-outrigger-error");

/// The proxy: routing table, pooled upstream client and timeouts.
pub struct Proxy {
    routes: Arc<Routes>,
    client: Client<HttpConnector, Incoming>,
    request_timeout: Duration,
}

impl Proxy {
    /// A proxy over `routes`, with keep-alive connections to upstreams.
    pub fn new(routes: Arc<Routes>, connect_timeout: Duration, request_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Proxy {
            routes,
            client,
            request_timeout,
        }
    }

    /// Handles one request from the app at `client_addr`. `dedicated` is the service of a
    /// per-service listener; otherwise the request names the service.
    pub async fn serve(
        &self,
        req: Request<Incoming>,
        client_addr: SocketAddr,
        dedicated: Option<&Arc<Upstream>>,
    ) -> Response<ProxyBody> {
        let upstream = match dedicated {
            Some(u) => u,
            None => match self.route(&req) {
                Ok(u) => u,
                Err(e) => return e.response(),
            },
        };
        let started = Instant::now();
        let resp = self.forward(req, client_addr, upstream).await;
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
    fn route(&self, req: &Request<Incoming>) -> Result<&Arc<Upstream>, RouteError> {
        let host = service_name(req).ok_or(RouteError::Unnamed)?;
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
        client_addr: SocketAddr,
        upstream: &Upstream,
    ) -> Response<ProxyBody> {
        let pool = upstream.pool.load();
        let (mut parts, body) = req.into_parts();
        let ctx = PickContext {
            client: client_addr.ip(),
            headers: &parts.headers,
            path: parts.uri.path(),
        };
        let Some(picked) = pool.pick(&ctx) else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-endpoint",
                &format!("service {:?} has no endpoint to send to", upstream.name),
            );
        };
        let addr = picked.endpoint.addr;
        let authority = picked.authority.clone();
        let load = picked.load.clone();
        let in_flight = load.start();

        // An app that asks to switch protocols (WebSocket) keeps its Upgrade headers; every
        // other hop-by-hop header stops here.
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
        if !parts.headers.contains_key(header::HOST) {
            if let Some(authority) = parts.uri.authority() {
                if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                    parts.headers.insert(header::HOST, v);
                }
            }
        }
        append_forwarded(&mut parts.headers, client_addr);

        let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        parts.uri = match Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()
        {
            Ok(uri) => uri,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad-request-target",
                    &format!("cannot forward request target: {e}"),
                )
            }
        };
        parts.version = Version::HTTP_11;
        drop(pool);

        let started = Instant::now();
        let sent = tokio::time::timeout(
            self.request_timeout,
            self.client.request(Request::from_parts(parts, body)),
        )
        .await;
        let mut resp = match sent {
            Err(_) => {
                load.observe(self.request_timeout);
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "request-timeout",
                    &format!(
                        "{} did not answer within {:?} (OUTRIGGER_REQUEST_TIMEOUT)",
                        addr, self.request_timeout
                    ),
                );
            }
            Ok(Err(e)) => {
                // A failed node must not look fast to latency-aware policies.
                load.observe(FAILURE_PENALTY.max(started.elapsed()));
                return self.upstream_failure(&e, addr, upstream);
            }
            Ok(Ok(resp)) => resp,
        };
        load.observe(started.elapsed());

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    match tokio::try_join!(client_upgrade, upstream_upgrade) {
                        Ok((client, server)) => {
                            let _ = tokio::io::copy_bidirectional(
                                &mut TokioIo::new(client),
                                &mut TokioIo::new(server),
                            )
                            .await;
                        }
                        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                    }
                });
            }
        } else {
            strip_hop_by_hop(resp.headers_mut());
        }
        // The request stays in flight until its response body has been sent.
        resp.map(|body| Either::Left(Tracked { body, in_flight }))
    }

    fn upstream_failure(
        &self,
        e: &hyper_util::client::legacy::Error,
        addr: SocketAddr,
        upstream: &Upstream,
    ) -> Response<ProxyBody> {
        let detail = chain(e);
        if e.is_connect() {
            upstream.metrics.connect_errors.increment(1);
            if timed_out(e) {
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "connect-timeout",
                    &format!("connecting to {addr} timed out (OUTRIGGER_CONNECT_TIMEOUT)"),
                );
            }
            return error(
                StatusCode::BAD_GATEWAY,
                "connect-failed",
                &format!("cannot connect to {addr}: {detail}"),
            );
        }
        error(
            StatusCode::BAD_GATEWAY,
            "upstream-failed",
            &format!("{addr} failed the request: {detail}"),
        )
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

/// The service a request names: the absolute-form URI's host (also HTTP/2's :authority), else
/// the Host header, without a port.
fn service_name<B>(req: &Request<B>) -> Option<&str> {
    if let Some(host) = req.uri().host() {
        return Some(host);
    }
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.split(':').next().unwrap_or(host),
    };
    (!name.is_empty()).then_some(name)
}

/// The protocol an app asks to upgrade to, when it asks properly (Connection: upgrade).
fn upgrade_token(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Removes hop-by-hop headers, including any the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

fn append_forwarded(headers: &mut HeaderMap, client: SocketAddr) {
    let ip = client.ip().to_string();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn timed_out(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        source = s.source();
    }
    false
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
    fn names_the_service_from_uri_or_host() {
        let req = Request::get("http://orders/x").body(()).unwrap();
        assert_eq!(service_name(&req), Some("orders"));
        let req = Request::get("/x")
            .header("host", "users:8080")
            .body(())
            .unwrap();
        assert_eq!(service_name(&req), Some("users"));
        let req = Request::get("/x")
            .header("host", "[::1]:80")
            .body(())
            .unwrap();
        assert_eq!(service_name(&req), Some("::1"));
        let req = Request::get("/x").body(()).unwrap();
        assert_eq!(service_name(&req), None);
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
