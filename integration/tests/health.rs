//! Health checking and resilience end to end: a node killed under load, passive ejection of
//! 500s and of a slow node, active HTTP and TCP probes, the panic threshold, the retry budget,
//! the concurrency limit and the pending-connection limit.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outrigger_integration::client::get;
use outrigger_integration::wait::until;
use outrigger_integration::{NodeFile, Outrigger, TestUpstream};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_outrigger"))
}

async fn start(nodes: &[&TestUpstream], extra: &[(&'static str, String)]) -> Outrigger {
    let list: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let mut env = vec![
        ("OUTRIGGER_UPSTREAMS", "orders".to_string()),
        (
            "OUTRIGGER_DISCOVERY",
            format!("static:orders={}", list.join(",")),
        ),
    ];
    env.extend_from_slice(extra);
    Outrigger::start(bin(), &env).await
}

async fn endpoint(o: &Outrigger, addr: std::net::SocketAddr) -> Value {
    let up = o.upstreams().await;
    up["services"]["orders"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .cloned()
        .unwrap_or(Value::Null)
}

async fn bodies(o: &Outrigger, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = get(o.proxy, "orders", "/").await.unwrap();
        *seen
            .entry(format!("{} {}", r.status.as_u16(), r.body))
            .or_default() += 1;
    }
    seen
}

async fn metric(o: &Outrigger, prefix: &str) -> f64 {
    o.metrics()
        .await
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_costs_no_failed_request() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let c = TestUpstream::start("c").await;
    let c_addr = c.addr;
    let o = Arc::new(
        start(
            &[&a, &b, &c],
            &[("OUTRIGGER_OUTLIER_BASE_EJECTION", "1s".into())],
        )
        .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (o, stop, sent, failed) = (o.clone(), stop.clone(), sent.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let r = get(o.proxy, "orders", "/").await;
                sent.fetch_add(1, Ordering::SeqCst);
                if !matches!(&r, Ok(r) if r.status == 200) {
                    failed.fetch_add(1, Ordering::SeqCst);
                    eprintln!("failed: {r:?}");
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.stop();
    let killed = Instant::now();
    let ejected_after = until("killed node ejected", Duration::from_secs(3), || async {
        endpoint(&o, c_addr).await["healthy"] == false
    })
    .await;
    assert!(
        ejected_after < Duration::from_secs(1),
        "ejected after {ejected_after:?}"
    );
    let e = endpoint(&o, c_addr).await;
    assert!(e["health"]["ejected_until"].is_string(), "{e}");
    assert_eq!(e["health"]["last_failure"], "connect_failure", "{e}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The node comes back on the same port: re-admitted once its ejection (1 s) is over.
    let c2 = TestUpstream::start_on("c", c_addr).await;
    let back_after = until("node re-admitted", Duration::from_secs(5), || async {
        c2.hits() > 0 && endpoint(&o, c_addr).await["healthy"] == true
    })
    .await;
    eprintln!("killed node ejected after {ejected_after:?}, re-admitted {back_after:?} after restart ({:?} after the kill)", killed.elapsed());
    assert!(
        back_after < Duration::from_secs(3),
        "re-admitted after {back_after:?}"
    );
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert!(sent > 200, "only {sent} requests sent");
    assert_eq!(failed, 0, "{failed} of {sent} GETs failed");
    // Counted by what went wrong: the killed node refused connections or broke them.
    let metrics = o.metrics().await;
    let retries: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("outrigger_retries_total{service=\"orders\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(retries >= 1.0, "{metrics}");
    let for_node_failures: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("outrigger_retries_total{service=\"orders\""))
        .filter(|l| {
            ["connect_failure", "reset", "timeout", "stale_connection"]
                .iter()
                .any(|r| l.contains(&format!("reason=\"{r}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(for_node_failures, retries, "{metrics}");
    assert!(
        metric(
            &o,
            "outrigger_outlier_ejections_total{service=\"orders\",reason=\"connect_failure\"}"
        )
        .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answering_500_is_ejected_passively() {
    let good = TestUpstream::start("good").await;
    let bad = TestUpstream::start_failing("bad", 500).await;
    let o = start(
        &[&good, &bad],
        &[("OUTRIGGER_OUTLIER_CONSECUTIVE", "3".into())],
    )
    .await;
    // 500 is the node's answer, not retried: the app sees it until the node is ejected.
    let warmup = bodies(&o, 10).await;
    assert!(
        warmup.get("500 bad").copied().unwrap_or(0) <= 3,
        "{warmup:?}"
    );
    let after = bodies(&o, 40).await;
    assert_eq!(after.get("200 good"), Some(&40), "{after:?}");
    let e = endpoint(&o, bad.addr).await;
    assert_eq!(e["healthy"], false, "{e}");
    assert_eq!(e["health"]["last_failure"], "5xx", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_node_is_avoided_by_timeouts() {
    let fast = TestUpstream::start("fast").await;
    let slow = TestUpstream::start_slow("slow", Duration::from_secs(3)).await;
    let o = start(
        &[&fast, &slow],
        &[
            ("OUTRIGGER_TRY_TIMEOUT", "200ms".into()),
            ("OUTRIGGER_OUTLIER_CONSECUTIVE", "2".into()),
        ],
    )
    .await;
    for _ in 0..20 {
        let started = Instant::now();
        let r = get(o.proxy, "orders", "/").await.unwrap();
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "fast"), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "{:?}",
            started.elapsed()
        );
    }
    let e = endpoint(&o, slow.addr).await;
    assert_eq!(e["health"]["last_failure"], "timeout", "{e}");
    assert_eq!(e["healthy"], false, "{e}");
    // Ejected after two timeouts: at most two requests paid the 200 ms.
    assert!(slow.hits() <= 2, "slow node got {} requests", slow.hits());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_http_checks_remove_and_restore_nodes_without_traffic() {
    let n0 = TestUpstream::start("n0").await;
    let n1 = TestUpstream::start("n1").await;
    let n2 = TestUpstream::start("n2").await;
    let o = start(
        &[&n0, &n1, &n2],
        &[(
            "OUTRIGGER_HC",
            "http:/healthz?interval=100ms&timeout=200ms&healthy=2&unhealthy=2".into(),
        )],
    )
    .await;
    // Probes start at once, before any request.
    until("first probes", Duration::from_secs(3), || async {
        metric(
            &o,
            "outrigger_health_probes_total{service=\"orders\",result=\"success\"}",
        )
        .await
            >= 3.0
    })
    .await;
    assert_eq!(endpoint(&o, n1.addr).await["health"]["active"], "healthy");

    n1.set_healthy(false);
    until("n1 unhealthy", Duration::from_secs(2), || async {
        endpoint(&o, n1.addr).await["health"]["active"] == "unhealthy"
    })
    .await;
    let seen = bodies(&o, 30).await;
    assert_eq!(seen.get("200 n1"), None, "{seen:?}");
    assert_eq!(seen.values().sum::<usize>(), 30);

    n1.set_healthy(true);
    until("n1 healthy again", Duration::from_secs(2), || async {
        endpoint(&o, n1.addr).await["healthy"] == true
    })
    .await;
    assert!(bodies(&o, 30).await.contains_key("200 n1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_tcp_checks_see_a_dead_port() {
    let n0 = TestUpstream::start("n0").await;
    let n1 = TestUpstream::start("n1").await;
    let n2 = TestUpstream::start("n2").await;
    let o = start(
        &[&n0, &n1, &n2],
        &[(
            "OUTRIGGER_HC_ORDERS",
            "tcp?interval=100ms&unhealthy=1".into(),
        )],
    )
    .await;
    n2.stop();
    until("n2 unhealthy", Duration::from_secs(2), || async {
        endpoint(&o, n2.addr).await["health"]["active"] == "unhealthy"
    })
    .await;
    let seen = bodies(&o, 20).await;
    assert_eq!(
        seen.get("200 n0").copied().unwrap_or(0) + seen.get("200 n1").copied().unwrap_or(0),
        20,
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_panic_threshold_every_node_takes_traffic() {
    let nodes = [
        TestUpstream::start("n0").await,
        TestUpstream::start("n1").await,
        TestUpstream::start("n2").await,
        TestUpstream::start("n3").await,
    ];
    let o = start(
        &nodes.iter().collect::<Vec<_>>(),
        &[(
            "OUTRIGGER_HC",
            "http:/healthz?interval=100ms&unhealthy=1".into(),
        )],
    )
    .await;
    // One of four unhealthy: 75% healthy, above 50%: it is left out.
    nodes[0].set_healthy(false);
    until("n0 out", Duration::from_secs(2), || async {
        endpoint(&o, nodes[0].addr).await["healthy"] == false
    })
    .await;
    assert!(!bodies(&o, 20).await.contains_key("200 n0"));
    assert_eq!(o.upstreams().await["services"]["orders"]["panic"], false);
    // Three of four unhealthy: 25% healthy, below 50%: panic, all four take traffic.
    nodes[1].set_healthy(false);
    nodes[2].set_healthy(false);
    until("panic", Duration::from_secs(2), || async {
        o.upstreams().await["services"]["orders"]["panic"] == true
    })
    .await;
    let seen = bodies(&o, 40).await;
    for n in ["n0", "n1", "n2", "n3"] {
        assert_eq!(seen.get(&format!("200 {n}")), Some(&10), "{seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_amplification() {
    // Three nodes all answering 503, retries=2 and no ejection: unbounded, every request would
    // cost three attempts.
    let nodes = [
        TestUpstream::start_failing("n0", 503).await,
        TestUpstream::start_failing("n1", 503).await,
        TestUpstream::start_failing("n2", 503).await,
    ];
    let refs: Vec<&TestUpstream> = nodes.iter().collect();
    let measure = |budget: &'static str, floor: &'static str| {
        let refs = refs.clone();
        async move {
            let before: usize = refs.iter().map(|n| n.hits()).sum();
            let o = start(
                &refs,
                &[
                    ("OUTRIGGER_OUTLIER_CONSECUTIVE", "0".into()),
                    ("OUTRIGGER_RETRIES", "2".into()),
                    ("OUTRIGGER_RETRY_BUDGET", budget.into()),
                    ("OUTRIGGER_RETRY_BUDGET_MIN", floor.into()),
                ],
            )
            .await;
            for _ in 0..200 {
                let r = get(o.proxy, "orders", "/").await.unwrap();
                assert_eq!(r.status, 503);
            }
            let hits: usize = refs.iter().map(|n| n.hits()).sum::<usize>() - before;
            (
                hits as f64 / 200.0,
                metric(
                    &o,
                    "outrigger_retry_budget_exhausted_total{service=\"orders\"}",
                )
                .await,
            )
        }
    };
    // Control: a floor of 100,000 retries a second never runs out.
    let (unbounded, _) = measure("100%", "100000").await;
    let (budgeted, exhausted) = measure("20%", "0").await;
    eprintln!("attempts per request: unbounded -> {unbounded:.2}, budget 20% -> {budgeted:.2}");
    assert!(
        unbounded > 2.9,
        "control: {unbounded:.2} attempts per request"
    );
    assert!(
        budgeted <= 1.21,
        "budgeted: {budgeted:.2} attempts per request"
    );
    assert!(exhausted > 100.0, "budget refusals counted: {exhausted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_limit_answers_503() {
    let slow = TestUpstream::start_slow("slow", Duration::from_millis(500)).await;
    let o = Arc::new(start(&[&slow], &[("OUTRIGGER_MAX_REQUESTS", "2".into())]).await);
    let mut all = Vec::new();
    for _ in 0..5 {
        let o = o.clone();
        all.push(tokio::spawn(async move {
            get(o.proxy, "orders", "/").await.unwrap()
        }));
    }
    let mut statuses = HashMap::<(u16, String), usize>::new();
    for r in all {
        let r = r.await.unwrap();
        *statuses
            .entry((r.status.as_u16(), r.cause().to_string()))
            .or_default() += 1;
    }
    assert_eq!(
        statuses.get(&(200, String::new())),
        Some(&2),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.get(&(503, "max-requests".to_string())),
        Some(&3),
        "{statuses:?}"
    );
}

/// A node that stopped answering: a loopback listener with an accept queue of one, taken by a
/// connection that is never accepted, so further connections hang unanswered, as to a host
/// that is gone. Returns the listener and the filler, which must stay open.
fn unanswering_node() -> (socket2::Socket, std::net::TcpStream, std::net::SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let filler = std::net::TcpStream::connect(addr).unwrap();
    // The queue is now full: a further connection must not complete.
    let probe = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300));
    assert!(
        probe.is_err(),
        "the test node still accepts connections; it cannot stand for an unanswering host"
    );
    (listener, filler, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_connection_limit_answers_503_and_frees_its_slots() {
    let (_listener, _filler, addr) = unanswering_node();
    let o = Arc::new(
        Outrigger::start(
            bin(),
            &[
                ("OUTRIGGER_UPSTREAMS", "orders".into()),
                ("OUTRIGGER_DISCOVERY", format!("static:orders={addr}")),
                ("OUTRIGGER_MAX_PENDING_CONNECTS", "2".into()),
                ("OUTRIGGER_CONNECT_TIMEOUT", "1500ms".into()),
            ],
        )
        .await,
    );
    let batch = |n: usize| {
        let o = o.clone();
        async move {
            let all: Vec<_> = (0..n)
                .map(|_| {
                    let o = o.clone();
                    tokio::spawn(async move { get(o.proxy, "orders", "/").await.unwrap() })
                })
                .collect();
            let mut causes = HashMap::<(u16, String), usize>::new();
            for r in all {
                let r = r.await.unwrap();
                *causes
                    .entry((r.status.as_u16(), r.cause().to_string()))
                    .or_default() += 1;
            }
            causes
        }
    };
    // Two requests wait on connections that never complete; the other four are refused at
    // once instead of piling up more.
    let started = Instant::now();
    let causes = batch(6).await;
    assert_eq!(
        causes.get(&(503, "max-pending-connects".to_string())),
        Some(&4),
        "{causes:?}"
    );
    assert_eq!(
        causes.get(&(504, "connect-timeout".to_string())),
        Some(&2),
        "{causes:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(1400));
    assert_eq!(
        metric(&o, "outrigger_overloaded_total{service=\"orders\"}").await,
        4.0
    );
    // The timed-out attempts gave their slots back: two new requests may connect again.
    let causes = batch(2).await;
    assert_eq!(
        causes.get(&(504, "connect-timeout".to_string())),
        Some(&2),
        "{causes:?}"
    );
}

/// With active checks on, a node that joins a running service takes no request until its
/// first check passes (a node still starting answers 503 on /healthz), then takes its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_waits_for_its_first_passing_check() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    b.set_healthy(false);
    let file = NodeFile::new();
    let write = |nodes: &[&TestUpstream]| file.write_nodes("orders", nodes);
    write(&[&a]);
    let mut o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders".into()),
            ("OUTRIGGER_DISCOVERY", file.url()),
            ("OUTRIGGER_FILE_POLL", "50ms".into()),
            ("OUTRIGGER_HC", "http:/healthz?interval=200ms".into()),
        ],
    )
    .await;
    o.wait_for("/ready", Duration::from_secs(5)).await;
    // The first node set is trusted at once.
    assert_eq!(o.served("orders", 5).await.get("a"), Some(&5));
    write(&[&a, &b]);
    until("b listed", Duration::from_secs(5), || async {
        o.upstreams().await["services"]["orders"]["endpoints"]
            .as_array()
            .is_some_and(|e| e.len() == 2)
    })
    .await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        let r = get(o.proxy, "orders", "/").await.expect("answer");
        assert_eq!(
            r.body, "a",
            "a new node took traffic before its first check"
        );
    }
    assert_eq!(b.hits(), 0);
    b.set_healthy(true);
    until(
        "b takes traffic after passing",
        Duration::from_secs(5),
        || async {
            get(o.proxy, "orders", "/")
                .await
                .is_ok_and(|r| r.body == "b")
        },
    )
    .await;
}
