//! The route table, compiled once per snapshot.
//!
//! # Precedence (deterministic, documented in the README)
//!
//! 1. **Host.** Routes listing the request's exact host are tried first, then routes
//!    whose wildcard covers it (`*.example.com` covers any depth of subdomain, the
//!    longest suffix first), then routes without `hosts`. A tier without a match falls
//!    through to the next.
//! 2. **Path**, within a tier: an exact path (`=/a`) before the longest matching prefix
//!    before regexes.
//! 3. **Priority**: among routes whose paths are equally specific (the same exact path,
//!    the same prefix, or any two regexes), the higher `priority` first, then the route
//!    written earlier in the file.
//! 4. A candidate is taken only if its `methods` and `headers` constraints hold;
//!    otherwise the next candidate in this order is tried.
//!
//! # Cost
//!
//! Lookup does not scan routes: hosts and exact paths are hash lookups, prefixes are
//! hash lookups at the (few) distinct prefix lengths configured, and all regexes of a
//! tier run as one `RegexSet`.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::{Regex, RegexSet};
use rustc_hash::FxHashMap;

use crate::config::{HeaderMatch, RouteConfig};

/// A parsed `paths` entry.
#[derive(Debug, Clone)]
pub enum PathPattern {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl PathPattern {
    /// `=/exact`, `~regex` or `/prefix`; the error says which forms are valid.
    pub fn parse(s: &str) -> Result<PathPattern, String> {
        if let Some(p) = s.strip_prefix('=') {
            if p.starts_with('/') {
                return Ok(PathPattern::Exact(p.to_string()));
            }
            return Err(format!("exact path `{s}` must be `=/...`"));
        }
        if let Some(re) = s.strip_prefix('~') {
            return Regex::new(re)
                .map(PathPattern::Regex)
                .map_err(|e| format!("bad regex `{re}`: {}", e.to_string().replace('\n', " ")));
        }
        if s.starts_with('/') {
            return Ok(PathPattern::Prefix(s.to_string()));
        }
        Err(format!(
            "`{s}` is not a path pattern: write a prefix \"/api\", an exact path \"=/health\" or a regex \"~^/v[0-9]+/\""
        ))
    }
}

/// Which rule matched, and how much of the path it covered (for `strip_prefix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMatch {
    /// Index into the snapshot's routes.
    pub route: usize,
    /// Bytes of the path covered by an exact or prefix match; the whole path for regexes.
    pub matched_len: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    route: u32,
    priority: i32,
}

struct Constraints {
    methods: Vec<Method>,
    headers: Vec<(HeaderName, Option<HeaderValue>)>,
}

impl Constraints {
    fn hold(&self, method: &Method, headers: &HeaderMap) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && self.headers.iter().all(|(name, want)| match want {
                None => headers.contains_key(name),
                Some(v) => headers.get_all(name).iter().any(|h| h == v),
            })
    }
}

#[derive(Default)]
struct PathTable {
    exact: FxHashMap<Box<str>, Vec<Entry>>,
    prefix: FxHashMap<Box<str>, Vec<Entry>>,
    /// Distinct prefix lengths, longest first.
    prefix_lens: Vec<usize>,
    /// Regexes in precedence order (priority, then file order): their index is their rank.
    regex_entries: Vec<Entry>,
    regex_sources: Vec<String>,
    /// Anchored regexes with a literal start (`^/v1/...`), indexed by that literal: only
    /// those whose literal starts the path are run.
    regex_by_literal: FxHashMap<Box<str>, Vec<(usize, Regex)>>,
    /// Distinct literal lengths, longest first.
    literal_lens: Vec<usize>,
    /// The other regexes, run together; `set_ranks[i]` is the rank of pattern `i`.
    regex_set: Option<RegexSet>,
    set_ranks: Vec<usize>,
}

