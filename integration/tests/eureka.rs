//! Eureka discovery end to end, against the emulator in `integration/src/eureka.rs`, whose
//! fidelity is checked with py-eureka-client (PyPI) and against the captures in
//! `integration/fixtures/eureka`.

use std::path::Path;
use std::time::Duration;

use outrigger_integration::eureka::EurekaEmulator;
use outrigger_integration::wait::until;
use outrigger_integration::{Outrigger, TestUpstream};
use serde_json::Value;

fn bin() -> &'static Path {
    outrigger_integration::process::binary_under_test(env!("CARGO_BIN_EXE_outrigger"))
}

async fn start(urls: String) -> Outrigger {
    let mut o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders".into()),
            ("OUTRIGGER_DISCOVERY", format!("{urls}?interval=100ms")),
        ],
    )
    .await;
    o.wait_for("/ready", Duration::from_secs(10)).await;
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_speaks_eureka_to_py_eureka_client() {
    let eureka = EurekaEmulator::start().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/integration/clients/eureka_client_check.py"
    );
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(eureka.url())
        .output()
        .await
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'py_eureka_client'"),
        "py-eureka-client is not installed: integration/run-tests.sh installs it"
    );
    assert!(
        out.status.success(),
        "py-eureka-client against the emulator failed:\n{stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "py-eureka-client: ok"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_answers_have_the_captured_shapes() {
    let eureka = EurekaEmulator::start().await;
    eureka.register(
        "eurekaconsumer",
        "i-1",
        "127.0.0.1:9002".parse().unwrap(),
        &[],
    );
    let client = reqwest_like_get(eureka.addr, "/eureka/apps/", "application/json").await;
    let ours: Value = serde_json::from_str(&client).unwrap();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/integration/fixtures/eureka/apps-spring-capture.json"
    );
    let captured: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    // Metadata holds user data, not protocol shape.
    let missing =
        outrigger_integration::shape::missing_keys(&captured, &ours, &|k: &str| k == "metadata");
    assert!(
        missing.is_empty(),
        "keys the capture has and the emulator lacks: {missing:?}"
    );
    // Without Accept: application/json, XML like the capture.
    let xml = reqwest_like_get(eureka.addr, "/eureka/apps/", "*/*").await;
    for tag in [
        "<applications>",
        "<apps__hashcode>UP_1_</apps__hashcode>",
        "<overriddenstatus>",
        "<port enabled=\"true\">9002</port>",
    ] {
        assert!(xml.contains(tag), "{tag} missing from {xml}");
    }
}

