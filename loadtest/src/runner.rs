//! Drives the load: worker threads with one current-thread runtime each, closed or open loop.
//!
//! Each worker thread runs its share of the connections on its own current-thread tokio
//! runtime (like wrk's per-thread event loops), so the hot path has no cross-thread
//! synchronisation except a relaxed counter for progress and, with `-n`, one shared ticket
//! counter. The calling thread runs a small controller: warm-up, progress lines, deadline,
//! Ctrl-C, and collecting the per-thread statistics.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinSet, LocalSet};
use tokio::time::Instant;

use crate::client::Connection;
use crate::report::Report;
use crate::stats::{ErrorKind, Stats};
use crate::target::RequestTemplate;
use crate::Error;

/// Pause after a failed connection attempt, so a dead target is not hammered in a tight loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// A validated load-test plan.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Resolved address of the target (all URLs share it).
    pub addr: SocketAddr,
    /// The URL shown in the report (the first target's).
    pub url: String,
    /// Prepared requests, one per target.
    pub requests: Vec<RequestTemplate>,
    /// Rotation of indices into `requests`, proportional to the targets' weights.
    pub wheel: Vec<usize>,
    /// Number of concurrent connections.
    pub connections: usize,
    /// Number of worker threads (at most `connections`).
    pub threads: usize,
    /// Stop after this long (measured after warm-up).
    pub duration: Option<Duration>,
    /// Stop after exactly this many requests (responses plus errors).
    pub total_requests: Option<u64>,
    /// Open loop at this many requests per second in total.
    pub rate: Option<f64>,
    /// Load sent before measuring starts; not counted.
    pub warmup: Duration,
    /// Deadline for connecting and for each request.
    pub timeout: Duration,
}

/// How a run interacts with the terminal.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Print a progress line each second on stderr.
    pub progress: bool,
    /// Stop early on Ctrl-C and report what was measured.
    pub handle_ctrl_c: bool,
}

/// Per-thread progress counters, read once a second by the controller.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Progress {
    responses: AtomicU64,
    errors: AtomicU64,
}

/// State shared by all worker threads.
#[derive(Debug)]
struct Shared {
    cfg: RunConfig,
    /// False during warm-up; requests started while false are not recorded.
    recording: AtomicBool,
    /// Tickets handed out in `-n` mode.
    issued: AtomicU64,
    /// Tickets whose request ended (response or error) in `-n` mode.
    resolved: AtomicU64,
    /// Set to true to stop all workers (deadline, Ctrl-C, or the last `-n` ticket).
    stop: watch::Sender<bool>,
    progress: Vec<Progress>,
    /// When the open-loop schedule starts.
    start: Instant,
}

/// Runs the load test and returns the report.
///
/// Fails fast with [`Error::Connect`] if no connection to the target can be made at start.
pub fn run(cfg: RunConfig, opts: RunOptions) -> Result<Report, Error> {
    preflight(cfg.addr, cfg.timeout)?;
    let threads = cfg.threads.clamp(1, cfg.connections.max(1));
    let (stop, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        recording: AtomicBool::new(cfg.warmup.is_zero()),
        issued: AtomicU64::new(0),
        resolved: AtomicU64::new(0),
        stop,
        progress: (0..threads).map(|_| Progress::default()).collect(),
        start: Instant::now(),
        cfg,
    });
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let conns: Vec<usize> = (t..shared.cfg.connections).step_by(threads).collect();
        let (shared, stop_rx, done_tx) = (shared.clone(), shared.stop.subscribe(), done_tx.clone());
        let handle = std::thread::Builder::new()
            .name(format!("weir-load-{t}"))
            .spawn(move || {
                let result = worker(&shared, t, conns, stop_rx);
                let _ = done_tx.send(result);
            })
            .map_err(|e| Error::Runtime(format!("cannot start worker thread: {e}")))?;
        handles.push(handle);
    }
    drop(done_tx);
    let outcome = control(&shared, threads, opts, done_rx);
    for h in handles {
        let _ = h.join();
    }
    let (stats, measured, interrupted) = outcome?;
    Ok(Report::new(
        &shared.cfg,
        threads,
        &stats,
        measured,
        interrupted,
    ))
}

