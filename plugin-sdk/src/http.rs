//! The typed views a policy sees: request, response, header maps.

use crate::query;
use crate::store::SharedStore;
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

/// The property a consumer name is stored under (`weir.consumer`, path segments
/// `["weir", "consumer"]`): set by [`Request::set_consumer`], read by later plugins and
/// by the gateway (access log).
pub const CONSUMER_PROPERTY: [&str; 2] = ["weir", "consumer"];

/// A header map: the request's or the response's headers.
///
/// Names are case-insensitive (hosts hand them over lower-cased; the SDK lower-cases
/// names it writes). Pseudo-headers (`:path`, `:method`, `:status`…) can be read with
/// [`get`](Headers::get) but are left out of [`pairs`](Headers::pairs) and
/// [`get_all`](Headers::get_all), and cannot be written here: use
/// [`Request::set_path`] and friends.
///
/// Writes the gateway refuses (see [`validate_header`]) are logged at warn level with
/// the reason, and ignored: never a trap.
pub trait Headers {
    /// The value of `name`. For a repeated header it is the host's answer to
    /// `proxy_get_header_map_value`: Weir (and the mock host) join the values with
    /// `", "`, Envoy returns the first; use [`get_all`](Headers::get_all) when it
    /// matters. Bytes that are not UTF-8 are replaced with U+FFFD.
    fn get(&self, name: &str) -> Option<String>;

    /// Every value of `name`, in order (one `proxy_get_header_map_pairs` call: use
    /// [`get`](Headers::get) when one value is enough).
    fn get_all(&self, name: &str) -> Vec<String> {
        self.pairs()
            .into_iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect()
    }

    /// Every header as `(name, value)` in order, pseudo-headers left out.
    fn pairs(&self) -> Vec<(String, String)>;

    /// Whether `name` is present.
    fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Replaces every value of `name` with `value` (adds it if absent).
    fn set(&mut self, name: &str, value: &str);

    /// Adds a value for `name`, keeping the existing ones.
    fn add(&mut self, name: &str, value: &str);

    /// Removes every value of `name`; nothing happens if it is absent.
    fn remove(&mut self, name: &str);
}

/// Read-only facts about a request; in [`Policy::on_response`](crate::Policy::on_response)
/// it is the request as it went upstream.
///
/// Values come from the host lazily, on first use, and are then cached for the call:
/// a policy that never asks for the client address never pays for it.
pub trait RequestInfo {
    /// The method (`GET`, `POST`…; the `:method` pseudo-header).
    fn method(&self) -> &str;

    /// The path without the query string (`/v1/users`), still percent-encoded as the
    /// client sent it (the part of `:path` before `?`).
    fn path(&self) -> &str;

    /// The raw query string without the `?` (`a=1&b=2`), or `None` when the target has
    /// no `?`.
    fn query(&self) -> Option<&str>;

