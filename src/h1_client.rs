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
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};

/// The `Keep-Alive` response header (RFC 2068 19.7.1), which names the node's idle timeout.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
use hyper::body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use crate::header_list;
use crate::write_batch::BatchedStream;

/// Response heads larger than this are refused.
const MAX_HEAD: usize = 64 * 1024;
/// Response header lines at most.
const MAX_HEADERS: usize = 128;
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
}

impl Connection {
    /// A fresh connection.
    pub fn new(stream: TcpStream) -> Self {
        Connection {
            stream: BatchedStream::new(stream),
            buf: BytesMut::new(),
            reused: false,
            retire_at: None,
        }
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
        mut self,
        req: Outgoing<'_>,
        release: fn(SocketAddr, Connection),
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
            let parsed = match parse_head(&mut self.buf, req.method)? {
                Some(parsed) => parsed,
                None => {
                    if self.buf.len() > MAX_HEAD {
                        return Err(ExchangeError::Malformed("response head too large"));
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
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size),
            Framing::UntilClose => State::UntilClose,
        };
        let mut body = LeanBody {
            conn: Some(self),
            state,
            reuse: if matches!(framing, Framing::UntilClose) {
                Reuse::Close
            } else {
                reuse
            },
            complete: None,
            trailers: None,
            release,
            addr,
        };
        body.take_if_complete();
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

/// Whether the node keeps the connection open after a response, and for how long idle.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reuse {
    /// `Connection: close`, HTTP/1.0 without keep-alive, or a body read until close.
    Close,
    /// Kept open; the pool's own idle limit applies.
    KeepAlive,
    /// Kept open for this long idle (`Keep-Alive: timeout=N`, RFC 2068 19.7.1; Node.js sends
    /// 5 s).
    For(Duration),
}

/// How long before a node's announced keep-alive timeout its connection is retired.
const RETIRE_MARGIN: Duration = Duration::from_secs(1);

/// The `timeout=N` parameter of the `Keep-Alive` header, in seconds.
fn keep_alive_timeout(headers: &HeaderMap) -> Option<u64> {
    header_list::elements(headers, &KEEP_ALIVE).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("timeout")
            .then(|| parse_length(value.trim().trim_matches('"').as_bytes()))
            .flatten()
    })
}

/// How a response body is delimited (RFC 9112, 6.3).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Parses a response head from the front of `buf`, removing it; `None` if it is not all there
/// yet.
#[allow(clippy::type_complexity)]
fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<(Response<()>, Framing, Reuse)>, ExchangeError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ExchangeError::Malformed("too many header lines"))
        }
        Err(_) => return Err(ExchangeError::Malformed("unparsable response head")),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(ExchangeError::Malformed("invalid status code"))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Names are read while the parser still borrows the buffer; values then become slices of
    // the frozen head, as hyper does: no copy.
    let base = buf.as_ptr() as usize;
    let names = parsed
        .headers
        .iter()
        .map(|h| {
            let start = h.value.as_ptr() as usize - base;
            HeaderName::from_bytes(h.name.as_bytes())
                .map(|name| (name, start, start + h.value.len()))
                .map_err(|_| ExchangeError::Malformed("invalid header name"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(names.len());
    for (name, start, end) in names {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| ExchangeError::Malformed("invalid header value"))?;
        headers.append(name, value);
    }
    let framing = framing(method, version, status, &headers)?;
    let keep_alive = match version {
        Version::HTTP_10 => header_list::lists(&headers, CONNECTION, "keep-alive"),
        _ => !header_list::lists(&headers, CONNECTION, "close"),
    };
    let reuse = match keep_alive_timeout(&headers) {
        _ if !keep_alive => Reuse::Close,
        Some(secs) => Reuse::For(Duration::from_secs(secs)),
        None => Reuse::KeepAlive,
    };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Some((response, framing, reuse)))
}

fn framing(
    method: &Method,
    version: Version,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<Framing, ExchangeError> {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    let lengths = headers.get_all(CONTENT_LENGTH);
    let codings = headers.get_all(TRANSFER_ENCODING);
    if codings.iter().next().is_some() {
        if codings.iter().any(|v| v.to_str().is_err()) {
            return Err(ExchangeError::Malformed("invalid transfer-encoding"));
        }
        // RFC 9112 6.1 and 6.3: a message with both, or an HTTP/1.0 one with a
        // transfer-coding, is a framing error (and a request-smuggling vector), and the
        // connection cannot be trusted with another message.
        if version == Version::HTTP_10 {
            return Err(ExchangeError::Malformed(
                "transfer-encoding in an HTTP/1.0 response",
            ));
        }
        if lengths.iter().next().is_some() {
            return Err(ExchangeError::Malformed(
                "both content-length and transfer-encoding",
            ));
        }
        // Only `chunked` is decoded; another coding (gzip, chunked) could not be passed on,
        // since transfer-codings are hop-by-hop and HTTP/2 has none.
        let mut codings = header_list::elements(headers, TRANSFER_ENCODING);
        let only_chunked = codings
            .next()
            .is_some_and(|c| c.eq_ignore_ascii_case("chunked"))
            && codings.next().is_none();
        return if only_chunked {
            Ok(Framing::Chunked)
        } else {
            Err(ExchangeError::Malformed(
                "a transfer-coding other than chunked",
            ))
        };
    }
    let mut length = None;
    for v in lengths {
        let n =
            parse_length(v.as_bytes()).ok_or(ExchangeError::Malformed("invalid content-length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(ExchangeError::Malformed(
                "conflicting content-length values",
            ));
        }
        length = Some(n);
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// A content-length value: digits only (RFC 9110 8.6: `1*DIGIT`; no sign, no list), within
/// u64.
pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// A chunk-size line's size (RFC 9112 7.1: `1*HEXDIG`, then optional `;` extensions, which
/// are ignored): hex digits only, no sign, at most 16 of them.
pub(crate) fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    // Whitespace may come before the extensions (BWS), never inside the number.
    let digits = line[..end].trim_ascii_end();
    if digits.is_empty() || digits.len() > 16 || line.contains(&b'\n') {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16)?;
        Some(n << 4 | u64::from(v))
    })
}

