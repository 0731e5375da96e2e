//! Health checking: active probes, passive outlier detection, the panic threshold.
//!
//! Endpoint health lives in [`state::EndpointHealth`] (atomics, kept by address across
//! node-set updates). The request path reads it when it picks and reports each outcome; the
//! [`supervisor`] of each service runs the probes, ends ejections, and rebuilds the service's
//! pool whenever the set of routable endpoints changes, so policies only ever see endpoints
//! that may take traffic.

pub mod probe;
pub mod state;
pub mod supervisor;

use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

/// What an active probe sends.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeKind {
    /// A TCP connection that opens.
    Tcp,
    /// An HTTP request whose status is in `statuses`.
    Http {
        /// Request method.
        method: http::Method,
        /// Request path.
        path: String,
        /// Host header; the service name when unset.
        host: Option<String>,
        /// Statuses that count as healthy.
        statuses: Vec<RangeInclusive<u16>>,
    },
}

/// An active health check of every endpoint of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveCheck {
    /// What to send.
    pub kind: ProbeKind,
    /// Time between probes of one endpoint.
    pub interval: Duration,
    /// Random share of the interval added or taken away, so probes do not beat in step.
    pub jitter: f64,
    /// Time a probe may take.
    pub timeout: Duration,
    /// Passing probes in a row that make an unhealthy endpoint healthy.
    pub healthy_threshold: u32,
    /// Failing probes in a row that make an endpoint unhealthy.
    pub unhealthy_threshold: u32,
}

fn duration_option(key: &str, value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("option {key}={value:?}: expected a duration such as 500ms or 2s"))
}

fn count_option(key: &str, value: &str) -> Result<u32, String> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| format!("option {key}={value:?}: expected a whole number from 1"))
}

fn statuses(value: &str) -> Result<Vec<RangeInclusive<u16>>, String> {
    value
        .split(',')
        .map(|part| {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
                (Ok(lo), Ok(hi)) if (100..=599).contains(&lo) && lo <= hi && hi <= 599 => {
                    Ok(lo..=hi)
                }
                _ => Err(format!(
                    "option statuses={value:?}: expected codes or ranges such as 200-399,404"
                )),
            }
        })
        .collect()
}

impl FromStr for ActiveCheck {
    type Err = String;

    /// `tcp[?options]` or `http:/path[?options]`; options: `interval`, `timeout`, `jitter`
    /// (percent), `healthy`, `unhealthy`, and for HTTP `method`, `host`, `statuses`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (head, options) = s.trim().split_once('?').unwrap_or((s.trim(), ""));
        let mut kind = if head == "tcp" {
            ProbeKind::Tcp
        } else if let Some(path) = head.strip_prefix("http:") {
            if !path.starts_with('/') {
                return Err(format!("{head:?}: the path after http: must start with /"));
            }
            ProbeKind::Http {
                method: http::Method::GET,
                path: path.to_string(),
                host: None,
                statuses: vec![200..=399],
            }
        } else {
            return Err(format!(
                "{head:?}: expected none, tcp or http:/path, with ?options"
            ));
        };
        let mut check = ActiveCheck {
            kind: ProbeKind::Tcp,
            interval: Duration::from_secs(1),
            jitter: 0.1,
            timeout: Duration::from_millis(500),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        };
        for pair in options.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match (key, &mut kind) {
                ("interval", _) => check.interval = duration_option(key, value)?,
                ("timeout", _) => check.timeout = duration_option(key, value)?,
                ("healthy", _) => check.healthy_threshold = count_option(key, value)?,
                ("unhealthy", _) => check.unhealthy_threshold = count_option(key, value)?,
                ("jitter", _) => {
                    check.jitter = value
                        .trim_end_matches('%')
                        .parse::<f64>()
                        .ok()
                        .filter(|p| (0.0..=50.0).contains(p))
                        .ok_or_else(|| format!("option jitter={value:?}: expected 0% to 50%"))?
                        / 100.0
                }
                ("method", ProbeKind::Http { method, .. }) => {
                    *method = value
                        .parse()
                        .map_err(|_| format!("option method={value:?}: not an HTTP method"))?
                }
                ("host", ProbeKind::Http { host, .. }) if !value.is_empty() => {
                    *host = Some(value.to_string())
                }
                ("statuses", ProbeKind::Http { statuses: s, .. }) => *s = statuses(value)?,
                _ => {
                    return Err(format!(
                        "option {key:?}: expected interval, timeout, jitter, healthy, unhealthy{}",
                        if matches!(kind, ProbeKind::Http { .. }) {
                            ", method, host or statuses"
                        } else {
                            ""
                        }
                    ))
                }
            }
        }
        check.kind = kind;
        Ok(check)
    }
}

/// Passive outlier detection settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outlier {
    /// Failures in a row (5xx, connect failures, timeouts, resets) that eject; 0 disables.
    pub consecutive: u32,
    /// First ejection time; doubles with each ejection of the same endpoint.
    pub base: Duration,
    /// Longest ejection time.
    pub max: Duration,
    /// Largest share of a service's endpoints ejected at once (at least one may always be).
    pub max_ejected_share: f64,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive: 5,
            base: Duration::from_secs(30),
            max: Duration::from_secs(300),
            max_ejected_share: 0.5,
        }
    }
}

/// Health settings of one service.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthPolicy {
    /// Active probes, if configured.
    pub active: Option<ActiveCheck>,
    /// Passive outlier detection.
    pub outlier: Outlier,
    /// Below this healthy share, route to every endpoint regardless of health.
    pub panic_threshold: f64,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            active: None,
            outlier: Outlier::default(),
            panic_threshold: 0.5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_checks_and_names_bad_options() {
        let c: ActiveCheck = "http:/healthz?interval=2s&timeout=300ms&healthy=3&statuses=200-299,404&host=orders.internal&method=HEAD"
            .parse()
            .unwrap();
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.healthy_threshold, 3);
        let ProbeKind::Http {
            method,
            path,
            host,
            statuses,
        } = c.kind
        else {
            panic!("http")
        };
        assert_eq!((method.as_str(), path.as_str()), ("HEAD", "/healthz"));
        assert_eq!(host.as_deref(), Some("orders.internal"));
        assert_eq!(statuses, vec![200..=299, 404..=404]);
        assert_eq!("tcp".parse::<ActiveCheck>().unwrap().kind, ProbeKind::Tcp);
        assert!("tcp?path=/x"
            .parse::<ActiveCheck>()
            .unwrap_err()
            .contains("\"path\""));
        assert!("http:healthz"
            .parse::<ActiveCheck>()
            .unwrap_err()
            .contains("must start with /"));
        assert!("http:/h?statuses=700"
            .parse::<ActiveCheck>()
            .unwrap_err()
            .contains("statuses"));
        assert!("udp"
            .parse::<ActiveCheck>()
            .unwrap_err()
            .contains("expected none, tcp"));
    }
}
