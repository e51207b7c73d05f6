//! JSON access log: one line per request, written by a dedicated thread.
//!
//! The request path hands a [`LogEntry`] to a bounded channel with `try_send`; when the
//! writer falls behind, the line is dropped and counted
//! (`weir_access_log_dropped_total`), so logging never blocks a request. The writer takes
//! lines in batches, so that a request almost never pays for waking it (see `writer`).

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{
    sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError,
};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::metrics::Metrics;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct LogEntry {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub request_id: String,
    pub client_ip: Option<IpAddr>,
    pub method: String,
    pub host: String,
    pub path: String,
    pub status: u16,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub upstream_target: Option<Arc<str>>,
    /// Who the client is, as an auth plugin said (the `weir.consumer` property).
    pub consumer: Option<String>,
    pub duration_ms: f64,
    pub upstream_duration_ms: Option<f64>,
    pub user_agent: String,
    pub error: Option<&'static str>,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

enum Msg {
    Line(Box<LogEntry>),
    /// Flush, then acknowledge (shutdown).
    Flush(SyncSender<()>),
}

/// The sending half; cheap to clone into the proxy.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<Msg>>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// Opens the output and starts the writer thread. `output` is `stdout`, `stderr`,
    /// `off`, or a file path (appended to).
    pub fn start(output: &str, buffer: usize, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let sink: Box<dyn Write + Send> = match output {
            "off" => return Ok(AccessLog { tx: None, metrics }),
            "stdout" => Box::new(std::io::stdout()),
            "stderr" => Box::new(std::io::stderr()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = sync_channel(buffer);
        std::thread::Builder::new()
            .name("weir-access-log".into())
            .spawn(move || writer(rx, sink))?;
        Ok(AccessLog {
            tx: Some(tx),
            metrics,
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a line; drops and counts it when the buffer is full.
    pub fn log(&self, entry: LogEntry) {
        if let Some(tx) = &self.tx {
            match tx.try_send(Msg::Line(Box::new(entry))) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.metrics
                        .access_log_dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Writes out everything queued so far (bounded wait); used before the process exits.
    pub fn flush(&self, timeout: Duration) {
        if let Some(tx) = &self.tx {
            let (ack_tx, ack_rx) = sync_channel(1);
            if tx.send(Msg::Flush(ack_tx)).is_ok() {
                let _ = ack_rx.recv_timeout(timeout);
            }
        }
    }
}

fn writer(rx: Receiver<Msg>, sink: Box<dyn Write + Send>) {
    const FLUSH_EVERY: Duration = Duration::from_millis(100);
    // Woken by a line, the writer lets more gather before it takes them all. Waking it
    // is the sender's cost (a futex wake and, on the request's core, two context
    // switches: a quarter of the throughput when it happened for every line); while it
    // gathers, a send wakes nobody. At most 1 / GATHER wake-ups a second, and a line
    // waits at most GATHER + FLUSH_EVERY to be written.
    const GATHER: Duration = Duration::from_millis(5);
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    let mut line = Vec::with_capacity(512);
    let mut last_flush = Instant::now();
    let mut take = |msg: Msg, out: &mut std::io::BufWriter<Box<dyn Write + Send>>| match msg {
        Msg::Flush(ack) => {
            let _ = out.flush();
            let _ = ack.send(());
        }
        Msg::Line(entry) => {
            line.clear();
            if serde_json::to_writer(&mut line, &entry).is_ok() {
                line.push(b'\n');
                let _ = out.write_all(&line);
            }
        }
    };
    'run: loop {
        match rx.recv_timeout(FLUSH_EVERY) {
            Ok(first) => {
                take(first, &mut out);
                std::thread::sleep(GATHER);
                loop {
                    match rx.try_recv() {
                        Ok(msg) => take(msg, &mut out),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => break 'run,
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_flush.elapsed() >= FLUSH_EVERY {
            let _ = out.flush();
            last_flush = Instant::now();
        }
    }
    let _ = out.flush();
}
