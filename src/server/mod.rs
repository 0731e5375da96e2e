//! Accept loops and HTTP connection serving with graceful draining, shared by the proxy
//! listeners, the proxy workers and the admin listener.

mod drain;
mod head_timer;
mod sniff;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::write_batch::BatchedStream;
use drain::{Activity, Closing, DrainSignal, Looks};
use head_timer::HeadTimer;
use sniff::Protocol;

/// Accepts connections on `listener` and hands each to `accepted` until `cancel`; then drops
/// the listener, so the port stops taking connections at once.
pub async fn accept_loop(
    listener: TcpListener,
    cancel: CancellationToken,
    mut accepted: impl FnMut(TcpStream, SocketAddr),
) {
    let local = listener.local_addr().ok();
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            result = listener.accept() => match result {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and similar: wait a moment rather than spin.
                    tracing::warn!(listener = ?local, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        accepted(stream, peer);
    }
}

/// Serves HTTP connections (HTTP/1.1, and HTTP/2 with prior knowledge) on the current runtime,
/// and drains them on shutdown.
///
/// hyper's own HTTP/1 and HTTP/2 connections, chosen by a peek at the first bytes (`sniff`),
/// within the limits of [`ConnectionLimits`], with a drain signal of our own: hyper-util's auto-detecting connection and graceful-shutdown
/// wrapper did the same with work on every poll of every connection (about 1,000 instructions
/// a request, bench/HISTORY.md), where this costs one atomic load a poll.
pub struct ConnectionServer {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    limits: ConnectionLimits,
    drain: Arc<DrainSignal>,
    open: TaskTracker,
}

/// Limits on the connections apps open to Outrigger (and on the admin port's), so that a slow
/// or careless client cannot hold descriptors, memory or a worker's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// How long a connection may take to say which protocol it speaks and, over HTTP/1.1, to
    /// send a complete request head, counted from its opening and from the end of the previous
    /// response (hyper's `header_read_timeout`). A connection that misses it is closed without
    /// an answer (`OUTRIGGER_HEADER_READ_TIMEOUT`, default 30 s). Heads are timed by the
    /// sweeper, which looks every half of the shorter of this and `idle_timeout`: a head is
    /// cut off after the timeout and at most one such period more.
    pub header_read_timeout: Duration,
    /// The largest request head in bytes, request line and header fields included: a larger
    /// one gets 431 over HTTP/1.1, and its stream is refused over HTTP/2
    /// (`OUTRIGGER_MAX_REQUEST_HEADERS`, default 60 KiB, as Envoy).
    pub max_head_bytes: u32,
    /// Header fields at most in a request head: more get 431 over HTTP/1.1 (from hyper) and
    /// over HTTP/2 (from the proxy) (`OUTRIGGER_MAX_HEADERS`, default 100).
    pub max_headers: u32,
    /// A connection on which nothing has happened for this long (no byte from the app, no
    /// answer to send) is closed gracefully: a request still in flight finishes first (HTTP/2:
    /// GOAWAY). Checked every half of the shorter of this and `header_read_timeout`, so the
    /// close comes after one timeout and at most one such period more
    /// (`OUTRIGGER_IDLE_TIMEOUT`, default 60 s). An HTTP/1.1 connection is also
    /// closed by the header-read timeout, which hyper counts from the end of the previous
    /// response, so it stays idle for the shorter of the two; one that has sent nothing yet
    /// is closed at the shorter of the two as well. An HTTP/2 client silent for two timeouts
    /// is sent a PING and closed if it does not answer within one (at most 20 s).
    pub idle_timeout: Duration,
    /// Open app connections at most, over all proxy listeners (`OUTRIGGER_MAX_CONNECTIONS`,
    /// default 10,000); one more is closed as soon as it is accepted and counted in
    /// `outrigger_connections_refused_total`.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(30),
            max_head_bytes: 60 * 1024,
            max_headers: 100,
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

impl Default for ConnectionServer {
    fn default() -> Self {
        ConnectionServer::new(ConnectionLimits::default())
    }
}

impl ConnectionServer {
    /// A server whose connections keep to `limits`; `max_connections` is for the caller, which
    /// accepts them.
    pub fn new(limits: ConnectionLimits) -> Self {
        let mut http1 = http1::Builder::new();
        // Head and a small body copied into one buffer and sent with one write: fewer cycles in
        // the kernel than a writev of two (about 3% a request, measured with perf stat against
        // the writev default).
        // The header-read timer is set per connection (`serve`).
        http1
            .writev(false)
            .header_read_timeout(limits.header_read_timeout)
            .max_headers(limits.max_headers as usize)
            .max_header_size(limits.max_head_bytes as usize);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        // A PING after two idle timeouts without a frame, to be answered within one (at most
        // 20 s): a graceful close waits for the client's acknowledgement of its own PING, so
        // a client that never answers (or is gone without a FIN) would otherwise hold the
        // connection for ever. Not sooner: the PINGs would keep the connection from ever
        // looking idle to the sweeper.
        http2
            .timer(TokioTimer::new())
            .keep_alive_interval(limits.idle_timeout * 2)
            .keep_alive_timeout(limits.idle_timeout.min(Duration::from_secs(20)))
            .max_header_list_size(limits.max_head_bytes);
        let looks = Looks::new(limits.idle_timeout, limits.header_read_timeout);
        let drain = Arc::new(DrainSignal::new(looks));
        // Within a runtime (every server is made on the runtime that serves it); a server
        // made elsewhere closes no idle connection and ends no slow head.
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(drain::sweep(Arc::downgrade(&drain), looks.period));
        }
        ConnectionServer {
            http1,
            http2,
            limits,
            drain,
            open: TaskTracker::new(),
        }
    }

    /// Connections open now, served or still saying which protocol they speak.
    pub fn open_connections(&self) -> usize {
        self.open.len()
    }
}

