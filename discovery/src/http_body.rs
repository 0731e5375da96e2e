//! What the HTTP registry adapters share: reading a bounded body, and naming servers.

use crate::DiscoveryError;

/// Answers larger than this are rejected whole rather than read.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Reads a successful response's body, refusing non-2xx statuses and bodies over
/// [`MAX_BODY_BYTES`], so one broken registry answer cannot exhaust memory.
pub async fn read(mut resp: reqwest::Response, registry: &str) -> Result<Vec<u8>, DiscoveryError> {
    if !resp.status().is_success() {
        return Err(DiscoveryError::Status {
            registry: registry.to_string(),
            status: resp.status().as_u16(),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| DiscoveryError::http_transport(registry, "", e))?
    {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(DiscoveryError::TooLarge {
                registry: registry.to_string(),
                limit: MAX_BODY_BYTES,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// How a source shows its servers: `scheme://host:port,host:port`, TLS as `scheme+https`, and
/// never credentials (servers are stored without them).
pub fn describe(scheme: &str, servers: &[String]) -> String {
    let tls = servers.first().is_some_and(|s| s.starts_with("https://"));
    // Never a server's `user:password@`: the description reaches logs, `/upstreams` and
    // metric labels.
    let hosts: Vec<String> = servers
        .iter()
        .map(|s| s.split_once("://").map_or(s.as_str(), |(_, h)| h))
        .map(|h| {
            let (authority, path) = h.split_once('/').unwrap_or((h, ""));
            match authority.rsplit_once('@') {
                Some((_, host)) if path.is_empty() => format!("***@{host}"),
                Some((_, host)) => format!("***@{host}/{path}"),
                None => h.to_string(),
            }
        })
        .collect();
    let scheme = if tls {
        format!("{scheme}+https")
    } else {
        scheme.to_string()
    };
    format!("{scheme}://{}", hosts.join(","))
}

/// A duration option such as `500ms`, `5s` or `2m`.
pub fn duration(value: &str) -> Option<std::time::Duration> {
    humantime::parse_duration(value.trim()).ok()
}

/// A URL's `user:password`.
pub type UserInfo = (String, String);

/// Why a server of a registry URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadServer {
    /// Not `host:port` (the server as written).
    NotHostPort(String),
    /// A path where the registry takes none (the server as written).
    Path(String),
}

/// The base URLs (`scheme://host:port[/path]`) of the comma-separated servers in `hosts`
/// (`[user:pass@]host:port[/path]`, options already taken off), and the last userinfo given;
/// a path is kept when `keep_path`, else refused. An empty list is the caller's to judge.
pub fn server_list(
    hosts: &str,
    scheme: &str,
    keep_path: bool,
) -> Result<(Vec<String>, Option<UserInfo>), BadServer> {
    let mut userinfo = None;
    let mut out = Vec::new();
    for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let host = match host.rsplit_once('@') {
            Some((info, h)) => {
                let (u, p) = info.split_once(':').unwrap_or((info, ""));
                userinfo = Some((u.to_string(), p.to_string()));
                h
            }
            None => host,
        };
        let (authority, path) = host.split_once('/').unwrap_or((host, ""));
        let ok = authority
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            return Err(BadServer::NotHostPort(host.to_string()));
        }
        let path = path.trim_end_matches('/');
        if !keep_path && !path.is_empty() {
            return Err(BadServer::Path(host.to_string()));
        }
        out.push(if path.is_empty() {
            format!("{scheme}://{authority}")
        } else {
            format!("{scheme}://{authority}/{path}")
        });
    }
    Ok((out, userinfo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_never_carry_a_servers_password() {
        let servers = [
            "http://bob:s3cret@10.0.0.5:8500".to_string(),
            "https://10.0.0.6:8500/x".into(),
        ];
        assert_eq!(
            describe("consul", &servers),
            "consul://***@10.0.0.5:8500,10.0.0.6:8500/x"
        );
    }
}
