//! Every rule a config must satisfy, collected (not stopped at the first), each as a key
//! path and a message that says what would be valid.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};

use std::path::Path;

use super::{Config, HeaderOps, LbKind, PluginConfig, RouteConfig, UpstreamConfig};

type Errors = Vec<(String, String)>;

/// `base` is the directory of the config file (plugin paths are relative to it).
pub(super) fn validate(c: &Config, base: &Path) -> Errors {
    let mut e = Errors::new();
    server(c, &mut e);
    admin(c, &mut e);
    if c.access_log.output.trim().is_empty() {
        e.push((
            "access_log.output".into(),
            "must be \"stdout\", \"stderr\", \"off\" or a file path".into(),
        ));
    }
    if c.access_log.buffer == 0 {
        e.push(("access_log.buffer".into(), "must be at least 1 line".into()));
    }
    let mut names = HashSet::new();
    for (i, u) in c.upstreams.iter().enumerate() {
        upstream(&format!("upstreams[{i}]"), u, &mut names, &mut e);
    }
    let mut route_names = HashSet::new();
    for (i, r) in c.routes.iter().enumerate() {
        route(&format!("routes[{i}]"), r, c, &mut route_names, &mut e);
        plugin_refs(&format!("routes[{i}].plugins"), &r.plugins, c, &mut e);
    }
    plugin_refs("server.global_plugins", &c.server.global_plugins, c, &mut e);
    let mut plugin_names = HashSet::new();
    for (i, p) in c.plugins.iter().enumerate() {
        plugin(&format!("plugins[{i}]"), p, base, &mut plugin_names, &mut e);
    }
    e
}

/// The largest `max_body_bytes` a plugin may ask for: 64 MiB.
const MAX_PLUGIN_BODY: usize = 64 << 20;

fn plugin(key: &str, p: &PluginConfig, base: &Path, names: &mut HashSet<String>, e: &mut Errors) {
    if !valid_name(&p.name) {
        e.push((
            format!("{key}.name"),
            format!(
                "`{}` is not a valid name: use letters, digits, `-`, `_`, `.`",
                p.name
            ),
        ));
    } else if !names.insert(p.name.clone()) {
        e.push((
            format!("{key}.name"),
            format!("duplicate plugin name `{}`", p.name),
        ));
    }
    let path = base.join(&p.wasm);
    if !path.is_file() {
        e.push((
            format!("{key}.wasm"),
            format!(
                "no file at `{}` (paths are relative to the config file's directory; build the built-in plugins with `bash scripts/build-plugins.sh`)",
                path.display()
            ),
        ));
    }
    let cpu = p.cpu_limit.get();
    if cpu.is_zero() || cpu > std::time::Duration::from_secs(10) {
        e.push((
            format!("{key}.cpu_limit"),
            format!(
                "{:?}: use more than 0 and at most 10s (a few ms is typical)",
                p.cpu_limit
            ),
        ));
    }
    if !(1..=4096).contains(&p.memory_limit_mb) {
        e.push((
            format!("{key}.memory_limit_mb"),
            format!("{} MiB: use 1 to 4096", p.memory_limit_mb),
        ));
    }
    if !(1..=MAX_PLUGIN_BODY).contains(&p.max_body_bytes) {
        e.push((
            format!("{key}.max_body_bytes"),
            format!(
                "{}: use 1 to {MAX_PLUGIN_BODY} (the body is held in memory)",
                p.max_body_bytes
            ),
        ));
    }
}

fn plugin_refs(key: &str, refs: &[String], c: &Config, e: &mut Errors) {
    let mut seen = HashSet::new();
    for (i, name) in refs.iter().enumerate() {
        if !c.plugins.iter().any(|p| &p.name == name) {
            let known: Vec<&str> = c.plugins.iter().map(|p| p.name.as_str()).collect();
            e.push((
                format!("{key}[{i}]"),
                format!(
                    "unknown plugin `{name}`; defined plugins: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        } else if !seen.insert(name) {
            e.push((
                format!("{key}[{i}]"),
                format!("plugin `{name}` is listed twice"),
            ));
        }
    }
}

fn socket_addr(key: &str, s: &str, e: &mut Errors) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            e.push((
                key.into(),
                format!("`{s}` is not an address: write IP:PORT, like \"0.0.0.0:8080\" or \"[::]:8080\""),
            ));
            None
        }
    }
}

