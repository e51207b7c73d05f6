//! `cors`: answers CORS preflights at the gateway and adds the CORS headers to the
//! responses of the origins it allows.
//!
//! ```toml
//! [[plugins]]
//! name = "cors"
//! wasm = "plugins/dist/cors.wasm"   # scripts/build-plugins.sh
//! config.allow_origins = ["https://app.example.com", "https://*.example.com"]  # or "*"
//! config.allow_methods = ["GET", "POST", "PUT", "DELETE"]   # default below; or "*"
//! config.allow_headers = ["authorization", "content-type"]  # default "*": reflect
//! config.expose_headers = ["x-request-id"]                   # default: none
//! config.allow_credentials = true                           # default false
//! config.max_age = 600                                      # seconds, default 600
//! ```
//!
//! Every list may also be written as one string (`allow_origins = "*"`).
//!
//! **Origins.** An entry is `scheme://host[:port]`: no path (not even a trailing `/`),
//! query, user info or trailing dot; a host is ASCII (write IDNs in their `xn--` form)
//! or an IPv6 literal in brackets (compared in canonical form). Scheme and host compare case-insensitively, the port
//! exactly; the default port of `http` (80) and `https` (443) is the same as none.
//! `https://*.example.com` matches every subdomain at any depth (`a.example.com`,
//! `a.b.example.com`) with that scheme and port, never `example.com` itself nor
//! `evil-example.com` or `example.com.evil.com`; the `*.` must be the whole first label
//! and be followed by at least two labels (`*.com` is refused). `"*"` alone allows every
//! origin, and then `access-control-allow-origin: *` is sent instead of the origin.
//! `Origin: null` (sandboxed iframes, `file:` pages, cross-origin redirects, from any
//! site) is only served by `"*"`; a `"null"` entry is refused, as allowing it would
//! allow everyone. A request `Origin` that is not a well-formed origin (several values,
//! a path, spaces) matches nothing.
//!
//! **Preflight**: an `OPTIONS` request with both `Origin` and
//! `Access-Control-Request-Method`. It never goes upstream. Allowed (origin allowed,
//! method in `allow_methods`, every name in `Access-Control-Request-Headers` allowed):
//! `204` with `access-control-allow-origin`, `-allow-credentials: true` (with
//! credentials), `-allow-methods` (the configured list; with `"*"`, the requested
//! method), `-allow-headers` (the configured list; with `"*"`, the requested names,
//! lower-cased) and `-max-age`. Refused: `403` with Weir's JSON error
//! (`"error": "cors_rejected"`, the message says whether the origin, the method or a
//! header was refused) and no `access-control-*` header, so the browser blocks the
//! request; a 403 rather than a 2xx so the refusal shows in logs and metrics. Methods
//! compare case-sensitively (browsers upper-case only DELETE, GET, HEAD, OPTIONS, POST
//! and PUT: a lower-case one of those in the config is refused); header names
//! case-insensitively. An `Access-Control-Request-Headers` that is not a
//! comma-separated list of header names, or is longer than 8 KiB, is refused. Both
//! answers carry `vary: Origin, Access-Control-Request-Method,
//! Access-Control-Request-Headers`. A plain `OPTIONS` (without those two headers) is
//! not a preflight and goes upstream like any request.
//!
//! **Other requests** always go upstream, allowed or not: CORS is enforced by the
//! browser, which hides a response without the headers from the page. A request whose
//! origin is allowed and whose method is in `allow_methods` gets
//! `access-control-allow-origin` (its `Origin` verbatim, or `*`),
//! `access-control-allow-credentials: true` (with credentials) and
//! `access-control-expose-headers` (when configured) on its response. With `"*"`
//! origins every response gets `*`, with or without an `Origin`, so one cached response
//! serves every origin. Otherwise the answer depends on the origin and every response
//! (allowed, refused or without `Origin`) gets `Origin` added to `Vary` unless its `Vary`
//! already names `Origin` or is `*`; existing `Vary` values are kept.
//!
//! **The policy owns CORS on its routes**: every `access-control-*` header from the
//! upstream is removed from the response, so an upstream's own (often permissive) CORS
//! headers never reach a refused origin.
//!
//! **Order**: list `cors` before authentication plugins on a route: browsers send
//! preflights without credentials, so a key or JWT check placed first would refuse them.
//!
//! **Config errors** fail the load with a message naming the key: a malformed origin, a
//! wildcard anywhere but a first label, `"*"` mixed with other entries,
//! `allow_credentials = true` with origin `"*"` (the CORS protocol forbids
//! `access-control-allow-origin: *` on credentialed requests and browsers reject it:
//! list the origins) or with `expose_headers = "*"` (a literal name then), a method or
//! header name that is not an HTTP token, an entry given twice, an empty
//! `allow_origins` or `allow_methods`, `max_age` above 86400 (browsers cap it anyway:
//! Chromium at 7200, Firefox at 86400), or an unknown key.
#![warn(missing_docs)]