    /// The first value of query parameter `name` (names compared after decoding), with
    /// `%XX` and `+` decoded; `Some("")` for `?flag` or `?flag=`.
    fn query_param(&self, name: &str) -> Option<String> {
        self.query_params()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Every query parameter as decoded `(name, value)`, in order.
    fn query_params(&self) -> Vec<(String, String)> {
        self.query()
            .map(|q| {
                query::pairs(q)
                    .map(|(n, v)| (query::decode(n), query::decode(v)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The request headers.
    fn headers(&self) -> &dyn Headers;

    /// The client's address as the host reports it (`source.address`: `ip:port`, or
    /// just the IP), after the gateway's trusted-proxy decision; `None` if unknown.
    fn client_addr(&self) -> Option<&str>;

    /// The client's IP, parsed from [`client_addr`](RequestInfo::client_addr).
    fn client_ip(&self) -> Option<IpAddr> {
        let addr = self.client_addr()?;
        addr.parse::<SocketAddr>()
            .map(|s| s.ip())
            .or_else(|_| addr.parse::<IpAddr>())
            .ok()
    }

    /// The name of the matched route (`route_name` property); `None` outside Weir or
    /// when the host does not say.
    fn route(&self) -> Option<&str>;

    /// The consumer an earlier plugin identified (the `weir.consumer` property), if any.
    fn consumer(&self) -> Option<&str>;

    /// `http` or `https` (the `request.scheme` property; `http` if the host omits it).
    fn scheme(&self) -> &str;

    /// The host the client asked for (`:authority`, or the `host` header), port
    /// included if the client sent one.
    fn host(&self) -> Option<&str>;

    /// The gateway's request id (the `x-request-id` request header), or `""`.
    fn request_id(&self) -> String {
        self.headers().get("x-request-id").unwrap_or_default()
    }

    /// A per-request variable set by [`Request::set_var`] earlier in this request (in
    /// this plugin: variables are not shared between plugins).
    fn var(&self, name: &str) -> Option<&str>;

    /// The store shared by every VM of this plugin in the process (proxy-wasm shared
    /// data); see [`SharedStore`].
    fn store(&self) -> &dyn SharedStore;

    /// The host's clock (`proxy_get_current_time_nanoseconds`); the mock host's is
    /// fixed unless a test sets it.
    fn now(&self) -> SystemTime;
}

/// The request in [`Policy::on_request`](crate::Policy::on_request): the facts of
/// [`RequestInfo`] plus the changes a policy may make before it goes upstream.
///
/// Every change is applied to the host immediately, so later plugins in the chain see
/// it. A change the host would refuse is refused here, logged at warn level and
/// ignored (the request goes on unchanged in that respect).
pub trait Request: RequestInfo {
    /// The request headers, for writing.
    fn headers_mut(&mut self) -> &mut dyn Headers;

    /// Replaces the path and keeps the query string. Refused unless [`validate_path`]
    /// accepts it; it is sent as-is, so percent-encode what needs it.
    fn set_path(&mut self, path: &str);

    /// Replaces the raw query string (`None` or `Some("")` drops the `?`). Refused if it
    /// has a character a request target cannot carry: space, `"`, `#`, `<`, `>`,
    /// control characters.
    fn set_query(&mut self, query: Option<&str>);

    /// Appends `name=value` to the query string, percent-encoding both.
    fn add_query_param(&mut self, name: &str, value: &str) {
        let mut q = self.query().unwrap_or_default().to_string();
        if !q.is_empty() {
            q.push('&');
        }
        q.push_str(&query::encode(name));
        q.push('=');
        q.push_str(&query::encode(value));
        self.set_query(Some(&q));
    }

    /// Removes every `name` parameter (compared after decoding); the other parameters
    /// keep their order and their encoding. Nothing is written if `name` is absent.
    fn remove_query_param(&mut self, name: &str) {
        let Some(q) = self.query() else { return };
        let kept: Vec<&str> = q
            .split('&')
            .filter(|pair| {
                let raw = pair.split_once('=').map_or(*pair, |(n, _)| n);
                query::decode(raw) != name
            })
            .collect();
        if kept.len() != q.split('&').count() {
            let q = kept.join("&");
            self.set_query(Some(&q));
        }
    }

    /// Replaces every `name` parameter by one `name=value` at the end.
    fn set_query_param(&mut self, name: &str, value: &str) {
        self.remove_query_param(name);
        self.add_query_param(name, value);
    }

    /// Records who the client is: sets the `weir.consumer` property (later plugins and
    /// the access log read it) and what [`RequestInfo::consumer`] returns. Sending it
    /// upstream as a header is the policy's choice. Refused if empty or containing
    /// control characters.
    fn set_consumer(&mut self, name: &str);

    /// Stores a per-request variable for this plugin's
    /// [`on_response`](crate::Policy::on_response) (e.g. the remaining quota, to put in
    /// a response header). Lives in the plugin's memory, never crosses to the host.
    fn set_var(&mut self, name: &str, value: &str);

    /// Sets a header of the response to this request now, replacing any of that name
    /// the response has: for what a policy knows before the response arrives (a
    /// rate limit's counts). Weir takes it at once and writes it to the upstream's
    /// response before any response hook runs, or to the answer Weir or a later
    /// policy gives instead (a 401, a 502), so a policy that needs nothing else there
    /// can answer `false` in [`Policy::uses_response`](crate::Policy::uses_response)
    /// and skip the response hook. A host without that extension gets the header from
    /// the SDK in the response hook (which such hosts always call), so on it only the
    /// upstream's response has it. Refused like [`Headers::set`], and for
    /// pseudo-headers.
    fn set_response_header(&mut self, name: &str, value: &str);
}

/// The response in [`Policy::on_response`](crate::Policy::on_response).
pub trait Response {
    /// The status code (the `:status` pseudo-header); 0 if the host does not say.
    fn status(&self) -> u16;

    /// The response headers.
    fn headers(&self) -> &dyn Headers;

    /// The response headers, for writing.
    fn headers_mut(&mut self) -> &mut dyn Headers;
}

/// Checks a header write the way the gateway will, so a policy can check its config
/// at load time and the SDK can refuse a bad write before it reaches the host.
///
/// Refused: an empty name or one with characters outside the HTTP token set;
/// pseudo-headers (`:path`…: use [`Request::set_path`]); `content-length`,
/// `transfer-encoding` and `host` (the gateway owns framing and the upstream host); a
/// value containing CR, LF or NUL. Names are compared case-insensitively.
pub fn validate_header(name: &str, value: &str) -> Result<(), String> {
    validate_header_name(name)?;
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(format!(
            "the value of header `{name}` contains CR, LF or NUL"
        ));
    }
    Ok(())
}

/// The name half of [`validate_header`] (removing a header needs no value).
pub(crate) fn validate_header_name(name: &str) -> Result<(), String> {
    if name.starts_with(':') {
        return Err(format!(
            "`{name}` is a pseudo-header: change the path with set_path/set_query"
        ));
    }
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(format!(
            "`{name}` is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)"
        ));
    }
    for owned in ["content-length", "transfer-encoding", "host"] {
        if name.eq_ignore_ascii_case(owned) {
            return Err(format!(
                "`{owned}` cannot be changed by a plugin (the gateway owns it)"
            ));
        }
    }
    Ok(())
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks a path the way [`Request::set_path`] does: it starts with `/` and carries
/// only characters a request target may (those the gateway's HTTP parser accepts from
/// clients): no `?` (use the query methods), `#`, space, `<`, `>`, `` ` `` or control
/// characters. Non-ASCII is accepted; percent-encoding it is more portable. Use it to
/// check paths in a config.
pub fn validate_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path `{path}` does not start with `/`"));
    }
    match path
        .chars()
        .find(|&c| matches!(c, '?' | '#' | '<' | '>' | '`') || c.is_whitespace() || c.is_control())
    {
        Some(c) => Err(format!("path `{path}` contains {c:?}")),
        None => Ok(()),
    }
}

/// Checks a new query string for [`Request::set_query`], with the gateway's HTTP
/// parser's rules for queries.
pub(crate) fn validate_query(query: &str) -> Result<(), String> {
    match query
        .chars()
        .find(|&c| matches!(c, '#' | '"' | '<' | '>') || c.is_whitespace() || c.is_control())
    {
        Some(c) => Err(format!("query `{query}` contains {c:?}")),
        None => Ok(()),
    }
}

/// Checks a consumer name for [`Request::set_consumer`].
pub(crate) fn validate_consumer(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(format!(
            "consumer `{name:?}` is empty or has control characters"
        ));
    }
    Ok(())
}

/// Splits `path?query` into the path and the query (without `?`).
pub(crate) fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    }
}

