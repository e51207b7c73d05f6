//! A token in JWS compact form: split and decoded, then (after its signature checked
//! out) its claims. Everything here reads client bytes: every failure is a [`Failure`],
//! never a panic.

use crate::keys::Alg;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Why a request is not authenticated; becomes a 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Which RFC 6750 challenge it gets.
    pub kind: Kind,
    /// What went wrong, for the client: printable ASCII without `"` or `\` (it goes in
    /// the `error_description` of `www-authenticate` as it is).
    pub message: String,
}

/// The RFC 6750 §3.1 error code of a [`Failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No token at all: a challenge without an error code.
    Missing,
    /// `invalid_request`: the request is malformed (a token sent twice).
    InvalidRequest,
    /// `invalid_token`: the token is malformed, badly signed, expired, or not for us.
    InvalidToken,
}

impl Failure {
    /// An `invalid_token` failure.
    pub fn token(message: impl Into<String>) -> Failure {
        Failure {
            kind: Kind::InvalidToken,
            message: message.into(),
        }
    }
}

/// A value from the token or the request, fit to quote in a message: at most 40
/// characters, anything but printable ASCII (and `"`, `\`) shown as `?`.
pub fn shown(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(40)
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '?',
        })
        .collect();
    if text.chars().nth(40).is_some() {
        out.push_str("...");
    }
    out
}

/// The JOSE header members the plugin reads. `jwk`, `jku`, `x5u`, `x5c` are ignored on
/// purpose: keys come from the config only.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

/// A token split and decoded; its signature is not checked yet.
#[derive(Debug)]
pub struct Jws<'a> {
    /// `header.payload` as sent: what the signature covers.
    pub signing_input: &'a str,
    /// The header's `alg`, one the plugin supports.
    pub alg: Alg,
    /// The header's `kid`.
    pub kid: Option<String>,
    payload: Vec<u8>,
    /// The decoded signature.
    pub signature: Vec<u8>,
}

impl<'a> Jws<'a> {
    /// Splits and decodes a compact JWS (`header.payload.signature`, unpadded base64url).
    pub fn parse(token: &'a str) -> Result<Jws<'a>, Failure> {
        if token.is_empty() {
            return Err(Failure::token("the token is empty"));
        }
        if !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(Failure::token(
                "the token has characters other than base64url and `.`",
            ));
        }
        let split = token.rsplit_once('.').and_then(|(input, signature)| {
            let (header, payload) = input.split_once('.')?;
            (!payload.contains('.')).then_some((input, header, payload, signature))
        });
        let Some((signing_input, header, payload, signature)) = split else {
            return Err(Failure::token(format!(
                "the token has {} parts; a signed JWT has 3 (encrypted JWTs are not supported)",
                token.split('.').count()
            )));
        };
        let header: Header = serde_json::from_slice(&decode(header, "header")?)
            .map_err(|_| Failure::token("the token header is not a JSON object with an `alg`"))?;
        if header.crit.is_some() {
            return Err(Failure::token(
                "the token header has `crit` extensions; none is supported",
            ));
        }
        let alg = Alg::parse(&header.alg).ok_or_else(|| {
            Failure::token(if header.alg.eq_ignore_ascii_case("none") {
                "unsigned tokens (alg none) are not accepted".to_string()
            } else {
                format!("alg `{}` is not accepted", shown(&header.alg))
            })
        })?;
        Ok(Jws {
            signing_input,
            alg,
            kid: header.kid,
            payload: decode(payload, "payload")?,
            signature: decode(signature, "signature")?,
        })
    }

    /// The payload as a claims object. Call it only once the signature verified.
    pub fn claims(&self) -> Result<Map<String, Value>, Failure> {
        serde_json::from_slice(&self.payload)
            .map_err(|_| Failure::token("the token payload is not a JSON object"))
    }
}

fn decode(part: &str, what: &str) -> Result<Vec<u8>, Failure> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Failure::token(format!("the token {what} is not unpadded base64url")))
}

/// The claim checks of the config: times, issuer, audience.
#[derive(Debug, Clone)]
pub struct ClaimRules {
    /// Accepted issuers; empty: `iss` is not checked.
    pub issuers: Vec<String>,
    /// Accepted audiences; empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway: u64,
    /// Whether a token without `exp` is refused.
    pub require_exp: bool,
}

impl ClaimRules {
    /// Checks the claims of a token whose signature verified, at `now` (seconds since
    /// the Unix epoch).
    pub fn check(&self, claims: &Map<String, Value>, now: f64) -> Result<(), Failure> {
        let leeway = self.leeway as f64;
        let exp = numeric_date(claims, "exp")?;
        let nbf = numeric_date(claims, "nbf")?;
        numeric_date(claims, "iat")?;
        match exp {
            None if self.require_exp => {
                return Err(Failure::token("the token has no `exp` claim"));
            }
            Some(exp) if now >= exp + leeway => {
                return Err(Failure::token("the token has expired"));
            }
            _ => {}
        }
        if nbf.is_some_and(|nbf| now + leeway < nbf) {
            return Err(Failure::token("the token is not valid yet (`nbf`)"));
        }
        if !self.issuers.is_empty() {
            match claims.get("iss") {
                None => return Err(Failure::token("the token has no `iss` claim")),
                Some(Value::String(iss)) if self.issuers.contains(iss) => {}
                Some(Value::String(iss)) => {
                    return Err(Failure::token(format!(
                        "issuer `{}` is not accepted",
                        shown(iss)
                    )))
                }
                Some(_) => return Err(Failure::token("the `iss` claim is not a string")),
            }
        }
        if !self.audiences.is_empty() {
            let accepted = |v: &Value| {
                v.as_str()
                    .is_some_and(|a| self.audiences.iter().any(|x| x == a))
            };
            let ok = match claims.get("aud") {
                None => return Err(Failure::token("the token has no `aud` claim")),
                Some(aud @ Value::String(_)) => accepted(aud),
                Some(Value::Array(list)) if list.iter().all(Value::is_string) => {
                    list.iter().any(accepted)
                }
                Some(_) => {
                    return Err(Failure::token(
                        "the `aud` claim is not a string or a list of strings",
                    ))
                }
            };
            if !ok {
                return Err(Failure::token("the token is not for this audience (`aud`)"));
            }
        }
        Ok(())
    }
}

/// A NumericDate claim (RFC 7519 §2): absent, or a JSON number (fractions allowed).
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, Failure> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|t| t.is_finite())
            .map(Some)
            .ok_or_else(|| Failure::token(format!("the `{name}` claim is not a usable number"))),
        Some(_) => Err(Failure::token(format!(
            "the `{name}` claim is not a number"
        ))),
    }
}
