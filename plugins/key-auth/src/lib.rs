//! `key-auth`: Weir policy: API-key authentication of consumers (header or query parameter, plain or SHA-256-hashed keys) (in progress).
