//! `jwt-auth`: Weir policy: JWT authentication (HS256, RS256, ES256; exp/nbf/iss/aud; PEM or JWKS keys) (in progress).
