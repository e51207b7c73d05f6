//! The request path: Pingora's `ProxyHttp` hooks, in the order a request meets them.
//!
//! 1. `request_filter`: pin the current snapshot, check framing, settle the request id,
//!    match the route; answer directly (direct response, 404, 400) or continue.
//! 2. `upstream_peer`: pick a healthy target (skipping the ones already tried).
//! 3. `upstream_request_filter`: path rewrite, forwarding headers, route header edits.
//! 4. `upstream_response_filter` / `response_filter`: timing, passive health, response
//!    header edits, `x-request-id`.
//! 5. `fail_to_connect` / `error_while_proxy` / `fail_to_proxy`: retries, ejection, and
//!    the JSON error body ([`crate::error`]).
//! 6. `logging`: metrics and the access-log line.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING, USER_AGENT};
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};

use crate::access_log::{AccessLog, LogEntry};
use crate::error::{self, ErrorKind};
use crate::gateway::Gateway;
use crate::headers::{self, EditableHead};
use crate::net::TrustedProxies;
use crate::plugin::{
    Active, LocalResponse, PendingCall, Properties, RequestInfo, ResponseEdits, Verdict, Views,
};
use crate::snapshot::{Action, HeaderEdits, Route, Snapshot};
use crate::upstream::{InflightGuard, NoTarget, Upstream};

/// The property auth plugins name the consumer in (the SDK's `set_consumer`).
const CONSUMER_PROPERTY: &str = "weir.consumer";

/// HTTP calls one plugin may make for one request.
const MAX_PLUGIN_CALLS: usize = 16;

/// Headers a plugin is expected to add to a head, reserved before it runs so that the
/// head's map grows once, not on each write (a growth rehashes the map).
const PLUGIN_HEADER_ROOM: usize = 2;

// Names as static strings for pingora's `insert_header` (local responses): it keeps a
// written name's bytes as its wire case, so a `&'static str` costs nothing to convert,
// where a `HeaderName` of a non-standard header would be copied and parsed again.
const X_REQUEST_ID: &str = "x-request-id";
const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
// The same names as `HeaderName`s, for lookups (a `&str` key is parsed on every `get`)
// and for `headers::write`.
const X_REQUEST_ID_NAME: HeaderName = HeaderName::from_static(X_REQUEST_ID);
const X_FORWARDED_FOR_NAME: HeaderName = HeaderName::from_static(X_FORWARDED_FOR);
const X_FORWARDED_PROTO_NAME: HeaderName = HeaderName::from_static(X_FORWARDED_PROTO);
const X_FORWARDED_HOST_NAME: HeaderName = HeaderName::from_static(X_FORWARDED_HOST);

/// The proxy service. Holds only shared, read-mostly state; everything about one
/// request lives in [`RequestCtx`].
pub struct WeirProxy {
    pub gateway: Arc<Gateway>,
    pub access_log: AccessLog,
    /// Random per process, so request ids from restarts do not collide.
    id_prefix: u64,
    id_counter: std::sync::atomic::AtomicU64,
}

impl WeirProxy {
    pub fn new(gateway: Arc<Gateway>, access_log: AccessLog) -> Self {
        WeirProxy {
            gateway,
            access_log,
            id_prefix: rand::random(),
            id_counter: Default::default(),
        }
    }

    fn next_request_id(&self) -> HeaderValue {
        request_id(
            self.id_prefix,
            self.id_counter.fetch_add(1, Ordering::Relaxed),
        )
    }
}

/// 32 hex digits: the process prefix, then a counter. Written by hand: `format!`
/// showed up in the request path's profile.
fn request_id(prefix: u64, n: u64) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(32);
    for v in [prefix, n] {
        for j in 0..16 {
            out.push(HEX[((v >> (60 - 4 * j)) & 0xf) as usize]);
        }
    }
    HeaderValue::from_maybe_shared(Bytes::from(out))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// A request id as text (always ASCII: generated in hex, or checked by
/// [`sane_request_id`]).
fn id_str(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or_default()
}

