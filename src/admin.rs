//! The admin API: what Outrigger routes to and why, its metrics, and its readiness.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use metrics_exporter_prometheus::PrometheusHandle;
use outrigger_discovery::Endpoint;

use crate::health::state::{now_ns, EndpointHealth};
use serde_json::{json, Map, Value};

use crate::lifecycle::Stop;
use crate::upstream::{Routes, Upstream};

/// What the admin endpoints read.
pub struct Admin {
    routes: Arc<Routes>,
    metrics: PrometheusHandle,
    draining: Arc<AtomicBool>,
    /// Host names accepted besides IP literals and `localhost` (`OUTRIGGER_ADMIN_HOSTS`),
    /// lower case.
    allowed_hosts: Vec<String>,
    /// Asked to stop by `POST /quitquitquit`.
    stop: Stop,
}

/// The header every admin write must carry: a cross-site page cannot send it without a CORS
/// preflight, which the admin API never grants.
pub const ADMIN_WRITE_HEADER: &str = "x-outrigger-admin";

/// Whether the admin API answers a request naming `host` (a `Host` header's or the target's
/// authority, `None` when it names none).
///
/// A page that uses DNS rebinding reaches a loopback port under its own DNS name, so only
/// names that cannot be rebound are accepted: IP literals (Kubernetes probes and Prometheus
/// use the pod's address), `localhost`, and the names the operator lists.
fn host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    let Some(host) = host else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || allowed.contains(&name)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A weight as scripts expect to read it: `3`, not `3.0`, when it is whole.
fn weight(w: f64) -> Value {
    if w.fract() == 0.0 && w.abs() < 9.0e15 {
        json!(w as i64)
    } else {
        json!(w)
    }
}

/// Converts an instant on the health clock (ns since start) to wall-clock time.
fn wall(at_ns: u64, now_ns: u64) -> SystemTime {
    SystemTime::now() + std::time::Duration::from_nanos(at_ns.saturating_sub(now_ns))
}

fn health_json(h: &EndpointHealth, now: u64) -> Value {
    json!({
        "active": h.active().as_str(),
        "ejected_until": h.ejected_until(now).map(|t| rfc3339(wall(t, now))),
        "ejections": h.ejections(),
        "last_failure": h.last_failure().as_str(),
        "probation": h.on_probation(),
    })
}

/// `service_tls`: the service's own connections use TLS (`OUTRIGGER_UPSTREAM_TLS`).
fn endpoint_json(e: &Endpoint, health: Option<&EndpointHealth>, service_tls: bool) -> Value {
    let now = now_ns();
    let mut v = json!({
        "address": e.addr.to_string(),
        "weight": weight(e.weight),
        "healthy": health.is_none_or(|h| !h.is_down(now)),
        "priority": e.priority,
    });
    if let Some(h) = health {
        v["health"] = health_json(h, now);
    }
    if let Some(zone) = &e.meta.zone {
        v["zone"] = json!(zone);
    }
    if !e.meta.tags.is_empty() {
        v["tags"] = json!(e.meta.tags);
    }
    if !e.meta.metadata.is_empty() {
        v["metadata"] = json!(e.meta.metadata);
    }
    if e.meta.secure || service_tls {
        v["tls"] = json!(true);
    }
    if let Some(host) = &e.meta.host_name {
        v["host_name"] = json!(host);
    }
    v
}

fn upstream_json(u: &Upstream) -> Value {
    let pool = u.pool.load();
    let report = u.report.load();
    let mut v = json!({
        "source": u.source,
        "policy": u.settings.policy.to_string(),
        "tls": u.connector.is_tls(),
        "protocol": u.settings.protocol.as_str(),
        "state": report.state.as_str(),
        "ready": u.is_ready(),
        "endpoints": pool
            .nodes
            .endpoints()
            .iter()
            .zip(&pool.health)
            .map(|(e, h)| endpoint_json(e, Some(h), u.connector.is_tls()))
            .collect::<Vec<_>>(),
        "panic": pool.panic,
        "last_change": u.is_ready().then(|| rfc3339(pool.nodes.changed_at())),
        "pending": null,
        "last_error": null,
        "last_replacement": null,
        "seconds_since_good_update": report.last_good.map(|t| Instant::now().duration_since(t).as_secs_f64()),
    });
    if let Some(p) = &report.pending {
        v["pending"] = json!({
            "reason": p.reason,
            "since": rfc3339(p.since),
            "applies_at": rfc3339(p.applies_at),
            "endpoints": p.nodes.endpoints().iter().map(|e| endpoint_json(e, None, u.connector.is_tls())).collect::<Vec<_>>(),
        });
    }
    if let Some((message, at)) = &report.last_error {
        v["last_error"] = json!({"message": message, "at": rfc3339(*at)});
    }
    if let Some((reason, at)) = &report.last_replacement {
        v["last_replacement"] = json!({"reason": reason, "at": rfc3339(*at)});
    }
    v
}

