//! Registering the local app (`OUTRIGGER_REGISTER`), end to end with two Outriggers: one
//! registers its app, the other discovers and routes to it. Against the Consul and Eureka
//! emulators (read back with py-consul and py-eureka-client) and the real r-nacos.

use std::path::Path;
use std::time::{Duration, Instant};

use outrigger_integration::client::get;
use outrigger_integration::consul::{AgentEvent, ConsulEmulator};
use outrigger_integration::eureka::{EurekaEmulator, EurekaEvent};
use outrigger_integration::wait::until;
use outrigger_integration::{Outrigger, TestUpstream};
use serde_json::Value;

fn bin() -> &'static Path {
    outrigger_integration::process::binary_under_test(env!("CARGO_BIN_EXE_outrigger"))
}

/// The sidecar beside `app`: registers it in `registry` as `orders` with `extra` settings.
async fn registering(app: &TestUpstream, registry: String, extra: &[(&str, &str)]) -> Outrigger {
    let mut env = vec![
        ("OUTRIGGER_UPSTREAMS", "unused".to_string()),
        ("OUTRIGGER_DISCOVERY", "static:unused=127.0.0.1:1".into()),
        ("OUTRIGGER_REGISTER", registry),
        ("OUTRIGGER_REGISTER_SERVICE", "orders".into()),
        ("OUTRIGGER_REGISTER_ADDRESS", app.addr.to_string()),
        (
            "OUTRIGGER_REGISTER_CHECK",
            "http:/healthz?interval=100ms&timeout=500ms&unhealthy=1&healthy=1".into(),
        ),
        ("OUTRIGGER_REGISTER_RENEW", "300ms".into()),
        ("OUTRIGGER_REGISTER_EXPIRE", "1s".into()),
        ("OUTRIGGER_REGISTER_TAGS", "v2,canary".into()),
        ("OUTRIGGER_REGISTER_METADATA", "version=2.1".into()),
        ("OUTRIGGER_REGISTER_ZONE", "zone-a".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    Outrigger::start(bin(), &env).await
}

/// Another sidecar, routing `orders` from `discovery`.
async fn routing(discovery: String) -> Outrigger {
    Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders".into()),
            ("OUTRIGGER_DISCOVERY", discovery),
            ("OUTRIGGER_LKG_CONFIRM", "200ms".into()),
            ("OUTRIGGER_RETRIES", "0".into()),
        ],
    )
    .await
}

async fn routes_to(o: &Outrigger, body: &str) -> bool {
    get(o.proxy, "orders", "/")
        .await
        .is_ok_and(|r| r.status == 200 && r.body == body)
}

fn python(script: &str, args: &[String]) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("integration/clients")
        .join(script);
    let out = std::process::Command::new("python3")
        .arg(path)
        .args(args)
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed (integration/run-tests.sh installs py-consul and py-eureka-client):\n{stderr}"
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