/// The literal a `^`-anchored pattern starts with (`^/v1/items/[0-9]+` → `/v1/items/`),
/// if it has one of at least two bytes.
fn literal_prefix(re: &str) -> Option<&str> {
    let body = re.strip_prefix('^')?;
    let end = body
        .find(|c: char| "\\.+*?()|[]{}^$".contains(c))
        .unwrap_or(body.len());
    let mut lit = &body[..end];
    // A quantifier after the literal makes its last character optional.
    if body[end..].starts_with(['?', '*', '{']) {
        lit = &lit[..lit
            .len()
            .saturating_sub(lit.chars().last().map_or(0, char::len_utf8))];
    }
    (lit.len() >= 2).then_some(lit)
}

impl PathTable {
    fn add(&mut self, pattern: &PathPattern, e: Entry) {
        match pattern {
            PathPattern::Exact(p) => self.exact.entry(p.as_str().into()).or_default().push(e),
            PathPattern::Prefix(p) => self.prefix.entry(p.as_str().into()).or_default().push(e),
            PathPattern::Regex(r) => {
                self.regex_sources.push(r.as_str().to_string());
                self.regex_entries.push(e);
            }
        }
    }

    fn finish(&mut self) {
        let by_priority = |v: &mut Vec<Entry>| {
            // Stable: equal priorities keep file order.
            v.sort_by_key(|e| std::cmp::Reverse(e.priority));
        };
        self.exact.values_mut().for_each(by_priority);
        self.prefix.values_mut().for_each(by_priority);
        let mut lens: Vec<usize> = self.prefix.keys().map(|k| k.len()).collect();
        lens.sort_unstable_by(|a, b| b.cmp(a));
        lens.dedup();
        self.prefix_lens = lens;
        if !self.regex_entries.is_empty() {
            let mut order: Vec<usize> = (0..self.regex_entries.len()).collect();
            order.sort_by(|&a, &b| {
                self.regex_entries[b]
                    .priority
                    .cmp(&self.regex_entries[a].priority)
            });
            let sources: Vec<String> = order
                .iter()
                .map(|&i| self.regex_sources[i].clone())
                .collect();
            self.regex_entries = order.iter().map(|&i| self.regex_entries[i]).collect();
            let mut rest = Vec::new();
            for (rank, src) in sources.iter().enumerate() {
                // Every source compiled on its own during validation.
                match (literal_prefix(src), Regex::new(src)) {
                    (Some(lit), Ok(re)) => self
                        .regex_by_literal
                        .entry(lit.into())
                        .or_default()
                        .push((rank, re)),
                    _ => {
                        rest.push(src.as_str());
                        self.set_ranks.push(rank);
                    }
                }
            }
            let mut lens: Vec<usize> = self.regex_by_literal.keys().map(|k| k.len()).collect();
            lens.sort_unstable_by(|a, b| b.cmp(a));
            lens.dedup();
            self.literal_lens = lens;
            if !rest.is_empty() {
                self.regex_set = RegexSet::new(&rest).ok();
            }
            self.regex_sources = sources;
        }
    }

    fn lookup(
        &self,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
        cons: &[Constraints],
    ) -> Option<RouteMatch> {
        let pick = |entries: &[Entry], matched_len: usize| {
            entries
                .iter()
                .find(|e| cons[e.route as usize].hold(method, headers))
                .map(|e| RouteMatch {
                    route: e.route as usize,
                    matched_len,
                })
        };
        if let Some(m) = self.exact.get(path).and_then(|es| pick(es, path.len())) {
            return Some(m);
        }
        for &len in &self.prefix_lens {
            if len > path.len() || !path.is_char_boundary(len) {
                continue;
            }
            if let Some(m) = self.prefix.get(&path[..len]).and_then(|es| pick(es, len)) {
                return Some(m);
            }
        }
        // The first regex in precedence order that matches and whose constraints hold.
        let mut best: Option<usize> = None;
        let mut consider = |rank: usize| {
            if best.is_none_or(|b| rank < b)
                && cons[self.regex_entries[rank].route as usize].hold(method, headers)
            {
                best = Some(rank);
            }
        };
        for &len in &self.literal_lens {
            if len > path.len() || !path.is_char_boundary(len) {
                continue;
            }
            for (rank, re) in self
                .regex_by_literal
                .get(&path[..len])
                .into_iter()
                .flatten()
            {
                if re.is_match(path) {
                    consider(*rank);
                }
            }
        }
        if let Some(set) = &self.regex_set {
            for i in set.matches(path).iter() {
                consider(self.set_ranks[i]);
            }
        }
        best.map(|rank| RouteMatch {
            route: self.regex_entries[rank].route as usize,
            matched_len: path.len(),
        })
    }
}

