//! The discovery task: registry updates in, last-known-good decisions made, node sets published.
//!
//! One task owns every service's guard, so guards need no lock; the request path only ever
//! sees the finished pools this task publishes. Operators' actions (`operator`) come to this
//! task too, so that a service's state has one writer: `decide` judges registry answers and
//! records each decision in the service's history, `operate` pins, unpins, confirms and
//! refuses.

mod decide;
mod merge;
mod operate;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use outrigger_discovery::state_store::{LatestWriter, PinRecord, StateStore};
use outrigger_discovery::{
    Candidate, Discovery, DiscoveryError, GuardPolicy, LastKnownGood, NodeSet, ServiceUpdate,
    UpdateSink,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::history::{Diff, Outcome};
use crate::operator;
use crate::upstream::{BehindPin, HeldUpdate, PinInfo, Report, Routes, Upstream};

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
    /// Where pins are kept across restarts.
    pins: Option<StateStore>,
    /// The operator's pin, while pinned.
    pin: Option<PinRecord>,
    /// While pinned: the registry's newest answer, applied through the guard on unpin.
    latest: Option<Result<Vec<Candidate>, DiscoveryError>>,
    /// While pinned: the registry's state when the pin was made (its held or refused answer,
    /// else the set in use), judged again on unpin when no answer came meanwhile.
    before_pin: Option<NodeSet>,
    /// `outrigger_update_held{service}`: 1 while an update is held.
    held_gauge: metrics::Gauge,
    /// `outrigger_service_pinned{service}`: 1 while pinned.
    pinned_gauge: metrics::Gauge,
    /// With several sources, each one's state (`merge`); empty with one.
    feeds: Vec<merge::Feed>,
    /// Whether every source is a static list or a file, whose silence is not staleness.
    quiet: bool,
    /// With one source, `outrigger_discovery_source_failing{service,source}`: 1 while its
    /// answers are rejected (with several, each feed keeps its own).
    failing: Option<metrics::Gauge>,
}

impl Watched {
    /// Records a decision in the service's history.
    fn record(
        &self,
        source: &str,
        outcome: Outcome,
        reason: Option<String>,
        diff: Diff,
        nodes: Option<NodeSet>,
    ) -> u64 {
        let mut history = self
            .upstream
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        history.record(source, outcome, reason, diff, nodes)
    }
}

/// Persistence settings for last-known-good sets.
#[derive(Debug, Clone)]
pub struct Persistence {
    /// Where sets are written.
    pub store: StateStore,
    /// The oldest stored set used at start.
    pub max_age: Duration,
}

/// A node source and the services it feeds.
pub struct Adapter {
    /// The adapter.
    pub source: Box<dyn Discovery>,
    /// The URL as configured, without credentials.
    pub url: String,
    /// The services it feeds.
    pub services: Vec<Arc<str>>,
}

/// How a service names its sources (`sources`: indices into `adapters`, in its order), in
/// logs, history, `/upstreams` and metric labels: as each describes itself (`static`,
/// `consul://10.0.0.5:8500`, never with credentials); when two of the service's own describe
/// themselves alike, by URL (a static list, whose URL is its whole list, as `static #2`); and
/// numbered if still alike. Other services' sources never change a service's names.
pub fn source_names(sources: &[usize], adapters: &[Adapter]) -> Vec<String> {
    let described: Vec<String> = sources
        .iter()
        .map(|&i| adapters[i].source.describe())
        .collect();
    let alike = |names: &[String], k: usize| names.iter().filter(|n| **n == names[k]).count() > 1;
    let is_static = |k: usize| adapters[sources[k]].url.starts_with("static:");
    let by_url: Vec<String> = (0..sources.len())
        .map(|k| match &adapters[sources[k]].url {
            _ if !alike(&described, k) => described[k].clone(),
            // Numbered among the service's static lists.
            _ if is_static(k) => format!("static #{}", (0..=k).filter(|&j| is_static(j)).count()),
            url => url.clone(),
        })
        .collect();
    (0..sources.len())
        .map(|k| match alike(&by_url, k) {
            true => format!("{} #{}", by_url[k], k + 1),
            false => by_url[k].clone(),
        })
        .collect()
}

