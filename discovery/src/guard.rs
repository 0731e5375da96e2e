use std::time::{Duration, Instant, SystemTime};

use crate::{validate, Candidate, DiscoveryError, Dropped, NodeSet};

/// The thresholds that decide when an update looks too drastic to trust at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardPolicy {
    /// Largest share of current nodes (0.0..=1.0) one update may remove and still apply at once.
    pub max_drop_share: f64,
    /// How long a held update must remain the registry's answer before it is applied.
    pub confirm: Duration,
}

impl Default for GuardPolicy {
    fn default() -> Self {
        GuardPolicy {
            max_drop_share: 0.5,
            confirm: Duration::from_secs(30),
        }
    }
}

/// Where a service stands with respect to its registry, as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardState {
    /// No node set yet: the registry has not answered and nothing was restored.
    Waiting,
    /// The registry's latest answer is the set in use.
    Fresh,
    /// The registry's latest answer looked drastic and is held until confirmed.
    Held,
    /// The registry's latest attempt failed; the last good set stays in use.
    Stale,
    /// The set in use was loaded from disk and the registry has not confirmed it yet.
    Restored,
}

impl GuardState {
    /// The label used in the admin API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardState::Waiting => "waiting",
            GuardState::Fresh => "fresh",
            GuardState::Held => "held",
            GuardState::Stale => "stale",
            GuardState::Restored => "restored",
        }
    }
}

/// An update held back because it would empty the service or remove too many nodes at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// The set the registry asked for.
    pub nodes: NodeSet,
    /// When the registry first gave this answer.
    pub since: Instant,
    /// Why it was held, for operators.
    pub reason: String,
}

/// What the guard did with one registry answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A new set to publish.
    Applied(NodeSet),
    /// A held update that the registry kept giving for the whole window; publish it.
    Confirmed(NodeSet),
    /// The same nodes as now; nothing to publish.
    Unchanged,
    /// A drastic update, kept pending; the current set stays.
    Held,
    /// The answer was unusable; the current set stays.
    Rejected,
    /// The answer is one an operator refused ([`LastKnownGood::refuse_pending`]); the
    /// current set stays until the registry answers something else.
    Refused,
}

impl Decision {
    /// The label used in metrics (`updates by result`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Applied(_) => "applied",
            Decision::Confirmed(_) => "confirmed",
            Decision::Unchanged => "unchanged",
            Decision::Held => "held",
            Decision::Rejected => "rejected",
            Decision::Refused => "refused",
        }
    }

    /// The set to publish, if this decision changes routing.
    pub fn published(&self) -> Option<&NodeSet> {
        match self {
            Decision::Applied(set) | Decision::Confirmed(set) => Some(set),
            _ => None,
        }
    }
}

/// The last-known-good guard of one service: no registry answer can take the service down.
///
/// Every answer passes through here before routing sees it. Unusable answers are rejected whole,
/// invalid entries are dropped one by one, and answers that would empty the service or remove
/// more than `max_drop_share` of its nodes are held until the registry has kept saying the same
/// thing for `confirm`. Real scale-downs still happen, just not from one bad answer.
#[derive(Debug)]
pub struct LastKnownGood {
    policy: GuardPolicy,
    current: Option<NodeSet>,
    state: GuardState,
    pending: Option<Pending>,
    last_error: Option<(DiscoveryError, SystemTime)>,
    last_good: Option<Instant>,
    last_replacement: Option<(String, SystemTime)>,
    /// A held answer an operator refused: the same answer again is not held anew.
    refused: Option<NodeSet>,
}

impl LastKnownGood {
    /// A guard with no node set yet.
    pub fn new(policy: GuardPolicy) -> Self {
        LastKnownGood {
            policy,
            current: None,
            state: GuardState::Waiting,
            pending: None,
            last_error: None,
            last_good: None,
            last_replacement: None,
            refused: None,
        }
    }

    /// Starts from a set persisted by an earlier run, until the registry answers.
    pub fn restore(&mut self, set: NodeSet) {
        self.current = Some(set);
        self.state = GuardState::Restored;
    }

