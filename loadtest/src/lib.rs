//! weir-load: an HTTP/1.1 load generator and a fast upstream for benchmarking Weir.
//!
//! The binary is a thin shell over these modules: [`cli`] parses options into a
//! [`runner::RunConfig`], [`runner`] drives the load with [`client`] connections and
//! collects [`stats`], [`report`] prints the result, and [`upstream`] is the server side.

#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod http1;
pub mod report;
pub mod runner;
pub mod stats;
pub mod target;
pub mod upstream;

use std::fmt;
use std::net::SocketAddr;

/// Everything that can stop weir-load, each with the exit code it maps to.
#[derive(Debug)]
pub enum Error {
    /// Bad options, URL, file or header (exit code 2).
    Config(String),
    /// The target refused or did not answer the first connection (exit code 1).
    Connect {
        /// The target address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Threads, runtimes or sockets could not be set up (exit code 1).
    Runtime(String),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => 2,
            Error::Connect { .. } | Error::Runtime(_) => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(m) | Error::Runtime(m) => f.write_str(m),
            Error::Connect { addr, source } => {
                write!(f, "cannot connect to {addr}: {source}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. } => Some(source),
            _ => None,
        }
    }
}