use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::Ipv6Addr;
use weir_plugin_sdk::prelude::*;

/// The plugin's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Allowed origins: `scheme://host[:port]`, `scheme://*.domain[:port]`, or `"*"`.
    pub allow_origins: Names,
    /// Methods a preflight may ask for (case-sensitive), or `"*"` for any.
    /// Default: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS.
    #[serde(default = "default_methods")]
    pub allow_methods: Names,
    /// Request headers a preflight may ask for, or `"*"` (the default) to allow and
    /// reflect whatever it asks for.
    #[serde(default = "any")]
    pub allow_headers: Names,
    /// Response headers the page may read (`access-control-expose-headers`), or `"*"`
    /// (without credentials only). Default: none.
    #[serde(default)]
    pub expose_headers: Names,
    /// Whether the page may send and read credentials (cookies, HTTP auth).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer, in seconds (0–86400).
    #[serde(default = "default_max_age")]
    pub max_age: u32,
}

/// A list of strings, or one string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a string or a list of strings")]
pub enum Names {
    /// A single entry.
    One(String),
    /// Several entries.
    Many(Vec<String>),
}

impl Default for Names {
    fn default() -> Names {
        Names::Many(Vec::new())
    }
}

impl Names {
    fn into_vec(self) -> Vec<String> {
        match self {
            Names::One(v) => vec![v],
            Names::Many(v) => v,
        }
    }
}

fn default_methods() -> Names {
    Names::Many(
        ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
            .map(String::from)
            .to_vec(),
    )
}

fn any() -> Names {
    Names::One("*".into())
}

fn default_max_age() -> u32 {
    600
}

/// The longest `Access-Control-Request-Headers` a preflight may carry.
const MAX_REQUEST_HEADERS_LEN: usize = 8 * 1024;
/// The longest `max_age` accepted (Firefox's cap).
const MAX_AGE_LIMIT: u32 = 86_400;
/// Methods browsers upper-case before sending (the Fetch standard's "normalize").
const NORMALIZED_METHODS: [&str; 6] = ["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"];
/// What a preflight answer depends on.
const PREFLIGHT_VARY: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";
/// The request variable carrying `access-control-allow-origin` to `on_response`.
const ALLOW_ORIGIN_VAR: &str = "allow_origin";

/// The policy: the config checked and compiled.
#[derive(Debug)]
pub struct Cors {
    origins: Origins,
    methods: Tokens,
    headers: Tokens,
    /// `access-control-expose-headers`, if any.
    expose: Option<String>,
    credentials: bool,
    max_age: String,
}

#[derive(Debug)]
enum Origins {
    /// `"*"`: every origin, answered with `*`.
    Any,
    /// Exact origins (normalized `scheme://host[:port]`) and wildcard patterns.
    List {
        exact: BTreeSet<String>,
        wildcards: Vec<Origin>,
    },
}

/// `"*"` or a list of tokens, with the list as a header value.
#[derive(Debug)]
enum Tokens {
    Any,
    Only { names: Vec<String>, joined: String },
}

/// A parsed origin, lower-cased, the default port dropped. For a wildcard pattern
/// `host` is the suffix after `*` (`.example.com`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
    wildcard: bool,
}

