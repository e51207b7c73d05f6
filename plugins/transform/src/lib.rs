//! `transform`: edits requests on their way upstream and responses on their way back.
//!
//! ```toml
//! [[plugins]]
//! name = "transform"
//! wasm = "plugins/transform.wasm"
//! config.request.headers = { set = { x-gateway = "weir" }, remove = ["x-debug"], rename = { x-user = "x-upstream-user" }, add = { x-tag = ["a", "b"] } }
//! config.request.path = { replace_prefix = { from = "/v1", to = "/api/v1" } }
//! config.request.query = { add = { source = "weir" }, remove = ["token"] }
//! config.response.headers = { remove = ["server"], set = { cache-control = "no-store" } }
//! ```
//!
//! Header operations run in this order, each over the result of the one before:
//! `remove`, `rename`, `set`, `add`. Header names are case-insensitive. `set` replaces
//! every value, `add` keeps existing values and appends (a list adds one value each),
//! `rename` moves every value of a present header to the new name (replacing the new
//! name's values) and does nothing when it is absent.
//!
//! `request.path` takes exactly one form (the query string is kept):
//! - `set = "/health"`: replaces the whole path;
//! - `strip_prefix = "/api"`: `/api/users` → `/users`, `/api` → `/`;
//! - `add_prefix = "/v2"`: `/users` → `/v2/users`;
//! - `replace_prefix = { from = "/v1", to = "/api/v1" }`: `/v1/users` → `/api/v1/users`.
//!
//! Prefixes match whole segments: `/api` matches `/api` and `/api/…`, never `/apiary`;
//! a trailing `/` in a prefix is ignored. A path that does not match is left alone.
//!
//! `request.query` runs `remove`, then `set` (replaces every value of a parameter, the
//! new one goes at the end), then `add` (appends). Names are compared after decoding;
//! configured names and values are written percent-encoded; parameters not touched keep
//! their position and encoding.
//!
//! Every name and value is checked at load time: a header the gateway will not let a
//! plugin write (`host`, `content-length`, `transfer-encoding`, pseudo-headers), CR or
//! LF in a value, a path not starting with `/`, an unknown key, or a config with
//! nothing to do fails the load with a message naming the key.
#![warn(missing_docs)]

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use weir_plugin_sdk::prelude::*;
use weir_plugin_sdk::{query, validate_header, validate_path};

/// The plugin's `config` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Changes to the request before it goes upstream.
    #[serde(default)]
    pub request: RequestConfig,
    /// Changes to the response before it goes to the client.
    #[serde(default)]
    pub response: ResponseConfig,
}

/// `config.request`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestConfig {
    /// Request header operations.
    #[serde(default)]
    pub headers: HeaderOps,
    /// One path rewrite.
    #[serde(default)]
    pub path: Option<PathRewrite>,
    /// Query parameter operations.
    #[serde(default)]
    pub query: QueryOps,
}

/// `config.response`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseConfig {
    /// Response header operations.
    #[serde(default)]
    pub headers: HeaderOps,
}

/// Header operations, applied in the order `remove`, `rename`, `set`, `add`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Headers to remove (every value).
    #[serde(default)]
    pub remove: Vec<String>,
    /// `old-name = "new-name"`: moves every value of a present header.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// `name = "value"`: replaces every value (adds the header if absent).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// `name = "value"` or `name = ["v1", "v2"]`: appends values.
    #[serde(default)]
    pub add: BTreeMap<String, Values>,
}

/// One value or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a string or a list of strings")]
pub enum Values {
    /// A single value.
    One(String),
    /// Several values, added in order.
    Many(Vec<String>),
}

impl Values {
    fn as_slice(&self) -> &[String] {
        match self {
            Values::One(v) => std::slice::from_ref(v),
            Values::Many(v) => v,
        }
    }
}

