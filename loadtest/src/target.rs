//! What to send: `http://` URLs, the `--urls-file` mix, and pre-serialized requests.

use std::fmt::Write as _;

/// Largest weight accepted on a `--urls-file` line.
pub const MAX_WEIGHT: u32 = 1000;

/// Largest length of the weighted rotation (sum of weights after dividing by their gcd).
const MAX_WHEEL: u64 = 100_000;

/// A parsed `http://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or IP address, without IPv6 brackets.
    pub host: String,
    /// TCP port (80 when the URL has none).
    pub port: u16,
    /// The authority as written in the URL, used for the `Host` header.
    pub authority: String,
    /// Path and query, always starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses a URL; only `http://` is accepted.
    pub fn parse(input: &str) -> Result<HttpUrl, String> {
        let s = input.trim();
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(format!(
                "invalid URL {s:?}: expected http://host[:port][/path]"
            ));
        };
        if scheme.eq_ignore_ascii_case("https") {
            return Err(format!(
                "unsupported URL {s:?}: https:// is not supported (weir-load speaks plain \
                 HTTP/1.1 without TLS); use http://"
            ));
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(format!(
                "unsupported URL scheme {scheme:?} in {s:?}: only http:// is supported"
            ));
        }
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains('@') {
            return Err(format!("invalid URL {s:?}: user info is not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                return Err(format!("invalid URL {s:?}: unclosed '[' in host"));
            };
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| {
                    format!("invalid URL {s:?}: unexpected {p:?} after IPv6 host")
                })?),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("invalid URL {s:?}: missing host"));
        }
        let port = match port {
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(format!("invalid URL {s:?}: bad port {p:?}")),
            },
        };
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!(
                "invalid URL {s:?}: spaces or control characters in the path must be percent-encoded"
            ));
        }
        Ok(HttpUrl {
            host: host.to_string(),
            port,
            authority: authority.to_string(),
            path,
        })
    }

    /// `host:port`, lowercased, used to check that all URLs share one connection pool.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host.to_ascii_lowercase(), self.port)
    }

    /// The URL written back as text.
    pub fn to_url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }
}

/// One kind of request in the mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Relative weight in the mix (1..=[`MAX_WEIGHT`]).
    pub weight: u32,
    /// HTTP method.
    pub method: String,
    /// Where to send it.
    pub url: HttpUrl,
}

/// A request serialized once, sent many times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTemplate {
    /// The full request bytes (head and body).
    pub bytes: Vec<u8>,
    /// True for `HEAD`, whose response has no body.
    pub head_request: bool,
}

