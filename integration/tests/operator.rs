//! Operators see and steer node sets: each service's history, pinning to an earlier set (kept
//! across a restart), updates read but not applied while pinned, unpinning, confirming or
//! refusing a held update, and who may ask.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use outrigger_integration::client::{get, send};
use outrigger_integration::wait::until;
use outrigger_integration::{NodeFile, Outrigger, TestUpstream};
use serde_json::Value;

fn bin() -> &'static Path {
    outrigger_integration::process::binary_under_test(env!("CARGO_BIN_EXE_outrigger"))
}

async fn start(reg: &NodeFile) -> Outrigger {
    let mut o = Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders".into()),
            (
                "OUTRIGGER_DISCOVERY",
                format!("file://{}", reg.path().display()),
            ),
            ("OUTRIGGER_FILE_POLL", "20ms".into()),
            ("OUTRIGGER_LKG_CONFIRM", "1h".into()),
            (
                "OUTRIGGER_STATE_DIR",
                reg.dir().join("state").display().to_string(),
            ),
        ],
    )
    .await;
    o.wait_for("/ready", Duration::from_secs(5)).await;
    o
}

/// Which nodes answer `n` requests.
async fn answering(o: &Outrigger, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let r = get(o.proxy, "orders", "/").await.expect("answer");
        assert_eq!(r.status, 200, "{r:?}");
        seen.insert(r.body);
    }
    seen
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

async fn history(o: &Outrigger) -> Vec<Value> {
    let r = get(o.admin, "127.0.0.1", "/upstreams/orders/history")
        .await
        .expect("answer");
    assert_eq!(r.status, 200, "{r:?}");
    let v: Value = serde_json::from_str(&r.body).expect("json");
    v["history"].as_array().cloned().unwrap_or_default()
}

