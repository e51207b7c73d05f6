//! The built-in policies (plugins/, built by scripts/build-plugins.sh) through the
//! gateway: each one's main behaviour on real requests.

use super::common::*;
use std::time::Duration;

#[test]
fn request_size_limit_refuses_declared_and_streamed_bodies() {
    let up = Upstream::start("app");
    let w = gateway_with(
        up.addr,
        r#"
[[plugins]]
name = "limit"
wasm = "{plugin:request-size-limit}"
config = { max_size = "100B" }
[[routes]]
name = "upload"
upstream = "app"
plugins = ["limit"]
"#,
    );
    // A declared length is refused before the upstream is contacted.
    let r = Req::new("POST", "/up")
        .body(&[b'a'; 101])
        .send(w.addr)
        .unwrap();
    assert_json_error(&r, 413, Some("payload_too_large"));
    assert_eq!(up.hits(), 0);
    let r = Req::new("POST", "/up")
        .body(&[b'a'; 100])
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.last().unwrap().body, [b'a'; 100]);

    // A chunked body is counted as it streams.
    let head = "POST /up HTTP/1.1\r\nHost: test.local";
    let r = send_chunked(w.addr, head, &[&[b'x'; 60], &[b'y'; 60], &[b'z'; 60]]).unwrap();
    assert_json_error(&r, 413, Some("payload_too_large"));
    let r = send_chunked(w.addr, head, &[&[b'x'; 60], &[b'y'; 40]]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.last().unwrap().body.len(), 100);
}

#[test]
fn cors_answers_preflights_and_marks_allowed_responses() {
    let up = Upstream::start("app");
    let w = gateway_with(
        up.addr,
        r#"
[[plugins]]
name = "cors"
wasm = "{plugin:cors}"
config = { allow_origins = ["https://*.example.com"], allow_methods = ["GET", "POST"], expose_headers = ["x-request-id"], allow_credentials = true, max_age = 300 }
[[routes]]
name = "api"
upstream = "app"
plugins = ["cors"]
"#,
    );
    let preflight = |origin: &str, method: &str| {
        Req::new("OPTIONS", "/items")
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "content-type")
            .send(w.addr)
            .unwrap()
    };
    let r = preflight("https://app.example.com", "POST");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-max-age"), Some("300"));
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert_eq!(up.hits(), 0, "a preflight never goes upstream");

    for (origin, method) in [
        ("https://example.com.evil.com", "POST"),
        ("https://app.example.com", "DELETE"),
    ] {
        let r = preflight(origin, method);
        assert_eq!(r.status, 403, "{origin} {method}");
        assert_eq!(r.json()["error"], "cors_rejected");
        assert_eq!(r.header("access-control-allow-origin"), None);
    }
    assert_eq!(up.hits(), 0);

    let r = Req::get("/items")
        .header("origin", "https://a.b.example.com")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://a.b.example.com")
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-request-id")
    );
    assert!(r.header("vary").unwrap().contains("Origin"));
    // Not allowed: it still goes upstream, without CORS headers.
    let r = Req::get("/items")
        .header("origin", "https://elsewhere.org")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(up.hits(), 2);
}

