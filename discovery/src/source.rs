use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::{Candidate, DiscoveryError};

/// One answer from a registry about one service: its raw candidates, or why there are none.
#[derive(Debug, Clone)]
pub struct ServiceUpdate {
    /// The service name as routing knows it (from `OUTRIGGER_UPSTREAMS`).
    pub service: Arc<str>,
    /// The registry's full current list for that service, or the error that prevented reading it.
    pub result: Result<Vec<Candidate>, DiscoveryError>,
    /// Which of the process's sources sent it: its position in the list the sinks were made
    /// for ([`UpdateSink::for_source`]); 0 from a sink made with [`UpdateSink::new`].
    pub source: usize,
}

/// Where adapters send their updates; cloneable so an adapter may watch services in parallel.
#[derive(Debug, Clone)]
pub struct UpdateSink {
    tx: mpsc::Sender<ServiceUpdate>,
    source: usize,
}

impl UpdateSink {
    /// Wraps a channel; the receiving end feeds the guard. Updates carry source 0.
    pub fn new(tx: mpsc::Sender<ServiceUpdate>) -> Self {
        UpdateSink::for_source(tx, 0)
    }

    /// Wraps a channel shared by several sources; updates sent through this sink carry
    /// `source` (the source's position in the configured list), so that the receiver can tell
    /// one registry's answer about a service from another's.
    pub fn for_source(tx: mpsc::Sender<ServiceUpdate>, source: usize) -> Self {
        UpdateSink { tx, source }
    }

    /// Sends one update. Returns false when nobody listens any more, which tells the adapter
    /// to stop.
    pub async fn send(
        &self,
        service: &Arc<str>,
        result: Result<Vec<Candidate>, DiscoveryError>,
    ) -> bool {
        self.tx
            .send(ServiceUpdate {
                service: service.clone(),
                result,
                source: self.source,
            })
            .await
            .is_ok()
    }
}

/// A service registry seen as a source of node-set updates.
///
/// One small trait per concern: an adapter only watches its registry and reports what it sees.
/// Validation, rollback and publication belong to the guard and the proxy, so every adapter gets
/// them the same way.
pub trait Discovery: Send + Sync + 'static {
    /// The source as operators should see it in `/upstreams` and logs, never with credentials.
    fn describe(&self) -> String;

    /// Watches `services` until the sink closes, sending each service's full list whenever it
    /// may have changed and an error whenever the registry could not be read.
    fn run(
        self: Box<Self>,
        services: Vec<Arc<str>>,
        sink: UpdateSink,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}
