//! The load generator against test servers whose answers the tests control.
//!
//! Counting rule: with `-n N`, every ticket ends as exactly one response or one error, so
//! `requests + errors.total == N` and a server that reads every request sees exactly `N`.
//! With `-d`, requests still in flight at the deadline are dropped uncounted (as wrk does):
//! at most one per connection, so `0 <= server_count - (requests + errors) <= connections`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn status_count(r: &weir_load::report::Report, key: &str) -> u64 {
    r.status.get(key).copied().unwrap_or(0)
}

#[test]
fn exact_request_count_closed_loop() {
    let server = TestServer::ok();
    let r = run_load(&["-n", "1000", "-c", "8", "-t", "2", &server.url("/")]);
    assert_eq!(r.requests, 1000);
    assert_eq!(r.errors.total, 0);
    assert_eq!(server.received(), 1000);
    assert_eq!(status_count(&r, "200"), 1000);
    assert_eq!(r.mode, "closed-loop");
    assert!(r.throughput_rps > 0.0 && r.duration_secs > 0.0);
}

#[test]
fn status_codes_and_classes_follow_the_server() {
    let server = TestServer::start(|i, _| {
        let status = [200, 200, 404, 503][(i % 4) as usize];
        Action::Respond(response(status, b"x"))
    });
    let r = run_load(&["-n", "400", "-c", "5", &server.url("/")]);
    assert_eq!(server.received(), 400);
    assert_eq!(r.requests, 400);
    assert_eq!(
        (
            status_count(&r, "200"),
            status_count(&r, "404"),
            status_count(&r, "503")
        ),
        (200, 100, 100)
    );
    assert_eq!(r.status_class.get("2xx"), Some(&200));
    assert_eq!(r.status_class.get("4xx"), Some(&100));
    assert_eq!(r.status_class.get("5xx"), Some(&100));
}

#[test]
fn all_response_framings_are_read() {
    let big = vec![b'z'; 100_000];
    let server = TestServer::start(move |i, _| match i % 7 {
        0 => Action::Respond(response(200, b"plain")),
        1 => Action::Respond(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"
                .to_vec(),
        ),
        2 => Action::Respond(response(200, &big)),
        3 => {
            let mut r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            for _ in 0..100 {
                r.extend_from_slice(b"3e8\r\n");
                r.extend_from_slice(&[b'c'; 1000]);
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"0\r\n\r\n");
            Action::Respond(r)
        }
        4 => Action::Respond(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
        5 => Action::RespondAndClose(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        ),
        _ => Action::RespondAndClose(b"HTTP/1.0 200 OK\r\n\r\nread until close".to_vec()),
    });
    let r = run_load(&["-n", "700", "-c", "4", &server.url("/")]);
    assert_eq!(r.errors.total, 0, "{:?}", r.errors);
    assert_eq!(r.requests, 700);
    assert_eq!(server.received(), 700);
    assert_eq!(status_count(&r, "204"), 100);
    assert!(r.bytes_read > 100 * (100_000 + 100_000));
}

#[test]
fn server_closing_connections_counts_closed_errors() {
    let server = TestServer::start(|_, _| Action::Close);
    let r = run_load(&["-n", "50", "-c", "5", &server.url("/")]);
    assert_eq!(r.requests, 0);
    assert_eq!(r.errors.closed, 50, "{:?}", r.errors);
    assert_eq!(r.errors.total, 50);
    assert_eq!(server.received(), 50);
}

#[test]
fn silent_server_counts_timeouts() {
    let server = TestServer::start(|_, _| Action::Silent);
    let start = Instant::now();
    let r = run_load(&["-n", "6", "-c", "3", "--timeout", "200ms", &server.url("/")]);
    // Two rounds of 200 ms timeouts on each of 3 connections.
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(r.requests, 0);
    assert_eq!(r.errors.timeout, 6, "{:?}", r.errors);
    assert_eq!(r.errors.total, 6);
}

#[test]
fn closed_port_fails_fast_with_connect_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let start = Instant::now();
    let out = Command::new(BIN)
        .args(["-d", "5s", &format!("http://127.0.0.1:{port}/")])
        .output()
        .expect("run weir-load");
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    let err = try_run_load(&[&format!("http://127.0.0.1:{port}/")]).unwrap_err();
    assert!(matches!(err, weir_load::Error::Connect { .. }), "{err}");
}

