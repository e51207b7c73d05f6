//! State shared across VMs and worker threads: shared data (with compare-and-swap) and
//! plugin-defined metrics.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use super::abi::Status;
use crate::metrics::{Histogram, PLUGIN_BUCKETS};

/// `proxy_get_shared_data` / `proxy_set_shared_data`: one key space per plugin name
/// (the plugin's "vm id"), shared by all its VMs; every write bumps the key's CAS. Also
/// holds the other state plugins share across VMs: queues and counters.
#[derive(Default)]
pub struct SharedData {
    map: RwLock<KeySpaces<Entry>>,
    /// How long a key of a plugin's space lives after its last write, for the plugins
    /// that asked (`weir.shared_data_ttl`), and when the space is swept next; the
    /// others' keys live for ever, as in proxy-wasm.
    idle_ttl: Mutex<HashMap<Arc<str>, IdleTtl>>,
    pub queues: SharedQueues,
    pub counters: Counters,
}

/// A plugin's idle lifetime for its shared-data keys.
struct IdleTtl {
    ttl: Duration,
    /// When its space is swept next; `None`: at the next sweep.
    next_sweep: Option<Instant>,
}

/// A shared-data value, its CAS, and when it was last written.
struct Entry {
    value: Vec<u8>,
    cas: u32,
    written: Instant,
}

/// Values by plugin name, then by key: the key spaces of shared data and counters.
/// Looked up by borrowed name and key, so a get or set allocates nothing (storing a new
/// key copies it). Keys are the plugins' to choose, often from client input (rate-limit
/// keys by header value): the hasher is seeded at random per map, and much cheaper than
/// SipHash on short keys.
struct KeySpaces<V> {
    by_plugin: HashMap<Arc<str>, Space<V>, Hasher>,
    /// Keys of all spaces, bounded by `MAX_SHARED_KEYS`.
    keys: usize,
}

type Space<V> = HashMap<Box<[u8]>, V, Hasher>;
type Hasher = foldhash::fast::RandomState;

impl<V> Default for KeySpaces<V> {
    fn default() -> Self {
        KeySpaces {
            by_plugin: HashMap::default(),
            keys: 0,
        }
    }
}

impl<V> KeySpaces<V> {
    fn get(&self, ns: &str, key: &[u8]) -> Option<&V> {
        self.by_plugin.get(ns)?.get(key)
    }

    fn get_mut(&mut self, ns: &str, key: &[u8]) -> Option<&mut V> {
        self.by_plugin.get_mut(ns)?.get_mut(key)
    }

    /// Stores a key that is not there yet; false when the spaces are full.
    fn insert_new(&mut self, ns: &Arc<str>, key: &[u8], value: V) -> bool {
        if self.keys >= MAX_SHARED_KEYS {
            return false;
        }
        self.keys += 1;
        self.by_plugin
            .entry(ns.clone())
            .or_default()
            .insert(key.into(), value);
        true
    }

    /// Keeps the values of space `ns` that `keep` says to.
    fn retain_in(&mut self, ns: &str, mut keep: impl FnMut(&V) -> bool) {
        let Some(space) = self.by_plugin.get_mut(ns) else {
            return;
        };
        let before = space.len();
        space.retain(|_, v| keep(v));
        self.keys -= before - space.len();
        if space.is_empty() {
            self.by_plugin.remove(ns);
        }
    }

    /// Keys by plugin name.
    fn counts(&self) -> Vec<(Arc<str>, usize)> {
        self.by_plugin
            .iter()
            .map(|(ns, space)| (ns.clone(), space.len()))
            .collect()
    }

    /// Keeps the values `keep` says to, dropping emptied spaces.
    fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        let mut keys = 0;
        for space in self.by_plugin.values_mut() {
            space.retain(|_, v| keep(v));
            keys += space.len();
        }
        self.by_plugin.retain(|_, space| !space.is_empty());
        self.keys = keys;
    }
}

/// (plugin name, key): the key of queues.
type SharedKey = (Arc<str>, Vec<u8>);

/// Keys beyond this are refused, so a plugin cannot grow host memory without bound.
const MAX_SHARED_KEYS: usize = 100_000;

impl SharedData {
    pub fn get(&self, ns: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.map
            .read()
            .get(ns, key)
            .map(|e| (e.value.clone(), e.cas))
    }

