//! The host functions a proxy-wasm module imports from `env`, and the WASI preview1
//! functions a `wasm32-wasip1` module imports.
//!
//! Every pointer and length from the guest is bounds-checked against its linear memory;
//! a bad one returns `BadArgument` (or traps the guest when no status can be returned),
//! never touches host memory. Calls that make no sense in the current phase return
//! `NotFound` (the map or buffer does not exist now) or `BadArgument`.

use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue, Method};
use wasmtime::{Caller, Extern, Linker, Memory, Module, Val, ValType};

use super::abi::{self, Status};
use super::shared;
use super::state::{Edit, HostState, LocalResponse, Phase};
use crate::headers::EditableHead;

type C<'a> = Caller<'a, HostState>;

/// Errors that end the guest call (a trap); used where the ABI has no status to return.
fn trap(msg: &str) -> wasmtime::Error {
    wasmtime::Error::msg(msg.to_string())
}

/// The guest's memory: found once when the VM starts (a lookup by name on every host
/// call cost more than most calls themselves), looked up here only before that.
fn memory(c: &mut C<'_>) -> Option<Memory> {
    if let Some(m) = c.data().memory {
        return Some(m);
    }
    match c.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m),
        _ => None,
    }
}

/// Copies `len` bytes at `ptr` out of guest memory.
fn read(c: &mut C<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let mem = memory(c).ok_or(Status::InternalFailure)?;
    slice(mem.data(&c), ptr, len).map(<[u8]>::to_vec)
}

/// The guest's memory and the host state together, for host calls that use the guest's
/// bytes in place instead of copying them out first (header writes, lookups).
fn guest<'a>(c: &'a mut C<'_>) -> Result<(&'a [u8], &'a mut HostState), Status> {
    let mem = memory(c).ok_or(Status::InternalFailure)?;
    let (data, st) = mem.data_and_store_mut(c);
    Ok((data, st))
}

/// `len` bytes at `ptr` of guest memory `data`, bounds-checked.
fn slice(data: &[u8], ptr: i32, len: i32) -> Result<&[u8], Status> {
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let end = ptr.checked_add(len).ok_or(Status::BadArgument)?;
    data.get(ptr..end).ok_or(Status::BadArgument)
}

fn read_str(c: &mut C<'_>, ptr: i32, len: i32) -> Result<String, Status> {
    String::from_utf8(read(c, ptr, len)?).map_err(|_| Status::BadArgument)
}

fn write(c: &mut C<'_>, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let mem = memory(c).ok_or(Status::InternalFailure)?;
    put(mem.data_mut(c), ptr, bytes)
}

fn write_u32(c: &mut C<'_>, ptr: i32, v: u32) -> Result<(), Status> {
    write(c, ptr, &v.to_le_bytes())
}

/// Hands `bytes` to the guest: allocates with the guest's allocator, copies, and stores
/// the pointer and length at `ret_ptr` / `ret_len`.
fn give(
    c: &mut C<'_>,
    bytes: &[u8],
    ret_ptr: i32,
    ret_len: i32,
) -> Result<Status, wasmtime::Error> {
    // Taken for the call and put back, not cloned: a clone of a typed function is two
    // reference counts up and down. An allocator that calls back into a getter finds
    // none (InternalFailure) rather than recursing.
    let Some(alloc) = c.data_mut().alloc.take() else {
        return Ok(Status::InternalFailure);
    };
    let addr = if bytes.is_empty() {
        Ok(0)
    } else {
        alloc.call(&mut *c, bytes.len() as i32)
    };
    c.data_mut().alloc = Some(alloc);
    let addr = addr?;
    if addr == 0 && !bytes.is_empty() {
        return Ok(Status::InternalFailure);
    }
    // One borrow of the memory for the three writes: each lookup of it is a few dozen
    // instructions.
    let Some(mem) = memory(c) else {
        return Ok(Status::InternalFailure);
    };
    let data = mem.data_mut(c);
    let r = put(data, addr, bytes)
        .and_then(|()| put(data, ret_ptr, &(addr as u32).to_le_bytes()))
        .and_then(|()| put(data, ret_len, &(bytes.len() as u32).to_le_bytes()));
    Ok(match r {
        Ok(()) => Status::Ok,
        Err(s) => s,
    })
}

/// Copies `bytes` to `ptr` of guest memory `data`, bounds-checked.
fn put(data: &mut [u8], ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let ptr = ptr as u32 as usize;
    let end = ptr.checked_add(bytes.len()).ok_or(Status::BadArgument)?;
    data.get_mut(ptr..end)
        .ok_or(Status::BadArgument)?
        .copy_from_slice(bytes);
    Ok(())
}

fn status(r: Result<Status, Status>) -> i32 {
    match r {
        Ok(s) | Err(s) => s as i32,
    }
}

/// Header names plugins may not write: framing and routing stay the gateway's.
fn protected(name: &[u8]) -> bool {
    [
        &b":status"[..],
        b"content-length",
        b"transfer-encoding",
        b"host",
        b":authority",
        b":scheme",
    ]
    .iter()
    .any(|p| name.eq_ignore_ascii_case(p))
}

