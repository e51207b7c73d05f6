//! One plugin VM: a wasmtime store and instance, with the guest's exports resolved once,
//! and scoped calls under a CPU deadline and a memory limit.

use std::time::{Duration, Instant};

use wasmtime::{Engine, InstancePre, Store, Trap, TypedFunc};

use super::abi::{ACTION_CONTINUE, ROOT_CONTEXT_ID};
use super::state::{CallResponse, HostState, LocalResponse, PendingCall, Phase, Scope};

/// Why a guest call failed; decides the error kind counted and logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The CPU deadline passed (epoch interruption).
    Timeout,
    /// The guest tried to grow memory past its limit.
    Memory,
    /// Any other trap: unreachable (a Rust panic), out-of-bounds access, `proc_exit`...
    Trap(String),
}

impl Failure {
    fn from_error(e: wasmtime::Error) -> Failure {
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Failure::Timeout,
            _ => {
                let text = format!("{e:#}");
                if text.contains("forcing trap when growing memory") {
                    Failure::Memory
                } else {
                    Failure::Trap(text.lines().next().unwrap_or("trap").to_string())
                }
            }
        }
    }

    /// Index into [`super::shared::ERROR_KINDS`].
    pub fn kind(&self) -> usize {
        match self {
            Failure::Trap(_) => 0,
            Failure::Timeout => 1,
            Failure::Memory => 2,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => write!(f, "CPU deadline exceeded"),
            Failure::Memory => write!(f, "memory limit exceeded"),
            Failure::Trap(t) => write!(f, "trap: {t}"),
        }
    }
}

/// (context, token, header count, body size, trailer count).
type CallResponseArgs = (i32, i32, i32, i32, i32);

/// The guest's callbacks; the optional ones a filter may not export.
struct Exports {
    context_create: TypedFunc<(i32, i32), ()>,
    request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    http_call_response: Option<TypedFunc<CallResponseArgs, ()>>,
    response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    log: Option<TypedFunc<i32, ()>>,
    done: Option<TypedFunc<i32, i32>>,
    delete: Option<TypedFunc<i32, ()>>,
    tick: Option<TypedFunc<i32, ()>>,
    queue_ready: Option<TypedFunc<(i32, i32), ()>>,
}

pub struct Vm {
    store: Store<HostState>,
    exports: Exports,
    next_context: i32,
    /// When `on_tick` is due next (with a tick period set).
    next_tick: Option<Instant>,
    /// Epoch ticks a callback may run (the ticker advances one per millisecond).
    ticks: u64,
    /// The module creates HTTP contexts itself and may say when it is done with one
    /// (`weir_unused_callbacks` bit 8).
    on_demand: bool,
}

/// What `proxy_on_request_headers` left: the context, a local response, the HTTP calls
/// dispatched, and whether the module is done with the context (no more callbacks).
pub struct Started {
    pub context: i32,
    pub local: Option<LocalResponse>,
    pub calls: Vec<PendingCall>,
    pub done: bool,
}

/// Bits of `weir_unused_callbacks`: the module has nothing to do in `proxy_on_log`; its
/// `proxy_on_done` would return true (so the host may delete the context at once); it
/// has nothing to do in `proxy_on_response_headers`.
const UNUSED_ON_LOG: i32 = 1;
const UNUSED_ON_DONE: i32 = 2;
const UNUSED_ON_RESPONSE_HEADERS: i32 = 4;
/// And: HTTP contexts need no `proxy_on_context_create`; the module makes one when
/// `proxy_on_request_headers` names an id it does not know, and adds [`ACTION_DONE`] to
/// a callback's action once it wants no more callbacks for that context.
const CONTEXTS_ON_DEMAND: i32 = 8;
/// Added to an action by a module with [`CONTEXTS_ON_DEMAND`]: it kept nothing of the
/// context; no body, response, log, done or delete callback follows.
const ACTION_DONE: i32 = 0x100;

