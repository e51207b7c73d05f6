//! The plugin host: proxy-wasm v0.2.1 filters on wasmtime.
//!
//! - One [`PluginHost`] per process: one `Engine` (Cranelift, epoch interruption, a 1 ms
//!   ticker thread started with the first plugin), modules compiled once per distinct
//!   file content and cached on disk, shared data and plugin metrics.
//! - A [`Plugin`] per configured plugin and config generation: its module, its
//!   configuration, and one VM per worker thread, all started off the request path when
//!   the snapshot is built. A reload that leaves a plugin's file and config unchanged
//!   keeps the same `Plugin` (same VMs); a changed one gets new VMs while in-flight
//!   requests finish on the old.
//! - A request runs each plugin of its chain on the VM of its worker thread: a context
//!   per request, `on_request_headers`, `on_response_headers`, then `on_log`/`on_done`/
//!   `on_delete`.
//! - A trap, a CPU deadline or memory exhaustion kills that VM only: the request gets
//!   the plugin's `on_error` outcome, the failure is counted, and the VM is rebuilt in
//!   the background with backoff.
//!
//! What of the ABI is implemented is listed in `ABI.md` next to this file.

pub mod abi;
pub mod call;
mod hostcalls;
pub mod shared;
pub mod state;
mod vm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pingora::http::{RequestHeader, ResponseHeader};
use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, InstancePre, Linker, Module, StoreLimitsBuilder};

use crate::config::{OnError, PluginConfig};
use shared::{PluginMetrics, PluginStats, SharedData};
pub use state::{CallResponse, LocalResponse, PendingCall, Properties, RequestInfo, ResponseEdits};
use state::{HostState, Phase, Scope};
pub use vm::Failure;
use vm::Vm;

/// Process-wide plugin machinery. The engine starts with the first plugin.
pub struct PluginHost {
    engine: OnceLock<Engine>,
    modules: Mutex<HashMap<[u8; 32], Module>>,
    cache_dir: Option<PathBuf>,
    pub shared: Arc<SharedData>,
    pub metrics: Arc<PluginMetrics>,
}

impl Default for PluginHost {
    fn default() -> Self {
        PluginHost::new(default_cache_dir())
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("WEIR_PLUGIN_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/weir/modules")))
}

impl PluginHost {
    /// `cache_dir`: where compiled modules are kept between runs (must be writable only
    /// by Weir's user: its contents are loaded as native code). `None` disables it.
    pub fn new(cache_dir: Option<PathBuf>) -> Self {
        PluginHost {
            engine: OnceLock::new(),
            modules: Mutex::new(HashMap::new()),
            cache_dir,
            shared: Arc::default(),
            metrics: Arc::default(),
        }
    }

