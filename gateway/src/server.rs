//! Assembles the Pingora server: the proxy service and its listeners, the admin API,
//! and the background work (health checks, config watching, SIGHUP).

use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::apps::ServerApp;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::Stream;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::access_log::AccessLog;
use crate::admin::AdminApi;
use crate::config::{ConfigError, ConfigErrors};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::proxy::WeirProxy;
use crate::tls::SniCallback;

/// How `weir run` was asked to start.
pub struct RunOptions {
    /// Take over listeners from a running Weir (Pingora's graceful upgrade).
    pub upgrade: bool,
    /// The socket the old and new processes exchange listeners on.
    pub upgrade_sock: String,
}

/// Loads the config, binds everything and serves until SIGTERM/SIGINT.
pub fn run(config_path: &Path, opts: RunOptions) -> Result<(), ConfigErrors> {
    let gateway = Arc::new(Gateway::load(config_path)?);
    let snap = gateway.snapshot();
    let cfg = snap.config.clone();
    if !opts.upgrade {
        check_ports_free(config_path, &cfg)?;
    }

    let server_conf = || ServerConf {
        threads: cfg.server.threads,
        // Pingora keeps serving in-flight requests for the grace period after SIGTERM;
        // `Control` exits earlier as soon as none is left.
        grace_period_seconds: Some(cfg.server.grace_period.get().as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: cfg.server.upstream_keepalive_pool,
        upgrade_sock: opts.upgrade_sock.clone(),
        ..ServerConf::default()
    };
    let conf = Arc::new(server_conf());
    let mut server = Server::new_with_opt_and_conf(
        Opt {
            upgrade: opts.upgrade,
            ..Opt::default()
        },
        server_conf(),
    );
    server.bootstrap();

    let metrics = gateway.metrics.clone();
    let access_log = AccessLog::start(&cfg.access_log.output, cfg.access_log.buffer, metrics)
        .map_err(|e| {
            ConfigErrors::one(ConfigError::new(
                config_path,
                None,
                "access_log.output",
                format!("cannot open `{}`: {e}", cfg.access_log.output),
            ))
        })?;

    let mut proxy =
        pingora::proxy::http_proxy(&conf, WeirProxy::new(gateway.clone(), access_log.clone()));
    let mut options = HttpServerOptions::default();
    options.h2c = cfg.server.h2c;
    proxy.server_options = Some(options);
    let mut service = Service::new(
        "weir proxy".to_string(),
        CountConnections {
            inner: Arc::new(proxy),
            metrics: gateway.metrics.clone(),
        },
    );
    for addr in &cfg.server.listen {
        service.add_tcp(addr);
    }
    if let Some(tls) = &cfg.server.tls {
        for addr in &tls.listen {
            let mut settings = TlsSettings::with_callbacks(Box::new(SniCallback {
                current: gateway.current.clone(),
            }))
            .map_err(|e| {
                ConfigErrors::one(ConfigError::new(
                    config_path,
                    None,
                    "server.tls",
                    format!("TLS setup failed: {e}"),
                ))
            })?;
            if tls.h2 {
                settings.enable_h2();
            }
            service.add_tls_with_settings(addr, None, settings);
        }
    }
    server.add_service(service);

    let shutting_down = Arc::new(AtomicBool::new(false));
    if cfg.admin.listen != "off" {
        let mut admin = Service::new(
            "weir admin".to_string(),
            pingora::apps::http_app::HttpServer::new_app(AdminApi {
                gateway: gateway.clone(),
                shutting_down: shutting_down.clone(),
            }),
        );
        admin.add_tcp(&cfg.admin.listen);
        server.add_service(admin);
    }

    server.add_service(background_service(
        "weir control",
        Control {
            gateway: gateway.clone(),
            shutting_down,
            access_log,
        },
    ));

    tracing::info!(
        listen = ?cfg.server.listen,
        tls = ?cfg.server.tls.as_ref().map(|t| &t.listen),
        admin = %cfg.admin.listen,
        generation = snap.generation,
        "weir started"
    );
    server.run_forever();
}

/// Fails early, with the key's line, when a listen address is taken (Pingora would
/// otherwise abort deep inside service start-up).
fn check_ports_free(path: &Path, cfg: &crate::config::Config) -> Result<(), ConfigErrors> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut errors = Vec::new();
    let mut addrs: Vec<(String, &str)> = cfg
        .server
        .listen
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("server.listen[{i}]"), a.as_str()))
        .collect();
    if let Some(tls) = &cfg.server.tls {
        addrs.extend(
            tls.listen
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("server.tls.listen[{i}]"), a.as_str())),
        );
    }
    if cfg.admin.listen != "off" {
        addrs.push(("admin.listen".into(), cfg.admin.listen.as_str()));
    }
    for (key, addr) in addrs {
        if let Err(e) = TcpListener::bind(addr) {
            errors.push(ConfigError::new(
                path,
                crate::config::line_of_key(&text, &key),
                &key,
                format!("cannot listen on {addr}: {e} (is another process using the port?)"),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Background work on Pingora's runtime: active health checks, the config-file
/// watcher, SIGHUP, and the readiness flag at shutdown.
struct Control {
    gateway: Arc<Gateway>,
    shutting_down: Arc<AtomicBool>,
    access_log: AccessLog,
}

impl Control {
    /// After SIGTERM: listeners are closed; wait for in-flight requests to finish, then
    /// flush the access log and exit without sitting out the rest of the grace period
    /// (pingora itself would sleep it whole, then cancel whatever is still running).
    async fn drain_and_exit(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        let grace = self.gateway.snapshot().config.server.grace_period.get();
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if self.gateway.metrics.active_requests.load(Ordering::Relaxed) <= 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let log = self.access_log.clone();
        let _ = tokio::task::spawn_blocking(move || log.flush(Duration::from_secs(2))).await;
        tracing::info!("in-flight requests done, exiting");
        std::process::exit(0);
    }
}

/// How often plugin timers are looked at: tick periods are rounded up to it, and a
/// queue's owner hears of new items within it.
const PLUGIN_TIMER: Duration = Duration::from_millis(20);

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut health_tick = tokio::time::interval(Duration::from_millis(100));
        // Plugin timers (`on_tick`, `on_queue_ready`): their resolution.
        let mut plugin_tick = tokio::time::interval(PLUGIN_TIMER);
        plugin_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Expired plugin counters and shared-data keys are dropped.
        let mut sweep_tick = tokio::time::interval(Duration::from_secs(1));
        let watch = self.gateway.snapshot().config.server.watch_config;
        let mut watch_tick =
            tokio::time::interval(self.gateway.snapshot().config.server.watch_interval.get());
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload via the admin API or the file watcher");
                None
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    self.drain_and_exit().await;
                    return;
                }
                _ = health_tick.tick() => {
                    let snap = self.gateway.snapshot();
                    for up in &snap.upstreams {
                        up.run_due_checks();
                    }
                    if !snap.plugins.is_empty() {
                        // Rebuilding a failed plugin VM compiles nothing but runs guest
                        // start-up code: keep it off the async workers.
                        let _ = tokio::task::spawn_blocking(move || {
                            snap.plugins.iter().for_each(|p| p.heal());
                        })
                        .await;
                    }
                }
                _ = plugin_tick.tick() => {
                    let snap = self.gateway.snapshot();
                    if !snap.plugins.is_empty() {
                        let _ = tokio::task::spawn_blocking(move || {
                            let now = std::time::Instant::now();
                            snap.plugins.iter().for_each(|p| p.timers(now));
                        })
                        .await;
                    }
                }
                _ = sweep_tick.tick() => {
                    let now = std::time::Instant::now();
                    self.gateway.plugins.shared.counters.sweep(now);
                    self.gateway.plugins.shared.sweep(now);
                }
                _ = watch_tick.tick(), if watch => {
                    let gw = self.gateway.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        if gw.file_changed() {
                            let _ = gw.reload("file change");
                        }
                    }).await;
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => {
                    let gw = self.gateway.clone();
                    let _ = tokio::task::spawn_blocking(move || gw.reload("SIGHUP")).await;
                }
            }
        }
    }
}

/// Wraps the proxy app to count open downstream connections
/// (`weir_downstream_connections`). It runs the keep-alive loop that Pingora's
/// listening service would otherwise run, so a connection is one call here.
struct CountConnections<A> {
    inner: Arc<A>,
    metrics: Arc<Metrics>,
}

struct ConnectionGuard(Arc<Metrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0
            .downstream_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for CountConnections<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.metrics
            .downstream_connections
            .fetch_add(1, Ordering::Relaxed);
        // Decrements even if the task is cancelled at shutdown.
        let _guard = ConnectionGuard(self.metrics.clone());
        let mut next = Some(stream);
        while let Some(s) = next {
            next = self.inner.process_new(s, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
