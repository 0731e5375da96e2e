//! Load-balancing policies end to end: slow nodes avoided by the load-aware policies (with
//! round robin as the control that shows the test can fail), hashing stickiness, priority
//! tiers, per-service policy configuration.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use outrigger_integration::client::{self, get};
use outrigger_integration::process::run_to_exit;
use outrigger_integration::{NodeFile, Outrigger, TestUpstream};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_outrigger"))
}

/// Share of requests the slow node served under concurrent load with `policy`.
async fn slow_share(policy: &str) -> f64 {
    let fast1 = TestUpstream::start("fast1").await;
    let fast2 = TestUpstream::start("fast2").await;
    let slow = TestUpstream::start_slow("slow", Duration::from_millis(80)).await;
    let o = Arc::new(
        Outrigger::start(
            bin(),
            &[
                ("OUTRIGGER_UPSTREAMS", "orders".into()),
                (
                    "OUTRIGGER_DISCOVERY",
                    format!("static:orders={},{},{}", fast1.addr, fast2.addr, slow.addr),
                ),
                ("OUTRIGGER_LB", policy.into()),
            ],
        )
        .await,
    );
    // Eight apps in parallel, each sending requests one after another.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let o = o.clone();
        clients.push(tokio::spawn(async move {
            let mut served = HashMap::<String, usize>::new();
            for _ in 0..40 {
                let r = get(o.proxy, "orders", "/").await.expect("proxy answers");
                assert_eq!(r.status, 200);
                *served.entry(r.body).or_default() += 1;
            }
            served
        }));
    }
    let mut total = HashMap::<String, usize>::new();
    for c in clients {
        for (k, v) in c.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    *total.get("slow").unwrap_or(&0) as f64 / 320.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_aware_policies_steer_away_from_a_slow_node() {
    let rr = slow_share("round_robin").await;
    assert!(
        (rr - 1.0 / 3.0).abs() < 0.02,
        "control: round robin gives the slow node {rr:.3}"
    );
    let lr = slow_share("least_request").await;
    assert!(lr < 0.15, "least_request gave the slow node {lr:.3}");
    let ewma = slow_share("peak_ewma").await;
    eprintln!("slow node share: round_robin {rr:.3}, least_request {lr:.3}, peak_ewma {ewma:.3}");
    assert!(ewma < 0.10, "peak_ewma gave the slow node {ewma:.3}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_sticks_per_key_and_policies_are_per_service() {
    let ups = [
        TestUpstream::start("n0").await,
        TestUpstream::start("n1").await,
        TestUpstream::start("n2").await,
    ];
    let list = format!("{},{},{}", ups[0].addr, ups[1].addr, ups[2].addr);
    let o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders,users".into()),
            (
                "OUTRIGGER_DISCOVERY",
                format!("static:orders={list};users={list}"),
            ),
            ("OUTRIGGER_LB_ORDERS", "maglev:header:x-user".into()),
            ("OUTRIGGER_LB_USERS", "ring_hash:cookie:session".into()),
        ],
    )
    .await;
    let up = o.upstreams().await;
    assert_eq!(up["services"]["orders"]["policy"], "maglev:header:x-user");
    assert_eq!(
        up["services"]["users"]["policy"],
        "ring_hash:cookie:session"
    );

    let send = |service: &'static str, header: &'static str, value: String| {
        let proxy = o.proxy;
        async move {
            let req = Request::get("/")
                .header("host", service)
                .header(header, value)
                .body(Full::new(Bytes::new()))
                .unwrap();
            client::send(proxy, req).await.unwrap().body
        }
    };
    let mut nodes_used = std::collections::BTreeSet::new();
    for user in 0..30 {
        let first = send("orders", "x-user", format!("u{user}")).await;
        for _ in 0..3 {
            assert_eq!(
                send("orders", "x-user", format!("u{user}")).await,
                first,
                "u{user} moved"
            );
        }
        let session = send("users", "cookie", format!("theme=dark; session=s{user}")).await;
        assert_eq!(
            send("users", "cookie", format!("session=s{user}")).await,
            session,
            "session s{user} moved"
        );
        nodes_used.insert(first);
    }
    assert_eq!(
        nodes_used.len(),
        3,
        "30 keys should spread over all nodes: {nodes_used:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_priority_tiers_serve_only_when_the_higher_tier_cannot() {
    let primary = TestUpstream::start("primary").await;
    let backup = TestUpstream::start("backup").await;
    let file = NodeFile::new();
    let write = |primary_weight: u32| {
        file.write_raw(&format!(
            r#"{{"services": {{"orders": [
                {{"address": "{}", "priority": 0, "weight": {primary_weight}}},
                {{"address": "{}", "priority": 1}}]}}}}"#,
            primary.addr, backup.addr
        ))
    };
    write(1);
    let mut o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders".into()),
            ("OUTRIGGER_DISCOVERY", file.url()),
            ("OUTRIGGER_FILE_POLL", "20ms".into()),
        ],
    )
    .await;
    o.wait_for("/ready", Duration::from_secs(5)).await;
    for _ in 0..10 {
        assert_eq!(get(o.proxy, "orders", "/").await.unwrap().body, "primary");
    }
    // The primary tier drained (weight 0): the backup tier takes over.
    write(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while get(o.proxy, "orders", "/").await.unwrap().body != "backup" {
        assert!(
            std::time::Instant::now() < deadline,
            "backup tier never used"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..10 {
        assert_eq!(get(o.proxy, "orders", "/").await.unwrap().body, "backup");
    }
}

#[test]
fn bad_policies_exit_2_naming_the_variable() {
    let base = [
        ("OUTRIGGER_UPSTREAMS", "orders"),
        ("OUTRIGGER_DISCOVERY", "static:orders=127.0.0.1:1"),
    ];
    let cases: &[(&str, &str, &str)] = &[
        (
            "OUTRIGGER_LB",
            "fastest",
            "OUTRIGGER_LB=\"fastest\": policy \"fastest\": expected round_robin",
        ),
        (
            "OUTRIGGER_LB",
            "maglev",
            "OUTRIGGER_LB=\"maglev\": maglev needs a hash key",
        ),
        (
            "OUTRIGGER_LB_ORDERS",
            "ring_hash:ip",
            "OUTRIGGER_LB_ORDERS=\"ring_hash:ip\": hash key \"ip\"",
        ),
        (
            "OUTRIGGER_LB_PAYMENTS",
            "random",
            "OUTRIGGER_LB_PAYMENTS=\"random\": no such service",
        ),
    ];
    for (var, value, expected) in cases {
        let mut env = base.to_vec();
        env.push((var, value));
        let (status, stderr) = run_to_exit(bin(), &env);
        assert_eq!(status.code(), Some(2), "{var}={value}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{var}={value}: expected {expected:?} in {stderr}"
        );
    }
}

/// With a hash policy, a key whose node refuses connections is retried on the next node its
/// key leads to: every request succeeds, and the key's answers stay on one live node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_policies_retry_a_dead_node_on_the_next_one() {
    let live = TestUpstream::start("live").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    for policy in ["ring_hash:header:x-key", "maglev:header:x-key"] {
        let o = Outrigger::start(
            bin(),
            &[
                ("OUTRIGGER_UPSTREAMS", "orders".into()),
                (
                    "OUTRIGGER_DISCOVERY",
                    format!("static:orders={},{dead_addr}", live.addr),
                ),
                ("OUTRIGGER_LB", policy.into()),
                ("OUTRIGGER_OUTLIER_CONSECUTIVE", "0".into()),
            ],
        )
        .await;
        for key in 0..40 {
            let req = Request::get("/")
                .header("host", "orders")
                .header("x-key", key.to_string())
                .body(Full::new(Bytes::new()))
                .unwrap();
            let r = client::send(o.proxy, req).await.expect("answer");
            assert_eq!(r.status, 200, "{policy} key {key}: {r:?}");
            assert_eq!(r.body, "live");
        }
    }
}

/// Slow start (`OUTRIGGER_SLOW_START`): a node that joins a running service starts at a tenth
/// of its weight and reaches all of it over the window; the first set takes traffic at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_ramps_up_over_the_slow_start_window() {
    let old = TestUpstream::start("old").await;
    let new = TestUpstream::start("new").await;
    let file = NodeFile::new();
    let write = |nodes: &[&TestUpstream]| file.write_nodes("orders", nodes);
    write(&[&old]);
    let mut o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders".into()),
            ("OUTRIGGER_DISCOVERY", file.url()),
            ("OUTRIGGER_FILE_POLL", "20ms".into()),
            ("OUTRIGGER_WORKER_THREADS", "1".into()),
            ("OUTRIGGER_SLOW_START", "4s".into()),
        ],
    )
    .await;
    o.wait_for("/ready", Duration::from_secs(5)).await;
    write(&[&old, &new]);
    let joined = std::time::Instant::now();
    while o.upstreams().await["services"]["orders"]["endpoints"]
        .as_array()
        .map_or(0, Vec::len)
        < 2
    {
        assert!(joined.elapsed() < Duration::from_secs(5), "never joined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let share = |seen: &HashMap<String, usize>| {
        let new = *seen.get("new").unwrap_or(&0) as f64;
        new / seen.values().sum::<usize>() as f64
    };
    let early = share(&o.served("orders", 100).await);
    assert!(early < 0.3, "the new node took {early:.2} at once");
    tokio::time::sleep(Duration::from_millis(4200).saturating_sub(joined.elapsed())).await;
    let settled = share(&o.served("orders", 100).await);
    assert!(
        (0.4..=0.6).contains(&settled),
        "after the window: {settled:.2}"
    );
    let settings = o.upstreams().await["services"]["orders"]["settings"].clone();
    assert_eq!(settings["slow_start_ms"], 4000, "{settings}");
}

