//! The access log (`OUTRIGGER_ACCESS_LOG`) and W3C trace context (`OUTRIGGER_TRACEPARENT`):
//! one JSON line per request with what an operator follows a request by, across sidecars.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use outrigger_integration::client::{get, send};
use outrigger_integration::process::run_to_exit;
use outrigger_integration::wait::until;
use outrigger_integration::{free_port, Outrigger, TestUpstream};
use serde_json::Value;

fn bin() -> &'static Path {
    outrigger_integration::process::binary_under_test(env!("CARGO_BIN_EXE_outrigger"))
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_one_json_line_with_its_trace() {
    let up = TestUpstream::start("a").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders,gone".into()),
            (
                "OUTRIGGER_DISCOVERY",
                format!("static:orders={};gone={dead}", up.addr),
            ),
            ("OUTRIGGER_ACCESS_LOG", log.display().to_string()),
            ("OUTRIGGER_TRACEPARENT", "start".into()),
        ],
    )
    .await;
    // A request that carries a trace keeps it, to the node and in the log.
    let traced = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = Request::get("/headers?x=1")
        .header("host", "orders")
        .header("traceparent", traced)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let r = send(o.proxy, req).await.expect("answer");
    assert_eq!(r.status, 200);
    let seen: Value = serde_json::from_str(&r.body).expect("headers as JSON");
    assert_eq!(seen["traceparent"], traced, "{seen}");
    let body_len = r.body.len() as u64;
    // One without a trace gets one started.
    let r = get(o.proxy, "orders", "/headers").await.expect("answer");
    let seen: Value = serde_json::from_str(&r.body).expect("headers as JSON");
    let started = seen["traceparent"]
        .as_str()
        .expect("a traceparent started")
        .to_string();
    assert!(
        started.starts_with("00-") && started.ends_with("-01"),
        "{started}"
    );
    // One whose trace cannot be read gets a new one (W3C: restart the trace).
    let req = Request::get("/headers")
        .header("host", "orders")
        .header("traceparent", "garbage")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let r = send(o.proxy, req).await.expect("answer");
    let seen: Value = serde_json::from_str(&r.body).expect("headers as JSON");
    let restarted = seen["traceparent"]
        .as_str()
        .expect("a traceparent")
        .to_string();
    assert!(
        restarted.starts_with("00-") && restarted.len() == 55,
        "{restarted}"
    );
    // A node that refuses, and a service that does not exist.
    let r = get(o.proxy, "gone", "/x").await.expect("answer");
    assert_eq!(r.status, 502);
    let r = get(o.proxy, "nosuch", "/x").await.expect("answer");
    assert_eq!(r.status, 404);

    until("five lines", Duration::from_secs(3), || async {
        lines(&log).len() == 5
    })
    .await;
    let mut l = lines(&log);
    // The restarted trace's line, third, carries the new trace id.
    assert_eq!(l[2]["trace_id"].as_str(), restarted.split('-').nth(1));
    l.remove(2);
    assert_eq!(l[0]["service"], "orders", "{:?}", l[0]);
    assert_eq!(l[0]["method"], "GET");
    assert_eq!(l[0]["path"], "/headers?x=1");
    assert_eq!(l[0]["status"], 200);
    assert_eq!(l[0]["node"], up.addr.to_string());
    assert_eq!(l[0]["attempts"], 1);
    assert_eq!(l[0]["bytes_out"], body_len);
    assert_eq!(l[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(l[0]["duration_ms"].as_f64().is_some() && l[0]["upstream_ms"].as_f64().is_some());
    assert_eq!(l[1]["trace_id"].as_str(), started.split('-').nth(1));
    assert_eq!(
        (l[2]["status"].clone(), l[2]["error"].clone()),
        (Value::from(502), Value::from("connect-failed")),
        "{:?}",
        l[2]
    );
    assert_eq!(l[2]["node"], dead);
    assert_eq!(
        (
            l[3]["status"].clone(),
            l[3]["error"].clone(),
            l[3]["service"].clone()
        ),
        (
            Value::from(404),
            Value::from("unknown-service"),
            Value::Null
        ),
        "{:?}",
        l[3]
    );
}

#[test]
fn a_bad_access_log_setting_is_refused() {
    let (status, stderr) = run_to_exit(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders"),
            ("OUTRIGGER_DISCOVERY", "static:orders=127.0.0.1:1"),
            ("OUTRIGGER_ACCESS_LOG", "syslog"),
            ("OUTRIGGER_TRACEPARENT", "always"),
        ],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("OUTRIGGER_ACCESS_LOG=\"syslog\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("OUTRIGGER_TRACEPARENT=\"always\""),
        "{stderr}"
    );
    let (status, stderr) = run_to_exit(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders"),
            ("OUTRIGGER_DISCOVERY", "static:orders=127.0.0.1:1"),
            ("OUTRIGGER_ACCESS_LOG", "/nonexistent/dir/access.log"),
            ("OUTRIGGER_RETRIES", "9"),
            ("OUTRIGGER_ADMIN_TOKEN", "short"),
        ],
    );
    // Reported with the other settings' errors, as a configuration error.
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "OUTRIGGER_ACCESS_LOG=\"/nonexistent/dir/access.log\": a file Outrigger can append to"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("OUTRIGGER_RETRIES=\"9\""), "{stderr}");
    assert!(
        stderr.contains("OUTRIGGER_ADMIN_TOKEN=\"(hidden)\""),
        "{stderr}"
    );
    assert!(!stderr.contains("short"), "the token was shown: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_endpoint_series_only_when_asked_for() {
    let up = TestUpstream::start("a").await;
    let dead = format!("127.0.0.1:{}", free_port());
    for (setting, expected) in [("on", true), ("off", false)] {
        let o = Outrigger::start(
            bin(),
            &[
                ("OUTRIGGER_UPSTREAMS", "orders".into()),
                (
                    "OUTRIGGER_DISCOVERY",
                    format!("static:orders={},{dead}", up.addr),
                ),
                ("OUTRIGGER_METRICS_PER_ENDPOINT", setting.into()),
                ("OUTRIGGER_LB", "round_robin".into()),
            ],
        )
        .await;
        for _ in 0..4 {
            let r = get(o.proxy, "orders", "/").await.expect("answer");
            assert_eq!(r.status, 200, "{r:?}");
        }
        let metrics = o.metrics().await;
        let ok = format!(
            "outrigger_endpoint_attempts_total{{service=\"orders\",endpoint=\"{}\",result=\"success\"}}",
            up.addr
        );
        let refused = format!(
            "outrigger_endpoint_attempts_total{{service=\"orders\",endpoint=\"{dead}\",result=\"connect_failure\"}}"
        );
        assert_eq!(metrics.contains(&ok), expected, "{setting}: {metrics}");
        assert_eq!(metrics.contains(&refused), expected, "{setting}: {metrics}");
    }
}
