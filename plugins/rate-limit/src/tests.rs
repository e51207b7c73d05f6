use super::*;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::time::{Duration, SystemTime};
use weir_plugin_sdk::metrics;
use weir_plugin_sdk::testing::{self, MockRequest, MockStore};
use weir_plugin_sdk::{Entry, Headers};

/// A time aligned to whole hours (so to every window the tests use), in ms.
const BASE_MS: u64 = 1_699_999_200_000;

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(BASE_MS + ms)
}

fn policy(config: Value) -> RateLimit {
    testing::load(&config.to_string()).unwrap_or_else(|e| panic!("{e}"))
}

fn error(config: Value) -> String {
    match testing::load::<RateLimit>(&config.to_string()) {
        Ok(p) => panic!("config accepted: {p:?}"),
        Err(e) => e,
    }
}

/// A request from 10.0.0.1 at `ms` after [`BASE_MS`], on `store`.
fn req(store: &MockStore, ms: u64) -> MockRequest {
    MockRequest::get("/v1/users")
        .header("x-request-id", "r-1")
        .client("10.0.0.1:5000")
        .with_store(store)
        .at(at(ms))
}

/// Whether the request is let through.
fn allowed(p: &RateLimit, mut req: MockRequest) -> bool {
    let d = p.on_request(&mut req);
    assert!(req.refused().is_empty(), "{:?}", req.refused());
    match d.status() {
        None => true,
        Some(429) => false,
        Some(s) => panic!("unexpected status {s}: {d:?}"),
    }
}

/// How many of `n` requests built by `make` are let through.
fn count_allowed(p: &RateLimit, n: usize, make: impl Fn() -> MockRequest) -> usize {
    (0..n).filter(|_| allowed(p, make())).count()
}

/// The `ratelimit-*` headers the response to an allowed request gets.
fn response_headers(p: &RateLimit, mut req: MockRequest) -> [Option<String>; 3] {
    assert!(p.on_request(&mut req).is_continue());
    assert!(req.refused().is_empty(), "{:?}", req.refused());
    HEADER_NAMES.map(|n| req.response_header(n).map(str::to_string))
}

fn denied(p: &RateLimit, mut req: MockRequest) -> Decision {
    let d = p.on_request(&mut req);
    assert_eq!(d.status(), Some(429), "{d:?}");
    d
}

fn keys(store: &MockStore) -> Vec<String> {
    store.dump().into_iter().map(|(k, _)| k).collect()
}

// ---- token bucket ----

#[test]
fn token_bucket_allows_exactly_the_limit_then_429() {
    let p = policy(json!({"limit": 5, "window": "10s"}));
    let store = MockStore::new();
    let remaining: Vec<_> = (0..5)
        .map(|_| response_headers(&p, req(&store, 0))[1].clone().unwrap())
        .collect();
    assert_eq!(remaining, ["4", "3", "2", "1", "0"]);
    let d = denied(&p, req(&store, 0));
    let body = d.body_json().unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["request_id"], "r-1");
    assert_eq!(
        body["message"],
        "rate limit of 5 requests per 10s exceeded; retry in 2 s"
    );
    assert_eq!(d.response_header("content-type"), Some("application/json"));
    // Denied requests are not counted: still exactly one slot after 2 s.
    assert!(!allowed(&p, req(&store, 1_000)));
    assert_eq!(count_allowed(&p, 3, || req(&store, 2_000)), 1);
}

#[test]
fn token_bucket_refills_one_request_per_interval() {
    let p = policy(json!({"limit": 10, "window": "10s"}));
    let store = MockStore::new();
    assert_eq!(count_allowed(&p, 11, || req(&store, 0)), 10);
    assert!(!allowed(&p, req(&store, 999)));
    assert!(allowed(&p, req(&store, 1_000)));
    assert!(!allowed(&p, req(&store, 1_000)));
    assert_eq!(count_allowed(&p, 3, || req(&store, 3_500)), 2);
    // Left alone for a whole window, the bucket is full again, and no fuller.
    assert_eq!(count_allowed(&p, 20, || req(&store, 60_000)), 10);
}

#[test]
fn token_bucket_burst_differs_from_limit() {
    // One request per second on average, five at once.
    let p = policy(json!({"limit": 60, "window": "1m", "burst": 5}));
    let store = MockStore::new();
    assert_eq!(count_allowed(&p, 10, || req(&store, 0)), 5);
    let d = denied(&p, req(&store, 0));
    assert_eq!(d.response_header("retry-after"), Some("1"));
    assert_eq!(d.response_header("ratelimit-limit"), Some("5"));
    assert_eq!(d.response_header("ratelimit-reset"), Some("5"));
    assert_eq!(count_allowed(&p, 10, || req(&store, 3_000)), 3);

    // A burst larger than the limit: three at once, then one per second.
    let p = policy(json!({"limit": 1, "window": "1s", "burst": 3}));
    let store = MockStore::new();
    assert_eq!(count_allowed(&p, 5, || req(&store, 0)), 3);
    assert_eq!(count_allowed(&p, 5, || req(&store, 1_000)), 1);
    // burst = 1: strictly one per interval.
    let p = policy(json!({"limit": 2, "window": "1s", "burst": 1}));
    let store = MockStore::new();
    assert_eq!(count_allowed(&p, 3, || req(&store, 0)), 1);
    assert!(!allowed(&p, req(&store, 499)));
    assert!(allowed(&p, req(&store, 500)));
}

#[test]
fn token_bucket_survives_the_clock_going_backwards() {
    let p = policy(json!({"limit": 10, "window": "10s"}));
    let store = MockStore::new();
    assert!(allowed(&p, req(&store, 3_600_000)));
    // An hour earlier: the stored arrival time is far ahead. The client counts as
    // having spent its budget, and is not locked out for the hour.
    let d = denied(&p, req(&store, 0));
    assert_eq!(d.response_header("retry-after"), Some("1"));
    assert!(allowed(&p, req(&store, 1_000)));
}

