//! Command-line interface (wrk/oha-like) and its translation into validated configs.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::runner::{RunConfig, RunOptions};
use crate::target::{self, HttpUrl, Target};
use crate::upstream::UpstreamConfig;
use crate::Error;

/// Duration used when neither `-d` nor `-n` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

const AFTER_HELP: &str = "\
URLS FILE (--urls-file FILE):
  One request kind per line; blank lines and lines starting with '#' are ignored.
    URL                   weight 1, method from -m
    WEIGHT METHOD URL     WEIGHT is an integer 1..=1000
  Requests rotate through the lines in proportion to their weights (smooth weighted
  round robin; exact over -n when -n is a multiple of the weights' sum). All URLs must
  share one host:port. -H and -b apply to every line.
  Example:
    # 3 reads for every write
    3 GET  http://127.0.0.1:8080/v1/users
    1 POST http://127.0.0.1:8080/v1/users

MODES:
  Closed loop (default): each connection sends its next request when the previous
  response arrives. Open loop (-r RATE): requests are due on a fixed schedule, each
  connection carrying RATE/connections, one request at a time. A request sent late
  because earlier responses were slow is timed from when it was due, so a stalled server
  shows up in the percentiles (coordinated-omission correction, as wrk2); one sent on
  time is timed from sending. Give enough connections for RATE x expected latency.

COUNTING:
  'requests' counts complete responses of any status; errors are counted apart.
  With -n N exactly N requests are attempted after warm-up: requests + errors == N.

EXAMPLES:
  weir-load -c 50 -d 10s http://127.0.0.1:8080/
  weir-load -r 2000 -d 30s --json http://127.0.0.1:8080/ > report.json
  weir-load upstream --listen 127.0.0.1:9001 --body-size 1024";

/// HTTP/1.1 load generator for Weir, and a fast upstream to point it at.
#[derive(Debug, Parser)]
#[command(
    name = "weir-load",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Run a helper instead of a load test.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Load-test options.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a fast HTTP/1.1 upstream: 200 with a fixed body, /health, /echo.
    ///
    /// Every request gets 200 with a fixed body of --body-size bytes; `GET /health` gets
    /// "ok"; paths starting with /echo get the request line and headers back as the body.
    /// Responses carry `x-upstream: <listen addr>`. Request bodies (Content-Length or
    /// chunked) are read and discarded; connections are kept alive. Prints
    /// `listening on ADDR` on stdout once bound.
    Upstream(UpstreamArgs),
}

/// Options of a load test.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Target URL, http:// only (or use --urls-file)
    #[arg(value_name = "URL", required_unless_present = "urls_file")]
    pub url: Option<String>,
    /// Concurrent connections
    #[arg(short = 'c', long, default_value_t = 50)]
    pub connections: usize,
    /// Worker threads, each with its own event loop
    #[arg(short = 't', long, default_value_t = 2)]
    pub threads: usize,
    /// Test duration, e.g. 10s, 1m [default: 10s, unlimited with -n]
    #[arg(short = 'd', long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after exactly N requests (responses + errors), not counting warm-up
    #[arg(short = 'n', long, value_name = "N")]
    pub requests: Option<u64>,
    /// Open loop: total requests per second, latency corrected for coordinated omission
    #[arg(short = 'r', long, value_name = "RATE")]
    pub rate: Option<f64>,
    /// HTTP method
    #[arg(short = 'm', long, default_value = "GET")]
    pub method: String,
    /// Request header "Name: value" (repeatable)
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Request body (sets Content-Length)
    #[arg(short = 'b', long)]
    pub body: Option<String>,
    /// Send load for this long before measuring; not counted
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// Per-request (and connect) timeout
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// Weighted request mix, see URLS FILE below
    #[arg(long, value_name = "FILE", conflicts_with = "url")]
    pub urls_file: Option<PathBuf>,
    /// Print the report as JSON on stdout
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// Options of the `upstream` subcommand.
#[derive(Debug, Args)]
pub struct UpstreamArgs {
    /// Address to listen on; port 0 picks a free port (printed on stdout)
    #[arg(short = 'l', long)]
    pub listen: SocketAddr,
    /// Size of the fixed response body in bytes
    #[arg(long, default_value_t = 13)]
    pub body_size: usize,
    /// Wait this long before answering, e.g. 20ms
    #[arg(long, value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,
    /// Worker threads
    #[arg(short = 't', long, default_value_t = 1)]
    pub threads: usize,
}

impl UpstreamArgs {
    /// The upstream configuration these options describe.
    pub fn to_config(&self) -> Result<UpstreamConfig, Error> {
        if self.threads == 0 {
            return Err(Error::Config("--threads must be at least 1".into()));
        }
        Ok(UpstreamConfig {
            listen: self.listen,
            body_size: self.body_size,
            delay: self.delay.filter(|d| !d.is_zero()),
            threads: self.threads,
        })
    }
}

