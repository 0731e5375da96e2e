//! Registering the local app in a registry, so other sidecars discover it: the instance, its
//! status as the sidecar's check of the app finds it, and one registrar per registry kind
//! (Consul's agent API, Eureka's REST API, Nacos through its SDK).
//!
//! A registrar only speaks to its registry; when to call it (retries, the app's check, the
//! stop order) is the caller's.

mod consul;
mod eureka;
pub mod nacos;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

pub use consul::{ConsulCheck, ConsulRegistrar};
pub use eureka::EurekaRegistrar;
pub use nacos::NacosRegistrar;

use crate::http_body::{self, BadServer, UserInfo};
use crate::{error_chain, redact_secrets};

/// The local app as it is registered.
#[derive(Debug, Clone, PartialEq)]
pub struct AppInstance {
    /// The service name (`OUTRIGGER_REGISTER_SERVICE`).
    pub service: String,
    /// The instance id (`OUTRIGGER_REGISTER_ID`; default `<service>-<ip>-<port>`).
    pub id: String,
    /// Where other sidecars reach the app (`OUTRIGGER_REGISTER_ADDRESS`).
    pub addr: SocketAddr,
    /// Registry tags (`OUTRIGGER_REGISTER_TAGS`): Consul `Tags`; Eureka and Nacos have none and
    /// get them as metadata `tags` (comma-separated).
    pub tags: Vec<String>,
    /// Metadata (`OUTRIGGER_REGISTER_METADATA`), with `zone` added when set: Consul `Meta`,
    /// Eureka `metadata`, Nacos `metadata`.
    pub metadata: BTreeMap<String, String>,
    /// The share of traffic (`OUTRIGGER_REGISTER_WEIGHT`, a positive number): Consul
    /// `Weights.Passing` (rounded, at least 1), Eureka metadata `weight`, Nacos `weight`.
    pub weight: f64,
    /// How long the registry keeps the instance once nobody renews it (a crash, `kill -9`):
    /// Consul `DeregisterCriticalServiceAfter`, Eureka `leaseInfo.durationInSecs`; Nacos uses
    /// its server's own timeout.
    pub expire: Duration,
    /// How often the registration is renewed: Eureka's heartbeat (30 s, Eureka's own), and
    /// the Consul TTL check's update (its TTL is three of these).
    pub renew: Duration,
}

impl AppInstance {
    /// The metadata every registry gets: `metadata`, and `tags` for registries without
    /// tags.
    fn metadata_with_tags(&self) -> BTreeMap<String, String> {
        let mut meta = self.metadata.clone();
        if !self.tags.is_empty() {
            meta.entry("tags".into())
                .or_insert_with(|| self.tags.join(","));
        }
        meta
    }
}

/// The app's status as the sidecar's check finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppStatus {
    /// Not checked yet (Eureka `STARTING`; Consul `critical`; Nacos: not registered yet).
    Starting,
    /// The check passes (Eureka `UP`; Consul `passing`; Nacos: registered).
    Up,
    /// The check fails (Eureka `DOWN`; Consul `critical`; Nacos: withdrawn).
    Down,
}

impl AppStatus {
    /// The status as logs and metrics show it: `starting`, `up` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            AppStatus::Starting => "starting",
            AppStatus::Up => "up",
            AppStatus::Down => "down",
        }
    }
}

/// Why a registry call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegisterError {
    /// The registry no longer knows the instance (an agent restarted, a lease expired): it
    /// must be registered again.
    #[error("{registry} no longer has the instance ({detail})")]
    Lost {
        /// The registry server.
        registry: String,
        /// What it answered.
        detail: String,
    },
    /// The call failed: unreachable, refused, an unexpected status.
    #[error("{registry}: {detail}")]
    Failed {
        /// The registry server.
        registry: String,
        /// What went wrong, without credentials.
        detail: String,
    },
}

impl RegisterError {
    fn failed(registry: &str, detail: impl Into<String>) -> Self {
        RegisterError::Failed {
            registry: redact_secrets(registry),
            detail: detail.into(),
        }
    }

    fn transport(registry: &str, e: reqwest::Error) -> Self {
        RegisterError::failed(registry, redact_secrets(&error_chain(&e.without_url())))
    }
}

/// Credentials for the registry, from the environment (never logged).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Consul ACL token (`OUTRIGGER_CONSUL_TOKEN`), sent as `X-Consul-Token`.
    pub consul_token: Option<String>,
    /// Eureka basic auth (`OUTRIGGER_EUREKA_USER`/`_PASSWORD`, or the URL's userinfo).
    pub eureka: Option<(String, String)>,
    /// Nacos login (`OUTRIGGER_NACOS_USERNAME`/`_PASSWORD`).
    pub nacos: Option<(String, String)>,
}

