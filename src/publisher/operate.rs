//! Operators' actions on one service, applied by the discovery task: pin (to the set in use or
//! one from the history), unpin, confirm or refuse a held update. Each is logged with who
//! asked, counted, recorded in the history, and a pin is kept on disk across restarts.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use outrigger_discovery::state_store::PinRecord;
use outrigger_discovery::NodeSet;

use super::decide::{apply_held, judge, judge_set};
use super::{report, Watched};
use crate::history::{Diff, Outcome};
use crate::operator::{Action, ActionError};

/// Applies `action`, asked by `by`; the answer says what was done.
///
/// Errors: [`ActionError::Conflict`] when the action does not fit the service's state.
pub(super) fn apply(
    w: &mut Watched,
    action: Action,
    by: SocketAddr,
) -> Result<String, ActionError> {
    let result = match action {
        Action::Pin(version) => pin(w, version, by),
        Action::Unpin => unpin(w, by),
        Action::Confirm => confirm(w, by),
        Action::Refuse => refuse(w, by),
    };
    let outcome = if result.is_ok() { "done" } else { "refused" };
    metrics::counter!("outrigger_admin_actions_total", "service" => w.upstream.name.to_string(),
        "action" => action.as_str(), "result" => outcome)
    .increment(1);
    match &result {
        Ok(what) => tracing::warn!(service = %w.upstream.name, action = action.as_str(),
            by = %by, "{what}"),
        Err(e) => tracing::info!(service = %w.upstream.name, action = action.as_str(),
            by = %by, error = %e, "operator action refused"),
    }
    report(w);
    result
}

fn conflict(what: impl Into<String>) -> ActionError {
    ActionError::Conflict(what.into())
}

fn pin(w: &mut Watched, version: Option<u64>, by: SocketAddr) -> Result<String, ActionError> {
    let set = match version {
        None => w
            .guard
            .current()
            .cloned()
            .ok_or_else(|| conflict("the service has no node set yet"))?,
        Some(v) => {
            let history = w.upstream.history.lock().unwrap_or_else(|e| e.into_inner());
            let entry = history.get(v).ok_or_else(|| {
                conflict(format!(
                    "version {v} is not in the history (the last 20 are kept)"
                ))
            })?;
            entry.nodes.clone().ok_or_else(|| {
                conflict(format!(
                    "version {v} ({}) holds no node set",
                    entry.outcome.as_str()
                ))
            })?
        }
    };
    if set.is_empty() {
        return Err(conflict("refusing to pin an empty node set"));
    }
    let before = w.guard.current().cloned();
    // The registry's state now, judged again on unpin if it says nothing meanwhile: a held
    // or refused answer is not lost by pinning.
    if w.pin.is_none() {
        w.before_pin = w
            .guard
            .pending()
            .map(|p| p.nodes.clone())
            .or_else(|| w.guard.refused().cloned())
            .or_else(|| before.clone());
    }
    let source = format!("operator {by}");
    let reason = match version {
        Some(v) => format!("pinned to version {v}"),
        None => "pinned to the set in use".to_string(),
    };
    let diff = Diff::between(before.as_ref(), &set);
    let pinned = w.record(
        &source,
        Outcome::Pinned,
        Some(reason.clone()),
        diff,
        Some(set.clone()),
    );
    let record = PinRecord {
        version: pinned,
        pinned_to: version,
        pinned_at_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        by: by.to_string(),
    };
    w.guard.force(set.clone());
    w.pin = Some(record.clone());
    w.pinned_gauge.set(1.0);
    w.upstream.publish(set.clone());
    save_pin(w, &set, record);
    Ok(format!(
        "{reason} ({} endpoints); registry updates are read, not applied, until unpinned",
        set.len()
    ))
}

fn unpin(w: &mut Watched, by: SocketAddr) -> Result<String, ActionError> {
    if w.pin.take().is_none() {
        return Err(conflict("the service is not pinned"));
    }
    w.pinned_gauge.set(0.0);
    if let Some(pins) = &w.pins {
        if let Err(e) = pins.remove(&w.upstream.name) {
            tracing::warn!(service = %w.upstream.name, error = %e, "cannot remove the stored pin");
        }
    }
    w.record(
        &format!("operator {by}"),
        Outcome::Unpinned,
        None,
        Diff::default(),
        None,
    );
    // The registry's newest answer goes through the usual guard, judged against the pinned set.
    let before_pin = w.before_pin.take();
    match (w.latest.take(), before_pin) {
        (Some(result), _) => {
            let source = w.upstream.source.clone();
            judge(w, result, &source);
            Ok("unpinned; the registry's newest answer went through the guard".into())
        }
        (None, Some(set)) => {
            judge_set(w, set);
            Ok("unpinned; the registry's state before the pin went through the guard".into())
        }
        (None, None) => Ok("unpinned; the next registry answer goes through the guard".into()),
    }
}

fn confirm(w: &mut Watched, by: SocketAddr) -> Result<String, ActionError> {
    let before = w.guard.current().cloned();
    let set = w
        .guard
        .confirm_pending(Instant::now())
        .ok_or_else(|| conflict("no update is held"))?;
    let count = set.len();
    let source = Some(format!("operator {by}"));
    let why = "confirmed by an operator".to_string();
    apply_held(w, before, set, ("confirmed", source), why);
    Ok(format!("held update applied ({count} endpoints)"))
}

fn refuse(w: &mut Watched, by: SocketAddr) -> Result<String, ActionError> {
    let before = w.guard.current().cloned();
    let set = w
        .guard
        .refuse_pending()
        .ok_or_else(|| conflict("no update is held"))?;
    let diff = Diff::between(before.as_ref(), &set);
    let count = set.len();
    w.record(
        &format!("operator {by}"),
        Outcome::Refused,
        Some("refused by an operator until the registry answers something else".into()),
        diff,
        Some(set),
    );
    Ok(format!(
        "held update of {count} endpoints refused; the set in use stays"
    ))
}

fn save_pin(w: &Watched, set: &NodeSet, record: PinRecord) {
    if let Some(pins) = &w.pins {
        if let Err(e) = pins.save_pinned(&w.upstream.name, set, Some(record)) {
            tracing::warn!(service = %w.upstream.name, error = %e,
                "cannot store the pin; it holds until a restart");
        }
    }
}

/// Starts from a pin stored by an earlier run; returns whether there was one.
pub(super) fn restore_pin(w: &mut Watched) -> bool {
    let Some(pins) = &w.pins else {
        return false;
    };
    match pins.load_pin(&w.upstream.name) {
        Ok(Some((set, record))) => {
            tracing::warn!(service = %w.upstream.name, endpoints = set.len(), by = %record.by,
                "restored an operator's pin from disk; registry updates are not applied until unpinned");
            w.upstream.publish(set.clone());
            let reason = format!("pin restored from disk (pinned by {})", record.by);
            let version = w.record(
                "disk",
                Outcome::Pinned,
                Some(reason),
                Diff::between(None, &set),
                Some(set.clone()),
            );
            w.before_pin = Some(set.clone());
            w.guard.force(set);
            w.pin = Some(PinRecord { version, ..record });
            w.pinned_gauge.set(1.0);
            true
        }
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(service = %w.upstream.name, error = %e, "ignoring a stored pin that cannot be used");
            false
        }
    }
}