    /// Stores `value` if `cas` is 0 or matches the current CAS.
    pub fn set(&self, ns: &Arc<str>, key: &[u8], value: &[u8], cas: u32) -> Status {
        self.set_at(ns, key, value, cas, Instant::now())
    }

    /// [`Self::set`], written at `now`.
    fn set_at(&self, ns: &Arc<str>, key: &[u8], value: &[u8], cas: u32, now: Instant) -> Status {
        let mut map = self.map.write();
        if let Some(e) = map.get_mut(ns, key) {
            if cas != 0 && cas != e.cas {
                return Status::CasMismatch;
            }
            e.value.clear();
            e.value.extend_from_slice(value);
            e.cas = e.cas.wrapping_add(1).max(1);
            e.written = now;
            return Status::Ok;
        }
        if cas != 0 {
            return Status::CasMismatch;
        }
        let entry = Entry {
            value: value.to_vec(),
            cas: 1,
            written: now,
        };
        if !map.insert_new(ns, key, entry) {
            return Status::InternalFailure;
        }
        Status::Ok
    }

    /// Keys of `ns` not written for `ttl` are dropped from now on (by [`Self::sweep`]);
    /// `None`: they live for ever (the default).
    pub fn set_idle_ttl(&self, ns: &Arc<str>, ttl: Option<Duration>) {
        let mut ttls = self.idle_ttl.lock();
        match ttl {
            Some(ttl) => ttls.insert(
                ns.clone(),
                IdleTtl {
                    ttl,
                    next_sweep: None,
                },
            ),
            None => ttls.remove(ns),
        };
    }

    /// Drops the keys that outlived their space's idle lifetime. Called every second,
    /// off the request path; a space is swept every eighth of its lifetime (at least a
    /// second apart), each time one pass over its keys under the write lock, so a key
    /// goes at most that much after it expired.
    pub fn sweep(&self, now: Instant) {
        let due: Vec<(Arc<str>, Duration)> = self
            .idle_ttl
            .lock()
            .iter_mut()
            .filter(|(_, t)| t.next_sweep.is_none_or(|n| now >= n))
            .map(|(ns, t)| {
                t.next_sweep = Some(now + (t.ttl / 8).max(Duration::from_secs(1)));
                (ns.clone(), t.ttl)
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let mut map = self.map.write();
        for (ns, ttl) in due {
            map.retain_in(&ns, |e| now.saturating_duration_since(e.written) < ttl);
        }
    }

    /// Keys by plugin name.
    fn key_counts(&self) -> Vec<(Arc<str>, usize)> {
        self.map.read().counts()
    }

    /// `weir_plugin_shared_data_keys{plugin}`: how full each plugin's store is (the
    /// process holds at most 100,000 keys).
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP weir_plugin_shared_data_keys Keys in each plugin's shared data (at most 100000 in all).\n# TYPE weir_plugin_shared_data_keys gauge\n");
        let mut counts = self.key_counts();
        counts.sort();
        for (plugin, n) in counts {
            let _ = writeln!(
                out,
                "weir_plugin_shared_data_keys{{plugin=\"{plugin}\"}} {n}"
            );
        }
    }
}

/// A metric a plugin defined.
pub struct PluginMetric {
    pub plugin: Arc<str>,
    pub name: String,
    pub kind: i32,
    pub value: AtomicI64,
    /// For histograms: observations and their sum.
    pub count: AtomicU64,
}

/// Plugin-defined metrics and the host's per-plugin counters, rendered on /metrics.
#[derive(Default)]
pub struct PluginMetrics {
    defined: RwLock<Vec<Arc<PluginMetric>>>,
    by_name: Mutex<HashMap<(Arc<str>, String), u32>>,
    /// Per-plugin call and error counters, by plugin name; kept across reloads.
    stats: Mutex<BTreeMap<String, Arc<PluginStats>>>,
}

/// Phases counted per plugin.
pub const PHASES: [&str; 6] = [
    "request_headers",
    "request_body",
    "response_headers",
    "response_body",
    "log",
    "timers",
];
/// Indexes into [`PHASES`].
pub const PHASE_REQUEST_HEADERS: usize = 0;
pub const PHASE_REQUEST_BODY: usize = 1;
pub const PHASE_RESPONSE_HEADERS: usize = 2;
pub const PHASE_RESPONSE_BODY: usize = 3;
pub const PHASE_LOG: usize = 4;
/// `on_tick` and `on_queue_ready`.
pub const PHASE_TIMERS: usize = 5;
/// Failure kinds counted per plugin.
pub const ERROR_KINDS: [&str; 4] = ["trap", "timeout", "memory", "instantiate"];

/// Lock-free counters of one plugin, held by its [`super::Plugin`].
pub struct PluginStats {
    /// Callback durations by phase.
    calls: [Histogram; PHASES.len()],
    errors: [AtomicU64; ERROR_KINDS.len()],
}

impl Default for PluginStats {
    fn default() -> Self {
        PluginStats {
            calls: std::array::from_fn(|_| Histogram::with_buckets(&PLUGIN_BUCKETS)),
            errors: Default::default(),
        }
    }
}

impl PluginStats {
    pub fn count_call(&self, phase: usize, took: std::time::Duration) {
        self.calls[phase].observe(took);
    }