/// A registrar of one registry kind.
#[derive(Debug)]
pub enum Registrar {
    /// Consul's agent API.
    Consul(ConsulRegistrar),
    /// Eureka's REST API.
    Eureka(EurekaRegistrar),
    /// Nacos, an ephemeral instance through its SDK.
    Nacos(NacosRegistrar),
}

/// Why a registry URL cannot be used for registration.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistrarConfigError {
    /// Not a URL of a registry Outrigger registers in.
    #[error("a consul://, eureka:// or nacos:// URL (with +https for TLS)")]
    Scheme,
    /// A server without `host:port`.
    #[error("server {0:?} is not host:port")]
    Server(String),
    /// A path after a Consul or Nacos server, which takes none.
    #[error("server {0:?}: this registry's URL takes host:port, without a path")]
    Path(String),
    /// A bad `grpc_port` option (Nacos).
    #[error("grpc_port={0:?} is not a port")]
    GrpcPort(String),
}

/// The base URLs of a `scheme[+https]://[user:pass@]host:port[/path][,host:port[/path]][?...]`
/// registry URL (options ignored), and the userinfo if one was given.
fn servers(
    rest: &str,
    tls: bool,
    keep_path: bool,
) -> Result<(Vec<String>, Option<UserInfo>), RegistrarConfigError> {
    let scheme = if tls { "https" } else { "http" };
    let hosts = rest.split_once('?').map_or(rest, |(h, _)| h);
    let (out, userinfo) =
        http_body::server_list(hosts, scheme, keep_path).map_err(|e| match e {
            BadServer::NotHostPort(h) => RegistrarConfigError::Server(h),
            BadServer::Path(h) => RegistrarConfigError::Path(h),
        })?;
    if out.is_empty() {
        return Err(RegistrarConfigError::Server(String::new()));
    }
    Ok((out, userinfo))
}

impl Registrar {
    /// The registrar for `url` (`consul://`, `eureka://`, `nacos://`, each also `+https`),
    /// registering `app`. Query options are ignored but Nacos's `namespace`, `group` and
    /// `grpc_port`, so that `OUTRIGGER_REGISTER=discovery` registers where the discovery
    /// looks.
    ///
    /// Errors: [`RegistrarConfigError`] naming what in the URL is wrong.
    pub fn from_url(
        url: &str,
        app: AppInstance,
        consul_check: ConsulCheck,
        credentials: Credentials,
    ) -> Result<Self, RegistrarConfigError> {
        let url = url.trim();
        let (kind, rest) = url.split_once("://").ok_or(RegistrarConfigError::Scheme)?;
        let kind = kind.to_ascii_lowercase();
        let (kind, tls) = match kind.strip_suffix("+https") {
            Some(k) => (k, true),
            None => (kind.as_str(), false),
        };
        match kind {
            "consul" => {
                let (servers, _) = servers(rest, tls, false)?;
                Ok(Registrar::Consul(ConsulRegistrar::new(
                    servers,
                    app,
                    consul_check,
                    credentials.consul_token,
                )))
            }
            "eureka" => {
                let (servers, userinfo) = servers(rest, tls, true)?;
                let auth = credentials.eureka.or(userinfo);
                Ok(Registrar::Eureka(EurekaRegistrar::new(servers, app, auth)))
            }
            "nacos" => {
                let (servers, userinfo) = servers(rest, tls, false)?;
                let options = rest.split_once('?').map_or("", |(_, o)| o);
                let option = |key: &str| {
                    options
                        .split('&')
                        .filter_map(|p| p.split_once('='))
                        .find(|(k, v)| *k == key && !v.is_empty())
                        .map(|(_, v)| v.to_string())
                };
                let grpc_port = match option("grpc_port") {
                    Some(p) => Some(
                        p.parse::<u16>()
                            .map_err(|_| RegistrarConfigError::GrpcPort(p.clone()))?,
                    ),
                    None => None,
                };
                Ok(Registrar::Nacos(NacosRegistrar::new(
                    servers,
                    app,
                    credentials.nacos.or(userinfo),
                    nacos::Place {
                        namespace: option("namespace"),
                        group: option("group"),
                        grpc_port,
                    },
                )))
            }
            _ => Err(RegistrarConfigError::Scheme),
        }
    }

