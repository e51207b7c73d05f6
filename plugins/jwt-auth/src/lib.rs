//! `jwt-auth`: authenticates requests by a signed JWT (HS256, RS256, ES256) and names
//! the consumer.
//!
//! ```toml
//! [[plugins]]
//! name = "jwt"
//! wasm = "plugins/jwt-auth.wasm"
//! config.keys = [
//!   { kid = "rsa-2024", alg = "RS256", pem = """
//!     -----BEGIN PUBLIC KEY-----
//!     MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA0GRKSAjkvI3K9rJYMvYl
//!     ...
//!     -----END PUBLIC KEY-----""" },
//!   { kid = "internal", alg = "HS256", secret = "${JWT_SECRET}" },
//! ]
//! config.jwks = { keys = [
//!   { kty = "RSA", kid = "idp-1", alg = "RS256", n = "ofgWCuLj...", e = "AQAB" },
//!   { kty = "EC", kid = "idp-2", crv = "P-256", x = "f83OJ3D2...", y = "x_FEzRu9..." },
//! ] }
//! config.iss = ["https://id.example.com/"]       # one string or a list; absent: not checked
//! config.aud = "orders-api"                      # one string or a list; absent: not checked
//! config.leeway = 30                             # seconds of clock skew on exp/nbf (0-600)
//! config.require_exp = true
//! config.cookie = "session"                      # extra token sources: header, query, cookie
//! config.hide_credentials = true                 # default false
//! config.consumer_claim = "sub"
//! config.forward_claims = { email = "x-user-email", roles = "x-user-roles" }
//! ```
//!
//! **Keys.** `keys` lists PEM public keys (`PUBLIC KEY`, or `RSA PUBLIC KEY` for RS256)
//! and HS256 secrets; `jwks` is a JWK set (RFC 7517), as a table or as the JSON text an
//! identity provider publishes (`jwks = '''{"keys": [...]}'''`). Every key has exactly
//! one algorithm: `alg` in `keys`; for a JWK its `alg` if given, else RS256 for
//! `kty = "RSA"` and ES256 for `kty = "EC"`. A token is only ever verified with a key of
//! the algorithm its header names, so an RS256 public key can never serve as an HS256
//! secret. The token header's `jwk`, `jku`, `x5u` and `x5c` are ignored: keys come from
//! the config only. Everything is checked at load time, and a key that cannot be used
//! fails the load with a message naming it (`keys[1] (kid `internal`): ...`): an
//! unsupported or `none` alg, a `pem` for HS256 or a `secret` for RS256/ES256, a PEM that
//! is a private key, a certificate, malformed, or of the wrong type (an EC key for RS256),
//! an RSA key under 2048 bits, a curve other than P-256, an HS256 secret under 32 bytes,
//! a JWK with private members (`d`...) or `use = "enc"`, a symmetric JWK (`kty = "oct"`:
//! put secrets in `keys`, where `${ENV}` and the admin API's redaction apply), and a
//! `kid` used twice.
//!
//! **Which key.** A token whose `kid` names a configured key is verified with that key
//! only (and refused if the key's algorithm is not the token's). Otherwise it is tried
//! with the keys of its algorithm that have no `kid` (any key of its algorithm when the
//! token has no `kid`), at most 2 (a key rotation), in config order: give keys a `kid`
//! when there are more. In the VM one RS256 check takes about 1 ms of CPU and one ES256
//! check 1-2 ms (HS256: microseconds), against a plugin callback's `cpu_limit` (default
//! 5 ms).
//!
//! **The token** is read from `Authorization: Bearer <token>` (scheme case-insensitive;
//! `authorization = false` turns this source off), and from each configured extra
//! source: `header = "x-jwt"` (the token, with or without `Bearer `), `query =
//! "access_token"`, `cookie = "session"`. A token found in more than one place (or twice
//! in one) is refused, as RFC 6750 §2 asks; an `Authorization` header with another
//! scheme (`Basic ...`) is not a token. Tokens longer than `max_token_size` bytes (default
//! 8192) are refused unread.
//!
//! **Checks**, in order: the JWS compact form (three unpadded base64url parts; encrypted
//! JWTs are not supported), the header (`alg` supported, no `crit`), the signature, then
//! the claims: `exp` (required unless `require_exp = false`; refused from `exp + leeway`
//! on), `nbf` (refused before `nbf - leeway`), `iat` only for its type, `iss` against the
//! list, `aud` (a string or a list of strings; one accepted value is enough). Dates are
//! JSON numbers of seconds (fractions allowed); a date given as a string is refused.
//! With no `aud` configured, the token's `aud` is not checked: configure it when your
//! issuer mints tokens for several APIs.
//!
//! **Tokens seen before**: a token that passed every check is remembered (per VM, at
//! most 1,024 tokens and 512 KiB, emptied when full), so the same token on a later
//! request skips the decoding, the signature and the JSON; its claims are checked again
//! against the clock, `iss` and `aud` every time. A reload that changes the plugin's
//! configuration (new keys, say) starts it empty; one that leaves it as it was keeps it.
//!
//! **On success** the consumer is the `consumer_claim` claim (a string, or an integer
//! written in decimal; at most 256 bytes, no control characters): it becomes the
//! request's consumer (`weir.consumer`, read by later plugins and the access log) and the
//! `x-consumer` request header. `forward_claims` maps claim names to request headers:
//! strings go as they are, numbers and booleans as JSON text, lists and objects as
//! compact JSON; an absent or `null` claim sets nothing, and a string with control
//! characters (CR, LF...) is skipped with a warning. `x-consumer` and every forwarded
//! header are removed from every request before anything else, so a client can never
//! supply them. With `hide_credentials = true` the token is removed from where it was
//! found (header, query parameter, or just its cookie) before the request goes upstream;
//! it is kept by default, for upstreams that read the token themselves.
//!
//! **On failure** the answer is a 401 with Weir's JSON error (`"error": "unauthorized"`
//! and a message saying what is wrong, never key material) and a `www-authenticate`
//! challenge (RFC 6750 §3): `Bearer realm="weir"` when no token was sent, else `Bearer
//! realm="weir", error="invalid_token", error_description="the token has expired"`
//! (`invalid_request` for a token sent twice). `realm` is configurable.
#![warn(missing_docs)]

