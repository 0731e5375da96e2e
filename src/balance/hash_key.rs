//! What consistent-hashing policies hash: a header, a cookie, the client address or the path.

use std::fmt;
use std::str::FromStr;

use http::header::{HeaderName, COOKIE};
use xxhash_rust::xxh3::xxh3_64;

use super::PickContext;

/// The request attribute whose hash chooses the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The value of this header.
    Header(HeaderName),
    /// The value of this cookie.
    Cookie(String),
    /// The app's IP address.
    ClientIp,
    /// The request path (without the query).
    Path,
}

impl HashKey {
    /// The key's hash for this request; `None` when the request lacks the key (the policy
    /// then falls back to a weighted random pick rather than piling keyless requests on one
    /// node).
    pub fn hash(&self, ctx: &PickContext<'_>) -> Option<u64> {
        match self {
            HashKey::Header(name) => ctx.headers.get(name).map(|v| xxh3_64(v.as_bytes())),
            HashKey::Cookie(name) => ctx
                .headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then(|| xxh3_64(v.as_bytes()))
                }),
            HashKey::ClientIp => Some(match ctx.client {
                std::net::IpAddr::V4(v4) => xxh3_64(&v4.octets()),
                std::net::IpAddr::V6(v6) => xxh3_64(&v6.octets()),
            }),
            HashKey::Path => Some(xxh3_64(ctx.path.as_bytes())),
        }
    }
}

impl FromStr for HashKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "header:<name>, cookie:<name>, client_ip or path";
        match s.split_once(':') {
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| format!("{name:?} is not a header name; expected {expected}")),
            Some(("cookie", name)) if !name.is_empty() && !name.contains([';', '=', ' ']) => {
                Ok(HashKey::Cookie(name.to_string()))
            }
            None if s == "client_ip" => Ok(HashKey::ClientIp),
            None if s == "path" => Ok(HashKey::Path),
            _ => Err(format!("hash key {s:?}: expected {expected}")),
        }
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::Header(h) => write!(f, "header:{h}"),
            HashKey::Cookie(c) => write!(f, "cookie:{c}"),
            HashKey::ClientIp => f.write_str("client_ip"),
            HashKey::Path => f.write_str("path"),
        }
    }
}
