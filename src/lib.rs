//! Outrigger, a sidecar HTTP proxy: registry-discovered upstreams, last-known-good routing,
//! load balancing.
//!
//! This crate is the wiring: configuration, listeners, the request path and the admin API.
//! Registry adapters and the last-known-good guard live in `outrigger-discovery`.

pub mod access_log;
pub mod admin;
pub mod affinity;
pub mod balance;
mod by_address;
pub mod config;
pub mod header_list;
pub mod health;
pub mod history;
pub mod lifecycle;
pub mod node_client;
pub mod operator;
pub mod proxy;
pub mod publisher;
pub mod register;
pub mod request_body;
mod request_head;
pub mod retry;
pub mod server;
pub mod subset;
pub mod telemetry;
mod tls_reload;
pub mod upstream;
pub mod wait_ready;
pub mod workers;
pub mod write_batch;
pub mod zone;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use outrigger_discovery::state_store::StateStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::upstream::{Routes, Upstream};

/// The nice value of the control-plane thread (discovery, health checks, admin, accept).
const CONTROL_PLANE_NICE: i32 = 10;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener address could not be bound.
    #[error("cannot listen on {addr} ({var}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The variable that set it.
        var: &'static str,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// The access log file could not be opened.
    #[error("cannot open the access log (OUTRIGGER_ACCESS_LOG={target}): {source}")]
    AccessLog {
        /// Where it was to go.
        target: access_log::Target,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The proxy's worker threads could not be started.
    #[error("cannot start {count} worker threads (OUTRIGGER_WORKER_THREADS): {source}")]
    Workers {
        /// How many were asked for.
        count: usize,
        /// Why starting failed.
        source: std::io::Error,
    },
}

async fn bind(addr: SocketAddr, var: &'static str) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, var, source })
}