#[test]
fn bad_urls_are_rejected_with_exit_code_2() {
    for (url, needle) in [
        ("https://127.0.0.1:1/", "https:// is not supported"),
        ("127.0.0.1:1/", "expected http://"),
        ("http://127.0.0.1:99999/", "bad port"),
    ] {
        let out = Command::new(BIN).arg(url).output().expect("run weir-load");
        assert_eq!(out.status.code(), Some(2), "{url}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{url}: {stderr}");
    }
}

#[test]
fn open_loop_holds_the_rate() {
    let server = TestServer::ok();
    let r = run_load(&["-r", "200", "-d", "2s", "-c", "10", &server.url("/")]);
    assert_eq!(r.mode, "open-loop");
    assert!(
        (340..=460).contains(&r.requests),
        "expected 400±15% requests, got {}",
        r.requests
    );
    let done = r.requests + r.errors.total;
    let seen = server.received();
    assert!(
        seen >= done && seen - done <= 10,
        "server {seen} vs client {done}"
    );
}

#[test]
fn open_loop_with_n_stops_after_the_last_request() {
    // 20 connections at 10 req/s in total: each connection's next slot is 2 s away, but
    // the run must end as soon as the 3 requests are answered.
    let server = TestServer::ok();
    let start = Instant::now();
    let r = run_load(&["-r", "10", "-n", "3", "-c", "20", &server.url("/")]);
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(r.requests, 3);
    assert_eq!(server.received(), 3);
}

#[test]
fn latency_reflects_a_known_server_delay() {
    let server =
        TestServer::start(|_, _| Action::Delay(Duration::from_millis(20), response(200, b"slow")));
    let r = run_load(&["-n", "100", "-c", "4", &server.url("/")]);
    let l = r.latency_us;
    assert_eq!(r.requests, 100);
    assert!(l.p50 >= 20_000, "p50 {}µs below the 20ms delay", l.p50);
    assert!(l.min >= 20_000, "min {}µs", l.min);
    assert!(l.p50 < 500_000, "p50 {}µs implausibly high", l.p50);
    assert!(l.min <= l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99);
    assert!(l.p99 <= l.p99_9 && l.p99_9 <= l.max);
    assert!(l.mean >= l.min as f64 && l.mean <= l.max as f64);
}

#[test]
fn open_loop_latency_is_measured_from_the_due_time() {
    // One connection, 50 ms per answer (20/s capacity), asked for 100/s: the queue grows,
    // and latency from the due time grows with it, far beyond the service time.
    let server =
        TestServer::start(|_, _| Action::Delay(Duration::from_millis(50), response(200, b"slow")));
    let open = run_load(&["-r", "100", "-d", "1s", "-c", "1", &server.url("/")]);
    let closed = run_load(&["-n", "10", "-c", "1", &server.url("/")]);
    assert!(closed.latency_us.p50 < 100_000, "{:?}", closed.latency_us);
    assert!(
        open.latency_us.p50 > 150_000,
        "open-loop p50 {}µs does not include queueing",
        open.latency_us.p50
    );
}

#[test]
fn json_report_parses_and_has_the_fields() {
    let server = TestServer::ok();
    let out = Command::new(BIN)
        .args(["--json", "-q", "-n", "50", "-c", "2", &server.url("/")])
        .output()
        .expect("run weir-load");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(v["requests"], 50);
    assert_eq!(v["status"]["200"], 50);
    assert_eq!(v["status_class"]["2xx"], 50);
    assert_eq!(v["errors"]["total"], 0);
    for k in ["connect", "timeout", "closed", "parse", "other"] {
        assert_eq!(v["errors"][k], 0, "errors.{k}");
    }
    for k in ["min", "mean", "stdev", "p50", "p90", "p99", "p99_9", "max"] {
        assert!(v["latency_us"][k].is_number(), "latency_us.{k}");
    }
    assert!(v["throughput_rps"].as_f64().is_some_and(|x| x > 0.0));
    assert!(v["duration_secs"].as_f64().is_some_and(|x| x > 0.0));
    assert_eq!(v["connections"], 2);
    assert_eq!(v["interrupted"], false);
    // And it round-trips into the library type.
    let _: weir_load::report::Report = serde_json::from_slice(&out.stdout).expect("Report");
}

