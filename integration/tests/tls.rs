//! TLS toward the nodes, end to end: rustls nodes on loopback with certificates made in the
//! test, per-service settings, client certificates, and each way a session can fail.

use std::net::SocketAddr;
use std::path::Path;

use outrigger_integration::client::get;
use outrigger_integration::process::run_to_exit;
use outrigger_integration::tls::{TestCa, TlsNode, Use};
use outrigger_integration::{Outrigger, TestUpstream};

fn bin() -> &'static Path {
    outrigger_integration::process::binary_under_test(env!("CARGO_BIN_EXE_outrigger"))
}

/// Outrigger routing each `(service, node)`, with `extra` settings.
async fn start(services: &[(&str, SocketAddr)], extra: &[(&str, String)]) -> Outrigger {
    let names: Vec<&str> = services.iter().map(|(s, _)| *s).collect();
    let statics: Vec<String> = services.iter().map(|(s, a)| format!("{s}={a}")).collect();
    let mut env = vec![
        ("OUTRIGGER_UPSTREAMS", names.join(",")),
        (
            "OUTRIGGER_DISCOVERY",
            format!("static:{}", statics.join(";")),
        ),
        ("OUTRIGGER_WORKER_THREADS", "1".to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    Outrigger::start(bin(), &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_tls_nodes_and_plaintext_ones_side_by_side() {
    let ca = TestCa::new("outrigger test CA");
    let node = TlsNode::start("secure", &ca.issue(&["127.0.0.1"], Use::Server), None).await;
    let plain = TestUpstream::start("plain").await;
    let o = start(
        &[("orders", node.addr), ("users", plain.addr)],
        &[
            ("OUTRIGGER_UPSTREAM_TLS_ORDERS", "on".into()),
            (
                "OUTRIGGER_UPSTREAM_TLS_CA",
                ca.write("ca.pem", &ca.pem()).display().to_string(),
            ),
        ],
    )
    .await;
    for _ in 0..3 {
        let r = get(o.proxy, "orders", "/").await.expect("answer");
        assert_eq!(
            (r.status.as_u16(), r.body.as_str()),
            (200, "secure"),
            "{r:?}"
        );
        let r = get(o.proxy, "users", "/").await.expect("answer");
        assert_eq!(
            (r.status.as_u16(), r.body.as_str()),
            (200, "plain"),
            "{r:?}"
        );
    }
    assert_eq!(node.hits.load(std::sync::atomic::Ordering::SeqCst), 3);
    // The admin API says which services (and so which endpoints) use TLS.
    let services = o.upstreams().await["services"].clone();
    assert_eq!(
        (&services["orders"]["tls"], &services["orders"]["protocol"]),
        (&serde_json::json!(true), &serde_json::json!("http1"))
    );
    assert_eq!(services["orders"]["endpoints"][0]["tls"], true);
    assert_eq!(services["users"]["tls"], false);
    assert!(services["users"]["endpoints"][0].get("tls").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tls_failure_is_a_502_that_names_the_reason() {
    let ca = TestCa::new("outrigger test CA");
    let stranger = TestCa::new("someone else's CA");
    let untrusted = TlsNode::start(
        "untrusted",
        &stranger.issue(&["127.0.0.1"], Use::Server),
        None,
    )
    .await;
    let misnamed = TlsNode::start("misnamed", &ca.issue(&["other.test"], Use::Server), None).await;
    let expired = TlsNode::start(
        "expired",
        &ca.issue(&["127.0.0.1"], Use::ExpiredServer),
        None,
    )
    .await;
    let mtls = TlsNode::start(
        "mtls",
        &ca.issue(&["127.0.0.1"], Use::Server),
        Some(&ca.pem()),
    )
    .await;
    let services = [
        ("untrusted", untrusted.addr, "not signed by a trusted CA"),
        (
            "misnamed",
            misnamed.addr,
            "not valid for \"orders.internal\"",
        ),
        ("expired", expired.addr, "expired"),
        ("mtls", mtls.addr, "requires a client certificate"),
    ];
    let routes: Vec<(&str, SocketAddr)> = services.iter().map(|(s, a, _)| (*s, *a)).collect();
    let o = start(
        &routes,
        &[
            ("OUTRIGGER_UPSTREAM_TLS", "on".into()),
            (
                "OUTRIGGER_UPSTREAM_TLS_CA",
                ca.write("ca.pem", &ca.pem()).display().to_string(),
            ),
            (
                "OUTRIGGER_UPSTREAM_TLS_SERVER_NAME_MISNAMED",
                "orders.internal".into(),
            ),
            ("OUTRIGGER_RETRIES", "0".into()),
        ],
    )
    .await;
    for (service, addr, reason) in services {
        let r = get(o.proxy, service, "/").await.expect("answer");
        assert_eq!(r.status.as_u16(), 502, "{service}: {r:?}");
        assert_eq!(r.cause(), "tls-failed", "{service}: {r:?}");
        assert!(r.body.contains(reason), "{service}: {}", r.body);
        let endpoint = &o.upstreams().await["services"][service]["endpoints"][0];
        assert_eq!(
            endpoint["health"]["last_failure"], "tls",
            "{service}: {endpoint}"
        );
        assert!(
            o.log().contains("TLS with the node failed") && o.log().contains(&addr.to_string()),
            "{service}: {}",
            o.log()
        );
        let metric = format!("outrigger_upstream_tls_errors_total{{service=\"{service}\"}} 1");
        assert!(o.metrics().await.contains(&metric), "{metric}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_to_nodes_that_require_one() {
    let ca = TestCa::new("outrigger test CA");
    let node = TlsNode::start(
        "mtls",
        &ca.issue(&["orders.internal"], Use::Server),
        Some(&ca.pem()),
    )
    .await;
    let client = ca.issue(&["outrigger"], Use::Client);
    let o = start(
        &[("orders", node.addr)],
        &[
            ("OUTRIGGER_UPSTREAM_TLS", "on".into()),
            (
                "OUTRIGGER_UPSTREAM_TLS_CA",
                ca.write("ca.pem", &ca.pem()).display().to_string(),
            ),
            (
                "OUTRIGGER_UPSTREAM_TLS_CERT",
                ca.write("client.pem", &client.cert).display().to_string(),
            ),
            (
                "OUTRIGGER_UPSTREAM_TLS_KEY",
                ca.write("client.key", &client.key).display().to_string(),
            ),
            (
                "OUTRIGGER_UPSTREAM_TLS_SERVER_NAME",
                "orders.internal".into(),
            ),
        ],
    )
    .await;
    let r = get(o.proxy, "orders", "/").await.expect("answer");
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "mtls"), "{r:?}");
}

#[test]
fn unusable_tls_settings_are_reported_by_name() {
    let ca = TestCa::new("outrigger test CA");
    let client = ca.issue(&["outrigger"], Use::Client);
    let cert = ca.write("client.pem", &client.cert).display().to_string();
    let not_pem = ca.write("not.pem", "hello").display().to_string();
    let (status, stderr) = run_to_exit(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders,users,billing,plain,multi"),
            (
                "OUTRIGGER_DISCOVERY",
                "static:orders=127.0.0.1:1;users=127.0.0.1:2;billing=127.0.0.1:3;plain=127.0.0.1:4;multi=127.0.0.1:5",
            ),
            // Every bad setting of one service is reported, not the first.
            ("OUTRIGGER_UPSTREAM_TLS_MULTI", "on"),
            ("OUTRIGGER_UPSTREAM_TLS_CA_MULTI", "/nonexistent/multi-ca.pem"),
            ("OUTRIGGER_UPSTREAM_TLS_CERT_MULTI", &not_pem),
            ("OUTRIGGER_UPSTREAM_TLS_KEY_MULTI", "/nonexistent/multi.key"),
            ("OUTRIGGER_UPSTREAM_TLS_SERVER_NAME_MULTI", "bad name!"),
            // TLS off for this one (the default is wrong), but the file it names is read.
            ("OUTRIGGER_UPSTREAM_TLS_CA_PLAIN", "/nonexistent/plain.pem"),
            ("OUTRIGGER_UPSTREAM_TLS", "maybe"),
            ("OUTRIGGER_UPSTREAM_TLS_ORDERS", "on"),
            ("OUTRIGGER_UPSTREAM_TLS_CA_ORDERS", "/nonexistent/ca.pem"),
            ("OUTRIGGER_UPSTREAM_TLS_USERS", "on"),
            ("OUTRIGGER_UPSTREAM_TLS_CERT_USERS", &cert),
            ("OUTRIGGER_UPSTREAM_TLS_BILLING", "on"),
            ("OUTRIGGER_UPSTREAM_TLS_CA_BILLING", &not_pem),
            ("OUTRIGGER_UPSTREAM_TLS_NOSUCH", "on"),
        ],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    for named in [
        "OUTRIGGER_UPSTREAM_TLS=\"maybe\"",
        "/nonexistent/ca.pem",
        "OUTRIGGER_UPSTREAM_TLS_KEY",
        "not.pem",
        "OUTRIGGER_UPSTREAM_TLS_NOSUCH",
        "OUTRIGGER_UPSTREAM_TLS_CA_PLAIN=\"/nonexistent/plain.pem\"",
        "OUTRIGGER_UPSTREAM_TLS_CA_MULTI=\"/nonexistent/multi-ca.pem\"",
        "OUTRIGGER_UPSTREAM_TLS_CERT_MULTI=",
        "OUTRIGGER_UPSTREAM_TLS_KEY_MULTI=\"/nonexistent/multi.key\"",
        "OUTRIGGER_UPSTREAM_TLS_SERVER_NAME_MULTI=\"bad name!\"",
    ] {
        assert!(stderr.contains(named), "{named} missing from:\n{stderr}");
    }
}

/// Replaces `path`'s contents at once, as cert-manager's and Vault's renames do.
fn rotate(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_files_take_effect_without_a_restart_or_a_failed_request() {
    use std::time::{Duration, Instant};
    let old_ca = TestCa::new("old CA");
    let new_ca = TestCa::new("new CA");
    let node = TlsNode::start("orders", &new_ca.issue(&["127.0.0.1"], Use::Server), None).await;
    let ca_file = old_ca.write("ca.pem", &old_ca.pem());
    let o = start(
        &[("orders", node.addr)],
        &[
            ("OUTRIGGER_UPSTREAM_TLS", "on".into()),
            ("OUTRIGGER_UPSTREAM_TLS_CA", ca_file.display().to_string()),
        ],
    )
    .await;
    let r = get(o.proxy, "orders", "/").await.expect("answer");
    assert_eq!(r.cause(), "tls-failed", "{r:?}");

    // The trusted CA is rotated on disk: new sessions trust the new one within seconds.
    rotate(&ca_file, &new_ca.pem());
    let started = Instant::now();
    loop {
        let r = get(o.proxy, "orders", "/").await.expect("answer");
        if r.status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "never reloaded: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(o.log().contains("TLS files read again"), "{}", o.log());

    // A half-written file is refused and the files in use stay: no request fails.
    rotate(&ca_file, "-----BEGIN CERTIFICATE-----\nMIIB");
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let r = get(o.proxy, "orders", "/").await.expect("answer");
        assert_eq!(r.status, 200, "{r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        o.log().contains("changed TLS files cannot be used"),
        "{}",
        o.log()
    );
}

/// Eureka: an instance whose `port` is disabled and `securePort` enabled (Spring Cloud with
/// `non-secure-port-enabled=false`) is reached over TLS, its certificate checked against its
/// `hostName`, with no TLS setting but the CA; active checks go the same way; a plain
/// instance of the same service stays plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eureka_https_only_instances_are_reached_over_tls_by_host_name() {
    use outrigger_integration::eureka::EurekaEmulator;
    use outrigger_integration::wait::until;
    let ca = TestCa::new("outrigger test CA");
    let secure = TlsNode::start("secure", &ca.issue(&["pay-1.internal"], Use::Server), None).await;
    let plain = TestUpstream::start("plain").await;
    let eureka = EurekaEmulator::start().await;
    eureka.register_secure("orders", "secure-1", secure.addr, "pay-1.internal");
    eureka.register("orders", "plain-1", plain.addr, &[]);
    let mut o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders".into()),
            (
                "OUTRIGGER_DISCOVERY",
                format!("eureka://{}/eureka?interval=100ms", eureka.addr),
            ),
            (
                "OUTRIGGER_UPSTREAM_TLS_CA",
                ca.write("ca.pem", &ca.pem()).display().to_string(),
            ),
            (
                "OUTRIGGER_HC",
                "http:/health?interval=100ms&healthy=1&unhealthy=1".into(),
            ),
        ],
    )
    .await;
    o.wait_for("/ready", std::time::Duration::from_secs(10))
        .await;
    until(
        "both endpoints pass their checks",
        std::time::Duration::from_secs(5),
        || async {
            let endpoints = o.upstreams().await["services"]["orders"]["endpoints"].clone();
            endpoints.as_array().is_some_and(|all| {
                all.len() == 2 && all.iter().all(|e| e["health"]["active"] == "healthy")
            })
        },
    )
    .await;
    let endpoints = o.upstreams().await["services"]["orders"]["endpoints"].clone();
    let shown = endpoints
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["address"] == secure.addr.to_string())
        .cloned()
        .expect("the secure endpoint");
    assert_eq!(
        (&shown["tls"], &shown["host_name"]),
        (
            &serde_json::json!(true),
            &serde_json::json!("pay-1.internal")
        ),
        "{shown}"
    );
    let probes = secure.hits.load(std::sync::atomic::Ordering::SeqCst);
    assert!(probes >= 1, "the active check reached the TLS node");
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let r = get(o.proxy, "orders", "/").await.expect("answer");
        assert_eq!(r.status.as_u16(), 200, "{r:?}");
        *seen.entry(r.body).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both instances answer: {seen:?}");
}

/// The same instance with a certificate for another name fails as TLS, naming the
/// registry's host name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_instance_whose_certificate_is_for_another_name_is_tls_failed() {
    use outrigger_integration::eureka::EurekaEmulator;
    let ca = TestCa::new("outrigger test CA");
    let secure = TlsNode::start("secure", &ca.issue(&["other.internal"], Use::Server), None).await;
    let eureka = EurekaEmulator::start().await;
    eureka.register_secure("orders", "secure-1", secure.addr, "pay-1.internal");
    let mut o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders".into()),
            (
                "OUTRIGGER_DISCOVERY",
                format!("eureka://{}/eureka?interval=100ms", eureka.addr),
            ),
            (
                "OUTRIGGER_UPSTREAM_TLS_CA",
                ca.write("ca.pem", &ca.pem()).display().to_string(),
            ),
            ("OUTRIGGER_RETRIES", "0".into()),
        ],
    )
    .await;
    o.wait_for("/ready", std::time::Duration::from_secs(10))
        .await;
    let r = get(o.proxy, "orders", "/").await.expect("answer");
    assert_eq!((r.status.as_u16(), r.cause()), (502, "tls-failed"), "{r:?}");
    assert!(
        r.body.contains("not valid for \"pay-1.internal\""),
        "{}",
        r.body
    );
}

#[test]
fn a_bad_default_file_names_every_service_it_fails() {
    let (status, stderr) = run_to_exit(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders,users"),
            (
                "OUTRIGGER_DISCOVERY",
                "static:orders=127.0.0.1:1;users=127.0.0.1:2",
            ),
            ("OUTRIGGER_UPSTREAM_TLS", "on"),
            ("OUTRIGGER_UPSTREAM_TLS_CA", "/nonexistent/ca.pem"),
        ],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.matches("/nonexistent/ca.pem: ").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("TLS toward services \"orders\", \"users\""),
        "{stderr}"
    );
}

