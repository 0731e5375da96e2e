//! DNS discovery end to end against the real dnsmasq: A and SRV records routed with the right
//! weights and tiers, record changes followed within TTL + 1 s, outages, NXDOMAIN and failing
//! lookups keep the last good nodes, IPv6.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use outrigger_integration::client::get;
use outrigger_integration::dnsmasq::Dnsmasq;
use outrigger_integration::wait::until;
use outrigger_integration::{Outrigger, TestUpstream};

fn bin() -> &'static Path {
    outrigger_integration::process::binary_under_test(env!("CARGO_BIN_EXE_outrigger"))
}

async fn start(dns: &Dnsmasq, query: String, extra: &[(&'static str, String)]) -> Outrigger {
    let mut env = vec![
        ("OUTRIGGER_UPSTREAMS", "orders".to_string()),
        ("OUTRIGGER_DISCOVERY", format!("dns://{}", dns.addr)),
        ("OUTRIGGER_DNS_ORDERS", query),
    ];
    env.extend_from_slice(extra);
    let mut o = Outrigger::start(bin(), &env).await;
    o.wait_for("/ready", Duration::from_secs(10)).await;
    o
}

/// Upstreams on 127.0.0.2, .3, .4 … sharing one port, as A records with one port need.
async fn same_port_upstreams(n: u8) -> (u16, Vec<TestUpstream>) {
    let first = TestUpstream::start_on("n2", "127.0.0.2:0".parse().unwrap()).await;
    let port = first.addr.port();
    let mut all = vec![first];
    for i in 3..(2 + n) {
        let addr = SocketAddr::from(([127, 0, 0, i], port));
        all.push(TestUpstream::start_on(&format!("n{i}"), addr).await);
    }
    (port, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_are_routed_and_changes_followed_within_ttl() {
    let (port, ups) = same_port_upstreams(3).await;
    let dns = Dnsmasq::start("127.0.0.2 orders.test\n127.0.0.3 orders.test\n", &[]);
    let o = start(&dns, format!("a:orders.test:{port}"), &[]).await;
    let seen = o.served("orders", 10).await;
    assert_eq!(
        (seen.get("n2"), seen.get("n3")),
        (Some(&5), Some(&5)),
        "{seen:?}"
    );

    dns.set_hosts("127.0.0.2 orders.test\n127.0.0.3 orders.test\n127.0.0.4 orders.test\n");
    let took = until("new A record routed", Duration::from_secs(5), || async {
        o.served("orders", 6).await.contains_key("n4")
    })
    .await;
    // TTL 1 s: the change must be seen within TTL + 1 s.
    assert!(took <= Duration::from_secs(2), "followed after {took:?}");
    dns.set_hosts("127.0.0.3 orders.test\n127.0.0.4 orders.test\n");
    until(
        "removed A record dropped",
        Duration::from_secs(3),
        || async { !o.served("orders", 6).await.contains_key("n2") },
    )
    .await;
    assert_eq!(
        o.upstreams().await["services"]["orders"]["source"],
        format!("dns://{}", dns.addr)
    );
    drop(ups);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_ports_weights_and_priority_tiers() {
    let heavy = TestUpstream::start("heavy").await;
    let light = TestUpstream::start("light").await;
    let backup = TestUpstream::start("backup").await;
    let name = "_http._tcp.orders.test";
    let mut dns = Dnsmasq::start(
        "127.0.0.1 n1.test\n",
        &[
            (name, "n1.test", heavy.addr.port(), 0, 30),
            (name, "n1.test", light.addr.port(), 0, 10),
            (name, "n1.test", backup.addr.port(), 1, 10),
        ],
    );
    let o = start(&dns, format!("srv:{name}"), &[]).await;
    let seen = o.served("orders", 40).await;
    assert_eq!(seen.get("heavy"), Some(&30), "{seen:?}");
    assert_eq!(seen.get("light"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("backup"), None, "{seen:?}");

    // The priority-0 targets go away: the backup tier takes over.
    dns.set_srv(&[
        (name, "n1.test", heavy.addr.port(), 0, 0),
        (name, "n1.test", backup.addr.port(), 1, 10),
    ]);
    until("SRV change followed", Duration::from_secs(5), || async {
        let s = o.served("orders", 10).await;
        s.get("heavy") == Some(&10)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_and_nxdomain_keep_the_last_good_nodes() {
    let (port, _ups) = same_port_upstreams(2).await;
    let mut dns = Dnsmasq::start("127.0.0.2 orders.test\n127.0.0.3 orders.test\n", &[]);
    let o = start(&dns, format!("ip:orders.test:{port}"), &[]).await;
    assert_eq!(o.served("orders", 4).await.len(), 2);

    dns.stop();
    // A stopped server is noticed once the resolver's queries time out (seconds each, with
    // retries): under a loaded test run that took over 10 s.
    until("outage seen", Duration::from_secs(25), || async {
        o.upstreams().await["services"]["orders"]["state"] == "stale"
    })
    .await;
    for _ in 0..3 {
        assert_eq!(o.served("orders", 4).await.len(), 2);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    dns.restart();
    until("recovered", Duration::from_secs(10), || async {
        o.upstreams().await["services"]["orders"]["state"] == "fresh"
    })
    .await;

    // The name disappears: NXDOMAIN is an error, not an empty service.
    dns.set_hosts("127.0.0.9 other.test\n");
    until("NXDOMAIN rejected", Duration::from_secs(5), || async {
        let s = &o.upstreams().await["services"]["orders"];
        s["state"] == "stale"
            && s["last_error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("NXDOMAIN"))
    })
    .await;
    assert_eq!(o.served("orders", 4).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_records_work() {
    let v6 = TestUpstream::start_on("v6", "[::1]:0".parse().unwrap()).await;
    let dns = Dnsmasq::start("::1 v6.test\n", &[]);
    let o = start(&dns, format!("aaaa:v6.test:{}", v6.addr.port()), &[]).await;
    assert_eq!(o.served("orders", 3).await.get("v6"), Some(&3));
    let up = o.upstreams().await;
    assert_eq!(
        up["services"]["orders"]["endpoints"][0]["address"],
        v6.addr.to_string()
    );
}

#[test]
fn dns_queries_are_required_and_checked() {
    use outrigger_integration::process::run_to_exit;
    let base = [
        ("OUTRIGGER_UPSTREAMS", "orders"),
        ("OUTRIGGER_DISCOVERY", "dns://127.0.0.1:53"),
    ];
    let (status, stderr) = run_to_exit(bin(), &base);
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.contains("OUTRIGGER_DNS_ORDERS=\"\": the DNS query of service \"orders\""),
        "{stderr}"
    );
    let mut env = base.to_vec();
    env.push(("OUTRIGGER_DNS_ORDERS", "a:orders.internal"));
    let (status, stderr) = run_to_exit(bin(), &env);
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.contains("OUTRIGGER_DNS_ORDERS=\"a:orders.internal\": a needs host:port"),
        "{stderr}"
    );
}

/// A name asked for A and AAAA whose AAAA lookup fails (SERVFAIL) routes by its A records:
/// one family's failure does not fail the name, and the state stays fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_record_type_does_not_fail_the_name() {
    let (port, _ups) = same_port_upstreams(2).await;
    let dns = Dnsmasq::start("127.0.0.2 orders.fail\n127.0.0.3 orders.fail\n", &[]);
    let o = start(&dns, format!("ip:orders.fail:{port}"), &[]).await;
    assert_eq!(o.served("orders", 4).await.len(), 2);
    let s = &o.upstreams().await["services"]["orders"];
    assert_eq!(s["state"], "fresh", "{s}");
    assert!(
        o.log().contains("DNS lookup failed for one record type"),
        "{}",
        o.log()
    );
}

/// SRV targets whose address lookups fail (SERVFAIL) make the answer an error: the last good
/// nodes keep serving past the confirmation window, never an empty service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_srv_target_lookups_keep_the_last_good_nodes() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let name = "_http._tcp.orders.test";
    let dns = Dnsmasq::start(
        "127.0.0.1 a.fail\n127.0.0.1 b.fail\n",
        &[
            (name, "a.fail", a.addr.port(), 0, 1),
            (name, "b.fail", b.addr.port(), 0, 1),
        ],
    );
    let o = start(
        &dns,
        format!("srv:{name}"),
        &[("OUTRIGGER_LKG_CONFIRM", "1s".to_string())],
    )
    .await;
    assert_eq!(o.served("orders", 4).await.len(), 2);
    // Every target's lookups now fail.
    dns.set_hosts("");
    until("failure seen", Duration::from_secs(5), || async {
        o.upstreams().await["services"]["orders"]["state"] == "stale"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(o.served("orders", 4).await.len(), 2);
    let s = &o.upstreams().await["services"]["orders"];
    assert!(
        s["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("fail")),
        "{s}"
    );
}

/// A name moved to a new address while the old one refuses connections: a like-for-like
/// replacement is not held for the confirmation window (30 s of 502s); once the old node
/// fails, the new answer applies at once, and /upstreams and the metrics say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_of_failing_nodes_applies_at_once() {
    let (port, ups) = same_port_upstreams(2).await;
    let dns = Dnsmasq::start("127.0.0.2 db.test\n", &[]);
    let o = start(&dns, format!("a:db.test:{port}"), &[]).await;
    assert_eq!(o.served("orders", 2).await.get("n2"), Some(&2));
    ups[0].stop();
    dns.set_hosts("127.0.0.3 db.test\n");
    until("the new address serves", Duration::from_secs(5), || async {
        get(o.proxy, "orders", "/")
            .await
            .is_ok_and(|r| r.status == 200 && r.body == "n3")
    })
    .await;
    let s = &o.upstreams().await["services"]["orders"];
    assert_eq!(s["state"], "fresh", "{s}");
    assert!(
        s["last_replacement"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("failing")),
        "{s}"
    );
    assert!(o
        .metrics()
        .await
        .contains("outrigger_discovery_updates_total{service=\"orders\",result=\"replaced\"} 1"));
    // A node that still serves is not replaced early: the guard holds as before.
    dns.set_hosts("127.0.0.2 db.test\n");
    until("held", Duration::from_secs(5), || async {
        o.upstreams().await["services"]["orders"]["state"] == "held"
    })
    .await;
    assert_eq!(o.served("orders", 3).await.get("n3"), Some(&3));
}
