//! The e2e harness: the real `weir` binary on ephemeral ports, real upstream servers
//! written here, and a small blocking HTTP/1.1 client. Every wait is bounded.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// A port that was free a moment ago (the gateway binds it next; start retries on a race).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

// ---------------------------------------------------------------------------------
// The gateway process
// ---------------------------------------------------------------------------------

/// A running `weir run` with its config file, log files and ports.
pub struct Weir {
    child: Child,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Weir {
    /// Starts weir with `config`, where `{listen}` and `{admin}` are replaced by free
    /// addresses. Waits for `/readyz` and the proxy port.
    pub fn start(config: &str) -> Weir {
        Self::start_with(config, &[])
    }

    pub fn start_with(config: &str, env: &[(&str, &str)]) -> Weir {
        for _ in 0..3 {
            if let Some(w) = Self::try_start(config, env) {
                return w;
            }
        }
        panic!("weir did not start after 3 attempts");
    }

    fn try_start(config: &str, env: &[(&str, &str)]) -> Option<Weir> {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().ok()?;
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().ok()?;
        let config_path = dir.path().join("weir.toml");
        let text = render(config, addr, admin, dir.path());
        std::fs::write(&config_path, text).expect("write config");
        let stdout = dir.path().join("stdout.log");
        let stderr = dir.path().join("stderr.log");
        let mut cmd = Command::new(WEIR);
        cmd.args(["run", "--config"])
            .arg(&config_path)
            .arg("--upgrade-sock")
            .arg(dir.path().join("upgrade.sock"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).ok()?)
            .stderr(std::fs::File::create(&stderr).ok()?);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn weir");
        let mut w = Weir {
            child,
            dir,
            config_path,
            addr,
            admin,
            stdout,
            stderr,
        };
        let ready = wait_until(Duration::from_secs(20), || {
            if let Ok(Some(_)) = w.child.try_wait() {
                return true;
            }
            // The pid check matters when test processes run side by side: a port freed
            // by `free_port` may be taken by another gateway first.
            let pid = w.child.id().to_string();
            TcpStream::connect(w.addr).is_ok()
                && get(w.admin, "/healthz")
                    .map(|r| r.status == 200 && r.header("x-weir-pid") == Some(pid.as_str()))
                    .unwrap_or(false)
        });
        if let Ok(Some(status)) = w.child.try_wait() {
            let err = std::fs::read_to_string(&w.stderr).unwrap_or_default();
            if err.contains("cannot listen") {
                return None; // lost a port race; try other ports
            }
            panic!("weir exited with {status} during start:\n{err}");
        }
        assert!(ready, "weir not ready in time:\n{}", w.stderr_text());
        Some(w)
    }

    /// Rewrites the config file (same placeholders as `start`).
    pub fn write_config(&self, config: &str) {
        let text = render(config, self.addr, self.admin, self.dir.path());
        // Write then rename, as editors and config managers do, so a watcher never
        // sees half a file.
        let tmp = self.dir.path().join("weir.toml.tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &self.config_path).expect("rename config");
    }

    /// `POST /reload` on the admin API.
    pub fn reload(&self) -> Resp {
        self.admin_req("POST", "/reload", None)
            .expect("admin reachable")
    }

    pub fn admin_req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> std::io::Result<Resp> {
        let mut r = Req::new(method, path);
        if let Some(t) = token {
            r = r.header("authorization", &format!("Bearer {t}"));
        }
        r.send(self.admin)
    }

    pub fn admin_json(&self, path: &str) -> serde_json::Value {
        let r = get(self.admin, path).expect("admin reachable");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        serde_json::from_slice(&r.body).expect("admin JSON")
    }

    pub fn metrics(&self) -> String {
        get(self.admin, "/metrics").expect("metrics").text()
    }

    /// The value of one metric line (`name{labels}`), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    pub fn get(&self, path: &str) -> Resp {
        get(self.addr, path).expect("gateway reachable")
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the process to exit, returning its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn render(config: &str, addr: SocketAddr, admin: SocketAddr, dir: &std::path::Path) -> String {
    config
        .replace("{listen}", &addr.to_string())
        .replace("{admin}", &admin.to_string())
        .replace("{dir}", &dir.display().to_string())
}

/// Runs `weir check` on a config text; returns (success, stdout+stderr).
pub fn weir_check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, config).expect("write");
    let out = Command::new(WEIR)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run weir check");
    let mut text = String::from_utf8_lossy(&out.stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

// ---------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    /// The status line's reason phrase.
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// A request to build and send.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn new(method: &str, path: &str) -> Req {
        Req {
            method: method.into(),
            path: path.into(),
            headers: vec![],
            body: vec![],
        }
    }
    pub fn get(path: &str) -> Req {
        Req::new("GET", path)
    }
    pub fn header(mut self, k: &str, v: &str) -> Req {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn body(mut self, b: &[u8]) -> Req {
        self.body = b.to_vec();
        self
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        if !self
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("host"))
        {
            out.push_str("Host: test.local\r\n");
        }
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        let framed = self.headers.iter().any(|(k, _)| {
            k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
        });
        if !self.body.is_empty() && !framed {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
    /// Sends on a fresh connection.
    pub fn send(&self, addr: SocketAddr) -> std::io::Result<Resp> {
        let mut c = Conn::open(addr)?;
        c.send(self)
    }
}

pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Resp> {
    Req::get(path).send(addr)
}

/// A keep-alive connection.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        s.set_write_timeout(Some(Duration::from_secs(15)))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::new(s),
        })
    }

    pub fn send(&mut self, req: &Req) -> std::io::Result<Resp> {
        self.send_raw(&req.to_bytes(), req.method == "HEAD")
    }

    pub fn send_raw(&mut self, bytes: &[u8], head: bool) -> std::io::Result<Resp> {
        self.reader.get_mut().write_all(bytes)?;
        read_response(&mut self.reader, head)
    }

    /// True when the server closed the connection (read returns EOF).
    pub fn is_closed(&mut self) -> bool {
        let s = self.reader.get_mut();
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut b = [0u8; 1];
        matches!(s.read(&mut b), Ok(0))
    }
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