// ---- sliding window ----

fn sliding(limit: u64, window: &str) -> RateLimit {
    policy(json!({"algorithm": "sliding_window", "limit": limit, "window": window}))
}

#[test]
fn sliding_window_allows_exactly_the_limit_then_429() {
    let p = sliding(4, "1m");
    let store = MockStore::new();
    let remaining: Vec<_> = (0..4)
        .map(|i| {
            response_headers(&p, req(&store, i * 1_000))[1]
                .clone()
                .unwrap()
        })
        .collect();
    assert_eq!(remaining, ["3", "2", "1", "0"]);
    let d = denied(&p, req(&store, 59_999));
    assert_eq!(d.body_json().unwrap()["error"], "rate_limited");
    assert_eq!(d.response_header("ratelimit-limit"), Some("4"));
    assert_eq!(d.response_header("ratelimit-remaining"), Some("0"));
}

#[test]
fn sliding_window_weighs_the_previous_window_by_what_is_left_of_it() {
    let p = sliding(10, "10s");
    let store = MockStore::new();
    // Ten requests late in window 0.
    assert_eq!(count_allowed(&p, 10, || req(&store, 9_000)), 10);
    // Window 1 starts: the previous ten still weigh fully.
    let d = denied(&p, req(&store, 10_000));
    // 10 × (1 − e/10s) + 1 ≤ 10 once e ≥ 1 s.
    assert_eq!(d.response_header("retry-after"), Some("1"));
    assert!(!allowed(&p, req(&store, 10_999)));
    assert!(allowed(&p, req(&store, 11_000)));
    assert!(!allowed(&p, req(&store, 11_000)));
    // Half way: 10 × 0.5 + 1 counted so far; four more fit.
    let h = response_headers(&p, req(&store, 15_000));
    assert_eq!(h, [Some("10".into()), Some("3".into()), Some("15".into())]);
    assert_eq!(count_allowed(&p, 5, || req(&store, 15_000)), 3);
    // Window 2: window 0 is gone, window 1's five weigh as the previous window.
    assert_eq!(count_allowed(&p, 10, || req(&store, 20_000)), 5);
    // Two windows later nothing is left.
    assert_eq!(count_allowed(&p, 20, || req(&store, 45_000)), 10);
}

#[test]
fn sliding_window_retry_after_points_at_the_first_allowed_moment() {
    // Next window: count 2 of 2 at the start of window 0, so the third waits until
    // 1 + 2 × (1 − e/10s) ≤ 2, e = 5 s into window 1.
    let p = sliding(2, "10s");
    let store = MockStore::new();
    assert_eq!(count_allowed(&p, 2, || req(&store, 0)), 2);
    let d = denied(&p, req(&store, 0));
    assert_eq!(d.response_header("retry-after"), Some("15"));
    assert_eq!(d.response_header("ratelimit-reset"), Some("20"));
    assert!(!allowed(&p, req(&store, 14_999)));
    assert!(allowed(&p, req(&store, 15_000)));

    // Same window, with a fraction of a second: 3 of 4 in window 0, then one in
    // window 1 at 1.5 s is denied (3 × 0.85 + 2 > 4); it fits at e = 10/3 s.
    let p = sliding(4, "10s");
    let store = MockStore::new();
    assert_eq!(count_allowed(&p, 3, || req(&store, 0)), 3);
    assert!(allowed(&p, req(&store, 11_000)));
    let d = denied(&p, req(&store, 11_500));
    assert_eq!(d.response_header("retry-after"), Some("2"));
    assert!(!allowed(&p, req(&store, 13_333)));
    assert!(allowed(&p, req(&store, 13_334)));
}

#[test]
fn sliding_window_keeps_one_key_per_client_across_windows() {
    let p = sliding(3, "1s");
    let store = MockStore::new();
    for second in 0..50 {
        assert!(allowed(&p, req(&store, second * 1_000)));
    }
    let dump = store.dump();
    assert_eq!(dump.len(), 1, "{dump:?}");
    assert_eq!(dump[0].0, "rl:*/sw/3/1000:ip:10.0.0.1");
    let window = (BASE_MS + 49_000) / 1_000;
    let expected: Vec<u8> = [window, 1, 1]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    assert_eq!(dump[0].1, expected);
}

#[test]
fn sliding_window_keeps_counts_when_the_clock_goes_backwards() {
    let p = sliding(2, "10s");
    let store = MockStore::new();
    assert_eq!(count_allowed(&p, 2, || req(&store, 60_000)), 2);
    // A minute earlier: the counts of the "future" window still apply…
    assert!(!allowed(&p, req(&store, 0)));
    // …as those of the window the clock is in, sliding out as usual after it.
    assert!(!allowed(&p, req(&store, 10_000)));
    assert!(allowed(&p, req(&store, 15_000)));
}

// ---- keys ----

#[test]
fn clients_have_separate_budgets() {
    let p = policy(json!({"limit": 1, "window": "1m"}));
    let store = MockStore::new();
    let from = |ip: &str| req(&store, 0).client(ip);
    assert!(allowed(&p, from("10.0.0.1")));
    assert!(!allowed(&p, from("10.0.0.1:6000")));
    assert!(allowed(&p, from("10.0.0.2")));
    // An IPv4-mapped IPv6 address is the IPv4 client.
    assert!(!allowed(&p, from("[::ffff:10.0.0.2]:80")));
}

