//! Load balancing, health (active checks and passive ejection), retries, and the JSON
//! 502/503/504 answers, against real upstream servers.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::common::*;

/// A gateway with one upstream per `(name, keys)` pair, each behind the route `/NAME`.
/// `keys` is the TOML of the upstream after its `name`.
fn gateway(pools: &[(&str, String)]) -> Weir {
    let mut config = String::from(
        r#"
[server]
listen = ["{listen}"]
[admin]
listen = "{admin}"
[access_log]
output = "off"
"#,
    );
    for (name, keys) in pools {
        config.push_str(&format!(
            "\n[[upstreams]]\nname = \"{name}\"\n{keys}\n\n[[routes]]\nname = \"{name}\"\npaths = [\"/{name}\"]\nupstream = \"{name}\"\n"
        ));
    }
    Weir::start(&config)
}

/// `targets = ["a", "b"]` with equal weights.
fn targets(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("targets = [{}]", list.join(", "))
}

/// Active checks fast enough for tests: every 100ms, one result flips the state.
const FAST_HEALTH: &str = r#"health = { path = "/health", interval = "100ms", timeout = "500ms", healthy_threshold = 1, unhealthy_threshold = 1 }"#;

fn send(w: &Weir, req: &Req) -> Resp {
    req.send(w.addr).expect("gateway reachable")
}

/// The target that answered (the upstream's `x-upstream` header).
fn who(r: &Resp) -> String {
    r.header("x-upstream").unwrap_or("-").to_string()
}

/// One target's entry in `GET /upstreams`.
fn target_state(w: &Weir, pool: &str, addr: SocketAddr) -> serde_json::Value {
    let v = w.admin_json("/upstreams");
    let addr = addr.to_string();
    v["upstreams"]
        .as_array()
        .expect("upstreams array")
        .iter()
        .find(|u| u["name"] == pool)
        .and_then(|u| {
            u["targets"]
                .as_array()?
                .iter()
                .find(|t| t["addr"] == addr.as_str())
        })
        .cloned()
        .unwrap_or_else(|| panic!("no target {addr} in upstream {pool}: {v}"))
}

fn healthy_metric(w: &Weir, pool: &str, addr: SocketAddr) -> Option<f64> {
    w.metric(&format!(
        "weir_upstream_target_healthy{{upstream=\"{pool}\",target=\"{addr}\"}}"
    ))
}

fn percent(counts: &HashMap<String, usize>, name: &str, total: usize) -> f64 {
    *counts.get(name).unwrap_or(&0) as f64 * 100.0 / total as f64
}

#[test]
fn round_robin_follows_weights_and_rotates_exactly() {
    let (a, b, c) = (
        Upstream::start("a"),
        Upstream::start("b"),
        Upstream::start("c"),
    );
    let w = gateway(&[
        (
            "weighted",
            format!(
                r#"targets = [{{ addr = "{}", weight = 1 }}, {{ addr = "{}", weight = 3 }}]"#,
                a.addr, b.addr
            ),
        ),
        ("equal", targets(&[a.addr, b.addr, c.addr])),
    ]);

    let n = 400;
    let counts = spread(w.addr, &Req::get("/weighted"), n);
    // Tolerance: each share within ±5 percentage points of its weight's share (25/75).
    let (pa, pb) = (percent(&counts, "a", n), percent(&counts, "b", n));
    assert!((pa - 25.0).abs() <= 5.0, "a got {pa}%: {counts:?}");
    assert!((pb - 75.0).abs() <= 5.0, "b got {pb}%: {counts:?}");
    assert_eq!(
        counts.get("a").copied().unwrap_or(0) + counts.get("b").copied().unwrap_or(0),
        n
    );

    // Equal weights and sequential requests: the schedule is a fixed rotation, so the
    // split is exact and every target comes back exactly every third request.
    let order: Vec<String> = (0..30)
        .map(|_| who(&send(&w, &Req::get("/equal"))))
        .collect();
    let distinct: HashSet<&String> = order[..3].iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "first round covers all targets: {order:?}"
    );
    for i in 3..order.len() {
        assert_eq!(order[i], order[i - 3], "rotation broken at {i}: {order:?}");
    }
    for name in ["a", "b", "c"] {
        assert_eq!(order.iter().filter(|t| *t == name).count(), 10, "{order:?}");
    }
}