pub fn read_response(r: &mut impl BufRead, head: bool) -> std::io::Result<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let mut status_line = line.trim_end().splitn(3, ' ').skip(1);
    let status: u16 = status_line
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let reason = status_line.next().unwrap_or("").to_string();
    let headers = read_headers(r)?;
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if head || status == 204 || status == 304 || (100..200).contains(&status) {
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = read_chunked(r)?;
    } else if let Some(len) = find("content-length") {
        let len: usize = len.trim().parse().map_err(|_| bad("bad content-length"))?;
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Resp {
        status,
        reason,
        headers,
        body,
    })
}

fn read_headers(r: &mut impl BufRead) -> std::io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("eof in headers"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Ok(headers);
        }
        let (k, v) = line.split_once(':').ok_or_else(|| bad("bad header"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
}

fn read_chunked(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| bad("bad chunk size"))?;
        if size == 0 {
            let mut end = String::new();
            r.read_line(&mut end)?;
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
    }
}

// ---------------------------------------------------------------------------------
// Upstream servers
// ---------------------------------------------------------------------------------

/// A request as an upstream saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What an upstream does with a request.
pub enum Reply {
    /// Answer with status, extra headers and body.
    Send(u16, Vec<(String, String)>, Vec<u8>),
    /// Wait, then answer.
    Delayed(Duration, Box<Reply>),
    /// Close the connection without answering.
    Close,
    /// An interim response (`100 Continue`, say) with this status, then the reply.
    Interim(u16, Box<Reply>),
}

impl Reply {
    pub fn ok(body: &str) -> Reply {
        Reply::Send(200, vec![], body.as_bytes().to_vec())
    }
    pub fn status(code: u16) -> Reply {
        Reply::Send(code, vec![], Vec::new())
    }
}

type Handler = dyn Fn(&SeenRequest) -> Reply + Send + Sync;

