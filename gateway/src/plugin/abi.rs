//! proxy-wasm ABI v0.2.1 constants (numeric values as in the spec and the Rust SDK).

/// Result of a host call, returned to the guest as an `i32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

/// `proxy_on_*_headers` results.
pub const ACTION_CONTINUE: i32 = 0;
pub const ACTION_PAUSE: i32 = 1;

/// Header maps a host call can address.
pub const MAP_REQUEST_HEADERS: i32 = 0;
pub const MAP_REQUEST_TRAILERS: i32 = 1;
pub const MAP_RESPONSE_HEADERS: i32 = 2;
pub const MAP_RESPONSE_TRAILERS: i32 = 3;
pub const MAP_HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
pub const MAP_HTTP_CALL_RESPONSE_TRAILERS: i32 = 7;

/// Buffers a host call can address.
pub const BUFFER_HTTP_REQUEST_BODY: i32 = 0;
pub const BUFFER_HTTP_RESPONSE_BODY: i32 = 1;
pub const BUFFER_HTTP_CALL_RESPONSE_BODY: i32 = 4;
pub const BUFFER_VM_CONFIGURATION: i32 = 6;
pub const BUFFER_PLUGIN_CONFIGURATION: i32 = 7;
pub const BUFFER_CALL_DATA: i32 = 8;

/// Log levels.
pub const LOG_TRACE: i32 = 0;
pub const LOG_DEBUG: i32 = 1;
pub const LOG_INFO: i32 = 2;
pub const LOG_WARN: i32 = 3;
pub const LOG_ERROR: i32 = 4;
pub const LOG_CRITICAL: i32 = 5;

/// Metric kinds of `proxy_define_metric`.
pub const METRIC_COUNTER: i32 = 0;
pub const METRIC_GAUGE: i32 = 1;
pub const METRIC_HISTOGRAM: i32 = 2;

/// The root context id Weir gives every plugin VM.
pub const ROOT_CONTEXT_ID: i32 = 1;

/// The ABI's header-map encoding, shared with the SDK (`weir_plugin_sdk::pairs`).
pub use weir_plugin_sdk::pairs::{
    deserialize as deserialize_map, serialize as serialize_map, Pairs,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_round_trip() {
        let pairs: Vec<(&[u8], &[u8])> =
            vec![(b"a", b"1"), (b"content-type", b"text/plain"), (b"e", b"")];
        let bytes = serialize_map(pairs.iter().copied());
        let back = deserialize_map(&bytes).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[1], (b"content-type".to_vec(), b"text/plain".to_vec()));
        assert_eq!(back[2], (b"e".to_vec(), b"".to_vec()));
    }

    #[test]
    fn hostile_maps_are_rejected() {
        assert!(deserialize_map(&[255, 255, 255, 255]).is_none());
        let mut bytes = serialize_map([(&b"k"[..], &b"v"[..])].into_iter());
        bytes[4] = 200; // key length beyond the buffer
        assert!(deserialize_map(&bytes).is_none());
        let mut bytes = serialize_map([(&b"k"[..], &b"v"[..])].into_iter());
        let n = bytes.len();
        bytes[n - 1] = b'x'; // missing NUL
        assert!(deserialize_map(&bytes).is_none());
    }
}
