//! What a plugin VM's store holds: limits, the plugin's identity and configuration, and
//! the *scope* of the callback in progress (the request or response it may touch).

use std::net::SocketAddr;
use std::ptr::NonNull;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use wasmtime::{StoreLimits, TypedFunc};

use super::shared::{PluginMetrics, SharedData};

/// Which callback is running; decides what the guest may read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Start-up: `_initialize`, `on_vm_start`, `on_configure`, context creation.
    Root,
    RequestHeaders,
    /// `on_request_body`: the request head is on its way upstream (read-only), the body
    /// seen so far is readable as buffer 0.
    RequestBody,
    ResponseHeaders,
    /// `on_response_body`: the response head is on its way to the client (not readable
    /// here), the body seen so far is readable as buffer 1.
    ResponseBody,
    /// `on_log`, `on_done`, `on_delete`: read-only.
    Log,
}

impl Phase {
    /// For logs.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Root => "start",
            Phase::RequestHeaders => "request_headers",
            Phase::RequestBody => "request_body",
            Phase::ResponseHeaders => "response_headers",
            Phase::ResponseBody => "response_body",
            Phase::Log => "log",
        }
    }
}

/// A local answer a plugin asked for with `proxy_send_local_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: super::abi::Pairs,
    pub body: Vec<u8>,
    pub details: String,
}

/// Per-request facts a plugin can read as properties.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    pub client: Option<SocketAddr>,
    pub route: Option<Arc<str>>,
    pub request_id: String,
    pub tls: bool,
    /// Upstreams `proxy_http_call` may reach (the snapshot's; never arbitrary addresses).
    pub upstreams: Arc<[Arc<str>]>,
}

/// An HTTP call a plugin dispatched (`proxy_http_call`), made by the gateway after the
/// callback returns.
#[derive(Debug, Clone)]
pub struct PendingCall {
    pub token: u32,
    pub upstream: Arc<str>,
    pub method: String,
    pub path: String,
    pub headers: super::abi::Pairs,
    pub body: Vec<u8>,
    pub timeout: std::time::Duration,
}

/// The answer to a [`PendingCall`]; `None` status when the call failed.
#[derive(Debug, Clone, Default)]
pub struct CallResponse {
    pub status: Option<u16>,
    pub headers: super::abi::Pairs,
    pub body: Vec<u8>,
}

/// Properties set by plugins during one request (`proxy_set_property`), readable by
/// later plugins and by the gateway (for example `weir.consumer`).
///
/// A request carries a few (usually just the consumer), at most [`Properties::MAX`]: a
/// vector searched in order costs less than hashing each name with SipHash.
#[derive(Debug, Default, Clone)]
pub struct Properties(Vec<(String, Vec<u8>)>);

impl Properties {
    /// Most properties one request may carry; a plugin setting more gets `BadArgument`.
    pub const MAX: usize = 256;

    pub fn new() -> Properties {
        Properties(Vec::new())
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Sets `name`, replacing its value; `false` (and nothing set) for a new name once
    /// [`Self::MAX`] are set.
    pub fn set(&mut self, name: &str, value: Vec<u8>) -> bool {
        if let Some((_, v)) = self.0.iter_mut().find(|(n, _)| n == name) {
            *v = value;
        } else if self.0.len() < Self::MAX {
            self.0.push((name.to_owned(), value));
        } else {
            return false;
        }
        true
    }
}

/// A header write: `proxy_replace_`, `proxy_add_` or `proxy_remove_header_map_value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    Replace,
    Add,
    Remove,
}

/// Response-header writes plugins make while the request headers are processed, before
/// there is a response (Weir's extension, see ABI.md): applied in order to the
/// response of the request, the upstream's before any plugin's response hook sees it,
/// or the one Weir answers itself. A policy that knows
/// its response headers early (rate-limit's counts) then needs no response hook.
#[derive(Debug, Default)]
pub struct ResponseEdits(Vec<(Edit, HeaderName, HeaderValue)>);

