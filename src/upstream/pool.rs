//! A service's [`Pool`]: a node set with the pickers built for its routable endpoints, built
//! off the request path and swapped in whole.

use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::Authority;
use outrigger_discovery::{Endpoint, NodeSet};

use super::UpstreamSettings;
use crate::balance::load::EndpointLoad;
use crate::balance::{self, PickContext, Picker, Policy};
use crate::by_address::carried;
use crate::health::state::{now_ns, EndpointHealth};
use crate::zone::ZoneOff;

/// What the service keeps per address for as long as the address stays in its node set.
#[derive(Debug, Default, Clone)]
pub struct EndpointState {
    /// Requests in flight and latency estimate.
    pub load: Arc<EndpointLoad>,
    /// Active and passive health.
    pub health: Arc<EndpointHealth>,
}

/// A node set with the picker built for its routable endpoints.
pub struct Pool {
    /// The endpoints the registry gave (validated), for the admin API.
    pub nodes: NodeSet,
    /// Each node's health, in the order of `nodes`.
    pub health: Vec<Arc<EndpointHealth>>,
    /// True when too few endpoints are healthy and health is ignored (panic mode).
    pub panic: bool,
    /// Indices (into `nodes`) of the routable endpoints, as the supervisor compares them.
    pub(super) routable: Vec<usize>,
    /// The routable endpoints: healthy (unless in panic), positive weight, highest tier.
    pub(super) active: Vec<Endpoint>,
    /// Each active endpoint's state.
    states: Vec<EndpointState>,
    /// The picker and authorities for `active`, shared with the next pool when that routes to
    /// the same addresses with the same weights.
    pub(super) selection: Arc<Selection>,
    /// With a subset rule: the active endpoints in the subset, and their picker (`None`: the
    /// subset is empty).
    subset: Option<Part>,
    /// With zone-aware routing in effect: the local zone's and the spill's parts.
    zones: Option<Zones>,
    /// With a zone rule: what it does now.
    zone_view: Option<ZoneView>,
}

/// Some of a pool's active endpoints (a subset, a zone), with their own picker.
struct Part {
    active: Vec<Endpoint>,
    states: Vec<EndpointState>,
    selection: Arc<Selection>,
}

impl Part {
    /// The part of `active` (with `states`) that `chosen` lists, each with the weight it gives;
    /// `None` when it lists none. Reuses `previous`'s picker when it routes alike.
    fn new(
        policy: &Policy,
        (active, states): (&[Endpoint], &[EndpointState]),
        chosen: impl Iterator<Item = (usize, f64)>,
        previous: Option<&Part>,
    ) -> Option<Part> {
        let (active, states): (Vec<Endpoint>, Vec<EndpointState>) = chosen
            .map(|(i, weight)| {
                let mut e = active[i].clone();
                e.weight = weight;
                (e, states[i].clone())
            })
            .unzip();
        if active.is_empty() {
            return None;
        }
        let selection = match previous {
            Some(p) if same_routing(&p.active, &active) => p.selection.clone(),
            _ => Arc::new(Selection::new(policy, &active, &states, None)),
        };
        Some(Part {
            active,
            states,
            selection,
        })
    }

    fn pick_next(&self, ctx: &PickContext<'_>, attempt: usize) -> Option<Picked<'_>> {
        let i = self.selection.picker.pick_next(ctx, attempt)?;
        Some(Picked {
            endpoint: self.active.get(i)?,
            authority: self.selection.authorities.get(i)?,
            state: self.states.get(i)?,
        })
    }
}

/// Zone-aware routing's share of a pool ([`crate::zone`]).
struct Zones {
    /// The local zone's healthy endpoints; `None` when it has none.
    local: Option<Part>,
    /// The other zones' endpoints that take the spill, weighted by their zone's surplus.
    spill: Option<Part>,
    /// A request's draw (uniform in 0..1) below this stays in the zone...
    local_below: f64,
    /// ...one below this spills over; the rest are balanced over every zone
    /// (`OUTRIGGER_ZONE_ROUTING_ENABLED`).
    zoned_below: f64,
    /// The plan's share of zone-routed requests that stay local, for the admin API.
    local_share: f64,
}

impl Zones {
    /// The zone parts for `active`, or why zones do not apply: panic, a hash policy (a key
    /// must stay on its node, as in Envoy, whose ring hash and Maglev ignore zones), or what
    /// [`crate::zone::plan`] says. `None` without a zone rule.
    fn new(
        settings: &UpstreamSettings,
        nodes: &NodeSet,
        (active, states): (&[Endpoint], &[EndpointState]),
        panic: bool,
        previous: Option<&Zones>,
    ) -> Option<Result<Zones, ZoneOff>> {
        let rule = settings.zone.as_ref()?;
        if panic {
            return Some(Err(ZoneOff::Panic));
        }
        if matches!(settings.policy, Policy::RingHash(_) | Policy::Maglev(_)) {
            return Some(Err(ZoneOff::HashPolicy));
        }
        let Some(tier) = active.first().map(|e| e.priority) else {
            return Some(Err(ZoneOff::NoEndpoints));
        };
        let whole: Vec<&Endpoint> = nodes
            .endpoints()
            .iter()
            .filter(|e| e.priority == tier && e.weight > 0.0)
            .collect();
        let plan = match crate::zone::plan(rule, active, &whole) {
            Ok(plan) => plan,
            Err(off) => return Some(Err(off)),
        };
        let policy = &settings.policy;
        let local = plan.local.iter().map(|&i| (i, active[i].weight));
        Some(Ok(Zones {
            local: Part::new(
                policy,
                (active, states),
                local,
                previous.and_then(|p| p.local.as_ref()),
            ),
            spill: Part::new(
                policy,
                (active, states),
                plan.spill.iter().copied(),
                previous.and_then(|p| p.spill.as_ref()),
            ),
            local_below: rule.enabled * plan.local_share,
            zoned_below: rule.enabled,
            local_share: plan.local_share,
        }))
    }

