//! The discovery task: registry updates in, last-known-good decisions made, node sets published.
//!
//! One task owns every service's guard, so guards need no lock; the request path only ever
//! sees the finished pools this task publishes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use outrigger_discovery::state_store::{LatestWriter, StateStore};
use outrigger_discovery::{
    Decision, Discovery, Dropped, GuardPolicy, LastKnownGood, NodeSet, ServiceUpdate, UpdateSink,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::upstream::{HeldUpdate, Report, Routes, Upstream};

/// Registry updates received so far, by every discovery task in the process.
static UPDATES_RECEIVED: AtomicU64 = AtomicU64::new(0);

/// How many registry updates this process has received: the binary returns freed memory to
/// the OS only once updates pause, since during churn each update reuses what the last freed.
pub fn updates_received() -> u64 {
    UPDATES_RECEIVED.load(Ordering::Relaxed)
}

/// How often held updates are checked against their confirmation window.
const TICK: Duration = Duration::from_millis(250);

struct Watched {
    upstream: Arc<Upstream>,
    guard: LastKnownGood,
    /// Entries dropped by the previous update, so each bad entry is logged and counted once
    /// rather than on every poll that repeats it.
    dropped_before: HashSet<(String, &'static str)>,
    last_logged_error: Option<String>,
    /// `outrigger_discovery_seconds_since_good_update` for this service, registered once: the
    /// tick sets it four times a second for every service, and looking it up by name each time
    /// (a label string built and hashed) was most of an idle process's CPU with 1,000 services.
    since_good: metrics::Gauge,
    /// Saves this service's applied sets, one at a time and newest last.
    saver: Option<LatestWriter>,
}

/// Persistence settings for last-known-good sets.
#[derive(Debug, Clone)]
pub struct Persistence {
    /// Where sets are written.
    pub store: StateStore,
    /// The oldest stored set used at start.
    pub max_age: Duration,
}

/// Starts the discovery source and the task that guards and publishes its updates.
pub fn spawn(
    routes: Arc<Routes>,
    source: Box<dyn Discovery>,
    policy: GuardPolicy,
    persistence: Option<Persistence>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let mut watched: HashMap<Arc<str>, Watched> = HashMap::new();
    for upstream in routes.all() {
        let mut guard = LastKnownGood::new(policy);
        if let Some(p) = &persistence {
            restore(&mut guard, upstream, p);
        }
        let w = Watched {
            upstream: upstream.clone(),
            guard,
            dropped_before: HashSet::new(),
            last_logged_error: None,
            since_good: metrics::gauge!("outrigger_discovery_seconds_since_good_update",
                "service" => upstream.name.to_string()),
            saver: persistence
                .as_ref()
                .map(|p| LatestWriter::new(p.store.clone(), upstream.name.clone())),
        };
        report(&w);
        watched.insert(upstream.name.clone(), w);
    }
    let (tx, mut rx) = mpsc::channel::<ServiceUpdate>(1024);
    let services: Vec<Arc<str>> = routes.all().iter().map(|u| u.name.clone()).collect();
    let source_task = tokio::spawn(source.run(services, UpdateSink::new(tx)));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                update = rx.recv() => {
                    // The source ending is not an error for one-shot sources (static lists):
                    // the guards keep what they have.
                    let Some(update) = update else {
                        cancel.cancelled().await;
                        break;
                    };
                    if let Some(w) = watched.get_mut(&update.service) {
                        handle(w, update);
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    for w in watched.values_mut() {
                        replace_failing(w, now);
                        if let Some(set) = w.guard.tick(now) {
                            tracing::warn!(service = %w.upstream.name, endpoints = set.len(),
                                "held update confirmed by the registry after the window; applied");
                            metrics::counter!("outrigger_discovery_updates_total",
                                "service" => w.upstream.name.to_string(), "result" => "confirmed").increment(1);
                            publish(w, set);
                        }
                        if let Some(good) = w.guard.last_good() {
                            w.since_good.set(now.duration_since(good).as_secs_f64());
                        }
                    }
                }
            }
        }
        source_task.abort();
    })
}

