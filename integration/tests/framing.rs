//! End-to-end tests of what crosses the proxy: request heads (Host, target, CONNECT, Expect),
//! response framing from nodes that frame badly, the admin API's Host check and credentials
//! in errors. Raw-socket nodes and apps on loopback against the real binary.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use outrigger_integration::client;
use outrigger_integration::raw::{self, Action, RawNode};
use outrigger_integration::Outrigger;

/// The binary under test: this build's, or the one `OUTRIGGER_TEST_BIN` names.
fn bin() -> &'static Path {
    outrigger_integration::process::binary_under_test(env!("CARGO_BIN_EXE_outrigger"))
}

async fn start(node: SocketAddr) -> Outrigger {
    let env = [
        ("OUTRIGGER_UPSTREAMS", "orders".to_string()),
        ("OUTRIGGER_DISCOVERY", format!("static:orders={node}")),
        ("OUTRIGGER_WORKER_THREADS", "1".to_string()),
        ("OUTRIGGER_RETRIES", "0".to_string()),
    ];
    Outrigger::start(bin(), &env).await
}

/// Sends `request` to the proxy and returns the whole raw answer (read until close).
async fn ask(o: &Outrigger, request: &str) -> String {
    let answer = raw::exchange(o.proxy, request.as_bytes(), Duration::from_secs(3)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The last request head the node read, lower-cased.
fn last_head(node: &RawNode) -> String {
    node.seen()
        .last()
        .map(|s| s.head.to_ascii_lowercase())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_sees_the_host_that_routing_used() {
    let node = RawNode::start(|_, _| Action::Reply(raw::ok("ok"))).await;
    let o = start(node.addr).await;
    let a = ask(
        &o,
        "GET http://orders/a HTTP/1.1\r\nHost: other.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    let head = last_head(&node);
    assert!(head.contains("\r\nhost: orders\r\n"), "{head}");
    assert!(!head.contains("other.example"), "{head}");

    let a = ask(
        &o,
        "GET http://user:secret@orders/c HTTP/1.1\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    let head = last_head(&node);
    assert!(
        head.contains("\r\nhost: orders\r\n") && !head.contains("secret"),
        "{head}"
    );

    let seen = node.seen().len();
    let a = ask(
        &o,
        "GET /a HTTP/1.1\r\nHost: orders\r\nHost: other.example\r\n\r\n",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 400"), "{a}");
    for bad in ["orders:abc", "orders:99999", "u:p@orders"] {
        let a = ask(&o, &format!("GET /a HTTP/1.1\r\nHost: {bad}\r\n\r\n")).await;
        assert!(a.starts_with("HTTP/1.1 400"), "{bad}: {a}");
    }
    assert_eq!(
        node.seen().len(),
        seen,
        "a request with two Host headers is not forwarded"
    );

    // HTTP/2: :authority wins over a host header.
    let (mut h2, _conn) = client::h2c(o.proxy).await;
    let req = Request::get("http://orders/h2")
        .header("host", "other.example")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = h2.send_request(req).await.expect("answer");
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    let head = last_head(&node);
    assert!(head.contains("\r\nhost: orders\r\n"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_connect_and_expect_are_handled_before_the_node() {
    let node = RawNode::start(|_, _| Action::Reply(raw::ok("ok"))).await;
    let o = start(node.addr).await;
    let a = ask(
        &o,
        "GET http://orders?x=1 HTTP/1.1\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    assert!(
        last_head(&node).starts_with("get /?x=1 http/1.1\r\n"),
        "{}",
        last_head(&node)
    );

    let seen = node.seen().len();
    let a = ask(&o, "GET * HTTP/1.1\r\nhost: orders\r\n\r\n").await;
    assert!(a.starts_with("HTTP/1.1 400"), "{a}");
    let a = ask(
        &o,
        "CONNECT orders:443 HTTP/1.1\r\nhost: orders:443\r\n\r\n",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 405"), "{a}");
    assert!(
        a.to_ascii_lowercase()
            .contains("x-outrigger-error: connect-not-supported"),
        "{a}"
    );
    assert_eq!(node.seen().len(), seen, "neither reached the node");

    let a = ask(
        &o,
        "POST /p HTTP/1.1\r\nhost: orders\r\nexpect: 100-continue\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbody",
    )
    .await;
    assert!(a.contains("HTTP/1.1 200"), "{a}");
    let head = last_head(&node);
    assert!(
        head.starts_with("post /p") && !head.contains("expect"),
        "{head}"
    );
}

/// What the app receives when the node answers a GET with `answer` and closes.
async fn through_proxy(answer: &'static [u8]) -> String {
    let node = RawNode::start(move |_, _| Action::ReplyClose(answer.to_vec())).await;
    let o = start(node.addr).await;
    ask(
        &o,
        "GET / HTTP/1.1\r\nhost: orders\r\nconnection: close\r\n\r\n",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_response_framing_is_a_502() {
    let cases: [&'static [u8]; 6] = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
    ];
    for case in cases {
        let a = through_proxy(case).await;
        assert!(
            a.starts_with("HTTP/1.1 502"),
            "{}\n=> {a}",
            String::from_utf8_lossy(case)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_toward_the_app_comes_from_the_body_forwarded() {
    // An HTTP/1.0 node's answer reaches the app as HTTP/1.1, keeping its connection alive.
    let a = through_proxy(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    // A signed chunk size ends the body as broken, never as a complete message.
    let a = through_proxy(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(!a.ends_with("0\r\n\r\n") && !a.contains("hello"), "{a}");
    // A good chunked body arrives whole, framed by the proxy.
    let a = through_proxy(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    let body = a.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let decoded: String = body
        .split("\r\n")
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect();
    assert!(
        decoded.contains("hello world") || body == "hello world",
        "{a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_names_that_could_be_rebound() {
    let node = RawNode::start(|_, _| Action::Reply(raw::ok("ok"))).await;
    let o = start(node.addr).await;
    let a = raw::exchange(
        o.admin,
        b"GET /upstreams HTTP/1.1\r\nhost: rebind.attacker.example\r\nconnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    let a = String::from_utf8_lossy(&a);
    assert!(a.starts_with("HTTP/1.1 403"), "{a}");
    assert!(!a.contains("127.0.0.1"), "{a}");
    let host = format!(
        "GET /upstreams HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        o.admin
    );
    let a = raw::exchange(o.admin, host.as_bytes(), Duration::from_secs(3)).await;
    assert!(String::from_utf8_lossy(&a).starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_token_never_reaches_upstreams_or_the_log() {
    const TOKEN: &str = "eyJTOKEN.SECRET.VALUE";
    // A Nacos that logs in and then drops every list request.
    let nacos = RawNode::start(|head, _| {
        if head.starts_with("POST /nacos/v1/auth/login") {
            let body = format!("{{\"accessToken\":\"{TOKEN}\",\"tokenTtl\":18000,\"globalAdmin\":false}}");
            Action::Reply(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            )
        } else {
            Action::Close
        }
    })
    .await;
    let env = [
        ("OUTRIGGER_UPSTREAMS", "orders".to_string()),
        (
            "OUTRIGGER_DISCOVERY",
            format!("nacos://{}?push=false&poll=200ms", nacos.addr),
        ),
        ("OUTRIGGER_NACOS_USERNAME", "nacos".to_string()),
        ("OUTRIGGER_NACOS_PASSWORD", "pw-SECRET".to_string()),
        ("OUTRIGGER_LOG", "debug".to_string()),
    ];
    let o = Outrigger::start(bin(), &env).await;
    let mut listed = false;
    for _ in 0..50 {
        listed = nacos.seen().iter().any(|s| s.head.contains("accessToken="));
        if listed && o.upstreams().await["services"]["orders"]["last_error"].is_object() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed, "the adapter logged in and listed with its token");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let up = o.upstreams().await.to_string();
    assert!(up.contains("last_error"), "{up}");
    assert!(!up.contains(TOKEN) && !up.contains("SECRET"), "{up}");
    let log = o.log();
    assert!(!log.contains(TOKEN) && !log.contains("SECRET"), "{log}");
    assert!(!o.metrics().await.contains("SECRET"));
}

/// A request that names no Host (HTTP/1.0 on a dedicated listener) reaches the node with the
/// node's address as its Host, as a direct client would send; one that names a Host keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_host_gets_the_node_address() {
    let node = RawNode::start(|_, _| Action::Reply(raw::ok("ok"))).await;
    let dedicated = SocketAddr::from(([127, 0, 0, 1], outrigger_integration::free_port()));
    let env = [
        ("OUTRIGGER_UPSTREAMS", format!("orders={dedicated}")),
        (
            "OUTRIGGER_DISCOVERY",
            format!("static:orders={}", node.addr),
        ),
    ];
    let _o = Outrigger::start(bin(), &env).await;
    let a = raw::exchange(
        dedicated,
        b"GET /x HTTP/1.0\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(String::from_utf8_lossy(&a).contains(" 200 "), "{a:?}");
    let head = last_head(&node);
    let host = format!("host: {}", node.addr);
    assert!(head.lines().any(|l| l == host), "{head}");
    let a = raw::exchange(
        dedicated,
        b"GET /y HTTP/1.1\r\nhost: anything\r\nconnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(String::from_utf8_lossy(&a).contains(" 200 "), "{a:?}");
    assert!(last_head(&node).lines().any(|l| l == "host: anything"));
}
