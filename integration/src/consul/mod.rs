//! A Consul HTTP API emulator for tests, faithful to the wire protocol Outrigger relies on.
//!
//! Endpoints: agent service register/deregister, agent check pass/warn/fail, catalog
//! register/deregister, `GET /v1/health/service/<name>` (with `passing`, `tag`, `index`,
//! `wait`), `GET /v1/catalog/service/<name>`, `GET /v1/catalog/services`,
//! `GET /v1/status/leader`. Responses follow the shapes captured in
//! `integration/fixtures/consul` (real-server `Address`/`Port` keys in tagged addresses, `Meta: null`
//! when empty, header names title-cased as Go servers send them).
//!
//! Blocking queries behave as Consul's: with `index`, the request hangs while the service's
//! index is not above it, up to `wait` (default 5m, at most 10m) plus up to wait/16 of jitter.
//! An index that went backwards (see [`ConsulEmulator::reset_index`]) also blocks until a change
//! or the wait, then answers with the lower index, as a restored Consul does.
//!
//! Fault switches: a fixed error status, garbage bodies, slow answers, index resets, and
//! stopping/restarting the listener on the same port with the state kept.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rand::Rng;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::serve::accept_connections;

mod agent;
pub use agent::AgentEvent;

/// How a quirky agent gives its index on health queries, answering each at once (it never
/// blocks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IndexQuirk {
    /// `X-Consul-Index: 0`.
    Zero,
    /// No `X-Consul-Index` header.
    Missing,
}

/// What a faulty Consul sends instead of a proper answer to health queries.
#[derive(Debug, Clone, PartialEq)]
pub enum Garbage {
    /// Random binary bytes with status 200.
    Binary,
    /// An HTML error page with status 200, as a misconfigured load balancer sends.
    Html,
    /// The proper answer cut off halfway.
    Truncated,
    /// A proper JSON array padded to this many bytes.
    Huge(usize),
    /// The proper answer with one more entry that has `Node` and `Checks` but no `Service`
    /// object, and one whose `Service.Address` is a number.
    OddEntries,
}

#[derive(Debug, Clone)]
struct Instance {
    id: String,
    name: String,
    node: String,
    node_address: String,
    address: String,
    port: Value,
    tags: Vec<String>,
    meta: BTreeMap<String, String>,
    weights: (Value, Value),
    tagged: BTreeMap<String, Value>,
    check: Option<(String, String)>,
    create_index: u64,
    modify_index: u64,
}

#[derive(Debug, Default)]
struct Faults {
    status: Option<u16>,
    garbage: Option<Garbage>,
    delay: Duration,
    index: Option<IndexQuirk>,
    first_tag_only: bool,
}

#[derive(Debug, Default)]
struct State {
    index: u64,
    instances: BTreeMap<String, Instance>,
    /// Index of the last change per service name.
    service_index: HashMap<String, u64>,
    faults: Faults,
    health_requests: u64,
    last_token: Option<String>,
    /// The agent's checks by check id.
    checks: BTreeMap<String, agent::CheckDef>,
    /// What the agent was asked to do, in order.
    events: Vec<AgentEvent>,
}

impl State {
    fn bump(&mut self, service: &str) -> u64 {
        self.index += 1;
        self.service_index.insert(service.to_string(), self.index);
        self.index
    }
    fn index_of(&self, service: &str) -> u64 {
        self.service_index
            .get(service)
            .copied()
            .unwrap_or(self.index)
            .max(1)
    }
}

struct Shared {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

/// A running emulator; stops when dropped.
pub struct ConsulEmulator {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// The agent's own duties (TTL expiry, its checks, reaping).
    agent: JoinHandle<()>,
}

/// The name of the emulated agent's node.
pub const NODE: &str = "outrigger-test-node";

fn key<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    // Consul decodes request bodies case-insensitively; clients send `name` or `Name`.
    v.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn string(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).unwrap_or_default().to_string()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn go_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return None,
    })
}

