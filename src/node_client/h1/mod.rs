//! A lean HTTP/1.1 client for the common request: a body known in full (or none) and no
//! protocol switch.
//!
//! hyper's client connection runs as a task of its own and hands each request to it through a
//! channel and each response back through a oneshot: about 40% of the proxy's user-space
//! instructions went there (bench/HISTORY.md). Here the request's own task writes the request
//! and reads the response head, and a response body that has already arrived in full (the
//! usual small answer) returns the connection before the head is even passed on. Streaming
//! request bodies and protocol switches still go through hyper (`connection_pool::send`),
//! which reads and writes at once.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::write_batch::BatchedStream;

/// Header lines parsed without a heap allocation; `HeadLimits::max_headers` above it costs one.
const STACK_HEADERS: usize = 128;
/// A chunk-size line longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;
/// How much is read at a time.
const READ_SIZE: usize = 8 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// A connection that had carried requests before was closed by the node before it
    /// answered anything: it was closed while idle, and the request may go on another one.
    #[error("the node closed the kept-alive connection")]
    Stale,
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The node closed the connection in the middle of a response.
    #[error("the node closed the connection {0}")]
    Closed(&'static str),
    /// The node's response is not valid HTTP/1.1.
    #[error("invalid response from the node: {0}")]
    Malformed(&'static str),
    /// The node's response head is beyond Outrigger's own [`HeadLimits`]: not the node's
    /// failure.
    #[error("the node's response head is over the limit: {0}")]
    OverLimit(&'static str),
}

/// Limits on the response heads (and trailers) read from nodes, the same for the lean client
/// and hyper's (`OUTRIGGER_MAX_HEADERS`, `OUTRIGGER_MAX_RESPONSE_HEADERS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Header fields at most, in a head or in trailers (a count; default 100, as Envoy's
    /// `max_headers_count` and hyper's default).
    pub max_headers: u32,
    /// The largest head in bytes, status line and header fields included (default 60 KiB, as
    /// Envoy's `max_response_headers_kb`).
    pub max_head_bytes: u32,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_headers: 100,
            max_head_bytes: 60 * 1024,
        }
    }
}

/// What is sent: the parts of the app's request, borrowed so that a retry resends them
/// without a copy.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The method.
    pub method: &'a Method,
    /// Path and query (origin form).
    pub path: &'a PathAndQuery,
    /// Headers, hop-by-hop ones already removed.
    pub headers: &'a HeaderMap,
    /// A Host to send in place of the request's (the node's address, when the app named
    /// none).
    pub host: Option<&'a HeaderValue>,
    /// The whole body.
    pub body: &'a Bytes,
}

/// One keep-alive HTTP/1.1 connection to a node.
#[derive(Debug)]
pub struct Connection {
    stream: BatchedStream,
    buf: BytesMut,
    /// True once it has carried a request.
    reused: bool,
    /// When the node's announced keep-alive timeout is about to pass; `None` when it named
    /// none.
    retire_at: Option<Instant>,
    limits: HeadLimits,
}

impl Connection {
    /// A fresh connection, whose responses are read within `limits`. Boxed: it moves through
    /// every request (into the exchange, the response body, back to the pool), and a pointer
    /// moves cheaper than its hundred-odd bytes (about 200 instructions a request in copies).
    pub fn new(stream: TcpStream, limits: HeadLimits) -> Box<Self> {
        Box::new(Connection {
            stream: BatchedStream::new(stream),
            buf: BytesMut::new(),
            reused: false,
            retire_at: None,
            limits,
        })
    }

    /// Whether the node closed the connection (or wrote to it) while it sat idle, or its
    /// announced keep-alive timeout is about to pass. Costs one non-blocking `recv`.
    pub fn is_stale(&mut self) -> bool {
        if !self.buf.is_empty() || self.retire_at.is_some_and(|t| Instant::now() >= t) {
            return true;
        }
        self.stream.closed_or_spoke()
    }

    /// Sends `req` and reads the response head; the body follows from the returned
    /// [`LeanBody`], which hands the connection to `release` once it has been read to the end
    /// and the connection can carry another request.
    pub async fn exchange(
        mut self: Box<Self>,
        req: Outgoing<'_>,
        release: fn(SocketAddr, Box<Connection>),
        addr: SocketAddr,
    ) -> Result<Response<LeanBody>, ExchangeError> {
        let reused = std::mem::replace(&mut self.reused, true);
        let mut out = Vec::with_capacity(256 + req.body.len());
        encode(&req, &mut out);
        if let Err(e) = self.stream.write_all(&out).await {
            return Err(if reused {
                ExchangeError::Stale
            } else {
                e.into()
            });
        }
        let mut answered = false;
        let (head, framing, reuse) = loop {
            let parsed = match parse_head(&mut self.buf, req.method, self.limits)? {
                Some(parsed) => parsed,
                None => {
                    if self.buf.len() > self.limits.max_head_bytes as usize {
                        return Err(ExchangeError::OverLimit(
                            "larger than OUTRIGGER_MAX_RESPONSE_HEADERS",
                        ));
                    }
                    self.buf.reserve(READ_SIZE);
                    let n = match tokio::io::AsyncReadExt::read_buf(&mut self.stream, &mut self.buf)
                        .await
                    {
                        Ok(n) => n,
                        Err(_) if reused && !answered && self.buf.is_empty() => {
                            return Err(ExchangeError::Stale)
                        }
                        Err(e) => return Err(e.into()),
                    };
                    if n == 0 {
                        return Err(if reused && !answered && self.buf.is_empty() {
                            ExchangeError::Stale
                        } else {
                            ExchangeError::Closed("before the response head")
                        });
                    }
                    continue;
                }
            };
            answered = true;
            // 1xx answers (100 Continue, 103 Early Hints) come before the real one.
            if parsed.0.status().is_informational() {
                if parsed.0.status() == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(ExchangeError::Malformed(
                        "a protocol switch nobody asked for",
                    ));
                }
                continue;
            }
            break parsed;
        };
        let body = LeanBody::new(self, framing, reuse, release, addr);
        Ok(head.map(|()| body))
    }
}

/// Writes the request head and body.
fn encode(req: &Outgoing<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut had_length = false;
    for (name, value) in req.headers {
        if *name == CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        if req.host.is_some() && *name == HOST {
            continue;
        }
        push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(host) = req.host {
        push_header(out, b"host", host.as_bytes());
    }
    // The body is known in full, so its length is exact whatever the app said; an empty body
    // gets a length only if the app gave one (a POST with `content-length: 0`).
    if had_length || !req.body.is_empty() {
        let mut digits = itoa::Buffer::new();
        push_header(
            out,
            b"content-length",
            digits.format(req.body.len()).as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(req.body);
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

mod body;
#[cfg(test)]
mod differential;
mod head;
#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;

pub use body::LeanBody;
use head::parse_head;
pub(crate) use head::parse_length;
