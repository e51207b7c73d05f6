//! The configuration file: typed TOML, `${ENV}` substitution, and errors that point
//! at file, line and key.
//!
//! Loading is a pure function of the file's text and the environment: [`load_str`]
//! parses and validates without touching sockets, so every rule here is unit-tested.
//! The validated [`Config`] is compiled into a serving snapshot by
//! [`crate::snapshot::Snapshot::build`].

mod duration;
mod error;
mod validate;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use duration::Dur;
pub use error::{ConfigError, ConfigErrors};
pub(crate) use validate::resolve as resolve_addr;

/// The 1-based line of a dotted key path (`server.listen[0]`) in config text.
pub fn line_of_key(text: &str, key: &str) -> Option<usize> {
    error::Locator::new(text).line_of_key(key)
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub access_log: AccessLogConfig,
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
}

/// `[[plugins]]`: a WebAssembly policy (proxy-wasm ABI).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Referenced by `routes[].plugins` and `server.global_plugins`.
    pub name: String,
    /// Path of the `.wasm` module, relative to the config file's directory.
    pub wasm: String,
    /// Handed to the plugin's `on_configure` as JSON.
    #[serde(default)]
    pub config: serde_json::Value,
    /// What a request gets when the plugin fails (trap, deadline, out of memory).
    #[serde(default)]
    pub on_error: OnError,
    /// CPU deadline of one callback.
    #[serde(default = "default_plugin_cpu")]
    pub cpu_limit: Dur,
    /// Linear memory one VM may grow to, in MiB.
    #[serde(default = "default_plugin_memory")]
    pub memory_limit_mb: u32,
    /// The most request body this plugin is shown in one `on_request_body` call: what
    /// the gateway holds for it when it asks to see the body whole (answering
    /// `StopIterationAndBuffer`), or one chunk (at most 64 KiB) when it lets chunks
    /// through. Past it the request gets 413 `payload_too_large`.
    #[serde(default = "default_plugin_body")]
    pub max_body_bytes: usize,
    /// Whether the plugin's `on_response_body` is called. Off by default: nearly every
    /// response has a body, and most policies never look at it.
    #[serde(default)]
    pub response_body: bool,
}

/// A failing plugin either denies the request (500 with a JSON error) or is skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    Deny,
    Allow,
}

fn default_plugin_cpu() -> Dur {
    Dur::millis(5)
}
fn default_plugin_memory() -> u32 {
    64
}
fn default_plugin_body() -> usize {
    1 << 20
}

/// `[server]`: listeners, worker threads, client-facing limits.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Plain-text HTTP/1.1 listeners (`"0.0.0.0:8080"`).
    pub listen: Vec<String>,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// TLS listeners and their certificates.
    pub tls: Option<TlsConfig>,
    /// Accept HTTP/2 without TLS (prior knowledge) on the plain listeners.
    pub h2c: bool,
    /// Peers (CIDRs) whose `x-forwarded-*` headers are believed.
    pub trusted_proxies: Vec<String>,
    /// On SIGTERM, how long in-flight requests have to finish.
    pub grace_period: Dur,
    /// Reject a request that carries both Content-Length and Transfer-Encoding (400).
    pub reject_ambiguous_framing: bool,
    /// Poll the config file and reload when it changes.
    pub watch_config: bool,
    /// How often the config file is polled.
    pub watch_interval: Dur,
    /// Idle upstream connections kept per process.
    pub upstream_keepalive_pool: usize,
    /// Largest request head (names and values of all headers) accepted; larger gets 431.
    /// Pingora's own ceiling (answered with 400) is 1 MiB.
    pub max_request_header_bytes: usize,
    /// Most request headers accepted; more gets 431. Pingora's ceiling is 256.
    pub max_request_headers: usize,
    /// Plugins run on every route, before the route's own.
    pub global_plugins: Vec<String>,
    /// Send header names to HTTP/1 peers in the case they arrived in. Off (the default),
    /// names go out in lower case but for the dozen standard ones pingora titles
    /// (`Host`, `Content-Type`...), as Envoy does by default and HTTP/2 always does:
    /// about 2k instructions less per header the gateway or a plugin writes.
    pub preserve_header_case: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec!["0.0.0.0:8080".into()],
            threads: 2,
            tls: None,
            h2c: false,
            trusted_proxies: Vec::new(),
            grace_period: Dur::secs(5),
            reject_ambiguous_framing: true,
            watch_config: true,
            watch_interval: Dur::secs(1),
            upstream_keepalive_pool: 128,
            max_request_header_bytes: 64 * 1024,
            max_request_headers: 100,
            global_plugins: Vec::new(),
            preserve_header_case: false,
        }
    }
}