/// The node sources of the process.
pub struct Sources {
    /// Each source, with the services it feeds.
    pub adapters: Vec<Adapter>,
    /// Each service's sources in its configured order, which decides whose labels a node
    /// several list keeps: each an index into `adapters` and the name the service gives it
    /// ([`source_names`]).
    pub order: HashMap<Arc<str>, Vec<(usize, String)>>,
}

/// Starts the node sources and the task that guards and publishes their updates.
pub fn spawn(
    routes: Arc<Routes>,
    sources: Sources,
    policy: GuardPolicy,
    persistence: Option<Persistence>,
    mut operator: mpsc::Receiver<operator::Request>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let mut watched: HashMap<Arc<str>, Watched> = HashMap::new();
    let Sources { adapters, order } = sources;
    for upstream in routes.all() {
        let fed_by = order.get(&upstream.name).cloned().unwrap_or_default();
        let quiet = fed_by
            .iter()
            .all(|(_, n)| n.starts_with("static") || n.starts_with("file"));
        let feeds = match fed_by.len() {
            0 | 1 => Vec::new(),
            _ => fed_by
                .iter()
                .map(|(i, name)| merge::Feed::new(&upstream.name, *i, name.as_str().into()))
                .collect(),
        };
        let failing = feeds.is_empty().then(|| {
            let g = metrics::gauge!("outrigger_discovery_source_failing",
                "service" => upstream.name.to_string(), "source" => upstream.source.clone());
            g.set(0.0);
            g
        });
        let mut w = Watched {
            feeds,
            quiet,
            failing,
            upstream: upstream.clone(),
            guard: LastKnownGood::new(policy),
            dropped_before: HashSet::new(),
            last_logged_error: None,
            since_good: metrics::gauge!("outrigger_discovery_seconds_since_good_update",
                "service" => upstream.name.to_string()),
            saver: persistence
                .as_ref()
                .map(|p| LatestWriter::new(p.store.clone(), upstream.name.clone())),
            pins: persistence.as_ref().map(|p| p.store.pins()),
            pin: None,
            latest: None,
            before_pin: None,
            held_gauge: metrics::gauge!("outrigger_update_held",
                "service" => upstream.name.to_string()),
            pinned_gauge: metrics::gauge!("outrigger_service_pinned",
                "service" => upstream.name.to_string()),
        };
        // Shown from the start, so that alerts on it have a series.
        w.pinned_gauge.set(0.0);
        if let Some(p) = &persistence {
            if !operate::restore_pin(&mut w) {
                restore(&mut w, p);
            }
        }
        merge::seed(&mut w);
        report(&w);
        watched.insert(upstream.name.clone(), w);
    }
    let (tx, mut rx) = mpsc::channel::<ServiceUpdate>(1024);
    let source_tasks: Vec<_> = adapters
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            tokio::spawn(
                a.source
                    .run(a.services, UpdateSink::for_source(tx.clone(), i)),
            )
        })
        .collect();
    // Held by the task, so that a one-shot source ending never closes the channel.
    let keep_open = tx;
    tokio::spawn(async move {
        let _keep_open = keep_open;
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
                    match watched.get_mut(&update.service) {
                        Some(w) if !w.feeds.is_empty() => merge::handle(w, update),
                        Some(w) => {
                            let source = w.upstream.source.clone();
                            decide::handle(w, update, &source);
                        }
                        None => {}
                    }
                }
                Some(request) = operator.recv() => {
                    let answer = match watched.get_mut(request.service.as_str()) {
                        Some(w) => operate::apply(w, request.action, request.by),
                        None => Err(operator::ActionError::UnknownService(request.service.clone())),
                    };
                    let _ = request.reply.send(answer);
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    for w in watched.values_mut() {
                        decide::tick(w, now);
                        if let Some(good) = w.guard.last_good() {
                            // A static list or an unchanged file says nothing new by design:
                            // while it reads fine, its silence is not staleness.
                            let fine = w.guard.state() == outrigger_discovery::GuardState::Fresh;
                            let age = if w.quiet && fine {
                                0.0
                            } else {
                                now.duration_since(good).as_secs_f64()
                            };
                            w.since_good.set(age);
                        }
                    }
                }
            }
        }
        for task in source_tasks {
            task.abort();
        }
    })
}

