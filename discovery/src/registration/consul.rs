//! Consul: the local agent's API (`PUT /v1/agent/service/register` with a check,
//! `/v1/agent/check/update/<id>`, `/v1/agent/service/deregister/<id>`), never the catalog, so
//! the agent owns the registration (anti-entropy, its own health checks).
//!
//! rs-consul (in the dependency tree for tests) covers only the catalog's register call, not
//! the agent's service, check and deregister calls, so these are plain requests.

use std::time::Duration;

use serde_json::{json, Value};

use super::{with_json, Answer, AppInstance, AppStatus, RegisterError, Servers};

/// Who runs the app's health check in Consul.
#[derive(Debug, Clone, PartialEq)]
pub enum ConsulCheck {
    /// The agent probes the app itself (`OUTRIGGER_REGISTER_CONSUL_CHECK=agent`): an HTTP
    /// check of `http://<address><path>` or a TCP check of the address, every `interval`
    /// within `timeout`.
    Agent {
        /// For an HTTP check, the path (with query); `None` for TCP.
        http_path: Option<String>,
        /// Time between checks.
        interval: Duration,
        /// Time one check may take.
        timeout: Duration,
    },
    /// Outrigger checks the app and keeps a TTL check passing only while the app passes
    /// (`ttl`): for an agent that cannot reach the app.
    Ttl,
}

/// Registers the local app with a Consul agent.
#[derive(Debug)]
pub struct ConsulRegistrar {
    servers: Servers,
    app: AppInstance,
    check: ConsulCheck,
    token: Option<String>,
}

/// A Go duration in whole seconds (at least 1), as Consul reads it.
fn go_secs(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

/// A Go duration in milliseconds, for intervals shorter than a second.
fn go_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

impl ConsulRegistrar {
    pub(super) fn new(
        servers: Vec<String>,
        app: AppInstance,
        check: ConsulCheck,
        token: Option<String>,
    ) -> Self {
        ConsulRegistrar {
            servers: Servers::new(servers),
            app,
            check,
            token: token.filter(|t| !t.is_empty()),
        }
    }

    pub(super) fn servers(&self) -> &[String] {
        &self.servers.list
    }

    fn check_id(&self) -> String {
        format!("service:{}", self.app.id)
    }

    /// The registration body (`agent/service/register`).
    fn body(&self, status: AppStatus) -> Value {
        let app = &self.app;
        let mut check = json!({
            "CheckID": self.check_id(),
            "Name": format!("{} app check (Outrigger)", app.service),
            "DeregisterCriticalServiceAfter": go_secs(app.expire),
        });
        match &self.check {
            ConsulCheck::Ttl => {
                check["TTL"] = json!(go_ms(app.renew * 3));
                check["Status"] = json!(match status {
                    AppStatus::Up => "passing",
                    _ => "critical",
                });
            }
            ConsulCheck::Agent {
                http_path,
                interval,
                timeout,
            } => {
                match http_path {
                    Some(path) => check["HTTP"] = json!(format!("http://{}{path}", app.addr)),
                    None => check["TCP"] = json!(app.addr.to_string()),
                }
                check["Interval"] = json!(go_ms(*interval));
                check["Timeout"] = json!(go_ms(*timeout));
                check["Status"] = json!("critical");
            }
        }
        json!({
            "ID": app.id,
            "Name": app.service,
            "Address": app.addr.ip().to_string(),
            "Port": app.addr.port(),
            "Tags": app.tags,
            "Meta": app.metadata,
            "Weights": {"Passing": (app.weight.round() as i64).max(1), "Warning": 1},
            "Check": check,
        })
    }

    /// Sends one request to the agents in turn from the last that answered, until one
    /// answers (an agent's 5xx is its answer); its status and body.
    async fn call(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, RegisterError> {
        let token = &self.token;
        self.servers
            .call("consul", false, |client, server| {
                let mut req = client.request(method.clone(), format!("{server}{path}"));
                if let Some(token) = token {
                    req = req.header("X-Consul-Token", token);
                }
                with_json(req, body)
            })
            .await
    }

    pub(super) async fn register(&mut self, status: AppStatus) -> Result<(), RegisterError> {
        let body = self.body(status);
        let (code, text, server) = self
            .call(
                reqwest::Method::PUT,
                "/v1/agent/service/register?replace-existing-checks=true",
                Some(&body),
            )
            .await?;
        match code {
            200..=299 => Ok(()),
            _ => Err(RegisterError::failed(
                &server,
                format!("register answered {code}: {}", text.trim()),
            )),
        }
    }

    pub(super) async fn keep(
        &mut self,
        status: AppStatus,
        note: &str,
    ) -> Result<(), RegisterError> {
        let (code, text, server) = match self.check {
            ConsulCheck::Ttl => {
                let body = json!({
                    "Status": if status == AppStatus::Up { "passing" } else { "critical" },
                    "Output": note,
                });
                let path = format!("/v1/agent/check/update/{}", self.check_id());
                self.call(reqwest::Method::PUT, &path, Some(&body)).await?
            }
            ConsulCheck::Agent { .. } => {
                let path = format!("/v1/agent/service/{}", self.app.id);
                self.call(reqwest::Method::GET, &path, None).await?
            }
        };
        // An agent that restarted lost its local services: 404 ("Unknown check ID", "unknown
        // service ID"), or 500 from older agents with the same words.
        let unknown = text.to_ascii_lowercase().contains("unknown");
        match code {
            200..=299 => Ok(()),
            404 => Err(RegisterError::Lost {
                registry: server,
                detail: text.trim().to_string(),
            }),
            500 if unknown => Err(RegisterError::Lost {
                registry: server,
                detail: text.trim().to_string(),
            }),
            _ => Err(RegisterError::failed(
                &server,
                format!("check update answered {code}: {}", text.trim()),
            )),
        }
    }

    pub(super) async fn deregister(&mut self) -> Result<(), RegisterError> {
        let path = format!("/v1/agent/service/deregister/{}", self.app.id);
        let (code, text, server) = self.call(reqwest::Method::PUT, &path, None).await?;
        match code {
            200..=299 | 404 => Ok(()),
            _ => Err(RegisterError::failed(
                &server,
                format!("deregister answered {code}: {}", text.trim()),
            )),
        }
    }
}
