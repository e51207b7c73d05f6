//! `key-auth`: authenticates every request by an API key and names its consumer.
//!
//! ```toml
//! [[plugins]]
//! name = "key-auth"
//! wasm = "plugins/dist/key-auth.wasm"
//! [plugins.config]
//! header = "x-api-key"         # default: where the key is read
//! query = "api_key"            # optional: the key may also come in this query parameter
//! hide_credentials = true      # default: the upstream sees neither the header nor the parameter
//!
//! [[plugins.config.consumers]]
//! name = "alice"
//! keys = ["${ALICE_API_KEY}"]  # plain keys (the gateway substitutes ${ENV})
//!
//! [[plugins.config.consumers]]
//! name = "billing-batch"
//! # SHA-256 of the key: printf %s "$KEY" | sha256sum
//! key_hashes = ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
//! ```
//!
//! The key is the whole value of `header` (any case in the config; default
//! `x-api-key`), or, when `query` is set and the header is absent or empty, the first
//! value of that query parameter after percent-decoding (so a `+` in a key sent in the
//! query is written `%2B`). The header wins when both are sent, even if its key is
//! wrong: there is no second try. An empty value counts as no key; a header sent twice
//! reaches the plugin joined (`a, b`) and matches no key.
//!
//! Every request through the plugin must carry a valid key (there are no anonymous
//! routes: attach the plugin only to routes that need a key, and put `cors` before it
//! so preflights are answered first). The outcomes:
//! - **no key**: 401, Weir's JSON error `{"error": "unauthorized", "message": …,
//!   "request_id": …}` with the message ``no API key: send it in the `x-api-key`
//!   header`` (`` or the `api_key` query parameter`` when one is configured);
//! - **a key that matches no consumer**, or longer than 1024 bytes (not even hashed):
//!   401 with the message `invalid API key`, logged at info with the request id and
//!   client address, never the key;
//! - **a valid key**: the request goes on with the consumer set (the `weir.consumer`
//!   property, read by later plugins such as `rate-limit` and by the access log) and
//!   the request header `x-consumer: <name>` for the upstream; with `hide_credentials`
//!   the key's header and query parameter are removed (both, whichever carried the key;
//!   the other query parameters keep their order and encoding).
//!
//! Both 401s carry `www-authenticate: ApiKey header="x-api-key"` (plus
//! `, query="api_key"` when a query parameter is configured).
//!
//! Security notes:
//! - a client-sent `x-consumer` header is always removed first, whatever the outcome,
//!   so neither the upstream nor a later plugin can be fooled by it;
//! - the presented key is hashed with SHA-256 and the digest looked up among the
//!   digests of the configured keys: no comparison ever involves a stored key's bytes,
//!   so response timing tells nothing about them;
//! - a key that matched is remembered (per VM, at most 4,096 keys; a full memory is
//!   emptied) by a 128-bit tag: two SipHash values of the key under a random secret
//!   key drawn when the plugin starts. A key seen again is looked up by its tag and
//!   skips SHA-256 (3.5k of the policy's 6.5k instructions per request in wasm). Only
//!   tags are compared, never a key's bytes, and only keys that matched are
//!   remembered: a client cannot fill the memory, nor learn anything from it, since
//!   without the secret it cannot compute a tag;
//! - prefer `key_hashes` (or `${ENV}` in `keys`) to plain keys in the config file;
//!   config errors point at keys by position and never print them;
//! - counters on the gateway's `/metrics`, as `weir_plugin_counter{plugin,name}`:
//!   `key_auth_allowed_total`, `key_auth_rejected_missing_total`,
//!   `key_auth_rejected_invalid_total`. To slow down key guessing, put a `rate-limit`
//!   keyed by client IP before this plugin.
//!
//! The config is checked at load time; each of these fails it with a message naming
//! the key: an unknown key, `header` not a header name a plugin may write (or
//! `x-consumer`), `query` not made of letters, digits and `-._~`, no consumers, a
//! consumer name empty, over 256 bytes or with characters outside visible ASCII, the
//! same name twice, a consumer with no key, an empty key, a key over 1024 bytes or
//! with a character outside visible ASCII (a key must be sendable in a header), a hash
//! not `sha256:` followed by 64 hex digits, and the same key (plain or hashed) given
//! twice, to one consumer or two.
#![warn(missing_docs)]

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::rc::Rc;
use weir_plugin_sdk::log;
use weir_plugin_sdk::metrics::Counter;
use weir_plugin_sdk::prelude::*;
use weir_plugin_sdk::validate_header;

