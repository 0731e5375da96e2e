//! Which requests are retried on another node, whatever the app's body framing: raw-socket
//! nodes on loopback against the real binary.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use outrigger_integration::client;
use outrigger_integration::raw::{self, Action, RawNode};
use outrigger_integration::Outrigger;
use tokio::net::TcpListener;

fn bin() -> &'static Path {
    outrigger_integration::process::binary_under_test(env!("CARGO_BIN_EXE_outrigger"))
}

/// Outrigger with the service `orders` on `nodes`, round robin, one worker, no ejection (every
/// request meets the nodes in turn).
async fn start(nodes: &[SocketAddr]) -> Outrigger {
    let list: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    let env = [
        ("OUTRIGGER_UPSTREAMS", "orders".to_string()),
        (
            "OUTRIGGER_DISCOVERY",
            format!("static:orders={}", list.join(",")),
        ),
        ("OUTRIGGER_WORKER_THREADS", "1".to_string()),
        ("OUTRIGGER_OUTLIER_CONSECUTIVE", "0".to_string()),
    ];
    Outrigger::start(bin(), &env).await
}

/// An address on loopback that refuses connections.
async fn refusing() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

/// `method` with an 11-byte chunked body over HTTP/1.1; the status line.
async fn chunked(o: &Outrigger, method: &str) -> String {
    let request = format!(
        "{method} /c HTTP/1.1\r\nhost: orders\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
    );
    let answer = raw::exchange(o.proxy, request.as_bytes(), Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.lines().next().unwrap_or_default().to_string()
}

/// A body that says nothing of its length, so HTTP/2 sends no `content-length`.
struct Unsized(Option<Bytes>);

impl Body for Unsized {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.take().map(|data| Ok(Frame::data(data))))
    }
}

/// `method` with an 11-byte body and no length over h2c; the status.
async fn h2c_unsized(o: &Outrigger, method: &str) -> u16 {
    let (mut h2, _conn) = client::h2c(o.proxy).await;
    let req = Request::builder()
        .method(method)
        .uri("http://orders/h2")
        .body(Unsized(Some(Bytes::from_static(b"hello world"))))
        .expect("request");
    let resp = h2.send_request(req).await.expect("answer");
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

fn connect_errors(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("outrigger_upstream_connect_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_is_retried_whatever_the_body_framing() {
    let node = RawNode::start(|_, _| Action::Reply(raw::ok("ok"))).await;
    let o = start(&[refusing().await, node.addr]).await;
    // Round robin: of every two requests, one meets the refusing node first.
    for method in ["PUT", "POST"] {
        for _ in 0..2 {
            let status = chunked(&o, method).await;
            assert!(status.contains(" 200 "), "{method} chunked: {status}");
            assert_eq!(h2c_unsized(&o, method).await, 200, "{method} over h2c");
        }
    }
    assert!(
        connect_errors(&o.metrics().await) >= 4.0,
        "the refusing node was never tried"
    );
    let seen = node.seen();
    assert_eq!(seen.len(), 8);
    assert!(seen.iter().all(|s| s.body == b"hello world"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_body_without_a_length_is_resent_after_a_gateway_error() {
    let failing = RawNode::start(|_, _| {
        Action::Reply(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_vec())
    })
    .await;
    let node = RawNode::start(|_, _| Action::Reply(raw::ok("ok"))).await;
    let o = start(&[failing.addr, node.addr]).await;
    for _ in 0..2 {
        let status = chunked(&o, "PUT").await;
        assert!(status.contains(" 200 "), "PUT chunked: {status}");
        assert_eq!(h2c_unsized(&o, "PUT").await, 200, "PUT over h2c");
    }
    // Each body reached the failing node first half the time, and then the other one in full.
    assert!(!failing.seen().is_empty());
    assert!(failing.seen().iter().all(|s| s.body == b"hello world"));
    let seen = node.seen();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|s| s.body == b"hello world"), "{seen:?}");
    // Not idempotent: a POST that reached a node is not sent again.
    let status = chunked(&o, "POST").await;
    let status2 = chunked(&o, "POST").await;
    assert!(
        [status, status2].iter().any(|s| s.contains(" 503 ")),
        "a POST was resent after a node read it"
    );
}

/// Which statuses are retried, and whether a POST is, are per-service settings: by default a
/// 500 and a POST's 503 reach the app; with `OUTRIGGER_RETRY_ON_<SERVICE>` and
/// `OUTRIGGER_RETRY_NON_IDEMPOTENT_<SERVICE>` they go to the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_statuses_and_non_idempotent_methods_are_per_service_settings() {
    use outrigger_integration::TestUpstream;
    let (e500, e503, ok) = (
        TestUpstream::start_failing("e500", 500).await,
        TestUpstream::start_failing("e503", 503).await,
        TestUpstream::start("ok").await,
    );
    let (a, b, c) = (e500.addr, e503.addr, ok.addr);
    let o = Outrigger::start(
        bin(),
        &[
            (
                "OUTRIGGER_UPSTREAMS",
                "get,get_tuned,post,post_tuned".into(),
            ),
            (
                "OUTRIGGER_DISCOVERY",
                format!("static:get={a},{c};get_tuned={a},{c};post={b},{c};post_tuned={b},{c}"),
            ),
            ("OUTRIGGER_WORKER_THREADS", "1".into()),
            ("OUTRIGGER_LB", "round_robin".into()),
            ("OUTRIGGER_OUTLIER_CONSECUTIVE", "0".into()),
            ("OUTRIGGER_RETRY_ON_GET_TUNED", "500-504".into()),
            ("OUTRIGGER_RETRY_NON_IDEMPOTENT_POST_TUNED", "on".into()),
        ],
    )
    .await;
    let statuses = |service: &'static str, post: bool| {
        let proxy = o.proxy;
        async move {
            let mut seen = Vec::new();
            for _ in 0..4 {
                let method = if post { "POST" } else { "GET" };
                let req = Request::builder()
                    .method(method)
                    .uri("/")
                    .header("host", service)
                    .body(http_body_util::Full::new(Bytes::from_static(b"order")))
                    .expect("request");
                seen.push(
                    client::send(proxy, req)
                        .await
                        .expect("answer")
                        .status
                        .as_u16(),
                );
            }
            seen
        }
    };
    let get = statuses("get", false).await;
    assert!(
        get.contains(&500),
        "a 500 is not retried by default: {get:?}"
    );
    let get_tuned = statuses("get_tuned", false).await;
    assert!(get_tuned.iter().all(|s| *s == 200), "{get_tuned:?}");
    let post = statuses("post", true).await;
    assert!(
        post.contains(&503),
        "a POST is not retried by default: {post:?}"
    );
    let post_tuned = statuses("post_tuned", true).await;
    assert!(post_tuned.iter().all(|s| *s == 200), "{post_tuned:?}");
    let settings = o.upstreams().await["services"]["get_tuned"]["settings"].clone();
    assert_eq!(
        settings["retry_on"],
        serde_json::json!([500, 501, 502, 503, 504]),
        "{settings}"
    );
    let settings = o.upstreams().await["services"]["post_tuned"]["settings"].clone();
    assert_eq!(settings["retry_non_idempotent"], true, "{settings}");
}
