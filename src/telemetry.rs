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
            describe_metrics();
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

/// The `# HELP` text of every metric, with its unit, for `/metrics` (described once, after
/// the recorder is installed).
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "outrigger_requests_total",
        Unit::Count,
        "Requests answered, by service and status code (Outrigger's own errors included)."
    );
    describe_histogram!(
        "outrigger_request_duration_seconds",
        Unit::Seconds,
        "Time from receiving a request to sending the response head, retries included, by service."
    );
    describe_counter!(
        "outrigger_upstream_connect_errors_total",
        Unit::Count,
        "Connections to nodes that failed or timed out, by service."
    );
    describe_counter!(
        "outrigger_upstream_tls_errors_total",
        Unit::Count,
        "TLS sessions with nodes that failed (certificate refused, name mismatch, expired, client certificate required), by service."
    );
    describe_counter!(
        "outrigger_retries_total",
        Unit::Count,
        "Retries sent to another node (or resent after a stale kept-alive connection), by service and reason: what went wrong with the attempt before (5xx, connect_failure, timeout, reset, tls, stale_connection, other)."
    );
    describe_counter!(
        "outrigger_retry_budget_exhausted_total",
        Unit::Count,
        "Retries not sent because the service's retry budget was spent."
    );
    describe_counter!("outrigger_overloaded_total", Unit::Count, "Requests refused with 503 for OUTRIGGER_MAX_REQUESTS or OUTRIGGER_MAX_PENDING_CONNECTS, by service.");
    describe_counter!(
        "outrigger_response_headers_over_limit_total",
        Unit::Count,
        "Node responses refused (502) for heads over OUTRIGGER_MAX_HEADERS or OUTRIGGER_MAX_RESPONSE_HEADERS; not counted against the node, by service."
    );
    describe_counter!(
        "outrigger_outlier_ejections_total",
        Unit::Count,
        "Nodes ejected by passive outlier detection, by service and reason."
    );
    describe_counter!(
        "outrigger_health_probes_total",
        Unit::Count,
        "Active health probes, by service and result (success, failure)."
    );
    describe_counter!("outrigger_discovery_dropped_entries_total", Unit::Count, "Registry entries dropped by validation, by service and reason, each counted once while it lasts.");
    describe_gauge!(
        "outrigger_discovery_seconds_since_good_update",
        Unit::Seconds,
        "Seconds since the service's registry last gave a usable answer."
    );
    describe_counter!(
        "outrigger_state_restore_errors_total",
        Unit::Count,
        "Stored node sets that could not be used at start, by service."
    );
    describe_counter!(
        "outrigger_connections_refused_total",
        Unit::Count,
        "App connections closed on accept because OUTRIGGER_MAX_CONNECTIONS were open."
    );
    describe_counter!(
        "outrigger_stream_idle_timeouts_total",
        Unit::Count,
        "Response bodies ended because the node sent nothing for OUTRIGGER_STREAM_IDLE_TIMEOUT."
    );
    describe_counter!(
        "outrigger_admin_actions_total",
        Unit::Count,
        "Operator actions through the admin API, by service, action (pin, unpin, confirm, reject) and result (done, refused)."
    );
    describe_counter!(
        "outrigger_endpoint_attempts_total",
        Unit::Count,
        "Attempts sent to each endpoint, by service, endpoint and result (success, 5xx, connect_failure, timeout, reset, tls); only with OUTRIGGER_METRICS_PER_ENDPOINT=on."
    );
    describe_gauge!(
        "outrigger_update_held",
        "1 while a registry update of the service is held by the last-known-good guard (waiting for the registry to stand by it, or an operator), else 0."
    );
    describe_gauge!(
        "outrigger_service_panic",
        "1 while the service is in panic: fewer healthy endpoints than OUTRIGGER_PANIC_THRESHOLD, so every endpoint takes traffic."
    );
    describe_gauge!(
        "outrigger_zone_routing_active",
        "With OUTRIGGER_ZONE: 1 while zone-aware routing applies to the service, 0 while zones are ignored (fewer endpoints than OUTRIGGER_ZONE_MIN_CLUSTER_SIZE, none in the zone, panic, a hash policy; /upstreams zone_routing.off_because says which)."
    );
    describe_gauge!(
        "outrigger_zone_local_share",
        "With OUTRIGGER_ZONE: the share (0 to 1) of the service's requests expected to be served in the sidecar's zone, zone-routed or not; below 1 while routing by zone, the zone has lost capacity and the rest spills over."
    );
    describe_gauge!(
        "outrigger_discovery_source_failing",
        "1 while this source's answers for the service are refused (an error, or with several sources every entry invalid) and its last usable nodes are kept."
    );
    describe_gauge!(
        "outrigger_service_pinned",
        "1 while an operator has pinned the service's node set (registry updates are read, not applied), else 0."
    );
    describe_counter!("outrigger_discovery_updates_total", Unit::Count, "Registry answers by service and what the last-known-good guard did with them (applied, unchanged, held, confirmed, replaced: a held update applied before its window because every node it removed was failing, rejected, refused: a held answer an operator refused, pending_behind_pin: read while pinned).");
    // The unlabelled ones are shown from the start; labelled ones appear with their first
    // label set, as in any Prometheus client.
    metrics::counter!("outrigger_connections_refused_total").absolute(0);
    metrics::counter!("outrigger_stream_idle_timeouts_total").absolute(0);
}

/// Initialises tracing with `filter`, as text or JSON lines on stderr.
pub fn init_logging(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr's reader gone: EPIPE) is dropped. The
        // default reports it with eprintln!, which panics on that same stderr, in whichever
        // task logged: the signal task died that way and SIGTERM was never acted on.
        .log_internal_errors(false)
        // Colour only for people: log collectors and files get plain text.
        .with_ansi(std::io::stderr().is_terminal());
    // A second initialisation (tests, embedding) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
