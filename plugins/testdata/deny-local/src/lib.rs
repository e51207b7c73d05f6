//! A plain proxy-wasm filter that answers locally: requests without `x-allow: yes` get
//! 403 with a body and a header, and never reach the upstream.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Deny) });
}}

struct Deny;

impl Context for Deny {}

impl HttpContext for Deny {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        if self.get_http_request_header("x-allow").as_deref() == Some("yes") {
            return Action::Continue;
        }
        proxy_wasm::hostcalls::log(LogLevel::Info, "denying a request").ok();
        self.send_http_response(
            403,
            vec![("x-denied-by", "deny-local")],
            Some(b"forbidden by filter\n"),
        );
        Action::Pause
    }
}