/// The pairs of a map, pseudo-headers first (as Envoy presents them). A map that does
/// not exist in this phase reads as empty, as in Envoy: the Rust SDK treats any status
/// but `Ok` from this call as fatal.
fn map_pairs(st: &mut HostState, map: i32) -> Result<abi::Pairs, Status> {
    match map {
        abi::MAP_REQUEST_HEADERS => {
            let Some(req) = st.request_mut() else {
                return Ok(Vec::new());
            };
            let mut out = vec![
                (b":method".to_vec(), req.method.as_str().as_bytes().to_vec()),
                (
                    b":path".to_vec(),
                    req.uri
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/")
                        .as_bytes()
                        .to_vec(),
                ),
            ];
            if let Some(host) = req.headers.get(http::header::HOST).or(None) {
                out.push((b":authority".to_vec(), host.as_bytes().to_vec()));
            }
            out.extend(
                req.headers
                    .iter()
                    .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())),
            );
            Ok(out)
        }
        abi::MAP_RESPONSE_HEADERS => {
            let Some(resp) = st.response_mut() else {
                return Ok(Vec::new());
            };
            let mut out = vec![(
                b":status".to_vec(),
                resp.status.as_str().as_bytes().to_vec(),
            )];
            out.extend(
                resp.headers
                    .iter()
                    .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())),
            );
            Ok(out)
        }
        abi::MAP_HTTP_CALL_RESPONSE_HEADERS => Ok(match &st.call_response {
            Some(r) => {
                let mut out = Vec::with_capacity(r.headers.len() + 1);
                if let Some(s) = r.status {
                    out.push((b":status".to_vec(), s.to_string().into_bytes()));
                }
                out.extend(r.headers.iter().cloned());
                out
            }
            None => Vec::new(),
        }),
        abi::MAP_REQUEST_TRAILERS..=abi::MAP_HTTP_CALL_RESPONSE_TRAILERS => Ok(Vec::new()),
        _ => Err(Status::BadArgument),
    }
}

fn map_get(st: &mut HostState, map: i32, key: &[u8]) -> Result<Vec<u8>, Status> {
    let key: std::borrow::Cow<'_, [u8]> = if key.iter().any(u8::is_ascii_uppercase) {
        key.to_ascii_lowercase().into()
    } else {
        key.into()
    };
    if key.starts_with(b":") {
        // The pseudo-headers policies read on every request, without building the pairs.
        let direct = match (map, &*key) {
            (abi::MAP_REQUEST_HEADERS, b":path") => st.request_mut().map(|r| {
                let p = r.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                p.as_bytes().to_vec()
            }),
            (abi::MAP_REQUEST_HEADERS, b":method") => st
                .request_mut()
                .map(|r| r.method.as_str().as_bytes().to_vec()),
            (abi::MAP_RESPONSE_HEADERS, b":status") => st
                .response_mut()
                .map(|r| r.status.as_str().as_bytes().to_vec()),
            _ => None,
        };
        if let Some(v) = direct {
            return Ok(v);
        }
        return map_pairs(st, map)?
            .into_iter()
            .find(|(k, _)| **k == *key)
            .map(|(_, v)| v)
            .ok_or(Status::NotFound);
    }
    if map == abi::MAP_HTTP_CALL_RESPONSE_HEADERS {
        let values: Vec<Vec<u8>> = map_pairs(st, map)?
            .into_iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(&key))
            .map(|(_, v)| v)
            .collect();
        return if values.is_empty() {
            Err(Status::NotFound)
        } else {
            Ok(values.join(&b", "[..]))
        };
    }
    let name = HeaderName::from_bytes(&key).map_err(|_| Status::NotFound)?;
    let headers = match map {
        abi::MAP_REQUEST_HEADERS => &st.request_mut().ok_or(Status::NotFound)?.headers,
        abi::MAP_RESPONSE_HEADERS => &st.response_mut().ok_or(Status::NotFound)?.headers,
        abi::MAP_REQUEST_TRAILERS..=abi::MAP_HTTP_CALL_RESPONSE_TRAILERS => {
            return Err(Status::NotFound)
        }
        _ => return Err(Status::BadArgument),
    };
    // Several values of one header are joined with ", " (RFC 9110 list semantics;
    // Envoy returns only the first, which hides the others from a policy).
    let mut values = headers.get_all(&name).iter();
    let first = values.next().ok_or(Status::NotFound)?;
    let mut out = first.as_bytes().to_vec();
    for v in values {
        out.extend_from_slice(b", ");
        out.extend_from_slice(v.as_bytes());
    }
    Ok(out)
}

/// Most headers a plugin may grow a head to. `http`'s `HeaderMap` panics past 32,768
/// entries (pingora's `insert_header` uses the panicking insert): a plugin adding names
/// in a loop gets `BadArgument` long before that.
const MAX_HEADERS: usize = 4096;

