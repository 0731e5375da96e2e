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

use std::sync::Arc;

use outrigger_discovery::registration::Credentials;

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
            // Set by `sources`.
            sources: Vec::new(),
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

/// Each routed service's DNS query, from `OUTRIGGER_DNS_<SERVICE>`.
fn dns_queries(
    fed: &[&UpstreamSpec],
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
            if super::unknown::service_link(var) {
                continue; // Kubernetes' variables for a Service named `outrigger-dns`
            }
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
    queries.retain(|name, _| fed.iter().any(|u| *u.name == **name));
    for missing in fed.iter().filter(|u| !queries.contains_key(&*u.name)) {
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

/// One configured node source and the services it feeds.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// What the URL configured.
    pub spec: DiscoverySpec,
    /// The URL as configured, without credentials.
    pub url: String,
    /// The services it feeds, in the order of `OUTRIGGER_UPSTREAMS`.
    pub services: Vec<Arc<str>>,
}

/// Splits a source variable into its URLs: whitespace separates them. A static list or a
/// file path may contain spaces, so a word after one that does not start with a scheme
/// (`static:`, `consul://`, ...) and has no `//` continues it:
/// `static:orders=127.0.0.1:8081, 127.0.0.1:8082` stays one source.
pub(super) fn split_sources(value: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in value.split_whitespace() {
        let scheme = word.split_once(':').is_some_and(|(s, _)| {
            s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        });
        let new = scheme || word.contains("//");
        match out.last_mut() {
            Some(last) if !new && (last.starts_with("static:") || last.starts_with("file:")) => {
                last.push(' ');
                last.push_str(word);
            }
            _ => out.push(word.to_string()),
        }
    }
    out
}

/// What makes two spellings of a source URL one source: a trailing `/` of its path does not
/// count (`eureka://h/eureka/` is `eureka://h/eureka`).
fn source_key(url: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    format!("{}?{query}", base.trim_end_matches('/'))
}

/// A source URL (or text naming some) as errors may show it: credentials masked, including a
/// `user:password@` behind a misspelt or missing scheme (`eureka//bob:secret@host`,
/// `eureka:bob:secret@host`), which a URL parser would not find. A static list's
/// `ip:port@weight` is left alone: what follows its `@` is a number.
pub(crate) fn shown(text: &str) -> String {
    let masked = outrigger_discovery::redact_secrets(text);
    let words: Vec<String> = masked.split(' ').map(mask_userinfo).collect();
    words.join(" ")
}

/// `word` with each `user:password@` in it replaced by `***@`: the text before an `@` back to
/// the last `/`, `"` or `=` when it holds a `:` and what follows the `@` is not a weight.
fn mask_userinfo(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    while let Some(at) = rest.find('@') {
        let (before, after) = (&rest[..at], &rest[at + 1..]);
        let start = before.rfind(['/', '"', '=']).map_or(0, |i| i + 1);
        let userinfo = &before[start..];
        let weight = after
            .split([',', ';', '"'])
            .next()
            .is_some_and(|w| w.parse::<f64>().is_ok());
        // A token alone (`consul://TOKEN@host`) is user info too where the word is a URL.
        let url = word.contains("//") || word.contains(":/");
        let secret = (userinfo.contains(':') || (url && !userinfo.is_empty())) && !weight;
        out.push_str(&before[..start]);
        out.push_str(if secret { "***" } else { userinfo });
        out.push('@');
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Every service's sources: `OUTRIGGER_DISCOVERY_<SERVICE>` where set, else
/// `OUTRIGGER_DISCOVERY`; one or more URLs each. A URL named by several services (or by the
/// default) is one source feeding them all. Sets each service's `sources` (indices into the
/// returned list, in its configured order).
pub(super) fn sources(
    default: &str,
    routed: &mut [UpstreamSpec],
    credentials: &Credentials,
    vars: &[(String, String)],
) -> Result<Vec<SourceSpec>, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    unknown_services(routed, vars, &mut errs);
    if routed.is_empty() && default.trim().is_empty() {
        // No service could be read to ask for its own: the default is missing all the same.
        errs.0.push(bad(
            DISCOVERY,
            default,
            "a node source, such as static:orders=127.0.0.1:8081, file:///etc/outrigger/nodes.json or consul://127.0.0.1:8500 (it is unset or empty)",
        ));
    }
    let named = assign(default, routed, vars, &mut errs);
    let mut specs = Vec::new();
    for Named { var, url, services } in named {
        let fed: Vec<&UpstreamSpec> = routed
            .iter()
            .filter(|u| services.contains(&u.name))
            .collect();
        match discovery(&var, &url, &fed, routed, credentials, vars) {
            Ok(spec) => specs.push(SourceSpec {
                spec,
                url: shown(url.trim()),
                services,
            }),
            Err(e) => errs.0.extend(e.0),
        }
    }
    if errs.0.is_empty() {
        return Ok(specs);
    }
    for e in &mut errs.0 {
        // A static list carries no credentials, and its `ip:port@weight` is not user info.
        let sources = split_sources(&e.value);
        let is_static = |s: &str| s.starts_with("static:");
        if let [one] = sources.as_slice() {
            if is_static(one) {
                e.expected = outrigger_discovery::redact_secrets(&e.expected);
                e.value = outrigger_discovery::redact_secrets(&e.value);
                continue;
            }
        }
        e.expected = shown(&e.expected);
        if !sources.is_empty() {
            let each = sources.iter().map(|s| {
                if is_static(s) {
                    outrigger_discovery::redact_secrets(s)
                } else {
                    shown(s)
                }
            });
            e.value = each.collect::<Vec<_>>().join(" ");
        }
    }
    Err(errs)
}

const DISCOVERY: &str = "OUTRIGGER_DISCOVERY";

/// One source URL, the variable that first named it, and the services it feeds.
struct Named {
    var: String,
    url: String,
    services: Vec<Arc<str>>,
}

/// Reports each `OUTRIGGER_DISCOVERY_<SERVICE>` that names no routed service.
fn unknown_services(routed: &[UpstreamSpec], vars: &[(String, String)], errs: &mut ConfigErrors) {
    let ours = |k: &String| k.starts_with("OUTRIGGER_DISCOVERY_");
    for (var, value) in vars.iter().filter(|(k, _)| ours(k)) {
        let routed_here = routed
            .iter()
            .any(|u| service_var(DISCOVERY, &u.name) == *var);
        if !routed_here && !super::unknown::service_link(var) {
            let names: Vec<&str> = routed.iter().map(|u| &*u.name).collect();
            errs.0.push(bad(
                var,
                &shown(value),
                format!(
                    "no such service: OUTRIGGER_DISCOVERY_<SERVICE> names a service of OUTRIGGER_UPSTREAMS ({})",
                    names.join(", ")
                ),
            ));
        }
    }
}

/// Gives each service its sources (its own variable, else the default) and returns the
/// distinct URLs, each with the services it feeds; sets each service's `sources`.
fn assign(
    default: &str,
    routed: &mut [UpstreamSpec],
    vars: &[(String, String)],
    errs: &mut ConfigErrors,
) -> Vec<Named> {
    let mut named: Vec<Named> = Vec::new();
    for u in routed.iter_mut() {
        let own = service_var(DISCOVERY, &u.name);
        let (var, value) = match vars.iter().find(|(k, _)| *k == own) {
            Some((_, v)) => (own.clone(), v.as_str()),
            None => (DISCOVERY.to_string(), default),
        };
        let urls = split_sources(value);
        if urls.is_empty() {
            errs.0.push(bad(
                &var,
                value,
                format!(
                    "a node source for service {:?}, such as static:{0}=127.0.0.1:8081, file:///etc/outrigger/nodes.json or consul://127.0.0.1:8500 (it is unset or empty; {own} sets this service's alone)",
                    u.name
                ),
            ));
            continue;
        }
        u.sources.clear();
        for url in urls {
            let key = source_key(&url);
            let i = named
                .iter()
                .position(|n| source_key(&n.url) == key)
                .unwrap_or_else(|| {
                    named.push(Named {
                        var: var.clone(),
                        url,
                        services: Vec::new(),
                    });
                    named.len() - 1
                });
            if u.sources.contains(&i) {
                errs.0.push(bad(
                    &var,
                    &shown(value),
                    format!("each source once for service {:?}", u.name),
                ));
                continue;
            }
            named[i].services.push(u.name.clone());
            u.sources.push(i);
        }
    }
    named
}

/// Reads one source URL, given in `var`, feeding the services `fed` (of all `routed`).
fn discovery(
    var: &str,
    url: &str,
    fed: &[&UpstreamSpec],
    routed: &[UpstreamSpec],
    credentials: &Credentials,
    vars: &[(String, String)],
) -> Result<DiscoverySpec, ConfigErrors> {
    let (value, v) = (url, url.trim());
    let scheme_is = |s: &str| v.starts_with(s);
    if scheme_is("nacos://") || scheme_is("nacos+https://") {
        return NacosDiscovery::from_url(v, credentials.nacos.clone())
            .map(DiscoverySpec::Nacos)
            .map_err(|e| bad(var, &shown(value), e.to_string()).into());
    }
    if scheme_is("eureka://") || scheme_is("eureka+https://") {
        return EurekaDiscovery::from_url(v, credentials.eureka.clone())
            .map(DiscoverySpec::Eureka)
            .map_err(|e| bad(var, &shown(value), e.to_string()).into());
    }
    if scheme_is("dns://") {
        let queries = dns_queries(fed, routed, vars)?;
        return DnsDiscovery::from_url(v, queries)
            .map(DiscoverySpec::Dns)
            .map_err(|e| bad(var, value, e.to_string()).into());
    }
    if scheme_is("consul://") || scheme_is("consul+https://") {
        return ConsulDiscovery::from_url(v, credentials.consul_token.clone())
            .map(DiscoverySpec::Consul)
            .map_err(|e| bad(var, &shown(value), e.to_string()).into());
    }
    if let Some(spec) = v.strip_prefix("static:") {
        let list = StaticList::parse(spec).map_err(|e| bad(var, value, e.to_string()))?;
        let listed: HashSet<&str> = list.services().collect();
        if let Some(missing) = fed.iter().find(|u| !listed.contains(&*u.name)) {
            return Err(ConfigErrors::from(bad(
                var,
                value,
                format!(
                    "nodes for every service it feeds; {:?} has none",
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
                var,
                value,
                "a path after file://, such as file:///etc/outrigger/nodes.json",
            )));
        }
        return Ok(DiscoverySpec::File(PathBuf::from(path)));
    }
    let scheme = v.split_once(':').map_or(v, |(s, _)| s);
    Err(ConfigErrors::from(bad(
        var,
        value,
        format!(
            "a URL with scheme static:, file://, consul://, eureka://, nacos:// or dns:// (scheme {scheme:?} is not supported by this build)"
        ),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_split_on_whitespace_and_static_lists_keep_their_spaces() {
        assert_eq!(
            split_sources(
                "static:orders=127.0.0.1:1, 127.0.0.1:2  consul://h:8500\tfile:///a b.json"
            ),
            [
                "static:orders=127.0.0.1:1, 127.0.0.1:2",
                "consul://h:8500",
                "file:///a b.json"
            ]
        );
        // A misspelt scheme is a source of its own (refused), never part of a static list.
        assert_eq!(
            split_sources("static:orders=127.0.0.1:1 eureka//bob:pw@h/eureka"),
            ["static:orders=127.0.0.1:1", "eureka//bob:pw@h/eureka"]
        );
        assert_eq!(split_sources("consul://a x"), ["consul://a", "x"]);
        assert_eq!(
            source_key("eureka://h/eureka/?a=1"),
            source_key("eureka://h/eureka?a=1")
        );
        assert_ne!(
            source_key("eureka://h/eureka?a=1"),
            source_key("eureka://h/eureka?a=2")
        );
    }

    #[test]
    fn shown_masks_passwords_even_behind_a_misspelt_scheme() {
        assert_eq!(
            shown("eureka//bob:s3cret@127.0.0.1:8761/eureka"),
            "eureka//***@127.0.0.1:8761/eureka"
        );
        assert_eq!(
            shown("eureka://bob:s3cret@h/eureka"),
            "eureka://***@h/eureka"
        );
        assert_eq!(
            shown("static:orders=127.0.0.1:1@3"),
            "static:orders=127.0.0.1:1@3"
        );
        assert_eq!(shown("nacos://h?password=x"), "nacos://h?password=***");
        assert_eq!(
            shown("eureka:/bob:s3cret@h:8761/eureka"),
            "eureka:/***@h:8761/eureka"
        );
        assert_eq!(
            shown("eureka:bob:s3cret@h:8761/eureka"),
            "***@h:8761/eureka"
        );
        assert_eq!(
            shown("bob:s3cret@127.0.0.1:8761/eureka"),
            "***@127.0.0.1:8761/eureka"
        );
        assert_eq!(
            shown("name server \"bob:s3cret@127.0.0.1:53\""),
            "name server \"***@127.0.0.1:53\""
        );
        assert_eq!(
            shown("static:orders=127.0.0.1:1@3,127.0.0.1:2@0.5;users=[::1]:3@2"),
            "static:orders=127.0.0.1:1@3,127.0.0.1:2@0.5;users=[::1]:3@2"
        );
    }
}
