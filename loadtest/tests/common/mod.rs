//! Shared test helpers: a scriptable HTTP/1.1 server, a blocking HTTP client, process guards.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser as _;
use weir_load::cli::Cli;
use weir_load::report::Report;
use weir_load::runner::{self, RunOptions};

/// Upper bound for anything a test waits on, so a bug fails the test instead of hanging it.
pub const TEST_DEADLINE: Duration = Duration::from_secs(20);

/// Path of the built binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_weir-load");

/// One request as the test server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the test server does with request number `index` (0-based, over all connections).
pub enum Action {
    /// Write these bytes and keep the connection.
    Respond(Vec<u8>),
    /// Write these bytes, then close.
    RespondAndClose(Vec<u8>),
    /// Wait, then write these bytes.
    Delay(Duration, Vec<u8>),
    /// Close the connection without answering.
    Close,
    /// Never answer; keep the connection open until the client goes away.
    Silent,
}

type Script = dyn Fn(u64, &Seen) -> Action + Send + Sync;

/// A thread-per-connection HTTP/1.1 server whose answers the test scripts.
pub struct TestServer {
    pub addr: SocketAddr,
    received: Arc<AtomicU64>,
    log: Arc<Mutex<Vec<Seen>>>,
}

impl TestServer {
    pub fn start(script: impl Fn(u64, &Seen) -> Action + Send + Sync + 'static) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
        let addr = listener.local_addr().expect("local addr");
        let received = Arc::new(AtomicU64::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let (r, l) = (received.clone(), log.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (r, l, s) = (r.clone(), l.clone(), script.clone());
                std::thread::spawn(move || serve(stream, &r, &l, &*s));
            }
        });
        TestServer {
            addr,
            received,
            log,
        }
    }

    /// A server answering every request with `200` and a small body.
    pub fn ok() -> TestServer {
        TestServer::start(|_, _| Action::Respond(response(200, b"hi")))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Requests read completely so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    pub fn log(&self) -> Vec<Seen> {
        self.log.lock().expect("log lock").clone()
    }
}

fn serve(stream: TcpStream, received: &AtomicU64, log: &Mutex<Vec<Seen>>, script: &Script) {
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    while let Some(seen) = read_request(&mut reader) {
        let index = received.fetch_add(1, Ordering::SeqCst);
        let action = script(index, &seen);
        log.lock().expect("log lock").push(seen);
        let ok = match action {
            Action::Respond(bytes) => writer.write_all(&bytes).is_ok(),
            Action::RespondAndClose(bytes) => {
                let _ = writer.write_all(&bytes);
                false
            }
            Action::Delay(d, bytes) => {
                std::thread::sleep(d);
                writer.write_all(&bytes).is_ok()
            }
            Action::Close => false,
            Action::Silent => {
                let mut sink = [0u8; 1024];
                while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
                false
            }
        };
        if !ok {
            return;
        }
    }
}

/// Reads one request (Content-Length bodies only, which is what weir-load sends).
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Seen> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let len = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Seen {
        method,
        path,
        headers,
        body,
    })
}

/// A `Content-Length` response with the given status and body.
pub fn response(status: u16, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Runs a load test in-process with these command-line arguments.
pub fn run_load(args: &[&str]) -> Report {
    try_run_load(args).unwrap_or_else(|e| panic!("weir-load {args:?} failed: {e}"))
}

/// Like [`run_load`], returning the error.
pub fn try_run_load(args: &[&str]) -> Result<Report, weir_load::Error> {
    let cli = Cli::try_parse_from(std::iter::once("weir-load").chain(args.iter().copied()))
        .map_err(|e| weir_load::Error::Config(e.to_string()))?;
    let opts = RunOptions {
        progress: false,
        handle_ctrl_c: false,
    };
    runner::run(cli.run.to_config()?, opts)
}

/// Kills and reaps a child process when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for a child to exit, killing it if it takes longer than [`TEST_DEADLINE`].
pub fn wait_with_deadline(child: &mut Child) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > TEST_DEADLINE {
            let _ = child.kill();
            panic!("child did not exit within {TEST_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `weir-load upstream` with extra args; returns the guard and the printed address.
pub fn start_upstream(extra: &[&str]) -> (ChildGuard, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["upstream", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn weir-load upstream");
    let stdout = child.stdout.take().expect("stdout");
    let guard = ChildGuard(child);
    let line = first_line(stdout);
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("address");
    (guard, addr)
}

/// Reads the first line of a stream, failing after [`TEST_DEADLINE`].
pub fn first_line(stream: impl Read + Send + 'static) -> String {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let mut reader = BufReader::new(stream);
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the child never blocks on a full pipe.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    rx.recv_timeout(TEST_DEADLINE)
        .expect("no line from child in time")
}

/// A blocking HTTP/1.1 response read by the tests' own minimal client.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one Content-Length response from a buffered connection.
pub fn read_reply(reader: &mut BufReader<TcpStream>) -> Reply {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).expect("header line");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':').expect("header colon");
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().expect("content-length"))
        .expect("response has content-length");
    let mut body = vec![0; len];
    reader.read_exact(&mut body).expect("body");
    Reply {
        status,
        headers,
        body,
    }
}

/// Opens a blocking connection with read/write timeouts.
pub fn connect(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TEST_DEADLINE)).expect("timeout");
    s.set_write_timeout(Some(TEST_DEADLINE)).expect("timeout");
    let r = BufReader::new(s.try_clone().expect("clone"));
    (s, r)
}
