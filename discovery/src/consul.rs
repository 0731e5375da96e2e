//! The Consul adapter: one blocking-query watch per routed service on
//! `GET /v1/health/service/<name>`.
//!
//! `OUTRIGGER_DISCOVERY=consul://host:8500[,host2:8500][?options]` (`consul+https://` for TLS).
//! Options: `dc`, `ns`, `partition`, `tag` (repeatable; all must match), `health=passing`
//! (default) or `health=warning` (passing and warning), `address=service` (default) or a tagged
//! address (`lan`, `wan`, `lan_ipv4`, `lan_ipv6`, `wan_ipv4`, `wan_ipv6`), `wait` (blocking
//! time, default 5m, at most 10m).
//!
//! The loop follows Consul's blocking-query rules: send the last `X-Consul-Index` with `wait`;
//! a return is no proof of change; an index that goes backwards resets the watch to 0 (logged,
//! the answer skipped and the service read again at once: not a registry error); an index of
//! 0 or none becomes 1 so the next call blocks, and a server that answers at once anyway is
//! polled every [`POLL_WITHOUT_INDEX`]; a token bucket (burst 2) turns churn into bounded
//! polling; errors back off with jitter and fail over to the next server. Answers are checked
//! against the filters sent (`tag`, `dc`, `ns`, `partition`), in case a server ignored one.
//!
//! The HTTP is done with reqwest rather than rs-consul: rs-consul's `ServiceNode` carries no
//! `Weights`, `TaggedAddresses`, `Meta` or `Checks`, and its `u16` port makes one bad entry fail
//! the whole answer, where the guard must drop that entry alone.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::http_body;
use crate::pace::{Backoff, TokenBucket, UpdateSpacing};
use crate::{Candidate, Discovery, DiscoveryError, UpdateSink};

/// How often a server that gives no usable `X-Consul-Index` (0 or none) is read: its answers
/// come at once, so blocking is impossible and the watch polls.
pub const POLL_WITHOUT_INDEX: Duration = Duration::from_secs(1);

/// Which health states may take traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthFilter {
    /// Only entries whose checks all pass (Consul's `?passing`).
    Passing,
    /// Entries whose checks pass or warn; warning entries use `Weights.Warning`.
    PassingOrWarning,
}

/// What was wrong with a `consul://` URL.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConsulConfigError {
    /// No server address.
    #[error("no Consul address after the scheme, such as consul://127.0.0.1:8500")]
    NoServer,
    /// An address is not host:port.
    #[error("Consul address {0:?} must be host:port")]
    Server(String),
    /// An option is unknown or its value is wrong.
    #[error("option {key}={value:?}: {expected}")]
    Option {
        /// The option name.
        key: String,
        /// Its value.
        value: String,
        /// What was expected.
        expected: String,
    },
}

/// A Consul cluster seen as a discovery source.
#[derive(Debug, Clone)]
pub struct ConsulDiscovery {
    servers: Vec<String>,
    token: Option<String>,
    query: Vec<(String, String)>,
    health: HealthFilter,
    address: Option<String>,
    wait: Duration,
    pace: Duration,
    spacing: UpdateSpacing,
    client: reqwest::Client,
}

