//! Judging registry answers: each goes through the service's guard (or, while the service is
//! pinned, is only read and shown), and every decision that changes something is logged,
//! counted and recorded in the service's history.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

use outrigger_discovery::{Decision, Dropped, NodeSet, ServiceUpdate};

use super::{report, Watched, UPDATES_RECEIVED};
use crate::history::{Diff, Outcome};

/// Handles one registry answer for the service `w`, from `source` (as history names it).
pub(super) fn handle(w: &mut Watched, update: ServiceUpdate, source: &str) {
    UPDATES_RECEIVED.fetch_add(1, Ordering::Relaxed);
    if w.pin.is_some() {
        behind_pin(w, update, source);
        return;
    }
    judge(w, update.result, source);
}

/// While pinned: the answer is read, validated and shown, never applied; the newest one is
/// kept for the unpin.
fn behind_pin(w: &mut Watched, update: ServiceUpdate, source: &str) {
    let count = |r: &Result<Vec<_>, _>| r.as_ref().ok().map(|c: &Vec<_>| c.len());
    let changed = match (&w.latest, &update.result) {
        (Some(Ok(old)), Ok(new)) => old != new,
        (Some(Err(old)), Err(new)) => old.to_string() != new.to_string(),
        _ => true,
    };
    metrics::counter!("outrigger_discovery_updates_total",
        "service" => w.upstream.name.to_string(), "result" => "pending_behind_pin")
    .increment(1);
    if changed {
        let (reason, diff, nodes) = match &update.result {
            Ok(candidates) => {
                let set = NodeSet::new(outrigger_discovery::validate(candidates.clone()).endpoints);
                (None, Diff::between(w.guard.current(), &set), Some(set))
            }
            Err(e) => (Some(e.to_string()), Diff::default(), None),
        };
        match count(&update.result) {
            Some(n) => tracing::info!(service = %w.upstream.name, candidates = n,
                "registry update read while pinned; not applied"),
            None => tracing::info!(service = %w.upstream.name,
                "registry error while pinned; nothing applied"),
        }
        w.record(source, Outcome::BehindPin, reason, diff, nodes);
    }
    w.latest = Some(update.result);
    report(w);
}

/// Judges a set the registry gave before a pin, as an answer would be (on unpin).
pub(super) fn judge_set(w: &mut Watched, set: NodeSet) {
    let before = w.guard.current().cloned();
    let decision = w.guard.judge_set(set, Instant::now());
    let source = w.upstream.source.clone();
    act(w, decision, (before, None), None, &source);
}

/// Offers an answer to the guard and acts on its decision.
pub(super) fn judge(
    w: &mut Watched,
    result: Result<Vec<outrigger_discovery::Candidate>, outrigger_discovery::DiscoveryError>,
    source: &str,
) {
    let error = result.as_ref().err().map(ToString::to_string);
    let was_held = w.guard.pending().map(|p| p.nodes.clone());
    let before = w.guard.current().cloned();
    let (decision, dropped) = w.guard.offer(result, Instant::now());
    note_dropped(&w.upstream.name, source, &mut w.dropped_before, &dropped);
    act(w, decision, (before, was_held), error, source);
}

