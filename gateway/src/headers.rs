//! Header writes shared by route edits and plugins.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
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
