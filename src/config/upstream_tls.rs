//! `OUTRIGGER_UPSTREAM_TLS*`: TLS toward each service's nodes, defaults for every service with
//! `_<SERVICE>` overrides, checked by reading the files at start.

use std::path::PathBuf;
use std::sync::Arc;

use super::values::on_off;
use super::{bad, per_service_except, service_var, Args, ConfigErrors, UpstreamSpec};
use crate::node_client::tls::{problems, NodeTls, TlsConfigError, TlsSettings};

const TLS: &str = "OUTRIGGER_UPSTREAM_TLS";
const CA: &str = "OUTRIGGER_UPSTREAM_TLS_CA";
const CERT: &str = "OUTRIGGER_UPSTREAM_TLS_CERT";
const KEY: &str = "OUTRIGGER_UPSTREAM_TLS_KEY";
const SERVER_NAME: &str = "OUTRIGGER_UPSTREAM_TLS_SERVER_NAME";

fn non_empty(value: &str) -> Result<String, String> {
    let v = value.trim();
    if v.is_empty() {
        Err("a non-empty value".into())
    } else {
        Ok(v.to_string())
    }
}

/// Sets every service's TLS settings from the defaults and its overrides, then reads the files
/// each service needs: every error names the variables and the file or value at fault.
pub(super) fn apply(
    args: &Args,
    upstreams: &mut [UpstreamSpec],
    vars: &[(String, String)],
    errs: &mut ConfigErrors,
) {
    let defaults = TlsSettings {
        enabled: on_off(&args.upstream_tls)
            .map_err(|e| errs.0.push(bad(TLS, &args.upstream_tls, e)))
            .unwrap_or(false),
        ca: args.upstream_tls_ca.as_ref().map(PathBuf::from),
        cert: args.upstream_tls_cert.as_ref().map(PathBuf::from),
        key: args.upstream_tls_key.as_ref().map(PathBuf::from),
        server_name: args.upstream_tls_server_name.clone(),
        protocol: Default::default(),
    };
    for u in upstreams.iter_mut() {
        u.settings.tls_config = defaults.clone();
    }
    per_service_except(
        TLS,
        &[CA, CERT, KEY, SERVER_NAME],
        upstreams,
        vars,
        errs,
        |s, v| {
            s.tls_config.enabled = on_off(v)?;
            Ok(())
        },
    );
    per_service_except(CA, &[], upstreams, vars, errs, |s, v| {
        s.tls_config.ca = Some(non_empty(v)?.into());
        Ok(())
    });
    per_service_except(CERT, &[], upstreams, vars, errs, |s, v| {
        s.tls_config.cert = Some(non_empty(v)?.into());
        Ok(())
    });
    per_service_except(KEY, &[], upstreams, vars, errs, |s, v| {
        s.tls_config.key = Some(non_empty(v)?.into());
        Ok(())
    });
    per_service_except(SERVER_NAME, &[], upstreams, vars, errs, |s, v| {
        s.tls_config.server_name = Some(non_empty(v)?);
        Ok(())
    });
    // Files named are read even for services with TLS off (or when OUTRIGGER_UPSTREAM_TLS
    // itself is wrong), so that every bad setting is reported in one run; once each, with
    // every service it fails.
    let mut reported: Vec<((String, String, String), Vec<String>)> = Vec::new();
    for u in upstreams.iter_mut() {
        u.settings.tls_config.protocol = u.settings.protocol;
        let config = &u.settings.tls_config;
        let named = config.ca.is_some() || config.cert.is_some() || config.key.is_some();
        let checked = if config.enabled {
            NodeTls::new(config).map_err(|_| problems(config))
        } else if named {
            let found = problems(config);
            if found.is_empty() {
                Ok(None)
            } else {
                Err(found)
            }
        } else {
            Ok(None)
        };
        match checked {
            Ok(tls) => u.settings.tls = tls.map(Arc::new),
            Err(found) => {
                for e in found {
                    let (setting, value) = culprit(&e, config);
                    // The service's own variable when it set the value, else the default's.
                    let own = service_var(setting, &u.name);
                    let var = if vars.iter().any(|(k, _)| *k == own) {
                        own
                    } else {
                        setting.to_string()
                    };
                    let key = (var, value, e.to_string());
                    match reported.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, services)) => services.push(format!("{:?}", u.name)),
                        None => reported.push((key, vec![format!("{:?}", u.name)])),
                    }
                }
            }
        }
    }
    for ((var, value, message), services) in reported {
        let whose = match services.len() {
            1 => "service",
            _ => "services",
        };
        errs.0.push(bad(
            &var,
            &value,
            format!("{message} (TLS toward {whose} {})", services.join(", ")),
        ));
    }
}

/// The setting (its default's variable) and value that `e` is about.
fn culprit(e: &TlsConfigError, s: &TlsSettings) -> (&'static str, String) {
    let shown = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    match e {
        TlsConfigError::File { path, .. } if s.cert.as_ref() == Some(path) => {
            (CERT, shown(&s.cert))
        }
        TlsConfigError::File { path, .. } if s.key.as_ref() == Some(path) => (KEY, shown(&s.key)),
        TlsConfigError::File { .. } | TlsConfigError::NoRoots(_) => (CA, shown(&s.ca)),
        TlsConfigError::HalfIdentity if s.cert.is_some() => (CERT, shown(&s.cert)),
        TlsConfigError::HalfIdentity => (KEY, shown(&s.key)),
        TlsConfigError::Identity(_) => (CERT, shown(&s.cert)),
        TlsConfigError::ServerName(name) => (SERVER_NAME, name.clone()),
    }
}
