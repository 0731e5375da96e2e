//! Idle keep-alive connections to upstream nodes, kept per worker thread.
//!
//! Every worker thread runs its own single-threaded runtime (see `workers`), so a connection
//! and the task driving it never leave the thread that opened it: a checkout is a pop from a
//! thread-local vector, with no lock and no cross-thread wake-up. hyper-util's pooled client,
//! which this replaces, keeps one mutex-guarded pool for all threads and hashes a
//! (scheme, authority) key on every request.

use std::cell::{Cell, RefCell};
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::LocalKey;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::client::conn::http2;
use rustc_hash::FxHashMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::node_client::connect::{Connector, NodeConn, SendError};
use crate::node_client::h1::{self, ExchangeError, LeanBody, Outgoing};
use crate::upstream::RequestBody;

/// How often idle connections are swept; also the unit of the idle timeout.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// An idle connection is closed after this many sweeps (60-70 s idle), below the common server
/// keep-alive timeouts (nginx 75 s), so Outrigger usually closes first and never sends on a
/// connection the node is closing.
const IDLE_SWEEPS: u32 = 6;
/// Idle connections kept per node on one thread at most; more are closed when released.
const MAX_IDLE_PER_NODE: usize = 512;

/// A connection that can sit idle, and tell whether the node has closed it meanwhile.
trait Reusable {
    fn usable(&mut self) -> bool;
}

impl Reusable for SendRequest<RequestBody> {
    fn usable(&mut self) -> bool {
        !self.is_closed()
    }
}

impl Reusable for Box<h1::Connection> {
    fn usable(&mut self) -> bool {
        !self.is_stale()
    }
}

struct Idle<C> {
    conn: C,
    /// The sweep count when it was released; ages are counted in sweeps, so neither a checkout
    /// nor a release reads the clock.
    released_at: u32,
}

/// One thread's idle connections of one kind, by key: the node's address, and for hyper's
/// connections also the connector's pool id (TLS settings are per service: a connection made
/// with one service's server name or certificate is not another's).
type IdleSet<K, C> = RefCell<FxHashMap<K, Vec<Idle<C>>>>;

/// The key of hyper's idle connections: the node, and [`Connector::pool_id`].
type Key = (SocketAddr, u32);

thread_local! {
    /// hyper's client connections (streaming uploads, protocol switches).
    static IDLE: IdleSet<Key, SendRequest<RequestBody>> = RefCell::new(FxHashMap::default());
    /// The lean client's connections (`h1_client`).
    static IDLE_LEAN: IdleSet<SocketAddr, Box<h1::Connection>> = RefCell::new(FxHashMap::default());
    static SWEEPS: Cell<u32> = const { Cell::new(0) };
}

/// Keeps `conn` for the next request to `addr`, unless the node already has enough idle ones.
fn put<K: Hash + Eq + 'static, C: 'static>(
    set: &'static LocalKey<IdleSet<K, C>>,
    addr: K,
    conn: C,
) {
    let released_at = SWEEPS.get();
    set.with_borrow_mut(|idle| {
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_NODE {
            list.push(Idle { conn, released_at });
        }
    });
}

/// The most recently released idle connection to `addr` that is still usable (the one least
/// likely to have been closed by the node).
fn take<K: Hash + Eq + 'static, C: Reusable + 'static>(
    set: &'static LocalKey<IdleSet<K, C>>,
    addr: K,
) -> Option<C> {
    set.with_borrow_mut(|idle| {
        let list = idle.get_mut(&addr)?;
        while let Some(mut entry) = list.pop() {
            if entry.conn.usable() {
                return Some(entry.conn);
            }
        }
        None
    })
}

/// Forgets the connections of `set` that were closed or have been idle too long at sweep
/// `now`.
fn expire<K: 'static, C: Reusable + 'static>(set: &'static LocalKey<IdleSet<K, C>>, now: u32) {
    set.with_borrow_mut(|idle| {
        idle.retain(|_, list| {
            list.retain_mut(|e| e.conn.usable() && now.wrapping_sub(e.released_at) < IDLE_SWEEPS);
            !list.is_empty()
        });
    });
}

/// Returns a lean connection whose response has been read to the end.
fn release_lean(addr: SocketAddr, conn: Box<h1::Connection>) {
    put(&IDLE_LEAN, addr, conn);
}

