//! The proxy-wasm ABI v0.2.1 as the SDK uses it: the host calls (imports of module
//! `env`), safe wrappers over them, and the callbacks the module exports, which hand
//! each event to the [`Filter`] that `export_policy!` registered. wasm32 only.
//!
//! The SDK speaks the ABI itself rather than through the `proxy-wasm` crate: that
//! crate's dispatcher looks each context up in SipHash maps, boxes every context,
//! serializes property paths into new vectors, and panics (traps the VM) on any status
//! it does not expect. Here a context is one entry of a short vector, a property path
//! is serialized on the stack, and a status is returned for the caller to decide on.
//! The SDK's README ("What the host must provide") lists what is exported and called:
//! the crate's HTTP-filter callbacks (not its network-filter, gRPC and foreign-function
//! ones, which an SDK policy never used), and only the host calls the SDK makes.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ptr::null_mut;

/// `Status::Ok`, `NotFound` and `CasMismatch`.
pub const OK: u32 = 0;
pub const NOT_FOUND: u32 = 1;
pub const CAS_MISMATCH: u32 = 8;

/// Header maps.
pub const REQUEST_HEADERS: u32 = 0;
pub const RESPONSE_HEADERS: u32 = 2;

/// Buffers.
pub const REQUEST_BODY: u32 = 0;
pub const PLUGIN_CONFIGURATION: u32 = 7;

/// Callback results (`Action`).
pub const CONTINUE: u32 = 0;
pub const PAUSE: u32 = 1;
/// Weir's extension (the gateway's `plugin/ABI.md`), added to an action: the module is
/// done with the context. Only for a host that made the context on demand.
pub const DONE: u32 = 0x100;

/// Log levels.
pub const ERROR: u32 = 4;
pub const CRITICAL: u32 = 5;

mod sys {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_log(level: u32, message: *const u8, len: usize) -> u32;
        pub fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
        pub fn proxy_get_buffer_bytes(
            kind: u32,
            start: usize,
            max: usize,
            data: *mut *mut u8,
            len: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, len: *mut usize) -> u32;
        pub fn proxy_get_header_map_value(
            map: u32,
            key: *const u8,
            key_len: usize,
            data: *mut *mut u8,
            len: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map: u32,
            key: *const u8,
            key_len: usize,
            value: *const u8,
            value_len: usize,
        ) -> u32;
        pub fn proxy_add_header_map_value(
            map: u32,
            key: *const u8,
            key_len: usize,
            value: *const u8,
            value_len: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(map: u32, key: *const u8, key_len: usize) -> u32;
        pub fn proxy_get_property(
            path: *const u8,
            path_len: usize,
            data: *mut *mut u8,
            len: *mut usize,
        ) -> u32;
        pub fn proxy_set_property(
            path: *const u8,
            path_len: usize,
            value: *const u8,
            value_len: usize,
        ) -> u32;
        #[allow(clippy::too_many_arguments)]
        pub fn proxy_send_local_response(
            status: u32,
            details: *const u8,
            details_len: usize,
            body: *const u8,
            body_len: usize,
            headers: *const u8,
            headers_len: usize,
            grpc_status: i32,
        ) -> u32;
        pub fn proxy_get_shared_data(
            key: *const u8,
            key_len: usize,
            data: *mut *mut u8,
            len: *mut usize,
            cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key: *const u8,
            key_len: usize,
            value: *const u8,
            value_len: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_call_foreign_function(
            name: *const u8,
            name_len: usize,
            args: *const u8,
            args_len: usize,
            data: *mut *mut u8,
            len: *mut usize,
        ) -> u32;
        pub fn proxy_define_metric(kind: u32, name: *const u8, len: usize, id: *mut u32) -> u32;
        pub fn proxy_increment_metric(id: u32, delta: i64) -> u32;
    }
}

/// Bytes the host returned: it wrote them into memory it got from
/// [`proxy_on_memory_allocate`], which this takes ownership of.
///
/// # Safety
/// `data` is null or was returned by `proxy_on_memory_allocate(len)`, unaliased.
unsafe fn take(data: *mut u8, len: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        // SAFETY: per the contract, an allocation of exactly `len` bytes of align 1,
        // all written by the host.
        unsafe { Vec::from_raw_parts(data, len, len) }
    }
}

