//! `OUTRIGGER_UPSTREAMS` and `OUTRIGGER_DISCOVERY`: the services routed and where their nodes
//! come from.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use outrigger_discovery::consul::ConsulDiscovery;
use outrigger_discovery::dns::{DnsDiscovery, DnsQuery};
use outrigger_discovery::eureka::EurekaDiscovery;
use outrigger_discovery::nacos::NacosDiscovery;
use outrigger_discovery::static_list::{valid_service_name, StaticList};

use super::values::{bad, ConfigError, ConfigErrors};
use super::{service_var, DiscoverySpec, UpstreamSpec};
use crate::upstream::UpstreamSettings;

pub(super) fn upstreams(value: &str) -> Result<Vec<UpstreamSpec>, ConfigError> {
    const VAR: &str = "OUTRIGGER_UPSTREAMS";
    let mut specs = Vec::new();
    let mut names = HashSet::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, listener) = match item.split_once('=') {
            Some((name, addr)) => {
                let addr = addr.trim().parse::<SocketAddr>().map_err(|_| {
                    bad(
                        VAR,
                        value,
                        format!("in {item:?}, a listener address ip:port after '='"),
                    )
                })?;
                (name.trim(), Some(addr))
            }
            None => (item, None),
        };
        let name = name.to_ascii_lowercase();
        if !valid_service_name(&name) {
            return Err(bad(
                VAR,
                value,
                format!("service name {name:?} to be letters, digits, '.', '-' or '_'"),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(bad(VAR, value, format!("service {name:?} listed once")));
        }
        specs.push(UpstreamSpec {
            name: name.into(),
            listener,
            // Replaced by the configured defaults and overrides (`Config::from_args`).
            settings: UpstreamSettings::default(),
        });
    }
    if specs.is_empty() {
        return Err(bad(
            VAR,
            value,
            "at least one service name, such as orders,users=127.0.0.1:9001",
        ));
    }
    Ok(specs)
}

/// The URL with any `user:password@` replaced, so credentials never reach a message.
pub(super) fn redact_userinfo(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***@{}", &url[..s + 3], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// Each routed service's DNS query, from `OUTRIGGER_DNS_<SERVICE>`.
pub(super) fn dns_queries(
    routed: &[UpstreamSpec],
    vars: &[(String, String)],
) -> Result<HashMap<String, DnsQuery>, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    let mut queries = HashMap::new();
    for (var, value) in vars.iter().filter(|(k, _)| k.starts_with("OUTRIGGER_DNS_")) {
        let Some(u) = routed
            .iter()
            .find(|u| service_var("OUTRIGGER_DNS", &u.name) == *var)
        else {
            errs.0.push(bad(
                var,
                value,
                "no such service: OUTRIGGER_DNS_<SERVICE> names a service of OUTRIGGER_UPSTREAMS",
            ));
            continue;
        };
        match value.parse::<DnsQuery>() {
            Ok(query) => {
                queries.insert(u.name.to_string(), query);
            }
            Err(e) => errs.0.push(bad(var, value, e)),
        }
    }
    for missing in routed.iter().filter(|u| !queries.contains_key(&*u.name)) {
        let var = service_var("OUTRIGGER_DNS", &missing.name);
        if vars.iter().any(|(k, _)| *k == var) {
            continue; // its value was wrong, and said so above
        }
        errs.0.push(bad(
            &var,
            "",
            format!(
                "the DNS query of service {:?}, such as srv:_http._tcp.{0}.service.consul or ip:{0}.internal:8080",
                missing.name
            ),
        ));
    }
    if errs.0.is_empty() {
        Ok(queries)
    } else {
        Err(errs)
    }
}

pub(super) fn discovery(
    value: &str,
    routed: &[UpstreamSpec],
    consul_token: Option<String>,
    eureka_auth: Option<(String, String)>,
    nacos_auth: Option<(String, String)>,
    vars: &[(String, String)],
) -> Result<DiscoverySpec, ConfigErrors> {
    const VAR: &str = "OUTRIGGER_DISCOVERY";
    let v = value.trim();
    if v.starts_with("nacos://") || v.starts_with("nacos+https://") {
        return NacosDiscovery::from_url(v, nacos_auth)
            .map(DiscoverySpec::Nacos)
            .map_err(|e| bad(VAR, value, e.to_string()).into());
    }
    if v.starts_with("eureka://") || v.starts_with("eureka+https://") {
        return EurekaDiscovery::from_url(v, eureka_auth)
            .map(DiscoverySpec::Eureka)
            .map_err(|e| bad(VAR, &redact_userinfo(value), e.to_string()).into());
    }
    if v.starts_with("dns://") {
        let queries = dns_queries(routed, vars)?;
        return DnsDiscovery::from_url(v, queries)
            .map(DiscoverySpec::Dns)
            .map_err(|e| bad(VAR, value, e.to_string()).into());
    }
    if v.starts_with("consul://") || v.starts_with("consul+https://") {
        return ConsulDiscovery::from_url(v, consul_token)
            .map(DiscoverySpec::Consul)
            .map_err(|e| bad(VAR, value, e.to_string()).into());
    }
    if let Some(spec) = v.strip_prefix("static:") {
        let list = StaticList::parse(spec).map_err(|e| bad(VAR, value, e.to_string()))?;
        let listed: HashSet<&str> = list.services().collect();
        if let Some(missing) = routed.iter().find(|u| !listed.contains(&*u.name)) {
            return Err(ConfigErrors::from(bad(
                VAR,
                value,
                format!(
                    "nodes for every service in OUTRIGGER_UPSTREAMS; {:?} has none",
                    missing.name
                ),
            )));
        }
        return Ok(DiscoverySpec::Static(list));
    }
    if let Some(path) = v
        .strip_prefix("file://")
        .or_else(|| v.strip_prefix("file:"))
    {
        if path.is_empty() {
            return Err(ConfigErrors::from(bad(
                VAR,
                value,
                "a path after file://, such as file:///etc/outrigger/nodes.json",
            )));
        }
        return Ok(DiscoverySpec::File(PathBuf::from(path)));
    }
    if v.is_empty() {
        return Err(ConfigErrors::from(bad(
            VAR,
            value,
            "a node source, such as static:orders=127.0.0.1:8081, file:///etc/outrigger/nodes.json or consul://127.0.0.1:8500 (it is unset)",
        )));
    }
    let scheme = v.split_once(':').map_or(v, |(s, _)| s);
    Err(ConfigErrors::from(bad(
        VAR,
        value,
        format!(
            "a URL with scheme static:, file://, consul://, eureka://, nacos:// or dns:// (scheme {scheme:?} is not supported by this build)"
        ),
    )))
}
