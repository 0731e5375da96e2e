//! Nacos discovery end to end against the real r-nacos server: push-driven routing,
//! deregistration and disabling, auth, and a server killed and restarted under Outrigger.

use std::path::Path;
use std::time::Duration;

use outrigger_integration::rnacos::RNacos;
use outrigger_integration::wait::until;
use outrigger_integration::{Outrigger, TestUpstream};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_outrigger"))
}

async fn start(nacos: &RNacos, options: &str, extra: &[(&'static str, String)]) -> Outrigger {
    let mut env = vec![
        ("OUTRIGGER_UPSTREAMS", "orders".to_string()),
        (
            "OUTRIGGER_DISCOVERY",
            format!("nacos://{}?grpc_port={}&{options}", nacos.http, nacos.grpc),
        ),
    ];
    env.extend_from_slice(extra);
    let mut o = Outrigger::start(bin(), &env).await;
    o.wait_for("/ready", Duration::from_secs(10)).await;
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_changes_drive_routing_within_a_second() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let c = TestUpstream::start("c").await;
    let nacos = RNacos::start(None).await;
    nacos.register("orders", a.addr, 3.0).await;
    nacos.register("orders", b.addr, 1.0).await;
    // A 30 s poll: anything seen sooner came by push.
    let o = start(&nacos, "poll=30s", &[]).await;
    let seen = o.served("orders", 40).await;
    assert_eq!(
        (seen.get("a"), seen.get("b")),
        (Some(&30), Some(&10)),
        "weights: {seen:?}"
    );

    nacos.register("orders", c.addr, 1.0).await;
    let took = until(
        "pushed registration routed",
        Duration::from_secs(5),
        || async { o.served("orders", 6).await.contains_key("c") },
    )
    .await;
    // Well inside the 30 s poll, so it came by push. r-nacos batches its notifications for up
    // to about a second; the latency itself is measured by bench/ (convergence), not here.
    assert!(took < Duration::from_secs(3), "push took {took:?}");
    eprintln!("pushed registration routed after {took:?}");

    nacos.set_enabled("orders", b.addr, 1.0, false).await;
    until(
        "disabled instance dropped",
        Duration::from_secs(2),
        || async { !o.served("orders", 8).await.contains_key("b") },
    )
    .await;

    nacos.deregister("orders", c.addr).await;
    until(
        "deregistered instance dropped",
        Duration::from_secs(2),
        || async { !o.served("orders", 8).await.contains_key("c") },
    )
    .await;
    assert_eq!(o.upstreams().await["services"]["orders"]["state"], "fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_logs_in_and_credentials_stay_secret() {
    let a = TestUpstream::start("a").await;
    let nacos = RNacos::start(Some(("outrigger", "s3cr3t-pass"))).await;
    nacos.register("orders", a.addr, 1.0).await;
    let o = start(
        &nacos,
        "poll=1s",
        &[
            ("OUTRIGGER_NACOS_USERNAME", "outrigger".into()),
            ("OUTRIGGER_NACOS_PASSWORD", "s3cr3t-pass".into()),
        ],
    )
    .await;
    assert_eq!(o.served("orders", 3).await.get("a"), Some(&3));
    assert!(!o.log().contains("s3cr3t-pass"));
    assert!(!o.upstreams().await.to_string().contains("s3cr3t-pass"));

    // Wrong credentials: the error names the registry and the status, routing never starts.
    let wrong = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders".into()),
            (
                "OUTRIGGER_DISCOVERY",
                format!("nacos://{}?poll=1s&grpc_port={}", nacos.http, nacos.grpc),
            ),
            ("OUTRIGGER_NACOS_USERNAME", "outrigger".into()),
            ("OUTRIGGER_NACOS_PASSWORD", "wrong".into()),
        ],
    )
    .await;
    until("login failure reported", Duration::from_secs(5), || async {
        wrong.upstreams().await["services"]["orders"]["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&nacos.http.to_string()))
    })
    .await;
    assert_eq!(
        wrong.upstreams().await["services"]["orders"]["state"],
        "waiting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_keeps_the_last_good_nodes_and_a_restart_recovers() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let mut nacos = RNacos::start(None).await;
    nacos.register("orders", a.addr, 1.0).await;
    let o = start(&nacos, "poll=1s", &[]).await;
    assert_eq!(o.served("orders", 3).await.get("a"), Some(&3));

    nacos.kill();
    until("outage seen", Duration::from_secs(5), || async {
        o.upstreams().await["services"]["orders"]["state"] == "stale"
    })
    .await;
    for _ in 0..3 {
        assert_eq!(o.served("orders", 3).await.get("a"), Some(&3));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    nacos.restart().await;
    // r-nacos may come back without the instance (if it kept none on disk): register both, as
    // the services themselves would, and expect Outrigger to follow without a restart.
    nacos.register("orders", a.addr, 1.0).await;
    nacos.register("orders", b.addr, 1.0).await;
    until(
        "recovered and following changes",
        Duration::from_secs(10),
        || async { o.served("orders", 6).await.contains_key("b") },
    )
    .await;
    assert_eq!(o.upstreams().await["services"]["orders"]["state"], "fresh");
}
