//! Shared helpers for Weir's benchmarks: synthetic route tables.

use weir::config::{RouteConfig, TargetSpec, UpstreamConfig};

/// `n` routes in the shape real gateways carry: per-service prefixes under a few hosts,
/// some exact paths and a few regexes.
pub fn synthetic_routes(n: usize) -> Vec<RouteConfig> {
    (0..n)
        .map(|i| {
            let (hosts, paths) = match i % 10 {
                0 => (vec![], vec![format!("=/svc{i}/health")]),
                1 => (
                    vec![format!("tenant{}.example.com", i % 50)],
                    vec![format!("/svc{i}")],
                ),
                2 if i % 100 == 2 => (vec![], vec![format!("~^/re{i}/[0-9]+$")]),
                _ => (vec![], vec![format!("/api/v{}/svc{i}", i % 3)]),
            };
            RouteConfig {
                name: format!("r{i}"),
                hosts,
                paths,
                methods: vec![],
                headers: Default::default(),
                priority: 0,
                upstream: Some("u".into()),
                strip_prefix: false,
                rewrite_path: None,
                request_headers: Default::default(),
                response_headers: Default::default(),
                respond: None,
            }
        })
        .collect()
}

/// An upstream with one target and default settings.
pub fn upstream(addr: &str) -> UpstreamConfig {
    UpstreamConfig {
        name: "u".into(),
        targets: vec![TargetSpec::Addr(addr.into())],
        lb: Default::default(),
        hash_on: None,
        health: None,
        passive: Default::default(),
        timeouts: Default::default(),
        retries: 1,
        retry_on_status: vec![],
        tls: None,
    }
}
