//! The plugin host through the real gateway, with proxy-wasm modules written in WAT:
//! header edits, local responses, and hostile plugins (infinite loop, memory bomb,
//! panic, out-of-bounds pointers) contained while the gateway keeps serving.

use std::time::{Duration, Instant};

use super::common::*;

/// A minimal proxy-wasm module: ABI marker, bump allocator, context creation, and the
/// given `on_request_headers` / `on_response_headers` bodies (each leaves an action).
fn module(request_body: &str, response_body: &str, configure_result: i32) -> String {
    format!(
        r#"(module
  (import "env" "proxy_replace_header_map_value" (func $replace (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $local (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $unimplemented (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_call_foreign_function" (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $enqueue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_resolve_shared_queue" (func $resolve (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 0) "x-plugin")
  (data (i32.const 16) "wasm")
  (data (i32.const 32) "denied by wat")
  (data (i32.const 64) "x-plugin-resp")
  (data (i32.const 96) "content-length")
  (data (i32.const 128) "weir.counter_add")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const {configure_result}))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    {request_body})
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    {response_body})
)"#
    )
}

const CONTINUE: &str = "(i32.const 0)";

/// Sets request header `x-plugin: wasm`; tries to overwrite content-length (refused:
/// the status must be BadArgument, else trap); sets `x-plugin-resp` on the response.
fn header_plugin() -> String {
    module(
        r#"(drop (call $replace (i32.const 0) (i32.const 0) (i32.const 8) (i32.const 16) (i32.const 4)))
    (if (i32.ne (call $replace (i32.const 0) (i32.const 96) (i32.const 14) (i32.const 16) (i32.const 4)) (i32.const 2))
      (then unreachable))
    (i32.const 0)"#,
        r#"(drop (call $replace (i32.const 2) (i32.const 64) (i32.const 13) (i32.const 16) (i32.const 4)))
    (i32.const 0)"#,
        1,
    )
}

fn local_plugin() -> String {
    module(
        r#"(drop (call $local (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 32) (i32.const 13) (i32.const 0) (i32.const 0) (i32.const -1)))
    ;; A second local reply is refused with BadArgument.
    (if (i32.ne (call $local (i32.const 500) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)) (i32.const 2))
      (then unreachable))
    (i32.const 1)"#,
        CONTINUE,
        1,
    )
}

