//! How the sidecar is asked to stop, and the order it stops in.
//!
//! Kubernetes signals every container of a pod at once, so the app is still finishing its
//! work (and calling out through Outrigger) when the sidecar gets SIGTERM. The first request to
//! stop therefore does not close anything at once: it deregisters the app, turns `/ready` to
//! 503, and keeps serving for `OUTRIGGER_SHUTDOWN_DELAY`, then stops accepting and drains. A
//! second signal, or `POST /quitquitquit` from an app that has finished (a Job), skips the
//! delay.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Requests to stop, shared by the signal handler, the admin API and the run loop.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    requested: CancellationToken,
    hurry: CancellationToken,
    withdraw: CancellationToken,
}

impl Stop {
    /// A handle nobody has asked to stop yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the ordered stop (SIGTERM).
    pub fn request(&self) {
        self.requested.cancel();
    }

    /// Starts the ordered stop without the delay (a second signal, `/quitquitquit`).
    pub fn hurry(&self) {
        self.requested.cancel();
        self.hurry.cancel();
    }

    /// Asks for the app to be deregistered now, without stopping (`POST /deregister`, for an
    /// app's preStop hook when the sidecar is stopped after the app).
    pub fn withdraw(&self) {
        self.withdraw.cancel();
    }

    /// Waits for a stop or a withdrawal: the moment to deregister the app.
    pub async fn leaving(&self) {
        tokio::select! {
            _ = self.requested.cancelled() => {}
            _ = self.withdraw.cancelled() => {}
        }
    }

    /// Whether a stop was requested.
    pub fn is_requested(&self) -> bool {
        self.requested.is_cancelled()
    }

    /// Waits for a stop to be requested.
    pub async fn requested(&self) {
        self.requested.cancelled().await;
    }

    /// Waits out `delay` unless hurried; returns whether it was cut short.
    pub async fn delay(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = self.hurry.cancelled() => true,
        }
    }
}
