//! See Outrigger balance requests with no registry installed.
//!
//! Starts three small upstream servers on loopback, lists them in a node file with weights
//! 3, 1 and 1, runs Outrigger with file discovery on 127.0.0.1:15001 (admin on :15000), sends
//! requests through it and prints where they went. Then it keeps running so you can try it:
//!
//!     curl -x http://127.0.0.1:15001 http://orders/
//!     curl http://127.0.0.1:15000/upstreams
//!
//! Edit the node file it prints to change routing live; Ctrl-C stops. `--once` exits after the
//! demonstration (used by the test suite to keep this example working).

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser;
use outrigger::config::{Args, Config};
use outrigger_integration::{client, TestUpstream};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let once = std::env::args().any(|a| a == "--once");
    let listen = std::env::var("OUTRIGGER_LISTEN").unwrap_or_else(|_| "127.0.0.1:15001".into());
    let admin =
        std::env::var("OUTRIGGER_ADMIN_LISTEN").unwrap_or_else(|_| "127.0.0.1:15000".into());

    // The nodes listen on 127.0.0.2, so that no port they are given can be the proxy's (on
    // 127.0.0.1, chosen before they start).
    let node = || "127.0.0.2:0".parse().expect("an address");
    let upstreams = [
        TestUpstream::start_on("orders-1", node()).await,
        TestUpstream::start_on("orders-2", node()).await,
        TestUpstream::start_on("orders-3", node()).await,
    ];
    let dir = std::env::temp_dir().join(format!("outrigger-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("nodes.json");
    let nodes = serde_json::json!({"services": {"orders": [
        {"address": upstreams[0].addr.to_string(), "weight": 3, "zone": "local-a"},
        {"address": upstreams[1].addr.to_string(), "weight": 1, "zone": "local-b"},
        {"address": upstreams[2].addr.to_string(), "weight": 1, "zone": "local-b"},
    ]}});
    std::fs::write(&file, serde_json::to_vec_pretty(&nodes)?)?;

    let config = Config::from_args(Args::parse_from([
        "outrigger".to_string(),
        format!("--listen={listen}"),
        format!("--admin-listen={admin}"),
        "--upstreams=orders".to_string(),
        format!("--discovery=file://{}", file.display()),
    ]))?;
    let log = std::env::var("OUTRIGGER_LOG").unwrap_or_else(|_| "info".into());
    outrigger::telemetry::init_logging(&log, false);
    let shutdown = outrigger::lifecycle::Stop::new();
    let proxy = tokio::spawn(outrigger::run(config, shutdown.clone()));

    let proxy_addr = listen.parse()?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut sent = 0;
    while sent < 50 {
        match client::get(proxy_addr, "orders", "/").await {
            Ok(r) if r.status == 200 => {
                *counts.entry(r.body).or_default() += 1;
                sent += 1;
            }
            // The proxy is still starting or reading the file.
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    println!("\n50 requests to service \"orders\" through Outrigger (weights 3:1:1):");
    for (name, n) in &counts {
        println!("  {name}: {n:>2} {}", "#".repeat(*n));
    }
    println!("\nnode file: {}", file.display());
    println!("try:       curl -x http://{listen} http://orders/");
    println!("           curl http://{admin}/upstreams");

    if !once {
        println!("\nrunning; edit the node file to change routing, Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    }
    shutdown.hurry();
    proxy.await??;
    let _ = std::fs::remove_dir_all(&dir);
    let expected = [30, 10, 10];
    let got: Vec<usize> = counts.values().copied().collect();
    if got != expected {
        return Err(format!("expected {expected:?} requests per upstream, got {got:?}").into());
    }
    Ok(())
}
