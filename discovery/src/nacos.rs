//! The Nacos adapter: changes pushed over Nacos 2.x's gRPC subscription (through the
//! official `nacos-sdk` crate), with HTTP polling of `/nacos/v1/ns/instance/list` as the
//! fallback and periodic consistency check.
//!
//! `OUTRIGGER_DISCOVERY=nacos://host:8848[,host2:8848][?options]` (`nacos+https://` for TLS on
//! the HTTP side). Options: `namespace`, `group` (default `DEFAULT_GROUP`), `clusters`,
//! `healthy_only` (default true), `poll` (default 5s), `push` (default true), `grpc_port`
//! (default: the HTTP port + 1000, Nacos's convention). Credentials come from
//! `OUTRIGGER_NACOS_USERNAME` / `OUTRIGGER_NACOS_PASSWORD` and are never logged.
//!
//! Push and poll feed the same guard: a push arrives within milliseconds of a change; the poll
//! repairs anything a push missed and keeps routing correct when the gRPC channel is down. The
//! SDK client reconnects and re-subscribes by itself after a server restart; if it cannot be
//! built at start, building is retried with backoff while polling carries on. The SDK's empty
//! push protection is off: whether an empty list is believable is the guard's call.
//!
//! Auth (polling side): `POST /nacos/v1/auth/login`; the token goes on each request as
//! `accessToken` and is renewed before `tokenTtl` runs out (at 80%), or at once after a
//! 401/403. Responses in the v1 shape and the v2 `{code, message, data}` shape are both read;
//! `weight` may be 1 or 1.0 (or a string); only `enabled` (and, by default, `healthy`)
//! instances take traffic.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nacos_sdk::api::naming::{
    NamingChangeEvent, NamingEventListener, NamingService, NamingServiceBuilder,
};
use nacos_sdk::api::props::ClientProps;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::http_body;
use crate::pace::{Backoff, SpacedPushes, UpdateSpacing};
use crate::{Candidate, Discovery, DiscoveryError, UpdateSink};

/// What was wrong with a `nacos://` URL.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NacosConfigError {
    /// No server after the scheme.
    #[error("no Nacos server after the scheme, such as nacos://127.0.0.1:8848")]
    NoServer,
    /// A server is not host:port.
    #[error("Nacos server {0:?} must be host:port")]
    Server(String),
    /// An option is unknown or its value is wrong.
    #[error("option {0}: expected namespace, group, clusters, healthy_only=true|false, poll=<duration>, push=true|false or grpc_port=<port>")]
    Option(String),
}

/// A service's instances as one list answer gives them.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceList {
    /// The service name without its group (`orders` for `DEFAULT_GROUP@@orders`).
    pub service: Option<String>,
    /// The instances that may take traffic.
    pub candidates: Vec<Candidate>,
}

fn truthy(v: Option<&Value>, default: bool) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => default,
    }
}

fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Parses an instance-list answer in the v1 or v2 shape.
pub fn parse_list(body: &[u8], healthy_only: bool) -> Result<InstanceList, String> {
    let root: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let data = if let Some(code) = root.get("code") {
        let code = code.as_i64().unwrap_or(-1);
        match code {
            0 => root.get("data").ok_or("v2 answer without data")?,
            // The service does not exist (yet): an empty list, for the guard to judge.
            21008 => {
                return Ok(InstanceList {
                    service: None,
                    candidates: Vec::new(),
                })
            }
            _ => {
                return Err(format!(
                    "code {code}: {}",
                    root.get("message").and_then(Value::as_str).unwrap_or("")
                ))
            }
        }
    } else {
        &root
    };
    let hosts = match data.get("hosts") {
        Some(Value::Array(h)) => h.as_slice(),
        None | Some(Value::Null) => &[],
        Some(_) => return Err("\"hosts\" is not a list".into()),
    };
    let service = data
        .get("name")
        .or_else(|| data.get("dom"))
        .and_then(Value::as_str)
        .map(|n| n.rsplit_once("@@").map_or(n, |(_, s)| s).to_string());
    let mut candidates = Vec::new();
    for (n, h) in hosts.iter().enumerate() {
        // Each host is read on its own: one that cannot be read is dropped, naming the field.
        let field = |name: &str| format!("hosts[{n}].{name}");
        if !h.is_object() {
            candidates.push(Candidate::malformed(format!("hosts[{n}]: not an object")));
            continue;
        }
        if !truthy(h.get("enabled"), true) || (healthy_only && !truthy(h.get("healthy"), true)) {
            continue;
        }
        let Some(ip) = h.get("ip").and_then(Value::as_str) else {
            candidates.push(Candidate::malformed(format!(
                "{}: missing or not a string",
                field("ip")
            )));
            continue;
        };
        let Some(port) = number(h.get("port")) else {
            candidates.push(Candidate::malformed(format!(
                "{ip}: {}: missing or not a number",
                field("port")
            )));
            continue;
        };
        let mut c = Candidate::new(ip, port as i64);
        // An unreadable weight is an invalid entry for the guard to drop, not weight 1.
        c.weight = match h.get("weight") {
            None | Some(Value::Null) => 1.0,
            w => number(w).unwrap_or(f64::NAN),
        };
        let metadata: BTreeMap<String, String> = h
            .get("metadata")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let cluster = h
            .get("clusterName")
            .and_then(Value::as_str)
            .map(str::to_string);
        c.set_registry_labels(metadata, Vec::new(), cluster);
        candidates.push(c);
    }
    Ok(InstanceList {
        service,
        candidates,
    })
}

/// A Nacos cluster seen as a discovery source.
#[derive(Debug, Clone)]
pub struct NacosDiscovery {
    servers: Vec<String>,
    namespace: Option<String>,
    group: String,
    clusters: Option<String>,
    healthy_only: bool,
    poll: Duration,
    push: bool,
    grpc_port: Option<u16>,
    credentials: Option<(String, String)>,
    spacing: UpdateSpacing,
    client: reqwest::Client,
}

/// Forwards pushed lists of one service from the SDK's callback into the discovery task.
struct PushListener {
    service: Arc<str>,
    healthy_only: bool,
    tx: tokio::sync::mpsc::UnboundedSender<(Arc<str>, Vec<Candidate>)>,
}

impl NamingEventListener for PushListener {
    fn event(&self, event: Arc<NamingChangeEvent>) {
        let candidates = event
            .instances
            .iter()
            .flatten()
            .filter(|i| i.enabled() && (!self.healthy_only || i.healthy()))
            .map(|i| {
                let mut c = Candidate::new(i.ip(), i64::from(i.port()));
                c.weight = i.weight();
                let metadata = i
                    .metadata()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                c.set_registry_labels(metadata, Vec::new(), i.cluster_name().cloned());
                c
            })
            .collect();
        let _ = self.tx.send((self.service.clone(), candidates));
    }
}

/// A login token and when to renew it.
#[derive(Debug, Clone)]
struct Token {
    value: String,
    renew_at: Instant,
}

/// What the watch tasks share: the token and the server in use.
#[derive(Debug, Default)]
struct Session {
    token: Mutex<Option<Token>>,
    server: std::sync::atomic::AtomicUsize,
}

/// Where a Nacos client connects, and as whom.
pub(crate) struct Where<'a> {
    /// `http://host:port` base URLs.
    pub servers: &'a [String],
    /// The namespace (the public one when `None`).
    pub namespace: Option<&'a str>,
    /// The gRPC port (the first server's HTTP port + 1000 when `None`, Nacos's convention).
    pub grpc_port: Option<u16>,
    /// The login, if any.
    pub credentials: Option<&'a (String, String)>,
}