impl ConsulEmulator {
    /// Starts an emulator on a free loopback port.
    pub async fn start() -> ConsulEmulator {
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                index: 10,
                ..State::default()
            }),
            changed,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let me = ConsulEmulator {
            addr,
            agent: tokio::spawn(agent::run(shared.clone())),
            shared,
            task: Mutex::new(None),
        };
        me.serve(listener);
        me
    }

    fn serve(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let task = tokio::spawn(accept_connections(listener, move |stream| {
            let shared = shared.clone();
            async move {
                let service = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(shared, req).await) }
                });
                // Go's net/http canonicalises header names (X-Consul-Index,
                // X-Consul-Knownleader); title case reproduces that on the wire.
                let _ = hyper::server::conn::http1::Builder::new()
                    .title_case_headers(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        }));
        *self.task.lock().unwrap() = Some(task);
    }

    /// The URL clients use, `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Registers (or replaces) a service instance on the emulated agent's node, as
    /// `PUT /v1/agent/service/register` would; `check` adds a TTL check starting `passing`.
    pub fn register(&self, id: &str, name: &str, addr: SocketAddr, weight: u32) {
        let body = json!({
            "ID": id, "Name": name, "Address": addr.ip().to_string(), "Port": addr.port(),
            "Weights": {"Passing": weight, "Warning": 1},
            "Check": {"TTL": "30s", "Status": "passing"},
        });
        self.mutate(|s| agent_register(s, &body));
    }

    /// Registers an instance with `tags` (weight 1), as [`ConsulEmulator::register`] does.
    pub fn register_tagged(&self, id: &str, name: &str, addr: SocketAddr, tags: &[&str]) {
        let body = json!({
            "ID": id, "Name": name, "Address": addr.ip().to_string(), "Port": addr.port(),
            "Tags": tags, "Check": {"TTL": "30s", "Status": "passing"},
        });
        self.mutate(|s| agent_register(s, &body));
    }

    /// Removes a service instance.
    pub fn deregister(&self, id: &str) {
        self.mutate(|s| deregister(s, id));
    }

    /// Sets the status of an instance's check: `passing`, `warning` or `critical`.
    pub fn set_check(&self, id: &str, status: &str) {
        let check = format!("service:{id}");
        self.mutate(|s| set_check(s, &check, status));
    }

    /// Moves every index back to `to`, as a Consul restored from an older snapshot does.
    pub fn reset_index(&self, to: u64) {
        self.mutate(|s| {
            s.index = to;
            for v in s.service_index.values_mut() {
                *v = (*v).min(to);
            }
            for i in s.instances.values_mut() {
                i.modify_index = i.modify_index.min(to);
                i.create_index = i.create_index.min(to);
            }
            Ok(())
        });
    }

    /// Answers every health query with this status (None: answer normally).
    pub fn fail_with(&self, status: Option<u16>) {
        self.shared.state.lock().unwrap().faults.status = status;
        // A server that loses its leader fails blocked queries too, not only new ones.
        self.shared.changed.send_modify(|v| *v += 1);
    }

    /// Answers health queries with garbage (None: answer normally).
    pub fn serve_garbage(&self, garbage: Option<Garbage>) {
        self.shared.state.lock().unwrap().faults.garbage = garbage;
        // Wake blocked queries so the fault is seen at once, as a restarted server would be.
        self.shared.changed.send_modify(|v| *v += 1);
    }

    /// Answers health queries at once with an index of 0 or none (None: as Consul does).
    pub fn index_quirk(&self, quirk: Option<IndexQuirk>) {
        self.shared.state.lock().unwrap().faults.index = quirk;
        self.shared.changed.send_modify(|v| *v += 1);
    }

    /// Applies only the first `tag` of a health query, as Consul before 1.3 did (false: all).
    pub fn first_tag_only(&self, on: bool) {
        self.shared.state.lock().unwrap().faults.first_tag_only = on;
    }

    /// Delays every answer by `delay`.
    pub fn delay(&self, delay: Duration) {
        self.shared.state.lock().unwrap().faults.delay = delay;
    }

    /// How many health queries have been answered or are in progress.
    pub fn health_requests(&self) -> u64 {
        self.shared.state.lock().unwrap().health_requests
    }

    /// The last `X-Consul-Token` a client sent.
    pub fn last_token(&self) -> Option<String> {
        self.shared.state.lock().unwrap().last_token.clone()
    }

    /// The index the emulator would answer for `service` now.
    pub fn index_of(&self, service: &str) -> u64 {
        self.shared.state.lock().unwrap().index_of(service)
    }

    /// What the agent was asked to do through its API (and what it reaped), in order.
    pub fn events(&self) -> Vec<AgentEvent> {
        self.shared.state.lock().unwrap().events.clone()
    }

    /// Every `agent/service/register` body received, in order.
    pub fn registrations(&self) -> Vec<Value> {
        agent::registrations(&self.shared.state.lock().unwrap())
    }

    /// The status of each service's check by check id (`service:<id>`).
    pub fn check_statuses(&self) -> BTreeMap<String, String> {
        agent::check_statuses(&self.shared.state.lock().unwrap())
    }

    /// Whether the agent has a service with this id.
    pub fn has_service(&self, id: &str) -> bool {
        self.shared.state.lock().unwrap().instances.contains_key(id)
    }

    /// Forgets every service and check, as an agent restarted without its data does.
    pub fn forget_services(&self) {
        self.mutate(|s| {
            for name in agent::forget(s) {
                s.bump(&name);
            }
            Ok(())
        });
    }

    /// Stops listening: connections are refused until [`ConsulEmulator::restart`].
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Listens again on the same port, with the registry as it was.
    pub async fn restart(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn mutate(&self, f: impl FnOnce(&mut State) -> Result<(), String>) {
        let result = f(&mut self.shared.state.lock().unwrap());
        if let Err(e) = result {
            panic!("emulator: {e}");
        }
        self.shared.changed.send_modify(|v| *v += 1);
    }
}