#[test]
fn ipv6_clients_are_counted_per_prefix() {
    let p = policy(json!({"limit": 1, "window": "1m"}));
    let store = MockStore::new();
    let from = |ip: &str| req(&store, 0).client(ip);
    assert!(allowed(&p, from("[2001:db8:1:2::1]:443")));
    assert!(!allowed(&p, from("2001:db8:1:2:ffff::9")));
    assert!(allowed(&p, from("2001:db8:1:3::1")));
    assert_eq!(
        keys(&store),
        [
            "rl:*/tb/1/60000/1:ip:2001:db8:1:2::/64",
            "rl:*/tb/1/60000/1:ip:2001:db8:1:3::/64"
        ]
    );

    let p = policy(json!({"limit": 1, "window": "1m", "ipv6_prefix": 128}));
    let store = MockStore::new();
    let from = |ip: &str| req(&store, 0).client(ip);
    assert!(allowed(&p, from("2001:db8::1")));
    assert!(allowed(&p, from("2001:db8::2")));
    assert!(!allowed(&p, from("2001:db8::1")));
    assert_eq!(keys(&store)[0], "rl:*/tb/1/60000/1:ip:2001:db8::1");
}

#[test]
fn consumers_have_separate_budgets() {
    let p = policy(json!({"key": "consumer", "limit": 2, "window": "1m"}));
    let store = MockStore::new();
    let alice = || req(&store, 0).with_consumer("alice");
    // Same IP, different consumers.
    assert_eq!(count_allowed(&p, 3, alice), 2);
    assert_eq!(
        count_allowed(&p, 3, || req(&store, 0).with_consumer("bob")),
        2
    );
    assert!(keys(&store).contains(&"rl:*/tb/2/60000/2:consumer:alice".to_string()));
}

#[test]
fn header_values_have_separate_budgets() {
    let p = policy(json!({"key": "header:X-Tenant", "limit": 1, "window": "1m"}));
    let store = MockStore::new();
    let tenant = |v: &str| req(&store, 0).header("x-tenant", v);
    assert!(allowed(&p, tenant("acme")));
    assert!(!allowed(&p, tenant("acme")));
    assert!(allowed(&p, tenant("Acme")));
    assert!(allowed(&p, tenant("acme corp")));
    assert!(!allowed(&p, tenant("acme corp")));
    // Two values joined by the host are one identity of their own.
    assert!(allowed(
        &p,
        req(&store, 0)
            .header("x-tenant", "a")
            .header("x-tenant", "b")
    ));
    assert!(!allowed(&p, tenant("a, b")));
}

#[test]
fn route_key_counts_every_client_of_a_route_together() {
    let p = policy(json!({"key": "route", "limit": 2, "window": "1m"}));
    let store = MockStore::new();
    let on = |route: &str, ip: &str| req(&store, 0).with_route(route).client(ip);
    assert!(allowed(&p, on("users", "10.0.0.1")));
    assert!(allowed(&p, on("users", "10.0.0.2")));
    assert!(!allowed(&p, on("users", "10.0.0.3")));
    assert!(allowed(&p, on("orders", "10.0.0.3")));
}

#[test]
fn hostile_header_values_get_short_hashed_keys() {
    let p = policy(json!({"key": "header:x-tenant", "limit": 1, "window": "1m"}));
    let store = MockStore::new();
    let huge = "a".repeat(100_000);
    let values = [
        huge.as_str(),
        "é-tenant",
        "tab\there",
        "#0123456789abcdef",
        "\u{fffd}",
    ];
    for v in values {
        assert!(allowed(&p, req(&store, 0).header("x-tenant", v)), "{v:?}");
        assert!(!allowed(&p, req(&store, 0).header("x-tenant", v)), "{v:?}");
    }
    // A value one byte longer is another client.
    let longer = format!("{huge}a");
    assert!(allowed(&p, req(&store, 0).header("x-tenant", &longer)));
    let keys = keys(&store);
    assert_eq!(keys.len(), 6);
    for key in &keys {
        let (prefix, hash) = key.split_once('#').unwrap();
        assert_eq!(prefix, "rl:*/tb/1/60000/1:header.x-tenant:");
        assert_eq!(hash.len(), 16);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
    }
    // 64 printable bytes stay readable; 65 are hashed.
    assert_eq!(identity(&"x".repeat(64)), "x".repeat(64));
    assert!(identity(&"x".repeat(65)).starts_with('#'));
    assert_eq!(identity("acme"), "acme");
}

#[test]
fn a_missing_consumer_falls_back_to_the_client_ip_by_default() {
    let p = policy(json!({"key": "consumer", "limit": 1, "window": "1m"}));
    let store = MockStore::new();
    assert!(allowed(&p, req(&store, 0)));
    assert!(!allowed(&p, req(&store, 0)));
    // A consumer named like the address has a budget of its own.
    assert!(allowed(&p, req(&store, 0).with_consumer("10.0.0.1")));
    assert!(allowed(&p, req(&store, 0).client("10.0.0.2")));
    // No consumer and no address: the shared budget.
    assert!(allowed(
        &p,
        MockRequest::get("/").with_store(&store).at(at(0))
    ));
    assert!(!allowed(
        &p,
        MockRequest::get("/").with_store(&store).at(at(0))
    ));
    assert_eq!(
        keys(&store),
        [
            "rl:*/tb/1/60000/1:consumer:10.0.0.1",
            "rl:*/tb/1/60000/1:ip:10.0.0.1",
            "rl:*/tb/1/60000/1:ip:10.0.0.2",
            "rl:*/tb/1/60000/1:none",
        ]
    );
}