/// Calls a getter that returns bytes through `(data, len)` out-pointers: `Ok(bytes)`,
/// or the status. A missing value the host reports with a null pointer reads as empty.
fn get(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Vec<u8>, u32> {
    let (mut data, mut len) = (null_mut(), 0usize);
    let status = call(&mut data, &mut len);
    // SAFETY: on `Ok` the host hands over an allocation it made with our allocator;
    // on any other status it wrote nothing.
    (status == OK)
        .then(|| unsafe { take(data, len) })
        .ok_or(status)
}

pub fn log(level: u32, message: &str) {
    // SAFETY: a live slice, only read by the host. Fails only on a broken host.
    let _ = unsafe { sys::proxy_log(level, message.as_ptr(), message.len()) };
}

/// Nanoseconds since the Unix epoch, by the host's clock.
pub fn now_ns() -> Option<u64> {
    let mut t = 0u64;
    // SAFETY: `t` is valid for the host's 8-byte write.
    (unsafe { sys::proxy_get_current_time_nanoseconds(&mut t) } == OK).then_some(t)
}

pub fn buffer(kind: u32, start: usize, max: usize) -> Result<Vec<u8>, u32> {
    // SAFETY: the out-pointers are valid for the call.
    get(|d, l| unsafe { sys::proxy_get_buffer_bytes(kind, start, max, d, l) })
}

pub fn header(map: u32, name: &str) -> Result<Vec<u8>, u32> {
    // SAFETY: `name` is live for the call; the out-pointers are valid.
    get(|d, l| unsafe { sys::proxy_get_header_map_value(map, name.as_ptr(), name.len(), d, l) })
}

/// Every `(name, value)` of a header map, pseudo-headers included.
pub fn header_pairs(map: u32) -> Result<crate::pairs::Pairs, u32> {
    // SAFETY: the out-pointers are valid for the call.
    let bytes = get(|d, l| unsafe { sys::proxy_get_header_map_pairs(map, d, l) })?;
    // A malformed map from the host reads as empty, not as a trap.
    Ok(crate::pairs::deserialize(&bytes).unwrap_or_default())
}

/// Which header write: `proxy_replace_`, `proxy_add_` or `proxy_remove_header_map_value`.
#[derive(Clone, Copy)]
pub enum HeaderWrite {
    Replace,
    Add,
    Remove,
}

pub fn header_write(map: u32, op: HeaderWrite, name: &str, value: &str) -> u32 {
    let (k, v) = (name.as_ptr(), value.as_ptr());
    // SAFETY: the pointers and lengths describe live slices for the whole call; the
    // host only reads them.
    unsafe {
        match op {
            HeaderWrite::Replace => {
                sys::proxy_replace_header_map_value(map, k, name.len(), v, value.len())
            }
            HeaderWrite::Add => sys::proxy_add_header_map_value(map, k, name.len(), v, value.len()),
            HeaderWrite::Remove => sys::proxy_remove_header_map_value(map, k, name.len()),
        }
    }
}

/// A property path, its segments NUL-separated (`b"source\0address"`).
pub fn property(path: &[u8]) -> Result<Vec<u8>, u32> {
    // SAFETY: `path` is live for the call; the out-pointers are valid.
    get(|d, l| unsafe { sys::proxy_get_property(path.as_ptr(), path.len(), d, l) })
}

pub fn set_property(path: &[u8], value: &[u8]) -> u32 {
    // SAFETY: live slices, only read by the host.
    unsafe { sys::proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) }
}

