//! End-to-end tests: the real `weir` binary, real upstream servers, real sockets, all on
//! 127.0.0.1 ephemeral ports.

mod common;

mod admin;
mod balancing;
mod bodies;
mod config_files;
mod plugins;
mod policies;
mod reload;
mod routing;
mod tls;
