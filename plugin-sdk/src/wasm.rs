//! The proxy-wasm adapter: the root and HTTP contexts `export_policy!` registers, and
//! the request, response and store views backed by host calls. wasm32 only (the host
//! calls are imports that exist only inside a proxy-wasm host).
//!
//! Every host call goes through the `proxy-wasm` crate, which panics (so the VM traps)
//! on a status it does not expect. The views therefore check writes first (the
//! gateway's rules, `validate_header` and friends) and only call the host in the phase
//! the call belongs to.

use crate::http::{
    join_target, split_target, validate_consumer, validate_header, validate_header_name,
    validate_path, validate_query, Headers, Request, RequestInfo, Response, CONSUMER_PROPERTY,
};
use crate::store::{Entry, SharedStore, StoreError};
use crate::{configure, Body, BodyAccess, Decision, Policy};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, Status};
use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::SystemTime;

type Vars = BTreeMap<String, String>;

/// Weir's `weir_unused_callbacks` extension (the gateway's `plugin/ABI.md`): a policy
/// has no `on_log` hook and its contexts are done when the host is, so `proxy_on_log`
/// (value 1) and `proxy_on_done` (value 2) need not be called, nor
/// `proxy_on_response_headers` (value 4) when [`Policy::uses_response`] says so: guest
/// entries fewer per request. Other proxy-wasm hosts ignore the export and call them
/// (they do nothing).
#[no_mangle]
pub extern "C" fn weir_unused_callbacks() -> i32 {
    UNUSED.load(Ordering::Relaxed)
}

const UNUSED_ON_LOG: i32 = 1;
const UNUSED_ON_DONE: i32 = 2;
const UNUSED_ON_RESPONSE_HEADERS: i32 = 4;

/// What [`weir_unused_callbacks`] answers; `on_configure` adds the response bit.
static UNUSED: AtomicI32 = AtomicI32::new(UNUSED_ON_LOG | UNUSED_ON_DONE);

/// The body of `_initialize`: logging, then the root context factory.
pub fn start<P: Policy>() {
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root::<P> { policy: None })
    });
}

fn log(level: LogLevel, message: &str) {
    // proxy_log only fails on a broken host; nothing better to do then.
    let _ = hostcalls::log(level, message);
}

/// One per plugin configuration: holds the policy built in `on_configure`.
struct Root<P> {
    policy: Option<Rc<P>>,
}

impl<P> Context for Root<P> {}