#[test]
fn random_follows_weights_and_uses_every_target() {
    let (a, b, c) = (
        Upstream::start("a"),
        Upstream::start("b"),
        Upstream::start("c"),
    );
    let w = gateway(&[(
        "pool",
        format!(
            r#"lb = "random"
targets = ["{}", "{}", {{ addr = "{}", weight = 2 }}]"#,
            a.addr, b.addr, c.addr
        ),
    )]);
    let n = 600;
    let counts = spread(w.addr, &Req::get("/pool"), n);
    // Tolerance: ±8 percentage points around 25/25/50; that is over 4 standard
    // deviations of a fair draw at n = 600, so a failure means a skewed picker.
    for (name, expected) in [("a", 25.0), ("b", 25.0), ("c", 50.0)] {
        let p = percent(&counts, name, n);
        assert!(
            counts.get(name).copied().unwrap_or(0) > 0,
            "{name} unused: {counts:?}"
        );
        assert!((p - expected).abs() <= 8.0, "{name} got {p}%: {counts:?}");
    }
}

#[test]
fn consistent_hash_is_sticky_spreads_keys_and_fails_over() {
    let ups = [
        Upstream::start("a"),
        Upstream::start("b"),
        Upstream::start("c"),
    ];
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let w = gateway(&[
        (
            "byuser",
            format!(
                "lb = \"consistent_hash\"\nhash_on = \"header:x-user\"\n{}\n{FAST_HEALTH}",
                targets(&addrs)
            ),
        ),
        (
            "bysession",
            format!(
                "lb = \"consistent_hash\"\nhash_on = \"cookie:session\"\n{}",
                targets(&addrs)
            ),
        ),
    ]);

    let user = |k: &str| Req::get("/byuser").header("x-user", k);
    // Every request of a key lands on one target; returns that target.
    let sticky = |req: &Req, times: usize| -> String {
        let counts = spread(w.addr, req, times);
        assert_eq!(counts.len(), 1, "{req:?} spread over {counts:?}");
        counts.into_keys().next().unwrap_or_default()
    };

    let keys: Vec<String> = (0..30).map(|i| format!("user-{i}")).collect();
    let home: HashMap<String, String> = keys
        .iter()
        .map(|k| (k.clone(), sticky(&user(k), 20)))
        .collect();
    let used: HashSet<&String> = home.values().collect();
    assert!(used.len() > 1, "30 keys all on one target: {home:?}");

    // The session cookie, among other cookies, is the key.
    let mut sessions = HashSet::new();
    for i in 0..10 {
        let cookie = format!("theme=dark; session=s{i}; lang=en");
        let req = Req::get("/bysession").header("cookie", &cookie);
        sessions.insert(sticky(&req, 10));
    }
    assert!(sessions.len() > 1, "10 sessions all on one target");

    // Take the first key's target out with its health check: that key moves (and its
    // requests still succeed), keys homed elsewhere stay where they were.
    let moved_key = &keys[0];
    let down_name = home[moved_key].clone();
    let down = ups
        .iter()
        .find(|u| u.name == down_name)
        .expect("known target");
    down.set_healthy(false);
    assert!(
        wait_until(Duration::from_secs(5), || {
            target_state(&w, "byuser", down.addr)["healthy"] == false
        }),
        "{down_name} never marked unhealthy"
    );
    let new_home = sticky(&user(moved_key), 20);
    assert_ne!(
        new_home, down_name,
        "{moved_key} still sent to the unhealthy target"
    );
    for k in &keys {
        let now = sticky(&user(k), 3);
        if home[k] == down_name {
            assert_ne!(now, down_name, "{k} still on the unhealthy target");
        } else {
            assert_eq!(now, home[k], "{k} moved although its target is healthy");
        }
    }

    // Healthy again: the key goes home.
    down.set_healthy(true);
    assert!(
        wait_until(Duration::from_secs(5), || {
            target_state(&w, "byuser", down.addr)["healthy"] == true
        }),
        "{down_name} never healthy again"
    );
    assert_eq!(sticky(&user(moved_key), 10), down_name);
}

