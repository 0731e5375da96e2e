//! Zone-aware routing (`OUTRIGGER_ZONE`): requests prefer the endpoints in the sidecar's own
//! zone while that zone has enough healthy capacity, and spill over to other zones in
//! proportion as it loses capacity. Envoy's zone-aware routing is the model
//! (`zone_aware_lb_config`: `min_cluster_size`, `routing_enabled`), computed once per pool.
//!
//! Envoy compares the share of the *callers* in each zone with the share of healthy upstream
//! endpoints there. A sidecar does not see its fellow callers, so Outrigger takes the callers
//! to be spread over zones as the service's endpoints are when all are healthy (by weight):
//! with every endpoint healthy all traffic stays in the zone; when the zone holds a smaller
//! share of the healthy weight than of the whole, it keeps `healthy share / whole share` of
//! the requests, and the rest goes to the zones that hold more than their share, in proportion
//! to that surplus, so no zone is asked for more than it has.

use outrigger_discovery::Endpoint;

/// One service's zone-aware routing settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneRouting {
    /// The sidecar's zone (`OUTRIGGER_ZONE`), compared with each endpoint's zone label.
    pub local: String,
    /// Fewer endpoints than this in the tier in use and zones are ignored
    /// (`OUTRIGGER_ZONE_MIN_CLUSTER_SIZE`, Envoy's `min_cluster_size`, default 6): with few
    /// nodes, one node's loss moves too large a share.
    pub min_cluster_size: usize,
    /// The share (0 to 1) of requests routed by zone (`OUTRIGGER_ZONE_ROUTING_ENABLED`,
    /// Envoy's `routing_enabled`); the others are balanced over every zone.
    pub enabled: f64,
}

/// Where a pool sends requests by zone: indices into its active endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct ZonePlan {
    /// The active endpoints in the local zone.
    pub local: Vec<usize>,
    /// The share (0 to 1) of zone-routed requests that stay in the local zone.
    pub local_share: f64,
    /// The active endpoints of the other zones that take the rest, each with its weight
    /// scaled to its zone's surplus capacity; empty when nothing spills.
    pub spill: Vec<(usize, f64)>,
}

/// Why zones do not apply to a pool: requests are balanced over every zone.
#[derive(Debug, Clone, PartialEq)]
pub enum ZoneOff {
    /// `OUTRIGGER_ZONE_ROUTING_ENABLED` is 0.
    Disabled,
    /// The tier in use has fewer endpoints than the minimum cluster size.
    TooFew {
        /// Endpoints in the tier.
        endpoints: usize,
        /// `OUTRIGGER_ZONE_MIN_CLUSTER_SIZE`.
        min: usize,
    },
    /// No endpoint of the tier in use is in the local zone.
    NoneInZone,
    /// Nothing is routable.
    NoEndpoints,
    /// The service is in panic: every endpoint takes traffic.
    Panic,
    /// A hash policy keeps each key on its node.
    HashPolicy,
}

impl std::fmt::Display for ZoneOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ZoneOff::Disabled => f.write_str("OUTRIGGER_ZONE_ROUTING_ENABLED is 0"),
            ZoneOff::TooFew { endpoints, min } => write!(
                f,
                "{endpoints} endpoints in the tier in use, fewer than OUTRIGGER_ZONE_MIN_CLUSTER_SIZE ({min})"
            ),
            ZoneOff::NoneInZone => f.write_str("no endpoint of the tier in use is in the zone"),
            ZoneOff::NoEndpoints => f.write_str("no endpoint takes traffic"),
            ZoneOff::Panic => f.write_str("the service is in panic"),
            ZoneOff::HashPolicy => f.write_str("a hash policy keeps each key on its node"),
        }
    }
}

/// The share (0 to 1) of the weight of `active` that is in the local zone: where requests
/// balanced over every zone land.
pub fn local_weight_share(local: &str, active: &[Endpoint]) -> f64 {
    let total: f64 = active.iter().map(|e| e.weight).sum();
    let here: f64 = active
        .iter()
        .filter(|e| e.meta.zone.as_deref() == Some(local))
        .map(|e| e.weight)
        .sum();
    if total > 0.0 {
        here / total
    } else {
        0.0
    }
}