    pub fn count_error(&self, kind: usize) {
        self.errors[kind].fetch_add(1, Ordering::Relaxed);
    }
}

/// Metrics per plugin are capped so a plugin cannot flood the exposition.
const MAX_METRICS_PER_PLUGIN: usize = 1_000;

impl PluginMetrics {
    /// Defines (or finds) a metric; the id is stable for the process.
    pub fn define(&self, plugin: &Arc<str>, kind: i32, name: &str) -> Result<u32, Status> {
        let mut by_name = self.by_name.lock();
        if let Some(id) = by_name.get(&(plugin.clone(), name.to_string())) {
            return Ok(*id);
        }
        let mine = by_name.keys().filter(|(p, _)| p == plugin).count();
        if mine >= MAX_METRICS_PER_PLUGIN || name.is_empty() || name.len() > 200 {
            return Err(Status::BadArgument);
        }
        let mut defined = self.defined.write();
        let id = defined.len() as u32;
        defined.push(Arc::new(PluginMetric {
            plugin: plugin.clone(),
            name: name.to_string(),
            kind,
            value: AtomicI64::new(0),
            count: AtomicU64::new(0),
        }));
        by_name.insert((plugin.clone(), name.to_string()), id);
        Ok(id)
    }

    /// The metric `id` if it belongs to `plugin` (a plugin cannot touch another's).
    pub fn get(&self, plugin: &Arc<str>, id: u32) -> Option<Arc<PluginMetric>> {
        self.defined
            .read()
            .get(id as usize)
            .filter(|m| &m.plugin == plugin)
            .cloned()
    }

