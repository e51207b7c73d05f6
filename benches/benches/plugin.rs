//! Host-side cost of a plugin chain call: a no-op filter and one that reads two
//! request headers and sets one, each through `on_request_headers` plus the context's
//! `on_log`/`on_done`/`on_delete` (the whole per-request cost of a plugin).
//!
//! Run: `cargo bench -p weir-benches --bench plugin`. Targets (issue 3): no-op under
//! 1 µs, header rewrite under 3 µs per request.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use pingora::http::RequestHeader;
use weir::config::PluginConfig;
use weir::plugin::{Plugin, PluginHost, Properties, RequestInfo, ResponseEdits, Views};

/// proxy-wasm module skeleton (WAT) with the given `on_request_headers` body.
fn module(body: &str) -> String {
    format!(
        r#"(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 0) "x-api-key")
  (data (i32.const 16) "user-agent")
  (data (i32.const 32) "x-checked")
  (data (i32.const 48) "yes")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    ;; A bump allocator that starts over each call is enough for a benchmark.
    (if (i32.gt_u (global.get $heap) (i32.const 60000)) (then (global.set $heap (i32.const 4096))))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) {body})
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32))
)"#
    )
}

fn load(host: &PluginHost, dir: &std::path::Path, name: &str, body: &str) -> Arc<Plugin> {
    let file = dir.join(format!("{name}.wat"));
    std::fs::write(&file, module(body)).expect("write module");
    let cfg: PluginConfig =
        toml::from_str(&format!("name = \"{name}\"\nwasm = \"{}\"", file.display()))
            .expect("plugin config");
    host.load(&cfg, dir, 1).expect("plugin loads")
}

fn chain_call(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = PluginHost::new(None);
    let noop = load(&host, dir.path(), "noop", "(i32.const 0)");
    let rewrite = load(
        &host,
        dir.path(),
        "rewrite",
        r#"(drop (call $get (i32.const 0) (i32.const 0) (i32.const 9) (i32.const 100) (i32.const 104)))
           (drop (call $get (i32.const 0) (i32.const 16) (i32.const 10) (i32.const 100) (i32.const 104)))
           (drop (call $replace (i32.const 0) (i32.const 32) (i32.const 9) (i32.const 48) (i32.const 3)))
           (i32.const 0)"#,
    );
    let mut req = RequestHeader::build("GET", b"/v1/users?page=2", None).expect("request");
    req.insert_header("host", "api.example.com")
        .expect("header");
    req.insert_header("user-agent", "bench/1").expect("header");
    req.insert_header("x-api-key", "k-123").expect("header");
    let info = RequestInfo::default();
    let mut props = Properties::new();
    let mut edits = ResponseEdits::new();
    let mut g = c.benchmark_group("plugin_chain_call");
    for (name, plugin) in [("noop", &noop), ("read2_set1", &rewrite)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut views = Views {
                    request: &mut req,
                    response: None,
                    info: &info,
                    properties: &mut props,
                    response_edits: &mut edits,
                };
                let (active, verdict) = plugin.request_headers(&mut views, true);
                if let Some(a) = active {
                    plugin.finish(&a, &mut views);
                }
                black_box(verdict)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, chain_call);
criterion_main!(benches);
