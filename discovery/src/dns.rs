//! The DNS adapter: A/AAAA records with a configured port, or SRV records giving targets,
//! ports, weights and priorities; refreshed when the answer's TTL runs out.
//!
//! `OUTRIGGER_DISCOVERY=dns://10.0.0.2:53[,10.0.0.3:53][?min_ttl=1s&max_ttl=60s]`, or `dns://`
//! for the system's resolv.conf. Each routed service names its query:
//! `srv:_http._tcp.orders.service.consul`, `ip:orders.internal:8080` (A and AAAA),
//! `a:host:port` (A only) or `aaaa:host:port` (AAAA only).
//!
//! Lookups never happen on the request path: each service has a task that resolves, sends the
//! result, and sleeps until the TTL runs out (at least `min_ttl`, at most `max_ttl`). The
//! resolver's own cache is off, so a refresh really asks the server. NXDOMAIN, SERVFAIL and
//! timeouts are errors (the last good set stays); an answer with no records is an empty list,
//! which the guard treats as suspicious. Of a name asked for A and AAAA, one type that fails
//! while the other answers keeps the addresses it had at its last answer (none if it never
//! answered). An SRV target that does not exist (NXDOMAIN) is one invalid entry; a target
//! whose lookup fails makes the whole answer an error, so its node is not taken away.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};

use crate::pace::Backoff;
use crate::{Candidate, Discovery, DiscoveryError, UpdateSink};

/// What to ask DNS for one service.
#[derive(Debug, Clone, PartialEq)]
pub enum DnsQuery {
    /// SRV records: targets, ports, weights, priorities.
    Srv(String),
    /// Address records of `host`, each with `port`.
    Addresses {
        /// The name to resolve.
        host: String,
        /// The port every address gets.
        port: u16,
        /// Which record types.
        family: Family,
    },
}

/// Which address records to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// A and AAAA.
    Both,
    /// A only.
    V4,
    /// AAAA only.
    V6,
}

impl std::str::FromStr for DnsQuery {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "srv:<name>, ip:<host>:<port>, a:<host>:<port> or aaaa:<host>:<port>";
        let (kind, rest) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("expected {expected}"))?;
        if kind == "srv" {
            return if rest.is_empty() {
                Err(format!("srv needs a name; expected {expected}"))
            } else {
                Ok(DnsQuery::Srv(rest.to_string()))
            };
        }
        let family = match kind {
            "ip" => Family::Both,
            "a" => Family::V4,
            "aaaa" => Family::V6,
            _ => return Err(format!("query kind {kind:?}: expected {expected}")),
        };
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("{kind} needs host:port; expected {expected}"))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port {port:?} must be 1 to 65535"))?;
        if host.is_empty() {
            return Err(format!("{kind} needs a host; expected {expected}"));
        }
        Ok(DnsQuery::Addresses {
            host: host.to_string(),
            port,
            family,
        })
    }
}

/// DNS as a discovery source.
#[derive(Debug, Clone)]
pub struct DnsDiscovery {
    /// Name servers; empty means the system configuration.
    servers: Vec<SocketAddr>,
    queries: HashMap<String, DnsQuery>,
    min_ttl: Duration,
    max_ttl: Duration,
}

/// What was wrong with a `dns://` URL.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DnsConfigError {
    /// A name server is not ip:port.
    #[error("name server {0:?} must be ip:port, such as 127.0.0.1:53")]
    Server(String),
    /// An option is unknown or its value is wrong.
    #[error("option {0}: expected min_ttl or max_ttl with a duration such as 1s or 5m")]
    Option(String),
}

