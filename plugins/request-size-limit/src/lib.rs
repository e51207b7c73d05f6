//! `request-size-limit`: answers 413 to requests whose body is larger than a limit.
//!
//! ```toml
//! [[plugins]]
//! name = "size-limit"
//! wasm = "plugins/dist/request-size-limit.wasm"
//! config = { max_size = "1MiB" }
//! ```
//!
//! `max_size` is a number of bytes (`1048576`) or a string with a unit: `B`, `KB`,
//! `MB`, `GB` (powers of 1000) or `KiB`, `MiB`, `GiB` (powers of 1024), case-insensitive
//! (`"512KiB"`, `"10 MB"`). It must be at least 1 byte.
//!
//! - A `content-length` above the limit is refused on the request headers, before the
//!   upstream is contacted: 413 with Weir's JSON error (`payload_too_large`).
//! - A body without `content-length` (chunked) is counted as it streams by: nothing is
//!   held, and the request is stopped with the same 413 as soon as the count passes
//!   the limit. The upstream has seen the request head by then and sees it aborted.
//! - A body within a declared `content-length` needs no counting: the gateway's HTTP
//!   parser never reads past it.
#![warn(missing_docs)]

use serde::Deserialize;
use weir_plugin_sdk::prelude::*;

/// The plugin's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The largest body accepted, in bytes or with a unit (see the crate docs).
    pub max_size: Size,
}

/// A size in bytes: a number, or a string with a unit.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Size {
    /// Bytes.
    Bytes(u64),
    /// `"10MiB"`, `"512 KB"`…
    Text(String),
}

impl Size {
    /// The size in bytes, or why it is not one.
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(n) => Ok(*n),
            Size::Text(t) => parse_size(t),
        }
    }
}

/// Parses `"10MiB"`, `"512 kb"`, `"100"`…
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (a number of bytes, or e.g. \"10MiB\")"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`: use B, KB, MB, GB, KiB, MiB or GiB"
            ))
        }
    };
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// The policy: the limit in bytes.
#[derive(Debug)]
pub struct RequestSizeLimit {
    max: u64,
}

impl RequestSizeLimit {
    fn refuse(&self, req: &dyn RequestInfo) -> Decision {
        Decision::error(
            413,
            "payload_too_large",
            &format!("the request body is larger than {} bytes", self.max),
            req,
        )
    }
}

impl Policy for RequestSizeLimit {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let max = config
            .max_size
            .bytes()
            .map_err(|e| format!("max_size: {e}"))?;
        if max == 0 {
            return Err("max_size: must be at least 1 byte".into());
        }
        Ok(RequestSizeLimit { max })
    }

    /// No response hook: Weir need not call it.
    fn uses_response(&self) -> bool {
        false
    }

    fn on_request(&self, req: &mut dyn Request) -> Decision {
        match declared_length(req) {
            Some(n) if n > self.max => self.refuse(req),
            _ => Decision::Continue,
        }
    }

    fn request_body(&self, req: &dyn RequestInfo) -> BodyAccess {
        // A declared length was checked above and bounds what the gateway reads.
        if declared_length(req).is_some() {
            BodyAccess::Ignore
        } else {
            BodyAccess::Chunks
        }
    }

    fn on_request_body(&self, req: &dyn RequestInfo, body: &dyn Body) -> Decision {
        if body.seen() as u64 > self.max {
            self.refuse(req)
        } else {
            Decision::Continue
        }
    }
}

/// The request's `content-length`, when it has a valid one (the gateway refuses
/// ambiguous framing before plugins run).
fn declared_length(req: &dyn RequestInfo) -> Option<u64> {
    req.headers().get("content-length")?.trim().parse().ok()
}

weir_plugin_sdk::export_policy!(RequestSizeLimit);

#[cfg(test)]
mod tests;