#[test]
fn ip_restriction_follows_the_trusted_proxy_decision() {
    let up = Upstream::start("app");
    let plugins = r#"
[[plugins]]
name = "office"
wasm = "{plugin:ip-restriction}"
config = { allow = ["10.0.0.0/8", "2001:db8::/32"], deny = ["10.66.0.0/16"] }
[[routes]]
name = "api"
upstream = "app"
plugins = ["office"]
"#;
    // The test client is 127.0.0.1, outside the allow list; without trusted proxies
    // its x-forwarded-for is not believed.
    let w = gateway_with(up.addr, plugins);
    let r = Req::get("/")
        .header("x-forwarded-for", "10.1.2.3")
        .send(w.addr)
        .unwrap();
    assert_json_error(&r, 403, Some("forbidden"));
    assert_eq!(up.hits(), 0);
    drop(w);

    // Behind a trusted proxy (127.0.0.1), the forwarded address decides.
    let w = gateway_with_server(up.addr, r#"trusted_proxies = ["127.0.0.1/32"]"#, plugins);
    for (xff, status) in [
        ("10.1.2.3", 200),
        ("10.66.0.9", 403),
        ("2001:db8::7", 200),
        ("192.0.2.1", 403),
        ("203.0.113.9, 10.1.2.3", 200),
    ] {
        let r = Req::get("/")
            .header("x-forwarded-for", xff)
            .send(w.addr)
            .unwrap();
        assert_eq!(r.status, status, "x-forwarded-for: {xff}");
    }
    let r = Req::get("/").send(w.addr).unwrap();
    assert_eq!(r.status, 403, "the proxy itself is not in the list");
}

#[test]
fn key_auth_names_the_consumer_and_strips_the_key() {
    let up = Upstream::start("app");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let hash = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"; // "test"
    let w = gateway_with(
        up.addr,
        &format!(
            r#"
[access_log]
output = "{}"
[[plugins]]
name = "key-auth"
wasm = "{{plugin:key-auth}}"
[plugins.config]
query = "api_key"
[[plugins.config.consumers]]
name = "alice"
keys = ["alice-key-1"]
[[plugins.config.consumers]]
name = "batch"
key_hashes = ["{hash}"]
[[routes]]
name = "api"
upstream = "app"
plugins = ["key-auth"]
"#,
            log.display()
        ),
    );

    let r = Req::get("/orders").send(w.addr).unwrap();
    assert_json_error(&r, 401, Some("unauthorized"));
    assert!(r.header("www-authenticate").unwrap().starts_with("ApiKey"));
    let r = Req::get("/orders")
        .header("x-api-key", "wrong")
        .header("x-consumer", "admin")
        .send(w.addr)
        .unwrap();
    assert_json_error(&r, 401, Some("unauthorized"));
    assert!(!r.text().contains("wrong"), "the key is never echoed");
    assert_eq!(up.hits(), 0);

    // A client's own x-consumer never reaches the upstream.
    let r = Req::get("/orders")
        .header("x-api-key", "alice-key-1")
        .header("x-consumer", "admin")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 200);
    let seen = up.last().unwrap();
    assert_eq!(seen.header("x-consumer"), Some("alice"));
    assert_eq!(seen.header("x-api-key"), None);

    // A hashed key, sent in the query: the parameter is removed, the rest kept.
    let r = Req::get("/orders?a=1&api_key=test&b=2")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 200);
    let seen = up.last().unwrap();
    assert_eq!(seen.path, "/orders?a=1&b=2");
    assert_eq!(seen.header("x-consumer"), Some("batch"));

    let metrics = w.metrics();
    for (name, n) in [
        ("key_auth_allowed_total", 2),
        ("key_auth_rejected_missing_total", 1),
        ("key_auth_rejected_invalid_total", 1),
    ] {
        let line = format!("weir_plugin_counter{{plugin=\"key-auth\",name=\"{name}\"}} {n}");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
    // The access log names the consumer.
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 4)
    }));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Sorted: two requests' log lines may be written in either order (each is written
    // after its response, possibly by another worker thread than the next request's).
    let mut consumers: Vec<&str> = lines
        .iter()
        .map(|l| l["consumer"].as_str().unwrap_or("-"))
        .collect();
    consumers.sort_unstable();
    assert_eq!(consumers, ["-", "-", "alice", "batch"]);
}

#[test]
fn a_policy_config_error_is_reported_with_the_policy_message() {
    let cfg = format!(
        r#"
[server]
listen = ["127.0.0.1:1"]
[[upstreams]]
name = "app"
targets = ["127.0.0.1:1"]
[[plugins]]
name = "key-auth"
wasm = "{}"
config = {{ header = "x-key", consumers = [] }}
[[routes]]
name = "api"
upstream = "app"
plugins = ["key-auth"]
"#,
        built_plugin("key-auth")
    );
    let (ok, out) = weir_check(&cfg);
    assert!(!ok);
    // At the line of the plugin's `[[plugins]]` entry.
    let line = 1 + cfg.lines().position(|l| l == "[[plugins]]").unwrap();
    assert!(
        out.contains(&format!(".toml:{line}: `plugins[0]`: plugin `key-auth`")),
        "{out}"
    );
    assert!(
        out.contains("consumers: give at least one consumer with a key"),
        "{out}"
    );
}

#[test]
fn rate_limit_counts_per_consumer_across_worker_threads() {
    let up = Upstream::start("app");
    let w = gateway_with(
        up.addr,
        r#"
[[plugins]]
name = "key-auth"
wasm = "{plugin:key-auth}"
config = { consumers = [{ name = "alice", keys = ["a-key"] }, { name = "bob", keys = ["b-key"] }] }
[[plugins]]
name = "limit"
wasm = "{plugin:rate-limit}"
config = { key = "consumer", limit = 5, window = "1h", tiers = { gold = { limit = 8, window = "1h" } }, consumer_tiers = { bob = "gold" } }
[[routes]]
name = "api"
upstream = "app"
plugins = ["key-auth", "limit"]
"#,
    );
    // A fresh connection per request: the gateway's two worker threads share counts.
    let send = |key: &str| {
        Req::get("/orders")
            .header("x-api-key", key)
            .send(w.addr)
            .unwrap()
    };
    for i in 0..5 {
        let r = send("a-key");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.header("ratelimit-limit"), Some("5"));
        assert_eq!(
            r.header("ratelimit-remaining"),
            Some((4 - i).to_string().as_str())
        );
    }
    let r = send("a-key");
    assert_json_error(&r, 429, Some("rate_limited"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "retry-after {retry}");
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert_eq!(up.hits(), 5);

    // Bob has his own budget, from his tier.
    for _ in 0..8 {
        assert_eq!(send("b-key").status, 200);
    }
    assert_eq!(send("b-key").status, 429);
    assert_eq!(up.hits(), 13);
}

