//! The mock host: run a policy's hooks natively, in plain `cargo test`.
//!
//! It behaves like the gateway where a policy can tell: header names are lower-cased,
//! pseudo-headers carry the method and target, writes the gateway would refuse are
//! refused (and listed by [`MockRequest::refused`]), a repeated header's
//! [`get`](crate::Headers::get) is its values joined with `", "` (as Weir answers), and
//! the store does real compare-and-swap.
//!
//! ```
//! use weir_plugin_sdk::prelude::*;
//! use weir_plugin_sdk::testing::{MockRequest, MockResponse};
//!
//! struct Tag;
//! impl Policy for Tag {
//!     type Config = ();
//!     fn new(_: ()) -> Result<Self, String> { Ok(Tag) }
//!     fn on_request(&self, req: &mut dyn Request) -> Decision {
//!         if req.query_param("debug").is_some() {
//!             req.set_var("debug", "1");
//!         }
//!         Decision::Continue
//!     }
//!     fn on_response(&self, req: &dyn RequestInfo, resp: &mut dyn Response) -> Decision {
//!         if req.var("debug").is_some() {
//!             resp.headers_mut().set("x-debug-route", req.route().unwrap_or("-"));
//!         }
//!         Decision::Continue
//!     }
//! }
//!
//! let policy: Tag = weir_plugin_sdk::testing::load("null").unwrap();
//! let mut req = MockRequest::get("/v1/users?debug").with_route("users-v1");
//! assert!(policy.on_request(&mut req).is_continue());
//! let mut resp = MockResponse::new(200);
//! assert!(policy.on_response(&req, &mut resp).is_continue());
//! assert_eq!(resp.headers().get("x-debug-route").as_deref(), Some("users-v1"));
//! ```

use crate::http::{
    join_target, split_target, validate_consumer, validate_header, validate_header_name,
    validate_path, validate_query, Headers, Request, RequestInfo, Response, CONSUMER_PROPERTY,
};
use crate::store::{Entry, SharedStore, StoreError};
use crate::{configure, Policy};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Builds a policy from a JSON config exactly as the plugin's `on_configure` does
/// (see [`configure`]): use it to test config errors too.
pub fn load<P: Policy>(config_json: &str) -> Result<P, String> {
    configure::<P>(Some(config_json.as_bytes()))
}

/// An in-memory header map with the host's rules (see the [module docs](self)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MockHeaders {
    entries: Vec<(String, String)>,
    refused: Vec<String>,
}

