//! What a policy hook decides.

use crate::http::{validate_header, RequestInfo};
use serde::Serialize;

/// What a hook decides: let the request (or response) go on, or answer locally.
///
/// Build a local answer with [`Decision::respond`] and the chained builders, or a
/// Weir-style JSON error with [`Decision::error`]:
///
/// ```
/// # use weir_plugin_sdk::Decision;
/// let d = Decision::respond(401)
///     .header("www-authenticate", "ApiKey")
///     .json(&serde_json::json!({"error": "unauthorized"}));
/// assert_eq!(d.status(), Some(401));
/// assert_eq!(d.response_header("content-type"), Some("application/json"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Decision {
    /// Go on: to the next plugin, then upstream (or, on the response, to the client).
    #[default]
    Continue,
    /// Answer locally (`proxy_send_local_response`): no later plugin and no upstream
    /// sees the request. The host adds `content-length`.
    Respond {
        /// Status code, 200–599 (anything else is sent as 500, logged).
        status: u16,
        /// Response headers, in order; a name may repeat.
        headers: Vec<(String, String)>,
        /// Response body; may be empty.
        body: Vec<u8>,
    },
}

impl Decision {
    /// A local answer with `status`, no headers and an empty body.
    pub fn respond(status: u16) -> Decision {
        Decision::Respond {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Weir's JSON error, as the gateway's own errors look:
    /// `{"error": code, "message": message, "request_id": <x-request-id>}` with
    /// `content-type: application/json`.
    ///
    /// ```
    /// # use weir_plugin_sdk::{Decision, testing::MockRequest};
    /// let req = MockRequest::get("/").header("x-request-id", "r-1");
    /// let d = Decision::error(401, "unauthorized", "missing API key", &req);
    /// assert_eq!(d.body_json().unwrap()["request_id"], "r-1");
    /// ```
    pub fn error(status: u16, code: &str, message: &str, req: &dyn RequestInfo) -> Decision {
        #[derive(Serialize)]
        struct ErrorBody<'a> {
            error: &'a str,
            message: &'a str,
            request_id: &'a str,
        }
        let request_id = req.request_id();
        Decision::respond(status).json(&ErrorBody {
            error: code,
            message,
            request_id: &request_id,
        })
    }

    /// Adds a response header (a name may repeat). A header [`validate_header`] refuses
    /// is left out and logged at warn level. No effect on `Continue`.
    pub fn header(mut self, name: &str, value: &str) -> Decision {
        if let Decision::Respond { headers, .. } = &mut self {
            match validate_header(name, value) {
                Ok(()) => headers.push((name.to_ascii_lowercase(), value.to_string())),
                Err(e) => log::warn!("local response header refused: {e}"),
            }
        }
        self
    }

    /// Sets the body. No effect on `Continue`.
    pub fn body(mut self, bytes: impl Into<Vec<u8>>) -> Decision {
        if let Decision::Respond { body, .. } = &mut self {
            *body = bytes.into();
        }
        self
    }

    /// Sets a text body and `content-type: text/plain; charset=utf-8`.
    pub fn text(self, text: &str) -> Decision {
        self.content_type("text/plain; charset=utf-8").body(text)
    }

    /// Sets a JSON body and `content-type: application/json`. A value serde_json cannot
    /// serialize (a map with non-string keys) leaves the body empty, logged at warn.
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Decision {
        match serde_json::to_vec(value) {
            Ok(bytes) => self.content_type("application/json").body(bytes),
            Err(e) => {
                log::warn!("local response body is not serializable: {e}");
                self
            }
        }
    }

    fn content_type(mut self, value: &str) -> Decision {
        if let Decision::Respond { headers, .. } = &mut self {
            headers.retain(|(n, _)| n != "content-type");
            headers.push(("content-type".to_string(), value.to_string()));
        }
        self
    }

    /// Whether this is [`Decision::Continue`].
    pub fn is_continue(&self) -> bool {
        matches!(self, Decision::Continue)
    }

    /// The status of a local answer; `None` for `Continue`.
    pub fn status(&self) -> Option<u16> {
        match self {
            Decision::Continue => None,
            Decision::Respond { status, .. } => Some(*status),
        }
    }

    /// The first value of a local answer's header (name case-insensitive).
    pub fn response_header(&self, name: &str) -> Option<&str> {
        match self {
            Decision::Continue => None,
            Decision::Respond { headers, .. } => headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str()),
        }
    }

    /// A local answer's body; empty for `Continue`.
    pub fn body_bytes(&self) -> &[u8] {
        match self {
            Decision::Continue => &[],
            Decision::Respond { body, .. } => body,
        }
    }

    /// A local answer's body parsed as JSON; `None` for `Continue` or a body that is
    /// not JSON. Meant for tests.
    pub fn body_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(self.body_bytes()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MockRequest;

    #[test]
    fn builders() {
        let d = Decision::respond(429)
            .header("Retry-After", "3")
            .header("bad\nname", "x")
            .header("x-a", "1\r\nx-b: 2")
            .text("slow down");
        assert_eq!(
            d,
            Decision::Respond {
                status: 429,
                headers: vec![
                    ("retry-after".into(), "3".into()),
                    ("content-type".into(), "text/plain; charset=utf-8".into()),
                ],
                body: b"slow down".to_vec(),
            }
        );
        assert_eq!(d.response_header("retry-after"), Some("3"));
        let d = d.json(&[1, 2]);
        assert_eq!(d.response_header("content-type"), Some("application/json"));
        assert_eq!(d.body_bytes(), b"[1,2]");
        assert_eq!(
            Decision::Continue.header("a", "b").body("x"),
            Decision::Continue
        );
        assert!(Decision::default().is_continue());
        assert_eq!(Decision::Continue.status(), None);
    }

    #[test]
    fn weir_error_body() {
        let req = MockRequest::get("/").header("x-request-id", "abc\"d");
        let d = Decision::error(403, "forbidden", "no", &req);
        assert_eq!(d.status(), Some(403));
        let v = d.body_json().unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "forbidden", "message": "no", "request_id": "abc\"d"})
        );
        let no_id = Decision::error(403, "forbidden", "no", &MockRequest::get("/"));
        assert_eq!(no_id.body_json().unwrap()["request_id"], "");
    }
}