/// Checks that the target accepts connections before any load is sent.
fn preflight(addr: SocketAddr, timeout: Duration) -> Result<(), Error> {
    std::net::TcpStream::connect_timeout(&addr, timeout)
        .map(drop)
        .map_err(|source| Error::Connect { addr, source })
}

/// The controller: warm-up, progress, deadline, Ctrl-C; returns merged stats and duration.
fn control(
    shared: &Shared,
    threads: usize,
    opts: RunOptions,
    mut done_rx: mpsc::UnboundedReceiver<Result<Stats, Error>>,
) -> Result<(Stats, Duration, bool), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(format!("cannot start runtime: {e}")))?;
    rt.block_on(async move {
        let ctrl_c = async {
            if opts.handle_ctrl_c && tokio::signal::ctrl_c().await.is_ok() {
                return;
            }
            std::future::pending::<()>().await
        };
        tokio::pin!(ctrl_c);
        let mut interrupted = false;
        let cfg = &shared.cfg;
        if !cfg.warmup.is_zero() {
            if opts.progress {
                eprintln!("warming up for {}", humantime::format_duration(cfg.warmup));
            }
            tokio::select! {
                _ = tokio::time::sleep(cfg.warmup) => {}
                _ = &mut ctrl_c => interrupted = true,
            }
            shared.recording.store(true, Ordering::Relaxed);
        }
        let measure_start = Instant::now();
        let mut stop_at = None;
        if interrupted {
            stop_at = Some(measure_start);
            shared.stop.send_replace(true);
        }
        let deadline = tokio::time::sleep_until(
            cfg.duration
                .map_or_else(far_future, |d| measure_start + d),
        );
        tokio::pin!(deadline);
        let second = Duration::from_secs(1);
        let mut ticker = tokio::time::interval_at(measure_start + second, second);
        let (mut last_total, mut seconds) = (0u64, 0u64);
        let mut merged = Stats::new();
        let mut finished = 0;
        while finished < threads {
            tokio::select! {
                r = done_rx.recv() => match r {
                    Some(r) => { merged.merge(&r?); finished += 1; }
                    None => break,
                },
                _ = &mut deadline, if stop_at.is_none() && cfg.duration.is_some() => {
                    stop_at = Some(Instant::now());
                    shared.stop.send_replace(true);
                }
                _ = &mut ctrl_c, if stop_at.is_none() => {
                    interrupted = true;
                    stop_at = Some(Instant::now());
                    shared.stop.send_replace(true);
                }
                _ = ticker.tick(), if opts.progress && stop_at.is_none() => {
                    seconds += 1;
                    let (total, errors) = shared.progress.iter().fold((0, 0), |(r, e), p| {
                        (r + p.responses.load(Ordering::Relaxed), e + p.errors.load(Ordering::Relaxed))
                    });
                    let mut err = std::io::stderr().lock();
                    let _ = writeln!(
                        err,
                        "[{seconds:>4}s] {:>8} req/s  total {total:>10}  errors {errors}",
                        total - last_total
                    );
                    last_total = total;
                }
            }
        }
        let measured = stop_at
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(measure_start);
        Ok((merged, measured, interrupted))
    })
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// One worker thread: its connections on a current-thread runtime until done or stopped.
fn worker(
    shared: &Arc<Shared>,
    thread: usize,
    conns: Vec<usize>,
    mut stop_rx: watch::Receiver<bool>,
) -> Result<Stats, Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(format!("cannot start runtime: {e}")))?;
    let stats = Rc::new(RefCell::new(Stats::new()));
    let local = LocalSet::new();
    local.block_on(&rt, async {
        let mut set = JoinSet::new();
        for id in conns {
            set.spawn_local(connection_loop(shared.clone(), thread, id, stats.clone()));
        }
        tokio::select! {
            _ = async { while set.join_next().await.is_some() {} } => {}
            _ = stop_rx.wait_for(|stop| *stop) => {}
        }
        // Requests still in flight are dropped uncounted, as wrk does.
        set.abort_all();
    });
    drop(local);
    let stats = stats.replace(Stats::new());
    Ok(stats)
}