/// Per-request state.
pub struct RequestCtx {
    start: Instant,
    snapshot: Option<Arc<Snapshot>>,
    route: Option<usize>,
    matched_len: usize,
    /// Kept as a header value: it is written into the upstream request and the response,
    /// and cloning it shares its bytes.
    request_id: HeaderValue,
    client_ip: Option<IpAddr>,
    /// The connection's peer (the client, or a proxy in front of it).
    peer_ip: Option<IpAddr>,
    /// Bit set of target indexes already tried.
    tried: u64,
    attempts: usize,
    target: Option<usize>,
    inflight: Option<InflightGuard>,
    upstream_start: Option<Instant>,
    upstream_elapsed: Option<Duration>,
    /// Set when Weir decided the outcome itself (it wins over pingora's classification).
    error: Option<ErrorKind>,
    /// Status of a response Weir wrote itself.
    local_status: Option<u16>,
    /// Plugin contexts of this request, in chain order.
    plugins: Vec<Active>,
    /// What plugins may read about the request (set when the route has plugins).
    plugin_info: Option<RequestInfo>,
    /// Properties plugins set for later plugins and the gateway.
    properties: Properties,
    /// Response-header writes plugins made during the request headers.
    response_edits: ResponseEdits,
    /// A local response a plugin asked for after the upstream answered, written by
    /// `fail_to_proxy` in place of the upstream's.
    pending_local: Option<LocalResponse>,
    /// Request body held for the plugin (by index in `plugins`) that asked to see it
    /// whole; `None` while chunks stream through.
    body_held: Option<(usize, bytes::BytesMut)>,
    /// Every plugin has seen the end of the request body (a retry resends it as is).
    body_seen: bool,
    /// Whether a plugin of this request asked for response bodies (`response_body`).
    response_body: bool,
    /// Response body held for the plugin (by index in `plugins`) that asked to see it
    /// whole.
    response_held: Option<(usize, bytes::BytesMut)>,
    /// The request's only hop-by-hop field is `Connection: keep-alive`, which Weir
    /// removes itself for the upstream (see [`hop_by_hop`]).
    drop_connection: bool,
}

/// The matched route of a request. A free function over the two fields (not a method
/// on the context) so callers can keep it while they update other fields of the context.
fn route_of(snap: Option<&Snapshot>, route: Option<usize>) -> Option<&Route> {
    snap.and_then(|s| s.routes.get(route?))
}

/// The upstream of a proxied route.
fn upstream_of(snap: Option<&Snapshot>, route: Option<usize>) -> Option<&Arc<Upstream>> {
    match &route_of(snap, route)?.action {
        Action::Proxy(up) => Some(up),
        Action::Respond { .. } => None,
    }
}

/// The client's address as plugins see it (`source.address`): the TCP peer, or the
/// address the trusted proxies reported in `x-forwarded-for` (with port 0).
fn client_addr(session: &Session, client_ip: Option<IpAddr>) -> Option<std::net::SocketAddr> {
    let peer = session.client_addr().and_then(|a| a.as_inet()).copied();
    match (peer, client_ip) {
        (Some(p), Some(ip)) if crate::net::canonical(p.ip()) != ip => {
            Some(std::net::SocketAddr::new(ip, 0))
        }
        (peer, _) => peer,
    }
}

/// A client-supplied id is kept when it is short and plain.
fn sane_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

/// Pingora keeps Transfer-Encoding and silently drops Content-Length when a request has
/// both; look at the raw head to see whether it had both (request smuggling defence).
fn has_ambiguous_framing(session: &Session) -> bool {
    let req = session.req_header();
    if !req.headers.contains_key(TRANSFER_ENCODING) {
        return false;
    }
    if req.headers.contains_key(CONTENT_LENGTH) {
        return true;
    }
    session
        .as_http1()
        .map(|h1| {
            let raw = h1.get_headers_raw_bytes();
            raw.split(|&b| b == b'\n')
                .any(|line| line.len() >= 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
        })
        .unwrap_or(false)
}

/// A request head's hop-by-hop fields, as pingora's upstream sanitizer
/// (`sanitize_h1_upstream_request`) would treat them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum HopByHop {
    /// None: the sanitizer would change nothing.
    Absent,
    /// A lone `Connection: keep-alive`: the sanitizer would remove only that field.
    KeepAlive,
    /// Anything else: the sanitizer runs.
    Other,
}

/// Classifies a head's hop-by-hop fields in one pass over its names. Pingora's default
/// upstream policy strips them with a dozen lookups of names parsed from `&str`, about
/// 3k instructions per request, almost always to remove nothing: where this says it
/// would change nothing (or only drop `Connection: keep-alive`), Weir gives the peer
/// pingora's `preserve` policy and removes the `Connection` field itself. The names
/// are those of pingora's `strip_standard_hop_by_hop_headers`. `Connection` also
/// removes the fields it names; `keep-alive` names one of the list, so a head with a
/// lone `Connection: keep-alive` has no other field to lose.
fn hop_by_hop(h: &http::HeaderMap) -> HopByHop {
    let mut found = HopByHop::Absent;
    for (name, value) in h {
        match name.as_str() {
            "connection"
                if found == HopByHop::Absent
                    && value.as_bytes().eq_ignore_ascii_case(b"keep-alive") =>
            {
                found = HopByHop::KeepAlive
            }
            "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "http2-settings" => return HopByHop::Other,
            _ => {}
        }
    }
    found
}

/// Bytes of header names and values (what limits are measured in; separators excluded).
fn header_bytes(h: &http::HeaderMap) -> usize {
    h.iter().map(|(k, v)| k.as_str().len() + v.len()).sum()
}

/// `x-forwarded-for`, `-proto` and `-host`, each to write or not.
type Forwarding = [Option<(HeaderName, HeaderValue)>; 3];

