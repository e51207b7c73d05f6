//! Write Weir gateway policies in Rust.
//!
//! A policy is a type implementing [`Policy`]: it is built once from its serde-typed
//! config (the `config` table of its `[[plugins]]` entry), then sees every request of
//! the routes it is attached to through a typed view ([`Request`]) and answers with a
//! [`Decision`]: let the request through (possibly changed) or answer it locally.
//! [`export_policy!`] turns the type into a proxy-wasm v0.2.1 module when built for
//! `wasm32-wasip1`; natively the same code runs against the mock host in [`testing`],
//! so a policy's logic is unit-tested with plain `cargo test`.
//!
//! ```
//! use serde::Deserialize;
//! use weir_plugin_sdk::prelude::*;
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     value: String,
//! }
//!
//! struct Stamp(String);
//!
//! impl Policy for Stamp {
//!     type Config = Config;
//!     fn new(config: Config) -> Result<Self, String> {
//!         Ok(Stamp(config.value))
//!     }
//!     fn on_request(&self, req: &mut dyn Request) -> Decision {
//!         req.headers_mut().set("x-stamp", &self.0);
//!         Decision::Continue
//!     }
//! }
//!
//! weir_plugin_sdk::export_policy!(Stamp);
//!
//! // The mock host: no wasm, no gateway.
//! use weir_plugin_sdk::testing::{self, MockRequest};
//! let policy: Stamp = testing::load(r#"{"value": "weir"}"#).unwrap();
//! let mut req = MockRequest::get("/v1/users?x=1");
//! assert!(policy.on_request(&mut req).is_continue());
//! assert_eq!(req.headers().get("x-stamp").as_deref(), Some("weir"));
//! ```
//!
//! The crate's README (plugin-sdk/README.md) walks through building, configuring,
//! reloading and testing a policy, and lists the proxy-wasm calls the host must provide.
#![warn(missing_docs)]

#[cfg(target_arch = "wasm32")]
mod abi;
#[cfg(any(test, all(target_arch = "wasm32", feature = "allocator")))]
mod alloc;
mod body;
mod decision;
mod http;
pub mod metrics;
pub mod pairs;
pub mod query;
mod store;
pub mod testing;
#[cfg(target_arch = "wasm32")]
mod wasm;

pub use body::{Body, BodyAccess};
pub use decision::Decision;
pub use http::{
    validate_header, validate_path, Headers, Request, RequestInfo, Response, CONSUMER_PROPERTY,
};
#[cfg(not(target_arch = "wasm32"))]
pub use store::requested_ttl;
pub use store::{expire_idle_keys, Entry, SharedStore, StoreError, INCREMENT_ATTEMPTS};

/// The `log` crate: `weir_plugin_sdk::log::info!(...)` in a policy goes to the host's
/// log (`proxy_log`) at that level. Records below `info` are dropped inside the
/// plugin. Natively nothing is printed unless a test installs a logger.
pub use log;

/// Everything a policy file usually needs: `use weir_plugin_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Body, BodyAccess, Decision, Headers, Policy, Request, RequestInfo, Response, SharedStore,
    };
}

