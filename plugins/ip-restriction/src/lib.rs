//! `ip-restriction`: lets a request through or refuses it by the client's IP address,
//! with allow and deny lists of IPv4 and IPv6 networks.
//!
//! ```toml
//! [[plugins]]
//! name = "office-only"
//! wasm = "plugins/dist/ip-restriction.wasm"   # scripts/build-plugins.sh
//! config.allow = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
//! config.deny = ["10.66.0.0/16"]
//! config.status = 403                                        # default 403
//! config.message = "this API is reachable from the office only"  # optional
//! ```
//!
//! **Entries** are CIDR networks (`10.0.0.0/8`, `2001:db8::/32`) or single addresses
//! (`192.0.2.7` is `192.0.2.7/32`, `2001:db8::1` is `/128`), written as Rust's
//! standard parser reads them: no leading zeros, no zone (`%eth0`), no spaces.
//!
//! **Decision**, on the client's address:
//! - in `deny`: refused, whatever `allow` says (deny wins);
//! - else, when `allow` is not empty: let through only if in `allow`;
//! - else (only a `deny` list): let through.
//!
//! **IPv4-mapped IPv6** client addresses (`::ffff:10.1.2.3`, what a dual-stack socket
//! reports for an IPv4 peer) are matched as the IPv4 address (`10.1.2.3`), and a mapped
//! entry of at least `/96` is read as its IPv4 network (`::ffff:10.0.0.0/104` is
//! `10.0.0.0/8`). Other IPv6 entries never match an IPv4 client: `::/0` means every
//! IPv6 client, `0.0.0.0/0` every IPv4 one.
//!
//! **The client address** is the gateway's `source.address` ([`RequestInfo::client_ip`]):
//! the TCP peer, or the address taken from `x-forwarded-for` only when the peer is one
//! of the gateway's trusted proxies. A client that is not behind a trusted proxy cannot
//! choose its address by sending that header. When the address is unknown or not an IP
//! (a Unix socket), the request is refused (fail closed) and a warning is logged.
//!
//! **Refusal**: Weir's JSON error with `status` (default 403), `"error": "forbidden"`
//! and `message` (default "access from your address is not allowed"). The body never
//! names the lists nor the entry that matched.
//!
//! **Lookups** cost one binary search per distinct prefix length in the list of the
//! client's family (networks are merged where adjacent or overlapping when loaded), so
//! lists of thousands of entries stay cheap.
//!
//! **Config errors** fail the load with a message naming the key: an entry that is not
//! an address or network (`allow[3]: …`), a prefix longer than the family's (`/33`),
//! an entry with host bits set (`10.0.0.1/8`: refused rather than normalised, since it
//! is as likely to be a typo for `10.0.0.1/32` as for `10.0.0.0/8`), both lists
//! empty, a `status` outside 400–599, an empty `message`, or an unknown key.
#![warn(missing_docs)]

use ipnet::IpNet;
use serde::Deserialize;
use std::net::IpAddr;
use weir_plugin_sdk::prelude::*;

/// The plugin's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Networks or addresses let through; empty: everything not denied.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Networks or addresses refused, whatever `allow` says.
    #[serde(default)]
    pub deny: Vec<String>,
    /// The status of a refusal (400–599).
    #[serde(default = "default_status")]
    pub status: u16,
    /// The `message` of the refusal's JSON body.
    #[serde(default)]
    pub message: Option<String>,
}

fn default_status() -> u16 {
    403
}

const DEFAULT_MESSAGE: &str = "access from your address is not allowed";

/// The policy: the lists compiled for lookup.
#[derive(Debug)]
pub struct IpRestriction {
    /// `None`: no allow list, everything not denied passes.
    allow: Option<NetSet>,
    deny: NetSet,
    status: u16,
    message: String,
}

/// Networks of both families.
#[derive(Debug)]
struct NetSet {
    v4: Prefixes,
    v6: Prefixes,
}

/// Networks of one family as sorted network addresses bucketed by prefix length: a
/// lookup is one binary search per distinct length.
#[derive(Debug)]
struct Prefixes {
    /// Address width in bits: 32 or 128.
    width: u8,
    /// `(prefix length, sorted network addresses)`, one entry per distinct length.
    buckets: Vec<(u8, Vec<u128>)>,
}

