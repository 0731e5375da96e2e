//! The health supervisor of one service: runs an active prober per endpoint, ends ejections
//! whose time is up, and rebuilds the service's pool when the routable endpoints change.
//!
//! It wakes on the service's `health_events` (an ejection on the request path, a probe verdict,
//! a new node set) and on a short tick for ejections running out. Pool rebuilds happen here,
//! off the request path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outrigger_discovery::EndpointMeta;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::probe::probe;
use super::state::{now_ns, Active, EndpointHealth};
use super::ActiveCheck;
use crate::upstream::Upstream;

/// Longest sleep without an event: a safety net, not the mechanism (ejections are timed).
const IDLE: Duration = Duration::from_secs(5);

/// Starts the supervisor of `upstream`; it stops on `cancel`.
pub fn spawn(upstream: Arc<Upstream>, cancel: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Each prober with the labels it connects by (TLS, host name).
        let mut probers: HashMap<SocketAddr, (JoinHandle<()>, Arc<EndpointMeta>)> = HashMap::new();
        let mut wake_in = Duration::ZERO;
        loop {
            // Sleep until an event or the next ejection runs out, so a thousand quiet services
            // cost nothing.
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = upstream.health_events.notified() => {}
                _ = tokio::time::sleep(wake_in) => {}
            }
            let pool = upstream.pool.load_full();
            if let Some(check) = &upstream.settings.health.active {
                let wanted: HashMap<SocketAddr, (&Arc<EndpointHealth>, &Arc<EndpointMeta>)> = pool
                    .nodes
                    .endpoints()
                    .iter()
                    .zip(&pool.health)
                    .map(|(e, h)| (e.addr, (h, &e.meta)))
                    .collect();
                // A node gone, or now reached another way, loses its prober.
                probers.retain(|addr, (task, meta)| {
                    let keep = wanted.get(addr).is_some_and(|(_, m)| {
                        m.secure == meta.secure && m.host_name == meta.host_name
                    });
                    if !keep {
                        task.abort();
                    }
                    keep
                });
                for (addr, (health, meta)) in wanted {
                    probers.entry(addr).or_insert_with(|| {
                        let task = tokio::spawn(prober(
                            upstream.clone(),
                            addr,
                            meta.clone(),
                            health.clone(),
                            check.clone(),
                        ));
                        (task, meta.clone())
                    });
                }
            }
            let now = now_ns();
            for (e, h) in pool.nodes.endpoints().iter().zip(&pool.health) {
                if h.end_ejection(now) {
                    tracing::info!(service = %upstream.name, endpoint = %e.addr,
                        "ejection over; endpoint back on probation (one request)");
                }
            }
            upstream.refresh();
            let now = now_ns();
            wake_in = pool
                .health
                .iter()
                .filter_map(|h| h.ejected_until(now))
                .min()
                .map_or(IDLE, |until| Duration::from_nanos(until - now + 1_000_000));
            // A slow start raises weights in steps: twenty over its window, 100 ms to 1 s
            // apart.
            let slow_start = upstream.settings.slow_start;
            if !slow_start.is_zero() && pool.health.iter().any(|h| h.is_warming()) {
                let step =
                    (slow_start / 20).clamp(Duration::from_millis(100), Duration::from_secs(1));
                wake_in = wake_in.min(step);
            }
        }
        for (task, _) in probers.values() {
            task.abort();
        }
    })
}

/// Probes one endpoint forever, turning runs of results into a verdict.
async fn prober(
    upstream: Arc<Upstream>,
    addr: SocketAddr,
    meta: Arc<EndpointMeta>,
    health: Arc<EndpointHealth>,
    check: ActiveCheck,
) {
    let name = upstream.name.to_string();
    let passed = metrics::counter!("outrigger_health_probes_total", "service" => name.clone(), "result" => "success");
    let failed = metrics::counter!("outrigger_health_probes_total", "service" => name, "result" => "failure");
    let (mut passes, mut failures) = (0u32, 0u32);
    loop {
        let result = probe(&upstream, addr, &meta, &check).await;
        let verdict = match &result {
            Ok(()) => {
                passed.increment(1);
                passes += 1;
                failures = 0;
                // An endpoint not yet judged (or new and pending) is trusted at its first pass;
                // a failed one must pass `healthy_threshold` times in a row.
                (matches!(health.active(), Active::Unknown | Active::Pending)
                    || passes >= check.healthy_threshold)
                    .then_some(Active::Healthy)
            }
            Err(_) => {
                failed.increment(1);
                failures += 1;
                passes = 0;
                (failures >= check.unhealthy_threshold).then_some(Active::Unhealthy)
            }
        };
        if let Some(verdict) = verdict {
            let was_failing = health.active() == Active::Unhealthy;
            if health.set_active(verdict) {
                if was_failing && verdict == Active::Healthy {
                    health.start_warming(now_ns());
                }
                match (&result, verdict) {
                    (Err(why), _) => tracing::warn!(service = %upstream.name, endpoint = %addr,
                        reason = %why, "active check: endpoint unhealthy"),
                    _ => tracing::info!(service = %upstream.name, endpoint = %addr,
                        state = verdict.as_str(), "active check: endpoint healthy"),
                }
                upstream.health_events.notify_one();
            }
        }
        let spread = check.jitter * (rand::random::<f64>() * 2.0 - 1.0);
        tokio::time::sleep(check.interval.mul_f64(1.0 + spread)).await;
    }
}
