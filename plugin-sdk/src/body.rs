//! Request bodies: whether a policy sees them, and the view it gets.

/// How much of a request's body a policy sees, decided per request by
/// [`Policy::request_body`](crate::Policy::request_body).
///
/// Bodies stream through the gateway by default; a policy only pays for what it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyAccess {
    /// The body streams past this policy; [`Policy::on_request_body`](crate::Policy::on_request_body)
    /// is not called.
    #[default]
    Ignore,
    /// Each chunk as it streams by: `on_request_body` is called per chunk, nothing is
    /// held (a size limit needs only this). [`Body::bytes`] is the chunk.
    Chunks,
    /// The whole body, once, at its end: the host holds it until then (up to the
    /// plugin's `max_body_bytes` in the gateway config; 413 past it). [`Body::bytes`]
    /// is the whole body.
    Whole,
}

/// The body [`Policy::on_request_body`](crate::Policy::on_request_body) is shown: a
/// chunk ([`BodyAccess::Chunks`]) or the whole body ([`BodyAccess::Whole`]).
pub trait Body {
    /// The size of what this call shows (the chunk, or the whole body), without
    /// fetching it.
    fn len(&self) -> usize;

    /// Whether this call shows nothing (an empty last chunk).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the body seen so far, this call's included.
    fn seen(&self) -> usize;

    /// Whether this is the end of the body.
    fn is_end(&self) -> bool;

    /// The bytes this call shows, copied from the host on each call (a policy that
    /// only counts never pays for them).
    fn bytes(&self) -> Vec<u8>;
}
