//! Configuration errors: exit status 2 and a message naming the variable, its value and what
//! was expected.

use std::path::Path;

use outrigger_integration::process::run_to_exit;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_outrigger"))
}

#[test]
fn bad_values_exit_2_naming_variable_and_value() {
    let ok_discovery = "static:orders=127.0.0.1:8081";
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[
                ("OUTRIGGER_UPSTREAMS", "orders"),
                ("OUTRIGGER_DISCOVERY", ok_discovery),
                ("OUTRIGGER_LISTEN", "localhost"),
            ],
            "OUTRIGGER_LISTEN=\"localhost\": ip:port",
        ),
        (
            &[("OUTRIGGER_DISCOVERY", ok_discovery)],
            "OUTRIGGER_UPSTREAMS=\"\": at least one service",
        ),
        (
            &[
                ("OUTRIGGER_UPSTREAMS", "orders"),
                ("OUTRIGGER_DISCOVERY", "static:orders=127.0.0.1:8081@heavy"),
            ],
            "OUTRIGGER_DISCOVERY=\"static:orders=127.0.0.1:8081@heavy\": endpoint \"127.0.0.1:8081@heavy\": weight",
        ),
        (
            &[
                ("OUTRIGGER_UPSTREAMS", "orders"),
                ("OUTRIGGER_DISCOVERY", ok_discovery),
                ("OUTRIGGER_REQUEST_TIMEOUT", "fast"),
            ],
            "OUTRIGGER_REQUEST_TIMEOUT=\"fast\": a duration",
        ),
        (
            &[
                ("OUTRIGGER_UPSTREAMS", "orders"),
                ("OUTRIGGER_DISCOVERY", ok_discovery),
                ("OUTRIGGER_LKG_MAX_DROP", "150%"),
            ],
            "OUTRIGGER_LKG_MAX_DROP=\"150%\": a share",
        ),
        (
            &[
                ("OUTRIGGER_UPSTREAMS", "orders"),
                ("OUTRIGGER_DISCOVERY", ok_discovery),
                ("OUTRIGGER_WORKER_THREADS", "0"),
            ],
            "OUTRIGGER_WORKER_THREADS=\"0\"",
        ),
        (
            &[
                ("OUTRIGGER_UPSTREAMS", "orders"),
                ("OUTRIGGER_DISCOVERY", ok_discovery),
                ("OUTRIGGER_PIN_WORKERS", "sometimes"),
            ],
            "OUTRIGGER_PIN_WORKERS=\"sometimes\": auto or off",
        ),
        (
            &[
                ("OUTRIGGER_UPSTREAMS", "orders"),
                ("OUTRIGGER_DISCOVERY", ok_discovery),
                ("OUTRIGGER_UPDATE_SPACING", "-1s"),
            ],
            "OUTRIGGER_UPDATE_SPACING=\"-1s\": a duration",
        ),
        (
            &[
                ("OUTRIGGER_UPSTREAMS", "orders"),
                ("OUTRIGGER_DISCOVERY", ok_discovery),
                ("OUTRIGGER_LOG", "loud[["),
            ],
            "OUTRIGGER_LOG=\"loud[[\"",
        ),
    ];
    for (env, expected) in cases {
        let (status, stderr) = run_to_exit(bin(), env);
        assert_eq!(status.code(), Some(2), "{env:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{env:?}: expected {expected:?} in {stderr}"
        );
    }
}

#[test]
fn help_lists_every_variable() {
    let out = std::process::Command::new(bin())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "OUTRIGGER_LISTEN",
        "OUTRIGGER_ADMIN_LISTEN",
        "OUTRIGGER_UPSTREAMS",
        "OUTRIGGER_DISCOVERY",
        "OUTRIGGER_LOG",
        "OUTRIGGER_CONNECT_TIMEOUT",
        "OUTRIGGER_REQUEST_TIMEOUT",
        "OUTRIGGER_DRAIN_TIMEOUT",
        "OUTRIGGER_LKG_CONFIRM",
        "OUTRIGGER_LKG_MAX_DROP",
        "OUTRIGGER_STATE_DIR",
        "OUTRIGGER_UPDATE_SPACING",
    ] {
        assert!(help.contains(var), "--help lacks {var}:\n{help}");
    }
}

