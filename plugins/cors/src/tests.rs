use super::*;
use serde_json::json;
use weir_plugin_sdk::testing::{self, MockRequest, MockResponse};

const APP: &str = "https://app.example.com";

fn policy(config: serde_json::Value) -> Cors {
    testing::load(&config.to_string()).unwrap_or_else(|e| panic!("{e}"))
}

fn error(config: serde_json::Value) -> String {
    match testing::load::<Cors>(&config.to_string()) {
        Ok(c) => panic!("config accepted: {c:?}"),
        Err(e) => e,
    }
}

/// The policy most tests use: two exact origins, a wildcard, credentials.
fn example() -> Cors {
    policy(json!({
        "allow_origins": [APP, "https://*.example.com", "http://localhost:3000"],
        "allow_methods": ["GET", "POST", "PUT"],
        "allow_headers": ["Authorization", "content-type"],
        "expose_headers": ["x-request-id", "X-Total"],
        "allow_credentials": true,
        "max_age": 300,
    }))
}

fn preflight(origin: &str, method: &str) -> MockRequest {
    MockRequest::options("/v1/users")
        .header("x-request-id", "r-1")
        .header("origin", origin)
        .header("access-control-request-method", method)
}

/// The `access-control-*` headers of a local answer.
fn cors_headers(d: &Decision) -> Vec<(String, String)> {
    match d {
        Decision::Continue => panic!("not answered locally"),
        Decision::Respond { headers, .. } => headers
            .iter()
            .filter(|(n, _)| n.starts_with("access-control-"))
            .cloned()
            .collect(),
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// Checks a refused preflight: 403, Weir's error, no CORS header, the Vary.
fn assert_refused(d: &Decision, why: &str) {
    assert_eq!(d.status(), Some(403), "{d:?}");
    let body = d.body_json().unwrap();
    assert_eq!(body["error"], "cors_rejected");
    assert_eq!(body["request_id"], "r-1");
    assert!(body["message"].as_str().unwrap().contains(why), "{body}");
    assert_eq!(cors_headers(d), vec![]);
    assert_eq!(d.response_header("vary"), Some(PREFLIGHT_VARY));
}

/// Runs both hooks for a request that goes upstream; returns the response.
fn exchange(cors: &Cors, mut req: MockRequest, resp: MockResponse) -> MockResponse {
    assert!(cors.on_request(&mut req).is_continue());
    assert!(req.refused().is_empty(), "{:?}", req.refused());
    let mut resp = resp;
    assert!(cors.on_response(&req, &mut resp).is_continue());
    assert!(resp.refused().is_empty(), "{:?}", resp.refused());
    resp
}

fn allowed(cors: &Cors, origin: &str) -> bool {
    let resp = exchange(
        cors,
        MockRequest::get("/").header("origin", origin),
        MockResponse::new(200),
    );
    resp.headers().contains("access-control-allow-origin")
}

#[test]
fn preflight_allowed_is_answered_with_the_cors_headers() {
    let d = example().on_request(&mut preflight(APP, "PUT").header(
        "access-control-request-headers",
        "content-type,authorization",
    ));
    assert_eq!(d.status(), Some(204));
    assert!(d.body_bytes().is_empty());
    assert_eq!(
        cors_headers(&d),
        pairs(&[
            ("access-control-allow-origin", APP),
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-methods", "GET, POST, PUT"),
            (
                "access-control-allow-headers",
                "authorization, content-type"
            ),
            ("access-control-max-age", "300"),
        ])
    );
    assert_eq!(d.response_header("vary"), Some(PREFLIGHT_VARY));
}

#[test]
fn preflight_echoes_the_origin_as_sent() {
    // Matching ignores case and the default port; the answer is the request's value,
    // which is what the browser compares byte for byte.
    for origin in ["https://API.Example.com", "https://app.example.com:443"] {
        let d = example().on_request(&mut preflight(origin, "GET"));
        assert_eq!(d.status(), Some(204), "{origin}");
        assert_eq!(
            d.response_header("access-control-allow-origin"),
            Some(origin)
        );
    }
}

#[test]
fn preflight_refused_for_an_origin_not_allowed() {
    for origin in [
        "https://evil.com",
        "https://example.com",
        "http://app.example.com",
        "https://app.example.com:8443",
        "null",
        "",
        "https://app.example.com/",
        "https://app.example.com, https://evil.com",
    ] {
        let d = example().on_request(&mut preflight(origin, "GET"));
        assert_refused(&d, "origin");
    }
}

#[test]
fn preflight_refused_for_a_method_not_allowed() {
    let cors = example();
    for method in ["DELETE", "put", "PATCH", "", "GET POST", "G\u{e9}T"] {
        assert_refused(&cors.on_request(&mut preflight(APP, method)), "method");
    }
}

#[test]
fn preflight_refused_for_a_header_not_allowed() {
    let cors = example();
    for requested in ["x-debug", "content-type, x-debug", "authorization,X-DEBUG"] {
        let mut req = preflight(APP, "POST").header("access-control-request-headers", requested);
        assert_refused(&cors.on_request(&mut req), "header");
    }
}

#[test]
fn preflight_refused_for_malformed_request_headers() {
    let cors = policy(json!({"allow_origins": APP}));
    let huge = "x-a,".repeat(MAX_REQUEST_HEADERS_LEN / 4 + 1);
    for requested in ["x-a;x-b", "x a", "x-a,\u{fffd}", "\"x-a\"", huge.as_str()] {
        let mut req = preflight(APP, "POST").header("access-control-request-headers", requested);
        assert_refused(&cors.on_request(&mut req), "malformed");
    }
}

#[test]
fn star_headers_reflect_the_requested_names() {
    let cors = policy(json!({"allow_origins": APP, "allow_headers": "*"}));
    let mut req = preflight(APP, "POST").header(
        "access-control-request-headers",
        " X-Custom ,,authorization,\tx-b ",
    );
    let d = cors.on_request(&mut req);
    assert_eq!(d.status(), Some(204));
    assert_eq!(
        d.response_header("access-control-allow-headers"),
        Some("x-custom, authorization, x-b")
    );
    // Nothing requested: nothing to allow.
    let d = cors.on_request(&mut preflight(APP, "POST"));
    assert_eq!(d.status(), Some(204));
    assert_eq!(d.response_header("access-control-allow-headers"), None);
}

#[test]
fn star_methods_reflect_the_requested_method() {
    let cors = policy(json!({"allow_origins": APP, "allow_methods": "*"}));
    let d = cors.on_request(&mut preflight(APP, "PROPFIND"));
    assert_eq!(d.status(), Some(204));
    assert_eq!(
        d.response_header("access-control-allow-methods"),
        Some("PROPFIND")
    );
    assert_refused(&cors.on_request(&mut preflight(APP, "A B")), "method");
}

#[test]
fn defaults() {
    let cors = policy(json!({"allow_origins": [APP]}));
    let mut req = preflight(APP, "PATCH").header("access-control-request-headers", "x-anything");
    let d = cors.on_request(&mut req);
    assert_eq!(
        cors_headers(&d),
        pairs(&[
            ("access-control-allow-origin", APP),
            (
                "access-control-allow-methods",
                "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
            ),
            ("access-control-allow-headers", "x-anything"),
            ("access-control-max-age", "600"),
        ])
    );
    assert_refused(&cors.on_request(&mut preflight(APP, "TRACE")), "method");
}

#[test]
fn plain_options_is_not_a_preflight() {
    let cors = example();
    // No Access-Control-Request-Method: an ordinary OPTIONS from an allowed origin.
    let resp = exchange(
        &cors,
        MockRequest::options("/v1/users").header("origin", APP),
        MockResponse::new(200).header("allow", "GET, OPTIONS"),
    );
    // OPTIONS is not in this policy's allow_methods: no CORS headers.
    assert!(!resp.headers().contains("access-control-allow-origin"));
    assert_eq!(resp.headers().get("allow").as_deref(), Some("GET, OPTIONS"));
    // No Origin: not a preflight either, whatever else it carries.
    let mut req = MockRequest::options("/").header("access-control-request-method", "GET");
    assert!(cors.on_request(&mut req).is_continue());

    let all = policy(json!({"allow_origins": APP}));
    let resp = exchange(
        &all,
        MockRequest::options("/").header("origin", APP),
        MockResponse::new(204),
    );
    assert_eq!(
        resp.headers().get("access-control-allow-origin").as_deref(),
        Some(APP)
    );
}

#[test]
fn allowed_request_gets_the_cors_headers_and_vary() {
    let resp = exchange(
        &example(),
        MockRequest::post("/v1/users").header("origin", "https://a.b.example.com"),
        MockResponse::new(201).header("content-type", "application/json"),
    );
    let h = resp.headers();
    assert_eq!(
        h.get("access-control-allow-origin").as_deref(),
        Some("https://a.b.example.com")
    );
    assert_eq!(
        h.get("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(
        h.get("access-control-expose-headers").as_deref(),
        Some("x-request-id, x-total")
    );
    assert_eq!(h.get_all("vary"), vec!["Origin"]);
    // Preflight-only headers never go on an actual response.
    assert!(!h.contains("access-control-allow-methods"));
    assert!(!h.contains("access-control-max-age"));
}

#[test]
fn refused_or_absent_origin_goes_upstream_without_cors_headers_but_with_vary() {
    let cors = example();
    for req in [
        MockRequest::get("/").header("origin", "https://evil.com"),
        MockRequest::get("/").header("origin", "null"),
        MockRequest::get("/"),
        // Allowed origin, method not in allow_methods.
        MockRequest::delete("/").header("origin", APP),
    ] {
        let resp = exchange(&cors, req, MockResponse::new(200));
        assert_eq!(
            resp.headers().pairs(),
            pairs(&[("vary", "Origin")]),
            "{resp:?}"
        );
    }
}

#[test]
fn star_origins_answer_star_everywhere_without_vary() {
    let cors = policy(json!({"allow_origins": "*", "expose_headers": "*"}));
    for req in [
        MockRequest::get("/").header("origin", "https://anyone.test"),
        MockRequest::get("/").header("origin", "null"),
        MockRequest::get("/"),
    ] {
        let resp = exchange(&cors, req, MockResponse::new(200));
        assert_eq!(
            resp.headers().pairs(),
            pairs(&[
                ("access-control-allow-origin", "*"),
                ("access-control-expose-headers", "*"),
            ])
        );
    }
    let d = cors.on_request(&mut preflight("null", "GET"));
    assert_eq!(d.status(), Some(204));
    assert_eq!(d.response_header("access-control-allow-origin"), Some("*"));
    assert_eq!(d.response_header("access-control-allow-credentials"), None);
}

#[test]
fn vary_is_appended_never_clobbered_nor_repeated() {
    let cors = example();
    let req = || MockRequest::get("/").header("origin", APP);
    let resp = exchange(
        &cors,
        req(),
        MockResponse::new(200).header("vary", "Accept-Encoding"),
    );
    assert_eq!(
        resp.headers().get_all("vary"),
        vec!["Accept-Encoding", "Origin"]
    );
    for existing in ["accept, ORIGIN", "*", "accept,origin"] {
        let resp = exchange(
            &cors,
            req(),
            MockResponse::new(200).header("vary", existing),
        );
        assert_eq!(resp.headers().get_all("vary"), vec![existing]);
    }
    // `Origin` inside another token is not `Origin`.
    let resp = exchange(
        &cors,
        req(),
        MockResponse::new(200).header("vary", "x-origin"),
    );
    assert_eq!(resp.headers().get_all("vary"), vec!["x-origin", "Origin"]);
}

#[test]
fn upstream_cors_headers_are_replaced_or_removed() {
    let cors = example();
    let upstream = || {
        MockResponse::new(200)
            .header("Access-Control-Allow-Origin", "*")
            .header("access-control-allow-origin", "https://other.test")
            .header("access-control-allow-methods", "*")
            .header("access-control-max-age", "99999")
            .header("x-keep", "1")
    };
    let resp = exchange(
        &cors,
        MockRequest::get("/").header("origin", APP),
        upstream(),
    );
    assert_eq!(
        resp.headers().pairs(),
        pairs(&[
            ("x-keep", "1"),
            ("access-control-allow-origin", APP),
            ("access-control-allow-credentials", "true"),
            ("access-control-expose-headers", "x-request-id, x-total"),
            ("vary", "Origin"),
        ])
    );
    let resp = exchange(
        &cors,
        MockRequest::get("/").header("origin", "https://evil.com"),
        upstream(),
    );
    assert_eq!(
        resp.headers().pairs(),
        pairs(&[("x-keep", "1"), ("vary", "Origin")])
    );
}

#[test]
fn wildcard_matching() {
    let cors =
        policy(json!({"allow_origins": ["https://*.example.com", "http://*.dev.test:8080"]}));
    for origin in [
        "https://a.example.com",
        "https://a.b.example.com",
        "https://A.EXAMPLE.COM",
        "HTTPS://x-y.example.com",
        "https://a.example.com:443",
        "http://api.dev.test:8080",
    ] {
        assert!(allowed(&cors, origin), "{origin} should be allowed");
    }
    for origin in [
        "https://example.com",
        "https://.example.com",
        "https://evil-example.com",
        "https://evilexample.com",
        "https://example.com.evil.com",
        "https://a.example.com.evil.com",
        "https://a.example.com.",
        "https://a.example.com:8443",
        "http://a.example.com",
        "https://*.example.com",
        "https://a.example.com/",
        "https://a.example.com/path",
        "https://user@a.example.com",
        "https://a.example.com@evil.com",
        "https://evil.com#.example.com",
        "https://evil.com?.example.com",
        "https://a..example.com",
        "https://a.example.com\u{0}",
        "https://a b.example.com",
        "https://ä.example.com",
        "http://api.dev.test",
        "http://api.dev.test:80",
        "https://a.example.com, https://b.example.com",
        "a.example.com",
        "null",
    ] {
        assert!(!allowed(&cors, origin), "{origin} should be refused");
    }
}

#[test]
fn exact_matching_with_ports_and_ipv6() {
    let cors = policy(json!({"allow_origins": [
        "http://localhost:3000", "https://app.example.com:443", "http://[::1]:8080", "app-scheme://local"
    ]}));
    for origin in [
        "http://localhost:3000",
        "https://app.example.com",
        "http://[::1]:8080",
        "http://[0:0::1]:8080",
        "APP-SCHEME://LOCAL",
    ] {
        assert!(allowed(&cors, origin), "{origin} should be allowed");
    }
    for origin in [
        "http://localhost",
        "http://localhost:3001",
        "http://localhost:03000x",
        "http://localhost:+3000",
        "https://localhost:3000",
        "http://[::1]",
        "http://[::2]:8080",
        "http://[::1:8080",
        "https://app.example.co",
        "https://app.example.com.",
        "https://papp.example.com",
    ] {
        assert!(!allowed(&cors, origin), "{origin} should be refused");
    }
}

#[test]
fn credentials_off_sends_no_credentials_header() {
    let cors = policy(json!({"allow_origins": APP}));
    let resp = exchange(
        &cors,
        MockRequest::get("/").header("origin", APP),
        MockResponse::new(200),
    );
    assert_eq!(
        resp.headers().pairs(),
        pairs(&[("access-control-allow-origin", APP), ("vary", "Origin")])
    );
    let d = cors.on_request(&mut preflight(APP, "GET"));
    assert_eq!(d.response_header("access-control-allow-credentials"), None);
}

#[test]
fn config_errors_name_the_key() {
    let cases = [
        (json!({}), "missing field `allow_origins`"),
        (json!({"allow_origins": []}), "allow_origins: empty"),
        (
            json!({"allow_origins": APP, "origins": []}),
            "unknown field `origins`",
        ),
        (json!({"allow_origins": 3}), "a string or a list of strings"),
        (
            json!({"allow_origins": "*", "allow_credentials": true}),
            "allow_credentials = true cannot be used with allow_origins = \"*\"",
        ),
        (
            json!({"allow_origins": ["*", APP]}),
            "allow_origins: `*` allows every origin",
        ),
        (
            json!({"allow_origins": ["null"]}),
            "allow_origins[0]: `null`",
        ),
        (
            json!({"allow_origins": [APP, "app.example.com"]}),
            "allow_origins[1]: `app.example.com` is not an origin",
        ),
        (
            json!({"allow_origins": ["https://a.com/"]}),
            "allow_origins[0]: `https://a.com/` has a path",
        ),
        (json!({"allow_origins": ["https://a.com/x"]}), "has a path"),
        (
            json!({"allow_origins": ["https://u@a.com"]}),
            "has user info",
        ),
        (
            json!({"allow_origins": ["https://a.com:0"]}),
            "invalid port `0`",
        ),
        (
            json!({"allow_origins": ["https://a.com:99999"]}),
            "invalid port `99999`",
        ),
        (
            json!({"allow_origins": ["https://a.com:"]}),
            "invalid port ``",
        ),
        (
            json!({"allow_origins": ["1https://a.com"]}),
            "invalid scheme",
        ),
        (json!({"allow_origins": ["://a.com"]}), "invalid scheme"),
        (json!({"allow_origins": ["https://"]}), "invalid host"),
        (json!({"allow_origins": ["https://a.com."]}), "invalid host"),
        (json!({"allow_origins": ["https://bücher.de"]}), "punycode"),
        (json!({"allow_origins": ["https://[::g]"]}), "invalid IPv6"),
        (json!({"allow_origins": ["https://[::1"]}), "unclosed"),
        (json!({"allow_origins": ["https://[::1]x"]}), "junk after"),
        (
            json!({"allow_origins": ["https://*.com"]}),
            "top-level domain",
        ),
        (
            json!({"allow_origins": ["https://a.*.example.com"]}),
            "whole first label",
        ),
        (
            json!({"allow_origins": ["https://*example.com"]}),
            "whole first label",
        ),
        (json!({"allow_origins": ["*.example.com"]}), "not an origin"),
        (
            json!({"allow_origins": [APP, "https://APP.example.com:443"]}),
            "allow_origins[1]: `https://APP.example.com:443` is given twice",
        ),
        (
            json!({"allow_origins": ["https://*.a.com", "https://*.A.com"]}),
            "allow_origins[1]: `https://*.A.com` is given twice",
        ),
        (
            json!({"allow_origins": APP, "allow_methods": []}),
            "allow_methods: empty",
        ),
        (
            json!({"allow_origins": APP, "allow_methods": ["GET", "*"]}),
            "allow_methods: `*` allows everything",
        ),
        (
            json!({"allow_origins": APP, "allow_methods": ["GE T"]}),
            "allow_methods: `GE T` is not a valid name",
        ),
        (
            json!({"allow_origins": APP, "allow_methods": ["get"]}),
            "allow_methods: `get`: methods are case-sensitive and browsers send `GET`",
        ),
        (
            json!({"allow_origins": APP, "allow_methods": ["GET", "GET"]}),
            "allow_methods: `GET` is given twice",
        ),
        (
            json!({"allow_origins": APP, "allow_headers": ["x-a", "X-A"]}),
            "allow_headers: `x-a` is given twice",
        ),
        (
            json!({"allow_origins": APP, "allow_headers": ["x:a"]}),
            "allow_headers: `x:a` is not a valid name",
        ),
        (
            json!({"allow_origins": APP, "allow_headers": [""]}),
            "allow_headers: `` is not a valid name",
        ),
        (
            json!({"allow_origins": APP, "expose_headers": ["x\na"]}),
            "expose_headers: `x\na` is not a valid name",
        ),
        (
            json!({"allow_origins": APP, "expose_headers": "*", "allow_credentials": true}),
            "expose_headers: `*` is a literal header name",
        ),
        (
            json!({"allow_origins": APP, "max_age": 86401}),
            "max_age: 86401 is above 86400",
        ),
        (
            json!({"allow_origins": APP, "max_age": -1}),
            "invalid value",
        ),
    ];
    for (config, expected) in cases {
        let err = error(config.clone());
        assert!(
            err.contains(expected),
            "{config}: {err:?} lacks {expected:?}"
        );
    }
}

#[test]
fn every_config_error_is_reported_at_once() {
    let err = error(json!({
        "allow_origins": ["https://a.com/", "null"],
        "allow_methods": ["get"],
        "max_age": 100000,
    }));
    for part in [
        "allow_origins[0]",
        "allow_origins[1]",
        "allow_methods",
        "max_age",
    ] {
        assert!(err.contains(part), "{err} lacks {part}");
    }
}

#[test]
fn lower_case_patch_is_a_distinct_method() {
    let cors = policy(json!({"allow_origins": APP, "allow_methods": ["patch", "PATCH"]}));
    assert_eq!(
        cors.on_request(&mut preflight(APP, "patch")).status(),
        Some(204)
    );
    assert_eq!(
        cors.on_request(&mut preflight(APP, "PATCH")).status(),
        Some(204)
    );
    assert_refused(&cors.on_request(&mut preflight(APP, "Patch")), "method");
}
