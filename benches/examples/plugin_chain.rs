//! The whole per-request plugin lifecycle, host side, as the proxy runs it
//! (`request_headers` in chain order, `response_headers` in reverse, then `finish`), on
//! real plugin modules, without sockets: what a chain of plugins costs a request.
//!
//! ```sh
//! bash scripts/build-plugins.sh
//! cargo run --release -p weir-benches --example plugin_chain -- 200000 transform
//! cargo run --release -p weir-benches --example plugin_chain -- 200000 key-auth rate-limit transform
//! ```
//!
//! Each argument after the iteration count is a built-in policy from `plugins/dist/`
//! with the configuration `benches/compare.py` gives it, or `name=path.wasm` (another
//! build of it, or any filter: an unknown name gets an empty configuration). Prints the median of three timed runs in ns per request. With
//! `--once` it runs the iterations once, untimed: for `valgrind --tool=callgrind`
//! (`benches/plugin_instructions.sh`), whose instruction counts are repeatable on a
//! busy machine where times are not.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use pingora::http::{RequestHeader, ResponseHeader};
use weir::config::PluginConfig;
use weir::plugin::{Plugin, PluginHost, Properties, RequestInfo, ResponseEdits, Views};

// The gateway's allocator: the host's allocations are part of what is measured.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The key every request carries (key-auth's only consumer has it).
const KEY: &str = "bench-key-0123456789";
/// An HS256 token for jwt-auth's configuration below (`sub` bench, expiring in 2100),
/// sent when the chain has jwt-auth.
const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaCIsImV4cCI6NDEwMjQ0NDgwMH0.FuWv6li7H9xhivSF2D0tfq5_iQ--WJi5jDnTNF9E8Mc";

/// The configurations of `benches/compare.py` for the built-in policies it runs.
fn builtin_config(name: &str) -> &'static str {
    match name {
        "transform" => r#"{ request = { headers = { set = { x-gateway = "weir" } } } }"#,
        "key-auth" => r#"{ consumers = [{ name = "bench", keys = ["bench-key-0123456789"] }] }"#,
        "rate-limit" => r#"{ key = "consumer", limit = 100000000, window = "1h" }"#,
        "jwt-auth" => {
            r#"{ keys = [{ kid = "hs", alg = "HS256", secret = "bench-secret-of-thirty-two-bytes" }] }"#
        }
        _ => "{}",
    }
}

fn load(host: &PluginHost, spec: &str) -> Result<Arc<Plugin>, String> {
    let (name, wasm, config) = match spec.split_once('=') {
        Some((name, path)) => (name, PathBuf::from(path), builtin_config(name)),
        None => {
            let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist");
            (
                spec,
                dist.join(format!("{spec}.wasm")),
                builtin_config(spec),
            )
        }
    };
    // A long CPU deadline: under valgrind a callback runs ~50x slower than natively.
    // (It costs the same either way: one epoch check per guest function.)
    let toml = format!(
        "name = {name:?}\nwasm = {:?}\ncpu_limit = \"10s\"\nconfig = {config}",
        wasm.display().to_string()
    );
    let cfg: PluginConfig = toml::from_str(&toml).map_err(|e| format!("{spec}: {e}"))?;
    host.load(&cfg, Path::new("/"), 1)
        .map_err(|e| format!("{spec}: {e}"))
}

fn main() -> Result<(), String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let once = args.iter().any(|a| a == "--once");
    args.retain(|a| a != "--once");
    let Some((iters, specs)) = args.split_first() else {
        return Err("usage: plugin_chain [--once] ITERATIONS PLUGIN...".into());
    };
    let iters: u64 = iters.parse().map_err(|e| format!("iterations: {e}"))?;
    let host = PluginHost::new(None);
    let plugins = specs
        .iter()
        .map(|s| load(&host, s))
        .collect::<Result<Vec<_>, _>>()?;

    // Without pingora's header-case record, as the proxy leaves heads before plugins
    // run (`preserve_header_case = false`, `weir::headers::write`).
    let mut req = RequestHeader::build_no_case("GET", b"/", None).map_err(|e| e.to_string())?;
    for (n, v) in [
        ("host", "127.0.0.1:8080"),
        ("user-agent", "weir-load"),
        ("x-api-key", KEY),
        ("x-request-id", "0123456789abcdef0123456789abcdef"),
    ] {
        req.insert_header(n, v).map_err(|e| e.to_string())?;
    }
    if specs.iter().any(|s| s.starts_with("jwt-auth")) {
        let bearer = format!("Bearer {JWT}");
        req.insert_header("authorization", bearer)
            .map_err(|e| e.to_string())?;
    }
    let mut resp = ResponseHeader::build_no_case(200, None).map_err(|e| e.to_string())?;
    for (n, v) in [
        ("content-length", "13"),
        ("date", "Thu, 26 Nov 2026 15:00:00 GMT"),
    ] {
        resp.insert_header(n, v).map_err(|e| e.to_string())?;
    }
    let info = RequestInfo {
        client: "127.0.0.1:40000".parse().ok(),
        route: Some("all".into()),
        request_id: "0123456789abcdef0123456789abcdef".into(),
        tls: false,
        upstreams: vec![Arc::<str>::from("echo")].into(),
    };
    let mut refused = 0u64;
    let mut run = |n: u64| {
        for _ in 0..n {
            let mut req = req.clone();
            let mut resp = resp.clone();
            let mut props = Properties::new();
            let mut edits = ResponseEdits::new();
            let mut active = Vec::with_capacity(plugins.len());
            for p in &plugins {
                let mut views = Views {
                    request: &mut req,
                    response: None,
                    info: &info,
                    properties: &mut props,
                    response_edits: &mut edits,
                };
                let (a, verdict) = p.request_headers(&mut views, true);
                if !matches!(verdict, weir::plugin::Verdict::Continue) {
                    refused += 1;
                }
                active.extend(a);
            }
            // As the proxy: the response-header writes made during the request first.
            edits.apply(&mut resp);
            for a in active.iter_mut().rev() {
                let mut views = Views {
                    request: &mut req,
                    response: Some(&mut resp),
                    info: &info,
                    properties: &mut props,
                    response_edits: &mut edits,
                };
                black_box(a.response_headers(&mut views));
            }
            for a in &active {
                let mut views = Views {
                    request: &mut req,
                    response: None,
                    info: &info,
                    properties: &mut props,
                    response_edits: &mut edits,
                };
                a.plugin().finish(a, &mut views);
            }
        }
    };
    if once {
        run(iters);
    } else {
        run(iters / 10 + 1000);
        let mut ns: Vec<f64> = (0..3)
            .map(|_| {
                let t = Instant::now();
                run(iters);
                t.elapsed().as_nanos() as f64 / iters as f64
            })
            .collect();
        ns.sort_by(f64::total_cmp);
        println!("{:.0} ns/request ({} plugins)", ns[1], plugins.len());
    }
    if refused > 0 {
        return Err(format!(
            "{refused} requests did not continue: the chain is not measuring the pass path"
        ));
    }
    Ok(())
}