const ID: &str = "orders-127.0.0.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_registration_follows_the_apps_check_and_ends_before_the_listener() {
    let consul = ConsulEmulator::start().await;
    let app = TestUpstream::start("app").await;
    let id = format!("{ID}-{}", app.addr.port());
    let a = registering(
        &app,
        format!("consul://{}", consul.addr),
        &[
            ("OUTRIGGER_REGISTER_CONSUL_CHECK", "ttl"),
            ("OUTRIGGER_SHUTDOWN_DELAY", "3s"),
            ("OUTRIGGER_CONSUL_TOKEN", "s3cret-token"),
        ],
    )
    .await;
    let b = routing(format!("consul://{}", consul.addr)).await;
    until(
        "the other sidecar routes to the app",
        Duration::from_secs(5),
        || routes_to(&b, "app"),
    )
    .await;
    // What was registered, as Consul's agent API takes it.
    let body = consul.registrations().remove(0);
    assert_eq!(body["ID"], id.as_str(), "{body}");
    assert_eq!(body["Name"], "orders");
    assert_eq!(body["Address"], "127.0.0.1");
    assert_eq!(body["Port"], app.addr.port());
    assert_eq!(body["Tags"], serde_json::json!(["v2", "canary"]));
    assert_eq!(body["Meta"]["zone"], "zone-a");
    assert_eq!(body["Meta"]["version"], "2.1");
    assert_eq!(body["Check"]["TTL"], "900ms", "three renewals");
    assert_eq!(body["Check"]["DeregisterCriticalServiceAfter"], "1s");
    assert_eq!(consul.last_token().as_deref(), Some("s3cret-token"));
    assert!(!a.log().contains("s3cret-token"), "the token was logged");
    // py-consul reads the same instance back.
    let seen = python(
        "consul_readback.py",
        &[
            "127.0.0.1".into(),
            consul.addr.port().to_string(),
            "orders".into(),
            id.clone(),
        ],
    );
    assert_eq!(seen["status"], "passing", "{seen}");
    assert_eq!(seen["service"]["Port"], app.addr.port(), "{seen}");

    // The app's check fails: the check goes critical and the other sidecar stops routing.
    app.set_healthy(false);
    until("critical in Consul", Duration::from_secs(3), || async {
        consul
            .check_statuses()
            .get(&format!("service:{id}"))
            .map(String::as_str)
            == Some("critical")
    })
    .await;
    until("no longer routed", Duration::from_secs(5), || async {
        !routes_to(&b, "app").await
    })
    .await;
    app.set_healthy(true);
    until("routed again", Duration::from_secs(5), || {
        routes_to(&b, "app")
    })
    .await;

    // SIGTERM: deregistered at once, while the sidecar still serves its app's calls.
    let signalled = Instant::now();
    a.terminate();
    until("deregistered", Duration::from_secs(2), || async {
        !consul.has_service(&id)
    })
    .await;
    assert!(signalled.elapsed() < Duration::from_secs(2));
    assert!(
        consul
            .events()
            .contains(&AgentEvent::Deregistered(id.clone())),
        "{:?}",
        consul.events()
    );
    let during = get(a.proxy, "unused", "/").await.expect("still listening");
    assert_eq!(during.status, 502, "{during:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_agent_checks_and_what_a_lost_agent_or_a_kill_leaves() {
    let consul = ConsulEmulator::start().await;
    let app = TestUpstream::start("app").await;
    let id = format!("{ID}-{}", app.addr.port());
    // The agent runs the HTTP check itself.
    let mut a = registering(&app, format!("consul://{}", consul.addr), &[]).await;
    until("registered and passing", Duration::from_secs(5), || async {
        consul
            .check_statuses()
            .get(&format!("service:{id}"))
            .map(String::as_str)
            == Some("passing")
    })
    .await;
    let body = consul.registrations().remove(0);
    assert_eq!(
        body["Check"]["HTTP"],
        format!("http://{}/healthz", app.addr),
        "{body}"
    );
    assert_eq!(body["Check"]["Interval"], "100ms");

    // An agent restarted without its data: the registration comes back.
    consul.forget_services();
    until("registered again", Duration::from_secs(5), || async {
        consul.has_service(&id)
    })
    .await;
    assert!(a.log().contains("registering again"), "{}", a.log());

    // kill -9: nobody deregisters; the agent's check fails (the app is gone too) and the
    // agent reaps the service after DeregisterCriticalServiceAfter.
    a.kill();
    drop(app);
    until("reaped by the agent", Duration::from_secs(6), || async {
        !consul.has_service(&id)
    })
    .await;
    assert!(consul.events().contains(&AgentEvent::Reaped(id.clone())));
}