/// One `name: value` field line, as in a chunked body's trailers.
fn parse_field(line: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = HeaderName::from_bytes(&line[..colon]).ok()?;
    let value = line[colon + 1..].trim_ascii();
    Some((name, HeaderValue::from_bytes(value).ok()?))
}

/// Where a streamed body stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// Where a chunked body stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk.
    DataEnd,
    /// Expecting trailer lines up to an empty one.
    Trailers,
}

/// A response body read by [`Connection::exchange`]'s caller, frame by frame; hands the
/// connection back once it has been read to the end.
pub struct LeanBody {
    conn: Option<Connection>,
    state: State,
    reuse: Reuse,
    /// The whole body, when it had arrived with the head.
    complete: Option<Bytes>,
    /// Trailer fields of a chunked body, gathered until the empty line that ends them. Boxed:
    /// most bodies have none, and the body lives in every request's future.
    trailers: Option<Box<HeaderMap>>,
    release: fn(SocketAddr, Connection),
    addr: SocketAddr,
}

impl std::fmt::Debug for LeanBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeanBody")
            .field("state", &self.state)
            .field("addr", &self.addr)
            .finish()
    }
}

impl LeanBody {
    /// A fixed-length body already in the buffer is taken at once, and the connection goes
    /// back before the response is passed on.
    fn take_if_complete(&mut self) {
        if let (State::Length(n), Some(conn)) = (self.state, self.conn.as_mut()) {
            if conn.buf.len() as u64 >= n {
                self.complete = Some(conn.buf.split_to(n as usize).freeze());
                self.state = State::Done;
            }
        }
        if self.state == State::Done {
            self.finish();
        }
    }

