//! A test upstream: answers with its name, records requests, and can be slow, fail, echo or
//! switch protocols on demand.
//!
//! Paths: `/` and anything else answer `200` with the upstream's name; `/headers` answers the
//! received headers as JSON; `/slow?ms=N` waits N ms first; `/status/N` answers status N;
//! `/echo` streams the request body back; `/trailers` answers the name and a `grpc-status: 0`
//! trailer; `/healthz` answers 200 or 503 as set by [`TestUpstream::set_healthy`] (not counted
//! as a hit); a request with `Upgrade: echo` is switched to a raw echo of bytes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::serve::accept_connections;

/// A running test upstream; stops when dropped.
pub struct TestUpstream {
    /// Its name, returned as the body of ordinary requests.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// How a test upstream answers ordinary requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behavior {
    /// Wait this long before answering.
    pub delay: Duration,
    /// Answer with this status instead of 200.
    pub status: Option<u16>,
}

type Body = BoxBody<Bytes, hyper::Error>;

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r
}

async fn answer(
    name: Arc<str>,
    hits: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    behavior: Behavior,
    mut req: Request<Incoming>,
) -> Response<Body> {
    if req.uri().path() == "/healthz" {
        return if healthy.load(Ordering::SeqCst) {
            full(StatusCode::OK, "ok")
        } else {
            full(StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
        };
    }
    hits.fetch_add(1, Ordering::SeqCst);
    if !behavior.delay.is_zero() {
        tokio::time::sleep(behavior.delay).await;
    }
    if let Some(code) = behavior.status {
        return full(StatusCode::from_u16(code).unwrap(), name.to_string());
    }
    let path = req.uri().path().to_string();
    if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = full(StatusCode::SWITCHING_PROTOCOLS, "");
        r.headers_mut().insert("upgrade", "echo".parse().unwrap());
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        return r;
    }
    if path == "/headers" {
        let headers: BTreeMap<String, String> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        return full(StatusCode::OK, serde_json::to_vec(&headers).unwrap());
    }
    if path == "/slow" {
        let ms = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return full(StatusCode::OK, name.to_string());
    }
    if let Some(code) = path.strip_prefix("/status/").and_then(|c| c.parse().ok()) {
        return full(
            StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
            name.to_string(),
        );
    }
    if path == "/echo" {
        return Response::new(req.into_body().boxed());
    }
    if path == "/trailers" {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let body = DataThenTrailers {
            data: Some(Bytes::from(name.to_string())),
            trailers: Some(trailers),
        };
        let mut r = Response::new(body.boxed());
        r.headers_mut()
            .insert("trailer", http::HeaderValue::from_static("grpc-status"));
        return r;
    }
    full(StatusCode::OK, name.to_string())
}

/// One data frame, then trailers, with no length announced: hyper sends a body with a known
/// length as content-length, which has no room for trailers.
struct DataThenTrailers {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl hyper::body::Body for DataThenTrailers {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = match this.data.take() {
            Some(data) => Some(hyper::body::Frame::data(data)),
            None => this.trailers.take().map(hyper::body::Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }
}

impl TestUpstream {
    /// Starts an upstream named `name` on a free loopback port.
    pub async fn start(name: &str) -> TestUpstream {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts an upstream that waits `delay` before answering every request: a slow node.
    pub async fn start_slow(name: &str, delay: Duration) -> TestUpstream {
        let behavior = Behavior {
            delay,
            status: None,
        };
        Self::start_with(name, "127.0.0.1:0".parse().unwrap(), behavior).await
    }

    /// Starts an upstream that answers every ordinary request with `status`.
    pub async fn start_failing(name: &str, status: u16) -> TestUpstream {
        let behavior = Behavior {
            delay: Duration::ZERO,
            status: Some(status),
        };
        Self::start_with(name, "127.0.0.1:0".parse().unwrap(), behavior).await
    }

    /// Starts an upstream named `name` on `addr` (for restarting one on the same port).
    pub async fn start_on(name: &str, addr: SocketAddr) -> TestUpstream {
        Self::start_with(name, addr, Behavior::default()).await
    }

    /// Starts an upstream with `behavior` on `addr`.
    pub async fn start_with(name: &str, addr: SocketAddr, behavior: Behavior) -> TestUpstream {
        let listener = TcpListener::bind(addr).await.expect("bind test upstream");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let label: Arc<str> = name.into();
        let counter = hits.clone();
        let flag = healthy.clone();
        let accepted = Arc::new(AtomicUsize::new(0));
        let accepted_count = accepted.clone();
        // stop() aborts this task, which closes every connection too, like a killed process.
        let task = tokio::spawn(accept_connections(listener, move |stream| {
            accepted_count.fetch_add(1, Ordering::SeqCst);
            let label = label.clone();
            let counter = counter.clone();
            let flag = flag.clone();
            async move {
                let service = service_fn(move |req| {
                    let label = label.clone();
                    let counter = counter.clone();
                    let flag = flag.clone();
                    async move { Ok::<_, Infallible>(answer(label, counter, flag, behavior, req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            }
        }));
        TestUpstream {
            name: name.to_string(),
            addr,
            hits,
            accepted,
            healthy,
            task,
        }
    }

    /// How many connections it has accepted.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// How many requests it has received.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Makes `/healthz` answer 200 (true) or 503 (false).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Stops listening and closes every open connection, like a killed process.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
