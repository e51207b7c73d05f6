//! `cors`: Weir policy: CORS (preflight answered locally, origin allow-list with wildcards, credentials, max-age, exposed headers) (in progress).
