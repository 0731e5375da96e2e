//! The Eureka adapter: a full fetch, then deltas on an interval, reconciled with the server's
//! hash of its full registry.
//!
//! `OUTRIGGER_DISCOVERY=eureka://[user:pass@]host:8761/eureka[,host2:8761/eureka][?options]`
//! (`eureka+https://` for TLS). Options: `interval` (delta period, default 5s), `weight_key`
//! (metadata key holding the weight, default `weight`), `secure=true` (use `securePort` when
//! enabled, even when `port` is too). An instance whose `port` is disabled and `securePort`
//! enabled is reached over TLS at `securePort`, its certificate checked against `hostName`. Several servers: the adapter starts at a random one and fails over in the same
//! cycle, so one server down costs nothing.
//!
//! Like Spring's client it keeps a local copy of the whole registry: `GET apps/` once, then
//! `GET apps/delta` every interval, applying ADDED/MODIFIED/DELETED and comparing the local
//! reconcile hash (`STATUS_count_` per status, sorted) with the delta's `apps__hashcode`. A
//! mismatch (a missed delta, a restarted server) triggers a full fetch, and so does a refused
//! delta (403 when the server disables deltas or is not ready) or any other failed one: a
//! server counts as failed only when its full fetch fails too. Routed services match
//! app names case-insensitively (Eureka upper-cases them). Only instances whose effective status
//! is UP take traffic (`overriddenStatus` wins unless UNKNOWN).
//!
//! Every JSON dialect real servers emit is read: `application`/`instance` as object or array,
//! `$` as number or string, string booleans and timestamps, `overriddenstatus` and
//! `overriddenStatus`, EmptyMap metadata, any base path (`/eureka/v2/`).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::http_body;
use crate::{Candidate, Discovery, DiscoveryError, DropReason, UpdateSink};

/// What was wrong with a `eureka://` URL.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EurekaConfigError {
    /// No server after the scheme.
    #[error("no Eureka server after the scheme, such as eureka://127.0.0.1:8761/eureka")]
    NoServer,
    /// A server is not host:port[/path].
    #[error("Eureka server {0:?} must be host:port[/path]")]
    Server(String),
    /// An option is unknown or its value is wrong.
    #[error("option {0}: expected interval=<duration>, weight_key=<key> or secure=true|false")]
    Option(String),
}

/// One instance as the registry holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// `instanceId`, or `ipAddr:app:port` when it is blank or taken by another instance.
    pub id: String,
    /// `ipAddr`.
    pub ip: String,
    /// `hostName`, when present and not blank.
    pub host_name: Option<String>,
    /// `port.$`, and whether it is enabled.
    pub port: (i64, bool),
    /// `securePort.$`, and whether it is enabled.
    pub secure_port: (i64, bool),
    /// `status`.
    pub status: String,
    /// `overriddenStatus` / `overriddenstatus`, when present.
    pub overridden: Option<String>,
    /// `metadata`, without Jackson's `@class` marker.
    pub metadata: BTreeMap<String, String>,
    /// `actionType` in deltas.
    pub action: Option<String>,
    /// `dataCenterInfo.metadata.availability-zone` (an `Amazon` data center): the zone when
    /// `metadata.zone` is absent.
    pub availability_zone: Option<String>,
}

impl Instance {
    /// The status that decides traffic: the override, unless it is UNKNOWN.
    pub fn effective_status(&self) -> &str {
        match &self.overridden {
            Some(o) if !o.is_empty() && o != "UNKNOWN" => o,
            _ => &self.status,
        }
    }
}

/// A parsed `applications` document: instances by upper-cased app name, and its hash.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applications {
    /// App name -> instance id -> instance.
    pub apps: BTreeMap<String, BTreeMap<String, Instance>>,
    /// `apps__hashcode`, when present.
    pub hashcode: Option<String>,
    /// Instances that could not be read: app name and what was wrong, naming the field.
    pub unreadable: Vec<(String, String)>,
}

