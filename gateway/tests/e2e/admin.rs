//! Admin API, token enforcement, metrics, access log, startup refusals, shutdown.

use std::time::Duration;

use super::common::*;

fn config(upstream: std::net::SocketAddr, extra_admin: &str, log: &str) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
grace_period = "10s"
[admin]
listen = "{{admin}}"
{extra_admin}
[access_log]
output = "{log}"

[[upstreams]]
name = "app"
targets = ["{upstream}"]

[[routes]]
name = "app"
paths = ["/app"]
upstream = "app"

[[routes]]
name = "ping"
paths = ["=/ping"]
respond = {{ status = 200, body = "pong" }}
"#
    )
}

#[test]
fn token_required_everywhere_but_healthz() {
    let up = Upstream::start("app");
    let w = Weir::start_with(
        &config(up.addr, "token = \"${ADMIN_TOKEN}\"", "off"),
        &[("ADMIN_TOKEN", "t0ps3cret")],
    );
    assert_eq!(w.admin_req("GET", "/healthz", None).unwrap().status, 200);
    for path in ["/metrics", "/config", "/routes", "/upstreams", "/readyz"] {
        let r = w.admin_req("GET", path, None).unwrap();
        assert_eq!(r.status, 401, "{path} without token");
        assert_eq!(r.json()["error"], "unauthorized");
        let r = w.admin_req("GET", path, Some("wrong-token")).unwrap();
        assert_eq!(r.status, 401, "{path} with a wrong token");
        let r = w.admin_req("GET", path, Some("t0ps3cret")).unwrap();
        assert_eq!(r.status, 200, "{path} with the token");
    }
    assert_eq!(w.admin_req("POST", "/reload", None).unwrap().status, 401);
    // The effective config never shows the secret.
    let cfg = w
        .admin_req("GET", "/config", Some("t0ps3cret"))
        .unwrap()
        .text();
    assert!(!cfg.contains("t0ps3cret"));
    assert!(cfg.contains("<redacted>"));
}

#[test]
fn refuses_admin_beyond_loopback_without_token() {
    let cfg = config(closed_port(), "", "off")
        .replace("{listen}", "127.0.0.1:1")
        .replace("listen = \"{admin}\"", "listen = \"0.0.0.0:9901\"");
    let (ok, out) = weir_check(&cfg);
    assert!(!ok);
    assert!(
        out.contains("`admin.listen`") && out.contains("without a token"),
        "{out}"
    );
}

#[test]
fn admin_endpoints_describe_the_gateway() {
    let up = Upstream::start("app");
    let w = Weir::start(&config(up.addr, "", "off"));
    let routes = w.admin_json("/routes");
    assert_eq!(routes["routes"][0]["name"], "app");
    assert_eq!(routes["routes"][0]["action"]["upstream"], "app");
    assert_eq!(routes["routes"][1]["action"]["respond"], 200);
    let ups = w.admin_json("/upstreams");
    assert_eq!(
        ups["upstreams"][0]["targets"][0]["addr"],
        up.addr.to_string()
    );
    assert_eq!(ups["upstreams"][0]["targets"][0]["healthy"], true);
    let cfg = w.admin_json("/config");
    assert_eq!(cfg["generation"], 1);
    assert_eq!(cfg["config"]["upstreams"][0]["name"], "app");
    assert_eq!(w.admin_req("GET", "/readyz", None).unwrap().status, 200);
    assert_eq!(w.admin_req("GET", "/nope", None).unwrap().status, 404);
    assert_eq!(w.admin_req("GET", "/reload", None).unwrap().status, 405);
}

#[test]
fn metrics_count_requests_by_route_and_status_class() {
    let up = Upstream::start("app");
    let w = Weir::start(&config(up.addr, "", "off"));
    for _ in 0..5 {
        assert_eq!(w.get("/app").status, 200);
    }
    for _ in 0..3 {
        assert_eq!(w.get("/missing").status, 404);
    }
    w.get("/ping");
    // Metrics are recorded in the logging phase, just after the response is sent.
    assert!(wait_until(Duration::from_secs(5), || {
        w.metric("weir_http_requests_total{route=\"ping\",status=\"2xx\"}") == Some(1.0)
            && w.metric("weir_http_requests_total{route=\"none\",status=\"4xx\"}") == Some(3.0)
    }));
    let m = w.metrics();
    assert_eq!(
        w.metric("weir_http_requests_total{route=\"app\",status=\"2xx\"}"),
        Some(5.0),
        "{m}"
    );
    assert_eq!(
        w.metric("weir_http_requests_total{route=\"none\",status=\"4xx\"}"),
        Some(3.0)
    );
    assert_eq!(
        w.metric("weir_http_request_duration_seconds_count{route=\"app\"}"),
        Some(5.0)
    );
    assert_eq!(
        w.metric("weir_upstream_duration_seconds_count{upstream=\"app\"}"),
        Some(5.0)
    );
    assert_eq!(
        w.metric(&format!(
            "weir_upstream_target_healthy{{upstream=\"app\",target=\"{}\"}}",
            up.addr
        )),
        Some(1.0)
    );
    assert_eq!(w.metric("weir_config_generation"), Some(1.0));
    assert_eq!(
        w.metric("weir_config_reloads_total{result=\"ok\"}"),
        Some(0.0)
    );
    assert!(m.contains("# TYPE weir_http_request_duration_seconds histogram"));
    assert!(m.contains("weir_downstream_requests_active"));

    // Open connections are a gauge: three kept-alive clients, then none.
    let mut conns: Vec<Conn> = (0..3).map(|_| Conn::open(w.addr).unwrap()).collect();
    for c in &mut conns {
        assert_eq!(c.send(&Req::get("/ping")).unwrap().status, 200);
    }
    assert!(
        wait_until(Duration::from_secs(5), || w
            .metric("weir_downstream_connections")
            == Some(3.0)),
        "{:?}",
        w.metric("weir_downstream_connections")
    );
    drop(conns);
    assert!(wait_until(Duration::from_secs(5), || w
        .metric("weir_downstream_connections")
        == Some(0.0)));
}

