//! Client addresses: trusted proxies and the `x-forwarded-*` decision.

use std::net::IpAddr;

use ipnet::IpNet;

/// Appends the text form of `ip` (as `Display` writes it). IPv4, the common case, is
/// written by hand: `core::fmt` was 1.6k instructions of each proxied request's
/// `x-forwarded-for`.
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

/// `"10.0.0.0/8"`, `"::1/128"` or a bare IP (a /32 or /128).
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The peers whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(cidrs: &[String]) -> Self {
        TrustedProxies {
            nets: cidrs.iter().filter_map(|c| parse_cidr(c)).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client address: the peer itself, unless the peer is a trusted proxy, in which
    /// case the right-most `x-forwarded-for` entry that is not itself trusted (the first
    /// hop we cannot vouch for). Malformed entries stop the walk.
    pub fn client_ip(&self, peer: IpAddr, xff: Option<&[u8]>) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let Some(xff) = xff.and_then(|v| std::str::from_utf8(v).ok()) else {
            return peer;
        };
        let mut client = peer;
        for hop in xff.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !self.contains(ip) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) compare as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_ip_writes_what_display_writes() {
        let mut ips: Vec<IpAddr> = [
            "0.0.0.0",
            "1.2.3.4",
            "10.99.100.255",
            "127.0.0.1",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:1.2.3.4",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        // Every octet value in every position.
        ips.extend((0..=255u8).map(|o| IpAddr::from([o, 255 - o, o / 2, o.wrapping_mul(7)])));
        for ip in ips {
            let mut out = b"x, ".to_vec();
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x, {ip}").into_bytes());
        }
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let t = TrustedProxies::new(&["10.0.0.0/8".into()]);
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(t.client_ip(peer, Some(b"1.1.1.1")), peer);
    }

    #[test]
    fn trusted_peer_yields_rightmost_untrusted_hop() {
        let t = TrustedProxies::new(&["10.0.0.0/8".into(), "::1".into()]);
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        let got = t.client_ip(peer, Some(b"6.6.6.6, 198.51.100.7, 10.2.2.2"));
        assert_eq!(got, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(t.client_ip(peer, None), peer);
        assert_eq!(t.client_ip(peer, Some(b"garbage")), peer);
        assert!(t.contains("::ffff:10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn cidr_forms() {
        assert!(parse_cidr("10.0.0.0/8").is_some());
        assert!(parse_cidr("::1").is_some());
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("nope").is_none());
    }
}