/// The forwarding headers for the upstream. `x-forwarded-for` gets the TCP peer
/// appended: to the client's value when the peer is a trusted proxy, replacing it
/// otherwise. `x-forwarded-proto` and `x-forwarded-host` are kept from a trusted proxy
/// and set otherwise (from `tls`, and from the Host header or the target's authority).
fn forwarding(
    req: &RequestHeader,
    peer: Option<IpAddr>,
    trusted: &TrustedProxies,
    tls: bool,
) -> Result<Forwarding> {
    let trusted = peer.is_some_and(|p| trusted.contains(p));
    let h = &req.headers;
    let xff = peer.map(|p| {
        let mut v = Vec::with_capacity(48);
        // Looked up only when it is believed.
        if let Some(prev) = trusted.then(|| h.get(X_FORWARDED_FOR_NAME)).flatten() {
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
        }
        crate::net::push_ip(&mut v, p);
        v
    });
    // The previous value was a valid header value, and so is an address after it.
    let xff = xff
        .map(|v| HeaderValue::from_maybe_shared(Bytes::from(v)))
        .transpose()
        .map_err(|e| Error::because(InternalError, "x-forwarded-for", e))?;
    let proto = (!(trusted && h.contains_key(X_FORWARDED_PROTO_NAME)))
        .then(|| HeaderValue::from_static(if tls { "https" } else { "http" }));
    let host = (!(trusted && h.contains_key(X_FORWARDED_HOST_NAME)))
        .then(|| {
            h.get(HOST).cloned().or_else(|| {
                let authority = req.uri.authority()?;
                HeaderValue::from_str(authority.as_str()).ok()
            })
        })
        .flatten();
    Ok([
        xff.map(|v| (X_FORWARDED_FOR_NAME, v)),
        proto.map(|v| (X_FORWARDED_PROTO_NAME, v)),
        host.map(|v| (X_FORWARDED_HOST_NAME, v)),
    ])
}

fn apply_edits(h: &mut impl EditableHead, edits: &HeaderEdits) -> Result<()> {
    for name in &edits.remove {
        h.remove(name);
    }
    for (n, v) in &edits.set {
        h.insert(n.clone(), v.clone())?;
    }
    for (n, v) in &edits.add {
        h.append(n.clone(), v.clone())?;
    }
    Ok(())
}

/// Writes a complete response that Weir produced itself.
///
/// Boxed: pingora's write futures are large, and each hook that may answer would
/// otherwise carry their size in its own future, allocated and copied on every request
/// (async-trait boxes every hook call) for the few requests that are answered here.
fn respond<'a>(
    session: &'a mut Session,
    ctx: &'a mut RequestCtx,
    status: u16,
    headers: &'a [(HeaderName, HeaderValue)],
    content_type: Option<&'static str>,
    body: Bytes,
) -> Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>> {
    Box::pin(async move {
        // Without pingora's record of header-name case: Weir's own answer has no peer's
        // case to keep, and pingora writes the names the same without it (the ones it
        // knows titled, the others as given) for less (no second map to fill and walk).
        let room = headers.len() + 3 + ctx.response_edits.len();
        let mut resp = ResponseHeader::build_no_case(status, Some(room))?;
        if let Some(ct) = content_type {
            resp.insert_header(CONTENT_TYPE, ct)?;
        }
        for (n, v) in headers {
            resp.append_header(n.clone(), v.clone())?;
        }
        resp.insert_header(CONTENT_LENGTH, body.len())?;
        resp.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
        // What plugins set for the response during the request (rate-limit's counts)
        // is the client's whatever answers: written over this response as over an
        // upstream's (as Envoy runs its filters' encodeHeaders on a local reply).
        if !ctx.response_edits.is_empty() {
            ctx.response_edits.apply(&mut resp);
        }
        ctx.local_status = Some(status);
        let head_only = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(resp), body.is_empty() || head_only)
            .await?;
        if !body.is_empty() && !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    })
}

/// Writes a plugin's local response (headers were checked by the host).
async fn respond_local(
    session: &mut Session,
    ctx: &mut RequestCtx,
    local: LocalResponse,
) -> Result<()> {
    let headers: Vec<(HeaderName, HeaderValue)> = local
        .headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                HeaderName::from_bytes(k).ok()?,
                HeaderValue::from_bytes(v).ok()?,
            ))
        })
        .collect();
    respond(
        session,
        ctx,
        local.status,
        &headers,
        None,
        Bytes::from(local.body),
    )
    .await
}

async fn respond_error(session: &mut Session, ctx: &mut RequestCtx, kind: ErrorKind) -> Result<()> {
    ctx.error = Some(kind);
    let body = error::json_body(kind, id_str(&ctx.request_id));
    respond(
        session,
        ctx,
        kind.status(),
        &[],
        Some("application/json"),
        Bytes::from(body),
    )
    .await
}

