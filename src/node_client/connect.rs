//! Opens HTTP/1 connections to a service's nodes, with a limit on connections being opened at
//! once, so a service whose nodes stop accepting cannot pile up connection attempts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::node_client::h1::{ExchangeError, HeadLimits};
use crate::node_client::tls::{NodeTls, TlsFailure};
use crate::node_client::UpstreamProtocol;

/// How long an HTTP/2 connection to a node may be silent before a PING, and how long the
/// PING's answer may take.
const H2_PING: std::time::Duration = std::time::Duration::from_secs(20);
use crate::upstream::RequestBody;

/// Why a request could not be sent to a node, split by whether anything reached the node:
/// connection failures may be retried on another node for any request.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Too many connections of the service are already being opened.
    #[error("{max} connections are already being opened (OUTRIGGER_MAX_PENDING_CONNECTS)")]
    PendingConnectsExceeded {
        /// The limit.
        max: u32,
    },
    /// The node did not accept within the connect timeout.
    #[error("connecting timed out after {0:?} (OUTRIGGER_CONNECT_TIMEOUT)")]
    ConnectTimeout(Duration),
    /// The node refused or the network failed while connecting.
    #[error(transparent)]
    Connect(std::io::Error),
    /// The connection was opened but the request failed on it (reset, closed, bad response).
    #[error(transparent)]
    Request(hyper::Error),
    /// The same, on a connection of the lean client.
    #[error(transparent)]
    Exchange(ExchangeError),
    /// The TCP connection was made but the TLS handshake failed: nothing of the request was
    /// sent.
    #[error(transparent)]
    Tls(TlsFailure),
}

impl SendError {
    /// True when nothing reached the node.
    pub fn is_connect(&self) -> bool {
        !matches!(self, SendError::Request(_) | SendError::Exchange(_))
    }

    /// Why TLS with the node failed, when it did: in the handshake, or in an alert the node
    /// sent after it (TLS 1.3 servers refuse a missing client certificate only then).
    pub fn tls_reason(&self) -> Option<String> {
        match self {
            SendError::Tls(failure) => Some(failure.reason.clone()),
            SendError::Request(e) => crate::node_client::tls::alert_in(e),
            _ => None,
        }
    }

    /// True when the node answered with a head beyond Outrigger's own [`HeadLimits`]: the
    /// node did nothing wrong.
    pub fn is_over_limit(&self) -> bool {
        match self {
            SendError::Request(e) => e.is_parse_too_large(),
            SendError::Exchange(e) => matches!(e, ExchangeError::OverLimit(_)),
            _ => false,
        }
    }
}

/// Opens connections for one service.
#[derive(Debug)]
pub struct Connector {
    connect_timeout: Duration,
    pending: AtomicU32,
    max_pending: u32,
    limits: HeadLimits,
    tls: Option<Arc<NodeTls>>,
    protocol: UpstreamProtocol,
}

/// A new connection to a node, as its protocol turned out.
pub enum NodeConn {
    /// HTTP/1.1: one request at a time, lent to each.
    Http1(SendRequest<RequestBody>),
    /// HTTP/2: shared by the worker's requests to the node, a stream each.
    H2(http2::SendRequest<RequestBody>),
}

/// Ends one pending connection when dropped, whether it completed or was abandoned.
struct Pending<'a>(&'a AtomicU32);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// TCP keep-alive on upstream connections, so a node that vanished without a FIN is noticed
/// on an idle pooled connection.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

impl Connector {
    /// A connector with `connect_timeout`, allowing `max_pending` connections in progress,
    /// whose connections read response heads within `limits`.
    pub fn new(
        connect_timeout: Duration,
        max_pending: u32,
        limits: HeadLimits,
        tls: Option<Arc<NodeTls>>,
        protocol: UpstreamProtocol,
    ) -> Self {
        Connector {
            connect_timeout,
            pending: AtomicU32::new(0),
            max_pending,
            limits,
            tls,
            protocol,
        }
    }