impl ResponseEdits {
    /// Most writes one request may queue; a plugin queueing more gets `BadArgument`.
    pub const MAX: usize = 256;

    pub fn new() -> ResponseEdits {
        ResponseEdits(Vec::new())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Queues a write (`value` is unused by a removal); `false` (and nothing queued)
    /// once [`Self::MAX`] are queued. The name is parsed once, here: applied to a
    /// header map, it goes in as is.
    pub fn push(&mut self, edit: Edit, name: HeaderName, value: HeaderValue) -> bool {
        if self.0.len() >= Self::MAX {
            return false;
        }
        self.0.push((edit, name, value));
        true
    }

    /// Applies the queued writes to a response's header map, in order, and forgets
    /// them.
    pub fn apply_to_map(&mut self, map: &mut HeaderMap) {
        for (edit, name, value) in self.0.drain(..) {
            let r = match edit {
                Edit::Replace => map.try_insert(name, value).map(drop),
                Edit::Add => map.try_append(name, value).map(drop),
                Edit::Remove => {
                    map.remove(&name);
                    Ok(())
                }
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "a plugin's response header was not written");
            }
        }
    }

    /// Applies the queued writes to `head`, in order, and forgets them: straight to its
    /// map when it keeps no record of header-name case (Weir's own answers; any head
    /// unless `preserve_header_case`), through pingora's cased writes otherwise.
    pub fn apply(&mut self, head: &mut ResponseHeader) {
        use crate::headers::Head;
        if !head.has_case() {
            head.edit_map(|map| self.apply_to_map(map));
            return;
        }
        for (edit, name, value) in self.0.drain(..) {
            // The name's bytes (lower case) are its wire case, as a plugin wrote it.
            let r = match edit {
                Edit::Replace => head.insert_header(name.as_str().to_owned(), value),
                Edit::Add => head
                    .append_header(name.as_str().to_owned(), value)
                    .map(drop),
                Edit::Remove => {
                    head.remove_header(&name);
                    Ok(())
                }
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "a plugin's response header was not written");
            }
        }
    }
}

/// Raw pointers to what the current callback may touch. They are set right before a
/// guest call and cleared right after it (see [`super::vm::Vm::call_scoped`]), on the
/// same thread, while the caller holds the `&mut` borrows they came from; host functions
/// only dereference them during that call. Nothing else ever reads them.
#[derive(Default)]
pub struct Scope {
    pub phase: Option<Phase>,
    pub request: Option<NonNull<RequestHeader>>,
    pub response: Option<NonNull<ResponseHeader>>,
    pub info: Option<NonNull<RequestInfo>>,
    pub properties: Option<NonNull<Properties>>,
    pub response_edits: Option<NonNull<ResponseEdits>>,
    /// The body buffered so far (`on_request_body`, `on_response_body`).
    pub body: Option<NonNull<[u8]>>,
}

// SAFETY: the pointers are only dereferenced on the thread that set them, within the
// synchronous guest call during which the pointees are exclusively borrowed by the
// caller; between calls they are `None`.
unsafe impl Send for Scope {}

/// The store data of one plugin VM.
pub struct HostState {
    pub limits: StoreLimits,
    pub plugin: Arc<str>,
    pub plugin_config: Arc<[u8]>,
    pub scope: Scope,
    pub local_response: Option<LocalResponse>,
    /// Calls dispatched during the current callback.
    pub pending_calls: Vec<PendingCall>,
    /// The call response visible during `on_http_call_response`.
    pub call_response: Option<CallResponse>,
    pub next_token: u32,
    pub shared: Arc<SharedData>,
    pub metrics: Arc<PluginMetrics>,
    /// The guest's allocator (`proxy_on_memory_allocate` or `malloc`), found after
    /// instantiation; host calls that return data use it.
    pub alloc: Option<TypedFunc<i32, i32>>,
    /// The guest's exported memory, found after instantiation.
    pub memory: Option<wasmtime::Memory>,
    /// Partial lines written to stdout/stderr, flushed to the log at newlines.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The last error the plugin logged while starting (why `on_configure` refused).
    pub startup_error: Option<String>,
    /// `proxy_set_tick_period_milliseconds`: how often the plugin timer calls `on_tick`.
    pub tick_period: Option<std::time::Duration>,
}

