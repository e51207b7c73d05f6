//! The gateway's shared state and hot reload.
//!
//! [`Gateway`] owns the current snapshot (behind arc-swap), the metrics and the reload
//! bookkeeping. A reload reads and validates the file, builds a complete new snapshot
//! off the request path, and swaps it in; any failure leaves the old snapshot serving
//! and is logged, counted and kept for the admin API.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::config::{self, Config, ConfigErrors};
use crate::metrics::Metrics;
use crate::plugin::PluginHost;
use crate::snapshot::{BuildEnv, BuildError, Snapshot};

/// Outcome of the last reload attempt, for `GET /config` and `POST /reload`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadStatus {
    pub generation: u64,
    pub ok: bool,
    pub error: Option<String>,
    pub trigger: String,
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_seconds(*t))
}

/// Shared by the proxy, the admin API and the background services.
pub struct Gateway {
    pub config_path: PathBuf,
    pub current: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub plugins: Arc<PluginHost>,
    /// Serializes reloads; requests never take it.
    reload_lock: Mutex<()>,
    last: Mutex<ReloadStatus>,
    /// (modified time, length, content hash) of the file last loaded.
    stamp: Mutex<Option<FileStamp>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    hash: u64,
}

impl Gateway {
    /// Loads the file for the first time: parse, validate, and build the snapshot
    /// (plugins compiled and configured). This is also all `weir check` does. Every
    /// error is returned.
    pub fn load(path: &Path) -> Result<Gateway, ConfigErrors> {
        let text = read(path)?;
        let config = config::load_str(path, &text, |k| std::env::var(k).ok())?;
        let metrics = Arc::new(Metrics::default());
        let plugins = Arc::new(PluginHost::default());
        let env = BuildEnv {
            metrics: &metrics,
            plugins: &plugins,
            base_dir: base_dir(path),
        };
        let snap = Snapshot::build(config, None, &env, 1)
            .map_err(|e| ConfigErrors::one(located(path, &text, e)))?;
        metrics.generation.store(1, Ordering::Relaxed);
        Ok(Gateway {
            config_path: path.to_path_buf(),
            current: Arc::new(ArcSwap::from_pointee(snap)),
            metrics,
            plugins,
            reload_lock: Mutex::new(()),
            last: Mutex::new(ReloadStatus {
                generation: 1,
                ok: true,
                error: None,
                trigger: "startup".into(),
                at: SystemTime::now(),
            }),
            stamp: Mutex::new(stamp(path, &text)),
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn last_reload(&self) -> ReloadStatus {
        self.last.lock().clone()
    }

    /// Reloads from the file. On success returns the new generation; on failure the
    /// old snapshot keeps serving and the reason is returned, logged and counted.
    pub fn reload(&self, trigger: &str) -> Result<u64, String> {
        let _guard = self.reload_lock.lock();
        let result = self.try_reload();
        let mut last = self.last.lock();
        match &result {
            Ok(generation) => {
                self.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .generation
                    .store(*generation, Ordering::Relaxed);
                tracing::info!(generation, trigger, "config reloaded");
                *last = ReloadStatus {
                    generation: *generation,
                    ok: true,
                    error: None,
                    trigger: trigger.into(),
                    at: SystemTime::now(),
                };
            }
            Err(reason) => {
                self.metrics.reloads_error.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    trigger,
                    "config reload rejected, the previous config keeps serving:\n{reason}"
                );
                *last = ReloadStatus {
                    generation: self.current.load().generation,
                    ok: false,
                    error: Some(reason.clone()),
                    trigger: trigger.into(),
                    at: SystemTime::now(),
                };
            }
        }
        result
    }

    fn try_reload(&self) -> Result<u64, String> {
        let path = &self.config_path;
        let text = read(path).map_err(|e| e.to_string())?;
        // Record the stamp even when the text is bad, so the watcher does not retry a
        // broken file every tick; the next edit triggers a new attempt.
        *self.stamp.lock() = stamp(path, &text);
        let config =
            config::load_str(path, &text, |k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
        let old = self.current.load_full();
        warn_fixed_settings(&old.config, &config);
        let generation = old.generation + 1;
        let env = BuildEnv {
            metrics: &self.metrics,
            plugins: &self.plugins,
            base_dir: base_dir(path),
        };
        let snap = Snapshot::build(config, Some(&old), &env, generation)
            .map_err(|e| located(path, &text, e).to_string())?;
        self.current.store(Arc::new(snap));
        Ok(generation)
    }

    /// True when the file differs from the one last loaded (watcher tick).
    pub fn file_changed(&self) -> bool {
        let Ok(text) = std::fs::read_to_string(&self.config_path) else {
            return false;
        };
        let now = stamp(&self.config_path, &text);
        *self.stamp.lock() != now
    }
}

/// The directory relative plugin paths start from.
pub fn base_dir(config_path: &Path) -> &Path {
    match config_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A build error at its line of the config text (the `[[plugins]]` entry whose module
/// failed, say).
fn located(path: &Path, text: &str, e: BuildError) -> config::ConfigError {
    let line = config::line_of_key(text, &e.key);
    config::ConfigError::new(path, line, &e.key, e.message)
}

fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::one(config::ConfigError::new(
            path,
            None,
            "",
            format!("cannot read the config file: {e}"),
        ))
    })
}

fn stamp(path: &Path, text: &str) -> Option<FileStamp> {
    use std::hash::{Hash, Hasher};
    let meta = std::fs::metadata(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    Some(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        hash: h.finish(),
    })
}

/// Listeners, threads and the access-log output are bound at start; say so when a
/// reload changes them rather than pretending they took effect.
fn warn_fixed_settings(old: &Config, new: &Config) {
    let fixed = [
        ("server.listen", old.server.listen != new.server.listen),
        ("server.threads", old.server.threads != new.server.threads),
        (
            "server.tls.listen",
            old.server.tls.as_ref().map(|t| &t.listen)
                != new.server.tls.as_ref().map(|t| &t.listen),
        ),
        ("server.h2c", old.server.h2c != new.server.h2c),
        ("admin.listen", old.admin.listen != new.admin.listen),
        ("access_log", old.access_log != new.access_log),
    ];
    for (key, changed) in fixed {
        if changed {
            tracing::warn!(key, "changed in the config, but it only takes effect after a restart or graceful upgrade");
        }
    }
}