    /// The part a request's draw sends it to; `None`: every zone.
    #[inline]
    fn part(&self) -> Option<&Part> {
        let draw: f64 = rand::random();
        if draw < self.local_below {
            self.local.as_ref()
        } else if draw < self.zoned_below {
            self.spill.as_ref()
        } else {
            None
        }
    }
}

/// What `/upstreams` and the metrics show of a pool's zone-aware routing.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneView {
    /// Why zones do not apply now; `None` while they do.
    pub off: Option<ZoneOff>,
    /// While zones apply: the share (0 to 1) of zone-routed requests kept in the local zone.
    pub local_share: Option<f64>,
    /// The share (0 to 1) of all requests expected to be served in the local zone, whether
    /// zones apply or not (requests balanced over every zone land by weight).
    pub expected_local: f64,
    /// How many healthy endpoints the local zone has.
    pub local_endpoints: usize,
    /// How many endpoints of other zones take the spill.
    pub spill_endpoints: usize,
}

impl ZoneView {
    /// What zones do for a pool whose routable endpoints are `active`, with the local zone
    /// `local`.
    fn new(local: &str, zones: &Result<Zones, ZoneOff>, active: &[Endpoint]) -> ZoneView {
        // Where requests balanced over every zone land.
        let spread = crate::zone::local_weight_share(local, active);
        match zones {
            Ok(z) => ZoneView {
                off: None,
                local_share: Some(tidy(z.local_share)),
                expected_local: tidy(z.local_below + (1.0 - z.zoned_below) * spread),
                local_endpoints: z.local.as_ref().map_or(0, |p| p.active.len()),
                spill_endpoints: z.spill.as_ref().map_or(0, |p| p.active.len()),
            },
            Err(off) => ZoneView {
                off: Some(off.clone()),
                local_share: None,
                expected_local: tidy(spread),
                local_endpoints: 0,
                spill_endpoints: 0,
            },
        }
    }
}

/// `x` rounded to a millionth, and never `-0`.
fn tidy(x: f64) -> f64 {
    let r = (x * 1e6).round() / 1e6;
    if r == 0.0 {
        0.0
    } else {
        r
    }
}

/// What a pool builds from its active endpoints' addresses and weights alone, and nothing else.
///
/// Registries often publish changes that leave those alone: metadata, a check's output, a
/// Consul index bump, Eureka's timestamps. Such an update reuses the selection instead of
/// rebuilding it, which for a hash ring of 10,000 nodes is most of an update's cost
/// (bench/churn.sh).
pub(super) struct Selection {
    picker: Box<dyn Picker>,
    /// Each active endpoint's address as a URI authority, built once.
    pub(super) authorities: Vec<Authority>,
}

impl Selection {
    /// Builds the selection for `active`, reusing what `previous` (with the endpoints it was
    /// built for) already has for the addresses that stay.
    fn new(
        policy: &Policy,
        active: &[Endpoint],
        states: &[EndpointState],
        previous: Option<(&[Endpoint], &Selection)>,
    ) -> Self {
        let loads: Vec<Arc<EndpointLoad>> = states.iter().map(|s| s.load.clone()).collect();
        Selection {
            picker: balance::rebuild(
                policy,
                active,
                &loads,
                previous.map(|(_, p)| p.picker.as_ref()),
            ),
            authorities: authorities(active, previous.map(|(e, p)| (e, &*p.authorities))),
        }
    }
}

