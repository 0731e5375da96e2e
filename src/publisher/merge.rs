//! Services fed by several sources (`OUTRIGGER_DISCOVERY_<SERVICE>` with more than one URL,
//! such as a migration from Eureka to Nacos).
//!
//! Each source's answers are read alone and its last usable answer is kept: an error, or an
//! answer whose every entry is invalid, leaves that source's last nodes in the merge, so one
//! registry's outage or garbage never takes away another's nodes, and the other's updates keep
//! flowing. The union of the sources' last usable answers (a node several list once, with the
//! first source's weight and labels, and every listing source named in its labels'
//! `sources`) is then offered to the service's guard as one answer, which judges it as it
//! judges a single registry's (drastic changes held, pins, history).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use outrigger_discovery::{Candidate, DiscoveryError, Endpoint, EndpointMeta, ServiceUpdate};

use super::{decide, Watched};
use crate::upstream::SourceState;

/// One source of a service fed by several.
pub(super) struct Feed {
    /// The source's position in the process's list of sources.
    pub(super) source: usize,
    /// Its name (see `publisher::Adapter::name`).
    pub(super) name: Arc<str>,
    /// Its last usable answer: validated, each endpoint's labels naming this source.
    last: Option<Vec<Endpoint>>,
    /// True while `last` is what the set restored at start says of this source, before it
    /// answered usably.
    restored: bool,
    /// Why its latest answer was not used, and when that began; `None` once an answer is.
    error: Option<(String, SystemTime)>,
    /// When its latest answer came, usable or not.
    last_answer: Option<SystemTime>,
    /// When its latest usable answer came.
    last_usable: Option<SystemTime>,
    /// Entries dropped from its previous answer, so each is logged once.
    dropped_before: HashSet<(String, &'static str)>,
    /// `outrigger_discovery_source_failing{service,source}`: 1 while its answers are refused.
    failing: metrics::Gauge,
}

impl Feed {
    pub(super) fn new(service: &str, source: usize, name: Arc<str>) -> Self {
        let failing = metrics::gauge!("outrigger_discovery_source_failing",
            "service" => service.to_string(), "source" => name.to_string());
        failing.set(0.0);
        Feed {
            source,
            name,
            last: None,
            restored: false,
            error: None,
            last_answer: None,
            last_usable: None,
            dropped_before: HashSet::new(),
            failing,
        }
    }

    /// Whether its answers are being refused.
    pub(super) fn failing(&self) -> bool {
        self.error.is_some()
    }