impl ConsulDiscovery {
    /// Parses a `consul://` or `consul+https://` URL; `token` is sent as `X-Consul-Token`.
    pub fn from_url(url: &str, token: Option<String>) -> Result<Self, ConsulConfigError> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("consul+https://") {
            ("https", rest)
        } else if let Some(rest) = url.strip_prefix("consul://") {
            ("http", rest)
        } else {
            return Err(ConsulConfigError::NoServer);
        };
        let (hosts, options) = rest.split_once('?').unwrap_or((rest, ""));
        let hosts = hosts.trim_end_matches('/');
        let mut servers = Vec::new();
        for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let port_ok = host
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !port_ok || host.contains('/') {
                return Err(ConsulConfigError::Server(host.to_string()));
            }
            servers.push(format!("{scheme}://{host}"));
        }
        if servers.is_empty() {
            return Err(ConsulConfigError::NoServer);
        }
        let mut me = ConsulDiscovery {
            servers,
            token: token.filter(|t| !t.is_empty()),
            query: Vec::new(),
            health: HealthFilter::Passing,
            address: None,
            wait: Duration::from_secs(300),
            pace: Duration::from_millis(50),
            spacing: UpdateSpacing::default(),
            client: reqwest::Client::new(),
        };
        for pair in options.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = |expected: &str| ConsulConfigError::Option {
                key: key.to_string(),
                value: value.to_string(),
                expected: expected.to_string(),
            };
            match key {
                "dc" | "ns" | "partition" | "tag" => {
                    if value.is_empty() {
                        return Err(bad("a non-empty value"));
                    }
                    me.query.push((key.to_string(), value.to_string()));
                }
                "health" => {
                    me.health = match value {
                        "passing" => HealthFilter::Passing,
                        "warning" => HealthFilter::PassingOrWarning,
                        _ => return Err(bad("passing or warning")),
                    }
                }
                "address" => {
                    me.address = match value {
                        "service" => None,
                        "lan" | "wan" | "lan_ipv4" | "lan_ipv6" | "wan_ipv4" | "wan_ipv6" => {
                            Some(value.to_string())
                        }
                        _ => {
                            return Err(bad(
                                "service, lan, wan, lan_ipv4, lan_ipv6, wan_ipv4 or wan_ipv6",
                            ))
                        }
                    }
                }
                "wait" => {
                    me.wait = http_body::duration(value)
                        .filter(|d| *d >= Duration::from_secs(1) && *d <= Duration::from_secs(600))
                        .ok_or_else(|| bad("a duration from 1s to 10m, such as 30s or 5m"))?;
                }
                _ => return Err(bad("one of dc, ns, partition, tag, health, address, wait")),
            }
        }
        // The request may hang for `wait` plus Consul's jitter of up to wait/16.
        me.client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(me.wait + me.wait / 16 + Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Ok(me)
    }

    /// Sets the pacing of each watch loop (the token bucket's refill interval).
    pub fn with_pace(mut self, pace: Duration) -> Self {
        self.pace = pace;
        self
    }

    /// Sets how long each watch waits after an answer before asking again, by the number of
    /// endpoints the answer held.
    pub fn with_spacing(mut self, spacing: UpdateSpacing) -> Self {
        self.spacing = spacing;
        self
    }

    fn url(&self, server: &str, service: &str, index: u64) -> String {
        let mut url = format!("{server}/v1/health/service/{service}");
        let mut sep = '?';
        let mut push = |url: &mut String, k: &str, v: &str| {
            url.push(sep);
            url.push_str(k);
            url.push('=');
            url.push_str(v);
            sep = '&';
        };
        if self.health == HealthFilter::Passing {
            push(&mut url, "passing", "1");
        }
        for (k, v) in &self.query {
            push(&mut url, k, v);
        }
        if index > 0 {
            push(&mut url, "index", &index.to_string());
            push(&mut url, "wait", &format!("{}s", self.wait.as_secs()));
        }
        url
    }

    async fn fetch(
        &self,
        server: &str,
        service: &str,
        index: u64,
    ) -> Result<(Vec<Candidate>, u64), DiscoveryError> {
        let registry = server.to_string();
        let transport = |e: reqwest::Error| DiscoveryError::http_transport(&registry, "", e);
        let mut req = self.client.get(self.url(server, service, index));
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", token);
        }
        let resp = req.send().await.map_err(transport)?;
        // Header names are case-insensitive; real servers send X-Consul-Index.
        let new_index = resp
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let body = http_body::read(resp, &registry).await?;
        let candidates =
            parse_health_service(&body, self.health, self.address.as_deref(), &self.query)
                .map_err(|detail| DiscoveryError::Parse {
                    registry: registry.clone(),
                    detail,
                })?;
        Ok((candidates, new_index))
    }

    async fn watch(self: Arc<Self>, service: Arc<str>, sink: UpdateSink) {
        let mut index: u64 = 0;
        let mut server = 0usize;
        let mut bucket = TokenBucket::new(2, self.pace);
        let mut backoff = Backoff::default();
        loop {
            bucket.take().await;
            let result = self.fetch(&self.servers[server], &service, index).await;
            let mut polling = false;
            let update = match result {
                Ok((candidates, new_index)) => {
                    backoff.reset();
                    if new_index > 0 && new_index < index {
                        // Consul's rule: an index that went backwards (a snapshot restore, a
                        // new cluster) resets the watch. The registry did nothing wrong: read
                        // the service again at once, without an index, and route by that.
                        tracing::info!(registry = %self.servers[server], %service,
                            from = index, to = new_index,
                            "Consul index went backwards; reading the service again");
                        index = 0;
                        continue;
                    }
                    // Consul's rule: an index of 0 (or none) is taken as 1, so the next call
                    // blocks. A server that answers at once all the same is polled, once a
                    // POLL_WITHOUT_INDEX, not in a loop.
                    polling = new_index == 0;
                    index = new_index.max(1);
                    Ok(candidates)
                }
                Err(e) => Err(e),
            };
            let failed = update.is_err();
            let endpoints = update.as_ref().map_or(0, Vec::len);
            if !sink.send(&service, update).await {
                return;
            }
            if failed {
                // Read at once after a failure rather than block on the old index: the
                // registry's state must be confirmed as soon as it answers again, not at its
                // next change.
                index = 0;
                server = (server + 1) % self.servers.len();
                tokio::time::sleep(backoff.next_delay()).await;
            } else {
                // The next blocking query returns at once if the service changed meanwhile,
                // with its newest state.
                let spacing = self.spacing.after(endpoints);
                let pause = if polling {
                    spacing.max(POLL_WITHOUT_INDEX)
                } else {
                    spacing
                };
                tokio::time::sleep(pause).await;
            }
        }
    }
}

