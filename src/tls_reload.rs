//! Rotated certificates: every service with TLS toward its nodes (all of them, or the ones the
//! registry marks secure) has its files read again every [`RELOAD_EVERY`]; changed and usable
//! files make new sessions use them, so cert-manager or Vault rotating them on disk needs no
//! restart and drops no request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::upstream::Routes;

/// How often the files are read again (a few small files per service with TLS).
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Reads every TLS service's files again each `every` until `stop`.
pub async fn watch(routes: Arc<Routes>, every: Duration, stop: CancellationToken) {
    let named = |t: &crate::node_client::tls::TlsSettings| {
        t.ca.is_some() || t.cert.is_some() || t.key.is_some()
    };
    if !routes.all().iter().any(|u| named(&u.settings.tls_config)) {
        return;
    }
    // The last error per service, so a file that stays broken is reported once.
    let mut failing: HashMap<Arc<str>, String> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Secure nodes' TLS is made when the first one appears: looked up on every round.
        let in_use = routes.all().iter().flat_map(|u| {
            [u.settings.tls.clone(), u.secure_nodes.tls()]
                .into_iter()
                .flatten()
                .map(|tls| (&u.name, tls))
        });
        for (service, tls) in in_use {
            match tls.reload() {
                Ok(changed) => {
                    if failing.remove(service).is_some() || changed {
                        tracing::info!(%service, files = ?tls.files(),
                            "TLS files read again; new sessions to the nodes use them");
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    if failing.get(service) != Some(&message) {
                        tracing::warn!(%service, error = %message,
                            "changed TLS files cannot be used; sessions keep the ones loaded before");
                        failing.insert(service.clone(), message);
                    }
                }
            }
        }
    }
}
