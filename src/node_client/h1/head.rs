//! The response head: parsing it, and what it says of the body's framing and of the
//! connection's reuse (RFC 9112 6.3, 9.3).

use std::time::Duration;

use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};

use super::{ExchangeError, HeadLimits, STACK_HEADERS};
use crate::header_list;

/// The `Keep-Alive` response header (RFC 2068 19.7.1), which names the node's idle timeout.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Whether the node keeps the connection open after a response, and for how long idle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Reuse {
    /// `Connection: close`, HTTP/1.0 without keep-alive, or a body read until close.
    Close,
    /// Kept open; the pool's own idle limit applies.
    KeepAlive,
    /// Kept open for this long idle (`Keep-Alive: timeout=N`, RFC 2068 19.7.1; Node.js sends
    /// 5 s).
    For(Duration),
}

/// How long before a node's announced keep-alive timeout its connection is retired.
pub(super) const RETIRE_MARGIN: Duration = Duration::from_secs(1);

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
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Parses a response head from the front of `buf`, removing it; `None` if it is not all there
/// yet.
#[allow(clippy::type_complexity)]
pub(super) fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    limits: HeadLimits,
) -> Result<Option<(Response<()>, Framing, Reuse)>, ExchangeError> {
    let max_headers = limits.max_headers as usize;
    let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut heap = Vec::new();
    let slots = if max_headers <= STACK_HEADERS {
        &mut stack[..max_headers]
    } else {
        heap.resize(max_headers, httparse::EMPTY_HEADER);
        &mut heap[..]
    };
    let mut parsed = httparse::Response::new(slots);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ExchangeError::OverLimit(
                "more header fields than OUTRIGGER_MAX_HEADERS",
            ))
        }
        Err(_) => return Err(ExchangeError::Malformed("unparsable response head")),
    };
    if len > limits.max_head_bytes as usize {
        return Err(ExchangeError::OverLimit(
            "larger than OUTRIGGER_MAX_RESPONSE_HEADERS",
        ));
    }
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
    // Most answers have no Keep-Alive header: a look at the lengths instead of a hashed lookup.
    let names_keep_alive = parsed
        .headers
        .iter()
        .any(|h| h.name.len() == 10 && h.name.eq_ignore_ascii_case("keep-alive"));
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
    let timeout = names_keep_alive
        .then(|| keep_alive_timeout(&headers))
        .flatten();
    let reuse = match timeout {
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
    let value = trim_ows(value);
    if value.is_empty() || value.len() > 20 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// `value` without leading and trailing spaces and tabs (RFC 9110 5.6.3 OWS; not the other
/// ASCII whitespace `trim_ascii` removes).
fn trim_ows(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &value[start..end.max(start)]
}

/// One `name: value` field line, as in a chunked body's trailers.
pub(super) fn parse_field(line: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = HeaderName::from_bytes(&line[..colon]).ok()?;
    let value = line[colon + 1..].trim_ascii();
    Some((name, HeaderValue::from_bytes(value).ok()?))
}