#[test]
fn on_missing_key_shared_allow_and_deny() {
    let config = |mode: &str| json!({"key": "header:x-tenant", "on_missing_key": mode, "limit": 1, "window": "1m"});
    let store = MockStore::new();
    let p = policy(config("shared"));
    assert!(allowed(&p, req(&store, 0)));
    // Another client, no header, and an empty header: the same shared budget.
    assert!(!allowed(&p, req(&store, 0).client("10.0.0.2")));
    assert!(!allowed(&p, req(&store, 0).header("x-tenant", "")));
    assert!(allowed(&p, req(&store, 0).header("x-tenant", "acme")));

    let p = policy(config("allow"));
    let store = MockStore::new();
    assert_eq!(count_allowed(&p, 5, || req(&store, 0)), 5);
    assert!(store.dump().is_empty());

    let p = policy(config("deny"));
    let d = p.on_request(&mut req(&store, 0));
    assert_eq!(d.status(), Some(400));
    let body = d.body_json().unwrap();
    assert_eq!(body["error"], "rate_limit_key_missing");
    assert_eq!(
        body["message"],
        "this route is rate limited per `x-tenant` header; send one"
    );
    assert!(allowed(&p, req(&store, 0).header("x-tenant", "acme")));

    let p =
        policy(json!({"key": "consumer", "on_missing_key": "deny", "limit": 1, "window": "1m"}));
    let d = p.on_request(&mut req(&store, 0));
    assert_eq!(
        d.body_json().unwrap()["message"],
        "this route is rate limited per consumer; the request has none"
    );
}

#[test]
fn a_config_change_starts_fresh_budgets_and_a_reload_keeps_them() {
    let store = MockStore::new();
    let p = policy(json!({"limit": 1, "window": "1m"}));
    assert!(allowed(&p, req(&store, 0)));
    let same = policy(json!({"window": "1m", "limit": 1, "headers": false}));
    assert!(!allowed(&same, req(&store, 0)));
    for changed in [
        json!({"limit": 2, "window": "1m", "burst": 1}),
        json!({"limit": 1, "window": "60001ms"}),
        json!({"limit": 1, "window": "1m", "algorithm": "sliding_window"}),
    ] {
        assert!(
            allowed(&policy(changed.clone()), req(&store, 0)),
            "{changed}"
        );
    }
    assert_eq!(
        keys(&store),
        [
            "rl:*/sw/1/60000:ip:10.0.0.1",
            "rl:*/tb/1/60000/1:ip:10.0.0.1",
            "rl:*/tb/1/60001/1:ip:10.0.0.1",
            "rl:*/tb/2/60000/1:ip:10.0.0.1",
        ]
    );
}

// ---- tiers ----

#[test]
fn consumers_get_their_tier_and_everyone_else_the_default() {
    let tiers = json!({"gold": {"limit": 3, "window": "1m"}, "free": {"limit": 1, "window": "1m"}});
    let p = policy(json!({
        "key": "consumer", "limit": 2, "window": "1m",
        "tiers": tiers, "consumer_tiers": {"alice": "gold", "bob": "free"},
    }));
    let store = MockStore::new();
    let by = |c: &str| req(&store, 0).with_consumer(c);
    assert_eq!(count_allowed(&p, 5, || by("alice")), 3);
    assert_eq!(count_allowed(&p, 5, || by("bob")), 1);
    assert_eq!(count_allowed(&p, 5, || by("carol")), 2);
    assert_eq!(count_allowed(&p, 5, || req(&store, 0)), 2);
    assert_eq!(
        denied(&p, by("alice")).response_header("ratelimit-limit"),
        Some("3")
    );
    assert_eq!(
        denied(&p, by("alice")).body_json().unwrap()["message"],
        "rate limit of 3 requests per 1m exceeded; retry in 20 s"
    );
    assert!(keys(&store).contains(&"rl:gold/tb/3/60000/3:consumer:alice".to_string()));

    // default_tier instead of a top-level limit; a tier's own burst.
    let p = policy(json!({
        "key": "ip",
        "tiers": {"gold": {"limit": 60, "window": "1m", "burst": 4}, "free": tiers["free"]},
        "consumer_tiers": {"alice": "gold"}, "default_tier": "free",
    }));
    let store = MockStore::new();
    let by = |c: &str| req(&store, 0).with_consumer(c);
    assert_eq!(count_allowed(&p, 9, || by("alice")), 4);
    // Tiers of the same IP are separate budgets; the anonymous share bob's (free).
    assert_eq!(count_allowed(&p, 9, || by("bob")), 1);
    assert_eq!(count_allowed(&p, 9, || req(&store, 0)), 0);
}

// ---- headers ----

#[test]
fn allowed_requests_set_ratelimit_response_headers() {
    let p = policy(json!({"limit": 3, "window": "1m"}));
    let store = MockStore::new();
    assert_eq!(
        response_headers(&p, req(&store, 0)),
        [Some("3".into()), Some("2".into()), Some("20".into())],
        "the bucket is full again 20 s after one request (one per 20 s)"
    );
    // Set during the request (the host writes them to the upstream's response,
    // replacing its own): the response hook has nothing to do.
    assert!(!p.uses_response());
}

#[test]
fn the_429_carries_retry_after_and_ratelimit_headers() {
    let p = policy(json!({"limit": 2, "window": "10s"}));
    let store = MockStore::new();
    assert_eq!(count_allowed(&p, 2, || req(&store, 0)), 2);
    let d = denied(&p, req(&store, 1_500));
    let Decision::Respond { headers, .. } = &d else {
        unreachable!()
    };
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "content-type",
            "retry-after",
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset"
        ]
    );
    assert_eq!(d.response_header("retry-after"), Some("4"));
    assert_eq!(d.response_header("ratelimit-limit"), Some("2"));
    assert_eq!(d.response_header("ratelimit-remaining"), Some("0"));
    assert_eq!(d.response_header("ratelimit-reset"), Some("9"));
}

#[test]
fn headers_false_sends_only_retry_after() {
    let p = policy(json!({"limit": 1, "window": "1m", "headers": false}));
    let store = MockStore::new();
    assert_eq!(response_headers(&p, req(&store, 0)), [None, None, None]);
    let d = denied(&p, req(&store, 0));
    assert_eq!(d.response_header("retry-after"), Some("60"));
    assert!(HEADER_NAMES.iter().all(|n| d.response_header(n).is_none()));
}

