//! Eureka: `POST apps/<APP>` registers (again on every status change, as Eureka's own client
//! does), `PUT apps/<APP>/<id>` renews the lease (404: register again), `DELETE` removes. Any
//! of several servers will do; each call starts at the last that answered.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{client, AppInstance, AppStatus, RegisterError};

/// Registers the local app with Eureka servers.
#[derive(Debug)]
pub struct EurekaRegistrar {
    servers: Vec<String>,
    app: AppInstance,
    auth: Option<(String, String)>,
    client: reqwest::Client,
    current: usize,
    /// The status the registry was last told.
    sent: Option<AppStatus>,
    /// `lastDirtyTimestamp`: when the instance last changed (ms since the epoch).
    dirty_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn eureka_status(status: AppStatus) -> &'static str {
    match status {
        AppStatus::Starting => "STARTING",
        AppStatus::Up => "UP",
        AppStatus::Down => "DOWN",
    }
}

impl EurekaRegistrar {
    pub(super) fn new(
        servers: Vec<String>,
        app: AppInstance,
        auth: Option<(String, String)>,
    ) -> Self {
        EurekaRegistrar {
            servers,
            app,
            auth,
            client: client(),
            current: 0,
            sent: None,
            dirty_ms: now_ms(),
        }
    }

    pub(super) fn servers(&self) -> &[String] {
        &self.servers
    }

    fn app_name(&self) -> String {
        self.app.service.to_ascii_uppercase()
    }

    /// The `instance` document, as Spring's Eureka client sends it.
    fn body(&self, status: AppStatus) -> Value {
        let app = &self.app;
        let ip = app.addr.ip().to_string();
        let port = app.addr.port();
        let mut metadata = app.metadata_with_tags();
        metadata
            .entry("weight".into())
            .or_insert_with(|| app.weight.to_string());
        let base = format!("http://{}", app.addr);
        json!({"instance": {
            "instanceId": app.id,
            "hostName": ip,
            "app": self.app_name(),
            "ipAddr": ip,
            "status": eureka_status(status),
            "overriddenStatus": "UNKNOWN",
            "port": {"$": port, "@enabled": "true"},
            "securePort": {"$": 443, "@enabled": "false"},
            "countryId": 1,
            "dataCenterInfo": {
                "@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
                "name": "MyOwn"
            },
            "leaseInfo": {
                "renewalIntervalInSecs": app.renew.as_secs().max(1),
                "durationInSecs": app.expire.as_secs().max(1)
            },
            "metadata": metadata,
            "homePageUrl": format!("{base}/"),
            "statusPageUrl": format!("{base}/info"),
            "healthCheckUrl": format!("{base}/health"),
            "vipAddress": app.service,
            "secureVipAddress": app.service,
            "isCoordinatingDiscoveryServer": "false",
            "lastUpdatedTimestamp": self.dirty_ms.to_string(),
            "lastDirtyTimestamp": self.dirty_ms.to_string(),
        }})
    }

    /// Sends one request to the servers in turn until one answers: its status and body.
    async fn call(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String, String), RegisterError> {
        let mut last = None;
        for i in 0..self.servers.len() {
            let at = (self.current + i) % self.servers.len();
            let server = &self.servers[at];
            let mut req = self
                .client
                .request(method.clone(), format!("{server}/{path}"))
                .header("Accept", "application/json");
            if let Some((user, pass)) = &self.auth {
                req = req.basic_auth(user, Some(pass));
            }
            if let Some(body) = body {
                req = req
                    .header("Content-Type", "application/json")
                    .body(body.to_string());
            }
            match req.send().await {
                Ok(resp) if resp.status().is_server_error() => {
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
        Err(last.unwrap_or_else(|| RegisterError::failed("eureka", "no server")))
    }

    pub(super) async fn register(&mut self, status: AppStatus) -> Result<(), RegisterError> {
        if self.sent != Some(status) {
            self.dirty_ms = now_ms();
        }
        let body = self.body(status);
        let path = format!("apps/{}", self.app_name());
        let (code, text, server) = self.call(reqwest::Method::POST, &path, Some(&body)).await?;
        match code {
            200..=299 => {
                self.sent = Some(status);
                Ok(())
            }
            _ => Err(RegisterError::failed(
                &server,
                format!("register answered {code}: {}", text.trim()),
            )),
        }
    }

    pub(super) async fn keep(&mut self, status: AppStatus) -> Result<(), RegisterError> {
        if self.sent != Some(status) {
            return self.register(status).await;
        }
        let path = format!(
            "apps/{}/{}?status={}&lastDirtyTimestamp={}",
            self.app_name(),
            self.app.id,
            eureka_status(status),
            self.dirty_ms
        );
        let (code, text, server) = self.call(reqwest::Method::PUT, &path, None).await?;
        match code {
            200..=299 => Ok(()),
            404 => {
                self.sent = None;
                Err(RegisterError::Lost {
                    registry: server,
                    detail: "heartbeat answered 404".into(),
                })
            }
            _ => Err(RegisterError::failed(
                &server,
                format!("heartbeat answered {code}: {}", text.trim()),
            )),
        }
    }

    pub(super) async fn deregister(&mut self) -> Result<(), RegisterError> {
        // DOWN first: a server that misses the delete (or a replica it has not reached) stops
        // sending traffic anyway.
        let _ = self.register(AppStatus::Down).await;
        let path = format!("apps/{}/{}", self.app_name(), self.app.id);
        let (code, text, server) = self.call(reqwest::Method::DELETE, &path, None).await?;
        match code {
            200..=299 | 404 => Ok(()),
            _ => Err(RegisterError::failed(
                &server,
                format!("cancel answered {code}: {}", text.trim()),
            )),
        }
    }
}