mod keys;
mod token;

pub use keys::{KeyConfig, MIN_HS256_SECRET_BYTES, MIN_RSA_BITS};

use keys::Key;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::UNIX_EPOCH;
use token::{shown, ClaimRules, Failure, Jws, Kind};
use weir_plugin_sdk::prelude::*;
use weir_plugin_sdk::validate_header;

/// The request header that carries the consumer upstream.
pub const CONSUMER_HEADER: &str = "x-consumer";
/// How many keys a token without a usable `kid` is tried against, at most. An RS256 or
/// ES256 check costs about a millisecond of CPU in the VM (the default `cpu_limit` of a
/// plugin callback is 5 ms), and two keys cover a rotation.
pub const MAX_KEYS_TRIED: usize = 2;
/// The longest consumer name accepted from a claim, in bytes.
pub const MAX_CONSUMER_BYTES: usize = 256;
/// The bounds of `max_token_size`, in bytes.
pub const TOKEN_SIZE_RANGE: std::ops::RangeInclusive<usize> = 256..=65536;
/// The largest `leeway`, in seconds: more is almost surely milliseconds by mistake.
pub const MAX_LEEWAY: u64 = 600;

/// The plugin's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// PEM public keys and HS256 secrets.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// A JWK set: `{ keys = [...] }`, or its JSON text.
    #[serde(default)]
    pub jwks: Option<Value>,
    /// Accepted issuers (`iss`): one or a list.
    #[serde(default)]
    pub iss: Option<OneOrMany>,
    /// Accepted audiences (`aud`): one or a list.
    #[serde(default)]
    pub aud: Option<OneOrMany>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (default 30).
    #[serde(default = "default_leeway")]
    pub leeway: u64,
    /// Whether a token without `exp` is refused (default true).
    #[serde(default = "yes")]
    pub require_exp: bool,
    /// Whether `Authorization: Bearer` is a token source (default true).
    #[serde(default = "yes")]
    pub authorization: bool,
    /// A request header carrying the token.
    #[serde(default)]
    pub header: Option<String>,
    /// A query parameter carrying the token.
    #[serde(default)]
    pub query: Option<String>,
    /// A cookie carrying the token.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Whether the token is removed before the request goes upstream (default false).
    #[serde(default)]
    pub hide_credentials: bool,
    /// The longest token accepted, in bytes (default 8192).
    #[serde(default = "default_max_token_size")]
    pub max_token_size: usize,
    /// The claim naming the consumer (default `sub`).
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// `claim = "header"`: claims sent upstream as request headers.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// The `realm` of the `www-authenticate` challenge (default `weir`).
    #[serde(default = "default_realm")]
    pub realm: String,
}