impl HostState {
    /// Mutable access to the request headers, when the current phase allows it.
    pub fn request_mut(&mut self) -> Option<&mut RequestHeader> {
        // SAFETY: see `Scope`.
        self.scope.request.map(|mut p| unsafe { p.as_mut() })
    }

    pub fn response_mut(&mut self) -> Option<&mut ResponseHeader> {
        // SAFETY: see `Scope`.
        self.scope.response.map(|mut p| unsafe { p.as_mut() })
    }

    pub fn info(&self) -> Option<&RequestInfo> {
        // SAFETY: see `Scope`.
        self.scope.info.map(|p| unsafe { p.as_ref() })
    }

    pub fn body(&self) -> Option<&[u8]> {
        // SAFETY: see `Scope`.
        self.scope.body.map(|p| unsafe { p.as_ref() })
    }

    pub fn properties_mut(&mut self) -> Option<&mut Properties> {
        // SAFETY: see `Scope`.
        self.scope.properties.map(|mut p| unsafe { p.as_mut() })
    }

    pub fn response_edits_mut(&mut self) -> Option<&mut ResponseEdits> {
        // SAFETY: see `Scope`.
        self.scope.response_edits.map(|mut p| unsafe { p.as_mut() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(v: &'static str) -> HeaderValue {
        HeaderValue::from_static(v)
    }

    #[test]
    fn response_edits_apply_in_order_and_stop_at_their_cap() {
        let name = HeaderName::from_static;
        let all = |head: &ResponseHeader, n: &str| -> Vec<Vec<u8>> {
            head.headers
                .get_all(n)
                .iter()
                .map(|v| v.as_bytes().to_vec())
                .collect()
        };
        // A head without a record of header-name case (written to through its map), and
        // one with (through pingora's cased writes): the same headers either way.
        for cased in [false, true] {
            let mut q = ResponseEdits::new();
            assert!(q.push(Edit::Add, name("x-a"), value("1")));
            assert!(q.push(Edit::Add, name("x-a"), value("2")));
            assert!(q.push(Edit::Replace, name("x-b"), value("new")));
            assert!(q.push(Edit::Remove, name("x-c"), value("")));
            let mut head = if cased {
                ResponseHeader::build(200, None).unwrap()
            } else {
                ResponseHeader::build_no_case(200, None).unwrap()
            };
            head.insert_header("x-b", "old").unwrap();
            head.insert_header("x-c", "gone").unwrap();
            q.apply(&mut head);
            assert!(q.is_empty());
            assert_eq!(head.has_case(), cased);
            assert_eq!(all(&head, "x-a"), [b"1", b"2"], "cased: {cased}");
            assert_eq!(all(&head, "x-b"), [b"new"], "cased: {cased}");
            assert!(all(&head, "x-c").is_empty(), "cased: {cased}");
            if cased {
                let mut wire = bytes::BytesMut::new();
                head.header_to_h1_wire(&mut wire);
                let wire = String::from_utf8_lossy(&wire);
                assert!(wire.contains("x-a: 1\r\n"), "{wire}");
            }
        }

        let mut q = ResponseEdits::new();
        for _ in 0..ResponseEdits::MAX {
            assert!(q.push(Edit::Add, name("x-n"), value("1")));
        }
        assert!(!q.push(Edit::Add, name("x-n"), value("1")));
        assert_eq!(q.len(), ResponseEdits::MAX);
    }
}
