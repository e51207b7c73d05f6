//! Header writes shared by route edits and plugins.

use bytes::Bytes;
use http::request::Parts as ReqParts;
use http::response::Parts as RespParts;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

/// The header operations pingora's request and response heads share (they have no
/// common trait), so route edits and plugin host calls write either the same way.
///
/// Names to write are given as lower-case bytes, not as a `HeaderName`: pingora keeps
/// the bytes as the name's wire case and parses them once, where a `HeaderName` would
/// be turned back into bytes (a copy for any non-standard name) and parsed again. An
/// invalid name is an error.
pub trait EditableHead {
    fn remove(&mut self, name: &HeaderName);
    /// Replaces every value of `name`.
    fn insert(&mut self, name: Bytes, value: HeaderValue) -> Result<()>;
    /// Adds a value, keeping existing ones.
    fn append(&mut self, name: Bytes, value: HeaderValue) -> Result<()>;
}

macro_rules! editable_head {
    ($t:ty) => {
        impl EditableHead for $t {
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            fn insert(&mut self, name: Bytes, value: HeaderValue) -> Result<()> {
                self.insert_header(name, value)
            }
            fn append(&mut self, name: Bytes, value: HeaderValue) -> Result<()> {
                self.append_header(name, value).map(|_| ())
            }
        }
    };
}
editable_head!(RequestHeader);
editable_head!(ResponseHeader);

/// A request or response head whose header map the gateway writes its own headers to.
pub trait Head {
    /// Drops pingora's record of header-name case and gives `f` the header map to edit
    /// in place (see [`write`]).
    fn edit_map(&mut self, f: impl FnOnce(&mut HeaderMap));
    /// Pingora's insert, which records the name's case.
    fn insert_cased(&mut self, name: HeaderName, value: HeaderValue) -> Result<()>;
}

/// Writes the gateway's own headers (`x-request-id`, `x-forwarded-*`) to a head.
///
/// Unless `keep_case` (the `preserve_header_case` setting), the head first loses
/// pingora's record of header-name case, and each header is one insert into the
/// `HeaderMap`. Pingora's `insert_header` costs about 2k instructions per header: it
/// copies a non-standard name, parses it, and inserts into two maps (the values and the
/// case), growing both. Without the case record, pingora writes names to an HTTP/1 peer
/// as `http` keeps them (lower case, but for the dozen it titles, such as `Host` and
/// `Content-Type`), as Envoy does by default and as HTTP/2 always does. Later writes to
/// the head (plugins, route edits) then skip the case map too. With nothing to write,
/// the record is still dropped. `room` is how many more headers later writes are
/// expected to add: reserved now, so the map grows (rehashes) once. `then` gets the map
/// after the gateway's headers, for more writes in the same pass; it is not called
/// when `keep_case` (there is no map to give).
pub fn write<H: Head, const N: usize>(
    head: &mut H,
    keep_case: bool,
    headers: [Option<(HeaderName, HeaderValue)>; N],
    room: usize,
    then: impl FnOnce(&mut HeaderMap),
) -> Result<()> {
    if keep_case {
        for (name, value) in headers.into_iter().flatten() {
            head.insert_cased(name, value)?;
        }
    } else {
        head.edit_map(|map| {
            map.reserve(N + room);
            for (name, value) in headers.into_iter().flatten() {
                map.insert(name, value);
            }
            then(map);
        });
    }
    Ok(())
}

impl Head for RequestHeader {
    fn edit_map(&mut self, f: impl FnOnce(&mut HeaderMap)) {
        let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
        let old = std::mem::replace(self, empty);
        // A target the parts cannot hold (absolute-form, or not UTF-8) is put back from
        // its raw bytes.
        let raw = (Some(old.raw_path()) != old.uri.path_and_query().map(|p| p.as_str().as_bytes()))
            .then(|| old.raw_path().to_vec());
        let end_stream = old.send_end_stream();
        let mut parts = ReqParts::from(old);
        f(&mut parts.headers);
        *self = RequestHeader::from(parts);
        if let Some(raw) = raw {
            // It was a valid target when pingora parsed it.
            let _ = self.set_raw_path(&raw);
        }
        if let Some(end) = end_stream {
            self.set_send_end_stream(end);
        }
    }

    fn insert_cased(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
        self.insert_header(name, value)
    }
}

impl Head for ResponseHeader {
    fn edit_map(&mut self, f: impl FnOnce(&mut HeaderMap)) {
        let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
        let old = std::mem::replace(self, empty);
        // Kept only when the peer sent its own: the canonical one is pingora's default.
        let reason = old
            .get_reason_phrase()
            .filter(|r| Some(*r) != old.status.canonical_reason())
            .map(str::to_owned);
        let mut parts = RespParts::from(old);
        f(&mut parts.headers);
        *self = ResponseHeader::from(parts);
        if let Some(reason) = reason {
            let _ = self.set_reason_phrase(Some(&reason));
        }
    }

    fn insert_cased(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
        self.insert_header(name, value)
    }
}