impl<P: Policy> RootContext for Root<P> {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let config = if plugin_configuration_size == 0 {
            None
        } else {
            match hostcalls::get_buffer(
                BufferType::PluginConfiguration,
                0,
                plugin_configuration_size,
            ) {
                Ok(bytes) => bytes,
                Err(status) => {
                    log(
                        LogLevel::Error,
                        &format!("cannot read the plugin configuration: {status:?}"),
                    );
                    return false;
                }
            }
        };
        match configure::<P>(config.as_deref()) {
            Ok(policy) => {
                let response = if policy.uses_response() {
                    0
                } else {
                    UNUSED_ON_RESPONSE_HEADERS
                };
                UNUSED.store(UNUSED_ON_LOG | UNUSED_ON_DONE | response, Ordering::Relaxed);
                self.policy = Some(Rc::new(policy));
                true
            }
            Err(e) => {
                // The previous policy (if any) stays: the host keeps the old config.
                log(
                    LogLevel::Error,
                    &format!("{}: {e}", std::any::type_name::<P>()),
                );
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            policy: self.policy.clone(),
            vars: Vars::new(),
            answered: false,
            body: BodyAccess::Ignore,
            seen: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One per request.
struct Http<P> {
    policy: Option<Rc<P>>,
    vars: Vars,
    /// This policy answered the request locally: its response hook is skipped.
    answered: bool,
    /// What the policy asked to see of the request body.
    body: BodyAccess,
    /// Request body bytes seen so far.
    seen: usize,
}

impl<P> Context for Http<P> {}

impl<P: Policy> HttpContext for Http<P> {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Http {
            policy, vars, body, ..
        } = self;
        let decision = match policy {
            Some(policy) => {
                let decision = policy.on_request(&mut HostRequest::new(vars));
                if decision.is_continue() && !end_of_stream {
                    *body = policy.request_body(&HostRequest::new(vars));
                }
                decision
            }
            None => {
                log(
                    LogLevel::Error,
                    "request reached a plugin whose configuration failed",
                );
                Decision::error(
                    500,
                    "plugin_unavailable",
                    "a plugin of this route is not configured",
                    &HostRequest::new(vars),
                )
            }
        };
        self.apply(decision)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Http {
            policy: Some(policy),
            vars,
            body,
            seen,
            answered: false,
        } = self
        else {
            return Action::Continue;
        };
        match body {
            BodyAccess::Ignore => return Action::Continue,
            BodyAccess::Chunks => *seen = seen.saturating_add(body_size),
            // Held by the host until the end; then `body_size` is all of it.
            BodyAccess::Whole if !end_of_stream => return Action::Pause,
            BodyAccess::Whole => *seen = body_size,
        }
        let view = HostBody {
            len: body_size,
            seen: *seen,
            end: end_of_stream,
        };
        let decision = policy.on_request_body(&HostRequest::new(vars), &view);
        self.apply(decision)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.answered {
            return Action::Continue;
        }
        let Http { policy, vars, .. } = self;
        let Some(policy) = policy else {
            return Action::Continue;
        };
        let decision = policy.on_response(&HostRequest::new(vars), &mut HostResponse::new());
        self.apply(decision)
    }
}

impl<P> Http<P> {
    fn apply(&mut self, decision: Decision) -> Action {
        match decision {
            Decision::Continue => Action::Continue,
            Decision::Respond {
                status,
                headers,
                body,
            } => {
                let status = if (200..=599).contains(&status) {
                    status
                } else {
                    log(
                        LogLevel::Error,
                        &format!("local response status {status} is not 200-599; sending 500"),
                    );
                    500
                };
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                let body = (!body.is_empty()).then_some(body.as_slice());
                self.answered = true;
                if let Err(s) = hostcalls::send_http_response(u32::from(status), headers, body) {
                    log(LogLevel::Error, &format!("local response refused: {s:?}"));
                }
                Action::Pause
            }
        }
    }
}

/// Logs a refused change; the caller then skips it.
fn refused(what: &str, result: Result<(), String>) -> bool {
    match result {
        Ok(()) => false,
        Err(e) => {
            log::warn!("{what} refused: {e}");
            true
        }
    }
}

/// Lower-cases a name only when it needs it.
fn lower(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A header map of the current HTTP context.
struct HostHeaders {
    map: MapType,
}

impl Headers for HostHeaders {
    fn get(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value_bytes(self.map, &lower(name))
            .ok()
            .flatten()
            .map(text)
    }

    fn pairs(&self) -> Vec<(String, String)> {
        hostcalls::get_map_bytes(self.map)
            .unwrap_or_default()
            .into_iter()
            .filter(|(n, _)| !n.starts_with(':'))
            .map(|(n, v)| (n, text(v)))
            .collect()
    }

    fn set(&mut self, name: &str, value: &str) {
        header_write(self.map, HeaderWrite::Replace, name, value);
    }

    fn add(&mut self, name: &str, value: &str) {
        header_write(self.map, HeaderWrite::Add, name, value);
    }

    fn remove(&mut self, name: &str) {
        header_write(self.map, HeaderWrite::Remove, name, "");
    }
}

#[derive(Clone, Copy)]
enum HeaderWrite {
    Replace,
    Add,
    Remove,
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_replace_header_map_value(
        map: MapType,
        key: *const u8,
        key_len: usize,
        value: *const u8,
        value_len: usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map: MapType,
        key: *const u8,
        key_len: usize,
        value: *const u8,
        value_len: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: MapType, key: *const u8, key_len: usize) -> u32;
}

/// One header write, straight to the host: it checks the name and value with the same
/// rules as [`validate_header`] (and lower-cases the name), so the SDK does not run them
/// a second time on every write; only a refused write is checked here, to log why.
/// Pseudo-headers are refused here: the path goes through `set_path`/`set_query`, which
/// keep the request view in step.
fn header_write(map: MapType, op: HeaderWrite, name: &str, value: &str) {
    let status = if name.starts_with(':') {
        u32::MAX
    } else {
        let (k, v) = (name.as_ptr(), value.as_ptr());
        // SAFETY: the pointers and lengths describe live slices for the whole call; the
        // host only reads them.
        unsafe {
            match op {
                HeaderWrite::Replace => {
                    proxy_replace_header_map_value(map, k, name.len(), v, value.len())
                }
                HeaderWrite::Add => proxy_add_header_map_value(map, k, name.len(), v, value.len()),
                HeaderWrite::Remove => proxy_remove_header_map_value(map, k, name.len()),
            }
        }
    };
    if status == 0 {
        return;
    }
    let why = match op {
        HeaderWrite::Remove => validate_header_name(name),
        _ => validate_header(name, value),
    };
    refused(
        "header write",
        why.and(Err(format!("the host refused `{name}` (status {status})"))),
    );
}

fn property(path: &[&str]) -> Option<String> {
    hostcalls::get_property(path.to_vec())
        .ok()
        .flatten()
        .map(text)
}

/// The request of the current HTTP context; facts fetched on first use.
struct HostRequest<'a> {
    headers: HostHeaders,
    vars: &'a mut Vars,
    target: OnceCell<String>,
    method: OnceCell<String>,
    scheme: OnceCell<String>,
    host: OnceCell<Option<String>>,
    client: OnceCell<Option<String>>,
    route: OnceCell<Option<String>>,
    consumer: OnceCell<Option<String>>,
}

impl<'a> HostRequest<'a> {
    fn new(vars: &'a mut Vars) -> HostRequest<'a> {
        HostRequest {
            headers: HostHeaders {
                map: MapType::HttpRequestHeaders,
            },
            vars,
            target: OnceCell::new(),
            method: OnceCell::new(),
            scheme: OnceCell::new(),
            host: OnceCell::new(),
            client: OnceCell::new(),
            route: OnceCell::new(),
            consumer: OnceCell::new(),
        }
    }

    fn target(&self) -> &str {
        self.target
            .get_or_init(|| self.headers.get(":path").unwrap_or_else(|| "/".into()))
    }

    fn write_target(&mut self, target: String) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, ":path", Some(&target));
        self.target = OnceCell::from(target);
    }
}

impl RequestInfo for HostRequest<'_> {
    fn method(&self) -> &str {
        self.method
            .get_or_init(|| self.headers.get(":method").unwrap_or_default())
    }