    /// The counters of a plugin, created on first use (plugin load, off the request path).
    pub fn stats(&self, plugin: &str) -> Arc<PluginStats> {
        self.stats
            .lock()
            .entry(plugin.to_string())
            .or_default()
            .clone()
    }

    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP weir_plugin_errors_total Plugin failures by kind (trap, timeout, memory, instantiate).\n# TYPE weir_plugin_errors_total counter\n");
        let stats = self.stats.lock().clone();
        for (plugin, s) in &stats {
            for (i, kind) in ERROR_KINDS.iter().enumerate() {
                let n = s.errors[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "weir_plugin_errors_total{{plugin=\"{plugin}\",kind=\"{kind}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP weir_plugin_call_duration_seconds Plugin callbacks by phase, with the time spent in them.\n# TYPE weir_plugin_call_duration_seconds histogram\n");
        for (plugin, s) in &stats {
            for (i, phase) in PHASES.iter().enumerate() {
                s.calls[i].render(
                    out,
                    "weir_plugin_call_duration_seconds",
                    &format!("plugin=\"{plugin}\",phase=\"{phase}\""),
                );
            }
        }
        let defined = self.defined.read();
        for (family, kind, help) in [
            ("weir_plugin_counter", super::abi::METRIC_COUNTER, "counter"),
            ("weir_plugin_gauge", super::abi::METRIC_GAUGE, "gauge"),
        ] {
            let _ = writeln!(
                out,
                "# HELP {family} Metrics defined by plugins.\n# TYPE {family} {help}"
            );
            for m in defined.iter().filter(|m| m.kind == kind) {
                let _ = writeln!(
                    out,
                    "{family}{{plugin=\"{}\",name=\"{}\"}} {}",
                    m.plugin,
                    m.name.replace('\\', "\\\\").replace('"', "\\\""),
                    m.value.load(Ordering::Relaxed)
                );
            }
        }
    }
}

/// Shared queues (`proxy_register_shared_queue` and friends): registered by name in the
/// registering plugin's namespace, found by any plugin with `proxy_resolve_shared_queue`
/// (plugin name + queue name), fed by any, and drained by the owner, whose
/// `proxy_on_queue_ready` the plugin timer calls after items arrive.
#[derive(Default)]
pub struct SharedQueues {
    inner: Mutex<Queues>,
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<SharedKey, u32>,
    /// Queue `id` is at index `id - 1`.
    queues: Vec<Queue>,
}

struct Queue {
    owner: Arc<str>,
    items: std::collections::VecDeque<Vec<u8>>,
    /// Items arrived since the owner was last told.
    notify: bool,
    /// Items dropped because the queue was full.
    dropped: u64,
}

/// Bounds, so plugins cannot grow host memory without limit.
const MAX_QUEUES: usize = 1_000;
const MAX_QUEUE_ITEMS: usize = 10_000;
pub const MAX_QUEUE_ITEM_BYTES: usize = 1024 * 1024;

impl SharedQueues {
    /// The id of `owner`'s queue `name`, created on first registration.
    pub fn register(&self, owner: &Arc<str>, name: &[u8]) -> Result<u32, Status> {
        let mut q = self.inner.lock();
        if let Some(&id) = q.by_name.get(&(owner.clone(), name.to_vec())) {
            return Ok(id);
        }
        if q.queues.len() >= MAX_QUEUES {
            return Err(Status::InternalFailure);
        }
        q.queues.push(Queue {
            owner: owner.clone(),
            items: Default::default(),
            notify: false,
            dropped: 0,
        });
        let id = q.queues.len() as u32;
        q.by_name.insert((owner.clone(), name.to_vec()), id);
        Ok(id)
    }

    /// The id of the queue `name` registered by plugin `owner`.
    pub fn resolve(&self, owner: &[u8], name: &[u8]) -> Option<u32> {
        let owner: Arc<str> = String::from_utf8_lossy(owner).into();
        self.inner
            .lock()
            .by_name
            .get(&(owner, name.to_vec()))
            .copied()
    }

    /// Appends an item; a full queue drops its oldest item (counted in the log).
    pub fn enqueue(&self, id: u32, item: Vec<u8>) -> Status {
        let mut q = self.inner.lock();
        let Some(queue) = q.queues.get_mut((id as usize).wrapping_sub(1)) else {
            return Status::NotFound;
        };
        if queue.items.len() >= MAX_QUEUE_ITEMS {
            queue.items.pop_front();
            queue.dropped += 1;
            // Logged at 1, 2, 4, 8... drops: visible, never a flood.
            if queue.dropped.is_power_of_two() {
                tracing::warn!(
                    plugin = &*queue.owner,
                    queue = id,
                    dropped = queue.dropped,
                    "shared queue full: oldest items dropped"
                );
            }
        }
        queue.items.push_back(item);
        queue.notify = true;
        Status::Ok
    }

    /// The oldest item: `Ok(None)` when the queue is empty, `NotFound` for an unknown id.
    pub fn dequeue(&self, id: u32) -> Result<Option<Vec<u8>>, Status> {
        let mut q = self.inner.lock();
        let queue = q
            .queues
            .get_mut((id as usize).wrapping_sub(1))
            .ok_or(Status::NotFound)?;
        Ok(queue.items.pop_front())
    }