/// `[server.tls]`: TLS listeners; the certificate is chosen by SNI.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub listen: Vec<String>,
    /// Offer HTTP/2 through ALPN.
    #[serde(default = "yes")]
    pub h2: bool,
    /// Certificates; the first is the default when no name matches.
    pub certs: Vec<CertConfig>,
}

/// One certificate chain and its key.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// Names served with this certificate (`*.example.com` allowed); taken from the
    /// certificate's subject alternative names when empty.
    #[serde(default)]
    pub server_names: Vec<String>,
}

/// `[admin]`: the admin API listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `"off"` disables the admin API.
    pub listen: String,
    /// Bearer token required for everything but `/healthz`.
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9901".into(),
            token: None,
        }
    }
}

/// `[access_log]`: one JSON line per request.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// `"stdout"`, `"stderr"`, `"off"` or a file path (appended to).
    pub output: String,
    /// Lines buffered between the request path and the writer; lines past it are dropped
    /// and counted in `weir_access_log_dropped_total`.
    pub buffer: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            output: "stdout".into(),
            buffer: 16_384,
        }
    }
}

/// `[[upstreams]]`: a pool of targets.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    pub targets: Vec<TargetSpec>,
    #[serde(default)]
    pub lb: LbKind,
    /// For `consistent_hash`: `ip`, `path`, `header:NAME` or `cookie:NAME`.
    #[serde(default)]
    pub hash_on: Option<String>,
    /// Active health checks; without them every target is healthy unless passively ejected.
    #[serde(default)]
    pub health: Option<HealthConfig>,
    #[serde(default)]
    pub passive: PassiveConfig,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    /// Further attempts on another target after a connect failure.
    #[serde(default = "one")]
    pub retries: usize,
    /// Also retry idempotent requests answered with these statuses (502, 503, 504).
    #[serde(default)]
    pub retry_on_status: Vec<u16>,
    /// Connect to the targets with TLS.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
}

/// A target: `"host:port"` or `{ addr = "host:port", weight = 3 }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TargetSpec {
    Addr(String),
    Weighted {
        addr: String,
        #[serde(default = "one_u32")]
        weight: u32,
    },
}

impl UpstreamConfig {
    /// An upstream over `targets` with every other setting at its default.
    pub fn new(name: &str, targets: Vec<TargetSpec>) -> Self {
        UpstreamConfig {
            name: name.into(),
            targets,
            lb: LbKind::default(),
            hash_on: None,
            health: None,
            passive: PassiveConfig::default(),
            timeouts: TimeoutConfig::default(),
            retries: one(),
            retry_on_status: Vec::new(),
            tls: None,
        }
    }
}

impl RouteConfig {
    /// A route to `upstream` matching every request, every other setting at its default.
    pub fn proxy(name: &str, upstream: &str) -> Self {
        RouteConfig {
            name: name.into(),
            hosts: Vec::new(),
            paths: Vec::new(),
            methods: Vec::new(),
            headers: BTreeMap::new(),
            priority: 0,
            upstream: Some(upstream.into()),
            strip_prefix: false,
            rewrite_path: None,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            respond: None,
            plugins: Vec::new(),
        }
    }
}

