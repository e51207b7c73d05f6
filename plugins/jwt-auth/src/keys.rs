//! Verification keys: loaded and checked once from the config (`keys` and `jwks`), then
//! used to check signatures. A key carries exactly one algorithm, fixed by its kind, so a
//! token can never make a key verify under another algorithm.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::DecodePublicKey as _;
use rsa::pkcs1::DecodeRsaPublicKey as _;
use rsa::traits::PublicKeyParts as _;
use rsa::{BigUint, RsaPublicKey};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use std::fmt;

/// The shortest HS256 secret accepted: the hash size, as RFC 7518 §3.2 requires.
pub const MIN_HS256_SECRET_BYTES: usize = 32;
/// The smallest RSA modulus accepted (RFC 7518 §3.3). The `rsa` crate caps it at 4096.
pub const MIN_RSA_BITS: usize = 2048;

/// A signature algorithm the plugin verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// HMAC with SHA-256 and a shared secret.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA on P-256 with SHA-256 (signature `r || s`, 64 bytes).
    Es256,
}

impl Alg {
    /// The algorithm named `name` in a JWS header or a config (case-sensitive, as in
    /// RFC 7518).
    pub fn parse(name: &str) -> Option<Alg> {
        match name {
            "HS256" => Some(Alg::Hs256),
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            _ => None,
        }
    }

    /// The JWS name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }
}

/// Why a configured algorithm is refused, for config messages.
fn unsupported(alg: &str) -> String {
    if alg.eq_ignore_ascii_case("none") {
        "alg `none` (unsigned tokens) is never accepted".to_string()
    } else {
        format!("alg `{alg}` is not supported (HS256, RS256, ES256)")
    }
}

/// A verification key with its one algorithm.
pub struct Key {
    /// The key id tokens name in their `kid` header, if the key has one.
    pub kid: Option<String>,
    verifier: Verifier,
}

enum Verifier {
    Hs256(Vec<u8>),
    Rs256(rsa::pkcs1v15::VerifyingKey<Sha256>),
    Es256(p256::ecdsa::VerifyingKey),
}

// Hand-written so a secret never reaches a log or a test failure message.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg())
            .finish_non_exhaustive()
    }
}

impl Key {
    /// The only algorithm this key verifies.
    pub fn alg(&self) -> Alg {
        match self.verifier {
            Verifier::Hs256(_) => Alg::Hs256,
            Verifier::Rs256(_) => Alg::Rs256,
            Verifier::Es256(_) => Alg::Es256,
        }
    }

    /// Whether `signature` is this key's signature of `input` (the HMAC comparison is
    /// constant-time). Any malformed signature is simply `false`.
    pub fn verify(&self, input: &[u8], signature: &[u8]) -> bool {
        match &self.verifier {
            Verifier::Hs256(secret) => Hmac::<Sha256>::new_from_slice(secret)
                .map(|mac| mac.chain_update(input).verify_slice(signature).is_ok())
                .unwrap_or(false),
            Verifier::Rs256(key) => rsa::pkcs1v15::Signature::try_from(signature)
                .is_ok_and(|sig| key.verify(input, &sig).is_ok()),
            Verifier::Es256(key) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify(input, &sig).is_ok()),
        }
    }

    fn rsa(kid: Option<String>, key: RsaPublicKey) -> Result<Key, String> {
        let bits = key.n().bits();
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "the RSA key has {bits} bits; RS256 needs at least {MIN_RSA_BITS}"
            ));
        }
        Ok(Key {
            kid,
            verifier: Verifier::Rs256(rsa::pkcs1v15::VerifyingKey::new(key)),
        })
    }

    fn es256(kid: Option<String>, key: p256::ecdsa::VerifyingKey) -> Key {
        Key {
            kid,
            verifier: Verifier::Es256(key),
        }
    }
}