fn default_leeway() -> u64 {
    30
}
fn yes() -> bool {
    true
}
fn default_max_token_size() -> usize {
    8192
}
fn default_consumer_claim() -> String {
    "sub".into()
}
fn default_realm() -> String {
    "weir".into()
}

/// One string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a string or a list of strings")]
pub enum OneOrMany {
    /// A single value.
    One(String),
    /// Several values.
    Many(Vec<String>),
}

/// Where a token is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Authorization,
    Header(String),
    Query(String),
    Cookie(String),
}

/// The policy: keys loaded, the config checked.
#[derive(Debug)]
pub struct JwtAuth {
    keys: Vec<Key>,
    rules: ClaimRules,
    sources: Vec<Source>,
    hide_credentials: bool,
    max_token_size: usize,
    consumer_claim: String,
    /// `(claim, header)`, headers lower-cased.
    forward: Vec<(String, String)>,
    realm: String,
    verified: Verified,
}

/// Tokens that passed every check, with their claims. A client sends the same token on
/// every request until it expires: a token seen again skips the decoding, the signature
/// check and the JSON parse (with HS256, 61k -> 22k instructions per request in the
/// lifecycle harness; RSA and ECDSA checks cost more); the time, issuer and audience
/// rules are checked again every time. Looked up by the whole token in a SipHash map
/// with a random key, so a client cannot aim comparisons at a stored token. Bounded by
/// [`VERIFIED_MAX_TOKENS`] and [`VERIFIED_MAX_BYTES`]: a full cache is emptied. Per VM,
/// as everything in a policy.
#[derive(Default)]
struct Verified {
    tokens: RefCell<HashMap<String, Claims>>,
    bytes: Cell<usize>,
}

/// A verified token's claims, shared by the cache and the request.
type Claims = Rc<Map<String, Value>>;

/// Most verified tokens a VM remembers (see the crate docs, "Tokens seen before").
pub const VERIFIED_MAX_TOKENS: usize = 1024;
/// Most bytes of verified tokens a VM remembers.
pub const VERIFIED_MAX_BYTES: usize = 512 * 1024;

/// The number of tokens only: they are credentials.
impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("tokens", &self.tokens.borrow().len())
            .finish()
    }
}

impl Verified {
    fn get(&self, token: &str) -> Option<Claims> {
        self.tokens.borrow().get(token).cloned()
    }

    fn insert(&self, token: String, claims: Claims) {
        let mut tokens = self.tokens.borrow_mut();
        if tokens.len() >= VERIFIED_MAX_TOKENS
            || self.bytes.get() + token.len() > VERIFIED_MAX_BYTES
        {
            tokens.clear();
            self.bytes.set(0);
        }
        self.bytes.set(self.bytes.get() + token.len());
        tokens.insert(token, claims);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tokens.borrow().len()
    }
}

impl Policy for JwtAuth {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let mut errors = Vec::new();
        let sources = sources(&config, &mut errors);
        let keys = load_keys(config.keys, config.jwks, &mut errors);
        let issuers = string_list("iss", config.iss, &mut errors);
        let audiences = string_list("aud", config.aud, &mut errors);
        if config.leeway > MAX_LEEWAY {
            errors.push(format!(
                "leeway: {} seconds is more than {MAX_LEEWAY} (it is in seconds, not milliseconds)",
                config.leeway
            ));
        }
        if !TOKEN_SIZE_RANGE.contains(&config.max_token_size) {
            errors.push(format!(
                "max_token_size: {} is outside {}..={}",
                config.max_token_size,
                TOKEN_SIZE_RANGE.start(),
                TOKEN_SIZE_RANGE.end()
            ));
        }
        // Headers the plugin reads the token from: it must not remove or write them.
        let mut reserved = vec![CONSUMER_HEADER.to_string(), "cookie".to_string()];
        reserved.extend(sources.iter().filter_map(|s| match s {
            Source::Authorization => Some("authorization".to_string()),
            Source::Header(h) => Some(h.clone()),
            _ => None,
        }));
        if config.consumer_claim.is_empty() {
            errors.push("consumer_claim: give a claim name (default `sub`)".into());
        }
        let forward = forward_claims(config.forward_claims, &reserved, &mut errors);
        if config.realm.is_empty() || shown(&config.realm) != config.realm {
            errors.push(format!(
                "realm: `{}` must be 1-40 printable ASCII characters without `\"` or `\\`",
                config.realm
            ));
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(JwtAuth {
            keys,
            rules: ClaimRules {
                issuers,
                audiences,
                leeway: config.leeway,
                require_exp: config.require_exp,
            },
            sources,
            hide_credentials: config.hide_credentials,
            max_token_size: config.max_token_size,
            consumer_claim: config.consumer_claim,
            forward,
            realm: config.realm,
            verified: Verified::default(),
        })
    }

