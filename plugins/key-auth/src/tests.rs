use super::*;
use serde_json::json;
use std::cell::RefCell;
use weir_plugin_sdk::metrics;
use weir_plugin_sdk::testing::{self, MockRequest};

/// SHA-256 of `test` (`printf %s test | sha256sum`).
const TEST_HASH: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn policy(config: serde_json::Value) -> KeyAuth {
    testing::load(&config.to_string()).unwrap_or_else(|e| panic!("{e}"))
}

fn error(config: serde_json::Value) -> String {
    match testing::load::<KeyAuth>(&config.to_string()) {
        Ok(_) => panic!("config accepted: {config}"),
        Err(e) => e,
    }
}

/// alice has a plain key, bob a hashed one (`test`); the key may come in `api_key`.
fn standard() -> KeyAuth {
    policy(json!({
        "query": "api_key",
        "consumers": [
            {"name": "alice", "keys": ["alice-key-1", "alice-key-2"]},
            {"name": "bob", "key_hashes": [TEST_HASH]},
        ]
    }))
}

fn one_consumer(key: &str) -> serde_json::Value {
    json!([{"name": "alice", "keys": [key]}])
}

/// Runs the request hook; checks nothing the gateway would refuse was attempted.
fn run(p: &KeyAuth, req: &mut MockRequest) -> Decision {
    let d = p.on_request(req);
    assert!(req.refused().is_empty(), "{:?}", req.refused());
    d
}

/// Runs a request that must pass, and returns it as it goes upstream.
fn pass(p: &KeyAuth, mut req: MockRequest) -> MockRequest {
    let d = run(p, &mut req);
    assert!(d.is_continue(), "{:?}", d.body_json());
    req
}

/// Runs a request that must be refused with 401; returns the message.
fn refuse(p: &KeyAuth, mut req: MockRequest) -> String {
    let d = run(p, &mut req);
    assert_eq!(d.status(), Some(401));
    assert_eq!(req.consumer(), None);
    assert!(!req.headers().contains(CONSUMER_HEADER));
    let body = d.body_json().unwrap();
    assert_eq!(body["error"], "unauthorized");
    body["message"].as_str().unwrap().to_string()
}

const MISSING: &str =
    "no API key: send it in the `x-api-key` header or the `api_key` query parameter";
const INVALID: &str = "invalid API key";

// --- config ---

#[test]
fn defaults() {
    let p = policy(json!({"consumers": one_consumer("k")}));
    assert_eq!(p.header, "x-api-key");
    assert_eq!(p.query, None);
    assert!(p.hide_credentials);
    let req = pass(&p, MockRequest::get("/").header("x-api-key", "k"));
    assert!(!req.headers().contains("x-api-key"));
}

#[test]
fn unknown_keys_are_refused() {
    let err = error(json!({"headr": "x", "consumers": one_consumer("k")}));
    assert!(err.contains("unknown field `headr`"), "{err}");
    let err = error(json!({"consumers": [{"name": "a", "key": "k"}]}));
    assert!(err.contains("unknown field `key`"), "{err}");
}

#[test]
fn no_consumers_is_an_error() {
    for config in [json!({}), json!({"consumers": []}), json!(null)] {
        let err = error(config);
        assert_eq!(err, "consumers: give at least one consumer with a key");
    }
}

#[test]
fn header_must_be_writable_and_not_x_consumer() {
    let c = one_consumer("k");
    let err = error(json!({"header": "bad header", "consumers": c}));
    assert!(
        err.starts_with("header: `bad header` is not a valid header name"),
        "{err}"
    );
    let err = error(json!({"header": "", "consumers": c}));
    assert!(err.starts_with("header: "), "{err}");
    let err = error(json!({"header": "Host", "consumers": c}));
    assert!(err.starts_with("header: `host` cannot be changed"), "{err}");
    let err = error(json!({"header": ":path", "consumers": c}));
    assert!(
        err.starts_with("header: `:path` is a pseudo-header"),
        "{err}"
    );
    let err = error(json!({"header": "X-Consumer", "consumers": c}));
    assert_eq!(
        err,
        "header: `x-consumer` is the header this plugin sets for the upstream"
    );
}

