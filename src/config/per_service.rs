//! `_<SERVICE>` overrides of the timeouts, retries, limits and outlier detection: a slow
//! service's timeouts apart from a fast one's. Each is checked like its global variable, with
//! the same errors naming the service's own variable.

use super::values::{bad, count, positive_duration, share};
use super::{per_service_except, ConfigErrors, UpstreamSpec};

/// A setting with a `_<SERVICE>` override: its variable, and how a value applies.
type Override = (
    &'static str,
    &'static [&'static str],
    fn(&mut crate::upstream::UpstreamSettings, &str) -> Result<(), String>,
);

/// The reason a value was refused, as its global variable's check gives it.
fn expected(e: super::ConfigError) -> String {
    e.expected
}

const OVERRIDES: &[Override] = &[
    ("OUTRIGGER_CONNECT_TIMEOUT", &[], |s, v| {
        s.connect_timeout = positive_duration("OUTRIGGER_CONNECT_TIMEOUT", v).map_err(expected)?;
        Ok(())
    }),
    ("OUTRIGGER_REQUEST_TIMEOUT", &[], |s, v| {
        let t = positive_duration("OUTRIGGER_REQUEST_TIMEOUT", v).map_err(expected)?;
        // An attempt never outlasts its request.
        if s.try_timeout == s.request_timeout || s.try_timeout > t {
            s.try_timeout = t;
        }
        s.request_timeout = t;
        Ok(())
    }),
    ("OUTRIGGER_TRY_TIMEOUT", &[], |s, v| {
        s.try_timeout = positive_duration("OUTRIGGER_TRY_TIMEOUT", v).map_err(expected)?;
        Ok(())
    }),
    ("OUTRIGGER_SUBSET", &[], |s, v| {
        s.subset = Some(v.parse()?);
        Ok(())
    }),
    ("OUTRIGGER_ZONE_MIN_CLUSTER_SIZE", &[], |s, v| {
        let size = count("OUTRIGGER_ZONE_MIN_CLUSTER_SIZE", v, 1..=1_000_000).map_err(expected)?;
        zone(s)?.min_cluster_size = size as usize;
        Ok(())
    }),
    ("OUTRIGGER_ZONE_ROUTING_ENABLED", &[], |s, v| {
        zone(s)?.enabled = share("OUTRIGGER_ZONE_ROUTING_ENABLED", v).map_err(expected)?;
        Ok(())
    }),
    ("OUTRIGGER_SLOW_START", &[], |s, v| {
        s.slow_start = super::values::duration("OUTRIGGER_SLOW_START", v).map_err(expected)?;
        Ok(())
    }),
    ("OUTRIGGER_RETRY_ON", &[], |s, v| {
        s.retry_on = v.parse()?;
        Ok(())
    }),
    ("OUTRIGGER_RETRY_NON_IDEMPOTENT", &[], |s, v| {
        s.retry_non_idempotent = super::values::on_off(v)?;
        Ok(())
    }),
    ("OUTRIGGER_RETRIES", &[], |s, v| {
        s.max_retries = count("OUTRIGGER_RETRIES", v, 0..=5).map_err(expected)? as u32;
        Ok(())
    }),
    ("OUTRIGGER_MAX_REQUESTS", &[], |s, v| {
        s.max_requests =
            count("OUTRIGGER_MAX_REQUESTS", v, 1..=1_000_000).map_err(expected)? as u32;
        Ok(())
    }),
    ("OUTRIGGER_MAX_PENDING_CONNECTS", &[], |s, v| {
        s.max_pending_connects =
            count("OUTRIGGER_MAX_PENDING_CONNECTS", v, 1..=100_000).map_err(expected)? as u32;
        Ok(())
    }),
    ("OUTRIGGER_OUTLIER_CONSECUTIVE", &[], |s, v| {
        s.health.outlier.consecutive =
            count("OUTRIGGER_OUTLIER_CONSECUTIVE", v, 0..=1000).map_err(expected)? as u32;
        Ok(())
    }),
    ("OUTRIGGER_OUTLIER_BASE_EJECTION", &[], |s, v| {
        s.health.outlier.base =
            positive_duration("OUTRIGGER_OUTLIER_BASE_EJECTION", v).map_err(expected)?;
        Ok(())
    }),
    ("OUTRIGGER_OUTLIER_MAX_EJECTION", &[], |s, v| {
        s.health.outlier.max =
            positive_duration("OUTRIGGER_OUTLIER_MAX_EJECTION", v).map_err(expected)?;
        Ok(())
    }),
    ("OUTRIGGER_OUTLIER_MAX_EJECTED", &[], |s, v| {
        s.health.outlier.max_ejected_share =
            share("OUTRIGGER_OUTLIER_MAX_EJECTED", v).map_err(expected)?;
        Ok(())
    }),
    ("OUTRIGGER_PANIC_THRESHOLD", &[], |s, v| {
        s.health.panic_threshold = share("OUTRIGGER_PANIC_THRESHOLD", v).map_err(expected)?;
        Ok(())
    }),
];

/// The service's zone-aware routing, to change; an error when `OUTRIGGER_ZONE` is unset.
fn zone(
    s: &mut crate::upstream::UpstreamSettings,
) -> Result<&mut crate::zone::ZoneRouting, String> {
    s.zone.as_mut().ok_or_else(|| {
        "OUTRIGGER_ZONE to be set too: zone-aware routing needs the sidecar's own zone".to_string()
    })
}

/// The settings that take a `_<SERVICE>` override here.
pub(super) fn prefixes() -> Vec<&'static str> {
    OVERRIDES.iter().map(|(prefix, _, _)| *prefix).collect()
}

/// Applies every `_<SERVICE>` override in `vars`, after the defaults; then checks that each
/// service's attempt fits in its request.
pub(super) fn apply(
    upstreams: &mut [UpstreamSpec],
    vars: &[(String, String)],
    errs: &mut ConfigErrors,
) {
    for (prefix, others, set) in OVERRIDES {
        per_service_except(prefix, others, upstreams, vars, errs, set);
    }
    for u in upstreams.iter() {
        let s = &u.settings;
        if s.health.outlier.base > s.health.outlier.max {
            errs.0.push(bad(
                &super::service_var("OUTRIGGER_OUTLIER_BASE_EJECTION", &u.name),
                &format!("{:?}", s.health.outlier.base),
                format!(
                    "at most the longest ejection of service {:?} ({:?}, OUTRIGGER_OUTLIER_MAX_EJECTION)",
                    u.name, s.health.outlier.max
                ),
            ));
        }
        if s.try_timeout > s.request_timeout {
            errs.0.push(bad(
                &super::service_var("OUTRIGGER_TRY_TIMEOUT", &u.name),
                &format!("{:?}", s.try_timeout),
                format!(
                    "at most the request timeout of service {:?} ({:?}): an attempt never outlasts its request",
                    u.name, s.request_timeout
                ),
            ));
        }
    }
}
