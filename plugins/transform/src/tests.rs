use super::*;
use serde_json::json;
use weir_plugin_sdk::testing::{self, MockRequest, MockResponse};

fn policy(config: serde_json::Value) -> Transform {
    testing::load(&config.to_string()).unwrap_or_else(|e| panic!("{e}"))
}

fn error(config: serde_json::Value) -> String {
    match testing::load::<Transform>(&config.to_string()) {
        Ok(t) => panic!("config accepted: {t:?}"),
        Err(e) => e,
    }
}

/// Runs the request hook, checks it continued and nothing was refused.
fn run(t: &Transform, mut req: MockRequest) -> MockRequest {
    assert!(t.on_request(&mut req).is_continue());
    assert!(req.refused().is_empty(), "{:?}", req.refused());
    req
}

fn path_after(rewrite: serde_json::Value, target: &str) -> String {
    let t = policy(json!({"request": {"path": rewrite}}));
    run(&t, MockRequest::get(target)).target().to_string()
}

fn query_after(ops: serde_json::Value, target: &str) -> String {
    let t = policy(json!({"request": {"query": ops}}));
    run(&t, MockRequest::get(target)).target().to_string()
}

#[test]
fn request_header_add_keeps_existing_values() {
    let t = policy(json!({"request": {"headers": {"add": {"X-Tag": ["a", "b"], "x-one": "1"}}}}));
    let req = run(&t, MockRequest::get("/").header("x-tag", "old"));
    assert_eq!(req.headers().get_all("x-tag"), vec!["old", "a", "b"]);
    assert_eq!(req.headers().get("x-one").as_deref(), Some("1"));
}

#[test]
fn request_header_set_replaces_every_value() {
    let t = policy(json!({"request": {"headers": {"set": {"x-gateway": "weir"}}}}));
    let req = run(
        &t,
        MockRequest::get("/")
            .header("x-gateway", "a")
            .header("X-Gateway", "b"),
    );
    assert_eq!(req.headers().get_all("x-gateway"), vec!["weir"]);
    let req = run(&t, MockRequest::get("/"));
    assert_eq!(req.headers().get("x-gateway").as_deref(), Some("weir"));
}

#[test]
fn request_header_remove() {
    let t = policy(json!({"request": {"headers": {"remove": ["X-Debug", "x-absent"]}}}));
    let req = run(
        &t,
        MockRequest::get("/")
            .header("x-debug", "1")
            .header("x-debug", "2")
            .header("x-keep", "k"),
    );
    assert!(!req.headers().contains("x-debug"));
    assert_eq!(req.headers().get("x-keep").as_deref(), Some("k"));
}

#[test]
fn request_header_rename_moves_every_value_and_skips_absent() {
    let t = policy(json!({"request": {"headers": {"rename": {"x-user": "X-Upstream-User"}}}}));
    let req = run(
        &t,
        MockRequest::get("/")
            .header("x-user", "a")
            .header("x-user", "b")
            .header("x-upstream-user", "spoofed"),
    );
    assert!(!req.headers().contains("x-user"));
    assert_eq!(req.headers().get_all("x-upstream-user"), vec!["a", "b"]);

    let req = run(&t, MockRequest::get("/").header("x-upstream-user", "kept"));
    assert_eq!(req.headers().get_all("x-upstream-user"), vec!["kept"]);
}

#[test]
fn header_operations_run_remove_rename_set_add() {
    let t = policy(json!({"request": {"headers": {
        "add": {"x-b": "added"},
        "set": {"x-b": "set"},
        "rename": {"x-a": "x-b"},
        "remove": ["x-b"],
    }}}));
    // remove x-b, rename x-a -> x-b, set x-b (replaces the renamed value), add x-b.
    let req = run(
        &t,
        MockRequest::get("/").header("x-a", "a").header("x-b", "b"),
    );
    assert_eq!(req.headers().get_all("x-b"), vec!["set", "added"]);
    assert!(!req.headers().contains("x-a"));
}

#[test]
fn response_headers() {
    let t = policy(json!({"response": {"headers": {
        "remove": ["server"],
        "rename": {"x-upstream-time": "x-time"},
        "set": {"cache-control": "no-store"},
        "add": {"vary": "origin"},
    }}}));
    let req = run(&t, MockRequest::get("/"));
    let mut resp = MockResponse::new(200)
        .header("Server", "nginx")
        .header("x-upstream-time", "12")
        .header("cache-control", "max-age=60")
        .header("vary", "accept");
    assert!(t.on_response(&req, &mut resp).is_continue());
    assert!(resp.refused().is_empty(), "{:?}", resp.refused());
    assert!(!resp.headers().contains("server"));
    assert_eq!(resp.headers().get("x-time").as_deref(), Some("12"));
    assert_eq!(resp.headers().get_all("cache-control"), vec!["no-store"]);
    assert_eq!(resp.headers().get_all("vary"), vec!["accept", "origin"]);
}

