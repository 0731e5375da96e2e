//! HTTP/2 and gRPC toward the nodes, end to end: an h2c-only node behind an HTTP/1.1 app, and
//! gRPC (every kind of call, trailers, deadlines, Outrigger's own errors) between grpcio's
//! client and grpcio nodes from PyPI, through the real binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::Request;
use http_body_util::{BodyExt, Full};
use outrigger_integration::client;
use outrigger_integration::client::get;
use outrigger_integration::h2node::H2Node;
use outrigger_integration::{free_port, Outrigger};
use serde_json::Value;
use tokio::net::TcpStream;

fn bin() -> &'static Path {
    outrigger_integration::process::binary_under_test(env!("CARGO_BIN_EXE_outrigger"))
}

fn echo_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/grpc/echo.py")
}

async fn start(discovery: String, extra: &[(&str, &str)]) -> Outrigger {
    let mut env = vec![
        ("OUTRIGGER_UPSTREAMS", "grpc".to_string()),
        ("OUTRIGGER_DISCOVERY", discovery),
        ("OUTRIGGER_UPSTREAM_PROTOCOL", "h2".to_string()),
        ("OUTRIGGER_WORKER_THREADS", "1".to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    Outrigger::start(bin(), &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2c_apps_reach_an_h2c_only_node_with_its_trailers() {
    let node = H2Node::start("h2only").await;
    let o = start(format!("static:grpc={}", node.addr), &[]).await;
    // An HTTP/1.1 app.
    let r = get(o.proxy, "grpc", "/a").await.expect("answer");
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "h2only"),
        "{r:?}"
    );
    // An h2c app: the node's trailer arrives.
    let (mut h2, _conn) = client::h2c(o.proxy).await;
    let req = Request::get("http://grpc/b")
        .body(Full::new(bytes::Bytes::new()))
        .expect("request");
    let resp = h2.send_request(req).await.expect("answer");
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    assert_eq!(collected.to_bytes(), "h2only");
    assert_eq!(
        trailers.get("x-node").map(|v| v.as_bytes()),
        Some(&b"h2only"[..])
    );
    let seen = node.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|s| s.version == "HTTP/2.0" && s.authority == "grpc" && !s.host_header),
        "{seen:?}"
    );
}

/// A grpcio node; killed when dropped.
struct PyNode {
    addr: SocketAddr,
    child: Child,
}

