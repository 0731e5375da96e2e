//! Consul discovery end to end, against the emulator in `integration/src/consul.rs`, whose
//! fidelity is checked here with two third-party clients (py-consul from PyPI, rs-consul from
//! crates.io) and against the captured response shapes in `integration/fixtures/consul`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use outrigger_integration::client::get;
use outrigger_integration::consul::{ConsulEmulator, Garbage, IndexQuirk};
use outrigger_integration::wait::until;
use outrigger_integration::{Outrigger, TestUpstream};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn bin() -> &'static Path {
    outrigger_integration::process::binary_under_test(env!("CARGO_BIN_EXE_outrigger"))
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/integration/fixtures/consul/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
        .unwrap()
}

/// Which upstreams answer `n` requests to `orders`; every request must succeed.
async fn answering(o: &Outrigger, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let r = get(o.proxy, "orders", "/").await.expect("proxy answers");
        assert_eq!(r.status, 200, "{r:?}\n{}", o.log());
        seen.insert(r.body);
    }
    seen
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

async fn start(consul_urls: &str, extra: &[(&'static str, String)]) -> Outrigger {
    let mut env = vec![
        ("OUTRIGGER_UPSTREAMS", "orders".to_string()),
        ("OUTRIGGER_DISCOVERY", consul_urls.to_string()),
    ];
    env.extend_from_slice(extra);
    let mut o = Outrigger::start(bin(), &env).await;
    o.wait_for("/ready", Duration::from_secs(10)).await;
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_speaks_consul_to_py_consul() {
    let consul = ConsulEmulator::start().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/integration/clients/consul_client_check.py"
    );
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg("127.0.0.1")
        .arg(consul.addr.port().to_string())
        .output()
        .await
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'consul'"),
        "py-consul is not installed: integration/run-tests.sh installs it"
    );
    assert!(
        out.status.success(),
        "py-consul against the emulator failed:\n{stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "py-consul: ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_speaks_consul_to_rs_consul() {
    use rs_consul::{
        Config, Consul, DeregisterEntityPayload, GetServiceNodesRequest, QueryOptions,
        RegisterEntityCheck, RegisterEntityPayload, RegisterEntityService,
    };
    let emulator = ConsulEmulator::start().await;
    let client = Consul::new(Config {
        address: emulator.url(),
        token: Some("rs-token".into()),
        ..Config::default()
    });
    let register = |id: &str, port: u16| RegisterEntityPayload {
        ID: None,
        Node: "node-a".into(),
        Address: "127.0.0.1".into(),
        Datacenter: None,
        TaggedAddresses: Default::default(),
        NodeMeta: Default::default(),
        Service: Some(RegisterEntityService {
            ID: Some(id.into()),
            Service: "rsorders".into(),
            Tags: vec!["v1".into()],
            TaggedAddresses: Default::default(),
            Meta: Default::default(),
            Port: Some(port),
            Namespace: None,
        }),
        Checks: vec![RegisterEntityCheck {
            Node: None,
            CheckID: None,
            Name: "alive".into(),
            Notes: None,
            Status: Some("passing".into()),
            ServiceID: Some(id.into()),
            Definition: Default::default(),
        }],
        SkipNodeUpdate: None,
    };
    client
        .register_entity(&register("rs-1", 7001))
        .await
        .unwrap();
    let request = || GetServiceNodesRequest {
        service: "rsorders",
        passing: true,
        ..Default::default()
    };
    let first = client.get_service_nodes(request(), None).await.unwrap();
    assert_eq!(first.response.len(), 1);
    assert_eq!(first.response[0].service.port, 7001);
    assert_eq!(first.response[0].node.node, "node-a");
    assert_eq!(emulator.last_token().as_deref(), Some("rs-token"));

    // A blocking query returns when the service changes, with a higher index.
    let later = {
        let client = Consul::new(Config {
            address: emulator.url(),
            token: None,
            ..Config::default()
        });
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            client
                .deregister_entity(&DeregisterEntityPayload {
                    Node: Some("node-a".into()),
                    Datacenter: None,
                    CheckID: None,
                    ServiceID: Some("rs-1".into()),
                    Namespace: None,
                })
                .await
        })
    };
    let started = Instant::now();
    let blocked = client
        .get_service_nodes(
            request(),
            Some(QueryOptions {
                index: Some(first.index),
                wait: Some(Duration::from_secs(10)),
                timeout: Some(Duration::from_secs(15)),
                ..QueryOptions::default()
            }),
        )
        .await
        .unwrap();
    later.await.unwrap().unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "did not block"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "did not wake on change"
    );
    assert!(blocked.index > first.index);
    assert!(blocked.response.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_answers_have_the_captured_shape_and_header_case() {
    let consul = ConsulEmulator::start().await;
    consul.register("redis", "redis", "127.0.0.1:8000".parse().unwrap(), 10);
    let mut s = tokio::net::TcpStream::connect(consul.addr).await.unwrap();
    s.write_all(
        b"GET /v1/health/service/redis HTTP/1.1\r\nHost: consul\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    // Go servers canonicalise header names, as in the capture (X-Consul-Knownleader).
    assert!(head.contains("\r\nX-Consul-Index: "), "{head}");
    assert!(head.contains("\r\nX-Consul-Knownleader: true"), "{head}");
    let ours: Value = serde_json::from_str(body).unwrap();
    // Meta maps hold user data, not protocol shape: only their presence counts.
    let mut missing = outrigger_integration::shape::missing_keys(
        &fixture("health-service-docs.json"),
        &ours,
        &|k: &str| k.ends_with("Meta"),
    );
    // The docs show tagged addresses with lower-case keys; real servers (and the emulator)
    // send Address/Port, which PROVENANCE.md records.
    missing.retain(|k| !k.contains("TaggedAddresses.lan") && !k.contains("TaggedAddresses.wan"));
    assert!(
        missing.is_empty(),
        "keys the capture has and the emulator lacks: {missing:?}"
    );

    // An unknown service is an empty list with an index, as in the capture.
    let r = get(consul.addr, "consul", "/v1/health/service/nope")
        .await
        .unwrap();
    assert_eq!(r.body, "[]");
    assert!(r.headers.contains_key("x-consul-index"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_deregistrations_and_checks_drive_routing() {
    let ups = [
        TestUpstream::start("n0").await,
        TestUpstream::start("n1").await,
        TestUpstream::start("n2").await,
        TestUpstream::start("n3").await,
    ];
    let consul = ConsulEmulator::start().await;
    for (i, u) in ups[..3].iter().enumerate() {
        consul.register(&format!("orders-{i}"), "orders", u.addr, 1);
    }
    consul.register("users-0", "users", ups[3].addr, 1);
    let o = start(&format!("consul://{}", consul.addr), &[]).await;
    assert_eq!(answering(&o, 6).await, set(&["n0", "n1", "n2"]));

    consul.register("orders-3", "orders", ups[3].addr, 1);
    until(
        "new registration routed",
        Duration::from_secs(3),
        || async { answering(&o, 4).await.contains("n3") },
    )
    .await;

    consul.deregister("orders-0");
    until(
        "deregistered node dropped",
        Duration::from_secs(3),
        || async { answering(&o, 6).await == set(&["n1", "n2", "n3"]) },
    )
    .await;

    consul.set_check("orders-1", "critical");
    until("critical node dropped", Duration::from_secs(3), || async {
        answering(&o, 6).await == set(&["n2", "n3"])
    })
    .await;

    consul.set_check("orders-1", "passing");
    until("recovered node back", Duration::from_secs(3), || async {
        answering(&o, 6).await == set(&["n1", "n2", "n3"])
    })
    .await;
    let s = o.service("orders").await;
    assert_eq!(s["state"], "fresh");
    assert_eq!(s["source"], format!("consul://{}", consul.addr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_and_the_warning_filter_follow_consul() {
    let ups = [
        TestUpstream::start("n0").await,
        TestUpstream::start("n1").await,
    ];
    let consul = ConsulEmulator::start().await;
    consul.register("orders-0", "orders", ups[0].addr, 3);
    consul.register("orders-1", "orders", ups[1].addr, 1);
    let o = start(&format!("consul://{}?health=warning", consul.addr), &[]).await;
    let up = o.service("orders").await;
    let weights: Vec<i64> = up["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["weight"].as_i64().unwrap())
        .collect();
    let mut sorted = weights.clone();
    sorted.sort();
    assert_eq!(sorted, [1, 3], "Weights.Passing: {up}");
    // Warning keeps the node with Weights.Warning (1) when warning is allowed.
    consul.set_check("orders-0", "warning");
    until("warning weight applied", Duration::from_secs(3), || async {
        let s = o.service("orders").await;
        s["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["weight"] == 1)
    })
    .await;
    assert_eq!(answering(&o, 4).await, set(&["n0", "n1"]));
}

/// Consul's rule for an index that goes backwards (a restored snapshot): reset the watch and
/// read again. The registry did nothing wrong, so it is no registry error: the state stays
/// fresh, no error is shown, and routing follows later changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_reset_restarts_the_watch_without_an_error() {
    let ups = [
        TestUpstream::start("n0").await,
        TestUpstream::start("n1").await,
    ];
    let consul = ConsulEmulator::start().await;
    consul.register("orders-0", "orders", ups[0].addr, 1);
    consul.register("orders-1", "orders", ups[1].addr, 1);
    let o = start(&format!("consul://{}?wait=2s", consul.addr), &[]).await;
    assert_eq!(answering(&o, 4).await, set(&["n0", "n1"]));

    consul.reset_index(3);
    until("index reset logged", Duration::from_secs(6), || async {
        o.log().contains("index went backwards")
    })
    .await;
    assert_eq!(answering(&o, 4).await, set(&["n0", "n1"]));
    // The watch restarted from 0: later changes are still seen.
    let n2 = TestUpstream::start("n2").await;
    consul.register("orders-2", "orders", n2.addr, 1);
    until(
        "change after reset routed",
        Duration::from_secs(3),
        || async { answering(&o, 6).await.contains("n2") },
    )
    .await;
    let s = o.service("orders").await;
    assert_eq!(s["state"], "fresh", "{s}");
    assert!(s["last_error"].is_null(), "{s}");
}

/// An agent that answers at once with `X-Consul-Index: 0` or none: Consul's rule (0 counts as
/// 1) holds, no error is reported, the agent is polled about once a second rather than in a
/// loop, and a held scale-down is confirmed after its window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_usable_index_is_polled_and_trusted() {
    for quirk in [IndexQuirk::Zero, IndexQuirk::Missing] {
        let ups = [
            TestUpstream::start("n0").await,
            TestUpstream::start("n1").await,
            TestUpstream::start("n2").await,
        ];
        let consul = ConsulEmulator::start().await;
        for (i, up) in ups.iter().enumerate() {
            consul.register(&format!("orders-{i}"), "orders", up.addr, 1);
        }
        consul.index_quirk(Some(quirk));
        let o = start(
            &format!("consul://{}?wait=2s", consul.addr),
            &[("OUTRIGGER_LKG_CONFIRM", "2s".to_string())],
        )
        .await;
        let before = consul.health_requests();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let polls = consul.health_requests() - before;
        assert!(polls <= 4, "{quirk:?}: {polls} reads in 2 s");
        let s = o.service("orders").await;
        assert_eq!(s["state"], "fresh", "{quirk:?}: {s}");
        assert!(s["last_error"].is_null(), "{quirk:?}: {s}");

        // A drastic scale-down is held, then confirmed by the registry standing by it.
        consul.deregister("orders-1");
        consul.deregister("orders-2");
        until("scale-down held", Duration::from_secs(3), || async {
            o.service("orders").await["state"] == "held"
        })
        .await;
        until("scale-down confirmed", Duration::from_secs(6), || async {
            answering(&o, 3).await == set(&["n0"])
        })
        .await;
    }
}

/// A server that applies only the first of several `tag` filters (Consul before 1.3): the
/// answer is checked, and nodes without every tag are not routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tag_filter_is_checked_on_the_answer() {
    let ups = [
        TestUpstream::start("both").await,
        TestUpstream::start("v2-only").await,
    ];
    let consul = ConsulEmulator::start().await;
    consul.register_tagged("orders-0", "orders", ups[0].addr, &["v2", "canary"]);
    consul.register_tagged("orders-1", "orders", ups[1].addr, &["v2"]);
    consul.first_tag_only(true);
    let o = start(&format!("consul://{}?tag=v2&tag=canary", consul.addr), &[]).await;
    assert_eq!(answering(&o, 6).await, set(&["both"]));
}

/// An entry without a `Service` object (or with a number for an address) is one dropped,
/// counted entry: at start the good entries route at once, and later a new good node is routed
/// though the odd entries are still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_entry_is_dropped_and_the_rest_routes() {
    let ups = [
        TestUpstream::start("n0").await,
        TestUpstream::start("n1").await,
        TestUpstream::start("n2").await,
    ];
    let consul = ConsulEmulator::start().await;
    consul.register("orders-0", "orders", ups[0].addr, 1);
    consul.register("orders-1", "orders", ups[1].addr, 1);
    consul.serve_garbage(Some(Garbage::OddEntries));
    let o = start(&format!("consul://{}", consul.addr), &[]).await;
    until(
        "ready with the good entries",
        Duration::from_secs(5),
        || async { o.service("orders").await["state"] == "fresh" },
    )
    .await;
    assert_eq!(answering(&o, 4).await, set(&["n0", "n1"]));
    consul.register("orders-2", "orders", ups[2].addr, 1);
    until("the new node routed", Duration::from_secs(5), || async {
        answering(&o, 6).await.contains("n2")
    })
    .await;
    let metrics = o.metrics().await;
    let dropped = metrics
        .lines()
        .find(|l| {
            l.starts_with("outrigger_discovery_dropped_entries_total")
                && l.contains("malformed_entry")
        })
        .unwrap_or_default();
    assert!(dropped.ends_with(" 2"), "{metrics}");
    assert!(
        o.log().contains("Service"),
        "the drop names the field: {}",
        o.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_answers_and_outages_keep_the_last_good_nodes() {
    let ups = [
        TestUpstream::start("n0").await,
        TestUpstream::start("n1").await,
    ];
    let consul = ConsulEmulator::start().await;
    consul.register("orders-0", "orders", ups[0].addr, 1);
    consul.register("orders-1", "orders", ups[1].addr, 1);
    let o = start(&format!("consul://{}", consul.addr), &[]).await;
    assert_eq!(answering(&o, 4).await, set(&["n0", "n1"]));

    /// A fault to switch on, and the words the reported error must contain.
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "5xx",
            Box::new(|| consul.fail_with(Some(500))),
            "HTTP status 500",
        ),
        (
            "binary",
            Box::new(|| consul.serve_garbage(Some(Garbage::Binary))),
            "unparsable",
        ),
        (
            "html",
            Box::new(|| consul.serve_garbage(Some(Garbage::Html))),
            "unparsable",
        ),
        (
            "truncated",
            Box::new(|| consul.serve_garbage(Some(Garbage::Truncated))),
            "unparsable",
        ),
        (
            "huge",
            Box::new(|| consul.serve_garbage(Some(Garbage::Huge(17 * 1024 * 1024)))),
            "larger than",
        ),
    ];
    for (what, fault, expected) in cases {
        fault();
        until(what, Duration::from_secs(5), || async {
            let s = o.service("orders").await;
            s["state"] == "stale"
                && s["last_error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(expected))
        })
        .await;
        assert_eq!(answering(&o, 4).await, set(&["n0", "n1"]), "{what}");
        consul.fail_with(None);
        consul.serve_garbage(None);
        until("recovery", Duration::from_secs(15), || async {
            o.service("orders").await["state"] == "fresh"
        })
        .await;
    }

    // Consul down altogether, then back: routing never changes, and the watch recovers.
    consul.stop();
    until("outage seen", Duration::from_secs(5), || async {
        o.service("orders").await["state"] == "stale"
    })
    .await;
    for _ in 0..3 {
        assert_eq!(answering(&o, 4).await, set(&["n0", "n1"]));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    consul.restart().await;
    let n2 = TestUpstream::start("n2").await;
    consul.register("orders-2", "orders", n2.addr, 1);
    until(
        "watch recovered after restart",
        Duration::from_secs(15),
        || async { answering(&o, 6).await.contains("n2") },
    )
    .await;
    let metrics = o.metrics().await;
    assert!(
        metrics
            .contains("outrigger_discovery_updates_total{service=\"orders\",result=\"rejected\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_takes_over_when_the_first_fails() {
    let ups = [
        TestUpstream::start("n0").await,
        TestUpstream::start("n1").await,
    ];
    let first = ConsulEmulator::start().await;
    let second = ConsulEmulator::start().await;
    for c in [&first, &second] {
        c.register("orders-0", "orders", ups[0].addr, 1);
        c.register("orders-1", "orders", ups[1].addr, 1);
    }
    let o = start(
        &format!("consul://{},{}", first.addr, second.addr),
        &[("OUTRIGGER_CONSUL_TOKEN", "s3cr3t-token".into())],
    )
    .await;
    assert_eq!(answering(&o, 4).await, set(&["n0", "n1"]));
    assert_eq!(first.last_token().as_deref(), Some("s3cr3t-token"));

    first.stop();
    let n2 = TestUpstream::start("n2").await;
    second.register("orders-2", "orders", n2.addr, 1);
    until(
        "second server's change routed",
        Duration::from_secs(10),
        || async { answering(&o, 6).await.contains("n2") },
    )
    .await;
    assert_eq!(second.last_token().as_deref(), Some("s3cr3t-token"));
    // The token is a credential: not in logs, not in the admin API.
    assert!(!o.log().contains("s3cr3t-token"));
    assert!(!o.upstreams().await.to_string().contains("s3cr3t-token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_watch_puts_no_load_on_consul() {
    let up = TestUpstream::start("n0").await;
    let consul = ConsulEmulator::start().await;
    consul.register("orders-0", "orders", up.addr, 1);
    let _o = start(&format!("consul://{}", consul.addr), &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = consul.health_requests();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // One blocking query hangs the whole time; nothing else is asked.
    assert_eq!(
        consul.health_requests(),
        before,
        "polling while nothing changes"
    );
    assert!(before <= 3, "{before} requests to start one watch");
}

/// Registers 1,000 instances of `orders` on loopback ports nothing listens on (only the admin
/// API is read), starts Outrigger with `spacing`, changes one instance every 20 ms for 2 s and
/// returns how many health queries Outrigger sent meanwhile, once it routes to the last change.
async fn reads_during_churn(spacing: &str) -> u64 {
    let consul = ConsulEmulator::start().await;
    for i in 0..1_000u16 {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 20_000 + i));
        consul.register(&format!("orders-{i}"), "orders", addr, 1);
    }
    let o = start(
        &format!("consul://{}", consul.addr),
        &[("OUTRIGGER_UPDATE_SPACING", spacing.to_string())],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = consul.health_requests();
    let mut last = String::new();
    for k in 0..100u16 {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 2], 30_000 + k));
        consul.register("orders-churn", "orders", addr, 1);
        last = addr.to_string();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reads = consul.health_requests() - before;
    // Intermediate states may be skipped, never the newest.
    until("the last change routed", Duration::from_secs(3), || async {
        o.service("orders").await["endpoints"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["address"] == last.as_str()))
    })
    .await;
    reads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_churning_service_is_read_at_its_spacing_and_ends_on_its_newest_state() {
    // 10 s at 10,000 endpoints is 1 s at 1,000: at most four reads in 2 s of churn. Reading
    // every change is bounded only by the watch's token bucket (one per 50 ms) and the time a
    // read takes (18 reads in a debug build).
    let spaced = reads_during_churn("10s").await;
    let unspaced = reads_during_churn("0").await;
    assert!(spaced <= 4, "{spaced} reads with spacing");
    assert!(unspaced >= 8, "{unspaced} reads without spacing");
}