/// Sends `req` (a body known in full, no protocol switch) to `addr` with the lean client, on
/// an idle connection of this thread or a new one from `connector`.
///
/// A kept-alive connection that the node closed just as it was reused fails with nothing
/// answered, though the node may have read the request. It is sent once more, on a new
/// connection, only if it may be repeated (its method is idempotent) and `resend` agrees (the
/// caller counts it as a retry and charges its budget): never once per idle connection.
pub async fn exchange(
    connector: &Connector,
    addr: SocketAddr,
    req: Outgoing<'_>,
    may_repeat: bool,
    resend: impl FnOnce() -> bool,
) -> Result<Response<LeanBody>, SendError> {
    if let Some(conn) = take(&IDLE_LEAN, addr) {
        match conn.exchange(req, release_lean, addr).await {
            Err(ExchangeError::Stale) if may_repeat && resend() => {}
            result => return result.map_err(SendError::Exchange),
        }
    }
    let stream = Box::pin(connector.open(addr)).await?;
    h1::Connection::new(stream, connector.limits())
        .exchange(req, release_lean, addr)
        .await
        .map_err(SendError::Exchange)
}

/// A connection lent to one request; it goes back to its thread's idle set with
/// [`Lease::release`] once the response has been read to the end, and is closed if dropped.
/// An HTTP/2 connection is shared, not lent: its lease holds the request's stream slot.
#[derive(Debug)]
pub struct Lease {
    sender: Option<SendRequest<RequestBody>>,
    key: Key,
    _stream: Option<StreamSlot>,
}

impl Lease {
    /// Returns the connection for the next request to the same node.
    pub fn release(self) {
        if let Some(sender) = self.sender.filter(|s| !s.is_closed()) {
            put(&IDLE, self.key, sender);
        }
    }
}

/// Streams Outrigger opens on one HTTP/2 connection at most; one more request to the node
/// opens another connection. RFC 9113 (section 6.5.2) recommends servers allow at least 100
/// concurrent streams; hyper does not tell the node's own limit, and a request beyond it
/// would wait for a stream to end instead of going out.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 100;

/// One of the worker's HTTP/2 connections to a node, and how many of its streams are open.
struct SharedH2 {
    sender: http2::SendRequest<RequestBody>,
    streams: Arc<AtomicU32>,
}

/// One open stream of a shared HTTP/2 connection, given back when the response ends or is
/// dropped.
#[derive(Debug)]
struct StreamSlot(Arc<AtomicU32>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

thread_local! {
    /// HTTP/2 connections to nodes per worker, by node (and TLS settings): one, and another
    /// each time all have [`MAX_STREAMS_PER_CONNECTION`] streams open; shared by the worker's
    /// requests, a stream each.
    static SHARED_H2: RefCell<FxHashMap<Key, Vec<SharedH2>>> =
        RefCell::new(FxHashMap::default());
}

/// A shared connection to `key` with a stream to spare, and the stream taken; closed
/// connections (GOAWAY, gone) are forgotten on the way.
fn shared_h2(key: Key) -> Option<(http2::SendRequest<RequestBody>, StreamSlot)> {
    SHARED_H2.with_borrow_mut(|all| {
        let conns = all.get_mut(&key)?;
        conns.retain(|c| !c.sender.is_closed());
        let found = conns
            .iter()
            .find(|c| c.streams.load(Ordering::Relaxed) < MAX_STREAMS_PER_CONNECTION)
            .map(|c| (c.sender.clone(), take_stream(&c.streams)));
        if conns.is_empty() {
            all.remove(&key);
        }
        found
    })
}

fn has_shared_h2(key: Key) -> bool {
    SHARED_H2.with_borrow(|all| all.contains_key(&key))
}

fn take_stream(streams: &Arc<AtomicU32>) -> StreamSlot {
    streams.fetch_add(1, Ordering::Relaxed);
    StreamSlot(streams.clone())
}

/// Shares a new connection to `key`, its first stream taken.
fn share_h2(key: Key, sender: &http2::SendRequest<RequestBody>) -> StreamSlot {
    let streams = Arc::new(AtomicU32::new(0));
    let slot = take_stream(&streams);
    SHARED_H2.with_borrow_mut(|all| {
        all.entry(key).or_default().push(SharedH2 {
            sender: sender.clone(),
            streams,
        })
    });
    slot
}

/// Sends `req` to `addr`: over the worker's HTTP/2 connection to the node when it has one (or
/// the service speaks only HTTP/2), else on an idle HTTP/1.1 connection of this thread, or on
/// a new connection from `connector`.
///
/// A node may close an idle connection just as it is reused (or an HTTP/2 one with GOAWAY);
/// hyper hands such a request back unsent, and it goes on the next connection, so the race
/// never reaches the app.
pub async fn send(
    connector: &Connector,
    addr: SocketAddr,
    host_name: Option<&str>,
    mut req: Request<RequestBody>,
) -> Result<(Response<Incoming>, Lease), Unsent> {
    let key = (addr, connector.pool_id());
    if connector.h2_only() || !connector.lean() && has_shared_h2(key) {
        return Box::pin(send_h2(connector, addr, host_name, key, req)).await;
    }
    while let Some(mut sender) = take(&IDLE, key) {
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok((resp, lent(sender, key))),
            Err(mut e) => match e.take_message() {
                Some(unsent) => req = unsent,
                None => return Err(Unsent::sent(SendError::Request(e.into_error()))),
            },
        }
    }
    // Boxed: opening a connection is the rare path, and its future would otherwise make every
    // request's future (moved a few times per request) several times larger.
    match Box::pin(connector.connect(addr, host_name)).await {
        Ok(NodeConn::Http1(sender)) => first_request(sender, key, req).await,
        // ALPN chose HTTP/2 (`auto`): the connection is shared from now on.
        Ok(NodeConn::H2(sender)) => {
            let slot = share_h2(key, &sender);
            Box::pin(stream_on(sender, slot, key, connector.is_tls(), addr, req)).await
        }
        Err(error) => Err(Unsent {
            error,
            request: Some(req),
        }),
    }
}

