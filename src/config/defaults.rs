//! The settings every service starts from, before its `_<SERVICE>` overrides.

use std::time::Duration;

use super::values::{bad, byte_size, count, duration, on_off, positive_duration, share};
use super::{active_check, max_headers, Args, ConfigErrors};
use crate::health::{HealthPolicy, Outlier};
use crate::node_client::h1::HeadLimits;
use crate::upstream::UpstreamSettings;

/// Zone-aware routing's settings, when `OUTRIGGER_ZONE` is set; its two settings without it
/// are an error, since they would do nothing.
fn zone_routing(args: &Args, errs: &mut ConfigErrors) -> Option<crate::zone::ZoneRouting> {
    let local = args
        .zone
        .as_deref()
        .map(str::trim)
        .filter(|z| !z.is_empty());
    let size = args.zone_min_cluster_size.as_deref();
    let enabled = args.zone_routing_enabled.as_deref();
    if local.is_none() {
        for (var, value) in [
            ("OUTRIGGER_ZONE_MIN_CLUSTER_SIZE", size),
            ("OUTRIGGER_ZONE_ROUTING_ENABLED", enabled),
        ] {
            if let Some(value) = value {
                errs.0.push(bad(
                    var,
                    value,
                    "OUTRIGGER_ZONE to be set too: zone-aware routing needs the sidecar's own zone",
                ));
            }
        }
        return None;
    }
    let min_cluster_size = errs.take(count(
        "OUTRIGGER_ZONE_MIN_CLUSTER_SIZE",
        size.unwrap_or("6"),
        1..=1_000_000,
    )) as usize;
    let enabled = errs.take(share(
        "OUTRIGGER_ZONE_ROUTING_ENABLED",
        enabled.unwrap_or("100%"),
    ));
    Some(crate::zone::ZoneRouting {
        local: local?.to_string(),
        min_cluster_size,
        enabled,
    })
}

/// The settings every service starts from (`OUTRIGGER_LB`, `OUTRIGGER_HC`, outlier detection,
/// limits, retry budget).
pub(super) fn upstream_defaults(args: &Args, errs: &mut ConfigErrors) -> UpstreamSettings {
    UpstreamSettings {
        policy: errs.take(
            args.lb
                .parse()
                .map_err(|e: String| bad("OUTRIGGER_LB", &args.lb, e)),
        ),
        health: HealthPolicy {
            active: errs.take(active_check(&args.hc).map_err(|e| bad("OUTRIGGER_HC", &args.hc, e))),
            outlier: Outlier {
                consecutive: errs.take(count(
                    "OUTRIGGER_OUTLIER_CONSECUTIVE",
                    &args.outlier_consecutive,
                    0..=1000,
                )) as u32,
                base: errs.take(positive_duration(
                    "OUTRIGGER_OUTLIER_BASE_EJECTION",
                    &args.outlier_base_ejection,
                )),
                max: errs.take(positive_duration(
                    "OUTRIGGER_OUTLIER_MAX_EJECTION",
                    &args.outlier_max_ejection,
                )),
                max_ejected_share: errs.take(share(
                    "OUTRIGGER_OUTLIER_MAX_EJECTED",
                    &args.outlier_max_ejected,
                )),
            },
            panic_threshold: errs.take(share("OUTRIGGER_PANIC_THRESHOLD", &args.panic_threshold)),
        },
        connect_timeout: errs.take(positive_duration(
            "OUTRIGGER_CONNECT_TIMEOUT",
            &args.connect_timeout,
        )),
        request_timeout: errs.take(positive_duration(
            "OUTRIGGER_REQUEST_TIMEOUT",
            &args.request_timeout,
        )),
        try_timeout: match &args.try_timeout {
            Some(v) => errs.take(positive_duration("OUTRIGGER_TRY_TIMEOUT", v)),
            // The request timeout, set below once it is read.
            None => Duration::ZERO,
        },
        max_retries: errs.take(count("OUTRIGGER_RETRIES", &args.retries, 0..=5)) as u32,
        retry_on: errs.take(
            args.retry_on
                .parse()
                .map_err(|e: String| bad("OUTRIGGER_RETRY_ON", &args.retry_on, e)),
        ),
        slow_start: errs.take(duration("OUTRIGGER_SLOW_START", &args.slow_start)),
        // Per service only (`OUTRIGGER_SUBSET_<SERVICE>`).
        subset: None,
        zone: zone_routing(args, errs),
        retry_non_idempotent: errs.take(on_off(&args.retry_non_idempotent).map_err(|e| {
            bad(
                "OUTRIGGER_RETRY_NON_IDEMPOTENT",
                &args.retry_non_idempotent,
                e,
            )
        })),
        max_requests: errs.take(count(
            "OUTRIGGER_MAX_REQUESTS",
            &args.max_requests,
            1..=1_000_000,
        )) as u32,
        max_pending_connects: errs.take(count(
            "OUTRIGGER_MAX_PENDING_CONNECTS",
            &args.max_pending_connects,
            1..=100_000,
        )) as u32,
        retry_budget_share: errs.take(share("OUTRIGGER_RETRY_BUDGET", &args.retry_budget)),
        retry_budget_floor: errs.take(count(
            "OUTRIGGER_RETRY_BUDGET_MIN",
            &args.retry_budget_min,
            0..=100_000,
        )),
        tls: None,
        tls_config: Default::default(),
        protocol: errs.take(
            args.upstream_protocol.parse().map_err(|e: String| {
                bad("OUTRIGGER_UPSTREAM_PROTOCOL", &args.upstream_protocol, e)
            }),
        ),
        response_limits: HeadLimits {
            max_headers: errs.take(max_headers(args)),
            max_head_bytes: errs.take(byte_size(
                "OUTRIGGER_MAX_RESPONSE_HEADERS",
                &args.max_response_headers,
                1024..=16 * 1024 * 1024,
            )) as u32,
        },
    }
}
