//! Fleet routing end to end: zone-aware routing over labelled loopback nodes, and services fed
//! by several registries at once (a migration), with one registry failing or sending garbage.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use outrigger_integration::client;
use outrigger_integration::consul::{ConsulEmulator, Garbage};
use outrigger_integration::eureka::EurekaEmulator;
use outrigger_integration::process::run_to_exit;
use outrigger_integration::wait::until;
use outrigger_integration::{NodeFile, Outrigger, TestUpstream};
use serde_json::Value;

fn bin() -> &'static Path {
    outrigger_integration::process::binary_under_test(env!("CARGO_BIN_EXE_outrigger"))
}

/// Requests per zone (the first letter of each node's name) in `seen`, as shares of the whole.
fn by_zone(seen: &HashMap<String, usize>) -> HashMap<char, f64> {
    let total: usize = seen.values().sum();
    let mut zones = HashMap::new();
    for (node, n) in seen {
        let zone = node.chars().next().unwrap_or('?');
        *zones.entry(zone).or_default() += *n as f64 / total as f64;
    }
    zones
}

fn share(zones: &HashMap<char, f64>, zone: char) -> f64 {
    zones.get(&zone).copied().unwrap_or(0.0)
}

/// Waits until `name`'s zone plan keeps `local_share` of its requests in the zone.
async fn wait_for_local_share(o: &Outrigger, name: &str, local_share: f64) {
    until(
        &format!("{name}'s local share to be {local_share}"),
        Duration::from_secs(10),
        || async {
            let s = o.service(name).await;
            s["zone_routing"]["local_share"]
                .as_f64()
                .is_some_and(|got| (got - local_share).abs() < 1e-6)
        },
    )
    .await;
}

/// OUTRIGGER_ZONE=a over two nodes in each of zones a, b and c: all traffic stays in a while
/// both of a's nodes are healthy; with one down, a keeps 3/5 of the requests and b and c take
/// 1/5 each (each holds 2/5 of the healthy capacity against 1/3 of the whole); with both down,
/// everything spills. The same nodes under a service whose minimum cluster size is not met
/// spread over every zone: the control that shows the counts can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_keep_traffic_local_and_spill_in_proportion_as_capacity_is_lost() {
    let mut nodes = Vec::new();
    for name in ["a1", "a2", "b1", "b2", "c1", "c2"] {
        nodes.push(TestUpstream::start(name).await);
    }
    let list: Vec<String> = nodes
        .iter()
        .zip(["a", "a", "b", "b", "c", "c"])
        .map(|(n, zone)| format!(r#"{{"address": "{}", "zone": "{zone}"}}"#, n.addr))
        .collect();
    let file = NodeFile::new();
    file.write(&[("orders", &list), ("users", &list)]);
    let mut o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders,users".into()),
            ("OUTRIGGER_DISCOVERY", file.url()),
            ("OUTRIGGER_ZONE", "a".into()),
            ("OUTRIGGER_ZONE_MIN_CLUSTER_SIZE_USERS", "7".into()),
            (
                "OUTRIGGER_HC",
                "http:/healthz?interval=100ms&unhealthy=1&healthy=1".into(),
            ),
        ],
    )
    .await;
    o.wait_for("/ready", Duration::from_secs(10)).await;
    wait_for_local_share(&o, "orders", 1.0).await;

    let zones = by_zone(&o.served("orders", 200).await);
    assert_eq!(share(&zones, 'a'), 1.0, "all healthy: {zones:?}");
    let control = o.served("users", 300).await;
    assert_eq!(control.len(), 6, "below the minimum size: {control:?}");
    let users = o.service("users").await;
    assert_eq!(users["zone_routing"]["active"], false, "{users}");
    let why = users["zone_routing"]["off_because"].as_str().unwrap_or("");
    assert!(
        why.contains("fewer than OUTRIGGER_ZONE_MIN_CLUSTER_SIZE (7)"),
        "{users}"
    );
    assert_eq!(users["settings"]["zone"]["min_cluster_size"], 7, "{users}");

    // One of a's nodes fails its checks.
    nodes[0].set_healthy(false);
    wait_for_local_share(&o, "orders", 0.6).await;
    let seen = o.served("orders", 1000).await;
    assert_eq!(seen.get("a1"), None, "a1 is down: {seen:?}");
    let zones = by_zone(&seen);
    assert!((0.53..=0.67).contains(&share(&zones, 'a')), "{zones:?}");
    for zone in ['b', 'c'] {
        assert!((0.14..=0.26).contains(&share(&zones, zone)), "{zones:?}");
    }
    let s = o.service("orders").await;
    assert_eq!(s["zone_routing"]["local_endpoints"], 1, "{s}");
    assert_eq!(s["zone_routing"]["spill_endpoints"], 4, "{s}");
    let metrics = o.metrics().await;
    assert!(
        metrics.contains("outrigger_zone_local_share{service=\"orders\"} 0.6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("outrigger_zone_routing_active{service=\"users\"} 0"),
        "{metrics}"
    );

    // The zone has nothing healthy left: every request spills.
    nodes[1].set_healthy(false);
    wait_for_local_share(&o, "orders", 0.0).await;
    let zones = by_zone(&o.served("orders", 200).await);
    assert_eq!(share(&zones, 'a'), 0.0, "{zones:?}");
    let metrics = o.metrics().await;
    assert!(
        metrics.contains("outrigger_zone_local_share{service=\"orders\"} 0\n"),
        "never -0: {metrics}"
    );
    assert!(
        share(&zones, 'b') > 0.3 && share(&zones, 'c') > 0.3,
        "{zones:?}"
    );

    // Back to health: back home.
    nodes[0].set_healthy(true);
    nodes[1].set_healthy(true);
    wait_for_local_share(&o, "orders", 1.0).await;
    let zones = by_zone(&o.served("orders", 100).await);
    assert_eq!(share(&zones, 'a'), 1.0, "{zones:?}");
}