    /// The body is done: the connection goes back if it can carry another request.
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(conn) = self.conn.take() {
            if !conn.buf.is_empty() {
                return;
            }
            match self.reuse {
                Reuse::Close => {}
                Reuse::KeepAlive => (self.release)(self.addr, conn),
                Reuse::For(timeout) => {
                    // Retired a second before the node's own timeout, so that it is never
                    // reused as the node closes it; not kept at all with a second or less.
                    if let Some(left) = timeout.checked_sub(RETIRE_MARGIN).filter(|d| !d.is_zero())
                    {
                        let mut conn = conn;
                        conn.retire_at = Some(Instant::now() + left);
                        (self.release)(self.addr, conn);
                    }
                }
            }
        }
    }

    fn poll_chunked(
        &mut self,
        cx: &mut Context<'_>,
        mut chunk: Chunk,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match chunk {
                Chunk::Size | Chunk::Trailers => {
                    let Some(end) = conn.buf.windows(2).position(|w| w == b"\r\n") else {
                        if conn.buf.len() > MAX_CHUNK_LINE {
                            return Poll::Ready(Some(Err(ExchangeError::Malformed(
                                "chunk line too long",
                            ))));
                        }
                        ready!(self.poll_fill(cx, "in a chunked body"))?;
                        continue;
                    };
                    let line = conn.buf.split_to(end + 2);
                    let line = &line[..end];
                    if chunk == Chunk::Trailers {
                        // An empty line ends the body; the fields before it go on as one
                        // trailers frame (gRPC-web and HTTP/2 apps read status there).
                        if line.is_empty() {
                            self.finish();
                            return Poll::Ready(
                                self.trailers.take().map(|t| Ok(Frame::trailers(*t))),
                            );
                        }
                        let trailers = self.trailers.get_or_insert_with(Default::default);
                        if trailers.len() >= MAX_HEADERS {
                            return Poll::Ready(Some(Err(ExchangeError::Malformed(
                                "too many trailer fields",
                            ))));
                        }
                        match parse_field(line) {
                            Some((name, value)) => {
                                trailers.append(name, value);
                            }
                            None => {
                                return Poll::Ready(Some(Err(ExchangeError::Malformed(
                                    "invalid trailer field",
                                ))))
                            }
                        }
                        continue;
                    }
                    let size = parse_chunk_size(line)
                        .ok_or(ExchangeError::Malformed("invalid chunk size"));
                    chunk = match size {
                        Ok(0) => Chunk::Trailers,
                        Ok(n) => Chunk::Data(n),
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    };
                    self.state = State::Chunked(chunk);
                }
                Chunk::Data(left) => {
                    if conn.buf.is_empty() {
                        ready!(self.poll_fill(cx, "in a chunked body"))?;
                        continue;
                    }
                    let n = left.min(conn.buf.len() as u64);
                    let data = conn.buf.split_to(n as usize).freeze();
                    self.state = State::Chunked(if n == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n)
                    });
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Chunk::DataEnd => {
                    if conn.buf.len() < 2 {
                        ready!(self.poll_fill(cx, "in a chunked body"))?;
                        continue;
                    }
                    if &conn.buf[..2] != b"\r\n" {
                        return Poll::Ready(Some(Err(ExchangeError::Malformed(
                            "chunk not ended by CRLF",
                        ))));
                    }
                    conn.buf.advance(2);
                    chunk = Chunk::Size;
                    self.state = State::Chunked(chunk);
                }
            }
        }
    }

    /// Reads more into the buffer; an end of stream is an error `when` the body is not done.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        when: &'static str,
    ) -> Poll<Result<usize, ExchangeError>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        conn.buf.reserve(READ_SIZE);
        let n = ready!(poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.buf))?;
        if n == 0 && self.state != State::UntilClose {
            self.conn = None;
            return Poll::Ready(Err(ExchangeError::Closed(when)));
        }
        Poll::Ready(Ok(n))
    }
}

