//! Configuration from `OUTRIGGER_*` environment variables (and the matching flags).
//!
//! clap gathers the raw strings and prints `--help` with every variable; this module checks
//! them, so that a bad value is reported with the variable's name, the value and what was
//! expected, and the process exits with status 2.

mod args;
mod defaults;
mod per_service;
mod register;
mod sources;
mod unknown;
mod upstream_tls;
mod values;

pub use args::{Args, Command};
use defaults::upstream_defaults;
use outrigger_discovery::registration::Credentials;
pub use register::RegisterSpec;
pub use sources::SourceSpec;
use sources::{sources, upstreams};
use values::{bad, byte_size, count, duration, on_off, positive_duration, share, socket};
pub use values::{ConfigError, ConfigErrors};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::health::ActiveCheck;
use crate::proxy::ProxySettings;
use crate::server::ConnectionLimits;
use crate::upstream::UpstreamSettings;
use crate::workers::Pinning;
use outrigger_discovery::consul::ConsulDiscovery;
use outrigger_discovery::dns::DnsDiscovery;
use outrigger_discovery::eureka::EurekaDiscovery;
use outrigger_discovery::file::FileDiscovery;
use outrigger_discovery::nacos::NacosDiscovery;
use outrigger_discovery::pace::UpdateSpacing;
use outrigger_discovery::static_list::StaticList;
use outrigger_discovery::{Discovery, GuardPolicy};

/// A routable service and, optionally, the listener dedicated to it.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSpec {
    /// The service name, lower-cased.
    pub name: Arc<str>,
    /// A listener whose every request goes to this service.
    pub listener: Option<SocketAddr>,
    /// How the service is balanced, checked and limited.
    pub settings: UpstreamSettings,
    /// Where its nodes come from: indices into [`Config::sources`], in the configured order
    /// (the first source's labels win for a node several list).
    pub sources: Vec<usize>,
}

/// How the discovery source was configured.
#[derive(Debug, Clone)]
pub enum DiscoverySpec {
    /// Nodes listed in the URL.
    Static(StaticList),
    /// Nodes listed in a file.
    File(PathBuf),
    /// Services watched in Consul.
    Consul(ConsulDiscovery),
    /// Services resolved in DNS.
    Dns(DnsDiscovery),
    /// Apps registered in Eureka.
    Eureka(EurekaDiscovery),
    /// Services registered in Nacos.
    Nacos(NacosDiscovery),
}

/// The checked configuration the proxy runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Proxy listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Host names the admin API answers besides IP literals and localhost.
    pub admin_hosts: Vec<String>,
    /// Routable services.
    pub upstreams: Vec<UpstreamSpec>,
    /// Node sources, each with the services it feeds (`OUTRIGGER_DISCOVERY`,
    /// `OUTRIGGER_DISCOVERY_<SERVICE>`).
    pub sources: Vec<SourceSpec>,
    /// Log filter directive.
    pub log_filter: String,
    /// JSON log lines instead of text.
    pub log_json: bool,
    /// Timeouts and retries of the request path.
    pub proxy: ProxySettings,
    /// Limits on app connections.
    pub app_connections: ConnectionLimits,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Upstream response-head timeout.
    pub request_timeout: Duration,
    /// Drain time on shutdown.
    pub drain_timeout: Duration,
    /// How long to keep serving after a stop is requested, before draining.
    pub shutdown_delay: Duration,
    /// Registering the local app (`OUTRIGGER_REGISTER*`); `None`: not registered.
    pub register: Option<RegisterSpec>,
    /// The token that lets admin writes come from other hosts (`OUTRIGGER_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// Where the access log goes (`OUTRIGGER_ACCESS_LOG`).
    pub access_log: crate::access_log::Target,
    /// Whether a trace is started for a request without `traceparent` (`OUTRIGGER_TRACEPARENT`).
    pub start_traces: bool,
    /// File adapter poll interval.
    pub file_poll: Duration,
    /// Wait after reading a large node set before reading it again.
    pub update_spacing: UpdateSpacing,
    /// Runtime worker threads.
    pub worker_threads: usize,
    /// Whether workers stay on CPUs of their own.
    pub pin_workers: Pinning,
    /// Last-known-good thresholds.
    pub guard: GuardPolicy,
    /// Where to persist last-known-good sets.
    pub state_dir: Option<PathBuf>,
    /// Oldest stored set used at start.
    pub state_max_age: Duration,
    /// What to warn about once logging runs: `OUTRIGGER_*` variables no setting reads.
    pub warnings: Vec<String>,
}