#[async_trait]
impl ProxyHttp for WeirProxy {
    /// Boxed: pingora keeps the context in its request future, which it moves a few
    /// times per request (about 1.6k instructions of `memcpy` for 536 bytes); a box
    /// moves as a pointer, for one allocation.
    type CTX = Box<RequestCtx>;

    fn new_ctx(&self) -> Box<RequestCtx> {
        // Paired with the decrement in `logging`, which pingora runs for every request.
        self.gateway
            .metrics
            .active_requests
            .fetch_add(1, Ordering::Relaxed);
        Box::new(RequestCtx {
            start: Instant::now(),
            snapshot: None,
            route: None,
            matched_len: 0,
            request_id: HeaderValue::from_static(""),
            client_ip: None,
            peer_ip: None,
            tried: 0,
            attempts: 0,
            target: None,
            inflight: None,
            upstream_start: None,
            upstream_elapsed: None,
            error: None,
            local_status: None,
            plugins: Vec::new(),
            plugin_info: None,
            properties: Properties::new(),
            response_edits: ResponseEdits::new(),
            pending_local: None,
            body_held: None,
            body_seen: false,
            response_body: false,
            response_held: None,
            drop_connection: false,
        })
    }

    /// Pins the snapshot, settles the request id, matches the route, writes the
    /// forwarding headers, runs the plugins' request hooks; answers locally when the
    /// route or a plugin says so, or nothing matches.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        // Moved into the context once the route is known; early answers (431, 400, 404)
        // have no route and do not need it afterwards.
        let snap = self.gateway.current.load_full();

