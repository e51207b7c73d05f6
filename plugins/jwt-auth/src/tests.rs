use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;
use std::time::{Duration, SystemTime};
use weir_plugin_sdk::testing::{self, MockRequest};

const RSA_PRIVATE: &str = include_str!("testdata/rsa-private.pem");
const RSA_PUBLIC: &str = include_str!("testdata/rsa-public.pem");
const RSA_PUBLIC_PKCS1: &str = include_str!("testdata/rsa-public-pkcs1.pem");
const RSA2_PRIVATE: &str = include_str!("testdata/rsa2-private.pem");
const RSA2_PUBLIC: &str = include_str!("testdata/rsa2-public.pem");
const RSA1024_PUBLIC: &str = include_str!("testdata/rsa1024-public.pem");
const EC_PRIVATE: &str = include_str!("testdata/ec-private.pem");
const EC_PUBLIC: &str = include_str!("testdata/ec-public.pem");
const P384_PUBLIC: &str = include_str!("testdata/p384-public.pem");
const VECTORS: &str = include_str!("testdata/vectors.txt");
const RFC7515: &str = include_str!("testdata/rfc7515.json");
const SECRET: &str = "an-hs256-test-secret-of-32-bytes!";
/// The mock host's clock.
const NOW: u64 = 1_700_000_000;

// ---- helpers ------------------------------------------------------------------------