impl DnsDiscovery {
    /// Parses a `dns://` URL; `queries` gives each routed service's query.
    pub fn from_url(url: &str, queries: HashMap<String, DnsQuery>) -> Result<Self, DnsConfigError> {
        let rest = url.strip_prefix("dns://").unwrap_or(url);
        let (hosts, options) = rest.split_once('?').unwrap_or((rest, ""));
        let servers = hosts
            .trim_end_matches('/')
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| {
                h.parse::<SocketAddr>()
                    .map_err(|_| DnsConfigError::Server(h.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut me = DnsDiscovery {
            servers,
            queries,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(60),
        };
        for pair in options.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let d = crate::http_body::duration(value)
                .ok_or_else(|| DnsConfigError::Option(pair.to_string()));
            match key {
                "min_ttl" => me.min_ttl = d?,
                "max_ttl" => me.max_ttl = d?,
                _ => return Err(DnsConfigError::Option(pair.to_string())),
            }
        }
        if me.max_ttl < me.min_ttl {
            return Err(DnsConfigError::Option(format!(
                "max_ttl below min_ttl ({options})"
            )));
        }
        Ok(me)
    }

    fn resolver(&self) -> Result<TokioResolver, NetError> {
        let mut builder = if self.servers.is_empty() {
            Resolver::builder_tokio()?
        } else {
            let servers = self
                .servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect();
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let opts = builder.options_mut();
        // Every refresh must reach the server: the TTL is honoured by our own schedule.
        opts.cache_size = 0;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 1;
        builder.build()
    }

    fn registry(&self) -> String {
        self.describe()
    }

    async fn resolve(
        &self,
        resolver: &TokioResolver,
        query: &DnsQuery,
        memory: &mut Remembered,
    ) -> Result<(Vec<Candidate>, Option<Instant>), DiscoveryError> {
        match query {
            DnsQuery::Addresses { host, port, family } => {
                let (ips, until) = self
                    .addresses(resolver, host, *family, memory)
                    .await
                    .map_err(AddressError::into_error)?;
                let candidates = ips
                    .into_iter()
                    .map(|ip| Candidate::new(ip.to_string(), i64::from(*port)))
                    .collect();
                Ok((candidates, until))
            }
            DnsQuery::Srv(name) => self.srv(resolver, name, memory).await,
        }
    }

    /// Addresses of `host`. An empty answer (NODATA) is an empty list and NXDOMAIN
    /// [`AddressError::NoName`]. A record type whose lookup fails (SERVFAIL, a timeout) while
    /// another answered keeps the addresses it had at its last answer (none if it never
    /// answered): A and AAAA are two ways to the same nodes, and one family's failure says
    /// nothing of the other's. When no type answered, the lookup failed
    /// ([`AddressError::Failed`]).
    async fn addresses(
        &self,
        resolver: &TokioResolver,
        host: &str,
        family: Family,
        memory: &mut Remembered,
    ) -> Result<(Vec<IpAddr>, Option<Instant>), AddressError> {
        let types: &[RecordType] = match family {
            Family::Both => &[RecordType::A, RecordType::AAAA],
            Family::V4 => &[RecordType::A],
            Family::V6 => &[RecordType::AAAA],
        };
        let mut ips = Vec::new();
        let mut until: Option<Instant> = None;
        let mut soonest = |t: Instant| until = Some(until.map_or(t, |u: Instant| u.min(t)));
        let mut failed = Vec::new();
        for &t in types {
            match resolver.lookup(host, t).await {
                Ok(lookup) => {
                    soonest(lookup.valid_until());
                    let found: Vec<IpAddr> = lookup
                        .answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::A(a) => Some(IpAddr::V4(a.0)),
                            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                            _ => None,
                        })
                        .collect();
                    memory.answered(host, t, &found);
                    ips.extend(found);
                }
                Err(e) if e.is_nx_domain() => {
                    return Err(AddressError::NoName(self.error(host, t, &e)))
                }
                // The name exists without records of this type (NODATA): a real, empty answer.
                Err(e) if e.is_no_records_found() => memory.answered(host, t, &[]),
                Err(e) => failed.push((t, self.error(host, t, &e))),
            }
        }
        if failed.len() == types.len() {
            let (_, error) = failed.swap_remove(0);
            return Err(AddressError::Failed(error));
        }
        for (t, error) in failed {
            ips.extend(memory.failed(host, t, &error));
            // Asked again soon: the failed type's records are not known for any TTL.
            soonest(Instant::now());
        }
        Ok((ips, until))
    }

    async fn srv(
        &self,
        resolver: &TokioResolver,
        name: &str,
        memory: &mut Remembered,
    ) -> Result<(Vec<Candidate>, Option<Instant>), DiscoveryError> {
        let lookup = match resolver.lookup(name, RecordType::SRV).await {
            Ok(lookup) => lookup,
            Err(e) if e.is_no_records_found() && !e.is_nx_domain() => {
                return Ok((Vec::new(), None))
            }
            Err(e) => return Err(self.error(name, RecordType::SRV, &e)),
        };
        let mut until = lookup.valid_until();
        let records: Vec<_> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(srv.clone()),
                _ => None,
            })
            .collect();
        let mut candidates = Vec::new();
        for srv in &records {
            // RFC 2782: weight 0 means "very small share" when others at the same priority have
            // weight; Outrigger's weight 0 means "no traffic", so it becomes a token weight.
            let siblings_weighted = records
                .iter()
                .any(|o| o.priority == srv.priority && o.weight > 0);
            let weight = match (srv.weight, siblings_weighted) {
                (0, true) => 0.01,
                (0, false) => 1.0,
                (w, _) => f64::from(w),
            };
            let target = srv.target.to_utf8();
            match self
                .addresses(resolver, &target, Family::Both, memory)
                .await
            {
                Ok((ips, target_until)) => {
                    if let Some(t) = target_until {
                        until = until.min(t);
                    }
                    for ip in ips {
                        let mut c = Candidate::new(ip.to_string(), i64::from(srv.port));
                        c.weight = weight;
                        c.priority = u32::from(srv.priority);
                        c.meta_mut()
                            .metadata
                            .insert("srv_target".into(), target.clone());
                        candidates.push(c);
                    }
                }
                // A target that does not exist is one invalid entry, not a failed answer: the
                // guard drops it (and counts it) while the other targets stay.
                Err(AddressError::NoName(e)) => {
                    tracing::debug!(target = %target, error = %e, "SRV target does not resolve");
                    let mut c = Candidate::new(target.clone(), i64::from(srv.port));
                    c.weight = weight;
                    candidates.push(c);
                }
                // A target whose lookup failed is not known to be gone: the whole answer is
                // unknown, and the last good nodes stay.
                Err(AddressError::Failed(e)) => return Err(e),
            }
        }
        Ok((candidates, Some(until)))
    }

    fn error(&self, name: &str, t: RecordType, e: &NetError) -> DiscoveryError {
        let what = if e.is_nx_domain() {
            "NXDOMAIN".to_string()
        } else {
            e.to_string()
        };
        DiscoveryError::Transport {
            registry: self.registry(),
            detail: format!("{name} {t}: {what}"),
        }
    }

    async fn watch(
        self: Arc<Self>,
        resolver: Arc<TokioResolver>,
        service: Arc<str>,
        sink: UpdateSink,
    ) {
        let Some(query) = self.queries.get(&*service).cloned() else {
            return;
        };
        let mut backoff = Backoff::default();
        let mut memory = Remembered::default();
        loop {
            let result = self.resolve(&resolver, &query, &mut memory).await;
            memory.end_round(result.is_ok());
            let wait = match &result {
                Ok((_, until)) => {
                    backoff.reset();
                    let ttl = until.map_or(self.max_ttl, |u| {
                        u.saturating_duration_since(Instant::now())
                    });
                    ttl.clamp(self.min_ttl, self.max_ttl)
                }
                Err(_) => backoff
                    .next_delay()
                    .clamp(self.min_ttl.min(Duration::from_millis(200)), self.max_ttl),
            };
            if !sink.send(&service, result.map(|(c, _)| c)).await {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }
}

impl Discovery for DnsDiscovery {
    fn describe(&self) -> String {
        let servers: Vec<String> = self.servers.iter().map(ToString::to_string).collect();
        format!("dns://{}", servers.join(","))
    }

    fn run(
        self: Box<Self>,
        services: Vec<Arc<str>>,
        sink: UpdateSink,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let me: Arc<Self> = Arc::from(self);
        Box::pin(async move {
            let resolver = match me.resolver() {
                Ok(r) => Arc::new(r),
                Err(e) => {
                    let err = DiscoveryError::Transport {
                        registry: me.registry(),
                        detail: format!("cannot set up the resolver: {e}"),
                    };
                    for service in &services {
                        sink.send(service, Err(err.clone())).await;
                    }
                    return;
                }
            };
            let mut watches = tokio::task::JoinSet::new();
            for service in services {
                watches.spawn(me.clone().watch(resolver.clone(), service, sink.clone()));
            }
            while watches.join_next().await.is_some() {}
        })
    }
}

/// Why the addresses of a name are not known.
enum AddressError {
    /// NXDOMAIN: an answer, the name does not exist.
    NoName(DiscoveryError),
    /// No record type answered (SERVFAIL, a timeout, no server).
    Failed(DiscoveryError),
}

impl AddressError {
    fn into_error(self) -> DiscoveryError {
        match self {
            AddressError::NoName(e) | AddressError::Failed(e) => e,
        }
    }
}

/// The addresses each name had per record type at its last answer, for a type whose lookup
/// fails while another answers. Rebuilt from every successful round, so names no longer asked
/// for are forgotten; a failed round keeps the previous one.
#[derive(Default)]
struct Remembered {
    last: HashMap<(String, RecordType), Vec<IpAddr>>,
    next: HashMap<(String, RecordType), Vec<IpAddr>>,
    /// Name and type failing now, so that a failure is logged when it starts and ends.
    failing: HashSet<(String, RecordType)>,
}

impl Remembered {
    fn answered(&mut self, host: &str, t: RecordType, ips: &[IpAddr]) {
        let key = (host.to_string(), t);
        if self.failing.remove(&key) {
            tracing::info!(name = host, record = %t, "DNS lookup answers again");
        }
        self.next.insert(key, ips.to_vec());
    }

    /// The addresses `host` had for `t` at its last answer, after `error`.
    fn failed(&mut self, host: &str, t: RecordType, error: &DiscoveryError) -> Vec<IpAddr> {
        let key = (host.to_string(), t);
        let kept = self.last.get(&key).cloned().unwrap_or_default();
        if self.failing.insert(key.clone()) {
            tracing::warn!(name = host, record = %t, %error, kept = kept.len(),
                "DNS lookup failed for one record type; keeping its last addresses while the other type answers");
        }
        self.next.insert(key, kept.clone());
        kept
    }

    fn end_round(&mut self, succeeded: bool) {
        let next = std::mem::take(&mut self.next);
        if succeeded {
            self.last = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_urls_parse_with_clear_errors() {
        assert_eq!(
            "srv:_http._tcp.orders".parse(),
            Ok(DnsQuery::Srv("_http._tcp.orders".into()))
        );
        assert_eq!(
            "ip:orders.internal:8080".parse(),
            Ok(DnsQuery::Addresses {
                host: "orders.internal".into(),
                port: 8080,
                family: Family::Both
            })
        );
        assert!("a:orders"
            .parse::<DnsQuery>()
            .unwrap_err()
            .contains("host:port"));
        assert!("a:orders:0"
            .parse::<DnsQuery>()
            .unwrap_err()
            .contains("1 to 65535"));
        assert!("mx:orders"
            .parse::<DnsQuery>()
            .unwrap_err()
            .contains("\"mx\""));
        let d = DnsDiscovery::from_url(
            "dns://127.0.0.1:5353,[::1]:53?min_ttl=2s&max_ttl=1m",
            HashMap::new(),
        )
        .unwrap();
        assert_eq!(d.servers.len(), 2);
        assert_eq!(
            (d.min_ttl, d.max_ttl),
            (Duration::from_secs(2), Duration::from_secs(60))
        );
        assert_eq!(d.describe(), "dns://127.0.0.1:5353,[::1]:53");
        assert!(DnsDiscovery::from_url("dns://", HashMap::new())
            .unwrap()
            .servers
            .is_empty());
        assert!(matches!(
            DnsDiscovery::from_url("dns://ns1:53", HashMap::new()),
            Err(DnsConfigError::Server(_))
        ));
        assert!(matches!(
            DnsDiscovery::from_url("dns://127.0.0.1:53?ttl=1s", HashMap::new()),
            Err(DnsConfigError::Option(_))
        ));
    }
}