    /// Queues of `owner` that received items since the last call (the owner is told
    /// once per arrival burst, as Envoy posts one `on_queue_ready` per enqueue batch).
    pub fn take_ready(&self, owner: &str) -> Vec<u32> {
        let mut q = self.inner.lock();
        let mut ready = Vec::new();
        for (i, queue) in q.queues.iter_mut().enumerate() {
            if queue.notify && &*queue.owner == owner {
                queue.notify = false;
                ready.push(i as u32 + 1);
            }
        }
        ready
    }
}

/// A counter's value and expiry.
type Counter = (i64, Option<std::time::Instant>);

/// Counters behind the `weir.counter_add` foreign function: atomic adds (no
/// compare-and-swap loop in the plugin) with an optional time to live, so fixed-window
/// counters expire by themselves. One key space per plugin name.
#[derive(Default)]
pub struct Counters {
    map: Mutex<KeySpaces<Counter>>,
}

impl Counters {
    /// Adds `delta` to the counter (absent or expired counts as 0; a new counter lives
    /// `ttl` from now, `None` for ever) and returns the new value (saturating).
    pub fn add(
        &self,
        ns: &Arc<str>,
        key: &[u8],
        delta: i64,
        ttl: Option<std::time::Duration>,
        now: std::time::Instant,
    ) -> Result<i64, Status> {
        let mut map = self.map.lock();
        if let Some(entry) = map.get_mut(ns, key) {
            if entry.1.is_some_and(|e| now >= e) {
                // Expired: starts again from 0, with a new lifetime.
                *entry = (0, ttl.map(|t| now + t));
            }
            entry.0 = entry.0.saturating_add(delta);
            return Ok(entry.0);
        }
        let new = (delta, ttl.map(|t| now + t));
        if !map.insert_new(ns, key, new) {
            Self::sweep_locked(&mut map, now);
            if !map.insert_new(ns, key, new) {
                return Err(Status::InternalFailure);
            }
        }
        Ok(delta)
    }

    /// Drops expired counters.
    pub fn sweep(&self, now: std::time::Instant) {
        Self::sweep_locked(&mut self.map.lock(), now);
    }

    fn sweep_locked(map: &mut KeySpaces<Counter>, now: std::time::Instant) {
        map.retain(|(_, exp)| exp.is_none_or(|e| now < e));
    }
}

#[cfg(test)]
mod queue_and_counter_tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn queues_register_resolve_and_drain_in_order() {
        let q = SharedQueues::default();
        let a: Arc<str> = "a".into();
        let id = q.register(&a, b"jobs").unwrap();
        assert_eq!(q.register(&a, b"jobs").unwrap(), id, "registering again");
        assert_ne!(q.register(&"b".into(), b"jobs").unwrap(), id, "per owner");
        assert_eq!(q.resolve(b"a", b"jobs"), Some(id));
        assert_eq!(q.resolve(b"a", b"other"), None);
        assert_eq!(q.enqueue(99, b"x".to_vec()), Status::NotFound);
        assert_eq!(q.dequeue(0), Err(Status::NotFound));
        assert!(q.take_ready("a").is_empty());
        q.enqueue(id, b"1".to_vec());
        q.enqueue(id, b"2".to_vec());
        assert_eq!(q.take_ready("a"), vec![id]);
        assert!(q.take_ready("a").is_empty(), "told once per burst");
        assert!(q.take_ready("b").is_empty());
        assert_eq!(q.dequeue(id), Ok(Some(b"1".to_vec())));
        assert_eq!(q.dequeue(id), Ok(Some(b"2".to_vec())));
        assert_eq!(q.dequeue(id), Ok(None));
    }

    #[test]
    fn a_full_queue_drops_its_oldest_item() {
        let q = SharedQueues::default();
        let id = q.register(&"a".into(), b"q").unwrap();
        for i in 0..=MAX_QUEUE_ITEMS {
            assert_eq!(q.enqueue(id, i.to_string().into_bytes()), Status::Ok);
        }
        assert_eq!(q.dequeue(id), Ok(Some(b"1".to_vec())));
    }

    #[test]
    fn counters_are_bounded_and_expired_ones_make_room() {
        let c = Counters::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let t0 = Instant::now();
        let ttl = Some(Duration::from_secs(1));
        for i in 0..MAX_SHARED_KEYS {
            let ns = if i % 2 == 0 { &a } else { &b };
            assert_eq!(c.add(ns, &i.to_le_bytes(), 1, ttl, t0), Ok(1));
        }
        // Full: an existing counter still counts, a new one is refused while all live.
        assert_eq!(c.add(&a, &0usize.to_le_bytes(), 1, ttl, t0), Ok(2));
        assert_eq!(c.add(&a, b"new", 1, None, t0), Err(Status::InternalFailure));
        // Once they expired, the next new counter sweeps them and fits.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(c.add(&b, b"new", 5, None, later), Ok(5));
        assert_eq!(c.add(&b, b"new", 1, None, later), Ok(6));
        assert_eq!(c.map.lock().keys, 1);
    }