/// The zone plan for `active` (the healthy endpoints routed to, with their weights in use)
/// out of `tier` (every positive-weight endpoint of the same priority tier, healthy or not,
/// at full weight), or why zones do not apply: no routing by zone at all (`enabled` 0), too
/// few endpoints, none of the tier in the local zone.
pub fn plan(
    rule: &ZoneRouting,
    active: &[Endpoint],
    tier: &[&Endpoint],
) -> Result<ZonePlan, ZoneOff> {
    if rule.enabled <= 0.0 {
        return Err(ZoneOff::Disabled);
    }
    if tier.len() < rule.min_cluster_size.max(1) {
        return Err(ZoneOff::TooFew {
            endpoints: tier.len(),
            min: rule.min_cluster_size,
        });
    }
    let zone_of = |e: &Endpoint| e.meta.zone.clone().unwrap_or_default();
    let is_local = |e: &Endpoint| e.meta.zone.as_deref() == Some(rule.local.as_str());
    let whole_total: f64 = tier.iter().map(|e| e.weight).sum();
    let whole_local: f64 = tier.iter().filter(|e| is_local(e)).map(|e| e.weight).sum();
    if whole_local <= 0.0 || whole_total <= 0.0 {
        return Err(ZoneOff::NoneInZone);
    }
    let healthy_total: f64 = active.iter().map(|e| e.weight).sum();
    if healthy_total <= 0.0 {
        return Err(ZoneOff::NoEndpoints);
    }
    let local: Vec<usize> = (0..active.len())
        .filter(|&i| is_local(&active[i]))
        .collect();
    let healthy_local: f64 = local.iter().map(|&i| active[i].weight).sum();
    let expected = whole_local / whole_total;
    let have = healthy_local / healthy_total;
    if have >= expected {
        return Ok(ZonePlan {
            local,
            local_share: 1.0,
            spill: Vec::new(),
        });
    }
    // Each other zone's surplus: its share of the healthy weight over its share of the whole.
    let mut zones: Vec<(String, f64, f64)> = Vec::new(); // (zone, healthy weight, whole weight)
    for e in active.iter().filter(|e| !is_local(e)) {
        add(&mut zones, zone_of(e), e.weight, 0.0);
    }
    for e in tier.iter().filter(|e| !is_local(e)) {
        add(&mut zones, zone_of(e), 0.0, e.weight);
    }
    let surplus =
        |healthy: f64, whole: f64| (healthy / healthy_total - whole / whole_total).max(0.0);
    let spill: Vec<(usize, f64)> = (0..active.len())
        .filter(|&i| !is_local(&active[i]))
        .filter_map(|i| {
            let zone = zone_of(&active[i]);
            let &(_, healthy, whole) = zones.iter().find(|(z, _, _)| *z == zone)?;
            let weight = active[i].weight / healthy * surplus(healthy, whole);
            (weight > 0.0).then_some((i, weight))
        })
        .collect();
    Ok(ZonePlan {
        local,
        local_share: have / expected,
        spill,
    })
}

