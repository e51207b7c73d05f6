//! Counters a policy exports on the gateway's `/metrics`.
//!
//! A [`Counter`] is a named, monotonically increasing count. In the gateway it is a
//! proxy-wasm metric (`proxy_define_metric` with the counter type, then
//! `proxy_increment_metric`): Weir sums it over every VM of the plugin and exports it
//! as `weir_plugin_counter{plugin="<[[plugins]] name>",name="<counter name>"}`.
//! Natively (in tests) it counts in memory, per thread: read it with [`recorded`].
//!
//! proxy-wasm metrics have no labels, so a dimension goes in the name, and only a
//! bounded one: `key_auth_rejected_missing_total` and `key_auth_rejected_invalid_total`,
//! never a name per consumer or per client. Names are `lower_snake_case` (see
//! [`Counter::new`]); end counters with `_total`, as Prometheus does.
//!
//! ```
//! use weir_plugin_sdk::metrics::{self, Counter};
//!
//! // A static: defined with the host once per VM, on first use.
//! static ALLOWED: Counter = Counter::new("demo_allowed_total");
//!
//! ALLOWED.inc();
//! ALLOWED.add(2);
//! assert_eq!(metrics::recorded("demo_allowed_total"), 3);
//! ```

use std::borrow::Cow;

/// The longest metric name accepted (the gateway takes up to 200 bytes).
pub const MAX_NAME_LEN: usize = 128;

/// A counter exported by the host; cheap to increment, never decreases.
///
/// The host-side metric is defined on the first [`add`](Counter::add) (not when the
/// counter is built, so a `static` costs nothing until used) and its id is cached for
/// the life of the VM. If the host refuses the definition (Weir caps a plugin at 1,000
/// metrics), that is logged once at warn level and the counter counts nothing: a
/// metric never fails or traps a request.
#[derive(Debug)]
pub struct Counter {
    name: Cow<'static, str>,
    /// The host's id: unset until first use, `None` if the host refused it.
    #[cfg(target_arch = "wasm32")]
    id: std::sync::OnceLock<Option<u32>>,
}

impl Counter {
    /// A counter named `name`, for a `static` or a `const`.
    ///
    /// # Panics
    /// If `name` is not `lower_snake_case`: 1 to [`MAX_NAME_LEN`] bytes of `a-z`, `0-9`
    /// and `_`, starting with a letter, with no `__` and no trailing `_`. In a `static`
    /// that is a compile-time error; use [`try_new`](Counter::try_new) for names built
    /// from a config.
    ///
    /// ```compile_fail
    /// static BAD: weir_plugin_sdk::metrics::Counter =
    ///     weir_plugin_sdk::metrics::Counter::new("Bad-Name");
    /// ```
    pub const fn new(name: &'static str) -> Counter {
        assert!(
            valid_name(name),
            "metric names are lower_snake_case: a-z, 0-9 and `_`, starting with a letter, \
             no `__` or trailing `_`, at most 128 bytes"
        );
        Counter {
            name: Cow::Borrowed(name),
            #[cfg(target_arch = "wasm32")]
            id: std::sync::OnceLock::new(),
        }
    }

    /// A counter named `name`, or an error naming it if it is not `lower_snake_case`
    /// (the rules of [`new`](Counter::new)); meant for [`Policy::new`](crate::Policy::new).
    ///
    /// ```
    /// # use weir_plugin_sdk::metrics::Counter;
    /// assert!(Counter::try_new(format!("route_{}_total", 7)).is_ok());
    /// assert!(Counter::try_new("route-7").unwrap_err().contains("`route-7`"));
    /// ```
    pub fn try_new(name: impl Into<Cow<'static, str>>) -> Result<Counter, String> {
        let name = name.into();
        if !valid_name(&name) {
            return Err(format!(
                "`{name}` is not a valid metric name: use lower_snake_case (a-z, 0-9 and `_`, \
                 starting with a letter, no `__` or trailing `_`), at most {MAX_NAME_LEN} bytes"
            ));
        }
        Ok(Counter {
            name,
            #[cfg(target_arch = "wasm32")]
            id: std::sync::OnceLock::new(),
        })
    }

    /// The counter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n` (more than `i64::MAX` at once is counted as `i64::MAX`; 0 does nothing).
    pub fn add(&self, n: u64) {
        if n == 0 {
            return;
        }
        let delta = i64::try_from(n).unwrap_or(i64::MAX);
        #[cfg(target_arch = "wasm32")]
        if let Some(id) = *self.id.get_or_init(|| host::define_counter(&self.name)) {
            host::increment(id, delta);
        }
        #[cfg(not(target_arch = "wasm32"))]
        native::add(&self.name, delta);
    }
}