fn server(c: &Config, e: &mut Errors) {
    let s = &c.server;
    if s.listen.is_empty() && s.tls.is_none() {
        e.push((
            "server.listen".into(),
            "no listener: give at least one address, or configure [server.tls]".into(),
        ));
    }
    let mut seen = HashSet::new();
    for (i, l) in s.listen.iter().enumerate() {
        if let Some(a) = socket_addr(&format!("server.listen[{i}]"), l, e) {
            if !seen.insert(a) {
                e.push((
                    format!("server.listen[{i}]"),
                    format!("`{l}` is listed twice"),
                ));
            }
        }
    }
    if s.threads == 0 || s.threads > 1024 {
        e.push((
            "server.threads".into(),
            format!("{} worker threads: use 1 to 1024", s.threads),
        ));
    }
    for (i, p) in s.trusted_proxies.iter().enumerate() {
        if crate::net::parse_cidr(p).is_none() {
            e.push((
                format!("server.trusted_proxies[{i}]"),
                format!("`{p}` is not a CIDR: write \"10.0.0.0/8\", \"::1/128\" or a single IP"),
            ));
        }
    }
    if !(1024..=1024 * 1024).contains(&s.max_request_header_bytes) {
        e.push((
            "server.max_request_header_bytes".into(),
            format!(
                "{}: use 1024 to 1048576 (Pingora's own ceiling)",
                s.max_request_header_bytes
            ),
        ));
    }
    if !(1..=256).contains(&s.max_request_headers) {
        e.push((
            "server.max_request_headers".into(),
            format!(
                "{}: use 1 to 256 (Pingora's own ceiling)",
                s.max_request_headers
            ),
        ));
    }
    if s.watch_interval.get().is_zero() {
        e.push(("server.watch_interval".into(), "must be above zero".into()));
    }
    if let Some(tls) = &s.tls {
        if tls.listen.is_empty() {
            e.push((
                "server.tls.listen".into(),
                "give at least one address for the TLS listener".into(),
            ));
        }
        for (i, l) in tls.listen.iter().enumerate() {
            if let Some(a) = socket_addr(&format!("server.tls.listen[{i}]"), l, e) {
                if !seen.insert(a) {
                    e.push((
                        format!("server.tls.listen[{i}]"),
                        format!("`{l}` is already a listener"),
                    ));
                }
            }
        }
        if tls.certs.is_empty() {
            e.push((
                "server.tls.certs".into(),
                "give at least one certificate: certs = [{ cert = \"a.pem\", key = \"a.key\" }]"
                    .into(),
            ));
        }
        for (i, cert) in tls.certs.iter().enumerate() {
            if let Err(msg) = crate::tls::CertifiedKey::load(cert) {
                e.push((format!("server.tls.certs[{i}]"), msg));
            }
            for (j, n) in cert.server_names.iter().enumerate() {
                if let Err(msg) = host_pattern(n) {
                    e.push((format!("server.tls.certs[{i}].server_names[{j}]"), msg));
                }
            }
        }
    }
}

fn admin(c: &Config, e: &mut Errors) {
    let a = &c.admin;
    if a.listen == "off" {
        return;
    }
    if let Some(addr) = socket_addr("admin.listen", &a.listen, e) {
        let token_set = a.token.as_deref().is_some_and(|t| !t.is_empty());
        if !addr.ip().is_loopback() && !token_set {
            e.push((
                "admin.listen".into(),
                format!(
                    "the admin API listens on {addr}, beyond loopback, without a token: \
                     set admin.token (e.g. token = \"${{WEIR_ADMIN_TOKEN}}\") or listen on 127.0.0.1"
                ),
            ));
        }
    }
    if a.token.as_deref() == Some("") {
        e.push((
            "admin.token".into(),
            "an empty token: remove the key or give a secret".into(),
        ));
    }
}

