//! Eureka: `POST apps/<APP>` registers (again on every status change, as Eureka's own client
//! does), `PUT apps/<APP>/<id>` renews the lease (404: register again), `DELETE` removes. Any
//! of several servers will do; each call starts at the last that answered.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{with_json, Answer, AppInstance, AppStatus, RegisterError, Servers};

/// Registers the local app with Eureka servers.
#[derive(Debug)]
pub struct EurekaRegistrar {
    servers: Servers,
    app: AppInstance,
    auth: Option<(String, String)>,
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
            servers: Servers::new(servers),
            app,
            auth,
            sent: None,
            dirty_ms: now_ms(),
        }
    }

    pub(super) fn servers(&self) -> &[String] {
        &self.servers.list
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

    /// Sends one request to the servers in turn until one answers (a 5xx moves on: another
    /// peer may take it); its status and body.
    async fn call(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, RegisterError> {
        let auth = &self.auth;
        self.servers
            .call("eureka", true, |client, server| {
                let mut req = client
                    .request(method.clone(), format!("{server}/{path}"))
                    .header("Accept", "application/json");
                if let Some((user, pass)) = auth {
                    req = req.basic_auth(user, Some(pass));
                }
                with_json(req, body)
            })
            .await
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
