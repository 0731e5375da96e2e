//! What a request names before it is forwarded: the service, the `Host` the node receives and
//! the request-target, and the requests refused before any node is asked.
//!
//! The routing key and the forwarded `Host` come from one place (RFC 9112 3.2.2: a proxy
//! replaces a received `Host` with the absolute-form target's authority), so that a request
//! cannot be routed to one service while telling the node it is for another.

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, StatusCode, Uri};

/// Why a request is refused before routing; each is a 4xx with `x-outrigger-error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// More than one `Host` header (RFC 9112 3.2: 400).
    DuplicateHost,
    /// A `Host` header that is not a plain `host[:port]` (user info, an unreadable value).
    InvalidHost,
    /// `CONNECT`: Outrigger opens no tunnels (405).
    Connect,
    /// The asterisk-form target (`*`) with a method other than OPTIONS (400).
    AsteriskTarget,
}

impl HeadError {
    /// The status, the `x-outrigger-error` cause and the message of the refusal.
    pub(crate) fn parts(self) -> (StatusCode, &'static str, &'static str) {
        match self {
            HeadError::DuplicateHost => (
                StatusCode::BAD_REQUEST,
                "duplicate-host",
                "the request has more than one Host header",
            ),
            HeadError::InvalidHost => (
                StatusCode::BAD_REQUEST,
                "invalid-host",
                "the Host header is not host[:port]",
            ),
            HeadError::Connect => (
                StatusCode::METHOD_NOT_ALLOWED,
                "connect-not-supported",
                "CONNECT is not supported: send plain HTTP requests to Outrigger",
            ),
            HeadError::AsteriskTarget => (
                StatusCode::BAD_REQUEST,
                "invalid-target",
                "the request-target * is only for OPTIONS",
            ),
        }
    }
}

/// What a request names.
#[derive(Debug, PartialEq)]
pub(crate) struct Target<'r> {
    /// The service: the target's host (also HTTP/2's `:authority`), else the `Host` header's,
    /// without port or user info; `None` when the request names none.
    pub service: Option<&'r str>,
    /// The `Host` the node must receive instead of the request's own, when they differ: the
    /// target's authority without user info.
    pub replace_host: Option<HeaderValue>,
    /// Whether the node will receive a `Host` (the request's own, or `replace_host`): the
    /// request path need not look the header up again.
    pub names_host: bool,
}

/// Reads what `req` names, or why it is refused.
pub(crate) fn target<B>(req: &Request<B>) -> Result<Target<'_>, HeadError> {
    if req.method() == Method::CONNECT {
        return Err(HeadError::Connect);
    }
    if req.uri().path() == "*" && req.method() != Method::OPTIONS {
        return Err(HeadError::AsteriskTarget);
    }
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HeadError::DuplicateHost);
    }
    if let Some(authority) = req.uri().authority() {
        // `Authority::host` leaves out user info and port; what follows the last '@' is the
        // authority the node may see.
        let s = authority.as_str();
        let without_userinfo = s.rsplit('@').next().unwrap_or(s);
        let replace_host = match host {
            Some(h) if h.as_bytes() == without_userinfo.as_bytes() => None,
            _ => Some(HeaderValue::from_str(without_userinfo).map_err(|_| HeadError::InvalidHost)?),
        };
        let service = Some(authority.host()).filter(|h| !h.is_empty());
        return Ok(Target {
            service,
            replace_host,
            names_host: true,
        });
    }
    let Some(host) = host else {
        return Ok(Target {
            service: None,
            replace_host: None,
            names_host: false,
        });
    };
    let host = host.to_str().map_err(|_| HeadError::InvalidHost)?;
    let (name, port) = split_host(host)?;
    // A port, when given, is digits within 0..=65535 (RFC 9112 3.2: a Host that is not
    // `host[:port]` is a 400).
    let bad_port = |p: &str| {
        p.len() > 5
            || p.bytes().any(|b| !b.is_ascii_digit())
            || p.bytes().fold(0u32, |n, b| n * 10 + u32::from(b - b'0')) > 65535
    };
    if port.is_some_and(bad_port) {
        return Err(HeadError::InvalidHost);
    }
    Ok(Target {
        service: (!name.is_empty()).then_some(name),
        replace_host: None,
        names_host: true,
    })
}

