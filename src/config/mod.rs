//! Configuration from `OUTRIGGER_*` environment variables (and the matching flags).
//!
//! clap gathers the raw strings and prints `--help` with every variable; this module checks
//! them, so that a bad value is reported with the variable's name, the value and what was
//! expected, and the process exits with status 2.

mod upstream_tls;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::balance::Policy;
use crate::health::{ActiveCheck, HealthPolicy, Outlier};
use crate::node_client::h1::HeadLimits;
use crate::proxy::ProxySettings;
use crate::server::ConnectionLimits;
use crate::upstream::UpstreamSettings;
use crate::workers::Pinning;
use outrigger_discovery::consul::ConsulDiscovery;
use outrigger_discovery::dns::{DnsDiscovery, DnsQuery};
use outrigger_discovery::eureka::EurekaDiscovery;
use outrigger_discovery::file::FileDiscovery;
use outrigger_discovery::nacos::NacosDiscovery;
use outrigger_discovery::pace::UpdateSpacing;
use outrigger_discovery::static_list::{valid_service_name, StaticList};
use outrigger_discovery::{Discovery, GuardPolicy};

/// The raw command line and environment, as clap collects it.
#[derive(Debug, Parser)]
#[command(
    name = "outrigger",
    version,
    about = "A sidecar HTTP proxy that finds its upstreams in a service registry.",
    long_about = "A sidecar HTTP proxy that finds its upstreams in a service registry.\n\n\
        Apps send plain HTTP to it (HTTP_PROXY=http://127.0.0.1:15001, or Host: <service>); it \
        balances across the service's nodes and keeps routing to the last-known-good nodes when \
        the registry misbehaves. Every option is an environment variable; flags override them."
)]
pub struct Args {
    /// Address of the proxy listener.
    #[arg(long, env = "OUTRIGGER_LISTEN", default_value = "127.0.0.1:15001")]
    pub listen: String,

