//! The admin API's JSON views of services and endpoints (`/upstreams`).

use std::time::{Instant, SystemTime};

use outrigger_discovery::Endpoint;
use serde_json::{json, Value};

use crate::health::state::{now_ns, EndpointHealth};
use crate::upstream::{BehindPin, Upstream};

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
    if !e.meta.sources.is_empty() {
        v["sources"] = json!(e.meta.sources);
    }
    v
}

/// The service's timeouts, retries, limits and outlier detection in force (its `_<SERVICE>`
/// overrides applied), durations in ms.
fn settings_json(s: &crate::upstream::UpstreamSettings) -> Value {
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    json!({
        "connect_timeout_ms": ms(s.connect_timeout),
        "request_timeout_ms": ms(s.request_timeout),
        "try_timeout_ms": ms(s.try_timeout),
        "retries": s.max_retries,
        "retry_on": s.retry_on.codes(),
        "retry_non_idempotent": s.retry_non_idempotent,
        "slow_start_ms": ms(s.slow_start),
        "subset": s.subset.as_ref().map(crate::subset::SubsetRule::describe),
        "max_requests": s.max_requests,
        "max_pending_connects": s.max_pending_connects,
        "outlier": {
            "consecutive": s.health.outlier.consecutive,
            "base_ejection_ms": ms(s.health.outlier.base),
            "max_ejection_ms": ms(s.health.outlier.max),
            "max_ejected_share": s.health.outlier.max_ejected_share,
        },
        "panic_threshold": s.health.panic_threshold,
        "zone": s.zone.as_ref().map(|z| json!({
            "local": z.local,
            "min_cluster_size": z.min_cluster_size,
            "routing_enabled": z.enabled,
        })),
    })
}

pub(super) fn upstream_json(u: &Upstream) -> Value {
    let pool = u.pool.load();
    let report = u.report.load();
    let mut v = json!({
        "source": u.source,
        "policy": u.settings.policy.to_string(),
        "tls": u.connector.is_tls(),
        "protocol": u.settings.protocol.as_str(),
        "settings": settings_json(&u.settings),
        "state": if report.pin.is_some() { "pinned" } else { report.state.as_str() },
        "ready": u.is_ready(),
        "endpoints": pool
            .nodes
            .endpoints()
            .iter()
            .zip(&pool.health)
            .map(|(e, h)| endpoint_json(e, Some(h), u.connector.is_tls()))
            .collect::<Vec<_>>(),
        "panic": pool.panic,
        "subset_endpoints": u.settings.subset.as_ref().map(|_| pool.subset_len()),
        "zone_routing": pool.zone_view().map(|z| json!({
            "active": z.off.is_none(),
            "off_because": z.off.as_ref().map(ToString::to_string),
            "local_share": z.local_share,
            "expected_local": z.expected_local,
            "local_endpoints": z.local_endpoints,
            "spill_endpoints": z.spill_endpoints,
        })),
        "last_change": u.is_ready().then(|| rfc3339(pool.nodes.changed_at())),
        "pending": null,
        "last_error": null,
        "last_replacement": null,
        "seconds_since_good_update": report.last_good.map(|t| Instant::now().duration_since(t).as_millis() as f64 / 1000.0),
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
    v["pin"] = match &report.pin {
        Some(p) => {
            json!({"version": p.version, "pinned_to": p.pinned_to, "since": rfc3339(p.since), "by": p.by})
        }
        None => Value::Null,
    };
    v["pending_behind_pin"] = match &report.behind_pin {
        Some(BehindPin::Nodes { endpoints, diff }) => {
            json!({"endpoints": endpoints, "diff": diff.to_json()})
        }
        Some(BehindPin::Error(e)) => json!({"error": e}),
        None => Value::Null,
    };
    if !report.sources.is_empty() {
        v["sources"] = report
            .sources
            .iter()
            .map(|s| {
                let state = match s {
                    s if s.error.is_some() => "failing",
                    s if s.restored => "restored",
                    s if s.endpoints.is_some() => "ok",
                    _ => "waiting",
                };
                json!({
                    "source": s.source,
                    "state": state,
                    "endpoints": s.endpoints,
                    "error": s.error.as_ref().map(|(e, at)| json!({"message": e, "since": rfc3339(*at)})),
                    "last_answer": s.last_answer.map(rfc3339),
                    "last_usable": s.last_usable.map(rfc3339),
                })
            })
            .collect();
    }
    v["refused"] = match report.refused {
        Some(endpoints) => json!({"endpoints": endpoints}),
        None => Value::Null,
    };
    v
}
