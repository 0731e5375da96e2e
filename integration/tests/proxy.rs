//! End-to-end tests of the proxy path: the real binary, real upstream servers, real sockets.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use outrigger_integration::client::{self, get};
use outrigger_integration::{free_port, NodeFile, Outrigger, TestUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_outrigger"))
}

/// Outrigger routing service `orders` to the one node `node`, with `extra` settings.
async fn start_orders(node: &TestUpstream, extra: &[(&'static str, String)]) -> Outrigger {
    let mut env = vec![
        ("OUTRIGGER_UPSTREAMS", "orders".to_string()),
        (
            "OUTRIGGER_DISCOVERY",
            format!("static:orders={}", node.addr),
        ),
    ];
    env.extend_from_slice(extra);
    Outrigger::start(bin(), &env).await
}

/// Sends `req` to `proxy` as an app speaking HTTP/2 with prior knowledge.
async fn http2_get(
    proxy: std::net::SocketAddr,
    req: Request<Full<Bytes>>,
) -> http::Response<hyper::body::Incoming> {
    let (mut h2, _conn) = outrigger_integration::client::h2c(proxy).await;
    h2.send_request(req).await.unwrap()
}

async fn count_bodies(o: &Outrigger, host: &str, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = get(o.proxy, host, "/").await.expect("proxy answers");
        assert_eq!(r.status, 200, "{r:?}");
        *seen.entry(r.body).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_respects_weights() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let c = TestUpstream::start("c").await;
    let o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders".into()),
            (
                "OUTRIGGER_DISCOVERY",
                format!("static:orders={}@3,{},{}@1", a.addr, b.addr, c.addr),
            ),
        ],
    )
    .await;
    let seen = count_bodies(&o, "orders", 500).await;
    // Expected 300/100/100. Smooth round robin is exact over each 5-request cycle, so the
    // tolerance (±3%, 15 requests) only covers requests of other tests sharing nothing here.
    let share = |k: &str| *seen.get(k).unwrap_or(&0) as f64 / 500.0;
    assert!((share("a") - 0.6).abs() <= 0.03, "{seen:?}");
    assert!((share("b") - 0.2).abs() <= 0.03, "{seen:?}");
    assert!((share("c") - 0.2).abs() <= 0.03, "{seen:?}");
    let metrics = o.metrics().await;
    assert!(
        metrics.contains("outrigger_requests_total{service=\"orders\",status=\"200\"} 500"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_reload_changes_routing_without_restart() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let c = TestUpstream::start("c").await;
    // Write-then-rename, as config management tools do, so no half file is ever read.
    let file = NodeFile::new();
    let write = |nodes: &[std::net::SocketAddr]| {
        let list: Vec<String> = nodes.iter().map(ToString::to_string).collect();
        file.write_addresses("orders", &list);
    };
    write(&[a.addr, b.addr]);
    let mut o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders".into()),
            ("OUTRIGGER_DISCOVERY", file.url()),
            ("OUTRIGGER_FILE_POLL", "50ms".into()),
        ],
    )
    .await;
    o.wait_for("/ready", Duration::from_secs(5)).await;
    let seen = count_bodies(&o, "orders", 10).await;
    assert_eq!((seen["a"], seen["b"]), (5, 5), "{seen:?}");

    // Half the nodes replaced: within the guard's default 50%, so applied at once.
    write(&[b.addr, c.addr]);
    let changed = Instant::now();
    loop {
        let r = get(o.proxy, "orders", "/").await.unwrap();
        if r.body == "c" {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(5),
            "still routed to {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a_before = a.hits();
    let seen = count_bodies(&o, "orders", 10).await;
    assert_eq!(a.hits(), a_before, "a was removed but still gets traffic");
    assert_eq!((seen["b"], seen["c"]), (5, 5), "{seen:?}");
    let up = o.upstreams().await;
    let addrs: Vec<&str> = up["services"]["orders"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap())
        .collect();
    let mut expected = vec![b.addr.to_string(), c.addr.to_string()];
    expected.sort();
    assert_eq!(addrs, expected);
    assert_eq!(up["services"]["orders"]["source"], file.url());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_services_are_refused_and_never_connected_to() {
    let a = TestUpstream::start("a").await;
    let o = start_orders(&a, &[]).await;
    // An arbitrary host, including the upstream's own address, must not be proxied to.
    for host in ["payments", &a.addr.to_string(), "127.0.0.1"] {
        let r = get(o.proxy, host, "/").await.unwrap();
        assert_eq!(r.status, 404, "{host}: {r:?}");
        assert_eq!(r.cause(), "unknown-service");
    }
    let req = Request::get(format!("http://{}/", a.addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = client::send(o.proxy, req).await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(a.hits(), 0);
    // No Host at all: 400 naming the problem.
    let mut raw = TcpStream::connect(o.proxy).await.unwrap();
    raw.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut text = String::new();
    raw.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.0 400"), "{text}");
    assert!(
        text.contains("x-outrigger-error: no-service-named"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_and_dedicated_listener_route_to_the_service() {
    let a = TestUpstream::start("a").await;
    let dedicated = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let o = Outrigger::start(
        bin(),
        &[
            (
                "OUTRIGGER_UPSTREAMS",
                format!("orders=,users={dedicated}").replace("orders=,", "orders,"),
            ),
            (
                "OUTRIGGER_DISCOVERY",
                format!("static:orders={0};users={0}", a.addr),
            ),
        ],
    )
    .await;
    // HTTP_PROXY style: absolute-form request target.
    let req = Request::get("http://Orders/x?y=1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = client::send(o.proxy, req).await.unwrap();
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "a"));
    // A dedicated listener routes whatever the Host says.
    let r = get(dedicated, "anything", "/").await.unwrap();
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "a"));
    assert_eq!(a.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_and_forwarding_headers_added() {
    let a = TestUpstream::start("a").await;
    let o = start_orders(&a, &[]).await;
    let req = Request::get("/headers")
        .header("host", "orders")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "gzip, trailers")
        .header("x-forwarded-for", "10.9.9.9")
        .header("x-app", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = client::send(o.proxy, req).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let seen: HashMap<String, String> = serde_json::from_str(&r.body).unwrap();
    for gone in ["x-private", "keep-alive", "proxy-authorization"] {
        assert!(!seen.contains_key(gone), "{gone} forwarded: {seen:?}");
    }
    // Of TE, only "trailers" goes on (gRPC servers require it).
    assert_eq!(seen["te"], "trailers");
    assert_ne!(
        seen.get("connection").map(String::as_str),
        Some("keep-alive, x-private")
    );
    assert_eq!(seen["x-app"], "kept");
    assert_eq!(seen["host"], "orders");
    assert_eq!(seen["x-forwarded-for"], "10.9.9.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_errors_are_clear() {
    let a = TestUpstream::start("a").await;
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "down,slow,idle".into()),
            (
                "OUTRIGGER_DISCOVERY",
                format!("static:down={dead};slow={};idle={}@0", a.addr, a.addr),
            ),
            ("OUTRIGGER_REQUEST_TIMEOUT", "300ms".into()),
        ],
    )
    .await;
    let r = get(o.proxy, "down", "/").await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.cause()),
        (502, "connect-failed"),
        "{r:?}"
    );
    assert!(r.body.contains(&dead.to_string()), "{}", r.body);

    let r = get(o.proxy, "slow", "/slow?ms=2000").await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.cause()),
        (504, "request-timeout"),
        "{r:?}"
    );

    let r = get(o.proxy, "idle", "/").await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.cause()),
        (503, "no-endpoint"),
        "{r:?}"
    );

    // Upstream statuses pass through untouched, without Outrigger's error header.
    let r = get(o.proxy, "slow", "/status/500").await.unwrap();
    assert_eq!((r.status.as_u16(), r.cause()), (500, ""));

    let metrics = o.metrics().await;
    assert!(
        metrics.contains("outrigger_upstream_connect_errors_total{service=\"down\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways_and_http2_prior_knowledge_works() {
    let a = TestUpstream::start("a").await;
    let o = start_orders(&a, &[]).await;
    let big: Vec<u8> = (0..8 * 1024 * 1024)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let req = Request::post("/echo")
        .header("host", "orders")
        .body(Full::new(Bytes::from(big.clone())))
        .unwrap();
    let r = client::send(o.proxy, req).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), big.len());
    assert!(r.body.as_bytes() == &big[..], "echoed body differs");

    // HTTP/2 with prior knowledge from the app, HTTP/1.1 to the upstream.
    let resp = http2_get(
        o.proxy,
        Request::get("http://orders/")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_trailers_reach_http2_and_http1_apps() {
    let a = TestUpstream::start("a").await;
    let o = start_orders(&a, &[]).await;

    // gRPC's shape: HTTP/2 from the app with `te: trailers`, the status in a trailer.
    let resp = http2_get(
        o.proxy,
        Request::get("http://orders/trailers")
            .header("te", "trailers")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    assert_eq!(&collected.to_bytes()[..], b"a");
    assert_eq!(
        trailers.as_ref().and_then(|t| t.get("grpc-status")),
        Some(&http::HeaderValue::from_static("0")),
        "trailers: {trailers:?}"
    );

    // HTTP/1.1: a chunked answer that ends with the trailer field.
    let mut s = TcpStream::connect(o.proxy).await.unwrap();
    s.write_all(
        b"GET /trailers HTTP/1.1\r\nHost: orders\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(
        answer.contains("transfer-encoding: chunked")
            && answer.ends_with("0\r\ngrpc-status: 0\r\n\r\n"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_requests_pass_through() {
    let a = TestUpstream::start("a").await;
    let o = start_orders(&a, &[]).await;
    let mut s = TcpStream::connect(o.proxy).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: orders\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed mid-head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    s.write_all(b"ping over the tunnel").await.unwrap();
    let mut got = vec![0u8; 20];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping over the tunnel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_in_flight_request_then_exits_zero() {
    let a = TestUpstream::start("a").await;
    let mut o = start_orders(
        &a,
        &[
            ("OUTRIGGER_DRAIN_TIMEOUT", "10s".into()),
            ("OUTRIGGER_SHUTDOWN_DELAY", "0s".into()),
        ],
    )
    .await;
    let proxy = o.proxy;
    let slow = tokio::spawn(async move { get(proxy, "orders", "/slow?ms=1500").await });
    // Let the request reach the upstream before the signal.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.hits() == 0 {
        assert!(
            Instant::now() < deadline,
            "request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    o.terminate();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(proxy).await.is_err(),
        "new connections must be refused while draining"
    );
    let r = slow.await.unwrap().expect("in-flight request completes");
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "a"));
    let status = o.wait_exit(Duration::from_secs(5)).await.expect("exits");
    assert_eq!(status.code(), Some(0), "{}", o.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_connections_at_once() {
    let a = TestUpstream::start("a").await;
    let mut o = start_orders(
        &a,
        &[
            ("OUTRIGGER_DRAIN_TIMEOUT", "10s".into()),
            ("OUTRIGGER_SHUTDOWN_DELAY", "0s".into()),
        ],
    )
    .await;
    // A keep-alive connection that has finished a request, and one that never said anything.
    let mut kept = TcpStream::connect(o.proxy).await.unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let mut silent = TcpStream::connect(o.proxy).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let signalled = Instant::now();
    o.terminate();
    for (name, conn) in [("keep-alive", &mut kept), ("silent", &mut silent)] {
        let read = tokio::time::timeout(Duration::from_secs(3), conn.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("the {name} connection stayed open while draining"));
        assert!(matches!(read, Ok(0) | Err(_)), "{name}: {read:?}");
    }
    let status = o.wait_exit(Duration::from_secs(5)).await.expect("exits");
    assert_eq!(status.code(), Some(0), "{}", o.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "waited for the drain timeout with nothing in flight: {:?}",
        signalled.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_preface_sent_in_pieces_is_still_http2() {
    let a = TestUpstream::start("a").await;
    let o = start_orders(&a, &[]).await;
    let mut s = TcpStream::connect(o.proxy).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The rest of the preface and an empty SETTINGS frame.
    s.write_all(b"\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut frame))
        .await
        .expect("the server answers")
        .expect("with a frame, not a closed connection");
    assert_eq!(frame[3], 0x04, "the first frame is not SETTINGS: {frame:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_a_first_node_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nodes.json");
    let mut o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders".into()),
            ("OUTRIGGER_DISCOVERY", format!("file://{}", path.display())),
            ("OUTRIGGER_FILE_POLL", "50ms".into()),
        ],
    )
    .await;
    let r = client::get_admin(o.admin, "/ready").await.unwrap();
    assert_eq!(r.status, 503);
    assert!(r.body.contains("orders"), "{}", r.body);
    // The adapter's first read (and its error) may come a moment after the admin port opens.
    let mut up = o.upstreams().await;
    for _ in 0..50 {
        if up["services"]["orders"]["last_error"]["message"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        up = o.upstreams().await;
    }
    assert_eq!(up["services"]["orders"]["state"], "waiting");
    let message = up["services"]["orders"]["last_error"]["message"].as_str();
    assert!(message.is_some_and(|m| m.contains("nodes.json")), "{up}");
    std::fs::write(
        &path,
        r#"{"services": {"orders": [{"address": "127.0.0.1:9"}]}}"#,
    )
    .unwrap();
    o.wait_for("/ready", Duration::from_secs(5)).await;
}

/// Each thread of process `pid`: its name, and the text of its `/proc` file `file`.
fn thread_files(pid: u32, file: &str) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let dir = task.expect("task").path();
        // A thread that ended after the listing (an idle blocking-pool thread) is not one to
        // check: the workers and the main thread live as long as the process.
        let (Ok(comm), Ok(text)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join(file)),
        ) else {
            continue;
        };
        all.push((comm.trim().to_string(), text));
    }
    all
}

/// The `Cpus_allowed_list` of a `/proc` status file.
fn cpus_allowed_list(status: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_string()
}

/// The CPUs each of the process's worker threads may run on, from /proc.
fn worker_cpu_lists(pid: u32) -> Vec<String> {
    let mut lists: Vec<String> = thread_files(pid, "status")
        .into_iter()
        .filter(|(name, _)| name.starts_with("outrigger-worke"))
        .map(|(_, status)| cpus_allowed_list(&status))
        .collect();
    lists.sort();
    lists
}

/// The nice value of each of the process's threads, by name.
fn nice_by_thread(pid: u32) -> Vec<(String, i32)> {
    thread_files(pid, "stat")
        .into_iter()
        .map(|(name, stat)| {
            // Fields after the parenthesised name start at field 3; nice is field 19.
            let after = stat.rsplit_once(')').expect("stat shape").1;
            let nice = after
                .split_whitespace()
                .nth(16)
                .expect("nice")
                .parse()
                .expect("number");
            (name, nice)
        })
        .collect()
}

#[tokio::test]
async fn the_control_plane_yields_to_the_workers() {
    let a = TestUpstream::start("a").await;
    let o = start_orders(&a, &[("OUTRIGGER_WORKER_THREADS", "2".into())]).await;
    let threads = nice_by_thread(o.pid());
    let workers: Vec<i32> = threads
        .iter()
        .filter(|(name, _)| name.starts_with("outrigger-worke"))
        .map(|(_, nice)| *nice)
        .collect();
    assert_eq!(workers, vec![0, 0], "{threads:?}");
    // The main thread (named after the binary) runs the control plane.
    let main = threads.iter().find(|(name, _)| name == "outrigger");
    assert_eq!(main.map(|(_, nice)| *nice), Some(10), "{threads:?}");
}

#[tokio::test]
async fn one_worker_per_cpu_stays_on_a_cpu_of_its_own_unless_pinning_is_off() {
    let a = TestUpstream::start("a").await;
    let allowed = outrigger::affinity::allowed_cpus().expect("affinity");
    let count = allowed.len().to_string();
    let mut expected: Vec<String> = allowed.iter().map(|c| c.to_string()).collect();
    expected.sort();

    let o = start_orders(&a, &[("OUTRIGGER_WORKER_THREADS", count.clone())]).await;
    // Each worker pins itself as its thread starts, which may trail the admin API by a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while worker_cpu_lists(o.pid()) != expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(worker_cpu_lists(o.pid()), expected, "{}", o.log());
    let r = get(o.proxy, "orders", "/").await.unwrap();
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    drop(o);

    // Off, or a count that is not one per CPU: every worker may run anywhere the process may.
    let process_list =
        cpus_allowed_list(&std::fs::read_to_string("/proc/self/status").expect("status"));
    let o = start_orders(
        &a,
        &[
            ("OUTRIGGER_WORKER_THREADS", count.clone()),
            ("OUTRIGGER_PIN_WORKERS", "off".into()),
        ],
    )
    .await;
    assert_eq!(
        worker_cpu_lists(o.pid()),
        vec![process_list.clone(); allowed.len()]
    );
    drop(o);
    let o = start_orders(
        &a,
        &[("OUTRIGGER_WORKER_THREADS", (allowed.len() + 1).to_string())],
    )
    .await;
    assert_eq!(
        worker_cpu_lists(o.pid()),
        vec![process_list; allowed.len() + 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_nodes_are_kept_alive_and_replaced_once_closed() {
    let a = TestUpstream::start("a").await;
    let addr = a.addr;
    let o = start_orders(&a, &[("OUTRIGGER_WORKER_THREADS", "2".into())]).await;
    // Each request comes on a new app connection, so both workers serve some; each keeps one
    // connection to the node and reuses it.
    for _ in 0..20 {
        let r = get(o.proxy, "orders", "/").await.unwrap();
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "a"), "{r:?}");
    }
    assert!(
        (1..=2).contains(&a.connections()),
        "20 requests took {} connections to the node; keep-alive should need one per worker",
        a.connections()
    );
    // The node restarts and every pooled connection is closed under Outrigger: the next
    // requests must notice and connect again, not fail.
    a.stop();
    drop(a);
    // The aborted server task lets go of its port on its next turn.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = TestUpstream::start_on("a", addr).await;
    for _ in 0..4 {
        let r = get(o.proxy, "orders", "/").await.unwrap();
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "a"), "{r:?}");
    }
    assert!(a.connections() >= 1);
}
