//! Routing, direct responses, rewrites, request ids, forwarding headers, framing.

use super::common::*;

fn config(upstream: std::net::SocketAddr) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
trusted_proxies = ["10.0.0.0/8"]
max_request_header_bytes = 4096
max_request_headers = 20
[admin]
listen = "{{admin}}"
[access_log]
output = "off"

[[upstreams]]
name = "echo"
targets = ["{upstream}"]

[[routes]]
name = "exact"
paths = ["=/a/b"]
respond = {{ status = 200, body = "exact" }}

[[routes]]
name = "long-prefix"
paths = ["/a/b"]
respond = {{ status = 200, body = "long-prefix" }}

[[routes]]
name = "short-prefix"
paths = ["/a"]
respond = {{ status = 200, body = "short-prefix" }}

[[routes]]
name = "regex"
paths = ["~^/v[0-9]+/items$"]
respond = {{ status = 200, body = "regex" }}

[[routes]]
name = "regex-boosted"
paths = ["~^/v2/"]
priority = 10
respond = {{ status = 200, body = "regex-boosted" }}

[[routes]]
name = "prio-low"
paths = ["/p"]
respond = {{ status = 200, body = "prio-low" }}

[[routes]]
name = "prio-high"
paths = ["/p"]
priority = 5
respond = {{ status = 200, body = "prio-high" }}

[[routes]]
name = "post-only"
paths = ["/m"]
methods = ["POST"]
respond = {{ status = 201, body = "post-only" }}

[[routes]]
name = "canary"
paths = ["/m"]
headers = {{ "x-canary" = "yes" }}
respond = {{ status = 200, body = "canary" }}

[[routes]]
name = "exact-host"
hosts = ["api.example.com"]
paths = ["/h"]
respond = {{ status = 200, body = "exact-host" }}

[[routes]]
name = "wild-host"
hosts = ["*.example.com"]
paths = ["/h"]
respond = {{ status = 200, body = "wild-host" }}

[[routes]]
name = "teapot"
paths = ["=/teapot"]
respond = {{ status = 418, body = "short and stout", headers = {{ "x-pot" = "tea", "content-type" = "text/plain" }} }}

[[routes]]
name = "strip"
paths = ["/svc"]
strip_prefix = true
upstream = "echo"
request_headers = {{ set = {{ "x-added" = "1" }}, remove = ["x-secret"] }}
response_headers = {{ add = {{ "x-route" = "strip" }}, remove = ["x-internal"] }}

[[routes]]
name = "rewrite"
paths = ["/old"]
rewrite_path = "/new"
upstream = "echo"

[[routes]]
name = "proxy"
paths = ["/up"]
upstream = "echo"
"#
    )
}

fn body_of(w: &Weir, req: Req) -> String {
    let r = req.send(w.addr).expect("request");
    r.text()
}

fn setup() -> (Weir, Upstream) {
    let up = Upstream::with_handler("echo", |r| {
        Reply::Send(
            200,
            vec![("x-internal".into(), "hidden".into())],
            r.path.clone().into_bytes(),
        )
    });
    let w = Weir::start(&config(up.addr));
    (w, up)
}

#[test]
fn path_precedence_exact_then_longest_prefix_then_regex() {
    let (w, _up) = setup();
    assert_eq!(body_of(&w, Req::get("/a/b")), "exact");
    assert_eq!(body_of(&w, Req::get("/a/b/c")), "long-prefix");
    assert_eq!(body_of(&w, Req::get("/a/x")), "short-prefix");
    assert_eq!(body_of(&w, Req::get("/v1/items")), "regex");
    // A higher-priority regex wins over an earlier one.
    assert_eq!(body_of(&w, Req::get("/v2/items")), "regex-boosted");
    // Equal prefixes: priority decides.
    assert_eq!(body_of(&w, Req::get("/p")), "prio-high");
}

#[test]
fn methods_and_headers_select_routes() {
    let (w, _up) = setup();
    let r = Req::new("POST", "/m").body(b"x").send(w.addr).unwrap();
    assert_eq!((r.status, r.text().as_str()), (201, "post-only"));
    assert_eq!(
        body_of(&w, Req::get("/m").header("x-canary", "yes")),
        "canary"
    );
    let r = Req::get("/m").send(w.addr).unwrap();
    assert_eq!(r.status, 404);
}