/// A gateway policy: built once per configuration, then called for every request of
/// the routes it is attached to.
///
/// The plugin's VM is reused across requests and one policy value serves all of them,
/// so the hooks take `&self`; state that must live from [`on_request`](Policy::on_request)
/// to [`on_response`](Policy::on_response) of the same request goes in the request's
/// variables ([`Request::set_var`], [`RequestInfo::var`]), state shared between
/// requests and VMs in the [`SharedStore`].
///
/// A panic in any hook traps the VM: the host replaces it and the request gets the
/// plugin's `on_error` outcome (deny with a 5xx, or skip the plugin).
pub trait Policy: Sized + 'static {
    /// The plugin's `config` table, deserialized from the JSON the host hands to
    /// `on_configure`. An absent, `null` or `{}` config is read as `{}` (so a struct
    /// whose fields all have defaults needs no config), and failing that as `null` (so
    /// `type Config = ();` works). Use
    /// `#[serde(deny_unknown_fields)]` so a misspelt key fails the load.
    type Config: serde::de::DeserializeOwned;

    /// Builds the policy from its config when the plugin is loaded or reloaded.
    ///
    /// `Err(message)` rejects the config: `on_configure` returns false, the host reports
    /// a failed load with the message (logged at error level), and a reload carrying it
    /// is rejected while the old config keeps serving. Check everything here that can
    /// be checked without a request, so mistakes surface at load time.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Runs on the request headers, before the request goes upstream; body-less
    /// requests and requests with a body alike (the body is not buffered for it).
    ///
    /// May read and change the request (headers, path, query, consumer, variables) and
    /// either let it go on ([`Decision::Continue`]) or answer it locally
    /// ([`Decision::Respond`]), in which case no later plugin and no upstream sees it,
    /// and this policy's [`on_response`](Policy::on_response) does not run for it.
    /// Default: `Continue` without touching the request.
    fn on_request(&self, req: &mut dyn Request) -> Decision {
        let _ = req;
        Decision::Continue
    }

    /// Whether this request's body should be shown to
    /// [`on_request_body`](Policy::on_request_body), and how: asked once per request,
    /// right after [`on_request`](Policy::on_request) let it continue, and only when
    /// the request has a body. Default: [`BodyAccess::Ignore`].
    fn request_body(&self, req: &dyn RequestInfo) -> BodyAccess {
        let _ = req;
        BodyAccess::Ignore
    }

    /// Runs on the request body as [`request_body`](Policy::request_body) asked: per
    /// chunk, or once with the whole body. The request head has gone upstream by then
    /// (it can no longer change); [`Decision::Respond`] ends the request with that
    /// answer, and the upstream sees an aborted request. Default: `Continue`.
    fn on_request_body(&self, req: &dyn RequestInfo, body: &dyn Body) -> Decision {
        let _ = (req, body);
        Decision::Continue
    }

    /// Runs on the response headers, before they go to the client; `req` is the request
    /// as it went upstream (after every plugin's changes), with the variables set in
    /// `on_request`.
    ///
    /// May change the response headers or replace the response with a local one
    /// ([`Decision::Respond`]). Does not run after this policy answered the request
    /// itself; whether it runs on a local answer of another plugin or of the gateway is
    /// the host's choice. Default: `Continue`.
    fn on_response(&self, req: &dyn RequestInfo, resp: &mut dyn Response) -> Decision {
        let _ = (req, resp);
        Decision::Continue
    }

    /// Whether [`on_response`](Policy::on_response) has anything to do with this
    /// configuration. Asked once, after [`new`](Policy::new). Return `false` only when
    /// `on_response` would always return `Continue` without a change: Weir then never
    /// calls the response hook (the `weir_unused_callbacks` extension), which spares a
    /// guest entry, about 1k instructions, per request. Other hosts call it anyway.
    /// Default: `true`.
    fn uses_response(&self) -> bool {
        true
    }
}

/// Reads a policy's config the way `on_configure` does and builds the policy.
///
/// `config` is the plugin configuration buffer (JSON); `None`, empty, `null` and `{}`
/// are read as `{}`, and if the config type rejects that, as `null` (so both a struct
/// whose fields all have defaults and `()` accept "no config"). Errors are
/// `invalid config: <serde message with line and column>` or the policy's own
/// message from [`Policy::new`].
pub fn configure<P: Policy>(config: Option<&[u8]>) -> Result<P, String> {
    let text = config.unwrap_or_default().trim_ascii();
    let empty = text.is_empty()
        || text == b"null"
        || text.iter().filter(|b| !b.is_ascii_whitespace()).eq(b"{}");
    let parsed = if empty {
        serde_json::from_slice::<P::Config>(b"{}")
            .or_else(|first| serde_json::from_slice::<P::Config>(b"null").map_err(|_| first))
    } else {
        serde_json::from_slice::<P::Config>(text)
    };
    P::new(parsed.map_err(|e| format!("invalid config: {e}"))?)
}

