//! `OUTRIGGER_REGISTER*`: registering the local app in a registry, every value checked at
//! start.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use outrigger_discovery::registration::{
    AppInstance, ConsulCheck, Credentials, Registrar, RegistrarConfigError,
};

use super::values::{bad, positive_duration, ConfigError, ConfigErrors};
use super::Args;
use crate::health::{ActiveCheck, ProbeKind};

const REGISTER: &str = "OUTRIGGER_REGISTER";

/// The checked registration settings.
#[derive(Debug, Clone)]
pub struct RegisterSpec {
    /// The registry URL, credentials included: never logged (the registrar describes it).
    pub url: String,
    /// The instance.
    pub app: AppInstance,
    /// The app's check, run by Outrigger.
    pub check: ActiveCheck,
    /// Who runs the check in Consul.
    pub consul_check: ConsulCheck,
    /// Registry credentials.
    pub credentials: Credentials,
}

impl RegisterSpec {
    /// The registrar these settings describe.
    ///
    /// Errors: none in practice (the URL was checked at start); [`RegistrarConfigError`]
    /// otherwise.
    pub fn registrar(&self) -> Result<Registrar, RegistrarConfigError> {
        Registrar::from_url(
            &self.url,
            self.app.clone(),
            self.consul_check.clone(),
            self.credentials.clone(),
        )
    }
}

fn required<'a>(var: &str, value: &'a Option<String>) -> Result<&'a str, ConfigError> {
    match value.as_deref().map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(bad(var, "", "a value (OUTRIGGER_REGISTER is set)")),
    }
}

/// A service name or instance id as registries put them in URL paths: letters, digits, `.`,
/// `-`, `_` (and `:` for ids).
fn name(var: &str, value: &str, id: bool) -> Result<String, ConfigError> {
    let ok = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') || id && c == ':');
    if ok {
        Ok(value.to_string())
    } else {
        let allowed = if id {
            "letters, digits, '.', '-', '_' and ':'"
        } else {
            "letters, digits, '.', '-' and '_'"
        };
        Err(bad(
            var,
            value,
            format!("{allowed} only (registries put it in URL paths)"),
        ))
    }
}

/// Registration settings given without `OUTRIGGER_REGISTER`: surely meant to register.
fn unused_settings(args: &Args, errs: &mut ConfigErrors) {
    let given = [
        (
            "OUTRIGGER_REGISTER_SERVICE",
            args.register_service.is_some(),
        ),
        (
            "OUTRIGGER_REGISTER_ADDRESS",
            args.register_address.is_some(),
        ),
        ("OUTRIGGER_REGISTER_ID", args.register_id.is_some()),
        ("OUTRIGGER_REGISTER_ZONE", args.register_zone.is_some()),
    ];
    for (var, set) in given {
        if set {
            errs.0.push(bad(
                REGISTER,
                "",
                format!("a registry to register in: {var} is set, and nothing registers without OUTRIGGER_REGISTER"),
            ));
            return;
        }
    }
}

fn metadata(value: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.insert(k.trim().to_string(), v.trim().to_string());
            }
            _ => {
                return Err(bad(
                    "OUTRIGGER_REGISTER_METADATA",
                    value,
                    format!("key=value pairs separated by commas ({pair:?} is not one)"),
                ))
            }
        }
    }
    Ok(out)
}