#[test]
fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
    // One request per 3.333… s: the wait after a burst is rounded up to 4.
    let p = policy(json!({"limit": 3, "window": "10s"}));
    let store = MockStore::new();
    assert_eq!(count_allowed(&p, 3, || req(&store, 0)), 3);
    assert_eq!(
        denied(&p, req(&store, 0)).response_header("retry-after"),
        Some("4")
    );
    assert!(!allowed(&p, req(&store, 3_333)));
    assert!(allowed(&p, req(&store, 3_334)));
    // A 100 ms wait is sent as 1 s.
    let p = policy(json!({"limit": 10, "window": "1s"}));
    let store = MockStore::new();
    assert_eq!(count_allowed(&p, 10, || req(&store, 0)), 10);
    assert_eq!(
        denied(&p, req(&store, 50)).response_header("retry-after"),
        Some("1")
    );
    assert_eq!(secs_until(10, 10), 1);
    assert_eq!(secs_until(NANOS_PER_SEC + 1, 0), 2);
    assert_eq!(secs_until(2 * NANOS_PER_SEC, 0), 2);
    assert_eq!(secs_until(0, 5), 1);
}

// ---- store failures and races ----

/// A `MockRequest` on any store: the mock's own only takes a `MockStore`.
struct OnStore<'a> {
    req: MockRequest,
    store: &'a dyn SharedStore,
}

impl RequestInfo for OnStore<'_> {
    fn method(&self) -> &str {
        self.req.method()
    }
    fn path(&self) -> &str {
        self.req.path()
    }
    fn query(&self) -> Option<&str> {
        self.req.query()
    }
    fn headers(&self) -> &dyn Headers {
        self.req.headers()
    }
    fn client_addr(&self) -> Option<&str> {
        self.req.client_addr()
    }
    fn route(&self) -> Option<&str> {
        self.req.route()
    }
    fn consumer(&self) -> Option<&str> {
        self.req.consumer()
    }
    fn scheme(&self) -> &str {
        self.req.scheme()
    }
    fn host(&self) -> Option<&str> {
        self.req.host()
    }
    fn var(&self, name: &str) -> Option<&str> {
        self.req.var(name)
    }
    fn store(&self) -> &dyn SharedStore {
        self.store
    }
    fn now(&self) -> SystemTime {
        self.req.now()
    }
}

impl Request for OnStore<'_> {
    fn headers_mut(&mut self) -> &mut dyn Headers {
        self.req.headers_mut()
    }
    fn set_path(&mut self, path: &str) {
        self.req.set_path(path)
    }
    fn set_query(&mut self, query: Option<&str>) {
        self.req.set_query(query)
    }
    fn set_consumer(&mut self, name: &str) {
        self.req.set_consumer(name)
    }
    fn set_var(&mut self, name: &str, value: &str) {
        self.req.set_var(name, value)
    }
    fn set_response_header(&mut self, name: &str, value: &str) {
        self.req.set_response_header(name, value)
    }
}

/// Runs the request hook on `store`; returns the decision and the `ratelimit-remaining`
/// response header it set.
fn run_on(p: &RateLimit, store: &dyn SharedStore, ms: u64) -> (Decision, Option<String>) {
    let mut r = OnStore {
        req: req(&MockStore::new(), ms),
        store,
    };
    let d = p.on_request(&mut r);
    let remaining = r.req.response_header("ratelimit-remaining");
    (d, remaining.map(str::to_string))
}

/// Reads from a `MockStore`; writes fail, or lose the race, as configured.
struct Faulty {
    inner: MockStore,
    read_error: Option<StoreError>,
    write_error: Option<StoreError>,
    writes: Cell<usize>,
}

impl Faulty {
    fn new(read_error: Option<StoreError>, write_error: Option<StoreError>) -> Faulty {
        Faulty {
            inner: MockStore::new(),
            read_error,
            write_error,
            writes: Cell::new(0),
        }
    }
}

impl SharedStore for Faulty {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        match &self.read_error {
            Some(e) => Err(e.clone()),
            None => self.inner.get(key),
        }
    }
    fn compare_and_swap(&self, k: &str, e: Option<u32>, v: &[u8]) -> Result<(), StoreError> {
        self.writes.set(self.writes.get() + 1);
        match &self.write_error {
            Some(err) => Err(err.clone()),
            None => self.inner.compare_and_swap(k, e, v),
        }
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.compare_and_swap(key, None, value)
    }
}

thread_local! {
    static LOGS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Collects log records of the current test's thread.
struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        LOGS.with(|l| {
            l.borrow_mut()
                .push(format!("{} {}", record.level(), record.args()))
        });
    }
    fn flush(&self) {}
}

/// The warnings logged on this thread since the last call.
fn logged() -> Vec<String> {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&Capture).expect("no other logger in these tests");
        log::set_max_level(log::LevelFilter::Warn);
    });
    LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

fn with_store_errors(mode: &str) -> RateLimit {
    policy(json!({"limit": 5, "window": "1m", "on_store_error": mode}))
}

