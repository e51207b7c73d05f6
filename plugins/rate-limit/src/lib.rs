//! `rate-limit`: limits requests per consumer, client IP, header value or route, with a
//! token bucket (GCRA) or a sliding window, and tells clients where they stand with
//! `ratelimit-*` headers.
//!
//! ```toml
//! [[plugins]]
//! name = "limit"
//! wasm = "plugins/rate_limit.wasm"
//! on_error = "allow"
//! config.key = "consumer"             # consumer | ip | route | "header:<name>"; default ip
//! config.on_missing_key = "ip"        # ip | shared | allow | deny; default ip
//! config.algorithm = "token_bucket"   # token_bucket | sliding_window; default token_bucket
//! config.limit = 100                  # everyone without a tier: 100 requests…
//! config.window = "1m"                # …per minute ("500ms", "10s", "1m", "1h"; at most 24h)
//! config.burst = 20                   # token_bucket only; default = limit
//! config.tiers = { gold = { limit = 1000, window = "1m", burst = 2000 }, free = { limit = 10, window = "1m" } }
//! config.consumer_tiers = { alice = "gold", bob = "free" }
//! # config.default_tier = "free"      # instead of limit/window: everyone else gets a tier
//! config.headers = true               # ratelimit-limit/-remaining/-reset; default true
//! config.on_store_error = "allow"     # allow | deny; default allow
//! config.ipv6_prefix = 64             # IPv6 clients are counted per /64; default 64
//! ```
//!
//! # Who is counted
//!
//! `key` says whose requests share a budget:
//! - `consumer`: the consumer an auth plugin earlier in the route's chain identified
//!   (`weir.consumer`); put `rate-limit` after `key-auth`/`jwt-auth`;
//! - `ip`: the client address the gateway reports (`source.address`, already after its
//!   trusted-proxy decision). IPv4 addresses count one by one; IPv6 addresses count per
//!   `ipv6_prefix` bits (default 64: one customer's network, since a client can rotate
//!   through the 2⁶⁴ addresses of its own /64 at will); IPv4-mapped IPv6 counts as IPv4;
//! - `header:<name>`: the request header's value (a repeated header's values joined
//!   with `", "`). The client chooses it: only meaningful for a header a trusted plugin
//!   or proxy sets, or as a courtesy limit;
//! - `route`: every request of the matched route together, whoever sends it.
//!
//! A request without that key (no consumer, header absent or empty, no route name, no
//! client address) is handled by `on_missing_key`:
//! - `ip` (default): counted per client IP instead, in a budget of its own (a consumer
//!   named like an address never shares it). Anonymous traffic on a route with optional
//!   authentication is thus still limited. If the IP is unknown too (never behind
//!   Weir), it goes to the shared budget;
//! - `shared`: every such request shares one budget;
//! - `allow`: not limited;
//! - `deny`: answered `400` with error code `rate_limit_key_missing`.
//!
//! # How much
//!
//! A consumer listed in `consumer_tiers` gets its tier's `limit` per `window` (and
//! `burst`); everyone else, anonymous requests included, gets `default_tier` or the
//! top-level `limit`/`window`/`burst` — exactly one of the two must be given. The
//! tier is chosen by consumer whatever the `key`: with `key = "ip"`, alice's requests
//! count against her tier per IP. Tier names are 1–64 of `A-Z a-z 0-9 _ -`.
//!
//! Routes that list the same `[[plugins]]` entry share its budgets (a client sending to
//! two such routes spends one budget); give routes separate entries for separate
//! budgets, or `key = "route"` for one budget per route.
//!
//! # Algorithms
//!
//! - `token_bucket` (default) is GCRA, the generic cell rate algorithm: a client may
//!   send `burst` requests at once, then one every `window / limit`, and a bucket left
//!   alone refills at that pace. The store keeps one 8-byte "theoretical arrival time"
//!   per client, updated with compare-and-swap: exact (to the nanosecond), smooth, one
//!   key per client, one read and one write per allowed request. The trade-off: the
//!   budget is a rate, so `limit = 100, window = "1h"` does not mean "100 at the top of
//!   every hour" but "100 at once, then one every 36 s".
//! - `sliding_window` counts requests in fixed windows aligned to the Unix epoch and
//!   estimates the last `window` as the current window's count plus the previous
//!   window's count weighted by how much of it is still inside the sliding window
//!   (Cloudflare's approach): `previous × (1 − elapsed/window) + current`. A request is
//!   allowed when that estimate, itself included, is at most `limit`. Closer to "N per
//!   minute" as people read it, and cheap, but approximate: it assumes the previous
//!   window's requests were evenly spread, so a burst at the end of one window weighs
//!   less than it should (never more than `limit` in any fixed window, never more than
//!   2 × `limit` in any span of one window). `burst` does not apply.
//!
//! Denied requests are not counted: a client that keeps retrying while limited gets
//! through as soon as its budget allows, and the budgets of the others are untouched.
//!
//! # Answers and headers
//!
//! A request over the limit is answered `429` with Weir's JSON error (code
//! `rate_limited`) and `retry-after`: the whole seconds, rounded up and at least 1,
//! until a request would be allowed. With `headers = true` (default) the 429 also
//! carries, and allowed requests' responses get (replacing any the upstream sent; set
//! during the request with `set_response_header`, so the policy has no response hook;
//! in Weir also on an answer a later plugin or the gateway gives instead, such as
//! key-auth's 401 or a 502), the IETF draft's fields:
//! - `ratelimit-limit`: the budget's size — `limit` for `sliding_window`, `burst` for
//!   `token_bucket` (so that `remaining` never exceeds it);
//! - `ratelimit-remaining`: requests that would be allowed right now;
//! - `ratelimit-reset`: whole seconds (rounded up) until the full budget is back: for
//!   a token bucket when the bucket is full again, for a sliding window when both
//!   counted windows have slid out.
//!
//! `retry-after` is sent on every 429, even with `headers = false`.
//!
//! # The store
//!
//! Budgets live in the plugin's shared store (`req.store()`: proxy-wasm shared data,
//! shared by every worker thread of the gateway process, not between gateways: N
//! gateways allow N × `limit`). Keys look like `rl:gold/sw/1000/60000:consumer:alice` and
//! `rl:*/tb/100/60000/20:ip:2001:db8:1:2::/64`: the tier (`*` for the top-level limit),
//! the algorithm, limit, window in ms and burst, so a config change starts fresh
//! budgets instead of misreading old ones, and a reload that keeps them keeps the
//! counts; then the key kind (`consumer`, `ip`, `route`, `header.<name>`; `none` is the
//! shared budget of `on_missing_key = "shared"`) and the value. A value of more than 64
//! bytes, or with bytes outside printable ASCII, or starting with `#`, is stored as `#`
//! and the 16 hex digits of its 64-bit FNV-1a hash, so keys stay short (well under the
//! store's 1 KiB) whatever clients send. FNV is not collision-resistant: a client that
//! crafts a colliding header value shares the other value's budget, which it could do
//! anyway by sending that value.
//!
//! Values: the token bucket's key holds the arrival time (8 bytes, little-endian
//! nanoseconds since the epoch); the sliding window's holds the window number, its
//! count and the previous window's count (3 × 8 bytes, little-endian). One key per
//! client for either algorithm: a new window overwrites the key instead of creating one.
//!
//! Nothing in proxy-wasm shared data expires by itself, and Weir holds at most 100,000
//! keys in all. So the policy asks Weir (`weir.shared_data_ttl`, at start) to drop a
//! key once its budget means nothing: a token bucket's once it is full again (burst ×
//! window / limit after the last request), a sliding window's after two windows; the
//! longest of the tiers, plus a second. A client seen once holds store room that long,
//! not until the process restarts (`weir_plugin_shared_data_keys{plugin}` shows how
//! full the store is). A client that can mint keys faster than they expire (header
//! values, IPv6 prefixes with a small `ipv6_prefix`) can still fill it for a while;
//! then new clients' writes fail and `on_store_error` applies to them. On a host
//! without the extension keys live for ever.
//!
//! Updates are compare-and-swap: read, compute, write if nobody wrote in between,
//! otherwise read again, up to 16 times. The first write of a new key cannot be
//! conditional in proxy-wasm, so two VMs racing on a client's very first request may
//! both count it once; every later request is counted exactly. If the clock goes
//! backwards, a client is at worst treated as having spent its full budget, never
//! locked out for longer.
//!
//! When the store fails (unavailable, contended after 16 attempts, or a value of the
//! wrong size), `on_store_error` decides: `allow` (default) lets the request through
//! without `ratelimit-*` headers; `deny` answers `503` with error code
//! `rate_limit_unavailable`. Either way a warning with the store key is logged, at
//! most once per second per VM (with the number of warnings left out).
//!
//! # Metrics
//!
//! On the gateway's `/metrics`, as `weir_plugin_counter{plugin="<name>",name="…"}`:
//! `rate_limit_allowed_total` (counted and let through), `rate_limit_limited_total`
//! (answered 429), `rate_limit_key_missing_total` (no key, with `on_missing_key`
//! `allow` or `deny`: not counted against any budget) and
//! `rate_limit_store_errors_total` (`on_store_error` applied).
//!
//! # Config errors
//!
//! Every mistake fails the load with a message naming the key: an unknown key, `key`
//! or option value; a header name that is not a token; `limit` or `burst` below 1; a
//! `window` that is not a whole number with `ms`, `s`, `m` or `h`, is zero or longer
//! than 24h; a limit above one request per microsecond; a bucket that takes more than
//! 24h to refill; `burst` with `sliding_window`; `limit` without `window` or the
//! reverse; a tier without `limit` or `window`; a bad tier name; `consumer_tiers` or
//! `default_tier` naming an unknown tier; both or neither of `default_tier` and the
//! top-level `limit`; `ipv6_prefix` outside 1–128.
#![warn(missing_docs)]

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};
use weir_plugin_sdk::log;
use weir_plugin_sdk::metrics::Counter;
use weir_plugin_sdk::prelude::*;
use weir_plugin_sdk::{StoreError, INCREMENT_ATTEMPTS};