/// A real HTTP/1.1 upstream on an ephemeral port, recording what it receives.
/// Every response carries `x-upstream: NAME` so tests can tell targets apart.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Mutex<Vec<SeenRequest>>>,
    pub hits: Arc<AtomicUsize>,
    pub healthy: Arc<AtomicBool>,
    /// Server names clients sent in TLS handshakes (TLS upstreams only).
    pub sni: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    /// Answers 200 with its name as the body; `/health` answers 200 or 503 per `healthy`.
    pub fn start(name: &str) -> Upstream {
        Self::with_handler(name, |_| Reply::ok(""))
    }

    pub fn with_handler(
        name: &str,
        handler: impl Fn(&SeenRequest) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        Self::serve(name, Arc::new(handler), None)
    }

    /// The same server behind TLS with the given certificate and key (PEM).
    pub fn tls(name: &str, cert_pem: &[u8], key_pem: &[u8]) -> Upstream {
        use openssl::ssl::{SslAcceptor, SslMethod};
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).expect("acceptor");
        b.set_certificate(&openssl::x509::X509::from_pem(cert_pem).expect("cert"))
            .expect("set cert");
        b.set_private_key(&openssl::pkey::PKey::private_key_from_pem(key_pem).expect("key"))
            .expect("set key");
        let sni: Arc<Mutex<Vec<String>>> = Default::default();
        let log = sni.clone();
        b.set_servername_callback(move |ssl, _| {
            if let (Some(n), Ok(mut l)) = (
                ssl.servername(openssl::ssl::NameType::HOST_NAME),
                log.lock(),
            ) {
                l.push(n.to_string());
            }
            Ok(())
        });
        let mut up = Self::serve(
            name,
            Arc::new(|_: &SeenRequest| Reply::ok("")),
            Some(Arc::new(b.build())),
        );
        up.sni = sni;
        up
    }

    fn serve(
        name: &str,
        handler: Arc<Handler>,
        tls: Option<Arc<openssl::ssl::SslAcceptor>>,
    ) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let up = Upstream {
            addr,
            name: name.to_string(),
            seen: Default::default(),
            hits: Default::default(),
            healthy: Arc::new(AtomicBool::new(true)),
            sni: Default::default(),
            stop: Default::default(),
        };
        let (seen, hits, healthy, stop, name) = (
            up.seen.clone(),
            up.hits.clone(),
            up.healthy.clone(),
            up.stop.clone(),
            up.name.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (handler, seen, hits, healthy, name, tls) = (
                    handler.clone(),
                    seen.clone(),
                    hits.clone(),
                    healthy.clone(),
                    name.clone(),
                    tls.clone(),
                );
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    match tls {
                        None => serve_conn(stream, &*handler, &seen, &hits, &healthy, &name),
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream) {
                                serve_conn(s, &*handler, &seen, &hits, &healthy, &name)
                            }
                        }
                    }
                });
            }
        });
        up
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, h: bool) {
        self.healthy.store(h, Ordering::Relaxed);
    }

    pub fn last(&self) -> Option<SeenRequest> {
        self.seen.lock().ok()?.last().cloned()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

fn serve_conn<S: Read + Write>(
    stream: S,
    handler: &Handler,
    seen: &Mutex<Vec<SeenRequest>>,
    hits: &AtomicUsize,
    healthy: &AtomicBool,
    name: &str,
) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
            return;
        };
        let (method, path) = (method.to_string(), path.to_string());
        let Ok(headers) = read_headers(&mut reader) else {
            return;
        };
        let find = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let body = if find("transfer-encoding").is_some() {
            match read_chunked(&mut reader) {
                Ok(b) => b,
                Err(_) => return,
            }
        } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            let mut b = vec![0; len];
            if reader.read_exact(&mut b).is_err() {
                return;
            }
            b
        } else {
            Vec::new()
        };
        let req = SeenRequest {
            method,
            path,
            headers,
            body,
        };
        let mut reply = if req.path == "/health" {
            if healthy.load(Ordering::Relaxed) {
                Reply::ok("ok")
            } else {
                Reply::status(503)
            }
        } else {
            hits.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut s) = seen.lock() {
                s.push(req.clone());
            }
            handler(&req)
        };
        loop {
            match reply {
                Reply::Delayed(d, next) => {
                    std::thread::sleep(d);
                    reply = *next;
                }
                Reply::Close => return,
                Reply::Interim(status, next) => {
                    let head = format!("HTTP/1.1 {status} X\r\n\r\n");
                    if reader.get_mut().write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    reply = *next;
                }
                Reply::Send(status, extra, body) => {
                    let mut out = format!(
                        "HTTP/1.1 {status} X\r\nx-upstream: {name}\r\ncontent-length: {}\r\n",
                        body.len()
                    );
                    for (k, v) in extra {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    let s = reader.get_mut();
                    if s.write_all(out.as_bytes()).is_err() || s.write_all(&body).is_err() {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

/// Sends `n` requests (fresh connection each) and counts the `x-upstream` of each answer.
pub fn spread(addr: SocketAddr, req: &Req, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let r = req.send(addr).expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
        *counts
            .entry(r.header("x-upstream").unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    counts
}

/// An address nothing listens on, and nothing will: the port stays bound (without
/// `listen`) for the rest of the test process, so connecting is refused and no server
/// started later by a parallel test (or by this one) can be handed the same port.
pub fn closed_port() -> SocketAddr {
    // SAFETY: plain socket calls on a descriptor this function owns; `addr` and `len`
    // are valid for the sizes passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(fd, (&raw const addr).cast(), len);
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let rc = libc::getsockname(fd, (&raw mut addr).cast(), &mut len);
        assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
        // The descriptor is deliberately never closed.
        SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, u16::from_be(addr.sin_port)))
    }
}

/// The path of a plugin built by `scripts/build-plugins.sh` (`NAME` for
/// `plugins/dist/NAME.wasm`, `test/NAME` for the plain proxy-wasm test filters).
pub fn built_plugin(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/dist")
        .join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: run `bash scripts/build-plugins.sh`",
        p.display()
    );
    p.display().to_string()
}

/// Starts a gateway with one upstream, `app` at `up`, and `rest` (its `[[plugins]]`
/// and `[[routes]]`, `{plugin:NAME}` standing for [`built_plugin`]`(NAME)`).
pub fn gateway_with(up: SocketAddr, rest: &str) -> Weir {
    gateway_with_server(up, "", rest)
}

/// [`gateway_with`], with more `[server]` keys. The access log is off unless `rest`
/// has an `[access_log]` table.
pub fn gateway_with_server(up: SocketAddr, server: &str, rest: &str) -> Weir {
    let log = if rest.contains("[access_log]") {
        ""
    } else {
        "[access_log]\noutput = \"off\""
    };
    let mut rest = rest.to_string();
    while let Some(start) = rest.find("{plugin:") {
        let end = start + rest[start..].find('}').expect("unclosed {plugin:");
        let path = built_plugin(&rest[start + 8..end]);
        rest.replace_range(start..=end, &path);
    }
    Weir::start(&format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 2
watch_config = false
{server}
[admin]
listen = "{{admin}}"
{log}
[[upstreams]]
name = "app"
targets = ["{up}"]
{rest}"#
    ))
}

/// A request head for a chunked body, then the chunks, each written separately with a
/// pause so the gateway reads them one by one; the response is read at the end (or
/// as soon as the gateway answers early and closes).
pub fn send_chunked(addr: SocketAddr, head: &str, chunks: &[&[u8]]) -> std::io::Result<Resp> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.set_nodelay(true)?;
    let mut w = s.try_clone()?;
    w.write_all(format!("{head}\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes())?;
    for c in chunks {
        std::thread::sleep(Duration::from_millis(30));
        // A gateway that already answered may have closed: keep what it said.
        if w.write_all(format!("{:x}\r\n", c.len()).as_bytes())
            .is_err()
            || w.write_all(c).is_err()
            || w.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = w.write_all(b"0\r\n\r\n");
    read_response(&mut BufReader::new(s), false)
}

/// Asserts an error answer from the gateway itself: status, JSON body, request id.
pub fn assert_json_error(r: &Resp, status: u16, code: Option<&str>) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-upstream"), None, "not an upstream's answer");
    let v = r.json();
    let error = v["error"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "no error code: {v}");
    if let Some(code) = code {
        assert_eq!(error, code, "{v}");
    }
    assert!(!v["message"].as_str().unwrap_or_default().is_empty(), "{v}");
    let id = v["request_id"].as_str().unwrap_or_default();
    assert!(!id.is_empty(), "{v}");
    assert_eq!(Some(id), r.header("x-request-id"));
}
