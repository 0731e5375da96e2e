//! hyper's header-read timeout, timed by the server's sweeper instead of a tokio timer.
//!
//! hyper asks its `Timer` for a sleep each time it starts reading a request head, polls it
//! while the head is incomplete, and drops it once the head is read. With `TokioTimer` that is
//! a boxed tokio `Sleep` entered into and taken out of the timer wheel on every kept-alive
//! request, about 540 instructions (bench/README.md, `instructions.sh`). Here the sleep only
//! numbers the head on the connection's `Activity`; the sweeper, which looks at every
//! connection once a period anyway, marks a head still unread after the timeout's worth of
//! looks, wakes the connection, and the sleep then resolves, so hyper closes the connection
//! as it would on its own timer. The deadline hyper passes is not used: the timeout is counted
//! in looks (between one timeout and one period more).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

use super::drain::Activity;

/// The header-read timer of one HTTP/1.1 connection.
pub(crate) struct HeadTimer {
    activity: Arc<Activity>,
    /// Returned as "now": hyper only adds the timeout to it for a deadline this timer ignores,
    /// which saves a clock read per request.
    opened: Instant,
}

impl HeadTimer {
    pub(crate) fn new(activity: Arc<Activity>) -> Self {
        HeadTimer {
            activity,
            opened: Instant::now(),
        }
    }

    fn begin_head(&self) -> HeadRead {
        let head = self.activity.heads.fetch_add(1, Ordering::Relaxed) + 1;
        self.activity.reading_head.store(true, Ordering::Relaxed);
        HeadRead {
            activity: self.activity.clone(),
            head,
        }
    }
}

impl Timer for HeadTimer {
    fn sleep(&self, _: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(self.begin_head())
    }

    fn sleep_until(&self, _: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(self.begin_head())
    }

    fn now(&self) -> Instant {
        self.opened
    }
}

/// One request head being read: resolves once the sweeper finds it too slow.
struct HeadRead {
    activity: Arc<Activity>,
    head: u64,
}

impl Future for HeadRead {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        // The sweeper wakes the connection's task (registered by `Closing`), which polls this.
        if self.activity.head_expired.load(Ordering::Relaxed) == self.head {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Sleep for HeadRead {}

impl Drop for HeadRead {
    fn drop(&mut self) {
        // Only this head's own end clears the flag: a newer head may have begun already.
        if self.activity.heads.load(Ordering::Relaxed) == self.head {
            self.activity.reading_head.store(false, Ordering::Relaxed);
        }
    }
}
