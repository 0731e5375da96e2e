//! Nacos: an ephemeral instance registered through the official SDK (`nacos-sdk`), which keeps
//! it alive over its gRPC connection and registers it again after a reconnect.
//!
//! Nacos 2.x decides an ephemeral instance's health by its client's connection and ignores the
//! `healthy` (and `enabled`) a client sends when it registers again (r-nacos does the same;
//! tried in `integration/tests/register.rs`). So the instance is registered only while the
//! app's check passes: it is withdrawn when the check fails and registered again when it
//! passes.

use std::collections::HashMap;

use nacos_sdk::api::naming::{NamingService, ServiceInstance};

use super::{AppInstance, AppStatus, RegisterError};

/// Where in Nacos the instance goes (the URL's options).
#[derive(Debug, Clone, Default)]
pub struct Place {
    /// `namespace` (the public namespace when unset).
    pub namespace: Option<String>,
    /// `group` (`DEFAULT_GROUP` when unset).
    pub group: Option<String>,
    /// `grpc_port` (the HTTP port + 1000 when unset, Nacos's convention).
    pub grpc_port: Option<u16>,
}

/// Registers the local app with Nacos.
pub struct NacosRegistrar {
    servers: Vec<String>,
    app: AppInstance,
    credentials: Option<(String, String)>,
    place: Place,
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
        place: Place,
    ) -> Self {
        NacosRegistrar {
            servers,
            app,
            credentials,
            place,
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
            let at = crate::nacos::Where {
                servers: &self.servers,
                namespace: self.place.namespace.as_deref(),
                grpc_port: self.place.grpc_port,
                credentials: self.credentials.as_ref(),
            };
            let naming = crate::nacos::naming_service(&at, Self::cache_dir())
                .await
                .map_err(|e| RegisterError::failed(&self.registry(), e))?;
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

    /// Registers the instance if the app is up; otherwise notes the status (nothing is
    /// registered until the app's check passes).
    pub(super) async fn register(&mut self, status: AppStatus) -> Result<bool, RegisterError> {
        if status != AppStatus::Up {
            self.sent = Some(status);
            return Ok(false);
        }
        let instance = self.instance(status);
        let service = self.app.service.clone();
        let registry = self.registry();
        let group = self.place.group.clone();
        self.naming()
            .await?
            .register_instance(service, group, instance)
            .await
            .map_err(|e| RegisterError::failed(&registry, e.to_string()))?;
        self.sent = Some(status);
        Ok(true)
    }

    /// Registers the instance when the app comes up, withdraws it when it goes down.
    pub(super) async fn keep(&mut self, status: AppStatus) -> Result<(), RegisterError> {
        match (self.sent, status) {
            (Some(sent), now) if sent == now => Ok(()),
            (Some(AppStatus::Up), _) => {
                self.deregister().await?;
                self.sent = Some(status);
                Ok(())
            }
            _ => self.register(status).await.map(drop),
        }
    }

    pub(super) async fn deregister(&mut self) -> Result<bool, RegisterError> {
        if self.sent != Some(AppStatus::Up) {
            // Nothing is registered while the app is not up.
            return Ok(false);
        }
        let instance = self.instance(AppStatus::Down);
        let service = self.app.service.clone();
        let registry = self.registry();
        let group = self.place.group.clone();
        self.naming()
            .await?
            .deregister_instance(service, group, instance)
            .await
            .map_err(|e| RegisterError::failed(&registry, e.to_string()))?;
        self.sent = Some(AppStatus::Down);
        Ok(true)
    }

    fn cache_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("outrigger-nacos-reg-{}", std::process::id()))
    }
}

impl Drop for NacosRegistrar {
    fn drop(&mut self) {
        // The SDK's cache of this process: nothing in it outlives the registration.
        let _ = std::fs::remove_dir_all(Self::cache_dir());
    }
}