#[test]
fn store_failures_are_allowed_by_default_and_logged_with_the_key() {
    logged();
    let p = policy(json!({"limit": 5, "window": "1m"}));
    let errors = [
        Faulty::new(Some(StoreError::Unavailable("down".into())), None),
        Faulty::new(
            None,
            Some(StoreError::Unavailable("InternalFailure".into())),
        ),
        Faulty::new(None, Some(StoreError::CasMismatch)),
    ];
    for (second, store) in errors.iter().enumerate() {
        let (d, remaining) = run_on(&p, store, second as u64 * 1_000);
        assert!(d.is_continue(), "{d:?}");
        assert_eq!(remaining, None, "no ratelimit headers without a verdict");
    }
    // Losing every race gives up after the bounded number of attempts.
    assert_eq!(errors[2].writes.get(), INCREMENT_ATTEMPTS);
    assert_eq!(
        logged(),
        [
            "WARN rate-limit store error on `rl:*/tb/5/60000/5:ip:10.0.0.1`: store unavailable: \
             down; request allowed (on_store_error)",
            "WARN rate-limit store error on `rl:*/tb/5/60000/5:ip:10.0.0.1`: store unavailable: \
             InternalFailure; request allowed (on_store_error)",
            "WARN rate-limit store error on `rl:*/tb/5/60000/5:ip:10.0.0.1`: too many \
             concurrent writers, gave up; request allowed (on_store_error)",
        ]
    );
}

#[test]
fn store_failures_deny_with_503_when_configured() {
    logged();
    let p = with_store_errors("deny");
    for store in [
        Faulty::new(Some(StoreError::Unavailable("down".into())), None),
        Faulty::new(None, Some(StoreError::CasMismatch)),
    ] {
        let (d, _) = run_on(&p, &store, 0);
        assert_eq!(d.status(), Some(503));
        let body = d.body_json().unwrap();
        assert_eq!(body["error"], "rate_limit_unavailable");
        assert_eq!(body["request_id"], "r-1");
    }
    assert_eq!(logged().len(), 1, "one warning per second");
    // A store that works again: the plugin counts as usual.
    assert!(allowed(&p, req(&MockStore::new(), 0)));
}

#[test]
fn a_corrupt_value_is_a_store_error() {
    logged();
    for (algorithm, mode, status) in [
        ("token_bucket", "allow", None),
        ("sliding_window", "deny", Some(503)),
    ] {
        let p = policy(json!({
            "algorithm": algorithm, "limit": 5, "window": "1m", "on_store_error": mode
        }));
        let store = MockStore::new();
        assert!(allowed(&p, req(&store, 0)));
        let key = keys(&store).remove(0);
        store.set(&key, b"junk").unwrap();
        assert_eq!(p.on_request(&mut req(&store, 60_000)).status(), status);
        let expected = if algorithm == "token_bucket" { 8 } else { 24 };
        let log = logged().join("\n");
        assert!(
            log.contains(&format!("`{key}` holds 4 bytes, expected {expected}")),
            "{log}"
        );
    }
}

#[test]
fn store_warnings_are_logged_at_most_once_a_second() {
    logged();
    let p = with_store_errors("allow");
    let down = Faulty::new(Some(StoreError::Unavailable("down".into())), None);
    for ms in [0, 10, 999, 1_000, 1_001, 5_000] {
        assert!(run_on(&p, &down, ms).0.is_continue());
    }
    let log = logged();
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(
        log[1].ends_with("(2 more since the last warning)"),
        "{log:?}"
    );
    assert!(
        log[2].ends_with("(1 more since the last warning)"),
        "{log:?}"
    );
}

/// The concurrent request a [`Racy`] store runs.
type Race<'a> = Box<dyn FnOnce(&MockStore) + 'a>;

/// A store where another request writes between this request's read and its write,
/// once.
struct Racy<'a> {
    inner: MockStore,
    race: RefCell<Option<Race<'a>>>,
}

impl SharedStore for Racy<'_> {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.get(key)
    }
    fn compare_and_swap(&self, k: &str, e: Option<u32>, v: &[u8]) -> Result<(), StoreError> {
        if let Some(race) = self.race.borrow_mut().take() {
            race(&self.inner);
        }
        self.inner.compare_and_swap(k, e, v)
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.inner.set(key, value)
    }
}

#[test]
fn a_cas_race_still_counts_every_request_exactly() {
    for algorithm in ["token_bucket", "sliding_window"] {
        let p = policy(json!({"algorithm": algorithm, "limit": 3, "window": "1m"}));
        let inner = MockStore::new();
        // Existing state, so the racing writes are conditional ones.
        assert!(allowed(&p, req(&inner, 0)));
        let racy = Racy {
            inner: inner.clone(),
            race: RefCell::new(Some(Box::new(|store: &MockStore| {
                assert!(allowed(&p, req(store, 0)), "the concurrent request");
            }))),
        };
        let (d, remaining) = run_on(&p, &racy, 0);
        assert!(d.is_continue(), "{algorithm}");
        // Counted after the concurrent one: the third of three.
        assert_eq!(remaining.as_deref(), Some("0"));
        assert!(!allowed(&p, req(&inner, 0)), "{algorithm}: 3 counted");
    }
}

#[test]
fn a_cas_race_that_fills_the_budget_denies_the_loser() {
    let p = policy(json!({"limit": 2, "window": "1m"}));
    let inner = MockStore::new();
    assert!(allowed(&p, req(&inner, 0)));
    let racy = Racy {
        inner: inner.clone(),
        race: RefCell::new(Some(Box::new(|store: &MockStore| {
            assert!(allowed(&p, req(store, 0)));
        }))),
    };
    let (d, _) = run_on(&p, &racy, 0);
    assert_eq!(d.status(), Some(429));
}

// ---- config ----

