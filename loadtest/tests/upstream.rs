//! The `weir-load upstream` subcommand, spawned as the real binary on an ephemeral port.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn prints_its_address_and_serves_health() {
    let (_guard, addr) = start_upstream(&[]);
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    let (mut w, mut r) = connect(addr);
    w.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let reply = read_reply(&mut r);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, b"ok");
    assert_eq!(reply.header("x-upstream"), Some(addr.to_string().as_str()));
}

#[test]
fn default_body_and_body_size_option() {
    let (_g1, default) = start_upstream(&[]);
    let (_g2, sized) = start_upstream(&["--body-size", "1000", "--threads", "2"]);
    let (mut w, mut r) = connect(default);
    w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert_eq!(read_reply(&mut r).body, b"hello, world\n");
    let (mut w, mut r) = connect(sized);
    w.write_all(b"GET /anything HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let reply = read_reply(&mut r);
    assert_eq!(reply.body.len(), 1000);
    assert!(reply.body.starts_with(b"hello, world\nhello"));
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let (_guard, addr) = start_upstream(&[]);
    let (mut w, mut r) = connect(addr);
    for _ in 0..1000 {
        w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let reply = read_reply(&mut r);
        assert_eq!((reply.status, reply.body.len()), (200, 13));
    }
    // Pipelined: 50 requests in one write, 50 answers in order.
    let batch = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(50);
    w.write_all(&batch).expect("write");
    for _ in 0..50 {
        assert_eq!(read_reply(&mut r).status, 200);
    }
}

#[test]
fn request_bodies_are_drained_for_keep_alive() {
    let (_guard, addr) = start_upstream(&[]);
    let (mut w, mut r) = connect(addr);
    let body = vec![b'b'; 5000];
    let mut req = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    w.write_all(&req).expect("write");
    assert_eq!(read_reply(&mut r).status, 200);
    w.write_all(
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          4\r\nwiki\r\n5;x=y\r\npedia\r\n0\r\nTrailer: 1\r\n\r\n",
    )
    .expect("write");
    assert_eq!(read_reply(&mut r).status, 200);
    // The connection is still in sync: the next request gets its own answer.
    w.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert_eq!(read_reply(&mut r).body, b"ok");
}

#[test]
fn echo_lists_the_request_line_and_headers() {
    let (_guard, addr) = start_upstream(&[]);
    let (mut w, mut r) = connect(addr);
    w.write_all(b"GET /echo/abc?q=1 HTTP/1.1\r\nHost: example\r\nX-Trace: 42\r\n\r\n")
        .expect("write");
    let reply = read_reply(&mut r);
    let body = String::from_utf8(reply.body).expect("utf-8");
    assert_eq!(
        body,
        "GET /echo/abc?q=1 HTTP/1.1\r\nHost: example\r\nX-Trace: 42\r\n"
    );
}

#[test]
fn connection_close_is_honoured() {
    let (_guard, addr) = start_upstream(&[]);
    let (mut w, mut r) = connect(addr);
    w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let reply = read_reply(&mut r);
    assert_eq!(reply.header("connection"), Some("close"));
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut rest).expect("read to end");
    assert!(rest.is_empty());
}

#[test]
fn delay_is_applied_before_answering() {
    let (_guard, addr) = start_upstream(&["--delay", "50ms"]);
    let (mut w, mut r) = connect(addr);
    let start = Instant::now();
    w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert_eq!(read_reply(&mut r).status, 200);
    assert!(start.elapsed() >= Duration::from_millis(50));
}

#[test]
fn load_generator_against_the_upstream() {
    let (_guard, addr) = start_upstream(&["--body-size", "100"]);
    let r = run_load(&["-n", "2000", "-c", "10", &format!("http://{addr}/")]);
    assert_eq!(r.requests, 2000);
    assert_eq!(r.errors.total, 0);
    assert_eq!(r.status.get("200"), Some(&2000));
    assert!(r.bytes_read > 2000 * 100);
}

#[test]
fn bad_listen_address_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = std::process::Command::new(BIN)
        .args(["upstream", "--listen", &addr])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

#[test]
fn malformed_request_gets_400_and_close() {
    let (_guard, addr) = start_upstream(&[]);
    let (mut w, mut r) = connect(addr);
    w.write_all(b"NONSENSE\r\n\r\n").expect("write");
    let reply = read_reply(&mut r);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.header("connection"), Some("close"));
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut rest).expect("read to end");
    assert!(rest.is_empty());
}

#[test]
fn expect_continue_gets_an_interim_answer() {
    let (_guard, addr) = start_upstream(&[]);
    let (mut w, mut r) = connect(addr);
    w.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        .expect("write");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut r, &mut line).expect("interim line");
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    line.clear();
    std::io::BufRead::read_line(&mut r, &mut line).expect("interim end");
    assert_eq!(line, "\r\n");
    w.write_all(b"abcGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert_eq!(read_reply(&mut r).status, 200);
    assert_eq!(read_reply(&mut r).body, b"ok");
}