/// One service fed by Eureka and Consul at once, as during a migration, while another service
/// is fed by Eureka alone (the default source, shared by both). Nodes are merged by address;
/// while either registry fails or sends garbage its last nodes stay and the other's updates
/// go on being applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_merges_two_registries_and_survives_either_ones_garbage() {
    let old = TestUpstream::start("old").await;
    let both = TestUpstream::start("both").await;
    let new = TestUpstream::start("new").await;
    let newer = TestUpstream::start("newer").await;
    let user = TestUpstream::start("user").await;
    let eureka = EurekaEmulator::start().await;
    let consul = ConsulEmulator::start().await;
    eureka.register("ORDERS", "old", old.addr, &[("zone", "eu-1")]);
    eureka.register("ORDERS", "both", both.addr, &[("zone", "eu-1")]);
    eureka.register("USERS", "user", user.addr, &[]);
    consul.register("both", "orders", both.addr, 1);
    consul.register("new", "orders", new.addr, 1);
    let eureka_url = format!("eureka://{}/eureka?interval=100ms", eureka.addr);
    let consul_url = format!("consul://{}", consul.addr);
    let mut o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders,users".into()),
            ("OUTRIGGER_DISCOVERY", eureka_url.clone()),
            (
                "OUTRIGGER_DISCOVERY_ORDERS",
                format!("{eureka_url}  {consul_url}"),
            ),
        ],
    )
    .await;
    o.wait_for("/ready", Duration::from_secs(10)).await;
    let endpoints = |s: &Value| -> HashMap<String, Value> {
        s["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["address"].as_str().unwrap().to_string(),
                    e["sources"].clone(),
                )
            })
            .collect()
    };
    until(
        "both registries' nodes",
        Duration::from_secs(10),
        || async { endpoints(&o.service("orders").await).len() == 3 },
    )
    .await;
    let s = o.service("orders").await;
    let got = endpoints(&s);
    // Each source as it describes itself (the URL when two describe themselves alike).
    let e = format!("eureka://{}/eureka", eureka.addr);
    let c = format!("consul://{}", consul.addr);
    assert_eq!(got[&old.addr.to_string()], serde_json::json!([e]), "{s}");
    assert_eq!(got[&new.addr.to_string()], serde_json::json!([c]), "{s}");
    assert_eq!(
        got[&both.addr.to_string()],
        serde_json::json!([e, c]),
        "{s}"
    );
    assert_eq!(s["sources"][0]["state"], "ok", "{s}");
    assert_eq!(s["sources"][1]["endpoints"], 2, "{s}");
    let seen = o.served("orders", 30).await;
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(o.served("users", 5).await.len(), 1);

    // Eureka sends garbage: its nodes stay, and Consul's next change is applied meanwhile.
    eureka.serve_garbage(true);
    until(
        "Eureka's answers to be refused",
        Duration::from_secs(10),
        || async { o.service("orders").await["sources"][0]["state"] == "failing" },
    )
    .await;
    consul.register("newer", "orders", newer.addr, 1);
    until("Consul's new node", Duration::from_secs(10), || async {
        endpoints(&o.service("orders").await).len() == 4
    })
    .await;
    let seen = o.served("orders", 40).await;
    assert_eq!(seen.len(), 4, "Eureka's nodes still routed: {seen:?}");
    assert_eq!(o.served("users", 5).await.len(), 1, "Eureka alone: kept");
    let metrics = o.metrics().await;
    let failing =
        format!("outrigger_discovery_source_failing{{service=\"orders\",source=\"{e}\"}} 1");
    assert!(metrics.contains(&failing), "{metrics}");
    let history = client::get_admin(o.admin, "/upstreams/orders/history")
        .await
        .expect("admin answers")
        .body;
    assert!(
        history.contains("rejected") && history.contains(&e),
        "{history}"
    );
    let page = client::get_admin(o.admin, "/")
        .await
        .expect("admin answers")
        .body;
    assert!(page.contains(&format!("Source {e}: failing")), "{page}");

    // Eureka recovers and Consul breaks: Consul's three nodes stay while Eureka drops `old`.
    eureka.serve_garbage(false);
    consul.serve_garbage(Some(Garbage::Html));
    until(
        "Consul's answers to be refused",
        Duration::from_secs(10),
        || async {
            let s = o.service("orders").await;
            s["sources"][0]["state"] == "ok" && s["sources"][1]["state"] == "failing"
        },
    )
    .await;
    eureka.deregister("ORDERS", "old");
    until("Eureka's removal", Duration::from_secs(10), || async {
        !endpoints(&o.service("orders").await).contains_key(&old.addr.to_string())
    })
    .await;
    let seen = o.served("orders", 30).await;
    let mut names: Vec<&str> = seen.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["both", "new", "newer"], "{seen:?}");
}

