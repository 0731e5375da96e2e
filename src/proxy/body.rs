//! A node's answer body on its way to the app: counted as in flight until it ends, given back
//! to its connection pool once read to the end, and ended when the node stops sending.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Body as _;

use super::{ServiceSlot, UpstreamBody};
use crate::balance::load::InFlight;
use crate::node_client::pool::Lease;

/// An upstream response body that keeps its request counted as in flight until it ends, and
/// then returns its connection for the next request.
pub struct Tracked {
    pub(super) body: UpstreamBody,
    pub(super) in_flight: Option<InFlight>,
    pub(super) slot: Option<ServiceSlot>,
    /// The connection the body arrives on; `None` once released, or for a protocol switch,
    /// whose connection becomes the tunnel.
    pub(super) lease: Option<Lease>,
    pub(super) ended: bool,
    /// Ends the body when the node sends nothing for `OUTRIGGER_STREAM_IDLE_TIMEOUT`; made the
    /// first time the body has to wait, so a body that arrived with its head costs nothing.
    pub(super) idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A frame arrived since the timer was last set.
    pub(super) progressed: bool,
    /// The request's access log record, logged when the body is done (access log on only).
    pub(super) log: Option<Box<crate::access_log::Record>>,
}

/// `OUTRIGGER_STREAM_IDLE_TIMEOUT`, set once when the proxy is made: kept out of every
/// response body, which the request path moves several times.
pub(super) static STREAM_IDLE_TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

fn stream_idle_timeout() -> Duration {
    STREAM_IDLE_TIMEOUT
        .get()
        .copied()
        .unwrap_or(Duration::from_secs(60))
}

/// A response body that stopped arriving (`OUTRIGGER_STREAM_IDLE_TIMEOUT`).
#[derive(Debug, thiserror::Error)]
#[error("the node sent nothing of the response body for {0:?} (OUTRIGGER_STREAM_IDLE_TIMEOUT)")]
pub struct StreamIdle(Duration);

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(record) = self.log.take() {
            crate::access_log::emit(*record);
        }
        // Only a body read to the end leaves the connection ready for another request; hyper
        // closes one whose body was abandoned.
        if self.ended || self.body.is_end_stream() {
            if let Some(lease) = self.lease.take() {
                lease.release();
            }
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(frame)) => {
                this.progressed = true;
                if let (Some(record), Ok(frame)) = (&mut this.log, frame) {
                    if let Some(data) = frame.data_ref() {
                        record.bytes_out += data.len() as u64;
                    }
                }
            }
            Poll::Pending => {
                let timeout = stream_idle_timeout();
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if std::mem::take(&mut this.progressed) {
                    idle.as_mut().reset(tokio::time::Instant::now() + timeout);
                }
                if idle.as_mut().poll(cx).is_ready() {
                    metrics::counter!("outrigger_stream_idle_timeouts_total").increment(1);
                    this.in_flight = None;
                    return Poll::Ready(Some(Err(Box::new(StreamIdle(timeout)))));
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}