/// One entry of `keys`: `{ kid, alg, pem }` or `{ kid, alg = "HS256", secret }`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The id tokens name in their `kid` header; optional.
    #[serde(default)]
    pub kid: Option<String>,
    /// `HS256`, `RS256` or `ES256`.
    pub alg: String,
    /// The public key (RS256, ES256) in PEM: `PUBLIC KEY` (SPKI), or `RSA PUBLIC KEY`
    /// (PKCS#1) for RS256.
    #[serde(default)]
    pub pem: Option<String>,
    /// The shared secret (HS256), at least 32 bytes, used as its UTF-8 bytes.
    #[serde(default)]
    pub secret: Option<String>,
}

// Hand-written so the secret never reaches a log.
impl fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyConfig")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("pem", &self.pem)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl KeyConfig {
    /// Checks the entry and builds its key.
    pub fn load(self) -> Result<Key, String> {
        let alg = Alg::parse(&self.alg).ok_or_else(|| unsupported(&self.alg))?;
        match (alg, self.pem, self.secret) {
            (Alg::Hs256, None, Some(secret)) => {
                if secret.len() < MIN_HS256_SECRET_BYTES {
                    return Err(format!(
                        "the HS256 secret has {} bytes; use at least {MIN_HS256_SECRET_BYTES} \
                         random bytes",
                        secret.len()
                    ));
                }
                Ok(Key {
                    kid: self.kid,
                    verifier: Verifier::Hs256(secret.into_bytes()),
                })
            }
            (Alg::Hs256, _, _) => Err("alg HS256 takes `secret` (and no `pem`)".into()),
            (_, Some(pem), None) => public_key_pem(self.kid, alg, &pem),
            (_, _, _) => Err(format!(
                "alg {} takes a public key in `pem` (and no `secret`)",
                alg.name()
            )),
        }
    }
}

/// Reads a PEM public key for `alg`, with a precise message for the usual mistakes.
fn public_key_pem(kid: Option<String>, alg: Alg, pem: &str) -> Result<Key, String> {
    // TOML multi-line strings keep indentation; PEM parsers do not accept it.
    let pem: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .flat_map(|l| [l, "\n"])
        .collect();
    let label = pem
        .strip_prefix("-----BEGIN ")
        .and_then(|rest| rest.split_once("-----"))
        .map(|(label, _)| label)
        .ok_or("`pem` is not PEM (it must start with `-----BEGIN PUBLIC KEY-----`)")?;
    if label.contains("PRIVATE KEY") {
        return Err(format!(
            "`pem` is a private key ({label}); give the public key \
             (`openssl pkey -in key.pem -pubout`) and keep the private key off the gateway"
        ));
    }
    if label == "CERTIFICATE" {
        return Err("`pem` is a certificate; give its public key \
                    (`openssl x509 -in cert.pem -pubkey -noout`)"
            .into());
    }
    let rsa = || match label {
        "RSA PUBLIC KEY" => RsaPublicKey::from_pkcs1_pem(&pem).map_err(|e| e.to_string()),
        _ => rsa::pkcs8::DecodePublicKey::from_public_key_pem(&pem).map_err(|e| e.to_string()),
    };
    let p256 = || p256::ecdsa::VerifyingKey::from_public_key_pem(&pem);
    match alg {
        Alg::Rs256 => match rsa() {
            Ok(key) => Key::rsa(kid, key),
            Err(_) if p256().is_ok() => Err("`pem` is a P-256 key: use alg ES256".into()),
            Err(e) => Err(format!("`pem` is not an RSA public key ({e})")),
        },
        Alg::Es256 => match p256() {
            Ok(key) => Ok(Key::es256(kid, key)),
            Err(_) if rsa().is_ok() => Err("`pem` is an RSA key: use alg RS256".into()),
            Err(_) => Err(format!(
                "`pem` is not a P-256 public key (`{label}` of another curve or malformed)"
            )),
        },
        Alg::Hs256 => Err("alg HS256 takes `secret` (and no `pem`)".into()),
    }
}

/// JWK members that carry private or symmetric key material.
const SECRET_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// One JWK (RFC 7517) of a JWK set: the members the plugin reads. Others (`x5c`,
/// `key_ops`, `issuer`…) are ignored, as RFC 7517 §4 asks.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// The `kid` of a JWK, if it has a string one (for messages about a JWK that does not
/// otherwise load).
pub fn jwk_kid(jwk: &Value) -> Option<&str> {
    jwk.get("kid").and_then(Value::as_str)
}

