//! The result of a run: counts, throughput, latency percentiles; as text or JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::runner::RunConfig;
use crate::stats::{ErrorCounts, Stats};

/// Latency summary in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Fastest response.
    pub min: u64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Standard deviation.
    pub stdev: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p99_9: u64,
    /// Slowest response.
    pub max: u64,
}

/// Error counts by kind, with their total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errors {
    /// Connection attempts that failed or timed out.
    pub connect: u64,
    /// Requests without a complete response within `--timeout`.
    pub timeout: u64,
    /// Connections reset or closed before the response was complete.
    pub closed: u64,
    /// Malformed responses.
    pub parse: u64,
    /// Other I/O errors.
    pub other: u64,
    /// Sum of the above.
    pub total: u64,
}

impl From<ErrorCounts> for Errors {
    fn from(e: ErrorCounts) -> Self {
        Errors {
            connect: e.connect,
            timeout: e.timeout,
            closed: e.closed,
            parse: e.parse,
            other: e.other,
            total: e.total(),
        }
    }
}

/// The report of one run (the `--json` output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Target URL (the first one for a `--urls-file` mix).
    pub url: String,
    /// `closed-loop` or `open-loop`.
    pub mode: String,
    /// Requested rate in requests/s (open loop only).
    pub target_rate: Option<f64>,
    /// Concurrent connections.
    pub connections: usize,
    /// Worker threads.
    pub threads: usize,
    /// Measured time in seconds (after warm-up).
    pub duration_secs: f64,
    /// Complete responses received, any status.
    pub requests: u64,
    /// `requests / duration_secs`.
    pub throughput_rps: f64,
    /// Response bytes read.
    pub bytes_read: u64,
    /// Response latency; in open loop a late request is timed from when it was due.
    pub latency_us: Latency,
    /// Failed requests by kind.
    pub errors: Errors,
    /// Responses by status code.
    pub status: BTreeMap<String, u64>,
    /// Responses by status class (`2xx`, …).
    pub status_class: BTreeMap<String, u64>,
    /// True when stopped early by Ctrl-C.
    pub interrupted: bool,
}

impl Report {
    /// Builds the report from merged statistics.
    pub fn new(
        cfg: &RunConfig,
        threads: usize,
        stats: &Stats,
        measured: Duration,
        interrupted: bool,
    ) -> Report {
        let h = &stats.latency;
        let requests = h.len();
        let latency = if requests == 0 {
            Latency::default()
        } else {
            Latency {
                min: h.min(),
                mean: h.mean(),
                stdev: h.stdev(),
                p50: h.value_at_quantile(0.5),
                p90: h.value_at_quantile(0.9),
                p99: h.value_at_quantile(0.99),
                p99_9: h.value_at_quantile(0.999),
                max: h.max(),
            }
        };
        let mut status = BTreeMap::new();
        let mut status_class = BTreeMap::new();
        for (code, &n) in stats.status.iter().enumerate().filter(|(_, &n)| n > 0) {
            status.insert(code.to_string(), n);
            *status_class.entry(format!("{}xx", code / 100)).or_insert(0) += n;
        }
        let secs = measured.as_secs_f64();
        Report {
            url: cfg.url.clone(),
            mode: if cfg.rate.is_some() {
                "open-loop"
            } else {
                "closed-loop"
            }
            .to_string(),
            target_rate: cfg.rate,
            connections: cfg.connections,
            threads,
            duration_secs: secs,
            requests,
            throughput_rps: if secs > 0.0 {
                requests as f64 / secs
            } else {
                0.0
            },
            bytes_read: stats.bytes_read,
            latency_us: latency,
            errors: stats.errors.into(),
            status,
            status_class,
            interrupted,
        }
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report as human-readable text.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let rate = self
            .target_rate
            .map(|r| format!(", target {r} req/s"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "{} test @ {}{}\n  {} threads, {} connections{}",
            self.mode,
            self.url,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            },
            self.threads,
            self.connections,
            rate
        );
        let _ = writeln!(
            s,
            "Requests:   {} in {:.2}s, {:.1} req/s, {} read",
            self.requests,
            self.duration_secs,
            self.throughput_rps,
            format_bytes(self.bytes_read)
        );
        let l = &self.latency_us;
        let _ = writeln!(
            s,
            "Latency:    min {}  mean {}  stdev {}  max {}",
            format_us(l.min as f64),
            format_us(l.mean),
            format_us(l.stdev),
            format_us(l.max as f64)
        );
        let _ = writeln!(
            s,
            "            p50 {}  p90 {}  p99 {}  p99.9 {}",
            format_us(l.p50 as f64),
            format_us(l.p90 as f64),
            format_us(l.p99 as f64),
            format_us(l.p99_9 as f64)
        );
        let join = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.status.is_empty() {
            let _ = writeln!(
                s,
                "Status:     {}  ({})",
                join(&self.status),
                join(&self.status_class)
            );
        }
        let e = &self.errors;
        let _ = writeln!(
            s,
            "Errors:     {} (connect {}, timeout {}, reset/closed {}, parse {}, other {})",
            e.total, e.connect, e.timeout, e.closed, e.parse, e.other
        );
        s
    }
}

/// Formats microseconds with a unit that keeps three significant digits readable.
pub fn format_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0}µs")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1_000.0)
    } else {
        format!("{:.2}s", us / 1_000_000.0)
    }
}

fn format_bytes(b: u64) -> String {
    let b = b as f64;
    if b < 1024.0 {
        format!("{b} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(format_us(12.0), "12µs");
        assert_eq!(format_us(1_500.0), "1.50ms");
        assert_eq!(format_us(2_500_000.0), "2.50s");
        assert_eq!(format_bytes(10), "10 B");
        assert_eq!(format_bytes(2048), "2.0 KiB");
    }
}