/// The registration settings, or `None` when OUTRIGGER_REGISTER is unset; every bad value is
/// added to `errs`. `discovery` is OUTRIGGER_DISCOVERY, for `OUTRIGGER_REGISTER=discovery`.
pub(super) fn register(
    args: &Args,
    discovery: Option<&str>,
    credentials: Credentials,
    errs: &mut ConfigErrors,
) -> Option<RegisterSpec> {
    let target = args.register.as_deref().map(str::trim).unwrap_or("");
    if target.is_empty() {
        unused_settings(args, errs);
        return None;
    }
    let url = if target == "discovery" {
        // The one registry among OUTRIGGER_DISCOVERY's sources (a static list or a file beside
        // it is no place to register).
        let registries: Vec<String> = super::sources::split_sources(discovery.unwrap_or(""))
            .into_iter()
            .filter(|d| {
                ["consul", "eureka", "nacos"]
                    .iter()
                    .any(|k| d.starts_with(k))
            })
            .collect();
        // One registry with several filters (`consul://h?tag=a consul://h?tag=b`) is one.
        let mut bases: Vec<&str> = registries
            .iter()
            .map(|r| r.split('?').next().unwrap_or(r).trim_end_matches('/'))
            .collect();
        bases.sort_unstable();
        bases.dedup();
        match (registries.first(), bases.len()) {
            (Some(first), 1) => Some(first.clone()),
            (None, _) => {
                errs.0.push(bad(
                    REGISTER,
                    target,
                    "a consul://, eureka:// or nacos:// URL; `discovery` only when OUTRIGGER_DISCOVERY names a Consul, Eureka or Nacos registry",
                ));
                None
            }
            _ => {
                errs.0.push(bad(
                    REGISTER,
                    target,
                    "the registry's URL: OUTRIGGER_DISCOVERY names several registries, so `discovery` does not say which one to register in",
                ));
                None
            }
        }
    } else {
        match Registrar::check_url(target) {
            Ok(()) => Some(target.to_string()),
            Err(e) => {
                // The value shown without its credentials.
                errs.0
                    .push(bad(REGISTER, &super::sources::shown(target), e.to_string()));
                None
            }
        }
    };
    let service = errs
        .take(required("OUTRIGGER_REGISTER_SERVICE", &args.register_service).map(str::to_string));
    let addr = errs.take(
        required("OUTRIGGER_REGISTER_ADDRESS", &args.register_address).and_then(|a| {
            a.parse::<SocketAddr>()
                .ok()
                .filter(|s| !s.ip().is_unspecified() && s.port() != 0)
                .ok_or_else(|| {
                    bad(
                        "OUTRIGGER_REGISTER_ADDRESS",
                        a,
                        "ip:port that other sidecars can reach (not 0.0.0.0, not port 0)",
                    )
                })
                .map(Some)
        }),
    );
    let check: Option<ActiveCheck> = errs.take(match args.register_check.trim() {
        "none" => Err(bad(
            "OUTRIGGER_REGISTER_CHECK",
            &args.register_check,
            "tcp or http:/path (a registered app needs a check)",
        )),
        value => value
            .parse::<ActiveCheck>()
            .map(Some)
            .map_err(|e| bad("OUTRIGGER_REGISTER_CHECK", value, e)),
    });
    let consul_check = match args.register_consul_check.trim() {
        "agent" => check.as_ref().map(|c| ConsulCheck::Agent {
            http_path: match &c.kind {
                ProbeKind::Http { path, .. } => Some(path.clone()),
                ProbeKind::Tcp => None,
            },
            interval: c.interval,
            timeout: c.timeout,
        }),
        "ttl" => Some(ConsulCheck::Ttl),
        other => {
            errs.0.push(bad(
                "OUTRIGGER_REGISTER_CONSUL_CHECK",
                other,
                "agent or ttl",
            ));
            None
        }
    };
    let weight = errs.take(
        args.register_weight
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|w| w.is_finite() && *w > 0.0)
            .ok_or_else(|| {
                bad(
                    "OUTRIGGER_REGISTER_WEIGHT",
                    &args.register_weight,
                    "a positive number",
                )
            }),
    );
    let mut meta = errs.take(metadata(&args.register_metadata));
    // The app is in the sidecar's zone unless told otherwise.
    fn given(z: &Option<String>) -> Option<&str> {
        z.as_deref().map(str::trim).filter(|z| !z.is_empty())
    }
    if let Some(zone) = given(&args.register_zone).or_else(|| given(&args.zone)) {
        meta.insert("zone".into(), zone.to_string());
    }
    let expire = errs.take(positive_duration(
        "OUTRIGGER_REGISTER_EXPIRE",
        &args.register_expire,
    ));
    let renew = errs.take(positive_duration(
        "OUTRIGGER_REGISTER_RENEW",
        &args.register_renew,
    ));
    let tags: Vec<String> = args
        .register_tags
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    let (url, addr, check, consul_check) = (url?, addr?, check?, consul_check?);
    let id = match args
        .register_id
        .as_deref()
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        Some(id) => errs.take(name("OUTRIGGER_REGISTER_ID", id, true).map(Some))?,
        None => format!("{service}-{}-{}", addr.ip(), addr.port()),
    };
    let spec = RegisterSpec {
        url,
        app: AppInstance {
            service,
            id,
            addr,
            tags,
            metadata: meta,
            weight,
            expire,
            renew,
        },
        check,
        consul_check,
        credentials,
    };
    if let Err(e) = spec.registrar() {
        // The value shown is the variable's own: `discovery`, or the URL with no credential.
        let shown = if target == "discovery" {
            target.to_string()
        } else {
            super::sources::shown(target)
        };
        errs.0.push(bad(REGISTER, &shown, e.to_string()));
        return None;
    }
    Some(spec)
}