#[test]
fn query_must_be_a_plain_name() {
    for bad in ["", "api key", "a=b", "a&b", "ключ", "a\n"] {
        let err = error(json!({"query": bad, "consumers": one_consumer("k")}));
        assert!(err.starts_with("query: `"), "{err}");
        assert!(err.ends_with("is not a plain parameter name (letters, digits and -._~)"));
    }
    policy(json!({"query": "api-key.v1_~", "consumers": one_consumer("k")}));
}

#[test]
fn consumer_names_are_checked() {
    let cases = [
        ("", "consumers[0].name: empty"),
        (
            "al ice",
            "consumers[0].name: `al ice` has a character outside visible ASCII",
        ),
        (
            "al\nice",
            "consumers[0].name: `al\\nice` has a character outside visible ASCII",
        ),
        (
            "zoë",
            "consumers[0].name: `zoë` has a character outside visible ASCII",
        ),
    ];
    for (name, expected) in cases {
        let err = error(json!({"consumers": [{"name": name, "keys": ["k"]}]}));
        assert!(err.starts_with(expected), "{err}");
    }
    let long = "a".repeat(MAX_NAME_LEN + 1);
    let err = error(json!({"consumers": [{"name": long, "keys": ["k"]}]}));
    assert_eq!(err, "consumers[0].name: longer than 256 bytes");
    policy(json!({"consumers": [{"name": "a".repeat(MAX_NAME_LEN), "keys": ["k"]}]}));
}

#[test]
fn duplicate_consumer_names() {
    let err = error(json!({"consumers": [
        {"name": "alice", "keys": ["k1"]},
        {"name": "bob", "keys": ["k2"]},
        {"name": "alice", "keys": ["k3"]},
    ]}));
    assert_eq!(
        err,
        "consumers[2].name: `alice` is also the name of consumers[0]"
    );
}

#[test]
fn a_consumer_needs_a_key() {
    for consumer in [
        json!({"name": "alice"}),
        json!({"name": "alice", "keys": [], "key_hashes": []}),
    ] {
        let err = error(json!({"consumers": [consumer]}));
        assert_eq!(err, "consumers[0]: no key: give `keys` or `key_hashes`");
    }
}

#[test]
fn bad_plain_keys_are_refused_without_echoing_them() {
    let long = "k".repeat(MAX_KEY_LEN + 1);
    let cases = [
        ("", "consumers[0].keys[0]: empty key"),
        (long.as_str(), "consumers[0].keys[0]: key longer than 1024 bytes"),
        (
            "sec ret",
            "consumers[0].keys[0]: key has a character outside visible ASCII (no spaces or control characters)",
        ),
        (
            "sec\tret",
            "consumers[0].keys[0]: key has a character outside visible ASCII (no spaces or control characters)",
        ),
        (
            "sécret",
            "consumers[0].keys[0]: key has a character outside visible ASCII (no spaces or control characters)",
        ),
    ];
    for (key, expected) in cases {
        assert_eq!(error(json!({"consumers": one_consumer(key)})), expected);
    }
    let at_limit = "k".repeat(MAX_KEY_LEN);
    let p = policy(json!({"consumers": one_consumer(&at_limit)}));
    pass(&p, MockRequest::get("/").header("x-api-key", &at_limit));
}

#[test]
fn bad_hashes_are_refused() {
    let hex = &TEST_HASH["sha256:".len()..];
    let cases = [
        (hex.to_string(), "(no `sha256:` prefix)"),
        (format!("SHA256:{hex}"), "(no `sha256:` prefix)"),
        (format!("sha256:{}", &hex[..63]), "(got 63 characters)"),
        (format!("sha256:{hex}0"), "(got 65 characters)"),
        ("sha256:".to_string(), "(got 0 characters)"),
        (format!("sha256:{}g", &hex[..63]), "(not hex)"),
        // from_str_radix would take a sign: not hex.
        (format!("sha256:+{}", &hex[..63]), "(not hex)"),
        (format!("sha256:{}é", &hex[..63]), "(not hex)"),
    ];
    for (hash, why) in cases {
        let err = error(json!({"consumers": [{"name": "a", "key_hashes": [hash]}]}));
        assert_eq!(
            err,
            format!(
                "consumers[0].key_hashes[0]: expected `sha256:` followed by 64 hex digits {why}"
            )
        );
    }
}