impl ConnectionServer {
    /// Serves `stream` from `peer` with `handler` (built for this connection) on a task of
    /// its own; `until_closed` is dropped when the connection closes.
    pub fn serve<F, Fut, B>(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        handler: F,
        until_closed: impl Send + 'static,
    ) where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut http1 = self.http1.clone();
        let http2 = self.http2.clone();
        let signal = self.drain.clone();
        let limits = self.limits;
        self.open.spawn(async move {
            let _until_closed = until_closed;
            // A connection that has said nothing when draining starts is simply closed.
            let started = signal.started.notified();
            if signal.draining.load(Ordering::Acquire) {
                return;
            }
            // A connection that says nothing is idle too: the shorter timeout ends it.
            let silence = limits.header_read_timeout.min(limits.idle_timeout);
            let deadline = tokio::time::Instant::now() + silence;
            let mut prefix = Vec::new();
            let protocol = tokio::select! {
                protocol = sniff::sniff(&stream, &mut prefix, deadline) => protocol,
                _ = started => return,
            };
            let Some(protocol) = protocol else {
                return;
            };
            let io = BatchedStream::with_prefix(stream, prefix);
            let activity = Arc::new(Activity::default());
            let result = match protocol {
                Protocol::Http1 => {
                    http1.timer(HeadTimer::new(activity.clone()));
                    let conn = http1
                        .serve_connection(io, service_fn(handler))
                        .with_upgrades();
                    Closing::new(conn, signal, activity).await
                }
                Protocol::Http2 => {
                    // hyper runs each stream's future as a task of its own, moving it a few
                    // times on the way: boxed, each move copies a pointer rather than the
                    // request's whole future (4 KiB; memmove was 16% of an h2c profile).
                    let boxed = service_fn(move |req| Box::pin(handler(req)));
                    let conn = http2.serve_connection(io, boxed);
                    Closing::new(conn, signal, activity).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }

    /// Asks every open connection to finish its current request and close, and waits up to
    /// `drain` for them.
    pub async fn drain(self, drain: Duration, what: &str) {
        self.open.close();
        self.drain.start();
        if tokio::time::timeout(drain, self.open.wait()).await.is_err() {
            tracing::warn!(
                ?drain,
                what,
                "drain timeout passed with requests still open"
            );
        }
    }
}

/// Open admin connections at most: the admin API serves operators and scrapers, a few at a
/// time; more are closed as soon as they are accepted.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Serves `handler` (given each request and its peer's address) on `listener` on the current
/// runtime until `cancel`, then stops accepting
/// and gives open requests up to `drain` to finish. At most 64 connections are open at once,
/// each within the default [`ConnectionLimits`].
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    handler: F,
    cancel: CancellationToken,
    drain: Duration,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let what = format!("{:?}", listener.local_addr().ok());
    let server = ConnectionServer::default();
    accept_loop(listener, cancel, |stream, peer| {
        if server.open_connections() >= ADMIN_MAX_CONNECTIONS {
            tracing::debug!(%peer, "admin connection refused: {ADMIN_MAX_CONNECTIONS} already open");
            return;
        }
        let handler = handler.clone();
        server.serve(
            stream,
            peer,
            move |req| {
                let response = handler(req, peer);
                async move { Ok::<_, Infallible>(response.await) }
            },
            (),
        );
    })
    .await;
    server.drain(drain, &what).await;
}
