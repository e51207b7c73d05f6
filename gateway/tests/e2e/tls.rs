//! TLS termination with two certificates chosen by SNI, and HTTP/2 through ALPN.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::Path;

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509NameBuilder, X509};

use super::common::*;

/// Writes a self-signed certificate for `name` (CN and SAN) and its key.
fn make_cert(dir: &Path, name: &str) {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut subject = X509NameBuilder::new().unwrap();
    subject.append_entry_by_nid(Nid::COMMONNAME, name).unwrap();
    let subject = subject.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&subject).unwrap();
    b.set_issuer_name(&subject).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .dns(name)
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = b.build();
    std::fs::write(dir.join(format!("{name}.pem")), cert.to_pem().unwrap()).unwrap();
    std::fs::write(
        dir.join(format!("{name}.key")),
        key.private_key_to_pem_pkcs8().unwrap(),
    )
    .unwrap();
}

/// Connects with `sni`, returns the certificate's CN, the ALPN protocol, and the
/// response to a GET / over HTTP/1.1 (when h1 was negotiated).
fn tls_get(
    addr: std::net::SocketAddr,
    sni: &str,
    alpn: &[u8],
) -> (String, Option<String>, Option<Resp>) {
    let mut c = SslConnector::builder(SslMethod::tls()).unwrap();
    c.set_verify(SslVerifyMode::NONE);
    c.set_alpn_protos(alpn).unwrap();
    let c = c.build();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut s = c
        .configure()
        .unwrap()
        .verify_hostname(false)
        .connect(sni, tcp)
        .expect("TLS handshake");
    let cn = s
        .ssl()
        .peer_certificate()
        .unwrap()
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .unwrap()
        .data()
        .to_string()
        .expect("CN is text");
    let proto = s
        .ssl()
        .selected_alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).to_string());
    if proto.as_deref() == Some("h2") {
        return (cn, proto, None);
    }
    s.write_all(
        format!("GET /hello HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let resp = read_response(&mut BufReader::new(s), false).unwrap();
    (cn, proto, Some(resp))
}

#[test]
fn two_certificates_chosen_by_sni() {
    let certs = tempfile::tempdir().unwrap();
    make_cert(certs.path(), "a.test");
    make_cert(certs.path(), "b.test");
    let up = Upstream::start("app");
    let tls_port = free_port();
    let d = certs.path().display();
    let cfg = format!(
        r#"
[server]
listen = ["{{listen}}"]
[server.tls]
listen = ["127.0.0.1:{tls_port}"]
certs = [
  {{ cert = "{d}/a.test.pem", key = "{d}/a.test.key" }},
  {{ cert = "{d}/b.test.pem", key = "{d}/b.test.key" }},
]
[admin]
listen = "{{admin}}"
[access_log]
output = "off"

[[upstreams]]
name = "app"
targets = ["{}"]

[[routes]]
name = "app"
paths = ["/"]
upstream = "app"
"#,
        up.addr
    );
    let _w = Weir::start(&cfg);
    let tls_addr: std::net::SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    assert!(wait_until(std::time::Duration::from_secs(10), || {
        TcpStream::connect(tls_addr).is_ok()
    }));

    let (cn, _, resp) = tls_get(tls_addr, "a.test", b"\x08http/1.1");
    assert_eq!(cn, "a.test");
    let resp = resp.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-upstream"), Some("app"));
    let seen = up.last().unwrap();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    let (cn, _, resp) = tls_get(tls_addr, "b.test", b"\x08http/1.1");
    assert_eq!(cn, "b.test");
    assert_eq!(resp.unwrap().status, 200);

    // An unknown name gets the first (default) certificate.
    let (cn, _, _) = tls_get(tls_addr, "other.test", b"\x08http/1.1");
    assert_eq!(cn, "a.test");

    // HTTP/2 is offered through ALPN.
    let (_, proto, _) = tls_get(tls_addr, "a.test", b"\x02h2\x08http/1.1");
    assert_eq!(proto.as_deref(), Some("h2"));
}

#[test]
fn bad_certificate_paths_are_config_errors() {
    let (ok, out) = weir_check(
        r#"
[server]
listen = ["127.0.0.1:8080"]
[server.tls]
listen = ["127.0.0.1:8443"]
certs = [{ cert = "/nonexistent/cert.pem", key = "/nonexistent/key.pem" }]
"#,
    );
    assert!(!ok);
    assert!(
        out.contains("weir.toml:6: `server.tls.certs[0]`: cannot read cert"),
        "{out}"
    );
}

#[test]
fn upstream_tls_with_sni_and_verification() {
    let certs = tempfile::tempdir().unwrap();
    make_cert(certs.path(), "backend.test");
    let cert = std::fs::read(certs.path().join("backend.test.pem")).unwrap();
    let key = std::fs::read(certs.path().join("backend.test.key")).unwrap();
    let up = Upstream::tls("secure", &cert, &key);
    let cfg = |tls: &str| {
        format!(
            r#"
[server]
listen = ["{{listen}}"]
watch_config = false
[admin]
listen = "{{admin}}"
[access_log]
output = "off"
[[upstreams]]
name = "secure"
targets = ["{}"]
tls = {tls}
passive = {{ max_failures = 0 }}
retries = 0
[[routes]]
name = "r"
upstream = "secure"
"#,
            up.addr
        )
    };
    // Verification off: the self-signed certificate is accepted.
    let w = Weir::start(&cfg(r#"{ sni = "backend.test", verify = false }"#));
    let r = w.get("/x");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-upstream"), Some("secure"));
    assert_eq!(up.last().unwrap().path, "/x");
    assert_eq!(
        up.sni.lock().unwrap().last().map(String::as_str),
        Some("backend.test")
    );
    drop(w);

    // Verification on: a certificate no CA vouches for is refused, as a JSON 502.
    let before = up.hits();
    let w = Weir::start(&cfg(r#"{ sni = "backend.test", verify = true }"#));
    let r = w.get("/y");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream_connect_failed");
    assert_eq!(
        up.hits(),
        before,
        "no request crossed an unverified connection"
    );
}

#[test]
fn plugin_http_calls_reach_tls_upstreams_with_their_sni_and_verification() {
    let certs = tempfile::tempdir().unwrap();
    make_cert(certs.path(), "auth.test");
    let cert = std::fs::read(certs.path().join("auth.test.pem")).unwrap();
    let key = std::fs::read(certs.path().join("auth.test.key")).unwrap();
    let auth = Upstream::tls("auth", &cert, &key);
    let app = Upstream::start("app");
    let start = |verify: bool| {
        gateway_with(
            app.addr,
            &format!(
                r#"
[[upstreams]]
name = "auth"
targets = ["{}"]
tls = {{ sni = "auth.test", verify = {verify} }}
[[plugins]]
name = "http-call"
wasm = "{{plugin:test/http-call}}"
[[routes]]
name = "api"
upstream = "app"
plugins = ["http-call"]
"#,
                auth.addr
            ),
        )
    };
    let w = start(false);
    let r = Req::get("/orders")
        .header("x-token", "t")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = auth.last().unwrap();
    assert_eq!(
        (seen.path.as_str(), seen.header("x-token")),
        ("/check", Some("t"))
    );
    assert_eq!(
        auth.sni.lock().unwrap().last().map(String::as_str),
        Some("auth.test")
    );
    drop(w);

    // Verification on: the self-signed certificate fails the call, which reaches the
    // plugin as a failed call (it answers 403); nothing crossed the connection.
    let before = auth.hits();
    let w = start(true);
    let r = Req::get("/orders")
        .header("x-token", "t")
        .send(w.addr)
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(auth.hits(), before);
}