#[test]
fn request_only_config_leaves_the_response_alone() {
    let t = policy(json!({"request": {"headers": {"set": {"x-a": "1"}}}}));
    let mut resp = MockResponse::new(200).header("server", "s");
    assert!(t
        .on_response(&MockRequest::get("/"), &mut resp)
        .is_continue());
    assert_eq!(
        resp.headers().pairs(),
        vec![("server".to_string(), "s".to_string())]
    );
}

#[test]
fn path_set_keeps_the_query() {
    assert_eq!(
        path_after(json!({"set": "/health"}), "/anything/else?x=1"),
        "/health?x=1"
    );
    assert_eq!(path_after(json!({"set": "/health"}), "/health"), "/health");
}

#[test]
fn path_strip_prefix_matches_whole_segments() {
    let strip = json!({"strip_prefix": "/api/"});
    assert_eq!(path_after(strip.clone(), "/api/users?x=1"), "/users?x=1");
    assert_eq!(path_after(strip.clone(), "/api"), "/");
    assert_eq!(path_after(strip.clone(), "/api/"), "/");
    assert_eq!(path_after(strip.clone(), "/apiary"), "/apiary");
    assert_eq!(path_after(strip, "/v1/api"), "/v1/api");
}

#[test]
fn path_add_prefix() {
    assert_eq!(
        path_after(json!({"add_prefix": "/v2"}), "/users?a=b"),
        "/v2/users?a=b"
    );
    assert_eq!(path_after(json!({"add_prefix": "/v2/"}), "/"), "/v2/");
}

#[test]
fn path_replace_prefix() {
    let r = json!({"replace_prefix": {"from": "/v1", "to": "/api/v1"}});
    assert_eq!(path_after(r.clone(), "/v1/users"), "/api/v1/users");
    assert_eq!(path_after(r.clone(), "/v1"), "/api/v1");
    assert_eq!(path_after(r.clone(), "/v10/users"), "/v10/users");
    assert_eq!(path_after(r, "/v2/users"), "/v2/users");
    let to_root = json!({"replace_prefix": {"from": "/old", "to": "/"}});
    assert_eq!(path_after(to_root.clone(), "/old/x"), "/x");
    assert_eq!(path_after(to_root, "/old"), "/");
}

#[test]
fn query_add_appends_encoded() {
    assert_eq!(
        query_after(
            json!({"add": {"source": "weir", "tag": ["a b", "c&d"]}}),
            "/p?x=1"
        ),
        "/p?x=1&source=weir&tag=a%20b&tag=c%26d"
    );
    assert_eq!(query_after(json!({"add": {"a": "1"}}), "/p"), "/p?a=1");
}

#[test]
fn query_remove_drops_every_occurrence_and_keeps_the_rest_verbatim() {
    assert_eq!(
        query_after(
            json!({"remove": ["token", "api key"]}),
            "/p?token=s&a=%2F&token=t&api+key=k&b"
        ),
        "/p?a=%2F&b"
    );
    assert_eq!(
        query_after(json!({"remove": ["token"]}), "/p?token=s"),
        "/p"
    );
    assert_eq!(
        query_after(json!({"remove": ["token"]}), "/p?x=1"),
        "/p?x=1"
    );
    assert_eq!(query_after(json!({"remove": ["token"]}), "/p"), "/p");
}

#[test]
fn query_set_replaces() {
    assert_eq!(
        query_after(
            json!({"set": {"page": "1"}, "add": {"z": "9"}}),
            "/p?page=3&a=1&page=4"
        ),
        "/p?a=1&page=1&z=9"
    );
}

#[test]
fn request_path_and_query_together() {
    let t = policy(json!({"request": {
        "path": {"strip_prefix": "/api"},
        "query": {"remove": ["key"], "add": {"via": "weir"}},
        "headers": {"set": {"x-a": "1"}},
    }}));
    let req = run(&t, MockRequest::get("/api/users?key=s&page=2"));
    assert_eq!(req.target(), "/users?page=2&via=weir");
    assert_eq!(req.headers().get("x-a").as_deref(), Some("1"));
}

#[test]
fn toml_shaped_config_from_the_docs_loads() {
    policy(json!({
        "request": {
            "headers": {"set": {"x-gateway": "weir"}, "remove": ["x-debug"],
                        "rename": {"x-user": "x-upstream-user"}, "add": {"x-tag": ["a", "b"]}},
            "path": {"replace_prefix": {"from": "/v1", "to": "/api/v1"}},
            "query": {"add": {"source": "weir"}, "remove": ["token"]},
        },
        "response": {"headers": {"remove": ["server"], "set": {"cache-control": "no-store"}}},
    }));
}

