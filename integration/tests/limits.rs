//! One set of header limits for every path: requests over HTTP/1.1 and HTTP/2, responses
//! through the lean client and hyper's, and a node is not blamed for Outrigger's own limits.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use outrigger_integration::client;
use outrigger_integration::raw::{self, Action, RawNode};
use outrigger_integration::Outrigger;

fn bin() -> &'static Path {
    outrigger_integration::process::binary_under_test(env!("CARGO_BIN_EXE_outrigger"))
}

async fn start(node: SocketAddr, extra: &[(&'static str, &str)]) -> Outrigger {
    Outrigger::start_orders(bin(), node, extra).await
}

/// A response with `n` header fields besides its length.
fn many_headers(n: usize) -> Vec<u8> {
    let mut r = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
    for i in 1..n {
        r.push_str(&format!("x-h{i}: {i}\r\n"));
    }
    r.push_str("\r\nok");
    r.into_bytes()
}

/// The status line and `x-outrigger-error` of a raw HTTP/1.1 exchange.
async fn ask(o: &Outrigger, request: &str) -> (String, String) {
    let answer = raw::exchange(o.proxy, request.as_bytes(), Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or_default().to_string();
    let cause = text
        .lines()
        .find_map(|l| l.strip_prefix("x-outrigger-error: "))
        .unwrap_or_default()
        .to_string();
    (status, cause)
}

const GET: &str = "GET / HTTP/1.1\r\nhost: orders\r\nconnection: close\r\n\r\n";
const PUT_CHUNKED: &str = "PUT / HTTP/1.1\r\nhost: orders\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n2\r\nok\r\n0\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_the_header_limits_is_refused_alike_on_every_path_and_not_blamed() {
    let node = RawNode::start(|_, _| Action::Reply(many_headers(110))).await;
    let o = start(node.addr, &[("OUTRIGGER_OUTLIER_CONSECUTIVE", "2")]).await;
    // GET (lean client) and a chunked PUT (hyper's client) meet the same limit of 100.
    for _ in 0..3 {
        for request in [GET, PUT_CHUNKED] {
            let (status, cause) = ask(&o, request).await;
            assert!(status.contains(" 502 "), "{status}");
            assert_eq!(cause, "response-headers-too-large");
        }
    }
    // Six refusals, two in a row would eject: the node is still in service.
    let upstreams = o.upstreams().await;
    let text = upstreams.to_string();
    assert!(text.contains("\"ejected_until\":null"), "{text}");
    assert!(text.contains("\"last_failure\":\"none\""), "{text}");
    assert!(o
        .metrics()
        .await
        .contains("outrigger_response_headers_over_limit_total{service=\"orders\"} 6"));

    // Raised, both paths pass; a head over the byte limit is refused alike.
    let o = start(
        node.addr,
        &[
            ("OUTRIGGER_MAX_HEADERS", "200"),
            ("OUTRIGGER_MAX_RESPONSE_HEADERS", "1KiB"),
        ],
    )
    .await;
    for request in [GET, PUT_CHUNKED] {
        let (status, cause) = ask(&o, request).await;
        assert!(status.contains(" 502 "), "{status}");
        assert_eq!(cause, "response-headers-too-large");
    }
    let o = start(node.addr, &[("OUTRIGGER_MAX_HEADERS", "200")]).await;
    for request in [GET, PUT_CHUNKED] {
        let (status, _) = ask(&o, request).await;
        assert!(status.contains(" 200 "), "{status}");
    }
}

/// Sends a GET with `headers` over h2c; the status.
async fn h2c_get(o: &Outrigger, headers: &[(String, String)]) -> u16 {
    let (mut h2, _conn) = client::h2c(o.proxy).await;
    let mut req = Request::get("http://orders/h2");
    for (name, value) in headers {
        req = req.header(name, value);
    }
    let resp = h2
        .send_request(req.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("answer");
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

fn h1_get(headers: &[(String, String)]) -> String {
    let mut r = String::from("GET / HTTP/1.1\r\nhost: orders\r\nconnection: close\r\n");
    for (name, value) in headers {
        r.push_str(&format!("{name}: {value}\r\n"));
    }
    r + "\r\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_header_limits_are_the_same_over_http1_and_http2() {
    let node = RawNode::start(|_, _| Action::Reply(raw::ok("ok"))).await;
    let big = vec![("x-big".to_string(), "a".repeat(20_000))];
    let many: Vec<(String, String)> = (0..150)
        .map(|i| (format!("x-h{i}"), i.to_string()))
        .collect();
    let o = start(node.addr, &[]).await;
    // 20 KB in one field: under 60 KiB on both.
    assert!(ask(&o, &h1_get(&big)).await.0.contains(" 200 "));
    assert_eq!(h2c_get(&o, &big).await, 200);
    // 150 fields: over 100 on both.
    assert!(ask(&o, &h1_get(&many)).await.0.contains(" 431 "));
    assert_eq!(h2c_get(&o, &many).await, 431);
    let o = start(node.addr, &[("OUTRIGGER_MAX_HEADERS", "200")]).await;
    assert!(ask(&o, &h1_get(&many)).await.0.contains(" 200 "));
    assert_eq!(h2c_get(&o, &many).await, 200);
}