fn list(v: Option<&Value>) -> Vec<&Value> {
    match v {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(Value::Object(_)) => vec![v.expect("matched Some")],
        _ => Vec::new(),
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn port(v: Option<&Value>) -> (i64, bool) {
    let Some(v) = v else { return (0, false) };
    let number = match v {
        Value::Object(o) => o.get("$"),
        other => Some(other),
    };
    let n = text(number)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let enabled = match v.get("@enabled") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => true,
    };
    (n, enabled)
}

fn instance(v: &Value) -> Result<Instance, String> {
    let ip = text(v.get("ipAddr")).ok_or("instance without ipAddr")?;
    let status = text(v.get("status")).unwrap_or_else(|| "UNKNOWN".into());
    let port = port(v.get("port"));
    let metadata = v
        .get("metadata")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.as_str() != "@class")
                .filter_map(|(k, v)| Some((k.clone(), text(Some(v))?)))
                .collect()
        })
        .unwrap_or_default();
    // Blank or repeated ids are replaced when the instance is filed (`parse`).
    let id = text(v.get("instanceId")).unwrap_or_default();
    Ok(Instance {
        id,
        host_name: text(v.get("hostName")).filter(|h| !h.trim().is_empty()),
        ip,
        port,
        secure_port: self::port(v.get("securePort")),
        status,
        overridden: text(v.get("overriddenStatus")).or_else(|| text(v.get("overriddenstatus"))),
        metadata,
        action: text(v.get("actionType")),
        availability_zone: text(
            v.get("dataCenterInfo")
                .and_then(|d| d.get("metadata"))
                .and_then(|m| m.get("availability-zone")),
        )
        .filter(|z| !z.trim().is_empty()),
    })
}

/// Parses a JSON `applications` (or single `application`) document in any server dialect.
pub fn parse(body: &[u8]) -> Result<Applications, String> {
    let root: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let (apps_value, hashcode) = if let Some(apps) = root.get("applications") {
        (
            list(apps.get("application")),
            text(apps.get("apps__hashcode")),
        )
    } else if root.get("application").is_some() {
        (list(root.get("application")), None)
    } else {
        return Err("neither \"applications\" nor \"application\" at the top".into());
    };
    let mut out = Applications {
        apps: BTreeMap::new(),
        hashcode,
        unreadable: Vec::new(),
    };
    for app in apps_value {
        // An application without a name matches no service; it costs the others nothing.
        let Some(name) = text(app.get("name")) else {
            continue;
        };
        let name = name.to_ascii_uppercase();
        let entry = out.apps.entry(name.clone()).or_default();
        for (n, inst) in list(app.get("instance")).into_iter().enumerate() {
            match instance(inst) {
                Ok(mut i) => {
                    i.id = unique_id(entry, &i, &name);
                    entry.insert(i.id.clone(), i);
                }
                Err(e) => out.unreadable.push((
                    name.clone(),
                    format!("application {name} instance {n}: {e}"),
                )),
            }
        }
    }
    Ok(out)
}

/// The key an instance is filed under: its `instanceId` when present and not taken, since
/// blank ids (`"instanceId": ""`) made several instances one, and a full fetch on every
/// interval when the reconcile hash never matched; otherwise `ip:app:port`.
fn unique_id(filed: &BTreeMap<String, Instance>, i: &Instance, app: &str) -> String {
    if !i.id.trim().is_empty() && !filed.contains_key(&i.id) {
        return i.id.clone();
    }
    let fallback = format!("{}:{app}:{}", i.ip, i.port.0);
    if !filed.contains_key(&fallback) {
        return fallback;
    }
    (2..)
        .map(|n| format!("{fallback}#{n}"))
        .find(|k| !filed.contains_key(k))
        .unwrap_or(fallback)
}

