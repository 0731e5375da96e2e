//! Each service's recent decisions about its node set, for operators: what each registry
//! update (or operator action) did, with the difference it made, numbered so that an earlier
//! set can be pinned again.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::SystemTime;

use outrigger_discovery::{Endpoint, NodeSet};
use serde_json::{json, Value};

/// Decisions kept per service; older ones are forgotten.
pub const KEPT: usize = 20;

/// What one decision was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A registry answer became the set in use.
    Applied,
    /// A held answer was applied after its window, or early because it replaced failing
    /// nodes, or because an operator confirmed it.
    Confirmed,
    /// A drastic answer was held.
    Held,
    /// The registry's answer was unusable.
    Rejected,
    /// An operator refused a held answer (or the registry repeated one refused).
    Refused,
    /// The set was restored from disk at start.
    Restored,
    /// An operator pinned the service to a set.
    Pinned,
    /// An operator unpinned the service.
    Unpinned,
    /// While pinned, a registry answer was read and not applied.
    BehindPin,
}

impl Outcome {
    /// The label the admin API and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Confirmed => "confirmed",
            Outcome::Held => "held",
            Outcome::Rejected => "rejected",
            Outcome::Refused => "refused",
            Outcome::Restored => "restored",
            Outcome::Pinned => "pinned",
            Outcome::Unpinned => "unpinned",
            Outcome::BehindPin => "pending_behind_pin",
        }
    }
}

/// How one set differs from the one before.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    /// Addresses that joined.
    pub added: Vec<SocketAddr>,
    /// Addresses that left.
    pub removed: Vec<SocketAddr>,
    /// Addresses that stayed with another weight, priority or labels: what changed.
    pub changed: Vec<(SocketAddr, String)>,
}

impl Diff {
    /// The difference from `before` (none: every node is added) to `after`.
    pub fn between(before: Option<&NodeSet>, after: &NodeSet) -> Diff {
        let old: BTreeMap<SocketAddr, &Endpoint> = before
            .map(|b| b.endpoints().iter().map(|e| (e.addr, e)).collect())
            .unwrap_or_default();
        let new: BTreeMap<SocketAddr, &Endpoint> =
            after.endpoints().iter().map(|e| (e.addr, e)).collect();
        let mut diff = Diff::default();
        for (addr, e) in &new {
            match old.get(addr) {
                None => diff.added.push(*addr),
                Some(o) => {
                    let mut what = Vec::new();
                    if o.weight != e.weight {
                        what.push(format!("weight {} -> {}", o.weight, e.weight));
                    }
                    if o.priority != e.priority {
                        what.push(format!("priority {} -> {}", o.priority, e.priority));
                    }
                    if o.meta != e.meta {
                        what.push("labels".to_string());
                    }
                    if !what.is_empty() {
                        diff.changed.push((*addr, what.join(", ")));
                    }
                }
            }
        }
        diff.removed = old
            .keys()
            .filter(|a| !new.contains_key(a))
            .copied()
            .collect();
        diff
    }

    /// The difference as the admin API shows it.
    pub fn to_json(&self) -> Value {
        json!({
            "added": self.added.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "removed": self.removed.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "changed": self.changed.iter()
                .map(|(a, what)| json!({"address": a.to_string(), "change": what}))
                .collect::<Vec<_>>(),
        })
    }
}

/// One decision.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its number, from 1, per service; never reused.
    pub version: u64,
    /// When.
    pub at: SystemTime,
    /// Who: the registry (as the source describes it), `disk`, or `operator <peer>`.
    pub source: String,
    /// What.
    pub outcome: Outcome,
    /// Why, when there is more to say (a held update's reason, a registry error).
    pub reason: Option<String>,
    /// The difference from the set in use before (or, for a held or refused answer, the
    /// difference it would make).
    pub diff: Diff,
    /// The set this decision put in use (or would have), to pin again later.
    pub nodes: Option<NodeSet>,
}

impl Entry {
    /// The entry as `/upstreams/<service>/history` shows it.
    pub fn to_json(&self) -> Value {
        json!({
            "version": self.version,
            "at": humantime::format_rfc3339_millis(self.at).to_string(),
            "source": self.source,
            "result": self.outcome.as_str(),
            "reason": self.reason,
            "endpoints": self.nodes.as_ref().map(NodeSet::len),
            "diff": self.diff.to_json(),
        })
    }
}

/// A service's last [`KEPT`] decisions, newest last.
#[derive(Debug, Default)]
pub struct History {
    entries: VecDeque<Entry>,
    next_version: u64,
}

impl History {
    /// Records a decision; returns its version.
    pub fn record(
        &mut self,
        source: &str,
        outcome: Outcome,
        reason: Option<String>,
        diff: Diff,
        nodes: Option<NodeSet>,
    ) -> u64 {
        self.next_version += 1;
        if self.entries.len() == KEPT {
            self.entries.pop_front();
        }
        self.entries.push_back(Entry {
            version: self.next_version,
            at: SystemTime::now(),
            source: source.to_string(),
            outcome,
            reason,
            diff,
            nodes,
        });
        self.next_version
    }

    /// The entry numbered `version`, if still kept.
    pub fn get(&self, version: u64) -> Option<&Entry> {
        self.entries.iter().find(|e| e.version == version)
    }

    /// The newest entry.
    pub fn latest(&self) -> Option<&Entry> {
        self.entries.back()
    }

    /// The entries, newest first, as the admin API shows them.
    pub fn to_json(&self) -> Value {
        Value::Array(self.entries.iter().rev().map(Entry::to_json).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nodes: &[(u16, f64)]) -> NodeSet {
        NodeSet::new(
            nodes
                .iter()
                .map(|&(port, w)| {
                    let mut e = Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port)));
                    e.weight = w;
                    e
                })
                .collect(),
        )
    }

    #[test]
    fn diffs_name_added_removed_and_changed_nodes() {
        let d = Diff::between(
            Some(&set(&[(1, 1.0), (2, 1.0)])),
            &set(&[(2, 3.0), (3, 1.0)]),
        );
        assert_eq!(d.added, [SocketAddr::from(([127, 0, 0, 1], 3))]);
        assert_eq!(d.removed, [SocketAddr::from(([127, 0, 0, 1], 1))]);
        assert_eq!(d.changed[0].1, "weight 1 -> 3");
        assert_eq!(Diff::between(None, &set(&[(1, 1.0)])).added.len(), 1);
    }

    #[test]
    fn keeps_the_last_twenty_with_versions_never_reused() {
        let mut h = History::default();
        for _ in 0..25 {
            h.record("test", Outcome::Applied, None, Diff::default(), None);
        }
        assert!(h.get(5).is_none());
        assert_eq!(h.get(6).map(|e| e.version), Some(6));
        assert_eq!(h.latest().map(|e| e.version), Some(25));
        assert_eq!(h.to_json().as_array().map(Vec::len), Some(KEPT));
        assert_eq!(h.to_json()[0]["version"], 25);
    }
}
