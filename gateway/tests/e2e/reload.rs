//! Hot reload: under load with zero failures, in-flight requests on their snapshot,
//! bad configs rejected while the old one serves, SIGHUP and the file watcher.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::common::*;

fn config(up: std::net::SocketAddr, tag: &str, watch: bool) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
watch_config = {watch}
watch_interval = "100ms"
[admin]
listen = "{{admin}}"
[access_log]
output = "off"

[[upstreams]]
name = "app"
targets = ["{up}"]
health = {{ interval = "100ms", healthy_threshold = 1, unhealthy_threshold = 1 }}

[[routes]]
name = "app"
paths = ["/"]
upstream = "app"
response_headers = {{ set = {{ "x-tag" = "{tag}" }} }}
"#
    )
}

#[test]
fn twenty_reloads_under_load_fail_no_request() {
    let up = Upstream::start("app");
    let w = Weir::start(&config(up.addr, "gen-0", false));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for keep_alive in [true, false] {
        let (stop, ok, failures, addr) = (stop.clone(), ok.clone(), failures.clone(), w.addr);
        clients.push(std::thread::spawn(move || {
            let mut conn = Conn::open(addr).ok();
            while !stop.load(Ordering::Relaxed) {
                let result = if keep_alive {
                    match conn.as_mut() {
                        Some(c) => c.send(&Req::get("/load")),
                        None => Req::get("/load").send(addr),
                    }
                } else {
                    Req::get("/load").send(addr)
                };
                match result {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status)),
                    Err(e) => {
                        failures.lock().unwrap().push(format!("error {e}"));
                        conn = Conn::open(addr).ok();
                    }
                }
            }
        }));
    }
    for i in 1..=20 {
        w.write_config(&config(up.addr, &format!("gen-{i}"), false));
        let r = if i % 5 == 0 {
            // Every fifth reload by signal, the rest through the admin API.
            w.signal(libc::SIGHUP);
            let expected = (i + 1) as f64;
            assert!(wait_until(Duration::from_secs(5), || w
                .metric("weir_config_generation")
                == Some(expected)));
            None
        } else {
            Some(w.reload())
        };
        if let Some(r) = r {
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.json()["generation"], i + 1);
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "failed requests during reloads: {failures:?}"
    );
    assert!(ok.load(Ordering::Relaxed) > 100, "the clients kept sending");
    assert_eq!(w.get("/").header("x-tag"), Some("gen-20"));
    assert_eq!(
        w.metric("weir_config_reloads_total{result=\"ok\"}"),
        Some(20.0)
    );
}

#[test]
fn slow_request_finishes_on_the_snapshot_it_started_with() {
    let up = Upstream::with_handler("app", |r| {
        if r.path == "/slow" {
            Reply::Delayed(Duration::from_millis(1500), Box::new(Reply::ok("slow")))
        } else {
            Reply::ok("fast")
        }
    });
    let w = Weir::start(&config(up.addr, "old", false));
    let addr = w.addr;
    let slow = std::thread::spawn(move || get(addr, "/slow"));
    assert!(wait_until(Duration::from_secs(5), || up.hits() == 1));
    w.write_config(&config(up.addr, "new", false));
    assert_eq!(w.reload().status, 200);
    assert_eq!(w.get("/").header("x-tag"), Some("new"));
    let r = slow.join().unwrap().expect("slow request completes");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slow");
    assert_eq!(
        r.header("x-tag"),
        Some("old"),
        "finished on its own snapshot"
    );
}

#[test]
fn bad_config_is_rejected_and_the_old_one_keeps_serving() {
    let up = Upstream::start("app");
    let w = Weir::start(&config(up.addr, "good", false));
    let bad = config(up.addr, "bad", false).replace("upstream = \"app\"", "upstream = \"ghost\"");
    w.write_config(&bad);
    let r = w.reload();
    assert_eq!(r.status, 422);
    let v = r.json();
    assert_eq!(v["error"], "config_rejected");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("weir.toml:") && msg.contains("unknown upstream `ghost`"),
        "{msg}"
    );
    assert_eq!(v["generation"], 1);
    let served = w.get("/");
    assert_eq!(served.status, 200);
    assert_eq!(served.header("x-tag"), Some("good"));
    assert_eq!(
        w.metric("weir_config_reloads_total{result=\"error\"}"),
        Some(1.0)
    );
    assert_eq!(w.metric("weir_config_generation"), Some(1.0));
    let cfg = w.admin_json("/config");
    assert_eq!(cfg["last_reload"]["ok"], false);
    assert!(cfg["last_reload"]["error"]
        .as_str()
        .unwrap()
        .contains("ghost"));
    // Broken TOML as well.
    w.write_config("[server\nlisten = ");
    assert_eq!(w.reload().status, 422);
    assert_eq!(w.get("/").header("x-tag"), Some("good"));
    // And a fixed file is taken again.
    w.write_config(&config(up.addr, "fixed", false));
    assert_eq!(w.reload().status, 200);
    assert_eq!(w.get("/").header("x-tag"), Some("fixed"));
}

#[test]
fn file_watcher_reloads_on_change_and_skips_broken_files() {
    let up = Upstream::start("app");
    let w = Weir::start(&config(up.addr, "v1", true));
    w.write_config(&config(up.addr, "v2", true));
    assert!(
        wait_until(Duration::from_secs(5), || w.get("/").header("x-tag")
            == Some("v2")),
        "{}",
        w.stderr_text()
    );
    w.write_config("this is not toml = [");
    assert!(wait_until(Duration::from_secs(5), || {
        w.metric("weir_config_reloads_total{result=\"error\"}") == Some(1.0)
    }));
    assert_eq!(w.get("/").header("x-tag"), Some("v2"));
    assert!(w.stderr_text().contains("config reload rejected"));
}

#[test]
fn health_state_survives_a_reload_of_an_unchanged_upstream() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let cfg = |tag: &str| {
        format!(
            r#"
[server]
listen = ["{{listen}}"]
watch_config = false
[admin]
listen = "{{admin}}"
[access_log]
output = "off"

[[upstreams]]
name = "pool"
targets = ["{}", "{}"]
health = {{ interval = "100ms", healthy_threshold = 1, unhealthy_threshold = 1 }}

[[routes]]
name = "r"
paths = ["/"]
upstream = "pool"
response_headers = {{ set = {{ "x-tag" = "{tag}" }} }}
"#,
            a.addr, b.addr
        )
    };
    let w = Weir::start(&cfg("one"));
    b.set_healthy(false);
    assert!(wait_until(Duration::from_secs(5), || {
        w.admin_json("/upstreams")["upstreams"][0]["targets"][1]["healthy"] == false
    }));
    // A slow health-check interval after reload would expose a reset state.
    w.write_config(&cfg("two"));
    assert_eq!(w.reload().status, 200);
    let before = b.hits();
    for _ in 0..20 {
        let r = w.get("/");
        assert_eq!(r.header("x-tag"), Some("two"));
        assert_eq!(r.header("x-upstream"), Some("a"));
    }
    assert_eq!(
        b.hits(),
        before,
        "the unhealthy target stayed out across the reload"
    );
}
