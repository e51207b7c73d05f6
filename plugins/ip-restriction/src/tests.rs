use super::*;
use serde_json::json;
use std::net::{Ipv4Addr, Ipv6Addr};
use weir_plugin_sdk::testing::{self, MockRequest};

fn policy(config: serde_json::Value) -> IpRestriction {
    testing::load(&config.to_string()).unwrap_or_else(|e| panic!("{e}"))
}

fn error(config: serde_json::Value) -> String {
    match testing::load::<IpRestriction>(&config.to_string()) {
        Ok(p) => panic!("config accepted: {p:?}"),
        Err(e) => e,
    }
}

/// Runs the hook for a client; `true` if the request goes on.
fn passes(p: &IpRestriction, client: &str) -> bool {
    let mut req = MockRequest::get("/").client(client);
    let d = p.on_request(&mut req);
    assert!(req.refused().is_empty(), "{:?}", req.refused());
    d.is_continue()
}

fn check(p: &IpRestriction, allowed: &[&str], refused: &[&str]) {
    for c in allowed {
        assert!(passes(p, c), "{c} should pass");
    }
    for c in refused {
        assert!(!passes(p, c), "{c} should be refused");
    }
}

#[test]
fn ipv4_allow_list() {
    let p = policy(json!({"allow": ["10.0.0.0/8", "192.0.2.7"]}));
    check(
        &p,
        &["10.0.0.0", "10.255.255.255", "10.1.2.3:5000", "192.0.2.7"],
        &[
            "11.0.0.0",
            "9.255.255.255",
            "192.0.2.6",
            "192.0.2.8",
            "2001:db8::1",
        ],
    );
}

#[test]
fn ipv6_allow_list() {
    let p = policy(json!({"allow": ["2001:db8::/32", "2001:db8:ffff:1::1"]}));
    check(
        &p,
        &[
            "2001:db8::",
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
            "[2001:db8::1]:443",
            "2001:DB8::abcd",
        ],
        &[
            "2001:db9::",
            "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff",
            "::1",
            "10.0.0.1",
        ],
    );
    let single = policy(json!({"allow": ["2001:db8::1"]}));
    check(&single, &["2001:db8::1"], &["2001:db8::", "2001:db8::2"]);
}

#[test]
fn deny_list_alone_lets_everything_else_through() {
    let p = policy(json!({"deny": ["203.0.113.0/24", "2001:db8:bad::/48"]}));
    check(
        &p,
        &[
            "203.0.112.255",
            "203.0.114.0",
            "8.8.8.8",
            "2001:db8:bad0::1",
            "::1",
        ],
        &[
            "203.0.113.0",
            "203.0.113.255",
            "2001:db8:bad::",
            "2001:db8:bad:ffff::1",
        ],
    );
}

#[test]
fn deny_wins_over_allow() {
    let p = policy(json!({
        "allow": ["10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32"],
        "deny": ["10.1.2.0/24", "2001:db8::bad"],
    }));
    check(
        &p,
        &["10.1.1.255", "10.1.3.0", "10.200.0.1", "2001:db8::ba"],
        &["10.1.2.0", "10.1.2.200", "2001:db8::bad", "172.16.0.1"],
    );
    // The same entry in both lists: refused.
    let both = policy(json!({"allow": ["192.0.2.1"], "deny": ["192.0.2.1"]}));
    check(&both, &[], &["192.0.2.1"]);
}

#[test]
fn cidr_boundaries() {
    let p = policy(json!({"allow": ["192.168.0.0/23", "172.16.0.0/12", "100.64.0.0/10"]}));
    check(
        &p,
        &[
            "192.168.0.0",
            "192.168.1.255",
            "172.16.0.0",
            "172.31.255.255",
            "100.64.0.0",
            "100.127.255.255",
        ],
        &[
            "192.167.255.255",
            "192.168.2.0",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
        ],
    );
    let all_v4 = policy(json!({"deny": ["0.0.0.0/0"]}));
    check(
        &all_v4,
        &["::1", "2001:db8::1"],
        &["0.0.0.0", "255.255.255.255", "::ffff:1.2.3.4"],
    );
    let all_v6 = policy(json!({"deny": ["::/0"]}));
    check(
        &all_v6,
        &["1.2.3.4", "::ffff:1.2.3.4"],
        &["::", "::1", "ffff::1"],
    );
    let odd = policy(json!({"allow": ["2001:db8::/127", "198.51.100.128/25"]}));
    check(
        &odd,
        &[
            "2001:db8::",
            "2001:db8::1",
            "198.51.100.128",
            "198.51.100.255",
        ],
        &["2001:db8::2", "198.51.100.127"],
    );
}