    /// A connector like this one (timeouts, limits, protocol) whose connections use `tls`.
    pub fn with_tls(&self, tls: Arc<NodeTls>) -> Connector {
        Connector::new(
            self.connect_timeout,
            self.max_pending,
            self.limits,
            Some(tls),
            self.protocol,
        )
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether the lean HTTP/1.1 client may carry a request: plaintext HTTP/1.1 only; TLS and
    /// HTTP/2 go through hyper's clients.
    pub fn lean(&self) -> bool {
        self.tls.is_none() && self.protocol == UpstreamProtocol::Http1
    }

    /// Whether every connection speaks HTTP/2 (`h2`); with `auto` over TLS some may.
    pub fn h2_only(&self) -> bool {
        self.protocol == UpstreamProtocol::H2
    }

    /// Tells this connector's idle connections apart in the pool: 0 for plaintext, a number
    /// of its own for each service's TLS settings.
    pub fn pool_id(&self) -> u32 {
        self.tls.as_ref().map_or(0, |t| t.pool_id())
    }

    /// The limits on response heads.
    pub fn limits(&self) -> HeadLimits {
        self.limits
    }

    /// Opens a TCP connection to `addr`, within the connect timeout and the pending limit.
    pub async fn open(&self, addr: SocketAddr) -> Result<TcpStream, SendError> {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(SendError::PendingConnectsExceeded {
                max: self.max_pending,
            });
        }
        let guard = Pending(&self.pending);
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(SendError::Connect(e)),
                Err(_) => return Err(SendError::ConnectTimeout(self.connect_timeout)),
            };
        drop(guard);
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        Ok(stream)
    }

    /// Opens a connection to `addr` and starts its HTTP/1.1 or HTTP/2 task (hyper's client)
    /// on the current runtime. Over TLS, the node's certificate is checked against the
    /// configured server name, else `host_name` (the registry's), else the address.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        host_name: Option<&str>,
    ) -> Result<NodeConn, SendError> {
        let stream = self.open(addr).await?;
        let Some(tls) = &self.tls else {
            return match self.protocol {
                UpstreamProtocol::H2 => self.http2(addr, stream).await.map(NodeConn::H2),
                _ => self.http1(addr, stream).await.map(NodeConn::Http1),
            };
        };
        // The handshake within the connect timeout too: a node that accepts and then says
        // nothing must not hold the attempt for the whole request timeout.
        let session = match tokio::time::timeout(
            self.connect_timeout,
            tls.handshake(addr, host_name, stream),
        )
        .await
        {
            Ok(Ok(session)) => session,
            Ok(Err(failure)) => return Err(SendError::Tls(failure)),
            Err(_) => return Err(SendError::ConnectTimeout(self.connect_timeout)),
        };
        // `h2` speaks HTTP/2 whatever ALPN settled (only h2 is offered, so a node that chose
        // HTTP/1.1 already failed the handshake; one that ignores ALPN gets HTTP/2 and fails
        // its handshake if it cannot); `auto` follows the node's choice.
        let h2 = self.protocol == UpstreamProtocol::H2
            || session.get_ref().1.alpn_protocol() == Some(b"h2");
        if h2 {
            self.http2(addr, session).await.map(NodeConn::H2)
        } else {
            self.http1(addr, session).await.map(NodeConn::Http1)
        }
    }

    /// Starts hyper's HTTP/2 client task over `io` (prior knowledge, or after ALPN) on the
    /// current runtime. PINGs a connection silent for 20 s and closes it when the answer does
    /// not come within 20 s, so a node gone without a FIN fails its streams instead of hanging
    /// them.
    async fn http2<I>(
        &self,
        addr: SocketAddr,
        io: I,
    ) -> Result<http2::SendRequest<RequestBody>, SendError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_PING)
            .keep_alive_timeout(H2_PING)
            .max_header_list_size(self.limits.max_head_bytes)
            .handshake(TokioIo::new(io))
            .await
            .map_err(SendError::Request)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(endpoint = %addr, error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Starts hyper's HTTP/1 client task over `io` on the current runtime.
    async fn http1<I>(&self, addr: SocketAddr, io: I) -> Result<SendRequest<RequestBody>, SendError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // The handshake only sets up hyper's state; it performs no I/O for HTTP/1.
        // One flat write per request rather than a writev of head and body (see server/mod.rs).
        // hyper's read buffer bounds the head (at least 8 KiB, its own floor); bodies are read
        // through it in pieces.
        let (sender, connection) = http1::Builder::new()
            .writev(false)
            .max_headers(self.limits.max_headers as usize)
            .max_buf_size((self.limits.max_head_bytes as usize).max(8 * 1024))
            .handshake(TokioIo::new(io))
            .await
            .map_err(SendError::Request)?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(endpoint = %addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}