/// Applies one header write; the request's `:path` and `:method` are writable.
fn map_edit(st: &mut HostState, map: i32, key: &[u8], value: &[u8], edit: Edit) -> Status {
    // A value with CR, LF or NUL is refused by the parse of each path below: `http`'s
    // `HeaderValue`, `Uri` and `Method` take none of them.
    // Weir's extension: response headers written before there is a response are
    // queued and land on the response, whichever it is (`ResponseEdits`).
    if st.scope.phase == Some(Phase::RequestHeaders) && map == abi::MAP_RESPONSE_HEADERS {
        return queue_response_edit(st, key, value, edit);
    }
    let key = key.to_ascii_lowercase();
    if protected(&key) {
        return Status::BadArgument;
    }
    let writable = matches!(
        (st.scope.phase, map),
        (Some(Phase::RequestHeaders), abi::MAP_REQUEST_HEADERS)
            | (Some(Phase::ResponseHeaders), abi::MAP_RESPONSE_HEADERS)
            | (Some(Phase::ResponseHeaders), abi::MAP_REQUEST_HEADERS)
    );
    if !writable {
        return if (0..=7).contains(&map) {
            Status::NotFound
        } else {
            Status::BadArgument
        };
    }
    // The request head is already on its way upstream once the response arrives.
    if st.scope.phase == Some(Phase::ResponseHeaders) && map == abi::MAP_REQUEST_HEADERS {
        return Status::NotFound;
    }
    if map == abi::MAP_REQUEST_HEADERS && key.starts_with(b":") {
        let Some(req) = st.request_mut() else {
            return Status::NotFound;
        };
        return match (key.as_slice(), edit) {
            (b":path", Edit::Replace) => match http::Uri::try_from(value) {
                Ok(uri) if value.starts_with(b"/") => {
                    req.set_uri(uri);
                    Status::Ok
                }
                _ => Status::BadArgument,
            },
            (b":method", Edit::Replace) => match Method::from_bytes(value) {
                Ok(m) => {
                    req.set_method(m);
                    Status::Ok
                }
                Err(_) => Status::BadArgument,
            },
            _ => Status::BadArgument,
        };
    }
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return Status::BadArgument;
    };
    let head: &mut dyn EditableHead = match map {
        abi::MAP_REQUEST_HEADERS => match st.request_mut() {
            Some(req) if req.headers.len() >= MAX_HEADERS && edit != Edit::Remove => {
                return Status::BadArgument
            }
            Some(req) => req,
            None => return Status::NotFound,
        },
        _ => match st.response_mut() {
            Some(resp) if resp.headers.len() >= MAX_HEADERS && edit != Edit::Remove => {
                return Status::BadArgument
            }
            Some(resp) => resp,
            None => return Status::NotFound,
        },
    };
    // `key` is lower case already: it becomes the name's bytes without another copy.
    let r = match edit {
        Edit::Replace => head.insert(key.into(), value),
        Edit::Add => head.append(key.into(), value),
        Edit::Remove => match HeaderName::from_bytes(&key) {
            Ok(name) => {
                head.remove(&name);
                Ok(())
            }
            Err(_) => return Status::BadArgument,
        },
    };
    if r.is_ok() {
        Status::Ok
    } else {
        Status::BadArgument
    }
}

/// Queues a response-header write made during the request headers (see `map_edit`).
fn queue_response_edit(st: &mut HostState, key: &[u8], value: &[u8], edit: Edit) -> Status {
    // Parsed once, here (lower-cased, a token or refused), and written to the response
    // as is.
    let Ok(name) = HeaderName::from_bytes(key) else {
        return Status::BadArgument;
    };
    if protected(name.as_str().as_bytes()) {
        return Status::BadArgument;
    }
    // A removal has an empty value.
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return Status::BadArgument;
    };
    match st.response_edits_mut().map(|q| q.push(edit, name, value)) {
        Some(true) => Status::Ok,
        Some(false) => Status::BadArgument,
        None => Status::NotFound,
    }
}

/// A property's name from its ABI path: the path's segments are NUL-separated,
/// properties are named with dots. Short paths (all of them in practice) are rewritten
/// in `buf`, on the caller's stack: this runs for every property read and write.
fn property_name<'b>(path: &[u8], buf: &'b mut [u8; 128]) -> std::borrow::Cow<'b, str> {
    let short = buf.get_mut(..path.len()).and_then(|b| {
        for (d, &c) in b.iter_mut().zip(path) {
            *d = if c == 0 { b'.' } else { c };
        }
        std::str::from_utf8(b).ok()
    });
    match short {
        Some(k) => k.into(),
        None => String::from_utf8_lossy(path).replace('\0', ".").into(),
    }
}

/// Property values: strings as bytes, numbers as 8-byte little-endian (as Envoy does).
fn property(st: &mut HostState, path: &[u8]) -> Result<Vec<u8>, Status> {
    let mut buf = [0u8; 128];
    let key = property_name(path, &mut buf);
    if let Some(v) = st
        .properties_mut()
        .and_then(|p| p.get(&key).map(<[u8]>::to_vec))
    {
        return Ok(v);
    }
    let s = |v: &str| Ok(v.as_bytes().to_vec());
    match &*key {
        "plugin_name" | "plugin_vm_id" => return Ok(st.plugin.as_bytes().to_vec()),
        "plugin_root_id" => return s(""),
        _ => {}
    }
    if let Some(info) = st.info() {
        match &*key {
            "source.address" => {
                return info
                    .client
                    .map(|a| a.to_string().into_bytes())
                    .ok_or(Status::NotFound)
            }
            "source.port" => {
                return info
                    .client
                    .map(|a| (a.port() as i64).to_le_bytes().to_vec())
                    .ok_or(Status::NotFound)
            }
            "route_name" | "weir.route" => {
                return info
                    .route
                    .as_deref()
                    .map(|r| r.as_bytes().to_vec())
                    .ok_or(Status::NotFound)
            }
            "request.id" => return s(&info.request_id.clone()),
            "request.scheme" => return s(if info.tls { "https" } else { "http" }),
            _ => {}
        }
    }
    let req = st.request_mut().ok_or(Status::NotFound)?;
    match &*key {
        "request.path" => s(req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")),
        "request.url_path" => s(req.uri.path()),
        "request.query" => s(req.uri.query().unwrap_or("")),
        "request.method" => s(req.method.as_str()),
        "request.host" => req
            .headers
            .get(http::header::HOST)
            .map(|h| h.as_bytes().to_vec())
            .ok_or(Status::NotFound),
        "request.protocol" => s(match req.version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        }),
        k => match k.strip_prefix("request.headers.") {
            Some(h) => req
                .headers
                .get(h)
                .map(|v| v.as_bytes().to_vec())
                .ok_or(Status::NotFound),
            None => Err(Status::NotFound),
        },
    }
}

