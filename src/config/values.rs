//! Reading one value: durations, addresses, shares, sizes and counts, each error naming the
//! variable, its value and what was expected; and the list of every error of a run.

use std::net::SocketAddr;
use std::time::Duration;

/// A configuration value that was not acceptable, with everything needed to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{var}={value:?}: {expected}")]
pub struct ConfigError {
    /// The environment variable.
    pub var: String,
    /// The value it had.
    pub value: String,
    /// What was expected instead.
    pub expected: String,
}

pub(super) fn bad(var: &str, value: &str, expected: impl Into<String>) -> ConfigError {
    ConfigError {
        var: var.to_string(),
        value: value.to_string(),
        expected: expected.into(),
    }
}

pub(super) fn duration(var: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.trim()).map_err(|e| {
        bad(
            var,
            value,
            format!("a duration such as 500ms, 2s or 1m ({e})"),
        )
    })
}

pub(super) fn positive_duration(var: &str, value: &str) -> Result<Duration, ConfigError> {
    let d = duration(var, value)?;
    if d.is_zero() {
        return Err(bad(var, value, "a duration greater than zero"));
    }
    Ok(d)
}

pub(super) fn socket(var: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.trim().parse().map_err(|_| {
        bad(
            var,
            value,
            "ip:port, such as 127.0.0.1:15001 or [::1]:15001",
        )
    })
}

pub(super) fn share(var: &str, value: &str) -> Result<f64, ConfigError> {
    let v = value.trim();
    let parsed = match v.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<f64>().map(|p| p / 100.0),
        None => v.parse::<f64>(),
    };
    parsed
        .ok()
        .filter(|s| (0.0..=1.0).contains(s))
        .ok_or_else(|| bad(var, value, "a share from 0% to 100%, such as 50% or 0.5"))
}

/// A size in bytes: digits, optionally followed by `B`, `KiB` or `MiB` (also `K`, `KB`, `M`,
/// `MB`, read as powers of 1,024), within `range`.
pub(super) fn byte_size(
    var: &str,
    value: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => Some(1),
        "k" | "kb" | "kib" => Some(1024),
        "m" | "mb" | "mib" => Some(1024 * 1024),
        _ => None,
    };
    scale
        .zip(digits.parse::<u64>().ok())
        .and_then(|(scale, n)| n.checked_mul(scale))
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            bad(
                var,
                value,
                format!(
                    "a size from {} to {} bytes, such as 65536, 60KiB or 1MiB",
                    range.start(),
                    range.end()
                ),
            )
        })
}

pub(super) fn count(
    var: &str,
    value: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            bad(
                var,
                value,
                format!("a whole number from {} to {}", range.start(), range.end()),
            )
        })
}

/// Every configuration error of one run, in the order met.
#[derive(Debug, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl ConfigErrors {
    /// The value, or its type's default after noting the error: checking goes on, and the
    /// default is never used, since any error fails the whole configuration.
    pub(super) fn take<T: Default>(&mut self, checked: Result<T, ConfigError>) -> T {
        checked.unwrap_or_else(|e| {
            self.0.push(e);
            T::default()
        })
    }
}

/// `on` or `off`, the values of every switch.
pub(super) fn on_off(value: &str) -> Result<bool, String> {
    match value.trim() {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("on or off".into()),
    }
}