/// Starts from the set stored by an earlier run, if one is young enough.
fn restore(w: &mut Watched, p: &Persistence) {
    let upstream = w.upstream.clone();
    match p.store.load(&upstream.name, p.max_age) {
        Ok(Some(set)) => {
            tracing::info!(service = %upstream.name, endpoints = set.len(),
                dir = %p.store.dir().display(), "restored last-known-good node set from disk");
            upstream.publish(set.clone());
            w.record(
                "disk",
                Outcome::Restored,
                None,
                Diff::between(None, &set),
                Some(set.clone()),
            );
            w.guard.restore(set);
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

/// Shows the service's state to the admin API.
fn report(w: &Watched) {
    let g = &w.guard;
    w.held_gauge
        .set(if g.pending().is_some() { 1.0 } else { 0.0 });
    let now_i = Instant::now();
    let now_s = SystemTime::now();
    let wall = |at: Instant| now_s - now_i.saturating_duration_since(at);
    // A service whose guard is content while one of its sources fails is partly stale.
    let state = match g.state() {
        outrigger_discovery::GuardState::Fresh if w.feeds.iter().any(merge::Feed::failing) => {
            outrigger_discovery::GuardState::Stale
        }
        state => state,
    };
    w.upstream.report.store(Arc::new(Report {
        state,
        pending: g.pending().map(|p| HeldUpdate {
            nodes: p.nodes.clone(),
            reason: p.reason.clone(),
            since: wall(p.since),
            applies_at: wall(p.since) + g.policy().confirm,
        }),
        last_error: g.last_error().map(|(e, at)| (e.to_string(), *at)),
        last_good: g.last_good(),
        last_replacement: g.last_replacement().cloned(),
        pin: w.pin.as_ref().map(|p| PinInfo {
            version: p.version,
            pinned_to: p.pinned_to,
            since: std::time::UNIX_EPOCH + Duration::from_secs(p.pinned_at_unix),
            by: p.by.clone(),
        }),
        behind_pin: w
            .pin
            .as_ref()
            .and(w.latest.as_ref())
            .map(|latest| match latest {
                Ok(candidates) => {
                    let set =
                        NodeSet::new(outrigger_discovery::validate(candidates.clone()).endpoints);
                    BehindPin::Nodes {
                        endpoints: set.len(),
                        diff: Diff::between(g.current(), &set),
                    }
                }
                Err(e) => BehindPin::Error(e.to_string()),
            }),
        refused: g.refused().map(NodeSet::len),
        sources: w.feeds.iter().map(merge::Feed::state).collect(),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_discovery::consul::ConsulDiscovery;
    use outrigger_discovery::static_list::StaticList;

    fn adapter(url: &str) -> Adapter {
        let source: Box<dyn Discovery> = match url.strip_prefix("static:") {
            Some(list) => Box::new(StaticList::parse(list).unwrap()),
            None => Box::new(ConsulDiscovery::from_url(url, None).unwrap()),
        };
        Adapter {
            source,
            url: url.to_string(),
            services: Vec::new(),
        }
    }

    #[test]
    fn a_service_names_its_sources_apart_from_other_services() {
        let adapters: Vec<Adapter> = [
            "static:orders=127.0.0.1:1",
            "consul://127.0.0.1:8500?tag=a",
            "static:pay=127.0.0.1:2",
            "consul://127.0.0.1:8500?tag=b",
        ]
        .iter()
        .map(|u| adapter(u))
        .collect();
        // Alone in the service: as each describes itself, whatever other services use.
        assert_eq!(
            source_names(&[0, 1], &adapters),
            ["static", "consul://127.0.0.1:8500"]
        );
        // Alike within the service: by URL, a static list by position.
        assert_eq!(source_names(&[0, 2], &adapters), ["static #1", "static #2"]);
        assert_eq!(
            source_names(&[1, 0, 2], &adapters),
            ["consul://127.0.0.1:8500", "static #1", "static #2"]
        );
        assert_eq!(
            source_names(&[1, 3], &adapters),
            [
                "consul://127.0.0.1:8500?tag=a",
                "consul://127.0.0.1:8500?tag=b"
            ]
        );
    }
}
