//! A response body as it arrives on the node's connection: by length, chunked (with
//! trailers) or until close, handed back to the pool once read to the end.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use http::HeaderMap;
use hyper::body::{Frame, SizeHint};
use tokio_util::io::poll_read_buf;

use super::head::{parse_field, Framing, Reuse, RETIRE_MARGIN};
use super::{Connection, ExchangeError, MAX_CHUNK_LINE, READ_SIZE};

/// Where a streamed body stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum State {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// Where a chunked body stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Chunk {
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
    conn: Option<Box<Connection>>,
    state: State,
    reuse: Reuse,
    /// The whole body, when it had arrived with the head.
    complete: Option<Bytes>,
    /// Trailer fields of a chunked body, gathered until the empty line that ends them. Boxed:
    /// most bodies have none, and the body lives in every request's future.
    trailers: Option<Box<HeaderMap>>,
    release: fn(SocketAddr, Box<Connection>),
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
    /// The body of a response framed by `framing`, read from `conn`, which goes to `release`
    /// (with `addr`) once read to the end if `reuse` allows.
    pub(super) fn new(
        conn: Box<Connection>,
        framing: Framing,
        reuse: Reuse,
        release: fn(SocketAddr, Box<Connection>),
        addr: SocketAddr,
    ) -> Self {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size),
            Framing::UntilClose => State::UntilClose,
        };
        let mut body = LeanBody {
            conn: Some(conn),
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
        body
    }

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
                        let max = conn.limits.max_headers as usize;
                        let trailers = self.trailers.get_or_insert_with(Default::default);
                        if trailers.len() >= max {
                            return Poll::Ready(Some(Err(ExchangeError::OverLimit(
                                "more trailer fields than OUTRIGGER_MAX_HEADERS",
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

/// A chunk-size line's size (RFC 9112 7.1: `1*HEXDIG`, then optional `;` extensions, which
/// are ignored): hex digits only, no sign, at most 16 of them, and no control character in
/// the line.
pub(crate) fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    // Whitespace may come before the extensions (BWS), never inside the number.
    let digits = &line[..end];
    let digits = digits
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(&digits[..0], |i| &digits[..=i]);
    let control = |&b: &u8| (b < 0x20 && b != b'\t') || b == 0x7f;
    if digits.is_empty() || digits.len() > 16 || line.iter().any(control) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16)?;
        Some(n << 4 | u64::from(v))
    })
}