/// A new HTTP/1.1 connection takes its first request before its task has run once.
async fn first_request(
    mut sender: SendRequest<RequestBody>,
    key: Key,
    req: Request<RequestBody>,
) -> Result<(Response<Incoming>, Lease), Unsent> {
    match sender.try_send_request(req).await {
        Ok(resp) => Ok((resp, lent(sender, key))),
        Err(mut e) => Err(Unsent {
            request: e.take_message(),
            error: SendError::Request(e.into_error()),
        }),
    }
}

fn lent(sender: SendRequest<RequestBody>, key: Key) -> Lease {
    Lease {
        sender: Some(sender),
        key,
        _stream: None,
    }
}

/// Sends `req` as a stream of one of the worker's HTTP/2 connections to the node with a
/// stream to spare, opening one if none has; a connection found closed (GOAWAY, gone) is
/// replaced once.
async fn send_h2(
    connector: &Connector,
    addr: SocketAddr,
    host_name: Option<&str>,
    key: Key,
    mut req: Request<RequestBody>,
) -> Result<(Response<Incoming>, Lease), Unsent> {
    absolute_uri(&mut req, connector.is_tls(), addr);
    for last in [false, true] {
        let (mut sender, slot) = match h2_stream(connector, addr, host_name, key).await {
            Ok(Stream::H2(sender, slot)) => (sender, slot),
            // `auto` over TLS, and the node chose HTTP/1.1.
            Ok(Stream::Http1(sender)) => return first_request(sender, key, req).await,
            Err(error) => {
                return Err(Unsent {
                    error,
                    request: Some(req),
                })
            }
        };
        if sender.ready().await.is_err() && !last {
            continue;
        }
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok((resp, streamed(key, slot))),
            Err(mut e) => match e.take_message() {
                Some(unsent) if !last => req = unsent,
                unsent => {
                    return Err(Unsent {
                        request: unsent,
                        error: SendError::Request(e.into_error()),
                    })
                }
            },
        }
    }
    unreachable!("the last try always returns")
}

/// Where a request to a node goes: a stream of an HTTP/2 connection, or an HTTP/1.1
/// connection when ALPN chose it.
enum Stream {
    H2(http2::SendRequest<RequestBody>, StreamSlot),
    Http1(SendRequest<RequestBody>),
}