impl Policy for IpRestriction {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let mut errors = Vec::new();
        let allow = networks("allow", &config.allow, &mut errors);
        let deny = networks("deny", &config.deny, &mut errors);
        if config.allow.is_empty() && config.deny.is_empty() {
            errors.push("give at least one entry in `allow` or `deny`".into());
        }
        if !(400..=599).contains(&config.status) {
            errors.push(format!(
                "status: {} is not an error status (400-599)",
                config.status
            ));
        }
        if config.message.as_deref() == Some("") {
            errors.push("message: empty; leave it out for the default".into());
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(IpRestriction {
            allow: (!config.allow.is_empty()).then(|| NetSet::new(allow)),
            deny: NetSet::new(deny),
            status: config.status,
            message: config.message.unwrap_or_else(|| DEFAULT_MESSAGE.into()),
        })
    }

    /// No response hook: Weir need not call it.
    fn uses_response(&self) -> bool {
        false
    }

    fn on_request(&self, req: &mut dyn Request) -> Decision {
        let allowed = match req.client_ip() {
            Some(ip) => self.allows(ip),
            None => {
                weir_plugin_sdk::log::warn!(
                    "client address {:?} is unknown or not an IP: request refused",
                    req.client_addr()
                );
                false
            }
        };
        if allowed {
            Decision::Continue
        } else {
            Decision::error(self.status, "forbidden", &self.message, &*req)
        }
    }
}

weir_plugin_sdk::export_policy!(IpRestriction);

impl IpRestriction {
    /// Whether `ip` passes: not denied, and allowed when there is an allow list.
    fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        !self.deny.contains(ip) && self.allow.as_ref().is_none_or(|a| a.contains(ip))
    }
}

impl NetSet {
    fn new(nets: Vec<IpNet>) -> NetSet {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in IpNet::aggregate(&nets) {
            match net {
                IpNet::V4(n) => v4.push((u128::from(u32::from(n.network())), n.prefix_len())),
                IpNet::V6(n) => v6.push((u128::from(n.network()), n.prefix_len())),
            }
        }
        NetSet {
            v4: Prefixes::new(32, v4),
            v6: Prefixes::new(128, v6),
        }
    }

    /// Whether a canonical address (IPv4-mapped already turned into IPv4) is in a network.
    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.v4.contains(u128::from(u32::from(a))),
            IpAddr::V6(a) => self.v6.contains(u128::from(a)),
        }
    }
}

impl Prefixes {
    fn new(width: u8, mut nets: Vec<(u128, u8)>) -> Prefixes {
        nets.sort_unstable_by_key(|&(addr, len)| (len, addr));
        let mut buckets: Vec<(u8, Vec<u128>)> = Vec::new();
        for (addr, len) in nets {
            match buckets.last_mut() {
                Some((l, addrs)) if *l == len => addrs.push(addr),
                _ => buckets.push((len, vec![addr])),
            }
        }
        Prefixes { width, buckets }
    }

    fn contains(&self, addr: u128) -> bool {
        self.buckets.iter().any(|(len, networks)| {
            let host_bits = u32::from(self.width - len);
            let network = addr & u128::MAX.checked_shl(host_bits).unwrap_or(0);
            networks.binary_search(&network).is_ok()
        })
    }
}

/// Parses the entries of list `key`, reporting each bad one by index.
fn networks(key: &str, entries: &[String], errors: &mut Vec<String>) -> Vec<IpNet> {
    let mut nets = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        match parse_network(entry) {
            Ok(net) => nets.push(net),
            Err(e) => errors.push(format!("{key}[{i}]: `{entry}` {e}")),
        }
    }
    nets
}

/// Parses `address` or `address/length`, IPv4-mapped networks of at least /96 as IPv4.
fn parse_network(entry: &str) -> Result<IpNet, String> {
    let (addr, len) = match entry.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (entry, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return Err(
            "is not an IPv4 or IPv6 address or network (`10.0.0.0/8`, `2001:db8::/32`)".into(),
        );
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= max && l.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("has an invalid prefix length (0-{max})")),
        },
    };
    let (ip, len) = match ip.to_canonical() {
        v4 @ IpAddr::V4(_) if ip.is_ipv6() && len >= 96 => (v4, len - 96),
        _ => (ip, len),
    };
    let net = IpNet::new(ip, len).map_err(|e| format!("is invalid: {e}"))?;
    if net.trunc() != net {
        return Err(format!(
            "has host bits set: write `{}` for the network or `{ip}` for the address",
            net.trunc()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests;
