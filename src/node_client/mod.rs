//! How Outrigger talks to a node: opening connections (`connect`, with TLS from `tls`), the
//! lean HTTP/1.1 client for the common request (`h1`), and the per-worker pool of idle
//! HTTP/1.1 connections and shared HTTP/2 ones (`pool`), TLS for nodes the registry marks
//! secure (`secure`); hyper's clients do the rest.

pub mod connect;
pub mod h1;
pub mod pool;
pub mod secure;
pub mod tls;

/// The HTTP version spoken to a service's nodes (`OUTRIGGER_UPSTREAM_PROTOCOL`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (the default).
    #[default]
    Http1,
    /// HTTP/2: with prior knowledge in plaintext (h2c), by ALPN over TLS.
    H2,
    /// Over TLS, whichever ALPN settles (h2 first); HTTP/1.1 in plaintext.
    Auto,
}

impl UpstreamProtocol {
    /// The setting's value: `http1`, `h2` or `auto`.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2 => "h2",
            UpstreamProtocol::Auto => "auto",
        }
    }
}

impl std::str::FromStr for UpstreamProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "http1" => Ok(UpstreamProtocol::Http1),
            "h2" => Ok(UpstreamProtocol::H2),
            "auto" => Ok(UpstreamProtocol::Auto),
            _ => Err("http1, h2 or auto".into()),
        }
    }
}