/// The `lower_snake_case` rule of [`Counter::new`], usable in a `const fn`.
const fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > MAX_NAME_LEN || !b[0].is_ascii_lowercase() {
        return false;
    }
    if b[b.len() - 1] == b'_' {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_') {
            return false;
        }
        if c == b'_' && i > 0 && b[i - 1] == b'_' {
            return false;
        }
        i += 1;
    }
    true
}

/// The proxy-wasm calls behind [`Counter`].
#[cfg(target_arch = "wasm32")]
mod host {
    use crate::abi;

    /// proxy-wasm's `MetricType::Counter`.
    const COUNTER: u32 = 0;

    /// Weir answers `BadArgument` once a plugin has 1,000 metrics: that becomes a
    /// logged, uncounted metric.
    pub(super) fn define_counter(name: &str) -> Option<u32> {
        match abi::define_metric(COUNTER, name) {
            Ok(id) => Some(id),
            Err(status) => {
                log::warn!("metric `{name}` refused by the host (status {status}): not counted");
                None
            }
        }
    }

    pub(super) fn increment(id: u32, delta: i64) {
        // Fails only if the host forgot the id (NotFound) or it is not a counter: a
        // lost count, nothing to do about it on the request path.
        let _ = abi::increment_metric(id, delta);
    }
}

/// The in-memory registry behind [`Counter`] outside wasm.
#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    thread_local! {
        pub(super) static RECORDED: RefCell<BTreeMap<String, i64>> =
            const { RefCell::new(BTreeMap::new()) };
    }

    pub(super) fn add(name: &str, delta: i64) {
        RECORDED.with_borrow_mut(|counts| {
            let count = counts.entry(name.to_string()).or_default();
            *count = count.saturating_add(delta);
        });
    }
}

/// Natively: what the counter `name` has counted on this thread (0 if never
/// incremented). Not on wasm32, where the host owns the values.
///
/// Counts are per thread so that tests, which `cargo test` runs in parallel threads,
/// do not see each other's: compare before and after, or [`reset_recorded`] first, if
/// a thread runs several tests.
#[cfg(not(target_arch = "wasm32"))]
pub fn recorded(name: &str) -> i64 {
    native::RECORDED.with_borrow(|counts| counts.get(name).copied().unwrap_or(0))
}

/// Natively: forgets every count of this thread (see [`recorded`]).
#[cfg(not(target_arch = "wasm32"))]
pub fn reset_recorded() {
    native::RECORDED.with_borrow_mut(|counts| counts.clear());
}

#[cfg(test)]
mod tests {
    use super::*;

    static HITS: Counter = Counter::new("test_hits_total");

    #[test]
    fn counts_per_name_and_saturates() {
        reset_recorded();
        HITS.inc();
        HITS.add(4);
        HITS.add(0);
        assert_eq!(recorded("test_hits_total"), 5);
        // A second counter of the same name adds to the same count, as on the host.
        Counter::new("test_hits_total").inc();
        assert_eq!(recorded("test_hits_total"), 6);
        assert_eq!(recorded("test_other_total"), 0);
        let big = Counter::try_new("test_big_total").unwrap();
        big.add(u64::MAX);
        big.add(1);
        assert_eq!(recorded("test_big_total"), i64::MAX);
        reset_recorded();
        assert_eq!(recorded("test_hits_total"), 0);
    }

    #[test]
    fn counts_are_per_thread() {
        reset_recorded();
        HITS.inc();
        std::thread::spawn(|| {
            assert_eq!(recorded("test_hits_total"), 0);
            HITS.add(10);
        })
        .join()
        .unwrap();
        assert_eq!(recorded("test_hits_total"), 1);
    }

    #[test]
    fn names_are_lower_snake_case() {
        for good in [
            "a",
            "key_auth_allowed_total",
            "x9",
            "a_1_b",
            &"a".repeat(128),
        ] {
            assert!(valid_name(good), "{good}");
            assert_eq!(Counter::try_new(good.to_string()).unwrap().name(), good);
        }
        for bad in [
            "",
            "Key",
            "key-auth",
            "_a",
            "a_",
            "a__b",
            "9a",
            "a b",
            "a.b",
            "é",
            "a\n",
            &"a".repeat(129),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
            let err = Counter::try_new(bad.to_string()).unwrap_err();
            assert!(err.contains("lower_snake_case"), "{err}");
        }
    }

    #[test]
    #[should_panic(expected = "metric names are lower_snake_case")]
    fn new_panics_on_a_bad_name_at_run_time() {
        let name = String::from("Bad");
        // Leaked so it is 'static, as a runtime-built name would have to be.
        let _ = Counter::new(Box::leak(name.into_boxed_str()));
    }
}