/// The URI authority of each of `active`, taken from `previous` for addresses it had: formatting
/// and parsing 10,000 addresses was a tenth of a rolling deploy's update (bench/HISTORY.md).
/// Both lists are sorted by address, so one merge pass pairs them.
fn authorities(
    active: &[Endpoint],
    previous: Option<(&[Endpoint], &[Authority])>,
) -> Vec<Authority> {
    let (old_endpoints, old_authorities) = previous.unwrap_or_default();
    let old = old_endpoints.iter().map(|e| e.addr).zip(old_authorities);
    carried(old, active.iter().map(|e| e.addr))
        .map(|(addr, kept)| match kept {
            Some(authority) => authority.clone(),
            None => Authority::try_from(addr.to_string())
                .expect("a socket address is a valid URI authority"),
        })
        .collect()
}

/// True when `a` and `b` route alike: the same addresses, in order, with the same weights.
/// Same addresses also mean the same per-endpoint state, since the book keeps an address's
/// state for as long as it stays.
fn same_routing(a: &[Endpoint], b: &[Endpoint]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(a, b)| a.addr == b.addr && a.weight.to_bits() == b.weight.to_bits())
}

/// Each endpoint's state by address, sorted like a [`NodeSet`]: the load and health an
/// address has built up outlive the node sets that list it.
pub(super) type Book = Vec<(SocketAddr, EndpointState)>;

/// Makes `book` list exactly the addresses of `nodes`, keeping the state of those that stay
/// and starting fresh ones for new addresses (pending their first probe when `new_wait`), and
/// returns the states in the order of `nodes`.
///
/// One merge pass of two sorted lists: a hash map cost a SipHash and a lookup per endpoint,
/// and forgetting departed addresses a binary search each (a fifth of a 10,000-endpoint
/// update's CPU between them, bench/HISTORY.md).
fn carry_states(book: &mut Book, nodes: &NodeSet, new_wait: bool) -> Vec<EndpointState> {
    let addrs = nodes.endpoints().iter().map(|e| e.addr);
    // A node that joins a running service starts slowly (when slow start is on); the first
    // set is trusted at full weight, or nothing would take traffic at start.
    let joining = !book.is_empty();
    let now = now_ns();
    let fresh = || {
        let state = if new_wait {
            EndpointState {
                health: Arc::new(EndpointHealth::pending()),
                ..EndpointState::default()
            }
        } else {
            EndpointState::default()
        };
        if joining {
            state.health.start_warming(now);
        }
        state
    };
    *book = carried(std::mem::take(book), addrs)
        .map(|(addr, state)| (addr, state.unwrap_or_else(fresh)))
        .collect();
    book.iter().map(|(_, state)| state.clone()).collect()
}

/// The endpoint chosen for one request, with what the request path needs of it.
pub struct Picked<'a> {
    /// The endpoint.
    pub endpoint: &'a Endpoint,
    /// Its address as a URI authority.
    pub authority: &'a Authority,
    /// Its load and health.
    pub state: &'a EndpointState,
}

/// Which endpoints of `nodes` may take traffic now, and whether the service is in panic.
///
/// The tier is chosen by health first: the highest-priority tier (lowest number) whose healthy
/// share of positive-weight endpoints reaches `panic_threshold` serves, with its healthy
/// endpoints, so that a dead primary tier fails over to a healthy standby instead of dragging
/// it into panic. Only when no tier is healthy enough is the service in panic (Envoy's panic
/// mode), judged within the tier with the largest healthy share (the higher priority on ties):
/// its every positive-weight endpoint takes traffic, health ignored, rather than crushing the
/// few left.
pub(super) fn routable(
    nodes: &NodeSet,
    health: &[Arc<EndpointHealth>],
    panic_threshold: f64,
    now: u64,
) -> (Vec<usize>, bool) {
    // Endpoints pending their first probe count for nothing, unless nothing else is there.
    let settled = |i: usize| !health[i].is_pending();
    if (0..nodes.len()).any(settled) {
        choose_tier(nodes, health, panic_threshold, now, &settled)
    } else {
        choose_tier(nodes, health, panic_threshold, now, &|_| true)
    }
}

/// [`routable`] over the endpoints that `counted` admits.
fn choose_tier(
    nodes: &NodeSet,
    health: &[Arc<EndpointHealth>],
    panic_threshold: f64,
    now: u64,
    counted: &dyn Fn(usize) -> bool,
) -> (Vec<usize>, bool) {
    let endpoints = nodes.endpoints();
    let weighted = |i: usize| endpoints[i].weight > 0.0 && counted(i);
    let mut tiers: Vec<u32> = (0..endpoints.len())
        .filter(|&i| weighted(i))
        .map(|i| endpoints[i].priority)
        .collect();
    tiers.sort_unstable();
    tiers.dedup();
    let in_tier = |tier: u32| {
        (0..endpoints.len()).filter(move |&i| weighted(i) && endpoints[i].priority == tier)
    };
    // (tier, healthy share) of the best tier so far, for panic.
    let mut fallback: Option<(u32, f64)> = None;
    for &tier in &tiers {
        let weighted = in_tier(tier).count();
        let healthy: Vec<usize> = in_tier(tier).filter(|&i| !health[i].is_down(now)).collect();
        let share = healthy.len() as f64 / weighted as f64;
        if !healthy.is_empty() && share >= panic_threshold {
            return (healthy, false);
        }
        if fallback.is_none_or(|(_, best)| share > best) {
            fallback = Some((tier, share));
        }
    }
    match fallback {
        Some((tier, _)) => (in_tier(tier).collect(), true),
        None => (Vec::new(), false),
    }
}

