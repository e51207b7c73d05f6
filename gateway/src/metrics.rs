//! Prometheus metrics, lock-free on the request path.
//!
//! Label sets are bounded: route, upstream and target names come from the config, and the
//! status label is the class (`2xx`, `4xx`...), not the code. Per-route and per-upstream
//! series are created when a snapshot is built (off the request path) and kept across
//! reloads, so counters never reset while the process lives; the request path only does
//! relaxed atomic adds on handles the snapshot already holds.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the buckets for plugin callbacks (microseconds to the default CPU
/// limit of a few milliseconds), in seconds.
pub const PLUGIN_BUCKETS: [f64; 12] = [
    0.000_002, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001,
    0.002_5, 0.005, 0.01,
];

/// A latency histogram: one atomic per bucket, made cumulative when rendered.
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, then +Inf.
    buckets: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    /// Buckets for request latencies (0.5 ms to 10 s).
    fn default() -> Self {
        Histogram::with_buckets(&BUCKETS)
    }
}

impl Histogram {
    /// A histogram with these bucket upper bounds (seconds, ascending).
    pub fn with_buckets(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// The Prometheus lines of this histogram (`_bucket`, `_sum`, `_count`).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cum += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cum}");
        }
        cum += self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cum}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cum}");
    }
}

/// Series of one route.
#[derive(Default)]
pub struct RouteMetrics {
    /// Requests by status class: index 0 for "other", 1 for 1xx ... 5 for 5xx.
    status: [AtomicU64; 6],
    pub duration: Histogram,
}

impl RouteMetrics {
    pub fn record(&self, status: u16, elapsed: Duration) {
        let class = (status / 100) as usize;
        let i = if (1..=5).contains(&class) { class } else { 0 };
        self.status[i].fetch_add(1, Ordering::Relaxed);
        self.duration.observe(elapsed);
    }
}

/// The process's metrics. Owned by the app state, never global.
#[derive(Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<String, Arc<RouteMetrics>>>,
    upstreams: Mutex<BTreeMap<String, Arc<Histogram>>>,
    pub active_requests: AtomicI64,
    pub downstream_connections: AtomicI64,
    pub reloads_ok: AtomicU64,
    pub reloads_error: AtomicU64,
    pub generation: AtomicU64,
    pub access_log_dropped: AtomicU64,
    pub unmatched: Arc<RouteMetrics>,
}

/// The `route` label of requests that matched no route.
pub const UNMATCHED: &str = "none";

impl Metrics {
    /// The series of a route, created on first use (snapshot build).
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        self.routes
            .lock()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The upstream latency histogram of an upstream (snapshot build).
    pub fn upstream(&self, name: &str) -> Arc<Histogram> {
        self.upstreams
            .lock()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Renders the Prometheus text format; `targets` are (upstream, target, healthy).
    pub fn render(&self, targets: &[(String, String, bool)]) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str("# HELP weir_http_requests_total Requests answered, by route and status class.\n# TYPE weir_http_requests_total counter\n");
        let routes = self.routes.lock().clone();
        let all = routes
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .chain(std::iter::once((UNMATCHED, &self.unmatched)));
        let all: Vec<_> = all.collect();
        for (name, m) in &all {
            let name = escape(name);
            for (i, class) in ["other", "1xx", "2xx", "3xx", "4xx", "5xx"]
                .iter()
                .enumerate()
            {
                let n = m.status[i].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "weir_http_requests_total{{route=\"{name}\",status=\"{class}\"}} {n}"
                    );
                }
            }
        }
        out.push_str("# HELP weir_http_request_duration_seconds Time from request to logged response, by route.\n# TYPE weir_http_request_duration_seconds histogram\n");
        for (name, m) in &all {
            m.duration.render(
                &mut out,
                "weir_http_request_duration_seconds",
                &format!("route=\"{}\"", escape(name)),
            );
        }
        out.push_str("# HELP weir_upstream_duration_seconds Time from choosing a target to its response header, by upstream.\n# TYPE weir_upstream_duration_seconds histogram\n");
        for (name, h) in self.upstreams.lock().iter() {
            h.render(
                &mut out,
                "weir_upstream_duration_seconds",
                &format!("upstream=\"{}\"", escape(name)),
            );
        }
        out.push_str("# HELP weir_upstream_target_healthy 1 when the target receives traffic (active checks pass, not ejected).\n# TYPE weir_upstream_target_healthy gauge\n");
        for (u, t, healthy) in targets {
            let _ = writeln!(
                out,
                "weir_upstream_target_healthy{{upstream=\"{}\",target=\"{}\"}} {}",
                escape(u),
                escape(t),
                u8::from(*healthy)
            );
        }
        let gauges = [
            (
                "weir_downstream_requests_active",
                "gauge",
                "Requests being served now.",
                self.active_requests.load(Ordering::Relaxed).to_string(),
            ),
            (
                "weir_downstream_connections",
                "gauge",
                "Open client connections (an HTTP/2 connection counts once).",
                self.downstream_connections
                    .load(Ordering::Relaxed)
                    .to_string(),
            ),
            (
                "weir_config_generation",
                "gauge",
                "Generation of the config snapshot serving requests.",
                self.generation.load(Ordering::Relaxed).to_string(),
            ),
            (
                "weir_access_log_dropped_total",
                "counter",
                "Access-log lines dropped because the writer fell behind.",
                self.access_log_dropped.load(Ordering::Relaxed).to_string(),
            ),
        ];
        out.push_str("# HELP weir_config_reloads_total Config reloads by result.\n# TYPE weir_config_reloads_total counter\n");
        let _ = writeln!(
            out,
            "weir_config_reloads_total{{result=\"ok\"}} {}\nweir_config_reloads_total{{result=\"error\"}} {}",
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_error.load(Ordering::Relaxed)
        );
        for (name, kind, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts() {
        let m = Metrics::default();
        let r = m.route("r1");
        r.record(200, Duration::from_micros(300));
        r.record(503, Duration::from_millis(30));
        let text = m.render(&[("u".into(), "127.0.0.1:1".into(), true)]);
        assert!(text.contains("weir_http_requests_total{route=\"r1\",status=\"2xx\"} 1"));
        assert!(text.contains("weir_http_requests_total{route=\"r1\",status=\"5xx\"} 1"));
        assert!(text
            .contains("weir_http_request_duration_seconds_bucket{route=\"r1\",le=\"0.0005\"} 1"));
        assert!(
            text.contains("weir_http_request_duration_seconds_bucket{route=\"r1\",le=\"0.05\"} 2")
        );
        assert!(text.contains("weir_http_request_duration_seconds_count{route=\"r1\"} 2"));
        assert!(
            text.contains("weir_upstream_target_healthy{upstream=\"u\",target=\"127.0.0.1:1\"} 1")
        );
        assert!(
            Arc::ptr_eq(&r, &m.route("r1")),
            "series survive re-registration"
        );
    }
}