#[test]
fn text_report_by_default() {
    let server = TestServer::ok();
    let out = Command::new(BIN)
        .args(["-q", "-n", "20", "-c", "2", &server.url("/")])
        .output()
        .expect("run weir-load");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Requests:   20 in",
        "p99.9",
        "200: 20",
        "2xx: 20",
        "Errors:     0",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert!(
        out.stderr.is_empty(),
        "--quiet still wrote {:?}",
        out.stderr
    );
}

#[test]
fn urls_file_mix_is_exact_over_n() {
    let server = TestServer::ok();
    let dir = std::env::temp_dir().join(format!("weir-load-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("urls.txt");
    let text = format!(
        "# reads and writes\n3 GET {}\n\n1 POST {}\n",
        server.url("/a"),
        server.url("/b?x=1")
    );
    std::fs::write(&file, text).expect("write urls file");
    let file_arg = file.to_string_lossy().into_owned();
    let r = run_load(&["-n", "400", "-c", "4", "--urls-file", &file_arg]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(r.requests, 400);
    let log = server.log();
    let gets = log
        .iter()
        .filter(|s| s.method == "GET" && s.path == "/a")
        .count();
    let posts = log
        .iter()
        .filter(|s| s.method == "POST" && s.path == "/b?x=1")
        .count();
    assert_eq!((gets, posts), (300, 100));
}

#[test]
fn urls_file_errors_name_the_line() {
    let dir = std::env::temp_dir().join(format!("weir-load-test-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("urls.txt");
    std::fs::write(&file, "http://127.0.0.1:1/\nhttp://127.0.0.1:2/\n").expect("write");
    let e1 = try_run_load(&["--urls-file", &file.to_string_lossy()]).unwrap_err();
    std::fs::write(&file, "http://127.0.0.1:1/\n2 GET\n").expect("write");
    let e2 = try_run_load(&["--urls-file", &file.to_string_lossy()]).unwrap_err();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(e1.to_string().contains("one host:port"), "{e1}");
    assert!(e2.to_string().contains("line 2"), "{e2}");
}

#[test]
fn method_headers_and_body_are_sent() {
    let server = TestServer::ok();
    run_load(&[
        "-n",
        "3",
        "-c",
        "1",
        "-m",
        "PUT",
        "-H",
        "X-Test: yes",
        "-H",
        "Authorization: Bearer t",
        "-b",
        "payload",
        &server.url("/p"),
    ]);
    let log = server.log();
    assert_eq!(log.len(), 3);
    for s in &log {
        assert_eq!((s.method.as_str(), s.path.as_str()), ("PUT", "/p"));
        assert_eq!(s.header("x-test"), Some("yes"));
        assert_eq!(s.header("authorization"), Some("Bearer t"));
        assert_eq!(s.header("host"), Some(server.addr.to_string().as_str()));
        assert_eq!(s.body, b"payload");
    }
}

#[test]
fn warmup_is_not_counted() {
    let server = TestServer::ok();
    let r = run_load(&[
        "--warmup",
        "200ms",
        "-n",
        "100",
        "-c",
        "2",
        &server.url("/"),
    ]);
    assert_eq!(r.requests, 100);
    assert!(server.received() > 100, "no warm-up requests were sent");
}

#[test]
fn ctrl_c_stops_early_with_a_partial_report() {
    let server = TestServer::ok();
    let mut child = Command::new(BIN)
        .args(["--json", "-d", "60s", "-c", "2", &server.url("/")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir-load");
    let stderr = child.stderr.take().expect("stderr");
    let mut guard = ChildGuard(child);
    // The first progress line proves the load is running and the handler is installed.
    let line = first_line(stderr);
    assert!(line.contains("req/s"), "unexpected progress line {line:?}");
    let pid = libc::pid_t::try_from(guard.0.id()).expect("pid");
    // SAFETY: kill(2) with a valid signal on our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = wait_with_deadline(&mut guard.0);
    assert!(status.success(), "{status:?}");
    let mut stdout = guard.0.stdout.take().expect("stdout");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut out).expect("read stdout");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(v["interrupted"], true);
    assert!(v["requests"].as_u64().is_some_and(|n| n > 0));
    assert!(v["duration_secs"].as_f64().is_some_and(|d| d < 30.0));
}