/// An admin write as curl sends it: `method path`, the header, from loopback.
async fn write(o: &Outrigger, method: &str, path: &str, header: bool) -> (u16, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1");
    if header {
        req = req.header("x-outrigger-admin", "1");
    }
    let r = send(o.admin, req.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("answer");
    (
        r.status.as_u16(),
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_rolls_back_to_an_earlier_set_survives_a_restart_and_unpinning_catches_up() {
    let (a, b, bad, d) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
        TestUpstream::start("bad").await,
        TestUpstream::start("d").await,
    );
    let reg = NodeFile::new();
    reg.write_nodes("orders", &[&a, &b]);
    let o = start(&reg).await;
    // A bad deploy that looks healthy to the registry.
    reg.write_nodes("orders", &[&a, &b, &bad]);
    until("the deploy applied", Duration::from_secs(5), || async {
        answering(&o, 9).await.contains("bad")
    })
    .await;
    let h = history(&o).await;
    assert_eq!(h[0]["result"], "applied", "{h:?}");
    assert_eq!(h[0]["diff"]["added"][0], bad.addr.to_string(), "{h:?}");
    let good = h[1]["version"].as_u64().expect("the set before the deploy");
    assert_eq!(h[1]["endpoints"], 2, "{h:?}");

    // Roll back by hand: pinned to the version before the deploy.
    let (status, body) = write(
        &o,
        "POST",
        &format!("/upstreams/orders/pin?version={good}"),
        true,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answering(&o, 12).await, set(&["a", "b"]));
    let s = o.service("orders").await;
    assert_eq!(s["state"], "pinned", "{s}");
    assert_eq!(
        s["pin"]["by"].as_str().map(|b| b.starts_with("127.0.0.1:")),
        Some(true)
    );

    // The registry keeps changing: read and shown, not applied.
    reg.write_nodes("orders", &[&a, &b, &bad, &d]);
    until("shown behind the pin", Duration::from_secs(5), || async {
        o.service("orders").await["pending_behind_pin"]["endpoints"] == 4
    })
    .await;
    assert_eq!(answering(&o, 12).await, set(&["a", "b"]));
    assert_eq!(history(&o).await[0]["result"], "pending_behind_pin");

    // A restart keeps the pin.
    drop(o);
    let o = start(&reg).await;
    assert_eq!(o.service("orders").await["state"], "pinned");
    assert_eq!(answering(&o, 12).await, set(&["a", "b"]));

    // Unpinned: the registry's newest answer goes through the guard.
    reg.write_nodes("orders", &[&a, &b, &d]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = write(&o, "DELETE", "/upstreams/orders/pin", true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answering(&o, 15).await, set(&["a", "b", "d"]));
    assert_eq!(o.service("orders").await["state"], "fresh");
    let results: Vec<Value> = history(&o)
        .await
        .iter()
        .map(|e| e["result"].clone())
        .collect();
    assert_eq!(
        results[..2],
        [Value::from("applied"), Value::from("unpinned")],
        "{results:?}"
    );
    assert!(o.metrics().await.contains(
        "outrigger_admin_actions_total{service=\"orders\",action=\"unpin\",result=\"done\"} 1"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_confirms_or_refuses_a_held_update() {
    let ups = [
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
        TestUpstream::start("c").await,
        TestUpstream::start("d").await,
    ];
    let all: Vec<&TestUpstream> = ups.iter().collect();
    let reg = NodeFile::new();
    reg.write_nodes("orders", &all);
    let o = start(&reg).await;
    // Nothing held yet.
    let (status, body) = write(&o, "POST", "/upstreams/orders/pending/confirm", true).await;
    assert_eq!(status, 409, "{body}");

    // A drastic answer is held; the operator confirms it.
    reg.write_nodes("orders", &[&ups[0]]);
    until("held", Duration::from_secs(5), || async {
        o.service("orders").await["state"] == "held"
    })
    .await;
    let (status, body) = write(&o, "POST", "/upstreams/orders/pending/confirm", true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answering(&o, 6).await, set(&["a"]));

    // Back to four; then a drastic answer the operator refuses.
    reg.write_nodes("orders", &all);
    until("four again", Duration::from_secs(5), || async {
        answering(&o, 12).await.len() == 4
    })
    .await;
    reg.write_nodes("orders", &[&ups[1]]);
    until("held", Duration::from_secs(5), || async {
        o.service("orders").await["state"] == "held"
    })
    .await;
    let (status, body) = write(&o, "POST", "/upstreams/orders/pending/reject", true).await;
    assert_eq!(status, 200, "{body}");
    let s = o.service("orders").await;
    assert_eq!(
        (s["pending"].clone(), s["refused"]["endpoints"].clone()),
        (Value::Null, Value::from(1)),
        "{s}"
    );
    assert_eq!(answering(&o, 12).await.len(), 4);
    let h = history(&o).await;
    assert_eq!(h[0]["result"], "refused", "{h:?}");
    assert!(h[0]["source"]
        .as_str()
        .is_some_and(|s| s.starts_with("operator 127.0.0.1:")));
    // The registry says something else: judged as usual.
    reg.write_nodes("orders", &[&ups[0], &ups[1], &ups[2]]);
    until("applied", Duration::from_secs(5), || async {
        answering(&o, 12).await.len() == 3
    })
    .await;
    assert_eq!(o.service("orders").await["refused"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_writes_need_post_and_the_header_and_name_what_is_wrong() {
    let a = TestUpstream::start("a").await;
    let reg = NodeFile::new();
    reg.write_nodes("orders", &[&a]);
    let o = start(&reg).await;
    // No state change through GET, nor without the header a cross-site page cannot send.
    assert_eq!(write(&o, "GET", "/upstreams/orders/pin", true).await.0, 405);
    assert_eq!(
        write(&o, "POST", "/upstreams/orders/pin", false).await.0,
        403
    );
    assert_eq!(o.service("orders").await["state"], "fresh");
    let (status, body) = write(&o, "POST", "/upstreams/nosuch/pin", true).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = write(&o, "POST", "/upstreams/orders/pin?version=999", true).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("version 999")),
        "{body}"
    );
    let (status, body) = write(&o, "DELETE", "/upstreams/orders/pin", true).await;
    assert_eq!(status, 409, "{body}");
    assert!(o.log().contains("operator action refused"), "{}", o.log());
    // A version that is not a number is named, not taken as another.
    for query in ["version=abc", "version=-1", "foo=1"] {
        let (status, body) =
            write(&o, "POST", &format!("/upstreams/orders/pin?{query}"), true).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains(query)),
            "{body}"
        );
    }
    assert_eq!(o.service("orders").await["state"], "fresh");
}

/// A pin made while an update is held, or while nothing changes, loses nothing: unpinning
/// judges the registry's state as it was, when no answer came meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpinning_judges_the_registry_state_even_when_it_said_nothing_meanwhile() {
    let ups = [
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
        TestUpstream::start("c").await,
        TestUpstream::start("d").await,
    ];
    let reg = NodeFile::new();
    reg.write_nodes("orders", &[&ups[0], &ups[1]]);
    let o = start(&reg).await;
    reg.write_nodes("orders", &[&ups[0], &ups[1], &ups[2]]);
    until("three", Duration::from_secs(5), || async {
        answering(&o, 12).await.len() == 3
    })
    .await;
    let first = history(&o).await[1]["version"].as_u64().expect("a version");
    // Pinned to the first set; the registry (the file) says nothing more; unpinned.
    assert_eq!(
        write(
            &o,
            "POST",
            &format!("/upstreams/orders/pin?version={first}"),
            true
        )
        .await
        .0,
        200
    );
    assert_eq!(answering(&o, 8).await, set(&["a", "b"]));
    assert_eq!(o.service("orders").await["pin"]["pinned_to"], first);
    assert_eq!(
        write(&o, "DELETE", "/upstreams/orders/pin", true).await.0,
        200
    );
    assert_eq!(
        answering(&o, 12).await,
        set(&["a", "b", "c"]),
        "the registry's set is back"
    );

    // An update held when the pin is made is held again after the unpin.
    reg.write_nodes("orders", &[&ups[3]]);
    until("held", Duration::from_secs(5), || async {
        o.service("orders").await["state"] == "held"
    })
    .await;
    assert_eq!(
        write(&o, "POST", "/upstreams/orders/pin", true).await.0,
        200
    );
    assert_eq!(
        write(&o, "DELETE", "/upstreams/orders/pin", true).await.0,
        200
    );
    let s = o.service("orders").await;
    assert_eq!(s["state"], "held", "{s}");
    assert_eq!(
        s["pending"]["endpoints"].as_array().map(Vec::len),
        Some(1),
        "{s}"
    );
    let (status, body) = write(&o, "POST", "/upstreams/orders/pending/confirm", true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answering(&o, 6).await, set(&["d"]));
}

/// The dashboard in a real headless Chromium: a rollback done by clicking "Pin this set" on
/// the version before a bad deploy changes routing. The screenshot is kept in the test's
/// output directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_through_the_dashboard_changes_routing() {
    let (a, b, bad) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
        TestUpstream::start("bad").await,
    );
    let reg = NodeFile::new();
    reg.write_nodes("orders", &[&a, &b]);
    let o = start(&reg).await;
    reg.write_nodes("orders", &[&a, &b, &bad]);
    until("the deploy applied", Duration::from_secs(5), || async {
        answering(&o, 9).await.contains("bad")
    })
    .await;
    let good = history(&o).await[1]["version"].as_u64().expect("a version");
    // The page escapes what it shows and allows only its own script.
    let page = get(o.admin, "127.0.0.1", "/").await.expect("the dashboard");
    assert_eq!(page.status, 200);
    let csp = page
        .headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(csp.contains("script-src 'nonce-"), "{csp}");

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-rollback.png");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/clients/dashboard_check.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(format!("http://{}/", o.admin))
        .arg("orders")
        .arg(good.to_string())
        .arg(&shot)
        .output()
        .await
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the dashboard check failed (integration/run-tests.sh installs chromium and websocket-client):\n{stderr}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(result["pinned"], true, "{result}");
    eprintln!("dashboard screenshot: {}", shot.display());
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000));
    assert_eq!(answering(&o, 12).await, set(&["a", "b"]));
    assert_eq!(o.service("orders").await["state"], "pinned");
}