    /// No response hook: Weir need not call it.
    fn uses_response(&self) -> bool {
        false
    }

    fn on_request(&self, req: &mut dyn Request) -> Decision {
        // Whatever happens next, a client never supplies these.
        let headers = req.headers_mut();
        headers.remove(CONSUMER_HEADER);
        for (_, header) in &self.forward {
            headers.remove(header);
        }
        let (source, claims, consumer) = match self.authenticate(req) {
            Ok(found) => found,
            Err(failure) => return self.deny(&failure, req),
        };
        req.set_consumer(&consumer);
        req.headers_mut().set(CONSUMER_HEADER, &consumer);
        for (claim, header) in &self.forward {
            match claims.get(claim).and_then(header_value) {
                Some(Ok(value)) => req.headers_mut().set(header, &value),
                Some(Err(())) => weir_plugin_sdk::log::warn!(
                    "jwt-auth: claim `{claim}` has control characters; `{header}` not set"
                ),
                None => {}
            }
        }
        if self.hide_credentials {
            source.hide(req);
        }
        Decision::Continue
    }
}

weir_plugin_sdk::export_policy!(JwtAuth);

impl JwtAuth {
    /// The token's source, claims and consumer, or why there are none.
    fn authenticate(&self, req: &dyn RequestInfo) -> Result<(&Source, Claims, String), Failure> {
        let (source, token) = self.find_token(req)?;
        if token.len() > self.max_token_size {
            return Err(Failure::token(format!(
                "the token is longer than {} bytes",
                self.max_token_size
            )));
        }
        let (claims, seen) = match self.verified.get(&token) {
            Some(claims) => (claims, true),
            None => {
                let jws = Jws::parse(&token)?;
                self.verify(&jws)?;
                (Rc::new(jws.claims()?), false)
            }
        };
        let now = req
            .now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.rules.check(&claims, now)?;
        let consumer = consumer(claims.get(&self.consumer_claim)).ok_or_else(|| {
            Failure::token(format!(
                "the `{}` claim is missing or not a usable consumer name",
                shown(&self.consumer_claim)
            ))
        })?;
        if !seen {
            self.verified.insert(token, claims.clone());
        }
        Ok((source, claims, consumer))
    }