#[test]
fn config_defaults() {
    let p = policy(json!({"limit": 100, "window": "1m"}));
    assert_eq!(p.key, KeyKind::Ip);
    assert_eq!(p.on_missing_key, OnMissingKey::Ip);
    assert_eq!(p.algorithm, Algorithm::TokenBucket);
    assert!(p.headers);
    assert!(!p.deny_on_store_error);
    assert_eq!(p.ipv6_prefix, 64);
    assert_eq!(p.default.burst, 100);
    assert_eq!(p.default.interval_ns, 600_000_000);
    assert_eq!(
        policy(json!({"key": "header:X-Tenant", "limit": 1, "window": "1s"})).key,
        KeyKind::Header {
            name: "x-tenant".into(),
            kind: "header.x-tenant".into()
        }
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Ok(500 * NANOS_PER_MS));
    assert_eq!(parse_duration("10s"), Ok(10 * NANOS_PER_SEC));
    assert_eq!(parse_duration("1m"), Ok(60 * NANOS_PER_SEC));
    assert_eq!(parse_duration("24h"), Ok(MAX_WINDOW_NS));
    assert_eq!(parse_duration("0s"), Ok(0));
    for bad in [
        "",
        "10",
        "s",
        "1.5s",
        "-1s",
        "1 s",
        " 1s",
        "1S",
        "1d",
        "1sec",
        "1ms5",
        "٣s",
        "99999999999999999999h",
        "18446744073709551615h",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn config_errors_name_the_key() {
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({}),
            "limit: missing: give `limit` and `window` (or `default_tier`)",
        ),
        (json!({"limit": 1}), "window: missing (`limit` is given)"),
        (
            json!({"window": "1m"}),
            "limit: missing (`window` is given)",
        ),
        (
            json!({"burst": 3, "default_tier": "x", "tiers": {"x": {"limit": 1, "window": "1s"}}}),
            "burst: given without `limit` and `window`",
        ),
        (
            json!({"limit": 0, "window": "1m"}),
            "limit: must be at least 1, got 0",
        ),
        (
            json!({"limit": -5, "window": "1m"}),
            "limit: must be at least 1, got -5",
        ),
        (
            json!({"limit": 1, "window": "10x"}),
            "window: `10x` is not a duration: a whole number and ms, s, m or h",
        ),
        (
            json!({"limit": 1, "window": "0ms"}),
            "window: must be longer than 0",
        ),
        (
            json!({"limit": 1, "window": "25h"}),
            "window: `25h` is longer than 24h",
        ),
        (
            json!({"limit": 1001, "window": "1ms"}),
            "limit: 1001 per 1ms is more than one request per microsecond",
        ),
        (
            json!({"limit": 1, "window": "1m", "burst": 0}),
            "burst: must be at least 1, got 0",
        ),
        (
            json!({"limit": 1, "window": "1h", "burst": 25}),
            "burst: 25 requests at 1 per 1h take more than 24h to refill",
        ),
        (
            json!({"limit": 1, "window": "1m", "burst": 2, "algorithm": "sliding_window"}),
            "burst: applies to algorithm = \"token_bucket\" only",
        ),
        (
            json!({"limit": 1, "window": "1m", "algorithm": "leaky"}),
            "algorithm: expected \"token_bucket\" or \"sliding_window\", got \"leaky\"",
        ),
        (
            json!({"limit": 1, "window": "1m", "key": "user"}),
            "key: expected \"consumer\", \"ip\", \"route\" or \"header:<name>\", got \"user\"",
        ),
        (
            json!({"limit": 1, "window": "1m", "key": "header:"}),
            "key: `` is not a header name",
        ),
        (
            json!({"limit": 1, "window": "1m", "key": "header:x tenant"}),
            "key: `x tenant` is not a header name",
        ),
        (
            json!({"limit": 1, "window": "1m", "key": format!("header:{}", "x".repeat(129))}),
            "is not a header name (1 to 128",
        ),
        (
            json!({"limit": 1, "window": "1m", "on_missing_key": "skip"}),
            "on_missing_key: expected \"ip\" or \"shared\" or \"allow\" or \"deny\", got \"skip\"",
        ),
        (
            json!({"limit": 1, "window": "1m", "on_store_error": "Allow"}),
            "on_store_error: expected \"allow\" or \"deny\", got \"Allow\"",
        ),
        (
            json!({"limit": 1, "window": "1m", "ipv6_prefix": 0}),
            "ipv6_prefix: must be 1 to 128, got 0",
        ),
        (
            json!({"limit": 1, "window": "1m", "ipv6_prefix": 129}),
            "ipv6_prefix: must be 1 to 128, got 129",
        ),
        (
            json!({"limit": 1, "window": "1m", "tiers": {"gold": {"window": "1m"}}}),
            "tiers.gold.limit: missing",
        ),
        (
            json!({"limit": 1, "window": "1m", "tiers": {"gold": {"limit": 1}}}),
            "tiers.gold.window: missing",
        ),
        (
            json!({"limit": 1, "window": "1m", "tiers": {"gold": {"limit": 0, "window": "1m"}}}),
            "tiers.gold.limit: must be at least 1, got 0",
        ),
        (
            json!({"limit": 1, "window": "1m", "tiers": {"gold": {"limit": 1, "window": "1 m"}}}),
            "tiers.gold.window: `1 m` is not a duration",
        ),
        (
            json!({"limit": 1, "window": "1m", "tiers": {"gold": {"limit": 1, "window": "1m", "burst": -1}}}),
            "tiers.gold.burst: must be at least 1, got -1",
        ),
        (
            json!({"limit": 1, "window": "1m", "tiers": {"go ld": {"limit": 1, "window": "1m"}}}),
            "tiers.go ld: a tier name is 1 to 64 of A-Z, a-z, 0-9, `_` and `-`",
        ),
        (
            json!({"limit": 1, "window": "1m", "tiers": {"": {"limit": 1, "window": "1m"}}}),
            "tiers.: a tier name is",
        ),
        (
            json!({"limit": 1, "window": "1m", "tiers": {"gold": {"limit": 1, "window": "1m"}}, "consumer_tiers": {"alice": "platinum"}}),
            "consumer_tiers.alice: no tier named `platinum` (tiers: gold)",
        ),
        (
            json!({"limit": 1, "window": "1m", "consumer_tiers": {"alice": "gold"}}),
            "consumer_tiers.alice: no tier named `gold` (tiers: none)",
        ),
        (
            json!({"limit": 1, "window": "1m", "tiers": {"gold": {"limit": 1, "window": "1m"}}, "consumer_tiers": {"": "gold"}}),
            "consumer_tiers: an empty consumer name",
        ),
        (
            json!({"default_tier": "free", "tiers": {"gold": {"limit": 1, "window": "1m"}}}),
            "default_tier: no tier named `free` (tiers: gold)",
        ),
        (
            json!({"limit": 1, "window": "1m", "default_tier": "gold", "tiers": {"gold": {"limit": 1, "window": "1m"}}}),
            "default_tier: give either default_tier or the top-level limit/window, not both",
        ),
        (
            json!({"limit": 1, "window": "1m", "limits": 2}),
            "invalid config: unknown field `limits`",
        ),
        (
            json!({"limit": 1, "window": "1m", "tiers": {"gold": {"limit": 1, "window": "1m", "per": "1s"}}}),
            "invalid config: unknown field `per`",
        ),
        (
            json!({"limit": "100", "window": "1m"}),
            "invalid config: invalid type: string \"100\"",
        ),
        (
            json!({"limit": 1, "window": 60}),
            "invalid config: invalid type: integer `60`",
        ),
        (
            json!({"limit": 1, "window": "1m", "headers": "no"}),
            "invalid config: invalid type: string \"no\"",
        ),
    ];
    for (config, expected) in cases {
        let e = error(config.clone());
        assert!(
            e.contains(expected),
            "{config}\n  got: {e}\n  expected: {expected}"
        );
    }
}

