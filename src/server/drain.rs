//! When an app connection should close: on the drain signal (SIGTERM) and once idle for the
//! idle timeout. Either way hyper's graceful shutdown lets the request in flight finish
//! (HTTP/2: GOAWAY, open streams finish).
//!
//! Idleness costs the request path one relaxed atomic add per poll of a connection: each
//! server's sweeper task looks at every connection's poll count once every half timeout, and
//! marks one whose count has not moved for two looks (between one and one and a half
//! timeouts of silence) for closing. A timer per connection, polled with it, cost about 1,500
//! instructions a request (bench/README.md, `instructions.sh`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::TokioExecutor;
use slab::Slab;
use tokio::sync::Notify;

/// What the sweeper knows of one connection.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Polls of the connection so far (wrapping).
    polls: AtomicU32,
    /// The count at the sweeper's last look.
    seen: AtomicU32,
    /// Looks in a row that found the count unchanged.
    quiet_looks: AtomicU8,
    /// Set by the sweeper: the connection has been idle for the timeout.
    idle: AtomicBool,
}

/// Tells open connections to finish their current request and close: all of them when
/// draining starts, idle ones when the sweeper finds them.
#[derive(Default)]
pub(crate) struct DrainSignal {
    pub(crate) draining: AtomicBool,
    /// The tasks of open connections and their activity, registered once per connection.
    waiting: Mutex<Slab<(Waker, Arc<Activity>)>>,
    /// Wakes connections still waiting for their first bytes.
    pub(crate) started: Notify,
}

impl DrainSignal {
    pub(crate) fn start(&self) {
        self.draining.store(true, Ordering::Release);
        self.started.notify_waiters();
        let waiting = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, (waker, _)) in waiting {
            waker.wake();
        }
    }

    /// One look at every connection: those whose poll count has not moved for two looks in a
    /// row are marked idle and woken.
    fn look(&self) {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        for (_, (waker, activity)) in waiting.iter() {
            let polls = activity.polls.load(Ordering::Relaxed);
            if activity.seen.swap(polls, Ordering::Relaxed) != polls {
                activity.quiet_looks.store(0, Ordering::Relaxed);
                continue;
            }
            let quiet = activity.quiet_looks.fetch_add(1, Ordering::Relaxed) + 1;
            if quiet >= 2 && !activity.idle.swap(true, Ordering::Relaxed) {
                waker.wake_by_ref();
            }
        }
    }
}

/// Looks at the connections of `signal` every half `timeout` until the server is dropped or
/// starts draining. Spawn one per server.
pub(crate) async fn sweep(signal: Weak<DrainSignal>, timeout: Duration) {
    let mut every = tokio::time::interval(timeout / 2);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(signal) = signal.upgrade() else {
            return;
        };
        if signal.draining.load(Ordering::Acquire) {
            return;
        }
        signal.look();
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

pin_project_lite::pin_project! {
    /// A connection that starts its graceful shutdown when the drain signal is given or when
    /// the sweeper finds it idle.
    pub(crate) struct Closing<C> {
        #[pin]
        conn: C,
        signal: Arc<DrainSignal>,
        activity: Arc<Activity>,
        registered: Option<usize>,
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
    pub(crate) fn new(conn: C, signal: Arc<DrainSignal>) -> Self {
        Closing {
            conn,
            signal,
            activity: Arc::default(),
            registered: None,
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
                *this.registered =
                    Some(waiting.insert((cx.waker().clone(), this.activity.clone())));
            }
            this.activity.polls.fetch_add(1, Ordering::Relaxed);
            if this.signal.draining.load(Ordering::Acquire)
                || this.activity.idle.load(Ordering::Relaxed)
            {
                *this.shutting_down = true;
                this.conn.as_mut().graceful_shutdown();
            }
        }
        this.conn.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_after_two_quiet_looks_and_not_before() {
        let signal = DrainSignal::default();
        let activity = Arc::new(Activity::default());
        activity.polls.store(5, Ordering::Relaxed);
        signal
            .waiting
            .lock()
            .unwrap()
            .insert((Waker::noop().clone(), activity.clone()));
        signal.look(); // count moved (0 -> 5)
        assert!(!activity.idle.load(Ordering::Relaxed));
        signal.look(); // first quiet look
        assert!(!activity.idle.load(Ordering::Relaxed));
        activity.polls.fetch_add(1, Ordering::Relaxed);
        signal.look(); // moved again: starts over
        signal.look();
        assert!(!activity.idle.load(Ordering::Relaxed));
        signal.look(); // second quiet look in a row
        assert!(activity.idle.load(Ordering::Relaxed));
    }
}