/// Calls the newer host services with bad arguments, and adds headers without end; any
/// status other than the one expected traps (`unreachable`, so a 500). All as expected:
/// a local 418.
fn services_plugin() -> String {
    let expect = |call: &str, status: i32| {
        format!("(if (i32.ne {call} (i32.const {status})) (then unreachable))\n    ")
    };
    let checks = [
        // weir.counter_add with 3 bytes of arguments (it needs 16 and a key).
        expect("(call $foreign (i32.const 128) (i32.const 16) (i32.const 0) (i32.const 3) (i32.const 200) (i32.const 204))", 2),
        // A function name outside memory.
        expect("(call $foreign (i32.const -16) (i32.const 100) (i32.const 0) (i32.const 0) (i32.const 200) (i32.const 204))", 2),
        // A function Weir does not have.
        expect("(call $foreign (i32.const 16) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 200) (i32.const 204))", 1),
        // Queues: unknown ids, an item larger than allowed, an unknown name.
        expect("(call $enqueue (i32.const 999) (i32.const 0) (i32.const 4))", 1),
        expect("(call $enqueue (i32.const 999) (i32.const 0) (i32.const 2147483647))", 2),
        expect("(call $dequeue (i32.const 12345) (i32.const 200) (i32.const 204))", 1),
        expect("(call $resolve (i32.const 16) (i32.const 4) (i32.const 0) (i32.const 8) (i32.const 200))", 1),
        // No request body in the headers phase; an unknown buffer type.
        expect("(call $get_buffer (i32.const 0) (i32.const 0) (i32.const 10) (i32.const 200) (i32.const 204))", 1),
        expect("(call $get_buffer (i32.const 99) (i32.const 0) (i32.const 10) (i32.const 200) (i32.const 204))", 2),
    ]
    .concat();
    // A header bomb: distinct names `x-aaa`, `x-baa`... added until the host refuses
    // (BadArgument), which must happen before 17,000 (http's map panics at 32,768).
    let bomb = r#"(i32.store8 (i32.const 300) (i32.const 120))
    (i32.store8 (i32.const 301) (i32.const 45))
    (loop $add
      (i32.store8 (i32.const 302) (i32.add (i32.const 97) (i32.rem_u (local.get $i) (i32.const 26))))
      (i32.store8 (i32.const 303) (i32.add (i32.const 97) (i32.rem_u (i32.div_u (local.get $i) (i32.const 26)) (i32.const 26))))
      (i32.store8 (i32.const 304) (i32.add (i32.const 97) (i32.div_u (local.get $i) (i32.const 676))))
      (local.set $s (call $replace (i32.const 0) (i32.const 300) (i32.const 5) (i32.const 16) (i32.const 4)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $add (i32.and (i32.eqz (local.get $s)) (i32.lt_u (local.get $i) (i32.const 17000)))))
    (if (i32.ne (local.get $s) (i32.const 2)) (then unreachable))
    "#;
    module(
        &format!(
            "(local $i i32) (local $s i32)\n    {checks}{bomb}(drop (call $local (i32.const 418) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)))\n    (i32.const 1)"
        ),
        CONTINUE,
        1,
    )
}

fn write(dir: &std::path::Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn config(up: std::net::SocketAddr) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 2
watch_config = false
[admin]
listen = "{{admin}}"
[access_log]
output = "off"

[[upstreams]]
name = "app"
targets = ["{up}"]

[[plugins]]
name = "headers"
wasm = "headers.wat"
[[plugins]]
name = "deny"
wasm = "local.wat"
[[plugins]]
name = "loop"
wasm = "loop.wat"
cpu_limit = "20ms"
[[plugins]]
name = "bomb"
wasm = "bomb.wat"
memory_limit_mb = 4
[[plugins]]
name = "panic"
wasm = "panic.wat"
on_error = "allow"
[[plugins]]
name = "oob"
wasm = "oob.wat"
[[plugins]]
name = "unsupported"
wasm = "unsupported.wat"
[[plugins]]
name = "services"
wasm = "services.wat"
cpu_limit = "5s"

[[routes]]
name = "headers"
paths = ["/headers"]
upstream = "app"
plugins = ["headers"]
[[routes]]
name = "deny"
paths = ["/deny"]
upstream = "app"
plugins = ["headers", "deny"]
[[routes]]
name = "plain"
paths = ["/plain"]
upstream = "app"
{}"#,
        // One route per single-plugin case: /NAME runs plugin NAME.
        ["loop", "bomb", "panic", "oob", "unsupported", "services"]
            .iter()
            .map(|p| format!(
                "[[routes]]\nname = \"{p}\"\npaths = [\"/{p}\"]\nupstream = \"app\"\nplugins = [\"{p}\"]\n"
            ))
            .collect::<String>()
    )
}

/// Writes every module into the gateway's directory (paths are relative to the config).
fn start(up: &Upstream) -> Weir {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(up.addr);
    // The modules must exist before the gateway loads its config: write them where
    // `Weir::start` will put the config, via a config that references absolute paths.
    let abs = |name: &str| dir.path().join(name).display().to_string();
    write(dir.path(), "headers.wat", &header_plugin());
    write(dir.path(), "local.wat", &local_plugin());
    write(
        dir.path(),
        "loop.wat",
        &module("(loop $l (br $l)) (i32.const 0)", CONTINUE, 1),
    );
    write(
        dir.path(),
        "bomb.wat",
        &module(
            "(loop $l (drop (memory.grow (i32.const 16))) (br $l)) (i32.const 0)",
            CONTINUE,
            1,
        ),
    );
    write(dir.path(), "panic.wat", &module("unreachable", CONTINUE, 1));
    write(
        dir.path(),
        "oob.wat",
        &module(
            r#"(if (i32.eq (call $log (i32.const 2) (i32.const -16) (i32.const 100)) (i32.const 2))
      (then (drop (call $local (i32.const 418) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)))))
    (i32.const 1)"#,
            CONTINUE,
            1,
        ),
    );
    write(
        dir.path(),
        "unsupported.wat",
        &module(
            // Changing a body is not implemented: the call answers Unimplemented (12).
            r#"(if (i32.ne (call $unimplemented (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)) (i32.const 12))
      (then unreachable))
    (i32.const 0)"#,
            CONTINUE,
            1,
        ),
    );
    write(dir.path(), "services.wat", &services_plugin());
    let mut cfg = cfg;
    for name in [
        "headers",
        "local",
        "loop",
        "bomb",
        "panic",
        "oob",
        "unsupported",
        "services",
    ] {
        cfg = cfg.replace(
            &format!("\"{name}.wat\""),
            &format!("\"{}\"", abs(&format!("{name}.wat"))),
        );
    }
    let w = Weir::start(&cfg);
    // Keep the module directory alive as long as the gateway.
    std::mem::forget(dir);
    w
}

