//! Route lookup as the table grows (10, 1k, 10k routes), and building a 10k-route table.
//!
//! Run: `cargo bench -p weir-benches --bench router`. The target (DESIGN.md): lookup
//! among 10k routes within 2x of lookup among 10.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use weir::config::{Config, TargetSpec, UpstreamConfig};
use weir::metrics::Metrics;
use weir::plugin::PluginHost;
use weir::router::Router;
use weir::snapshot::{BuildEnv, Snapshot};
use weir_benches::synthetic_routes;

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_lookup");
    let headers = HeaderMap::new();
    for n in [10usize, 1_000, 10_000] {
        let routes = synthetic_routes(n);
        let router = Router::build(&routes);
        // A prefix route in the middle of the table, a request with a longer path, and
        // a miss that has to try every tier.
        let hit = format!("/api/v{}/svc{}/items/42", (n / 2 + 3) % 3, n / 2 + 3);
        assert!(router
            .lookup("api.example.com", &hit, &Method::GET, &headers)
            .is_some());
        g.bench_with_input(BenchmarkId::new("prefix_hit", n), &hit, |b, path| {
            b.iter(|| {
                router.lookup(
                    black_box("api.example.com"),
                    black_box(path),
                    &Method::GET,
                    &headers,
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &"/nothing/here", |b, path| {
            b.iter(|| {
                router.lookup(
                    black_box("api.example.com"),
                    black_box(path),
                    &Method::GET,
                    &headers,
                )
            })
        });
    }
    g.finish();
}

fn build(c: &mut Criterion) {
    let routes = synthetic_routes(10_000);
    c.bench_function("router_build_10k", |b| {
        b.iter(|| Router::build(black_box(&routes)))
    });
    // The whole snapshot a reload builds (after validation): routes, upstreams, metrics
    // handles.
    let config = Config {
        upstreams: vec![UpstreamConfig::new(
            "u",
            vec![TargetSpec::Addr("127.0.0.1:9001".into())],
        )],
        routes,
        ..Config::default()
    };
    let metrics = Metrics::default();
    let plugins = PluginHost::new(None);
    let env = BuildEnv {
        metrics: &metrics,
        plugins: &plugins,
        base_dir: std::path::Path::new("."),
    };
    c.bench_function("snapshot_build_10k", |b| {
        b.iter(|| Snapshot::build(black_box(config.clone()), None, &env, 1))
    });
}

criterion_group!(benches, lookup, build);
criterion_main!(benches);