#[test]
fn a_taken_port_is_reported_with_its_variable() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let listen = format!("127.0.0.1:{}", outrigger_integration::free_port());
    let (status, stderr) = run_to_exit(
        bin(),
        &[
            ("OUTRIGGER_LISTEN", &listen),
            ("OUTRIGGER_UPSTREAMS", "orders"),
            ("OUTRIGGER_DISCOVERY", "static:orders=127.0.0.1:8081"),
            ("OUTRIGGER_ADMIN_LISTEN", &addr),
        ],
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr} (OUTRIGGER_ADMIN_LISTEN)")),
        "{stderr}"
    );
}

/// Every bad or missing variable is reported in one run, so a user does not fix one only to
/// meet the next.
#[test]
fn every_error_is_reported_at_once() {
    let (status, stderr) = run_to_exit(
        bin(),
        &[
            ("OUTRIGGER_LISTEN", "not-an-address"),
            ("OUTRIGGER_RETRIES", "many"),
            ("OUTRIGGER_IDLE_TIMEOUT", "0s"),
            ("OUTRIGGER_MAX_REQUEST_HEADERS", "60 parsecs"),
            ("OUTRIGGER_MAX_RESPONSE_HEADERS", "12"),
            ("OUTRIGGER_MAX_HEADERS", "0"),
        ],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    for named in [
        "OUTRIGGER_LISTEN=\"not-an-address\"",
        "OUTRIGGER_UPSTREAMS=\"\"",
        "OUTRIGGER_DISCOVERY=\"\"",
        "OUTRIGGER_RETRIES=\"many\"",
        "OUTRIGGER_IDLE_TIMEOUT=\"0s\"",
        "OUTRIGGER_MAX_REQUEST_HEADERS=\"60 parsecs\"",
        "OUTRIGGER_MAX_RESPONSE_HEADERS=\"12\"",
        "OUTRIGGER_MAX_HEADERS=\"0\"",
    ] {
        assert!(stderr.contains(named), "{named} missing from:\n{stderr}");
    }
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("configuration error"))
            .count(),
        8,
        "{stderr}"
    );
}

/// Per-service settings too: a bad value for a real service does not hide a variable that names
/// no service.
#[test]
fn per_service_errors_are_all_reported() {
    let (status, stderr) = run_to_exit(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders"),
            ("OUTRIGGER_DISCOVERY", "static:orders=127.0.0.1:1"),
            ("OUTRIGGER_LB_ORDERS", "maglev:bogus"),
            ("OUTRIGGER_LB_USERS", "random"),
            ("OUTRIGGER_HC_ORDERS", "http:healthz"),
        ],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    for named in [
        "OUTRIGGER_LB_ORDERS",
        "OUTRIGGER_LB_USERS",
        "OUTRIGGER_HC_ORDERS",
    ] {
        assert!(stderr.contains(named), "{named} missing from:\n{stderr}");
    }
}

/// DNS queries too: a bad query and a query for no service are reported together.
#[test]
fn every_dns_query_error_is_reported() {
    let (status, stderr) = run_to_exit(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "orders,users"),
            ("OUTRIGGER_DISCOVERY", "dns://127.0.0.1:53"),
            ("OUTRIGGER_DNS_ORDERS", "mx:orders"),
            ("OUTRIGGER_DNS_BILLING", "srv:_http._tcp.billing"),
        ],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    for named in [
        "OUTRIGGER_DNS_ORDERS",
        "OUTRIGGER_DNS_BILLING",
        "OUTRIGGER_DNS_USERS",
    ] {
        assert!(stderr.contains(named), "{named} missing from:\n{stderr}");
    }
}

