//! A node that speaks only HTTP/2 with prior knowledge (h2c): hyper's HTTP/2 server on
//! loopback, answering every request with its label and a trailer `x-node: <label>`, and
//! recording the HTTP version and `:authority` of what it received. A request for `/stall`
//! gets its head and a first piece of body, then nothing: the test can then kill the node's
//! connections ([`H2Node::kill_connections`], as a killed process would) or close them
//! gracefully with GOAWAY ([`H2Node::goaway`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A body of one data frame, then trailers (or, stalling, nothing more ever).
struct WithTrailers {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    stall: bool,
}

impl Body for WithTrailers {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if self.stall {
            return Poll::Pending;
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// What the node saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `HTTP/2.0`.
    pub version: String,
    /// The target's authority (HTTP/2's `:authority`).
    pub authority: String,
    /// Whether a `host` header came as well (nginx refuses both).
    pub host_header: bool,
}

impl Seen {
    /// What `req` shows.
    pub fn of<B>(req: &hyper::Request<B>) -> Seen {
        Seen {
            version: format!("{:?}", req.version()),
            authority: req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            host_header: req.headers().contains_key("host"),
        }
    }
}

/// An h2c-only node; stops when dropped.
pub struct H2Node {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests answered.
    pub hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
    /// The tasks of open connections.
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Asks the connections open now to close gracefully (GOAWAY): a generation count.
    shutdown: tokio::sync::watch::Sender<u64>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
}

impl H2Node {
    /// Starts a node answering `label`.
    pub async fn start(label: &str) -> H2Node {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let label: Arc<str> = label.into();
        let (counter, record) = (hits.clone(), seen.clone());
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (shutdown, _) = tokio::sync::watch::channel(0u64);
        let accepted = Arc::new(AtomicUsize::new(0));
        let (open, stop, count) = (connections.clone(), shutdown.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (label, counter, record) = (label.clone(), counter.clone(), record.clone());
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    record.lock().unwrap().push(Seen::of(&req));
                    let mut trailers = HeaderMap::new();
                    trailers.insert("x-node", label.parse().expect("label"));
                    let body = WithTrailers {
                        data: Some(Bytes::from(label.to_string())),
                        trailers: Some(trailers),
                        stall: req.uri().path() == "/stall",
                    };
                    async move { Ok::<_, Infallible>(hyper::Response::new(body)) }
                });
                let mut stop = stop.subscribe();
                let born = *stop.borrow();
                open.lock().unwrap().push(tokio::spawn(async move {
                    let conn = http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = stop.wait_for(|g| *g > born) => conn.as_mut().graceful_shutdown(),
                    }
                    let _ = conn.await;
                }));
            }
        });
        H2Node {
            addr,
            hits,
            seen,
            task,
            connections,
            shutdown,
            accepted,
        }
    }

    /// Drops every open connection at once, streams in flight included, as a killed process.
    pub fn kill_connections(&self) {
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Closes every open connection gracefully: GOAWAY, streams in flight finish. New
    /// connections are still accepted.
    pub fn goaway(&self) {
        self.shutdown.send_modify(|g| *g += 1);
    }

    /// The requests it has answered.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for H2Node {
    fn drop(&mut self) {
        self.task.abort();
        self.kill_connections();
    }
}