impl hyper::body::Body for LeanBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        let this = &mut *self;
        if let Some(data) = this.complete.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        loop {
            match this.state {
                State::Done => return Poll::Ready(None),
                State::Chunked(chunk) => return this.poll_chunked(cx, chunk),
                State::Length(left) => {
                    let buffered = this.conn.as_ref().map_or(0, |c| c.buf.len());
                    if buffered == 0 {
                        ready!(this.poll_fill(cx, "in the middle of the body"))?;
                        continue;
                    }
                    let n = left.min(buffered as u64);
                    let Some(conn) = this.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    let data = conn.buf.split_to(n as usize).freeze();
                    if n == left {
                        this.finish();
                    } else {
                        this.state = State::Length(left - n);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::UntilClose => {
                    let buffered = this.conn.as_ref().map_or(0, |c| c.buf.len());
                    if buffered > 0 {
                        let Some(conn) = this.conn.as_mut() else {
                            return Poll::Ready(None);
                        };
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if ready!(this.poll_fill(cx, "in the middle of the body"))? == 0 {
                        this.conn = None;
                        this.state = State::Done;
                        return Poll::Ready(None);
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.complete.is_none() && self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.complete, self.state) {
            (Some(data), _) => SizeHint::with_exact(data.len() as u64),
            (None, State::Done) => SizeHint::with_exact(0),
            (None, State::Length(left)) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::Mutex;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    static RELEASED: Mutex<Vec<SocketAddr>> = Mutex::new(Vec::new());

    fn remember(addr: SocketAddr, _conn: Connection) {
        RELEASED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(addr);
    }

    fn released(addr: SocketAddr) -> bool {
        RELEASED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&addr)
    }

    /// A node that reads one request head and answers with `answer`, written in pieces
    /// `split` bytes apart (to cross read boundaries), then keeps the connection open until
    /// the client closes it, or closes it if `close` is set.
    async fn node(answer: &'static [u8], split: usize, close: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            for piece in answer.chunks(split.max(1)) {
                let _ = s.write_all(piece).await;
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            if !close {
                let _ = s.read(&mut byte).await;
            }
        });
        addr
    }

    /// The response head, its body and its trailers.
    type Got = (Response<()>, Bytes, Option<HeaderMap>);

    async fn get(addr: SocketAddr, method: Method) -> Result<Got, ExchangeError> {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let headers = HeaderMap::new();
        let path = PathAndQuery::from_static("/");
        let host = HeaderValue::from_static("node");
        let body = Bytes::new();
        let req = Outgoing {
            method: &method,
            path: &path,
            headers: &headers,
            host: Some(&host),
            body: &body,
        };
        let resp = Connection::new(stream)
            .exchange(req, remember, addr)
            .await?;
        let (head, body) = resp.into_parts();
        let collected = body.collect().await?;
        let trailers = collected.trailers().cloned();
        Ok((
            Response::from_parts(head, ()),
            collected.to_bytes(),
            trailers,
        ))
    }

    #[tokio::test]
    async fn a_chunked_body_split_across_reads_is_decoded_with_its_trailers_and_the_connection_kept(
    ) {
        let addr = node(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: t\r\ngrpc-status:0\r\n\r\n",
            7,
            false,
        )
        .await;
        let (head, body, trailers) = get(addr, Method::GET).await.expect("a response");
        assert_eq!(head.status(), 200);
        assert_eq!(&body[..], b"hello, world");
        let trailers = trailers.expect("the trailer fields are passed on");
        assert_eq!(trailers["x-trailer"], "t");
        assert_eq!(trailers["grpc-status"], "0");
        assert!(
            released(addr),
            "a finished keep-alive body returns its connection"
        );
    }

    #[tokio::test]
    async fn informational_answers_are_skipped_and_a_length_body_read() {
        let addr = node(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 3\r\n\r\nabc",
            5,
            false,
        )
        .await;
        let (head, body, _) = get(addr, Method::GET).await.expect("a response");
        assert_eq!(head.status(), 201);
        assert_eq!(&body[..], b"abc");
        assert!(released(addr));
    }

    #[tokio::test]
    async fn a_body_without_length_runs_until_close_and_the_connection_is_not_kept() {
        let addr = node(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", 4, true).await;
        let (_, body, _) = get(addr, Method::GET).await.expect("a response");
        assert_eq!(&body[..], b"until the end");
        assert!(!released(addr));
    }

    #[tokio::test]
    async fn connection_close_is_honoured_and_head_has_no_body() {
        let closing = node(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            100,
            false,
        )
        .await;
        let (_, body, _) = get(closing, Method::GET).await.expect("a response");
        assert_eq!(&body[..], b"ok");
        assert!(!released(closing), "connection: close must not be reused");

        let head = node(
            b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
            100,
            false,
        )
        .await;
        let (resp, body, _) = get(head, Method::HEAD).await.expect("a response");
        assert_eq!(resp.headers()[CONTENT_LENGTH], "1000");
        assert!(body.is_empty());
        assert!(released(head));
    }

    #[tokio::test]
    async fn a_body_cut_short_and_a_malformed_head_are_errors() {
        let short = node(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
            100,
            true,
        )
        .await;
        assert!(matches!(
            get(short, Method::GET).await,
            Err(ExchangeError::Closed(_))
        ));
        let garbage = node(b"SMTP ready\r\n\r\n", 100, true).await;
        assert!(matches!(
            get(garbage, Method::GET).await,
            Err(ExchangeError::Malformed(_))
        ));
        let conflicting = node(
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
            100,
            true,
        )
        .await;
        assert!(matches!(
            get(conflicting, Method::GET).await,
            Err(ExchangeError::Malformed(_))
        ));
        let bad_trailer = node(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\nno colon here\r\n\r\n",
            100,
            true,
        )
        .await;
        assert!(matches!(
            get(bad_trailer, Method::GET).await,
            Err(ExchangeError::Malformed("invalid trailer field"))
        ));
    }

    #[test]
    fn the_request_carries_the_node_host_and_an_exact_length() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("orders"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("999"));
        headers.insert("x-a", HeaderValue::from_static("1"));
        let path = PathAndQuery::from_static("/p?q=1");
        let host = HeaderValue::from_static("127.0.0.1:9");
        let body = Bytes::from_static(b"data");
        let mut out = Vec::new();
        encode(
            &Outgoing {
                method: &Method::POST,
                path: &path,
                headers: &headers,
                host: Some(&host),
                body: &body,
            },
            &mut out,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "POST /p?q=1 HTTP/1.1\r\nx-a: 1\r\nhost: 127.0.0.1:9\r\ncontent-length: 4\r\n\r\ndata"
        );
    }
}
