//! Which app connections are idle: requests in flight on a connection and when its last one
//! ended, read by the idle timeout (`Closing` in `drain.rs`).

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::health::state::now_ns;

/// Requests in flight on one connection, and when its last one ended.
#[derive(Debug)]
pub(crate) struct Activity {
    in_flight: AtomicU32,
    /// When the last response ended (or the connection opened), on the `now_ns` clock.
    last_end_ns: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity {
            in_flight: AtomicU32::new(0),
            last_end_ns: AtomicU64::new(now_ns()),
        })
    }

    /// Counts a request until the returned guard, carried by its response body, is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> ActiveRequest {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(self.clone())
    }

    /// How long the connection has been without a request at `now` (ns, `now_ns` clock), or
    /// `None` while one is in flight.
    pub(crate) fn idle_for(&self, now: u64) -> Option<Duration> {
        (self.in_flight.load(Ordering::Relaxed) == 0).then(|| {
            Duration::from_nanos(now.saturating_sub(self.last_end_ns.load(Ordering::Relaxed)))
        })
    }
}

/// One request in flight on a connection; its end is recorded when dropped.
#[derive(Debug)]
pub(crate) struct ActiveRequest(Arc<Activity>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.last_end_ns.store(now_ns(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight on its connection until
    /// the body is dropped (sent in full, or abandoned).
    pub struct Counted<B> {
        #[pin]
        body: B,
        active: ActiveRequest,
    }
}

impl<B> Counted<B> {
    pub(crate) fn new(body: B, active: ActiveRequest) -> Self {
        Counted { body, active }
    }
}

impl<B: hyper::body::Body> hyper::body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_only_without_requests_and_from_the_last_end() {
        let activity = Activity::new();
        let first = activity.begin();
        let second = activity.begin();
        assert_eq!(activity.idle_for(now_ns() + 10_000_000_000), None);
        drop(first);
        assert_eq!(activity.idle_for(now_ns() + 10_000_000_000), None);
        drop(second);
        let ended = activity.last_end_ns.load(Ordering::Relaxed);
        assert_eq!(
            activity.idle_for(ended + 5_000_000_000),
            Some(Duration::from_secs(5))
        );
    }
}
