//! A plain proxy-wasm filter that counts its `on_log` and `on_done` calls in shared
//! data and reports the counts so far as `x-logs` / `x-dones` response headers. With
//! the configuration `"skip"` it also tells Weir, through the `weir_unused_callbacks`
//! extension, that it needs neither call: the e2e test checks that Weir then makes
//! neither, and makes both otherwise. With `"skip-response"` it declares its response
//! hook unused as well, and Weir must not call it: the response then has no counts.

use std::sync::atomic::{AtomicI32, Ordering};

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

/// What `weir_unused_callbacks` answers, set by `on_configure`.
static UNUSED: AtomicI32 = AtomicI32::new(0);

#[no_mangle]
pub extern "C" fn weir_unused_callbacks() -> i32 {
    UNUSED.load(Ordering::Relaxed)
}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let config = String::from_utf8_lossy(&config);
        if config.contains("skip-response") {
            UNUSED.store(1 | 2 | 4, Ordering::Relaxed);
        } else if config.contains("skip") {
            UNUSED.store(1 | 2, Ordering::Relaxed);
        }
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter;

impl Filter {
    fn count(&self, key: &str) -> u64 {
        match self.get_shared_data(key) {
            (Some(v), _) if v.len() == 8 => u64::from_le_bytes(v.try_into().unwrap_or([0; 8])),
            _ => 0,
        }
    }

    fn bump(&self, key: &str) {
        let n = self.count(key) + 1;
        let _ = self.set_shared_data(key, Some(&n.to_le_bytes()), None);
    }
}

impl Context for Filter {
    fn on_done(&mut self) -> bool {
        self.bump("dones");
        true
    }
}

impl HttpContext for Filter {
    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.set_http_response_header("x-logs", Some(&self.count("logs").to_string()));
        self.set_http_response_header("x-dones", Some(&self.count("dones").to_string()));
        Action::Continue
    }

    fn on_log(&mut self) {
        self.bump("logs");
    }
}