fn upstream(key: &str, u: &UpstreamConfig, names: &mut HashSet<String>, e: &mut Errors) {
    if !valid_name(&u.name) {
        e.push((
            format!("{key}.name"),
            format!(
                "`{}` is not a valid name: use letters, digits, `-`, `_`, `.`",
                u.name
            ),
        ));
    } else if !names.insert(u.name.clone()) {
        e.push((
            format!("{key}.name"),
            format!("duplicate upstream name `{}`", u.name),
        ));
    }
    if u.targets.is_empty() {
        e.push((
            format!("{key}.targets"),
            "an upstream needs at least one target: targets = [\"127.0.0.1:9001\"]".into(),
        ));
    }
    let mut addrs = HashSet::new();
    for (i, t) in u.targets.iter().enumerate() {
        let tkey = format!("{key}.targets[{i}]");
        match resolve(t.addr()) {
            Ok(a) => {
                if !addrs.insert(a) {
                    e.push((
                        tkey.clone(),
                        format!("target `{}` is listed twice", t.addr()),
                    ));
                }
            }
            Err(msg) => e.push((tkey.clone(), msg)),
        }
        if t.weight() == 0 || t.weight() > 10_000 {
            e.push((
                format!("{tkey}.weight"),
                format!("weight {}: use 1 to 10000", t.weight()),
            ));
        }
    }
    match (&u.hash_on, u.lb) {
        (Some(h), LbKind::ConsistentHash) if crate::upstream::HashOn::parse(h).is_none() => {
            e.push((
                format!("{key}.hash_on"),
                format!("`{h}`: use \"ip\", \"path\", \"header:NAME\" or \"cookie:NAME\""),
            ));
        }
        (Some(_), lb) if lb != LbKind::ConsistentHash => e.push((
            format!("{key}.hash_on"),
            "hash_on only applies with lb = \"consistent_hash\"".into(),
        )),
        _ => {}
    }
    if let Some(h) = &u.health {
        let hk = format!("{key}.health");
        if !h.path.starts_with('/') {
            e.push((
                format!("{hk}.path"),
                format!("`{}` must start with `/`", h.path),
            ));
        }
        if h.interval.get().is_zero() {
            e.push((format!("{hk}.interval"), "must be above zero".into()));
        }
        if h.timeout.get().is_zero() {
            e.push((format!("{hk}.timeout"), "must be above zero".into()));
        }
        if h.healthy_threshold == 0 {
            e.push((
                format!("{hk}.healthy_threshold"),
                "must be at least 1".into(),
            ));
        }
        if h.unhealthy_threshold == 0 {
            e.push((
                format!("{hk}.unhealthy_threshold"),
                "must be at least 1".into(),
            ));
        }
        for (i, s) in h.expected_status.iter().enumerate() {
            if !(100..=599).contains(s) {
                e.push((
                    format!("{hk}.expected_status[{i}]"),
                    format!("{s} is not an HTTP status (100 to 599)"),
                ));
            }
        }
    }
    let t = &u.timeouts;
    for (name, d) in [("connect", t.connect), ("read", t.read), ("write", t.write)] {
        if d.get().is_zero() {
            e.push((
                format!("{key}.timeouts.{name}"),
                "must be above zero".into(),
            ));
        }
    }
    if u.retries > 16 {
        e.push((
            format!("{key}.retries"),
            format!("{} retries: use 0 to 16", u.retries),
        ));
    }
    for (i, s) in u.retry_on_status.iter().enumerate() {
        if ![500, 502, 503, 504].contains(s) {
            e.push((
                format!("{key}.retry_on_status[{i}]"),
                format!("{s}: only 500, 502, 503 and 504 can be retried"),
            ));
        }
    }
}

/// Resolves `host:port` once (config load and reload run off the request path).
pub(crate) fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !addr.contains(':') {
        return Err(format!("`{addr}` has no port: write HOST:PORT"));
    }
    match addr.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| format!("`{addr}` resolves to no address")),
        Err(err) => Err(format!("`{addr}` does not resolve: {err}")),
    }
}

