//! Registering the local app (`OUTRIGGER_REGISTER`): Outrigger checks the app, registers it
//! once it can, tells the registry when the check changes its mind, renews the registration,
//! registers again when the registry lost it, and deregisters as soon as a stop is requested,
//! so peers stop sending before the app stops.
//!
//! A registry that is down at start (or later) is retried with backoff and jitter; nothing of
//! this runs on the request path.

use std::time::Duration;

use outrigger_discovery::registration::{AppStatus, RegisterError, Registrar};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::RegisterSpec;
use crate::health::probe::probe_direct;
use crate::lifecycle::Stop;

/// Retries of a failed registry call wait from this long...
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// ...doubling up to this long (with ±20% jitter).
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Deregistering on stop may take this long at most.
const DEREGISTER_WITHIN: Duration = Duration::from_secs(5);

/// Starts registering `spec`'s app; the task deregisters as soon as a stop or a withdrawal
/// (`POST /deregister`) is requested, and ends with the stop.
pub fn spawn(spec: RegisterSpec, stop: Stop) -> JoinHandle<()> {
    tokio::spawn(async move {
        let registrar = match spec.registrar() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot register the app");
                return;
            }
        };
        let mut run = Run::new(spec, registrar);
        run.until_stopped(&stop).await;
        run.deregister().await;
        // Withdrawn without a stop (`POST /deregister`): nothing more until the stop.
        stop.requested().await;
    })
}

/// The doubling wait between retries.
struct Backoff(Duration);

impl Backoff {
    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        wait.mul_f64(0.8 + 0.4 * rand::random::<f64>())
    }

    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

/// One registration's state.
struct Run {
    spec: RegisterSpec,
    registrar: Registrar,
    registry: String,
    status: AppStatus,
    /// The check's last result, for the registry (Consul's check output) and logs.
    note: String,
    /// Whether the registry has the instance as far as Outrigger knows.
    registered: bool,
    /// Whether a registration was ever attempted (then the stop deregisters).
    attempted: bool,
    /// The registry has not been told the current status yet.
    changed: bool,
    /// When the registry is next due a call (register, renew, or a retry).
    due: Instant,
    next_check: Instant,
    passes: u32,
    failures: u32,
    backoff: Backoff,
    /// The last registry error logged, so one that repeats is logged once.
    last_error: Option<String>,
}

impl Run {
    fn new(spec: RegisterSpec, registrar: Registrar) -> Self {
        let now = Instant::now();
        Run {
            registry: registrar.describe(),
            spec,
            registrar,
            status: AppStatus::Starting,
            note: "not checked yet".into(),
            registered: false,
            attempted: false,
            changed: false,
            due: now,
            next_check: now,
            passes: 0,
            failures: 0,
            backoff: Backoff(BACKOFF_MIN),
            last_error: None,
        }
    }

    async fn until_stopped(&mut self, stop: &Stop) {
        loop {
            // A status the registry has not been told is told at once; otherwise wait for the
            // next registry call or check.
            let wake = if self.tell_now() {
                Instant::now()
            } else {
                self.due.min(self.next_check)
            };
            tokio::select! {
                _ = stop.leaving() => return,
                _ = tokio::time::sleep_until(wake) => {}
            }
            // The registry first: the instance is registered as starting before the app's
            // first check (Eureka STARTING, Consul critical).
            if Instant::now() >= self.due || self.tell_now() {
                tokio::select! {
                    _ = stop.leaving() => return,
                    _ = self.call_registry() => {}
                }
            }
            if Instant::now() >= self.next_check {
                self.check().await;
                self.next_check = Instant::now() + self.spec.check.interval;
            }
        }
    }

    /// Whether a new status should reach the registry before its next call is due: not
    /// while calls fail (they wait for their backoff).
    fn tell_now(&self) -> bool {
        self.changed && self.registered && self.last_error.is_none()
    }

    /// Checks the app once and moves its status by the check's thresholds.
    async fn check(&mut self) {
        let check = &self.spec.check;
        let result = probe_direct(self.spec.app.addr, check, &self.spec.app.service).await;
        let next = match &result {
            Ok(()) => {
                self.passes += 1;
                self.failures = 0;
                self.note = "the app's check passes".into();
                let enough =
                    self.status == AppStatus::Starting || self.passes >= check.healthy_threshold;
                if enough {
                    AppStatus::Up
                } else {
                    self.status
                }
            }
            Err(why) => {
                self.failures += 1;
                self.passes = 0;
                self.note = format!("the app's check fails: {why}");
                if self.status == AppStatus::Up && self.failures >= check.unhealthy_threshold {
                    AppStatus::Down
                } else {
                    self.status
                }
            }
        };
        if next != self.status {
            tracing::info!(service = %self.spec.app.service, id = %self.spec.app.id,
                from = self.status.as_str(), to = next.as_str(), reason = %self.note,
                "registered app status changed");
            self.status = next;
            self.changed = true;
        }
    }

    /// Registers, or tells the status and renews; schedules the next call.
    async fn call_registry(&mut self) {
        let result = if self.registered {
            self.registrar
                .keep(self.status, &self.note)
                .await
                .map(|()| None)
        } else {
            self.attempted = true;
            self.registrar.register(self.status).await.map(Some)
        };
        match result {
            Ok(listed) => {
                match listed {
                    Some(true) => tracing::info!(registry = %self.registry,
                        service = %self.spec.app.service, id = %self.spec.app.id,
                        address = %self.spec.app.addr, status = self.status.as_str(),
                        "app registered"),
                    Some(false) => tracing::info!(registry = %self.registry,
                        service = %self.spec.app.service,
                        "registry reached; the app is listed once its check passes"),
                    None if self.last_error.is_some() => tracing::info!(
                        registry = %self.registry, service = %self.spec.app.service,
                        "registry reachable again"),
                    None => {}
                }
                self.registered = true;
                self.changed = false;
                self.last_error = None;
                self.backoff.reset();
                self.due = Instant::now() + self.spec.app.renew;
            }
            Err(RegisterError::Lost { registry, detail }) => {
                tracing::warn!(%registry, %detail, service = %self.spec.app.service,
                    "the registry lost the app's registration; registering again");
                self.registered = false;
                self.due = Instant::now();
            }
            Err(e) => {
                let message = e.to_string();
                if self.last_error.as_ref() != Some(&message) {
                    tracing::warn!(error = %message, service = %self.spec.app.service,
                        "registry call failed; retrying with backoff");
                    self.last_error = Some(message);
                }
                self.due = Instant::now() + self.backoff.next();
            }
        }
    }

    /// Removes the registration, within [`DEREGISTER_WITHIN`].
    async fn deregister(&mut self) {
        if !self.attempted {
            return;
        }
        match tokio::time::timeout(DEREGISTER_WITHIN, self.registrar.deregister()).await {
            Ok(Ok(true)) => tracing::info!(registry = %self.registry,
                service = %self.spec.app.service, id = %self.spec.app.id, "app deregistered"),
            Ok(Ok(false)) => tracing::info!(registry = %self.registry,
                service = %self.spec.app.service, "the app was not listed; nothing to deregister"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "deregistering the app failed; the registry removes it when its registration expires")
            }
            Err(_) => {
                tracing::warn!(within = ?DEREGISTER_WITHIN, "deregistering the app timed out; the registry removes it when its registration expires")
            }
        }
    }
}