    fn path(&self) -> &str {
        split_target(self.target()).0
    }

    fn query(&self) -> Option<&str> {
        split_target(self.target()).1
    }

    fn headers(&self) -> &dyn Headers {
        &self.headers
    }

    fn client_addr(&self) -> Option<&str> {
        self.client
            .get_or_init(|| property(&["source", "address"]))
            .as_deref()
    }

    fn route(&self) -> Option<&str> {
        self.route
            .get_or_init(|| property(&["route_name"]))
            .as_deref()
    }

    fn consumer(&self) -> Option<&str> {
        self.consumer
            .get_or_init(|| property(&CONSUMER_PROPERTY).filter(|c| !c.is_empty()))
            .as_deref()
    }

    fn scheme(&self) -> &str {
        self.scheme
            .get_or_init(|| property(&["request", "scheme"]).unwrap_or_else(|| "http".into()))
    }

    fn host(&self) -> Option<&str> {
        self.host
            .get_or_init(|| {
                self.headers
                    .get(":authority")
                    .or_else(|| self.headers.get("host"))
            })
            .as_deref()
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    fn store(&self) -> &dyn SharedStore {
        &HostStore
    }

    fn now(&self) -> SystemTime {
        hostcalls::get_current_time().unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

impl Request for HostRequest<'_> {
    fn headers_mut(&mut self) -> &mut dyn Headers {
        &mut self.headers
    }

    fn set_path(&mut self, path: &str) {
        if !refused("path change", validate_path(path)) {
            let target = join_target(path, self.query());
            self.write_target(target);
        }
    }

    fn set_query(&mut self, query: Option<&str>) {
        if !refused("query change", query.map_or(Ok(()), validate_query)) {
            let target = join_target(self.path(), query);
            self.write_target(target);
        }
    }

    fn set_consumer(&mut self, name: &str) {
        if !refused("consumer", validate_consumer(name)) {
            let _ = hostcalls::set_property(CONSUMER_PROPERTY.to_vec(), Some(name.as_bytes()));
            self.consumer = OnceCell::from(Some(name.to_string()));
        }
    }

    fn set_var(&mut self, name: &str, value: &str) {
        self.vars.insert(name.to_string(), value.to_string());
    }
}

/// The response of the current HTTP context.
struct HostResponse {
    headers: HostHeaders,
    status: OnceCell<u16>,
}

impl HostResponse {
    fn new() -> HostResponse {
        HostResponse {
            headers: HostHeaders {
                map: MapType::HttpResponseHeaders,
            },
            status: OnceCell::new(),
        }
    }
}

impl Response for HostResponse {
    fn status(&self) -> u16 {
        *self.status.get_or_init(|| {
            self.headers
                .get(":status")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        })
    }

    fn headers(&self) -> &dyn Headers {
        &self.headers
    }

    fn headers_mut(&mut self) -> &mut dyn Headers {
        &mut self.headers
    }
}

/// proxy-wasm shared data: one store per VM id, shared by the VMs of a process.
struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let (value, cas) = hostcalls::get_shared_data(key).map_err(unavailable)?;
        Ok(value.map(|value| Entry {
            value,
            cas: cas.unwrap_or(0),
        }))
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u32>,
        value: &[u8],
    ) -> Result<(), StoreError> {
        // cas 0 is "unconditional" in proxy-wasm: see the trait's note on `None`.
        set_shared_data(key, value, expected.unwrap_or(0))
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        set_shared_data(key, value, 0)
    }
}