static ALLOWED: Counter = Counter::new("rate_limit_allowed_total");
static LIMITED: Counter = Counter::new("rate_limit_limited_total");
static KEY_MISSING: Counter = Counter::new("rate_limit_key_missing_total");
static STORE_ERRORS: Counter = Counter::new("rate_limit_store_errors_total");

/// The plugin's `config` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Whose requests share a budget: `consumer`, `ip`, `route` or `header:<name>`.
    /// Default `ip`.
    pub key: Option<String>,
    /// What a request without that key gets: `ip`, `shared`, `allow` or `deny`.
    /// Default `ip`.
    pub on_missing_key: Option<String>,
    /// `token_bucket` (default) or `sliding_window`.
    pub algorithm: Option<String>,
    /// Requests per `window` for everyone without a tier.
    pub limit: Option<i64>,
    /// The window of the top-level `limit` (`"500ms"`, `"10s"`, `"1m"`, `"1h"`).
    pub window: Option<String>,
    /// Requests a fresh token bucket allows at once; default `limit`.
    pub burst: Option<i64>,
    /// Named budgets: `gold = { limit = 1000, window = "1m" }`.
    #[serde(default)]
    pub tiers: BTreeMap<String, TierConfig>,
    /// Consumer name → tier name.
    #[serde(default)]
    pub consumer_tiers: BTreeMap<String, String>,
    /// The tier of everyone not in `consumer_tiers`, instead of the top-level limit.
    pub default_tier: Option<String>,
    /// Whether to send `ratelimit-limit`, `-remaining` and `-reset`; default true.
    pub headers: Option<bool>,
    /// `allow` (default) or `deny` when the store fails.
    pub on_store_error: Option<String>,
    /// Prefix length IPv6 clients are counted by with `ip` keys; default 64.
    pub ipv6_prefix: Option<i64>,
}