impl Drop for ConsulEmulator {
    fn drop(&mut self) {
        self.agent.abort();
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }
}

fn agent_register(s: &mut State, body: &Value) -> Result<(), String> {
    let name = string(key(body, "Name"));
    if name.is_empty() {
        return Err("missing service name".into());
    }
    let id = Some(string(key(body, "ID")))
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| name.clone());
    let check = key(body, "Check")
        .or_else(|| key(body, "Checks").and_then(|c| c.get(0)))
        .map(|c| {
            let status = Some(string(key(c, "Status")))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "critical".to_string());
            (format!("service:{id}"), status)
        });
    let weights = key(body, "Weights");
    let tagged = key(body, "TaggedAddresses")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let index = s.bump(&name);
    let create_index = s.instances.get(&id).map_or(index, |old| old.create_index);
    s.instances.insert(
        id.clone(),
        Instance {
            id,
            name,
            node: NODE.to_string(),
            node_address: "127.0.0.1".to_string(),
            address: string(key(body, "Address")),
            port: key(body, "Port").cloned().unwrap_or(json!(0)),
            tags: strings(key(body, "Tags")),
            meta: string_map(key(body, "Meta")),
            weights: (
                weights
                    .and_then(|w| key(w, "Passing"))
                    .cloned()
                    .unwrap_or(json!(1)),
                weights
                    .and_then(|w| key(w, "Warning"))
                    .cloned()
                    .unwrap_or(json!(1)),
            ),
            tagged,
            check,
            create_index,
            modify_index: index,
        },
    );
    Ok(())
}

fn catalog_register(s: &mut State, body: &Value) -> Result<(), String> {
    let node = string(key(body, "Node"));
    let node_address = string(key(body, "Address"));
    let Some(svc) = key(body, "Service") else {
        return Ok(());
    };
    let name = string(key(svc, "Service"));
    let id = Some(string(key(svc, "ID")))
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| name.clone());
    let check = key(body, "Checks")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .or_else(|| key(body, "Check"))
        .map(|c| (format!("service:{id}"), string(key(c, "Status"))));
    let index = s.bump(&name);
    s.instances.insert(
        id.clone(),
        Instance {
            id,
            name,
            node,
            node_address,
            address: string(key(svc, "Address")),
            port: key(svc, "Port").cloned().unwrap_or(json!(0)),
            tags: strings(key(svc, "Tags")),
            meta: string_map(key(svc, "Meta")),
            weights: (json!(1), json!(1)),
            tagged: BTreeMap::new(),
            check,
            create_index: index,
            modify_index: index,
        },
    );
    Ok(())
}

fn deregister(s: &mut State, id: &str) -> Result<(), String> {
    let Some(old) = s.instances.remove(id) else {
        return Err(format!("unknown service id {id:?}"));
    };
    s.bump(&old.name);
    Ok(())
}