/// The request header that tells the upstream (and later plugins) who the consumer is.
pub const CONSUMER_HEADER: &str = "x-consumer";

/// The longest key accepted, in bytes; a longer presented key is rejected unhashed.
pub const MAX_KEY_LEN: usize = 1024;

/// The longest consumer name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Most matched keys a VM remembers (see the security notes in the crate docs).
pub const VERIFIED_MAX_KEYS: usize = 4096;

static ALLOWED: Counter = Counter::new("key_auth_allowed_total");
static REJECTED_MISSING: Counter = Counter::new("key_auth_rejected_missing_total");
static REJECTED_INVALID: Counter = Counter::new("key_auth_rejected_invalid_total");

/// The plugin's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The request header carrying the key.
    #[serde(default = "default_header")]
    pub header: String,
    /// A query parameter that may carry the key when the header is absent.
    #[serde(default)]
    pub query: Option<String>,
    /// Remove the key's header and query parameter before the request goes upstream.
    #[serde(default = "default_hide_credentials")]
    pub hide_credentials: bool,
    /// Who may call, with their keys.
    #[serde(default)]
    pub consumers: Vec<ConsumerConfig>,
}

fn default_header() -> String {
    "x-api-key".to_string()
}

fn default_hide_credentials() -> bool {
    true
}

/// One `[[consumers]]` entry: a name and at least one key, plain or hashed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// The consumer's name, as set on the request and sent in `x-consumer`.
    pub name: String,
    /// Plain keys.
    #[serde(default)]
    pub keys: Vec<String>,
    /// SHA-256 digests of keys, as `sha256:<64 hex digits>`.
    #[serde(default)]
    pub key_hashes: Vec<String>,
}

/// A SHA-256 digest.
type KeyDigest = [u8; 32];

/// The policy: the config checked, every key reduced to its digest.
pub struct KeyAuth {
    header: String,
    query: Option<String>,
    hide_credentials: bool,
    /// Key digest → consumer name.
    consumers: BTreeMap<KeyDigest, Rc<str>>,
    /// Keys that matched, by tag.
    verified: Verified,
    /// The 401 message for a request without a key.
    missing_message: String,
    /// The `www-authenticate` value of both 401s.
    challenge: String,
}

/// Keys that matched a consumer, remembered by a 128-bit tag of a secret-keyed hash:
/// a key seen again skips SHA-256. Only keys that matched are inserted, and the map is
/// emptied when full ([`VERIFIED_MAX_KEYS`]).
struct Verified {
    /// SipHash with a random key (std draws it from the host's `random_get`).
    hasher: RandomState,
    tags: RefCell<BTreeMap<u128, Rc<str>>>,
}

impl Verified {
    fn new() -> Verified {
        Verified {
            hasher: RandomState::new(),
            tags: RefCell::new(BTreeMap::new()),
        }
    }

    /// Two 64-bit values of the keyed hash: of the key, and of the key and one more
    /// byte (two distinct inputs, one pass over the key).
    fn tag(&self, key: &str) -> u128 {
        let mut h = self.hasher.build_hasher();
        h.write(key.as_bytes());
        let first = h.finish();
        h.write_u8(0xff);
        u128::from(first) << 64 | u128::from(h.finish())
    }