/// Checks that a method is an HTTP token.
pub fn validate_method(method: &str) -> Result<(), String> {
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(format!("invalid method {method:?}"));
    }
    Ok(())
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a `-H "Name: value"` argument.
pub fn parse_header(arg: &str) -> Result<(String, String), String> {
    let Some((name, value)) = arg.split_once(':') else {
        return Err(format!("invalid header {arg:?}: expected \"Name: value\""));
    };
    let name = name.trim();
    let value = value.trim();
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(format!("invalid header name {name:?} in {arg:?}"));
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(format!(
            "invalid header value in {arg:?}: CR, LF and NUL are not allowed"
        ));
    }
    if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding")
    {
        return Err(format!(
            "header {name:?} is set by weir-load from --body; remove -H {arg:?}"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

/// Serializes one request: start line, `Host` (unless given), headers, `Content-Length`, body.
pub fn build_request(
    method: &str,
    url: &HttpUrl,
    headers: &[(String, String)],
    body: &[u8],
) -> RequestTemplate {
    let mut head = String::with_capacity(128);
    let _ = write!(head, "{method} {} HTTP/1.1\r\n", url.path);
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        let _ = write!(head, "Host: {}\r\n", url.authority);
    }
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let wants_length = matches!(method, "POST" | "PUT" | "PATCH");
    if !body.is_empty() || wants_length {
        let _ = write!(head, "Content-Length: {}\r\n", body.len());
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    RequestTemplate {
        bytes,
        head_request: method == "HEAD",
    }
}

/// Parses the `--urls-file` format (see `weir-load --help`).
///
/// Each non-empty line not starting with `#` is either `URL` (weight 1, method from
/// `default_method`) or `WEIGHT METHOD URL`.
pub fn parse_urls_file(text: &str, default_method: &str) -> Result<Vec<Target>, String> {
    let mut targets = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |e: String| format!("line {}: {e}", i + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let target = match fields[..] {
            [url] => Target {
                weight: 1,
                method: default_method.to_string(),
                url: HttpUrl::parse(url).map_err(at)?,
            },
            [weight, method, url] => {
                let weight = match weight.parse::<u32>() {
                    Ok(w) if (1..=MAX_WEIGHT).contains(&w) => w,
                    _ => {
                        return Err(at(format!(
                            "bad weight {weight:?}: expected an integer 1..={MAX_WEIGHT}"
                        )))
                    }
                };
                validate_method(method).map_err(at)?;
                Target {
                    weight,
                    method: method.to_string(),
                    url: HttpUrl::parse(url).map_err(at)?,
                }
            }
            _ => {
                return Err(at(format!(
                    "expected `URL` or `WEIGHT METHOD URL`, got {line:?}"
                )))
            }
        };
        targets.push(target);
    }
    if targets.is_empty() {
        return Err("no URLs in file".to_string());
    }
    Ok(targets)
}

/// Checks that every target shares the first one's host:port.
pub fn check_one_endpoint(targets: &[Target]) -> Result<(), String> {
    let Some(first) = targets.first() else {
        return Err("no target URL".to_string());
    };
    let endpoint = first.url.endpoint();
    for t in targets {
        if t.url.endpoint() != endpoint {
            return Err(format!(
                "all URLs must share one host:port (one connection pool): {} vs {}",
                first.url.to_url(),
                t.url.to_url()
            ));
        }
    }
    Ok(())
}

/// Builds a deterministic rotation of target indices in proportion to their weights.
///
/// Uses smooth weighted round robin, so each index is spread evenly over the rotation.
pub fn weighted_wheel(weights: &[u32]) -> Result<Vec<usize>, String> {
    let g = weights.iter().fold(0u32, |a, &w| gcd(a, w)).max(1);
    let reduced: Vec<i64> = weights.iter().map(|&w| i64::from(w / g)).collect();
    let total: i64 = reduced.iter().sum();
    if total as u64 > MAX_WHEEL {
        return Err(format!(
            "weights too fine-grained: their sum divided by their gcd is {total}, at most {MAX_WHEEL} allowed"
        ));
    }
    let mut current = vec![0i64; reduced.len()];
    let mut wheel = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in reduced.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        wheel.push(best);
    }
    Ok(wheel)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = HttpUrl::parse("http://127.0.0.1:8080/a/b?c=d#frag").unwrap();
        assert_eq!(
            (
                u.host.as_str(),
                u.port,
                u.authority.as_str(),
                u.path.as_str()
            ),
            ("127.0.0.1", 8080, "127.0.0.1:8080", "/a/b?c=d")
        );
        let u = HttpUrl::parse("HTTP://example.com").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        let u = HttpUrl::parse("http://[::1]:9000?x").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9000, "/?x")
        );
        assert_eq!(u.endpoint(), "::1:9000");
    }

    #[test]
    fn rejects_bad_urls() {
        for (bad, needle) in [
            ("https://example.com/", "https:// is not supported"),
            ("ftp://x/", "only http://"),
            ("example.com", "expected http://"),
            ("http://:80/", "missing host"),
            ("http://h:0/", "bad port"),
            ("http://h:99999/", "bad port"),
            ("http://u@h/", "user info"),
            ("http://h/a b", "percent-encoded"),
            ("http://[::1/", "unclosed"),
        ] {
            let err = HttpUrl::parse(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn builds_requests() {
        let url = HttpUrl::parse("http://h:1/p").unwrap();
        let r = build_request("GET", &url, &[("X-A".into(), "1".into())], b"");
        assert_eq!(
            r.bytes,
            b"GET /p HTTP/1.1\r\nHost: h:1\r\nX-A: 1\r\n\r\n".to_vec()
        );
        let r = build_request("POST", &url, &[("host".into(), "other".into())], b"abc");
        assert_eq!(
            r.bytes,
            b"POST /p HTTP/1.1\r\nhost: other\r\nContent-Length: 3\r\n\r\nabc".to_vec()
        );
        assert!(build_request("HEAD", &url, &[], b"").head_request);
    }

    #[test]
    fn parses_headers() {
        assert_eq!(
            parse_header("X-Key:  v a l "),
            Ok(("X-Key".to_string(), "v a l".to_string()))
        );
        assert!(parse_header("nocolon").is_err());
        assert!(parse_header("Bad Name: v").is_err());
        assert!(parse_header("Content-Length: 3").is_err());
    }

    #[test]
    fn parses_urls_file() {
        let text = "# mix\n\nhttp://h:1/a\n 3 POST http://h:1/b \n";
        let t = parse_urls_file(text, "GET").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].weight, t[0].method.as_str()), (1, "GET"));
        assert_eq!((t[1].weight, t[1].method.as_str()), (3, "POST"));
        assert!(parse_urls_file("2 GET\n", "GET")
            .unwrap_err()
            .starts_with("line 1:"));
        assert!(parse_urls_file("http://h/\n0 GET http://h/", "GET")
            .unwrap_err()
            .starts_with("line 2: bad weight"));
        assert!(parse_urls_file("# nothing\n", "GET").is_err());
        let mixed = parse_urls_file("http://a:1/\nhttp://b:1/\n", "GET").unwrap();
        assert!(check_one_endpoint(&mixed)
            .unwrap_err()
            .contains("one host:port"));
    }

    #[test]
    fn wheel_is_proportional_and_smooth() {
        let w = weighted_wheel(&[3, 1]).unwrap();
        assert_eq!(w, vec![0, 0, 1, 0]);
        let w = weighted_wheel(&[20, 10, 10]).unwrap();
        assert_eq!(w.len(), 4);
        assert_eq!(w.iter().filter(|&&i| i == 0).count(), 2);
        assert_eq!(weighted_wheel(&[1]).unwrap(), vec![0]);
    }
}