#[test]
fn plugins_see_the_forwarding_headers_the_upstream_will() {
    // Weir writes `x-forwarded-*` before the route's plugins run, as Envoy does: a
    // plugin reads what the upstream would get (the client's claims already replaced,
    // 127.0.0.1 not being a trusted proxy), and a change it makes stands.
    let up = Upstream::start("app");
    let w = gateway_with(
        up.addr,
        r#"
[[plugins]]
name = "move"
wasm = "{plugin:transform}"
config = { request = { headers = { rename = { x-forwarded-for = "x-seen-for", x-forwarded-proto = "x-seen-proto" } } } }
[[routes]]
name = "all"
upstream = "app"
plugins = ["move"]
"#,
    );
    let r = Req::get("/x")
        .header("host", "shop.example.org")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last().unwrap();
    assert_eq!(seen.header("x-seen-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-seen-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-for"), None);
    assert_eq!(seen.header("x-forwarded-proto"), None);
    assert_eq!(seen.header("x-forwarded-host"), Some("shop.example.org"));
}

#[test]
fn headers_set_during_the_request_reach_the_answers_weir_gives() {
    // rate-limit sets its counts during the request (`set_response_header`): they are
    // the client's whatever answers, a later plugin's 401 or Weir's own 502.
    let up = Upstream::start("app");
    let w = gateway_with(
        up.addr,
        &format!(
            r#"
[[upstreams]]
name = "dead"
targets = ["{dead}"]
[[plugins]]
name = "limit"
wasm = "{{plugin:rate-limit}}"
config = {{ key = "ip", limit = 1000, window = "1h" }}
[[plugins]]
name = "key-auth"
wasm = "{{plugin:key-auth}}"
config = {{ consumers = [{{ name = "alice", keys = ["a-key"] }}] }}
[[routes]]
name = "keyed"
paths = ["/keyed"]
upstream = "app"
plugins = ["limit", "key-auth"]
[[routes]]
name = "down"
paths = ["/down"]
upstream = "dead"
plugins = ["limit"]
"#,
            dead = closed_port()
        ),
    );
    let r = w.get("/keyed");
    assert_json_error(&r, 401, Some("unauthorized"));
    assert_eq!(r.header_all("ratelimit-limit"), ["1000"]);
    assert_eq!(r.header("ratelimit-remaining"), Some("999"));
    assert!(
        r.header("www-authenticate").is_some(),
        "key-auth's own headers stay"
    );
    let r = Req::get("/keyed")
        .header("x-api-key", "a-key")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("ratelimit-remaining"), Some("998"));
    let r = w.get("/down");
    assert_json_error(&r, 502, None);
    assert_eq!(r.header_all("ratelimit-limit"), ["1000"]);
    assert!(r.header("ratelimit-remaining").is_some());
    assert_eq!(up.hits(), 1);
}

#[test]
fn rate_limit_budgets_leave_the_store_once_idle() {
    // rate-limit asks Weir (`weir.shared_data_ttl`) to drop a budget's key once it
    // means nothing: here one request per 2 s, so 3 s after the last write. A client
    // seen once does not hold store room until the process restarts.
    let up = Upstream::start("app");
    let w = gateway_with(
        up.addr,
        r#"
[[plugins]]
name = "limit"
wasm = "{plugin:rate-limit}"
config = { key = "header:x-client", limit = 1, window = "2s" }
[[routes]]
name = "limited"
paths = ["/limited"]
upstream = "app"
plugins = ["limit"]
"#,
    );
    let keys = |plugin: &str| {
        w.metric(&format!(
            r#"weir_plugin_shared_data_keys{{plugin="{plugin}"}}"#
        ))
        .unwrap_or(0.0)
    };
    for client in ["a", "b", "c", "d", "e"] {
        let send = || {
            Req::get("/limited")
                .header("x-client", client)
                .send(w.addr)
                .unwrap()
                .status
        };
        assert_eq!(send(), 200);
        assert_eq!(send(), 429, "client {client}: its budget is spent");
    }
    assert_eq!(keys("limit"), 5.0);
    // Swept every second (an eighth of the 3 s is less), once 3 s passed without a write.
    assert!(
        wait_until(Duration::from_secs(10), || keys("limit") == 0.0),
        "keys left: {}",
        keys("limit")
    );
    // A forgotten budget is a full one.
    let r = Req::get("/limited")
        .header("x-client", "a")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(keys("limit"), 1.0);
}