fn set_check(s: &mut State, check: &str, status: &str) -> Result<(), String> {
    let Some(inst) = s
        .instances
        .values_mut()
        .find(|i| i.check.as_ref().is_some_and(|(id, _)| id == check))
    else {
        return Err(format!("unknown check {check:?}"));
    };
    inst.check = Some((check.to_string(), status.to_string()));
    let name = inst.name.clone();
    let index = s.bump(&name);
    if let Some(inst) = s.instances.values_mut().find(|i| i.name == name) {
        inst.modify_index = index;
    }
    Ok(())
}

fn health_entry(i: &Instance) -> Value {
    let mut tagged = serde_json::Map::new();
    if !i.address.is_empty() {
        for k in ["lan_ipv4", "wan_ipv4"] {
            tagged.insert(k.into(), json!({"Address": i.address, "Port": i.port}));
        }
    }
    for (k, v) in &i.tagged {
        tagged.insert(k.clone(), v.clone());
    }
    let mut checks = vec![json!({
        "Node": i.node, "CheckID": "serfHealth", "Name": "Serf Health Status",
        "Status": "passing", "Notes": "", "Output": "Agent alive and reachable",
        "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Namespace": "default",
    })];
    if let Some((id, status)) = &i.check {
        checks.push(json!({
            "Node": i.node, "CheckID": id, "Name": format!("Service '{}' check", i.name),
            "Status": status, "Notes": "", "Output": "", "ServiceID": i.id,
            "ServiceName": i.name, "ServiceTags": i.tags, "Namespace": "default",
        }));
    }
    json!({
        "Node": {
            "ID": "40e4a748-2192-161a-0510-9bf59fe950b5", "Node": i.node,
            "Address": i.node_address, "Datacenter": "dc1",
            "TaggedAddresses": {"lan": i.node_address, "lan_ipv4": i.node_address,
                                "wan": i.node_address, "wan_ipv4": i.node_address},
            "Meta": {"consul-network-segment": ""},
            "CreateIndex": 5, "ModifyIndex": 5,
        },
        "Service": {
            "ID": i.id, "Service": i.name, "Tags": i.tags, "Address": i.address,
            "TaggedAddresses": if tagged.is_empty() { Value::Null } else { Value::Object(tagged) },
            "Meta": if i.meta.is_empty() { Value::Null } else { json!(i.meta) },
            "Port": i.port,
            "Weights": {"Passing": i.weights.0, "Warning": i.weights.1},
            "EnableTagOverride": false, "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
            "Connect": {}, "PeerName": "", "CreateIndex": i.create_index,
            "ModifyIndex": i.modify_index, "Namespace": "default",
        },
        "Checks": checks,
    })
}

fn catalog_entry(i: &Instance) -> Value {
    json!({
        "ID": "40e4a748-2192-161a-0510-9bf59fe950b5", "Node": i.node, "Address": i.node_address,
        "Datacenter": "dc1", "TaggedAddresses": {"lan": i.node_address, "wan": i.node_address},
        "NodeMeta": {"consul-network-segment": ""}, "CreateIndex": i.create_index,
        "ModifyIndex": i.modify_index, "ServiceAddress": i.address,
        "ServiceEnableTagOverride": false, "ServiceID": i.id, "ServiceName": i.name,
        "ServicePort": i.port,
        "ServiceMeta": i.meta, "ServiceTaggedAddresses": i.tagged, "ServiceTags": i.tags,
        "ServiceProxy": {"DestinationServiceName": "", "DestinationServiceID": "",
            "LocalServiceAddress": "", "LocalServicePort": 0, "Config": null, "Upstreams": null},
        "ServiceConnect": {"Native": false, "Proxy": null}, "Namespace": "default",
    })
}

fn reply(status: StatusCode, index: Option<u64>, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert("vary", "Accept-Encoding".parse().unwrap());
    if let Some(index) = index {
        h.insert("x-consul-effective-consistency", "leader".parse().unwrap());
        h.insert("x-consul-index", index.to_string().parse().unwrap());
        h.insert("x-consul-knownleader", "true".parse().unwrap());
        h.insert("x-consul-lastcontact", "0".parse().unwrap());
    }
    r
}

