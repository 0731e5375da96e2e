//! A Eureka REST emulator for tests, faithful to what Outrigger and Eureka clients rely on.
//!
//! Under any base path ending in `/eureka` or `/eureka/v2`: register (`POST apps/{APP}`, 204),
//! heartbeat (`PUT apps/{APP}/{id}`, 404 for an unknown instance so clients re-register),
//! deregister (`DELETE apps/{APP}/{id}`), status override (`PUT|DELETE apps/{APP}/{id}/status`),
//! `GET apps/`, `GET apps/{APP}`, and `GET apps/delta` from a queue of recently changed
//! instances with the hash of the full registry (`STATUS_count_`). Leases expire after their
//! `durationInSecs` without a heartbeat. `Accept: application/json` selects JSON; XML is the
//! default, as on real servers. JSON follows `integration/fixtures/eureka`; a quirks switch emits the
//! other dialects real servers produce (single elements as objects, `$` as a string,
//! `overriddenstatus`). Fault switches: error status, garbage, dropped deltas, stop/restart.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::serve::accept_connections;

/// How long changed instances stay in the delta queue (Eureka's default is 3 minutes).
const RETENTION: Duration = Duration::from_secs(180);

#[derive(Debug, Clone)]
struct Inst {
    id: String,
    app: String,
    ip: String,
    host: String,
    port: u16,
    secure_port: u16,
    secure_enabled: bool,
    /// Whether the plain `port` is enabled.
    port_enabled: bool,
    status: String,
    overridden: Option<String>,
    metadata: BTreeMap<String, String>,
    lease: Duration,
    renewed: Instant,
    registered_ms: u64,
    dirty_ms: u64,
}

impl Inst {
    fn effective(&self) -> &str {
        match &self.overridden {
            Some(o) if o != "UNKNOWN" => o,
            _ => &self.status,
        }
    }
}

#[derive(Default)]
struct State {
    apps: BTreeMap<String, BTreeMap<String, Inst>>,
    recent: VecDeque<(Instant, &'static str, Inst)>,
    version: u64,
    fail_status: Option<u16>,
    garbage: bool,
    drop_deltas: bool,
    refuse_deltas: bool,
    quirks: bool,
    requests: u64,
    /// Registrations, heartbeats and cancels received, in order.
    events: Vec<EurekaEvent>,
}

/// A call an instance made about itself.
#[derive(Debug, Clone, PartialEq)]
pub enum EurekaEvent {
    /// `POST apps/<APP>`: the instance id and the status it registered with.
    Registered(String, String),
    /// `PUT apps/<APP>/<id>`: a heartbeat (renewal) of a known instance.
    Renewed(String),
    /// `PUT apps/<APP>/<id>` of an instance the server does not have (answered 404).
    RenewRefused(String),
    /// `DELETE apps/<APP>/<id>`.
    Cancelled(String),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl State {
    fn changed(&mut self, action: &'static str, inst: Inst) {
        self.version += 1;
        self.recent.push_back((Instant::now(), action, inst));
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let mut gone = Vec::new();
        for instances in self.apps.values_mut() {
            instances.retain(|_, i| {
                let alive = now.duration_since(i.renewed) <= i.lease;
                if !alive {
                    gone.push(i.clone());
                }
                alive
            });
        }
        self.apps.retain(|_, v| !v.is_empty());
        for i in gone {
            self.changed("DELETED", i);
        }
        while self
            .recent
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > RETENTION)
        {
            self.recent.pop_front();
        }
    }

    fn hash(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for i in self.apps.values().flat_map(BTreeMap::values) {
            *counts.entry(i.effective()).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|(s, n)| format!("{s}_{n}_"))
            .collect()
    }
}

struct Shared {
    state: Mutex<State>,
}

/// A running emulator; stops when dropped.
pub struct EurekaEmulator {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl EurekaEmulator {
    /// Starts an emulator on a free loopback port.
    pub async fn start() -> EurekaEmulator {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let me = EurekaEmulator {
            addr: listener.local_addr().unwrap(),
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
            }),
            task: Mutex::new(None),
        };
        me.serve(listener);
        me
    }