impl Applications {
    /// Applies a delta: ADDED and MODIFIED replace, DELETED removes.
    pub fn apply(&mut self, delta: Applications) {
        for unreadable in delta.unreadable {
            if !self.unreadable.contains(&unreadable) {
                self.unreadable.push(unreadable);
            }
        }
        for (app, instances) in delta.apps {
            let entry = self.apps.entry(app).or_default();
            for (id, i) in instances {
                if i.action.as_deref() == Some("DELETED") {
                    entry.remove(&id);
                } else {
                    entry.insert(id, i);
                }
            }
        }
        self.apps.retain(|_, instances| !instances.is_empty());
    }

    /// Eureka's reconcile hash: `STATUS_count_` for each status, in sorted order.
    pub fn reconcile_hash(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for i in self.apps.values().flat_map(BTreeMap::values) {
            *counts.entry(&i.status).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|(s, n)| format!("{s}_{n}_"))
            .collect()
    }
}

/// A Eureka cluster seen as a discovery source.
#[derive(Debug, Clone)]
pub struct EurekaDiscovery {
    servers: Vec<String>,
    auth: Option<(String, String)>,
    interval: Duration,
    weight_key: String,
    secure: bool,
    client: reqwest::Client,
}

impl EurekaDiscovery {
    /// Parses a `eureka://` URL; `auth` (from the environment) overrides URL userinfo.
    pub fn from_url(url: &str, auth: Option<(String, String)>) -> Result<Self, EurekaConfigError> {
        let (scheme, rest) = if let Some(r) = url.strip_prefix("eureka+https://") {
            ("https", r)
        } else if let Some(r) = url.strip_prefix("eureka://") {
            ("http", r)
        } else {
            return Err(EurekaConfigError::NoServer);
        };
        let (hosts, options) = rest.split_once('?').unwrap_or((rest, ""));
        // Eureka's servers keep their path (`/eureka`, `/eureka/v2`).
        let (servers, url_auth) =
            http_body::server_list(hosts, scheme, true).map_err(|e| match e {
                http_body::BadServer::NotHostPort(h) | http_body::BadServer::Path(h) => {
                    EurekaConfigError::Server(h)
                }
            })?;
        if servers.is_empty() {
            return Err(EurekaConfigError::NoServer);
        }
        let mut me = EurekaDiscovery {
            servers,
            auth: auth.or(url_auth),
            interval: Duration::from_secs(5),
            weight_key: "weight".into(),
            secure: false,
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        };
        for pair in options.split('&').filter(|p| !p.is_empty()) {
            let bad = || EurekaConfigError::Option(pair.to_string());
            match pair.split_once('=').ok_or_else(bad)? {
                ("interval", v) => {
                    me.interval = http_body::duration(v)
                        .filter(|d| !d.is_zero())
                        .ok_or_else(bad)?
                }
                ("weight_key", v) if !v.is_empty() => me.weight_key = v.to_string(),
                ("secure", "true") => me.secure = true,
                ("secure", "false") => me.secure = false,
                _ => return Err(bad()),
            }
        }
        Ok(me)
    }

    async fn get(&self, server: &str, path: &str) -> Result<Applications, DiscoveryError> {
        let registry = server.to_string();
        let transport = |e: reqwest::Error| DiscoveryError::http_transport(&registry, "", e);
        let mut req = self
            .client
            .get(format!("{server}/{path}"))
            .header("Accept", "application/json");
        if let Some((user, pass)) = &self.auth {
            req = req.basic_auth(user, Some(pass));
        }
        let resp = req.send().await.map_err(transport)?;
        let body = http_body::read(resp, &registry).await?;
        parse(&body).map_err(|detail| DiscoveryError::Parse {
            registry: registry.clone(),
            detail: format!("{path}: {detail}"),
        })
    }