#[test]
fn config_errors() {
    let cases: &[(serde_json::Value, &str)] = &[
        (json!({}), "nothing to transform"),
        (json!(null), "nothing to transform"),
        (json!({"requests": {}}), "unknown field `requests`, expected `request` or `response`"),
        (json!({"request": {"header": {}}}), "unknown field `header`"),
        (json!({"request": {"headers": {"append": {}}}}), "unknown field `append`"),
        (json!({"response": {"path": {"set": "/"}}}), "unknown field `path`, expected `headers`"),
        (json!({"request": {"headers": {"set": {"x": 1}}}}), "invalid type: integer `1`, expected a string"),
        (json!({"request": {"headers": {"add": {"x": 1}}}}), "a string or a list of strings"),
        (json!({"request": {"headers": {"add": {"x": []}}}}), "request.headers.add: `x` has an empty list"),
        (json!({"request": {"headers": {"set": {"host": "a"}}}}), "request.headers.set: `host` cannot be changed"),
        (json!({"request": {"headers": {"remove": ["Content-Length"]}}}), "request.headers.remove: `content-length` cannot be changed"),
        (json!({"response": {"headers": {"set": {":status": "200"}}}}), "response.headers.set: `:status` is a pseudo-header"),
        (json!({"request": {"headers": {"set": {"bad name": "a"}}}}), "`bad name` is not a valid header name"),
        (json!({"request": {"headers": {"set": {"x-a": "a\r\nx-b: b"}}}}), "contains CR, LF or NUL"),
        (json!({"request": {"headers": {"rename": {"x-a": "x-a"}}}}), "renamed to itself"),
        (json!({"request": {"headers": {"rename": {"x-a": "x-b", "x-b": "x-c"}}}}), "chains are ambiguous"),
        (json!({"request": {"headers": {"rename": {"x-a": "x-c", "x-b": "X-C"}}}}), "two headers are renamed to `x-c`"),
        (json!({"request": {"headers": {"set": {"x-a": "1", "X-A": "2"}}}}), "request.headers.set: `x-a` is given twice"),
        (json!({"request": {"path": {"set": "health"}}}), "request.path.set: path `health` does not start with `/`"),
        (json!({"request": {"path": {"set": "/a?b"}}}), "contains '?'"),
        (json!({"request": {"path": {"strip_prefix": "/"}}}), "would strip nothing"),
        (json!({"request": {"path": {"add_prefix": "/"}}}), "would add nothing"),
        (json!({"request": {"path": {"replace_prefix": {"from": "/", "to": "/x"}}}}), "matches every path"),
        (json!({"request": {"path": {"replace_prefix": {"from": "/a"}}}}), "missing field `to`"),
        (json!({"request": {"path": {"replace_prefix": {"from": "/a", "to": "/b", "x": 1}}}}), "unknown field `x`"),
        (json!({"request": {"path": {"regex": "^/a"}}}), "unknown field `regex`, expected one of `set`, `strip_prefix`, `add_prefix`, `replace_prefix`"),
        (json!({"request": {"path": {"set": "/a", "add_prefix": "/b"}}}), "request.path: give exactly one of `set`, `strip_prefix`, `add_prefix`, `replace_prefix` (got set, add_prefix)"),
        (json!({"request": {"path": {}}}), "request.path: give exactly one of `set`, `strip_prefix`, `add_prefix`, `replace_prefix` (got none)"),
        (json!({"request": {"query": {"remove": [""]}}}), "request.query.remove: an empty parameter name"),
        (json!({"request": {"query": {"remove": ["a"], "set": {"a": "1"}}}}), "`a` is both removed and set"),
    ];
    for (config, want) in cases {
        let got = error(config.clone());
        assert!(
            got.contains(want),
            "config {config}\n  error: {got}\n  wanted: {want}"
        );
    }
}

#[test]
fn every_config_error_is_reported_at_once() {
    let e = error(json!({"request": {
        "headers": {"set": {"host": "a"}},
        "path": {"set": "nope"},
    }}));
    assert!(
        e.contains("request.headers.set") && e.contains("request.path.set"),
        "{e}"
    );
}

#[test]
fn the_response_hook_is_declared_used_only_with_response_edits() {
    let request_only = policy(json!({"request": {"headers": {"set": {"x-a": "1"}}}}));
    assert!(!request_only.uses_response());
    // What Weir then skips changes nothing.
    let mut resp = MockResponse::new(200).header("x-a", "up");
    assert!(request_only
        .on_response(&MockRequest::get("/"), &mut resp)
        .is_continue());
    assert_eq!(
        resp.headers().pairs(),
        [("x-a".to_string(), "up".to_string())]
    );
    let both = policy(json!({"response": {"headers": {"set": {"x-a": "1"}}}}));
    assert!(both.uses_response());
}
