//! Change-to-routing latency: the time from a registry change to the first request that the
//! new node serves through Outrigger.
//!
//! For each adapter it starts the registry (an emulator or real server), a few loopback
//! upstreams and the `outrigger` binary, then repeats: register a new node, send requests
//! through the proxy back to back until one is answered by that node, record the time,
//! deregister it again. Prints p50/p99/max per adapter.
//!
//! Changes are `--gap-ms` apart (default 200): isolated changes, as registries see them. With
//! `--gap-ms 0` it measures sustained churn, where the Consul watch's pacing (at most one
//! query per 50 ms after a burst of two) deliberately bounds the load on Consul.
//!
//! Usage: convergence [--outrigger PATH] [--changes N] [--adapters consul,eureka,nacos,file] [--gap-ms N]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use outrigger_integration::client::get;
use outrigger_integration::consul::ConsulEmulator;
use outrigger_integration::eureka::EurekaEmulator;
use outrigger_integration::rnacos::RNacos;
use outrigger_integration::{Outrigger, TestUpstream};

struct Args {
    outrigger: PathBuf,
    changes: usize,
    adapters: Vec<String>,
    gap: Duration,
}

fn args() -> Args {
    let mut a = Args {
        outrigger: PathBuf::from("target/release/outrigger"),
        changes: 200,
        adapters: vec![
            "consul".into(),
            "eureka".into(),
            "nacos".into(),
            "file".into(),
        ],
        gap: Duration::from_millis(200),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--outrigger" => a.outrigger = PathBuf::from(value),
            "--changes" => a.changes = value.parse().expect("--changes takes a number"),
            "--adapters" => a.adapters = value.split(',').map(str::to_string).collect(),
            "--gap-ms" => a.gap = Duration::from_millis(value.parse().expect("--gap-ms takes ms")),
            _ => panic!("unknown flag {flag}; see the doc comment"),
        }
    }
    a
}

/// A registry the benchmark can add a node to and remove it from.
trait Registry {
    async fn add(&self, id: &str, node: &TestUpstream);
    async fn remove(&self, id: &str, node: &TestUpstream);
}

struct Consul(ConsulEmulator);

impl Registry for Consul {
    async fn add(&self, id: &str, node: &TestUpstream) {
        self.0.register(id, "orders", node.addr, 1);
    }
    async fn remove(&self, id: &str, _node: &TestUpstream) {
        self.0.deregister(id);
    }
}

struct Eureka(std::sync::Arc<EurekaEmulator>);

impl Registry for Eureka {
    async fn add(&self, id: &str, node: &TestUpstream) {
        self.0.register("ORDERS", id, node.addr, &[]);
    }
    async fn remove(&self, id: &str, _node: &TestUpstream) {
        self.0.deregister("ORDERS", id);
    }
}

/// The real r-nacos server, driven through its open API.
struct Nacos(RNacos);

impl Registry for Nacos {
    async fn add(&self, _id: &str, node: &TestUpstream) {
        self.0.register("orders", node.addr, 1.0).await;
    }
    async fn remove(&self, _id: &str, node: &TestUpstream) {
        self.0.deregister("orders", node.addr).await;
    }
}

/// The file adapter: rewrites the node file atomically.
struct File {
    path: PathBuf,
    base: Vec<String>,
    extra: std::sync::Mutex<Option<String>>,
}

