//! When an app connection should close: on the drain signal (SIGTERM) and once idle for the
//! idle timeout. Either way hyper's graceful shutdown lets the request in flight finish
//! (HTTP/2: GOAWAY, open streams finish).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::TokioExecutor;
use slab::Slab;
use tokio::sync::Notify;
use tokio::time::Sleep;

use super::idle::Activity;
use crate::health::state::now_ns;

/// Tells open connections to finish their current request and close.
#[derive(Default)]
pub(crate) struct DrainSignal {
    pub(crate) draining: AtomicBool,
    /// The tasks of connections to wake when draining starts, registered once per connection.
    waiting: Mutex<Slab<Waker>>,
    /// Wakes connections still waiting for their first bytes.
    pub(crate) started: Notify,
}

impl DrainSignal {
    pub(crate) fn start(&self) {
        self.draining.store(true, Ordering::Release);
        self.started.notify_waiters();
        let waiting = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, waker) in waiting {
            waker.wake();
        }
    }
}

/// A hyper connection that can be asked to finish its current request and close.
pub(crate) trait GracefulConnection: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> GracefulConnection for http1::UpgradeableConnection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S, B> GracefulConnection for http2::Connection<I, S, TokioExecutor>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self)
    }
}

/// The idle timeout of one connection: a timer that, when it fires, closes the connection if
/// it has had no request in flight for `after`, and otherwise waits for the rest.
pub(crate) struct IdleWatch {
    timer: Pin<Box<Sleep>>,
    activity: Arc<Activity>,
    after: Duration,
}

impl IdleWatch {
    pub(crate) fn new(activity: Arc<Activity>, after: Duration) -> Self {
        IdleWatch {
            timer: Box::pin(tokio::time::sleep(after)),
            activity,
            after,
        }
    }

    /// Whether the connection has been idle for the timeout; when it has not, the timer is
    /// set for the earliest time it could be.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        while self.timer.as_mut().poll(cx).is_ready() {
            let wait = match self.activity.idle_for(now_ns()) {
                Some(idle) if idle >= self.after => return true,
                Some(idle) => self.after - idle,
                None => self.after,
            };
            let at = tokio::time::Instant::now() + wait;
            self.timer.as_mut().reset(at);
        }
        false
    }
}

pin_project_lite::pin_project! {
    /// A connection that starts its graceful shutdown when the drain signal is given or when it
    /// has been idle for the idle timeout.
    pub(crate) struct Closing<C> {
        #[pin]
        conn: C,
        signal: Arc<DrainSignal>,
        registered: Option<usize>,
        idle: Option<IdleWatch>,
        shutting_down: bool,
    }

    impl<C> PinnedDrop for Closing<C> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(key) = this.registered.take() {
                let mut waiting = this.signal.waiting.lock().unwrap_or_else(|e| e.into_inner());
                waiting.try_remove(key);
            }
        }
    }
}

impl<C> Closing<C> {
    pub(crate) fn new(conn: C, signal: Arc<DrainSignal>, idle: IdleWatch) -> Self {
        Closing {
            conn,
            signal,
            registered: None,
            idle: Some(idle),
            shutting_down: false,
        }
    }
}

impl<C: GracefulConnection> Future for Closing<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.shutting_down {
            if this.registered.is_none() {
                // A spawned task keeps its waker for life, so registering once is enough.
                let mut waiting = this
                    .signal
                    .waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                *this.registered = Some(waiting.insert(cx.waker().clone()));
            }
            if this.signal.draining.load(Ordering::Acquire) {
                *this.shutting_down = true;
                this.conn.as_mut().graceful_shutdown();
            }
        }
        let polled = this.conn.as_mut().poll(cx);
        if polled.is_pending() && !*this.shutting_down {
            let idle = this.idle.as_mut().is_some_and(|w| w.poll_idle(cx));
            if idle {
                *this.shutting_down = true;
                *this.idle = None;
                this.conn.as_mut().graceful_shutdown();
                return this.conn.poll(cx);
            }
        }
        polled
    }
}