    fn serve(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            let evicting = shared.clone();
            let serving = accept_connections(listener, move |stream| {
                let shared = shared.clone();
                async move {
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            });
            // Lease expiry runs beside the server and stops with it.
            let evict = async move {
                let mut every = tokio::time::interval(Duration::from_millis(200));
                loop {
                    every.tick().await;
                    evicting.state.lock().unwrap().expire();
                }
            };
            tokio::join!(serving, evict);
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// The service URL clients use: `http://127.0.0.1:port/eureka`.
    pub fn url(&self) -> String {
        format!("http://{}/eureka", self.addr)
    }

    /// Registers `id` of `app` at `addr`, UP, with a 90 s lease and `metadata`.
    pub fn register(&self, app: &str, id: &str, addr: SocketAddr, metadata: &[(&str, &str)]) {
        let mut s = self.shared.state.lock().unwrap();
        let inst = Inst {
            id: id.into(),
            app: app.to_ascii_uppercase(),
            ip: addr.ip().to_string(),
            host: addr.ip().to_string(),
            port: addr.port(),
            secure_port: 443,
            secure_enabled: false,
            port_enabled: true,
            status: "UP".into(),
            overridden: None,
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            lease: Duration::from_secs(90),
            renewed: Instant::now(),
            registered_ms: now_ms(),
            dirty_ms: now_ms(),
        };
        upsert(&mut s, inst);
    }

    /// Registers `id` of `app` as an HTTPS-only instance, as Spring Cloud registers one with
    /// `eureka.instance.non-secure-port-enabled=false`: its `port` disabled, its
    /// `securePort` enabled at `addr`'s port, and `hostName` set to `host_name`.
    pub fn register_secure(&self, app: &str, id: &str, addr: SocketAddr, host_name: &str) {
        self.register(app, id, addr, &[]);
        let mut s = self.shared.state.lock().unwrap();
        let mut inst = s.apps[&app.to_ascii_uppercase()][id].clone();
        inst.port_enabled = false;
        inst.port = 8080;
        inst.secure_port = addr.port();
        inst.secure_enabled = true;
        inst.host = host_name.to_string();
        upsert(&mut s, inst);
    }

    /// Registrations, heartbeats and cancels received, in order.
    pub fn events(&self) -> Vec<EurekaEvent> {
        self.shared.state.lock().unwrap().events.clone()
    }

    /// The effective status of `id` of `app`, if the server has it.
    pub fn status_of(&self, app: &str, id: &str) -> Option<String> {
        let s = self.shared.state.lock().unwrap();
        s.apps
            .get(&app.to_ascii_uppercase())
            .and_then(|a| a.get(id))
            .map(|i| i.effective().to_string())
    }

    /// Renews every lease, as each instance's own heartbeat would; without heartbeats,
    /// instances are evicted after their lease (90 s), as on a real server.
    pub fn heartbeat_all(&self) {
        let mut s = self.shared.state.lock().unwrap();
        for i in s.apps.values_mut().flat_map(BTreeMap::values_mut) {
            i.renewed = Instant::now();
        }
    }

    /// Removes an instance.
    pub fn deregister(&self, app: &str, id: &str) {
        let mut s = self.shared.state.lock().unwrap();
        remove(&mut s, &app.to_ascii_uppercase(), id);
    }

    /// Sets an instance's own status (UP, DOWN, STARTING …), as its heartbeat would.
    pub fn set_status(&self, app: &str, id: &str, status: &str) {
        let mut s = self.shared.state.lock().unwrap();
        modify(&mut s, &app.to_ascii_uppercase(), id, |i| {
            i.status = status.into()
        });
    }

    /// Sets (Some) or removes (None) a status override, as `PUT/DELETE …/status` do.
    pub fn set_override(&self, app: &str, id: &str, status: Option<&str>) {
        let mut s = self.shared.state.lock().unwrap();
        modify(&mut s, &app.to_ascii_uppercase(), id, |i| {
            i.overridden = status.map(str::to_string)
        });
    }

    /// Answers every read with this status (None: normally).
    pub fn fail_with(&self, status: Option<u16>) {
        self.shared.state.lock().unwrap().fail_status = status;
    }

    /// Answers reads with an HTML error page (true) or normally.
    pub fn serve_garbage(&self, on: bool) {
        self.shared.state.lock().unwrap().garbage = on;
    }

    /// Answers `apps/delta` with 403 (true), as a Eureka server does with
    /// `eureka.disableDelta=true` or while it may not yet serve its registry
    /// (`ApplicationsResource.getContainerDifferential`); full fetches still answer.
    pub fn refuse_deltas(&self, on: bool) {
        self.shared.state.lock().unwrap().refuse_deltas = on;
    }

    /// Leaves recent changes out of deltas (true), as a client that missed deltas sees it.
    pub fn drop_deltas(&self, on: bool) {
        self.shared.state.lock().unwrap().drop_deltas = on;
    }

    /// Emits the other JSON dialects of real servers (single elements as objects, `$` as a
    /// string, `overriddenstatus`).
    pub fn quirks(&self, on: bool) {
        self.shared.state.lock().unwrap().quirks = on;
    }

    /// Read requests answered so far.
    pub fn requests(&self) -> u64 {
        self.shared.state.lock().unwrap().requests
    }

    /// Stops listening and drops open connections.
    pub fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
    }

    /// Listens again on the same port with the registry as it was (leases renewed, as a
    /// server restarted from a peer would have them).
    pub async fn restart(&self) {
        {
            let mut s = self.shared.state.lock().unwrap();
            for i in s.apps.values_mut().flat_map(BTreeMap::values_mut) {
                i.renewed = Instant::now();
            }
        }
        self.serve(TcpListener::bind(self.addr).await.unwrap());
    }
}

impl Drop for EurekaEmulator {
    fn drop(&mut self) {
        self.stop();
    }
}

fn upsert(s: &mut State, inst: Inst) {
    let action = if s
        .apps
        .get(&inst.app)
        .is_some_and(|a| a.contains_key(&inst.id))
    {
        "MODIFIED"
    } else {
        "ADDED"
    };
    s.apps
        .entry(inst.app.clone())
        .or_default()
        .insert(inst.id.clone(), inst.clone());
    s.changed(action, inst);
}

fn remove(s: &mut State, app: &str, id: &str) -> bool {
    let Some(inst) = s.apps.get_mut(app).and_then(|a| a.remove(id)) else {
        return false;
    };
    s.apps.retain(|_, v| !v.is_empty());
    s.changed("DELETED", inst);
    true
}

fn modify(s: &mut State, app: &str, id: &str, f: impl FnOnce(&mut Inst)) -> bool {
    let Some(inst) = s.apps.get_mut(app).and_then(|a| a.get_mut(id)) else {
        return false;
    };
    f(inst);
    inst.dirty_ms = now_ms();
    let copy = inst.clone();
    s.changed("MODIFIED", copy);
    true
}

fn instance_json(i: &Inst, action: &str, quirks: bool) -> Value {
    let enabled = i.port_enabled.to_string();
    let port = if quirks {
        json!({"$": i.port.to_string(), "@enabled": enabled})
    } else {
        json!({"$": i.port, "@enabled": enabled})
    };
    let override_key = if quirks {
        "overriddenstatus"
    } else {
        "overriddenStatus"
    };
    let metadata = if i.metadata.is_empty() {
        json!({"@class": "java.util.Collections$EmptyMap"})
    } else {
        json!(i.metadata)
    };
    let mut v = json!({
        "instanceId": i.id, "hostName": i.host, "app": i.app, "ipAddr": i.ip,
        "status": i.effective(),
        "port": port,
        "securePort": {"$": i.secure_port, "@enabled": i.secure_enabled.to_string()},
        "countryId": 1,
        "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
        "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": i.lease.as_secs(),
            "registrationTimestamp": i.registered_ms, "lastRenewalTimestamp": now_ms(),
            "evictionTimestamp": 0, "serviceUpTimestamp": i.registered_ms},
        "metadata": metadata,
        "homePageUrl": format!("http://{}:{}/", i.host, i.port),
        "statusPageUrl": format!("http://{}:{}/info", i.host, i.port),
        "healthCheckUrl": format!("http://{}:{}/health", i.host, i.port),
        "vipAddress": i.app.to_ascii_lowercase(), "secureVipAddress": i.app.to_ascii_lowercase(),
        "isCoordinatingDiscoveryServer": "false",
        "lastUpdatedTimestamp": i.dirty_ms.to_string(), "lastDirtyTimestamp": i.dirty_ms.to_string(),
        "actionType": action,
    });
    v[override_key] = json!(i.overridden.as_deref().unwrap_or("UNKNOWN"));
    v
}