/// The open-loop schedule of one connection: request `k` is due at `first + k * interval`.
struct Schedule {
    first: Instant,
    interval_ns: f64,
    k: u64,
}

impl Schedule {
    fn next_due(&mut self) -> Instant {
        let offset = (self.k as f64 * self.interval_ns) as u64;
        self.k += 1;
        self.first + Duration::from_nanos(offset)
    }
}

/// One connection: send requests back to back (closed loop) or on schedule (open loop).
async fn connection_loop(shared: Arc<Shared>, thread: usize, id: usize, stats: Rc<RefCell<Stats>>) {
    let cfg = &shared.cfg;
    let progress = &shared.progress[thread];
    let mut schedule = cfg.rate.map(|rate| {
        // Each connection carries rate/connections; their phases are staggered evenly.
        let per_second = 1e9 / rate;
        Schedule {
            first: shared.start + Duration::from_nanos((id as f64 * per_second) as u64),
            interval_ns: per_second * cfg.connections as f64,
            k: 0,
        }
    });
    let mut conn: Option<Connection> = None;
    let mut sent: u64 = 0;
    loop {
        let overdue_since = match schedule.as_mut() {
            Some(s) => {
                let due = s.next_due();
                if due > Instant::now() {
                    // Ahead of schedule: wait. The timer may wake us up to a millisecond
                    // late; that slack is ours, not the server's, so time from the wake-up.
                    tokio::time::sleep_until(due).await;
                    None
                } else {
                    // Behind schedule because earlier responses were slow: send at once and
                    // time from when the request was due (coordinated-omission correction).
                    Some(due)
                }
            }
            None => None,
        };
        let recording = shared.recording.load(Ordering::Relaxed);
        let ticket = match cfg.total_requests {
            Some(n) if recording => {
                let t = shared.issued.fetch_add(1, Ordering::Relaxed);
                if t >= n {
                    return;
                }
                Some(t)
            }
            _ => None,
        };
        let slot = ticket.unwrap_or(sent.wrapping_add(id as u64));
        sent += 1;
        let request = &cfg.requests[cfg.wheel[(slot % cfg.wheel.len() as u64) as usize]];
        let c = match conn.as_mut() {
            Some(c) => c,
            None => {
                let outcome =
                    tokio::time::timeout(cfg.timeout, Connection::connect(cfg.addr)).await;
                match outcome {
                    Ok(Ok(c)) => conn.insert(c),
                    _ => {
                        // A connect that fails or times out is a connect error either way.
                        if recording {
                            stats.borrow_mut().record_error(ErrorKind::Connect);
                            progress.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        resolve_ticket(&shared, ticket);
                        tokio::time::sleep(CONNECT_BACKOFF).await;
                        continue;
                    }
                }
            }
        };
        let start = overdue_since.unwrap_or_else(Instant::now);
        let outcome =
            tokio::time::timeout(cfg.timeout, c.send(&request.bytes, request.head_request)).await;
        let kind = match outcome {
            Ok(Ok(resp)) => {
                if recording {
                    stats
                        .borrow_mut()
                        .record_response(start.elapsed(), resp.status, resp.bytes);
                    progress.responses.fetch_add(1, Ordering::Relaxed);
                }
                resolve_ticket(&shared, ticket);
                if !resp.keep_alive {
                    conn = None;
                }
                continue;
            }
            Ok(Err(e)) => e.kind(),
            Err(_) => ErrorKind::Timeout,
        };
        conn = None;
        if recording {
            stats.borrow_mut().record_error(kind);
            progress.errors.fetch_add(1, Ordering::Relaxed);
        }
        resolve_ticket(&shared, ticket);
    }
}

/// Counts the end of a ticketed request; the last of `-n` stops the run, so connections
/// sleeping until their next open-loop slot do not hold it up.
fn resolve_ticket(shared: &Shared, ticket: Option<u64>) {
    if let (Some(_), Some(n)) = (ticket, shared.cfg.total_requests) {
        if shared.resolved.fetch_add(1, Ordering::Relaxed) + 1 == n {
            shared.stop.send_replace(true);
        }
    }
}
