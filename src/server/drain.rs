//! When an app connection should close: on the drain signal (SIGTERM) and once idle for the
//! idle timeout. Either way hyper's graceful shutdown lets the request in flight finish
//! (HTTP/2: GOAWAY, open streams finish).
//!
//! Idleness costs the request path one relaxed atomic add per poll of a connection: each
//! server's sweeper task looks at every connection's poll count once a period (half the
//! shorter of the idle and header-read timeouts), and marks one whose count has not moved for
//! an idle timeout's worth of looks (so after one timeout and at most one period more of
//! silence) for closing. The sweeper also ends request heads that take too long (see
//! `head_timer`). A timer per connection, polled with it, cost about 1,500 instructions a
//! request (bench/README.md, `instructions.sh`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
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
    quiet_looks: AtomicU32,
    /// Set by the sweeper: the connection has been idle for the timeout.
    idle: AtomicBool,
    /// Request heads begun so far (hyper asks for one header-read timer per head); the
    /// first is 1.
    pub(super) heads: AtomicU64,
    /// A head is being read: its timer is alive.
    pub(super) reading_head: AtomicBool,
    /// `heads` at the sweeper's last look.
    heads_seen: AtomicU64,
    /// Looks in a row that found the same head still being read.
    head_looks: AtomicU32,
    /// Set by the sweeper: the number of the head that took longer than the header-read
    /// timeout (0: none).
    pub(super) head_expired: AtomicU64,
}

impl Activity {
    /// One look by the sweeper; true if the connection's task should be woken.
    fn look(&self, looks: Looks) -> bool {
        let polls = self.polls.load(Ordering::Relaxed);
        let mut wake = false;
        if self.seen.swap(polls, Ordering::Relaxed) != polls {
            self.quiet_looks.store(0, Ordering::Relaxed);
        } else {
            let quiet = self.quiet_looks.fetch_add(1, Ordering::Relaxed) + 1;
            wake |= quiet >= looks.idle && !self.idle.swap(true, Ordering::Relaxed);
        }
        if !self.reading_head.load(Ordering::Relaxed) {
            self.head_looks.store(0, Ordering::Relaxed);
            return wake;
        }
        let head = self.heads.load(Ordering::Relaxed);
        if self.heads_seen.swap(head, Ordering::Relaxed) != head {
            self.head_looks.store(0, Ordering::Relaxed);
            return wake;
        }
        let slow = self.head_looks.fetch_add(1, Ordering::Relaxed) + 1;
        if slow >= looks.head && self.head_expired.swap(head, Ordering::Relaxed) != head {
            wake = true;
        }
        wake
    }
}

/// How often the sweeper looks, and how many looks make each timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Looks {
    pub(crate) period: Duration,
    /// Quiet looks in a row before a connection is idle.
    idle: u32,
    /// Looks in a row at the same unfinished head before it is too slow.
    head: u32,
}

impl Looks {
    /// A period of half the shorter timeout (1 ms at least), and each timeout in whole
    /// periods, rounded up: a timeout fires after itself and at most one period more.
    pub(crate) fn new(idle_timeout: Duration, header_read_timeout: Duration) -> Self {
        let period = (idle_timeout.min(header_read_timeout) / 2).max(Duration::from_millis(1));
        let periods = |t: Duration| {
            u32::try_from(t.as_nanos().div_ceil(period.as_nanos())).unwrap_or(u32::MAX)
        };
        Looks {
            period,
            idle: periods(idle_timeout),
            head: periods(header_read_timeout),
        }
    }
}

/// Tells open connections to finish their current request and close: all of them when
/// draining starts, idle ones when the sweeper finds them.
pub(crate) struct DrainSignal {
    pub(crate) draining: AtomicBool,
    looks: Looks,
    /// The tasks of open connections and their activity, registered once per connection.
    waiting: Mutex<Slab<(Waker, Arc<Activity>)>>,
    /// Wakes connections still waiting for their first bytes.
    pub(crate) started: Notify,
}

impl DrainSignal {
    pub(crate) fn new(looks: Looks) -> Self {
        DrainSignal {
            draining: AtomicBool::new(false),
            looks,
            waiting: Mutex::default(),
            started: Notify::new(),
        }
    }

    pub(crate) fn start(&self) {
        self.draining.store(true, Ordering::Release);
        self.started.notify_waiters();
        let waiting = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, (waker, _)) in waiting {
            waker.wake();
        }
    }

    /// One look at every connection: those idle or reading one head for too long are marked
    /// and woken.
    fn look(&self) {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        for (_, (waker, activity)) in waiting.iter() {
            if activity.look(self.looks) {
                waker.wake_by_ref();
            }
        }
    }
}

/// Looks at the connections of `signal` once a period until the server is dropped or starts
/// draining. Spawn one per server.
pub(crate) async fn sweep(signal: Weak<DrainSignal>, period: Duration) {
    let mut every = tokio::time::interval(period);
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
    /// `activity` is the connection's own, shared with its header-read timer.
    pub(crate) fn new(conn: C, signal: Arc<DrainSignal>, activity: Arc<Activity>) -> Self {
        Closing {
            conn,
            signal,
            activity,
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

    fn signal(activity: &Arc<Activity>) -> DrainSignal {
        // Looks every 50 ms: idle after 2 quiet looks, a head too slow after 3.
        let looks = Looks::new(Duration::from_millis(100), Duration::from_millis(150));
        assert_eq!((looks.idle, looks.head), (2, 3));
        let signal = DrainSignal::new(looks);
        signal
            .waiting
            .lock()
            .unwrap()
            .insert((Waker::noop().clone(), activity.clone()));
        signal
    }

    #[test]
    fn a_connection_is_idle_after_two_quiet_looks_and_not_before() {
        let activity = Arc::new(Activity::default());
        let signal = signal(&activity);
        activity.polls.store(5, Ordering::Relaxed);
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

    #[test]
    fn a_head_expires_after_its_looks_however_busy_the_connection() {
        let activity = Arc::new(Activity::default());
        let signal = signal(&activity);
        activity.heads.store(1, Ordering::Relaxed);
        activity.reading_head.store(true, Ordering::Relaxed);
        for _ in 0..3 {
            // A byte arrives between every look: never idle, but the head does not end.
            activity.polls.fetch_add(1, Ordering::Relaxed);
            signal.look();
            assert_eq!(activity.head_expired.load(Ordering::Relaxed), 0);
        }
        signal.look();
        assert_eq!(activity.head_expired.load(Ordering::Relaxed), 1);
        assert!(!activity.idle.load(Ordering::Relaxed));
    }

    #[test]
    fn heads_that_end_or_follow_each_other_do_not_expire() {
        let activity = Arc::new(Activity::default());
        let signal = signal(&activity);
        for head in 1..=10 {
            // A new head at every look, or none being read.
            activity.heads.store(head, Ordering::Relaxed);
            activity
                .reading_head
                .store(head % 3 != 0, Ordering::Relaxed);
            signal.look();
            signal.look();
        }
        assert_eq!(activity.head_expired.load(Ordering::Relaxed), 0);
    }
}