/// Routes by host tier and path; see the module docs for the precedence.
#[derive(Default)]
pub struct Router {
    exact_hosts: FxHashMap<Box<str>, PathTable>,
    /// Keyed by the suffix after `*.`.
    wildcard_hosts: FxHashMap<Box<str>, PathTable>,
    any_host: PathTable,
    constraints: Vec<Constraints>,
}

impl Router {
    /// Compiles validated routes; a pattern that fails here was already reported by
    /// validation, so it is skipped rather than failing the build twice.
    pub fn build(routes: &[RouteConfig]) -> Router {
        let mut r = Router::default();
        for (i, rc) in routes.iter().enumerate() {
            r.constraints.push(Constraints {
                methods: rc
                    .methods
                    .iter()
                    .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                    .collect(),
                headers: rc
                    .headers
                    .iter()
                    .filter_map(|(n, m)| {
                        let name = HeaderName::from_bytes(n.as_bytes()).ok()?;
                        match m {
                            HeaderMatch::Present(true) => Some((name, None)),
                            HeaderMatch::Present(false) => None,
                            HeaderMatch::Value(v) => {
                                Some((name, Some(HeaderValue::from_str(v).ok()?)))
                            }
                        }
                    })
                    .collect(),
            });
            let entry = Entry {
                route: i as u32,
                priority: rc.priority,
            };
            let patterns: Vec<PathPattern> = if rc.paths.is_empty() {
                vec![PathPattern::Prefix("/".into())]
            } else {
                rc.paths
                    .iter()
                    .filter_map(|p| PathPattern::parse(p).ok())
                    .collect()
            };
            let mut exact: Vec<&str> = Vec::new();
            let mut wild: Vec<&str> = Vec::new();
            for h in &rc.hosts {
                match h.strip_prefix("*.") {
                    Some(s) => wild.push(s),
                    None => exact.push(h),
                }
            }
            // A route listed twice under one host would only shadow itself.
            exact.sort_unstable();
            exact.dedup();
            wild.sort_unstable();
            wild.dedup();
            for p in &patterns {
                if rc.hosts.is_empty() {
                    r.any_host.add(p, entry);
                }
                for h in &exact {
                    r.exact_hosts.entry((*h).into()).or_default().add(p, entry);
                }
                for h in &wild {
                    r.wildcard_hosts
                        .entry((*h).into())
                        .or_default()
                        .add(p, entry);
                }
            }
        }
        r.any_host.finish();
        r.exact_hosts.values_mut().for_each(PathTable::finish);
        r.wildcard_hosts.values_mut().for_each(PathTable::finish);
        r
    }