    /// The one token of the request, with its source.
    fn find_token(&self, req: &dyn RequestInfo) -> Result<(&Source, String), Failure> {
        let mut found = Vec::new();
        for source in &self.sources {
            for token in source.tokens(req) {
                found.push((source, token));
            }
        }
        if found.len() > 1 {
            let mut places: Vec<String> = found.iter().map(|(s, _)| s.to_string()).collect();
            places.dedup();
            return Err(Failure {
                kind: Kind::InvalidRequest,
                message: format!(
                    "send one token, not {} ({})",
                    found.len(),
                    places.join(", ")
                ),
            });
        }
        found.pop().ok_or_else(|| Failure {
            kind: Kind::Missing,
            message: format!(
                "send a token ({})",
                self.sources
                    .iter()
                    .map(Source::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }

    /// Checks the signature with the key(s) the token may use.
    fn verify(&self, jws: &Jws) -> Result<(), Failure> {
        let input = jws.signing_input.as_bytes();
        let bad_signature = || Failure::token("the token signature does not verify");
        let named = jws
            .kid
            .as_deref()
            .and_then(|kid| self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)));
        if let Some(key) = named {
            if key.alg() != jws.alg {
                return Err(Failure::token(format!(
                    "key `{}` is for {}, not {}",
                    shown(key.kid.as_deref().unwrap_or_default()),
                    key.alg().name(),
                    jws.alg.name()
                )));
            }
            return key
                .verify(input, &jws.signature)
                .then_some(())
                .ok_or_else(bad_signature);
        }
        let mut candidates = self
            .keys
            .iter()
            .filter(|k| k.alg() == jws.alg && (jws.kid.is_none() || k.kid.is_none()))
            .take(MAX_KEYS_TRIED)
            .peekable();
        if candidates.peek().is_none() {
            return Err(Failure::token(match &jws.kid {
                Some(kid) => format!("unknown key id `{}`", shown(kid)),
                None => format!("no key for {} tokens", jws.alg.name()),
            }));
        }
        candidates
            .any(|k| k.verify(input, &jws.signature))
            .then_some(())
            .ok_or_else(bad_signature)
    }

    /// The 401 for `failure`, with its RFC 6750 challenge.
    fn deny(&self, failure: &Failure, req: &dyn RequestInfo) -> Decision {
        let code = match failure.kind {
            Kind::Missing => None,
            Kind::InvalidRequest => Some("invalid_request"),
            Kind::InvalidToken => Some("invalid_token"),
        };
        let challenge = match code {
            None => format!("Bearer realm=\"{}\"", self.realm),
            Some(code) => format!(
                "Bearer realm=\"{}\", error=\"{code}\", error_description=\"{}\"",
                self.realm, failure.message
            ),
        };
        Decision::error(401, "unauthorized", &failure.message, req)
            .header("www-authenticate", &challenge)
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Authorization => write!(f, "Authorization: Bearer"),
            Source::Header(h) => write!(f, "header `{h}`"),
            Source::Query(q) => write!(f, "query parameter `{q}`"),
            Source::Cookie(c) => write!(f, "cookie `{c}`"),
        }
    }
}

impl Source {
    /// Every token this source finds in the request (present but empty counts: it is
    /// refused as empty rather than taken for no token).
    fn tokens(&self, req: &dyn RequestInfo) -> Vec<String> {
        match self {
            Source::Authorization => req
                .headers()
                .get("authorization")
                .and_then(|v| bearer(&v).map(str::to_string))
                .into_iter()
                .collect(),
            Source::Header(name) => req
                .headers()
                .get(name)
                .map(|v| bearer(&v).unwrap_or(v.trim()).to_string())
                .into_iter()
                .collect(),
            Source::Query(name) => req
                .query_params()
                .into_iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v)
                .collect(),
            Source::Cookie(name) => cookies(req)
                .into_iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.trim_matches('"').to_string())
                .collect(),
        }
    }

    /// Removes the token from the request (`hide_credentials`).
    fn hide(&self, req: &mut dyn Request) {
        match self {
            Source::Authorization => req.headers_mut().remove("authorization"),
            Source::Header(name) => req.headers_mut().remove(name),
            Source::Query(name) => req.remove_query_param(name),
            Source::Cookie(name) => {
                let kept: Vec<String> = cookies(req)
                    .into_iter()
                    .filter(|(n, _)| n != name)
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect();
                if kept.is_empty() {
                    req.headers_mut().remove("cookie");
                } else {
                    req.headers_mut().set("cookie", &kept.join("; "));
                }
            }
        }
    }
}

/// The token of an `Authorization`-style value `Bearer <token>`; `None` for another
/// scheme.
fn bearer(value: &str) -> Option<&str> {
    let value = value.trim();
    let scheme = value.get(..6)?;
    let rest = value.get(6..)?;
    (scheme.eq_ignore_ascii_case("bearer") && (rest.is_empty() || rest.starts_with(' ')))
        .then(|| rest.trim())
}

