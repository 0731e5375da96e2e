//! Nacos: an ephemeral instance registered through the official SDK (`nacos-sdk`), which keeps
//! it alive over its gRPC connection and registers it again after a reconnect. A change of
//! the app's status registers it again with `healthy` set to match.

use std::collections::HashMap;

use nacos_sdk::api::naming::{NamingService, NamingServiceBuilder, ServiceInstance};
use nacos_sdk::api::props::ClientProps;

use super::{AppInstance, AppStatus, RegisterError};

/// Registers the local app with Nacos.
pub struct NacosRegistrar {
    servers: Vec<String>,
    app: AppInstance,
    credentials: Option<(String, String)>,
    naming: Option<NamingService>,
    sent: Option<AppStatus>,
}

impl std::fmt::Debug for NacosRegistrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NacosRegistrar")
            .field("servers", &self.servers)
            .field("app", &self.app)
            .finish()
    }
}

impl NacosRegistrar {
    pub(super) fn new(
        servers: Vec<String>,
        app: AppInstance,
        credentials: Option<(String, String)>,
    ) -> Self {
        NacosRegistrar {
            servers,
            app,
            credentials,
            naming: None,
            sent: None,
        }
    }

    pub(super) fn servers(&self) -> &[String] {
        &self.servers
    }

    fn registry(&self) -> String {
        crate::http_body::describe("nacos", &self.servers)
    }

    async fn naming(&mut self) -> Result<&NamingService, RegisterError> {
        if self.naming.is_none() {
            let hosts: Vec<&str> = self
                .servers
                .iter()
                .map(|s| s.split_once("://").map_or(s.as_str(), |(_, h)| h))
                .collect();
            let http_port = hosts
                .first()
                .and_then(|h| h.rsplit_once(':'))
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .unwrap_or(8848);
            let cache =
                std::env::temp_dir().join(format!("outrigger-nacos-reg-{}", std::process::id()));
            let mut props = ClientProps::new()
                .server_addr(hosts.join(","))
                .app_name("outrigger")
                .env_first(false)
                .naming_load_cache_at_start(false)
                .cache_dir(cache)
                .remote_grpc_port(http_port.saturating_add(1000));
            if let Some((user, pass)) = &self.credentials {
                props = props
                    .auth_username(user.clone())
                    .auth_password(pass.clone());
            }
            let mut builder = NamingServiceBuilder::new(props);
            if self.credentials.is_some() {
                builder = builder.enable_auth_plugin_http();
            }
            let naming = builder
                .build()
                .await
                .map_err(|e| RegisterError::failed(&self.registry(), e.to_string()))?;
            self.naming = Some(naming);
        }
        self.naming
            .as_ref()
            .ok_or_else(|| RegisterError::failed("nacos", "no client"))
    }

    fn instance(&self, status: AppStatus) -> ServiceInstance {
        let app = &self.app;
        ServiceInstance {
            instance_id: Some(app.id.clone()),
            ip: app.addr.ip().to_string(),
            port: i32::from(app.addr.port()),
            weight: app.weight,
            healthy: status == AppStatus::Up,
            enabled: true,
            ephemeral: true,
            cluster_name: None,
            service_name: Some(app.service.clone()),
            metadata: app
                .metadata_with_tags()
                .into_iter()
                .collect::<HashMap<_, _>>(),
        }
    }

    pub(super) async fn register(&mut self, status: AppStatus) -> Result<(), RegisterError> {
        let instance = self.instance(status);
        let service = self.app.service.clone();
        let registry = self.registry();
        self.naming()
            .await?
            .register_instance(service, None, instance)
            .await
            .map_err(|e| RegisterError::failed(&registry, e.to_string()))?;
        self.sent = Some(status);
        Ok(())
    }

    pub(super) async fn keep(&mut self, status: AppStatus) -> Result<(), RegisterError> {
        if self.sent == Some(status) {
            return Ok(());
        }
        self.register(status).await
    }

    pub(super) async fn deregister(&mut self) -> Result<(), RegisterError> {
        let instance = self.instance(AppStatus::Down);
        let service = self.app.service.clone();
        let registry = self.registry();
        self.naming()
            .await?
            .deregister_instance(service, None, instance)
            .await
            .map_err(|e| RegisterError::failed(&registry, e.to_string()))
    }
}
