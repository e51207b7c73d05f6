//! Request bodies through plugins: streamed by default, held whole only for a plugin
//! that asks (`StopIterationAndBuffer`), bounded by its `max_body_bytes`.

use super::common::*;

const PLUGINS: &str = r#"
[[plugins]]
name = "inspect"
wasm = "{plugin:test/body-inspect}"
max_body_bytes = 64
[[plugins]]
name = "responses"
wasm = "{plugin:test/body-inspect}"
response_body = true
[[plugins]]
name = "stamp"
wasm = "{plugin:test/add-header}"
config = "stamped"
[[routes]]
name = "inspected"
paths = ["=/inspect"]
upstream = "app"
plugins = ["stamp", "inspect"]
[[routes]]
name = "responses"
paths = ["/responses", "/response-seen"]
upstream = "app"
plugins = ["responses", "stamp"]
[[routes]]
name = "streamed"
paths = ["=/stream"]
upstream = "app"
plugins = ["stamp"]
"#;

const HEAD: &str = "POST /inspect HTTP/1.1\r\nHost: test.local";

#[test]
fn a_buffering_plugin_sees_the_whole_body_which_goes_upstream_intact() {
    let up = Upstream::start("app");
    let w = gateway_with(up.addr, PLUGINS);

    let r = send_chunked(w.addr, HEAD, &[b"hello ", b"wor", b"ld"]).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-shape"), Some("body-follows"));
    let seen = up.last().unwrap();
    assert_eq!(seen.body, b"hello world");
    assert_eq!(seen.header("x-filter"), Some("stamped"));

    // Content-Length framing, and a request without a body (`end_of_stream` on headers).
    let r = Req::new("POST", "/inspect")
        .body(b"plain body")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.last().unwrap().body, b"plain body");
    let r = Req::get("/inspect").send(w.addr).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-shape"), Some("headers-eos"));
}

#[test]
fn a_plugin_refuses_a_body_it_read_whole() {
    let up = Upstream::start("app");
    let w = gateway_with(up.addr, PLUGINS);
    // The word is split across chunks: only the whole body shows it.
    let r = send_chunked(w.addr, HEAD, &[b"this is forb", b"idden!"]).unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "refused: 18 bytes");
    assert_eq!(r.header("x-inspected"), Some("yes"));
    let r = Req::new("POST", "/inspect")
        .body(b"forbidden")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "refused: 9 bytes");
    // The gateway goes on serving.
    assert_eq!(Req::get("/inspect").send(w.addr).unwrap().status, 200);
}

#[test]
fn holding_more_than_max_body_bytes_is_413() {
    let up = Upstream::start("app");
    let w = gateway_with(up.addr, PLUGINS);
    let big = [b'a'; 40];
    let r = send_chunked(w.addr, HEAD, &[&big, &big, &big]).unwrap();
    assert_json_error(&r, 413, Some("payload_too_large"));
    let r = Req::new("POST", "/inspect")
        .body(&[b'b'; 65])
        .send(w.addr)
        .unwrap();
    assert_json_error(&r, 413, Some("payload_too_large"));
    // At the limit exactly, the body passes.
    let r = Req::new("POST", "/inspect")
        .body(&[b'c'; 64])
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.last().unwrap().body, [b'c'; 64]);
}

#[test]
fn a_streaming_plugin_counts_chunks_without_holding_them() {
    let up = Upstream::start("app");
    let w = gateway_with(up.addr, PLUGINS);
    let head = format!("{HEAD}\r\nx-body-mode: stream");
    // Streaming holds nothing, so `max_body_bytes` (64) does not apply...
    let r = send_chunked(w.addr, &head, &[&[b'x'; 50], &[b'y'; 40]]).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let mut want = vec![b'x'; 50];
    want.extend_from_slice(&[b'y'; 40]);
    assert_eq!(up.last().unwrap().body, want);
    // ...and the plugin's own count stops the request past 100 bytes.
    let r = send_chunked(w.addr, &head, &[&[b'x'; 60], &[b'y'; 60], &[b'z'; 60]]).unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.text(), "stream limit\n");
}

#[test]
fn large_bodies_stream_through_plugins_that_do_not_read_them() {
    let up = Upstream::start("app");
    let w = gateway_with(up.addr, PLUGINS);
    let body: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let r = Req::new("POST", "/stream")
        .body(&body)
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 200);
    let seen = up.last().unwrap();
    assert_eq!(seen.body.len(), body.len());
    assert!(seen.body == body, "the body changed on its way");
    assert_eq!(seen.header("x-filter"), Some("stamped"));
}

#[test]
fn a_plugin_that_asks_sees_response_bodies_whole_and_the_client_gets_them_intact() {
    let body: Vec<u8> = (0..200_000).map(|i| b'a' + (i % 26) as u8).collect();
    let sent = body.clone();
    let up = Upstream::with_handler("app", move |_| Reply::Send(200, vec![], sent.clone()));
    let w = gateway_with(up.addr, PLUGINS);
    let r = Req::get("/responses").send(w.addr).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == body, "the response body changed on its way");
    let seen = Req::get("/response-seen").send(w.addr).unwrap().text();
    assert_eq!(seen, "200000 bytes: abcdefghijklmnop");
    // A plugin without `response_body = true` is not called for them.
    let r = Req::get("/inspect").send(w.addr).unwrap();
    assert!(r.body == body);
    let calls = w
        .metric(
            "weir_plugin_call_duration_seconds_count{plugin=\"inspect\",phase=\"response_body\"}",
        )
        .unwrap_or(-1.0);
    assert_eq!(calls, 0.0);
}

#[test]
fn a_request_without_a_body_gets_no_body_callback() {
    let up = Upstream::start("app");
    let w = gateway_with(up.addr, PLUGINS);
    let body_calls = || {
        w.metric(
            "weir_plugin_call_duration_seconds_count{plugin=\"inspect\",phase=\"request_body\"}",
        )
        .unwrap_or(-1.0)
    };
    // `on_request_headers` said end of stream: as in Envoy, no `on_request_body` follows.
    for _ in 0..3 {
        assert_eq!(Req::get("/inspect").send(w.addr).unwrap().status, 200);
    }
    assert_eq!(body_calls(), 0.0);
    // A request with a body is shown it.
    let r = Req::new("POST", "/inspect")
        .body(b"hello")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(body_calls() >= 1.0, "{}", body_calls());
}