#[test]
fn host_exact_and_wildcard() {
    let (w, _up) = setup();
    let h = |host: &str| body_of(&w, Req::get("/h").header("Host", host));
    assert_eq!(h("api.example.com"), "exact-host");
    assert_eq!(h("API.EXAMPLE.COM:8080"), "exact-host");
    assert_eq!(h("www.example.com"), "wild-host");
    assert_eq!(h("a.b.example.com"), "wild-host");
    let r = Req::get("/h")
        .header("Host", "example.com")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 404, "a wildcard does not cover the bare domain");
}

#[test]
fn direct_response_with_headers() {
    let (w, _up) = setup();
    let r = w.get("/teapot");
    assert_eq!(r.status, 418);
    assert_eq!(r.text(), "short and stout");
    assert_eq!(r.header("x-pot"), Some("tea"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert!(r.header("x-request-id").is_some());
}

#[test]
fn no_route_is_json_404_with_request_id() {
    let (w, _up) = setup();
    let r = w.get("/nothing-here");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["error"], "no_route");
    assert!(!v["message"].as_str().unwrap().is_empty());
    assert_eq!(v["request_id"].as_str(), r.header("x-request-id"));
}

#[test]
fn strip_prefix_rewrite_and_header_edits() {
    let (w, up) = setup();
    let r = Req::get("/svc/users/7?q=1")
        .header("x-secret", "s")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "/users/7?q=1");
    assert_eq!(r.header("x-route"), Some("strip"));
    assert_eq!(r.header("x-internal"), None, "response header removed");
    let seen = up.last().unwrap();
    assert_eq!(seen.header("x-added"), Some("1"));
    assert_eq!(seen.header("x-secret"), None);
    assert_eq!(body_of(&w, Req::get("/svc")), "/");
    assert_eq!(body_of(&w, Req::get("/old/thing")), "/new/thing");
}

#[test]
fn request_id_kept_when_sane_generated_otherwise_and_forwarded() {
    let (w, up) = setup();
    let r = Req::get("/up")
        .header("x-request-id", "client-id-1")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.header("x-request-id"), Some("client-id-1"));
    assert_eq!(
        up.last().unwrap().header("x-request-id"),
        Some("client-id-1")
    );
    let r = Req::get("/up")
        .header("x-request-id", "bad id with spaces")
        .send(w.addr)
        .unwrap();
    let id = r.header("x-request-id").unwrap().to_string();
    assert_ne!(id, "bad id with spaces");
    assert_eq!(id.len(), 32);
    assert_eq!(up.last().unwrap().header("x-request-id"), Some(id.as_str()));
    let a = w.get("/up").header("x-request-id").map(str::to_string);
    let b = w.get("/up").header("x-request-id").map(str::to_string);
    assert_ne!(a, b);
}

#[test]
fn forwarding_headers_replace_untrusted_claims() {
    let (w, up) = setup();
    // 127.0.0.1 is not in trusted_proxies: the client's XFF is replaced.
    Req::get("/up")
        .header("Host", "shop.example.org")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .send(w.addr)
        .unwrap();
    let seen = up.last().unwrap();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("shop.example.org"));
    assert_eq!(
        seen.header("host"),
        Some("shop.example.org"),
        "Host passes through"
    );
}