impl Policy for Cors {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let mut errors = Vec::new();
        let origins = origins(config.allow_origins.into_vec(), &mut errors);
        let methods = tokens("allow_methods", config.allow_methods, false, &mut errors);
        let headers = tokens("allow_headers", config.allow_headers, true, &mut errors);
        let expose = tokens("expose_headers", config.expose_headers, true, &mut errors);
        if let Tokens::Only { names, .. } = &methods {
            if names.is_empty() {
                errors.push("allow_methods: empty; no preflight could pass".into());
            }
            for m in names {
                let upper = m.to_ascii_uppercase();
                if *m != upper && NORMALIZED_METHODS.contains(&upper.as_str()) {
                    errors.push(format!(
                        "allow_methods: `{m}`: methods are case-sensitive and browsers send `{upper}`"
                    ));
                }
            }
        }
        if config.allow_credentials {
            if matches!(origins, Origins::Any) {
                errors.push(
                    "allow_credentials = true cannot be used with allow_origins = \"*\": the CORS \
                     protocol forbids `access-control-allow-origin: *` on credentialed requests \
                     and browsers reject it; list the origins"
                        .into(),
                );
            }
            if matches!(expose, Tokens::Any) {
                errors.push(
                    "expose_headers: `*` is a literal header name when allow_credentials = true; \
                     list the headers"
                        .into(),
                );
            }
        }
        if config.max_age > MAX_AGE_LIMIT {
            errors.push(format!(
                "max_age: {} is above {MAX_AGE_LIMIT} seconds (browsers cap it: Chromium at \
                 7200, Firefox at 86400)",
                config.max_age
            ));
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        let expose = match expose {
            Tokens::Any => Some("*".to_string()),
            Tokens::Only { joined, .. } => (!joined.is_empty()).then_some(joined),
        };
        Ok(Cors {
            origins,
            methods,
            headers,
            expose,
            credentials: config.allow_credentials,
            max_age: config.max_age.to_string(),
        })
    }

    fn on_request(&self, req: &mut dyn Request) -> Decision {
        let is_options = req.method() == "OPTIONS";
        // `*` answers every origin alike: no need to read `Origin` outside a preflight.
        let origin = if is_options || matches!(self.origins, Origins::List { .. }) {
            req.headers().get("origin")
        } else {
            None
        };
        if is_options && origin.is_some() {
            if let Some(method) = req.headers().get("access-control-request-method") {
                return self.preflight(&*req, origin.as_deref(), &method);
            }
        }
        if self.methods.allows(req.method()) {
            if let Some(allow) = self.allow_origin(origin.as_deref()) {
                req.set_var(ALLOW_ORIGIN_VAR, allow);
            }
        }
        Decision::Continue
    }

    fn on_response(&self, req: &dyn RequestInfo, resp: &mut dyn Response) -> Decision {
        // One read of the whole map: the upstream's CORS headers and `Vary` at once.
        let mut upstream_cors = BTreeSet::new();
        let mut varies_on_origin = false;
        for (name, value) in resp.headers().pairs() {
            if name
                .as_bytes()
                .get(..15)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"access-control-"))
            {
                upstream_cors.insert(name);
            } else if name.eq_ignore_ascii_case("vary") {
                varies_on_origin |= value.split(',').any(|v| {
                    let v = v.trim();
                    v == "*" || v.eq_ignore_ascii_case("origin")
                });
            }
        }
        let headers = resp.headers_mut();
        for name in &upstream_cors {
            headers.remove(name);
        }
        if let Some(allow) = req.var(ALLOW_ORIGIN_VAR) {
            headers.set("access-control-allow-origin", allow);
            if self.credentials {
                headers.set("access-control-allow-credentials", "true");
            }
            if let Some(expose) = &self.expose {
                headers.set("access-control-expose-headers", expose);
            }
        }
        if matches!(self.origins, Origins::List { .. }) && !varies_on_origin {
            headers.add("vary", "Origin");
        }
        Decision::Continue
    }
}

weir_plugin_sdk::export_policy!(Cors);