    /// Address of the admin API (/upstreams, /metrics, /ready, /live).
    #[arg(
        long,
        env = "OUTRIGGER_ADMIN_LISTEN",
        default_value = "127.0.0.1:15000"
    )]
    pub admin_listen: String,

    /// Host names the admin API answers besides IP addresses and localhost, comma-separated
    /// (a page using DNS rebinding reaches the port under a name of its own, which is refused
    /// with 403).
    #[arg(long, env = "OUTRIGGER_ADMIN_HOSTS", default_value = "")]
    pub admin_hosts: String,

    /// Routable services, comma-separated; `name=ip:port` also opens a listener dedicated to
    /// that service. Example: `orders,users=127.0.0.1:9001`.
    #[arg(long, env = "OUTRIGGER_UPSTREAMS")]
    pub upstreams: Option<String>,

    /// Where nodes come from: `static:orders=127.0.0.1:8081@3,127.0.0.1:8082;users=[::1]:8083`,
    /// `file:///path/nodes.json` (JSON or .toml, re-read on change), or
    /// `consul://host:8500[,host2:8500][?dc=&ns=&partition=&tag=&health=passing|warning&address=service|lan|wan|...&wait=5m]`
    /// (`consul+https://` for TLS), or `dns://ip:port[,ip:port][?min_ttl=1s&max_ttl=60s]`
    /// (`dns://` alone: the system resolver) with OUTRIGGER_DNS_<SERVICE> per service:
    /// `srv:<name>`, `ip:<host>:<port>`, `a:<host>:<port>` or `aaaa:<host>:<port>`; or
    /// `eureka://[user:pass@]host:8761/eureka[,host2:8761/eureka][?interval=5s&weight_key=weight&secure=true]`;
    /// or `nacos://host:8848[,host2:8848][?namespace=&group=&clusters=&healthy_only=true&poll=5s&push=true&grpc_port=9848]`
    /// (gRPC push on `grpc_port`, default the HTTP port + 1000).
    #[arg(long, env = "OUTRIGGER_DISCOVERY")]
    pub discovery: Option<String>,

    /// Consul ACL token, sent as X-Consul-Token; never logged.
    #[arg(long, env = "OUTRIGGER_CONSUL_TOKEN", hide_env_values = true)]
    pub consul_token: Option<String>,

    /// Eureka basic-auth user (overrides user:pass@ in the URL).
    #[arg(long, env = "OUTRIGGER_EUREKA_USER")]
    pub eureka_user: Option<String>,

    /// Eureka basic-auth password; never logged.
    #[arg(long, env = "OUTRIGGER_EUREKA_PASSWORD", hide_env_values = true)]
    pub eureka_password: Option<String>,

    /// Nacos username (login at /nacos/v1/auth/login).
    #[arg(long, env = "OUTRIGGER_NACOS_USERNAME")]
    pub nacos_username: Option<String>,

    /// Nacos password; never logged.
    #[arg(long, env = "OUTRIGGER_NACOS_PASSWORD", hide_env_values = true)]
    pub nacos_password: Option<String>,

    /// Default load-balancing policy: round_robin, random, least_request, peak_ewma,
    /// ring_hash:<key> or maglev:<key>, key = header:<name>, cookie:<name>, client_ip or path.
    /// Per service: OUTRIGGER_LB_<SERVICE> (upper case, '-' and '.' as '_'), e.g.
    /// OUTRIGGER_LB_ORDERS=maglev:header:x-user.
    #[arg(long, env = "OUTRIGGER_LB", default_value = "round_robin")]
    pub lb: String,

    /// Active health check of every node: none, tcp, or http:/path, with ?options (interval,
    /// timeout, jitter, healthy, unhealthy; for http also method, host, statuses), e.g.
    /// http:/healthz?interval=1s&timeout=500ms&statuses=200-299. Per service:
    /// OUTRIGGER_HC_<SERVICE>.
    #[arg(long, env = "OUTRIGGER_HC", default_value = "none")]
    pub hc: String,

    /// Passive outlier detection: failures in a row (5xx, connect failures, timeouts, resets)
    /// that eject a node; 0 turns it off.
    #[arg(long, env = "OUTRIGGER_OUTLIER_CONSECUTIVE", default_value = "5")]
    pub outlier_consecutive: String,

    /// First ejection time; it doubles with each ejection of the same node.
    #[arg(long, env = "OUTRIGGER_OUTLIER_BASE_EJECTION", default_value = "30s")]
    pub outlier_base_ejection: String,

    /// Longest ejection time.
    #[arg(long, env = "OUTRIGGER_OUTLIER_MAX_EJECTION", default_value = "300s")]
    pub outlier_max_ejection: String,

    /// Largest share of a service's nodes ejected at once (one node may always be).
    #[arg(long, env = "OUTRIGGER_OUTLIER_MAX_EJECTED", default_value = "50%")]
    pub outlier_max_ejected: String,

    /// Below this share of healthy nodes, health is ignored and all nodes take traffic.
    #[arg(long, env = "OUTRIGGER_PANIC_THRESHOLD", default_value = "50%")]
    pub panic_threshold: String,

    /// Retries on another node: connect failures always; 502/503/504, resets and timeouts
    /// for idempotent methods. Bodies over 64 KiB are streamed and not retried.
    #[arg(long, env = "OUTRIGGER_RETRIES", default_value = "2")]
    pub retries: String,

    /// Time one attempt may take (default: OUTRIGGER_REQUEST_TIMEOUT).
    #[arg(long, env = "OUTRIGGER_TRY_TIMEOUT")]
    pub try_timeout: Option<String>,

    /// Retries allowed as a share of requests over the last 10 s.
    #[arg(long, env = "OUTRIGGER_RETRY_BUDGET", default_value = "20%")]
    pub retry_budget: String,

    /// Retries allowed per second whatever the traffic.
    #[arg(long, env = "OUTRIGGER_RETRY_BUDGET_MIN", default_value = "10")]
    pub retry_budget_min: String,

    /// Requests in flight per service at most; more get 503 (max-requests).
    #[arg(long, env = "OUTRIGGER_MAX_REQUESTS", default_value = "1024")]
    pub max_requests: String,

    /// Connections being opened per service at most; more get 503 (max-pending-connects).
    #[arg(long, env = "OUTRIGGER_MAX_PENDING_CONNECTS", default_value = "256")]
    pub max_pending_connects: String,

    /// Log filter and format: a level (`info`, `debug`, `outrigger=debug`), optionally with
    /// `,json` for JSON lines.
    #[arg(long, env = "OUTRIGGER_LOG", default_value = "info")]
    pub log: String,

    /// Time allowed to open a TCP connection to an upstream node.
    #[arg(long, env = "OUTRIGGER_CONNECT_TIMEOUT", default_value = "1s")]
    pub connect_timeout: String,

    /// Time allowed from sending a request to receiving the response head.
    #[arg(long, env = "OUTRIGGER_REQUEST_TIMEOUT", default_value = "15s")]
    pub request_timeout: String,

    /// How long an app connection may take to send a complete HTTP/1.1 request head (or, on
    /// any connection, to show its protocol), counted from its opening and from the end of the
    /// previous response; a connection that misses it is closed.
    #[arg(long, env = "OUTRIGGER_HEADER_READ_TIMEOUT", default_value = "30s")]
    pub header_read_timeout: String,

    /// The largest request head an app may send, request line and headers included, in bytes
    /// (`65536`) or with a unit (`60KiB`, `1MiB`): larger ones get 431 (HTTP/1.1) or a refused
    /// stream (HTTP/2).
    #[arg(long, env = "OUTRIGGER_MAX_REQUEST_HEADERS", default_value = "60KiB")]
    pub max_request_headers: String,

    /// The largest response head a node may send, status line and headers included, in bytes
    /// or with a unit: a larger one gets the app a 502 (`response-headers-too-large`) that does
    /// not count against the node.
    #[arg(long, env = "OUTRIGGER_MAX_RESPONSE_HEADERS", default_value = "60KiB")]
    pub max_response_headers: String,

    /// Header fields at most in a request head from an app (more: 431) and in a response
    /// head or trailers from a node (more: 502 `response-headers-too-large`, not the node's
    /// failure), over HTTP/1.1 and HTTP/2 alike.
    #[arg(long, env = "OUTRIGGER_MAX_HEADERS", default_value = "100")]
    pub max_headers: String,

    /// The HTTP version spoken to the nodes: `http1`; `h2` (prior knowledge in plaintext, ALPN
    /// over TLS); `auto` (over TLS, ALPN chooses; HTTP/1.1 in plaintext). Per service:
    /// OUTRIGGER_UPSTREAM_PROTOCOL_<SERVICE>.
    #[arg(long, env = "OUTRIGGER_UPSTREAM_PROTOCOL", default_value = "http1")]
    pub upstream_protocol: String,

    /// TLS toward the nodes: `off` or `on`. Per service: OUTRIGGER_UPSTREAM_TLS_<SERVICE>.
    #[arg(long, env = "OUTRIGGER_UPSTREAM_TLS", default_value = "off")]
    pub upstream_tls: String,

    /// A PEM file of the CA certificates that nodes' certificates must chain to (default: the
    /// system's roots). Per service: OUTRIGGER_UPSTREAM_TLS_CA_<SERVICE>.
    #[arg(long, env = "OUTRIGGER_UPSTREAM_TLS_CA")]
    pub upstream_tls_ca: Option<String>,

    /// A PEM file with the client certificate chain, for nodes that require one (mTLS); with
    /// OUTRIGGER_UPSTREAM_TLS_KEY. Per service: OUTRIGGER_UPSTREAM_TLS_CERT_<SERVICE>.
    #[arg(long, env = "OUTRIGGER_UPSTREAM_TLS_CERT")]
    pub upstream_tls_cert: Option<String>,

    /// A PEM file with the client certificate's private key. Per service:
    /// OUTRIGGER_UPSTREAM_TLS_KEY_<SERVICE>.
    #[arg(long, env = "OUTRIGGER_UPSTREAM_TLS_KEY")]
    pub upstream_tls_key: Option<String>,

    /// The name nodes' certificates must be valid for, also sent as SNI (default: the node's
    /// IP address). Per service: OUTRIGGER_UPSTREAM_TLS_SERVER_NAME_<SERVICE>.
    #[arg(long, env = "OUTRIGGER_UPSTREAM_TLS_SERVER_NAME")]
    pub upstream_tls_server_name: Option<String>,

    /// An app connection on which nothing happens for this long is closed gracefully, a request
    /// in flight finishing first (HTTP/2: GOAWAY); checked every half timeout. HTTP/1.1
    /// connections are also closed by OUTRIGGER_HEADER_READ_TIMEOUT, whichever is shorter.
    #[arg(long, env = "OUTRIGGER_IDLE_TIMEOUT", default_value = "60s")]
    pub idle_timeout: String,

    /// Open app connections at most, over all proxy listeners; more are closed on accept.
    #[arg(long, env = "OUTRIGGER_MAX_CONNECTIONS", default_value = "10000")]
    pub max_connections: String,

    /// How long a response body from a node may go without a byte before the request is
    /// ended: the app sees the response cut off, its request slot is freed, and it is counted
    /// in outrigger_stream_idle_timeouts_total (Envoy's stream_idle_timeout, nginx's
    /// proxy_read_timeout).
    #[arg(long, env = "OUTRIGGER_STREAM_IDLE_TIMEOUT", default_value = "60s")]
    pub stream_idle_timeout: String,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish before exit.
    #[arg(long, env = "OUTRIGGER_DRAIN_TIMEOUT", default_value = "10s")]
    pub drain_timeout: String,

    /// How often the file adapter checks its file for changes.
    #[arg(long, env = "OUTRIGGER_FILE_POLL", default_value = "500ms")]
    pub file_poll: String,

    /// The least time between two reads of a changing node set of 10,000 endpoints or more
    /// (file and Consul; for Nacos pushes, between two forwarded); smaller sets wait in
    /// proportion (1,000 endpoints: a tenth). `0` takes every change at once, whatever it
    /// costs the request path.
    #[arg(long, env = "OUTRIGGER_UPDATE_SPACING", default_value = "1s")]
    pub update_spacing: String,

    /// Worker threads of the runtime (default: the number of cores).
    #[arg(long, env = "OUTRIGGER_WORKER_THREADS")]
    pub worker_threads: Option<String>,

    /// `auto`: when there is one worker per CPU the process may use (the default count), each
    /// worker stays on a CPU of its own; `off`: the kernel places them.
    #[arg(long, env = "OUTRIGGER_PIN_WORKERS", default_value = "auto")]
    pub pin_workers: String,

    /// How long the registry must keep giving a drastic update (empty, or dropping more than
    /// OUTRIGGER_LKG_MAX_DROP of the nodes) before it is applied.
    #[arg(long, env = "OUTRIGGER_LKG_CONFIRM", default_value = "30s")]
    pub lkg_confirm: String,

    /// Largest share of nodes one update may remove and still apply at once: `50%` or `0.5`.
    #[arg(long, env = "OUTRIGGER_LKG_MAX_DROP", default_value = "50%")]
    pub lkg_max_drop: String,

    /// Directory for last-known-good node sets, served at start if the registry is down.
    /// Unset: nothing is persisted.
    #[arg(long, env = "OUTRIGGER_STATE_DIR")]
    pub state_dir: Option<String>,

    /// Stored node sets older than this are not used at start.
    #[arg(long, env = "OUTRIGGER_STATE_MAX_AGE", default_value = "7d")]
    pub state_max_age: String,
}

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