/// One entry of `tiers`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Requests per `window`.
    pub limit: Option<i64>,
    /// The window (`"1m"`).
    pub window: Option<String>,
    /// Requests a fresh token bucket allows at once; default `limit`.
    pub burst: Option<i64>,
}

/// The policy: the config checked and compiled.
#[derive(Debug)]
pub struct RateLimit {
    key: KeyKind,
    on_missing_key: OnMissingKey,
    algorithm: Algorithm,
    default: Rc<Rate>,
    consumer_tiers: BTreeMap<String, Rc<Rate>>,
    headers: bool,
    deny_on_store_error: bool,
    ipv6_mask: u128,
    ipv6_prefix: u32,
    warnings: WarnGate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyKind {
    Consumer,
    Ip,
    Route,
    /// The header's name and the key kind written in store keys (`header.<name>`).
    Header {
        name: String,
        kind: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnMissingKey {
    Ip,
    Shared,
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    TokenBucket,
    SlidingWindow,
}

/// One budget, compiled.
#[derive(Debug, PartialEq, Eq)]
struct Rate {
    /// Store key prefix naming the budget: `rl:<tier>/<algorithm>/<limit>/<ms>[/<burst>]`.
    scope: String,
    /// `100 requests per 1m`, for messages.
    label: String,
    limit: u64,
    window_ns: u64,
    burst: u64,
    /// Token bucket: time between requests, `window / limit`.
    interval_ns: u64,
    /// Token bucket: `burst × interval`, how far ahead of now the arrival time may run.
    capacity_ns: u64,
}

/// The outcome of one check against a budget; times are absolute, in ns since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verdict {
    allowed: bool,
    limit: u64,
    remaining: u64,
    reset_at: u64,
    retry_at: u64,
}

const NANOS_PER_SEC: u64 = 1_000_000_000;
const NANOS_PER_MS: u64 = 1_000_000;
const MAX_WINDOW_NS: u64 = 24 * 3600 * NANOS_PER_SEC;
/// Identities longer than this are hashed in store keys.
const MAX_LITERAL: usize = 64;
/// Header names longer than this are refused, so store keys stay bounded.
const MAX_HEADER_NAME: usize = 128;
const HEADER_NAMES: [&str; 3] = ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"];

impl Policy for RateLimit {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let mut errors = Vec::new();
        let key = key_kind(config.key.as_deref().unwrap_or("ip"), &mut errors);
        let on_missing_key = one_of(
            "on_missing_key",
            config.on_missing_key.as_deref(),
            &[
                ("ip", OnMissingKey::Ip),
                ("shared", OnMissingKey::Shared),
                ("allow", OnMissingKey::Allow),
                ("deny", OnMissingKey::Deny),
            ],
            &mut errors,
        );
        let algorithm = one_of(
            "algorithm",
            config.algorithm.as_deref(),
            &[
                ("token_bucket", Algorithm::TokenBucket),
                ("sliding_window", Algorithm::SlidingWindow),
            ],
            &mut errors,
        );
        let deny_on_store_error = one_of(
            "on_store_error",
            config.on_store_error.as_deref(),
            &[("allow", false), ("deny", true)],
            &mut errors,
        );
        let ipv6_prefix = match config.ipv6_prefix.unwrap_or(64) {
            p @ 1..=128 => p as u32,
            p => {
                errors.push(format!("ipv6_prefix: must be 1 to 128, got {p}"));
                128
            }
        };
        let algo = algorithm.unwrap_or(Algorithm::TokenBucket);

        let tiers = Tiers::compile(&config.tiers, algo, &mut errors);
        let mut consumer_tiers = BTreeMap::new();
        for (consumer, name) in &config.consumer_tiers {
            if consumer.is_empty() {
                errors.push("consumer_tiers: an empty consumer name".into());
            }
            let key = format!("consumer_tiers.{consumer}");
            if let Some(rate) = tiers.find(&key, name, &mut errors) {
                consumer_tiers.insert(consumer.clone(), rate);
            }
        }
        let default = default_rate(&config, &tiers, algo, &mut errors);

        match (errors.is_empty(), default) {
            (true, Some(default)) => {
                // A budget untouched this long is full again: its key can go.
                let idle = consumer_tiers
                    .values()
                    .map(|r| r.forgotten_after(algo))
                    .fold(default.forgotten_after(algo), Duration::max);
                weir_plugin_sdk::expire_idle_keys(idle + Duration::from_secs(1));
                Ok(RateLimit {
                    key,
                    on_missing_key: on_missing_key.unwrap_or(OnMissingKey::Ip),
                    algorithm: algo,
                    default,
                    consumer_tiers,
                    headers: config.headers.unwrap_or(true),
                    deny_on_store_error: deny_on_store_error.unwrap_or(false),
                    ipv6_mask: u128::MAX << (128 - ipv6_prefix),
                    ipv6_prefix,
                    warnings: WarnGate::default(),
                })
            }
            _ => Err(errors.join("; ")),
        }
    }

    /// The `ratelimit-*` headers are set during the request (`set_response_header`).
    fn uses_response(&self) -> bool {
        false
    }

    fn on_request(&self, req: &mut dyn Request) -> Decision {
        let rate = req
            .consumer()
            .and_then(|c| self.consumer_tiers.get(c))
            .unwrap_or(&self.default);
        let Some(key) = self.store_key(req, &rate.scope) else {
            KEY_MISSING.inc();
            return match self.on_missing_key {
                OnMissingKey::Deny => {
                    let message = format!("this route is rate limited per {}", self.key_label());
                    Decision::error(400, "rate_limit_key_missing", &message, req)
                }
                _ => Decision::Continue,
            };
        };
        let now = now_ns(req);
        let verdict = match self.check(req.store(), &key, rate, now) {
            Ok(verdict) => verdict,
            Err(e) => return self.store_failed(req, &key, &e, now),
        };
        let numbers = [
            verdict.limit,
            verdict.remaining,
            secs_until(verdict.reset_at, now),
        ];
        if verdict.allowed {
            ALLOWED.inc();
            if self.headers {
                // Set now, written to the upstream's response by the host: no response
                // hook (and no guest entry for it) per request.
                let mut value = String::with_capacity(20);
                for (name, n) in HEADER_NAMES.iter().zip(numbers) {
                    value.clear();
                    push_u64(&mut value, n);
                    req.set_response_header(name, &value);
                }
            }
            return Decision::Continue;
        }
        let [limit, remaining, reset] = numbers.map(|n| n.to_string());
        LIMITED.inc();
        let retry = secs_until(verdict.retry_at, now).to_string();
        let message = format!("rate limit of {} exceeded; retry in {retry} s", rate.label);
        let answer =
            Decision::error(429, "rate_limited", &message, req).header("retry-after", &retry);
        if !self.headers {
            return answer;
        }
        HEADER_NAMES
            .iter()
            .zip([limit, remaining, reset])
            .fold(answer, |d, (name, value)| d.header(name, &value))
    }
}

weir_plugin_sdk::export_policy!(RateLimit);

impl RateLimit {
    /// The store key of the request's budget in `scope`, or `None` when it has no key
    /// and `on_missing_key` is `allow` or `deny`.
    fn store_key(&self, req: &dyn RequestInfo, scope: &str) -> Option<String> {
        // Built with push_str, not format!: this runs on every request, and core::fmt
        // is slow in wasm.
        let key = |kind: &str, value: Option<&str>| {
            let mut k = String::with_capacity(scope.len() + 16 + value.map_or(0, str::len));
            k.push_str(scope);
            k.push(':');
            k.push_str(kind);
            if let Some(v) = value {
                k.push(':');
                push_identity(&mut k, v);
            }
            k
        };
        let header;
        let ip;
        let found = match &self.key {
            KeyKind::Consumer => req.consumer().map(|c| ("consumer", c)),
            KeyKind::Ip => {
                ip = self.client_ip(req);
                ip.as_deref().map(|ip| ("ip", ip))
            }
            KeyKind::Route => req.route().map(|r| ("route", r)),
            KeyKind::Header { name, kind } => {
                header = req.headers().get(name).filter(|v| !v.is_empty());
                header.as_deref().map(|v| (kind.as_str(), v))
            }
        };
        match (found, self.on_missing_key) {
            (Some((kind, value)), _) => Some(key(kind, Some(value))),
            (None, OnMissingKey::Ip) => Some(match self.client_ip(req) {
                Some(ip) => key("ip", Some(&ip)),
                None => key("none", None),
            }),
            (None, OnMissingKey::Shared) => Some(key("none", None)),
            (None, OnMissingKey::Allow | OnMissingKey::Deny) => None,
        }
    }