    fn engine(&self) -> Result<&Engine, String> {
        if let Some(e) = self.engine.get() {
            return Ok(e);
        }
        let mut cfg = Config::new();
        cfg.epoch_interruption(true)
            .strategy(wasmtime::Strategy::Cranelift)
            .cranelift_opt_level(wasmtime::OptLevel::Speed)
            .max_wasm_stack(512 * 1024)
            // Small reservations: many VMs (plugins × threads) each get a memory.
            .memory_reservation(64 << 20)
            .memory_guard_size(64 << 10)
            .memory_reservation_for_growth(1 << 20);
        // `WEIR_WASM_PROFILE=perfmap`: name the plugins' compiled functions for `perf`
        // (/tmp/perf-PID.map), to profile plugins inside the gateway.
        if std::env::var("WEIR_WASM_PROFILE").as_deref() == Ok("perfmap") {
            cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&cfg).map_err(|e| format!("wasm engine: {e}"))?;
        let ticker = engine.clone();
        std::thread::Builder::new()
            .name("weir-wasm-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(vm::TICK);
                ticker.increment_epoch();
            })
            .map_err(|e| format!("epoch ticker: {e}"))?;
        Ok(self.engine.get_or_init(|| engine))
    }

    /// Compiles (or fetches from memory or the disk cache) the module in `bytes`.
    fn module(&self, bytes: &[u8], hash: [u8; 32]) -> Result<Module, String> {
        if let Some(m) = self.modules.lock().get(&hash) {
            return Ok(m.clone());
        }
        let engine = self.engine()?;
        let cache_file = self.cache_dir.as_ref().map(|d| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut h);
            d.join(format!("{}-{:016x}.cwasm", hex(&hash), h.finish()))
        });
        let cached = cache_file.as_ref().filter(|f| f.is_file()).and_then(|f| {
            // SAFETY: the cache directory holds only what `serialize` wrote below (keyed
            // by content hash and engine compatibility); it must not be writable by
            // anyone who may not run native code as Weir.
            unsafe { Module::deserialize_file(engine, f) }.ok()
        });
        let module = match cached {
            Some(m) => m,
            None => {
                let m = Module::new(engine, bytes).map_err(|e| format!("does not compile: {e:#}"));
                let Ok(m) = m else {
                    release_free_memory();
                    return m;
                };
                if let (Some(f), Ok(ser)) = (&cache_file, m.serialize()) {
                    let write = || -> std::io::Result<()> {
                        if let Some(dir) = f.parent() {
                            std::fs::create_dir_all(dir)?;
                        }
                        let tmp = f.with_extension(format!("tmp{}", std::process::id()));
                        std::fs::write(&tmp, ser)?;
                        std::fs::rename(tmp, f)
                    };
                    if let Err(e) = write() {
                        tracing::debug!(error = %e, "module cache not written");
                    }
                }
                // Cranelift's working memory and the serialized copy (tens of MiB for
                // a large module) are free now; jemalloc would keep the pages resident
                // until its decay.
                release_free_memory();
                m
            }
        };
        self.modules.lock().insert(hash, module.clone());
        Ok(module)
    }

    /// Reads a plugin's module file and its SHA-256 (what a reload compares).
    pub fn read_module(c: &PluginConfig, base: &Path) -> Result<(Vec<u8>, [u8; 32]), String> {
        let path = base.join(&c.wasm);
        let bytes =
            std::fs::read(&path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        let hash = Sha256::digest(&bytes).into();
        Ok((bytes, hash))
    }

    /// Reads and loads a plugin; see [`PluginHost::load_module`].
    pub fn load(
        &self,
        c: &PluginConfig,
        base: &Path,
        threads: usize,
    ) -> Result<Arc<Plugin>, String> {
        let (bytes, hash) = Self::read_module(c, base)?;
        self.load_module(c, &bytes, hash, threads)
    }

    /// Loads a plugin from its module bytes: compiles them (or takes the cached module)
    /// and starts one VM per worker thread. Any failure (compilation, missing ABI
    /// exports, `on_configure` refusing the config) is returned with the reason;
    /// nothing is half-loaded.
    pub fn load_module(
        &self,
        c: &PluginConfig,
        bytes: &[u8],
        hash: [u8; 32],
        threads: usize,
    ) -> Result<Arc<Plugin>, String> {
        let module = self.module(bytes, hash)?;
        let engine = self.engine()?.clone();
        let mut linker: Linker<HostState> = Linker::new(&engine);
        hostcalls::add_proxy_wasm(&mut linker).map_err(|e| e.to_string())?;
        hostcalls::add_wasi(&mut linker).map_err(|e| e.to_string())?;
        hostcalls::define_missing(&mut linker, &module).map_err(|e| e.to_string())?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| format!("cannot be linked: {e:#}"))?;
        let config_json: Arc<[u8]> = serde_json::to_vec(&c.config)
            .map_err(|e| format!("config: {e}"))?
            .into();
        let name: Arc<str> = c.name.as_str().into();
        let plugin = Plugin {
            name: name.clone(),
            config: c.clone(),
            hash,
            on_error: c.on_error,
            cpu_limit: c.cpu_limit.get(),
            memory_bytes: c.memory_limit_mb as usize * 1024 * 1024,
            engine,
            pre,
            config_json,
            shared: self.shared.clone(),
            metrics: self.metrics.clone(),
            stats: self.metrics.stats(&c.name),
            slots: Vec::new().into_boxed_slice(),
        };
        let mut slots = Vec::with_capacity(threads.max(1));
        for _ in 0..threads.max(1) {
            let vm = plugin.start_vm()?;
            slots.push(Mutex::new(Slot {
                vm: Some(vm),
                generation: 0,
                crashes: 0,
                retry_at: None,
            }));
        }
        Ok(Arc::new(Plugin {
            slots: slots.into_boxed_slice(),
            ..plugin
        }))
    }
}