/// Start-up callbacks (`_initialize`, `on_vm_start`, `on_configure`) get this long.
const STARTUP_DEADLINE: Duration = Duration::from_secs(2);
pub const TICK: Duration = Duration::from_millis(1);

impl Vm {
    /// Instantiates and starts a VM: `_initialize`, root context, `on_vm_start`,
    /// `on_configure`. The error says which step failed and why.
    pub fn start(
        engine: &Engine,
        pre: &InstancePre<HostState>,
        state: HostState,
        cpu_limit: Duration,
    ) -> Result<Vm, String> {
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(ticks(STARTUP_DEADLINE));
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| format!("instantiation failed: {}", Failure::from_error(e)))?;
        let has = |store: &mut Store<HostState>, name: &str| {
            instance.get_func(&mut *store, name).is_some()
        };
        if !has(&mut store, "proxy_abi_version_0_2_1")
            && !has(&mut store, "proxy_abi_version_0_2_0")
        {
            return Err(
                "not a proxy-wasm module: it exports neither proxy_abi_version_0_2_1 nor proxy_abi_version_0_2_0"
                    .into(),
            );
        }
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<i32, i32>(&mut store, "malloc"))
            .map_err(|_| {
                "the module exports no allocator (proxy_on_memory_allocate or malloc)".to_string()
            })?;
        store.data_mut().alloc = Some(alloc);
        store.data_mut().memory = instance.get_memory(&mut store, "memory");
        let typed = |store: &mut Store<HostState>, name: &str| instance.get_func(&mut *store, name);
        macro_rules! opt {
            ($name:literal) => {
                match typed(&mut store, $name) {
                    Some(f) => Some(
                        f.typed(&store)
                            .map_err(|e| format!("export {}: {e}", $name))?,
                    ),
                    None => None,
                }
            };
        }
        let mut exports = Exports {
            context_create: opt!("proxy_on_context_create")
                .ok_or("the module does not export proxy_on_context_create")?,
            request_headers: opt!("proxy_on_request_headers"),
            request_body: opt!("proxy_on_request_body"),
            response_body: opt!("proxy_on_response_body"),
            http_call_response: opt!("proxy_on_http_call_response"),
            response_headers: opt!("proxy_on_response_headers"),
            log: opt!("proxy_on_log"),
            done: opt!("proxy_on_done"),
            delete: opt!("proxy_on_delete"),
            tick: opt!("proxy_on_tick"),
            queue_ready: opt!("proxy_on_queue_ready"),
        };
        let vm_start: Option<TypedFunc<(i32, i32), i32>> = opt!("proxy_on_vm_start");
        let configure: Option<TypedFunc<(i32, i32), i32>> = opt!("proxy_on_configure");
        let init: Option<TypedFunc<(), ()>> = opt!("_initialize");
        store.data_mut().scope.phase = Some(Phase::Root);
        let step = |r: wasmtime::Result<()>, what: &str| {
            r.map_err(|e| format!("{what} failed: {}", Failure::from_error(e)))
        };
        if let Some(f) = init {
            step(f.call(&mut store, ()), "_initialize")?;
        }
        step(
            exports
                .context_create
                .call(&mut store, (ROOT_CONTEXT_ID, 0)),
            "creating the root context",
        )?;
        if let Some(f) = vm_start {
            let ok = f
                .call(&mut store, (ROOT_CONTEXT_ID, 0))
                .map_err(|e| format!("on_vm_start failed: {}", Failure::from_error(e)))?;
            if ok == 0 {
                return Err("on_vm_start returned false".into());
            }
        }
        if let Some(f) = configure {
            let len = store.data().plugin_config.len() as i32;
            let ok = f
                .call(&mut store, (ROOT_CONTEXT_ID, len))
                .map_err(|e| format!("on_configure failed: {}", Failure::from_error(e)))?;
            if ok == 0 {
                return Err(match store.data_mut().startup_error.take() {
                    Some(why) => format!("on_configure rejected the plugin configuration: {why}"),
                    None => "on_configure rejected the plugin configuration (see the plugin's log)"
                        .into(),
                });
            }
        }
        // Weir extension (ABI.md): callbacks the module does not need, asked once it is
        // configured. Each one skipped is a guest entry less per request.
        let unused: Option<TypedFunc<(), i32>> = opt!("weir_unused_callbacks");
        let mut on_demand = false;
        if let Some(f) = unused {
            let mask = f
                .call(&mut store, ())
                .map_err(|e| format!("weir_unused_callbacks failed: {}", Failure::from_error(e)))?;
            if mask & UNUSED_ON_LOG != 0 {
                exports.log = None;
            }
            if mask & UNUSED_ON_DONE != 0 {
                exports.done = None;
            }
            if mask & UNUSED_ON_RESPONSE_HEADERS != 0 {
                exports.response_headers = None;
            }
            on_demand = mask & CONTEXTS_ON_DEMAND != 0;
        }
        store.data_mut().scope = Scope::default();
        Ok(Vm {
            store,
            exports,
            next_context: ROOT_CONTEXT_ID + 1,
            next_tick: None,
            ticks: ticks(cpu_limit),
            on_demand,
        })
    }

    /// Runs `f` with `scope` installed and the CPU deadline armed; the scope is cleared
    /// afterwards whatever happened.
    fn scoped<R>(
        &mut self,
        scope: Scope,
        f: impl FnOnce(&mut Store<HostState>, &Exports) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        self.store.data_mut().scope = scope;
        self.store.set_epoch_deadline(self.ticks);
        let r = f(&mut self.store, &self.exports);
        self.store.data_mut().scope = Scope::default();
        r.map_err(Failure::from_error)
    }

    /// Creates an HTTP context (unless the module makes its own) and runs
    /// `on_request_headers`.
    pub fn request_headers(
        &mut self,
        scope: Scope,
        num_headers: usize,
        end_of_stream: bool,
    ) -> Result<Started, Failure> {
        let ctx = self.next_context;
        self.next_context = self
            .next_context
            .checked_add(1)
            .unwrap_or(ROOT_CONTEXT_ID + 1);
        self.store.data_mut().local_response = None;
        let on_demand = self.on_demand;
        let action = self.scoped(scope, |store, ex| {
            if !on_demand {
                ex.context_create
                    .call(&mut *store, (ctx, ROOT_CONTEXT_ID))?;
            }
            match &ex.request_headers {
                Some(f) => f.call(&mut *store, (ctx, num_headers as i32, end_of_stream as i32)),
                None => Ok(ACTION_CONTINUE),
            }
        })?;
        let st = self.store.data_mut();
        let calls = std::mem::take(&mut st.pending_calls);
        Ok(Started {
            context: ctx,
            local: st.local_response.take(),
            // The answers to its calls go to the context: it cannot be done yet.
            done: self.done(action) && calls.is_empty(),
            calls,
        })
    }

    /// Whether a callback's action says the module is done with the context.
    fn done(&self, action: i32) -> bool {
        self.on_demand && action & ACTION_DONE != 0
    }

    /// `proxy_on_http_call_response` with the call's answer visible to the guest.
    pub fn http_call_response(
        &mut self,
        scope: Scope,
        ctx: i32,
        token: u32,
        resp: CallResponse,
    ) -> Result<(Option<LocalResponse>, Vec<PendingCall>), Failure> {
        let headers = resp.headers.len() + usize::from(resp.status.is_some());
        let body = resp.body.len();
        let st = self.store.data_mut();
        st.local_response = None;
        st.call_response = Some(resp);
        let r = self.scoped(scope, |store, ex| {
            if let Some(f) = &ex.http_call_response {
                f.call(
                    &mut *store,
                    (ctx, token as i32, headers as i32, body as i32, 0),
                )?;
            }
            Ok(())
        });
        let st = self.store.data_mut();
        st.call_response = None;
        r?;
        Ok((
            st.local_response.take(),
            std::mem::take(&mut st.pending_calls),
        ))
    }

    /// `proxy_on_request_body` (or `proxy_on_response_body` when the scope's phase is
    /// the response body) with the scope's body (everything buffered so far) readable.
    /// Returns whether the plugin asked to buffer (`StopIterationAndBuffer`) and its
    /// local response, if any.
    pub fn body(
        &mut self,
        scope: Scope,
        ctx: i32,
        body_size: usize,
        end_of_stream: bool,
    ) -> Result<(bool, Option<LocalResponse>), Failure> {
        self.store.data_mut().local_response = None;
        let response = scope.phase == Some(Phase::ResponseBody);
        let action = self.scoped(scope, |store, ex| {
            let f = if response {
                &ex.response_body
            } else {
                &ex.request_body
            };
            match f {
                Some(f) => f.call(&mut *store, (ctx, body_size as i32, end_of_stream as i32)),
                None => Ok(ACTION_CONTINUE),
            }
        })?;
        let action = if self.on_demand {
            action & !ACTION_DONE
        } else {
            action
        };
        Ok((
            action != ACTION_CONTINUE,
            self.store.data_mut().local_response.take(),
        ))
    }

    /// Whether the module has a response-headers callback to call.
    pub fn calls_response_headers(&self) -> bool {
        self.exports.response_headers.is_some()
    }

    /// `on_response_headers`: the local response the plugin asked for, and whether it is
    /// done with the context.
    pub fn response_headers(
        &mut self,
        scope: Scope,
        ctx: i32,
        num_headers: usize,
        end_of_stream: bool,
    ) -> Result<(Option<LocalResponse>, bool), Failure> {
        self.store.data_mut().local_response = None;
        let action = self.scoped(scope, |store, ex| match &ex.response_headers {
            Some(f) => f.call(&mut *store, (ctx, num_headers as i32, end_of_stream as i32)),
            None => Ok(ACTION_CONTINUE),
        })?;
        let done = self.done(action);
        Ok((self.store.data_mut().local_response.take(), done))
    }

    /// The root context's timer: `on_tick` when the plugin's tick period has passed.
    /// Returns whether it ran.
    pub fn tick_if_due(&mut self, now: Instant) -> Result<bool, Failure> {
        let Some(period) = self.store.data().tick_period else {
            self.next_tick = None;
            return Ok(false);
        };
        let due = *self.next_tick.get_or_insert(now + period);
        if now < due {
            return Ok(false);
        }
        self.next_tick = Some(now + period);
        let root = Scope {
            phase: Some(Phase::Root),
            ..Scope::default()
        };
        self.scoped(root, |store, ex| match &ex.tick {
            Some(f) => f.call(&mut *store, ROOT_CONTEXT_ID),
            None => Ok(()),
        })?;
        Ok(true)
    }

    /// `proxy_on_queue_ready` on the root context.
    pub fn queue_ready(&mut self, queue: u32) -> Result<(), Failure> {
        let root = Scope {
            phase: Some(Phase::Root),
            ..Scope::default()
        };
        self.scoped(root, |store, ex| match &ex.queue_ready {
            Some(f) => f.call(&mut *store, (ROOT_CONTEXT_ID, queue as i32)),
            None => Ok(()),
        })
    }

    /// `on_log`, `on_done`, `on_delete`: the end of a context.
    pub fn finish(&mut self, scope: Scope, ctx: i32) -> Result<(), Failure> {
        self.scoped(scope, |store, ex| {
            if let Some(f) = &ex.log {
                f.call(&mut *store, ctx)?;
            }
            if let Some(f) = &ex.done {
                f.call(&mut *store, ctx)?;
            }
            if let Some(f) = &ex.delete {
                f.call(&mut *store, ctx)?;
            }
            Ok(())
        })
    }
}

fn ticks(d: Duration) -> u64 {
    (d.as_micros() / TICK.as_micros()).max(1) as u64 + 1
}