    /// The client's IP as counted: IPv4 as is, IPv6 masked to `ipv6_prefix` bits.
    fn client_ip(&self, req: &dyn RequestInfo) -> Option<String> {
        Some(match req.client_ip()?.to_canonical() {
            IpAddr::V4(v4) => {
                // By hand: Ipv4Addr's Display (core::fmt) was a third of this
                // policy's cost per request in wasm.
                let mut s = String::with_capacity(15);
                push_u64s(&mut s, '.', v4.octets().map(u64::from));
                s
            }
            IpAddr::V6(v6) if self.ipv6_prefix == 128 => v6.to_string(),
            IpAddr::V6(v6) => {
                let net = Ipv6Addr::from(u128::from(v6) & self.ipv6_mask);
                format!("{net}/{}", self.ipv6_prefix)
            }
        })
    }

    fn key_label(&self) -> String {
        match &self.key {
            KeyKind::Consumer => "consumer; the request has none".into(),
            KeyKind::Ip => "client address; the request has none".into(),
            KeyKind::Route => "route; the request has none".into(),
            KeyKind::Header { name, .. } => format!("`{name}` header; send one"),
        }
    }

    /// Reads the budget, decides, writes it back with compare-and-swap, and retries
    /// when another request wrote in between.
    fn check(
        &self,
        store: &dyn SharedStore,
        key: &str,
        rate: &Rate,
        now: u64,
    ) -> Result<Verdict, StoreError> {
        for _ in 0..INCREMENT_ATTEMPTS {
            let entry = store.get(key)?;
            let stored = entry.as_ref().map(|e| e.value.as_slice());
            let (verdict, write) = match self.algorithm {
                Algorithm::TokenBucket => rate.gcra(words::<1>(key, stored)?, now),
                Algorithm::SlidingWindow => rate.sliding_window(words::<3>(key, stored)?, now),
            };
            let Some(write) = write else {
                return Ok(verdict);
            };
            let bytes: Vec<u8> = write.iter().flat_map(|w| w.to_le_bytes()).collect();
            match store.compare_and_swap(key, entry.map(|e| e.cas), &bytes) {
                Ok(()) => return Ok(verdict),
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Contended)
    }

    fn store_failed(&self, req: &dyn RequestInfo, key: &str, e: &StoreError, now: u64) -> Decision {
        STORE_ERRORS.inc();
        let outcome = if self.deny_on_store_error {
            "denied"
        } else {
            "allowed"
        };
        self.warnings.warn(now, || {
            format!("rate-limit store error on `{key}`: {e}; request {outcome} (on_store_error)")
        });
        if self.deny_on_store_error {
            let message = "the rate limit cannot be checked right now";
            return Decision::error(503, "rate_limit_unavailable", message, req);
        }
        Decision::Continue
    }
}

impl Rate {
    /// How long after its last write a budget's stored state means nothing: a token
    /// bucket is full again once its arrival time (at most one capacity ahead) has
    /// passed; a sliding window has forgotten its counts once both counted windows are
    /// over.
    fn forgotten_after(&self, algorithm: Algorithm) -> Duration {
        Duration::from_nanos(match algorithm {
            Algorithm::TokenBucket => self.capacity_ns,
            Algorithm::SlidingWindow => self.window_ns.saturating_mul(2),
        })
    }

