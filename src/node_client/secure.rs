//! Nodes the registry marks as speaking TLS (`EndpointMeta::secure`: a Eureka `securePort`, or
//! `secure=true` metadata) in a service whose own connections are plaintext: they are reached
//! over TLS with the service's TLS settings (`OUTRIGGER_UPSTREAM_TLS_CA`, `_CERT`, `_KEY`,
//! `_SERVER_NAME`), TLS on, without `OUTRIGGER_UPSTREAM_TLS=on`.

use std::sync::{Arc, OnceLock};

use outrigger_discovery::EndpointMeta;

use crate::node_client::connect::Connector;
use crate::node_client::tls::{NodeTls, TlsSettings};

/// The connector for a service's secure nodes, made when the first one is published or
/// picked (reading the CA file or the system's roots), then kept.
#[derive(Debug)]
pub struct SecureNodes {
    settings: TlsSettings,
    connector: OnceLock<Result<(Connector, Arc<NodeTls>), String>>,
}

impl SecureNodes {
    /// For a service whose TLS settings are `settings` (their `enabled` is ignored).
    pub fn new(settings: &TlsSettings) -> Self {
        SecureNodes {
            settings: TlsSettings {
                enabled: true,
                ..settings.clone()
            },
            connector: OnceLock::new(),
        }
    }

    /// The connector for secure nodes, made like `plain` (timeouts, limits, protocol) but with
    /// TLS; made on the first call.
    ///
    /// Errors: why the TLS settings cannot be used (no system roots and no CA file, a file
    /// gone since start), the same on every call; logged once, on the first.
    pub fn connector(&self, plain: &Connector, service: &str) -> Result<&Connector, &str> {
        self.connector
            .get_or_init(|| {
                let made = match NodeTls::new(&self.settings) {
                    Ok(Some(tls)) => {
                        let tls = Arc::new(tls);
                        Ok((plain.with_tls(tls.clone()), tls))
                    }
                    Ok(None) => Err("TLS is off".to_string()),
                    Err(e) => Err(format!(
                        "TLS to the nodes the registry marks secure cannot be set up: {e}"
                    )),
                };
                if let Err(e) = &made {
                    tracing::error!(%service, error = %e, "secure nodes will fail with tls-failed");
                }
                made
            })
            .as_ref()
            .map(|(connector, _)| connector)
            .map_err(String::as_str)
    }

    /// The TLS in use for secure nodes, once made (to re-read its files when they change).
    pub fn tls(&self) -> Option<Arc<NodeTls>> {
        self.connector
            .get()?
            .as_ref()
            .ok()
            .map(|(_, tls)| tls.clone())
    }
}

/// What the request path needs to know of a node to connect to it, when it is not the
/// service's usual: the node speaks TLS in a plaintext service, or its certificate is checked
/// against the registry's host name. `None` for the common node, so that picking one clones
/// nothing.
pub fn node_tls(meta: &Arc<EndpointMeta>, service_tls: bool) -> Option<Arc<EndpointMeta>> {
    (meta.secure || service_tls && meta.host_name.is_some()).then(|| meta.clone())
}
