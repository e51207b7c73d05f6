//! Shared helpers for Weir's benchmarks: synthetic route tables.

use weir::config::RouteConfig;

/// `n` routes to upstream `u` in the shape real gateways carry: per-service prefixes,
/// some under tenant hosts, some exact paths and a few regexes.
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
                hosts,
                paths,
                ..RouteConfig::proxy(&format!("r{i}"), "u")
            }
        })
        .collect()
}
