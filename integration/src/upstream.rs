//! A test upstream: answers with its name, records requests, and can be slow, fail, echo or
//! switch protocols on demand.
//!
//! Paths: `/` and anything else answer `200` with the upstream's name; `/headers` answers the
//! received headers as JSON; `/slow?ms=N` waits N ms first; `/status/N` answers status N;
//! `/echo` streams the request body back; a request with `Upgrade: echo` is switched to a raw
//! echo of bytes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// A running test upstream; stops when dropped.
pub struct TestUpstream {
    /// Its name, returned as the body of ordinary requests.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
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
    delay: Duration,
    mut req: Request<Incoming>,
) -> Response<Body> {
    hits.fetch_add(1, Ordering::SeqCst);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
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
    full(StatusCode::OK, name.to_string())
}

impl TestUpstream {
    /// Starts an upstream named `name` on a free loopback port.
    pub async fn start(name: &str) -> TestUpstream {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts an upstream that waits `delay` before answering every request: a slow node.
    pub async fn start_slow(name: &str, delay: Duration) -> TestUpstream {
        Self::start_with(name, "127.0.0.1:0".parse().unwrap(), delay).await
    }

    /// Starts an upstream named `name` on `addr` (for restarting one on the same port).
    pub async fn start_on(name: &str, addr: SocketAddr) -> TestUpstream {
        Self::start_with(name, addr, Duration::ZERO).await
    }

    async fn start_with(name: &str, addr: SocketAddr, delay: Duration) -> TestUpstream {
        let listener = TcpListener::bind(addr).await.expect("bind test upstream");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let label: Arc<str> = name.into();
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let label = label.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let label = label.clone();
                        let counter = counter.clone();
                        async move { Ok::<_, Infallible>(answer(label, counter, delay, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestUpstream {
            name: name.to_string(),
            addr,
            hits,
            task,
        }
    }

    /// How many requests it has received.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting; connections already open may linger until their peer closes them.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