fn restore(guard: &mut LastKnownGood, upstream: &Upstream, p: &Persistence) {
    match p.store.load(&upstream.name, p.max_age) {
        Ok(Some(set)) => {
            tracing::info!(service = %upstream.name, endpoints = set.len(),
                dir = %p.store.dir().display(), "restored last-known-good node set from disk");
            upstream.publish(set.clone());
            guard.restore(set);
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(service = %upstream.name, error = %e,
                "ignoring stored node set that cannot be used");
            metrics::counter!("outrigger_state_restore_errors_total",
                "service" => upstream.name.to_string())
            .increment(1);
        }
    }
}

fn handle(w: &mut Watched, update: ServiceUpdate) {
    UPDATES_RECEIVED.fetch_add(1, Ordering::Relaxed);
    let name = w.upstream.name.clone();
    let error = update.result.as_ref().err().map(ToString::to_string);
    let was_held = w.guard.pending().is_some();
    let (decision, dropped) = w.guard.offer(update.result, Instant::now());
    metrics::counter!("outrigger_discovery_updates_total",
        "service" => name.to_string(), "result" => decision.as_str())
    .increment(1);
    note_dropped(w, &dropped);
    match &decision {
        Decision::Rejected => {
            if error != w.last_logged_error {
                tracing::warn!(service = %name, error = error.as_deref().unwrap_or(""),
                    "registry answer rejected; keeping the last-known-good node set");
            }
            w.last_logged_error = error;
        }
        Decision::Held => {
            if let (false, Some(p)) = (was_held, w.guard.pending()) {
                tracing::warn!(service = %name, reason = %p.reason,
                    confirm = ?w.guard.policy().confirm,
                    "registry update held; applied only if the registry stands by it");
            }
            replace_failing(w, Instant::now());
        }
        Decision::Applied(set) | Decision::Confirmed(set) => {
            tracing::info!(service = %name, endpoints = set.len(), result = decision.as_str(),
                "node set updated");
            w.last_logged_error = None;
            publish(w, set.clone());
        }
        Decision::Unchanged => w.last_logged_error = None,
    }
    report(w);
}

/// Applies a held update at once when every node it removes is failing (refused connections,
/// ejected, failing probes): a like-for-like replacement, such as a DNS name moved to a new
/// address, is held only while the nodes it takes away still serve.
fn replace_failing(w: &mut Watched, now: Instant) {
    let Some(removed) = w.guard.held_removals() else {
        return;
    };
    if !w.upstream.all_failing(&removed) {
        return;
    }
    let why = format!(
        "every node it removes is failing ({} of {})",
        removed.len(),
        w.guard.current().map_or(0, NodeSet::len)
    );
    let Some(set) = w.guard.apply_replacement(now, why.clone()) else {
        return;
    };
    tracing::warn!(service = %w.upstream.name, endpoints = set.len(), reason = %why,
        "held update applied before its window: it replaces failing nodes");
    metrics::counter!("outrigger_discovery_updates_total",
        "service" => w.upstream.name.to_string(), "result" => "replaced")
    .increment(1);
    publish(w, set);
}

fn note_dropped(w: &mut Watched, dropped: &[Dropped]) {
    let now: HashSet<(String, &'static str)> = dropped
        .iter()
        .map(|d| (d.entry.clone(), d.reason.as_str()))
        .collect();
    for (entry, reason) in now.difference(&w.dropped_before) {
        tracing::warn!(service = %w.upstream.name, source = %w.upstream.source, entry = %entry,
            reason = %reason, "registry entry dropped");
        metrics::counter!("outrigger_discovery_dropped_entries_total",
            "service" => w.upstream.name.to_string(), "reason" => *reason)
        .increment(1);
    }
    w.dropped_before = now;
}

fn publish(w: &mut Watched, set: NodeSet) {
    w.upstream.publish(set.clone());
    report(w);
    // The write fsyncs; the writer keeps it off the async workers.
    if let Some(saver) = &w.saver {
        saver.submit(set);
    }
}

fn report(w: &Watched) {
    let g = &w.guard;
    let now_i = Instant::now();
    let now_s = SystemTime::now();
    let wall = |at: Instant| now_s - now_i.saturating_duration_since(at);
    w.upstream.report.store(Arc::new(Report {
        state: g.state(),
        pending: g.pending().map(|p| HeldUpdate {
            nodes: p.nodes.clone(),
            reason: p.reason.clone(),
            since: wall(p.since),
            applies_at: wall(p.since) + g.policy().confirm,
        }),
        last_error: g.last_error().map(|(e, at)| (e.to_string(), *at)),
        last_good: g.last_good(),
        last_replacement: g.last_replacement().cloned(),
    }));
}