#[test]
fn forwarding_headers_extend_trusted_chain() {
    let up = Upstream::start("echo");
    let cfg = config(up.addr).replace("[\"10.0.0.0/8\"]", "[\"127.0.0.1\"]");
    let w = Weir::start(&cfg);
    Req::get("/up")
        .header("x-forwarded-for", "198.51.100.7")
        .header("x-forwarded-proto", "https")
        .send(w.addr)
        .unwrap();
    let seen = up.last().unwrap();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("198.51.100.7, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}

/// Hop-by-hop fields stop at the gateway: those RFC 9110 lists, and those a `Connection`
/// field names. Weir lets pingora's sanitizer run only when a head has such a field
/// other than a lone `Connection: keep-alive`; either way the upstream gets the same.
#[test]
fn hop_by_hop_fields_stop_at_the_gateway() {
    let (w, up) = setup();
    let hop_by_hop = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
        "x-named",
    ];
    let cases: [&[(&str, &str)]; 5] = [
        &[],
        &[("Connection", "keep-alive")],
        &[("Connection", "Keep-Alive, X-Named"), ("X-Named", "n")],
        &[
            ("Proxy-Authorization", "Basic eDp5"),
            ("TE", "trailers"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("Trailer", "x-sum"),
        ],
        &[("Connection", "keep-alive"), ("Upgrade", "h2c")],
    ];
    for fields in cases {
        let mut req = Req::get("/up").header("X-Kept", "k");
        for (k, v) in fields {
            req = req.header(k, v);
        }
        let r = req.send(w.addr).unwrap();
        assert_eq!(r.status, 200, "{fields:?}");
        let seen = up.last().unwrap();
        assert_eq!(seen.header("x-kept"), Some("k"), "{fields:?}");
        for name in hop_by_hop {
            assert_eq!(seen.header(name), None, "{name} forwarded for {fields:?}");
        }
    }
}

/// Header names written by the client, the upstream, the gateway and route edits, as
/// each peer sees them on the wire; and what `preserve_header_case` leaves alone.
#[test]
fn header_names_go_out_lower_case_unless_preserved() {
    let up = Upstream::with_handler("echo", |_| {
        Reply::Send(
            200,
            vec![("X-Upstream-Thing".into(), "b".into())],
            b"ok".to_vec(),
        )
    });
    let names = |headers: &[(String, String)]| -> Vec<String> {
        let mut n: Vec<String> = headers.iter().map(|(k, _)| k.clone()).collect();
        n.sort();
        n
    };
    let mut seen_targets = Vec::new();
    for preserve in [false, true] {
        let cfg = config(up.addr).replace(
            "[server]\n",
            &format!("[server]\npreserve_header_case = {preserve}\n"),
        );
        let w = Weir::start(&cfg);
        let r = Req::get("/svc/x?q=1")
            .header("X-Custom-Thing", "a")
            .header("User-Agent", "t")
            .send(w.addr)
            .unwrap();
        assert_eq!(r.status, 200);
        // The test upstream answers `200 X`: its own reason phrase goes through.
        assert_eq!(r.reason, "X");
        let seen = up.last().unwrap();
        let (up_names, client_names) = (names(&seen.headers), names(&r.headers));
        if preserve {
            for n in ["X-Custom-Thing", "User-Agent", "Host"] {
                assert!(up_names.contains(&n.to_string()), "{n} in {up_names:?}");
            }
            assert!(client_names.contains(&"X-Upstream-Thing".to_string()));
        } else {
            for n in ["x-custom-thing", "user-agent", "Host", "x-forwarded-for"] {
                assert!(up_names.contains(&n.to_string()), "{n} in {up_names:?}");
            }
            assert!(!up_names.contains(&"X-Custom-Thing".to_string()));
            for n in [
                "x-upstream-thing",
                "x-request-id",
                "x-route",
                "Content-Length",
            ] {
                assert!(
                    client_names.contains(&n.to_string()),
                    "{n} in {client_names:?}"
                );
            }
        }
        // Either way, every header arrives once, with its value.
        assert_eq!(seen.header("x-custom-thing"), Some("a"));
        assert_eq!(seen.header("x-added"), Some("1"));
        assert_eq!(
            seen.headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("host"))
                .count(),
            1
        );
        assert_eq!(r.header("x-upstream-thing"), Some("b"));
        assert_eq!(r.header("x-route"), Some("strip"));
        assert_eq!(r.header("x-request-id").map(str::len), Some(32));
        // A target the parts of a head cannot hold keeps its bytes: absolute-form.
        let mut c = Conn::open(w.addr).unwrap();
        let raw = b"GET http://test.local/svc/abs?z=%C3%A9 HTTP/1.1\r\nHost: test.local\r\n\r\n";
        let r = c.send_raw(raw, false).unwrap();
        assert_eq!(r.status, 200);
        seen_targets.push(up.last().unwrap().path);
    }
    // Both modes forward the same target.
    assert_eq!(seen_targets[0], seen_targets[1], "{seen_targets:?}");
}

#[test]
fn content_length_with_transfer_encoding_is_rejected() {
    let (w, up) = setup();
    let mut c = Conn::open(w.addr).unwrap();
    let raw = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let r = c.send_raw(raw, false).unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_request");
    assert_eq!(up.hits(), 0, "never forwarded");
}

#[test]
fn local_reply_drains_request_body_before_reuse() {
    let (w, up) = setup();
    let mut c = Conn::open(w.addr).unwrap();
    // A body that looks like a second request must not be parsed as one.
    let smuggled = b"GET /up HTTP/1.1\r\nHost: x\r\n\r\n";
    let first = Req::new("POST", "/teapot").body(smuggled);
    let r = c.send(&first).unwrap();
    assert_eq!(r.status, 418);
    if !c.is_closed() {
        let r = c.send(&Req::get("/teapot")).unwrap();
        assert_eq!(r.status, 418);
    }
    assert_eq!(up.hits(), 0, "the body was not executed as a request");
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let (w, up) = setup();
    let mut c = Conn::open(w.addr).unwrap();
    for i in 0..50 {
        let r = c.send(&Req::get(&format!("/up/{i}"))).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("/up/{i}"));
    }
    assert_eq!(up.hits(), 50);
}