/// How the path is rewritten: exactly one of the fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRewrite {
    /// Replace the whole path.
    pub set: Option<String>,
    /// Remove a leading prefix (whole segments).
    pub strip_prefix: Option<String>,
    /// Put a prefix in front.
    pub add_prefix: Option<String>,
    /// Replace a leading prefix (whole segments) with another.
    pub replace_prefix: Option<PrefixReplace>,
}

/// `replace_prefix = { from = "/v1", to = "/api/v1" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixReplace {
    /// The prefix to match.
    pub from: String,
    /// What replaces it (`/` removes it).
    pub to: String,
}

/// Query parameter operations, applied in the order `remove`, `set`, `add`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryOps {
    /// Parameters to remove (every occurrence).
    #[serde(default)]
    pub remove: Vec<String>,
    /// `name = "value"`: replaces every occurrence with one, at the end.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// `name = "value"` or a list: appends.
    #[serde(default)]
    pub add: BTreeMap<String, Values>,
}

/// The policy: the config checked and compiled into operations.
#[derive(Debug)]
pub struct Transform {
    request_headers: Vec<HeaderOp>,
    path: Option<PathOp>,
    query: Option<QueryEdit>,
    response_headers: Vec<HeaderOp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HeaderOp {
    Remove(String),
    Rename { from: String, to: String },
    Set(String, String),
    Add(String, String),
}

/// A path rewrite with prefixes normalized (no trailing `/`; `""` is the root).
#[derive(Debug, Clone, PartialEq, Eq)]
enum PathOp {
    Set(String),
    Replace { from: String, to: String },
    AddPrefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct QueryEdit {
    /// Decoded names whose parameters are dropped (`remove` and `set`).
    drop: BTreeSet<String>,
    /// Encoded `name=value` pairs appended (`set`, then `add`).
    append: Vec<String>,
}

impl Policy for Transform {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let mut errors = Vec::new();
        let t = Transform {
            request_headers: header_ops("request.headers", config.request.headers, &mut errors),
            path: config
                .request
                .path
                .and_then(|p| path_op("request.path", p, &mut errors)),
            query: query_edit("request.query", config.request.query, &mut errors),
            response_headers: header_ops("response.headers", config.response.headers, &mut errors),
        };
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        if t.request_headers.is_empty()
            && t.path.is_none()
            && t.query.is_none()
            && t.response_headers.is_empty()
        {
            return Err(
                "nothing to transform: give at least one of request.headers, \
                        request.path, request.query, response.headers"
                    .into(),
            );
        }
        Ok(t)
    }

    /// The response hook runs only when there are response edits.
    fn uses_response(&self) -> bool {
        !self.response_headers.is_empty()
    }

    fn on_request(&self, req: &mut dyn Request) -> Decision {
        apply_headers(&self.request_headers, req.headers_mut());
        if let Some(op) = &self.path {
            if let Some(path) = op.rewrite(req.path()) {
                req.set_path(&path);
            }
        }
        if let Some(edit) = &self.query {
            if let Some(q) = edit.apply(req.query()) {
                req.set_query(Some(&q));
            }
        }
        Decision::Continue
    }

