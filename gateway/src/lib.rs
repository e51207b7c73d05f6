//! Weir: a programmable API gateway on Pingora.
//!
//! Modules by concern: [`config`] (the file), [`snapshot`] (a compiled generation),
//! [`router`], [`upstream`] (pools, balancing, health), [`proxy`] (the request path),
//! [`error`] (what clients see on failure), [`admin`], [`metrics`], [`access_log`],
//! [`gateway`] (shared state and reload), [`server`] (wiring it into Pingora).

pub mod access_log;
pub mod admin;
pub mod config;
pub mod error;
pub mod gateway;
pub mod headers;
pub mod metrics;
pub mod net;
pub mod plugin;
pub mod proxy;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod upstream;