async fn reqwest_like_get(addr: std::net::SocketAddr, path: &str, accept: &str) -> String {
    use bytes::Bytes;
    use http_body_util::Full;
    let req = http::Request::get(path)
        .header("host", "eureka")
        .header("accept", accept)
        .body(Full::new(Bytes::new()))
        .unwrap();
    outrigger_integration::client::send(addr, req)
        .await
        .unwrap()
        .body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_statuses_and_weights_drive_routing() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let eureka = EurekaEmulator::start().await;
    eureka.register("ORDERS", "a", a.addr, &[("weight", "3")]);
    eureka.register("ORDERS", "b", b.addr, &[]);
    // Routed as "orders": Eureka's upper-case app names match case-insensitively.
    let o = start(format!("eureka://{}/eureka", eureka.addr)).await;
    let seen = o.served("orders", 40).await;
    assert_eq!(
        (seen.get("a"), seen.get("b")),
        (Some(&30), Some(&10)),
        "weights from metadata: {seen:?}"
    );

    eureka.set_status("orders", "a", "DOWN");
    until("DOWN instance dropped", Duration::from_secs(3), || async {
        !o.served("orders", 6).await.contains_key("a")
    })
    .await;
    eureka.set_status("orders", "a", "UP");
    until("UP again", Duration::from_secs(3), || async {
        o.served("orders", 8).await.contains_key("a")
    })
    .await;

    eureka.set_override("orders", "b", Some("OUT_OF_SERVICE"));
    until(
        "OUT_OF_SERVICE instance dropped",
        Duration::from_secs(3),
        || async { !o.served("orders", 8).await.contains_key("b") },
    )
    .await;
    eureka.set_override("orders", "b", None);
    until("override removed", Duration::from_secs(3), || async {
        o.served("orders", 8).await.contains_key("b")
    })
    .await;

    let c = TestUpstream::start("c").await;
    eureka.register("ORDERS", "c", c.addr, &[]);
    eureka.deregister("ORDERS", "a");
    until(
        "deregistered and registered followed",
        Duration::from_secs(3),
        || async {
            let s = o.served("orders", 8).await;
            !s.contains_key("a") && s.contains_key("c")
        },
    )
    .await;
    assert_eq!(o.upstreams().await["services"]["orders"]["state"], "fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_delta_is_repaired_by_a_full_fetch() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let eureka = EurekaEmulator::start().await;
    eureka.register("ORDERS", "a", a.addr, &[]);
    let o = start(format!("eureka://{}/eureka", eureka.addr)).await;
    assert_eq!(o.served("orders", 2).await.get("a"), Some(&2));
    // The change never shows in a delta; only the hash says something changed.
    eureka.drop_deltas(true);
    eureka.register("ORDERS", "b", b.addr, &[]);
    until(
        "full fetch after hash mismatch",
        Duration::from_secs(3),
        || async { o.served("orders", 4).await.contains_key("b") },
    )
    .await;
    assert!(o.log().contains("does not reconcile"), "{}", o.log());
}

/// A server that refuses deltas (403: deltas disabled, or not ready to serve them) is read by
/// full fetches, as Eureka's own client does, and routing follows every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_delta_falls_back_to_full_fetches() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let c = TestUpstream::start("c").await;
    let eureka = EurekaEmulator::start().await;
    eureka.register("ORDERS", "a", a.addr, &[]);
    eureka.register("ORDERS", "b", b.addr, &[]);
    let o = start(format!("eureka://{}/eureka", eureka.addr)).await;
    assert_eq!(o.served("orders", 4).await.len(), 2);
    eureka.refuse_deltas(true);
    // A new instance, and one taken out of service (half the nodes: applied at once).
    eureka.register("ORDERS", "c", c.addr, &[]);
    eureka.set_override("ORDERS", "a", Some("OUT_OF_SERVICE"));
    until(
        "b and c, read by full fetches",
        Duration::from_secs(3),
        || async { o.served("orders", 6).await.keys().eq(["b", "c"].iter()) },
    )
    .await;
    let upstreams = o.upstreams().await.to_string();
    assert!(!upstreams.contains("\"last_error\":{"), "{upstreams}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_dialect_is_read() {
    let a = TestUpstream::start("a").await;
    let eureka = EurekaEmulator::start().await;
    eureka.quirks(true);
    eureka.register("ORDERS", "a", a.addr, &[]);
    let o = start(format!("eureka://{}/eureka/v2", eureka.addr)).await;
    assert_eq!(o.served("orders", 3).await.get("a"), Some(&3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_down_costs_nothing_and_all_down_keeps_the_last_good_nodes() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let first = EurekaEmulator::start().await;
    let second = EurekaEmulator::start().await;
    for e in [&first, &second] {
        e.register("ORDERS", "a", a.addr, &[]);
        e.register("ORDERS", "b", b.addr, &[]);
    }
    let o = start(format!(
        "eureka://{}/eureka,{}/eureka",
        first.addr, second.addr
    ))
    .await;
    assert_eq!(o.served("orders", 4).await.len(), 2);

    first.stop();
    let c = TestUpstream::start("c").await;
    second.register("ORDERS", "c", c.addr, &[]);
    until("second server used", Duration::from_secs(3), || async {
        o.served("orders", 6).await.contains_key("c")
    })
    .await;
    for _ in 0..5 {
        assert_eq!(
            o.upstreams().await["services"]["orders"]["state"],
            "fresh",
            "an error reached the guard"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    second.stop();
    until("all down seen", Duration::from_secs(5), || async {
        o.upstreams().await["services"]["orders"]["state"] == "stale"
    })
    .await;
    assert_eq!(o.served("orders", 6).await.len(), 3);
    second.restart().await;
    until("recovered", Duration::from_secs(5), || async {
        o.upstreams().await["services"]["orders"]["state"] == "fresh"
    })
    .await;
}