#[test]
fn oversized_or_too_many_headers_get_431() {
    let (w, up) = setup();
    let big = "x".repeat(5000);
    let r = Req::get("/up").header("x-big", &big).send(w.addr).unwrap();
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["error"], "request_header_too_large");
    let mut req = Req::get("/up");
    for i in 0..25 {
        req = req.header(&format!("x-h{i}"), "v");
    }
    assert_eq!(req.send(w.addr).unwrap().status, 431);
    assert_eq!(up.hits(), 0);
    // Within the limits all is well.
    assert_eq!(
        Req::get("/up")
            .header("x-ok", &"y".repeat(1000))
            .send(w.addr)
            .unwrap()
            .status,
        200
    );
}

#[test]
fn http2_requests_are_proxied_with_h2c() {
    let up = Upstream::with_handler("echo", |r| Reply::ok(&format!("{} {}", r.method, r.path)));
    let cfg = format!(
        r#"
[server]
listen = ["{{listen}}"]
h2c = true
watch_config = false
[admin]
listen = "{{admin}}"
[access_log]
output = "off"
[[upstreams]]
name = "echo"
targets = ["{}"]
[[routes]]
name = "all"
upstream = "echo"
"#,
        up.addr
    );
    let w = Weir::start(&cfg);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (statuses, bodies, ids) = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(w.addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(conn);
        let mut statuses = Vec::new();
        let mut bodies = Vec::new();
        let mut ids = Vec::new();
        // Several streams on one connection, concurrently.
        let mut pending = Vec::new();
        for i in 0..5 {
            let mut c = client.clone().ready().await.unwrap();
            let req = http::Request::builder()
                .uri(format!("http://test.local/h2/{i}"))
                .body(())
                .unwrap();
            let (resp, _) = c.send_request(req, true).unwrap();
            pending.push(resp);
        }
        for resp in pending {
            let resp = tokio::time::timeout(std::time::Duration::from_secs(10), resp)
                .await
                .expect("in time")
                .expect("response");
            statuses.push(resp.status().as_u16());
            ids.push(resp.headers().get("x-request-id").is_some());
            let mut body = resp.into_body();
            let mut bytes = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            bodies.push(String::from_utf8(bytes).unwrap());
        }
        (statuses, bodies, ids)
    });
    assert_eq!(statuses, vec![200; 5]);
    for (i, b) in bodies.iter().enumerate() {
        assert_eq!(b, &format!("GET /h2/{i}"));
    }
    assert!(ids.iter().all(|x| *x));
    // The same listener still serves HTTP/1.1.
    assert_eq!(w.get("/h1").text(), "GET /h1");
}
