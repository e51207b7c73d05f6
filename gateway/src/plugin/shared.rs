//! State shared across VMs and worker threads: shared data (with compare-and-swap) and
//! plugin-defined metrics.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::abi::Status;

/// `proxy_get_shared_data` / `proxy_set_shared_data`: one key space per plugin name
/// (the plugin's "vm id"), shared by all its VMs; every write bumps the key's CAS.
#[derive(Default)]
pub struct SharedData {
    map: RwLock<HashMap<SharedKey, (Vec<u8>, u32)>>,
}

/// (plugin name, key).
type SharedKey = (Arc<str>, Vec<u8>);

/// Keys beyond this are refused, so a plugin cannot grow host memory without bound.
const MAX_SHARED_KEYS: usize = 100_000;

impl SharedData {
    pub fn get(&self, ns: &Arc<str>, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.map.read().get(&(ns.clone(), key.to_vec())).cloned()
    }

    /// Stores `value` if `cas` is 0 or matches the current CAS.
    pub fn set(&self, ns: &Arc<str>, key: &[u8], value: &[u8], cas: u32) -> Status {
        let mut map = self.map.write();
        let k = (ns.clone(), key.to_vec());
        match map.get_mut(&k) {
            Some((v, current)) => {
                if cas != 0 && cas != *current {
                    return Status::CasMismatch;
                }
                *v = value.to_vec();
                *current = current.wrapping_add(1).max(1);
                Status::Ok
            }
            None => {
                if cas != 0 {
                    return Status::CasMismatch;
                }
                if map.len() >= MAX_SHARED_KEYS {
                    return Status::InternalFailure;
                }
                map.insert(k, (value.to_vec(), 1));
                Status::Ok
            }
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
pub const PHASES: [&str; 4] = ["request_headers", "request_body", "response_headers", "log"];
/// Indexes into [`PHASES`].
pub const PHASE_REQUEST_HEADERS: usize = 0;
pub const PHASE_REQUEST_BODY: usize = 1;
pub const PHASE_RESPONSE_HEADERS: usize = 2;
pub const PHASE_LOG: usize = 3;
/// Failure kinds counted per plugin.
pub const ERROR_KINDS: [&str; 4] = ["trap", "timeout", "memory", "instantiate"];

/// Lock-free counters of one plugin, held by its [`super::Plugin`].
#[derive(Default)]
pub struct PluginStats {
    calls: [AtomicU64; PHASES.len()],
    micros: [AtomicU64; PHASES.len()],
    errors: [AtomicU64; ERROR_KINDS.len()],
}

impl PluginStats {
    pub fn count_call(&self, phase: usize, micros: u64) {
        self.calls[phase].fetch_add(1, Ordering::Relaxed);
        self.micros[phase].fetch_add(micros, Ordering::Relaxed);
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
        out.push_str("# HELP weir_plugin_calls_total Plugin callbacks by phase.\n# TYPE weir_plugin_calls_total counter\n");
        for (plugin, s) in &stats {
            for (i, phase) in PHASES.iter().enumerate() {
                let n = s.calls[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "weir_plugin_calls_total{{plugin=\"{plugin}\",phase=\"{phase}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP weir_plugin_call_seconds_total Time spent in plugin callbacks by phase.\n# TYPE weir_plugin_call_seconds_total counter\n");
        for (plugin, s) in &stats {
            for (i, phase) in PHASES.iter().enumerate() {
                let us = s.micros[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "weir_plugin_call_seconds_total{{plugin=\"{plugin}\",phase=\"{phase}\"}} {}",
                    us as f64 / 1e6
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