    /// GCRA. `tat` is the stored theoretical arrival time: when the bucket is full again.
    fn gcra(&self, tat: Option<[u64; 1]>, now: u64) -> (Verdict, Option<Vec<u64>>) {
        // A time further ahead than one full bucket means the clock went backwards:
        // count the client as having spent its budget, no more, and store that.
        let stored = tat.map_or(now, |[t]| t);
        let tat = stored.clamp(now, now.saturating_add(self.capacity_ns));
        let new_tat = tat.saturating_add(self.interval_ns);
        let allow_at = new_tat.saturating_sub(self.capacity_ns);
        let verdict = Verdict {
            allowed: now >= allow_at,
            limit: self.burst,
            remaining: 0,
            reset_at: tat,
            retry_at: allow_at,
        };
        if !verdict.allowed {
            return (verdict, (tat < stored).then(|| vec![tat]));
        }
        let remaining = (self.capacity_ns - (new_tat - now)) / self.interval_ns;
        let verdict = Verdict {
            remaining,
            reset_at: new_tat,
            ..verdict
        };
        (verdict, Some(vec![new_tat]))
    }

    /// Two fixed windows, the previous one weighted by how much of it is still inside
    /// the sliding window. `stored` is `[window number, its count, previous count]`.
    fn sliding_window(&self, stored: Option<[u64; 3]>, now: u64) -> (Verdict, Option<Vec<u64>>) {
        let w = self.window_ns;
        let n = now / w;
        let start = n * w;
        let elapsed = now - start;
        let (count, previous) = match stored {
            None => (0, 0),
            // A window from the future means the clock went backwards: its counts are
            // taken as this window's (and stored so, below).
            Some([window, count, previous]) if window >= n => (count, previous),
            Some([window, count, _]) if window + 1 == n => (0, count),
            Some(_) => (0, 0),
        };
        // Weighted in 1/w of a request, so the comparison is exact in integers.
        let (w128, limit) = (u128::from(w), u128::from(self.limit) * u128::from(w));
        let weighted =
            |c: u64| u128::from(c) * w128 + u128::from(previous) * u128::from(w - elapsed);
        let next = count.saturating_add(1);
        let allowed = weighted(next) <= limit;
        let counted = if allowed { next } else { count };
        let verdict = Verdict {
            allowed,
            limit: self.limit,
            remaining: if allowed {
                ((limit - weighted(next)) / w128) as u64
            } else {
                0
            },
            // The full budget is back once every counted request has slid out.
            reset_at: start + if counted > 0 { 2 * w } else { w },
            retry_at: if allowed {
                now
            } else {
                self.sliding_retry_at(start, count, previous)
            },
        };
        let skewed = matches!(stored, Some([window, ..]) if window > n);
        let write = match (allowed, skewed) {
            (true, _) => Some(vec![n, next, previous]),
            (false, true) => Some(vec![n, count, previous]),
            (false, false) => None,
        };
        (verdict, write)
    }