#[test]
fn least_request_prefers_the_fast_target() {
    let fast = Upstream::start("fast");
    let slow = Upstream::with_handler("slow", |_| {
        Reply::Delayed(Duration::from_millis(300), Box::new(Reply::ok("")))
    });
    let w = gateway(&[(
        "pool",
        format!(
            "lb = \"least_request\"\n{}",
            targets(&[fast.addr, slow.addr])
        ),
    )]);
    let deadline = Instant::now() + Duration::from_secs(1);
    let failures = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..20 {
            s.spawn(|| {
                while Instant::now() < deadline {
                    match Req::get("/pool").send(w.addr) {
                        Ok(r) if r.status == 200 => {}
                        _ => {
                            failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    assert_eq!(failures.into_inner(), 0, "every request succeeds");
    let (f, s) = (fast.hits(), slow.hits());
    // Round robin would split about evenly; least-request sends to the slow target
    // only when it has no more requests in flight than the fast one.
    assert!(f > 2 * s, "fast {f}, slow {s}");
}

#[test]
fn active_health_checks_take_a_target_out_and_back() {
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let w = gateway(&[(
        "pool",
        format!(
            "{}\nhealth = {{ path = \"/health\", interval = \"100ms\", timeout = \"500ms\", healthy_threshold = 2, unhealthy_threshold = 2 }}",
            targets(&[a.addr, b.addr])
        ),
    )]);
    assert_eq!(healthy_metric(&w, "pool", b.addr), Some(1.0));
    let counts = spread(w.addr, &Req::get("/pool"), 10);
    assert_eq!(counts.get("b"), Some(&5), "{counts:?}");

    b.set_healthy(false);
    assert!(
        wait_until(Duration::from_secs(5), || {
            target_state(&w, "pool", b.addr)["healthy"] == false
        }),
        "b never marked unhealthy"
    );
    let state = target_state(&w, "pool", b.addr);
    assert_eq!(state["active_check_passing"], false, "{state}");
    assert_eq!(state["ejected"], false, "{state}");
    assert_eq!(target_state(&w, "pool", a.addr)["healthy"], true);
    assert_eq!(healthy_metric(&w, "pool", b.addr), Some(0.0));
    assert_eq!(healthy_metric(&w, "pool", a.addr), Some(1.0));
    let before = b.hits();
    let counts = spread(w.addr, &Req::get("/pool"), 30);
    assert_eq!(counts.get("a"), Some(&30), "{counts:?}");
    assert_eq!(b.hits(), before, "no request reached the unhealthy target");

    b.set_healthy(true);
    assert!(
        wait_until(Duration::from_secs(5), || {
            target_state(&w, "pool", b.addr)["healthy"] == true
        }),
        "b never healthy again"
    );
    assert_eq!(healthy_metric(&w, "pool", b.addr), Some(1.0));
    let counts = spread(w.addr, &Req::get("/pool"), 10);
    assert_eq!(
        counts.get("b"),
        Some(&5),
        "b is back in the rotation: {counts:?}"
    );
}

#[test]
fn passive_ejection_of_a_refusing_target() {
    let a = Upstream::start("a");
    let dead = closed_port();
    let w = gateway(&[(
        "pool",
        format!(
            "{}\nretries = 1\npassive = {{ max_failures = 3, eject_for = \"30s\" }}",
            targets(&[a.addr, dead])
        ),
    )]);
    // Connect failures are retried on `a`: the client never notices.
    let counts = spread(w.addr, &Req::get("/pool"), 10);
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");
    let state = target_state(&w, "pool", dead);
    assert_eq!(state["ejected"], true, "{state}");
    assert_eq!(state["healthy"], false, "{state}");
    assert_eq!(healthy_metric(&w, "pool", dead), Some(0.0));
    let counts = spread(w.addr, &Req::get("/pool"), 30);
    assert_eq!(counts.get("a"), Some(&30), "{counts:?}");
    assert_eq!(target_state(&w, "pool", dead)["ejected"], true);
}

#[test]
fn passive_ejection_of_a_target_that_hangs_up() {
    let a = Upstream::start("a");
    let rude = Upstream::with_handler("rude", |_| Reply::Close);
    let w = gateway(&[(
        "pool",
        format!(
            "{}\nretries = 1\npassive = {{ max_failures = 3, eject_for = \"30s\" }}",
            targets(&[a.addr, rude.addr])
        ),
    )]);
    // A hang-up after the request was sent is not retried on a fresh connection (the
    // target may have acted on it), so the client sees 502s until the ejection.
    let mut statuses = Vec::new();
    let ejected = wait_until(Duration::from_secs(5), || {
        let r = send(&w, &Req::get("/pool"));
        statuses.push(r.status);
        if r.status != 200 {
            assert_json_error(&r, 502, None);
        }
        target_state(&w, "pool", rude.addr)["ejected"] == true
    });
    assert!(ejected, "never ejected; statuses {statuses:?}");
    assert_eq!(
        rude.hits(),
        3,
        "ejected after exactly max_failures failures"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        3,
        "{statuses:?}"
    );
    let counts = spread(w.addr, &Req::get("/pool"), 30);
    assert_eq!(counts.get("a"), Some(&30), "{counts:?}");
    assert_eq!(rude.hits(), 3, "no request reached the ejected target");
}

#[test]
fn connect_failures_retry_on_another_target_only_when_allowed() {
    let a = Upstream::start("a");
    let dead = closed_port();
    // Passive ejection off, so every request meets the dead target in its turn.
    let w = gateway(&[
        (
            "retry",
            format!(
                "{}\nretries = 1\npassive = {{ max_failures = 0 }}",
                targets(&[dead, a.addr])
            ),
        ),
        (
            "noretry",
            format!(
                "{}\nretries = 0\npassive = {{ max_failures = 0 }}",
                targets(&[dead, a.addr])
            ),
        ),
    ]);
    let counts = spread(w.addr, &Req::get("/retry"), 20);
    assert_eq!(counts.get("a"), Some(&20), "{counts:?}");

    let mut ok = 0;
    let mut failed = 0;
    for _ in 0..20 {
        let r = send(&w, &Req::get("/noretry"));
        if r.status == 200 {
            assert_eq!(who(&r), "a");
            ok += 1;
        } else {
            assert_json_error(&r, 502, Some("upstream_connect_failed"));
            failed += 1;
        }
    }
    // Sequential round robin over two targets alternates exactly.
    assert_eq!((ok, failed), (10, 10));
    assert_eq!(target_state(&w, "noretry", dead)["ejected"], false);
}

#[test]
fn connect_failure_is_a_json_502_with_the_request_id() {
    let w = gateway(&[(
        "pool",
        format!("{}\nretries = 0", targets(&[closed_port()])),
    )]);
    let r = send(&w, &Req::get("/pool"));
    assert_json_error(&r, 502, Some("upstream_connect_failed"));
    // A client-supplied id is echoed in the body as well.
    let r = send(&w, &Req::get("/pool").header("x-request-id", "trace-502"));
    assert_json_error(&r, 502, Some("upstream_connect_failed"));
    assert_eq!(r.json()["request_id"], "trace-502");
}

#[test]
fn no_healthy_target_is_a_prompt_json_503() {
    let sick = Upstream::start("sick");
    sick.set_healthy(false);
    let w = gateway(&[(
        "pool",
        format!(
            "{}\n{FAST_HEALTH}\ntimeouts = {{ connect = \"5s\", read = \"5s\", write = \"5s\" }}",
            targets(&[sick.addr])
        ),
    )]);
    assert!(
        wait_until(Duration::from_secs(5), || {
            target_state(&w, "pool", sick.addr)["healthy"] == false
        }),
        "never marked unhealthy"
    );
    let hits = sick.hits();
    let start = Instant::now();
    let r = send(&w, &Req::get("/pool"));
    let took = start.elapsed();
    assert_json_error(&r, 503, Some("no_healthy_upstream"));
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(sick.hits(), hits, "nothing sent to the unhealthy target");
}

#[test]
fn read_timeout_is_a_json_504() {
    let slow = Upstream::with_handler("slow", |_| {
        Reply::Delayed(Duration::from_secs(2), Box::new(Reply::ok("late")))
    });
    let w = gateway(&[(
        "pool",
        format!(
            "{}\nretries = 0\ntimeouts = {{ read = \"300ms\" }}",
            targets(&[slow.addr])
        ),
    )]);
    let start = Instant::now();
    let r = send(&w, &Req::get("/pool"));
    let took = start.elapsed();
    assert_json_error(&r, 504, Some("upstream_timeout"));
    assert!(took < Duration::from_millis(1500), "took {took:?}");
}

#[test]
fn hang_up_without_an_answer_is_a_json_502() {
    let rude = Upstream::with_handler("rude", |_| Reply::Close);
    let w = gateway(&[(
        "pool",
        format!(
            "{}\nretries = 0\npassive = {{ max_failures = 0 }}",
            targets(&[rude.addr])
        ),
    )]);
    for _ in 0..3 {
        let r = send(&w, &Req::get("/pool"));
        assert_json_error(&r, 502, None);
    }
    assert_eq!(rude.hits(), 3);
}

#[test]
fn retry_on_status_tries_another_target() {
    let bad = Upstream::with_handler("bad", |_| Reply::status(503));
    let good = Upstream::start("good");
    let both = targets(&[bad.addr, good.addr]);
    let w = gateway(&[
        (
            "retry",
            format!("{both}\nretries = 1\nretry_on_status = [503]\npassive = {{ max_failures = 0 }}"),
        ),
        (
            "single",
            format!(
                "{}\nretries = 1\nretry_on_status = [503]\npassive = {{ max_failures = 0 }}",
                targets(&[bad.addr])
            ),
        ),
        (
            "eject",
            format!("{both}\nretries = 1\nretry_on_status = [503]\npassive = {{ max_failures = 2, eject_for = \"30s\" }}"),
        ),
    ]);

    // GETs answered 503 by `bad` are retried on `good`.
    let counts = spread(w.addr, &Req::get("/retry"), 20);
    assert_eq!(counts.get("good"), Some(&20), "{counts:?}");
    assert!(bad.hits() >= 10, "the 503 target was tried: {}", bad.hits());

    // Not idempotent: the 503 goes back to the client as the upstream sent it.
    let mut seen_bad = 0;
    for _ in 0..4 {
        let r = send(&w, &Req::new("POST", "/retry").body(b"x"));
        match r.status {
            200 => assert_eq!(who(&r), "good"),
            503 => {
                assert_eq!(who(&r), "bad");
                seen_bad += 1;
            }
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    assert_eq!(seen_bad, 2, "POSTs alternate and are never retried");

    // No other target to try: the upstream's own 503 is the answer.
    let r = send(&w, &Req::get("/single"));
    assert_eq!((r.status, who(&r).as_str()), (503, "bad"), "{}", r.text());

    // Retried statuses count as failures for passive health.
    let counts = spread(w.addr, &Req::get("/eject"), 6);
    assert_eq!(counts.get("good"), Some(&6), "{counts:?}");
    let state = target_state(&w, "eject", bad.addr);
    assert_eq!(state["ejected"], true, "{state}");
}