    /// Finds the route for a request. `host` may carry a port and upper case.
    pub fn lookup(
        &self,
        host: &str,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<RouteMatch> {
        let mut buf = [0u8; 256];
        let host = normalize_host(host, &mut buf);
        let cons = &self.constraints;
        if !host.is_empty() {
            if let Some(m) = self
                .exact_hosts
                .get(host)
                .and_then(|t| t.lookup(path, method, headers, cons))
            {
                return Some(m);
            }
            if !self.wildcard_hosts.is_empty() {
                let mut rest = host;
                while let Some((_, suffix)) = rest.split_once('.') {
                    if let Some(m) = self
                        .wildcard_hosts
                        .get(suffix)
                        .and_then(|t| t.lookup(path, method, headers, cons))
                    {
                        return Some(m);
                    }
                    rest = suffix;
                }
            }
        }
        self.any_host.lookup(path, method, headers, cons)
    }
}

/// Lower-cases and strips the port without allocating (hosts longer than the buffer
/// are matched as given, which only ever fails to match).
fn normalize_host<'a>(host: &'a str, buf: &'a mut [u8; 256]) -> &'a str {
    let host = if host.starts_with('[') {
        // IPv6 literal: keep the brackets' content.
        host.split(']').next().map(|h| &h[1..]).unwrap_or(host)
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if !host.bytes().any(|b| b.is_ascii_uppercase()) || host.len() > buf.len() {
        return host;
    }
    let out = &mut buf[..host.len()];
    out.copy_from_slice(host.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, hosts: &[&str], paths: &[&str], priority: i32) -> RouteConfig {
        RouteConfig {
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            paths: paths.iter().map(|s| s.to_string()).collect(),
            priority,
            ..RouteConfig::proxy(name, "u")
        }
    }

    fn find(r: &Router, routes: &[RouteConfig], host: &str, path: &str) -> Option<String> {
        r.lookup(host, path, &Method::GET, &HeaderMap::new())
            .map(|m| routes[m.route].name.clone())
    }

    #[test]
    fn exact_beats_prefix_beats_regex() {
        let routes = vec![
            route("re", &[], &["~^/a"], 100),
            route("short", &[], &["/a"], 0),
            route("long", &[], &["/a/b"], 0),
            route("exact", &[], &["=/a/b"], 0),
        ];
        let r = Router::build(&routes);
        assert_eq!(find(&r, &routes, "x", "/a/b").as_deref(), Some("exact"));
        assert_eq!(find(&r, &routes, "x", "/a/b/c").as_deref(), Some("long"));
        assert_eq!(find(&r, &routes, "x", "/a/c").as_deref(), Some("short"));
        assert_eq!(find(&r, &routes, "x", "/z"), None);
    }

    #[test]
    fn regex_used_when_nothing_else_matches_and_priority_orders_regexes() {
        let routes = vec![
            route("low", &[], &["~^/v[0-9]+/"], 0),
            route("high", &[], &["~^/v1/"], 5),
        ];
        let r = Router::build(&routes);
        assert_eq!(find(&r, &routes, "x", "/v1/x").as_deref(), Some("high"));
        assert_eq!(find(&r, &routes, "x", "/v2/x").as_deref(), Some("low"));
    }

    #[test]
    fn priority_then_file_order_for_equal_paths() {
        let routes = vec![
            route("first", &[], &["/p"], 0),
            route("second", &[], &["/p"], 0),
            route("boosted", &[], &["/p"], 1),
        ];
        let r = Router::build(&routes);
        assert_eq!(find(&r, &routes, "x", "/p").as_deref(), Some("boosted"));
        let routes2 = routes[..2].to_vec();
        let r2 = Router::build(&routes2);
        assert_eq!(find(&r2, &routes2, "x", "/p").as_deref(), Some("first"));
    }

    #[test]
    fn hosts_exact_then_wildcard_then_any_with_fallthrough() {
        let routes = vec![
            route("any", &[], &["/"], 0),
            route("wild", &["*.example.com"], &["/"], 0),
            route("deep", &["*.eu.example.com"], &["/"], 0),
            route("exact", &["api.example.com"], &["/only"], 0),
        ];
        let r = Router::build(&routes);
        assert_eq!(
            find(&r, &routes, "API.Example.com:8080", "/only").as_deref(),
            Some("exact")
        );
        // The exact host has no route for /other: fall through to the wildcard.
        assert_eq!(
            find(&r, &routes, "api.example.com", "/other").as_deref(),
            Some("wild")
        );
        assert_eq!(
            find(&r, &routes, "a.b.example.com", "/").as_deref(),
            Some("wild")
        );
        assert_eq!(
            find(&r, &routes, "x.eu.example.com", "/").as_deref(),
            Some("deep")
        );
        assert_eq!(
            find(&r, &routes, "example.com", "/").as_deref(),
            Some("any")
        );
        assert_eq!(find(&r, &routes, "other.org", "/").as_deref(), Some("any"));
    }

    #[test]
    fn methods_and_headers_constrain() {
        let mut post = route("post", &[], &["/x"], 0);
        post.methods = vec!["POST".into()];
        let mut hdr = route("hdr", &[], &["/x"], 0);
        hdr.headers
            .insert("x-canary".into(), HeaderMatch::Value("1".into()));
        let mut present = route("present", &[], &["/x"], 0);
        present
            .headers
            .insert("x-debug".into(), HeaderMatch::Present(true));
        let fallback = route("fallback", &[], &["/"], 0);
        let routes = vec![post, hdr, present, fallback];
        let r = Router::build(&routes);
        let name = |m: &Method, h: &HeaderMap| {
            r.lookup("h", "/x", m, h)
                .map(|x| routes[x.route].name.as_str())
        };
        let mut h = HeaderMap::new();
        assert_eq!(name(&Method::POST, &h), Some("post"));
        assert_eq!(name(&Method::GET, &h), Some("fallback"));
        h.insert("x-canary", HeaderValue::from_static("1"));
        assert_eq!(name(&Method::GET, &h), Some("hdr"));
        let mut h2 = HeaderMap::new();
        h2.insert("x-debug", HeaderValue::from_static("anything"));
        assert_eq!(name(&Method::GET, &h2), Some("present"));
    }

    #[test]
    fn matched_len_reports_prefix() {
        let routes = vec![route("p", &[], &["/api"], 0)];
        let r = Router::build(&routes);
        let m = r
            .lookup("h", "/api/users", &Method::GET, &HeaderMap::new())
            .unwrap();
        assert_eq!(m.matched_len, 4);
    }

    #[test]
    fn literal_prefixes_of_regexes() {
        assert_eq!(literal_prefix("^/v1/items/[0-9]+$"), Some("/v1/items/"));
        assert_eq!(literal_prefix("^/ab?c"), Some("/a"));
        assert_eq!(literal_prefix("^/api?x"), Some("/ap"));
        assert_eq!(literal_prefix("/v1/"), None, "unanchored");
        assert_eq!(literal_prefix("^(?i)/v1"), None);
        assert_eq!(literal_prefix("^/[a-z]"), None, "too short");
    }

    #[test]
    fn indexed_and_unindexed_regexes_keep_precedence() {
        let routes = vec![
            route("any-v", &[], &["~/v[0-9]+/"], 0),
            route("literal", &[], &["~^/v1/items$"], 0),
            route("boosted", &[], &["~^/v2/"], 3),
        ];
        let r = Router::build(&routes);
        // File order: the unanchored one comes first for /v1/items.
        assert_eq!(
            find(&r, &routes, "x", "/v1/items").as_deref(),
            Some("any-v")
        );
        // Priority beats file order.
        assert_eq!(find(&r, &routes, "x", "/v2/x").as_deref(), Some("boosted"));
        assert_eq!(
            find(&r, &routes, "x", "/v1/other").as_deref(),
            Some("any-v")
        );
        assert_eq!(find(&r, &routes, "x", "/w/items"), None);
    }

    #[test]
    fn bad_patterns_are_explained() {
        assert!(PathPattern::parse("api").unwrap_err().contains("prefix"));
        assert!(PathPattern::parse("~(").unwrap_err().contains("bad regex"));
        assert!(PathPattern::parse("=x").is_err());
    }
}