/// A source whose answer lists entries but none valid is refused like an error: a file of
/// unusable addresses beside a static list keeps the file's last nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_whose_every_entry_is_invalid_keeps_its_last_nodes() {
    let listed = TestUpstream::start("static").await;
    let filed = TestUpstream::start("file").await;
    let file = NodeFile::new();
    let write =
        |entries: &str| file.write_raw(&format!(r#"{{"services": {{"orders": [{entries}]}}}}"#));
    write(&format!(r#"{{"address": "{}"}}"#, filed.addr));
    let mut o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders".into()),
            (
                "OUTRIGGER_DISCOVERY_ORDERS",
                format!("static:orders={} {}", listed.addr, file.url()),
            ),
            ("OUTRIGGER_FILE_POLL", "20ms".into()),
            ("OUTRIGGER_LKG_MAX_DROP", "100%".into()),
        ],
    )
    .await;
    o.wait_for("/ready", Duration::from_secs(10)).await;
    until("both sources' nodes", Duration::from_secs(10), || async {
        o.served("orders", 20).await.len() == 2
    })
    .await;
    write(r#"{"address": "orders.internal:8080"}, {"address": "10.0.0.1:0"}"#);
    until(
        "the file's answer to be refused",
        Duration::from_secs(10),
        || async { o.service("orders").await["sources"][1]["state"] == "failing" },
    )
    .await;
    let s = o.service("orders").await;
    let error = s["sources"][1]["error"]["message"].as_str().unwrap_or("");
    assert!(
        error.contains("every one of its 2 entries is invalid"),
        "{s}"
    );
    assert_eq!(o.served("orders", 20).await.len(), 2, "{s}");
}

/// After a restart with `OUTRIGGER_STATE_DIR`, a source that is down (here a node file turned
/// to garbage) keeps the nodes the saved set says it listed, while the other source answers:
/// nothing is held, nothing is lost once the confirmation window has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_down_at_restart_keeps_its_saved_nodes() {
    let listed = TestUpstream::start("static").await;
    let mut filed = Vec::new();
    for name in ["f1", "f2", "f3"] {
        filed.push(TestUpstream::start(name).await);
    }
    let file = NodeFile::new();
    let addrs: Vec<String> = filed.iter().map(|n| n.addr.to_string()).collect();
    file.write_addresses("orders", &addrs);
    let state = file.dir().join("state");
    let env = [
        ("OUTRIGGER_UPSTREAMS", "orders".to_string()),
        (
            "OUTRIGGER_DISCOVERY_ORDERS",
            format!("static:orders={} {}", listed.addr, file.url()),
        ),
        ("OUTRIGGER_FILE_POLL", "20ms".into()),
        ("OUTRIGGER_LKG_CONFIRM", "1s".into()),
        ("OUTRIGGER_STATE_DIR", state.display().to_string()),
    ];
    let mut o = Outrigger::start(bin(), &env).await;
    o.wait_for("/ready", Duration::from_secs(10)).await;
    until("both sources' nodes", Duration::from_secs(10), || async {
        o.served("orders", 40).await.len() == 4
    })
    .await;
    o.terminate();
    o.wait_exit(Duration::from_secs(15)).await;

    file.write_raw("garbage");
    let mut o = Outrigger::start(bin(), &env).await;
    o.wait_for("/ready", Duration::from_secs(10)).await;
    until(
        "the file's answer to be refused",
        Duration::from_secs(10),
        || async { o.service("orders").await["sources"][1]["state"] == "failing" },
    )
    .await;
    // Past the confirmation window: nothing was held to be applied.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = o.service("orders").await;
    assert_eq!(s["sources"][1]["endpoints"], 3, "{s}");
    assert!(s["pending"].is_null(), "{s}");
    assert_eq!(s["state"], "stale", "one source fails: {s}");
    assert_eq!(o.served("orders", 40).await.len(), 4, "{}", o.log());
    let metrics = o.metrics().await;
    let failing = format!(
        "outrigger_discovery_source_failing{{service=\"orders\",source=\"{}\"}} 1",
        file.url()
    );
    assert!(metrics.contains(&failing), "{metrics}");
}

#[test]
fn bad_sources_and_zone_settings_exit_2_naming_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[(
                "OUTRIGGER_DISCOVERY_PAYMENTS",
                "static:payments=127.0.0.1:1",
            )],
            "OUTRIGGER_DISCOVERY_PAYMENTS=\"static:payments=127.0.0.1:1\": no such service",
        ),
        (
            &[(
                "OUTRIGGER_DISCOVERY_ORDERS",
                "static:orders=127.0.0.1:1 static:orders=127.0.0.1:1",
            )],
            "each source once for service \"orders\"",
        ),
        (
            &[(
                "OUTRIGGER_DISCOVERY_ORDERS",
                "static:orders=127.0.0.1:1 zk://x",
            )],
            "OUTRIGGER_DISCOVERY_ORDERS=\"zk://x\": a URL with scheme",
        ),
        (
            &[(
                "OUTRIGGER_DISCOVERY_ORDERS",
                "consul://127.0.0.1:8500 static:users=127.0.0.1:1",
            )],
            "\"orders\" has none",
        ),
        (
            &[("OUTRIGGER_ZONE_MIN_CLUSTER_SIZE_ORDERS", "3")],
            "OUTRIGGER_ZONE_MIN_CLUSTER_SIZE_ORDERS=\"3\": OUTRIGGER_ZONE to be set too",
        ),
        (
            &[("OUTRIGGER_ZONE_ROUTING_ENABLED", "50%")],
            "OUTRIGGER_ZONE_ROUTING_ENABLED=\"50%\": OUTRIGGER_ZONE to be set too",
        ),
        (
            &[(
                "OUTRIGGER_DISCOVERY_ORDERS",
                "static:orders=127.0.0.1:1 eureka//bob:s3cret@127.0.0.1:8761/eureka",
            )],
            "OUTRIGGER_DISCOVERY_ORDERS=\"eureka//***@127.0.0.1:8761/eureka\": a URL with scheme",
        ),
        (
            &[
                ("OUTRIGGER_ZONE", "a"),
                ("OUTRIGGER_ZONE_ROUTING_ENABLED", "150%"),
            ],
            "OUTRIGGER_ZONE_ROUTING_ENABLED=\"150%\"",
        ),
        (
            &[
                ("OUTRIGGER_ZONE", "a"),
                ("OUTRIGGER_ZONE_MIN_CLUSTER_SIZE", "none"),
            ],
            "OUTRIGGER_ZONE_MIN_CLUSTER_SIZE=\"none\"",
        ),
    ];
    for (extra, expected) in cases {
        let mut env = vec![
            ("OUTRIGGER_UPSTREAMS", "orders"),
            ("OUTRIGGER_DISCOVERY", "static:orders=127.0.0.1:1"),
        ];
        env.extend_from_slice(extra);
        let (status, stderr) = run_to_exit(bin(), &env);
        assert_eq!(status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{extra:?}: expected {expected:?} in {stderr}"
        );
        assert!(!stderr.contains("s3cret"), "a password shown: {stderr}");
    }
    // Without a default, every service needs its own source.
    let (status, stderr) = run_to_exit(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders,users"),
            ("OUTRIGGER_DISCOVERY_ORDERS", "static:orders=127.0.0.1:1"),
        ],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("a node source for service \"users\"")
            && stderr.contains("OUTRIGGER_DISCOVERY_USERS"),
        "{stderr}"
    );
}

