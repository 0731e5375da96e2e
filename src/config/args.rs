//! The command line and environment as clap collects them: every `OUTRIGGER_*` variable, its
//! flag, default and help text. Checking happens in the parent module.

use clap::{Parser, Subcommand};

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
    /// A helper command instead of the proxy.
    #[command(subcommand)]
    pub command: Option<Command>,

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

    /// `on`: also count every attempt per endpoint
    /// (`outrigger_endpoint_attempts_total{service,endpoint,result}`), a series per node and
    /// result.
    #[arg(long, env = "OUTRIGGER_METRICS_PER_ENDPOINT", default_value = "off")]
    pub metrics_per_endpoint: String,

    /// The access log: `off`, `stdout`, or a file path (absolute, or starting with ./),
    /// appended to: one JSON line per request.
    #[arg(long, env = "OUTRIGGER_ACCESS_LOG", default_value = "off")]
    pub access_log: String,

    /// W3C trace context: `forward` (a request's `traceparent` goes to the node as is) or
    /// `start` (also start a trace for a request that has none).
    #[arg(long, env = "OUTRIGGER_TRACEPARENT", default_value = "forward")]
    pub traceparent: String,

    /// A token that lets admin writes (pin, unpin, confirm, reject, deregister, quitquitquit)
    /// come from peers off loopback, presented as `Authorization: Bearer <token>`: at least
    /// 16 characters, no spaces. Unset: loopback only.
    #[arg(long, env = "OUTRIGGER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

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
    #[arg(long, env = "OUTRIGGER_DISCOVERY", hide_env_values = true)]
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

    /// How long a node that joins a running service, or comes back from an ejection or a
    /// failed active check, takes to ramp from a tenth of its weight to all of it (0s: at
    /// once), for every policy that uses weights.
    #[arg(long, env = "OUTRIGGER_SLOW_START", default_value = "0s")]
    pub slow_start: String,

    /// The sidecar's own zone: requests prefer the endpoints whose zone label is the same while
    /// that zone has enough healthy capacity, and spill over to other zones as it loses some
    /// (zone-aware routing; unset: off).
    #[arg(long, env = "OUTRIGGER_ZONE")]
    pub zone: Option<String>,

    /// With OUTRIGGER_ZONE: zone-aware routing applies only to services with at least this many
    /// endpoints in the priority tier in use (Envoy's `min_cluster_size`) [default: 6].
    #[arg(long, env = "OUTRIGGER_ZONE_MIN_CLUSTER_SIZE")]
    pub zone_min_cluster_size: Option<String>,

    /// With OUTRIGGER_ZONE: the share of requests routed by zone (`100%`, `0.5`; Envoy's
    /// `routing_enabled`); the others are balanced over every zone [default: 100%].
    #[arg(long, env = "OUTRIGGER_ZONE_ROUTING_ENABLED")]
    pub zone_routing_enabled: Option<String>,

    /// The node statuses a request is retried on another node for: codes and ranges from 400
    /// to 599, comma-separated (`502,503,504`, `500-599`, `429,503`), or `none`.
    #[arg(long, env = "OUTRIGGER_RETRY_ON", default_value = "502,503,504")]
    pub retry_on: String,

    /// `on`: retry requests whose method is not idempotent (POST, PATCH) too, after a timeout,
    /// a reset or a status of OUTRIGGER_RETRY_ON; the node may then see them twice. A refused
    /// connection is retried for any method.
    #[arg(long, env = "OUTRIGGER_RETRY_NON_IDEMPOTENT", default_value = "off")]
    pub retry_non_idempotent: String,

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

    /// Register the local app in a registry: `discovery` (the OUTRIGGER_DISCOVERY registry,
    /// when it is Consul, Eureka or Nacos) or a `consul://`, `eureka://` or `nacos://` URL.
    /// Unset: no registration.
    #[arg(long, env = "OUTRIGGER_REGISTER", hide_env_values = true)]
    pub register: Option<String>,

    /// The service name the app is registered under.
    #[arg(long, env = "OUTRIGGER_REGISTER_SERVICE")]
    pub register_service: Option<String>,

    /// The `ip:port` other sidecars reach the app on (in Kubernetes, the pod IP from the
    /// Downward API and the app's port).
    #[arg(long, env = "OUTRIGGER_REGISTER_ADDRESS")]
    pub register_address: Option<String>,

    /// The app's check, run by Outrigger against OUTRIGGER_REGISTER_ADDRESS: `tcp` or
    /// `http:/path`, with the options of OUTRIGGER_HC (`interval`, `timeout`, `healthy`,
    /// `unhealthy`, `statuses`, ...).
    #[arg(long, env = "OUTRIGGER_REGISTER_CHECK", default_value = "tcp")]
    pub register_check: String,

    /// Consul only: who runs the check: `agent` (the Consul agent probes the app) or `ttl`
    /// (Outrigger probes it and keeps a TTL check passing while it passes; for an agent that
    /// cannot reach the app).
    #[arg(long, env = "OUTRIGGER_REGISTER_CONSUL_CHECK", default_value = "agent")]
    pub register_consul_check: String,

    /// Tags, comma-separated (Consul tags; metadata `tags` in Eureka and Nacos).
    #[arg(long, env = "OUTRIGGER_REGISTER_TAGS", default_value = "")]
    pub register_tags: String,

    /// Metadata, `key=value` pairs, comma-separated.
    #[arg(long, env = "OUTRIGGER_REGISTER_METADATA", default_value = "")]
    pub register_metadata: String,

    /// The app's share of traffic, a positive number.
    #[arg(long, env = "OUTRIGGER_REGISTER_WEIGHT", default_value = "1")]
    pub register_weight: String,

    /// The app's zone, registered as metadata `zone` (default: `OUTRIGGER_ZONE`, the sidecar's).
    #[arg(long, env = "OUTRIGGER_REGISTER_ZONE")]
    pub register_zone: Option<String>,

    /// The instance id; default `<service>-<ip>-<port>`.
    #[arg(long, env = "OUTRIGGER_REGISTER_ID")]
    pub register_id: Option<String>,

    /// How long the registry keeps the instance once it is no longer renewed (a crash,
    /// kill -9): Consul DeregisterCriticalServiceAfter, Eureka lease duration.
    #[arg(long, env = "OUTRIGGER_REGISTER_EXPIRE", default_value = "90s")]
    pub register_expire: String,

    /// How often the registration is renewed (Eureka heartbeat, Consul TTL check update).
    #[arg(long, env = "OUTRIGGER_REGISTER_RENEW", default_value = "30s")]
    pub register_renew: String,

    /// On SIGTERM/SIGINT, how long Outrigger keeps serving (new connections too) after
    /// deregistering the app and turning /ready to 503, before it drains: Kubernetes signals
    /// the app and its sidecars at once, and the app may still be calling out. A second
    /// signal or POST /quitquitquit skips it. 0s: drain at once.
    #[arg(long, env = "OUTRIGGER_SHUTDOWN_DELAY", default_value = "5s")]
    pub shutdown_delay: String,

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

/// Helper commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Waits until the local Outrigger is ready (every service has its first node set): exits
    /// 0 then, 1 with the reason when the timeout passes, 2 on a bad argument. For an app's
    /// entrypoint (`outrigger wait-ready && exec app`) or a postStart hook. Asks /ready on
    /// OUTRIGGER_ADMIN_LISTEN (a wildcard address is asked on loopback).
    WaitReady {
        /// How long to wait at most, such as 30s or 2m.
        #[arg(long, default_value = "60s")]
        timeout: String,
    },
}