impl Cors {
    /// The `access-control-allow-origin` for a request's `Origin`, if it is allowed.
    fn allow_origin<'a>(&self, origin: Option<&'a str>) -> Option<&'a str> {
        match &self.origins {
            Origins::Any => Some("*"),
            Origins::List { exact, wildcards } => {
                let raw = origin?;
                let o = parse_origin(raw).ok().filter(|o| !o.wildcard)?;
                let allowed = exact.contains(&o.key())
                    || wildcards.iter().any(|w| {
                        w.scheme == o.scheme
                            && w.port == o.port
                            && o.host.len() > w.host.len()
                            && o.host.ends_with(&w.host)
                    });
                allowed.then_some(raw)
            }
        }
    }

    /// Answers a preflight: 204 with the CORS headers, or 403 without them.
    fn preflight(&self, req: &dyn RequestInfo, origin: Option<&str>, method: &str) -> Decision {
        let refuse = |why: &str| {
            Decision::error(403, "cors_rejected", why, req).header("vary", PREFLIGHT_VARY)
        };
        let Some(allow_origin) = self.allow_origin(origin) else {
            return refuse("CORS preflight refused: the origin is not allowed");
        };
        if !is_token(method) || !self.methods.allows(method) {
            return refuse("CORS preflight refused: the method is not allowed");
        }
        let requested = req
            .headers()
            .get("access-control-request-headers")
            .unwrap_or_default();
        let Some(requested) = requested_headers(&requested) else {
            return refuse("CORS preflight refused: malformed Access-Control-Request-Headers");
        };
        if !requested.iter().all(|h| self.headers.allows(h)) {
            return refuse("CORS preflight refused: a requested header is not allowed");
        }
        let mut answer = Decision::respond(204).header("access-control-allow-origin", allow_origin);
        if self.credentials {
            answer = answer.header("access-control-allow-credentials", "true");
        }
        answer = answer.header(
            "access-control-allow-methods",
            match &self.methods {
                Tokens::Any => method,
                Tokens::Only { joined, .. } => joined,
            },
        );
        let allow_headers = match &self.headers {
            Tokens::Any => requested.join(", "),
            Tokens::Only { joined, .. } => joined.clone(),
        };
        if !allow_headers.is_empty() {
            answer = answer.header("access-control-allow-headers", &allow_headers);
        }
        answer
            .header("access-control-max-age", &self.max_age)
            .header("vary", PREFLIGHT_VARY)
    }
}

impl Tokens {
    /// Whether `name` is allowed (compared exactly: header names are lower-cased first).
    fn allows(&self, name: &str) -> bool {
        match self {
            Tokens::Any => true,
            Tokens::Only { names, .. } => names.iter().any(|n| n == name),
        }
    }
}

/// Checks a list of methods or header names (`lower`: header names, lower-cased).
fn tokens(key: &str, names: Names, lower: bool, errors: &mut Vec<String>) -> Tokens {
    let names = names.into_vec();
    if names.iter().any(|n| n == "*") {
        if names.len() > 1 {
            errors.push(format!(
                "{key}: `*` allows everything; remove the other entries"
            ));
        }
        return Tokens::Any;
    }
    let mut seen = Vec::with_capacity(names.len());
    for name in names {
        if !is_token(&name) {
            errors.push(format!(
                "{key}: `{name}` is not a valid name (letters, digits and !#$%&'*+-.^_`|~)"
            ));
            continue;
        }
        let name = if lower {
            name.to_ascii_lowercase()
        } else {
            name
        };
        if seen.contains(&name) {
            errors.push(format!("{key}: `{name}` is given twice"));
        } else {
            seen.push(name);
        }
    }
    let joined = seen.join(", ");
    Tokens::Only {
        names: seen,
        joined,
    }
}

