//! Counters and other state shared between requests, VMs and (later) gateways.

use std::fmt;
use std::time::Duration;

/// Asks the host to drop a key of this plugin's shared store once it has gone `ttl`
/// without a write: for state that means nothing after a while (a rate limit's budget
/// once it is full again), so clients seen once do not hold store room for ever.
/// proxy-wasm's shared data never expires on its own; this is Weir's extension
/// (`weir.shared_data_ttl`). It applies to every key of the plugin, from every VM;
/// call it when the policy starts ([`Policy::new`](crate::Policy::new)). `false` on a
/// host without the extension, where keys live for ever. Natively it only records
/// `ttl`, for [`requested_ttl`].
pub fn expire_idle_keys(ttl: Duration) -> bool {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    #[cfg(target_arch = "wasm32")]
    {
        crate::abi::call_foreign("weir.shared_data_ttl", &ms.to_le_bytes()).is_ok()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        REQUESTED_TTL.set(Some(Duration::from_millis(ms)));
        true
    }
}

#[cfg(not(target_arch = "wasm32"))]
thread_local! {
    static REQUESTED_TTL: std::cell::Cell<Option<Duration>> = const { std::cell::Cell::new(None) };
}

/// Natively: the last `ttl` this thread gave [`expire_idle_keys`], if any.
#[cfg(not(target_arch = "wasm32"))]
pub fn requested_ttl() -> Option<Duration> {
    REQUESTED_TTL.get()
}

/// A value in a [`SharedStore`] with the version it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// The version to hand back to [`SharedStore::compare_and_swap`]; it changes on
    /// every write.
    pub cas: u32,
}

/// Why a [`SharedStore`] operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The key changed (or appeared) since it was read: read it again and retry.
    CasMismatch,
    /// [`SharedStore::increment`] lost the race too many times in a row.
    Contended,
    /// The stored value is not what the operation expects (e.g. not an 8-byte counter).
    Corrupt(String),
    /// The store could not be reached or refused the operation.
    Unavailable(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::CasMismatch => f.write_str("value changed since it was read"),
            StoreError::Contended => f.write_str("too many concurrent writers, gave up"),
            StoreError::Corrupt(why) => write!(f, "unexpected stored value: {why}"),
            StoreError::Unavailable(why) => write!(f, "store unavailable: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// How many times [`SharedStore::increment`] re-reads after losing a race.
pub const INCREMENT_ATTEMPTS: usize = 16;

/// A key-value store with compare-and-swap, shared by every request and every VM of a
/// plugin: what rate-limit counters are built on.
///
/// In the gateway it is proxy-wasm shared data (`proxy_get_shared_data` /
/// `proxy_set_shared_data`), shared by the worker threads of one process; in tests it
/// is [`testing::MockStore`](crate::testing::MockStore). Policies take it as
/// `&dyn SharedStore` (from [`RequestInfo::store`](crate::RequestInfo::store)), so a
/// cluster-wide implementation (a host extension over `proxy_call_foreign_function`)
/// can slot in without changing them.
///
/// Keys are plain strings; prefix them with the policy's name and whatever makes them
/// unique (`rate-limit:alice:28374511`). Nothing expires on its own: put the time
/// window in the key and let old keys be.
pub trait SharedStore {
    /// The current value and its version, `None` if the key is absent.
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;

    /// Writes `value` if the key is still at version `expected` (the [`Entry::cas`]
    /// read by [`get`](SharedStore::get)), or, with `None`, if the key is still absent;
    /// [`StoreError::CasMismatch`] otherwise.
    ///
    /// proxy-wasm cannot express "still absent", so with `None` its store writes
    /// unconditionally: two first writers of a fresh key may both succeed, and one
    /// increment can be lost in that instant. Later writes are exact.
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u32>,
        value: &[u8],
    ) -> Result<(), StoreError>;

    /// Writes `value` whatever the key holds.
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;

    /// Atomically adds `delta` to the counter at `key` (absent counts as 0) and returns
    /// the new value; retries on [`StoreError::CasMismatch`] up to
    /// [`INCREMENT_ATTEMPTS`] times, then fails with [`StoreError::Contended`].
    ///
    /// Counters are stored as 8 bytes, little-endian `i64` (read them with
    /// [`counter`](SharedStore::counter)); the sum saturates. A value of another length
    /// fails with [`StoreError::Corrupt`].
    fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        for _ in 0..INCREMENT_ATTEMPTS {
            let current = self.get(key)?;
            let (old, expected) = match &current {
                Some(e) => (decode_counter(key, &e.value)?, Some(e.cas)),
                None => (0, None),
            };
            let new = old.saturating_add(delta);
            match self.compare_and_swap(key, expected, &new.to_le_bytes()) {
                Ok(()) => return Ok(new),
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Contended)
    }

    /// The counter at `key` as written by [`increment`](SharedStore::increment); 0 if
    /// absent.
    fn counter(&self, key: &str) -> Result<i64, StoreError> {
        match self.get(key)? {
            Some(e) => decode_counter(key, &e.value),
            None => Ok(0),
        }
    }
}

fn decode_counter(key: &str, bytes: &[u8]) -> Result<i64, StoreError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| {
        StoreError::Corrupt(format!(
            "`{key}` holds {} bytes, a counter has 8",
            bytes.len()
        ))
    })?;
    Ok(i64::from_le_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MockStore;
    use std::cell::Cell;

    #[test]
    fn increment_counts_and_reads_back() {
        let s = MockStore::new();
        assert_eq!(s.counter("k").unwrap(), 0);
        assert_eq!(s.increment("k", 1).unwrap(), 1);
        assert_eq!(s.increment("k", 5).unwrap(), 6);
        assert_eq!(s.increment("k", -2).unwrap(), 4);
        assert_eq!(s.counter("k").unwrap(), 4);
        s.set("bad", b"x").unwrap();
        assert!(matches!(s.increment("bad", 1), Err(StoreError::Corrupt(_))));
    }

    /// A store that loses the race `losses` times before letting a write through.
    struct Racy {
        inner: MockStore,
        losses: Cell<usize>,
    }
    impl SharedStore for Racy {
        fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
            self.inner.get(key)
        }
        fn compare_and_swap(&self, k: &str, e: Option<u32>, v: &[u8]) -> Result<(), StoreError> {
            if self.losses.get() > 0 {
                self.losses.set(self.losses.get() - 1);
                // Someone else wrote in between.
                self.inner.increment(k, 10)?;
            }
            self.inner.compare_and_swap(k, e, v)
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            self.inner.set(key, value)
        }
    }

    #[test]
    fn increment_retries_on_cas_mismatch_then_gives_up() {
        let racy = Racy {
            inner: MockStore::new(),
            losses: Cell::new(3),
        };
        assert_eq!(racy.increment("k", 1).unwrap(), 31);
        racy.losses.set(INCREMENT_ATTEMPTS);
        assert_eq!(racy.increment("k", 1), Err(StoreError::Contended));
    }
}