/// With a native sidecar the app stops first: its preStop asks for the deregistration, and the
/// sidecar serves on, without registering again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_deregister_leaves_the_registry_and_serves_on() {
    use bytes::Bytes;
    use http_body_util::Full;
    let consul = ConsulEmulator::start().await;
    let app = TestUpstream::start("app").await;
    let id = format!("{ID}-{}", app.addr.port());
    let a = registering(
        &app,
        format!("consul://{}", consul.addr),
        &[("OUTRIGGER_REGISTER_CONSUL_CHECK", "ttl")],
    )
    .await;
    until("registered", Duration::from_secs(5), || async {
        consul.has_service(&id)
    })
    .await;
    let req = http::Request::post("/deregister")
        .header("host", "127.0.0.1")
        .header("x-outrigger-admin", "1")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let r = outrigger_integration::client::send(a.admin, req)
        .await
        .expect("answer");
    assert_eq!(r.status, 200, "{r:?}");
    until("deregistered", Duration::from_secs(3), || async {
        !consul.has_service(&id)
    })
    .await;
    let ready = outrigger_integration::client::get_admin(a.admin, "/ready")
        .await
        .expect("answer");
    assert_eq!(ready.status, 503);
    // Renewals would have registered it again by now.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !consul.has_service(&id),
        "registered again after /deregister"
    );
    assert_eq!(
        get(a.proxy, "unused", "/").await.expect("serving").status,
        502
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_down_at_start_is_retried_while_the_proxy_serves() {
    let consul = ConsulEmulator::start().await;
    consul.stop();
    let app = TestUpstream::start("app").await;
    let id = format!("{ID}-{}", app.addr.port());
    let a = registering(
        &app,
        format!("consul://{}", consul.addr),
        &[("OUTRIGGER_REGISTER_CONSUL_CHECK", "ttl")],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The proxy is up and answering while the registry is away.
    let r = get(a.proxy, "unused", "/").await.expect("answers");
    assert_eq!(r.status, 502);
    assert!(a.log().contains("retrying with backoff"), "{}", a.log());
    consul.restart().await;
    until(
        "registered once the registry is back",
        Duration::from_secs(8),
        || async { consul.has_service(&id) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eureka_registration_goes_starting_up_down_and_is_cancelled_on_sigterm() {
    let eureka = EurekaEmulator::start().await;
    let app = TestUpstream::start("app").await;
    let id = format!("{ID}-{}", app.addr.port());
    let a = registering(
        &app,
        format!("eureka://{}/eureka", eureka.addr),
        &[("OUTRIGGER_SHUTDOWN_DELAY", "3s")],
    )
    .await;
    let b = routing(format!("eureka://{}/eureka?interval=100ms", eureka.addr)).await;
    until("routed through Eureka", Duration::from_secs(8), || {
        routes_to(&b, "app")
    })
    .await;
    let events = eureka.events();
    assert_eq!(
        events.first(),
        Some(&EurekaEvent::Registered(id.clone(), "STARTING".into())),
        "{events:?}"
    );
    assert!(events.contains(&EurekaEvent::Registered(id.clone(), "UP".into())));
    until("heartbeats", Duration::from_secs(3), || async {
        eureka
            .events()
            .iter()
            .filter(|e| **e == EurekaEvent::Renewed(id.clone()))
            .count()
            >= 2
    })
    .await;
    let seen = python(
        "eureka_readback.py",
        &[
            format!("http://{}/eureka", eureka.addr),
            "orders".into(),
            id.clone(),
        ],
    );
    assert_eq!(seen["status"], "UP", "{seen}");
    assert_eq!(seen["port"], app.addr.port(), "{seen}");
    assert_eq!(seen["metadata"]["zone"], "zone-a", "{seen}");
    assert_eq!(seen["metadata"]["tags"], "v2,canary", "{seen}");

    app.set_healthy(false);
    until("DOWN in Eureka", Duration::from_secs(3), || async {
        eureka.status_of("orders", &id).as_deref() == Some("DOWN")
    })
    .await;
    until("no longer routed", Duration::from_secs(5), || async {
        !routes_to(&b, "app").await
    })
    .await;
    app.set_healthy(true);
    until("UP again", Duration::from_secs(3), || async {
        eureka.status_of("orders", &id).as_deref() == Some("UP")
    })
    .await;

    a.terminate();
    until("cancelled", Duration::from_secs(2), || async {
        eureka.status_of("orders", &id).is_none()
    })
    .await;
    let events = eureka.events();
    let down = events
        .iter()
        .rposition(|e| *e == EurekaEvent::Registered(id.clone(), "DOWN".into()));
    let cancelled = events
        .iter()
        .position(|e| *e == EurekaEvent::Cancelled(id.clone()));
    assert!(
        down.is_some() && down < cancelled,
        "DOWN, then cancelled: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eureka_lease_expires_after_a_kill_and_a_lost_lease_is_registered_again() {
    let eureka = EurekaEmulator::start().await;
    let app = TestUpstream::start("app").await;
    let id = format!("{ID}-{}", app.addr.port());
    let mut a = registering(&app, format!("eureka://{}/eureka", eureka.addr), &[]).await;
    until("UP", Duration::from_secs(5), || async {
        eureka.status_of("orders", &id).as_deref() == Some("UP")
    })
    .await;
    // The server lost the instance (a restart without replicas): the heartbeat's 404 makes
    // the sidecar register it again.
    eureka.deregister("ORDERS", &id);
    until("registered again", Duration::from_secs(3), || async {
        eureka.status_of("orders", &id).as_deref() == Some("UP")
    })
    .await;
    assert!(eureka
        .events()
        .contains(&EurekaEvent::RenewRefused(id.clone())));
    // kill -9: the lease (1 s here) runs out without renewals and the server evicts it.
    a.kill();
    until("evicted", Duration::from_secs(5), || async {
        eureka.status_of("orders", &id).is_none()
    })
    .await;
}

#[test]
fn bad_registration_settings_are_reported_together() {
    let (status, stderr) = outrigger_integration::process::run_to_exit(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders"),
            ("OUTRIGGER_DISCOVERY", "static:orders=127.0.0.1:1"),
            ("OUTRIGGER_REGISTER", "discovery"),
            ("OUTRIGGER_REGISTER_ADDRESS", "0.0.0.0:8080"),
            ("OUTRIGGER_REGISTER_CHECK", "http:health"),
            ("OUTRIGGER_REGISTER_CONSUL_CHECK", "sometimes"),
            ("OUTRIGGER_REGISTER_WEIGHT", "-2"),
            ("OUTRIGGER_REGISTER_METADATA", "version"),
            ("OUTRIGGER_REGISTER_EXPIRE", "soon"),
        ],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    for named in [
        "OUTRIGGER_REGISTER=\"discovery\"",
        "OUTRIGGER_REGISTER_SERVICE=",
        "OUTRIGGER_REGISTER_ADDRESS=\"0.0.0.0:8080\"",
        "OUTRIGGER_REGISTER_CHECK=\"http:health\"",
        "OUTRIGGER_REGISTER_CONSUL_CHECK=\"sometimes\"",
        "OUTRIGGER_REGISTER_WEIGHT=\"-2\"",
        "OUTRIGGER_REGISTER_METADATA=\"version\"",
        "OUTRIGGER_REGISTER_EXPIRE=\"soon\"",
    ] {
        assert!(stderr.contains(named), "{named} missing from:\n{stderr}");
    }
    let (status, stderr) = outrigger_integration::process::run_to_exit(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders"),
            ("OUTRIGGER_DISCOVERY", "static:orders=127.0.0.1:1"),
            ("OUTRIGGER_REGISTER", "zookeeper://u:hunter2@127.0.0.1:2181"),
            ("OUTRIGGER_REGISTER_SERVICE", "orders"),
            ("OUTRIGGER_REGISTER_ADDRESS", "127.0.0.1:8080"),
        ],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("OUTRIGGER_REGISTER="), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "a password in an error: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacos_registration_is_an_ephemeral_instance_following_the_apps_check() {
    use outrigger_integration::rnacos::RNacos;
    let mut nacos = RNacos::start(None).await;
    let app = TestUpstream::start("app").await;
    let url = format!("nacos://{}?grpc_port={}", nacos.http, nacos.grpc);
    let a = registering(&app, url.clone(), &[("OUTRIGGER_SHUTDOWN_DELAY", "3s")]).await;
    let b = routing(url).await;
    until("routed through Nacos", Duration::from_secs(10), || {
        routes_to(&b, "app")
    })
    .await;
    let listed = nacos.instances("orders").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let inst = &listed[0];
    assert_eq!(inst["port"], app.addr.port(), "{inst}");
    assert_eq!(inst["ephemeral"], true, "{inst}");
    assert_eq!(inst["metadata"]["zone"], "zone-a", "{inst}");

    app.set_healthy(false);
    // Nacos ignores a client's `healthy` for ephemeral instances: the instance is withdrawn.
    until("withdrawn from Nacos", Duration::from_secs(5), || async {
        nacos.instances("orders").await.is_empty()
    })
    .await;
    until("no longer routed", Duration::from_secs(10), || async {
        !routes_to(&b, "app").await
    })
    .await;
    app.set_healthy(true);
    until("routed again", Duration::from_secs(10), || {
        routes_to(&b, "app")
    })
    .await;

    a.terminate();
    until("deregistered", Duration::from_secs(3), || async {
        nacos.instances("orders").await.is_empty()
    })
    .await;
    drop(a);
    // kill -9: the SDK's connection drops and the server removes its ephemeral instance.
    let mut again = registering(
        &app,
        format!("nacos://{}?grpc_port={}", nacos.http, nacos.grpc),
        &[],
    )
    .await;
    until("registered", Duration::from_secs(10), || async {
        !nacos.instances("orders").await.is_empty()
    })
    .await;
    again.kill();
    until("removed by the server", Duration::from_secs(20), || async {
        nacos.instances("orders").await.is_empty()
    })
    .await;
    drop(b);
    nacos.kill();
}