/// Returns the memory compilation freed to the system: first the blocks each of
/// wasmtime's compiling threads (rayon's global pool) still holds in its jemalloc thread
/// cache (`thread.tcache.flush`, which only a thread can do for itself: an idle thread
/// never collects its cache, and with Weir's `tcache_gc_incr_bytes` they held ~8 MiB
/// after a first start with ten plugins), then every arena's free pages
/// (`arena.<MALLCTL_ARENAS_ALL>.purge`). Harmless when jemalloc is not the global
/// allocator (tests, benches): it flushes and purges a heap nothing uses.
fn release_free_memory() {
    rayon::broadcast(|_| void_mallctl(c"thread.tcache.flush"));
    void_mallctl(c"arena.4096.purge");
}

/// A mallctl that reads and writes nothing.
fn void_mallctl(name: &std::ffi::CStr) {
    // SAFETY: a NUL-terminated name, no old or new value.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One VM slot (one per worker thread).
struct Slot {
    vm: Option<Vm>,
    /// Bumped when the VM is replaced, so contexts of a dead VM are not resumed.
    generation: u64,
    crashes: u32,
    retry_at: Option<Instant>,
}

/// A loaded plugin with its VMs.
pub struct Plugin {
    pub name: Arc<str>,
    pub config: PluginConfig,
    /// SHA-256 of the module file: a reload reuses the plugin only if it is unchanged.
    pub hash: [u8; 32],
    pub on_error: OnError,
    cpu_limit: Duration,
    memory_bytes: usize,
    engine: Engine,
    pre: InstancePre<HostState>,
    config_json: Arc<[u8]>,
    shared: Arc<SharedData>,
    metrics: Arc<PluginMetrics>,
    stats: Arc<PluginStats>,
    slots: Box<[Mutex<Slot>]>,
}

/// A plugin's context on one request, kept from request headers to the end.
pub struct Active {
    plugin: Arc<Plugin>,
    slot: usize,
    generation: u64,
    context: i32,
    /// The module said it is done with the context (`CONTEXTS_ON_DEMAND`): no more
    /// callbacks for it.
    done: bool,
}

impl Active {
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// Runs `on_response_headers` for this context (see [`Plugin::response_headers`]).
    pub fn response_headers(&mut self, v: &mut Views<'_>) -> Verdict {
        let (verdict, done) = self.plugin.response_headers(self, v);
        self.done |= done;
        verdict
    }
}

/// What a plugin callback decided.
#[derive(Debug)]
pub enum Verdict {
    Continue,
    /// The plugin answered the request itself.
    Respond(LocalResponse),
    /// The plugin failed and its `on_error` is `deny`.
    Deny,
    /// The plugin dispatched HTTP calls and waits for their answers
    /// ([`Plugin::http_call_response`]).
    Calls(Vec<PendingCall>),
}

/// Views of the request a callback may touch.
pub struct Views<'a> {
    pub request: &'a mut RequestHeader,
    pub response: Option<&'a mut ResponseHeader>,
    pub info: &'a RequestInfo,
    pub properties: &'a mut Properties,
    pub response_edits: &'a mut ResponseEdits,
}

fn verdict(local: Option<LocalResponse>, calls: Vec<PendingCall>) -> Verdict {
    match (local, calls.is_empty()) {
        (Some(l), _) => Verdict::Respond(l),
        (None, false) => Verdict::Calls(calls),
        (None, true) => Verdict::Continue,
    }
}

fn worker_slot(n: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static WORKER: usize = NEXT.fetch_add(1, Ordering::Relaxed));
    WORKER.with(|w| *w) % n.max(1)
}

impl Plugin {
    fn start_vm(&self) -> Result<Vm, String> {
        let state = HostState {
            limits: StoreLimitsBuilder::new()
                .memory_size(self.memory_bytes)
                .instances(1)
                .memories(1)
                .tables(4)
                .trap_on_grow_failure(true)
                .build(),
            plugin: self.name.clone(),
            plugin_config: self.config_json.clone(),
            scope: Scope::default(),
            local_response: None,
            pending_calls: Vec::new(),
            call_response: None,
            next_token: 1,
            shared: self.shared.clone(),
            metrics: self.metrics.clone(),
            alloc: None,
            memory: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
            startup_error: None,
            tick_period: None,
        };
        Vm::start(&self.engine, &self.pre, state, self.cpu_limit)
    }

    fn scope(phase: Phase, v: &mut Views<'_>) -> Scope {
        Scope {
            phase: Some(phase),
            request: Some((&mut *v.request).into()),
            response: v.response.as_deref_mut().map(Into::into),
            info: Some(v.info.into()),
            properties: Some((&mut *v.properties).into()),
            response_edits: Some((&mut *v.response_edits).into()),
            body: None,
        }
    }