    /// One refresh against `server`: a delta reconciled into `local`, or a full fetch.
    async fn refresh(
        &self,
        server: &str,
        local: &mut Option<Applications>,
    ) -> Result<(), DiscoveryError> {
        if let Some(current) = local.as_mut() {
            // A server refuses deltas (403) when they are disabled or it may not serve its
            // registry yet; Eureka's client then fetches in full, and so does this. Any other
            // failure of the delta is tried the same way: the server is failed only if the
            // full fetch fails too.
            match self.get(server, "apps/delta").await {
                Ok(delta) => {
                    let expected = delta.hashcode.clone();
                    let mut next = current.clone();
                    next.apply(delta);
                    if expected.as_deref() == Some(next.reconcile_hash().as_str()) {
                        *current = next;
                        return Ok(());
                    }
                    tracing::info!(registry = %server, local = %next.reconcile_hash(),
                        server_hash = expected.as_deref().unwrap_or(""),
                        "Eureka delta does not reconcile; fetching the full registry");
                }
                Err(e) => tracing::debug!(registry = %server, error = %e,
                    "Eureka delta refused; fetching the full registry"),
            }
        }
        *local = Some(self.get(server, "apps/").await?);
        Ok(())
    }

    fn candidates(&self, registry: &Applications, service: &str) -> Vec<Candidate> {
        let app = service.to_ascii_uppercase();
        let unreadable = registry
            .unreadable
            .iter()
            .filter(|(a, _)| *a == app)
            .map(|(_, what)| Candidate::malformed(what.clone()));
        let Some(instances) = registry.apps.get(&app) else {
            return unreadable.collect();
        };
        instances
            .values()
            .filter(|i| i.effective_status() == "UP")
            .map(|i| self.candidate(i))
            .chain(unreadable)
            .collect()
    }

    /// The node an UP instance names: its `port` when enabled, else its `securePort`, over
    /// TLS (`secure=true` tries `securePort` first); an instance with neither enabled is
    /// dropped.
    fn candidate(&self, i: &Instance) -> Candidate {
        let (port, secure) = match (i.port, i.secure_port) {
            (_, (secure, true)) if self.secure => (secure, true),
            ((plain, true), _) => (plain, false),
            (_, (secure, true)) => (secure, true),
            _ => {
                return Candidate::refused(
                    DropReason::NoUsablePort,
                    format!(
                        "instance {} ({}): neither port {} nor securePort {} is @enabled",
                        i.id, i.ip, i.port.0, i.secure_port.0
                    ),
                )
            }
        };
        let mut c = Candidate::new(i.ip.clone(), port);
        // An unparsable weight is an invalid entry (dropped, counted), not weight 1.
        c.weight = match i.metadata.get(&self.weight_key) {
            Some(w) => w.trim().parse().unwrap_or(f64::NAN),
            None => 1.0,
        };
        c.set_registry_labels(i.metadata.clone(), Vec::new(), i.availability_zone.clone());
        // Eureka says which port speaks TLS; its `secure` metadata key means nothing here.
        let meta = c.meta_mut();
        meta.secure = secure;
        meta.host_name = i.host_name.clone();
        c
    }
}

impl Discovery for EurekaDiscovery {
    fn describe(&self) -> String {
        http_body::describe("eureka", &self.servers)
    }

    fn run(
        self: Box<Self>,
        services: Vec<Arc<str>>,
        sink: UpdateSink,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let mut local: Option<Applications> = None;
            let mut current = rand::random_range(0..self.servers.len());
            loop {
                let mut last_error = None;
                for attempt in 0..self.servers.len() {
                    let server = &self.servers[(current + attempt) % self.servers.len()];
                    match self.refresh(server, &mut local).await {
                        Ok(()) => {
                            current = (current + attempt) % self.servers.len();
                            last_error = None;
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "Eureka server failed; trying the next");
                            last_error = Some(e);
                        }
                    }
                }
                for service in &services {
                    let update = match (&last_error, &local) {
                        (Some(e), _) => Err(e.clone()),
                        (None, Some(registry)) => Ok(self.candidates(registry, service)),
                        (None, None) => continue,
                    };
                    if !sink.send(service, update).await {
                        return;
                    }
                }
                tokio::time::sleep(self.interval).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        crate::fixture("eureka", name)
    }

