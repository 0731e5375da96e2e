//! The headers of a forwarded message: hop-by-hop ones out, forwarding ones in, and the
//! framing of an answer left to hyper when the node's cannot be trusted.

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use super::AppConnection;
use crate::header_list;

/// Headers that describe one connection, not the message; never forwarded (RFC 9110 §7.6.1).
/// `Trailer` is not one of them: it names the message's trailer fields, and hyper sends over
/// HTTP/1.1 only the trailer fields it names. `Expect` is on the list too, as nginx drops it:
/// hyper answers the app's `100-continue` itself when the body is read, and a node sent both
/// the expectation and the body in one write could answer early and read the body as a new
/// request.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::EXPECT,
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// Names the cause of every response Outrigger makes itself, so apps and operators can tell
/// a proxy error from an upstream's.
pub static X_OUTRIGGER_ERROR: HeaderName = HeaderName::from_static("x-outrigger-error");

/// The protocol an app asks to upgrade to, when it asks properly (Connection: upgrade).
pub(super) fn upgrade_token(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = header_list::lists(headers, header::CONNECTION, "upgrade");
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// The index of `name` in [`HOP_BY_HOP`]; by length first, which settles almost every name.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    let i = match name.len() {
        6 if name == "expect" => 0,
        10 if name == "connection" => 1,
        10 if name == "keep-alive" => 2,
        16 if name == "proxy-connection" => 3,
        18 if name == "proxy-authenticate" => 4,
        19 if name == "proxy-authorization" => 5,
        2 if name == "te" => 6,
        17 if name == "transfer-encoding" => 7,
        7 if name == "upgrade" => 8,
        _ => return None,
    };
    Some(i)
}

const CONNECTION_BIT: u16 = 1 << 1;
const TE_BIT: u16 = 1 << 6;

/// Removes hop-by-hop headers, including any the Connection header names; `te: trailers`
/// stays, as Envoy keeps it: it tells the node the app reads trailers, and gRPC servers refuse
/// requests without it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass of cheap length checks over the names finds which are present (most messages
    // carry none, a node's answer often `connection: keep-alive`); only those are removed,
    // instead of nine hashed removals on every message.
    let present = headers
        .keys()
        .filter_map(|name| hop_by_hop_index(name.as_str()))
        .fold(0u16, |bits, i| bits | 1 << i);
    if present == 0 {
        return;
    }
    let te_trailers = present & TE_BIT != 0
        && header_list::elements(headers, header::TE).any(|t| {
            let t = t.split(';').next().unwrap_or_default();
            t.trim().eq_ignore_ascii_case("trailers")
        });
    if present & CONNECTION_BIT != 0 {
        // Names on the list go with it below; others (rare) are collected first.
        let named: Vec<HeaderName> = header_list::elements(headers, header::CONNECTION)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|name| hop_by_hop_index(name.as_str()).is_none())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

pub(super) fn append_forwarded(headers: &mut HeaderMap, app: &AppConnection) {
    // One lookup of the name, where a get and an insert hashed it twice.
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(slot) => {
            slot.insert(app.forwarded_for.clone());
        }
        Entry::Occupied(mut slot) => {
            let value = slot.get().to_str().ok().and_then(|prior| {
                HeaderValue::from_str(&format!("{prior}, {}", app.addr.ip())).ok()
            });
            if let Some(v) = value {
                slot.insert(v);
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
}

/// Drops the node's `content-length`, so that hyper frames the answer to the app from the body
/// actually forwarded (its exact size, or chunked), never from a header the body may not
/// match. A HEAD or 304 answer has no body, and its valid length still describes the resource.
pub(super) fn regenerate_framing<B>(method: &Method, resp: &mut Response<B>) {
    let describes_resource = *method == Method::HEAD || resp.status() == StatusCode::NOT_MODIFIED;
    if describes_resource {
        let valid = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| crate::node_client::h1::parse_length(v.as_bytes()).is_some());
        if valid {
            return;
        }
    }
    resp.headers_mut().remove(header::CONTENT_LENGTH);
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::header::{CONNECTION, TE};

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("gzip"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));

        // Of TE, only "trailers" goes on.
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("gzip;q=0.5, Trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]));
    }

    #[test]
    fn the_fast_hop_by_hop_check_knows_exactly_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(CONNECTION.as_str()), Some(1));
        assert_eq!(hop_by_hop_index(TE.as_str()), Some(6));
        for other in [
            "host",
            "user-agent",
            "content-length",
            "x-forwarded-for",
            "accept",
        ] {
            assert_eq!(hop_by_hop_index(other), None, "{other}");
        }
    }
}