    fn get(&self, tag: u128) -> Option<Rc<str>> {
        self.tags.borrow().get(&tag).cloned()
    }

    fn insert(&self, tag: u128, consumer: Rc<str>) {
        let mut tags = self.tags.borrow_mut();
        if tags.len() >= VERIFIED_MAX_KEYS {
            tags.clear();
        }
        tags.insert(tag, consumer);
    }
}

/// Where the presented key came from, for logs.
#[derive(Clone, Copy)]
enum Source {
    Header,
    Query,
}

impl Policy for KeyAuth {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let mut errors = Vec::new();
        let header = config.header.to_ascii_lowercase();
        if let Err(e) = validate_header(&header, "") {
            errors.push(format!("header: {e}"));
        } else if header == CONSUMER_HEADER {
            errors.push(format!(
                "header: `{CONSUMER_HEADER}` is the header this plugin sets for the upstream"
            ));
        }
        if let Some(q) = &config.query {
            if q.is_empty()
                || !q
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
            {
                errors.push(format!(
                    "query: `{}` is not a plain parameter name (letters, digits and -._~)",
                    q.escape_debug()
                ));
            }
        }
        let consumers = consumer_keys(&config.consumers, &mut errors);
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        let (missing_message, challenge) = match &config.query {
            Some(q) => (
                format!(
                    "no API key: send it in the `{header}` header or the `{q}` query parameter"
                ),
                format!("ApiKey header=\"{header}\", query=\"{q}\""),
            ),
            None => (
                format!("no API key: send it in the `{header}` header"),
                format!("ApiKey header=\"{header}\""),
            ),
        };
        Ok(KeyAuth {
            header,
            query: config.query,
            hide_credentials: config.hide_credentials,
            consumers,
            verified: Verified::new(),
            missing_message,
            challenge,
        })
    }

    /// No response hook: Weir need not call it.
    fn uses_response(&self) -> bool {
        false
    }

    fn on_request(&self, req: &mut dyn Request) -> Decision {
        // A client must never pass for a consumer: an allowed request's `x-consumer` is
        // replaced below, a refused one's removed (`unauthorized`). Not removed up
        // front: on the allowed path that is a host call for nothing.
        let Some((key, source)) = self.presented_key(req) else {
            REJECTED_MISSING.inc();
            return self.unauthorized(&self.missing_message, req);
        };
        // An over-long key is no key of ours: not worth hashing.
        let consumer = (key.len() <= MAX_KEY_LEN)
            .then(|| self.consumer(&key))
            .flatten();
        let Some(consumer) = consumer else {
            REJECTED_INVALID.inc();
            log::info!(
                "invalid API key in {}: consumer unknown, client {}, request_id {}",
                self.describe(source),
                req.client_addr().unwrap_or("unknown"),
                req.request_id(),
            );
            return self.unauthorized("invalid API key", req);
        };
        ALLOWED.inc();
        req.set_consumer(&consumer);
        req.headers_mut().set(CONSUMER_HEADER, &consumer);
        if self.hide_credentials {
            req.headers_mut().remove(&self.header);
            if let Some(q) = &self.query {
                req.remove_query_param(q);
            }
        }
        Decision::Continue
    }
}

weir_plugin_sdk::export_policy!(KeyAuth);

impl KeyAuth {
    /// The consumer `key` belongs to: remembered, or found by the key's digest.
    fn consumer(&self, key: &str) -> Option<Rc<str>> {
        let tag = self.verified.tag(key);
        if let Some(consumer) = self.verified.get(tag) {
            return Some(consumer);
        }
        let consumer = self.consumers.get(&digest(key))?.clone();
        self.verified.insert(tag, consumer.clone());
        Some(consumer)
    }

    /// The non-empty key of the header, else of the query parameter.
    fn presented_key(&self, req: &dyn RequestInfo) -> Option<(String, Source)> {
        if let Some(key) = req.headers().get(&self.header).filter(|k| !k.is_empty()) {
            return Some((key, Source::Header));
        }
        let key = req.query_param(self.query.as_deref()?)?;
        (!key.is_empty()).then_some((key, Source::Query))
    }