impl File {
    fn write(&self) {
        let mut nodes = self.base.clone();
        nodes.extend(self.extra.lock().unwrap().clone());
        let list: Vec<String> = nodes
            .iter()
            .map(|n| format!(r#"{{"address": "{n}"}}"#))
            .collect();
        let tmp = self.path.with_extension("tmp");
        std::fs::write(
            &tmp,
            format!(r#"{{"services": {{"orders": [{}]}}}}"#, list.join(",")),
        )
        .unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }
}

impl Registry for File {
    async fn add(&self, _id: &str, node: &TestUpstream) {
        *self.extra.lock().unwrap() = Some(node.addr.to_string());
        self.write();
    }
    async fn remove(&self, _id: &str, _node: &TestUpstream) {
        *self.extra.lock().unwrap() = None;
        self.write();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn measure(
    name: &str,
    registry: &impl Registry,
    discovery: String,
    extra_env: &[(&'static str, String)],
    a: &Args,
) {
    let env: Vec<(&'static str, String)> = [
        ("OUTRIGGER_UPSTREAMS", "orders".to_string()),
        ("OUTRIGGER_DISCOVERY", discovery),
        ("OUTRIGGER_LOG", "warn".to_string()),
    ]
    .into_iter()
    .chain(extra_env.iter().cloned())
    .collect();
    let mut o = Outrigger::start(&a.outrigger, &env).await;
    o.wait_for("/ready", Duration::from_secs(10)).await;
    let newcomer = TestUpstream::start("new").await;
    let mut samples = Vec::with_capacity(a.changes);
    for i in 0..a.changes {
        let id = format!("orders-new-{i}");
        tokio::time::sleep(a.gap).await;
        let changed = Instant::now();
        registry.add(&id, &newcomer).await;
        loop {
            let r = get(o.proxy, "orders", "/").await.expect("proxy answers");
            assert_eq!(r.status, 200, "{r:?}");
            if r.body == "new" {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(30),
                "{name}: change never routed"
            );
        }
        samples.push(changed.elapsed());
        registry.remove(&id, &newcomer).await;
        // Let the removal settle so the next sample starts from the base set.
        loop {
            let up = o.upstreams().await;
            let n = up["services"]["orders"]["endpoints"]
                .as_array()
                .map_or(0, Vec::len);
            if n == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    samples.sort();
    println!(
        "| {name:<8} | {:>7} | {:>9.1} | {:>9.1} | {:>9.1} |",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1000.0,
        percentile(&samples, 0.99).as_secs_f64() * 1000.0,
        samples.last().unwrap().as_secs_f64() * 1000.0,
    );
}

#[tokio::main]
async fn main() {
    let a = args();
    assert!(
        a.outrigger.exists(),
        "{} not found: build it first (cargo build --release)",
        a.outrigger.display()
    );
    let base = [
        TestUpstream::start("b0").await,
        TestUpstream::start("b1").await,
        TestUpstream::start("b2").await,
    ];
    println!(
        "change-to-routing latency (registry change -> first request served by the new node), changes {} ms apart\n",
        a.gap.as_millis()
    );
    println!("| adapter  | changes | p50 (ms)  | p99 (ms)  | max (ms)  |");
    println!("|----------|---------|-----------|-----------|-----------|");
    for adapter in &a.adapters {
        match adapter.as_str() {
            "consul" => {
                let emulator = ConsulEmulator::start().await;
                for (i, b) in base.iter().enumerate() {
                    emulator.register(&format!("orders-{i}"), "orders", b.addr, 1);
                }
                let url = format!("consul://{}", emulator.addr);
                measure("consul", &Consul(emulator), url, &[], &a).await;
            }
            "eureka" => {
                let emulator = std::sync::Arc::new(EurekaEmulator::start().await);
                for (i, b) in base.iter().enumerate() {
                    emulator.register("ORDERS", &format!("orders-{i}"), b.addr, &[]);
                }
                // The instances' heartbeats: a run outlasts Eureka's 90 s lease.
                let beating = emulator.clone();
                let heartbeats = tokio::spawn(async move {
                    loop {
                        beating.heartbeat_all();
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                });
                // The default delta interval: 5 s.
                let url = format!("eureka://{}/eureka", emulator.addr);
                measure("eureka", &Eureka(emulator), url, &[], &a).await;
                heartbeats.abort();
            }
            "nacos" => {
                let server = RNacos::start(None).await;
                for b in &base {
                    server.register("orders", b.addr, 1.0).await;
                }
                // Push on, and a poll too slow to matter: what is measured is the push path.
                let url = format!("nacos://{}?grpc_port={}&poll=60s", server.http, server.grpc);
                measure("nacos", &Nacos(server), url, &[], &a).await;
            }
            "file" => {
                let dir =
                    std::env::temp_dir().join(format!("outrigger-bench-{}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                let file = File {
                    path: dir.join("nodes.json"),
                    base: base.iter().map(|b| b.addr.to_string()).collect(),
                    extra: Default::default(),
                };
                file.write();
                let url = format!("file://{}", file.path.display());
                measure(
                    "file",
                    &file,
                    url,
                    &[("OUTRIGGER_FILE_POLL", "100ms".to_string())],
                    &a,
                )
                .await;
                let _ = std::fs::remove_dir_all(&dir);
            }
            other => panic!("unknown adapter {other}"),
        }
    }
}