impl PyNode {
    async fn start(label: &str) -> PyNode {
        let port = free_port();
        let child = Command::new("python3")
            .arg(echo_py())
            .args(["serve", &port.to_string(), label])
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 with grpcio (integration/run-tests.sh installs it)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Killed and reaped by Drop, also when it never listens.
        let node = PyNode { addr, child };
        for _ in 0..100 {
            if TcpStream::connect(addr).await.is_ok() {
                return node;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the grpcio node never listened on {addr}");
    }
}

impl Drop for PyNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the grpcio client script with `args`; its JSON answer.
async fn py_client(args: Vec<String>) -> Value {
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(echo_py())
            .args(&args)
            .output()
            .expect("python3")
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_of_every_kind_pass_through_balanced_per_call() {
    let nodes = [
        PyNode::start("a").await,
        PyNode::start("b").await,
        PyNode::start("c").await,
    ];
    let list = format!(
        "static:grpc={}@2,{},{}",
        nodes[0].addr, nodes[1].addr, nodes[2].addr
    );
    let o = start(list, &[]).await;
    let target = o.proxy.to_string();
    let got = py_client(vec!["client".into(), target, "grpc".into(), "40".into()]).await;
    // Forty unary calls on one client connection, spread per call by weight (2:1:1).
    let split = &got["unary"];
    for (node, want) in [("a", 20), ("b", 10), ("c", 10)] {
        let n = split[node].as_i64().unwrap_or(0);
        assert!(
            (want - 2..=want + 2).contains(&n),
            "{node}: {n} of 40, {got}"
        );
    }
    assert!(
        ["a", "b", "c"].contains(&got["trailer"].as_str().unwrap_or("")),
        "{got}"
    );
    assert_eq!(
        got["server_stream"].as_array().map(Vec::len),
        Some(3),
        "{got}"
    );
    assert!(
        got["client_stream"]
            .as_str()
            .unwrap_or("")
            .ends_with(":a+b+c"),
        "{got}"
    );
    assert_eq!(got["bidi"].as_array().map(Vec::len), Some(2), "{got}");
    // The node's status and message arrive intact (trailers).
    assert_eq!(got["fail"]["code"], "NOT_FOUND", "{got}");
    assert_eq!(got["fail"]["details"], "no such thing: é", "{got}");
    // The client's deadline (grpc-timeout) bounds the call.
    assert_eq!(got["slow"]["code"], "DEADLINE_EXCEEDED", "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outriggers_own_errors_are_grpc_errors() {
    let refusing = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let o = start(
        format!("static:grpc={refusing}"),
        &[("OUTRIGGER_RETRIES", "0")],
    )
    .await;
    let got = py_client(vec![
        "unavailable".into(),
        o.proxy.to_string(),
        "grpc".into(),
    ])
    .await;
    assert_eq!(got["code"], "UNAVAILABLE", "{got}");
    assert_eq!(got["cause"], "connect-failed", "{got}");
    assert!(
        got["details"]
            .as_str()
            .unwrap_or("")
            .contains("cannot connect"),
        "{got}"
    );
    let got = py_client(vec![
        "unavailable".into(),
        o.proxy.to_string(),
        "nosuch".into(),
    ])
    .await;
    assert_eq!(got["code"], "UNIMPLEMENTED", "{got}");
    assert_eq!(got["cause"], "unknown-service", "{got}");
}

/// Sends GET `path` for `grpc` over an h2c connection to Outrigger; the response.
async fn h2c_get(o: &Outrigger, path: &str) -> http::Response<hyper::body::Incoming> {
    let (mut h2, _conn) = client::h2c(o.proxy).await;
    let req = Request::get(format!("http://grpc{path}"))
        .body(Full::new(bytes::Bytes::new()))
        .expect("request");
    h2.send_request(req).await.expect("answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_fails_the_stream_and_goaway_moves_new_ones() {
    use http_body_util::BodyExt;
    let node = H2Node::start("n").await;
    let o = start(format!("static:grpc={}", node.addr), &[]).await;
    // A stream in flight when the node dies ends with an error, at once, never a hang.
    let resp = h2c_get(&o, "/stall").await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert_eq!(first.into_data().expect("data"), "n");
    node.kill_connections();
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect()).await;
    assert!(
        matches!(rest, Ok(Err(_))),
        "the stream did not fail when its node died: {rest:?}"
    );
    // The next request opens a new connection and succeeds.
    let resp = h2c_get(&o, "/after-kill").await;
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    let before = node.accepted.load(std::sync::atomic::Ordering::SeqCst);
    // GOAWAY: the stream in flight finishes, new ones go on a fresh connection.
    let resp = h2c_get(&o, "/x").await;
    let _ = resp.into_body().collect().await;
    node.goaway();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let resp = h2c_get(&o, "/after-goaway").await;
        assert_eq!(resp.status(), 200);
        let got = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(got, "n");
    }
    assert_eq!(
        node.accepted.load(std::sync::atomic::Ordering::SeqCst),
        before + 1,
        "after GOAWAY one new connection carries the new streams"
    );
}

/// A node's connection carries at most 100 streams of a worker's (the RFC's recommended
/// minimum for a server's limit): the 101st concurrent stream opens a second connection,
/// and both are reused once the streams end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_100_concurrent_streams_open_another_connection() {
    use std::sync::atomic::Ordering::SeqCst;
    let node = H2Node::start("n").await;
    let o = start(format!("static:grpc={}", node.addr), &[]).await;
    let (h2, _conn) = client::h2c::<Full<bytes::Bytes>>(o.proxy).await;
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..150 {
        let mut h2 = h2.clone();
        sends.spawn(async move {
            let req = Request::get(format!("http://grpc/stall?{i}"))
                .body(Full::new(bytes::Bytes::new()))
                .expect("request");
            h2.send_request(req).await.expect("answer")
        });
    }
    let held = sends.join_all().await;
    assert!(held.iter().all(|r| r.status() == 200));
    assert_eq!(node.hits.load(SeqCst), 150);
    assert_eq!(
        node.accepted.load(SeqCst),
        2,
        "150 streams, 100 a connection"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..5 {
        let resp = h2c_get(&o, "/after").await;
        assert_eq!(resp.status(), 200);
        let _ = resp.into_body().collect().await;
    }
    assert_eq!(node.accepted.load(SeqCst), 2, "the connections are reused");
}