#[test]
fn sdk_contexts_end_with_the_last_callback_they_need() {
    // Policies built with the SDK make their contexts on demand and say when they are
    // done (`weir_unused_callbacks` bit 8): then no delete call follows, which the
    // `log` phase metric counts. A context still open when the request ends is deleted.
    let up = Upstream::with_handler("app", |_| {
        let own = vec![("ratelimit-limit".into(), "999".into())];
        Reply::Send(200, own, b"ok".to_vec())
    });
    let w = gateway_with(
        up.addr,
        r#"
[[plugins]]
name = "request-only"
wasm = "{plugin:transform}"
config = { request = { headers = { set = { x-gateway = "weir" } } } }
[[plugins]]
name = "both"
wasm = "{plugin:transform}"
config = { response = { headers = { set = { x-served-by = "weir" } } } }
[[plugins]]
name = "limit"
wasm = "{plugin:rate-limit}"
config = { key = "ip", limit = 1000, window = "1h" }
[[plugins]]
name = "key-auth"
wasm = "{plugin:key-auth}"
config = { consumers = [{ name = "alice", keys = ["a-key"] }] }
[[routes]]
name = "open"
paths = ["/open"]
upstream = "app"
plugins = ["request-only", "both", "limit"]
[[routes]]
name = "keyed"
paths = ["/keyed"]
upstream = "app"
plugins = ["both", "key-auth"]
"#,
    );
    for i in 0..5 {
        let r = w.get("/open");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-served-by"), Some("weir"));
        // rate-limit sets its headers during the request; they replace the upstream's.
        assert_eq!(r.header_all("ratelimit-limit"), ["1000"]);
        let remaining = (999 - i).to_string();
        assert_eq!(r.header("ratelimit-remaining"), Some(remaining.as_str()));
    }
    assert_eq!(up.last().unwrap().header("x-gateway"), Some("weir"));
    // key-auth answers: `both`'s response hook never runs, so its context stays open
    // until the request ends.
    for _ in 0..3 {
        assert_json_error(&w.get("/keyed"), 401, None);
    }
    let calls = |plugin: &str, phase: &str| {
        w.metric(&format!(
            r#"weir_plugin_call_duration_seconds_count{{plugin="{plugin}",phase="{phase}"}}"#
        ))
        .unwrap_or(0.0)
    };
    // The end of a request runs after its response is sent: wait for the three.
    wait_until(Duration::from_secs(5), || calls("both", "log") >= 3.0);
    assert_eq!(calls("both", "log"), 3.0);
    assert_eq!(calls("both", "request_headers"), 8.0);
    assert_eq!(calls("both", "response_headers"), 5.0);
    for (plugin, n) in [("request-only", 5.0), ("limit", 5.0), ("key-auth", 3.0)] {
        assert_eq!(calls(plugin, "request_headers"), n, "{plugin}");
        assert_eq!(calls(plugin, "response_headers"), 0.0, "{plugin}");
        assert_eq!(calls(plugin, "log"), 0.0, "{plugin}");
    }
}

#[test]
fn a_local_answer_on_keep_alive_does_not_let_the_body_become_a_request() {
    let up = Upstream::start("app");
    let w = gateway_with(
        up.addr,
        r#"
[[plugins]]
name = "key-auth"
wasm = "{plugin:key-auth}"
config = { consumers = [{ name = "alice", keys = ["a-key"] }] }
[[routes]]
name = "api"
upstream = "app"
plugins = ["key-auth"]
"#,
    );
    // The refused request's body is itself a request, with a valid key.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: test.local\r\nx-api-key: a-key\r\n\r\n";
    let mut c = Conn::open(w.addr).unwrap();
    let r = c
        .send(&Req::new("POST", "/refused").body(smuggled.as_bytes()))
        .unwrap();
    assert_eq!(r.status, 401);
    // Whatever the connection does next (drained and reused, or closed), the body
    // never reaches the upstream as a request of its own.
    if let Ok(r) = c.send(&Req::get("/next").header("x-api-key", "a-key")) {
        assert_eq!(r.status, 200);
        assert_eq!(up.last().unwrap().path, "/next");
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        up.seen
            .lock()
            .unwrap()
            .iter()
            .all(|s| s.path != "/smuggled"),
        "the refused body was forwarded as a request"
    );
}