/// Exports a [`Policy`] as the plugin's proxy-wasm entry point:
/// `weir_plugin_sdk::export_policy!(MyPolicy);`, once, at the crate root of a
/// `cdylib` crate.
///
/// On `wasm32` it expands to the proxy-wasm `_initialize` export, which sets the log
/// level (`info`) and registers a root context. The root context builds the policy in
/// `on_configure` (see [`configure`]; a failure is logged and returns false) and
/// creates one HTTP context per request that calls [`Policy::on_request`] on the
/// request headers and [`Policy::on_response`] on the response headers. A
/// [`Decision::Respond`] becomes `proxy_send_local_response` and the callback returns
/// `Pause`. Natively it expands to nothing, so the crate also builds as an `rlib` for
/// tests.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        // In an anonymous const so the export needs no docs in the policy's crate.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[no_mangle]
            pub extern "C" fn _initialize() {
                $crate::__private::initialize::<$policy>();
            }
        };
    };
}

/// The policy's allocator in wasm: see `alloc.rs` (why, and how to opt out).
#[cfg(all(target_arch = "wasm32", feature = "allocator"))]
#[global_allocator]
static ALLOCATOR: alloc::SizeClasses<std::alloc::System> =
    alloc::SizeClasses::new(std::alloc::System);

#[doc(hidden)]
pub mod __private {
    //! Used by the expansion of [`export_policy!`](crate::export_policy); not an API.
    #[cfg(target_arch = "wasm32")]
    pub use crate::wasm::initialize;
}

/// The README's Rust blocks run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn readme_quotes_the_example_verbatim() {
        let readme = include_str!("../README.md");
        let example = include_str!("../examples/require_header.rs");
        assert!(
            readme.contains(&format!("```rust\n{example}```")),
            "update the example in plugin-sdk/README.md from examples/require_header.rs"
        );
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        #[serde(default)]
        n: u32,
    }
    struct P(u32);
    impl Policy for P {
        type Config = Cfg;
        fn new(c: Cfg) -> Result<Self, String> {
            if c.n > 10 {
                return Err("n: at most 10".into());
            }
            Ok(P(c.n))
        }
    }

    struct Unit;
    impl Policy for Unit {
        type Config = ();
        fn new(_: ()) -> Result<Self, String> {
            Ok(Unit)
        }
    }

    #[derive(Deserialize)]
    struct Needs {
        #[allow(dead_code)]
        key: String,
    }
    struct N;
    impl Policy for N {
        type Config = Needs;
        fn new(_: Needs) -> Result<Self, String> {
            Ok(N)
        }
    }

    #[test]
    fn absent_config_reads_as_empty_object_then_null() {
        assert_eq!(configure::<P>(None).unwrap().0, 0);
        assert_eq!(configure::<P>(Some(b" null ")).unwrap().0, 0);
        assert_eq!(configure::<P>(Some(b"{\"n\":3}")).unwrap().0, 3);
        assert!(configure::<Unit>(None).is_ok());
        assert!(configure::<Unit>(Some(b"{ }")).is_ok());
        let err = configure::<N>(None).err().unwrap();
        assert!(
            err.starts_with("invalid config: missing field `key`"),
            "{err}"
        );
    }

    #[test]
    fn config_errors_are_reported() {
        let err = configure::<P>(Some(b"{\"m\":1}")).err().unwrap();
        assert!(
            err.starts_with("invalid config: unknown field `m`"),
            "{err}"
        );
        assert_eq!(
            configure::<P>(Some(b"{\"n\":11}")).err().unwrap(),
            "n: at most 10"
        );
    }
}