/// A mistyped variable does nothing, so it is named at start with the closest setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_variable_is_warned_about_with_the_closest_setting() {
    let node = TestUpstream::start("n").await;
    let mut o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders".into()),
            (
                "OUTRIGGER_DISCOVERY",
                format!("static:orders={}", node.addr),
            ),
            ("OUTRIGGER_ZONE", "a".into()),
            ("OUTRIGGER_ZONE_ROUTING_ENABLE", "50%".into()),
            // Kubernetes' links to Services named `outrigger-lb` and `outrigger-discovery`:
            // no override, no warning.
            ("OUTRIGGER_LB_SERVICE_HOST", "10.0.0.9".into()),
            ("OUTRIGGER_LB_PORT_80_TCP_ADDR", "10.0.0.9".into()),
            ("OUTRIGGER_DISCOVERY_SERVICE_PORT", "80".into()),
        ],
    )
    .await;
    o.wait_for("/ready", Duration::from_secs(10)).await;
    let log = o.log();
    assert!(
        !log.contains("OUTRIGGER_LB_SERVICE_HOST") && !log.contains("_SERVICE_PORT"),
        "{log}"
    );
    assert!(
        log.contains("OUTRIGGER_ZONE_ROUTING_ENABLE is not a setting Outrigger reads (did you mean OUTRIGGER_ZONE_ROUTING_ENABLED?)"),
        "{log}"
    );
}

/// A registry URL's password never reaches the log, `/upstreams`, the history, the dashboard
/// or a metric label, with one source or several.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sources_password_is_never_shown() {
    let node = TestUpstream::start("n").await;
    let consul = ConsulEmulator::start().await;
    consul.register("n", "orders", node.addr, 1);
    let url = format!("consul://bob:s3cret@{}", consul.addr);
    let mut o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders,users".into()),
            ("OUTRIGGER_DISCOVERY", url.clone()),
            (
                "OUTRIGGER_DISCOVERY_USERS",
                format!("static:users={} {url}", node.addr),
            ),
        ],
    )
    .await;
    o.wait_for("/ready", Duration::from_secs(10)).await;
    let mut shown = vec![o.log(), o.metrics().await, o.upstreams().await.to_string()];
    for path in ["/", "/upstreams/orders/history", "/upstreams/users/history"] {
        shown.push(
            client::get_admin(o.admin, path)
                .await
                .expect("admin answers")
                .body,
        );
    }
    for text in shown {
        assert!(!text.contains("s3cret"), "{text}");
    }
    let s = o.service("users").await;
    assert_eq!(
        s["sources"][1]["source"],
        format!("consul://***@{}", consul.addr),
        "{s}"
    );
}