/// Checks one JWK of `jwks` and builds its key.
pub fn load_jwk(jwk: &Value) -> Result<Key, String> {
    let object = jwk.as_object().ok_or("a JWK must be an object")?;
    if let Some(member) = SECRET_MEMBERS.iter().find(|m| object.contains_key(**m)) {
        return Err(
            if object.get("kty").and_then(Value::as_str) == Some("oct") {
                "symmetric JWKs (kty `oct`) are not accepted: give the secret as \
             keys = [{ alg = \"HS256\", secret = \"${ENV_VAR}\" }]"
                    .to_string()
            } else {
                format!("the JWK carries private key material (`{member}`): give the public JWK")
            },
        );
    }
    let jwk = Jwk::deserialize(Value::Object(object.clone())).map_err(|e| e.to_string())?;
    if let Some(use_) = jwk.use_.as_deref().filter(|u| *u != "sig") {
        return Err(format!(
            "`use` is `{use_}`: only signature keys (`sig`) verify tokens"
        ));
    }
    let implied = match jwk.kty.as_str() {
        "RSA" => Alg::Rs256,
        "EC" => Alg::Es256,
        other => return Err(format!("kty `{other}` is not supported (RSA, EC)")),
    };
    if let Some(alg) = jwk.alg.as_deref() {
        if Alg::parse(alg) != Some(implied) {
            return Err(match Alg::parse(alg) {
                Some(_) => format!("alg `{alg}` does not fit kty `{}`", jwk.kty),
                None => unsupported(alg),
            });
        }
    }
    match implied {
        Alg::Rs256 => {
            let n = member(&jwk.n, "n")?;
            let e = member(&jwk.e, "e")?;
            let key = RsaPublicKey::new(BigUint::from_bytes_be(&n), BigUint::from_bytes_be(&e))
                .map_err(|e| format!("not a usable RSA public key ({e})"))?;
            Key::rsa(jwk.kid, key)
        }
        _ => {
            match jwk.crv.as_deref() {
                Some("P-256") => {}
                Some(crv) => return Err(format!("crv `{crv}` is not supported (P-256)")),
                None => return Err("missing member `crv`".into()),
            }
            let (x, y) = (member(&jwk.x, "x")?, member(&jwk.y, "y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err("`x` and `y` of a P-256 key are 32 bytes each".into());
            }
            let point = p256::EncodedPoint::from_affine_coordinates(
                p256::FieldBytes::from_slice(&x),
                p256::FieldBytes::from_slice(&y),
                false,
            );
            let key = p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                .map_err(|_| "`x`, `y` is not a point on P-256")?;
            Ok(Key::es256(jwk.kid, key))
        }
    }
}

/// A base64url JWK member, decoded.
fn member(value: &Option<String>, name: &str) -> Result<Vec<u8>, String> {
    let text = value
        .as_deref()
        .ok_or_else(|| format!("missing member `{name}`"))?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|e| format!("member `{name}` is not base64url ({e})"))
}

/// The `keys` of a `jwks` value: a JWK set as a table, or as JSON text.
pub fn jwk_set(jwks: Value) -> Result<Vec<Value>, String> {
    let set = match jwks {
        Value::String(text) => serde_json::from_str::<Value>(&text)
            .map_err(|e| format!("jwks: the text is not JSON ({e})"))?,
        other => other,
    };
    let Value::Object(mut set) = set else {
        return Err("jwks: give a JWK set, `{ keys = [...] }` or its JSON text".into());
    };
    if let Some(other) = set.keys().find(|k| *k != "keys") {
        return Err(format!(
            "jwks: unknown member `{other}` (a JWK set has `keys`)"
        ));
    }
    match set.remove("keys") {
        Some(Value::Array(keys)) => Ok(keys),
        _ => Err("jwks: `keys` must be a list of JWKs".into()),
    }
}