    /// When a request denied in the window starting at `start` would be allowed.
    fn sliding_retry_at(&self, start: u64, count: u64, previous: u64) -> u64 {
        let w = u128::from(self.window_ns);
        // Still in this window, once enough of the previous one has slid out:
        // (count + 1) × w + previous × (w − e) ≤ limit × w.
        let room = self.limit.saturating_sub(count.saturating_add(1));
        if previous > 0 && room > 0 {
            let slack = u128::from(room) * w / u128::from(previous);
            return start + self.window_ns - slack as u64;
        }
        // In the next window, where this window's count weighs as the previous one:
        // w + count × (w − e) ≤ limit × w.
        let slack = match count {
            0 => w,
            c => u128::from(self.limit - 1) * w / u128::from(c),
        };
        start + self.window_ns + (w.saturating_sub(slack)) as u64
    }
}

/// The fields of one budget, before checking.
struct RateFields<'a> {
    /// The config path of the fields, for messages: `""` or `tiers.gold.`.
    path: &'a str,
    /// The tier name in store keys: `*` for the top-level limit.
    scope: &'a str,
    limit: i64,
    window: &'a str,
    burst: Option<i64>,
}

impl RateFields<'_> {
    fn compile(&self, algo: Algorithm, errors: &mut Vec<String>) -> Option<Rate> {
        let path = self.path;
        let before = errors.len();
        if self.limit < 1 {
            errors.push(format!(
                "{path}limit: must be at least 1, got {}",
                self.limit
            ));
        }
        let window_ns = match parse_duration(self.window) {
            Ok(0) => {
                errors.push(format!("{path}window: must be longer than 0"));
                0
            }
            Ok(ns) if ns > MAX_WINDOW_NS => {
                errors.push(format!(
                    "{path}window: `{}` is longer than 24h",
                    self.window
                ));
                0
            }
            Ok(ns) => ns,
            Err(e) => {
                errors.push(format!("{path}window: {e}"));
                0
            }
        };
        let burst = match (self.burst, algo) {
            (Some(_), Algorithm::SlidingWindow) => {
                errors.push(format!(
                    "{path}burst: applies to algorithm = \"token_bucket\" only"
                ));
                0
            }
            (Some(b), _) if b < 1 => {
                errors.push(format!("{path}burst: must be at least 1, got {b}"));
                0
            }
            (burst, _) => burst.unwrap_or(self.limit),
        };
        if errors.len() > before {
            return None;
        }
        let (limit, burst) = (self.limit as u64, burst as u64);
        let interval_ns = window_ns / limit;
        if interval_ns < 1_000 {
            errors.push(format!(
                "{path}limit: {limit} per {} is more than one request per microsecond",
                self.window
            ));
            return None;
        }
        let capacity_ns = burst.saturating_mul(interval_ns);
        if algo == Algorithm::TokenBucket && capacity_ns > MAX_WINDOW_NS {
            errors.push(format!(
                "{path}burst: {burst} requests at {limit} per {} take more than 24h to refill",
                self.window
            ));
            return None;
        }
        let window_ms = window_ns / NANOS_PER_MS;
        let scope = match algo {
            Algorithm::TokenBucket => format!("rl:{}/tb/{limit}/{window_ms}/{burst}", self.scope),
            Algorithm::SlidingWindow => format!("rl:{}/sw/{limit}/{window_ms}", self.scope),
        };
        Some(Rate {
            scope,
            label: format!("{limit} requests per {}", self.window),
            limit,
            window_ns,
            burst: if algo == Algorithm::TokenBucket {
                burst
            } else {
                limit
            },
            interval_ns,
            capacity_ns,
        })
    }
}