#[test]
fn plugins_edit_headers_and_answer_locally() {
    let up = Upstream::start("app");
    let w = start(&up);
    let r = w.get("/headers");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().unwrap().header("x-plugin"), Some("wasm"));
    assert_eq!(r.header("x-plugin-resp"), Some("wasm"));

    let before = up.hits();
    let r = w.get("/deny");
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "denied by wat");
    assert!(r.header("x-request-id").is_some());
    assert_eq!(
        up.hits(),
        before,
        "a local answer never reaches the upstream"
    );

    let r = w.get("/unsupported");
    assert_eq!(
        r.status, 200,
        "an unimplemented call is an error status, not a crash"
    );
}

#[test]
fn hostile_plugins_are_contained() {
    let up = Upstream::start("app");
    let w = start(&up);

    let t = Instant::now();
    let r = w.get("/loop");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["error"], "plugin_failed");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the CPU deadline stopped the loop"
    );

    let r = w.get("/bomb");
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"], "plugin_failed");

    // on_error = "allow": the failing plugin is skipped.
    let r = w.get("/panic");
    assert_eq!(r.status, 200);

    // An out-of-bounds pointer gets BadArgument, and the plugin carries on.
    let r = w.get("/oob");
    assert_eq!(r.status, 418);
    // So do bad arguments to queues, foreign functions and buffers.
    let r = w.get("/services");
    assert_eq!(r.status, 418, "{}", r.text());

    // Other routes, and other plugins, are unaffected.
    assert_eq!(w.get("/plain").status, 200);
    assert_eq!(w.get("/headers").status, 200);

    let m = w.metrics();
    for (plugin, kind) in [("loop", "timeout"), ("bomb", "memory"), ("panic", "trap")] {
        let series = format!("weir_plugin_errors_total{{plugin=\"{plugin}\",kind=\"{kind}\"}}");
        assert!(w.metric(&series).unwrap_or(0.0) >= 1.0, "{series} in\n{m}");
    }

    // The failed VMs are rebuilt in the background: the loop plugin fails again the
    // same way (not with a dead VM forever), and keeps failing fast.
    assert!(wait_until(Duration::from_secs(10), || {
        w.get("/loop").status == 500
            && w.metric("weir_plugin_errors_total{plugin=\"loop\",kind=\"timeout\"}")
                .unwrap_or(0.0)
                >= 2.0
    }));
    assert_eq!(w.get("/plain").status, 200);
}