/// The variable that overrides setting `prefix` for `service`: the prefix, `_`, and the name
/// in upper case with `-` and `.` as `_` (`OUTRIGGER_LB_USER_PROFILE` for `user-profile`).
pub fn service_var(prefix: &str, service: &str) -> String {
    format!(
        "{prefix}_{}",
        service.to_ascii_uppercase().replace(['-', '.'], "_")
    )
}

/// Applies every `<prefix>_<SERVICE>` variable to its service with `apply`; a variable naming
/// no routed service is an error, so a typo cannot silently do nothing.
fn per_service(
    prefix: &str,
    upstreams: &mut [UpstreamSpec],
    vars: &[(String, String)],
    errs: &mut ConfigErrors,
    apply: impl FnMut(&mut UpstreamSettings, &str) -> Result<(), String>,
) {
    per_service_except(prefix, &[], upstreams, vars, errs, apply)
}

/// [`per_service`], leaving out the variables that start with one of `others` (longer names
/// of other settings that share the prefix, such as `OUTRIGGER_UPSTREAM_TLS_CA` beside
/// `OUTRIGGER_UPSTREAM_TLS`).
fn per_service_except(
    prefix: &str,
    others: &[&str],
    upstreams: &mut [UpstreamSpec],
    vars: &[(String, String)],
    errs: &mut ConfigErrors,
    mut apply: impl FnMut(&mut UpstreamSettings, &str) -> Result<(), String>,
) {
    let wanted = format!("{prefix}_");
    let ours = |k: &String| k.starts_with(&wanted) && !others.iter().any(|o| k.starts_with(o));
    for (var, value) in vars.iter().filter(|(k, _)| ours(k)) {
        let Some(u) = upstreams
            .iter_mut()
            .find(|u| service_var(prefix, &u.name) == *var)
        else {
            if unknown::service_link(var) {
                continue; // Kubernetes' variables for a Service named like `outrigger-lb`
            }
            let names: Vec<&str> = upstreams.iter().map(|u| &*u.name).collect();
            errs.0.push(bad(
                var,
                value,
                format!(
                    "no such service: {prefix}_<SERVICE> names a service of OUTRIGGER_UPSTREAMS ({})",
                    names.join(", ")
                ),
            ));
            continue;
        };
        if let Err(e) = apply(&mut u.settings, value) {
            errs.0.push(bad(var, value, e));
        }
    }
}

/// `OUTRIGGER_CONSUL_TOKEN`, trimmed (a Secret file's trailing newline); one that still holds
/// a control character could never be sent as a header, and is refused here, naming the
/// variable, rather than failing every request to Consul later.
fn consul_token(token: Option<&str>, errs: &mut ConfigErrors) -> Option<String> {
    let token = token.map(str::trim).filter(|t| !t.is_empty())?;
    if token.chars().any(char::is_control) {
        errs.0.push(bad(
            "OUTRIGGER_CONSUL_TOKEN",
            "(hidden)",
            "a token without control characters (it is sent as the X-Consul-Token header)",
        ));
        return None;
    }
    Some(token.to_string())
}

pub(super) fn active_check(value: &str) -> Result<Option<ActiveCheck>, String> {
    if value.trim() == "none" {
        return Ok(None);
    }
    value.parse().map(Some)
}

pub(super) fn max_headers(args: &Args) -> Result<u32, ConfigError> {
    count("OUTRIGGER_MAX_HEADERS", &args.max_headers, 1..=10_000).map(|n| n as u32)
}

/// What the request path needs besides each service's settings.
fn proxy_settings(args: &Args, errs: &mut ConfigErrors) -> ProxySettings {
    ProxySettings {
        stream_idle_timeout: errs.take(positive_duration(
            "OUTRIGGER_STREAM_IDLE_TIMEOUT",
            &args.stream_idle_timeout,
        )),
        // Reported once, with the response limits.
        max_request_headers: max_headers(args).unwrap_or(100),
        per_endpoint_metrics: errs.take(on_off(&args.metrics_per_endpoint).map_err(|e| {
            bad(
                "OUTRIGGER_METRICS_PER_ENDPOINT",
                args.metrics_per_endpoint.trim(),
                e,
            )
        })),
    }
}

/// Limits on app connections.
fn app_connections(args: &Args, errs: &mut ConfigErrors) -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout: errs.take(positive_duration(
            "OUTRIGGER_HEADER_READ_TIMEOUT",
            &args.header_read_timeout,
        )),
        max_head_bytes: errs.take(byte_size(
            "OUTRIGGER_MAX_REQUEST_HEADERS",
            &args.max_request_headers,
            1024..=16 * 1024 * 1024,
        )) as u32,
        // Reported once, with the response limits.
        max_headers: max_headers(args).unwrap_or(100),
        idle_timeout: errs.take(positive_duration(
            "OUTRIGGER_IDLE_TIMEOUT",
            &args.idle_timeout,
        )),
        max_connections: errs.take(count(
            "OUTRIGGER_MAX_CONNECTIONS",
            &args.max_connections,
            1..=10_000_000,
        )) as usize,
    }
}

