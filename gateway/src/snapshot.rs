//! A compiled, immutable config generation: what one request sees from start to end.
//!
//! Built off the request path from a validated [`Config`]; swapped in whole with
//! arc-swap. Upstreams whose config did not change are carried over from the previous
//! snapshot (same `Arc`), keeping their health state and counters.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::config::{Config, DirectResponse, HeaderOps};
use crate::metrics::{Histogram, Metrics, RouteMetrics};
use crate::net::TrustedProxies;
use crate::plugin::{Plugin, PluginHost};
use crate::router::Router;
use crate::tls::{CertStore, CertifiedKey};
use crate::upstream::Upstream;

/// Header edits compiled once per snapshot: names checked and lower-cased (as the
/// bytes [`crate::headers::EditableHead`] writes), values typed.
#[derive(Debug, Default)]
pub struct HeaderEdits {
    pub set: Vec<(Bytes, HeaderValue)>,
    pub add: Vec<(Bytes, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderEdits {
    fn compile(ops: &HeaderOps) -> HeaderEdits {
        let pair = |(n, v): (&String, &String)| {
            let name = HeaderName::from_bytes(n.as_bytes()).ok()?;
            Some((
                Bytes::copy_from_slice(name.as_str().as_bytes()),
                HeaderValue::from_str(v).ok()?,
            ))
        };
        HeaderEdits {
            set: ops.set.iter().filter_map(pair).collect(),
            add: ops.add.iter().filter_map(pair).collect(),
            remove: ops
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// What a matched route does.
pub enum Action {
    Proxy(Arc<Upstream>),
    Respond {
        status: u16,
        body: Bytes,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
}

/// A compiled route.
pub struct Route {
    pub name: Arc<str>,
    pub action: Action,
    pub strip_prefix: bool,
    pub rewrite_path: Option<String>,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    pub metrics: Arc<RouteMetrics>,
    /// The upstream's latency histogram, for proxied routes.
    pub upstream_latency: Option<Arc<Histogram>>,
    /// Global plugins, then the route's, in order.
    pub plugins: Vec<Arc<Plugin>>,
}

/// One config generation.
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    pub router: Router,
    pub routes: Vec<Route>,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Names of `upstreams`, the only places plugin HTTP calls may go.
    pub upstream_names: Arc<[Arc<str>]>,
    pub plugins: Vec<Arc<Plugin>>,
    pub trusted: TrustedProxies,
    pub certs: CertStore,
}

/// What building a snapshot needs besides the config.
pub struct BuildEnv<'a> {
    pub metrics: &'a Metrics,
    pub plugins: &'a PluginHost,
    /// The config file's directory (plugin paths are relative to it).
    pub base_dir: &'a Path,
}

/// Why a validated config could not be built: a plugin that does not load or refuses
/// its configuration, an upstream that cannot be set up. `key` is the config entry it
/// concerns (`plugins[2]`), for the caller to give its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    pub key: String,
    pub message: String,
}

impl BuildError {
    fn new(key: String, message: String) -> BuildError {
        BuildError { key, message }
    }
}

impl Snapshot {
    /// Compiles a validated config. `previous` lends unchanged upstreams and plugins.
    pub fn build(
        config: Config,
        previous: Option<&Snapshot>,
        env: &BuildEnv<'_>,
        generation: u64,
    ) -> Result<Snapshot, BuildError> {
        let metrics = env.metrics;
        let mut plugins: Vec<Arc<Plugin>> = Vec::with_capacity(config.plugins.len());
        for (i, pc) in config.plugins.iter().enumerate() {
            let fail = |e: String| {
                let message = format!("plugin `{}` (`{}`): {e}", pc.name, pc.wasm);
                BuildError::new(format!("plugins[{i}]"), message)
            };
            // The file is read once: its hash decides reuse, its bytes feed a new load.
            let (bytes, hash) = PluginHost::read_module(pc, env.base_dir).map_err(fail)?;
            let reused = previous.and_then(|p| {
                p.plugins
                    .iter()
                    .find(|x| x.config == *pc && x.hash == hash)
                    .cloned()
            });
            let plugin = match reused {
                Some(p) => p,
                None => env
                    .plugins
                    .load_module(pc, &bytes, hash, config.server.threads)
                    .map_err(fail)?,
            };
            plugins.push(plugin);
        }
        let plugin_named = |name: &String| plugins.iter().find(|p| *p.name == **name).cloned();
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        for (i, uc) in config.upstreams.iter().enumerate() {
            let reused =
                previous.and_then(|p| p.upstreams.iter().find(|u| u.config == *uc).cloned());
            let up = match reused {
                Some(u) => u,
                None => Arc::new(Upstream::build(uc).map_err(|e| {
                    BuildError::new(
                        format!("upstreams[{i}]"),
                        format!("upstream `{}`: {e}", uc.name),
                    )
                })?),
            };
            by_name.insert(&uc.name, upstreams.len());
            upstreams.push(up);
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        for (r, rc) in config.routes.iter().enumerate() {
            let at = |message| BuildError::new(format!("routes[{r}]"), message);
            let action = match (&rc.upstream, &rc.respond) {
                (Some(name), _) => {
                    let i = by_name.get(name.as_str()).ok_or_else(|| {
                        at(format!("route `{}`: unknown upstream `{name}`", rc.name))
                    })?;
                    Action::Proxy(upstreams[*i].clone())
                }
                (
                    None,
                    Some(DirectResponse {
                        status,
                        body,
                        headers,
                    }),
                ) => Action::Respond {
                    status: *status,
                    body: Bytes::from(body.clone()),
                    headers: headers
                        .iter()
                        .filter_map(|(n, v)| {
                            Some((
                                HeaderName::from_bytes(n.as_bytes()).ok()?,
                                HeaderValue::from_str(v).ok()?,
                            ))
                        })
                        .collect(),
                },
                (None, None) => return Err(at(format!("route `{}` has no action", rc.name))),
            };
            routes.push(Route {
                name: rc.name.as_str().into(),
                action,
                strip_prefix: rc.strip_prefix,
                rewrite_path: rc.rewrite_path.clone(),
                request_headers: HeaderEdits::compile(&rc.request_headers),
                response_headers: HeaderEdits::compile(&rc.response_headers),
                metrics: metrics.route(&rc.name),
                plugins: config
                    .server
                    .global_plugins
                    .iter()
                    .chain(&rc.plugins)
                    .filter_map(plugin_named)
                    .collect(),
                upstream_latency: rc.upstream.as_deref().map(|u| metrics.upstream(u)),
            });
        }
        let certs = match &config.server.tls {
            Some(tls) => CertStore::new(
                tls.certs
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        CertifiedKey::load(c)
                            .map_err(|e| BuildError::new(format!("server.tls.certs[{i}]"), e))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => CertStore::default(),
        };
        Ok(Snapshot {
            generation,
            router: Router::build(&config.routes),
            routes,
            upstream_names: upstreams.iter().map(|u| u.name.clone()).collect(),
            upstreams,
            plugins,
            trusted: TrustedProxies::new(&config.server.trusted_proxies),
            certs,
            config: Arc::new(config),
        })
    }

    /// (upstream, target, healthy) for metrics and the admin API.
    pub fn target_health(&self) -> Vec<(String, String, bool)> {
        self.upstreams
            .iter()
            .flat_map(|u| {
                u.targets
                    .iter()
                    .map(|t| (u.name.to_string(), t.label.to_string(), t.is_healthy()))
            })
            .collect()
    }
}
