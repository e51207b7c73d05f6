//! The policy adapter: the root and HTTP contexts `export_policy!` registers with the
//! ABI layer ([`crate::abi`]), and the request, response and store views backed by host
//! calls. wasm32 only (the host calls are imports that exist only inside a proxy-wasm
//! host).
//!
//! The views check writes first (the gateway's rules, `validate_header` and friends)
//! and only call the host in the phase the call belongs to; a status the host returns
//! is logged or turned into an error, never a trap.

use crate::abi::{self, HeaderWrite};
use crate::http::{
    join_target, split_target, validate_consumer, validate_header, validate_header_name,
    validate_path, validate_query, Headers, Request, RequestInfo, Response, CONSUMER_PROPERTY,
};
use crate::store::{Entry, SharedStore, StoreError};
use crate::{configure, Body, BodyAccess, Decision, Policy};
use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, SystemTime};

/// What a request's context keeps for later hooks.
#[derive(Default)]
struct Kept {
    /// [`Request::set_var`].
    vars: BTreeMap<String, String>,
    /// [`Request::set_response_header`] calls a host that cannot take them before the
    /// response (any but Weir) refused with `NotFound`: written in the response hook.
    response_headers: Vec<(String, String)>,
}

/// Weir's `weir_unused_callbacks` extension (the gateway's `plugin/ABI.md`): a policy
/// has no `on_log` hook and its contexts are done when the host is, so `proxy_on_log`
/// (value 1) and `proxy_on_done` (value 2) need not be called, nor
/// `proxy_on_response_headers` (value 4) when [`Policy::uses_response`] says so; and
/// the SDK makes HTTP contexts on demand (value 8): a host that knows it skips
/// `proxy_on_context_create`, and the SDK tells it, by adding [`abi::DONE`] to a
/// callback's action, when a context needs no more callbacks, `proxy_on_delete`
/// included. Guest entries fewer per request. Other proxy-wasm hosts ignore the export
/// and call everything (which does nothing more).
#[no_mangle]
pub extern "C" fn weir_unused_callbacks() -> i32 {
    UNUSED.load(Ordering::Relaxed)
}

const UNUSED_ON_LOG: i32 = 1;
const UNUSED_ON_DONE: i32 = 2;
const UNUSED_ON_RESPONSE_HEADERS: i32 = 4;
const CONTEXTS_ON_DEMAND: i32 = 8;
const ALWAYS: i32 = UNUSED_ON_LOG | UNUSED_ON_DONE | CONTEXTS_ON_DEMAND;

/// What [`weir_unused_callbacks`] answers; `on_configure` adds the response bit.
static UNUSED: AtomicI32 = AtomicI32::new(ALWAYS);

/// The body of `_initialize`: the C runtime's constructors (wasi-libc's, as a WASI
/// reactor runs them), then the policy's contexts, registered with the ABI layer.
pub fn initialize<P: Policy>() {
    #[cfg(target_os = "wasi")]
    {
        extern "C" {
            fn __wasm_call_ctors();
        }
        // SAFETY: the linker-made constructor list, run once, before anything else.
        unsafe { __wasm_call_ctors() }
    }
    abi::register(Box::new(Contexts::<P> {
        roots: Vec::new(),
        http: Vec::new(),
    }));
}

/// Every live context of the VM. A host runs a handful of requests at once per VM, so
/// a vector searched from its newest end beats any map.
struct Contexts<P> {
    /// Root contexts (one per plugin configuration) and the policy each built.
    roots: Vec<(u32, Option<Rc<P>>)>,
    /// HTTP contexts, one per request.
    http: Vec<(u32, Http<P>)>,
}

impl<P> Contexts<P> {
    fn http(&mut self, id: u32) -> Option<&mut Http<P>> {
        self.http
            .iter_mut()
            .rev()
            .find(|(i, _)| *i == id)
            .map(|(_, h)| h)
    }

    /// A context of `root`'s policy. A root the host never created (a broken host, or
    /// a context made on demand) serves the first policy.
    fn new_http(&self, root: Option<u32>, on_demand: bool) -> Http<P> {
        let policy = root
            .and_then(|root| self.roots.iter().find(|(r, _)| *r == root))
            .or(self.roots.first())
            .and_then(|(_, p)| p.clone());
        Http {
            policy,
            kept: Kept::default(),
            answered: false,
            body: BodyAccess::Ignore,
            seen: 0,
            on_demand,
        }
    }
}

impl<P: Policy> abi::Filter for Contexts<P> {
    fn create(&mut self, id: u32, root: u32) {
        if root == 0 {
            self.roots.push((id, None));
            return;
        }
        let http = self.new_http(Some(root), false);
        self.http.push((id, http));
    }

