//! gRPC through the sidecar: the errors Outrigger makes itself, in gRPC's shape (HTTP 200 with
//! `grpc-status` and `grpc-message`, as a trailers-only response), so that clients report them
//! as gRPC errors; and `grpc-timeout`, which bounds the request like its deadline.

use std::time::Duration;

use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use super::{ErrorText, ProxyBody, X_OUTRIGGER_ERROR};

/// Whether a request is gRPC (`content-type: application/grpc`, `+proto`, `+json`, ...).
pub(super) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The request's `grpc-timeout` (gRPC over HTTP/2: up to 8 digits and a unit, `H`, `M`, `S`,
/// `m`, `u` or `n`); `None` when absent or malformed.
pub(super) fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// gRPC status codes Outrigger answers with.
const DEADLINE_EXCEEDED: &str = "4";
const RESOURCE_EXHAUSTED: &str = "8";
const UNIMPLEMENTED: &str = "12";
const INTERNAL: &str = "13";
const UNAVAILABLE: &str = "14";

/// Turns one of Outrigger's own error responses into gRPC's shape, keeping
/// `x-outrigger-error`; a node's answer is left as it is.
pub(super) fn reshape(mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let Some(text) = resp.extensions_mut().remove::<ErrorText>() else {
        return resp;
    };
    let cause = resp
        .headers()
        .get(&X_OUTRIGGER_ERROR)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let code = match resp.status() {
        _ if cause.ends_with(b"timeout") => DEADLINE_EXCEEDED,
        StatusCode::NOT_FOUND => UNIMPLEMENTED,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE | StatusCode::PAYLOAD_TOO_LARGE => {
            RESOURCE_EXHAUSTED
        }
        s if s.is_server_error() => UNAVAILABLE,
        _ => INTERNAL,
    };
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from_static(code));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(&text.0)) {
        headers.insert("grpc-message", message);
    }
    *resp.status_mut() = StatusCode::OK;
    *resp.body_mut() = http_body_util::Either::Right(http_body_util::Full::default());
    resp
}

/// gRPC's `grpc-message` encoding: printable ASCII but `%` as is, every other byte as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.trim_end().bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_follow_the_grpc_grammar() {
        let t = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_str(v).expect("value"));
            timeout(&h)
        };
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("a 100% ok\n"), "a 100%25 ok");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }
}