#[test]
fn ipv4_mapped_addresses_match_as_ipv4() {
    let p = policy(json!({"allow": ["10.0.0.0/8"], "deny": ["10.9.9.9"]}));
    check(
        &p,
        &[
            "::ffff:10.1.2.3",
            "[::ffff:10.1.2.3]:8080",
            "::ffff:a01:203",
        ],
        &["::ffff:10.9.9.9", "::ffff:11.0.0.1", "::10.1.2.3"],
    );
    // A mapped entry is its IPv4 network, so it matches plain IPv4 clients.
    let mapped = policy(json!({"allow": ["::ffff:192.0.2.0/120", "::ffff:198.51.100.9"]}));
    check(
        &mapped,
        &[
            "192.0.2.0",
            "192.0.2.255",
            "::ffff:192.0.2.1",
            "198.51.100.9",
        ],
        &["192.0.3.0", "198.51.100.10"],
    );
}

#[test]
fn unknown_or_unparsable_client_is_refused() {
    let p = policy(json!({"deny": ["192.0.2.1"]}));
    let d = p.on_request(&mut MockRequest::get("/").header("x-request-id", "r-1"));
    assert_eq!(d.status(), Some(403));
    assert_eq!(d.body_json().unwrap()["error"], "forbidden");
    for client in [
        "",
        "unix:/run/weir.sock",
        "not-an-ip",
        "10.0.0.256",
        "fe80::1%eth0",
    ] {
        assert!(!passes(&p, client), "{client:?} should be refused");
    }
}

#[test]
fn spoofed_forwarded_header_is_not_the_client() {
    // The address is what the gateway decided (`source.address`); headers do not count.
    let p = policy(json!({"allow": ["10.0.0.0/8"]}));
    let mut req = MockRequest::get("/")
        .client("203.0.113.9")
        .header("x-forwarded-for", "10.0.0.1")
        .header("x-real-ip", "10.0.0.1");
    assert_eq!(p.on_request(&mut req).status(), Some(403));
}

#[test]
fn refusal_body_and_custom_status() {
    let p = policy(json!({"allow": ["10.0.0.0/8"]}));
    let mut req = MockRequest::get("/")
        .client("192.0.2.1")
        .header("x-request-id", "r-9");
    let d = p.on_request(&mut req);
    assert_eq!(d.status(), Some(403));
    assert_eq!(
        d.body_json().unwrap(),
        json!({"error": "forbidden", "message": DEFAULT_MESSAGE, "request_id": "r-9"})
    );
    assert!(!String::from_utf8_lossy(d.body_bytes()).contains("10.0.0.0"));

    let custom =
        policy(json!({"deny": ["192.0.2.0/24"], "status": 404, "message": "nothing here"}));
    let d = custom.on_request(&mut MockRequest::get("/").client("192.0.2.1"));
    assert_eq!(d.status(), Some(404));
    assert_eq!(d.body_json().unwrap()["message"], "nothing here");
}