impl TargetSpec {
    pub fn addr(&self) -> &str {
        match self {
            TargetSpec::Addr(a) | TargetSpec::Weighted { addr: a, .. } => a,
        }
    }
    pub fn weight(&self) -> u32 {
        match self {
            TargetSpec::Addr(_) => 1,
            TargetSpec::Weighted { weight, .. } => *weight,
        }
    }
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbKind {
    #[default]
    RoundRobin,
    Random,
    ConsistentHash,
    LeastRequest,
}

/// `health = { ... }`: active checks.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// `http` (GET `path`, expect `expected_status`) or `tcp` (connect only).
    #[serde(rename = "type")]
    pub kind: HealthKind,
    pub path: String,
    /// Statuses counted healthy; empty means any 2xx or 3xx.
    pub expected_status: Vec<u16>,
    pub interval: Dur,
    pub timeout: Dur,
    /// Consecutive successes before an unhealthy target is used again.
    pub healthy_threshold: u32,
    /// Consecutive failures before a target is taken out.
    pub unhealthy_threshold: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            kind: HealthKind::Http,
            path: "/health".into(),
            expected_status: Vec::new(),
            interval: Dur::secs(2),
            timeout: Dur::secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    #[default]
    Http,
    Tcp,
}

/// `passive = { ... }`: eject a target after consecutive failures of real requests.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveConfig {
    /// Consecutive connect failures or 5xx-from-proxy errors; 0 disables.
    pub max_failures: u32,
    /// How long an ejected target stays out (it returns earlier if an active check passes).
    pub eject_for: Dur,
}

impl Default for PassiveConfig {
    fn default() -> Self {
        PassiveConfig {
            max_failures: 5,
            eject_for: Dur::secs(10),
        }
    }
}

/// `timeouts = { ... }` for one upstream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    pub connect: Dur,
    pub read: Dur,
    pub write: Dur,
    /// How long an idle pooled connection is kept.
    pub idle: Dur,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            connect: Dur::secs(2),
            read: Dur::secs(30),
            write: Dur::secs(30),
            idle: Dur::secs(60),
        }
    }
}

/// `tls = { ... }` for an upstream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Server name sent in SNI and verified; defaults to the target host.
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default = "yes")]
    pub verify: bool,
}

/// `[[routes]]`: what a request must look like, and what happens to it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// Exact hosts or `*.example.com`; empty matches any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// `/prefix`, `=/exact` or `~regex`; empty matches every path.
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header constraints: a string value must match exactly, `true` means present.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderMatch>,
    /// Breaks ties between routes of equal path specificity (higher first).
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub upstream: Option<String>,
    /// Remove the matched prefix from the path sent upstream.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the matched prefix (or the whole path for exact and regex matches).
    #[serde(default)]
    pub rewrite_path: Option<String>,
    #[serde(default)]
    pub request_headers: HeaderOps,
    #[serde(default)]
    pub response_headers: HeaderOps,
    /// Answer directly instead of proxying.
    #[serde(default)]
    pub respond: Option<DirectResponse>,
    /// Plugins run on this route, in order (after `server.global_plugins`).
    #[serde(default)]
    pub plugins: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum HeaderMatch {
    Value(String),
    Present(bool),
}

/// Header edits: `set` replaces, `add` appends, `remove` deletes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderOps {
    pub set: BTreeMap<String, String>,
    pub add: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// `respond = { status = 200, body = "...", headers = { ... } }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn one_u32() -> u32 {
    1
}

/// Reads, substitutes, parses and validates a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::one(ConfigError::new(
            path,
            None,
            "",
            format!("cannot read the config file: {e}"),
        ))
    })?;
    load_str(path, &text, |k| std::env::var(k).ok())
}