impl RunArgs {
    /// Terminal behaviour for these options (progress unless `--quiet`, Ctrl-C handling).
    pub fn options(&self) -> RunOptions {
        RunOptions {
            progress: !self.quiet,
            handle_ctrl_c: true,
        }
    }

    /// Validates the options, reads `--urls-file`, resolves the host, prepares requests.
    pub fn to_config(&self) -> Result<RunConfig, Error> {
        let cfg = |m: String| Error::Config(m);
        target::validate_method(&self.method).map_err(cfg)?;
        if self.connections == 0 {
            return Err(cfg("--connections must be at least 1".into()));
        }
        if self.threads == 0 {
            return Err(cfg("--threads must be at least 1".into()));
        }
        if self.requests == Some(0) {
            return Err(cfg("--requests must be at least 1".into()));
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err(cfg("--duration must be greater than zero".into()));
        }
        if self.timeout.is_zero() {
            return Err(cfg("--timeout must be greater than zero".into()));
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return Err(cfg(format!("--rate must be a positive number, got {r}")));
            }
        }
        let targets = match (&self.url, &self.urls_file) {
            (Some(url), None) => vec![Target {
                weight: 1,
                method: self.method.clone(),
                url: HttpUrl::parse(url).map_err(cfg)?,
            }],
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| cfg(format!("cannot read {}: {e}", path.display())))?;
                target::parse_urls_file(&text, &self.method)
                    .map_err(|e| cfg(format!("{}: {e}", path.display())))?
            }
            _ => return Err(cfg("give either a URL or --urls-file".into())),
        };
        target::check_one_endpoint(&targets).map_err(cfg)?;
        let headers = self
            .headers
            .iter()
            .map(|h| target::parse_header(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(cfg)?;
        let body = self.body.as_deref().unwrap_or_default().as_bytes();
        let first = &targets[0].url;
        let addr = resolve(&first.host, first.port)?;
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
        Ok(RunConfig {
            addr,
            url: first.to_url(),
            requests: targets
                .iter()
                .map(|t| target::build_request(&t.method, &t.url, &headers, body))
                .collect(),
            wheel: target::weighted_wheel(&weights).map_err(cfg)?,
            connections: self.connections,
            threads: self.threads.min(self.connections),
            duration: match (self.duration, self.requests) {
                (None, None) => Some(DEFAULT_DURATION),
                (d, _) => d,
            },
            total_requests: self.requests,
            rate: self.rate,
            warmup: self.warmup,
            timeout: self.timeout,
        })
    }
}

/// Resolves a host name once; IPv4 addresses are preferred.
fn resolve(host: &str, port: u16) -> Result<SocketAddr, Error> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| Error::Config(format!("cannot resolve host {host:?}: {e}")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| Error::Config(format!("host {host:?} has no address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunConfig, Error> {
        let cli = Cli::try_parse_from(std::iter::once("weir-load").chain(args.iter().copied()))
            .map_err(|e| Error::Config(e.to_string()))?;
        cli.run.to_config()
    }

    #[test]
    fn defaults() {
        let c = parse(&["http://127.0.0.1:9/x"]).unwrap();
        assert_eq!((c.connections, c.threads), (50, 2));
        assert_eq!(c.duration, Some(DEFAULT_DURATION));
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.addr, "127.0.0.1:9".parse().unwrap());
        assert_eq!(c.wheel, vec![0]);
        let c = parse(&["-n", "10", "-c", "1", "-t", "4", "http://127.0.0.1:9/"]).unwrap();
        assert_eq!(
            (c.duration, c.total_requests, c.threads),
            (None, Some(10), 1)
        );
    }

    #[test]
    fn rejects_bad_values() {
        for (args, needle) in [
            (&["https://127.0.0.1/"][..], "https://"),
            (&["-c", "0", "http://127.0.0.1/"], "--connections"),
            (&["-n", "0", "http://127.0.0.1/"], "--requests"),
            (&["-r", "-5", "http://127.0.0.1/"], ""),
            (&["-r", "0", "http://127.0.0.1/"], "--rate"),
            (&["-d", "0s", "http://127.0.0.1/"], "--duration"),
            (&["-d", "ten", "http://127.0.0.1/"], "ten"),
            (&["-H", "nocolon", "http://127.0.0.1/"], "Name: value"),
            (&["-m", "G T", "http://127.0.0.1/"], "method"),
            (&[], "URL"),
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn upstream_subcommand() {
        let cli = Cli::try_parse_from([
            "weir-load",
            "upstream",
            "--listen",
            "127.0.0.1:0",
            "--delay",
            "20ms",
        ])
        .unwrap();
        let Some(Command::Upstream(u)) = cli.command else {
            panic!("expected upstream subcommand");
        };
        let c = u.to_config().unwrap();
        assert_eq!(
            (c.body_size, c.delay),
            (13, Some(Duration::from_millis(20)))
        );
    }
}