    /// Checks a registry URL on its own, so that its error is reported with the other
    /// settings' errors.
    ///
    /// Errors: [`RegistrarConfigError`] naming what in the URL is wrong.
    pub fn check_url(url: &str) -> Result<(), RegistrarConfigError> {
        let app = AppInstance {
            service: "check".into(),
            id: "check".into(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            tags: Vec::new(),
            metadata: BTreeMap::new(),
            weight: 1.0,
            expire: Duration::from_secs(90),
            renew: Duration::from_secs(30),
        };
        Registrar::from_url(url, app, ConsulCheck::Ttl, Credentials::default()).map(drop)
    }

    /// Registers the instance with `status` (again after [`RegisterError::Lost`]). Returns
    /// whether the registry now lists it: Nacos lists an instance only while the app is up.
    ///
    /// Errors: [`RegisterError::Failed`] when no server took it.
    pub async fn register(&mut self, status: AppStatus) -> Result<bool, RegisterError> {
        match self {
            Registrar::Consul(r) => r.register(status).await.map(|()| true),
            Registrar::Eureka(r) => r.register(status).await.map(|()| true),
            Registrar::Nacos(r) => r.register(status).await,
        }
    }

    /// Tells the registry the app's `status` (`note`: the check's last result) and renews
    /// the registration; called at least every [`AppInstance::renew`].
    ///
    /// Errors: [`RegisterError::Lost`] when the registry no longer has the instance,
    /// [`RegisterError::Failed`] otherwise.
    pub async fn keep(&mut self, status: AppStatus, note: &str) -> Result<(), RegisterError> {
        match self {
            Registrar::Consul(r) => r.keep(status, note).await,
            Registrar::Eureka(r) => r.keep(status).await,
            Registrar::Nacos(r) => r.keep(status).await,
        }
    }

    /// Removes the instance (Eureka: DOWN first, then removed). Returns whether there was
    /// one to remove.
    ///
    /// Errors: [`RegisterError::Failed`] when no server took it.
    pub async fn deregister(&mut self) -> Result<bool, RegisterError> {
        match self {
            Registrar::Consul(r) => r.deregister().await.map(|()| true),
            Registrar::Eureka(r) => r.deregister().await.map(|()| true),
            Registrar::Nacos(r) => r.deregister().await,
        }
    }

    /// The registry as logs show it: kind and servers, never credentials.
    pub fn describe(&self) -> String {
        match self {
            Registrar::Consul(r) => crate::http_body::describe("consul", r.servers()),
            Registrar::Eureka(r) => crate::http_body::describe("eureka", r.servers()),
            Registrar::Nacos(r) => crate::http_body::describe("nacos", r.servers()),
        }
    }
}

/// A client for registry calls: short timeouts, so a hung registry never holds the stop.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

/// What a registry answered: its status, its body, and the server that answered.
type Answer = (u16, String, String);

/// A registry's servers, tried in turn from the one that answered last.
#[derive(Debug)]
struct Servers {
    list: Vec<String>,
    /// The server that took the last call, tried first next time.
    current: usize,
    client: reqwest::Client,
}

impl Servers {
    fn new(list: Vec<String>) -> Self {
        Servers {
            list,
            current: 0,
            client: client(),
        }
    }

    /// Sends the request `build` makes for each server (its base URL) in turn until one
    /// answers; a 5xx moves on to the next server when `next_on_5xx`. `kind` names the
    /// registry in the error when there is no server.
    ///
    /// Errors: [`RegisterError::Failed`] with the last server's failure.
    async fn call(
        &mut self,
        kind: &str,
        next_on_5xx: bool,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<Answer, RegisterError> {
        let mut last = None;
        for i in 0..self.list.len() {
            let at = (self.current + i) % self.list.len();
            let server = &self.list[at];
            match build(&self.client, server).send().await {
                Ok(resp) if next_on_5xx && resp.status().is_server_error() => {
                    let code = resp.status().as_u16();
                    last = Some(RegisterError::failed(server, format!("answered {code}")));
                }
                Ok(resp) => {
                    self.current = at;
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    return Ok((status, text, server.clone()));
                }
                Err(e) => last = Some(RegisterError::transport(server, e)),
            }
        }
        Err(last.unwrap_or_else(|| RegisterError::failed(kind, "no server")))
    }
}

/// `req` with `body` as its JSON body, if there is one.
fn with_json(
    req: reqwest::RequestBuilder,
    body: Option<&serde_json::Value>,
) -> reqwest::RequestBuilder {
    match body {
        Some(body) => req
            .header("Content-Type", "application/json")
            .body(body.to_string()),
        None => req,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_urls_give_servers_and_userinfo() {
        let (s, auth) = servers(
            "u:p@10.0.0.1:8761/eureka/,10.0.0.2:8761/eureka?x=1",
            false,
            true,
        )
        .expect("valid");
        assert_eq!(
            s,
            ["http://10.0.0.1:8761/eureka", "http://10.0.0.2:8761/eureka"]
        );
        assert_eq!(auth, Some(("u".into(), "p".into())));
        let (s, _) = servers("127.0.0.1:8500?dc=a", true, false).expect("valid");
        assert_eq!(s, ["https://127.0.0.1:8500"]);
        assert!(matches!(
            servers("nohost", false, false),
            Err(RegistrarConfigError::Server(_))
        ));
    }
}
