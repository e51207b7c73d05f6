//! HTTP calls plugins dispatch (`proxy_http_call`), made by the gateway to a target of a
//! configured upstream: HTTP/1.1, over TLS when the upstream says so (its SNI and
//! verification settings), one connection per call, bounded in time and size.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;

use pingora::connectors::TransportConnector;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::state::{CallResponse, PendingCall};
use crate::snapshot::Snapshot;

/// Largest call response read (headers and body); beyond it the call fails.
const MAX_RESPONSE: usize = 1 << 20;

/// Makes the call; a failure (no healthy target, refused, timeout, malformed or oversized
/// answer) is a response without status, as Envoy reports it to the plugin.
///
/// Boxed: the connector's future is large, and the request hook that awaits a call would
/// otherwise carry its size, allocated and copied on every request, calls or not.
pub fn perform<'a>(
    snap: &'a Snapshot,
    call: &'a PendingCall,
) -> Pin<Box<dyn Future<Output = CallResponse> + Send + 'a>> {
    Box::pin(make(snap, call))
}

async fn make(snap: &Snapshot, call: &PendingCall) -> CallResponse {
    let Some(up) = snap.upstreams.iter().find(|u| *u.name == *call.upstream) else {
        return CallResponse::default();
    };
    let Ok(i) = up.select(call.path.as_bytes(), 0) else {
        return CallResponse::default();
    };
    let peer = up.peer(i);
    let made = async {
        // One connector for the process: it holds the TLS client context.
        static CONNECTOR: OnceLock<TransportConnector> = OnceLock::new();
        let stream = CONNECTOR
            .get_or_init(|| TransportConnector::new(None))
            .new_stream(&peer)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        exchange(stream, call).await
    };
    match tokio::time::timeout(call.timeout, made).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(upstream = %up.name, error = %e, "plugin HTTP call failed");
            CallResponse::default()
        }
        Err(_) => CallResponse::default(),
    }
}

async fn exchange(
    mut s: impl AsyncRead + AsyncWrite + Unpin,
    call: &PendingCall,
) -> std::io::Result<CallResponse> {
    let mut head = format!("{} {} HTTP/1.1\r\n", call.method, call.path).into_bytes();
    for (k, v) in &call.headers {
        head.extend_from_slice(k);
        head.extend_from_slice(b": ");
        head.extend_from_slice(v);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            call.body.len()
        )
        .as_bytes(),
    );
    s.write_all(&head).await?;
    s.write_all(&call.body).await?;
    let mut buf = Vec::with_capacity(8192);
    loop {
        buf.reserve(4096);
        if s.read_buf(&mut buf).await? == 0 {
            // Close-delimited (or cut short): whatever is complete now is the answer.
            return parse(&buf, true)
                .ok_or_else(|| std::io::Error::other("malformed call response"));
        }
        if buf.len() > MAX_RESPONSE {
            return Err(std::io::Error::other("call response too large"));
        }
        // Servers may keep the connection open despite `connection: close`: stop as soon
        // as the framing says the answer is complete.
        if let Some(r) = parse(&buf, false) {
            return Ok(r);
        }
    }
}

/// The response in `buf` if it is complete; `eof` accepts a body delimited by the end
/// of the connection.
fn parse(buf: &[u8], eof: bool) -> Option<CallResponse> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(len) = resp.parse(buf).ok()? else {
        return None;
    };
    let status = resp.code?;
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = resp
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase().into_bytes(), h.value.to_vec()))
        .collect();
    let find = |n: &[u8]| {
        pairs
            .iter()
            .find(|(k, _)| k.as_slice() == n)
            .map(|(_, v)| v.as_slice())
    };
    let rest = &buf[len..];
    let body = if find(b"transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked")) {
        dechunk(rest)?
    } else if let Some(cl) = find(b"content-length") {
        let cl: usize = std::str::from_utf8(cl).ok()?.trim().parse().ok()?;
        rest.get(..cl)?.to_vec()
    } else if eof || status == 204 || status == 304 {
        rest.to_vec()
    } else {
        return None;
    };
    Some(CallResponse {
        status: Some(status),
        headers: pairs,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_malformed() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nX-User: ada\r\nContent-Length: 2\r\n\r\nok",
            false,
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (Some(200), &b"ok"[..]));
        assert_eq!(r.headers[0], (b"x-user".to_vec(), b"ada".to_vec()));
        let r = parse(
            b"HTTP/1.1 403 F\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n1\r\n!\r\n0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(r.body, b"no!");
        assert!(parse(b"garbage", true).is_none());
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort", true).is_none());
        assert!(parse(b"HTTP/1.1 200 OK\r\n\r\nuntil close", false).is_none());
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\n\r\nuntil close", true)
                .unwrap()
                .body,
            b"until close"
        );
    }
}