    /// Judges one registry answer. Returns the decision and the entries dropped as invalid.
    pub fn offer(
        &mut self,
        result: Result<Vec<Candidate>, DiscoveryError>,
        now: Instant,
    ) -> (Decision, Vec<Dropped>) {
        let candidates = match result {
            Ok(candidates) => candidates,
            Err(error) => {
                self.last_error = Some((error, SystemTime::now()));
                // An answer we could not read repeats nothing: a held update must be confirmed by
                // the registry itself, so its window starts again with the next good answer.
                self.pending = None;
                if self.current.is_some() && self.state != GuardState::Restored {
                    self.state = GuardState::Stale;
                }
                return (Decision::Rejected, Vec::new());
            }
        };
        let validated = validate(candidates);
        let next = NodeSet::new(validated.endpoints);
        let decision = self.judge(next, now);
        (decision, validated.dropped)
    }

    /// Judges a set the registry gave earlier, already validated (the newest registry state
    /// kept across an operator's pin), as [`LastKnownGood::offer`] judges an answer.
    pub fn judge_set(&mut self, next: NodeSet, now: Instant) -> Decision {
        self.judge(next, now)
    }

    fn judge(&mut self, next: NodeSet, now: Instant) -> Decision {
        let Some(current) = &self.current else {
            return self.apply(next, now, false);
        };
        if current.same_nodes(&next) {
            self.pending = None;
            self.state = GuardState::Fresh;
            self.last_good = Some(now);
            return Decision::Unchanged;
        }
        match &self.refused {
            Some(refused) if refused.same_nodes(&next) => {
                self.pending = None;
                self.state = GuardState::Fresh;
                return Decision::Refused;
            }
            // The registry says something else: the refusal has done its job.
            _ => self.refused = None,
        }
        let Some(reason) = self.suspicion(current, &next) else {
            return self.apply(next, now, false);
        };
        match &self.pending {
            Some(p) if p.nodes.same_nodes(&next) => {
                if now.duration_since(p.since) >= self.policy.confirm {
                    return self.apply(next, now, true);
                }
            }
            _ => {
                self.pending = Some(Pending {
                    nodes: next,
                    since: now,
                    reason,
                });
            }
        }
        self.state = GuardState::Held;
        Decision::Held
    }

    /// Applies a held update once it has stood, unchallenged, for the whole window.
    ///
    /// Watch-based registries do not repeat an answer that has not changed, so silence after a
    /// held answer counts as the registry standing by it; any other answer resets the window.
    pub fn tick(&mut self, now: Instant) -> Option<NodeSet> {
        let pending = self.pending.as_ref()?;
        if now.duration_since(pending.since) < self.policy.confirm {
            return None;
        }
        let next = pending.nodes.clone();
        match self.apply(next, now, true) {
            Decision::Confirmed(set) => Some(set),
            _ => None,
        }
    }

    /// Applies the held update at once, before its window ends, because every node it removes
    /// is already failing (`why`, kept for operators): holding it keeps only nodes that do not
    /// serve. `None` when nothing is held.
    pub fn apply_replacement(&mut self, now: Instant, why: String) -> Option<NodeSet> {
        let next = self.pending.as_ref()?.nodes.clone();
        self.last_replacement = Some((why, SystemTime::now()));
        self.apply(next, now, true);
        self.current.clone()
    }

    /// Applies the held update now, as an operator asked, without waiting out the window.
    /// `None` when nothing is held.
    pub fn confirm_pending(&mut self, now: Instant) -> Option<NodeSet> {
        let next = self.pending.as_ref()?.nodes.clone();
        match self.apply(next, now, true) {
            Decision::Confirmed(set) => Some(set),
            _ => None,
        }
    }

    /// Discards the held update, as an operator asked: the registry repeating it is refused
    /// ([`Decision::Refused`]) until it answers something else. Returns the discarded set.
    pub fn refuse_pending(&mut self) -> Option<NodeSet> {
        let pending = self.pending.take()?;
        self.refused = Some(pending.nodes.clone());
        if self.current.is_some() {
            self.state = GuardState::Fresh;
        }
        Some(pending.nodes)
    }

    /// The held answer an operator refused, while the registry keeps giving it.
    pub fn refused(&self) -> Option<&NodeSet> {
        self.refused.as_ref()
    }