/// What signs a test token.
#[derive(Clone, Copy)]
enum By<'a> {
    Hs(&'a str),
    Rs(&'a str),
    Es(&'a str),
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn signature(by: By<'_>, input: &[u8]) -> Vec<u8> {
    use p256::pkcs8::DecodePrivateKey as _;
    use rsa::signature::{SignatureEncoding as _, Signer as _};
    match by {
        By::Hs(secret) => {
            let mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.chain_update(input).finalize().into_bytes().to_vec()
        }
        By::Rs(pem) => {
            let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem).unwrap();
            let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key);
            signer.sign(input).to_vec()
        }
        By::Es(pem) => {
            let key = p256::ecdsa::SigningKey::from_pkcs8_pem(pem).unwrap();
            let sig: p256::ecdsa::Signature = key.sign(input);
            sig.to_bytes().to_vec()
        }
    }
}

use hmac::{Hmac, Mac};

/// A compact JWS of raw header and payload bytes.
fn sign_raw(by: By<'_>, header: &[u8], payload: &[u8]) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let sig = signature(by, input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

fn sign(by: By<'_>, header: serde_json::Value, claims: serde_json::Value) -> String {
    sign_raw(
        by,
        header.to_string().as_bytes(),
        claims.to_string().as_bytes(),
    )
}

fn alg_of(by: By<'_>) -> &'static str {
    match by {
        By::Hs(_) => "HS256",
        By::Rs(_) => "RS256",
        By::Es(_) => "ES256",
    }
}

/// A token for `kid` with valid default claims plus `extra`.
fn token(by: By<'_>, kid: &str, extra: serde_json::Value) -> String {
    let mut claims = json!({"sub": "alice", "exp": NOW + 3600});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    sign(
        by,
        json!({"alg": alg_of(by), "typ": "JWT", "kid": kid}),
        claims,
    )
}

fn keys() -> serde_json::Value {
    json!([
        {"kid": "rsa", "alg": "RS256", "pem": RSA_PUBLIC},
        {"kid": "ec", "alg": "ES256", "pem": EC_PUBLIC},
        {"kid": "hs", "alg": "HS256", "secret": SECRET},
    ])
}

/// The base config (three keys) with `extra` members added.
fn config(extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({"keys": keys()});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn policy(config: serde_json::Value) -> JwtAuth {
    testing::load(&config.to_string()).unwrap_or_else(|e| panic!("{e}"))
}

fn error(config: serde_json::Value) -> String {
    match testing::load::<JwtAuth>(&config.to_string()) {
        Ok(p) => panic!("config accepted: {p:?}"),
        Err(e) => e,
    }
}

fn at(secs: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs_f64(secs)
}

fn bearer_req(token: &str) -> MockRequest {
    MockRequest::get("/orders")
        .header("x-request-id", "r-1")
        .header("authorization", &format!("Bearer {token}"))
}

/// Runs the hook; on success checks nothing was refused and returns the request.
fn pass(p: &JwtAuth, mut req: MockRequest) -> MockRequest {
    let d = p.on_request(&mut req);
    assert!(d.is_continue(), "refused: {:?}", d.body_json());
    assert!(req.refused().is_empty(), "{:?}", req.refused());
    req
}

/// Runs the hook, checks it is an `invalid_token` 401 whose message has `fragment`, and
/// returns the message.
fn deny(p: &JwtAuth, mut req: MockRequest, fragment: &str) -> String {
    let d = p.on_request(&mut req);
    assert_eq!(d.status(), Some(401), "accepted, expected `{fragment}`");
    let body = d.body_json().unwrap();
    assert_eq!(body["error"], "unauthorized");
    let message = body["message"].as_str().unwrap().to_string();
    assert!(message.contains(fragment), "`{message}` lacks `{fragment}`");
    let challenge = d.response_header("www-authenticate").unwrap();
    assert_eq!(
        challenge,
        format!("Bearer realm=\"weir\", error=\"invalid_token\", error_description=\"{message}\"")
    );
    assert!(message
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\'));
    assert!(!req.headers().contains(CONSUMER_HEADER));
    assert_eq!(req.consumer(), None);
    message
}

fn deny_token(p: &JwtAuth, token: &str, fragment: &str) -> String {
    deny(p, bearer_req(token), fragment)
}

// ---- each algorithm -----------------------------------------------------------------

#[test]
fn each_algorithm_verifies_and_names_the_consumer() {
    let p = policy(config(json!({})));
    for (by, kid) in [
        (By::Hs(SECRET), "hs"),
        (By::Rs(RSA_PRIVATE), "rsa"),
        (By::Es(EC_PRIVATE), "ec"),
    ] {
        let req = pass(&p, bearer_req(&token(by, kid, json!({}))));
        assert_eq!(req.consumer(), Some("alice"));
        assert_eq!(req.property("weir.consumer"), Some(&b"alice"[..]));
        assert_eq!(req.headers().get(CONSUMER_HEADER).as_deref(), Some("alice"));
        // Kept by default (hide_credentials = false).
        assert!(req.headers().contains("authorization"));
    }
}

#[test]
fn tokens_signed_by_openssl_verify() {
    let p = policy(json!({
        "keys": [
            {"kid": "openssl-HS256", "alg": "HS256", "secret": SECRET},
            {"kid": "openssl-RS256", "alg": "RS256", "pem": RSA_PUBLIC},
            {"kid": "openssl-ES256", "alg": "ES256", "pem": EC_PUBLIC},
        ],
        "iss": "https://id.example.com",
        "aud": ["other", "api"],
    }));
    let mut n = 0;
    for line in VECTORS.lines() {
        let (alg, token) = line.split_once(' ').unwrap();
        let req = pass(&p, bearer_req(token));
        assert_eq!(req.consumer(), Some("alice"), "{alg}");
        // One flipped signature bit and it fails.
        let mut bad = token.to_string();
        let last = if bad.ends_with('A') { "B" } else { "A" };
        bad.replace_range(bad.len() - 1.., last);
        deny_token(&p, &bad, "");
        n += 1;
    }
    assert_eq!(n, 3);
}

#[test]
fn rfc7515_examples_verify_with_their_jwk_set() {
    let rfc: serde_json::Value = serde_json::from_str(RFC7515).unwrap();
    // The examples have no `sub`: name the consumer by `iss`.
    let p = policy(json!({"jwks": rfc["jwks"], "iss": "joe", "consumer_claim": "iss"}));
    let before_exp = at(1_300_819_000.0);
    for alg in ["rs256", "es256"] {
        let t = rfc[alg].as_str().unwrap();
        let req = pass(&p, bearer_req(t).at(before_exp));
        assert_eq!(req.consumer(), Some("joe"));
        deny(&p, bearer_req(t), "expired");
    }
}

// ---- signatures and algorithms ------------------------------------------------------

#[test]
fn a_wrong_signature_is_refused() {
    let p = policy(config(json!({})));
    // Signed by another RSA key, or another secret, under a known kid.
    deny_token(
        &p,
        &token(By::Rs(RSA2_PRIVATE), "rsa", json!({})),
        "does not verify",
    );
    let other = "another-hs256-secret-of-32-bytes!!";
    deny_token(
        &p,
        &token(By::Hs(other), "hs", json!({})),
        "does not verify",
    );
    // No signature, a truncated one, an ES256 one in DER form.
    let good = token(By::Es(EC_PRIVATE), "ec", json!({}));
    let (input, sig) = good.rsplit_once('.').unwrap();
    deny_token(&p, &format!("{input}."), "does not verify");
    deny_token(&p, &format!("{input}.{}", &sig[..40]), "does not verify");
    let raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let der = p256::ecdsa::Signature::from_slice(&raw).unwrap().to_der();
    deny_token(
        &p,
        &format!("{input}.{}", b64(der.as_bytes())),
        "does not verify",
    );
    // Out-of-range values: r or s zero or past the group order, RSA signatures of the
    // wrong size or past the modulus.
    let rsa_input = token(By::Rs(RSA_PRIVATE), "rsa", json!({}));
    let (rsa_input, _) = rsa_input.rsplit_once('.').unwrap();
    for (input, sig) in [
        (input, vec![0u8; 64]),
        (input, vec![0xff; 64]),
        (input, [vec![0u8; 32], vec![1; 32]].concat()),
        (input, vec![1; 65]),
        (rsa_input, vec![0xff; 256]),
        (rsa_input, vec![0; 256]),
        (rsa_input, vec![1; 255]),
        (rsa_input, vec![1; 512]),
    ] {
        deny_token(&p, &format!("{input}.{}", b64(&sig)), "does not verify");
    }
}

#[test]
fn a_tampered_payload_or_header_is_refused() {
    let p = policy(config(json!({})));
    for (by, kid) in [
        (By::Hs(SECRET), "hs"),
        (By::Rs(RSA_PRIVATE), "rsa"),
        (By::Es(EC_PRIVATE), "ec"),
    ] {
        let good = token(by, kid, json!({}));
        let parts: Vec<&str> = good.split('.').collect();
        let forged = b64(json!({"sub": "admin", "exp": NOW + 3600})
            .to_string()
            .as_bytes());
        deny_token(
            &p,
            &format!("{}.{forged}.{}", parts[0], parts[2]),
            "does not verify",
        );
        let header = b64(json!({"alg": alg_of(by), "kid": kid, "x": 1})
            .to_string()
            .as_bytes());
        deny_token(
            &p,
            &format!("{header}.{}.{}", parts[1], parts[2]),
            "does not verify",
        );
    }
}

#[test]
fn unsigned_tokens_are_refused() {
    let p = policy(config(json!({})));
    let claims = b64(json!({"sub": "alice", "exp": NOW + 3600})
        .to_string()
        .as_bytes());
    for alg in ["none", "None", "NONE"] {
        let header = b64(json!({"alg": alg}).to_string().as_bytes());
        deny_token(&p, &format!("{header}.{claims}."), "alg none");
        deny_token(&p, &format!("{header}.{claims}.c2ln"), "alg none");
    }
}

#[test]
fn unsupported_algorithms_are_refused() {
    let p = policy(config(json!({})));
    for alg in ["HS512", "RS384", "PS256", "ES256K", "EdDSA", "hs256"] {
        let t = sign(
            By::Hs(SECRET),
            json!({"alg": alg, "kid": "hs"}),
            json!({"sub": "alice", "exp": NOW + 3600}),
        );
        deny_token(&p, &t, &format!("alg `{alg}` is not accepted"));
    }
}

#[test]
fn an_rsa_public_key_is_never_an_hmac_secret() {
    // The classic confusion: HS256 with the RSA public key's PEM text as the secret.
    let p = policy(config(json!({})));
    let claims = json!({"sub": "admin", "exp": NOW + 3600});
    for pem in [RSA_PUBLIC, RSA_PUBLIC.trim()] {
        let forged = sign(
            By::Hs(pem),
            json!({"alg": "HS256", "kid": "rsa"}),
            claims.clone(),
        );
        deny_token(&p, &forged, "key `rsa` is for RS256, not HS256");
        // Without a kid, only HS256 keys are tried: the RSA key is not one.
        let forged = sign(By::Hs(pem), json!({"alg": "HS256"}), claims.clone());
        deny_token(&p, &forged, "does not verify");
    }
    let rsa_only = policy(json!({"keys": [{"alg": "RS256", "pem": RSA_PUBLIC}]}));
    let forged = sign(By::Hs(RSA_PUBLIC), json!({"alg": "HS256"}), claims.clone());
    deny_token(&rsa_only, &forged, "no key for HS256 tokens");
    // An ES256 token naming the RSA key.
    let t = token(By::Es(EC_PRIVATE), "rsa", json!({}));
    deny_token(&p, &t, "key `rsa` is for RS256, not ES256");
}

// ---- key selection ------------------------------------------------------------------

#[test]
fn a_kid_selects_its_key_and_an_unknown_kid_is_refused() {
    let p = policy(json!({"keys": [
        {"kid": "one", "alg": "RS256", "pem": RSA_PUBLIC},
        {"kid": "two", "alg": "RS256", "pem": RSA2_PUBLIC},
    ]}));
    pass(
        &p,
        bearer_req(&token(By::Rs(RSA_PRIVATE), "one", json!({}))),
    );
    pass(
        &p,
        bearer_req(&token(By::Rs(RSA2_PRIVATE), "two", json!({}))),
    );
    // The kid pins the key: the other key's signature does not count.
    deny_token(
        &p,
        &token(By::Rs(RSA2_PRIVATE), "one", json!({})),
        "does not verify",
    );
    deny_token(
        &p,
        &token(By::Rs(RSA_PRIVATE), "three", json!({})),
        "unknown key id `three`",
    );
    // Without a kid, every key of the algorithm is tried.
    let no_kid = |by| {
        sign(
            by,
            json!({"alg": "RS256"}),
            json!({"sub": "a", "exp": NOW + 60}),
        )
    };
    pass(&p, bearer_req(&no_kid(By::Rs(RSA2_PRIVATE))));
    deny_token(&p, &no_kid(By::Es(EC_PRIVATE)), "does not verify");
}

#[test]
fn keys_without_a_kid_serve_tokens_with_unknown_kids() {
    let p = policy(json!({"keys": [
        {"kid": "pinned", "alg": "RS256", "pem": RSA2_PUBLIC},
        {"alg": "RS256", "pem": RSA_PUBLIC},
    ]}));
    pass(
        &p,
        bearer_req(&token(By::Rs(RSA_PRIVATE), "whatever", json!({}))),
    );
    // A kid-less key is not tried for a token whose kid names another key...
    deny_token(
        &p,
        &token(By::Rs(RSA_PRIVATE), "pinned", json!({})),
        "does not verify",
    );
    // ...and a keyed key is not tried for a token with an unknown kid.
    deny_token(
        &p,
        &token(By::Rs(RSA2_PRIVATE), "whatever", json!({})),
        "does not verify",
    );
}

#[test]
fn at_most_two_keys_are_tried() {
    let secrets: Vec<String> = (0..3)
        .map(|i| format!("{i}-hs256-test-secret-of-32-bytes!!"))
        .collect();
    let keys: Vec<_> = secrets
        .iter()
        .map(|s| json!({"alg": "HS256", "secret": s}))
        .collect();
    let p = policy(json!({"keys": keys}));
    let t = |i: usize| {
        sign(
            By::Hs(&secrets[i]),
            json!({"alg": "HS256"}),
            json!({"sub": "a", "exp": NOW + 60}),
        )
    };
    pass(&p, bearer_req(&t(0)));
    pass(&p, bearer_req(&t(1)));
    deny_token(&p, &t(2), "does not verify");
}

// ---- claims -------------------------------------------------------------------------

#[test]
fn exp_with_leeway_boundaries() {
    let p = policy(config(json!({})));
    let t = token(By::Hs(SECRET), "hs", json!({"exp": NOW}));
    let n = NOW as f64;
    pass(&p, bearer_req(&t).at(at(n + 29.0)));
    pass(&p, bearer_req(&t).at(at(n + 29.999)));
    deny(&p, bearer_req(&t).at(at(n + 30.0)), "the token has expired");
    let strict = policy(config(json!({"leeway": 0})));
    pass(&strict, bearer_req(&t).at(at(n - 0.001)));
    deny(&strict, bearer_req(&t).at(at(n)), "expired");
    // Fractional dates are numbers too.
    let t = token(By::Hs(SECRET), "hs", json!({"exp": n + 0.5}));
    pass(&strict, bearer_req(&t).at(at(n + 0.25)));
    deny(&strict, bearer_req(&t).at(at(n + 0.5)), "expired");
}

#[test]
fn nbf_with_leeway_boundaries() {
    let p = policy(config(json!({})));
    let t = token(By::Hs(SECRET), "hs", json!({"nbf": NOW + 30}));
    pass(&p, bearer_req(&t));
    deny(&p, bearer_req(&t).at(at(NOW as f64 - 0.5)), "not valid yet");
    let t = token(By::Hs(SECRET), "hs", json!({"nbf": NOW + 31}));
    deny(&p, bearer_req(&t), "not valid yet");
    pass(&p, bearer_req(&t).at(at(NOW as f64 + 1.0)));
}

#[test]
fn exp_is_required_unless_configured_otherwise() {
    let t = sign(
        By::Hs(SECRET),
        json!({"alg": "HS256"}),
        json!({"sub": "alice"}),
    );
    deny_token(&policy(config(json!({}))), &t, "no `exp` claim");
    pass(
        &policy(config(json!({"require_exp": false}))),
        bearer_req(&t),
    );
}

#[test]
fn dates_must_be_json_numbers() {
    let p = policy(config(json!({})));
    for (claim, value) in [
        ("exp", json!("1700003600")),
        ("exp", json!(null)),
        ("nbf", json!(true)),
        ("nbf", json!([1])),
        ("iat", json!("yesterday")),
    ] {
        let t = token(By::Hs(SECRET), "hs", json!({ claim: value }));
        deny_token(&p, &t, &format!("`{claim}` claim is not a number"));
    }
    // Huge numbers: far-future dates are fine, out-of-range ones are not JSON numbers.
    pass(
        &p,
        bearer_req(&token(By::Hs(SECRET), "hs", json!({"exp": 1e300}))),
    );
    let big = token(
        By::Hs(SECRET),
        "hs",
        json!({"exp": 123456789012345678901234567890_f64}),
    );
    pass(&p, bearer_req(&big));
    let payload = br#"{"sub":"alice","exp":1e400}"#;
    let t = sign_raw(By::Hs(SECRET), br#"{"alg":"HS256"}"#, payload);
    deny_token(&p, &t, "payload is not a JSON object");
    let payload = br#"{"sub":"alice","exp":-1}"#;
    let t = sign_raw(By::Hs(SECRET), br#"{"alg":"HS256"}"#, payload);
    deny_token(&p, &t, "expired");
}

#[test]
fn iss_is_one_of_the_accepted_issuers() {
    let one = policy(config(json!({"iss": "https://a.example"})));
    let many = policy(config(
        json!({"iss": ["https://a.example", "https://b.example"]}),
    ));
    let t = |iss: serde_json::Value| token(By::Hs(SECRET), "hs", json!({ "iss": iss }));
    pass(&one, bearer_req(&t(json!("https://a.example"))));
    pass(&many, bearer_req(&t(json!("https://b.example"))));
    deny_token(
        &one,
        &t(json!("https://b.example")),
        "issuer `https://b.example` is not accepted",
    );
    deny_token(&one, &t(json!("https://a.example/")), "is not accepted");
    deny_token(
        &many,
        &t(json!(["https://a.example"])),
        "`iss` claim is not a string",
    );
    let no_iss = token(By::Hs(SECRET), "hs", json!({}));
    deny_token(&many, &no_iss, "no `iss` claim");
    // Not configured: not checked.
    pass(&policy(config(json!({}))), bearer_req(&t(json!("anyone"))));
}

#[test]
fn aud_matches_as_a_string_or_any_element_of_a_list() {
    let one = policy(config(json!({"aud": "api"})));
    let many = policy(config(json!({"aud": ["api", "admin"]})));
    let t = |aud: serde_json::Value| token(By::Hs(SECRET), "hs", json!({ "aud": aud }));
    pass(&one, bearer_req(&t(json!("api"))));
    pass(&one, bearer_req(&t(json!(["web", "api"]))));
    pass(&many, bearer_req(&t(json!("admin"))));
    pass(&many, bearer_req(&t(json!(["web", "admin"]))));
    deny_token(&one, &t(json!("web")), "not for this audience");
    deny_token(&one, &t(json!(["web", "API"])), "not for this audience");
    deny_token(&one, &t(json!([])), "not for this audience");
    deny_token(
        &one,
        &t(json!(["api", 1])),
        "not a string or a list of strings",
    );
    deny_token(&one, &t(json!(7)), "not a string or a list of strings");
    deny_token(
        &one,
        &token(By::Hs(SECRET), "hs", json!({})),
        "no `aud` claim",
    );
}

// ---- token sources ------------------------------------------------------------------

#[test]
fn the_authorization_header_takes_bearer_in_any_case() {
    let p = policy(config(json!({})));
    let t = token(By::Hs(SECRET), "hs", json!({}));
    for value in [
        format!("bearer {t}"),
        format!("BEARER   {t}  "),
        format!("Bearer {t}"),
    ] {
        pass(&p, MockRequest::get("/").header("authorization", &value));
    }
    for value in [
        format!("Bearer{t}"),
        format!("Basic {t}"),
        "Basic dXNlcjpwdw==".into(),
    ] {
        let mut req = MockRequest::get("/").header("authorization", &value);
        let d = p.on_request(&mut req);
        assert_eq!(d.status(), Some(401), "{value}");
        assert_eq!(
            d.response_header("www-authenticate"),
            Some("Bearer realm=\"weir\"")
        );
    }
    deny(
        &p,
        MockRequest::get("/").header("authorization", "Bearer "),
        "token is empty",
    );
}

#[test]
fn a_missing_token_gets_a_challenge_without_an_error_code() {
    let p = policy(config(json!({"cookie": "session", "realm": "orders"})));
    let mut req = MockRequest::get("/").header("x-request-id", "r-9");
    let d = p.on_request(&mut req);
    assert_eq!(d.status(), Some(401));
    assert_eq!(
        d.response_header("www-authenticate"),
        Some("Bearer realm=\"orders\"")
    );
    let body = d.body_json().unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(body["request_id"], "r-9");
    assert_eq!(
        body["message"],
        "send a token (Authorization: Bearer, cookie `session`)"
    );
}

#[test]
fn extra_sources_header_query_cookie() {
    let p = policy(config(
        json!({"header": "X-JWT", "query": "access_token", "cookie": "session"}),
    ));
    let t = token(By::Es(EC_PRIVATE), "ec", json!({}));
    pass(&p, MockRequest::get("/").header("x-jwt", &t));
    pass(
        &p,
        MockRequest::get("/").header("x-jwt", &format!("Bearer {t}")),
    );
    pass(&p, MockRequest::get(&format!("/o?a=1&access_token={t}")));
    pass(
        &p,
        MockRequest::get("/").header("cookie", &format!("a=1; session={t}; b=2")),
    );
    pass(
        &p,
        MockRequest::get("/").header("cookie", &format!("session=\"{t}\"")),
    );
    // HTTP/2 may split cookies over several headers.
    pass(
        &p,
        MockRequest::get("/")
            .header("cookie", "a=1")
            .header("cookie", &format!("session={t}")),
    );
    // A cookie with a similar name is not the token.
    let mut req = MockRequest::get("/").header("cookie", &format!("xsession={t}"));
    assert_eq!(p.on_request(&mut req).status(), Some(401));
}

#[test]
fn a_token_sent_twice_is_an_invalid_request() {
    let p = policy(config(
        json!({"query": "access_token", "cookie": "session"}),
    ));
    let t = token(By::Hs(SECRET), "hs", json!({}));
    for mut req in [
        bearer_req(&t).header("cookie", &format!("session={t}")),
        MockRequest::get(&format!("/?access_token={t}&access_token={t}")),
        MockRequest::get("/").header("cookie", &format!("session={t}; session={t}")),
    ] {
        let d = p.on_request(&mut req);
        assert_eq!(d.status(), Some(401));
        let challenge = d.response_header("www-authenticate").unwrap();
        assert!(
            challenge.contains("error=\"invalid_request\""),
            "{challenge}"
        );
        assert!(d.body_json().unwrap()["message"]
            .as_str()
            .unwrap()
            .starts_with("send one token, not 2"));
    }
}

#[test]
fn authorization_false_ignores_the_authorization_header() {
    let p = policy(config(json!({"authorization": false, "header": "x-jwt"})));
    let t = token(By::Hs(SECRET), "hs", json!({}));
    let req = pass(&p, bearer_req("not-a-jwt").header("x-jwt", &t));
    assert_eq!(
        req.headers().get("authorization").as_deref(),
        Some("Bearer not-a-jwt")
    );
    let mut req = bearer_req(&t);
    let d = p.on_request(&mut req);
    assert_eq!(
        d.response_header("www-authenticate"),
        Some("Bearer realm=\"weir\"")
    );
}

#[test]
fn hide_credentials_removes_the_token_where_it_was() {
    let p = policy(config(json!({
        "header": "x-jwt", "query": "access_token", "cookie": "session", "hide_credentials": true,
    })));
    let t = token(By::Hs(SECRET), "hs", json!({}));
    let req = pass(&p, bearer_req(&t).header("x-jwt-other", "k"));
    assert!(!req.headers().contains("authorization"));
    assert!(req.headers().contains("x-jwt-other"));
    let req = pass(&p, MockRequest::get("/").header("x-jwt", &t));
    assert!(!req.headers().contains("x-jwt"));
    let req = pass(
        &p,
        MockRequest::get(&format!("/o?a=1&access_token={t}&b=%20")),
    );
    assert_eq!(req.target(), "/o?a=1&b=%20");
    let req = pass(
        &p,
        MockRequest::get("/").header("cookie", &format!("a=1; session={t}; b=2")),
    );
    assert_eq!(req.headers().get_all("cookie"), vec!["a=1; b=2"]);
    let req = pass(
        &p,
        MockRequest::get("/").header("cookie", &format!("session={t}")),
    );
    assert!(!req.headers().contains("cookie"));
}

// ---- success: consumer and forwarded claims -----------------------------------------

#[test]
fn the_consumer_comes_from_the_configured_claim() {
    let p = policy(config(json!({"consumer_claim": "client_id"})));
    let t = token(By::Hs(SECRET), "hs", json!({"client_id": "billing"}));
    let req = pass(&p, bearer_req(&t).header("X-Consumer", "root"));
    assert_eq!(req.consumer(), Some("billing"));
    assert_eq!(req.headers().get_all(CONSUMER_HEADER), vec!["billing"]);
    let t = token(By::Hs(SECRET), "hs", json!({"client_id": 42}));
    assert_eq!(pass(&p, bearer_req(&t)).consumer(), Some("42"));
    for bad in [
        json!(null),
        json!(""),
        json!(true),
        json!(1.5),
        json!(["a"]),
        json!("line\nbreak"),
        json!("x".repeat(MAX_CONSUMER_BYTES + 1)),
    ] {
        let t = token(By::Hs(SECRET), "hs", json!({ "client_id": bad }));
        deny_token(
            &p,
            &t,
            "`client_id` claim is missing or not a usable consumer name",
        );
    }
    deny_token(
        &p,
        &token(By::Hs(SECRET), "hs", json!({})),
        "`client_id` claim is missing",
    );
    let t = token(
        By::Hs(SECRET),
        "hs",
        json!({"client_id": "x".repeat(MAX_CONSUMER_BYTES)}),
    );
    pass(&p, bearer_req(&t));
}

#[test]
fn forward_claims_set_headers_and_spoofed_copies_are_removed() {
    let p = policy(config(json!({"forward_claims": {
        "sub": "x-user-id", "email": "X-User-Email", "admin": "x-admin", "level": "x-level",
        "roles": "x-roles", "org": "x-org", "nick": "x-nick", "note": "x-note", "absent": "x-absent",
    }})));
    let t = token(
        By::Rs(RSA_PRIVATE),
        "rsa",
        json!({
            "email": "a@example.com", "admin": false, "level": 3.5, "roles": ["read", "write"],
            "org": {"id": 7}, "nick": null, "note": "two\r\nx-evil: 1",
        }),
    );
    let mut req = bearer_req(&t);
    for h in [
        "x-user-id",
        "x-user-email",
        "x-admin",
        "x-nick",
        "x-note",
        "x-absent",
        "x-consumer",
    ] {
        req = req.header(h, "spoofed");
    }
    let req = pass(&p, req);
    let h = |name: &str| req.headers().get_all(name);
    assert_eq!(h("x-user-id"), vec!["alice"]);
    assert_eq!(h("x-user-email"), vec!["a@example.com"]);
    assert_eq!(h("x-admin"), vec!["false"]);
    assert_eq!(h("x-level"), vec!["3.5"]);
    assert_eq!(h("x-roles"), vec![r#"["read","write"]"#]);
    assert_eq!(h("x-org"), vec![r#"{"id":7}"#]);
    assert!(h("x-nick").is_empty());
    assert!(h("x-note").is_empty(), "a value with CR/LF is skipped");
    assert!(h("x-absent").is_empty());
    assert_eq!(h("x-consumer"), vec!["alice"]);
}

#[test]
fn spoofed_headers_are_removed_before_any_decision() {
    let p = policy(config(json!({"forward_claims": {"email": "x-user-email"}})));
    let mut req = MockRequest::get("/")
        .header("x-consumer", "root")
        .header("x-user-email", "root@example.com");
    assert_eq!(p.on_request(&mut req).status(), Some(401));
    assert!(!req.headers().contains("x-consumer"));
    assert!(!req.headers().contains("x-user-email"));
}

// ---- hostile tokens -----------------------------------------------------------------

#[test]
fn malformed_tokens_are_refused_without_panicking() {
    let p = policy(config(json!({"max_token_size": 1024})));
    let hs = |header: &[u8], payload: &[u8]| sign_raw(By::Hs(SECRET), header, payload);
    let claims = br#"{"sub":"alice","exp":1800000000}"#;
    let cases: Vec<(String, &str)> = vec![
        ("a".into(), "has 1 parts"),
        ("a.b".into(), "has 2 parts"),
        ("a.b.c.d".into(), "has 4 parts"),
        ("a.b.c.d.e".into(), "encrypted JWTs are not supported"),
        ("..".into(), "header is not a JSON object"),
        ("a.b.c".into(), "header is not unpadded base64url"),
        ("a b.c.d".into(), "characters other than base64url"),
        ("eyJ=.e.e".into(), "characters other than base64url"),
        (
            "eyJhbGciOiJIUzI1NiJ9+.e.e".into(),
            "characters other than base64url",
        ),
        ("é.e.e".into(), "characters other than base64url"),
        ("\u{fffd}.a.b".into(), "characters other than base64url"),
        ("eyJhbGciOiJIUzI1NiJ9A.e.e".into(), "not unpadded base64url"),
        (
            format!("{}.%%.e", b64(br#"{"alg":"HS256"}"#)),
            "characters other than base64url",
        ),
        (
            format!("{}.e.e", b64(b"\xff\xfe")),
            "header is not a JSON object",
        ),
        (
            format!("{}.e.e", b64(b"[1,2]")),
            "header is not a JSON object",
        ),
        (format!("{}.e.e", b64(b"{}")), "header is not a JSON object"),
        (
            format!("{}.e.e", b64(br#"{"alg":256}"#)),
            "header is not a JSON object",
        ),
        (
            format!("{}.e.e", b64(br#"{"alg":"HS256","kid":7}"#)),
            "header is not a JSON object",
        ),
        (
            format!("{}.e.e", b64(br#"{"alg":"HS256","alg":"none"}"#)),
            "header is not a JSON object",
        ),
        (
            format!("{}.e.e", b64(br#"{"alg":"HS256","crit":["exp"],"exp":1}"#)),
            "`crit` extensions",
        ),
        (
            format!("{}.e$.e", b64(br#"{"alg":"HS256"}"#)),
            "characters other than base64url",
        ),
        (
            format!("{}.e.e", b64(br#"{"alg":"HS256"}"#)),
            "payload is not unpadded base64url",
        ),
        (
            format!("{}.{}.e", b64(br#"{"alg":"HS256"}"#), b64(claims)),
            "signature is not unpadded",
        ),
        (
            hs(br#"{"alg":"HS256"}"#, b"not json"),
            "payload is not a JSON object",
        ),
        (
            hs(br#"{"alg":"HS256"}"#, b"\xff\xfe"),
            "payload is not a JSON object",
        ),
        (
            hs(br#"{"alg":"HS256"}"#, b"[1]"),
            "payload is not a JSON object",
        ),
        (
            hs(br#"{"alg":"HS256"}"#, "[".repeat(800).as_bytes()),
            "longer than 1024 bytes",
        ),
        (
            hs(br#"{"alg":"HS256"}"#, "[".repeat(300).as_bytes()),
            "payload is not a JSON object",
        ),
        ("e".repeat(1025), "longer than 1024 bytes"),
    ];
    for (t, fragment) in &cases {
        deny_token(&p, t, fragment);
    }
    // A deeply nested payload near the JSON parser's limit.
    let nested = format!(
        r#"{{"sub":"a","exp":1800000000,"x":{}1{}}}"#,
        "[".repeat(120),
        "]".repeat(120)
    );
    pass(
        &policy(config(json!({}))),
        bearer_req(&hs(br#"{"alg":"HS256"}"#, nested.as_bytes())),
    );
}

#[test]
fn token_values_are_sanitized_in_messages() {
    let p = policy(config(json!({})));
    let t = sign(
        By::Hs(SECRET),
        json!({"alg": "HS256", "kid": "a\"b\\c\r\nd-é-0123456789012345678901234567890123456789"}),
        json!({"sub": "alice"}),
    );
    let message = deny_token(&p, &t, "unknown key id");
    assert_eq!(
        message,
        "unknown key id `a?b?c??d-?-01234567890123456789012345678...`"
    );
    let t = token(By::Hs(SECRET), "hs", json!({}));
    let hostile = format!("{t}\r\nx-evil: 1");
    let mut req = MockRequest::get("/").header("authorization", &format!("Bearer {hostile}"));
    assert_eq!(p.on_request(&mut req).status(), Some(401));
}

// ---- keys from config ---------------------------------------------------------------

#[test]
fn pem_variants_are_accepted() {
    let indented: String = RSA_PUBLIC.lines().map(|l| format!("      {l}\n")).collect();
    let p = policy(json!({"keys": [
        {"kid": "pkcs1", "alg": "RS256", "pem": RSA_PUBLIC_PKCS1},
        {"kid": "indented", "alg": "RS256", "pem": format!("\n{indented}   ")},
    ]}));
    pass(
        &p,
        bearer_req(&token(By::Rs(RSA_PRIVATE), "pkcs1", json!({}))),
    );
    pass(
        &p,
        bearer_req(&token(By::Rs(RSA_PRIVATE), "indented", json!({}))),
    );
}

/// Our test keys as JWKs.
fn jwks_of_test_keys() -> serde_json::Value {
    use p256::pkcs8::DecodePublicKey as _;
    use rsa::traits::PublicKeyParts as _;
    let rsa = rsa::RsaPublicKey::from_public_key_pem(RSA_PUBLIC).unwrap();
    let ec = p256::ecdsa::VerifyingKey::from_public_key_pem(EC_PUBLIC).unwrap();
    let point = ec.to_encoded_point(false);
    json!({"keys": [
        {"kty": "RSA", "kid": "r1", "use": "sig", "alg": "RS256",
         "n": b64(&rsa.n().to_bytes_be()), "e": b64(&rsa.e().to_bytes_be()),
         "x5c": ["MIIC..."], "key_ops": ["verify"], "issuer": "https://login.example"},
        {"kty": "EC", "kid": "e1", "crv": "P-256",
         "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())},
    ]})
}

#[test]
fn jwks_rsa_and_ec_keys_as_a_table_or_as_json_text() {
    let jwks = jwks_of_test_keys();
    for p in [
        policy(json!({"jwks": jwks.clone()})),
        policy(json!({"jwks": jwks.to_string()})),
    ] {
        pass(&p, bearer_req(&token(By::Rs(RSA_PRIVATE), "r1", json!({}))));
        pass(&p, bearer_req(&token(By::Es(EC_PRIVATE), "e1", json!({}))));
        deny_token(
            &p,
            &token(By::Rs(RSA2_PRIVATE), "r1", json!({})),
            "does not verify",
        );
        // A JWK without alg gets its kty's: no HS256 through an EC key.
        let forged = sign(
            By::Hs(EC_PUBLIC),
            json!({"alg": "HS256", "kid": "e1"}),
            json!({}),
        );
        deny_token(&p, &forged, "key `e1` is for ES256, not HS256");
    }
    // keys and jwks together.
    let p =
        policy(json!({"keys": [{"kid": "hs", "alg": "HS256", "secret": SECRET}], "jwks": jwks}));
    pass(&p, bearer_req(&token(By::Hs(SECRET), "hs", json!({}))));
    pass(&p, bearer_req(&token(By::Es(EC_PRIVATE), "e1", json!({}))));
}

#[test]
fn debug_output_hides_secrets() {
    let p = policy(config(json!({})));
    let debug = format!("{p:?}");
    assert!(
        debug.contains("\"hs\"") && debug.contains("Hs256"),
        "{debug}"
    );
    assert!(!debug.contains(SECRET));
    let config: Config = serde_json::from_value(config(json!({}))).unwrap();
    let debug = format!("{config:?}");
    assert!(
        debug.contains("<redacted>") && !debug.contains(SECRET),
        "{debug}"
    );
}

// ---- config errors ------------------------------------------------------------------

fn key_error(key: serde_json::Value) -> String {
    error(json!({ "keys": [key] }))
}

fn jwk_error(jwk: serde_json::Value) -> String {
    error(json!({ "jwks": { "keys": [jwk] } }))
}

fn assert_has(message: &str, fragment: &str) {
    assert!(message.contains(fragment), "`{message}` lacks `{fragment}`");
}

#[test]
fn key_config_errors_name_the_key() {
    let cases = [
        (
            json!({"kid": "k", "alg": "HS512", "secret": SECRET}),
            "keys[0] (kid `k`): alg `HS512` is not supported",
        ),
        (
            json!({"alg": "none", "secret": SECRET}),
            "keys[0]: alg `none` (unsigned tokens) is never accepted",
        ),
        (
            json!({"alg": "HS256", "pem": RSA_PUBLIC}),
            "keys[0]: alg HS256 takes `secret`",
        ),
        (json!({"alg": "HS256"}), "alg HS256 takes `secret`"),
        (
            json!({"alg": "HS256", "secret": "x".repeat(31)}),
            "the HS256 secret has 31 bytes; use at least 32",
        ),
        (
            json!({"alg": "RS256", "secret": SECRET}),
            "alg RS256 takes a public key in `pem`",
        ),
        (
            json!({"alg": "ES256"}),
            "alg ES256 takes a public key in `pem`",
        ),
        (
            json!({"alg": "RS256", "pem": RSA_PRIVATE}),
            "`pem` is a private key (PRIVATE KEY)",
        ),
        (
            json!({"alg": "ES256", "pem": EC_PRIVATE}),
            "`pem` is a private key",
        ),
        (
            json!({"alg": "RS256", "pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"}),
            "`pem` is a certificate",
        ),
        (
            json!({"alg": "RS256", "pem": "MIIBIjANBgkq"}),
            "`pem` is not PEM",
        ),
        (
            json!({"alg": "RS256", "pem": "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----"}),
            "`pem` is not an RSA public key",
        ),
        (
            json!({"alg": "RS256", "pem": EC_PUBLIC}),
            "`pem` is a P-256 key: use alg ES256",
        ),
        (
            json!({"alg": "ES256", "pem": RSA_PUBLIC}),
            "`pem` is an RSA key: use alg RS256",
        ),
        (
            json!({"alg": "ES256", "pem": RSA_PUBLIC_PKCS1}),
            "`pem` is an RSA key: use alg RS256",
        ),
        (
            json!({"alg": "ES256", "pem": P384_PUBLIC}),
            "`pem` is not a P-256 public key",
        ),
        (
            json!({"alg": "RS256", "pem": RSA1024_PUBLIC}),
            "the RSA key has 1024 bits; RS256 needs at least 2048",
        ),
        (
            json!({"kid": "", "alg": "HS256", "secret": SECRET}),
            "an empty kid",
        ),
        (
            json!({"alg": "HS256", "secret": SECRET, "secert": 1}),
            "unknown field `secert`",
        ),
    ];
    for (key, fragment) in cases {
        assert_has(&key_error(key), fragment);
    }
}

#[test]
fn jwk_config_errors_name_the_jwk() {
    let jwks = jwks_of_test_keys();
    let rsa = jwks["keys"][0].clone();
    let ec = jwks["keys"][1].clone();
    let with = |base: &serde_json::Value, k: &str, v: serde_json::Value| {
        let mut j = base.clone();
        j[k] = v;
        j
    };
    let without = |base: &serde_json::Value, k: &str| {
        let mut j = base.clone();
        j.as_object_mut().unwrap().remove(k);
        j
    };
    let cases = [
        (
            with(&rsa, "d", json!("AQAB")),
            "jwks.keys[0] (kid `r1`): the JWK carries private key material (`d`)",
        ),
        (with(&ec, "d", json!("AQAB")), "private key material (`d`)"),
        (
            json!({"kty": "oct", "k": "c2VjcmV0"}),
            "jwks.keys[0]: symmetric JWKs (kty `oct`) are not accepted",
        ),
        (with(&rsa, "use", json!("enc")), "`use` is `enc`"),
        (
            with(&rsa, "kty", json!("OKP")),
            "kty `OKP` is not supported",
        ),
        (without(&rsa, "kty"), "missing field `kty`"),
        (
            with(&rsa, "alg", json!("ES256")),
            "alg `ES256` does not fit kty `RSA`",
        ),
        (
            with(&rsa, "alg", json!("RS512")),
            "alg `RS512` is not supported",
        ),
        (
            with(&ec, "alg", json!("none")),
            "alg `none` (unsigned tokens) is never accepted",
        ),
        (without(&rsa, "n"), "missing member `n`"),
        (
            with(&rsa, "e", json!("AQ+B")),
            "member `e` is not base64url",
        ),
        (
            with(&rsa, "n", json!(b64(&[0xC5; 128]))),
            "the RSA key has 1024 bits",
        ),
        (
            with(&rsa, "n", json!(b64(&[0xC5; 1025]))),
            "not a usable RSA public key",
        ),
        (with(&rsa, "n", json!(7)), "invalid type"),
        (
            with(&ec, "crv", json!("P-384")),
            "crv `P-384` is not supported",
        ),
        (without(&ec, "crv"), "missing member `crv`"),
        (with(&ec, "x", json!(b64(&[1; 31]))), "32 bytes each"),
        (with(&ec, "y", json!(b64(&[1; 32]))), "not a point on P-256"),
        (with(&ec, "kid", json!(5)), "jwks.keys[0]: invalid type"),
        (json!("RSA"), "jwks.keys[0]: a JWK must be an object"),
    ];
    for (jwk, fragment) in cases {
        assert_has(&jwk_error(jwk), fragment);
    }
    // The JWK set itself.
    assert_has(&error(json!({"jwks": 5})), "jwks: give a JWK set");
    assert_has(
        &error(json!({"jwks": "{\"keys\": ["})),
        "jwks: the text is not JSON",
    );
    assert_has(
        &error(json!({"jwks": {}})),
        "jwks: `keys` must be a list of JWKs",
    );
    assert_has(
        &error(json!({"jwks": {"keys": [], "extra": 1}})),
        "jwks: unknown member `extra`",
    );
    assert_has(
        &error(json!({"jwks": {"keys": []}})),
        "give at least one key",
    );
}

#[test]
fn kids_are_unique_across_keys_and_jwks() {
    let e = error(json!({
        "keys": [{"kid": "r1", "alg": "HS256", "secret": SECRET}],
        "jwks": jwks_of_test_keys(),
    }));
    assert_has(
        &e,
        "jwks.keys[0] (kid `r1`): the kid is also used by keys[0] (kid `r1`)",
    );
    let e = error(json!({"keys": [
        {"kid": "a", "alg": "HS256", "secret": SECRET},
        {"kid": "b", "alg": "RS256", "pem": RSA_PUBLIC},
        {"kid": "a", "alg": "ES256", "pem": EC_PUBLIC},
    ]}));
    assert_eq!(
        e,
        "keys[2] (kid `a`): the kid is also used by keys[0] (kid `a`)"
    );
}

#[test]
fn other_config_errors_name_their_key() {
    let cases = [
        (json!({}), "give at least one key, in `keys` or `jwks`"),
        (json!({"keys": []}), "give at least one key"),
        (config(json!({"iss": []})), "iss: give non-empty values"),
        (config(json!({"aud": ""})), "aud: give non-empty values"),
        (config(json!({"aud": 5})), "a string or a list of strings"),
        (
            config(json!({"leeway": 30000})),
            "leeway: 30000 seconds is more than 600",
        ),
        (config(json!({"leeway": -1})), "invalid value"),
        (
            config(json!({"max_token_size": 10})),
            "max_token_size: 10 is outside 256..=65536",
        ),
        (
            config(json!({"max_token_size": 1_000_000})),
            "max_token_size: 1000000 is outside",
        ),
        (
            config(json!({"header": "bad header"})),
            "header: `bad header` is not a valid header name",
        ),
        (
            config(json!({"header": "Authorization"})),
            "header: `authorization` cannot carry the token",
        ),
        (
            config(json!({"header": "x-consumer"})),
            "header: `x-consumer` cannot carry the token",
        ),
        (config(json!({"query": ""})), "query: give a parameter name"),
        (
            config(json!({"cookie": "a;b"})),
            "cookie: `a;b` is not a cookie name",
        ),
        (
            config(json!({"cookie": ""})),
            "cookie: `` is not a cookie name",
        ),
        (
            config(json!({"authorization": false})),
            "authorization = false leaves no token source",
        ),
        (
            config(json!({"consumer_claim": ""})),
            "consumer_claim: give a claim name",
        ),
        (
            config(json!({"forward_claims": {"email": "bad header"}})),
            "forward_claims.email: `bad header` is not a valid header name",
        ),
        (
            config(json!({"forward_claims": {"email": "host"}})),
            "forward_claims.email: `host` cannot be changed",
        ),
        (
            config(json!({"forward_claims": {"sub": "X-Consumer"}})),
            "forward_claims.sub: `x-consumer` is a token source or written by the plugin",
        ),
        (
            config(json!({"forward_claims": {"sub": "authorization"}})),
            "`authorization` is a token source",
        ),
        (
            config(json!({"header": "x-jwt", "forward_claims": {"sub": "x-jwt"}})),
            "`x-jwt` is a token source",
        ),
        (
            config(json!({"forward_claims": {"a": "x-a", "b": "X-A"}})),
            "forward_claims.b: `x-a` already carries claim `a`",
        ),
        (
            config(json!({"forward_claims": {"": "x-a"}})),
            "forward_claims: an empty claim name",
        ),
        (
            config(json!({"realm": "a\"b"})),
            "realm: `a\"b` must be 1-40 printable ASCII",
        ),
        (config(json!({"realm": ""})), "realm: `` must be"),
        (config(json!({"keyz": []})), "unknown field `keyz`"),
    ];
    for (c, fragment) in cases {
        assert_has(&error(c), fragment);
    }
    // Every problem at once, joined.
    let e =
        error(json!({"keys": [{"alg": "HS384", "secret": SECRET}], "leeway": 9999, "query": ""}));
    assert_eq!(
        e,
        "query: give a parameter name; keys[0]: alg `HS384` is not supported (HS256, RS256, ES256); \
         leeway: 9999 seconds is more than 600 (it is in seconds, not milliseconds)"
    );
}

#[test]
fn the_documented_config_loads_from_toml() {
    // The crate doc's example, with its elisions filled in and `${JWT_SECRET}`
    // substituted (the gateway does that before parsing).
    let doc: Vec<&str> = include_str!("lib.rs")
        .lines()
        .filter_map(|l| l.strip_prefix("//! ").or(l.strip_prefix("//!")))
        .skip_while(|l| *l != "```toml")
        .skip(1)
        .take_while(|l| *l != "```")
        .collect();
    let rfc: serde_json::Value = serde_json::from_str(RFC7515).unwrap();
    let jwk = |i: usize, m: &str| rfc["jwks"]["keys"][i][m].as_str().unwrap().to_string();
    let body: Vec<String> = RSA_PUBLIC
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .skip(1)
        .map(|l| format!("    {l}"))
        .collect();
    let text = (doc.join("\n") + "\n")
        .replace("    ...\n", &(body.join("\n") + "\n"))
        .replace("${JWT_SECRET}", SECRET)
        .replace("ofgWCuLj...", &jwk(0, "n"))
        .replace("f83OJ3D2...", &jwk(1, "x"))
        .replace("x_FEzRu9...", &jwk(1, "y"));
    #[derive(serde::Deserialize)]
    struct File {
        plugins: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        config: serde_json::Value,
    }
    let file: File = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let p = policy(file.plugins[0].config.clone());
    let claims = json!({"iss": "https://id.example.com/", "aud": "orders-api", "roles": ["r"]});
    let t = token(By::Rs(RSA_PRIVATE), "rsa-2024", claims);
    let req = pass(
        &p,
        MockRequest::get("/").header("cookie", &format!("session={t}")),
    );
    assert!(!req.headers().contains("cookie"));
    assert_eq!(req.headers().get_all("x-user-roles"), vec![r#"["r"]"#]);
    let t = token(
        By::Hs(SECRET),
        "internal",
        json!({"iss": "https://id.example.com/"}),
    );
    deny_token(&p, &t, "no `aud` claim");
}

// ---- the cache of verified tokens ---------------------------------------------------

#[test]
fn a_token_seen_again_skips_verification_but_not_the_claim_checks() {
    let p = policy(config(json!({})));
    let t = token(By::Rs(RSA_PRIVATE), "rsa", json!({"exp": NOW + 60}));
    pass(&p, bearer_req(&t));
    assert_eq!(p.verified.len(), 1);
    let req = pass(&p, bearer_req(&t));
    assert_eq!(req.consumer(), Some("alice"));
    assert_eq!(p.verified.len(), 1);
    // The claims are checked again on a cached token: expired after exp + leeway.
    deny(&p, bearer_req(&t).at(at(NOW as f64 + 91.0)), "expired");
    // A token one byte off a cached one is a different token, verified on its own.
    let mut forged = t.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    deny(&p, bearer_req(&forged), "");
    assert_eq!(p.verified.len(), 1);
}

#[test]
fn only_tokens_that_pass_are_cached_and_the_cache_is_bounded() {
    let p = policy(config(json!({"max_token_size": 16384})));
    let forged = token(By::Hs("another-secret-of-thirty-two-by!"), "hs", json!({}));
    deny_token(&p, &forged, "signature");
    deny_token(&p, &forged, "signature");
    let expired = token(By::Hs(SECRET), "hs", json!({"exp": NOW - 3600}));
    deny_token(&p, &expired, "expired");
    assert_eq!(p.verified.len(), 0);
    // By count.
    for i in 0..VERIFIED_MAX_TOKENS + 10 {
        let t = token(By::Hs(SECRET), "hs", json!({"sub": format!("user-{i}")}));
        pass(&p, bearer_req(&t));
        assert!(p.verified.len() <= VERIFIED_MAX_TOKENS);
    }
    // By bytes: tokens of about 10 KiB.
    for i in 0..2 * VERIFIED_MAX_BYTES / 10_000 {
        let pad = "x".repeat(7_500);
        let t = token(
            By::Hs(SECRET),
            "hs",
            json!({"sub": format!("big-{i}"), "pad": pad}),
        );
        pass(&p, bearer_req(&t));
        assert!(p.verified.bytes.get() <= VERIFIED_MAX_BYTES);
    }
}