/// The compiled `tiers`, and the names given (a tier that failed to compile is known,
/// so naming it elsewhere is not a second error).
struct Tiers<'a> {
    given: &'a BTreeMap<String, TierConfig>,
    rates: BTreeMap<&'a str, Rc<Rate>>,
}

impl<'a> Tiers<'a> {
    fn compile(
        given: &'a BTreeMap<String, TierConfig>,
        algo: Algorithm,
        errors: &mut Vec<String>,
    ) -> Tiers<'a> {
        let mut rates = BTreeMap::new();
        for (name, tier) in given {
            let path = format!("tiers.{name}");
            let valid = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
            if name.is_empty() || name.len() > 64 || !name.bytes().all(valid) {
                errors.push(format!(
                    "{path}: a tier name is 1 to 64 of A-Z, a-z, 0-9, `_` and `-`"
                ));
                continue;
            }
            let (Some(limit), Some(window)) = (tier.limit, tier.window.as_deref()) else {
                for (field, given) in [
                    ("limit", tier.limit.is_some()),
                    ("window", tier.window.is_some()),
                ] {
                    if !given {
                        errors.push(format!("{path}.{field}: missing"));
                    }
                }
                continue;
            };
            let fields = RateFields {
                path: &format!("{path}."),
                scope: name,
                limit,
                window,
                burst: tier.burst,
            };
            if let Some(rate) = fields.compile(algo, errors) {
                rates.insert(name.as_str(), Rc::new(rate));
            }
        }
        Tiers { given, rates }
    }

    /// The tier `name` that config key `key` refers to.
    fn find(&self, key: &str, name: &str, errors: &mut Vec<String>) -> Option<Rc<Rate>> {
        if !self.given.contains_key(name) {
            let known: Vec<&str> = self.given.keys().map(String::as_str).collect();
            let known = if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            };
            errors.push(format!("{key}: no tier named `{name}` (tiers: {known})"));
        }
        self.rates.get(name).cloned()
    }
}

/// The budget of requests without a tier: `default_tier` or the top-level fields.
fn default_rate(
    config: &Config,
    tiers: &Tiers,
    algo: Algorithm,
    errors: &mut Vec<String>,
) -> Option<Rc<Rate>> {
    let top = match (config.limit, config.window.as_deref()) {
        (Some(limit), Some(window)) => {
            let fields = RateFields {
                path: "",
                scope: "*",
                limit,
                window,
                burst: config.burst,
            };
            fields.compile(algo, errors).map(Rc::new)
        }
        (Some(_), None) => {
            errors.push("window: missing (`limit` is given)".into());
            None
        }
        (None, Some(_)) => {
            errors.push("limit: missing (`window` is given)".into());
            None
        }
        (None, None) if config.burst.is_some() => {
            errors.push("burst: given without `limit` and `window`".into());
            None
        }
        (None, None) => None,
    };
    let given_top = config.limit.is_some() || config.window.is_some();
    match (&config.default_tier, given_top) {
        (Some(name), false) => tiers.find("default_tier", name, errors),
        (None, true) => top,
        (Some(_), true) => {
            errors.push(
                "default_tier: give either default_tier or the top-level limit/window, not both"
                    .into(),
            );
            None
        }
        (None, false) => {
            errors.push(
                "limit: missing: give `limit` and `window` (or `default_tier`) for requests \
                 without a tier"
                    .into(),
            );
            None
        }
    }
}