/// A stream of a shared connection to `key` with one to spare; else of a new connection.
/// Requests that find a connection being opened wait for it rather than open one each: a
/// burst of requests to a new node opens one connection (and one more per 100 streams), not
/// one per request. After an opening that failed, a request opens its own.
async fn h2_stream(
    connector: &Connector,
    addr: SocketAddr,
    host_name: Option<&str>,
    key: Key,
) -> Result<Stream, SendError> {
    // Whether an opening this request waited for failed: then it opens its own rather than
    // wait for another.
    let mut saw_failure = false;
    let opening = loop {
        if let Some((sender, slot)) = shared_h2(key) {
            return Ok(Stream::H2(sender, slot));
        }
        match Opening::start(key) {
            Err(notify) if !saw_failure => {
                notify.notified().await;
                // Connections to the node but none to spare: wait for the next one opened;
                // none at all: the opening failed.
                saw_failure = !has_shared_h2(key);
            }
            Err(_) => break None,
            Ok(opening) => break Some(opening),
        }
    };
    let stream = match connector.connect(addr, host_name).await? {
        NodeConn::H2(sender) => {
            let slot = share_h2(key, &sender);
            Stream::H2(sender, slot)
        }
        NodeConn::Http1(sender) => Stream::Http1(sender),
    };
    drop(opening);
    Ok(stream)
}

thread_local! {
    /// HTTP/2 connections being opened, by node: requests that find none to spare wait for
    /// it.
    static OPENING_H2: RefCell<FxHashMap<Key, Arc<Notify>>> = RefCell::new(FxHashMap::default());
}

/// Marks an HTTP/2 connection to a node as being opened while it lives; when dropped (opened,
/// failed or abandoned), wakes the requests waiting for it.
struct Opening(Key, Arc<Notify>);

impl Opening {
    /// Marks one, or returns the wake-up of the one already being opened.
    fn start(key: Key) -> Result<Opening, Arc<Notify>> {
        OPENING_H2.with_borrow_mut(|all| match all.get(&key) {
            Some(notify) => Err(notify.clone()),
            None => {
                let notify = Arc::new(Notify::new());
                all.insert(key, notify.clone());
                Ok(Opening(key, notify))
            }
        })
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        OPENING_H2.with_borrow_mut(|all| all.remove(&self.0));
        self.1.notify_waiters();
    }
}

/// Sends `req` as the first stream of a connection just opened.
async fn stream_on(
    mut sender: http2::SendRequest<RequestBody>,
    slot: StreamSlot,
    key: Key,
    tls: bool,
    addr: SocketAddr,
    mut req: Request<RequestBody>,
) -> Result<(Response<Incoming>, Lease), Unsent> {
    absolute_uri(&mut req, tls, addr);
    match sender.try_send_request(req).await {
        Ok(resp) => Ok((resp, streamed(key, slot))),
        Err(mut e) => Err(Unsent {
            request: e.take_message(),
            error: SendError::Request(e.into_error()),
        }),
    }
}

fn streamed(key: Key, slot: StreamSlot) -> Lease {
    Lease {
        sender: None,
        key,
        _stream: Some(slot),
    }
}

/// HTTP/2 names the target by `:scheme` and `:authority`: the request's `Host` (which routing
/// set), else the node's address. The `Host` header itself goes: nginx refuses a request with
/// both (400, "client sent duplicate host header").
pub(crate) fn absolute_uri(req: &mut Request<RequestBody>, tls: bool, addr: SocketAddr) {
    let host = req.headers_mut().remove(http::header::HOST);
    let authority = host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .unwrap_or_else(|| {
            addr.to_string()
                .parse()
                .unwrap_or_else(|_| http::uri::Authority::from_static("localhost"))
        });
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(if tls {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    });
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// Why [`send`] failed, and the request back when none of it was sent (its body unread), so
/// another endpoint can be tried with it.
pub struct Unsent {
    pub error: SendError,
    pub request: Option<Request<RequestBody>>,
}

impl Unsent {
    fn sent(error: SendError) -> Self {
        Unsent {
            error,
            request: None,
        }
    }
}

/// Closes this thread's idle connections that have waited too long, and forgets closed ones,
/// until `stop`. Run once on every runtime that serves requests.
pub async fn sweep(stop: CancellationToken) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = every.tick() => {}
        }
        let now = SWEEPS.get().wrapping_add(1);
        SWEEPS.set(now);
        expire(&IDLE, now);
        expire(&IDLE_LEAN, now);
    }
    // Shutting down: close what this thread keeps.
    IDLE.with_borrow_mut(|idle| idle.clear());
    IDLE_LEAN.with_borrow_mut(|idle| idle.clear());
    SHARED_H2.with_borrow_mut(|shared| shared.clear());
}
