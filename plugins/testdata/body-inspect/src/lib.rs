//! A plain proxy-wasm filter reading request bodies: it buffers the body
//! (`Action::Pause` on every chunk but the last: `StopIterationAndBuffer`), then answers
//! 403 `refused: N bytes` when the whole body contains `forbidden`, and lets it go on
//! otherwise. With `x-body-mode: stream` it lets every chunk through instead and
//! answers 413 once more than 100 bytes went by (what a size limit does). It records
//! what it saw in the `body.seen` property for the headers of a later answer.
//!
//! Response bodies (when the gateway calls `on_response_body`): held whole, then their
//! size and first bytes recorded in shared data; `GET /response-seen` answers with it.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> {
        Box::new(Inspect { stream: false, seen: 0, headers_eos: false })
    });
}}

struct Inspect {
    stream: bool,
    seen: usize,
    headers_eos: bool,
}

impl Context for Inspect {}

impl HttpContext for Inspect {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        if self.get_http_request_header(":path").as_deref() == Some("/response-seen") {
            let seen = self.get_shared_data("response-seen").0.unwrap_or_default();
            self.send_http_response(200, vec![], Some(&seen));
            return Action::Pause;
        }
        self.stream = self.get_http_request_header("x-body-mode").as_deref() == Some("stream");
        self.headers_eos = end_of_stream;
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.stream {
            self.seen += body_size;
            if self.seen > 100 {
                self.send_http_response(413, vec![], Some(b"stream limit\n"));
                return Action::Pause;
            }
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        if body.windows(9).any(|w| w == b"forbidden") {
            let msg = format!("refused: {} bytes", body.len());
            self.send_http_response(403, vec![("x-inspected", "yes")], Some(msg.as_bytes()));
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_response_body(0, body_size).unwrap_or_default();
        let head = String::from_utf8_lossy(&body[..body.len().min(16)]).into_owned();
        let seen = format!("{} bytes: {head}", body.len());
        let _ = self.set_shared_data("response-seen", Some(seen.as_bytes()), None);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        // Tells the test whether the headers callback knew the request had no body.
        let eos = if self.headers_eos { "headers-eos" } else { "body-follows" };
        self.set_http_response_header("x-request-shape", Some(eos));
        Action::Continue
    }
}
