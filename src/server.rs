//! Accept loops and HTTP connection serving with graceful draining, shared by the proxy
//! listeners, the proxy workers and the admin listener.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::{service_fn, HttpService};
use hyper_util::rt::TokioExecutor;
use slab::Slab;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::write_batch::BatchedStream;

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
/// hyper's own HTTP/1 and HTTP/2 connections, chosen by a peek at the first bytes, with a
/// drain signal of our own: hyper-util's auto-detecting connection and graceful-shutdown
/// wrapper did the same with work on every poll of every connection (about 1,000 instructions
/// a request, bench/HISTORY.md), where this costs one atomic load a poll.
pub struct ConnectionServer {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    drain: Arc<DrainSignal>,
    open: TaskTracker,
}

impl Default for ConnectionServer {
    fn default() -> Self {
        let mut http1 = http1::Builder::new();
        // Head and a small body copied into one buffer and sent with one write: fewer cycles in
        // the kernel than a writev of two (about 3% a request, measured with perf stat against
        // the writev default).
        http1.writev(false);
        ConnectionServer {
            http1,
            http2: http2::Builder::new(TokioExecutor::new()),
            drain: Arc::default(),
            open: TaskTracker::new(),
        }
    }
}

/// The 24 bytes every HTTP/2 prior-knowledge connection starts with (RFC 9113, 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `stream` starts with the HTTP/2 preface, read with `peek` so that hyper still reads
/// it. `None` when the peer closed or failed before saying anything.
async fn starts_with_h2_preface(stream: &TcpStream) -> Option<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        // A preface arriving in pieces: peek would return the same bytes at once, so wait a
        // moment for the rest. Real clients send it in one segment.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Tells open connections to finish their current request and close.
#[derive(Default)]
struct DrainSignal {
    draining: AtomicBool,
    /// The tasks of connections to wake when draining starts, registered once per connection.
    waiting: Mutex<Slab<Waker>>,
    /// Wakes connections still waiting for their first bytes.
    started: Notify,
}

impl DrainSignal {
    fn start(&self) {
        self.draining.store(true, Ordering::Release);
        self.started.notify_waiters();
        let waiting = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, waker) in waiting {
            waker.wake();
        }
    }
}

/// A hyper connection that can be asked to finish its current request and close.
trait GracefulConnection: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> GracefulConnection for http1::UpgradeableConnection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S, B> GracefulConnection for http2::Connection<I, S, TokioExecutor>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self)
    }
}

pin_project_lite::pin_project! {
    /// A connection that starts its graceful shutdown when the drain signal is given.
    struct Drained<C> {
        #[pin]
        conn: C,
        signal: Arc<DrainSignal>,
        registered: Option<usize>,
        shutting_down: bool,
    }

    impl<C> PinnedDrop for Drained<C> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(key) = this.registered.take() {
                let mut waiting = this.signal.waiting.lock().unwrap_or_else(|e| e.into_inner());
                waiting.try_remove(key);
            }
        }
    }
}

impl<C: GracefulConnection> Future for Drained<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.shutting_down {
            if this.registered.is_none() {
                // A spawned task keeps its waker for life, so registering once is enough.
                let mut waiting = this
                    .signal
                    .waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                *this.registered = Some(waiting.insert(cx.waker().clone()));
            }
            if this.signal.draining.load(Ordering::Acquire) {
                *this.shutting_down = true;
                this.conn.as_mut().graceful_shutdown();
            }
        }
        this.conn.poll(cx)
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
        let http1 = self.http1.clone();
        let http2 = self.http2.clone();
        let signal = self.drain.clone();
        self.open.spawn(async move {
            let _until_closed = until_closed;
            // A connection that has said nothing when draining starts is simply closed.
            let started = signal.started.notified();
            if signal.draining.load(Ordering::Acquire) {
                return;
            }
            let h2 = tokio::select! {
                h2 = starts_with_h2_preface(&stream) => h2,
                _ = started => return,
            };
            let service = service_fn(handler);
            let io = BatchedStream::new(stream);
            let result = match h2 {
                None => return,
                Some(false) => {
                    let conn = http1.serve_connection(io, service).with_upgrades();
                    Drained::new(conn, signal).await
                }
                Some(true) => Drained::new(http2.serve_connection(io, service), signal).await,
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

impl<C> Drained<C> {
    fn new(conn: C, signal: Arc<DrainSignal>) -> Self {
        Drained {
            conn,
            signal,
            registered: None,
            shutting_down: false,
        }
    }
}

/// Serves `handler` on `listener` on the current runtime until `cancel`, then stops accepting
/// and gives open requests up to `drain` to finish.
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    handler: F,
    cancel: CancellationToken,
    drain: Duration,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let what = format!("{:?}", listener.local_addr().ok());
    let server = ConnectionServer::default();
    accept_loop(listener, cancel, |stream, peer| {
        let handler = handler.clone();
        server.serve(
            stream,
            peer,
            move |req| {
                let response = handler(req);
                async move { Ok::<_, Infallible>(response.await) }
            },
            (),
        );
    })
    .await;
    server.drain(drain, &what).await;
}