    /// Makes `set` the current set whatever the registry says (an operator's pin); no update
    /// is held or refused afterwards. The next answer is judged against it.
    pub fn force(&mut self, set: NodeSet) {
        self.current = Some(set);
        self.pending = None;
        self.refused = None;
        if self.state == GuardState::Waiting {
            self.state = GuardState::Restored;
        }
    }

    /// The addresses the held update would remove, if an update is held.
    pub fn held_removals(&self) -> Option<Vec<std::net::SocketAddr>> {
        let pending = self.pending.as_ref()?;
        Some(self.current.as_ref()?.removed_addrs(&pending.nodes))
    }

    /// The last held update applied early by [`LastKnownGood::apply_replacement`]: why, and
    /// when.
    pub fn last_replacement(&self) -> Option<&(String, SystemTime)> {
        self.last_replacement.as_ref()
    }

    fn suspicion(&self, current: &NodeSet, next: &NodeSet) -> Option<String> {
        if current.is_empty() {
            return None;
        }
        if next.is_empty() {
            return Some(format!("would remove all {} nodes", current.len()));
        }
        let removed = current.removed_in(next);
        let share = removed as f64 / current.len() as f64;
        if share > self.policy.max_drop_share {
            return Some(format!(
                "would remove {removed} of {} nodes (more than {:.0}%)",
                current.len(),
                self.policy.max_drop_share * 100.0
            ));
        }
        // Capacity, not addresses: setting most nodes' weight to 0 takes their traffic away as
        // surely as removing them, whichever registry does it.
        let routable = |set: &NodeSet| set.endpoints().iter().filter(|e| e.weight > 0.0).count();
        let (before, after) = (routable(current), routable(next));
        if before == 0 || after >= before {
            return None;
        }
        let lost = (before - after) as f64 / before as f64;
        (lost > self.policy.max_drop_share || after == 0).then(|| {
            format!(
                "would leave {after} of {before} nodes with a positive weight (losing more than {:.0}% of the routable nodes)",
                self.policy.max_drop_share * 100.0
            )
        })
    }

    fn apply(&mut self, next: NodeSet, now: Instant, confirmed: bool) -> Decision {
        self.pending = None;
        self.state = GuardState::Fresh;
        self.last_good = Some(now);
        self.current = Some(next.clone());
        if confirmed {
            Decision::Confirmed(next)
        } else {
            Decision::Applied(next)
        }
    }

    /// The set routing uses now, if any.
    pub fn current(&self) -> Option<&NodeSet> {
        self.current.as_ref()
    }

    /// Where the service stands.
    pub fn state(&self) -> GuardState {
        self.state
    }

    /// The update being held, if any.
    pub fn pending(&self) -> Option<&Pending> {
        self.pending.as_ref()
    }

    /// The most recent registry error and when it happened.
    pub fn last_error(&self) -> Option<&(DiscoveryError, SystemTime)> {
        self.last_error.as_ref()
    }

    /// When the registry last gave an answer that was applied or confirmed the current set.
    pub fn last_good(&self) -> Option<Instant> {
        self.last_good
    }

    /// The thresholds in force.
    pub fn policy(&self) -> GuardPolicy {
        self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ports: &[i64]) -> Result<Vec<Candidate>, DiscoveryError> {
        Ok(ports
            .iter()
            .map(|p| Candidate::new("127.0.0.1", *p))
            .collect())
    }

    fn ports(set: &NodeSet) -> Vec<u16> {
        set.endpoints().iter().map(|e| e.addr.port()).collect()
    }

    fn guard() -> LastKnownGood {
        LastKnownGood::new(GuardPolicy {
            max_drop_share: 0.5,
            confirm: Duration::from_secs(30),
        })
    }