fn route(key: &str, r: &RouteConfig, c: &Config, names: &mut HashSet<String>, e: &mut Errors) {
    if !valid_name(&r.name) {
        e.push((
            format!("{key}.name"),
            format!(
                "`{}` is not a valid name: use letters, digits, `-`, `_`, `.`",
                r.name
            ),
        ));
    } else if !names.insert(r.name.clone()) {
        e.push((
            format!("{key}.name"),
            format!("duplicate route name `{}`", r.name),
        ));
    }
    match (&r.upstream, &r.respond) {
        (Some(u), None) => {
            if !c.upstreams.iter().any(|x| &x.name == u) {
                let known: Vec<&str> = c.upstreams.iter().map(|x| x.name.as_str()).collect();
                e.push((
                    format!("{key}.upstream"),
                    format!(
                        "unknown upstream `{u}`; defined upstreams: {}",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        }
        (None, Some(resp)) => {
            if !(100..=599).contains(&resp.status) {
                e.push((
                    format!("{key}.respond.status"),
                    format!("{} is not an HTTP status (100 to 599)", resp.status),
                ));
            }
            for (name, value) in &resp.headers {
                header_pair(&format!("{key}.respond.headers.{name}"), name, value, e);
            }
            if r.strip_prefix || r.rewrite_path.is_some() {
                e.push((
                    format!("{key}.respond"),
                    "strip_prefix and rewrite_path only apply to routes with an upstream".into(),
                ));
            }
        }
        (Some(_), Some(_)) => e.push((
            format!("{key}.respond"),
            "a route either proxies (`upstream`) or answers (`respond`), not both".into(),
        )),
        (None, None) => e.push((
            key.into(),
            "a route needs an action: `upstream = \"NAME\"` or `respond = { status = 200 }`".into(),
        )),
    }
    for (i, h) in r.hosts.iter().enumerate() {
        if let Err(msg) = host_pattern(h) {
            e.push((format!("{key}.hosts[{i}]"), msg));
        }
    }
    for (i, p) in r.paths.iter().enumerate() {
        if let Err(msg) = crate::router::PathPattern::parse(p) {
            e.push((format!("{key}.paths[{i}]"), msg));
        }
    }
    for (i, m) in r.methods.iter().enumerate() {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            e.push((
                format!("{key}.methods[{i}]"),
                format!("`{m}` is not a method: write it in capitals, like \"GET\""),
            ));
        }
    }
    for name in r.headers.keys() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            e.push((
                format!("{key}.headers.{name}"),
                format!("`{name}` is not a valid header name"),
            ));
        }
    }
    if let Some(p) = &r.rewrite_path {
        if !p.starts_with('/') {
            e.push((
                format!("{key}.rewrite_path"),
                format!("`{p}` must start with `/`"),
            ));
        }
        if r.strip_prefix {
            e.push((
                format!("{key}.strip_prefix"),
                "use strip_prefix or rewrite_path, not both".into(),
            ));
        }
    }
    header_ops(&format!("{key}.request_headers"), &r.request_headers, e);
    header_ops(&format!("{key}.response_headers"), &r.response_headers, e);
}

fn header_ops(key: &str, ops: &HeaderOps, e: &mut Errors) {
    for (name, value) in ops.set.iter() {
        header_pair(&format!("{key}.set.{name}"), name, value, e);
    }
    for (name, value) in ops.add.iter() {
        header_pair(&format!("{key}.add.{name}"), name, value, e);
    }
    for (i, name) in ops.remove.iter().enumerate() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            e.push((
                format!("{key}.remove[{i}]"),
                format!("`{name}` is not a valid header name"),
            ));
        }
    }
}

fn header_pair(key: &str, name: &str, value: &str, e: &mut Errors) {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        e.push((key.into(), format!("`{name}` is not a valid header name")));
    }
    if http::HeaderValue::from_str(value).is_err() {
        e.push((
            key.into(),
            "the value holds characters a header cannot carry (control characters, CR, LF)".into(),
        ));
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `api.example.com` or `*.example.com`, lower case, no port.
pub(crate) fn host_pattern(h: &str) -> Result<(), String> {
    let body = h.strip_prefix("*.").unwrap_or(h);
    let ok = !body.is_empty()
        && body.len() <= 253
        && body
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !body.starts_with('.')
        && !body.ends_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{h}` is not a host pattern: write a lower-case name like \"api.example.com\" or a wildcard like \"*.example.com\" (no port)"
        ))
    }
}