        let new_id = match session.req_header().headers.get(X_REQUEST_ID_NAME) {
            Some(v) if sane_request_id(v) => {
                ctx.request_id = v.clone();
                false
            }
            _ => {
                ctx.request_id = self.next_request_id();
                true
            }
        };
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| crate::net::canonical(a.ip()));
        ctx.peer_ip = peer;
        ctx.client_ip = peer.map(|p| {
            if snap.trusted.is_empty() {
                p
            } else {
                snap.trusted.client_ip(
                    p,
                    session
                        .req_header()
                        .headers
                        .get(X_FORWARDED_FOR_NAME)
                        .map(|v| v.as_bytes()),
                )
            }
        });

        let limits = &snap.config.server;
        let headers = &session.req_header().headers;
        if headers.len() > limits.max_request_headers
            || header_bytes(headers) > limits.max_request_header_bytes
        {
            respond_error(session, ctx, ErrorKind::HeadersTooLarge).await?;
            return Ok(true);
        }

        if snap.config.server.reject_ambiguous_framing && has_ambiguous_framing(session) {
            respond_error(session, ctx, ErrorKind::BadRequest).await?;
            return Ok(true);
        }

        let req = session.req_header();
        let host = req
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host())
            .unwrap_or("");
        let found = snap
            .router
            .lookup(host, req.uri.path(), &req.method, &req.headers);
        let Some(m) = found else {
            respond_error(session, ctx, ErrorKind::NoRoute).await?;
            return Ok(true);
        };
        ctx.route = Some(m.route);
        ctx.matched_len = m.matched_len;
        // The request id and the forwarding headers are written to the downstream head,
        // before the plugins (which see them, as in Envoy) and before pingora clones the
        // head for each upstream attempt: one head conversion and one map growth for
        // all of them. The head loses its header-name case here (`headers::write`),
        // with room for the plugins' writes so the map grows once.
        let route = &snap.routes[m.route];
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let [xff, proto, fhost] = match route.action {
            Action::Respond { .. } => [None, None, None],
            Action::Proxy(_) => forwarding(session.req_header(), ctx.peer_ip, &snap.trusted, tls)?,
        };
        let keep_case = snap.config.server.preserve_header_case;
        let id = new_id.then(|| (X_REQUEST_ID_NAME, ctx.request_id.clone()));
        let room = PLUGIN_HEADER_ROOM * route.plugins.len();
        headers::write(
            session.req_header_mut(),
            keep_case,
            [id, xff, proto, fhost],
            room,
            |_| {},
        )?;
        if !route.plugins.is_empty() {
            let info = RequestInfo {
                client: client_addr(session, ctx.client_ip),
                route: Some(route.name.clone()),
                request_id: id_str(&ctx.request_id).to_owned(),
                tls,
                upstreams: snap.upstream_names.clone(),
            };
            let no_body = session.as_mut().is_body_empty();
            // Plugins were told the request ends with its headers: no body callbacks
            // follow (as in Envoy), which spares a guest call per plugin per request.
            ctx.body_seen = no_body;
            for plugin in &snap.routes[m.route].plugins {
                let mut views = Views {
                    request: session.req_header_mut(),
                    response: None,
                    info: &info,
                    properties: &mut ctx.properties,
                    response_edits: &mut ctx.response_edits,
                };
                let (active, mut verdict) = plugin.request_headers(&mut views, no_body);
                // HTTP calls the plugin dispatched: made now (the request waits), each
                // answer handed back; answers may dispatch more, up to a bound.
                if let (Verdict::Calls(calls), Some(a)) = (&verdict, &active) {
                    let mut queue: std::collections::VecDeque<PendingCall> =
                        calls.iter().cloned().collect();
                    let mut made = 0;
                    verdict = Verdict::Continue;
                    while let Some(call) = queue.pop_front() {
                        made += 1;
                        if made > MAX_PLUGIN_CALLS {
                            tracing::warn!(
                                plugin = &*plugin.name,
                                "too many HTTP calls for one request"
                            );
                            verdict = Verdict::Deny;
                            break;
                        }
                        let resp = crate::plugin::call::perform(&snap, &call).await;
                        let mut views = Views {
                            request: session.req_header_mut(),
                            response: None,
                            info: &info,
                            properties: &mut ctx.properties,
                            response_edits: &mut ctx.response_edits,
                        };
                        match plugin.http_call_response(a, call.token, resp, &mut views) {
                            Verdict::Continue => {}
                            Verdict::Calls(more) => queue.extend(more),
                            other => {
                                verdict = other;
                                break;
                            }
                        }
                    }
                }
                ctx.plugins.extend(active);
                match verdict {
                    Verdict::Continue | Verdict::Calls(_) => {}
                    Verdict::Respond(local) => {
                        ctx.plugin_info = Some(info);
                        ctx.snapshot = Some(snap);
                        respond_local(session, ctx, local).await?;
                        return Ok(true);
                    }
                    Verdict::Deny => {
                        ctx.plugin_info = Some(info);
                        ctx.snapshot = Some(snap);
                        respond_error(session, ctx, ErrorKind::PluginFailed).await?;
                        return Ok(true);
                    }
                }
            }
            ctx.plugin_info = Some(info);
        }
        let direct = matches!(snap.routes[m.route].action, Action::Respond { .. });
        if !direct {
            ctx.snapshot = Some(snap);
            return Ok(false);
        }
        ctx.snapshot = Some(snap.clone());
        if let Action::Respond {
            status,
            body,
            headers,
        } = &snap.routes[m.route].action
        {
            respond(session, ctx, *status, headers, None, body.clone()).await?;
        }
        Ok(true)
    }

    /// Picks a target; each retry lands here again and skips targets already tried.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let Some(up) = upstream_of(ctx.snapshot.as_deref(), ctx.route) else {
            return Err(Error::explain(InternalError, "route without upstream"));
        };
        let mut ip_bytes = [0u8; 16];
        let key: &[u8] = {
            let req = session.req_header();
            match up
                .hash_on()
                .and_then(|h| h.key(req.uri.path(), &req.headers))
            {
                Some(k) => k,
                None => match ctx.client_ip {
                    Some(IpAddr::V6(v6)) => {
                        ip_bytes = v6.octets();
                        &ip_bytes
                    }
                    Some(IpAddr::V4(v4)) => {
                        ip_bytes[..4].copy_from_slice(&v4.octets());
                        &ip_bytes[..4]
                    }
                    // 0.0.0.0, as the address of a client without one.
                    None => &[0; 4],
                },
            }
        };
        let i = match up.select(key, ctx.tried) {
            Ok(i) => i,
            Err(NoTarget::AllUnhealthy) => {
                ctx.error = Some(ErrorKind::NoHealthyUpstream);
                return Err(Error::explain(
                    HTTPStatus(503),
                    format!("upstream `{}`: no healthy target", up.name),
                ));
            }
            Err(NoTarget::Exhausted) => {
                // Keep the classification of the failure that used up the targets.
                ctx.error.get_or_insert(ErrorKind::UpstreamConnect);
                return Err(Error::explain(
                    ConnectError,
                    format!("upstream `{}`: every healthy target failed", up.name),
                ));
            }
        };
        ctx.tried |= 1u64 << (i % 64);
        ctx.attempts += 1;
        ctx.target = Some(i);
        ctx.error = None;
        ctx.inflight = Some(up.start_request(i));
        ctx.upstream_start = Some(Instant::now());

        let mut peer = Box::new(up.peer(i));
        let hop = hop_by_hop(&session.req_header().headers);
        if hop != HopByHop::Other {
            peer.options.http_upstream_request_policy = HttpUpstreamRequestPolicy::preserve();
        }
        ctx.drop_connection = hop == HopByHop::KeepAlive;
        Ok(peer)
    }

    /// Rewrites the path and applies the route's header edits.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if ctx.drop_connection {
            upstream_request.remove_header(&CONNECTION);
        }
        let Some(snap) = ctx.snapshot.as_deref() else {
            return Ok(());
        };
        let Some(route) = route_of(Some(snap), ctx.route) else {
            return Ok(());
        };
        if route.strip_prefix || route.rewrite_path.is_some() {
            let uri = &upstream_request.uri;
            let path = uri.path();
            let rest = path.get(ctx.matched_len..).unwrap_or("");
            let mut new_path = match &route.rewrite_path {
                Some(p) => {
                    let mut s = p.trim_end_matches('/').to_string();
                    if !rest.starts_with('/') {
                        s.push('/');
                    }
                    s.push_str(rest);
                    s
                }
                None if rest.starts_with('/') => rest.to_string(),
                None => format!("/{rest}"),
            };
            if let Some(q) = uri.query() {
                new_path.push('?');
                new_path.push_str(q);
            }
            let new_uri = http::Uri::builder()
                .path_and_query(new_path)
                .build()
                .map_err(|e| Error::because(InternalError, "rewriting the path", e))?;
            upstream_request.set_uri(new_uri);
        }

        if !route.request_headers.is_empty() {
            apply_edits(upstream_request, &route.request_headers)?;
        }
        Ok(())
    }

    /// The target answered: record its latency and clear its passive failure count.
    ///
    /// A status in `retry_on_status` is instead turned into a retryable upstream error
    /// when the request is idempotent, its body is still replayable, retries are left
    /// and an untried healthy target exists. Nothing has reached the client yet, so
    /// pingora retries it like a failed exchange; `error_while_proxy` counts it toward
    /// passive ejection. Otherwise the response goes to the client as the target sent it.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(start) = ctx.upstream_start {
            ctx.upstream_elapsed = Some(start.elapsed());
        }
        if let (Some(up), Some(i)) = (upstream_of(ctx.snapshot.as_deref(), ctx.route), ctx.target) {
            let status = upstream_response.status.as_u16();
            let retry = up.config.retry_on_status.contains(&status)
                && ctx.attempts <= up.config.retries
                && session.req_header().method.is_idempotent()
                && !session.as_ref().retry_buffer_truncated()
                && up.has_untried_healthy(ctx.tried);
            if retry {
                let mut e = Error::explain(
                    HTTPStatus(status),
                    format!(
                        "upstream `{}`: target {} answered {status}",
                        up.name, up.targets[i].label
                    ),
                )
                .into_up();
                e.set_retry(true);
                return Err(e);
            }
            up.report_success(i);
        }
        Ok(())
    }

    /// Streams request body chunks through the plugins' `on_request_body`, in chain
    /// order. A plugin that answers `StopIterationAndBuffer` holds the chunk (and the
    /// plugins after it wait) until it lets the body go. No plugin is shown more than
    /// its `max_body_bytes` in one call: 413 instead. The request head is upstream by
    /// then, so a plugin that refuses the body aborts the upstream request. Without
    /// plugins, chunks pass untouched.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if ctx.plugins.is_empty() || ctx.body_seen {
            return Ok(());
        }
        let Some(info) = &ctx.plugin_info else {
            return Ok(());
        };
        let chunk = body.take().unwrap_or_default();
        let (start, data) = match ctx.body_held.take() {
            Some((i, mut held)) => {
                held.extend_from_slice(&chunk);
                (i, held.freeze())
            }
            None => (0, chunk),
        };
        for (i, a) in ctx.plugins.iter().enumerate().skip(start) {
            if data.len() > a.plugin().config.max_body_bytes {
                ctx.error = Some(ErrorKind::BodyTooLarge);
                return Err(Error::explain(HTTPStatus(413), "request body too large"));
            }
            let mut views = Views {
                request: session.req_header_mut(),
                response: None,
                info,
                properties: &mut ctx.properties,
                response_edits: &mut ctx.response_edits,
            };
            let (verdict, hold) = a.plugin().body(a, false, &data, end_of_stream, &mut views);
            match verdict {
                // Calls can only be dispatched from the request headers.
                Verdict::Continue | Verdict::Calls(_) => {}
                Verdict::Respond(local) => {
                    let status = local.status;
                    ctx.pending_local = Some(local);
                    ctx.body_seen = true;
                    return Err(Error::explain(
                        HTTPStatus(status),
                        "a plugin answered the request body",
                    ));
                }
                Verdict::Deny => {
                    ctx.error = Some(ErrorKind::PluginFailed);
                    return Err(Error::explain(InternalError, "a plugin failed"));
                }
            }
            // At the end of the body there is nothing more to wait for.
            if hold && !end_of_stream {
                ctx.body_held = Some((i, data.into()));
                *body = Some(Bytes::new());
                return Ok(());
            }
        }
        ctx.body_seen = end_of_stream;
        // An empty end-of-body marker stays one.
        if !data.is_empty() || !end_of_stream {
            *body = Some(data);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // An interim response (`100 Continue`, `103 Early Hints`) passes untouched: the
        // plugins' response hooks, the headers they set during the request and the
        // route's response edits are the final response's (as in Envoy, whose filters'
        // encodeHeaders see only the final head). `101` ends an upgrade: it is final.
        let status = upstream_response.status;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(());
        }
        // Written first: the head loses its header-name case here, so the plugins'
        // writes skip it too (`headers::write`).
        let keep_case = ctx
            .snapshot
            .as_deref()
            .is_some_and(|s| s.config.server.preserve_header_case);
        let id = Some((X_REQUEST_ID_NAME, ctx.request_id.clone()));
        let room = PLUGIN_HEADER_ROOM * ctx.plugins.len() + ctx.response_edits.len();
        // What plugins wrote to the response before there was one goes in with it, in
        // the same pass over the map, before any of their response hooks; with
        // `preserve_header_case`, through pingora's cased writes after it.
        let edits = &mut ctx.response_edits;
        headers::write(upstream_response, keep_case, [id], room, |map| {
            edits.apply_to_map(map)
        })?;
        if !edits.is_empty() {
            edits.apply(upstream_response);
        }
        // Plugins see the response in reverse chain order, as in Envoy.
        if let Some(info) = &ctx.plugin_info {
            for a in ctx.plugins.iter_mut().rev() {
                let mut views = Views {
                    request: session.req_header_mut(),
                    response: Some(&mut *upstream_response),
                    info,
                    properties: &mut ctx.properties,
                    response_edits: &mut ctx.response_edits,
                };
                match a.response_headers(&mut views) {
                    // Calls can only be dispatched while the request waits.
                    Verdict::Continue | Verdict::Calls(_) => {}
                    Verdict::Respond(local) => {
                        let status = local.status;
                        ctx.pending_local = Some(local);
                        return Err(Error::explain(
                            HTTPStatus(status),
                            "a plugin answered in place of the upstream",
                        ));
                    }
                    Verdict::Deny => {
                        ctx.error = Some(ErrorKind::PluginFailed);
                        return Err(Error::explain(InternalError, "a plugin failed"));
                    }
                }
            }
        }
        ctx.response_body = ctx.plugins.iter().any(|a| a.plugin().config.response_body);
        if let Some(route) = route_of(ctx.snapshot.as_deref(), ctx.route) {
            if !route.response_headers.is_empty() {
                apply_edits(upstream_response, &route.response_headers)?;
            }
        }
        Ok(())
    }

    /// Streams response body chunks through the `on_response_body` of the plugins that
    /// asked for it (`response_body = true`), in reverse chain order. A plugin that
    /// answers `StopIterationAndBuffer` holds the body until it lets it go or the body
    /// ends. The response head is on its way by then: a plugin cannot answer instead,
    /// and a body larger than its `max_body_bytes` (or a plugin failing with `on_error
    /// = "deny"`) ends the response early, logged.
    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        if !ctx.response_body {
            return Ok(None);
        }
        let Some(info) = &ctx.plugin_info else {
            return Ok(None);
        };
        let chunk = body.take().unwrap_or_default();
        let (upto, data) = match ctx.response_held.take() {
            Some((i, mut held)) => {
                held.extend_from_slice(&chunk);
                (i + 1, held.freeze())
            }
            None => (ctx.plugins.len(), chunk),
        };
        for (i, a) in ctx.plugins.iter().enumerate().take(upto).rev() {
            let plugin = a.plugin();
            if !plugin.config.response_body {
                continue;
            }
            if data.len() > plugin.config.max_body_bytes {
                tracing::warn!(
                    plugin = &*plugin.name,
                    request_id = id_str(&ctx.request_id),
                    "response body larger than the plugin's max_body_bytes: response ended"
                );
                return Err(Error::explain(
                    InternalError,
                    "response body too large for a plugin",
                ));
            }
            let mut views = Views {
                request: session.req_header_mut(),
                response: None,
                info,
                properties: &mut ctx.properties,
                response_edits: &mut ctx.response_edits,
            };
            let (verdict, hold) = plugin.body(a, true, &data, end_of_stream, &mut views);
            if matches!(verdict, Verdict::Deny) {
                ctx.error = Some(ErrorKind::PluginFailed);
                return Err(Error::explain(
                    InternalError,
                    "a plugin failed on the response body",
                ));
            }
            if hold && !end_of_stream {
                ctx.response_held = Some((i, data.into()));
                return Ok(None);
            }
        }
        if !data.is_empty() || !end_of_stream {
            *body = Some(data);
        }
        Ok(None)
    }

    /// Connect failures count toward passive ejection and are retried on another
    /// target while the upstream's `retries` allow.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.error = ErrorKind::from_pingora(&e);
        if let (Some(up), Some(i)) = (upstream_of(ctx.snapshot.as_deref(), ctx.route), ctx.target) {
            up.report_failure(i);
            ctx.inflight = None;
            e.set_retry(ctx.attempts <= up.config.retries);
        }
        e
    }

    /// Errors after connecting (reset, timeout) count toward passive ejection. Retry
    /// follows pingora's default policy: idempotent requests on reused connections.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if e.esource() == &ErrorSource::Upstream {
            ctx.error = ErrorKind::from_pingora(&e);
            if let (Some(up), Some(i)) =
                (upstream_of(ctx.snapshot.as_deref(), ctx.route), ctx.target)
            {
                up.report_failure(i);
            }
        }
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    /// Answers a failed request with the JSON error body.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy
    where
        Self::CTX: Send + Sync,
    {
        if let Some(local) = ctx.pending_local.take() {
            if session.response_written().is_none() {
                let status = local.status;
                if let Err(we) = respond_local(session, ctx, local).await {
                    tracing::debug!(error = %we, "could not send the plugin's response");
                }
                return FailToProxy {
                    error_code: status,
                    can_reuse_downstream: false,
                };
            }
        }
        let kind = ctx.error.or_else(|| ErrorKind::from_pingora(e));
        ctx.error = kind;
        let code = match kind {
            Some(kind) if session.response_written().is_none() => {
                if let Err(we) = respond_error(session, ctx, kind).await {
                    tracing::debug!(error = %we, "could not send the error response");
                }
                kind.status()
            }
            Some(kind) => kind.status(),
            None => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Metrics and the access-log line; runs once per request, whatever happened.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        ctx.inflight = None;
        if let Some(info) = &ctx.plugin_info {
            for a in &ctx.plugins {
                let mut views = Views {
                    request: session.req_header_mut(),
                    response: None,
                    info,
                    properties: &mut ctx.properties,
                    response_edits: &mut ctx.response_edits,
                };
                a.plugin().finish(a, &mut views);
            }
        }
        let metrics = &self.gateway.metrics;
        metrics.active_requests.fetch_sub(1, Ordering::Relaxed);
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.local_status)
            .unwrap_or(0);
        let elapsed = ctx.start.elapsed();
        let snap = ctx.snapshot.as_deref();
        let route = route_of(snap, ctx.route);
        match route {
            Some(r) => r.metrics.record(status, elapsed),
            None => metrics.unmatched.record(status, elapsed),
        }
        let upstream = route.and_then(|r| match &r.action {
            Action::Proxy(up) => Some(up),
            Action::Respond { .. } => None,
        });
        if let (Some(h), Some(d)) = (
            route.and_then(|r| r.upstream_latency.as_ref()),
            ctx.upstream_elapsed,
        ) {
            h.observe(d);
        }
        if !self.access_log.enabled() {
            return;
        }
        let req = session.req_header();
        let error = ctx
            .error
            .or_else(|| e.and_then(ErrorKind::from_pingora))
            .map(ErrorKind::code);
        self.access_log.log(LogEntry {
            time: SystemTime::now(),
            request_id: id_str(&ctx.request_id).to_owned(),
            client_ip: ctx.client_ip,
            method: req.method.as_str().to_string(),
            host: req
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri.host())
                .unwrap_or("")
                .to_string(),
            path: req.uri.path().to_string(),
            status,
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
            route: route.map(|r| r.name.clone()),
            upstream: upstream.map(|u| u.name.clone()),
            upstream_target: upstream
                .zip(ctx.target)
                .and_then(|(u, i)| u.targets.get(i))
                .map(|t| t.label.clone()),
            consumer: ctx
                .properties
                .get(CONSUMER_PROPERTY)
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            duration_ms: elapsed.as_secs_f64() * 1e3,
            upstream_duration_ms: ctx.upstream_elapsed.map(|d| d.as_secs_f64() * 1e3),
            user_agent: req
                .headers
                .get(USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            error,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_hex_digits() {
        assert_eq!(
            request_id(0x0123_4567_89ab_cdef, 41),
            "0123456789abcdef0000000000000029"
        );
        assert_eq!(request_id(u64::MAX, 0), "ffffffffffffffff0000000000000000");
    }

    fn head(fields: &[(&'static str, &'static str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (name, value) in fields {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn hop_by_hop_fields_are_told_apart() {
        use HopByHop::*;
        let plain = [("host", "a"), ("accept", "*/*"), ("x-te", "1")];
        assert_eq!(hop_by_hop(&head(&plain)), Absent);
        assert_eq!(
            hop_by_hop(&head(&[("connection", "keep-alive")])),
            KeepAlive
        );
        assert_eq!(
            hop_by_hop(&head(&[("connection", "Keep-Alive")])),
            KeepAlive
        );
        for (name, value) in [
            ("connection", "close"),
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic eDp5"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("http2-settings", "AAA"),
        ] {
            let h = head(&[("host", "a"), (name, value)]);
            assert_eq!(hop_by_hop(&h), Other, "{name}: {value}");
        }
        // keep-alive alone is the fast case only once and alone.
        let twice = [("connection", "keep-alive"), ("connection", "keep-alive")];
        assert_eq!(hop_by_hop(&head(&twice)), Other);
        let with_te = [("connection", "keep-alive"), ("te", "trailers")];
        assert_eq!(hop_by_hop(&head(&with_te)), Other);
    }
}