/// The log filter and whether lines are JSON, from `OUTRIGGER_LOG`.
fn logging(log: &str) -> Result<(String, bool), ConfigError> {
    let parts: Vec<&str> = log.split(',').map(str::trim).collect();
    let json = parts.contains(&"json");
    let filter: Vec<&str> = parts
        .into_iter()
        .filter(|p| *p != "json" && *p != "text" && !p.is_empty())
        .collect();
    let filter = if filter.is_empty() {
        "info".to_string()
    } else {
        filter.join(",")
    };
    tracing_subscriber::EnvFilter::try_new(&filter).map_err(|e| {
        bad(
            "OUTRIGGER_LOG",
            log,
            format!("a level such as info or outrigger=debug, optionally ,json ({e})"),
        )
    })?;
    Ok((filter, json))
}

/// `OUTRIGGER_WORKER_THREADS`, or the number of cores.
fn worker_threads(value: Option<&str>) -> Result<usize, ConfigError> {
    match value {
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        Some(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1024).contains(n))
            .ok_or_else(|| {
                bad(
                    "OUTRIGGER_WORKER_THREADS",
                    v,
                    "a whole number of threads from 1 to 1024",
                )
            }),
    }
}

impl Config {
    /// Checks every value and reports every one that is wrong or missing at once, each naming
    /// its variable, its value and what was expected.
    pub fn from_args(args: Args) -> Result<Config, ConfigErrors> {
        let mut errs = ConfigErrors::default();
        let vars: Vec<(String, String)> = std::env::vars().collect();
        let upstreams_raw = args.upstreams.clone().unwrap_or_default();
        let mut upstreams = errs.take(upstreams(&upstreams_raw));
        let mut defaults = upstream_defaults(&args, &mut errs);
        if defaults.try_timeout.is_zero() {
            defaults.try_timeout = defaults.request_timeout;
        }
        for u in &mut upstreams {
            u.settings = defaults.clone();
        }
        per_service::apply(&mut upstreams, &vars, &mut errs);
        per_service("OUTRIGGER_LB", &mut upstreams, &vars, &mut errs, |s, v| {
            s.policy = v.parse()?;
            Ok(())
        });
        per_service("OUTRIGGER_HC", &mut upstreams, &vars, &mut errs, |s, v| {
            s.health.active = active_check(v)?;
            Ok(())
        });
        per_service(
            "OUTRIGGER_UPSTREAM_PROTOCOL",
            &mut upstreams,
            &vars,
            &mut errs,
            |s, v| {
                s.protocol = v.parse()?;
                Ok(())
            },
        );
        upstream_tls::apply(&args, &mut upstreams, &vars, &mut errs);
        let proxy = proxy_settings(&args, &mut errs);
        let app_connections = app_connections(&args, &mut errs);
        let credentials = Credentials {
            consul_token: consul_token(args.consul_token.as_deref(), &mut errs),
            eureka: args
                .eureka_user
                .clone()
                .map(|u| (u, args.eureka_password.clone().unwrap_or_default())),
            nacos: args
                .nacos_username
                .clone()
                .map(|u| (u, args.nacos_password.clone().unwrap_or_default())),
        };
        let register = register::register(
            &args,
            args.discovery.as_deref(),
            credentials.clone(),
            &mut errs,
        );
        let discovery = sources(
            &args.discovery.clone().unwrap_or_default(),
            &mut upstreams,
            &credentials,
            &vars,
        );
        let discovery = match discovery {
            Ok(spec) => Some(spec),
            Err(e) => {
                errs.0.extend(e.0);
                None
            }
        };
        let (log_filter, log_json) = errs.take(logging(&args.log));
        let worker_threads = errs.take(worker_threads(args.worker_threads.as_deref()));
        let pin_workers = match args.pin_workers.trim() {
            "off" => Pinning::Off,
            "auto" => Pinning::Auto,
            other => {
                errs.0
                    .push(bad("OUTRIGGER_PIN_WORKERS", other, "auto or off"));
                Pinning::Auto
            }
        };
        let listen = errs.take(socket("OUTRIGGER_LISTEN", &args.listen).map(Some));
        let admin_listen =
            errs.take(socket("OUTRIGGER_ADMIN_LISTEN", &args.admin_listen).map(Some));
        for u in &upstreams {
            if u.listener.is_some() && (u.listener == listen || u.listener == admin_listen) {
                errs.0.push(bad(
                    "OUTRIGGER_UPSTREAMS",
                    &upstreams_raw,
                    format!("a listener for {:?} other than OUTRIGGER_LISTEN and OUTRIGGER_ADMIN_LISTEN", u.name),
                ));
            }
        }
        let guard = GuardPolicy {
            max_drop_share: errs.take(share("OUTRIGGER_LKG_MAX_DROP", &args.lkg_max_drop)),
            confirm: errs.take(duration("OUTRIGGER_LKG_CONFIRM", &args.lkg_confirm)),
        };
        let drain_timeout = errs.take(duration("OUTRIGGER_DRAIN_TIMEOUT", &args.drain_timeout));
        let shutdown_delay = errs.take(duration("OUTRIGGER_SHUTDOWN_DELAY", &args.shutdown_delay));
        let access_log = errs.take(
            args.access_log
                .parse()
                .and_then(|t: crate::access_log::Target| t.check().map(|()| t))
                .map_err(|e: String| bad("OUTRIGGER_ACCESS_LOG", &args.access_log, e)),
        );
        let admin_token = match args.admin_token.as_deref() {
            None => None,
            Some(t) if t.len() >= 16 && !t.chars().any(char::is_whitespace) => Some(t.to_string()),
            Some(_) => {
                // The value itself is a secret: not shown.
                errs.0.push(bad(
                    "OUTRIGGER_ADMIN_TOKEN",
                    "(hidden)",
                    "at least 16 characters, no spaces (it lets other hosts change routing)",
                ));
                None
            }
        };
        let start_traces = match args.traceparent.trim() {
            "forward" => false,
            "start" => true,
            other => {
                errs.0
                    .push(bad("OUTRIGGER_TRACEPARENT", other, "forward or start"));
                false
            }
        };
        let file_poll = errs.take(positive_duration("OUTRIGGER_FILE_POLL", &args.file_poll));
        let spacing = errs.take(duration("OUTRIGGER_UPDATE_SPACING", &args.update_spacing));
        let state_max_age = errs.take(duration("OUTRIGGER_STATE_MAX_AGE", &args.state_max_age));
        let (Some(discovery), Some(listen), Some(admin_listen), true) =
            (discovery, listen, admin_listen, errs.0.is_empty())
        else {
            return Err(errs);
        };
        let warnings = unknown::unknown_variables(
            &vars,
            &per_service::prefixes(),
            &upstreams.iter().map(|u| &*u.name).collect::<Vec<_>>(),
        );
        Ok(Config {
            listen,
            admin_listen,
            admin_hosts: args
                .admin_hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_string)
                .collect(),
            upstreams,
            sources: discovery,
            log_filter,
            log_json,
            proxy,
            app_connections,
            connect_timeout: defaults.connect_timeout,
            request_timeout: defaults.request_timeout,
            drain_timeout,
            shutdown_delay,
            register,
            admin_token,
            access_log,
            start_traces,
            file_poll,
            update_spacing: UpdateSpacing::new(spacing),
            worker_threads,
            pin_workers,
            guard,
            state_dir: args
                .state_dir
                .filter(|s| !s.trim().is_empty())
                .map(PathBuf::from),
            state_max_age,
            warnings,
        })
    }

    /// Builds the node sources the configuration names, each with the services it feeds.
    pub fn discovery_sources(&self) -> Vec<crate::publisher::Adapter> {
        self.sources
            .iter()
            .map(|spec| crate::publisher::Adapter {
                source: self.build_source(&spec.spec),
                url: spec.url.clone(),
                services: spec.services.clone(),
            })
            .collect()
    }

    fn build_source(&self, spec: &DiscoverySpec) -> Box<dyn Discovery> {
        match spec {
            DiscoverySpec::Static(list) => Box::new(list.clone()),
            DiscoverySpec::File(path) => {
                Box::new(FileDiscovery::new(path, self.file_poll).with_spacing(self.update_spacing))
            }
            DiscoverySpec::Consul(consul) => {
                Box::new(consul.clone().with_spacing(self.update_spacing))
            }
            DiscoverySpec::Dns(dns) => Box::new(dns.clone()),
            DiscoverySpec::Eureka(eureka) => Box::new(eureka.clone()),
            DiscoverySpec::Nacos(nacos) => {
                Box::new(nacos.clone().with_spacing(self.update_spacing))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(pairs: &[(&str, &str)]) -> Args {
        let mut argv = vec!["outrigger".to_string()];
        for (k, v) in pairs {
            argv.push(format!("--{k}={v}"));
        }
        Args::parse_from(argv)
    }

    #[test]
    fn accepts_the_documented_forms() {
        let c = Config::from_args(args(&[
            ("upstreams", "Orders, users=127.0.0.1:9001"),
            (
                "discovery",
                "static:orders=127.0.0.1:8081@3,127.0.0.1:8082;users=[::1]:8083",
            ),
            ("lkg-max-drop", "25%"),
            ("log", "debug,json"),
        ]))
        .unwrap();
        assert_eq!(&*c.upstreams[0].name, "orders");
        assert_eq!(
            c.upstreams[1].listener,
            Some("127.0.0.1:9001".parse().unwrap())
        );
        assert_eq!(c.guard.max_drop_share, 0.25);
        assert!(c.log_json);
        assert_eq!(c.log_filter, "debug");
    }

    /// The configuration of a sidecar registering `orders` in `register`, with `extra`.
    fn registering(
        discovery: &str,
        register: &str,
        extra: &[(&str, &str)],
    ) -> Result<Config, String> {
        let mut pairs = vec![
            ("upstreams", "orders"),
            ("discovery", discovery),
            ("register", register),
            ("register-service", "orders"),
            ("register-address", "127.0.0.1:8080"),
        ];
        pairs.extend_from_slice(extra);
        Config::from_args(args(&pairs)).map_err(|e| e.to_string())
    }

    #[test]
    fn the_registered_zone_is_the_sidecars_unless_given() {
        let zone_of = |extra: &[(&str, &str)]| {
            let c = registering(
                "static:orders=127.0.0.1:1",
                "consul://127.0.0.1:8500",
                extra,
            );
            c.unwrap()
                .register
                .unwrap()
                .app
                .metadata
                .get("zone")
                .cloned()
        };
        assert_eq!(zone_of(&[]), None);
        assert_eq!(zone_of(&[("zone", "eu-1a")]).as_deref(), Some("eu-1a"));
        let both = [("zone", "eu-1a"), ("register-zone", "eu-1b")];
        assert_eq!(zone_of(&both).as_deref(), Some("eu-1b"));
    }

    #[test]
    fn register_discovery_is_the_one_registry_among_the_sources() {
        let url = |discovery: &str| {
            registering(discovery, "discovery", &[]).map(|c| c.register.unwrap().url)
        };
        assert_eq!(
            url("static:orders=127.0.0.1:1 consul://127.0.0.1:8500").unwrap(),
            "consul://127.0.0.1:8500"
        );
        // One registry with two filters is one registry.
        let one = url("consul://127.0.0.1:8500?tag=a consul://127.0.0.1:8500?tag=b").unwrap();
        assert!(one.starts_with("consul://127.0.0.1:8500"), "{one}");
        let err = url("consul://127.0.0.1:8500 eureka://127.0.0.1:8761/eureka").unwrap_err();
        assert!(err.contains("names several registries"), "{err}");
    }

    #[test]
    fn the_consul_token_is_trimmed_and_a_control_character_refused() {
        // A Secret file's trailing newline is trimmed; a control character inside is refused,
        // the token never shown.
        let with = |token: &str| {
            Config::from_args(args(&[
                ("upstreams", "orders"),
                ("discovery", "static:orders=127.0.0.1:1"),
                ("consul-token", token),
            ]))
            .map_err(|e| e.to_string())
        };
        assert!(with("tok\n").is_ok());
        let err = with("to\u{1}k").unwrap_err();
        assert!(err.contains("OUTRIGGER_CONSUL_TOKEN=\"(hidden)\""), "{err}");
    }

    #[test]
    fn errors_name_the_variable_the_value_and_the_expectation() {
        let err = Config::from_args(args(&[
            ("upstreams", "orders"),
            ("discovery", "static:orders=127.0.0.1:1"),
            ("connect-timeout", "soon"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("OUTRIGGER_CONNECT_TIMEOUT=\"soon\": a duration"),
            "{err}"
        );

        let err = Config::from_args(args(&[
            ("upstreams", "orders,users"),
            ("discovery", "static:orders=127.0.0.1:1"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("OUTRIGGER_DISCOVERY") && err.contains("\"users\" has none"),
            "{err}"
        );

        let err = Config::from_args(args(&[
            ("upstreams", "orders"),
            ("discovery", "zookeeper://x"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"zookeeper\""), "{err}");

        let err = Config::from_args(args(&[("upstreams", "a/b"), ("discovery", "static:")]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("OUTRIGGER_UPSTREAMS=\"a/b\""), "{err}");
    }
}