/// A client of the official SDK for `at`, caching in `cache`, its empty-push protection off
/// (an empty answer is the guard's to judge).
///
/// Errors: the SDK's, in words.
pub(crate) async fn naming_service(
    at: &Where<'_>,
    cache: std::path::PathBuf,
) -> Result<NamingService, String> {
    let hosts: Vec<&str> = at
        .servers
        .iter()
        .map(|s| s.split_once("://").map_or(s.as_str(), |(_, h)| h))
        .collect();
    let http_port = hosts
        .first()
        .and_then(|h| h.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(8848);
    let mut props = ClientProps::new()
        .server_addr(hosts.join(","))
        .namespace(at.namespace.unwrap_or_default().to_string())
        .app_name("outrigger")
        .env_first(false)
        .naming_push_empty_protection(false)
        .naming_load_cache_at_start(false)
        .cache_dir(cache)
        .remote_grpc_port(at.grpc_port.unwrap_or(http_port.saturating_add(1000)));
    if let Some((user, pass)) = at.credentials {
        props = props
            .auth_username(user.clone())
            .auth_password(pass.clone());
    }
    let mut builder = NamingServiceBuilder::new(props);
    if at.credentials.is_some() {
        builder = builder.enable_auth_plugin_http();
    }
    builder.build().await.map_err(|e| e.to_string())
}

impl NacosDiscovery {
    /// Parses a `nacos://` URL; `credentials` (username, password) come from the environment.
    pub fn from_url(
        url: &str,
        credentials: Option<(String, String)>,
    ) -> Result<Self, NacosConfigError> {
        let (scheme, rest) = if let Some(r) = url.strip_prefix("nacos+https://") {
            ("https", r)
        } else if let Some(r) = url.strip_prefix("nacos://") {
            ("http", r)
        } else {
            return Err(NacosConfigError::NoServer);
        };
        let (hosts, options) = rest.split_once('?').unwrap_or((rest, ""));
        // `user:password@` in the URL logs in as the environment's credentials would (these
        // win); it never stays in a server address, which logs and the SDK show.
        let (servers, userinfo) =
            http_body::server_list(hosts.trim_end_matches('/'), scheme, false).map_err(
                |e| match e {
                    http_body::BadServer::NotHostPort(h) | http_body::BadServer::Path(h) => {
                        NacosConfigError::Server(h)
                    }
                },
            )?;
        let credentials = credentials.or(userinfo);
        if servers.is_empty() {
            return Err(NacosConfigError::NoServer);
        }
        let mut me = NacosDiscovery {
            servers,
            namespace: None,
            group: "DEFAULT_GROUP".into(),
            clusters: None,
            healthy_only: true,
            poll: Duration::from_secs(5),
            push: true,
            grpc_port: None,
            credentials: credentials.filter(|(u, _)| !u.is_empty()),
            spacing: UpdateSpacing::default(),
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        };
        for pair in options.split('&').filter(|p| !p.is_empty()) {
            let bad = || NacosConfigError::Option(pair.to_string());
            match pair.split_once('=').ok_or_else(bad)? {
                ("namespace", v) if !v.is_empty() => me.namespace = Some(v.into()),
                ("group", v) if !v.is_empty() => me.group = v.into(),
                ("clusters", v) if !v.is_empty() => me.clusters = Some(v.into()),
                ("healthy_only", "true") => me.healthy_only = true,
                ("healthy_only", "false") => me.healthy_only = false,
                ("push", "true") => me.push = true,
                ("push", "false") => me.push = false,
                ("grpc_port", v) => me.grpc_port = Some(v.parse().map_err(|_| bad())?),
                ("poll", v) => {
                    me.poll = http_body::duration(v)
                        .filter(|d| !d.is_zero())
                        .ok_or_else(bad)?
                }
                _ => return Err(bad()),
            }
        }
        Ok(me)
    }

    /// Sets how long a pushed list of a service waits after the last one forwarded, by the
    /// number of endpoints that one held; the newest pushed meanwhile goes on when it ends.
    pub fn with_spacing(mut self, spacing: UpdateSpacing) -> Self {
        self.spacing = spacing;
        self
    }

    async fn token(
        &self,
        session: &Session,
        server: &str,
    ) -> Result<Option<String>, DiscoveryError> {
        let Some((user, pass)) = &self.credentials else {
            return Ok(None);
        };
        let mut guard = session.token.lock().await;
        if let Some(t) = guard.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(Some(t.value.clone()));
        }
        let registry = server.to_string();
        let resp = self
            .client
            .post(format!("{server}/nacos/v1/auth/login"))
            .form(&[("username", user.as_str()), ("password", pass.as_str())])
            .send()
            .await
            .map_err(|e| DiscoveryError::http_transport(&registry, "login", e))?;
        let bytes = http_body::read(resp, &registry).await?;
        let body: Value = serde_json::from_slice(&bytes).map_err(|e| DiscoveryError::Parse {
            registry: registry.clone(),
            detail: format!("login: {e}"),
        })?;
        let value = body
            .get("accessToken")
            .and_then(Value::as_str)
            .ok_or_else(|| DiscoveryError::Parse {
                registry: registry.clone(),
                detail: "login answer without accessToken".into(),
            })?
            .to_string();
        let ttl = number(body.get("tokenTtl")).unwrap_or(18000.0).max(1.0);
        *guard = Some(Token {
            value: value.clone(),
            renew_at: Instant::now() + Duration::from_secs_f64(ttl * 0.8),
        });
        Ok(Some(value))
    }

    async fn list(
        &self,
        session: &Session,
        server: &str,
        service: &str,
    ) -> Result<Vec<Candidate>, DiscoveryError> {
        for attempt in 0..2 {
            let mut query: Vec<(&str, String)> = vec![
                ("serviceName", service.to_string()),
                ("groupName", self.group.clone()),
                ("healthyOnly", self.healthy_only.to_string()),
            ];
            if let Some(ns) = &self.namespace {
                query.push(("namespaceId", ns.clone()));
            }
            if let Some(c) = &self.clusters {
                query.push(("clusters", c.clone()));
            }
            if let Some(token) = self.token(session, server).await? {
                query.push(("accessToken", token));
            }
            let registry = server.to_string();
            let transport = |e: reqwest::Error| DiscoveryError::http_transport(&registry, "", e);
            let resp = self
                .client
                .get(format!("{server}/nacos/v1/ns/instance/list"))
                .query(&query)
                .send()
                .await
                .map_err(transport)?;
            let status = resp.status().as_u16();
            if (status == 401 || status == 403) && attempt == 0 && self.credentials.is_some() {
                // The token expired or was revoked: log in again once.
                *session.token.lock().await = None;
                continue;
            }
            let body = http_body::read(resp, &registry).await?;
            return parse_list(&body, self.healthy_only)
                .map(|l| l.candidates)
                .map_err(|detail| DiscoveryError::Parse { registry, detail });
        }
        unreachable!("the loop returns on its second pass")
    }

    /// Subscribes every service over gRPC and forwards pushed lists, retrying the client's
    /// construction with backoff until it succeeds.
    async fn push(self: Arc<Self>, services: Vec<Arc<str>>, sink: UpdateSink) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Arc<str>, Vec<Candidate>)>();
        let forward = {
            let sink = sink.clone();
            let mut pushes = SpacedPushes::new(self.spacing);
            tokio::spawn(async move {
                loop {
                    let due = pushes.next_due();
                    let ready = tokio::select! {
                        pushed = rx.recv() => {
                            let Some((service, list)) = pushed else { return };
                            let now = tokio::time::Instant::now();
                            pushes
                                .offer(service.clone(), list, now)
                                .map(|list| vec![(service, list)])
                                .unwrap_or_default()
                        }
                        _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)),
                            if due.is_some() => pushes.take_due(tokio::time::Instant::now()),
                    };
                    for (service, candidates) in ready {
                        if !sink.send(&service, Ok(candidates)).await {
                            return;
                        }
                    }
                }
            })
        };
        let mut backoff = Backoff::default();
        let _client = loop {
            match self.subscribe_all(&services, &tx).await {
                Ok(client) => break client,
                Err(e) => {
                    let error = crate::redact_secrets(&e.to_string());
                    tracing::warn!(%error, "Nacos push subscription failed; polling meanwhile");
                    tokio::time::sleep(backoff.next_delay().max(Duration::from_secs(1))).await;
                }
            }
        };
        // Holding the client keeps the subscriptions (and its reconnects) alive.
        let _ = forward.await;
    }

    async fn subscribe_all(
        &self,
        services: &[Arc<str>],
        tx: &tokio::sync::mpsc::UnboundedSender<(Arc<str>, Vec<Candidate>)>,
    ) -> Result<NamingService, String> {
        let cache = std::env::temp_dir().join(format!("outrigger-nacos-{}", std::process::id()));
        let at = Where {
            servers: &self.servers,
            namespace: self.namespace.as_deref(),
            grpc_port: self.grpc_port,
            credentials: self.credentials.as_ref(),
        };
        let naming = naming_service(&at, cache).await?;
        let clusters: Vec<String> = self
            .clusters
            .as_deref()
            .map(|c| c.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        for service in services {
            let listener = Arc::new(PushListener {
                service: service.clone(),
                healthy_only: self.healthy_only,
                tx: tx.clone(),
            });
            naming
                .subscribe(
                    service.to_string(),
                    Some(self.group.clone()),
                    clusters.clone(),
                    listener,
                )
                .await
                .map_err(|e| format!("subscribe {service}: {e}"))?;
        }
        Ok(naming)
    }

    async fn poll_service(
        self: Arc<Self>,
        session: Arc<Session>,
        service: Arc<str>,
        sink: UpdateSink,
    ) {
        use std::sync::atomic::Ordering;
        let mut backoff = Backoff::default();
        loop {
            let index = session.server.load(Ordering::Relaxed) % self.servers.len();
            let result = self.list(&session, &self.servers[index], &service).await;
            let wait = match &result {
                Ok(_) => {
                    backoff.reset();
                    self.poll
                }
                Err(_) => {
                    // The next attempt goes to the next server.
                    let _ = session.server.compare_exchange(
                        index,
                        (index + 1) % self.servers.len(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    backoff.next_delay().min(self.poll)
                }
            };
            if !sink.send(&service, result).await {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }
}

impl Discovery for NacosDiscovery {
    fn describe(&self) -> String {
        http_body::describe("nacos", &self.servers)
    }

    fn run(
        self: Box<Self>,
        services: Vec<Arc<str>>,
        sink: UpdateSink,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let me: Arc<Self> = Arc::from(self);
        Box::pin(async move {
            let session = Arc::new(Session {
                token: Mutex::new(None),
                server: std::sync::atomic::AtomicUsize::new(rand::random_range(
                    0..me.servers.len(),
                )),
            });
            let mut tasks = tokio::task::JoinSet::new();
            if me.push {
                tasks.spawn(me.clone().push(services.clone(), sink.clone()));
            }
            for service in services {
                tasks.spawn(
                    me.clone()
                        .poll_service(session.clone(), service, sink.clone()),
                );
            }
            while tasks.join_next().await.is_some() {}
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_urls_user_info_logs_in_and_stays_out_of_the_server_address() {
        let n = NacosDiscovery::from_url("nacos://bob:s3cret@127.0.0.1:8848", None).unwrap();
        assert_eq!(n.servers, ["http://127.0.0.1:8848"]);
        assert_eq!(n.credentials, Some(("bob".into(), "s3cret".into())));
        assert_eq!(n.describe(), "nacos://127.0.0.1:8848");
        let env = Some(("alice".to_string(), "pw".to_string()));
        let n = NacosDiscovery::from_url("nacos://bob:s3cret@127.0.0.1:8848", env).unwrap();
        assert_eq!(n.credentials, Some(("alice".into(), "pw".into())));
    }

    fn fixture(name: &str) -> Vec<u8> {
        crate::fixture("nacos", name)
    }

    #[test]
    fn an_unreadable_host_costs_only_itself_and_is_named() {
        let body = br#"{"name": "DEFAULT_GROUP@@orders", "hosts": [
            {"ip": "127.0.0.1", "port": 8081, "weight": 1.0, "healthy": true, "enabled": true},
            {"ip": null, "port": 8082, "healthy": true},
            {"ip": "127.0.0.1", "port": "eighty", "healthy": true},
            "not an object",
            {"ip": "127.0.0.1", "port": 8084, "healthy": true}
        ]}"#;
        let list = parse_list(body, true).unwrap();
        let v = crate::validate::validate(list.candidates);
        let ports: Vec<u16> = v.endpoints.iter().map(|e| e.addr.port()).collect();
        assert_eq!(ports, [8081, 8084]);
        let named: Vec<&str> = v.dropped.iter().map(|d| d.entry.as_str()).collect();
        assert!(named[0].contains("hosts[1].ip"), "{named:?}");
        assert!(named[1].contains("hosts[2].port"), "{named:?}");
        assert!(named[2].contains("hosts[3]"), "{named:?}");
        assert!(v
            .dropped
            .iter()
            .all(|d| d.reason == crate::DropReason::MalformedEntry));
    }

    #[test]
    fn v1_and_v2_documents_parse() {
        let v1 = parse_list(&fixture("v1-instance-list-docs.json"), true).unwrap();
        assert_eq!(v1.service.as_deref(), Some("nacos.test.1"));
        assert!(v1.candidates.is_empty(), "the one host is unhealthy");
        let all = parse_list(&fixture("v1-instance-list-docs.json"), false).unwrap();
        assert_eq!(
            (all.candidates[0].host.as_str(), all.candidates[0].port),
            ("10.10.10.10", 8888)
        );
        assert_eq!(all.candidates[0].meta.zone.as_deref(), Some("DEFAULT"));

        let v2 = parse_list(&fixture("v2-instance-list-docs.json"), true).unwrap();
        assert_eq!(v2.service.as_deref(), Some("test_service"));
        let c = &v2.candidates[0];
        assert_eq!(
            (c.host.as_str(), c.port, c.weight),
            ("127.0.0.1", 8080, 1.0)
        );
        assert_eq!(c.meta.metadata["value"], "1");

        let missing = br#"{"code": 21008, "message": "service not exist", "data": null}"#;
        assert!(parse_list(missing, true).unwrap().candidates.is_empty());
        let denied = br#"{"code": 10001, "message": "access denied", "data": null}"#;
        assert!(parse_list(denied, true).unwrap_err().contains("10001"));
        assert!(parse_list(b"<html></html>", true).is_err());
        let disabled =
            br#"{"hosts": [{"ip": "127.0.0.1", "port": "81", "weight": "0.5", "enabled": "false"},
                                       {"ip": "127.0.0.1", "port": 82, "weight": 0.5}]}"#;
        let l = parse_list(disabled, true).unwrap();
        assert_eq!(
            (
                l.candidates.len(),
                l.candidates[0].port,
                l.candidates[0].weight
            ),
            (1, 82, 0.5)
        );
    }

    #[test]
    fn urls_parse() {
        let n = NacosDiscovery::from_url(
            "nacos://127.0.0.1:8848,127.0.0.2:8848?namespace=prod&group=G&clusters=a,b&healthy_only=false&poll=2s&push=false",
            Some(("nacos".into(), "secret".into())),
        )
        .unwrap();
        assert_eq!(n.servers.len(), 2);
        assert_eq!(
            (n.group.as_str(), n.healthy_only, n.push, n.poll),
            ("G", false, false, Duration::from_secs(2))
        );
        assert_eq!(n.describe(), "nacos://127.0.0.1:8848,127.0.0.2:8848");
        assert!(!format!("{n:?}").is_empty());
        assert!(NacosDiscovery::from_url("nacos://", None).is_err());
        assert!(NacosDiscovery::from_url("nacos://h:1?poll=fast", None).is_err());
    }
}
