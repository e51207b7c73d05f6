//! A plain proxy-wasm filter: adds `x-filter: add-header` and `x-path-seen: <path>` to
//! the request, rewrites `:path` from `/old/...` to `/new/...`, and stamps the response
//! with `x-filter-response: yes`. Reads its config (a header value) in `on_configure`.
//! Also sets the response header `x-filter-early: <config>` from the request headers,
//! before there is a response: Weir's extension (ABI.md) writes it to the upstream's
//! response.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { value: "add-header".into() }) });
}}

struct Root {
    value: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        if let Some(bytes) = self.get_plugin_configuration() {
            // The gateway hands the `config` table over as JSON; a string is the value.
            let text = String::from_utf8_lossy(&bytes);
            let trimmed = text.trim().trim_matches('"');
            if !trimmed.is_empty() && trimmed != "null" && trimmed != "{}" {
                self.value = trimmed.to_string();
            }
        }
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            value: self.value.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    value: String,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.set_http_request_header("x-filter", Some(&self.value));
        self.set_http_response_header("x-filter-early", Some(&self.value));
        if let Some(path) = self.get_http_request_header(":path") {
            self.set_http_request_header("x-path-seen", Some(&path));
            if let Some(rest) = path.strip_prefix("/old/") {
                self.set_http_request_header(":path", Some(&format!("/new/{rest}")));
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.set_http_response_header("x-filter-response", Some("yes"));
        Action::Continue
    }
}
