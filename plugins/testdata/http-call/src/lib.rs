//! A plain proxy-wasm filter using `dispatch_http_call`: asks the `auth` upstream (or the
//! one named in `x-call-upstream`) whether `x-token` is good; on 200 it forwards the
//! request with `x-auth-user` from the answer, otherwise it answers 403 with the
//! answer's body. A dispatch the host refuses gets 502.

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Auth) });
}}

struct Auth;

impl Context for Auth {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if self.get_http_call_response_header(":status").as_deref() == Some("200") {
            if let Some(user) = self.get_http_call_response_header("x-user") {
                self.set_http_request_header("x-auth-user", Some(&user));
            }
            self.resume_http_request();
        } else {
            let body = self
                .get_http_call_response_body(0, body_size)
                .unwrap_or_default();
            self.send_http_response(403, vec![("x-auth", "denied")], Some(&body));
        }
    }
}

impl HttpContext for Auth {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let token = self.get_http_request_header("x-token").unwrap_or_default();
        let upstream = self
            .get_http_request_header("x-call-upstream")
            .unwrap_or_else(|| "auth".to_string());
        let headers = vec![
            (":method", "GET"),
            (":path", "/check"),
            (":authority", "auth.local"),
            ("x-token", token.as_str()),
        ];
        match self.dispatch_http_call(&upstream, headers, None, vec![], Duration::from_secs(2)) {
            Ok(_) => Action::Pause,
            Err(_) => {
                self.send_http_response(502, vec![], Some(b"call refused\n"));
                Action::Pause
            }
        }
    }
}