/// Joins a path and a query into a request target; an empty query drops the `?`.
pub(crate) fn join_target(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rules() {
        assert!(validate_header("x-ok", "v").is_ok());
        assert!(validate_header("X-Ok", "").is_ok());
        assert!(validate_header("", "v").is_err());
        assert!(validate_header("bad name", "v").is_err());
        assert!(validate_header(":path", "/").is_err());
        assert!(validate_header("Content-Length", "1").is_err());
        assert!(validate_header("host", "a").is_err());
        assert!(validate_header("x", "a\r\nb: c").is_err());
    }

    #[test]
    fn targets() {
        assert_eq!(split_target("/a?b=1"), ("/a", Some("b=1")));
        assert_eq!(split_target("/a"), ("/a", None));
        assert_eq!(join_target("/a", Some("")), "/a");
        assert_eq!(join_target("/a", Some("x")), "/a?x");
        assert!(validate_path("/a/b%20c").is_ok());
        assert!(validate_path("a").is_err());
        assert!(validate_path("/a b").is_err());
        assert!(validate_path("/a?b").is_err());
        assert!(validate_query("a=1&b").is_ok());
        assert!(validate_query("a=1#x").is_err());
        assert!(validate_query("a=\"x\"").is_err());
        assert!(validate_query("a=[1]|`x`{}").is_ok());
        assert!(validate_path("/a/<b>").is_err());
        assert!(validate_path("/a/`b`").is_err());
        assert!(validate_path("/a/\"{}\"|[]@:!$&'()*+,;=~é").is_ok());
    }
}