impl Pool {
    /// Builds the pool for `nodes`, taking each endpoint's state from `book` (adding state for
    /// new addresses) and reusing `previous`'s selection if it routes alike. Done off the
    /// request path.
    pub(super) fn new(
        nodes: NodeSet,
        settings: &UpstreamSettings,
        book: &mut Book,
        previous: Option<&Pool>,
        new_wait: bool,
    ) -> Self {
        let (policy, panic_threshold) = (&settings.policy, settings.health.panic_threshold);
        let all = carry_states(book, &nodes, new_wait);
        let health: Vec<Arc<EndpointHealth>> = all.iter().map(|s| s.health.clone()).collect();
        let now = now_ns();
        let (chosen, panic) = routable(&nodes, &health, panic_threshold, now);
        // Nodes in slow start take a share of their weight that grows over the window.
        let active: Vec<Endpoint> = chosen
            .iter()
            .map(|&i| {
                let mut e = nodes.endpoints()[i].clone();
                let share = health[i].warm_share(now, settings.slow_start);
                if share < 1.0 {
                    e.weight *= share;
                }
                e
            })
            .collect();
        let states: Vec<EndpointState> = chosen.iter().map(|&i| all[i].clone()).collect();
        let selection = match previous {
            Some(p) if same_routing(&p.active, &active) => p.selection.clone(),
            _ => Arc::new(Selection::new(
                policy,
                &active,
                &states,
                previous.map(|p| (&*p.active, &*p.selection)),
            )),
        };
        let subset = settings.subset.as_ref().and_then(|rule| {
            let members = (0..active.len())
                .filter(|&i| rule.has(&active[i].meta))
                .map(|i| (i, active[i].weight));
            let previous = previous.and_then(|p| p.subset.as_ref());
            Part::new(policy, (&active, &states), members, previous)
        });
        let zoned = Zones::new(
            settings,
            &nodes,
            (&active, &states),
            panic,
            previous.and_then(|p| p.zones.as_ref()),
        );
        let zone_view = settings
            .zone
            .as_ref()
            .zip(zoned.as_ref())
            .map(|(rule, z)| ZoneView::new(&rule.local, z, &active));
        let zones = zoned.and_then(Result::ok);
        Pool {
            nodes,
            health,
            panic,
            routable: chosen,
            active,
            states,
            selection,
            subset,
            zones,
            zone_view,
        }
    }

    /// What the service's zone rule does in this pool; `None` without one.
    pub fn zone_view(&self) -> Option<&ZoneView> {
        self.zone_view.as_ref()
    }

    /// Whether the subset has endpoints to route to.
    pub fn has_subset(&self) -> bool {
        self.subset.is_some()
    }

    /// How many active endpoints are in the subset.
    pub fn subset_len(&self) -> usize {
        self.subset.as_ref().map_or(0, |s| s.active.len())
    }

    /// [`Pool::pick_next`] among the subset's endpoints.
    pub fn pick_next_in_subset(&self, ctx: &PickContext<'_>, attempt: usize) -> Option<Picked<'_>> {
        self.subset.as_ref()?.pick_next(ctx, attempt)
    }

    /// Chooses the endpoint for one request.
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<Picked<'_>> {
        self.pick_next(ctx, 0)
    }

    /// The endpoint for the request's `attempt`-th draw ([`Picker::pick_next`]): a hash policy
    /// walks on to the next distinct endpoint instead of finding the same one again. With
    /// zone-aware routing, each draw first chooses the local zone, the spill or every zone.
    pub fn pick_next(&self, ctx: &PickContext<'_>, attempt: usize) -> Option<Picked<'_>> {
        if let Some(zones) = &self.zones {
            if let Some(picked) = zones.part().and_then(|p| p.pick_next(ctx, attempt)) {
                return Some(picked);
            }
        }
        let i = self.selection.picker.pick_next(ctx, attempt)?;
        Some(Picked {
            endpoint: self.active.get(i)?,
            authority: self.selection.authorities.get(i)?,
            state: self.states.get(i)?,
        })
    }

    /// How many endpoints are ejected now.
    pub fn ejected(&self, now: u64) -> usize {
        self.health
            .iter()
            .filter(|h| h.ejected_until(now).is_some())
            .count()
    }
}
