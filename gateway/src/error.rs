//! The one place that decides what a failed request looks like to the client: status
//! code, stable error code, message, and the JSON body
//! `{"error":"no_route","message":"…","request_id":"…"}`.

use pingora::{Error, ErrorSource, ErrorType};

/// Every way Weir itself answers a request with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No route matched host, path, method and headers.
    NoRoute,
    /// The request is malformed (ambiguous framing, bad header...).
    BadRequest,
    /// Too many request headers, or too many bytes of them.
    HeadersTooLarge,
    /// A plugin buffering the request body met more than its `max_body_bytes`.
    BodyTooLarge,
    /// Every target of the route's upstream is unhealthy or ejected.
    NoHealthyUpstream,
    /// No connection to a target could be made (refused, unreachable, TLS failed).
    UpstreamConnect,
    /// The target did not answer (or accept the request) in time.
    UpstreamTimeout,
    /// The target broke the exchange (reset, malformed response).
    UpstreamProtocol,
    /// A plugin failed (trap, CPU deadline, memory) and its `on_error` is `deny`.
    PluginFailed,
    /// A bug or resource failure inside Weir.
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::NoRoute => 404,
            ErrorKind::BadRequest => 400,
            ErrorKind::HeadersTooLarge => 431,
            ErrorKind::BodyTooLarge => 413,
            ErrorKind::NoHealthyUpstream => 503,
            ErrorKind::UpstreamConnect | ErrorKind::UpstreamProtocol => 502,
            ErrorKind::UpstreamTimeout => 504,
            ErrorKind::Internal | ErrorKind::PluginFailed => 500,
        }
    }

    /// The stable code in the JSON body, the access log and tests.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no_route",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::HeadersTooLarge => "request_header_too_large",
            ErrorKind::BodyTooLarge => "payload_too_large",
            ErrorKind::NoHealthyUpstream => "no_healthy_upstream",
            ErrorKind::UpstreamConnect => "upstream_connect_failed",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamProtocol => "upstream_error",
            ErrorKind::PluginFailed => "plugin_failed",
            ErrorKind::Internal => "internal_error",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no route matches this request",
            ErrorKind::BadRequest => "the request is malformed",
            ErrorKind::HeadersTooLarge => "the request headers are too large or too many",
            ErrorKind::BodyTooLarge => "the request body is larger than this route accepts",
            ErrorKind::NoHealthyUpstream => "no healthy upstream target is available",
            ErrorKind::UpstreamConnect => "could not connect to the upstream",
            ErrorKind::UpstreamTimeout => "the upstream did not answer in time",
            ErrorKind::UpstreamProtocol => "the upstream connection failed",
            ErrorKind::PluginFailed => "a policy plugin failed while handling the request",
            ErrorKind::Internal => "internal gateway error",
        }
    }

    /// Classifies a pingora error; `None` when the client went away (nothing to answer).
    pub fn from_pingora(e: &Error) -> Option<ErrorKind> {
        use ErrorType::*;
        match e.etype() {
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
                return Some(match e.esource() {
                    ErrorSource::Downstream => return None,
                    _ => ErrorKind::UpstreamTimeout,
                })
            }
            ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | BindError
            | TLSHandshakeFailure | InvalidCert => return Some(ErrorKind::UpstreamConnect),
            HTTPStatus(503) => return Some(ErrorKind::NoHealthyUpstream),
            HTTPStatus(400) | InvalidHTTPHeader | H1Error | H2Error
                if e.esource() == &ErrorSource::Downstream =>
            {
                return Some(ErrorKind::BadRequest);
            }
            _ => {}
        }
        match e.esource() {
            ErrorSource::Upstream => Some(ErrorKind::UpstreamProtocol),
            ErrorSource::Downstream => match e.etype() {
                ReadError | WriteError | ConnectionClosed => None,
                _ => Some(ErrorKind::BadRequest),
            },
            ErrorSource::Internal | ErrorSource::Unset => Some(ErrorKind::Internal),
        }
    }
}

/// The JSON error body.
pub fn json_body(kind: ErrorKind, request_id: &str) -> String {
    json_body_with(kind.code(), kind.message(), request_id)
}

/// A JSON error body with any code and message (plugins and limits use their own).
pub fn json_body_with(code: &str, message: &str, request_id: &str) -> String {
    serde_json::json!({ "error": code, "message": message, "request_id": request_id }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let e = Error::new(ErrorType::ConnectRefused);
        assert_eq!(
            ErrorKind::from_pingora(&e),
            Some(ErrorKind::UpstreamConnect)
        );
        let t = Error::new_up(ErrorType::ReadTimedout);
        assert_eq!(
            ErrorKind::from_pingora(&t),
            Some(ErrorKind::UpstreamTimeout)
        );
        let gone = Error::new_down(ErrorType::ConnectionClosed);
        assert_eq!(ErrorKind::from_pingora(&gone), None);
    }

    #[test]
    fn body_is_json_with_fields() {
        let v: serde_json::Value =
            serde_json::from_str(&json_body(ErrorKind::NoRoute, "abc\"d")).unwrap();
        assert_eq!(v["error"], "no_route");
        assert_eq!(v["request_id"], "abc\"d");
        assert_eq!(ErrorKind::UpstreamTimeout.status(), 504);
    }
}