    /// What `/upstreams` shows of it.
    pub(super) fn state(&self) -> SourceState {
        SourceState {
            source: self.name.to_string(),
            endpoints: self.last.as_ref().map(Vec::len),
            restored: self.restored,
            error: self.error.clone(),
            last_answer: self.last_answer,
            last_usable: self.last_usable,
        }
    }
}

/// Gives each source of `w` its share of the set the service starts from (restored from disk,
/// or pinned): the endpoints whose labels name it, so that a source still down after a
/// restart keeps its nodes. Endpoints that name none of the sources (saved before the service
/// had several) count for every source, until each has answered.
pub(super) fn seed(w: &mut Watched) {
    let Some(set) = w.guard.current() else {
        return;
    };
    let names: Vec<Arc<str>> = w.feeds.iter().map(|f| f.name.clone()).collect();
    let listed_by = |e: &Endpoint, name: &str| e.meta.sources.iter().any(|s| s == name);
    let claimed = |e: &Endpoint| names.iter().any(|n| listed_by(e, n));
    let mut seeds: Vec<Vec<Endpoint>> = vec![Vec::new(); w.feeds.len()];
    for e in set.endpoints() {
        for (k, name) in names.iter().enumerate() {
            if listed_by(e, name) || !claimed(e) {
                seeds[k].push(e.clone());
            }
        }
    }
    for (feed, seed) in w.feeds.iter_mut().zip(seeds) {
        feed.last = Some(tagged(seed, &feed.name));
        feed.restored = true;
    }
}

/// Handles one source's answer for the service `w`, which has several.
pub(super) fn handle(w: &mut Watched, update: ServiceUpdate) {
    let Some(k) = w.feeds.iter().position(|f| f.source == update.source) else {
        return;
    };
    w.feeds[k].last_answer = Some(SystemTime::now());
    let candidates = match update.result {
        Ok(candidates) => candidates,
        Err(e) => return refuse(w, k, update.service, e),
    };
    let listed = candidates.len();
    let validated = outrigger_discovery::validate(candidates);
    let feed = &mut w.feeds[k];
    decide::note_dropped(
        &w.upstream.name,
        &feed.name,
        &mut feed.dropped_before,
        &validated.dropped,
    );
    if listed > 0 && validated.endpoints.is_empty() {
        let e = DiscoveryError::AllInvalid {
            registry: feed.name.to_string(),
            count: listed,
        };
        return refuse(w, k, update.service, e);
    }
    let feed = &mut w.feeds[k];
    if feed.error.take().is_some() {
        tracing::info!(service = %w.upstream.name, source = %feed.name,
            "source answers again; its nodes are merged from its answers");
        feed.failing.set(0.0);
    }
    feed.last = Some(tagged(validated.endpoints, &feed.name));
    feed.restored = false;
    feed.last_usable = feed.last_answer;
    let name = feed.name.clone();
    offer_merged(w, update.service, &name);
}

/// Keeps source `k`'s last usable answer in place of one it could not use. A new error goes
/// to the service's guard as one registry's would (logged, recorded, counted; a held update
/// is no longer stood by); a repeated one is only counted.
fn refuse(w: &mut Watched, k: usize, service: Arc<str>, error: DiscoveryError) {
    let why = error.to_string();
    let feed = &mut w.feeds[k];
    if feed.error.as_ref().is_some_and(|(e, _)| *e == why) {
        metrics::counter!("outrigger_discovery_updates_total",
            "service" => w.upstream.name.to_string(), "result" => "rejected")
        .increment(1);
        return;
    }
    feed.error = Some((why, SystemTime::now()));
    feed.failing.set(1.0);
    let name = feed.name.clone();
    if w.feeds.iter().any(|f| f.last.is_some()) {
        tracing::warn!(service = %w.upstream.name, source = %name,
            "keeping this source's last usable nodes, and the other sources'");
    }
    let update = ServiceUpdate {
        service,
        result: Err(error),
        source: 0,
    };
    decide::handle(w, update, &name);
}

/// Offers the union of every source's last usable answer to the service's guard.
fn offer_merged(w: &mut Watched, service: Arc<str>, source: &str) {
    let mut all: Vec<&Endpoint> = w
        .feeds
        .iter()
        .filter_map(|f| f.last.as_ref())
        .flatten()
        .collect();
    // Stable: for an address several sources list, the first source's copy comes first.
    all.sort_by_key(|e| e.addr);
    let mut merged: Vec<Endpoint> = Vec::with_capacity(all.len());
    for e in all {
        match merged.last_mut() {
            Some(kept) if kept.addr == e.addr => {
                let meta = Arc::make_mut(&mut kept.meta);
                meta.sources.extend(e.meta.sources.iter().cloned());
            }
            _ => merged.push(e.clone()),
        }
    }
    let candidates = merged.into_iter().map(candidate).collect();
    let update = ServiceUpdate {
        service,
        result: Ok(candidates),
        source: 0,
    };
    decide::handle(w, update, source);
}

/// A validated endpoint as a candidate again, for the guard.
fn candidate(e: Endpoint) -> Candidate {
    let mut c = Candidate::new(e.addr.ip().to_string(), i64::from(e.addr.port()));
    c.weight = e.weight;
    c.priority = e.priority;
    c.meta = e.meta;
    c
}

/// `endpoints` with labels naming `source`; endpoints that shared labels share the new ones.
fn tagged(mut endpoints: Vec<Endpoint>, source: &str) -> Vec<Endpoint> {
    // Keyed by the old labels' address; the old labels are kept alive in the value, so that
    // no address is reused while the map is in use.
    type Done = HashMap<*const EndpointMeta, (Arc<EndpointMeta>, Arc<EndpointMeta>)>;
    let mut done: Done = HashMap::new();
    for e in &mut endpoints {
        let (_, meta) = done.entry(Arc::as_ptr(&e.meta)).or_insert_with(|| {
            let mut m = (*e.meta).clone();
            m.sources = vec![source.to_string()];
            (e.meta.clone(), Arc::new(m))
        });
        e.meta = meta.clone();
    }
    endpoints
}