fn bad(var: &str, value: &str, expected: impl Into<String>) -> ConfigError {
    ConfigError {
        var: var.to_string(),
        value: value.to_string(),
        expected: expected.into(),
    }
}

/// A routable service and, optionally, the listener dedicated to it.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSpec {
    /// The service name, lower-cased.
    pub name: Arc<str>,
    /// A listener whose every request goes to this service.
    pub listener: Option<SocketAddr>,
    /// How the service is balanced, checked and limited.
    pub settings: UpstreamSettings,
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
    /// Discovery source.
    pub discovery: DiscoverySpec,
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
}

fn duration(var: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.trim()).map_err(|e| {
        bad(
            var,
            value,
            format!("a duration such as 500ms, 2s or 1m ({e})"),
        )
    })
}

fn positive_duration(var: &str, value: &str) -> Result<Duration, ConfigError> {
    let d = duration(var, value)?;
    if d.is_zero() {
        return Err(bad(var, value, "a duration greater than zero"));
    }
    Ok(d)
}

fn socket(var: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.trim().parse().map_err(|_| {
        bad(
            var,
            value,
            "ip:port, such as 127.0.0.1:15001 or [::1]:15001",
        )
    })
}

fn share(var: &str, value: &str) -> Result<f64, ConfigError> {
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

fn upstreams(value: &str) -> Result<Vec<UpstreamSpec>, ConfigError> {
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
            settings: UpstreamSettings {
                policy: Policy::default(),
                health: HealthPolicy::default(),
                connect_timeout: Duration::from_secs(1),
                max_requests: 1024,
                max_pending_connects: 256,
                retry_budget_share: 0.2,
                retry_budget_floor: 10,
                response_limits: Default::default(),
                tls: None,
                tls_config: Default::default(),
                protocol: Default::default(),
            },
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
fn redact_userinfo(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***@{}", &url[..s + 3], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// Each routed service's DNS query, from `OUTRIGGER_DNS_<SERVICE>`.
fn dns_queries(
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

fn discovery(
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

fn active_check(value: &str) -> Result<Option<ActiveCheck>, String> {
    if value.trim() == "none" {
        return Ok(None);
    }
    value.parse().map(Some)
}

/// A size in bytes: digits, optionally followed by `B`, `KiB` or `MiB` (also `K`, `KB`, `M`,
/// `MB`, read as powers of 1,024), within `range`.
fn byte_size(
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

fn count(var: &str, value: &str, range: std::ops::RangeInclusive<u64>) -> Result<u64, ConfigError> {
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
    fn take<T: Default>(&mut self, checked: Result<T, ConfigError>) -> T {
        checked.unwrap_or_else(|e| {
            self.0.push(e);
            T::default()
        })
    }
}

/// The settings every service starts from (`OUTRIGGER_LB`, `OUTRIGGER_HC`, outlier detection,
/// limits, retry budget).
fn upstream_defaults(args: &Args, errs: &mut ConfigErrors) -> UpstreamSettings {
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

fn max_headers(args: &Args) -> Result<u32, ConfigError> {
    count("OUTRIGGER_MAX_HEADERS", &args.max_headers, 1..=10_000).map(|n| n as u32)
}

/// Timeouts and retries of the request path.
fn proxy_settings(args: &Args, errs: &mut ConfigErrors) -> ProxySettings {
    let request_timeout = errs.take(positive_duration(
        "OUTRIGGER_REQUEST_TIMEOUT",
        &args.request_timeout,
    ));
    ProxySettings {
        request_timeout,
        try_timeout: match &args.try_timeout {
            Some(v) => errs.take(positive_duration("OUTRIGGER_TRY_TIMEOUT", v)),
            None => request_timeout,
        },
        max_retries: errs.take(count("OUTRIGGER_RETRIES", &args.retries, 0..=5)) as u32,
        stream_idle_timeout: errs.take(positive_duration(
            "OUTRIGGER_STREAM_IDLE_TIMEOUT",
            &args.stream_idle_timeout,
        )),
        // Reported once, with the response limits.
        max_request_headers: max_headers(args).unwrap_or(100),
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
        let defaults = upstream_defaults(&args, &mut errs);
        for u in &mut upstreams {
            u.settings = defaults.clone();
        }
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
        let discovery = discovery(
            &args.discovery.clone().unwrap_or_default(),
            &upstreams,
            args.consul_token.clone(),
            args.eureka_user
                .clone()
                .map(|u| (u, args.eureka_password.clone().unwrap_or_default())),
            args.nacos_username
                .clone()
                .map(|u| (u, args.nacos_password.clone().unwrap_or_default())),
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
        let file_poll = errs.take(positive_duration("OUTRIGGER_FILE_POLL", &args.file_poll));
        let spacing = errs.take(duration("OUTRIGGER_UPDATE_SPACING", &args.update_spacing));
        let state_max_age = errs.take(duration("OUTRIGGER_STATE_MAX_AGE", &args.state_max_age));
        let (Some(discovery), Some(listen), Some(admin_listen), true) =
            (discovery, listen, admin_listen, errs.0.is_empty())
        else {
            return Err(errs);
        };
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
            discovery,
            log_filter,
            log_json,
            proxy,
            app_connections,
            connect_timeout: defaults.connect_timeout,
            request_timeout: proxy.request_timeout,
            drain_timeout,
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
        })
    }

    /// Builds the discovery source the configuration names.
    pub fn discovery_source(&self) -> Box<dyn Discovery> {
        match &self.discovery {
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
