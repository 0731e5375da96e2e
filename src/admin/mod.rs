//! The admin API: what Outrigger routes to and why, its metrics, and its readiness.

mod dashboard;
mod views;
mod write;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Map, Value};

use crate::lifecycle::Stop;
use crate::operator::Operator;
use crate::upstream::Routes;
use views::upstream_json;
pub use write::ADMIN_WRITE_HEADER;

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
    /// Operators' actions on node sets, sent to the discovery task.
    operator: Operator,
    /// `OUTRIGGER_ADMIN_TOKEN`: lets peers off loopback write, presented as a bearer token.
    token: Option<String>,
}

/// How the admin API is set up besides what it reads.
pub struct AdminSettings {
    /// Host names accepted in `Host` besides IP literals and `localhost`.
    pub allowed_hosts: Vec<String>,
    /// The token that lets peers off loopback write (`OUTRIGGER_ADMIN_TOKEN`).
    pub token: Option<String>,
}

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

impl Admin {
    /// The admin API over `routes`; operators' actions go to `operator`, a stop to `stop`.
    pub fn new(
        routes: Arc<Routes>,
        metrics: PrometheusHandle,
        draining: Arc<AtomicBool>,
        settings: AdminSettings,
        stop: Stop,
        operator: Operator,
    ) -> Self {
        Admin {
            routes,
            metrics,
            draining,
            stop,
            operator,
            token: settings.token.filter(|t| !t.is_empty()),
            allowed_hosts: settings
                .allowed_hosts
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Answers one admin request from `peer`.
    pub async fn serve<B>(&self, req: &Request<B>, peer: SocketAddr) -> Response<Full<Bytes>> {
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
        if req.uri().path() == "/deregister" {
            return self.deregister(req, peer);
        }
        if let Some((service, action)) = write::action_of(req) {
            return self.act(req, peer, &service, action).await;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "admin endpoints take GET\n");
        }
        if let Some(service) = req
            .uri()
            .path()
            .strip_prefix("/upstreams/")
            .and_then(|p| p.strip_suffix("/history"))
        {
            return self.history(service);
        }
        match req.uri().path() {
            "/" => {
                let nonce = format!("{:032x}", rand::random::<u128>());
                let page = dashboard::render(self.routes.all(), &nonce);
                let mut resp = Response::new(Full::new(Bytes::from(page)));
                let h = resp.headers_mut();
                h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/html; charset=utf-8"));
                let csp = format!("default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; connect-src 'self'; frame-ancestors 'none'");
                if let Ok(csp) = header::HeaderValue::from_str(&csp) {
                    h.insert(header::CONTENT_SECURITY_POLICY, csp);
                }
                h.insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
                h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
                resp
            }
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
                "admin endpoints: / (the dashboard), /upstreams, /upstreams/<service>/history, /metrics, /ready, /live; POST or DELETE /upstreams/<service>/pin, POST /upstreams/<service>/pending/confirm or /reject, POST /deregister, POST /quitquitquit\n",
            ),
        }
    }
}

impl Admin {
    /// `GET /upstreams/<service>/history`: the service's recent decisions, newest first.
    fn history(&self, service: &str) -> Response<Full<Bytes>> {
        let Some(upstream) = self.routes.get(&service.to_ascii_lowercase()) else {
            return text(StatusCode::NOT_FOUND, &format!("no service {service:?}\n"));
        };
        let entries = upstream
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .to_json();
        json_response(
            StatusCode::OK,
            &json!({"service": service, "history": entries}),
        )
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(body).unwrap_or_default(),
    )));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
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

    /// Runs a future that needs no runtime to completion.
    fn futures_lite<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    /// An admin API with no services, `token` for writes from other hosts and `stop` as its
    /// stop handle; nobody answers its operator channel, so a write that passes the checks is
    /// 503 "stopped".
    fn admin_with(token: Option<&str>, stop: Stop) -> Admin {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        Admin::new(
            Arc::new(Routes::new(Vec::new())),
            recorder.handle(),
            Arc::new(AtomicBool::new(false)),
            AdminSettings {
                allowed_hosts: Vec::new(),
                token: token.map(str::to_string),
            },
            stop,
            Operator::channel().0,
        )
    }

    #[test]
    fn quitquitquit_is_refused_from_other_hosts() {
        let stop = Stop::new();
        let admin = admin_with(None, stop.clone());
        let req = Request::post("/quitquitquit")
            .header("host", "10.0.0.1:15000")
            .header(ADMIN_WRITE_HEADER, "1")
            .body(())
            .expect("request");
        let far: SocketAddr = "10.0.0.5:40000".parse().expect("address");
        let answer = |peer| futures_lite(admin.serve(&req, peer));
        assert_eq!(answer(far).status(), StatusCode::FORBIDDEN);
        assert!(!stop.is_requested());
        let near: SocketAddr = "127.0.0.1:40000".parse().expect("address");
        assert_eq!(answer(near).status(), StatusCode::OK);
        assert!(stop.is_requested());
    }

    #[test]
    fn writes_from_other_hosts_need_the_token() {
        let admin = admin_with(Some("t0k3n"), Stop::new());
        let far: SocketAddr = "10.0.0.5:40000".parse().expect("address");
        let pin = |auth: Option<&str>| {
            let mut req = Request::post("/upstreams/orders/pin")
                .header("host", "10.0.0.1:15000")
                .header(ADMIN_WRITE_HEADER, "1");
            if let Some(auth) = auth {
                req = req.header("authorization", auth);
            }
            futures_lite(admin.serve(&req.body(()).expect("request"), far)).status()
        };
        assert_eq!(pin(None), StatusCode::FORBIDDEN);
        assert_eq!(pin(Some("Bearer wrong")), StatusCode::FORBIDDEN);
        assert_eq!(pin(Some("Bearer t0k3n")), StatusCode::SERVICE_UNAVAILABLE);
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