/// Every `name=value` pair of the `cookie` headers (HTTP/2 may split them in several).
fn cookies(req: &dyn RequestInfo) -> Vec<(String, String)> {
    req.headers()
        .get_all("cookie")
        .iter()
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| {
            let (n, v) = pair.split_once('=')?;
            Some((n.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// The consumer name in a claim: a non-empty string or an integer, short, without
/// control characters.
fn consumer(claim: Option<&Value>) -> Option<String> {
    let name = match claim? {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        _ => return None,
    };
    (!name.is_empty() && name.len() <= MAX_CONSUMER_BYTES && !name.chars().any(char::is_control))
        .then_some(name)
}

/// A claim as a header value: `None` for `null`, `Err` for a string with control
/// characters (tab aside).
fn header_value(claim: &Value) -> Option<Result<String, ()>> {
    let text = match claim {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        // Numbers, booleans, lists, objects: compact JSON, which escapes control characters.
        other => other.to_string(),
    };
    Some(if text.chars().any(|c| c.is_control() && c != '\t') {
        Err(())
    } else {
        Ok(text)
    })
}

/// Loads `keys` then `jwks`, naming each key in its errors, and checks the kids.
fn load_keys(configs: Vec<KeyConfig>, jwks: Option<Value>, errors: &mut Vec<String>) -> Vec<Key> {
    // (where, kid, key)
    let mut loaded: Vec<(String, Option<String>, Result<Key, String>)> = Vec::new();
    for (i, config) in configs.into_iter().enumerate() {
        loaded.push((format!("keys[{i}]"), config.kid.clone(), config.load()));
    }
    if let Some(jwks) = jwks {
        match keys::jwk_set(jwks) {
            Ok(set) => loaded.extend(set.iter().enumerate().map(|(i, jwk)| {
                let kid = keys::jwk_kid(jwk).map(str::to_string);
                (format!("jwks.keys[{i}]"), kid, keys::load_jwk(jwk))
            })),
            Err(e) => errors.push(e),
        }
    }
    let mut keys: Vec<(String, Key)> = Vec::new();
    for (place, kid, key) in loaded {
        let place = match &kid {
            Some(kid) => format!("{place} (kid `{kid}`)"),
            None => place,
        };
        let first = kid
            .as_ref()
            .and_then(|kid| keys.iter().find(|(_, k)| k.kid.as_ref() == Some(kid)));
        match (key, first) {
            (Err(e), _) => errors.push(format!("{place}: {e}")),
            _ if kid.as_deref() == Some("") => {
                errors.push(format!("{place}: an empty kid; leave `kid` out instead"))
            }
            (Ok(_), Some((other, _))) => {
                errors.push(format!("{place}: the kid is also used by {other}"))
            }
            (Ok(key), None) => keys.push((place, key)),
        }
    }
    if keys.is_empty() && errors.is_empty() {
        errors.push("give at least one key, in `keys` or `jwks`".into());
    }
    keys.into_iter().map(|(_, key)| key).collect()
}

/// `iss`/`aud` as a list; an empty list or value is an error.
fn string_list(key: &str, value: Option<OneOrMany>, errors: &mut Vec<String>) -> Vec<String> {
    let list = match value {
        None => return Vec::new(),
        Some(OneOrMany::One(v)) => vec![v],
        Some(OneOrMany::Many(v)) => v,
    };
    if list.is_empty() || list.iter().any(String::is_empty) {
        errors.push(format!(
            "{key}: give non-empty values (leave `{key}` out to skip the check)"
        ));
    }
    list
}

/// The token sources, checked.
fn sources(config: &Config, errors: &mut Vec<String>) -> Vec<Source> {
    let mut sources = Vec::new();
    if config.authorization {
        sources.push(Source::Authorization);
    }
    if let Some(header) = &config.header {
        let name = header.to_ascii_lowercase();
        if let Err(e) = validate_header(&name, "") {
            errors.push(format!("header: {e}"));
        } else if ["authorization", "cookie", CONSUMER_HEADER].contains(&name.as_str()) {
            errors.push(format!(
                "header: `{name}` cannot carry the token here (use `authorization` or `cookie`; \
                 `{CONSUMER_HEADER}` is written by the plugin)"
            ));
        } else {
            sources.push(Source::Header(name));
        }
    }
    if let Some(query) = &config.query {
        if query.is_empty() {
            errors.push("query: give a parameter name".into());
        } else {
            sources.push(Source::Query(query.clone()));
        }
    }
    if let Some(cookie) = &config.cookie {
        if cookie.is_empty()
            || cookie.contains(|c: char| {
                matches!(c, ';' | '=' | ',') || c.is_whitespace() || c.is_control()
            })
        {
            errors.push(format!("cookie: `{cookie}` is not a cookie name"));
        } else {
            sources.push(Source::Cookie(cookie.clone()));
        }
    }
    if !config.authorization
        && config.header.is_none()
        && config.query.is_none()
        && config.cookie.is_none()
    {
        errors.push(
            "authorization = false leaves no token source: give `header`, `query` or `cookie`"
                .into(),
        );
    }
    sources
}

/// `forward_claims`, checked: valid, distinct headers the plugin does not own.
fn forward_claims(
    map: BTreeMap<String, String>,
    reserved: &[String],
    errors: &mut Vec<String>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (claim, header) in map {
        let header = header.to_ascii_lowercase();
        let key = format!("forward_claims.{claim}");
        if claim.is_empty() {
            errors.push("forward_claims: an empty claim name".into());
        } else if let Err(e) = validate_header(&header, "") {
            errors.push(format!("{key}: {e}"));
        } else if reserved.contains(&header) {
            errors.push(format!(
                "{key}: `{header}` is a token source or written by the plugin"
            ));
        } else if let Some((other, _)) = out.iter().find(|(_, h)| *h == header) {
            errors.push(format!("{key}: `{header}` already carries claim `{other}`"));
        } else {
            out.push((claim, header));
        }
    }
    out
}

#[cfg(test)]
mod tests;