/// A query string's parameters in order, repeated keys kept (`tag=a&tag=b`).
struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, key: &str) -> Option<&String> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.0.iter().filter(move |(k, _)| k == key).map(|(_, v)| v)
    }
}

fn query(req: &Request<Incoming>) -> Query {
    Query(
        req.uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
    )
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let delay = shared.state.lock().unwrap().faults.delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if let Some(token) = req.headers().get("x-consul-token") {
        shared.state.lock().unwrap().last_token = token.to_str().ok().map(str::to_string);
    }
    let q = query(&req);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mutation = match (&method, path.as_str()) {
        (&Method::PUT, "/v1/agent/service/register") => Some(with_state(&shared, |s| {
            agent_register(s, &json_body)?;
            let name = string(key(&json_body, "Name"));
            let id = Some(string(key(&json_body, "ID")))
                .filter(|i| !i.is_empty())
                .unwrap_or(name);
            agent::registered(s, &id, &json_body);
            Ok(())
        })),
        (&Method::PUT, "/v1/catalog/register") => {
            Some(with_state(&shared, |s| catalog_register(s, &json_body)))
        }
        (&Method::PUT, "/v1/catalog/deregister") => {
            let id = string(key(&json_body, "ServiceID"));
            Some(with_state(&shared, |s| deregister(s, &id)))
        }
        (&Method::PUT, p) if p.starts_with("/v1/agent/service/deregister/") => {
            let id = p
                .trim_start_matches("/v1/agent/service/deregister/")
                .to_string();
            Some(with_state(&shared, |s| {
                agent::deregistered(s, &id);
                deregister(s, &id)
            }))
        }
        (&Method::PUT, p) if p.starts_with("/v1/agent/check/") => {
            let rest = p.trim_start_matches("/v1/agent/check/");
            let (verb, check) = rest.split_once('/').unwrap_or((rest, ""));
            let status = match verb {
                "pass" => "passing".to_string(),
                "warn" => "warning".to_string(),
                "fail" => "critical".to_string(),
                "update" => string(key(&json_body, "Status")),
                _ => return reply(StatusCode::NOT_FOUND, None, "unknown check verb"),
            };
            if !["passing", "warning", "critical"].contains(&status.as_str()) {
                return reply(StatusCode::BAD_REQUEST, None, "Invalid check status");
            }
            let check = check.to_string();
            let known = shared
                .state
                .lock()
                .unwrap()
                .instances
                .values()
                .any(|i| i.check.as_ref().is_some_and(|(id, _)| *id == check));
            if !known {
                // Consul 1.x: 404 for a check this agent does not have (after a restart).
                return reply(
                    StatusCode::NOT_FOUND,
                    None,
                    format!("Unknown check ID \"{check}\". Ensure that the check ID is passed, not the check name."),
                );
            }
            Some(with_state(&shared, |s| {
                agent::check_set(s, &check, &status, true);
                set_check(s, &check, &status)
            }))
        }
        _ => None,
    };
    if let Some(result) = mutation {
        return match result {
            Ok(()) => {
                shared.changed.send_modify(|v| *v += 1);
                // The catalog endpoints answer `true`; the agent ones an empty 200.
                let text = if path.starts_with("/v1/catalog") {
                    "true"
                } else {
                    ""
                };
                reply(StatusCode::OK, None, text)
            }
            Err(e) => reply(StatusCode::BAD_REQUEST, None, e),
        };
    }
    if method != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, None, "method not allowed");
    }
    if path == "/v1/agent/services" {
        let s = shared.state.lock().unwrap();
        return reply(StatusCode::OK, None, agent::services_json(&s).to_string());
    }
    if let Some(id) = path.strip_prefix("/v1/agent/service/") {
        let s = shared.state.lock().unwrap();
        return match agent::service_json(&s, id) {
            Some(v) => reply(StatusCode::OK, None, v.to_string()),
            None => reply(
                StatusCode::NOT_FOUND,
                None,
                format!("unknown service ID: {id}"),
            ),
        };
    }
    if path == "/v1/status/leader" {
        return reply(StatusCode::OK, None, "\"127.0.0.1:8300\"");
    }
    if path == "/v1/catalog/services" {
        let s = shared.state.lock().unwrap();
        let mut all: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for i in s.instances.values() {
            let tags = all.entry(i.name.clone()).or_default();
            for t in &i.tags {
                if !tags.contains(t) {
                    tags.push(t.clone());
                }
            }
        }
        return reply(StatusCode::OK, Some(s.index.max(1)), json!(all).to_string());
    }
    if let Some(name) = path.strip_prefix("/v1/catalog/service/") {
        let s = shared.state.lock().unwrap();
        let list: Vec<Value> = s
            .instances
            .values()
            .filter(|i| i.name == name)
            .map(catalog_entry)
            .collect();
        return reply(
            StatusCode::OK,
            Some(s.index_of(name)),
            json!(list).to_string(),
        );
    }
    if let Some(name) = path.strip_prefix("/v1/health/service/") {
        return health(&shared, name, &q).await;
    }
    reply(StatusCode::NOT_FOUND, None, "404 page not found")
}