/// Checks `allow_origins`.
fn origins(entries: Vec<String>, errors: &mut Vec<String>) -> Origins {
    if entries.is_empty() {
        errors.push("allow_origins: empty; list origins or give \"*\"".into());
    }
    if entries.iter().any(|e| e == "*") {
        if entries.len() > 1 {
            errors.push("allow_origins: `*` allows every origin; remove the other entries".into());
        }
        return Origins::Any;
    }
    let mut exact = BTreeSet::new();
    let mut wildcards = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let key = format!("allow_origins[{i}]");
        if entry.eq_ignore_ascii_case("null") {
            errors.push(format!(
                "{key}: `null` is the origin of sandboxed iframes, file: pages and redirects \
                 from any site; allowing it allows everyone"
            ));
            continue;
        }
        let origin = match parse_origin(entry) {
            Ok(o) => o,
            Err(e) => {
                errors.push(format!("{key}: `{entry}` {e}"));
                continue;
            }
        };
        let fresh = if origin.wildcard {
            let fresh = !wildcards.contains(&origin);
            wildcards.push(origin);
            fresh
        } else {
            exact.insert(origin.key())
        };
        if !fresh {
            errors.push(format!("{key}: `{entry}` is given twice"));
        }
    }
    Origins::List { exact, wildcards }
}

impl Origin {
    /// `scheme://host[:port]`, normalized.
    fn key(&self) -> String {
        match self.port {
            Some(port) => format!("{}://{}:{port}", self.scheme, self.host),
            None => format!("{}://{}", self.scheme, self.host),
        }
    }
}

/// Parses `scheme://host[:port]`, or `scheme://*.domain[:port]`; `Err` says what is
/// wrong (after the entry, as in "`x` is not …").
fn parse_origin(s: &str) -> Result<Origin, String> {
    let Some((scheme, authority)) = s.split_once("://") else {
        return Err("is not an origin: scheme://host[:port]".into());
    };
    let mut chars = scheme.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return Err("has an invalid scheme".into());
    }
    if authority.contains(['/', '?', '#']) {
        return Err(
            "has a path, query or fragment: an origin is scheme://host[:port], \
                    without a trailing `/`"
                .into(),
        );
    }
    if authority.contains('@') {
        return Err("has user info: an origin is scheme://host[:port]".into());
    }
    // An IPv6 literal is compared in its canonical (RFC 5952) form, as browsers send it.
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (inside, rest) = bracketed.split_once(']').ok_or("has an unclosed `[`")?;
        let Ok(ip) = inside.parse::<Ipv6Addr>() else {
            return Err("has an invalid IPv6 address".into());
        };
        let port = match rest {
            "" => None,
            _ => Some(rest.strip_prefix(':').ok_or("has junk after `]`")?),
        };
        (format!("[{ip}]"), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        (host.to_ascii_lowercase(), port)
    };
    let (wildcard, host) = match host.strip_prefix("*.") {
        Some(rest) => {
            if !rest.contains('.') {
                return Err(
                    "matches a whole top-level domain: give at least `*.domain.tld`".into(),
                );
            }
            (true, format!(".{rest}"))
        }
        None => (false, host),
    };
    if !host.starts_with('[') {
        check_host(host.strip_prefix('.').unwrap_or(&host))?;
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(format!("has an invalid port `{p}`")),
        },
    };
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    Ok(Origin {
        port: port.filter(|p| Some(*p) != default_port),
        host,
        scheme,
        wildcard,
    })
}

/// A DNS name or IPv4 address: dot-separated, non-empty labels of ASCII letters,
/// digits, `-` and `_`.
fn check_host(host: &str) -> Result<(), String> {
    if !host.is_ascii() {
        return Err("has a non-ASCII host: write it in its punycode (xn--) form".into());
    }
    if host.contains('*') {
        return Err("has a `*` that is not the whole first label (`https://*.example.com`)".into());
    }
    let ok = host.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if ok {
        Ok(())
    } else {
        Err("has an invalid host".into())
    }
}

/// The names of `Access-Control-Request-Headers`, lower-cased; `None` if malformed.
fn requested_headers(value: &str) -> Option<Vec<String>> {
    if value.len() > MAX_REQUEST_HEADERS_LEN {
        return None;
    }
    let mut names = Vec::new();
    for name in value.split(',').map(|n| n.trim_matches([' ', '\t'])) {
        if name.is_empty() {
            continue;
        }
        if !is_token(name) {
            return None;
        }
        names.push(name.to_ascii_lowercase());
    }
    Some(names)
}

/// An HTTP token (RFC 9110): a method or a header name.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests;