#[test]
fn config_errors_name_the_key_and_entry() {
    let cases = [
        (json!({}), "give at least one entry in `allow` or `deny`"),
        (json!({"allow": [], "deny": []}), "give at least one entry"),
        (json!({"allow": ["10.0.0.0/8"], "alow": []}), "unknown field `alow`"),
        (json!({"allow": "10.0.0.0/8"}), "invalid type"),
        (json!({"allow": ["10.0.0.0/8", "10.0.0/8"]}), "allow[1]: `10.0.0/8` is not an IPv4 or IPv6 address"),
        (json!({"deny": ["example.com"]}), "deny[0]: `example.com` is not an IPv4"),
        (json!({"deny": [""]}), "deny[0]: `` is not an IPv4"),
        (json!({"deny": [" 10.0.0.1"]}), "deny[0]: ` 10.0.0.1` is not"),
        (json!({"deny": ["010.0.0.1"]}), "is not an IPv4"),
        (json!({"deny": ["fe80::1%eth0"]}), "is not an IPv4"),
        (json!({"deny": ["10.0.0.0/33"]}), "deny[0]: `10.0.0.0/33` has an invalid prefix length (0-32)"),
        (json!({"deny": ["::/129"]}), "invalid prefix length (0-128)"),
        (json!({"deny": ["10.0.0.0/"]}), "invalid prefix length"),
        (json!({"deny": ["10.0.0.0/+8"]}), "invalid prefix length"),
        (json!({"deny": ["10.0.0.0/8/8"]}), "invalid prefix length"),
        (json!({"deny": ["10.0.0.0/ 8"]}), "invalid prefix length"),
        (
            json!({"allow": ["10.0.0.1/8"]}),
            "allow[0]: `10.0.0.1/8` has host bits set: write `10.0.0.0/8` for the network or `10.0.0.1` for the address",
        ),
        (json!({"deny": ["2001:db8::1/32"]}), "write `2001:db8::/32` for the network"),
        (json!({"deny": ["::ffff:10.0.0.1/104"]}), "write `10.0.0.0/8` for the network"),
        (json!({"deny": ["10.0.0.0/8"], "status": 200}), "status: 200 is not an error status"),
        (json!({"deny": ["10.0.0.0/8"], "status": 600}), "status: 600"),
        (json!({"deny": ["10.0.0.0/8"], "message": ""}), "message: empty"),
    ];
    for (config, expected) in cases {
        let err = error(config.clone());
        assert!(
            err.contains(expected),
            "{config}: {err:?} lacks {expected:?}"
        );
    }
    let err = error(json!({"allow": ["x", "10.0.0.0/8"], "deny": ["1.2.3.4/40"], "status": 99}));
    for part in ["allow[0]", "deny[0]", "status"] {
        assert!(err.contains(part), "{err} lacks {part}");
    }
    assert!(!err.contains("allow[1]"), "{err}");
}

/// A small deterministic generator (xorshift), so the large-list test is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn large_lists_agree_with_a_linear_scan() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut allow = Vec::new();
    let mut deny = Vec::new();
    for i in 0..3000 {
        let net = if i % 3 == 0 {
            let addr = (u128::from(rng.next()) << 64) | u128::from(rng.next());
            IpNet::new(
                IpAddr::from(addr.to_be_bytes()),
                16 + (rng.next() % 113) as u8,
            )
        } else {
            let addr = rng.next() as u32;
            IpNet::new(
                IpAddr::from(addr.to_be_bytes()),
                8 + (rng.next() % 25) as u8,
            )
        }
        .unwrap()
        .trunc();
        if i % 5 == 0 {
            deny.push(net);
        } else {
            allow.push(net);
        }
    }
    let strings = |nets: &[IpNet]| nets.iter().map(ToString::to_string).collect::<Vec<_>>();
    let p = policy(json!({"allow": strings(&allow), "deny": strings(&deny)}));
    let reference =
        |ip: IpAddr| !deny.iter().any(|n| n.contains(&ip)) && allow.iter().any(|n| n.contains(&ip));
    // Every network's first and last address and their neighbours, plus random ones.
    let mut probes: Vec<IpAddr> = Vec::new();
    for net in allow.iter().chain(&deny) {
        for ip in [net.network(), net.broadcast()] {
            probes.push(ip);
            match ip {
                IpAddr::V4(a) => {
                    probes.push(Ipv4Addr::from(u32::from(a).wrapping_add(1)).into());
                    probes.push(Ipv4Addr::from(u32::from(a).wrapping_sub(1)).into());
                }
                IpAddr::V6(a) => {
                    probes.push(Ipv6Addr::from(u128::from(a).wrapping_add(1)).into());
                    probes.push(Ipv6Addr::from(u128::from(a).wrapping_sub(1)).into());
                }
            }
        }
    }
    for _ in 0..3000 {
        probes.push(IpAddr::from((rng.next() as u32).to_be_bytes()));
    }
    let (mut passed, mut refused) = (0, 0);
    for ip in probes {
        let expected = reference(ip);
        assert_eq!(p.allows(ip), expected, "{ip}");
        if expected {
            passed += 1;
        } else {
            refused += 1;
        }
    }
    // The probes exercise both outcomes in earnest.
    assert!(
        passed > 8000 && refused > 8000,
        "{passed} passed, {refused} refused"
    );
}