/// Subsets (`OUTRIGGER_SUBSET_<SERVICE>`): a request with `x-canary: 1` goes only to the nodes
/// labelled `version=v2`, others to every node; an empty subset falls back as the rule says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_header_routes_to_the_labelled_subset() {
    let v1 = TestUpstream::start("v1").await;
    let v2 = TestUpstream::start("v2").await;
    let file = NodeFile::new();
    let write = |nodes: &[(&TestUpstream, &str)]| {
        let list: Vec<String> = nodes
            .iter()
            .map(|(n, v)| {
                format!(
                    r#"{{"address": "{}", "metadata": {{"version": "{v}"}}}}"#,
                    n.addr
                )
            })
            .collect();
        file.write(&[("orders", &list), ("strict", &list)]);
    };
    write(&[(&v1, "v1"), (&v2, "v2")]);
    let mut o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders,strict".into()),
            ("OUTRIGGER_DISCOVERY", file.url()),
            ("OUTRIGGER_FILE_POLL", "20ms".into()),
            ("OUTRIGGER_LKG_MAX_DROP", "100%".into()),
            ("OUTRIGGER_SUBSET_ORDERS", "x-canary=1 -> version=v2".into()),
            (
                "OUTRIGGER_SUBSET_STRICT",
                "x-canary=1 -> version=v2; fallback=503".into(),
            ),
        ],
    )
    .await;
    o.wait_for("/ready", Duration::from_secs(5)).await;
    let canary = |service: &'static str| {
        let proxy = o.proxy;
        async move {
            let req = Request::get("/")
                .header("host", service)
                .header("x-canary", "1")
                .body(Full::new(Bytes::new()))
                .unwrap();
            client::send(proxy, req).await.unwrap()
        }
    };
    for _ in 0..6 {
        let r = canary("orders").await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "v2"), "{r:?}");
    }
    let plain = o.served("orders", 10).await;
    assert_eq!(plain.len(), 2, "without the header, every node: {plain:?}");
    let s = o.upstreams().await["services"]["orders"].clone();
    assert_eq!(s["subset_endpoints"], 1, "{s}");
    assert_eq!(
        s["settings"]["subset"],
        "x-canary=1 -> version=v2; fallback=all"
    );

    // v2 is gone: the canary falls back to every node, or gets 503 where the rule says so.
    write(&[(&v1, "v1")]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while o.upstreams().await["services"]["orders"]["subset_endpoints"] != 0 {
        assert!(std::time::Instant::now() < deadline, "v2 never left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = canary("orders").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "v1"), "{r:?}");
    let r = canary("strict").await;
    assert_eq!((r.status.as_u16(), r.cause()), (503, "no-subset"), "{r:?}");
}
