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
//! Each argument after the iteration count is a built-in policy as `benches/plugins.toml`
//! configures it for every benchmark, or `name=path.wasm` (another build of it, or any
//! filter: a name the file lacks gets an empty configuration). Prints the median of
//! three timed runs in ns per request. With
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

/// An HS256 token for jwt-auth's configuration in `benches/plugins.toml` (`sub` bench,
/// expiring in 2100), sent when the chain has jwt-auth.
const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaCIsImV4cCI6NDEwMjQ0NDgwMH0.FuWv6li7H9xhivSF2D0tfq5_iQ--WJi5jDnTNF9E8Mc";

/// The plugin of a command-line spec: `NAME` (from `benches/plugins.toml`) or
/// `NAME=PATH.wasm` (that module, with NAME's configuration there if any).
fn plugin_config(bench: &[PluginConfig], spec: &str) -> Result<PluginConfig, String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (name, path) = match spec.split_once('=') {
        Some((name, path)) => (name, Some(PathBuf::from(path))),
        None => (spec, None),
    };
    let mut cfg = match bench.iter().find(|p| p.name == name) {
        Some(p) => p.clone(),
        None if path.is_some() => {
            let toml = format!("name = {name:?}\nwasm = \"\"\ncpu_limit = \"10s\"");
            toml::from_str(&toml).map_err(|e| format!("{spec}: {e}"))?
        }
        None => {
            return Err(format!(
                "{spec}: not in benches/plugins.toml; give NAME=PATH.wasm"
            ))
        }
    };
    cfg.wasm = match path {
        Some(path) => path.display().to_string(),
        None => repo.join(&cfg.wasm).display().to_string(),
    };
    Ok(cfg)
}

fn main() -> Result<(), String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let once = args.iter().any(|a| a == "--once");
    args.retain(|a| a != "--once");
    let Some((iters, specs)) = args.split_first() else {
        return Err("usage: plugin_chain [--once] ITERATIONS PLUGIN...".into());
    };
    let iters: u64 = iters.parse().map_err(|e| format!("iterations: {e}"))?;
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins.toml");
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    // The built-in policies as every benchmark configures them.
    let in_file = |e: &dyn std::fmt::Display| format!("{}: {e}", file.display());
    let table: toml::Table = toml::from_str(&text).map_err(|e| in_file(&e))?;
    let bench: Vec<PluginConfig> = match table.get("plugins") {
        Some(list) => list.clone().try_into().map_err(|e| in_file(&e))?,
        None => Vec::new(),
    };
    // key-auth's key, which every request carries.
    let key = bench
        .iter()
        .find(|p| p.name == "key-auth")
        .and_then(|p| p.config["consumers"][0]["keys"][0].as_str())
        .ok_or("benches/plugins.toml: no key-auth key")?
        .to_owned();
    let host = PluginHost::new(None);
    let plugins = specs
        .iter()
        .map(|spec| {
            let cfg = plugin_config(&bench, spec)?;
            host.load(&cfg, Path::new("/"), 1)
                .map_err(|e| format!("{spec}: {e}"))
        })
        .collect::<Result<Vec<Arc<Plugin>>, String>>()?;

    // Without pingora's header-case record, as the proxy leaves heads before plugins
    // run (`preserve_header_case = false`, `weir::headers::write`).
    let mut req = RequestHeader::build_no_case("GET", b"/", None).map_err(|e| e.to_string())?;
    for (n, v) in [
        ("host", "127.0.0.1:8080"),
        ("user-agent", "weir-load"),
        ("x-api-key", key.as_str()),
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