pub fn send_local_response(status: u32, headers: &[(&str, &str)], body: &[u8]) -> u32 {
    let headers =
        crate::pairs::serialize(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    // SAFETY: live slices, only read by the host; no details, no gRPC status (-1).
    unsafe {
        sys::proxy_send_local_response(
            status,
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    }
}

/// `(value, cas)` of a shared-data key; `Err(NOT_FOUND)` when it has none.
pub fn shared_data(key: &str) -> Result<(Vec<u8>, u32), u32> {
    let mut cas = 0u32;
    // SAFETY: `key` is live for the call; the out-pointers are valid.
    let value =
        get(|d, l| unsafe { sys::proxy_get_shared_data(key.as_ptr(), key.len(), d, l, &mut cas) })?;
    Ok((value, cas))
}

pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> u32 {
    // SAFETY: live slices, only read by the host.
    unsafe { sys::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) }
}

/// A host extension by name: its answer's bytes, or the status (`NOT_FOUND` on a host
/// without it).
pub fn call_foreign(name: &str, args: &[u8]) -> Result<Vec<u8>, u32> {
    get(|d, l| {
        // SAFETY: live slices, only read by the host; `d` and `l` valid for its writes.
        unsafe {
            sys::proxy_call_foreign_function(
                name.as_ptr(),
                name.len(),
                args.as_ptr(),
                args.len(),
                d,
                l,
            )
        }
    })
}

pub fn define_metric(kind: u32, name: &str) -> Result<u32, u32> {
    let mut id = 0u32;
    // SAFETY: `name` is live for the call and `id` valid for the host's u32 write.
    let status = unsafe { sys::proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    (status == OK).then_some(id).ok_or(status)
}

pub fn increment_metric(id: u32, delta: i64) -> u32 {
    // SAFETY: plain values.
    unsafe { sys::proxy_increment_metric(id, delta) }
}

/// What the exported callbacks drive: the policy's root and HTTP contexts. Registered
/// once, by `_initialize` ([`register`]).
pub trait Filter {
    /// `proxy_on_context_create`: a root context when `root` is 0, else an HTTP context
    /// of that root.
    fn create(&mut self, id: u32, root: u32);
    fn configure(&mut self, root: u32, size: usize) -> bool;
    fn request_headers(&mut self, id: u32, headers: usize, end: bool) -> u32;
    fn request_body(&mut self, id: u32, size: usize, end: bool) -> u32;
    fn response_headers(&mut self, id: u32, headers: usize, end: bool) -> u32;
    fn delete(&mut self, id: u32);
}

thread_local! {
    // wasm32 without threads: a plain static behind a RefCell. Callbacks never nest
    // (the host does not call into the module while it runs), so a borrow never fails.
    static FILTER: RefCell<Option<Box<dyn Filter>>> = const { RefCell::new(None) };
}

/// Installs the filter, the `log` crate logger and a panic hook that logs the panic
/// through the host (at critical) before the VM traps.
pub fn register(filter: Box<dyn Filter>) {
    static LOGGER: HostLogger = HostLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
        std::panic::set_hook(Box::new(|info| log(CRITICAL, &info.to_string())));
    }
    FILTER.with(|f| *f.borrow_mut() = Some(filter));
}

fn with<R>(default: R, call: impl FnOnce(&mut dyn Filter) -> R) -> R {
    FILTER.with(|f| match f.try_borrow_mut() {
        Ok(mut f) => match f.as_deref_mut() {
            Some(f) => call(f),
            None => default,
        },
        Err(_) => default,
    })
}

struct HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            // proxy-wasm levels: 0 trace, 1 debug, 2 info, 3 warn, 4 error.
            let level = 5 - record.level() as u32;
            log(level, &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

// The exports. Their names and signatures are the ABI's; the integer widths are those
// of wasm32 (`usize` is 32 bits), as in the `proxy-wasm` crate.

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// Memory for what the host returns; the SDK takes it back with [`take`].
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let block: Box<[MaybeUninit<u8>]> = Box::new_uninit_slice(size);
    Box::into_raw(block).cast()
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(id: u32, root: u32) {
    with((), |f| f.create(id, root));
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root: u32, _size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root: u32, size: usize) -> bool {
    with(false, |f| f.configure(root, size))
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(id: u32, headers: usize, end: bool) -> u32 {
    with(CONTINUE, |f| f.request_headers(id, headers, end))
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(id: u32, size: usize, end: bool) -> u32 {
    with(CONTINUE, |f| f.request_body(id, size, end))
}

#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(_id: u32, _trailers: usize) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(id: u32, headers: usize, end: bool) -> u32 {
    with(CONTINUE, |f| f.response_headers(id, headers, end))
}

#[no_mangle]
pub extern "C" fn proxy_on_response_body(_id: u32, _size: usize, _end: bool) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(_id: u32, _trailers: usize) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_log(_id: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_done(_id: u32) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(id: u32) {
    with((), |f| f.delete(id));
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(_root: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_queue_ready(_root: u32, _queue: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    _id: u32,
    _token: u32,
    _headers: usize,
    _body: usize,
    _trailers: usize,
) {
}