    fn on_response(&self, _req: &dyn RequestInfo, resp: &mut dyn Response) -> Decision {
        apply_headers(&self.response_headers, resp.headers_mut());
        Decision::Continue
    }
}

weir_plugin_sdk::export_policy!(Transform);

fn apply_headers(ops: &[HeaderOp], headers: &mut dyn Headers) {
    for op in ops {
        match op {
            HeaderOp::Remove(name) => headers.remove(name),
            HeaderOp::Rename { from, to } => {
                // `get` first: the common case (absent) costs one call, not a full map.
                if headers.get(from).is_none() {
                    continue;
                }
                let values = headers.get_all(from);
                headers.remove(from);
                let mut values = values.iter();
                if let Some(first) = values.next() {
                    headers.set(to, first);
                }
                for v in values {
                    headers.add(to, v);
                }
            }
            HeaderOp::Set(name, value) => headers.set(name, value),
            HeaderOp::Add(name, value) => headers.add(name, value),
        }
    }
}

impl PathOp {
    /// The new path, or `None` to leave it alone.
    fn rewrite(&self, path: &str) -> Option<String> {
        match self {
            PathOp::Set(p) => (p != path).then(|| p.clone()),
            PathOp::AddPrefix(prefix) => Some(format!("{prefix}{path}")),
            PathOp::Replace { from, to } => {
                let rest = path.strip_prefix(from.as_str())?;
                if !(rest.is_empty() || rest.starts_with('/')) {
                    return None;
                }
                Some(match (to.is_empty(), rest.is_empty()) {
                    (true, true) => "/".to_string(),
                    (false, true) => to.clone(),
                    _ => format!("{to}{rest}"),
                })
            }
        }
    }
}

impl QueryEdit {
    /// The new query, or `None` if it does not change.
    fn apply(&self, query: Option<&str>) -> Option<String> {
        let old = query.unwrap_or_default();
        let mut parts: Vec<&str> = Vec::new();
        let mut dropped = false;
        for piece in old.split('&').filter(|p| !p.is_empty()) {
            let name = piece.split_once('=').map_or(piece, |(n, _)| n);
            if !self.drop.is_empty() && self.drop.contains(&query::decode(name)) {
                dropped = true;
            } else {
                parts.push(piece);
            }
        }
        if !dropped && self.append.is_empty() {
            return None;
        }
        parts.extend(self.append.iter().map(String::as_str));
        Some(parts.join("&"))
    }
}

/// Lower-cases and checks a header name used for writing.
fn header_name(key: &str, name: &str, errors: &mut Vec<String>) -> Option<String> {
    match validate_header(name, "") {
        Ok(()) => Some(name.to_ascii_lowercase()),
        Err(e) => {
            errors.push(format!("{key}: {e}"));
            None
        }
    }
}

fn header_ops(key: &str, ops: HeaderOps, errors: &mut Vec<String>) -> Vec<HeaderOp> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut once = |section: &str, name: &str, errors: &mut Vec<String>| {
        if !seen.insert((section.to_string(), name.to_string())) {
            errors.push(format!("{key}.{section}: `{name}` is given twice"));
        }
    };
    for name in &ops.remove {
        if let Some(n) = header_name(&format!("{key}.remove"), name, errors) {
            once("remove", &n, errors);
            out.push(HeaderOp::Remove(n));
        }
    }
    let mut targets = BTreeSet::new();
    let sources: BTreeSet<String> = ops.rename.keys().map(|k| k.to_ascii_lowercase()).collect();
    for (from, to) in &ops.rename {
        let k = format!("{key}.rename");
        let (Some(from), Some(to)) = (header_name(&k, from, errors), header_name(&k, to, errors))
        else {
            continue;
        };
        once("rename", &from, errors);
        if from == to {
            errors.push(format!("{k}: `{from}` is renamed to itself"));
        } else if sources.contains(&to) {
            errors.push(format!(
                "{k}: `{to}` is both renamed and a rename target; chains are ambiguous"
            ));
        } else if !targets.insert(to.clone()) {
            errors.push(format!("{k}: two headers are renamed to `{to}`"));
        }
        out.push(HeaderOp::Rename { from, to });
    }
    for (name, value) in &ops.set {
        let k = format!("{key}.set");
        if let Some(n) = header_name(&k, name, errors) {
            once("set", &n, errors);
            match validate_header(&n, value) {
                Ok(()) => out.push(HeaderOp::Set(n, value.clone())),
                Err(e) => errors.push(format!("{k}: {e}")),
            }
        }
    }
    for (name, values) in &ops.add {
        let k = format!("{key}.add");
        if let Some(n) = header_name(&k, name, errors) {
            once("add", &n, errors);
            if values.as_slice().is_empty() {
                errors.push(format!("{k}: `{n}` has an empty list of values"));
            }
            for value in values.as_slice() {
                match validate_header(&n, value) {
                    Ok(()) => out.push(HeaderOp::Add(n.clone(), value.clone())),
                    Err(e) => errors.push(format!("{k}: {e}")),
                }
            }
        }
    }
    out
}