/// `OUTRIGGER_UPSTREAM_PROTOCOL=h2` over TLS speaks HTTP/2 even to a node that ignores ALPN
/// (it used to fall back to HTTP/1.1 with the request already in HTTP/2's absolute form and
/// no Host); `auto` to the same node speaks HTTP/1.1 with a proper Host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_speaks_http2_to_a_node_that_ignores_alpn() {
    let ca = TestCa::new("outrigger test CA");
    let node =
        TlsNode::start_with_alpn("no-alpn", &ca.issue(&["127.0.0.1"], Use::Server), None, &[])
            .await;
    let ca_file = ca.write("ca.pem", &ca.pem()).display().to_string();
    let o = start(
        &[("h2svc", node.addr), ("autosvc", node.addr)],
        &[
            ("OUTRIGGER_UPSTREAM_TLS", "on".into()),
            ("OUTRIGGER_UPSTREAM_TLS_CA", ca_file),
            ("OUTRIGGER_UPSTREAM_PROTOCOL_H2SVC", "h2".into()),
            ("OUTRIGGER_UPSTREAM_PROTOCOL_AUTOSVC", "auto".into()),
        ],
    )
    .await;
    for service in ["h2svc", "autosvc"] {
        let r = get(o.proxy, service, "/x").await.expect("answer");
        assert_eq!(
            (r.status.as_u16(), r.body.as_str()),
            (200, "no-alpn"),
            "{service}: {r:?}"
        );
    }
    let seen = node.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].version, "HTTP/2.0", "h2: {seen:?}");
    assert_eq!(seen[0].authority, "h2svc", "h2: {seen:?}");
    assert_eq!(seen[1].version, "HTTP/1.1", "auto: {seen:?}");
    assert!(
        seen[1].host_header && seen[1].authority.is_empty(),
        "auto: {seen:?}"
    );
}
