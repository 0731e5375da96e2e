//! The per-service connector: hyper-util's `HttpConnector` with a limit on connections being
//! opened at once, so a service whose nodes stop accepting cannot pile up connection attempts.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Too many connections of one service are already being opened.
#[derive(Debug, thiserror::Error)]
#[error("{max} connections are already being opened (OUTRIGGER_MAX_PENDING_CONNECTS)")]
pub struct PendingConnectsExceeded {
    /// The limit.
    pub max: u32,
}

/// An `HttpConnector` counting the connections it is opening.
#[derive(Clone, Debug)]
pub struct LimitedConnector {
    inner: HttpConnector,
    pending: Arc<AtomicU32>,
    max: u32,
}

impl LimitedConnector {
    /// A connector with `connect_timeout`, allowing `max` connections in progress at once.
    pub fn new(connect_timeout: Duration, max: u32) -> Self {
        let mut inner = HttpConnector::new();
        inner.set_connect_timeout(Some(connect_timeout));
        inner.set_nodelay(true);
        inner.set_keepalive(Some(Duration::from_secs(60)));
        LimitedConnector {
            inner,
            pending: Arc::new(AtomicU32::new(0)),
            max,
        }
    }
}

/// Ends one pending connection when dropped, whether it completed or was abandoned.
struct Pending(Arc<AtomicU32>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for LimitedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            let max = self.max;
            return Box::pin(
                async move { Err(Box::new(PendingConnectsExceeded { max }) as BoxError) },
            );
        }
        let guard = Pending(self.pending.clone());
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let result = connecting.await.map_err(Into::into);
            drop(guard);
            result
        })
    }
}