fn one_or_many(items: Vec<Value>, quirks: bool) -> Value {
    if quirks && items.len() == 1 {
        items.into_iter().next().unwrap_or(Value::Null)
    } else {
        Value::Array(items)
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn instance_xml(i: &Inst, action: &str) -> String {
    let metadata: String = i
        .metadata
        .iter()
        .map(|(k, v)| format!("<{k}>{}</{k}>", xml_escape(v)))
        .collect();
    format!(
        "    <instance>\n      <instanceId>{id}</instanceId>\n      <hostName>{host}</hostName>\n      <app>{app}</app>\n      <ipAddr>{ip}</ipAddr>\n      <status>{status}</status>\n      <overriddenstatus>{ovr}</overriddenstatus>\n      <port enabled=\"{pe}\">{port}</port>\n      <securePort enabled=\"{se}\">{sp}</securePort>\n      <countryId>1</countryId>\n      <dataCenterInfo class=\"com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo\">\n        <name>MyOwn</name>\n      </dataCenterInfo>\n      <leaseInfo>\n        <renewalIntervalInSecs>30</renewalIntervalInSecs>\n        <durationInSecs>{lease}</durationInSecs>\n        <registrationTimestamp>{reg}</registrationTimestamp>\n        <lastRenewalTimestamp>{now}</lastRenewalTimestamp>\n        <evictionTimestamp>0</evictionTimestamp>\n        <serviceUpTimestamp>{reg}</serviceUpTimestamp>\n      </leaseInfo>\n      <metadata>{metadata}</metadata>\n      <homePageUrl>http://{host}:{port}/</homePageUrl>\n      <statusPageUrl>http://{host}:{port}/info</statusPageUrl>\n      <healthCheckUrl>http://{host}:{port}/health</healthCheckUrl>\n      <vipAddress>{vip}</vipAddress>\n      <secureVipAddress>{vip}</secureVipAddress>\n      <isCoordinatingDiscoveryServer>false</isCoordinatingDiscoveryServer>\n      <lastUpdatedTimestamp>{dirty}</lastUpdatedTimestamp>\n      <lastDirtyTimestamp>{dirty}</lastDirtyTimestamp>\n      <actionType>{action}</actionType>\n    </instance>\n",
        id = xml_escape(&i.id),
        host = i.host,
        app = i.app,
        ip = i.ip,
        status = i.effective(),
        ovr = i.overridden.as_deref().unwrap_or("UNKNOWN"),
        port = i.port,
        se = i.secure_enabled,
        pe = i.port_enabled,
        sp = i.secure_port,
        lease = i.lease.as_secs(),
        reg = i.registered_ms,
        now = now_ms(),
        vip = i.app.to_ascii_lowercase(),
        dirty = i.dirty_ms,
    )
}

/// Renders `groups` (app name -> instances with their action) as JSON or XML.
fn render(
    groups: &BTreeMap<String, Vec<(&Inst, &str)>>,
    version: u64,
    hash: &str,
    json_wanted: bool,
    quirks: bool,
) -> (String, &'static str) {
    if json_wanted {
        let apps: Vec<Value> = groups
            .iter()
            .map(|(name, insts)| {
                let list = insts
                    .iter()
                    .map(|(i, a)| instance_json(i, a, quirks))
                    .collect();
                json!({"name": name, "instance": one_or_many(list, quirks)})
            })
            .collect();
        let delta = if quirks {
            json!(version)
        } else {
            json!(version.to_string())
        };
        let body = json!({"applications": {"versions__delta": delta, "apps__hashcode": hash,
            "application": one_or_many(apps, quirks)}});
        (body.to_string(), "application/json")
    } else {
        let mut x = format!("<applications>\n  <versions__delta>{version}</versions__delta>\n  <apps__hashcode>{hash}</apps__hashcode>\n");
        for (name, insts) in groups {
            x.push_str(&format!("  <application>\n    <name>{name}</name>\n"));
            for (i, a) in insts {
                x.push_str(&instance_xml(i, a));
            }
            x.push_str("  </application>\n");
        }
        x.push_str("</applications>\n");
        (x, "application/xml")
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>, content_type: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", content_type.parse().unwrap());
    r
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let json_wanted = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let q = query(&req);
    let full_path = req.uri().path().to_string();
    let path = full_path
        .strip_prefix("/eureka/v2/")
        .or_else(|| full_path.strip_prefix("/eureka/"))
        .unwrap_or("")
        .trim_end_matches('/')
        .to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let parts: Vec<String> = path.split('/').map(percent_decode).collect();
    let mut s = shared.state.lock().unwrap();
    s.expire();
    match (
        &method,
        parts
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
    ) {
        (&Method::POST, ["apps", app]) => {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let i = &v["instance"];
            let Some(ip) = i["ipAddr"].as_str() else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    "instance without ipAddr",
                    "text/plain",
                );
            };
            let port = i["port"]["$"]
                .as_u64()
                .or_else(|| i["port"]["$"].as_str().and_then(|p| p.parse().ok()))
                .unwrap_or(0) as u16;
            let lease = i["leaseInfo"]["durationInSecs"].as_u64().unwrap_or(90);
            let inst = Inst {
                id: i["instanceId"].as_str().unwrap_or(ip).to_string(),
                app: app.to_ascii_uppercase(),
                ip: ip.to_string(),
                host: i["hostName"].as_str().unwrap_or(ip).to_string(),
                port,
                secure_port: i["securePort"]["$"].as_u64().unwrap_or(443) as u16,
                secure_enabled: i["securePort"]["@enabled"] == "true",
                port_enabled: i["port"]["@enabled"] != "false" && i["port"]["@enabled"] != false,
                status: i["status"].as_str().unwrap_or("UP").to_string(),
                overridden: None,
                metadata: i["metadata"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter(|(k, _)| *k != "@class")
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
                lease: Duration::from_secs(lease),
                renewed: Instant::now(),
                registered_ms: now_ms(),
                dirty_ms: now_ms(),
            };
            s.events.push(EurekaEvent::Registered(
                inst.id.clone(),
                inst.status.clone(),
            ));
            upsert(&mut s, inst);
            reply(StatusCode::NO_CONTENT, "", "text/plain")
        }
        (&Method::PUT, ["apps", app, id]) => {
            let app = app.to_ascii_uppercase();
            let Some(inst) = s.apps.get_mut(&app).and_then(|a| a.get_mut(*id)) else {
                s.events.push(EurekaEvent::RenewRefused(id.to_string()));
                return reply(StatusCode::NOT_FOUND, "", "text/plain");
            };
            inst.renewed = Instant::now();
            let current = inst.status.clone();
            s.events.push(EurekaEvent::Renewed(id.to_string()));
            if let Some(status) = q.get("status") {
                if *status != current {
                    let status = status.clone();
                    modify(&mut s, &app, id, |i| i.status = status);
                }
            }
            reply(StatusCode::OK, "", "text/plain")
        }
        (&Method::DELETE, ["apps", app, id]) => {
            s.events.push(EurekaEvent::Cancelled(id.to_string()));
            if remove(&mut s, &app.to_ascii_uppercase(), id) {
                reply(StatusCode::OK, "", "text/plain")
            } else {
                reply(StatusCode::NOT_FOUND, "", "text/plain")
            }
        }
        (&Method::PUT, ["apps", app, id, "status"]) => {
            let value = q.get("value").cloned();
            if modify(&mut s, &app.to_ascii_uppercase(), id, |i| {
                i.overridden = value
            }) {
                reply(StatusCode::OK, "", "text/plain")
            } else {
                reply(StatusCode::NOT_FOUND, "", "text/plain")
            }
        }
        (&Method::DELETE, ["apps", app, id, "status"]) => {
            if modify(&mut s, &app.to_ascii_uppercase(), id, |i| {
                i.overridden = None
            }) {
                reply(StatusCode::OK, "", "text/plain")
            } else {
                reply(StatusCode::NOT_FOUND, "", "text/plain")
            }
        }
        (&Method::GET, read) => {
            s.requests += 1;
            if let Some(code) = s.fail_status {
                return reply(StatusCode::from_u16(code).unwrap(), "error", "text/plain");
            }
            if s.garbage {
                return reply(
                    StatusCode::OK,
                    "<html><body><h1>502 Bad Gateway</h1></body></html>",
                    "text/html",
                );
            }
            let hash = s.hash();
            let mut groups: BTreeMap<String, Vec<(&Inst, &str)>> = BTreeMap::new();
            match read {
                ["apps"] => {
                    for (name, insts) in &s.apps {
                        groups.insert(name.clone(), insts.values().map(|i| (i, "ADDED")).collect());
                    }
                }
                ["apps", "delta"] if s.refuse_deltas => {
                    return reply(StatusCode::FORBIDDEN, "", "text/plain");
                }
                ["apps", "delta"] => {
                    if !s.drop_deltas {
                        for (_, action, i) in &s.recent {
                            groups.entry(i.app.clone()).or_default().push((i, action));
                        }
                    }
                }
                ["apps", app] => {
                    let app = app.to_ascii_uppercase();
                    let Some(insts) = s.apps.get(&app) else {
                        return reply(StatusCode::NOT_FOUND, "", "text/plain");
                    };
                    let list: Vec<Value> = insts
                        .values()
                        .map(|i| instance_json(i, "ADDED", s.quirks))
                        .collect();
                    return reply(
                        StatusCode::OK,
                        json!({"application": {"name": app, "instance": list}}).to_string(),
                        "application/json",
                    );
                }
                _ => return reply(StatusCode::NOT_FOUND, "", "text/plain"),
            }
            let (body, ct) = render(&groups, s.version, &hash, json_wanted, s.quirks);
            reply(StatusCode::OK, body, ct)
        }
        _ => reply(StatusCode::NOT_FOUND, "", "text/plain"),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