fn key_kind(key: &str, errors: &mut Vec<String>) -> KeyKind {
    match key {
        "consumer" => KeyKind::Consumer,
        "ip" => KeyKind::Ip,
        "route" => KeyKind::Route,
        _ => match key.strip_prefix("header:") {
            Some(name) if is_token(name) && name.len() <= MAX_HEADER_NAME => {
                let name = name.to_ascii_lowercase();
                let kind = format!("header.{name}");
                KeyKind::Header { name, kind }
            }
            Some(name) => {
                errors.push(format!(
                    "key: `{name}` is not a header name (1 to {MAX_HEADER_NAME} of letters, \
                     digits and !#$%&'*+-.^_`|~)"
                ));
                KeyKind::Ip
            }
            None => {
                errors.push(format!(
                    "key: expected \"consumer\", \"ip\", \"route\" or \"header:<name>\", got {key:?}"
                ));
                KeyKind::Ip
            }
        },
    }
}

/// Looks `value` up among `options`; `None` if absent or unknown (then an error).
fn one_of<T: Copy>(
    key: &str,
    value: Option<&str>,
    options: &[(&str, T)],
    errors: &mut Vec<String>,
) -> Option<T> {
    let value = value?;
    let found = options.iter().find(|(name, _)| *name == value);
    if found.is_none() {
        let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
        errors.push(format!(
            "{key}: expected {}, got {value:?}",
            names.join(" or ")
        ));
    }
    found.map(|(_, v)| *v)
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `"500ms"`, `"10s"`, `"1m"`, `"1h"` in nanoseconds.
fn parse_duration(text: &str) -> Result<u64, String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let unit_ns = match unit {
        "ms" => NANOS_PER_MS,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3600 * NANOS_PER_SEC,
        _ => 0,
    };
    number
        .parse::<u64>()
        .ok()
        .filter(|_| unit_ns > 0)
        .and_then(|n| n.checked_mul(unit_ns))
        .ok_or_else(|| {
            format!(
                "`{text}` is not a duration: a whole number and ms, s, m or h \
                 (\"500ms\", \"10s\", \"1m\", \"1h\")"
            )
        })
}

/// An identity as written in store keys: itself when short and printable ASCII,
/// otherwise `#` and its 64-bit FNV-1a hash in hex.
#[cfg(test)]
fn identity(value: &str) -> String {
    let mut s = String::new();
    push_identity(&mut s, value);
    s
}

/// Appends [`identity`]`(value)` to `out`.
fn push_identity(out: &mut String, value: &str) {
    let literal = value.len() <= MAX_LITERAL
        && !value.starts_with('#')
        && value.bytes().all(|b| b.is_ascii_graphic());
    if literal {
        out.push_str(value);
        return;
    }
    let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    out.push('#');
    for shift in (0..16).rev() {
        let nibble = (hash >> (shift * 4)) & 0xf;
        out.push(char::from(b"0123456789abcdef"[nibble as usize]));
    }
}

/// Appends `numbers` in decimal, `sep` between them, to `out`.
fn push_u64s(out: &mut String, sep: char, numbers: impl IntoIterator<Item = u64>) {
    for (i, n) in numbers.into_iter().enumerate() {
        if i > 0 {
            out.push(sep);
        }
        push_u64(out, n);
    }
}

/// Appends `n` in decimal to `out` (`to_string` goes through core::fmt, slow in wasm).
fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// Decodes a stored value of `N` little-endian u64 words.
fn words<const N: usize>(key: &str, stored: Option<&[u8]>) -> Result<Option<[u64; N]>, StoreError> {
    let Some(bytes) = stored else {
        return Ok(None);
    };
    if bytes.len() != 8 * N {
        return Err(StoreError::Corrupt(format!(
            "`{key}` holds {} bytes, expected {}",
            bytes.len(),
            8 * N
        )));
    }
    let mut out = [0u64; N];
    for (word, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut le = [0u8; 8];
        le.copy_from_slice(chunk);
        *word = u64::from_le_bytes(le);
    }
    Ok(Some(out))
}

fn now_ns(req: &dyn RequestInfo) -> u64 {
    req.now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Whole seconds from `now` to `at`, rounded up, at least 1.
fn secs_until(at: u64, now: u64) -> u64 {
    at.saturating_sub(now).div_ceil(NANOS_PER_SEC).max(1)
}

/// Logs a warning at most once per second (per VM), counting the ones left out.
#[derive(Debug)]
struct WarnGate {
    last_second: AtomicU64,
    skipped: AtomicU64,
}

impl Default for WarnGate {
    fn default() -> Self {
        WarnGate {
            last_second: AtomicU64::new(u64::MAX),
            skipped: AtomicU64::new(0),
        }
    }
}

impl WarnGate {
    fn warn(&self, now: u64, message: impl FnOnce() -> String) {
        let second = now / NANOS_PER_SEC;
        if self.last_second.swap(second, Ordering::Relaxed) == second {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.skipped.swap(0, Ordering::Relaxed) {
            0 => log::warn!("{}", message()),
            n => log::warn!("{} ({n} more since the last warning)", message()),
        }
    }
}

#[cfg(test)]
mod tests;