    /// Records a failure: the VM is dropped (rebuilt later by [`Plugin::heal`]).
    fn fail(&self, slot: &mut Slot, f: &Failure, phase: &str) -> Verdict {
        self.stats.count_error(f.kind());
        slot.vm = None;
        slot.generation += 1;
        slot.crashes = slot.crashes.saturating_add(1);
        let backoff = Duration::from_millis(50) * 2u32.saturating_pow(slot.crashes.min(9));
        slot.retry_at = Some(Instant::now() + backoff);
        tracing::error!(plugin = &*self.name, phase, error = %f, on_error = ?self.on_error, "plugin failed; its VM is replaced");
        self.error_verdict()
    }

    fn error_verdict(&self) -> Verdict {
        match self.on_error {
            OnError::Deny => Verdict::Deny,
            OnError::Allow => Verdict::Continue,
        }
    }

    /// Runs `on_request_headers` in a new context on this worker's VM.
    pub fn request_headers(
        self: &Arc<Self>,
        v: &mut Views<'_>,
        end_of_stream: bool,
    ) -> (Option<Active>, Verdict) {
        let i = worker_slot(self.slots.len());
        let mut slot = self.slots[i].lock();
        let started = Instant::now();
        let num = v.request.headers.len() + 2;
        let scope = Self::scope(Phase::RequestHeaders, v);
        let Some(vm) = slot.vm.as_mut() else {
            // The VM failed and is being rebuilt: the plugin's `on_error` applies.
            return (None, self.error_verdict());
        };
        let r = vm.request_headers(scope, num, end_of_stream);
        self.stats
            .count_call(shared::PHASE_REQUEST_HEADERS, started.elapsed());
        match r {
            Ok(started) => {
                slot.crashes = 0;
                // A module done with the context already gets no further callback.
                let active = (!started.done).then(|| Active {
                    plugin: self.clone(),
                    slot: i,
                    generation: slot.generation,
                    context: started.context,
                    done: false,
                });
                (active, verdict(started.local, started.calls))
            }
            Err(f) => (None, self.fail(&mut slot, &f, "request_headers")),
        }
    }

    /// Hands a call's answer to `on_http_call_response`; the plugin may answer locally,
    /// dispatch further calls, or let the request continue.
    pub fn http_call_response(
        &self,
        a: &Active,
        token: u32,
        resp: CallResponse,
        v: &mut Views<'_>,
    ) -> Verdict {
        let mut slot = self.slots[a.slot].lock();
        if slot.generation != a.generation {
            return self.error_verdict();
        }
        let started = Instant::now();
        let scope = Self::scope(Phase::RequestHeaders, v);
        let Some(vm) = slot.vm.as_mut() else {
            return self.error_verdict();
        };
        let r = vm.http_call_response(scope, a.context, token, resp);
        self.stats
            .count_call(shared::PHASE_REQUEST_HEADERS, started.elapsed());
        match r {
            Ok((local, calls)) => verdict(local, calls),
            Err(f) => self.fail(&mut slot, &f, "http_call_response"),
        }
    }

    /// Runs `on_request_body` (or `on_response_body` with `response`) with everything
    /// buffered for this plugin so far (`body`). Returns the verdict and whether the
    /// plugin asked to keep buffering.
    pub fn body(
        &self,
        a: &Active,
        response: bool,
        body: &[u8],
        end_of_stream: bool,
        v: &mut Views<'_>,
    ) -> (Verdict, bool) {
        if a.done {
            return (Verdict::Continue, false);
        }
        let mut slot = self.slots[a.slot].lock();
        if slot.generation != a.generation {
            return (self.error_verdict(), false);
        }
        let started = Instant::now();
        let (phase, stat) = if response {
            (Phase::ResponseBody, shared::PHASE_RESPONSE_BODY)
        } else {
            (Phase::RequestBody, shared::PHASE_REQUEST_BODY)
        };
        let mut scope = Self::scope(phase, v);
        scope.body = Some(body.into());
        let Some(vm) = slot.vm.as_mut() else {
            return (self.error_verdict(), false);
        };
        let r = vm.body(scope, a.context, body.len(), end_of_stream);
        self.stats.count_call(stat, started.elapsed());
        match r {
            Ok((buffer, local)) => (
                local.map(Verdict::Respond).unwrap_or(Verdict::Continue),
                buffer,
            ),
            Err(f) => (self.fail(&mut slot, &f, phase.name()), false),
        }
    }