fn with_state(
    shared: &Shared,
    f: impl FnOnce(&mut State) -> Result<(), String>,
) -> Result<(), String> {
    f(&mut shared.state.lock().unwrap())
}

async fn health(shared: &Shared, name: &str, q: &Query) -> Response<Full<Bytes>> {
    shared.state.lock().unwrap().health_requests += 1;
    let min_index: u64 = q.get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
    if min_index > 0 {
        let wait = q
            .get("wait")
            .and_then(|w| go_duration(w))
            .unwrap_or(Duration::from_secs(300))
            .min(Duration::from_secs(600));
        let jitter = wait / 16;
        let jitter = if jitter.is_zero() {
            Duration::ZERO
        } else {
            rand::rng().random_range(Duration::ZERO..jitter)
        };
        let deadline = tokio::time::Instant::now() + wait + jitter;
        let mut changes = shared.changed.subscribe();
        loop {
            {
                let s = shared.state.lock().unwrap();
                if s.index_of(name) > min_index
                    || s.faults.status.is_some()
                    || s.faults.garbage.is_some()
                    || s.faults.index.is_some()
                {
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                changed = changes.changed() => if changed.is_err() { break },
            }
        }
    }
    let s = shared.state.lock().unwrap();
    let index = s.index_of(name);
    if let Some(status) = s.faults.status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return reply(status, None, "rpc error making call: No cluster leader");
    }
    let passing = q.contains_key("passing");
    let mut tags: Vec<&String> = q.all("tag").collect();
    if s.faults.first_tag_only {
        tags.truncate(1);
    }
    let list: Vec<Value> = s
        .instances
        .values()
        .filter(|i| i.name == name)
        .filter(|i| !passing || i.check.as_ref().is_none_or(|(_, st)| st == "passing"))
        .filter(|i| tags.iter().all(|t| i.tags.contains(t)))
        .map(health_entry)
        .collect();
    let proper = serde_json::to_vec(&list).unwrap();
    let body: Vec<u8> = match &s.faults.garbage {
        None => proper,
        Some(Garbage::Binary) => (0..512).map(|i| (i * 37 % 256) as u8).collect(),
        Some(Garbage::Html) => {
            b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>".to_vec()
        }
        Some(Garbage::Truncated) => proper[..proper.len() / 2].to_vec(),
        Some(Garbage::OddEntries) => {
            let mut odd = list.clone();
            odd.push(serde_json::json!({
                "Node": {"Node": "n-odd", "Address": "127.0.0.1", "Datacenter": "dc1"},
                "Checks": [{"Status": "passing"}],
            }));
            odd.push(serde_json::json!({
                "Node": {"Node": "n-odd2", "Address": "127.0.0.1", "Datacenter": "dc1"},
                "Service": {"ID": "x", "Service": name, "Address": 12, "Port": 80},
                "Checks": [],
            }));
            serde_json::to_vec(&odd).unwrap()
        }
        Some(Garbage::Huge(size)) => {
            let mut padded = b"[".to_vec();
            while padded.len() < *size {
                padded.extend_from_slice(b"                                                 ");
            }
            padded.extend_from_slice(b"]");
            padded
        }
    };
    let index = match s.faults.index {
        None => Some(index),
        Some(IndexQuirk::Zero) => Some(0),
        Some(IndexQuirk::Missing) => None,
    };
    reply(StatusCode::OK, index, body)
}