#[test]
fn every_config_error_is_reported_at_once() {
    let e = error(json!({
        "limit": 0, "window": "1y", "key": "nope", "on_store_error": "maybe",
        "tiers": {"gold": {"limit": 1}}, "consumer_tiers": {"alice": "silver"},
    }));
    for part in [
        "key:",
        "on_store_error:",
        "tiers.gold.window: missing",
        "consumer_tiers.alice: no tier named `silver`",
        "limit: must be at least 1",
        "window: `1y` is not a duration",
    ] {
        assert!(e.contains(part), "{part} in {e}");
    }
    // A tier that failed to compile is known: no "no tier named" for it.
    let e = error(json!({
        "limit": 1, "window": "1m",
        "tiers": {"gold": {"limit": 0, "window": "1m"}}, "consumer_tiers": {"alice": "gold"},
    }));
    assert_eq!(e, "tiers.gold.limit: must be at least 1, got 0");
}

#[test]
fn outcomes_are_counted_in_metrics() {
    metrics::reset_recorded();
    let p =
        policy(json!({"key": "consumer", "on_missing_key": "allow", "limit": 2, "window": "1m"}));
    let store = MockStore::new();
    let alice = || req(&store, 0).with_consumer("alice");
    assert_eq!(count_allowed(&p, 5, alice), 2);
    assert_eq!(count_allowed(&p, 4, || req(&store, 0)), 4);
    let down = Faulty::new(Some(StoreError::Unavailable("down".into())), None);
    let mut r = OnStore {
        req: alice(),
        store: &down,
    };
    assert!(p.on_request(&mut r).is_continue());
    let counts = [
        "rate_limit_allowed_total",
        "rate_limit_limited_total",
        "rate_limit_key_missing_total",
        "rate_limit_store_errors_total",
    ]
    .map(metrics::recorded);
    assert_eq!(counts, [2, 3, 4, 1]);
}

#[test]
fn decimal_formatting_matches_to_string() {
    for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
        let mut s = String::from("x");
        push_u64(&mut s, n);
        assert_eq!(s, format!("x{n}"));
    }
}

#[test]
fn hashed_identities_are_sixteen_lower_case_hex_digits() {
    let value = "y".repeat(65);
    let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    assert_eq!(identity(&value), format!("#{hash:016x}"));
    assert_eq!(
        identity("#x"),
        format!("#{:016x}", {
            b"#x".iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            })
        })
    );
}

#[test]
fn ipv4_keys_are_written_as_dotted_decimal() {
    let limiter = policy(json!({"limit": 5, "window": "1s", "key": "ip"}));
    for ip in ["0.0.0.0", "10.0.0.1", "192.168.255.9", "255.255.255.255"] {
        let req = MockRequest::get("/").client(&format!("{ip}:5555"));
        assert_eq!(limiter.client_ip(&req).as_deref(), Some(ip));
    }
    // IPv4-mapped IPv6 counts as the IPv4 address.
    let req = MockRequest::get("/").client("[::ffff:10.1.2.3]:80");
    assert_eq!(limiter.client_ip(&req).as_deref(), Some("10.1.2.3"));
}

// ---- store room ----

#[test]
fn budgets_are_forgotten_once_they_mean_nothing() {
    // Keys the store may drop once idle: a token bucket's after its capacity (burst ×
    // interval), a sliding window's after two windows; the longest of the tiers, plus
    // a second.
    let ttl = |config: Value| {
        policy(config);
        weir_plugin_sdk::requested_ttl().expect("a ttl was requested")
    };
    // 10 per minute, burst 10: a full bucket's capacity is the minute.
    assert_eq!(
        ttl(json!({"limit": 10, "window": "1m"})),
        Duration::from_secs(61)
    );
    // Burst 2 of 10 per minute: two intervals of 6 s.
    assert_eq!(
        ttl(json!({"limit": 10, "window": "1m", "burst": 2})),
        Duration::from_secs(13)
    );
    assert_eq!(
        ttl(json!({"limit": 10, "window": "1m", "algorithm": "sliding_window"})),
        Duration::from_secs(121)
    );
    assert_eq!(
        ttl(json!({
            "limit": 10, "window": "1m",
            "tiers": {"slow": {"limit": 5, "window": "1h"}},
            "consumer_tiers": {"alice": "slow"},
        })),
        Duration::from_secs(3601)
    );
}
