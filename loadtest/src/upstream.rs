//! A fast HTTP/1.1 keep-alive upstream for benchmarks and proxy tests.
//!
//! Every request gets `200` with a fixed body, `GET /health` gets `ok`, and paths starting
//! with `/echo` get the request line and headers back as the body. Every response carries
//! `x-upstream: <listen addr>` so load-balancing tests can tell targets apart. Request
//! bodies (Content-Length or chunked) are read and discarded; pipelined requests are
//! answered in one write (with `--delay`, the delay is applied once per write).

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::http1::{self, BodyKind, BodySkipper, MAX_HEAD};

/// Upstream server settings.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Size of the fixed response body in bytes.
    pub body_size: usize,
    /// Wait this long before answering.
    pub delay: Option<Duration>,
    /// Worker threads, each with its own runtime and accept loop.
    pub threads: usize,
}

/// The text the fixed body repeats; 13 bytes, the default body size.
const BODY_PATTERN: &[u8] = b"hello, world\n";

/// Pre-serialized responses shared by all connections.
#[derive(Debug)]
struct Responses {
    addr: String,
    body: Vec<u8>,
    /// The common case: 200, fixed body, keep-alive.
    fixed: Vec<u8>,
    delay: Option<Duration>,
}

impl Responses {
    fn new(addr: SocketAddr, body_size: usize, delay: Option<Duration>) -> Responses {
        let body: Vec<u8> = BODY_PATTERN
            .iter()
            .copied()
            .cycle()
            .take(body_size)
            .collect();
        let mut r = Responses {
            addr: addr.to_string(),
            body,
            fixed: Vec::new(),
            delay,
        };
        let mut fixed = Vec::new();
        r.write(&mut fixed, "200 OK", Body::Fixed, Persist::Implicit, false);
        r.fixed = fixed;
        r
    }

    /// Appends one response to `out`.
    fn write(&self, out: &mut Vec<u8>, status: &str, body: Body<'_>, persist: Persist, head: bool) {
        let bytes: &[u8] = match body {
            Body::Fixed => &self.body,
            Body::Bytes(b) => b,
        };
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_bytes());
        out.extend_from_slice(b"\r\ncontent-length: ");
        out.extend_from_slice(bytes.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\nx-upstream: ");
        out.extend_from_slice(self.addr.as_bytes());
        match persist {
            Persist::Implicit => {}
            Persist::KeepAlive => out.extend_from_slice(b"\r\nconnection: keep-alive"),
            Persist::Close => out.extend_from_slice(b"\r\nconnection: close"),
        }
        out.extend_from_slice(b"\r\n\r\n");
        if !head {
            out.extend_from_slice(bytes);
        }
    }
}

/// What the `connection` header of a response says.
#[derive(Clone, Copy)]
enum Persist {
    /// Nothing: HTTP/1.1 keeps the connection open by default.
    Implicit,
    /// `connection: keep-alive`, for HTTP/1.0 clients that asked for it.
    KeepAlive,
    /// `connection: close`.
    Close,
}

enum Body<'a> {
    Fixed,
    Bytes(&'a [u8]),
}

/// A bound, not yet serving, upstream.
#[derive(Debug)]
pub struct Upstream {
    listener: StdListener,
    addr: SocketAddr,
    cfg: UpstreamConfig,
}

impl Upstream {
    /// Binds the listening socket.
    pub fn bind(cfg: UpstreamConfig) -> io::Result<Upstream> {
        let listener = StdListener::bind(cfg.listen).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", cfg.listen))
        })?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        Ok(Upstream {
            listener,
            addr,
            cfg,
        })
    }

    /// The address actually bound (with the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves forever on `threads` threads; returns only on a setup error.
    pub fn serve(self) -> io::Result<()> {
        let responses = Arc::new(Responses::new(
            self.addr,
            self.cfg.body_size,
            self.cfg.delay,
        ));
        let mut handles = Vec::new();
        for i in 0..self.cfg.threads.max(1) {
            let listener = self.listener.try_clone()?;
            let responses = responses.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("upstream-{i}"))
                    .spawn(move || serve_thread(listener, responses))?,
            );
        }
        for h in handles {
            match h.join() {
                Ok(r) => r?,
                Err(_) => return Err(io::Error::other("upstream thread panicked")),
            }
        }
        Ok(())
    }
}

