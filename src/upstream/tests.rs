//! Pools built from node sets and health: tiers, panic, reuse across updates.
use super::*;
use crate::health::state::EndpointHealth;
use outrigger_discovery::Endpoint;

fn upstream() -> Upstream {
    let settings = UpstreamSettings {
        policy: "ring_hash:client_ip".parse().expect("a valid policy"),
        max_requests: 100,
        max_pending_connects: 10,
        ..UpstreamSettings::default()
    };
    Upstream::new("orders".into(), "test".into(), settings)
}

fn nodes(ports: &[u16], weight: f64, rev: &str) -> NodeSet {
    NodeSet::new(
        ports
            .iter()
            .map(|&p| {
                let mut e = Endpoint::new(SocketAddr::from(([127, 0, 0, 1], p)));
                e.weight = weight;
                let mut meta = outrigger_discovery::EndpointMeta::default();
                meta.metadata.insert("rev".into(), rev.into());
                e.meta = Arc::new(meta);
                e
            })
            .collect(),
    )
}

/// Endpoints on ports `1..=n` with the given priorities, and their health (`down` ports
/// failed their active check).
fn tiered(priorities: &[u32], down: &[u16]) -> (NodeSet, Vec<Arc<EndpointHealth>>) {
    let set = NodeSet::new(
        priorities
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let mut e = Endpoint::new(SocketAddr::from(([127, 0, 0, 1], i as u16 + 1)));
                e.priority = p;
                e
            })
            .collect(),
    );
    let health = set
        .endpoints()
        .iter()
        .map(|e| {
            let h = Arc::new(EndpointHealth::default());
            if down.contains(&e.addr.port()) {
                h.set_active(crate::health::state::Active::Unhealthy);
            }
            h
        })
        .collect();
    (set, health)
}

fn ports_of(set: &NodeSet, chosen: &[usize]) -> Vec<u16> {
    chosen
        .iter()
        .map(|&i| set.endpoints()[i].addr.port())
        .collect()
}

#[test]
fn a_dead_primary_tier_fails_over_to_a_healthy_standby_without_panic() {
    let now = now_ns();
    // Three dead primaries, one healthy standby.
    let (set, health) = tiered(&[0, 0, 0, 1], &[1, 2, 3]);
    let (chosen, panic) = routable(&set, &health, 0.5, now);
    assert_eq!((ports_of(&set, &chosen), panic), (vec![4], false));
    // Primaries healthy enough: they serve, the standby waits.
    let (set, health) = tiered(&[0, 0, 0, 0, 1], &[1, 2]);
    let (chosen, panic) = routable(&set, &health, 0.5, now);
    assert_eq!((ports_of(&set, &chosen), panic), (vec![3, 4], false));
    // No tier healthy enough: panic within the healthiest tier, all its nodes.
    let (set, health) = tiered(&[0, 0, 0, 1, 1], &[1, 2, 4, 5]);
    let (chosen, panic) = routable(&set, &health, 0.5, now);
    assert_eq!((ports_of(&set, &chosen), panic), (vec![1, 2, 3], true));
    // Nothing healthy anywhere: panic in the highest tier.
    let (set, health) = tiered(&[0, 1], &[1, 2]);
    let (chosen, panic) = routable(&set, &health, 0.5, now);
    assert_eq!((ports_of(&set, &chosen), panic), (vec![1], true));
}

#[test]
fn a_metadata_only_update_keeps_the_selection_and_shows_the_new_metadata() {
    let u = upstream();
    u.publish(nodes(&[1001, 1002, 1003], 1.0, "a"));
    let before = u.pool.load_full();
    u.publish(nodes(&[1001, 1002, 1003], 1.0, "b"));
    let after = u.pool.load_full();
    assert!(Arc::ptr_eq(&before.selection, &after.selection));
    assert_eq!(after.active[0].meta.metadata["rev"], "b");

    // A weight or membership change builds a new one.
    u.publish(nodes(&[1001, 1002, 1003], 2.0, "b"));
    let reweighted = u.pool.load_full();
    assert!(!Arc::ptr_eq(&after.selection, &reweighted.selection));
    u.publish(nodes(&[1001, 1002], 2.0, "b"));
    assert!(!Arc::ptr_eq(
        &reweighted.selection,
        &u.pool.load_full().selection
    ));
}

#[test]
fn endpoint_state_follows_the_address_across_updates() {
    let u = upstream();
    u.publish(nodes(&[1001, 1003, 1005], 1.0, "a"));
    let first = u.pool.load_full();
    // 1001 leaves, 1002 and 1006 join, 1003 and 1005 stay.
    u.publish(nodes(&[1002, 1003, 1005, 1006], 1.0, "a"));
    let second = u.pool.load_full();
    let same = |a: usize, b: usize| Arc::ptr_eq(&first.health[a], &second.health[b]);
    assert!(
        same(1, 1) && same(2, 2),
        "staying addresses keep their state"
    );
    assert!(
        !(0..3).any(|a| same(a, 0) || same(a, 3)),
        "new addresses start fresh"
    );
    // Authorities carried over or made anew, each still names its own endpoint.
    let named: Vec<String> = second
        .selection
        .authorities
        .iter()
        .map(|a| a.to_string())
        .collect();
    let addrs: Vec<String> = second.active.iter().map(|e| e.addr.to_string()).collect();
    assert_eq!(named, addrs);
    let book = u.book.lock().expect("book");
    let addrs: Vec<u16> = book.iter().map(|(a, _)| a.port()).collect();
    assert_eq!(
        addrs,
        [1002, 1003, 1005, 1006],
        "departed addresses are forgotten"
    );
    drop(book);

    // An address that left and came back starts fresh, not from its old state.
    u.publish(nodes(&[1001, 1003], 1.0, "a"));
    assert!(!Arc::ptr_eq(
        &first.health[0],
        &u.pool.load_full().health[0]
    ));
}

#[tokio::test]
async fn a_replaced_pool_is_freed_by_the_control_plane_not_by_its_last_reader() {
    let u = upstream();
    u.publish(nodes(&[1001, 1002], 1.0, "a"));
    let reader = u.pool.load_full();
    let old = Arc::downgrade(&reader);
    u.publish(nodes(&[1001, 1003], 1.0, "a"));
    drop(reader);
    assert!(old.upgrade().is_some(), "the reader's drop freed the pool");
    for _ in 0..100 {
        if old.upgrade().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the replaced pool was never freed");
}
