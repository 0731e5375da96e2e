//! One pick of each load-balancing policy at 10, 100 and 10,000 endpoints (criterion).
//!
//! `cargo bench --bench pick`. Target: under 100 ns at 100 endpoints, and no policy O(n) per
//! pick. Results are kept in bench/README.md.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue};
use outrigger::balance::load::EndpointLoad;
use outrigger::balance::{build, PickContext, Policy};
use outrigger_discovery::Endpoint;

fn endpoints(n: usize) -> Vec<Endpoint> {
    (0..n)
        .map(|i| {
            let mut e = Endpoint::new(
                format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256)
                    .parse()
                    .unwrap(),
            );
            e.weight = (1 + i % 3) as f64;
            e
        })
        .collect()
}

fn picks(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert("x-user", HeaderValue::from_static("user-4711"));
    let ctx = PickContext {
        client: [127, 0, 0, 1].into(),
        headers: &headers,
        path: "/orders/42",
    };
    let mut group = c.benchmark_group("pick");
    for policy in [
        "round_robin",
        "random",
        "least_request",
        "peak_ewma",
        "ring_hash:header:x-user",
        "maglev:header:x-user",
    ] {
        let parsed: Policy = policy.parse().unwrap();
        for n in [10, 100, 10_000] {
            let eps = endpoints(n);
            let loads: Vec<Arc<EndpointLoad>> =
                (0..n).map(|_| Arc::new(EndpointLoad::default())).collect();
            let picker = build(&parsed, &eps, &loads);
            group.bench_with_input(BenchmarkId::new(policy, n), &n, |b, _| {
                b.iter(|| picker.pick(std::hint::black_box(&ctx)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, picks);
criterion_main!(benches);