/// Runs the proxy until a stop is requested, then stops in order ([`lifecycle`]): `/ready`
/// 503 at once, serving on for the shutdown delay, then draining.
pub async fn run(config: Config, stop: lifecycle::Stop) -> Result<(), RunError> {
    let metrics = telemetry::install_metrics();
    access_log::install(&config.access_log, config.start_traces).map_err(|source| {
        RunError::AccessLog {
            target: config.access_log.clone(),
            source,
        }
    })?;
    let sources = config.discovery_sources();
    // Each service's sources, with the names it gives them, worked out once.
    let order: HashMap<Arc<str>, Vec<(usize, String)>> = config
        .upstreams
        .iter()
        .map(|u| {
            let names = publisher::source_names(&u.sources, &sources);
            (
                u.name.clone(),
                u.sources.iter().copied().zip(names).collect(),
            )
        })
        .collect();
    let upstreams: Vec<Arc<Upstream>> = config
        .upstreams
        .iter()
        .map(|u| {
            // A service's sources in its configured order, as its history and logs name them.
            let names: Vec<&str> = order[&u.name].iter().map(|(_, n)| n.as_str()).collect();
            Arc::new(Upstream::new(
                u.name.clone(),
                names.join(" + "),
                u.settings.clone(),
            ))
        })
        .collect();
    let described = sources
        .iter()
        .map(|a| a.source.describe())
        .collect::<Vec<_>>()
        .join(", ");
    let routes = Arc::new(Routes::new(upstreams));

    // Bind everything before starting anything, so a taken port fails fast and whole.
    let proxy_listener = bind(config.listen, "OUTRIGGER_LISTEN").await?;
    let admin_listener = bind(config.admin_listen, "OUTRIGGER_ADMIN_LISTEN").await?;
    let mut dedicated = Vec::new();
    for spec in &config.upstreams {
        if let Some(addr) = spec.listener {
            let upstream = routes
                .get(&spec.name)
                .cloned()
                .expect("every configured upstream is routed");
            dedicated.push((bind(addr, "OUTRIGGER_UPSTREAMS").await?, upstream));
        }
    }

    let discovery_stop = CancellationToken::new();
    let persistence = config.state_dir.as_ref().map(|dir| publisher::Persistence {
        store: StateStore::new(dir),
        max_age: config.state_max_age,
    });
    let (operator, operator_requests) = operator::Operator::channel();
    let publisher = publisher::spawn(
        routes.clone(),
        publisher::Sources {
            adapters: sources,
            order,
        },
        config.guard,
        persistence,
        operator_requests,
        discovery_stop.clone(),
    );

    let health_stop = CancellationToken::new();
    let supervisors: Vec<_> = routes
        .all()
        .iter()
        .map(|u| health::supervisor::spawn(u.clone(), health_stop.clone()))
        .collect();
    let tls_reload = tokio::spawn(tls_reload::watch(
        routes.clone(),
        tls_reload::RELOAD_EVERY,
        health_stop.clone(),
    ));
    let proxy = Arc::new(proxy::Proxy::new(routes.clone(), config.proxy));
    let draining = Arc::new(AtomicBool::new(false));
    let admin = Arc::new(admin::Admin::new(
        routes.clone(),
        metrics,
        draining.clone(),
        admin::AdminSettings {
            allowed_hosts: config.admin_hosts.clone(),
            token: config.admin_token.clone(),
        },
        stop.clone(),
        operator,
    ));
    let mut tasks = Vec::new();
    let mut registration = config
        .register
        .clone()
        .map(|spec| register::spawn(spec, stop.clone()));

    tracing::info!(listen = %config.listen, admin = %config.admin_listen, discovery = %described,
        services = routes.all().len(), "outrigger started");
    let proxy_stop = CancellationToken::new();
    // Requests are served by worker threads, never on this runtime, which runs the control
    // plane: building a 10,000-endpoint pool here must not stall a request (bench/churn.sh).
    let workers = Arc::new(
        workers::Workers::start(
            config.worker_threads,
            config.pin_workers,
            proxy.clone(),
            proxy_stop.clone(),
            config.drain_timeout,
            config.app_connections,
        )
        .map_err(|source| RunError::Workers {
            count: config.worker_threads,
            source,
        })?,
    );
    // The workers have started (and kept the default priority); from here on this thread and
    // the ones it starts run the control plane, which yields the CPU to requests: a
    // 10,000-endpoint update costs 13-20 ms of CPU, and at nice 10 it waits for the workers
    // instead of holding one off its CPU (bench/HISTORY.md, churn with two pinned workers).
    if let Err(e) = affinity::lower_priority_of_this_thread(CONTROL_PLANE_NICE) {
        tracing::warn!(error = %e, "cannot lower the control plane's priority");
    }
    let listeners = std::iter::once((proxy_listener, None))
        .chain(dedicated.into_iter().map(|(l, u)| (l, Some(u))));
    for (listener, upstream) in listeners {
        if let Some(upstream) = &upstream {
            tracing::info!(service = %upstream.name, listen = ?listener.local_addr().ok(), "dedicated listener");
        }
        let workers = workers.clone();
        tasks.push(tokio::spawn(server::accept_loop(
            listener,
            proxy_stop.clone(),
            move |stream, peer| workers.hand_off(stream, peer, upstream.clone()),
        )));
    }
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(server::serve(
        admin_listener,
        move |req, peer| {
            let admin = admin.clone();
            async move { admin.serve(&req, peer).await }
        },
        admin_stop.clone(),
        std::time::Duration::from_secs(1),
    ));

    stop.requested().await;
    draining.store(true, Ordering::Release);
    if let Some(registration) = registration.take() {
        // Deregistered first, so peers stop sending before anything closes; the delay starts
        // after (a slow registry is given 6 s).
        let _ = tokio::time::timeout(std::time::Duration::from_secs(6), registration).await;
    }
    if !config.shutdown_delay.is_zero() {
        tracing::info!(delay = ?config.shutdown_delay,
            "stop requested: /ready answers 503; serving on before draining (OUTRIGGER_SHUTDOWN_DELAY)");
        if stop.delay(config.shutdown_delay).await {
            tracing::info!("shutdown delay cut short");
        }
    }
    tracing::info!(drain = ?config.drain_timeout, "shutting down: no new connections, draining open requests");
    proxy_stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    // The accept loops held the other handles and have ended.
    if let Some(workers) = Arc::into_inner(workers) {
        workers.join().await;
    }
    admin_stop.cancel();
    discovery_stop.cancel();
    health_stop.cancel();
    for s in supervisors {
        let _ = s.await;
    }
    let _ = tls_reload.await;
    let _ = admin_task.await;
    let _ = publisher.await;
    tracing::info!("stopped");
    Ok(())
}