fn serve_thread(listener: StdListener, responses: Arc<Responses>) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let responses = responses.clone();
                    tokio::spawn(async move {
                        // A client going away mid-request is normal under load.
                        let _ = serve_connection(stream, &responses).await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    eprintln!("upstream: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
}

/// Serves one connection until the client closes it or asks for close.
async fn serve_connection(mut stream: TcpStream, responses: &Responses) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 16 * 1024];
    let (mut start, mut end) = (0usize, 0usize);
    let mut out = Vec::with_capacity(4096);
    let mut body = BodySkipper::new(BodyKind::Empty);
    // `close`: the last request asked for it; close once its body is read.
    // `abort`: the client sent something unparseable; answer what we have and close.
    let (mut close, mut abort) = (false, false);
    loop {
        // Answer every complete request in the buffer.
        loop {
            if !body.is_done() {
                let used = match body.consume(&buf[start..end]) {
                    Ok(n) => n,
                    Err(_) => {
                        abort = true;
                        break;
                    }
                };
                start += used;
                if !body.is_done() {
                    break;
                }
            }
            if close {
                break;
            }
            match http1::parse_request_head(&buf[start..end]) {
                Ok(Some(req)) => {
                    let keep_alive = req.keep_alive;
                    if req.expect_continue && req.body != BodyKind::Empty {
                        // Interim answer so curl-like clients send the body at once.
                        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    answer(responses, &req, &mut out);
                    body = BodySkipper::new(req.body);
                    start += req.raw.len();
                    close = !keep_alive;
                }
                Ok(None) => break,
                Err(_) => {
                    responses.write(
                        &mut out,
                        "400 Bad Request",
                        Body::Bytes(b"bad request\n"),
                        Persist::Close,
                        false,
                    );
                    abort = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            if let Some(d) = responses.delay {
                tokio::time::sleep(d).await;
            }
            stream.write_all(&out).await?;
            out.clear();
        }
        if abort || (close && body.is_done()) {
            return Ok(());
        }
        if start == end {
            start = 0;
            end = 0;
        } else if end == buf.len() {
            if start > 0 {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            } else if buf.len() <= MAX_HEAD {
                buf.resize(buf.len() * 2, 0);
            }
        }
        let n = stream.read(&mut buf[end..]).await?;
        if n == 0 {
            return Ok(());
        }
        end += n;
    }
}

/// Appends the answer for one request to `out`.
fn answer(responses: &Responses, req: &http1::RequestHead<'_>, out: &mut Vec<u8>) {
    let head = req.method == b"HEAD";
    if req.keep_alive
        && !head
        && req.minor == 1
        && !req.target.starts_with(b"/echo")
        && req.target != b"/health"
    {
        out.extend_from_slice(&responses.fixed);
        return;
    }
    let persist = match (req.keep_alive, req.minor) {
        (false, _) => Persist::Close,
        (true, 0) => Persist::KeepAlive,
        (true, _) => Persist::Implicit,
    };
    if req.target.starts_with(b"/echo") {
        // The raw head minus its final empty line: request line and headers.
        let listing = &req.raw[..req.raw.len() - 2];
        responses.write(out, "200 OK", Body::Bytes(listing), persist, head);
    } else if req.target == b"/health" && (req.method == b"GET" || head) {
        responses.write(out, "200 OK", Body::Bytes(b"ok"), persist, head);
    } else {
        responses.write(out, "200 OK", Body::Fixed, persist, head);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_body_is_13_bytes_and_pattern_repeats() {
        let r = Responses::new("127.0.0.1:1".parse().unwrap(), 13, None);
        assert_eq!(r.body, b"hello, world\n");
        let r = Responses::new("127.0.0.1:1".parse().unwrap(), 20, None);
        assert_eq!(r.body, b"hello, world\nhello, ");
        let text = String::from_utf8(r.fixed.clone()).unwrap();
        assert!(text.starts_with(
            "HTTP/1.1 200 OK\r\ncontent-length: 20\r\nx-upstream: 127.0.0.1:1\r\n\r\n"
        ));
    }

    #[test]
    fn http10_keep_alive_is_announced() {
        let r = Responses::new("127.0.0.1:1".parse().unwrap(), 3, None);
        let raw = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        let req = http1::parse_request_head(raw).unwrap().unwrap();
        let mut out = Vec::new();
        answer(&r, &req, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-upstream: 127.0.0.1:1\r\nconnection: keep-alive\r\n\r\nhel"
        );
    }
}
