//! The emulated agent's own side: the checks it keeps for registered services (TTL checks
//! that go critical when not updated, HTTP and TCP checks it runs itself,
//! `DeregisterCriticalServiceAfter`), `/v1/agent/service/<id>` and `/v1/agent/services`, and a
//! record of every registration, check update and deregistration for tests to read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{go_duration, key, string, Shared, State};

/// A check the agent keeps for a service registered through its API.
#[derive(Debug, Clone)]
pub(super) struct CheckDef {
    /// The service it belongs to.
    service_id: String,
    ttl: Option<Duration>,
    deregister_after: Option<Duration>,
    /// `http://...` or `ip:port` for checks the agent runs itself.
    http: Option<String>,
    tcp: Option<String>,
    interval: Duration,
    timeout: Duration,
    /// When a TTL check was last updated (or registered).
    updated: Instant,
    /// When it went critical, if it is.
    critical_since: Option<Instant>,
    /// When the agent runs an HTTP or TCP check next.
    next_run: Instant,
}

/// One thing the agent was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// `PUT /v1/agent/service/register` with this body.
    Registered(Value),
    /// A check update: the check id and the status it was set to.
    CheckUpdated(String, String),
    /// `PUT /v1/agent/service/deregister/<id>`.
    Deregistered(String),
    /// The agent removed the service itself (`DeregisterCriticalServiceAfter`).
    Reaped(String),
}

/// Records a registration's check definition, replacing the service's earlier one.
pub(super) fn registered(s: &mut State, id: &str, body: &Value) {
    s.events.push(AgentEvent::Registered(body.clone()));
    s.checks.retain(|_, c| c.service_id != id);
    let Some(check) = key(body, "Check").or_else(|| key(body, "Checks").and_then(|c| c.get(0)))
    else {
        return;
    };
    let duration = |name: &str| Some(string(key(check, name))).and_then(|d| go_duration(&d));
    let now = Instant::now();
    let status = string(key(check, "Status"));
    let def = CheckDef {
        service_id: id.to_string(),
        ttl: duration("TTL"),
        deregister_after: duration("DeregisterCriticalServiceAfter"),
        http: Some(string(key(check, "HTTP"))).filter(|h| !h.is_empty()),
        tcp: Some(string(key(check, "TCP"))).filter(|t| !t.is_empty()),
        interval: duration("Interval").unwrap_or(Duration::from_secs(10)),
        timeout: duration("Timeout").unwrap_or(Duration::from_secs(10)),
        updated: now,
        critical_since: (status != "passing" && status != "warning").then_some(now),
        next_run: now,
    };
    s.checks.insert(format!("service:{id}"), def);
}

/// Notes a check's new status (an update through the API, or the agent's own run).
pub(super) fn check_set(s: &mut State, check: &str, status: &str, by_api: bool) {
    if by_api {
        s.events.push(AgentEvent::CheckUpdated(
            check.to_string(),
            status.to_string(),
        ));
    }
    if let Some(def) = s.checks.get_mut(check) {
        def.updated = Instant::now();
        match (status, def.critical_since) {
            ("critical", None) => def.critical_since = Some(Instant::now()),
            ("critical", Some(_)) => {}
            _ => def.critical_since = None,
        }
    }
}

/// Notes a deregistration through the API.
pub(super) fn deregistered(s: &mut State, id: &str) {
    s.events.push(AgentEvent::Deregistered(id.to_string()));
    s.checks.retain(|_, c| c.service_id != id);
}

/// The agent's view of a service (`/v1/agent/service/<id>`), or `None`.
pub(super) fn service_json(s: &State, id: &str) -> Option<Value> {
    let i = s.instances.get(id)?;
    Some(json!({
        "ID": i.id, "Service": i.name, "Tags": i.tags, "Meta": i.meta, "Port": i.port,
        "Address": i.address, "Weights": {"Passing": i.weights.0, "Warning": i.weights.1},
        "EnableTagOverride": false, "Datacenter": "dc1", "Namespace": "default",
        "ContentHash": format!("{:x}", i.modify_index),
    }))
}

