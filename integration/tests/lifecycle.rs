//! The sidecar in the app's lifecycle: the ordered stop (SIGTERM: `/ready` 503 at once,
//! serving on for the shutdown delay, then draining), a second signal and `/quitquitquit`
//! skipping the delay, and `outrigger wait-ready` for the app's start.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use outrigger_integration::client::{get, get_admin, send};
use outrigger_integration::{free_port, Outrigger, TestUpstream};
use tokio::net::TcpStream;

fn bin() -> &'static Path {
    outrigger_integration::process::binary_under_test(env!("CARGO_BIN_EXE_outrigger"))
}

async fn start(up: &TestUpstream, delay: &str) -> Outrigger {
    let mut o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders".into()),
            ("OUTRIGGER_DISCOVERY", format!("static:orders={}", up.addr)),
            ("OUTRIGGER_SHUTDOWN_DELAY", delay.into()),
            ("OUTRIGGER_DRAIN_TIMEOUT", "5s".into()),
        ],
    )
    .await;
    o.wait_for("/ready", Duration::from_secs(10)).await;
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_ready_to_503_and_serves_new_requests_for_the_delay() {
    let up = TestUpstream::start("a").await;
    let mut o = start(&up, "1500ms").await;
    let signalled = Instant::now();
    o.terminate();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ready = get_admin(o.admin, "/ready").await.expect("admin answers");
    assert_eq!(
        (ready.status.as_u16(), ready.body.as_str()),
        (503, "draining\n")
    );
    // The app is still finishing its work: new connections and requests are served.
    for _ in 0..3 {
        let r = get(o.proxy, "orders", "/")
            .await
            .expect("served during the delay");
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "a"), "{r:?}");
    }
    assert!(signalled.elapsed() < Duration::from_millis(1400));
    let status = o.wait_exit(Duration::from_secs(8)).await.expect("exits");
    assert_eq!(status.code(), Some(0), "{}", o.log());
    assert!(
        signalled.elapsed() >= Duration::from_millis(1500),
        "exited before the delay: {:?}",
        signalled.elapsed()
    );
    assert!(TcpStream::connect(o.proxy).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_skips_the_delay() {
    let up = TestUpstream::start("a").await;
    let mut o = start(&up, "60s").await;
    let signalled = Instant::now();
    o.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(get(o.proxy, "orders", "/").await.is_ok(), "serving");
    o.terminate();
    let status = o.wait_exit(Duration::from_secs(5)).await.expect("exits");
    assert_eq!(status.code(), Some(0), "{}", o.log());
    assert!(signalled.elapsed() < Duration::from_secs(5));
    assert!(o.log().contains("shutdown delay cut short"), "{}", o.log());
}

fn quit(method: &str, header: bool) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .uri("/quitquitquit")
        .header("host", "localhost");
    if header {
        req = req.header("x-outrigger-admin", "1");
    }
    req.body(Full::new(Bytes::new())).expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quitquitquit_ends_the_sidecar_without_the_delay() {
    let up = TestUpstream::start("a").await;
    let mut o = start(&up, "60s").await;
    // A cross-site page can send a plain POST; it cannot send the header.
    let r = send(o.admin, quit("POST", false)).await.expect("answer");
    assert_eq!(r.status.as_u16(), 403, "{r:?}");
    let r = send(o.admin, quit("GET", true)).await.expect("answer");
    assert_eq!(r.status.as_u16(), 405, "{r:?}");
    assert!(get(o.proxy, "orders", "/").await.is_ok(), "still serving");
    let asked = Instant::now();
    let r = send(o.admin, quit("POST", true)).await.expect("answer");
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "stopping\n"));
    let status = o.wait_exit(Duration::from_secs(5)).await.expect("exits");
    assert_eq!(status.code(), Some(0), "{}", o.log());
    assert!(asked.elapsed() < Duration::from_secs(5));
}

fn wait_ready(admin: &str, timeout: &str) -> Command {
    let mut cmd = Command::new(bin());
    cmd.env_clear()
        .env("OUTRIGGER_ADMIN_LISTEN", admin)
        .args(["wait-ready", "--timeout", timeout]);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_ready_waits_for_the_first_node_sets_and_names_what_it_waits_for() {
    // Nothing listening: the reason says so.
    let nobody = format!("127.0.0.1:{}", free_port());
    let out = wait_ready(&nobody, "500ms").output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
    let out = wait_ready(&nobody, "soon").output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--timeout=\"soon\""));

    // A service whose node file does not exist yet is not ready.
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = dir.path().join("nodes.json");
    let up = TestUpstream::start("a").await;
    let o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders".into()),
            ("OUTRIGGER_DISCOVERY", format!("file://{}", nodes.display())),
            ("OUTRIGGER_FILE_POLL", "100ms".into()),
        ],
    )
    .await;
    let admin = o.admin.to_string();
    let out = wait_ready(&admin, "500ms").output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("503 waiting for a first node set: orders"),
        "{stderr}"
    );
    // It waits, and exits 0 as soon as the nodes arrive.
    let mut waiting = wait_ready(&admin, "20s").spawn().expect("runs");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        waiting.try_wait().expect("status").is_none(),
        "exited early"
    );
    let body = format!(
        r#"{{"services": {{"orders": [{{"address": "{}"}}]}}}}"#,
        up.addr
    );
    std::fs::write(dir.path().join("nodes.tmp"), body).expect("write");
    std::fs::rename(dir.path().join("nodes.tmp"), &nodes).expect("rename");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = waiting.try_wait().expect("status") {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        get(o.proxy, "orders", "/").await.expect("answer").status,
        200
    );
}