#[test]
fn plugins_that_cannot_load_are_rejected_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "refuses.wat", &module(CONTINUE, CONTINUE, 0));
    write(
        dir.path(),
        "not-proxy-wasm.wat",
        r#"(module (memory (export "memory") 1))"#,
    );
    write(dir.path(), "garbage.wasm", "\0asm this is not wasm");
    // The `weir_unused_callbacks` extension with another signature, and trapping.
    let abi = r#"(func (export "proxy_abi_version_0_2_1"))"#;
    let with =
        |export: &str| module(CONTINUE, CONTINUE, 1).replace(abi, &format!("{abi}\n  {export}"));
    write(
        dir.path(),
        "unused-signature.wat",
        &with(r#"(func (export "weir_unused_callbacks") (param i32) (result i32) (i32.const 3))"#),
    );
    write(
        dir.path(),
        "unused-trap.wat",
        &with(r#"(func (export "weir_unused_callbacks") (result i32) unreachable)"#),
    );
    for (file, reason) in [
        ("refuses.wat", "on_configure rejected"),
        ("not-proxy-wasm.wat", "not a proxy-wasm module"),
        ("garbage.wasm", "does not compile"),
        ("unused-signature.wat", "export weir_unused_callbacks"),
        ("unused-trap.wat", "weir_unused_callbacks failed"),
    ] {
        let cfg = format!(
            r#"
[server]
listen = ["127.0.0.1:1"]
[[upstreams]]
name = "a"
targets = ["127.0.0.1:2"]
[[plugins]]
name = "p"
wasm = "{}"
[[routes]]
name = "r"
upstream = "a"
plugins = ["p"]
"#,
            dir.path().join(file).display()
        );
        let (ok, out) = weir_check(&cfg);
        assert!(!ok, "{file} should be rejected");
        assert!(
            out.contains("plugin `p`") && out.contains(reason),
            "{file}: {out}"
        );
    }
    let (ok, out) = weir_check(
        r#"
[[upstreams]]
name = "a"
targets = ["127.0.0.1:2"]
[[routes]]
name = "r"
upstream = "a"
plugins = ["ghost"]
"#,
    );
    assert!(!ok);
    assert!(
        out.contains("`routes[0].plugins[0]`: unknown plugin `ghost`"),
        "{out}"
    );
}

/// A built-in policy from `plugins/dist` (built by `scripts/build-plugins.sh`, which
/// the test command runs first).

#[test]
fn transform_policy_built_with_the_sdk_runs_in_the_gateway() {
    let up = Upstream::with_handler("app", |r| {
        Reply::Send(
            200,
            vec![("server".into(), "upstream/1.0".into())],
            r.path.clone().into_bytes(),
        )
    });
    let cfg = format!(
        r#"
[server]
listen = ["{{listen}}"]
watch_config = false
[admin]
listen = "{{admin}}"
[access_log]
output = "off"

[[upstreams]]
name = "app"
targets = ["{}"]

[[plugins]]
name = "transform"
wasm = "{}"
config.request.headers = {{ set = {{ x-gateway = "weir" }}, remove = ["x-debug"], rename = {{ x-user = "x-upstream-user" }} }}
config.request.path = {{ replace_prefix = {{ from = "/v1", to = "/api/v1" }} }}
config.request.query = {{ add = {{ source = "weir" }}, remove = ["token"] }}
config.response.headers = {{ remove = ["server"], set = {{ cache-control = "no-store" }} }}

[[routes]]
name = "api"
paths = ["/v1"]
upstream = "app"
plugins = ["transform"]
"#,
        up.addr,
        built_plugin("transform")
    );
    let w = Weir::start(&cfg);
    let r = Req::get("/v1/users?token=secret&page=2")
        .header("x-debug", "1")
        .header("x-user", "ada")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "/api/v1/users?page=2&source=weir");
    let seen = up.last().unwrap();
    assert_eq!(seen.header("x-gateway"), Some("weir"));
    assert_eq!(seen.header("x-debug"), None);
    assert_eq!(seen.header("x-upstream-user"), Some("ada"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("server"), None);
    // Its calls are counted per phase.
    assert!(
        w.metric("weir_plugin_call_duration_seconds_count{plugin=\"transform\",phase=\"request_headers\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[test]
fn a_bad_policy_config_is_rejected_on_reload_and_the_old_one_serves() {
    let up = Upstream::start("app");
    let cfg = |header: &str| {
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
name = "app"
targets = ["{}"]
[[plugins]]
name = "transform"
wasm = "{}"
config.request.headers = {{ set = {{ {header} = "1" }} }}
[[routes]]
name = "api"
upstream = "app"
plugins = ["transform"]
"#,
            up.addr,
            built_plugin("transform")
        )
    };
    let w = Weir::start(&cfg("x-one"));
    w.get("/");
    assert_eq!(up.last().unwrap().header("x-one"), Some("1"));
    // `host` is a header policies may not write: the plugin refuses the config.
    w.write_config(&cfg("host"));
    let r = w.reload();
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("plugin `transform`"));
    w.get("/");
    assert_eq!(
        up.last().unwrap().header("x-one"),
        Some("1"),
        "the old plugin still runs"
    );
    // A changed, valid config swaps the plugin.
    w.write_config(&cfg("x-two"));
    assert_eq!(w.reload().status, 200);
    w.get("/");
    let seen = up.last().unwrap();
    assert_eq!(seen.header("x-two"), Some("1"));
    assert_eq!(seen.header("x-one"), None);
}

#[test]
fn standard_proxy_wasm_filters_run_unmodified() {
    let up = Upstream::with_handler("app", |r| {
        let early = vec![("x-filter-early".into(), "upstream".into())];
        Reply::Send(200, early, r.path.as_bytes().to_vec())
    });
    let cfg = format!(
        r#"
[server]
listen = ["{{listen}}"]
watch_config = false
[admin]
listen = "{{admin}}"
[access_log]
output = "off"
[[upstreams]]
name = "app"
targets = ["{}"]
[[plugins]]
name = "add-header"
wasm = "{}"
config = "from-config"
[[plugins]]
name = "deny-local"
wasm = "{}"
[[routes]]
name = "rewrite"
paths = ["/old", "/plain"]
upstream = "app"
plugins = ["add-header"]
[[routes]]
name = "guarded"
paths = ["/guarded"]
upstream = "app"
plugins = ["add-header", "deny-local"]
"#,
        up.addr,
        built_plugin("test/add-header"),
        built_plugin("test/deny-local"),
    );
    let w = Weir::start(&cfg);

    // Header rewriting, `:path` rewriting, response headers, plugin configuration.
    let r = w.get("/old/thing?x=1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "/new/thing?x=1");
    assert_eq!(r.header("x-filter-response"), Some("yes"));
    // Set during the request headers (Weir's extension), in place of the upstream's.
    assert_eq!(r.header_all("x-filter-early"), ["from-config"]);
    let seen = up.last().unwrap();
    assert_eq!(seen.header("x-filter"), Some("from-config"));
    assert_eq!(seen.header("x-path-seen"), Some("/old/thing?x=1"));

    // A local answer from a filter later in the chain; the earlier one still ran.
    let before = up.hits();
    let r = w.get("/guarded");
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "forbidden by filter\n");
    assert_eq!(r.header("x-denied-by"), Some("deny-local"));
    assert_eq!(up.hits(), before);
    let r = Req::get("/guarded")
        .header("x-allow", "yes")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.last().unwrap().header("x-filter"), Some("from-config"));
}

/// A module that exports `weir_unused_callbacks` saying it needs neither `on_log` nor
/// `on_done` gets neither; the same module configured to say nothing gets both. The
/// filter counts its calls in shared data and reports them on each response.
#[test]
fn callbacks_a_module_declares_unused_are_skipped() {
    let up = Upstream::with_handler("app", |r| Reply::ok(&r.path));
    let wasm = built_plugin("test/lifecycle");
    // One plugin and one route per configuration, each named after it.
    let chains: String = ["all", "skip", "skip-response"]
        .map(|name| {
            format!(
                r#"
[[plugins]]
name = "{name}"
wasm = "{wasm}"
config = "{name}"
[[routes]]
name = "{name}"
paths = ["/{name}"]
upstream = "app"
plugins = ["{name}"]
"#
            )
        })
        .concat();
    let cfg = format!(
        r#"
[server]
listen = ["{{listen}}"]
watch_config = false
[admin]
listen = "{{admin}}"
[access_log]
output = "off"
[[upstreams]]
name = "app"
targets = ["{}"]
{chains}"#,
        up.addr,
    );
    let w = Weir::start(&cfg);
    let counts = |path: &str| {
        let r = w.get(path);
        assert_eq!(r.status, 200, "{}", r.text());
        let n = |h: &str| r.header(h).and_then(|v| v.parse::<u64>().ok());
        (n("x-logs"), n("x-dones"))
    };
    // Earlier requests' on_log and on_done run after their responses: ask until they
    // show (bounded), then the same number of requests on the other route.
    let mut asked = 0;
    let mut all = (Some(0), Some(0));
    while asked < 50 && all.0 < Some(2) {
        all = counts("/all");
        asked += 1;
    }
    assert!(
        all.0 >= Some(2) && all.1 >= Some(2),
        "all: {all:?} after {asked} requests"
    );
    for _ in 0..asked {
        assert_eq!(counts("/skip"), (Some(0), Some(0)));
    }
    // The response hook, declared unused too, is not called: it would set the headers.
    assert_eq!(counts("/skip-response"), (None, None));
    let calls = w
        .metric(r#"weir_plugin_call_duration_seconds_count{plugin="skip-response",phase="response_headers"}"#)
        .unwrap_or(0.0);
    assert_eq!(calls, 0.0);
    assert!(w
        .metric(r#"weir_plugin_call_duration_seconds_count{plugin="skip-response",phase="request_headers"}"#)
        .is_some_and(|n| n >= 1.0));
}

#[test]
fn dispatch_http_call_reaches_configured_upstreams_only() {
    let app = Upstream::start("app");
    let auth = Upstream::with_handler("auth", |r| {
        if r.header("x-token") == Some("good") && r.path == "/check" {
            Reply::Send(200, vec![("x-user".into(), "ada".into())], Vec::new())
        } else {
            Reply::Send(401, vec![], b"bad token".to_vec())
        }
    });
    let cfg = format!(
        r#"
[server]
listen = ["{{listen}}"]
watch_config = false
[admin]
listen = "{{admin}}"
[access_log]
output = "off"
[[upstreams]]
name = "app"
targets = ["{}"]
[[upstreams]]
name = "auth"
targets = ["{}"]
[[upstreams]]
name = "down"
targets = ["{}"]
[[plugins]]
name = "http-call"
wasm = "{}"
[[routes]]
name = "api"
upstream = "app"
plugins = ["http-call"]
"#,
        app.addr,
        auth.addr,
        closed_port(),
        built_plugin("test/http-call"),
    );
    let w = Weir::start(&cfg);

    let r = Req::get("/orders")
        .header("x-token", "good")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(app.last().unwrap().header("x-auth-user"), Some("ada"));
    let seen = auth.last().unwrap();
    assert_eq!(seen.header("host"), Some("auth.local"));

    let before = app.hits();
    let r = Req::get("/orders")
        .header("x-token", "bad")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "bad token");
    assert_eq!(r.header("x-auth"), Some("denied"));
    assert_eq!(app.hits(), before);

    // A failed call (nothing listening) reaches the plugin as a response without status.
    let r = Req::get("/orders")
        .header("x-token", "good")
        .header("x-call-upstream", "down")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 403);

    // Names outside the config are refused by the host: never an arbitrary address.
    for target in ["admin", "127.0.0.1:1", &w.admin.to_string()] {
        let r = Req::get("/orders")
            .header("x-token", "good")
            .header("x-call-upstream", target)
            .send(w.addr)
            .unwrap();
        assert_eq!(r.status, 502, "{target}");
        assert_eq!(r.text(), "call refused\n");
    }
    assert_eq!(app.hits(), before);
}

#[test]
fn ticks_queues_and_foreign_functions_work_for_a_standard_filter() {
    let up = Upstream::start("app");
    let w = gateway_with(
        up.addr,
        r#"
[[plugins]]
name = "timers"
wasm = "{plugin:test/timers}"
[[routes]]
name = "api"
upstream = "app"
plugins = ["timers"]
"#,
    );
    for (i, path) in ["/a", "/b", "/a"].iter().enumerate() {
        let r = Req::get(path).send(w.addr).unwrap();
        assert_eq!(r.status, 200, "request {i}");
    }
    // The foreign counter counts per path, atomically, across worker threads.
    assert_eq!(up.last().unwrap().header("x-hits"), Some("2"));
    // Items reach the queue's owner, and the 50 ms tick runs, without any request.
    let mut stats = String::new();
    let done = wait_until(Duration::from_secs(5), || {
        stats = Req::get("/stats").send(w.addr).unwrap().text();
        let ticks: u64 = stats
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("ticks="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        stats.contains("delivered=3 last=/a counter=3") && ticks >= 4
    });
    assert!(done, "{stats}");
    // An unknown foreign function is NotFound, not a crash.
    let r = Req::get("/unknown-function").send(w.addr).unwrap();
    assert_eq!(r.text(), "Err(NotFound)");
    let metrics = w.metrics();
    assert!(
        metrics.contains(
            "weir_plugin_call_duration_seconds_count{plugin=\"timers\",phase=\"timers\"}"
        ),
        "{metrics}"
    );
}