    #[test]
    fn counters_add_atomically_and_expire() {
        let c = Counters::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let t0 = Instant::now();
        let ttl = Some(Duration::from_secs(10));
        assert_eq!(c.add(&a, b"k", 2, ttl, t0), Ok(2));
        assert_eq!(c.add(&a, b"k", 3, ttl, t0 + Duration::from_secs(9)), Ok(5));
        assert_eq!(c.add(&b, b"k", 1, None, t0), Ok(1), "per plugin");
        // Expired: starts again from 0, with a new lifetime.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(c.add(&a, b"k", 1, ttl, t1), Ok(1));
        assert_eq!(
            c.add(&a, b"k", i64::MAX, ttl, t1),
            Ok(i64::MAX),
            "saturates"
        );
        c.sweep(t1 + Duration::from_secs(11));
        assert_eq!(
            c.add(&a, b"k", 0, None, t1 + Duration::from_secs(11)),
            Ok(0)
        );
        assert_eq!(
            c.add(&b, b"k", 0, None, t1 + Duration::from_secs(11)),
            Ok(1),
            "no ttl"
        );
    }

    #[test]
    fn shared_data_keys_outliving_their_idle_ttl_are_swept() {
        let d = SharedData::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let t0 = Instant::now();
        let s = |ns: &Arc<str>, k: &[u8], at: u64| {
            d.set_at(ns, k, b"v", 0, t0 + Duration::from_secs(at))
        };
        assert_eq!(s(&a, b"old", 0), Status::Ok);
        assert_eq!(s(&a, b"rewritten", 0), Status::Ok);
        assert_eq!(s(&b, b"no-ttl", 0), Status::Ok);
        d.set_idle_ttl(&a, Some(Duration::from_secs(10)));
        // A write, not a read, keeps a key alive.
        assert_eq!(s(&a, b"rewritten", 5), Status::Ok);
        assert!(d.get("a", b"old").is_some());
        d.sweep(t0 + Duration::from_secs(9));
        assert_eq!(d.key_counts().len(), 2);
        // Swept again an eighth of the lifetime later (1.25 s), not before.
        d.sweep(t0 + Duration::from_secs(10));
        assert!(d.get("a", b"old").is_some(), "not due yet");
        d.sweep(t0 + Duration::from_millis(10_250));
        assert!(d.get("a", b"old").is_none(), "10 s after its last write");
        assert!(d.get("a", b"rewritten").is_some());
        assert!(
            d.get("b", b"no-ttl").is_some(),
            "a space without a ttl keeps its keys"
        );
        d.sweep(t0 + Duration::from_secs(15));
        assert!(d.get("a", b"rewritten").is_none());
        let mut counts = d.key_counts();
        counts.sort();
        assert_eq!(counts, vec![(b.clone(), 1)], "an emptied space is gone");
        // A dropped key is a new key again (CAS starts over), and room was made.
        assert_eq!(s(&a, b"old", 16), Status::Ok);
        assert_eq!(d.get("a", b"old").map(|(_, cas)| cas), Some(1));
        // No ttl: kept for ever again.
        d.set_idle_ttl(&a, None);
        d.sweep(t0 + Duration::from_secs(1000));
        assert!(d.get("a", b"old").is_some());
    }

    #[test]
    fn a_full_store_takes_new_keys_once_idle_ones_are_swept() {
        let d = SharedData::default();
        let a: Arc<str> = "a".into();
        let t0 = Instant::now();
        d.set_idle_ttl(&a, Some(Duration::from_secs(60)));
        for i in 0..MAX_SHARED_KEYS {
            assert_eq!(d.set_at(&a, &i.to_le_bytes(), b"v", 0, t0), Status::Ok);
        }
        let late = t0 + Duration::from_secs(30);
        assert_eq!(d.set_at(&a, b"new", b"v", 0, late), Status::InternalFailure);
        // Rewriting an existing key still works when full.
        assert_eq!(
            d.set_at(&a, &0usize.to_le_bytes(), b"w", 0, late),
            Status::Ok
        );
        d.sweep(t0 + Duration::from_secs(60));
        assert_eq!(d.key_counts(), vec![(a.clone(), 1)]);
        assert_eq!(d.set_at(&a, b"new", b"v", 0, late), Status::Ok);
    }
}