fn log(st: &HostState, level: i32, msg: &str) {
    let plugin = &*st.plugin;
    match level {
        abi::LOG_TRACE => tracing::trace!(plugin, "{msg}"),
        abi::LOG_DEBUG => tracing::debug!(plugin, "{msg}"),
        abi::LOG_INFO => tracing::info!(plugin, "{msg}"),
        abi::LOG_WARN => tracing::warn!(plugin, "{msg}"),
        _ => tracing::error!(plugin, "{msg}"),
    }
}

/// Weir's foreign functions (`proxy_call_foreign_function`); an unknown name is
/// `NotFound`.
///
/// `weir.counter_add`: arguments `delta: i64 LE`, `ttl_ms: u64 LE` (0: no expiry), then
/// the key; the counter (in the plugin's own key space, apart from shared data) gets
/// `delta` added atomically, and a counter that is new or expired starts from 0 and
/// lives `ttl_ms`. Returns the new value as `i64 LE`.
///
/// `weir.shared_data_ttl`: argument `ttl_ms: u64 LE`; from then on, a key of the
/// plugin's shared data not written for `ttl_ms` is dropped (0: never, the default).
/// Returns nothing.
fn foreign(st: &HostState, name: &[u8], args: &[u8]) -> Result<Vec<u8>, Status> {
    match name {
        b"weir.counter_add" => {
            if args.len() < 16 || args.len() > 16 + 1024 {
                return Err(Status::BadArgument);
            }
            let (delta, rest) = args.split_at(8);
            let (ttl, key) = rest.split_at(8);
            let delta = i64::from_le_bytes(delta.try_into().map_err(|_| Status::BadArgument)?);
            let ttl = u64::from_le_bytes(ttl.try_into().map_err(|_| Status::BadArgument)?);
            let ttl = (ttl > 0).then(|| std::time::Duration::from_millis(ttl));
            let value =
                st.shared
                    .counters
                    .add(&st.plugin, key, delta, ttl, std::time::Instant::now())?;
            Ok(value.to_le_bytes().to_vec())
        }
        b"weir.shared_data_ttl" => {
            let ttl = u64::from_le_bytes(args.try_into().map_err(|_| Status::BadArgument)?);
            let ttl = (ttl > 0).then(|| std::time::Duration::from_millis(ttl));
            st.shared.set_idle_ttl(&st.plugin, ttl);
            Ok(Vec::new())
        }
        _ => Err(Status::NotFound),
    }
}