/// Checks a configured path or prefix and drops a trailing `/` from prefixes.
fn prefix(key: &str, p: &str, errors: &mut Vec<String>) -> Option<String> {
    match validate_path(p) {
        Ok(()) => Some(p.trim_end_matches('/').to_string()),
        Err(e) => {
            errors.push(format!("{key}: {e}"));
            None
        }
    }
}

fn path_op(key: &str, rewrite: PathRewrite, errors: &mut Vec<String>) -> Option<PathOp> {
    let PathRewrite {
        set,
        strip_prefix,
        add_prefix,
        replace_prefix,
    } = rewrite;
    let given: Vec<&str> = [
        ("set", set.is_some()),
        ("strip_prefix", strip_prefix.is_some()),
        ("add_prefix", add_prefix.is_some()),
        ("replace_prefix", replace_prefix.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, given)| given.then_some(name))
    .collect();
    if given.len() != 1 {
        errors.push(format!(
            "{key}: give exactly one of `set`, `strip_prefix`, `add_prefix`, `replace_prefix` (got {})",
            if given.is_empty() { "none".to_string() } else { given.join(", ") }
        ));
        return None;
    }
    if let Some(p) = set {
        return match validate_path(&p) {
            Ok(()) => Some(PathOp::Set(p)),
            Err(e) => {
                errors.push(format!("{key}.set: {e}"));
                None
            }
        };
    }
    if let Some(p) = strip_prefix {
        let from = prefix(&format!("{key}.strip_prefix"), &p, errors)?;
        if from.is_empty() {
            errors.push(format!("{key}.strip_prefix: `/` would strip nothing"));
            return None;
        }
        return Some(PathOp::Replace {
            from,
            to: String::new(),
        });
    }
    if let Some(p) = add_prefix {
        let add = prefix(&format!("{key}.add_prefix"), &p, errors)?;
        if add.is_empty() {
            errors.push(format!("{key}.add_prefix: `/` would add nothing"));
            return None;
        }
        return Some(PathOp::AddPrefix(add));
    }
    let PrefixReplace { from, to } = replace_prefix?;
    let k = format!("{key}.replace_prefix");
    let from = prefix(&format!("{k}.from"), &from, errors);
    let to = prefix(&format!("{k}.to"), &to, errors);
    let (from, to) = (from?, to?);
    if from.is_empty() {
        errors.push(format!("{k}.from: `/` matches every path; use add_prefix"));
        return None;
    }
    Some(PathOp::Replace { from, to })
}

fn query_edit(key: &str, ops: QueryOps, errors: &mut Vec<String>) -> Option<QueryEdit> {
    let mut drop = BTreeSet::new();
    let mut append = Vec::new();
    for name in &ops.remove {
        if name.is_empty() {
            errors.push(format!("{key}.remove: an empty parameter name"));
        }
        drop.insert(name.clone());
    }
    for (name, value) in &ops.set {
        if name.is_empty() {
            errors.push(format!("{key}.set: an empty parameter name"));
        }
        if ops.remove.contains(name) {
            errors.push(format!("{key}: `{name}` is both removed and set"));
        }
        drop.insert(name.clone());
        append.push(format!("{}={}", query::encode(name), query::encode(value)));
    }
    for (name, values) in &ops.add {
        if name.is_empty() {
            errors.push(format!("{key}.add: an empty parameter name"));
        }
        if values.as_slice().is_empty() {
            errors.push(format!("{key}.add: `{name}` has an empty list of values"));
        }
        for value in values.as_slice() {
            append.push(format!("{}={}", query::encode(name), query::encode(value)));
        }
    }
    (!drop.is_empty() || !append.is_empty()).then_some(QueryEdit { drop, append })
}

#[cfg(test)]
mod tests;