    #[test]
    fn an_operator_confirms_or_refuses_a_held_update() {
        let mut g = guard();
        let now = Instant::now();
        g.offer(nodes(&[1, 2, 3, 4]), now);
        assert_eq!(g.offer(nodes(&[1]), now).0.as_str(), "held");
        let set = g.confirm_pending(now).expect("held");
        assert_eq!(ports(&set), [1]);
        assert_eq!(g.state(), GuardState::Fresh);
        assert!(g.confirm_pending(now).is_none());

        g.offer(nodes(&[1, 2, 3, 4]), now);
        assert_eq!(g.offer(nodes(&[9]), now).0.as_str(), "held");
        assert_eq!(ports(&g.refuse_pending().expect("held")), [9]);
        // The same answer again is refused, past the window too; nothing is held.
        let later = now + Duration::from_secs(60);
        assert_eq!(g.offer(nodes(&[9]), later).0.as_str(), "refused");
        assert!(g.pending().is_none() && g.tick(later).is_none());
        assert_eq!(ports(g.current().expect("set")), [1, 2, 3, 4]);
        // Another answer ends the refusal.
        assert_eq!(g.offer(nodes(&[1, 2, 3]), later).0.as_str(), "applied");
        assert!(g.refused().is_none());
    }

    #[test]
    fn first_answer_applies_even_when_small() {
        let mut g = guard();
        let (d, _) = g.offer(nodes(&[1]), Instant::now());
        assert_eq!(d.as_str(), "applied");
        assert_eq!(g.state(), GuardState::Fresh);
    }

    #[test]
    fn errors_keep_the_current_set_and_mark_it_stale() {
        let mut g = guard();
        let t = Instant::now();
        g.offer(nodes(&[1, 2]), t);
        let err = DiscoveryError::Status {
            registry: "r".into(),
            status: 500,
        };
        let (d, _) = g.offer(Err(err.clone()), t);
        assert_eq!(d, Decision::Rejected);
        assert_eq!(g.state(), GuardState::Stale);
        assert_eq!(ports(g.current().unwrap()), [1, 2]);
        assert_eq!(g.last_error().unwrap().0, err);
        let (d, _) = g.offer(nodes(&[1, 2]), t);
        assert_eq!(d, Decision::Unchanged);
        assert_eq!(g.state(), GuardState::Fresh);
    }

    #[test]
    fn empty_update_is_held_then_confirmed_after_the_window() {
        let mut g = guard();
        let t0 = Instant::now();
        g.offer(nodes(&[1, 2, 3]), t0);
        let (d, _) = g.offer(nodes(&[]), t0);
        assert_eq!(d, Decision::Held);
        assert_eq!(g.state(), GuardState::Held);
        assert_eq!(g.current().unwrap().len(), 3);
        assert!(g.pending().unwrap().reason.contains("all 3"));
        // Repeated inside the window: still held.
        let (d, _) = g.offer(nodes(&[]), t0 + Duration::from_secs(10));
        assert_eq!(d, Decision::Held);
        assert!(g.tick(t0 + Duration::from_secs(29)).is_none());
        // Repeated after the window: applied.
        let (d, _) = g.offer(nodes(&[]), t0 + Duration::from_secs(31));
        assert_eq!(d.as_str(), "confirmed");
        assert!(g.current().unwrap().is_empty());
    }

    #[test]
    fn taking_most_weight_away_is_as_drastic_as_removing_the_nodes() {
        let mut g = guard();
        let t0 = Instant::now();
        g.offer(nodes(&[1, 2, 3, 4]), t0);
        let mut zeroed: Vec<Candidate> = nodes(&[1, 2, 3, 4]).unwrap();
        for c in &mut zeroed[..3] {
            c.weight = 0.0;
        }
        let (d, _) = g.offer(Ok(zeroed.clone()), t0);
        assert_eq!(d, Decision::Held);
        assert!(
            g.pending()
                .unwrap()
                .reason
                .contains("1 of 4 nodes with a positive weight"),
            "{}",
            g.pending().unwrap().reason
        );
        // All to zero at once: held too.
        for c in &mut zeroed {
            c.weight = 0.0;
        }
        assert_eq!(g.offer(Ok(zeroed), t0).0, Decision::Held);
        // One of four to zero (25%): applied at once; uniform rescaling is no loss.
        let mut one = nodes(&[1, 2, 3, 4]).unwrap();
        one[0].weight = 0.0;
        assert_ne!(g.offer(Ok(one), t0).0, Decision::Held);
        let mut heavier = nodes(&[1, 2, 3, 4]).unwrap();
        for c in &mut heavier {
            c.weight = 100.0;
        }
        assert_ne!(g.offer(Ok(heavier), t0).0, Decision::Held);
    }