    fn configure(&mut self, root: u32, size: usize) -> bool {
        let config = if size == 0 {
            None
        } else {
            match abi::buffer(abi::PLUGIN_CONFIGURATION, 0, size) {
                Ok(bytes) => Some(bytes),
                Err(status) => {
                    abi::log(
                        abi::ERROR,
                        &format!("cannot read the plugin configuration (status {status})"),
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
                UNUSED.store(ALWAYS | response, Ordering::Relaxed);
                let policy = Some(Rc::new(policy));
                match self.roots.iter_mut().find(|(r, _)| *r == root) {
                    Some((_, p)) => *p = policy,
                    None => self.roots.push((root, policy)),
                }
                true
            }
            Err(e) => {
                // The previous policy (if any) stays: the host keeps the old config.
                abi::log(abi::ERROR, &format!("{}: {e}", std::any::type_name::<P>()));
                false
            }
        }
    }

    fn request_headers(&mut self, id: u32, _headers: usize, end: bool) -> u32 {
        if let Some(h) = self.http(id) {
            return h.on_request_headers(end);
        }
        // A context the host did not create: one that makes them on demand (Weir). It
        // is kept only when a later callback needs it.
        let mut h = self.new_http(None, true);
        let action = h.on_request_headers(end);
        let later = !h.answered
            && (h.policy.as_ref().is_some_and(|p| p.uses_response())
                || !h.kept.response_headers.is_empty()
                || (!end && !matches!(h.body, BodyAccess::Ignore)));
        if later {
            self.http.push((id, h));
            action
        } else {
            action | abi::DONE
        }
    }

    fn request_body(&mut self, id: u32, size: usize, end: bool) -> u32 {
        self.http(id)
            .map_or(abi::CONTINUE, |h| h.on_request_body(size, end))
    }

    fn response_headers(&mut self, id: u32, _headers: usize, _end: bool) -> u32 {
        let Some(i) = self.http.iter().rposition(|(i, _)| *i == id) else {
            return abi::CONTINUE;
        };
        let action = self.http[i].1.on_response_headers();
        // The last callback the SDK needs: a context made on demand ends here.
        if self.http[i].1.on_demand {
            self.http.swap_remove(i);
            return action | abi::DONE;
        }
        action
    }

    fn delete(&mut self, id: u32) {
        if let Some(i) = self.http.iter().rposition(|(i, _)| *i == id) {
            self.http.swap_remove(i);
        } else {
            self.roots.retain(|(r, _)| *r != id);
        }
    }
}

/// One per request.
struct Http<P> {
    policy: Option<Rc<P>>,
    kept: Kept,
    /// This policy answered the request locally: its response hook is skipped.
    answered: bool,
    /// What the policy asked to see of the request body.
    body: BodyAccess,
    /// Request body bytes seen so far.
    seen: usize,
    /// Made on demand (not by `proxy_on_context_create`): the host speaks Weir's
    /// extension, and is told when the context is done (`abi::DONE`).
    on_demand: bool,
}

impl<P: Policy> Http<P> {
    fn on_request_headers(&mut self, end_of_stream: bool) -> u32 {
        let Http {
            policy, kept, body, ..
        } = self;
        let decision = match policy {
            Some(policy) => {
                let decision = policy.on_request(&mut HostRequest::new(kept));
                if decision.is_continue() && !end_of_stream {
                    *body = policy.request_body(&HostRequest::new(kept));
                }
                decision
            }
            None => {
                abi::log(
                    abi::ERROR,
                    "request reached a plugin whose configuration failed",
                );
                Decision::error(
                    500,
                    "plugin_unavailable",
                    "a plugin of this route is not configured",
                    &HostRequest::new(kept),
                )
            }
        };
        self.apply(decision)
    }

    fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> u32 {
        let Http {
            policy: Some(policy),
            kept,
            body,
            seen,
            answered: false,
            ..
        } = self
        else {
            return abi::CONTINUE;
        };
        match body {
            BodyAccess::Ignore => return abi::CONTINUE,
            BodyAccess::Chunks => *seen = seen.saturating_add(body_size),
            // Held by the host until the end; then `body_size` is all of it.
            BodyAccess::Whole if !end_of_stream => return abi::PAUSE,
            BodyAccess::Whole => *seen = body_size,
        }
        let view = HostBody {
            len: body_size,
            seen: *seen,
            end: end_of_stream,
        };
        let decision = policy.on_request_body(&HostRequest::new(kept), &view);
        self.apply(decision)
    }

    fn on_response_headers(&mut self) -> u32 {
        if self.answered {
            return abi::CONTINUE;
        }
        let Http { policy, kept, .. } = self;
        let mut response = HostResponse::new();
        for (name, value) in std::mem::take(&mut kept.response_headers) {
            response.headers_mut().set(&name, &value);
        }
        let Some(policy) = policy else {
            return abi::CONTINUE;
        };
        let decision = policy.on_response(&HostRequest::new(kept), &mut response);
        self.apply(decision)
    }
}

impl<P> Http<P> {
    fn apply(&mut self, decision: Decision) -> u32 {
        match decision {
            Decision::Continue => abi::CONTINUE,
            Decision::Respond {
                status,
                headers,
                body,
            } => {
                let status = if (200..=599).contains(&status) {
                    status
                } else {
                    abi::log(
                        abi::ERROR,
                        &format!("local response status {status} is not 200-599; sending 500"),
                    );
                    500
                };
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                self.answered = true;
                let s = abi::send_local_response(u32::from(status), &headers, &body);
                if s != abi::OK {
                    abi::log(abi::ERROR, &format!("local response refused (status {s})"));
                }
                abi::PAUSE
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
    map: u32,
}

impl Headers for HostHeaders {
    fn get(&self, name: &str) -> Option<String> {
        abi::header(self.map, &lower(name)).ok().map(text)
    }

    fn pairs(&self) -> Vec<(String, String)> {
        abi::header_pairs(self.map)
            .unwrap_or_default()
            .into_iter()
            .filter(|(n, _)| !n.starts_with(b":"))
            .map(|(n, v)| (text(n), text(v)))
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

/// One header write, straight to the host: it checks the name and value with the same
/// rules as [`validate_header`] (and lower-cases the name), so the SDK does not run them
/// a second time on every write; only a refused write is checked here, to log why.
/// Pseudo-headers are refused here: the path goes through `set_path`/`set_query`, which
/// keep the request view in step.
fn header_write(map: u32, op: HeaderWrite, name: &str, value: &str) {
    let status = if name.starts_with(':') {
        u32::MAX
    } else {
        abi::header_write(map, op, name, value)
    };
    if status == abi::OK {
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

/// A property by its path's segments; absent or empty reads as `None`.
fn property(path: &[&str]) -> Option<String> {
    with_path(path, |p| abi::property(p).ok())
        .flatten()
        .filter(|v| !v.is_empty())
        .map(text)
}

/// Gives `f` a property path in the ABI's form, its segments NUL-separated, serialized
/// on the stack; `None` for a path longer than 64 bytes (the SDK's are all shorter).
fn with_path<R>(path: &[&str], f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    let mut buf = [0u8; 64];
    let mut len = 0;
    for (i, seg) in path.iter().enumerate() {
        if i > 0 {
            *buf.get_mut(len)? = 0;
            len += 1;
        }
        buf.get_mut(len..len + seg.len())?
            .copy_from_slice(seg.as_bytes());
        len += seg.len();
    }
    Some(f(&buf[..len]))
}

/// The request of the current HTTP context; facts fetched on first use.
struct HostRequest<'a> {
    headers: HostHeaders,
    kept: &'a mut Kept,
    target: OnceCell<String>,
    method: OnceCell<String>,
    scheme: OnceCell<String>,
    host: OnceCell<Option<String>>,
    client: OnceCell<Option<String>>,
    route: OnceCell<Option<String>>,
    consumer: OnceCell<Option<String>>,
}

impl<'a> HostRequest<'a> {
    fn new(kept: &'a mut Kept) -> HostRequest<'a> {
        HostRequest {
            headers: HostHeaders {
                map: abi::REQUEST_HEADERS,
            },
            kept,
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
        let _ = abi::header_write(abi::REQUEST_HEADERS, HeaderWrite::Replace, ":path", &target);
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
        self.kept.vars.get(name).map(String::as_str)
    }

    fn store(&self) -> &dyn SharedStore {
        &HostStore
    }

    fn now(&self) -> SystemTime {
        abi::now_ns().map_or(SystemTime::UNIX_EPOCH, |ns| {
            SystemTime::UNIX_EPOCH + Duration::from_nanos(ns)
        })
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
            with_path(&CONSUMER_PROPERTY, |p| {
                abi::set_property(p, name.as_bytes())
            });
            self.consumer = OnceCell::from(Some(name.to_string()));
        }
    }

    fn set_var(&mut self, name: &str, value: &str) {
        self.kept.vars.insert(name.to_string(), value.to_string());
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        // The host lower-cases names itself.
        let status = if name.starts_with(':') {
            u32::MAX
        } else {
            abi::header_write(abi::RESPONSE_HEADERS, HeaderWrite::Replace, name, value)
        };
        match status {
            abi::OK => {}
            // A host without Weir's extension: written by the response hook instead.
            abi::NOT_FOUND => {
                if !refused("response header", validate_header(name, value)) {
                    let name = name.to_ascii_lowercase();
                    let headers = &mut self.kept.response_headers;
                    headers.retain(|(n, _)| *n != name);
                    headers.push((name, value.to_owned()));
                }
            }
            _ => {
                refused(
                    "response header",
                    validate_header(name, value)
                        .and(Err(format!("the host refused `{name}` (status {status})"))),
                );
            }
        }
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
                map: abi::RESPONSE_HEADERS,
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
        match abi::shared_data(key) {
            Ok((value, cas)) => Ok(Some(Entry { value, cas })),
            Err(abi::NOT_FOUND) => Ok(None),
            Err(s) => Err(StoreError::Unavailable(format!(
                "the host refused the read (status {s})"
            ))),
        }
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

/// A full or refusing store is a [`StoreError`] the policy decides about, not a crash.
fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
    match abi::set_shared_data(key, value, cas) {
        abi::OK => Ok(()),
        abi::CAS_MISMATCH => Err(StoreError::CasMismatch),
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
        abi::buffer(abi::REQUEST_BODY, 0, self.len).unwrap_or_default()
    }
}