#[test]
fn access_log_line_has_every_field() {
    let up = Upstream::start("app");
    let log_cfg = config(up.addr, "", "{dir}/access.log");
    let w = Weir::start(&log_cfg);
    let r = Req::get("/app/x?y=1")
        .header("user-agent", "e2e-agent/1")
        .header("x-request-id", "log-test-1")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 200);
    let path = w.dir.path().join("access.log");
    let mut line = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            line = std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .find(|l| l.contains("log-test-1"))
                .unwrap_or("")
                .to_string();
            !line.is_empty()
        }),
        "no access-log line"
    );
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(v["request_id"], "log-test-1");
    assert_eq!(v["client_ip"], "127.0.0.1");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["host"], "test.local");
    assert_eq!(v["path"], "/app/x");
    assert_eq!(v["status"], 200);
    assert_eq!(v["route"], "app");
    assert_eq!(v["upstream"], "app");
    assert_eq!(v["upstream_target"], up.addr.to_string());
    assert_eq!(v["user_agent"], "e2e-agent/1");
    assert!(v["bytes_in"].is_u64() && v["bytes_out"].is_u64());
    assert!(v["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(v["upstream_duration_ms"].as_f64().unwrap() > 0.0);
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
    assert!(v["error"].is_null());
    // An error is logged with its code.
    w.get("/missing");
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .contains("\"error\":\"no_route\"")
    }));
}

/// The writer takes lines in batches (it lets them gather after a wake-up): a burst
/// from several connections loses none, and SIGTERM writes out what is queued.
#[test]
fn access_log_keeps_every_line_of_a_burst_and_writes_them_out_on_shutdown() {
    let up = Upstream::start("app");
    let mut w = Weir::start(&config(up.addr, "", "{dir}/access.log"));
    let addr = w.addr;
    let senders: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Conn::open(addr).unwrap();
                for i in 0..100 {
                    let id = format!("burst-{t}-{i}");
                    let r = c
                        .send(&Req::get("/app").header("x-request-id", &id))
                        .unwrap();
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    assert_eq!(w.metric("weir_access_log_dropped_total"), Some(0.0));
    let path = w.dir.path().join("access.log");
    w.signal(libc::SIGTERM);
    assert!(w.wait_exit(Duration::from_secs(10)).is_some());
    let text = std::fs::read_to_string(&path).unwrap();
    let mut ids: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .filter_map(|v| v["request_id"].as_str().map(str::to_string))
        .filter(|id| id.starts_with("burst-"))
        .collect();
    ids.sort();
    let mut want: Vec<String> = (0..4)
        .flat_map(|t| (0..100).map(move |i| format!("burst-{t}-{i}")))
        .collect();
    want.sort();
    assert_eq!(ids, want);
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let up = Upstream::with_handler("app", |_| {
        Reply::Delayed(Duration::from_millis(800), Box::new(Reply::ok("slow")))
    });
    let mut w = Weir::start(&config(up.addr, "", "off"));
    let addr = w.addr;
    let slow = std::thread::spawn(move || get(addr, "/app"));
    assert!(wait_until(Duration::from_secs(5), || up.hits() == 1));
    w.signal(libc::SIGTERM);
    let r = slow.join().unwrap().expect("in-flight request completes");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slow");
    let status = w
        .wait_exit(Duration::from_secs(5))
        .expect("weir exits once nothing is in flight, well before the 10s grace period");
    assert!(status.success() || status.code().is_some(), "{status:?}");
}

#[test]
fn port_in_use_is_a_clear_startup_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    let cfg = config(closed_port(), "", "off")
        .replace("{listen}", &format!("127.0.0.1:{port}"))
        .replace("{admin}", &format!("127.0.0.1:{}", free_port()));
    std::fs::write(&path, cfg).unwrap();
    let out = std::process::Command::new(WEIR)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("weir.toml:3: `server.listen[0]`: cannot listen"),
        "{err}"
    );
}