fn unavailable(status: Status) -> StoreError {
    StoreError::Unavailable(format!("{status:?}"))
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_set_shared_data(
        key: *const u8,
        key_len: usize,
        value: *const u8,
        value_len: usize,
        cas: u32,
    ) -> u32;
}

/// `proxy_set_shared_data` called directly: the proxy-wasm crate's wrapper panics (so
/// the VM traps) on any status but `Ok` and `CasMismatch`, and a full or refusing store
/// must be a [`StoreError`] the policy decides about, not a crash.
fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
    // SAFETY: the pointers and lengths describe live slices for the whole call; the
    // host only reads them.
    let status =
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) };
    match status {
        0 => Ok(()),
        // proxy-wasm's `CasMismatch`.
        8 => Err(StoreError::CasMismatch),
        s => Err(StoreError::Unavailable(format!(
            "the host refused the write (status {s})"
        ))),
    }
}

/// The request body of the current `on_request_body` call.
struct HostBody {
    len: usize,
    seen: usize,
    end: bool,
}

impl Body for HostBody {
    fn len(&self) -> usize {
        self.len
    }

    fn seen(&self) -> usize {
        self.seen
    }

    fn is_end(&self) -> bool {
        self.end
    }

    fn bytes(&self) -> Vec<u8> {
        hostcalls::get_buffer(BufferType::HttpRequestBody, 0, self.len)
            .ok()
            .flatten()
            .unwrap_or_default()
    }
}