/// A slow service's timeouts apart from a fast one's: `_<SERVICE>` overrides of the request
/// timeout, retries and limits, shown in `/upstreams`, checked like the global values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_service_timeouts_retries_and_limits() {
    use outrigger_integration::client::get;
    use outrigger_integration::TestUpstream;
    let slow = TestUpstream::start_slow("slow", std::time::Duration::from_millis(400)).await;
    let o = outrigger_integration::Outrigger::start(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "quick,patient".into()),
            (
                "OUTRIGGER_DISCOVERY",
                format!("static:quick={0};patient={0}", slow.addr),
            ),
            ("OUTRIGGER_REQUEST_TIMEOUT_QUICK", "150ms".into()),
            ("OUTRIGGER_RETRIES_QUICK", "0".into()),
            ("OUTRIGGER_MAX_REQUESTS_PATIENT", "7".into()),
        ],
    )
    .await;
    let r = get(o.proxy, "quick", "/").await.expect("answer");
    assert_eq!(r.status, 504, "{r:?}");
    let r = get(o.proxy, "patient", "/").await.expect("answer");
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "slow"), "{r:?}");
    let services = o.upstreams().await["services"].clone();
    let quick = &services["quick"]["settings"];
    assert_eq!(
        (
            quick["request_timeout_ms"].as_u64(),
            quick["try_timeout_ms"].as_u64(),
            quick["retries"].as_u64()
        ),
        (Some(150), Some(150), Some(0)),
        "{quick}"
    );
    let patient = &services["patient"]["settings"];
    assert_eq!(
        (
            patient["request_timeout_ms"].as_u64(),
            patient["max_requests"].as_u64(),
            patient["retries"].as_u64()
        ),
        (Some(15000), Some(7), Some(2)),
        "{patient}"
    );

    let (status, stderr) = run_to_exit(
        bin(),
        &[
            ("OUTRIGGER_UPSTREAMS", "quick"),
            ("OUTRIGGER_DISCOVERY", "static:quick=127.0.0.1:1"),
            ("OUTRIGGER_REQUEST_TIMEOUT_QUICK", "soon"),
            ("OUTRIGGER_RETRIES_QUICK", "9"),
            ("OUTRIGGER_OUTLIER_MAX_EJECTED_QUICK", "150%"),
            ("OUTRIGGER_TRY_TIMEOUT_QUICK", "1m"),
            ("OUTRIGGER_CONNECT_TIMEOUT_NOSUCH", "1s"),
            ("OUTRIGGER_RETRY_ON_QUICK", "5xx"),
            ("OUTRIGGER_SUBSET_QUICK", "x-canary -> v2"),
            ("OUTRIGGER_SLOW_START_QUICK", "later"),
            ("OUTRIGGER_OUTLIER_BASE_EJECTION_QUICK", "10m"),
            ("OUTRIGGER_RETRY_NON_IDEMPOTENT", "yes"),
        ],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    for named in [
        "OUTRIGGER_REQUEST_TIMEOUT_QUICK=\"soon\"",
        "OUTRIGGER_RETRIES_QUICK=\"9\"",
        "OUTRIGGER_OUTLIER_MAX_EJECTED_QUICK=\"150%\"",
        "OUTRIGGER_TRY_TIMEOUT_QUICK=",
        "OUTRIGGER_CONNECT_TIMEOUT_NOSUCH=\"1s\": no such service",
        "OUTRIGGER_RETRY_ON_QUICK=\"5xx\": status codes or ranges",
        "OUTRIGGER_SUBSET_QUICK=\"x-canary -> v2\": <header>=<value> -> ",
        "OUTRIGGER_SLOW_START_QUICK=\"later\"",
        "OUTRIGGER_OUTLIER_BASE_EJECTION_QUICK=\"600s\": at most the longest ejection",
        "OUTRIGGER_RETRY_NON_IDEMPOTENT=\"yes\": on or off",
    ] {
        assert!(stderr.contains(named), "{named} missing from:\n{stderr}");
    }
}