/// Adds every `env` host function Weir implements.
pub fn add_proxy_wasm(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: C<'_>, level: i32, ptr: i32, len: i32| -> i32 {
            match read(&mut c, ptr, len) {
                Ok(bytes) => {
                    let msg = String::from_utf8_lossy(&bytes);
                    log(c.data(), level, &msg);
                    // Start-up errors explain a failed load (`weir check`, a reload).
                    let st = c.data_mut();
                    if level >= abi::LOG_ERROR && st.scope.phase == Some(Phase::Root) {
                        st.startup_error = Some(msg.chars().take(1024).collect());
                    }
                    Status::Ok as i32
                }
                Err(s) => s as i32,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: C<'_>, ret: i32| -> i32 {
            let level = if tracing::enabled!(tracing::Level::TRACE) {
                abi::LOG_TRACE
            } else if tracing::enabled!(tracing::Level::DEBUG) {
                abi::LOG_DEBUG
            } else {
                abi::LOG_INFO
            };
            status(write_u32(&mut c, ret, level as u32).map(|_| Status::Ok))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ret: i32| -> i32 {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            status(write(&mut c, ret, &now.to_le_bytes()).map(|_| Status::Ok))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C<'_>,
         buf: i32,
         start: i32,
         max: i32,
         ret_ptr: i32,
         ret_len: i32|
         -> wasmtime::Result<i32> {
            let st = c.data();
            let data: &[u8] = match buf {
                abi::BUFFER_PLUGIN_CONFIGURATION => &st.plugin_config,
                abi::BUFFER_HTTP_CALL_RESPONSE_BODY => match &st.call_response {
                    Some(r) => &r.body,
                    None => return Ok(Status::NotFound as i32),
                },
                abi::BUFFER_HTTP_REQUEST_BODY | abi::BUFFER_HTTP_RESPONSE_BODY => {
                    let phase = if buf == abi::BUFFER_HTTP_REQUEST_BODY {
                        Phase::RequestBody
                    } else {
                        Phase::ResponseBody
                    };
                    match st.body() {
                        Some(b) if st.scope.phase == Some(phase) => b,
                        _ => return Ok(Status::NotFound as i32),
                    }
                }
                abi::BUFFER_VM_CONFIGURATION => &[],
                // Response body, downstream/upstream data, gRPC, call data: none here.
                b if (0..=abi::BUFFER_CALL_DATA).contains(&b) => return Ok(Status::NotFound as i32),
                _ => return Ok(Status::BadArgument as i32),
            };
            let (start, max) = (start as u32 as usize, max as u32 as usize);
            if start > data.len() {
                return Ok(Status::BadArgument as i32);
            }
            let end = start.saturating_add(max).min(data.len());
            // Copied out of the store before the guest's allocator runs.
            let chunk = data[start..end].to_vec();
            Ok(give(&mut c, &chunk, ret_ptr, ret_len)? as i32)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, map: i32, ret_ptr: i32, ret_len: i32| -> wasmtime::Result<i32> {
            let pairs = match map_pairs(c.data_mut(), map) {
                Ok(p) => p,
                Err(s) => return Ok(s as i32),
            };
            let bytes = abi::serialize_map(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
            Ok(give(&mut c, &bytes, ret_ptr, ret_len)? as i32)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C<'_>,
         map: i32,
         kptr: i32,
         klen: i32,
         ret_ptr: i32,
         ret_len: i32|
         -> wasmtime::Result<i32> {
            let found =
                guest(&mut c).and_then(|(data, st)| map_get(st, map, slice(data, kptr, klen)?));
            match found {
                Ok(v) => Ok(give(&mut c, &v, ret_ptr, ret_len)? as i32),
                Err(s) => Ok(s as i32),
            }
        },
    )?;
    for (name, edit) in [
        ("proxy_replace_header_map_value", Edit::Replace),
        ("proxy_add_header_map_value", Edit::Add),
    ] {
        linker.func_wrap(
            "env",
            name,
            move |mut c: C<'_>, map: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| -> i32 {
                status(guest(&mut c).and_then(|(data, st)| {
                    let (key, value) = (slice(data, kptr, klen)?, slice(data, vptr, vlen)?);
                    Ok(map_edit(st, map, key, value, edit))
                }))
            },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C<'_>, map: i32, kptr: i32, klen: i32| -> i32 {
            status(guest(&mut c).and_then(|(data, st)| {
                Ok(map_edit(
                    st,
                    map,
                    slice(data, kptr, klen)?,
                    b"",
                    Edit::Remove,
                ))
            }))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, map: i32, ptr: i32, len: i32| -> i32 {
            let bytes = match read(&mut c, ptr, len) {
                Ok(b) => b,
                Err(s) => return s as i32,
            };
            let Some(pairs) = abi::deserialize_map(&bytes) else {
                return Status::BadArgument as i32;
            };
            // Replace the whole map: drop the current regular headers, then add.
            let current = match map_pairs(c.data_mut(), map) {
                Ok(p) => p,
                Err(s) => return s as i32,
            };
            let st = c.data_mut();
            for (k, _) in current
                .iter()
                .filter(|(k, _)| !k.starts_with(b":") && !protected(k))
            {
                let s = map_edit(st, map, k, b"", Edit::Remove);
                if s != Status::Ok {
                    return s as i32;
                }
            }
            for (k, v) in &pairs {
                let edit = if k.starts_with(b":") {
                    Edit::Replace
                } else {
                    Edit::Add
                };
                if protected(k) {
                    continue;
                }
                let s = map_edit(st, map, k, v, edit);
                if s != Status::Ok {
                    return s as i32;
                }
            }
            Status::Ok as i32
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C<'_>, pptr: i32, plen: i32, ret_ptr: i32, ret_len: i32| -> wasmtime::Result<i32> {
            let found = guest(&mut c).and_then(|(data, st)| property(st, slice(data, pptr, plen)?));
            match found {
                Ok(v) => Ok(give(&mut c, &v, ret_ptr, ret_len)? as i32),
                Err(s) => Ok(s as i32),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C<'_>, pptr: i32, plen: i32, vptr: i32, vlen: i32| -> i32 {
            let (path, value) = match (read(&mut c, pptr, plen), read(&mut c, vptr, vlen)) {
                (Ok(p), Ok(v)) => (p, v),
                (Err(s), _) | (_, Err(s)) => return s as i32,
            };
            let mut buf = [0u8; 128];
            let key = property_name(&path, &mut buf);
            match c.data_mut().properties_mut() {
                Some(props) if value.len() <= 64 * 1024 => {
                    if props.set(&key, value) {
                        Status::Ok as i32
                    } else {
                        Status::BadArgument as i32
                    }
                }
                Some(_) => Status::BadArgument as i32,
                None => Status::NotFound as i32,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C<'_>,
         code: i32,
         dptr: i32,
         dlen: i32,
         bptr: i32,
         blen: i32,
         hptr: i32,
         hlen: i32,
         _grpc: i32|
         -> i32 {
            if !matches!(
                c.data().scope.phase,
                Some(Phase::RequestHeaders | Phase::RequestBody | Phase::ResponseHeaders)
            ) {
                return Status::BadArgument as i32;
            }
            if c.data().local_response.is_some() {
                return Status::BadArgument as i32; // a second local reply
            }
            if !(200..=599).contains(&code) {
                return Status::BadArgument as i32;
            }
            let (details, body, headers) = match (
                read(&mut c, dptr, dlen),
                read(&mut c, bptr, blen),
                read(&mut c, hptr, hlen),
            ) {
                (Ok(d), Ok(b), Ok(h)) => (d, b, h),
                (Err(s), _, _) | (_, Err(s), _) | (_, _, Err(s)) => return s as i32,
            };
            let Some(headers) = abi::deserialize_map(&headers) else {
                return Status::BadArgument as i32;
            };
            let headers: Vec<_> = headers.into_iter().filter(|(k, _)| !protected(k)).collect();
            if headers.iter().any(|(k, v)| {
                HeaderName::from_bytes(k).is_err() || HeaderValue::from_bytes(v).is_err()
            }) {
                return Status::BadArgument as i32;
            }
            c.data_mut().local_response = Some(LocalResponse {
                status: code as u16,
                headers,
                body,
                details: String::from_utf8_lossy(&details).into_owned(),
            });
            Status::Ok as i32
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C<'_>,
         uptr: i32,
         ulen: i32,
         hptr: i32,
         hlen: i32,
         bptr: i32,
         blen: i32,
         _tptr: i32,
         _tlen: i32,
         timeout_ms: i32,
         ret_token: i32|
         -> i32 {
            if c.data().scope.phase != Some(Phase::RequestHeaders) {
                return Status::BadArgument as i32;
            }
            let (upstream, headers, body) = match (
                read_str(&mut c, uptr, ulen),
                read(&mut c, hptr, hlen),
                read(&mut c, bptr, blen),
            ) {
                (Ok(u), Ok(h), Ok(b)) => (u, h, b),
                (Err(s), _, _) | (_, Err(s), _) | (_, _, Err(s)) => return s as i32,
            };
            // Only upstreams of the config: never an arbitrary address, never the admin API.
            let Some(upstream) = c
                .data()
                .info()
                .and_then(|i| i.upstreams.iter().find(|u| ***u == *upstream).cloned())
            else {
                return Status::BadArgument as i32;
            };
            let Some(pairs) = abi::deserialize_map(&headers) else {
                return Status::BadArgument as i32;
            };
            let pseudo = |name: &[u8]| {
                pairs
                    .iter()
                    .find(|(k, _)| k.as_slice() == name)
                    .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
            };
            let (Some(method), Some(path)) = (pseudo(b":method"), pseudo(b":path")) else {
                return Status::BadArgument as i32;
            };
            let clean = |v: &[u8]| !v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0);
            let token_like = |v: &[u8]| !v.is_empty() && v.iter().all(|b| b.is_ascii_alphabetic());
            if !path.starts_with('/') || !token_like(method.as_bytes()) || !clean(path.as_bytes()) {
                return Status::BadArgument as i32;
            }
            let authority = pseudo(b":authority").filter(|a| clean(a.as_bytes()));
            let mut headers: abi::Pairs = pairs
                .into_iter()
                .filter(|(k, v)| {
                    !k.starts_with(b":")
                        && !protected(k)
                        && HeaderName::from_bytes(k).is_ok()
                        && clean(v)
                })
                .collect();
            headers.push((
                b"host".to_vec(),
                authority
                    .unwrap_or_else(|| upstream.to_string())
                    .into_bytes(),
            ));
            let st = c.data_mut();
            if st.pending_calls.len() >= 16 {
                return Status::BadArgument as i32;
            }
            let token = st.next_token;
            st.next_token = st.next_token.wrapping_add(1).max(1);
            let timeout =
                std::time::Duration::from_millis((timeout_ms as u32).clamp(1, 60_000) as u64);
            st.pending_calls.push(super::state::PendingCall {
                token,
                upstream,
                method,
                path,
                headers,
                body,
                timeout,
            });
            status(write_u32(&mut c, ret_token, token).map(|_| Status::Ok))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |_c: C<'_>, _stream: i32| -> i32 {
            // Weir runs header callbacks synchronously; a filter that paused is resumed
            // when its callback returns. Nothing to do.
            Status::Ok as i32
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |_c: C<'_>, _ctx: i32| -> i32 { Status::Ok as i32 },
    )?;
    linker.func_wrap("env", "proxy_done", |_c: C<'_>| -> i32 {
        Status::Ok as i32
    })?;
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>,
         kptr: i32,
         klen: i32,
         ret_ptr: i32,
         ret_len: i32,
         ret_cas: i32|
         -> wasmtime::Result<i32> {
            let found = guest(&mut c).and_then(|(data, st)| {
                st.shared
                    .get(&st.plugin, slice(data, kptr, klen)?)
                    .ok_or(Status::NotFound)
            });
            let (value, cas) = match found {
                Ok(v) => v,
                Err(s) => return Ok(s as i32),
            };
            if let Err(s) = write_u32(&mut c, ret_cas, cas) {
                return Ok(s as i32);
            }
            Ok(give(&mut c, &value, ret_ptr, ret_len)? as i32)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: C<'_>, kptr: i32, klen: i32, vptr: i32, vlen: i32, cas: i32| -> i32 {
            status(guest(&mut c).and_then(|(data, st)| {
                let (key, value) = (slice(data, kptr, klen)?, slice(data, vptr, vlen)?);
                if key.len() > 1024 || value.len() > 1024 * 1024 {
                    return Err(Status::BadArgument);
                }
                Ok(st.shared.set(&st.plugin, key, value, cas as u32))
            }))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, period: i32| -> i32 {
            let ms = period as u32;
            c.data_mut().tick_period =
                (ms > 0).then(|| std::time::Duration::from_millis(u64::from(ms)));
            Status::Ok as i32
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C<'_>, nptr: i32, nlen: i32, ret: i32| -> i32 {
            let name = match read(&mut c, nptr, nlen) {
                Ok(n) => n,
                Err(s) => return s as i32,
            };
            let owner = c.data().plugin.clone();
            let id = match c.data().shared.queues.register(&owner, &name) {
                Ok(id) => id,
                Err(s) => return s as i32,
            };
            status(write_u32(&mut c, ret, id).map(|_| Status::Ok))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vptr: i32, vlen: i32, nptr: i32, nlen: i32, ret: i32| -> i32 {
            let (vm_id, name) = match (read(&mut c, vptr, vlen), read(&mut c, nptr, nlen)) {
                (Ok(v), Ok(n)) => (v, n),
                (Err(s), _) | (_, Err(s)) => return s as i32,
            };
            match c.data().shared.queues.resolve(&vm_id, &name) {
                Some(id) => status(write_u32(&mut c, ret, id).map(|_| Status::Ok)),
                None => Status::NotFound as i32,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, id: i32, dptr: i32, dlen: i32| -> i32 {
            if dlen as u32 as usize > shared::MAX_QUEUE_ITEM_BYTES {
                return Status::BadArgument as i32;
            }
            match read(&mut c, dptr, dlen) {
                Ok(data) => c.data().shared.queues.enqueue(id as u32, data) as i32,
                Err(s) => s as i32,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, id: i32, ret_ptr: i32, ret_len: i32| -> wasmtime::Result<i32> {
            match c.data().shared.queues.dequeue(id as u32) {
                Ok(Some(item)) => Ok(give(&mut c, &item, ret_ptr, ret_len)? as i32),
                Ok(None) => Ok(Status::Empty as i32),
                Err(s) => Ok(s as i32),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: C<'_>,
         nptr: i32,
         nlen: i32,
         aptr: i32,
         alen: i32,
         ret_ptr: i32,
         ret_len: i32|
         -> wasmtime::Result<i32> {
            let (name, args) = match (read(&mut c, nptr, nlen), read(&mut c, aptr, alen)) {
                (Ok(n), Ok(a)) => (n, a),
                (Err(s), _) | (_, Err(s)) => return Ok(s as i32),
            };
            match foreign(c.data(), &name, &args) {
                Ok(out) => Ok(give(&mut c, &out, ret_ptr, ret_len)? as i32),
                Err(s) => Ok(s as i32),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, nptr: i32, nlen: i32, ret: i32| -> i32 {
            if !(abi::METRIC_COUNTER..=abi::METRIC_HISTOGRAM).contains(&kind) {
                return Status::BadArgument as i32;
            }
            let name = match read_str(&mut c, nptr, nlen) {
                Ok(n) => n,
                Err(s) => return s as i32,
            };
            let plugin = c.data().plugin.clone();
            match c.data().metrics.define(&plugin, kind, &name) {
                Ok(id) => status(write_u32(&mut c, ret, id).map(|_| Status::Ok)),
                Err(s) => s as i32,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: C<'_>, id: i32, delta: i64| -> i32 {
            let st = c.data();
            match st.metrics.get(&st.plugin, id as u32) {
                Some(m) if m.kind != abi::METRIC_HISTOGRAM => {
                    m.value
                        .fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
                    Status::Ok as i32
                }
                Some(_) => Status::BadArgument as i32,
                None => Status::NotFound as i32,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |c: C<'_>, id: i32, value: i64| -> i32 {
            let st = c.data();
            match st.metrics.get(&st.plugin, id as u32) {
                Some(m) => {
                    use std::sync::atomic::Ordering::Relaxed;
                    if m.kind == abi::METRIC_HISTOGRAM {
                        m.count.fetch_add(1, Relaxed);
                        m.value.fetch_add(value, Relaxed);
                    } else {
                        m.value.store(value, Relaxed);
                    }
                    Status::Ok as i32
                }
                None => Status::NotFound as i32,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, ret: i32| -> i32 {
            let st = c.data();
            let Some(m) = st.metrics.get(&st.plugin, id as u32) else {
                return Status::NotFound as i32;
            };
            let v = m.value.load(std::sync::atomic::Ordering::Relaxed) as u64;
            status(write(&mut c, ret, &v.to_le_bytes()).map(|_| Status::Ok))
        },
    )?;
    Ok(())
}

/// WASI preview1, the few functions a `wasm32-wasip1` module imports, granting nothing:
/// no files, no sockets, no host environment, no arguments. stdout and stderr go to the
/// log with the plugin's name; `proc_exit` ends the call with a trap.
pub fn add_wasi(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    const WASI: &str = "wasi_snapshot_preview1";
    const ERRNO_SUCCESS: i32 = 0;
    const ERRNO_BADF: i32 = 8;
    const ERRNO_INVAL: i32 = 28;
    const ERRNO_NOSYS: i32 = 52;
    linker.func_wrap(
        WASI,
        "fd_write",
        |mut c: C<'_>, fd: i32, iovs: i32, iovs_len: i32, nwritten: i32| -> i32 {
            if fd != 1 && fd != 2 {
                return ERRNO_BADF;
            }
            if !(0..=1024).contains(&iovs_len) {
                return ERRNO_INVAL;
            }
            let mut total = 0u32;
            for i in 0..iovs_len {
                let Ok(iov) = read(&mut c, iovs.wrapping_add(i * 8), 8) else {
                    return ERRNO_INVAL;
                };
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                let Ok(bytes) = read(&mut c, ptr, len) else {
                    return ERRNO_INVAL;
                };
                total = total.wrapping_add(bytes.len() as u32);
                let st = c.data_mut();
                let buf = if fd == 1 {
                    &mut st.stdout
                } else {
                    &mut st.stderr
                };
                buf.extend_from_slice(&bytes);
                flush_lines(st, fd);
            }
            match write_u32(&mut c, nwritten, total) {
                Ok(()) => ERRNO_SUCCESS,
                Err(_) => ERRNO_INVAL,
            }
        },
    )?;
    linker.func_wrap(
        WASI,
        "clock_time_get",
        |mut c: C<'_>, id: i32, _prec: i64, ret: i32| -> i32 {
            let nanos = match id {
                0 => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0),
                1 => crate::upstream::now_ms().saturating_mul(1_000_000),
                _ => return ERRNO_INVAL,
            };
            match write(&mut c, ret, &nanos.to_le_bytes()) {
                Ok(()) => ERRNO_SUCCESS,
                Err(_) => ERRNO_INVAL,
            }
        },
    )?;
    linker.func_wrap(
        WASI,
        "random_get",
        |mut c: C<'_>, ptr: i32, len: i32| -> i32 {
            if !(0..=1 << 20).contains(&len) {
                return ERRNO_INVAL;
            }
            let bytes: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
            match write(&mut c, ptr, &bytes) {
                Ok(()) => ERRNO_SUCCESS,
                Err(_) => ERRNO_INVAL,
            }
        },
    )?;
    for name in ["environ_sizes_get", "args_sizes_get"] {
        linker.func_wrap(WASI, name, |mut c: C<'_>, count: i32, size: i32| -> i32 {
            match write_u32(&mut c, count, 0).and_then(|_| write_u32(&mut c, size, 0)) {
                Ok(()) => ERRNO_SUCCESS,
                Err(_) => ERRNO_INVAL,
            }
        })?;
    }
    for name in ["environ_get", "args_get"] {
        linker.func_wrap(WASI, name, |_c: C<'_>, _a: i32, _b: i32| -> i32 {
            ERRNO_SUCCESS
        })?;
    }
    linker.func_wrap(
        WASI,
        "proc_exit",
        |_c: C<'_>, code: i32| -> wasmtime::Result<()> {
            Err(trap(&format!("plugin called proc_exit({code})")))
        },
    )?;
    linker.func_wrap(WASI, "sched_yield", |_c: C<'_>| -> i32 { ERRNO_SUCCESS })?;
    let _ = ERRNO_NOSYS;
    Ok(())
}

fn flush_lines(st: &mut HostState, fd: i32) {
    let plugin = st.plugin.clone();
    let buf = if fd == 1 {
        &mut st.stdout
    } else {
        &mut st.stderr
    };
    while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buf.drain(..=pos).collect();
        let text = String::from_utf8_lossy(&line[..line.len() - 1]);
        if fd == 1 {
            tracing::info!(plugin = &*plugin, stream = "stdout", "{text}");
        } else {
            tracing::warn!(plugin = &*plugin, stream = "stderr", "{text}");
        }
    }
    // A plugin printing without newlines cannot grow this without bound.
    if buf.len() > 16 * 1024 {
        let text = String::from_utf8_lossy(buf).into_owned();
        buf.clear();
        tracing::info!(plugin = &*plugin, "{text}");
    }
}

/// Imports the module needs that Weir does not provide (other `proxy_*` calls such as
/// queues, gRPC, `proxy_http_call` for now, other WASI calls): each answers
/// `Unimplemented` (or WASI `ENOSYS`) instead of failing instantiation, so modules
/// built against the full ABI load and only the unsupported call fails.
pub fn define_missing(linker: &mut Linker<HostState>, module: &Module) -> wasmtime::Result<()> {
    for import in module.imports() {
        let Some(ty) = import.ty().func().cloned() else {
            continue;
        };
        let (m, name) = (import.module().to_string(), import.name().to_string());
        let code = if m == "env" {
            Status::Unimplemented as i32
        } else {
            52
        };
        let results: Vec<ValType> = ty.results().collect();
        let label = format!("{m}::{name}");
        // Without shadowing, defining a name Weir already provides fails: that is how
        // the provided ones are skipped.
        let _ = linker.func_new(&m, &name, ty, move |c, _params, out| {
            tracing::debug!(plugin = &*c.data().plugin, call = %label, "unimplemented host call");
            for (slot, t) in out.iter_mut().zip(&results) {
                *slot = match t {
                    ValType::I32 => Val::I32(code),
                    ValType::I64 => Val::I64(code as i64),
                    ValType::F32 => Val::F32(0),
                    ValType::F64 => Val::F64(0),
                    _ => return Err(trap("unsupported import signature")),
                };
            }
            Ok(())
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use http::HeaderName;

    /// Queued response-header names are parsed by `http` alone (`queue_response_edit`):
    /// it must take RFC 9110 tokens, in any case, and nothing else.
    #[test]
    fn header_names_queued_for_the_response_are_tokens() {
        for ok in [&b"x-rate"[..], b"RateLimit-Limit", b"a!#$%&'*+-.^_`|~9"] {
            let name = HeaderName::from_bytes(ok);
            assert!(name.is_ok(), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b""[..],
            b"x y",
            b"x:y",
            b":status",
            b"x\r\n",
            b"caf\xc3\xa9",
            b"a\"b",
            b"a(b",
        ] {
            let name = HeaderName::from_bytes(bad);
            assert!(name.is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