/// Logs, counts, records and publishes what the guard decided about an answer from `source`,
/// given the set in use and the held one before it.
fn act(
    w: &mut Watched,
    decision: Decision,
    (before, was_held): (Option<NodeSet>, Option<NodeSet>),
    error: Option<String>,
    source: &str,
) {
    let name = w.upstream.name.clone();
    metrics::counter!("outrigger_discovery_updates_total",
        "service" => name.to_string(), "result" => decision.as_str())
    .increment(1);
    if let Some(failing) = &w.failing {
        let rejected = matches!(decision, Decision::Rejected);
        failing.set(if rejected { 1.0 } else { 0.0 });
    }
    let source = source.to_string();
    match &decision {
        Decision::Rejected => {
            if error != w.last_logged_error {
                tracing::warn!(service = %name, error = error.as_deref().unwrap_or(""),
                    "registry answer rejected; keeping the last-known-good node set");
                w.record(
                    &source,
                    Outcome::Rejected,
                    error.clone(),
                    Diff::default(),
                    None,
                );
            }
            w.last_logged_error = error;
        }
        Decision::Held => {
            if let Some(p) = w.guard.pending() {
                let new = was_held
                    .as_ref()
                    .is_none_or(|old| !old.same_nodes(&p.nodes));
                if new {
                    tracing::warn!(service = %name, reason = %p.reason,
                        confirm = ?w.guard.policy().confirm,
                        "registry update held; applied only if the registry stands by it");
                    let (reason, nodes) = (p.reason.clone(), p.nodes.clone());
                    let diff = Diff::between(before.as_ref(), &nodes);
                    w.record(&source, Outcome::Held, Some(reason), diff, Some(nodes));
                }
            }
            replace_failing(w, Instant::now());
        }
        Decision::Refused => {}
        Decision::Applied(set) | Decision::Confirmed(set) => {
            tracing::info!(service = %name, endpoints = set.len(), result = decision.as_str(),
                "node set updated");
            w.last_logged_error = None;
            let outcome = match decision {
                Decision::Applied(_) => Outcome::Applied,
                _ => Outcome::Confirmed,
            };
            let diff = Diff::between(before.as_ref(), set);
            w.record(&source, outcome, None, diff, Some(set.clone()));
            publish(w, set.clone());
        }
        Decision::Unchanged => w.last_logged_error = None,
    }
    report(w);
}

/// The periodic look at held updates: one the registry stood by for the whole window is
/// applied, and so is one that only removes failing nodes.
pub(super) fn tick(w: &mut Watched, now: Instant) {
    replace_failing(w, now);
    let before = w.guard.current().cloned();
    if let Some(set) = w.guard.tick(now) {
        tracing::warn!(service = %w.upstream.name, endpoints = set.len(),
            "held update confirmed by the registry after the window; applied");
        let why = "the registry stood by it for the whole window";
        apply_held(w, before, set, ("confirmed", None), why.into());
    }
}

/// Counts (as `result`), records (from `source`, the registry when `None`) and publishes a
/// held update the guard applied in place of `before`, and why.
pub(super) fn apply_held(
    w: &mut Watched,
    before: Option<NodeSet>,
    set: NodeSet,
    (result, source): (&'static str, Option<String>),
    why: String,
) {
    metrics::counter!("outrigger_discovery_updates_total",
        "service" => w.upstream.name.to_string(), "result" => result)
    .increment(1);
    let diff = Diff::between(before.as_ref(), &set);
    let source = source.unwrap_or_else(|| w.upstream.source.clone());
    w.record(
        &source,
        Outcome::Confirmed,
        Some(why),
        diff,
        Some(set.clone()),
    );
    publish(w, set);
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
    let before = w.guard.current().cloned();
    let Some(set) = w.guard.apply_replacement(now, why.clone()) else {
        return;
    };
    tracing::warn!(service = %w.upstream.name, endpoints = set.len(), reason = %why,
        "held update applied before its window: it replaces failing nodes");
    apply_held(w, before, set, ("replaced", None), why);
}

/// Logs and counts the entries `source` dropped that its previous answer (`before`) did not.
pub(super) fn note_dropped(
    service: &str,
    source: &str,
    before: &mut HashSet<(String, &'static str)>,
    dropped: &[Dropped],
) {
    let now: HashSet<(String, &'static str)> = dropped
        .iter()
        .map(|d| (d.entry.clone(), d.reason.as_str()))
        .collect();
    for (entry, reason) in now.difference(before) {
        tracing::warn!(service = %service, source = %source, entry = %entry,
            reason = %reason, "registry entry dropped");
        metrics::counter!("outrigger_discovery_dropped_entries_total",
            "service" => service.to_string(), "reason" => *reason)
        .increment(1);
    }
    *before = now;
}

/// Puts `set` in use and saves it as the last-known-good set.
pub(super) fn publish(w: &mut Watched, set: NodeSet) {
    w.upstream.publish(set.clone());
    report(w);
    // The write fsyncs; the writer keeps it off the async workers.
    if let Some(saver) = &w.saver {
        saver.submit(set);
    }
}
