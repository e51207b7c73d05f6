//! Per-thread measurement state: latency histogram, status codes and error counts.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histogram tracks, in microseconds (one hour); larger values saturate.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Why a request produced no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The TCP connection could not be established.
    Connect,
    /// No complete response within `--timeout`.
    Timeout,
    /// The peer reset or closed the connection before the response was complete.
    Closed,
    /// The response was not valid HTTP/1.x.
    Parse,
    /// Any other I/O error.
    Other,
}

/// Error counts by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    /// Connection attempts that failed.
    pub connect: u64,
    /// Requests that timed out.
    pub timeout: u64,
    /// Connections reset or closed mid-request.
    pub closed: u64,
    /// Malformed responses.
    pub parse: u64,
    /// Other I/O errors.
    pub other: u64,
}

impl ErrorCounts {
    /// Counts one error.
    pub fn add(&mut self, kind: ErrorKind) {
        match kind {
            ErrorKind::Connect => self.connect += 1,
            ErrorKind::Timeout => self.timeout += 1,
            ErrorKind::Closed => self.closed += 1,
            ErrorKind::Parse => self.parse += 1,
            ErrorKind::Other => self.other += 1,
        }
    }

    /// All errors together.
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.closed + self.parse + self.other
    }

    fn merge(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.closed += o.closed;
        self.parse += o.parse;
        self.other += o.other;
    }
}

/// Everything measured by one worker thread (merged into the report at the end).
#[derive(Debug, Clone)]
pub struct Stats {
    /// Response latency in microseconds.
    pub latency: Histogram<u64>,
    /// Responses by status code (index = code, 0..1000).
    pub status: Vec<u64>,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// Response bytes read (heads and bodies).
    pub bytes_read: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Empty statistics.
    pub fn new() -> Stats {
        Stats {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant histogram bounds are valid"),
            status: vec![0; 1000],
            errors: ErrorCounts::default(),
            bytes_read: 0,
        }
    }

    /// Records one complete response.
    pub fn record_response(&mut self, latency: Duration, status: u16, bytes: u64) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency.saturating_record(us.clamp(1, MAX_LATENCY_US));
        if let Some(slot) = self.status.get_mut(usize::from(status)) {
            *slot += 1;
        }
        self.bytes_read += bytes;
    }

    /// Records one failed request.
    pub fn record_error(&mut self, kind: ErrorKind) {
        self.errors.add(kind);
    }

    /// Number of complete responses.
    pub fn responses(&self) -> u64 {
        self.latency.len()
    }

    /// Adds another thread's statistics to these.
    pub fn merge(&mut self, other: &Stats) {
        // Both histograms share the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        for (a, b) in self.status.iter_mut().zip(&other.status) {
            *a += b;
        }
        self.errors.merge(&other.errors);
        self.bytes_read += other.bytes_read;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_merges() {
        let mut a = Stats::new();
        a.record_response(Duration::from_millis(2), 200, 10);
        a.record_response(Duration::from_nanos(10), 404, 5);
        a.record_error(ErrorKind::Timeout);
        let mut b = Stats::new();
        b.record_response(Duration::from_secs(7200), 200, 1);
        b.record_error(ErrorKind::Closed);
        a.merge(&b);
        assert_eq!(a.responses(), 3);
        assert_eq!((a.status[200], a.status[404]), (2, 1));
        assert_eq!(a.errors.total(), 2);
        assert_eq!(a.bytes_read, 16);
        assert_eq!(a.latency.min(), 1);
        assert!(a.latency.max() >= MAX_LATENCY_US * 999 / 1000);
    }
}