    fn inst(id: &str, port: &str, secure: &str) -> String {
        format!(
            r#"{{"instanceId": {id}, "app": "ORDERS", "ipAddr": "127.0.0.1", "status": "UP",
                "port": {port}, "securePort": {secure}}}"#
        )
    }

    fn doc(instances: &[String]) -> Vec<u8> {
        format!(
            r#"{{"applications": {{"apps__hashcode": "UP_3_", "application": [
                {{"name": "ORDERS", "instance": [{}]}}]}}}}"#,
            instances.join(",")
        )
        .into_bytes()
    }

    fn routed(body: &[u8]) -> crate::Validated {
        let d = EurekaDiscovery::from_url("eureka://127.0.0.1:8761/eureka", None).unwrap();
        crate::validate::validate(d.candidates(&parse(body).unwrap(), "orders"))
    }

    #[test]
    fn blank_and_repeated_ids_never_merge_instances() {
        let plain = r#"{"$": 8081, "@enabled": "true"}"#;
        let body = doc(&[
            inst(r#""""#, plain, r#"{"$": 443, "@enabled": "false"}"#),
            inst(r#""""#, &plain.replace("8081", "8082"), "443"),
            inst(r#""same""#, &plain.replace("8081", "8083"), "443"),
            inst(r#""same""#, &plain.replace("8081", "8084"), "443"),
        ]);
        let apps = parse(&body).unwrap();
        assert_eq!(apps.apps["ORDERS"].len(), 4);
        assert_eq!(apps.reconcile_hash(), "UP_4_");
        let ports: Vec<u16> = routed(&body)
            .endpoints
            .iter()
            .map(|e| e.addr.port())
            .collect();
        assert_eq!(ports, [8081, 8082, 8083, 8084]);
    }

    #[test]
    fn a_disabled_plain_port_means_tls_at_the_secure_port() {
        let body = doc(&[
            inst(
                r#""a""#,
                r#"{"$": 8443, "@enabled": "false"}"#,
                r#"{"$": 8443, "@enabled": "true"}"#,
            ),
            inst(
                r#""b""#,
                r#"{"$": 8080, "@enabled": false}"#,
                r#"{"$": 8443, "@enabled": false}"#,
            ),
            inst(
                r#""c""#,
                r#"{"$": 8081, "@enabled": "true"}"#,
                r#"{"$": 443, "@enabled": "false"}"#,
            ),
        ]);
        let v = routed(&body);
        let ports: Vec<(u16, bool)> = v
            .endpoints
            .iter()
            .map(|e| (e.addr.port(), e.meta.secure))
            .collect();
        assert_eq!(ports, [(8081, false), (8443, true)]);
        assert_eq!(v.dropped.len(), 1);
        assert_eq!(v.dropped[0].reason, DropReason::NoUsablePort);
        assert!(
            v.dropped[0]
                .entry
                .contains("neither port 8080 nor securePort 8443"),
            "{:?}",
            v.dropped
        );
    }

    #[test]
    fn the_zone_is_metadata_zone_else_the_amazon_availability_zone() {
        // `dataCenterInfo` as Eureka's Amazon clients send it (AmazonInfo).
        let amazon = |id: &str, metadata: &str| {
            format!(
                r#"{{"instanceId": "{id}", "ipAddr": "10.0.0.{id}", "status": "UP",
                "port": {{"$": 80, "@enabled": "true"}}, "metadata": {metadata},
                "dataCenterInfo": {{"@class": "com.netflix.appinfo.AmazonInfo", "name": "Amazon",
                  "metadata": {{"availability-zone": "us-east-1b", "instance-id": "i-1"}}}}}}"#
            )
        };
        let body = doc(&[
            amazon("1", r#"{"zone": "zone-a"}"#),
            amazon("2", "{}"),
            r#"{"instanceId": "3", "ipAddr": "10.0.0.3", "status": "UP",
            "port": {"$": 80, "@enabled": "true"},
            "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"}}"#
                .to_string(),
        ]);
        let zones: Vec<_> = routed(&body)
            .endpoints
            .iter()
            .map(|e| e.meta.zone.clone())
            .collect();
        assert_eq!(
            zones,
            [Some("zone-a".into()), Some("us-east-1b".into()), None]
        );
    }

    #[test]
    fn a_secure_instance_carries_its_host_name_and_metadata_does_not_make_it_secure() {
        let body = doc(&[
            r#"{"instanceId": "a", "ipAddr": "10.0.0.1", "status": "UP",
            "hostName": "pay-1.internal", "metadata": {"secure": "true"},
            "port": {"$": 80, "@enabled": "false"}, "securePort": {"$": 443, "@enabled": "true"}}"#
                .to_string(),
            r#"{"instanceId": "b", "ipAddr": "10.0.0.2", "status": "UP",
            "hostName": "", "metadata": {"secure": "true"},
            "port": {"$": 80, "@enabled": "true"}, "securePort": {"$": 443, "@enabled": "true"}}"#
                .to_string(),
        ]);
        let v = routed(&body);
        let got: Vec<_> = v
            .endpoints
            .iter()
            .map(|e| (e.addr.port(), e.meta.secure, e.meta.host_name.as_deref()))
            .collect();
        assert_eq!(
            got,
            [(443, true, Some("pay-1.internal")), (80, false, None)]
        );
    }

    #[test]
    fn an_unreadable_instance_costs_only_itself() {
        let body = doc(&[
            inst(r#""a""#, "8081", "443"),
            r#"{"instanceId": "broken", "status": "UP", "port": 8082}"#.to_string(),
            inst(r#""c""#, "8083", "443"),
        ]);
        let v = routed(&body);
        let ports: Vec<u16> = v.endpoints.iter().map(|e| e.addr.port()).collect();
        assert_eq!(ports, [8081, 8083]);
        assert_eq!(v.dropped.len(), 1);
        assert_eq!(v.dropped[0].reason, DropReason::MalformedEntry);
        assert!(v.dropped[0].entry.contains("ipAddr"), "{:?}", v.dropped);
    }

    #[test]
    fn spring_captures_parse() {
        let all = parse(&fixture("apps-spring-capture.json")).unwrap();
        assert_eq!(all.hashcode.as_deref(), Some("UP_1_"));
        assert_eq!(all.reconcile_hash(), "UP_1_");
        let i = &all.apps["EUREKACONSUMER"]["DESKTOP-SR3A9FI:eurekaconsumer:9002"];
        assert_eq!(
            (i.ip.as_str(), i.port, i.secure_port),
            ("10.8.30.55", (9002, true), (443, false))
        );
        assert_eq!(i.effective_status(), "UP");
        assert_eq!(i.metadata["management.port"], "9002");

        let one = parse(&fixture("app-spring-capture.json")).unwrap();
        let i = one.apps["MYMICROSERVICE2"].values().next().unwrap();
        assert_eq!((i.port, i.secure_port), ((8080, true), (8443, true)));
        assert_eq!(i.overridden.as_deref(), Some("UNKNOWN"));
        assert_eq!(i.action.as_deref(), Some("ADDED"));
    }

    #[test]
    fn register_payload_and_dialects_parse() {
        // The APISIX payload is one instance; wrap it as the server would list it.
        let payload: Value =
            serde_json::from_slice(&fixture("register-instance-payload.json")).unwrap();
        let doc = serde_json::json!({"applications": {"application": {"name": "apisix-eureka-user-service", "instance": payload["instance"]}}});
        let apps = parse(doc.to_string().as_bytes()).unwrap();
        let i = &apps.apps["APISIX-EUREKA-USER-SERVICE"]["one"];
        assert_eq!(i.metadata["weight"], "20");
        let d = EurekaDiscovery::from_url("eureka://127.0.0.1:8761/eureka", None).unwrap();
        let c = d.candidates(&apps, "apisix-eureka-user-service");
        assert_eq!(
            (c[0].host.as_str(), c[0].port, c[0].weight),
            ("127.0.0.1", 1980, 20.0)
        );

        // Objects for single elements, "$" as a string, lower-case override, EmptyMap metadata.
        let quirky = br#"{"applications": {"versions__delta": 3, "apps__hashcode": "DOWN_1_UP_1_",
          "application": {"name": "orders", "instance": [
            {"instanceId": "a", "ipAddr": "127.0.0.1", "status": "UP", "overriddenstatus": "OUT_OF_SERVICE",
             "port": {"$": "8080", "@enabled": true}, "metadata": {"@class": "java.util.Collections$EmptyMap"}},
            {"instanceId": "b", "ipAddr": "127.0.0.2", "status": "DOWN", "port": 8081}]}}}"#;
        let apps = parse(quirky).unwrap();
        let a = &apps.apps["ORDERS"]["a"];
        assert_eq!((a.port.0, a.effective_status()), (8080, "OUT_OF_SERVICE"));
        assert!(a.metadata.is_empty());
        assert_eq!(apps.apps["ORDERS"]["b"].port.0, 8081);
        assert_eq!(apps.reconcile_hash(), "DOWN_1_UP_1_");
        assert!(
            d.candidates(&apps, "orders").is_empty(),
            "neither is effectively UP"
        );
        assert!(parse(b"<html>502</html>").is_err());
        assert!(parse(br#"{"other": 1}"#).is_err());
    }

    #[test]
    fn deltas_apply_and_urls_parse() {
        let mut local = parse(
            br#"{"applications": {"application": [{"name": "O", "instance": [
            {"instanceId": "a", "ipAddr": "127.0.0.1", "status": "UP", "port": 1},
            {"instanceId": "b", "ipAddr": "127.0.0.1", "status": "UP", "port": 2}]}]}}"#,
        )
        .unwrap();
        let delta = parse(br#"{"applications": {"apps__hashcode": "DOWN_1_UP_1_", "application": [{"name": "O", "instance": [
            {"instanceId": "a", "ipAddr": "127.0.0.1", "status": "DOWN", "port": 1, "actionType": "MODIFIED"},
            {"instanceId": "b", "ipAddr": "127.0.0.1", "status": "UP", "port": 2, "actionType": "DELETED"},
            {"instanceId": "c", "ipAddr": "127.0.0.1", "status": "UP", "port": 3, "actionType": "ADDED"}]}]}}"#).unwrap();
        local.apply(delta);
        assert_eq!(local.reconcile_hash(), "DOWN_1_UP_1_");
        let d = EurekaDiscovery::from_url(
            "eureka://u:p@10.0.0.1:8761/eureka/v2/,10.0.0.2:8761?interval=2s&weight_key=w&secure=true",
            None,
        )
        .unwrap();
        assert_eq!(
            d.servers,
            ["http://10.0.0.1:8761/eureka/v2", "http://10.0.0.2:8761"]
        );
        assert_eq!(d.auth, Some(("u".into(), "p".into())));
        assert_eq!(
            (d.interval, d.weight_key.as_str(), d.secure),
            (Duration::from_secs(2), "w", true)
        );
        assert_eq!(
            d.describe(),
            "eureka://10.0.0.1:8761/eureka/v2,10.0.0.2:8761"
        );
        assert!(EurekaDiscovery::from_url("eureka://host/eureka", None).is_err());
        assert!(EurekaDiscovery::from_url("eureka://h:1?color=red", None).is_err());
    }
}
