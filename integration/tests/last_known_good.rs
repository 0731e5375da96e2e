//! Last-known-good, end to end: each test routes successfully, feeds the registry source bad
//! input, and shows traffic still reaching the old nodes while the admin API and metrics say
//! what happened. The registry here is the file source, scripted by rewriting its file.

use std::path::Path;
use std::time::{Duration, Instant};

use outrigger_integration::client::get;
use outrigger_integration::{NodeFile, Outrigger, TestUpstream};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_outrigger"))
}

async fn upstreams(n: usize) -> Vec<TestUpstream> {
    let mut all = Vec::new();
    for i in 0..n {
        all.push(TestUpstream::start(&format!("n{i}")).await);
    }
    all
}

fn addrs(ups: &[TestUpstream]) -> Vec<String> {
    ups.iter().map(|u| u.addr.to_string()).collect()
}

async fn start(reg: &NodeFile, extra: &[(&'static str, String)]) -> Outrigger {
    let mut env = vec![
        ("OUTRIGGER_UPSTREAMS", "orders".to_string()),
        (
            "OUTRIGGER_DISCOVERY",
            format!("file://{}", reg.path().display()),
        ),
        ("OUTRIGGER_FILE_POLL", "20ms".to_string()),
    ];
    env.extend_from_slice(extra);
    let mut o = Outrigger::start(bin(), &env).await;
    o.wait_for("/ready", Duration::from_secs(5)).await;
    o
}

/// Sends `n` requests; all must succeed. Returns which upstreams answered.
async fn all_succeed(o: &Outrigger, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let r = get(o.proxy, "orders", "/").await.expect("proxy answers");
        assert_eq!(r.status, 200, "request failed: {r:?}\n{}", o.log());
        seen.push(r.body);
    }
    seen.sort();
    seen.dedup();
    seen
}

/// Waits until the admin API shows `field` equal to `value`.
async fn admin_shows(o: &Outrigger, field: &str, value: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = o.service("orders").await;
        if s[field] == value {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{field} never became {value}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metric(o: &Outrigger, line_start: &str) -> f64 {
    let text = o.metrics().await;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn endpoint_addrs(s: &Value) -> Vec<String> {
    let mut v: Vec<String> = s["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_answers_are_rejected_whole() {
    let ups = upstreams(2).await;
    let reg = NodeFile::new();
    reg.write_addresses("orders", &addrs(&ups));
    let o = start(&reg, &[]).await;
    assert_eq!(all_succeed(&o, 4).await, ["n0", "n1"]);

    let bad_answers = [
        ("garbage body", "\u{1}\u{2}garbage\u{ff}".to_string()),
        (
            "HTML error page",
            "<html><body><h1>502 Bad Gateway</h1></body></html>".to_string(),
        ),
        (
            "truncated JSON",
            format!(
                r#"{{"services": {{"orders": [{{"address": "{}"#,
                ups[0].addr
            ),
        ),
    ];
    let mut rejected_before = 0.0;
    for (what, body) in bad_answers {
        reg.write_raw(&body);
        let s = admin_shows(&o, "state", "stale").await;
        assert!(
            s["last_error"]["message"]
                .as_str()
                .unwrap()
                .contains("unparsable response"),
            "{what}: {s}"
        );
        assert_eq!(all_succeed(&o, 4).await, ["n0", "n1"], "{what}");
        assert_eq!(endpoint_addrs(&s), sorted(addrs(&ups)), "{what}");
        let rejected = metric(
            &o,
            "outrigger_discovery_updates_total{service=\"orders\",result=\"rejected\"}",
        )
        .await;
        assert!(rejected > rejected_before, "{what}: rejection not counted");
        rejected_before = rejected;
        // Back to a good answer between cases, so each case starts from "fresh".
        reg.write_addresses("orders", &addrs(&ups));
        admin_shows(&o, "state", "fresh").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_down_keeps_routing_to_the_last_good_nodes() {
    let ups = upstreams(2).await;
    let reg = NodeFile::new();
    reg.write_addresses("orders", &addrs(&ups));
    let o = start(&reg, &[]).await;
    assert_eq!(all_succeed(&o, 4).await, ["n0", "n1"]);
    reg.remove();
    let s = admin_shows(&o, "state", "stale").await;
    assert!(s["last_error"]["at"].is_string(), "{s}");
    // Down for the rest of the test: every request still succeeds.
    for _ in 0..5 {
        assert_eq!(all_succeed(&o, 4).await, ["n0", "n1"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let since = metric(
        &o,
        "outrigger_discovery_seconds_since_good_update{service=\"orders\"}",
    )
    .await;
    assert!(since >= 0.25, "seconds since good update: {since}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_list_is_held_then_confirmed_after_the_window() {
    let ups = upstreams(2).await;
    let reg = NodeFile::new();
    reg.write_addresses("orders", &addrs(&ups));
    let o = start(&reg, &[("OUTRIGGER_LKG_CONFIRM", "2s".into())]).await;
    assert_eq!(all_succeed(&o, 4).await, ["n0", "n1"]);

    let held_at = Instant::now();
    reg.write_addresses("orders", &[]);
    let s = admin_shows(&o, "state", "held").await;
    assert!(
        s["pending"]["reason"]
            .as_str()
            .unwrap()
            .contains("remove all 2"),
        "{s}"
    );
    assert_eq!(s["pending"]["endpoints"].as_array().unwrap().len(), 0);
    assert!(s["pending"]["applies_at"].is_string());
    assert_eq!(all_succeed(&o, 4).await, ["n0", "n1"]);
    assert_eq!(
        metric(
            &o,
            "outrigger_discovery_updates_total{service=\"orders\",result=\"held\"}"
        )
        .await,
        1.0
    );

    // The registry stands by the empty answer: after the window it applies.
    admin_shows(&o, "state", "fresh").await;
    assert!(
        held_at.elapsed() >= Duration::from_millis(1900),
        "applied before the window: {:?}",
        held_at.elapsed()
    );
    let r = get(o.proxy, "orders", "/").await.unwrap();
    assert_eq!((r.status.as_u16(), r.cause()), (503, "no-endpoint"));
    assert_eq!(
        metric(
            &o,
            "outrigger_discovery_updates_total{service=\"orders\",result=\"confirmed\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ninety_percent_drop_is_held_and_a_recovery_cancels_it() {
    let ups = upstreams(10).await;
    let reg = NodeFile::new();
    reg.write_addresses("orders", &addrs(&ups));
    let o = start(&reg, &[("OUTRIGGER_LKG_CONFIRM", "30s".into())]).await;
    assert_eq!(all_succeed(&o, 10).await.len(), 10);

    reg.write_addresses("orders", &addrs(&ups[..1]));
    let s = admin_shows(&o, "state", "held").await;
    assert!(
        s["pending"]["reason"].as_str().unwrap().contains("9 of 10"),
        "{s}"
    );
    assert_eq!(
        all_succeed(&o, 10).await.len(),
        10,
        "all ten nodes still used"
    );

    // The registry comes back to its senses: the held update is dropped.
    reg.write_addresses("orders", &addrs(&ups));
    let s = admin_shows(&o, "state", "fresh").await;
    assert!(s["pending"].is_null(), "{s}");
    assert_eq!(endpoint_addrs(&s).len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_entries_are_dropped_one_by_one() {
    let ups = upstreams(2).await;
    let reg = NodeFile::new();
    reg.write_addresses("orders", &addrs(&ups));
    let o = start(&reg, &[]).await;
    assert_eq!(all_succeed(&o, 4).await, ["n0", "n1"]);
    let good = addrs(&ups);
    reg.write_raw(&format!(
        r#"{{"services": {{"orders": [
            {{"address": "{0}"}}, {{"address": "{1}"}},
            {{"address": "127.0.0.1:0"}}, {{"address": "127.0.0.1:70000"}},
            {{"address": "0.0.0.0:8080"}}, {{"address": "orders.internal:80"}},
            {{"address": "127.0.0.1:9", "weight": -1}},
            {{"address": "{0}"}}
        ]}}}}"#,
        good[0], good[1]
    ));
    // The good entries are unchanged, so routing is too; the bad ones are counted by reason.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let dup = metric(
            &o,
            "outrigger_discovery_dropped_entries_total{service=\"orders\",reason=\"duplicate\"}",
        )
        .await;
        if dup >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "drops never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (reason, n) in [
        ("invalid_port", 2.0),
        ("unspecified_address", 1.0),
        ("unparsable_address", 1.0),
        ("invalid_weight", 1.0),
        ("duplicate", 1.0),
    ] {
        let got = metric(
            &o,
            &format!(
                "outrigger_discovery_dropped_entries_total{{service=\"orders\",reason=\"{reason}\"}}"
            ),
        )
        .await;
        assert_eq!(got, n, "{reason}");
    }
    assert_eq!(all_succeed(&o, 4).await, ["n0", "n1"]);
    let s = o.service("orders").await;
    assert_eq!(s["state"], "fresh");
    assert_eq!(endpoint_addrs(&s), sorted(good));
    assert!(o.log().contains("reason=invalid_port"), "{}", o.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_a_registry_outage_serves_the_stored_set() {
    let ups = upstreams(2).await;
    let reg = NodeFile::new();
    reg.write_addresses("orders", &addrs(&ups));
    let state = (
        "OUTRIGGER_STATE_DIR",
        reg.dir().join("state").display().to_string(),
    );
    let quick = ("OUTRIGGER_SHUTDOWN_DELAY", "0s".to_string());
    let mut o = start(&reg, &[state.clone(), quick]).await;
    assert_eq!(all_succeed(&o, 4).await, ["n0", "n1"]);
    let stored = reg.dir().join("state").join("orders.json");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stored.exists() {
        assert!(Instant::now() < deadline, "state never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    o.terminate();
    o.wait_exit(Duration::from_secs(10)).await.expect("exits");

    reg.remove();
    let o = start(&reg, &[state]).await;
    let s = o.service("orders").await;
    assert_eq!(s["state"], "restored", "{s}");
    assert!(s["last_error"]["message"].is_string(), "{s}");
    assert_eq!(all_succeed(&o, 4).await, ["n0", "n1"]);

    // When the registry returns, the service is fresh again.
    reg.write_addresses("orders", &addrs(&ups));
    admin_shows(&o, "state", "fresh").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_reported_and_ignored() {
    let ups = upstreams(1).await;
    let reg = NodeFile::new();
    std::fs::create_dir_all(reg.dir().join("state")).unwrap();
    std::fs::write(
        reg.dir().join("state").join("orders.json"),
        "{\"service\": \"ord",
    )
    .unwrap();
    reg.write_addresses("orders", &addrs(&ups));
    let o = start(
        &reg,
        &[(
            "OUTRIGGER_STATE_DIR",
            reg.dir().join("state").display().to_string(),
        )],
    )
    .await;
    assert_eq!(all_succeed(&o, 2).await, ["n0"]);
    assert!(o.log().contains("corrupt state file"), "{}", o.log());
    assert_eq!(
        metric(
            &o,
            "outrigger_state_restore_errors_total{service=\"orders\"}"
        )
        .await,
        1.0
    );
    // The next applied set replaces the corrupt file.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(reg.dir().join("state").join("orders.json")).unwrap();
        if serde_json::from_str::<Value>(&text).is_ok() {
            assert!(text.contains(&ups[0].addr.to_string()));
            break;
        }
        assert!(Instant::now() < deadline, "corrupt state never replaced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_single_node_waits_for_confirmation() {
    // Replacing the only node removes 100% of the set: held, then applied after the window.
    let ups = upstreams(2).await;
    let reg = NodeFile::new();
    reg.write_addresses("orders", &addrs(&ups[..1]));
    let o = start(&reg, &[("OUTRIGGER_LKG_CONFIRM", "1s".into())]).await;
    reg.write_addresses("orders", &addrs(&ups[1..]));
    admin_shows(&o, "state", "held").await;
    assert_eq!(all_succeed(&o, 3).await, ["n0"]);
    admin_shows(&o, "state", "fresh").await;
    assert_eq!(all_succeed(&o, 3).await, ["n1"]);
}
