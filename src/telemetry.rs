//! Logging and metrics set-up.

use std::io::IsTerminal;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds: sub-millisecond resolution for a local sidecar hop, up to the
/// default request timeout.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0,
];

/// Installs the Prometheus recorder and returns the handle that renders `/metrics`.
///
/// Must run before any metric handle is created: handles made earlier would record nowhere.
/// When a recorder is already installed (several proxies in one test process), a detached
/// recorder is returned instead so `/metrics` still answers.
pub fn install_metrics() -> PrometheusHandle {
    let builder = || {
        PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("outrigger_request_duration_seconds".into()),
                &LATENCY_BUCKETS,
            )
            .expect("bucket list is non-empty")
    };
    match builder().install_recorder() {
        Ok(handle) => {
            let upkeep = handle.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    upkeep.run_upkeep();
                }
            });
            handle
        }
        Err(_) => builder().build_recorder().handle(),
    }
}

/// Initialises tracing with `filter`, as text or JSON lines on stderr.
pub fn init_logging(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for people: log collectors and files get plain text.
        .with_ansi(std::io::stderr().is_terminal());
    // A second initialisation (tests, embedding) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
