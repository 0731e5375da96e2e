use std::collections::BTreeMap;
use std::sync::Arc;

use crate::shared_meta::no_meta;
use crate::{DropReason, EndpointMeta};

/// One node as a registry claims it, before any validation.
///
/// Adapters only translate wire formats; they never decide what is valid. Keeping the raw claim
/// (an address string, a signed port, a float weight) lets the guard judge every registry by the
/// same rules and name exactly what was wrong when it drops an entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The host as given: an IP literal is expected; anything else is dropped as unparsable.
    pub host: String,
    /// The port as given; valid ports are 1..=65535.
    pub port: i64,
    /// Relative share of traffic; 0 means "no traffic", negative or non-finite is invalid.
    pub weight: f64,
    /// Priority tier; 0 is the highest and gets traffic first.
    pub priority: u32,
    /// Zone, tags and metadata, already in the form endpoints carry them: behind an `Arc`, so
    /// that nodes with equal labels share one copy (validation sees to it for every adapter;
    /// the file adapter does it while parsing, to build each label set only once).
    pub meta: Arc<EndpointMeta>,
    /// Why the adapter found the entry unusable, and what it names (the entry and the
    /// registry field); `None` for an entry to judge by the usual rules. Validation drops it
    /// with that reason, and the rest of the answer routes.
    pub refused: Option<(DropReason, Box<str>)>,
}

impl Candidate {
    /// A candidate with weight 1 and no labels, the common case for lists and tests.
    pub fn new(host: impl Into<String>, port: i64) -> Self {
        Candidate {
            host: host.into(),
            port,
            weight: 1.0,
            priority: 0,
            meta: no_meta(),
            refused: None,
        }
    }

    /// An entry the adapter could not read; `what` names the entry and the field, such as
    /// `entry 2: missing field \`Service\``.
    pub fn malformed(what: impl Into<String>) -> Self {
        Candidate::refused(DropReason::MalformedEntry, what)
    }

    /// An entry the adapter read but cannot route to, for `reason`; `what` names the entry
    /// and the field.
    pub fn refused(reason: DropReason, what: impl Into<String>) -> Self {
        Candidate {
            refused: Some((reason, what.into().into_boxed_str())),
            ..Candidate::new("", 0)
        }
    }

    /// Takes a registry node's labels, reading its priority tier, zone and TLS flag from the
    /// metadata keys `priority`, `zone` and `secure` as every registry adapter does, so that
    /// they agree: a missing or unreadable priority is tier 0, a node without a `zone` key is
    /// in `fallback_zone`, the registry's own locality (a Consul datacenter, a Nacos cluster),
    /// and `secure=true` (any case, Spring Cloud's convention) marks a port that speaks TLS.
    pub fn set_registry_labels(
        &mut self,
        metadata: BTreeMap<String, String>,
        tags: Vec<String>,
        fallback_zone: Option<String>,
    ) {
        self.priority = metadata
            .get("priority")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let zone = metadata.get("zone").cloned().or(fallback_zone);
        let secure = metadata
            .get("secure")
            .is_some_and(|s| s.trim().eq_ignore_ascii_case("true"));
        self.meta = Arc::new(EndpointMeta {
            zone,
            tags,
            metadata,
            secure,
            host_name: None,
            sources: Vec::new(),
        });
    }

    /// The labels, to set or change; copied first if they are shared.
    pub fn meta_mut(&mut self) -> &mut EndpointMeta {
        Arc::make_mut(&mut self.meta)
    }

    /// Splits an `ip:port` or `[ipv6]:port` string the way configuration files write addresses.
    ///
    /// A missing or unparsable port becomes 0 so that validation drops the entry with a reason
    /// instead of the adapter failing the whole update.
    pub fn from_address(address: &str) -> Self {
        let address = address.trim();
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) if host.starts_with('[') && host.ends_with(']') => {
                (&host[1..host.len() - 1], port)
            }
            // More than one colon without brackets: a bare IPv6 address with no port.
            Some((host, _)) if host.contains(':') => (address, ""),
            Some((host, port)) => (host, port),
            None => (address, ""),
        };
        Candidate::new(host, port.parse::<i64>().unwrap_or(0))
    }

    /// How the entry reads in logs and errors: `host:port`, or what made it unreadable.
    pub fn describe(&self) -> String {
        if let Some((_, what)) = &self.refused {
            return what.to_string();
        }
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_addresses() {
        let c = Candidate::from_address("127.0.0.1:8081");
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 8081));
        let c = Candidate::from_address("[::1]:8083");
        assert_eq!((c.host.as_str(), c.port), ("::1", 8083));
        let c = Candidate::from_address("::1");
        assert_eq!((c.host.as_str(), c.port), ("::1", 0));
        let c = Candidate::from_address("10.0.0.1:http");
        assert_eq!((c.host.as_str(), c.port), ("10.0.0.1", 0));
        assert_eq!(Candidate::from_address("[::1]:80").describe(), "[::1]:80");
    }

    #[test]
    fn registry_labels_give_priority_and_zone() {
        let meta = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|&(k, v)| (k.into(), v.into())).collect()
        };
        let mut c = Candidate::new("127.0.0.1", 80);
        c.set_registry_labels(
            meta(&[("priority", "2"), ("zone", "a")]),
            vec!["v2".into()],
            Some("dc1".into()),
        );
        assert_eq!((c.priority, c.meta.zone.as_deref()), (2, Some("a")));
        assert_eq!((c.meta.tags.len(), c.meta.metadata.len()), (1, 2));
        c.set_registry_labels(
            meta(&[("priority", "high")]),
            Vec::new(),
            Some("dc1".into()),
        );
        assert_eq!((c.priority, c.meta.zone.as_deref()), (0, Some("dc1")));
        c.set_registry_labels(meta(&[]), Vec::new(), None);
        assert_eq!((c.priority, c.meta.zone.as_deref()), (0, None));
    }
}
