//! Admin writes: operators' actions on a service's node set and `/quitquitquit`.
//!
//! A write is a POST (or DELETE) carrying `X-Outrigger-Admin: 1`, which a cross-site page
//! cannot send without a CORS preflight (never granted), so no CSRF; it comes from a loopback
//! peer, or from any peer presenting `OUTRIGGER_ADMIN_TOKEN` as `Authorization: Bearer`. No
//! GET changes state.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use super::{json_response, text, Admin};
use crate::operator::{Action, ActionError};

/// The header every admin write must carry.
pub const ADMIN_WRITE_HEADER: &str = "x-outrigger-admin";

/// The service and action a request names, if it is one of the write endpoints:
/// `/upstreams/<service>/pin[?version=N]`, `/upstreams/<service>/pending/confirm` and
/// `.../pending/reject`; `Err` with the refusal for a query that is not one `version=N`.
pub(super) fn action_of<B>(req: &Request<B>) -> Option<(String, Result<Action, String>)> {
    let rest = req.uri().path().strip_prefix("/upstreams/")?;
    let (service, what) = rest.split_once('/')?;
    let action = match (req.method(), what) {
        (&Method::DELETE, "pin") => Ok(Action::Unpin),
        (_, "pin") => match req.uri().query().filter(|q| !q.is_empty()) {
            None => Ok(Action::Pin(None)),
            Some(q) => match q.strip_prefix("version=").map(str::parse::<u64>) {
                Some(Ok(v)) => Ok(Action::Pin(Some(v))),
                _ => Err(format!(
                    "{q:?}: the pin takes one option, version=N, a version number from the history"
                )),
            },
        },
        (&Method::DELETE, _) => return None,
        (_, "pending/confirm") => Ok(Action::Confirm),
        (_, "pending/reject") => Ok(Action::Refuse),
        _ => return None,
    };
    Some((service.to_string(), action))
}

impl Admin {
    /// Whether `req` from `peer` may write; the refusal otherwise.
    fn may_write<B>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
        methods: &[Method],
    ) -> Result<(), Box<Response<Full<Bytes>>>> {
        if !methods.contains(req.method()) {
            let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
            return Err(Box::new(text(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!(
                    "{} takes {} with the header X-Outrigger-Admin: 1\n",
                    req.uri().path(),
                    names.join(" or ")
                ),
            )));
        }
        if req.headers().get(ADMIN_WRITE_HEADER).map(|v| v.as_bytes()) != Some(b"1") {
            return Err(Box::new(text(
                StatusCode::FORBIDDEN,
                "admin writes need the header X-Outrigger-Admin: 1\n",
            )));
        }
        if peer.ip().is_loopback() {
            return Ok(());
        }
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match (&self.token, presented) {
            (Some(token), Some(given))
                if constant_time_eq(token.as_bytes(), given.trim().as_bytes()) =>
            {
                Ok(())
            }
            (Some(_), _) => {
                tracing::warn!(%peer, path = %req.uri().path(), "admin write refused: no valid token");
                Err(Box::new(text(StatusCode::FORBIDDEN, "admin writes from other hosts need Authorization: Bearer <OUTRIGGER_ADMIN_TOKEN>\n")))
            }
            (None, _) => {
                tracing::warn!(%peer, path = %req.uri().path(), "admin write refused from a peer that is not on loopback");
                Err(Box::new(text(StatusCode::FORBIDDEN, "admin writes are accepted from loopback only (set OUTRIGGER_ADMIN_TOKEN to allow others)\n")))
            }
        }
    }

    /// An operator's action on `service`.
    pub(super) async fn act<B>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
        service: &str,
        action: Result<Action, String>,
    ) -> Response<Full<Bytes>> {
        let methods: &[Method] = match action {
            Ok(Action::Pin(_) | Action::Unpin) | Err(_) => &[Method::POST, Method::DELETE],
            _ => &[Method::POST],
        };
        if let Err(refused) = self.may_write(req, peer, methods) {
            return *refused;
        }
        let action = match action {
            Ok(action) => action,
            Err(why) => {
                let body = json!({"service": service, "action": "pin", "error": why});
                return json_response(StatusCode::BAD_REQUEST, &body);
            }
        };
        match self
            .operator
            .ask(&service.to_ascii_lowercase(), action, peer)
            .await
        {
            Ok(done) => json_response(
                StatusCode::OK,
                &json!({"service": service, "action": action.as_str(), "result": done}),
            ),
            Err(e) => {
                let status = match e {
                    ActionError::UnknownService(_) => StatusCode::NOT_FOUND,
                    ActionError::Conflict(_) => StatusCode::CONFLICT,
                    ActionError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
                };
                json_response(
                    status,
                    &json!({"service": service, "action": action.as_str(), "error": e.to_string()}),
                )
            }
        }
    }

    /// `POST /deregister`: the app is about to stop (its preStop hook, when the sidecar is
    /// stopped after the app): deregister it now and answer `/ready` with 503, serving on.
    pub(super) fn deregister<B>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        if let Err(refused) = self.may_write(req, peer, &[Method::POST]) {
            return *refused;
        }
        tracing::info!(%peer, "deregistration requested through /deregister; serving on");
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
        self.stop.withdraw();
        text(StatusCode::OK, "deregistering; still serving\n")
    }

    /// `POST /quitquitquit`: an app that has finished (a Job) ends its sidecar. The ordered
    /// stop without its delay: the app is done.
    pub(super) fn quit<B>(&self, req: &Request<B>, peer: SocketAddr) -> Response<Full<Bytes>> {
        if let Err(refused) = self.may_write(req, peer, &[Method::POST]) {
            return *refused;
        }
        tracing::info!(%peer, "stop requested through /quitquitquit");
        self.stop.hurry();
        text(StatusCode::OK, "stopping\n")
    }
}

/// Compares a presented token with the configured one in time independent of where they
/// differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