    #[test]
    fn tick_confirms_a_held_update_the_registry_stood_by() {
        let mut g = guard();
        let t0 = Instant::now();
        g.offer(nodes(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), t0);
        let (d, _) = g.offer(nodes(&[1]), t0);
        assert_eq!(d, Decision::Held);
        assert!(g.pending().unwrap().reason.contains("9 of 10"));
        let set = g.tick(t0 + Duration::from_secs(30)).expect("confirmed");
        assert_eq!(ports(&set), [1]);
        assert_eq!(g.state(), GuardState::Fresh);
    }

    #[test]
    fn a_different_answer_restarts_the_window_and_a_good_one_clears_it() {
        let mut g = guard();
        let t0 = Instant::now();
        g.offer(nodes(&[1, 2, 3, 4]), t0);
        g.offer(nodes(&[1]), t0);
        g.offer(nodes(&[2]), t0 + Duration::from_secs(20));
        assert!(g.tick(t0 + Duration::from_secs(31)).is_none());
        assert!(g.tick(t0 + Duration::from_secs(50)).is_some());

        let mut g = guard();
        g.offer(nodes(&[1, 2, 3, 4]), t0);
        g.offer(nodes(&[]), t0);
        let (d, _) = g.offer(nodes(&[1, 2, 3, 4]), t0);
        assert_eq!(d, Decision::Unchanged);
        assert!(g.pending().is_none());
        assert!(g.tick(t0 + Duration::from_secs(60)).is_none());
    }

    #[test]
    fn removing_at_most_the_allowed_share_applies_at_once() {
        let mut g = guard();
        let t0 = Instant::now();
        g.offer(nodes(&[1, 2, 3, 4]), t0);
        let (d, _) = g.offer(nodes(&[1, 2, 5]), t0);
        assert_eq!(d.as_str(), "applied");
        let (d, _) = g.offer(nodes(&[1, 2, 5, 6, 7, 8]), t0);
        assert_eq!(d.as_str(), "applied");
    }

    #[test]
    fn a_held_replacement_can_be_applied_at_once_and_says_why() {
        let mut g = guard();
        let t0 = Instant::now();
        g.offer(nodes(&[1, 2]), t0);
        assert_eq!(g.held_removals(), None);
        g.offer(nodes(&[3]), t0);
        assert_eq!(g.state(), GuardState::Held);
        let removed: Vec<u16> = g
            .held_removals()
            .unwrap()
            .iter()
            .map(|a| a.port())
            .collect();
        assert_eq!(removed, [1, 2]);
        let set = g.apply_replacement(t0, "failing".into()).unwrap();
        assert_eq!(ports(&set), [3]);
        assert_eq!(g.state(), GuardState::Fresh);
        assert_eq!(g.last_replacement().unwrap().0, "failing");
        assert_eq!(g.apply_replacement(t0, "again".into()), None);
    }

    #[test]
    fn errors_reset_a_pending_window() {
        let mut g = guard();
        let t0 = Instant::now();
        g.offer(nodes(&[1, 2]), t0);
        g.offer(nodes(&[]), t0);
        g.offer(
            Err(DiscoveryError::Transport {
                registry: "r".into(),
                detail: "refused".into(),
            }),
            t0,
        );
        assert!(g.tick(t0 + Duration::from_secs(60)).is_none());
        assert_eq!(g.current().unwrap().len(), 2);
    }

    #[test]
    fn restored_set_stays_restored_until_the_registry_answers() {
        let mut g = guard();
        g.restore(NodeSet::new(vec![crate::Endpoint::new(
            "127.0.0.1:1".parse().unwrap(),
        )]));
        assert_eq!(g.state(), GuardState::Restored);
        g.offer(
            Err(DiscoveryError::Transport {
                registry: "r".into(),
                detail: "down".into(),
            }),
            Instant::now(),
        );
        assert_eq!(g.state(), GuardState::Restored);
        let (d, _) = g.offer(nodes(&[1]), Instant::now());
        assert_eq!(d, Decision::Unchanged);
        assert_eq!(g.state(), GuardState::Fresh);
    }
}