impl Discovery for ConsulDiscovery {
    fn describe(&self) -> String {
        // Never the token: it is a credential.
        http_body::describe("consul", &self.servers)
    }

    fn run(
        self: Box<Self>,
        services: Vec<Arc<str>>,
        sink: UpdateSink,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let me: Arc<Self> = Arc::from(self);
        Box::pin(async move {
            let mut watches = tokio::task::JoinSet::new();
            for service in services {
                watches.spawn(me.clone().watch(service, sink.clone()));
            }
            while watches.join_next().await.is_some() {}
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    #[serde(default)]
    node: Option<NodeJson>,
    service: ServiceJson,
    #[serde(default)]
    checks: Option<Vec<CheckJson>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct NodeJson {
    #[serde(default)]
    address: String,
    #[serde(default)]
    datacenter: String,
    #[serde(default)]
    tagged_addresses: Option<HashMap<String, String>>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceJson {
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: Value,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    tagged_addresses: Option<HashMap<String, TaggedJson>>,
    #[serde(default)]
    weights: Option<WeightsJson>,
    /// Enterprise only; empty elsewhere.
    #[serde(default)]
    namespace: String,
    /// Enterprise only; empty elsewhere.
    #[serde(default)]
    partition: String,
}

/// Real servers send `Address`/`Port`; the API docs show `address`/`port`.
#[derive(Deserialize)]
struct TaggedJson {
    #[serde(default, rename = "Address", alias = "address")]
    address: String,
    #[serde(default, rename = "Port", alias = "port")]
    port: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WeightsJson {
    #[serde(default)]
    passing: Value,
    #[serde(default)]
    warning: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CheckJson {
    #[serde(default)]
    status: String,
}

/// A port as given; anything that is not an integer becomes 0, which validation drops.
fn port_of(v: &Value) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => s.trim().parse().unwrap_or(0),
        _ => 0,
    }
}

fn weight_of(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// How an entry that could not be read is named: by its node and service id when it has them
/// (so that the same entry is named alike in every answer), else by its index.
fn name_entry(entry: &Value, index: usize) -> String {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let node = text(entry.get("Node").and_then(|n| n.get("Node")));
    let id = text(entry.get("Service").and_then(|s| s.get("ID")));
    match (node, id) {
        (Some(node), Some(id)) => format!("node {node:?} service {id:?}"),
        (Some(node), None) => format!("node {node:?}"),
        (None, Some(id)) => format!("service {id:?}"),
        (None, None) => format!("entry {index}"),
    }
}

/// Parses a `/v1/health/service` answer into candidates.
///
/// The body must be a JSON array, or it fails whole; an entry that cannot be read (no
/// `Service` object, a `null` or a wrong type where a value belongs) becomes a
/// [`Candidate::malformed`] naming its index and the field, dropped by validation.
/// Entries whose checks are critical (or, with [`HealthFilter::Passing`], warning) are left
/// out: Consul already filters with `?passing`, and this keeps the rule when it did not.
pub fn parse_health_service(
    body: &[u8],
    health: HealthFilter,
    tagged: Option<&str>,
    query: &[(String, String)],
) -> Result<Vec<Candidate>, String> {
    // The answer must be a list; each entry is read on its own, so that one the adapter
    // cannot read is dropped (named, counted) and the others still route.
    let entries: Vec<Value> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(entries.len());
    for (index, entry) in entries.into_iter().enumerate() {
        let entry = match Entry::deserialize(&entry) {
            Ok(entry) => entry,
            Err(e) => {
                out.push(Candidate::malformed(format!(
                    "{}: {e}",
                    name_entry(&entry, index)
                )));
                continue;
            }
        };
        if !matches_query(&entry, query) {
            continue;
        }
        let statuses: Vec<&str> = entry
            .checks
            .iter()
            .flatten()
            .map(|c| c.status.as_str())
            .collect();
        if statuses.contains(&"critical") {
            continue;
        }
        let warning = statuses.contains(&"warning");
        if warning && health == HealthFilter::Passing {
            continue;
        }
        let node = entry.node.unwrap_or_default();
        let svc = entry.service;
        let mut host = if svc.address.is_empty() {
            node.address.clone()
        } else {
            svc.address.clone()
        };
        let mut port = port_of(&svc.port);
        if let Some(key) = tagged {
            if let Some(t) = svc.tagged_addresses.as_ref().and_then(|m| m.get(key)) {
                host = t.address.clone();
                port = port_of(&t.port);
            } else if let Some(a) = node.tagged_addresses.as_ref().and_then(|m| m.get(key)) {
                host = a.clone();
            }
        }
        let weights = svc.weights.as_ref();
        let weight = if warning {
            weights.and_then(|w| weight_of(&w.warning))
        } else {
            weights.and_then(|w| weight_of(&w.passing))
        }
        .unwrap_or(1.0);
        let mut c = Candidate::new(host, port);
        c.weight = weight;
        // The zone: the service's `Meta.zone`, else the node's, else the datacenter.
        let node_zone = node.meta.as_ref().and_then(|m| m.get("zone")).cloned();
        c.set_registry_labels(
            svc.meta.unwrap_or_default(),
            svc.tags.unwrap_or_default(),
            node_zone.or_else(|| (!node.datacenter.is_empty()).then(|| node.datacenter.clone())),
        );
        out.push(c);
    }
    Ok(out)
}

/// Whether `entry` is within the filters of `query` (see [`parse_health_service`]).
fn matches_query(entry: &Entry, query: &[(String, String)]) -> bool {
    let svc = &entry.service;
    let tags = svc.tags.as_deref().unwrap_or_default();
    let same = |have: &str, want: &str| have.is_empty() || have.eq_ignore_ascii_case(want);
    query.iter().all(|(key, want)| match key.as_str() {
        "tag" => tags.iter().any(|t| t == want),
        "dc" => same(
            entry.node.as_ref().map_or("", |n| n.datacenter.as_str()),
            want,
        ),
        "ns" => same(&svc.namespace, want),
        "partition" => same(&svc.partition, want),
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        crate::fixture("consul", name)
    }

    #[test]
    fn an_entry_without_service_costs_only_itself() {
        let body = br#"[
            {"Node": {"Address": "127.0.0.1"}, "Service": {"Address": "127.0.0.1", "Port": 8081}, "Checks": []},
            {"Node": {"Address": "127.0.0.1"}, "Checks": [{"Status": "passing"}]},
            {"Node": {"Address": "127.0.0.1"}, "Service": {"Address": null, "Port": 8083}},
            {"Node": {"Address": "127.0.0.1"}, "Service": {"Address": "127.0.0.1", "Port": 8084}}
        ]"#;
        let c = parse_health_service(body, HealthFilter::Passing, None, &[]).unwrap();
        let v = crate::validate::validate(c);
        let ports: Vec<u16> = v.endpoints.iter().map(|e| e.addr.port()).collect();
        assert_eq!(ports, [8081, 8084]);
        assert_eq!(v.dropped.len(), 2);
        assert!(v.dropped[0].entry.contains("entry 1") && v.dropped[0].entry.contains("Service"));
        let named = br#"[{"Node": {"Node": "n7", "Address": "127.0.0.1"}, "Checks": []}]"#;
        let c = parse_health_service(named, HealthFilter::Passing, None, &[]).unwrap();
        assert!(
            c[0].describe()
                .starts_with("node \"n7\": missing field `Service`"),
            "{}",
            c[0].describe()
        );
        assert!(v.dropped[1].entry.contains("entry 2"), "{:?}", v.dropped);
        assert!(
            parse_health_service(b"{\"not\": \"a list\"}", HealthFilter::Passing, None, &[])
                .is_err()
        );
    }

    #[test]
    fn docs_fixture_parses_with_weights_tags_and_meta() {
        let c = parse_health_service(
            &fixture("health-service-docs.json"),
            HealthFilter::Passing,
            None,
            &[],
        )
        .unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].host.as_str(), c[0].port, c[0].weight),
            ("10.1.10.12", 8000, 10.0)
        );
        assert_eq!(c[0].meta.tags, ["primary"]);
        assert_eq!(c[0].meta.metadata["redis_version"], "4.0");
        assert_eq!(c[0].meta.zone.as_deref(), Some("dc1"));
        // The docs' lower-case tagged address keys are read too.
        let wan = parse_health_service(
            &fixture("health-service-docs.json"),
            HealthFilter::Passing,
            Some("wan"),
            &[],
        )
        .unwrap();
        assert_eq!((wan[0].host.as_str(), wan[0].port), ("198.18.1.2", 80));
    }

    #[test]
    fn empty_service_address_falls_back_to_the_node_address() {
        let c = parse_health_service(
            &fixture("health-service-client-fixture.json"),
            HealthFilter::Passing,
            None,
            &[],
        )
        .unwrap();
        assert_eq!((c[0].host.as_str(), c[0].port), ("1.1.1.1", 3341));
        // No service-level tagged address: the node's lan address with the service port.
        let lan = parse_health_service(
            &fixture("health-service-client-fixture.json"),
            HealthFilter::Passing,
            Some("lan"),
            &[],
        )
        .unwrap();
        assert_eq!((lan[0].host.as_str(), lan[0].port), ("192.168.10.10", 3341));
    }

    #[test]
    fn unknown_service_capture_is_an_empty_list() {
        let raw = String::from_utf8(fixture("unknown-service-capture.http")).unwrap();
        let body = raw
            .split("\r\n\r\n")
            .nth(1)
            .or(raw.split("\n\n").nth(1))
            .unwrap();
        assert!(
            parse_health_service(body.as_bytes(), HealthFilter::Passing, None, &[])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_zone_is_service_meta_else_node_meta_else_the_datacenter() {
        let body = br#"[
          {"Node": {"Address": "10.0.0.1", "Datacenter": "dc1", "Meta": {"zone": "node-z"}},
           "Service": {"Port": 1, "Meta": {"zone": "svc-z"}}, "Checks": []},
          {"Node": {"Address": "10.0.0.2", "Datacenter": "dc1", "Meta": {"zone": "node-z"}},
           "Service": {"Port": 2}, "Checks": []},
          {"Node": {"Address": "10.0.0.3", "Datacenter": "dc1", "Meta": null},
           "Service": {"Port": 3}, "Checks": []}
        ]"#;
        let zones: Vec<_> = parse_health_service(body, HealthFilter::Passing, None, &[])
            .unwrap()
            .iter()
            .map(|c| c.meta.zone.clone())
            .collect();
        assert_eq!(
            zones,
            [
                Some("svc-z".into()),
                Some("node-z".into()),
                Some("dc1".into())
            ]
        );
    }

    #[test]
    fn health_states_and_real_server_quirks() {
        let body = br#"[
          {"Node": {"Address": "127.0.0.1"}, "Service": {"Port": 1, "Meta": null,
           "TaggedAddresses": {"lan": {"Address": "127.0.0.2", "Port": 2}},
           "Weights": {"Passing": 5, "Warning": 2}}, "Checks": [{"Status": "warning"}]},
          {"Node": {"Address": "127.0.0.1"}, "Service": {"Port": 3}, "Checks": [{"Status": "critical"}]},
          {"Node": {"Address": "127.0.0.1"}, "Service": {"Port": 70000}, "Checks": []}
        ]"#;
        let passing = parse_health_service(body, HealthFilter::Passing, None, &[]).unwrap();
        assert_eq!(passing.len(), 1);
        assert_eq!(passing[0].port, 70000, "kept for the guard to drop");
        let warn =
            parse_health_service(body, HealthFilter::PassingOrWarning, Some("lan"), &[]).unwrap();
        assert_eq!(warn.len(), 2);
        assert_eq!(
            (warn[0].host.as_str(), warn[0].port, warn[0].weight),
            ("127.0.0.2", 2, 2.0)
        );
        assert!(
            parse_health_service(b"<html>502</html>", HealthFilter::Passing, None, &[]).is_err()
        );
        assert!(parse_health_service(br#"{"a": 1}"#, HealthFilter::Passing, None, &[]).is_err());
    }

    #[test]
    fn answers_are_checked_against_the_filters_sent() {
        let body = br#"[
          {"Node": {"Address": "127.0.0.1", "Datacenter": "east"},
           "Service": {"Port": 1, "Tags": ["v2", "canary"]}, "Checks": []},
          {"Node": {"Address": "127.0.0.1", "Datacenter": "east"},
           "Service": {"Port": 2, "Tags": ["v2"]}, "Checks": []},
          {"Node": {"Address": "127.0.0.1", "Datacenter": "west"},
           "Service": {"Port": 3, "Tags": ["v2", "canary"]}, "Checks": []},
          {"Node": {"Address": "127.0.0.1"},
           "Service": {"Port": 4, "Tags": ["canary", "v2"], "Namespace": "team-b"}, "Checks": []}
        ]"#;
        let ports = |query: &[(&str, &str)]| {
            let query: Vec<(String, String)> = query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            parse_health_service(body, HealthFilter::Passing, None, &query)
                .unwrap()
                .iter()
                .map(|c| c.port)
                .collect::<Vec<_>>()
        };
        assert_eq!(ports(&[]), [1, 2, 3, 4]);
        assert_eq!(ports(&[("tag", "v2"), ("tag", "canary")]), [1, 3, 4]);
        // An entry that names no datacenter (or namespace) cannot be checked and stays.
        assert_eq!(ports(&[("tag", "canary"), ("dc", "east")]), [1, 4]);
        assert_eq!(ports(&[("ns", "team-a")]), [1, 2, 3]);
    }

    #[test]
    fn url_options_and_errors() {
        let c = ConsulDiscovery::from_url(
            "consul://127.0.0.1:8500,127.0.0.2:8500?dc=east&tag=v2&health=warning&address=lan&wait=30s",
            Some("secret".into()),
        )
        .unwrap();
        assert_eq!(
            c.servers,
            ["http://127.0.0.1:8500", "http://127.0.0.2:8500"]
        );
        assert_eq!(c.health, HealthFilter::PassingOrWarning);
        assert_eq!(c.wait, Duration::from_secs(30));
        assert_eq!(
            c.url(&c.servers[0], "orders", 7),
            "http://127.0.0.1:8500/v1/health/service/orders?dc=east&tag=v2&index=7&wait=30s"
        );
        assert_eq!(c.describe(), "consul://127.0.0.1:8500,127.0.0.2:8500");
        let c = ConsulDiscovery::from_url("consul+https://c:8501", None).unwrap();
        assert_eq!(
            c.url(&c.servers[0], "o", 0),
            "https://c:8501/v1/health/service/o?passing=1"
        );
        assert!(matches!(
            ConsulDiscovery::from_url("consul://", None),
            Err(ConsulConfigError::NoServer)
        ));
        assert!(matches!(
            ConsulDiscovery::from_url("consul://host", None),
            Err(ConsulConfigError::Server(_))
        ));
        let err = ConsulDiscovery::from_url("consul://h:1?wait=1h", None).unwrap_err();
        assert!(err.to_string().contains("wait=\"1h\""), "{err}");
        assert!(ConsulDiscovery::from_url("consul://h:1?color=red", None).is_err());
    }
}