/// A Host value (visible ASCII, from `HeaderValue::to_str`) split into name and port: no
/// white space, user info, path, query or fragment; an IPv6 literal in brackets.
fn split_host(host: &str) -> Result<(&str, Option<&str>), HeadError> {
    let bytes = host.as_bytes();
    // Byte searches, not `split_once`: its searcher's set-up outweighs a Host's few bytes.
    if bytes
        .iter()
        .any(|b| matches!(b, b'@' | b'/' | b' ' | b'\t' | b'?' | b'#'))
    {
        return Err(HeadError::InvalidHost);
    }
    if let Some(v6) = host.strip_prefix('[') {
        let close = v6
            .bytes()
            .position(|b| b == b']')
            .ok_or(HeadError::InvalidHost)?;
        return match &v6[close + 1..] {
            "" => Ok((&v6[..close], None)),
            rest => match rest.strip_prefix(':') {
                Some(port) => Ok((&v6[..close], Some(port))),
                None => Err(HeadError::InvalidHost),
            },
        };
    }
    Ok(match bytes.iter().position(|&b| b == b':') {
        Some(i) => (&host[..i], Some(&host[i + 1..])),
        None => (host, None),
    })
}

/// The request-target sent to the node, in origin form: the path and query, with `/` for an
/// empty path (`http://orders?x=1` goes out as `/?x=1`, RFC 9112 3.2.1), and `*` kept for
/// OPTIONS.
pub(crate) fn origin_form(uri: &Uri) -> PathAndQuery {
    match uri.path_and_query() {
        // `PathAndQuery::path` says `/` for an empty path; the text says what will be sent.
        Some(pq) if pq.as_str().starts_with('/') || pq.as_str() == "*" => pq.clone(),
        Some(pq) => format!("/{}", pq.as_str())
            .parse()
            .unwrap_or_else(|_| PathAndQuery::from_static("/")),
        None => PathAndQuery::from_static("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn the_forwarded_host_is_the_one_routing_used() {
        let r = req(Method::GET, "http://orders/a", &["other.example"]);
        let t = target(&r).expect("ok");
        assert_eq!(t.service, Some("orders"));
        assert_eq!(t.replace_host.expect("replaced"), "orders");

        let r = req(Method::GET, "http://user:secret@orders:8080/c", &[]);
        let t = target(&r).expect("ok");
        assert_eq!(t.service, Some("orders"));
        assert_eq!(t.replace_host.expect("replaced"), "orders:8080");

        let r = req(Method::GET, "http://orders/a", &["orders"]);
        assert_eq!(target(&r).expect("ok").replace_host, None);

        let r = req(Method::GET, "/a", &["users:8080"]);
        let t = target(&r).expect("ok");
        assert_eq!((t.service, t.replace_host), (Some("users"), None));

        let r = req(Method::GET, "/a", &["[::1]:80"]);
        assert_eq!(target(&r).expect("ok").service, Some("::1"));

        let r = req(Method::GET, "/a", &[]);
        assert_eq!(target(&r).expect("ok").service, None);
    }

    #[test]
    fn ambiguous_or_unsupported_heads_are_refused() {
        let r = req(Method::GET, "/a", &["orders", "users"]);
        assert_eq!(target(&r), Err(HeadError::DuplicateHost));
        let r = req(Method::GET, "/a", &["user:pw@orders"]);
        assert_eq!(target(&r), Err(HeadError::InvalidHost));
        for bad in [
            "orders:abc",
            "orders:99999",
            "orders:1:2",
            "[::1",
            "[::1]x",
            "ord ers",
            "orders\t",
        ] {
            let r = req(Method::GET, "/a", &[bad]);
            assert_eq!(target(&r), Err(HeadError::InvalidHost), "{bad}");
        }
        let mut r = req(Method::GET, "/a", &[]);
        let obs_text = HeaderValue::from_bytes("örders".as_bytes()).expect("obs-text is a value");
        r.headers_mut().insert(HOST, obs_text);
        assert_eq!(target(&r), Err(HeadError::InvalidHost));
        let r = req(Method::GET, "/a", &["orders:"]);
        assert!(target(&r).is_ok(), "an empty port is allowed (RFC 3986)");
        let r = req(Method::CONNECT, "orders:443", &["orders:443"]);
        assert_eq!(target(&r), Err(HeadError::Connect));
        let r = req(Method::GET, "*", &["orders"]);
        assert_eq!(target(&r), Err(HeadError::AsteriskTarget));
        let r = req(Method::OPTIONS, "*", &["orders"]);
        assert!(target(&r).is_ok());
    }

    #[test]
    fn the_origin_form_always_starts_with_a_slash() {
        let f = |u: &str| origin_form(&u.parse::<Uri>().expect("uri")).to_string();
        assert_eq!(f("http://orders?x=1"), "/?x=1");
        assert_eq!(f("http://orders"), "/");
        assert_eq!(f("http://orders/a/b?c"), "/a/b?c");
        assert_eq!(f("/p"), "/p");
        assert_eq!(f("*"), "*");
    }
}