fn add(zones: &mut Vec<(String, f64, f64)>, zone: String, healthy: f64, whole: f64) {
    match zones.iter_mut().find(|(z, _, _)| *z == zone) {
        Some(z) => {
            z.1 += healthy;
            z.2 += whole;
        }
        None => zones.push((zone, healthy, whole)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_discovery::EndpointMeta;
    use std::sync::Arc;

    fn node(i: u16, zone: &str) -> Endpoint {
        let mut e = Endpoint::new(format!("127.0.0.1:{}", 8000 + i).parse().unwrap());
        e.meta = Arc::new(EndpointMeta {
            zone: Some(zone.into()),
            ..EndpointMeta::default()
        });
        e
    }

    fn rule() -> ZoneRouting {
        ZoneRouting {
            local: "a".into(),
            min_cluster_size: 6,
            enabled: 1.0,
        }
    }

    /// Two nodes in each of zones a, b, c.
    fn six() -> Vec<Endpoint> {
        ["a", "a", "b", "b", "c", "c"]
            .iter()
            .enumerate()
            .map(|(i, z)| node(i as u16, z))
            .collect()
    }

    #[test]
    fn all_healthy_stays_local() {
        let all = six();
        let tier: Vec<&Endpoint> = all.iter().collect();
        let p = plan(&rule(), &all, &tier).unwrap();
        assert_eq!(
            (p.local, p.local_share, p.spill.len()),
            (vec![0, 1], 1.0, 0)
        );
    }

    #[test]
    fn a_zone_losing_half_spills_in_proportion_to_the_others_surplus() {
        let all = six();
        let tier: Vec<&Endpoint> = all.iter().collect();
        // One of a's two nodes is down: a holds 1/5 of the healthy weight against 1/3 of the
        // whole, so it keeps 3/5 of the requests; b and c each hold 2/5 - 1/3 = 1/15 extra.
        let active: Vec<Endpoint> = all[1..].to_vec();
        let p = plan(&rule(), &active, &tier).unwrap();
        assert_eq!(p.local, vec![0]);
        assert!((p.local_share - 0.6).abs() < 1e-9, "{}", p.local_share);
        let spill: f64 = p.spill.iter().map(|(_, w)| w).sum();
        assert!((spill - 2.0 / 15.0).abs() < 1e-9, "{spill}");
        assert_eq!(p.spill.len(), 4);
        // b lost a node too: its surplus is gone, c takes the whole spill.
        let active: Vec<Endpoint> = vec![
            all[1].clone(),
            all[3].clone(),
            all[4].clone(),
            all[5].clone(),
        ];
        let p = plan(&rule(), &active, &tier).unwrap();
        let zones: Vec<u16> = p
            .spill
            .iter()
            .map(|(i, _)| active[*i].addr.port())
            .collect();
        assert_eq!(zones, [8004, 8005]);
    }

    #[test]
    fn a_zone_with_nothing_healthy_spills_everything() {
        let all = six();
        let tier: Vec<&Endpoint> = all.iter().collect();
        let p = plan(&rule(), &all[2..], &tier).unwrap();
        assert_eq!((p.local.len(), p.local_share), (0, 0.0));
        assert_eq!(p.spill.len(), 4);
    }

    #[test]
    fn off_below_the_minimum_size_without_local_nodes_or_when_disabled() {
        let all = six();
        let tier: Vec<&Endpoint> = all.iter().collect();
        let small = ZoneRouting {
            min_cluster_size: 7,
            ..rule()
        };
        assert_eq!(
            plan(&small, &all, &tier),
            Err(ZoneOff::TooFew {
                endpoints: 6,
                min: 7
            })
        );
        let elsewhere = ZoneRouting {
            local: "d".into(),
            ..rule()
        };
        assert_eq!(plan(&elsewhere, &all, &tier), Err(ZoneOff::NoneInZone));
        let disabled = ZoneRouting {
            enabled: 0.0,
            ..rule()
        };
        assert_eq!(plan(&disabled, &all, &tier), Err(ZoneOff::Disabled));
    }

    #[test]
    fn weights_count_as_capacity() {
        // Zone a holds one node of weight 4 and zone b two of weight 1 (a's whole share: 2/3).
        let mut all = vec![node(0, "a"), node(1, "b"), node(2, "b")];
        all[0].weight = 4.0;
        let tier: Vec<&Endpoint> = all.iter().collect();
        let r = ZoneRouting {
            min_cluster_size: 1,
            ..rule()
        };
        // a's node at half weight (slow start): a holds 2/4 of the healthy weight.
        let mut active = all.clone();
        active[0].weight = 2.0;
        let p = plan(&r, &active, &tier).unwrap();
        assert!((p.local_share - 0.75).abs() < 1e-9, "{}", p.local_share);
    }
}
