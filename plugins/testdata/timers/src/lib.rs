//! A plain proxy-wasm filter using the root context's services: a 50 ms tick counting
//! in shared data, a shared queue each request path is sent to (drained in
//! `on_queue_ready`), and Weir's `weir.counter_add` foreign function. `GET /stats`
//! answers `ticks=N delivered=M last=PATH counter=C` without going upstream; other
//! requests go on with `x-hits: <this path's count>`.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { queue: 0 }) });
}}

const QUEUE: &str = "paths";

struct Root {
    queue: u32,
}

fn bump(key: &str) {
    // Read, then compare-and-swap; lost races retry.
    for _ in 0..16 {
        let (value, cas) = hostcalls::get_shared_data(key).unwrap_or((None, None));
        let n = value
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        if hostcalls::set_shared_data(key, Some((n + 1).to_string().as_bytes()), cas).is_ok() {
            return;
        }
    }
}

fn read(key: &str) -> String {
    hostcalls::get_shared_data(key)
        .ok()
        .and_then(|(v, _)| v)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_else(|| "0".into())
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        self.queue = match hostcalls::register_shared_queue(QUEUE) {
            Ok(id) => id,
            Err(_) => return false,
        };
        self.set_tick_period(Duration::from_millis(50));
        true
    }

    fn on_tick(&mut self) {
        bump("ticks");
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = hostcalls::dequeue_shared_queue(queue_id) {
            bump("delivered");
            let _ = hostcalls::set_shared_data("last", Some(&item), None);
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter;

impl Context for Filter {}

fn counter_add(key: &str, delta: i64) -> Option<i64> {
    let mut args = delta.to_le_bytes().to_vec();
    args.extend_from_slice(&0u64.to_le_bytes());
    args.extend_from_slice(key.as_bytes());
    let out = hostcalls::call_foreign_function("weir.counter_add", Some(&args)).ok()??;
    Some(i64::from_le_bytes(out.try_into().ok()?))
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if path == "/stats" {
            let body = format!(
                "ticks={} delivered={} last={} counter={}",
                read("ticks"),
                read("delivered"),
                read("last"),
                counter_add("all", 0).unwrap_or(-1),
            );
            self.send_http_response(200, vec![], Some(body.as_bytes()));
            return Action::Pause;
        }
        if path == "/unknown-function" {
            let r = hostcalls::call_foreign_function("weir.nope", None);
            let body = format!("{r:?}");
            self.send_http_response(200, vec![], Some(body.as_bytes()));
            return Action::Pause;
        }
        if let Ok(Some(queue)) = hostcalls::resolve_shared_queue("timers", QUEUE) {
            let _ = hostcalls::enqueue_shared_queue(queue, Some(path.as_bytes()));
        }
        counter_add("all", 1);
        let hits = counter_add(&path, 1).unwrap_or(-1);
        self.set_http_request_header("x-hits", Some(&hits.to_string()));
        Action::Continue
    }
}