    fn describe(&self, source: Source) -> String {
        match (source, &self.query) {
            (Source::Query, Some(q)) => format!("query parameter `{q}`"),
            _ => format!("header `{}`", self.header),
        }
    }

    fn unauthorized(&self, message: &str, req: &mut dyn Request) -> Decision {
        req.headers_mut().remove(CONSUMER_HEADER);
        Decision::error(401, "unauthorized", message, req)
            .header("www-authenticate", &self.challenge)
    }
}

/// Checks the consumers and maps every key's digest to its consumer's name.
fn consumer_keys(
    consumers: &[ConsumerConfig],
    errors: &mut Vec<String>,
) -> BTreeMap<KeyDigest, Rc<str>> {
    if consumers.is_empty() {
        errors.push("consumers: give at least one consumer with a key".into());
    }
    let mut names = BTreeMap::new();
    // Digest → where it was first given, to name both places of a duplicate.
    let mut seen: BTreeMap<KeyDigest, String> = BTreeMap::new();
    let mut by_digest = BTreeMap::new();
    for (i, consumer) in consumers.iter().enumerate() {
        let at = format!("consumers[{i}]");
        if let Err(e) = check_name(&consumer.name) {
            errors.push(format!("{at}.name: {e}"));
        } else if let Some(first) = names.insert(consumer.name.as_str(), i) {
            errors.push(format!(
                "{at}.name: `{}` is also the name of consumers[{first}]",
                consumer.name
            ));
        }
        if consumer.keys.is_empty() && consumer.key_hashes.is_empty() {
            errors.push(format!("{at}: no key: give `keys` or `key_hashes`"));
        }
        let plain = consumer.keys.iter().enumerate().map(|(k, key)| {
            (
                format!("{at}.keys[{k}]"),
                check_key(key).map(|()| digest(key)),
            )
        });
        let hashed = consumer
            .key_hashes
            .iter()
            .enumerate()
            .map(|(k, hash)| (format!("{at}.key_hashes[{k}]"), parse_hash(hash)));
        for (place, digest) in plain.chain(hashed) {
            match digest {
                Err(e) => errors.push(format!("{place}: {e}")),
                Ok(digest) => {
                    if let Some(first) = seen.get(&digest) {
                        errors.push(format!("{place}: the same key as {first}"));
                        continue;
                    }
                    seen.insert(digest, place);
                    by_digest.insert(digest, Rc::from(consumer.name.as_str()));
                }
            }
        }
    }
    by_digest
}

/// Consumer names travel in a header and the access log: short, visible ASCII.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("longer than {MAX_NAME_LEN} bytes"));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "`{}` has a character outside visible ASCII (no spaces or control characters)",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// A configured key must be presentable in a header; its text is never echoed.
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty key".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!("key longer than {MAX_KEY_LEN} bytes"));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "key has a character outside visible ASCII (no spaces or control characters)".into(),
        );
    }
    Ok(())
}

fn digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

/// `sha256:` and 64 hex digits (either case) into a digest; the text is never echoed.
fn parse_hash(hash: &str) -> Result<KeyDigest, String> {
    let expected = "expected `sha256:` followed by 64 hex digits";
    let hex = hash
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("{expected} (no `sha256:` prefix)"))?;
    let len = hex.chars().count();
    if len != 64 {
        return Err(format!("{expected} (got {len} characters)"));
    }
    let nibbles: Vec<u8> = hex
        .chars()
        .map(|c| c.to_digit(16).map(|d| d as u8))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("{expected} (not hex)"))?;
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(nibbles.chunks_exact(2)) {
        *byte = pair.iter().fold(0, |acc, n| acc << 4 | n);
    }
    Ok(digest)
}

#[cfg(test)]
mod tests;