impl MockHeaders {
    /// The first value of `name` without copying it (pseudo-headers included).
    pub fn value(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Writes refused so far, as the warning the plugin would log.
    pub fn refused(&self) -> &[String] {
        &self.refused
    }

    /// Appends an entry without the write rules: what a client or upstream sent.
    fn push_raw(&mut self, name: &str, value: &str) {
        self.entries
            .push((name.to_ascii_lowercase(), value.to_string()));
    }

    /// Sets an entry without the write rules: pseudo-headers the host owns.
    fn put_raw(&mut self, name: &str, value: &str) {
        self.remove_raw(name);
        self.push_raw(name, value);
    }

    fn remove_raw(&mut self, name: &str) {
        self.entries.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    fn check(&mut self, result: Result<(), String>) -> bool {
        match result {
            Ok(()) => true,
            Err(e) => {
                log::warn!("header write refused: {e}");
                self.refused.push(e);
                false
            }
        }
    }
}

impl Headers for MockHeaders {
    fn get(&self, name: &str) -> Option<String> {
        let mut values = self
            .entries
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        let first = values.next()?;
        Some(values.fold(first.to_string(), |joined, v| joined + ", " + v))
    }

    fn pairs(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .filter(|(n, _)| !n.starts_with(':'))
            .cloned()
            .collect()
    }

    fn set(&mut self, name: &str, value: &str) {
        if self.check(validate_header(name, value)) {
            self.put_raw(name, value);
        }
    }

    fn add(&mut self, name: &str, value: &str) {
        if self.check(validate_header(name, value)) {
            self.push_raw(name, value);
        }
    }

    fn remove(&mut self, name: &str) {
        if self.check(validate_header_name(name)) {
            self.remove_raw(name);
        }
    }
}

/// A request as the mock host presents it to [`Policy::on_request`] and, by reference,
/// to [`Policy::on_response`].
///
/// ```
/// # use weir_plugin_sdk::testing::MockRequest;
/// let req = MockRequest::get("/v1/users?x=1")
///     .header("x-api-key", "k")
///     .client("10.0.0.1")
///     .with_route("users-v1");
/// ```
#[derive(Debug, Clone)]
pub struct MockRequest {
    headers: MockHeaders,
    client: Option<String>,
    route: Option<String>,
    consumer: Option<String>,
    properties: BTreeMap<String, Vec<u8>>,
    vars: BTreeMap<String, String>,
    response_headers: Vec<(String, String)>,
    store: MockStore,
    now: SystemTime,
    refused: Vec<String>,
}

impl MockRequest {
    /// A request with `method` and `target` (path and optional query, as on the
    /// request line), scheme `http`, no other header, no client address, route or
    /// consumer, a fresh [`MockStore`], and the clock at 2023-11-14T22:13:20Z.
    ///
    /// # Panics
    /// If `target` does not start with `/`.
    pub fn new(method: &str, target: &str) -> MockRequest {
        assert!(
            target.starts_with('/'),
            "a request target starts with `/`: {target:?}"
        );
        let mut headers = MockHeaders::default();
        headers.push_raw(":method", method);
        headers.push_raw(":path", target);
        headers.push_raw(":scheme", "http");
        MockRequest {
            headers,
            client: None,
            route: None,
            consumer: None,
            properties: BTreeMap::new(),
            vars: BTreeMap::new(),
            response_headers: Vec::new(),
            store: MockStore::new(),
            now: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            refused: Vec::new(),
        }
    }

    /// `GET target`.
    pub fn get(target: &str) -> MockRequest {
        MockRequest::new("GET", target)
    }

    /// `POST target`.
    pub fn post(target: &str) -> MockRequest {
        MockRequest::new("POST", target)
    }

    /// `PUT target`.
    pub fn put(target: &str) -> MockRequest {
        MockRequest::new("PUT", target)
    }

    /// `DELETE target`.
    pub fn delete(target: &str) -> MockRequest {
        MockRequest::new("DELETE", target)
    }

    /// `OPTIONS target`.
    pub fn options(target: &str) -> MockRequest {
        MockRequest::new("OPTIONS", target)
    }

    /// Adds a request header as the client sent it (no write rules: a client may send
    /// `host` or a name the gateway would not let a plugin write).
    pub fn header(mut self, name: &str, value: &str) -> MockRequest {
        self.headers.push_raw(name, value);
        self
    }

    /// Sets the client address (`"10.0.0.1"` or `"10.0.0.1:5000"`).
    pub fn client(mut self, addr: &str) -> MockRequest {
        self.client = Some(addr.to_string());
        self
    }

    /// Sets the matched route's name.
    pub fn with_route(mut self, name: &str) -> MockRequest {
        self.route = Some(name.to_string());
        self
    }

    /// Sets the consumer an earlier plugin identified.
    pub fn with_consumer(mut self, name: &str) -> MockRequest {
        self.consumer = Some(name.to_string());
        self
    }

    /// Sets the scheme (`https`).
    pub fn with_scheme(mut self, scheme: &str) -> MockRequest {
        self.headers.put_raw(":scheme", scheme);
        self
    }

    /// Sets the authority the client asked for (`api.example.com`).
    pub fn with_host(mut self, host: &str) -> MockRequest {
        self.headers.put_raw(":authority", host);
        self
    }

    /// Uses `store` (a clone shares the data: give every request of a test the same
    /// store to see counters add up).
    pub fn with_store(mut self, store: &MockStore) -> MockRequest {
        self.store = store.clone();
        self
    }

    /// Sets the clock [`RequestInfo::now`] reads.
    pub fn at(mut self, now: SystemTime) -> MockRequest {
        self.now = now;
        self
    }

    /// The target as it would go upstream (`/v2/users?x=1`).
    pub fn target(&self) -> &str {
        self.headers.value(":path").unwrap_or("/")
    }

    /// A property the policy set, by dotted name (`"weir.consumer"`).
    pub fn property(&self, name: &str) -> Option<&[u8]> {
        self.properties.get(name).map(Vec::as_slice)
    }

    /// The value of a header the policy set on the response with
    /// [`Request::set_response_header`] (the gateway writes it to the upstream's
    /// response, replacing the upstream's own).
    pub fn response_header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.response_headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every change the gateway would have refused, as logged (header writes, path,
    /// query, consumer). A correct policy leaves this empty.
    pub fn refused(&self) -> Vec<String> {
        let mut all = self.refused.clone();
        all.extend(self.headers.refused.iter().cloned());
        all
    }

    fn check(&mut self, result: Result<(), String>) -> bool {
        match result {
            Ok(()) => true,
            Err(e) => {
                log::warn!("request change refused: {e}");
                self.refused.push(e);
                false
            }
        }
    }
}

impl RequestInfo for MockRequest {
    fn method(&self) -> &str {
        self.headers.value(":method").unwrap_or("GET")
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
        self.client.as_deref()
    }

    fn route(&self) -> Option<&str> {
        self.route.as_deref()
    }

    fn consumer(&self) -> Option<&str> {
        self.consumer.as_deref()
    }

    fn scheme(&self) -> &str {
        self.headers.value(":scheme").unwrap_or("http")
    }

    fn host(&self) -> Option<&str> {
        self.headers
            .value(":authority")
            .or_else(|| self.headers.value("host"))
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    fn store(&self) -> &dyn SharedStore {
        &self.store
    }

    fn now(&self) -> SystemTime {
        self.now
    }
}

impl Request for MockRequest {
    fn headers_mut(&mut self) -> &mut dyn Headers {
        &mut self.headers
    }

    fn set_path(&mut self, path: &str) {
        if self.check(validate_path(path)) {
            let target = join_target(path, self.query());
            self.headers.put_raw(":path", &target);
        }
    }

    fn set_query(&mut self, query: Option<&str>) {
        if self.check(query.map_or(Ok(()), validate_query)) {
            let target = join_target(self.path(), query);
            self.headers.put_raw(":path", &target);
        }
    }

    fn set_consumer(&mut self, name: &str) {
        if self.check(validate_consumer(name)) {
            self.consumer = Some(name.to_string());
            self.properties
                .insert(CONSUMER_PROPERTY.join("."), name.as_bytes().to_vec());
        }
    }

    fn set_var(&mut self, name: &str, value: &str) {
        self.vars.insert(name.to_string(), value.to_string());
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        let check = if name.starts_with(':') {
            Err(format!("`{name}` is a pseudo-header"))
        } else {
            validate_header(name, value)
        };
        if self.check(check) {
            let name = name.to_ascii_lowercase();
            self.response_headers.retain(|(n, _)| *n != name);
            self.response_headers.push((name, value.to_string()));
        }
    }
}

/// A response as the mock host presents it to [`Policy::on_response`].
#[derive(Debug, Clone)]
pub struct MockResponse {
    status: u16,
    headers: MockHeaders,
}

impl MockResponse {
    /// A response with `status` and no headers.
    pub fn new(status: u16) -> MockResponse {
        let mut headers = MockHeaders::default();
        headers.push_raw(":status", &status.to_string());
        MockResponse { status, headers }
    }

    /// Adds a header as the upstream sent it (no write rules).
    pub fn header(mut self, name: &str, value: &str) -> MockResponse {
        self.headers.push_raw(name, value);
        self
    }

    /// Header writes the gateway would have refused, as logged.
    pub fn refused(&self) -> &[String] {
        self.headers.refused()
    }
}

impl Response for MockResponse {
    fn status(&self) -> u16 {
        self.status
    }

    fn headers(&self) -> &dyn Headers {
        &self.headers
    }

    fn headers_mut(&mut self) -> &mut dyn Headers {
        &mut self.headers
    }
}

/// An in-memory [`SharedStore`] with exact compare-and-swap (including "still
/// absent"). Clones share the data, and it is `Send + Sync`, so threads of a test can
/// race on it.
#[derive(Debug, Clone, Default)]
pub struct MockStore {
    inner: Arc<Mutex<StoreData>>,
}

#[derive(Debug, Default)]
struct StoreData {
    entries: BTreeMap<String, Entry>,
    next_cas: u32,
}

impl StoreData {
    fn write(&mut self, key: &str, value: &[u8]) {
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        self.entries.insert(
            key.to_string(),
            Entry {
                value: value.to_vec(),
                cas: self.next_cas,
            },
        );
    }
}

impl MockStore {
    /// An empty store.
    pub fn new() -> MockStore {
        MockStore::default()
    }

    /// Every key and value, sorted by key (for assertions).
    pub fn dump(&self) -> Vec<(String, Vec<u8>)> {
        self.lock()
            .entries
            .iter()
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreData> {
        // A test that panicked while holding the lock left consistent data behind.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SharedStore for MockStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self.lock().entries.get(key).cloned())
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u32>,
        value: &[u8],
    ) -> Result<(), StoreError> {
        let mut data = self.lock();
        let current = data.entries.get(key).map(|e| e.cas);
        if current != expected {
            return Err(StoreError::CasMismatch);
        }
        data.write(key, value);
        Ok(())
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.lock().write(key, value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Decision;

    #[test]
    fn request_facts() {
        let req = MockRequest::post("/v1/users?x=1&name=a%20b&flag")
            .header("X-Api-Key", "k")
            .header("accept", "a")
            .header("accept", "b")
            .client("10.0.0.1:5000")
            .with_route("users-v1")
            .with_scheme("https")
            .with_host("api.example.com");
        assert_eq!(req.method(), "POST");
        assert_eq!(req.path(), "/v1/users");
        assert_eq!(req.query(), Some("x=1&name=a%20b&flag"));
        assert_eq!(req.query_param("name").as_deref(), Some("a b"));
        assert_eq!(req.query_param("flag").as_deref(), Some(""));
        assert_eq!(req.query_param("nope"), None);
        assert_eq!(req.headers().get("x-api-key").as_deref(), Some("k"));
        assert_eq!(req.headers().get("accept").as_deref(), Some("a, b"));
        assert_eq!(req.headers().get_all("Accept"), vec!["a", "b"]);
        assert_eq!(
            req.headers().get(":path").as_deref(),
            Some("/v1/users?x=1&name=a%20b&flag")
        );
        assert!(req
            .headers()
            .pairs()
            .iter()
            .all(|(n, _)| !n.starts_with(':')));
        assert_eq!(req.client_ip(), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(req.route(), Some("users-v1"));
        assert_eq!(req.scheme(), "https");
        assert_eq!(req.host(), Some("api.example.com"));
        assert_eq!(req.consumer(), None);
        assert_eq!(MockRequest::get("/").header("Host", "h").host(), Some("h"));
        assert_eq!(
            MockRequest::get("/").client("::1").client_ip(),
            Some("::1".parse().unwrap())
        );
    }

    #[test]
    fn request_changes() {
        let mut req = MockRequest::get("/a?x=1&y=2&x=3");
        req.set_path("/b/c");
        assert_eq!(req.target(), "/b/c?x=1&y=2&x=3");
        req.remove_query_param("x");
        assert_eq!(req.target(), "/b/c?y=2");
        req.add_query_param("q", "a b&c");
        assert_eq!(req.target(), "/b/c?y=2&q=a%20b%26c");
        req.set_query_param("y", "9");
        assert_eq!(req.target(), "/b/c?q=a%20b%26c&y=9");
        req.remove_query_param("q");
        req.remove_query_param("y");
        assert_eq!(req.target(), "/b/c");
        req.add_query_param("z", "1");
        assert_eq!(req.target(), "/b/c?z=1");

        req.headers_mut().set("X-A", "1");
        req.headers_mut().add("x-a", "2");
        assert_eq!(req.headers().get_all("x-a"), vec!["1", "2"]);
        req.headers_mut().set("x-a", "3");
        assert_eq!(req.headers().get_all("x-a"), vec!["3"]);
        req.headers_mut().remove("x-a");
        assert!(!req.headers().contains("x-a"));

        req.set_consumer("alice");
        assert_eq!(req.consumer(), Some("alice"));
        assert_eq!(req.property("weir.consumer"), Some(&b"alice"[..]));
        req.set_var("k", "v");
        assert_eq!(req.var("k"), Some("v"));
        assert!(req.refused().is_empty());
    }

    #[test]
    fn refused_changes_are_listed_and_ignored() {
        let mut req = MockRequest::get("/a?b=1");
        req.set_path("no-slash");
        req.set_query(Some("a b"));
        req.set_consumer("");
        req.headers_mut().set("content-length", "1");
        req.headers_mut().set(":path", "/x");
        req.headers_mut().add("x", "a\nb");
        req.headers_mut().remove("host");
        assert_eq!(req.target(), "/a?b=1");
        assert_eq!(req.refused().len(), 7, "{:?}", req.refused());
        let mut resp = MockResponse::new(200);
        resp.headers_mut().set("transfer-encoding", "chunked");
        assert_eq!(resp.refused().len(), 1);
    }

    #[test]
    fn response_view() {
        let mut resp = MockResponse::new(404).header("Server", "up");
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers().get(":status").as_deref(), Some("404"));
        resp.headers_mut().remove("server");
        assert!(resp.headers().pairs().is_empty());
    }

    #[test]
    fn store_cas_is_exact() {
        let s = MockStore::new();
        assert_eq!(s.get("k").unwrap(), None);
        s.compare_and_swap("k", None, b"1").unwrap();
        assert_eq!(
            s.compare_and_swap("k", None, b"2"),
            Err(StoreError::CasMismatch)
        );
        let e = s.get("k").unwrap().unwrap();
        s.compare_and_swap("k", Some(e.cas), b"2").unwrap();
        assert_eq!(
            s.compare_and_swap("k", Some(e.cas), b"3"),
            Err(StoreError::CasMismatch)
        );
        assert_eq!(s.dump(), vec![("k".to_string(), b"2".to_vec())]);
    }

    #[test]
    fn store_counts_across_threads_and_requests() {
        let s = MockStore::new();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..250 {
                        // Few retries are expected; the mutex makes each attempt short.
                        while s.increment("n", 1).is_err() {}
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.counter("n").unwrap(), 1000);
        let req = MockRequest::get("/").with_store(&s);
        assert_eq!(req.store().counter("n").unwrap(), 1000);
    }

    struct Deny;
    impl Policy for Deny {
        type Config = ();
        fn new(_: ()) -> Result<Self, String> {
            Ok(Deny)
        }
        fn on_request(&self, req: &mut dyn Request) -> Decision {
            Decision::error(401, "unauthorized", "no", req)
        }
    }

    #[test]
    fn default_hooks_and_mut_request_as_info() {
        let p: Deny = load("{}").unwrap();
        let mut req = MockRequest::get("/").header("x-request-id", "r");
        let d = p.on_request(&mut req);
        assert_eq!(d.status(), Some(401));
        assert_eq!(d.body_json().unwrap()["request_id"], "r");
        assert!(p
            .on_response(&req, &mut MockResponse::new(200))
            .is_continue());
    }
}

/// A request body for [`Policy::on_request_body`] in
/// tests: a chunk (or the whole body) with how much was seen before it.
///
/// ```
/// use weir_plugin_sdk::testing::MockBody;
/// use weir_plugin_sdk::Body;
/// let chunk = MockBody::chunk(b"abc").after(10);
/// assert_eq!((chunk.len(), chunk.seen(), chunk.is_end()), (3, 13, false));
/// let whole = MockBody::whole(b"{}");
/// assert!(whole.is_end());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockBody {
    bytes: Vec<u8>,
    before: usize,
    end: bool,
}

impl MockBody {
    /// A chunk that is not the last, the first of its body (see [`after`](MockBody::after)).
    pub fn chunk(bytes: &[u8]) -> MockBody {
        MockBody {
            bytes: bytes.to_vec(),
            before: 0,
            end: false,
        }
    }

    /// A whole body ([`BodyAccess::Whole`](crate::BodyAccess::Whole)), or a last chunk
    /// with [`after`](MockBody::after).
    pub fn whole(bytes: &[u8]) -> MockBody {
        MockBody {
            end: true,
            ..MockBody::chunk(bytes)
        }
    }

    /// Says `n` bytes came before this chunk.
    pub fn after(mut self, n: usize) -> MockBody {
        self.before = n;
        self
    }

    /// Marks this chunk as the last.
    pub fn last(mut self) -> MockBody {
        self.end = true;
        self
    }
}

impl crate::Body for MockBody {
    fn len(&self) -> usize {
        self.bytes.len()
    }

    fn seen(&self) -> usize {
        self.before.saturating_add(self.bytes.len())
    }

    fn is_end(&self) -> bool {
        self.end
    }

    fn bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }
}