/// `/v1/agent/services`: every service of the agent by id.
pub(super) fn services_json(s: &State) -> Value {
    let all: serde_json::Map<String, Value> = s
        .instances
        .keys()
        .filter_map(|id| Some((id.clone(), service_json(s, id)?)))
        .collect();
    Value::Object(all)
}

/// Runs the agent's duties every 50 ms: TTL checks not updated in time go critical, HTTP and
/// TCP checks are run, and services critical for longer than their
/// `DeregisterCriticalServiceAfter` are removed.
pub(super) async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let mut due_probes = Vec::new();
        let changed = {
            let mut s = shared.state.lock().unwrap();
            let mut expired = Vec::new();
            let mut reap = Vec::new();
            for (check, def) in s.checks.iter_mut() {
                if let Some(ttl) = def.ttl {
                    if def.critical_since.is_none() && now.duration_since(def.updated) > ttl {
                        expired.push(check.clone());
                    }
                }
                if (def.http.is_some() || def.tcp.is_some()) && now >= def.next_run {
                    def.next_run = now + def.interval;
                    due_probes.push((check.clone(), def.clone()));
                }
                if let (Some(since), Some(after)) = (def.critical_since, def.deregister_after) {
                    if now.duration_since(since) > after {
                        reap.push(def.service_id.clone());
                    }
                }
            }
            let changed = !expired.is_empty() || !reap.is_empty();
            for check in expired {
                let _ = super::set_check(&mut s, &check, "critical");
                check_set(&mut s, &check, "critical", false);
            }
            for id in reap {
                s.events.push(AgentEvent::Reaped(id.clone()));
                s.checks.retain(|_, c| c.service_id != id);
                let _ = super::deregister(&mut s, &id);
            }
            changed
        };
        if changed {
            shared.changed.send_modify(|v| *v += 1);
        }
        for (check, def) in due_probes {
            let shared = shared.clone();
            tokio::spawn(async move {
                let status = if probe(&def).await {
                    "passing"
                } else {
                    "critical"
                };
                let mut s = shared.state.lock().unwrap();
                let before = s
                    .instances
                    .get(&def.service_id)
                    .and_then(|i| i.check.as_ref().map(|(_, st)| st.clone()));
                if before.as_deref() != Some(status) {
                    let _ = super::set_check(&mut s, &check, status);
                    drop(s);
                    shared.changed.send_modify(|v| *v += 1);
                    let mut s = shared.state.lock().unwrap();
                    check_set(&mut s, &check, status, false);
                } else {
                    check_set(&mut s, &check, status, false);
                }
            });
        }
    }
}

/// Runs an HTTP (2xx passes, as Consul's) or TCP check once.
async fn probe(def: &CheckDef) -> bool {
    let attempt = async {
        if let Some(url) = &def.http {
            return http_ok(url).await;
        }
        match &def.tcp {
            Some(addr) => tokio::net::TcpStream::connect(addr.as_str()).await.is_ok(),
            None => true,
        }
    };
    tokio::time::timeout(def.timeout, attempt)
        .await
        .unwrap_or(false)
}

/// GET `url` (`http://ip:port/path`): whether it answered 2xx.
async fn http_ok(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Ok(stream) = tokio::net::TcpStream::connect(authority).await else {
        return false;
    };
    let Ok((mut sender, conn)) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
    else {
        return false;
    };
    tokio::spawn(conn);
    let Ok(req) = http::Request::get(path)
        .header("host", authority)
        .header("user-agent", "Consul Health Check")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
    else {
        return false;
    };
    sender
        .send_request(req)
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Every registration body, in order.
pub(super) fn registrations(s: &State) -> Vec<Value> {
    s.events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::Registered(body) => Some(body.clone()),
            _ => None,
        })
        .collect()
}

/// Forgets every service and check, as an agent restarted without its data directory does.
pub(super) fn forget(s: &mut State) -> Vec<String> {
    let names: Vec<String> = s.instances.values().map(|i| i.name.clone()).collect();
    s.instances.clear();
    s.checks.clear();
    names
}

/// The current status of each check by id.
pub(super) fn check_statuses(s: &State) -> BTreeMap<String, String> {
    s.instances
        .values()
        .filter_map(|i| i.check.clone())
        .collect()
}