#[test]
fn the_same_key_twice_is_refused_wherever_it_is() {
    // Two consumers, plain.
    let err = error(json!({"consumers": [
        {"name": "a", "keys": ["k1"]},
        {"name": "b", "keys": ["k2", "k1"]},
    ]}));
    assert_eq!(
        err,
        "consumers[1].keys[1]: the same key as consumers[0].keys[0]"
    );
    // Plain on one, hashed (either case of hex) on another.
    let err = error(json!({"consumers": [
        {"name": "a", "keys": ["test"]},
        {"name": "b", "key_hashes": [TEST_HASH.to_uppercase().replace("SHA256", "sha256")]},
    ]}));
    assert_eq!(
        err,
        "consumers[1].key_hashes[0]: the same key as consumers[0].keys[0]"
    );
    // Twice on one consumer.
    let err = error(json!({"consumers": [
        {"name": "a", "keys": ["test"], "key_hashes": [TEST_HASH]},
    ]}));
    assert_eq!(
        err,
        "consumers[0].key_hashes[0]: the same key as consumers[0].keys[0]"
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let err = error(json!({
        "header": "bad header",
        "query": "a b",
        "consumers": [{"name": "", "keys": [""]}],
    }));
    let parts: Vec<&str> = err.split("; ").collect();
    assert_eq!(parts.len(), 4, "{err}");
    assert!(parts[0].starts_with("header: "));
    assert!(parts[1].starts_with("query: "));
    assert_eq!(parts[2], "consumers[0].name: empty");
    assert_eq!(parts[3], "consumers[0].keys[0]: empty key");
}

#[test]
fn the_documented_config_loads_and_works() {
    let example: String = include_str!("lib.rs")
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .skip_while(|l| *l != "```toml")
        .skip(1)
        .take_while(|l| *l != "```")
        .map(|l| format!("{l}\n"))
        .collect();
    // What the gateway's ${ENV} substitution does.
    let example = example.replace("${ALICE_API_KEY}", "alice-secret");
    let file: toml::Value = toml::from_str(&example).unwrap();
    let p = policy(serde_json::to_value(&file["plugins"][0]["config"]).unwrap());
    let req = pass(&p, MockRequest::get("/?api_key=alice-secret"));
    assert_eq!(req.consumer(), Some("alice"));
    let req = pass(&p, MockRequest::get("/").header("x-api-key", "test"));
    assert_eq!(req.consumer(), Some("billing-batch"));
}

// --- requests ---

#[test]
fn a_header_key_names_the_consumer() {
    let p = standard();
    let req = pass(
        &p,
        MockRequest::get("/v1/users?x=1")
            .header("x-api-key", "alice-key-2")
            .header("accept", "*/*"),
    );
    assert_eq!(req.consumer(), Some("alice"));
    assert_eq!(req.property("weir.consumer"), Some(&b"alice"[..]));
    assert_eq!(req.headers().get_all(CONSUMER_HEADER), vec!["alice"]);
    assert!(!req.headers().contains("x-api-key"));
    assert_eq!(req.headers().get("accept").as_deref(), Some("*/*"));
    assert_eq!(req.target(), "/v1/users?x=1");
}

#[test]
fn the_header_name_is_case_insensitive() {
    let p = policy(json!({"header": "X-Auth-Token", "consumers": one_consumer("k")}));
    let req = pass(&p, MockRequest::get("/").header("X-AUTH-TOKEN", "k"));
    assert_eq!(req.consumer(), Some("alice"));
    assert!(!req.headers().contains("x-auth-token"));
    let msg = refuse(&p, MockRequest::get("/").header("x-api-key", "k"));
    assert_eq!(msg, "no API key: send it in the `x-auth-token` header");
}

#[test]
fn a_query_key_is_removed_and_other_parameters_kept() {
    let p = standard();
    let req = pass(
        &p,
        MockRequest::get("/v1?a=1&api_key=alice-key-1&b=x%20y&api_key=other&c"),
    );
    assert_eq!(req.consumer(), Some("alice"));
    assert_eq!(req.target(), "/v1?a=1&b=x%20y&c");
    let req = pass(&p, MockRequest::get("/v1?api_key=alice-key-1"));
    assert_eq!(req.target(), "/v1");
}

#[test]
fn the_query_is_not_read_unless_configured() {
    let p = policy(json!({"consumers": one_consumer("k")}));
    let mut req = MockRequest::get("/?api_key=k");
    let msg = refuse(&p, req.clone());
    assert_eq!(msg, "no API key: send it in the `x-api-key` header");
    // Nor touched when hiding credentials.
    req = req.header("x-api-key", "k");
    assert_eq!(pass(&p, req).target(), "/?api_key=k");
}

#[test]
fn query_keys_are_percent_decoded() {
    let p = policy(json!({"query": "api_key", "consumers": one_consumer("a+b/c=")}));
    let req = pass(&p, MockRequest::get("/?api_key=a%2Bb%2Fc%3D"));
    assert_eq!(req.consumer(), Some("alice"));
    // `+` is a space in a query: not the key.
    assert_eq!(refuse(&p, MockRequest::get("/?api_key=a+b/c=")), INVALID);
    let req = pass(&p, MockRequest::get("/").header("x-api-key", "a+b/c="));
    assert_eq!(req.consumer(), Some("alice"));
}

#[test]
fn the_header_wins_over_the_query() {
    let p = standard();
    // A wrong header is not rescued by a right query parameter.
    let msg = refuse(
        &p,
        MockRequest::get("/?api_key=alice-key-1").header("x-api-key", "wrong"),
    );
    assert_eq!(msg, INVALID);
    // A right header with a wrong query parameter: the header's consumer, and both
    // credentials hidden.
    let req = pass(
        &p,
        MockRequest::get("/?api_key=alice-key-1&z=1").header("x-api-key", "test"),
    );
    assert_eq!(req.consumer(), Some("bob"));
    assert_eq!(req.target(), "/?z=1");
    assert!(!req.headers().contains("x-api-key"));
}

#[test]
fn an_empty_header_falls_back_to_the_query() {
    let p = standard();
    let req = pass(
        &p,
        MockRequest::get("/?api_key=test").header("x-api-key", ""),
    );
    assert_eq!(req.consumer(), Some("bob"));
}

#[test]
fn hashed_keys_authenticate() {
    let p = standard();
    let req = pass(&p, MockRequest::get("/").header("x-api-key", "test"));
    assert_eq!(req.consumer(), Some("bob"));
    // Upper-case hex in the config is the same digest.
    let upper = format!("sha256:{}", TEST_HASH["sha256:".len()..].to_uppercase());
    let p = policy(json!({"consumers": [{"name": "bob", "key_hashes": [upper]}]}));
    pass(&p, MockRequest::get("/").header("x-api-key", "test"));
    // The hash itself is not a key.
    assert_eq!(
        refuse(&p, MockRequest::get("/").header("x-api-key", TEST_HASH)),
        "invalid API key"
    );
}

#[test]
fn credentials_are_kept_when_not_hidden() {
    let p = policy(json!({
        "query": "api_key",
        "hide_credentials": false,
        "consumers": one_consumer("k"),
    }));
    let req = pass(&p, MockRequest::get("/?a=1&api_key=k"));
    assert_eq!(req.target(), "/?a=1&api_key=k");
    let req = pass(&p, MockRequest::get("/").header("x-api-key", "k"));
    assert_eq!(req.headers().get("x-api-key").as_deref(), Some("k"));
    assert_eq!(req.headers().get("x-consumer").as_deref(), Some("alice"));
}

#[test]
fn a_spoofed_x_consumer_is_replaced_on_success() {
    let p = standard();
    let req = pass(
        &p,
        MockRequest::get("/")
            .header("x-consumer", "admin")
            .header("X-Consumer", "root")
            .header("x-api-key", "alice-key-1"),
    );
    assert_eq!(req.headers().get_all("x-consumer"), vec!["alice"]);
}

#[test]
fn a_spoofed_x_consumer_is_removed_on_failure() {
    let p = standard();
    for req in [
        MockRequest::get("/").header("x-consumer", "admin"),
        MockRequest::get("/")
            .header("x-consumer", "admin")
            .header("x-api-key", "nope"),
    ] {
        let mut req = req;
        assert_eq!(run(&p, &mut req).status(), Some(401));
        assert!(!req.headers().contains("x-consumer"));
        assert_eq!(req.consumer(), None);
        assert_eq!(req.property("weir.consumer"), None);
    }
}

#[test]
fn a_missing_key_gets_a_401_saying_where_to_send_it() {
    let p = standard();
    for req in [
        MockRequest::get("/"),
        MockRequest::get("/").header("x-api-key", ""),
        MockRequest::get("/?api_key"),
        MockRequest::get("/?api_key=&x=1"),
        MockRequest::get("/?apikey=alice-key-1"),
        MockRequest::get("/").header("authorization", "ApiKey alice-key-1"),
    ] {
        let mut req = req.header("x-request-id", "r-7");
        let d = run(&p, &mut req);
        assert_eq!(d.status(), Some(401));
        assert_eq!(
            d.body_json().unwrap(),
            json!({"error": "unauthorized", "message": MISSING, "request_id": "r-7"})
        );
        assert_eq!(
            d.response_header("www-authenticate"),
            Some(r#"ApiKey header="x-api-key", query="api_key""#)
        );
        assert_eq!(d.response_header("content-type"), Some("application/json"));
    }
    let p = policy(json!({"consumers": one_consumer("k")}));
    let d = p.on_request(&mut MockRequest::get("/"));
    assert_eq!(
        d.response_header("www-authenticate"),
        Some(r#"ApiKey header="x-api-key""#)
    );
}

#[test]
fn a_wrong_key_gets_a_401_that_does_not_echo_it() {
    let p = standard();
    let mut req = MockRequest::get("/")
        .header("x-api-key", "alice-key-3")
        .header("x-request-id", "r-8");
    let d = run(&p, &mut req);
    assert_eq!(
        d.body_json().unwrap(),
        json!({"error": "unauthorized", "message": INVALID, "request_id": "r-8"})
    );
    assert_eq!(
        d.response_header("www-authenticate"),
        Some(r#"ApiKey header="x-api-key", query="api_key""#)
    );
    let body = String::from_utf8(d.body_bytes().to_vec()).unwrap();
    assert!(!body.contains("alice-key"), "{body}");
    // The key is not hidden on a refused request: it goes nowhere anyway.
    assert_eq!(req.consumer(), None);
}

#[test]
fn near_misses_are_refused() {
    let p = standard();
    for key in [
        "alice-key-1 ",
        " alice-key-1",
        "ALICE-KEY-1",
        "alice-key-",
        "alice-key-11",
        "alice-key-1\0",
        "alice",
    ] {
        assert_eq!(
            refuse(&p, MockRequest::get("/").header("x-api-key", key)),
            INVALID,
            "{key:?}"
        );
    }
}

#[test]
fn matched_keys_are_remembered_and_only_they() {
    let p = standard();
    let remembered = || p.verified.tags.borrow().len();
    for key in ["nope", "alice-key-", "test "] {
        refuse(&p, MockRequest::get("/").header("x-api-key", key));
    }
    assert_eq!(remembered(), 0, "a refused key is never remembered");
    for round in 0..2 {
        for (key, consumer) in [
            ("alice-key-1", "alice"),
            ("alice-key-2", "alice"),
            ("test", "bob"),
        ] {
            let req = pass(&p, MockRequest::get("/").header("x-api-key", key));
            assert_eq!(req.consumer(), Some(consumer), "{key}, round {round}");
            assert_eq!(
                req.headers().get(CONSUMER_HEADER).as_deref(),
                Some(consumer)
            );
        }
        assert_eq!(remembered(), 3, "round {round}");
        // A key one byte off a remembered one is looked up on its own, and refused.
        for key in ["alice-key-1 ", "alice-key-", "tesT"] {
            refuse(&p, MockRequest::get("/").header("x-api-key", key));
        }
        assert_eq!(remembered(), 3);
    }
    // Tags come from a secret drawn per VM: another instance tags the same key otherwise.
    assert_ne!(
        standard().verified.tag("alice-key-1"),
        p.verified.tag("alice-key-1")
    );
}

#[test]
fn the_memory_of_matched_keys_is_bounded() {
    let keys: Vec<String> = (0..=VERIFIED_MAX_KEYS)
        .map(|i| format!("key-{i}"))
        .collect();
    let p = policy(json!({"consumers": [{"name": "many", "keys": keys}]}));
    for (i, key) in keys.iter().enumerate() {
        let req = pass(&p, MockRequest::get("/").header("x-api-key", key));
        assert_eq!(req.consumer(), Some("many"));
        // Full after VERIFIED_MAX_KEYS keys: the next one empties it first.
        let expected = if i < VERIFIED_MAX_KEYS { i + 1 } else { 1 };
        assert_eq!(p.verified.tags.borrow().len(), expected, "after key {i}");
    }
    // A forgotten key is checked again, and still passes.
    let req = pass(&p, MockRequest::get("/").header("x-api-key", "key-0"));
    assert_eq!(req.consumer(), Some("many"));
}

#[test]
fn odd_encodings_are_refused() {
    let p = standard();
    // Bytes that are not UTF-8 reach the policy as U+FFFD (the SDK's lossy decoding).
    let odd = ["\u{FFFD}", "alice-key-1\u{FFFD}", "ключ", "\u{7f}"];
    for key in odd {
        assert_eq!(
            refuse(&p, MockRequest::get("/").header("x-api-key", key)),
            INVALID
        );
    }
    for query in [
        "api_key=%FF",
        "api_key=alice-key-1%00",
        "api_key=%E2%80%AE",
        "api_key=%zz",
    ] {
        assert_eq!(
            refuse(&p, MockRequest::get(&format!("/?{query}"))),
            INVALID,
            "{query}"
        );
    }
    // A repeated header reaches the policy joined (Weir's answer): no key matches.
    let req = MockRequest::get("/")
        .header("x-api-key", "alice-key-1")
        .header("x-api-key", "alice-key-2");
    assert_eq!(refuse(&p, req), INVALID);
}

#[test]
fn an_oversized_key_is_refused() {
    let p = standard();
    for len in [MAX_KEY_LEN + 1, 64 * 1024] {
        let key = "a".repeat(len);
        assert_eq!(
            refuse(&p, MockRequest::get("/").header("x-api-key", &key)),
            INVALID
        );
        let target = format!("/?api_key={key}");
        assert_eq!(refuse(&p, MockRequest::get(&target)), INVALID);
    }
}

#[test]
fn outcomes_are_counted() {
    let count = || {
        [
            "key_auth_allowed_total",
            "key_auth_rejected_missing_total",
            "key_auth_rejected_invalid_total",
        ]
        .map(metrics::recorded)
    };
    let p = standard();
    let before = count();
    pass(&p, MockRequest::get("/").header("x-api-key", "test"));
    pass(&p, MockRequest::get("/?api_key=alice-key-1"));
    refuse(&p, MockRequest::get("/"));
    refuse(&p, MockRequest::get("/").header("x-api-key", "bad"));
    refuse(
        &p,
        MockRequest::get("/").header("x-api-key", &"a".repeat(2000)),
    );
    refuse(&p, MockRequest::get("/?api_key=bad"));
    let after = count();
    let delta: Vec<i64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    assert_eq!(delta, vec![2, 1, 3]);
}

// --- logs ---

thread_local! {
    static LOGGED: RefCell<Vec<(log::Level, String)>> = const { RefCell::new(Vec::new()) };
}

/// Collects this thread's log records (the SDK's `log` facade; the host's proxy_log
/// in the gateway).
struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        LOGGED.with_borrow_mut(|l| l.push((record.level(), record.args().to_string())));
    }
    fn flush(&self) {}
}

fn logged_by(f: impl FnOnce()) -> Vec<(log::Level, String)> {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&Capture).unwrap();
        log::set_max_level(log::LevelFilter::Info);
    });
    LOGGED.with_borrow_mut(Vec::clear);
    f();
    LOGGED.with_borrow_mut(std::mem::take)
}

#[test]
fn a_wrong_key_is_logged_at_info_without_the_key() {
    let p = standard();
    let logs = logged_by(|| {
        refuse(
            &p,
            MockRequest::get("/")
                .header("x-api-key", "guess-123")
                .header("x-request-id", "r-9")
                .client("10.0.0.1:5000"),
        );
        refuse(
            &p,
            MockRequest::get("/?api_key=guess-456").header("x-request-id", "r-10"),
        );
    });
    assert_eq!(
        logs,
        vec![
            (
                log::Level::Info,
                "invalid API key in header `x-api-key`: consumer unknown, client 10.0.0.1:5000, request_id r-9".to_string()
            ),
            (
                log::Level::Info,
                "invalid API key in query parameter `api_key`: consumer unknown, client unknown, request_id r-10".to_string()
            ),
        ]
    );
}

#[test]
fn success_and_missing_keys_are_not_logged() {
    let p = standard();
    let logs = logged_by(|| {
        pass(&p, MockRequest::get("/").header("x-api-key", "test"));
        refuse(&p, MockRequest::get("/"));
    });
    assert_eq!(logs, vec![]);
}