/// An HS256 token for `claims`, signed with `secret` (openssl's HMAC, no JWT library).
fn hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    fn b64url(bytes: &[u8]) -> String {
        openssl::base64::encode_block(bytes)
            .replace('+', "-")
            .replace('/', "_")
            .trim_end_matches('=')
            .to_string()
    }
    let head = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64url(claims.to_string().as_bytes());
    let key = openssl::pkey::PKey::hmac(secret).unwrap();
    let mut signer =
        openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
    signer.update(format!("{head}.{body}").as_bytes()).unwrap();
    let sig = signer.sign_to_vec().unwrap();
    format!("{head}.{body}.{}", b64url(&sig))
}

#[test]
fn jwt_auth_checks_signature_and_claims_and_forwards_them() {
    let up = Upstream::start("app");
    let secret = "an-hs256-secret-of-at-least-32-bytes!";
    let w = gateway_with(
        up.addr,
        &format!(
            r#"
[[plugins]]
name = "jwt"
wasm = "{{plugin:jwt-auth}}"
config = {{ keys = [{{ kid = "k1", alg = "HS256", secret = "{secret}" }}], iss = "https://id.example.com/", aud = "orders", forward_claims = {{ email = "x-user-email" }} }}
[[routes]]
name = "api"
upstream = "app"
plugins = ["jwt"]
"#
        ),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "sub": "user-42", "email": "ada@example.com", "iss": "https://id.example.com/",
        "aud": ["orders", "billing"], "exp": now + 300,
    });
    let bearer = |token: &str| format!("Bearer {token}");

    let r = Req::get("/orders")
        .header("authorization", &bearer(&hs256(secret.as_bytes(), &claims)))
        .header("x-user-email", "spoofed@evil.test")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last().unwrap();
    assert_eq!(seen.header("x-consumer"), Some("user-42"));
    assert_eq!(seen.header("x-user-email"), Some("ada@example.com"));

    let mut expired = claims.clone();
    expired["exp"] = serde_json::json!(now - 3600);
    let mut wrong_aud = claims.clone();
    wrong_aud["aud"] = serde_json::json!("other");
    let forged = hs256(b"not-the-secret-not-the-secret-!!", &claims);
    for (what, token) in [
        ("expired", hs256(secret.as_bytes(), &expired)),
        ("wrong audience", hs256(secret.as_bytes(), &wrong_aud)),
        ("forged", forged),
        ("garbage", "a.b.c".to_string()),
    ] {
        let r = Req::get("/orders")
            .header("authorization", &bearer(&token))
            .send(w.addr)
            .unwrap();
        assert_json_error(&r, 401, Some("unauthorized"));
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(challenge.contains("invalid_token"), "{what}: {challenge}");
    }
    let r = Req::get("/orders").send(w.addr).unwrap();
    assert_json_error(&r, 401, Some("unauthorized"));
    assert_eq!(up.hits(), 1);

    // The admin API shows the plugin config without the secret.
    let config = get(w.admin, "/config").unwrap().text();
    assert!(config.contains("\"jwt\""), "{config}");
    assert!(!config.contains(secret), "the secret leaked: {config}");
}

#[test]
fn an_interim_100_does_not_take_the_plugins_response_work() {
    // The upstream answers `100 Continue` before its response. Plugins' response hooks
    // and the response headers they set during the request belong to the final
    // response: an interim one passes through untouched.
    let up = Upstream::with_handler("app", |_| Reply::Interim(100, Box::new(Reply::ok("ok"))));
    let w = gateway_with(
        up.addr,
        r#"
[[plugins]]
name = "both"
wasm = "{plugin:transform}"
config = { response = { headers = { set = { x-served-by = "weir" } } } }
[[plugins]]
name = "limit"
wasm = "{plugin:rate-limit}"
config = { key = "ip", limit = 1000, window = "1h" }
[[routes]]
name = "all"
upstream = "app"
plugins = ["both", "limit"]
"#,
    );
    let mut s = std::net::TcpStream::connect(w.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    use std::io::{Read, Write};
    s.write_all(
        b"POST /upload HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\nexpect: 100-continue\r\nconnection: close\r\n\r\nhi",
    )
    .unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let fin = &raw[raw.find("HTTP/1.1 200").expect("a final 200")..];
    assert!(fin.contains("x-served-by: weir"), "{raw}");
    assert!(fin.contains("ratelimit-limit: 1000"), "{raw}");
}