/// Parses and validates config text; `env` resolves `${NAME}` (tests pass their own).
pub fn load_str(
    path: &Path,
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let text = substitute_env(path, text, env)?;
    let config: Config = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| error::line_of(&text, s.start));
        let key = error::key_from_toml_message(e.message());
        ConfigErrors::one(ConfigError::new(
            path,
            line,
            &key,
            e.message().trim().to_string(),
        ))
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let errors = validate::validate(&config, base);
    if errors.is_empty() {
        Ok(config)
    } else {
        let locator = error::Locator::new(&text);
        Err(ConfigErrors(
            errors
                .into_iter()
                .map(|(key, msg)| ConfigError::new(path, locator.line_of_key(&key), &key, msg))
                .collect(),
        ))
    }
}

/// Replaces `${NAME}` with the variable's value; `$${` stands for a literal `${`.
/// An unset variable is an error naming its line. Comments are left alone, so
/// commenting out a line that names an unset variable works.
fn substitute_env(
    path: &Path,
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigErrors> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut multiline = None;
    for (lineno, full) in text.split_inclusive('\n').enumerate() {
        let (line, comment) =
            full.split_at(comment_start(full, &mut multiline).unwrap_or(full.len()));
        let mut rest = line;
        while let Some(pos) = rest.find("${") {
            if pos > 0 && rest.as_bytes()[pos - 1] == b'$' {
                out.push_str(&rest[..pos - 1]);
                out.push_str("${");
                rest = &rest[pos + 2..];
                continue;
            }
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 2..];
            match after.find('}') {
                Some(end) => {
                    let name = &after[..end];
                    let valid = !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    match env(name) {
                        Some(v) if valid => out.push_str(&escape_toml_basic(&v)),
                        _ => errors.push(ConfigError::new(
                            path,
                            Some(lineno + 1),
                            name,
                            if valid {
                                format!("environment variable `{name}` is not set")
                            } else {
                                format!("`${{{name}}}` is not a valid variable name (letters, digits, `_`)")
                            },
                        )),
                    }
                    rest = &after[end + 1..];
                }
                None => {
                    errors.push(ConfigError::new(
                        path,
                        Some(lineno + 1),
                        "",
                        "unterminated `${`: write `${NAME}`, or `$${` for a literal".into(),
                    ));
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out.push_str(comment);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Where a TOML line's comment starts: its first `#` outside strings. `multiline`
/// carries an open `"""` or `'''` string from one line to the next.
fn comment_start(line: &str, multiline: &mut Option<&'static str>) -> Option<usize> {
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if let Some(close) = *multiline {
            if close == "\"\"\"" && b[i] == b'\\' {
                i += 2;
            } else if line[i..].starts_with(close) {
                *multiline = None;
                i += 3;
            } else {
                i += 1;
            }
            continue;
        }
        match b[i] {
            b'#' => return Some(i),
            b'"' | b'\''
                if line[i..].starts_with(if b[i] == b'"' { "\"\"\"" } else { "\'\'\'" }) =>
            {
                *multiline = Some(if b[i] == b'"' { "\"\"\"" } else { "\'\'\'" });
                i += 3;
            }
            quote @ (b'"' | b'\'') => {
                i += 1;
                while i < b.len() && b[i] != quote && b[i] != b'\n' {
                    // Escapes exist in basic strings only.
                    i += if quote == b'"' && b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// Values are substituted inside TOML strings: keep quotes and backslashes literal.
fn escape_toml_basic(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The config as JSON for `GET /config`, with secrets replaced.
pub fn redacted_json(config: &Config) -> serde_json::Value {
    let mut v = serde_json::to_value(config).unwrap_or(serde_json::Value::Null);
    redact(&mut v);
    v
}

fn redact(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                let k = k.to_ascii_lowercase();
                let secret = ["token", "secret", "password", "api_key", "credential"]
                    .iter()
                    .any(|s| k.contains(s));
                if secret && !val.is_null() {
                    *val = serde_json::Value::String("<redacted>".into());
                } else {
                    redact(val);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