impl Admin {
    /// The admin API over `routes`.
    /// `allowed_hosts` are the host names accepted in `Host` besides IP literals and
    /// `localhost`.
    pub fn new(
        routes: Arc<Routes>,
        metrics: PrometheusHandle,
        draining: Arc<AtomicBool>,
        allowed_hosts: Vec<String>,
        stop: Stop,
    ) -> Self {
        Admin {
            routes,
            metrics,
            draining,
            stop,
            allowed_hosts: allowed_hosts
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Answers one admin request from `peer`.
    pub fn serve<B>(&self, req: &Request<B>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let hosts = req.headers().get_all(header::HOST);
        let named = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .into_iter()
            .chain(hosts.iter().map(|h| h.to_str().unwrap_or("\u{fffd}")));
        let mut any = false;
        for host in named {
            any = true;
            if !host_allowed(Some(host), &self.allowed_hosts) {
                return text(
                    StatusCode::FORBIDDEN,
                    "the admin API answers only IP addresses, localhost and OUTRIGGER_ADMIN_HOSTS in Host\n",
                );
            }
        }
        if !any && !host_allowed(None, &self.allowed_hosts) {
            return text(StatusCode::FORBIDDEN, "a Host is required\n");
        }
        if req.uri().path() == "/quitquitquit" {
            return self.quit(req, peer);
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "admin endpoints take GET\n");
        }
        match req.uri().path() {
            "/upstreams" => {
                let services: Map<String, Value> = self
                    .routes
                    .all()
                    .iter()
                    .map(|u| (u.name.to_string(), upstream_json(u)))
                    .collect();
                let body = json!({ "services": services });
                let mut resp = Response::new(Full::new(Bytes::from(
                    serde_json::to_vec_pretty(&body).unwrap_or_default(),
                )));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                resp
            }
            "/metrics" => {
                let mut resp = Response::new(Full::new(Bytes::from(self.metrics.render())));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                resp
            }
            "/ready" => {
                if self.draining.load(Ordering::Acquire) {
                    return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
                }
                let waiting: Vec<&str> = self
                    .routes
                    .all()
                    .iter()
                    .filter(|u| !u.is_ready())
                    .map(|u| &*u.name)
                    .collect();
                if waiting.is_empty() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("waiting for a first node set: {}\n", waiting.join(", ")),
                    )
                }
            }
            "/live" => text(StatusCode::OK, "live\n"),
            _ => text(
                StatusCode::NOT_FOUND,
                "admin endpoints: /upstreams /metrics /ready /live, POST /quitquitquit\n",
            ),
        }
    }
}

impl Admin {
    /// `POST /quitquitquit`: an app that has finished (a Job) ends its sidecar. The ordered
    /// stop without its delay: the app is done. Only from loopback, with the write header.
    fn quit<B>(&self, req: &Request<B>, peer: SocketAddr) -> Response<Full<Bytes>> {
        if req.method() != Method::POST {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "/quitquitquit takes POST with the header X-Outrigger-Admin: 1\n",
            );
        }
        if req.headers().get(ADMIN_WRITE_HEADER).map(|v| v.as_bytes()) != Some(b"1") {
            return text(
                StatusCode::FORBIDDEN,
                "admin writes need the header X-Outrigger-Admin: 1\n",
            );
        }
        if !peer.ip().is_loopback() {
            tracing::warn!(%peer, "refused /quitquitquit from a peer that is not on loopback");
            return text(
                StatusCode::FORBIDDEN,
                "/quitquitquit is accepted from loopback only\n",
            );
        }
        tracing::info!(%peer, "stop requested through /quitquitquit");
        self.stop.hurry();
        text(StatusCode::OK, "stopping\n")
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quitquitquit_is_refused_from_other_hosts() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let stop = Stop::new();
        let admin = Admin::new(
            Arc::new(Routes::new(Vec::new())),
            recorder.handle(),
            Arc::new(AtomicBool::new(false)),
            Vec::new(),
            stop.clone(),
        );
        let req = Request::post("/quitquitquit")
            .header("host", "10.0.0.1:15000")
            .header(ADMIN_WRITE_HEADER, "1")
            .body(())
            .expect("request");
        let far: SocketAddr = "10.0.0.5:40000".parse().expect("address");
        assert_eq!(admin.serve(&req, far).status(), StatusCode::FORBIDDEN);
        assert!(!stop.is_requested());
        let near: SocketAddr = "127.0.0.1:40000".parse().expect("address");
        assert_eq!(admin.serve(&req, near).status(), StatusCode::OK);
        assert!(stop.is_requested());
    }

    #[test]
    fn only_names_that_cannot_be_rebound_reach_the_admin_api() {
        let extra = vec!["outrigger-admin.internal".to_string()];
        for ok in [
            "127.0.0.1:15000",
            "127.0.0.1",
            "10.1.2.3:15000",
            "[::1]:15000",
            "localhost:15000",
            "LOCALHOST",
            "outrigger-admin.internal:15000",
        ] {
            assert!(host_allowed(Some(ok), &extra), "{ok}");
        }
        for refused in [
            "attacker.example",
            "attacker.example:15000",
            "127.0.0.1.attacker.example",
            "[not-an-ip]:1",
            "\u{fffd}",
        ] {
            assert!(!host_allowed(Some(refused), &extra), "{refused}");
        }
    }
}