    /// Runs `on_response_headers` for a context created by [`Plugin::request_headers`]
    /// (through [`Active::response_headers`]); also says whether the module is done with
    /// the context.
    fn response_headers(&self, a: &Active, v: &mut Views<'_>) -> (Verdict, bool) {
        if a.done {
            return (Verdict::Continue, true);
        }
        let mut slot = self.slots[a.slot].lock();
        if slot.generation != a.generation {
            return (self.error_verdict(), false);
        }
        let Some(vm) = slot.vm.as_mut() else {
            return (self.error_verdict(), false);
        };
        // Not exported, or declared unused (`weir_unused_callbacks`): no call to count.
        if !vm.calls_response_headers() {
            return (Verdict::Continue, false);
        }
        let started = Instant::now();
        let num = v
            .response
            .as_ref()
            .map(|r| r.headers.len() + 1)
            .unwrap_or(0);
        let scope = Self::scope(Phase::ResponseHeaders, v);
        let r = vm.response_headers(scope, a.context, num, false);
        self.stats
            .count_call(shared::PHASE_RESPONSE_HEADERS, started.elapsed());
        match r {
            Ok((local, done)) => (
                local.map(Verdict::Respond).unwrap_or(Verdict::Continue),
                done,
            ),
            Err(f) => (self.fail(&mut slot, &f, "response_headers"), false),
        }
    }

    /// Ends the context: `on_log`, `on_done`, `on_delete`.
    pub fn finish(&self, a: &Active, v: &mut Views<'_>) {
        if a.done {
            return;
        }
        let mut slot = self.slots[a.slot].lock();
        if slot.generation != a.generation {
            return;
        }
        let started = Instant::now();
        let scope = Self::scope(Phase::Log, v);
        let Some(vm) = slot.vm.as_mut() else {
            return;
        };
        let r = vm.finish(scope, a.context);
        self.stats.count_call(shared::PHASE_LOG, started.elapsed());
        if let Err(f) = r {
            self.fail(&mut slot, &f, "log");
        }
    }

    /// The plugin's timers, from the background loop (never a request): `on_tick` on
    /// each VM whose tick period has passed (every worker's VM, as in Envoy), and
    /// `on_queue_ready` for queues this plugin owns that received items, on the first
    /// live VM. A failure replaces that VM like any other.
    pub fn timers(&self, now: Instant) {
        let ready = self.shared.queues.take_ready(&self.name);
        let mut ready = ready.as_slice();
        for slot in self.slots.iter() {
            let mut s = slot.lock();
            let Some(vm) = s.vm.as_mut() else { continue };
            let started = Instant::now();
            let mut r = vm.tick_if_due(now);
            while let (Ok(_), Some((&queue, rest))) = (&r, ready.split_first()) {
                r = vm.queue_ready(queue).map(|()| true);
                ready = rest;
            }
            if !matches!(r, Ok(false)) {
                self.stats
                    .count_call(shared::PHASE_TIMERS, started.elapsed());
            }
            if let Err(f) = r {
                self.fail(&mut s, &f, "timer");
            }
        }
    }

    /// Rebuilds VMs that failed, once their backoff has passed. Called from the
    /// background loop, never from a request.
    pub fn heal(&self) {
        for slot in self.slots.iter() {
            let due = {
                let s = slot.lock();
                s.vm.is_none() && s.retry_at.is_none_or(|t| Instant::now() >= t)
            };
            if !due {
                continue;
            }
            // Build outside the lock: requests on this slot keep getting `on_error`
            // meanwhile instead of waiting.
            match self.start_vm() {
                Ok(vm) => {
                    let mut s = slot.lock();
                    s.vm = Some(vm);
                    s.generation += 1;
                    tracing::info!(plugin = &*self.name, "plugin VM replaced");
                }
                Err(e) => {
                    self.stats.count_error(shared::ERROR_KINDS.len() - 1);
                    let mut s = slot.lock();
                    s.crashes = s.crashes.saturating_add(1);
                    s.retry_at = Some(Instant::now() + Duration::from_secs(5));
                    tracing::error!(plugin = &*self.name, error = %e, "plugin VM could not be rebuilt");
                }
            }
        }
    }
}
