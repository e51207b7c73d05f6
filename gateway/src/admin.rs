//! The admin API, on its own listener (default `127.0.0.1:9901`).
//!
//! | method | path        | answer                                                  |
//! |--------|-------------|---------------------------------------------------------|
//! | GET    | /healthz    | 200 while the process runs (never needs the token; `x-weir-pid` names the process) |
//! | GET    | /readyz     | 200 once a config is serving, 503 while shutting down    |
//! | GET    | /metrics    | Prometheus text                                         |
//! | GET    | /config     | the effective config as JSON, secrets redacted          |
//! | GET    | /routes     | routes in file order with their action                  |
//! | GET    | /upstreams  | upstreams and targets with health                       |
//! | POST   | /reload     | reload the config file; 200 with the generation, or 422 with the reason |
//!
//! With `admin.token` set, every path but `/healthz` requires
//! `Authorization: Bearer <token>`, compared in constant time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::gateway::Gateway;
use crate::snapshot::Action;

pub struct AdminApi {
    pub gateway: Arc<Gateway>,
    pub shutting_down: Arc<AtomicBool>,
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn json_reply(status: StatusCode, v: serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

fn error_reply(status: StatusCode, code: &str, message: &str) -> Response<Vec<u8>> {
    json_reply(status, json!({ "error": code, "message": message }))
}

/// Constant-time bearer-token check.
fn authorized(expected: Option<&str>, header: Option<&[u8]>) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    let Some(given) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
        return false;
    };
    // Lengths differ → not equal; `ct_eq` on equal lengths does not leak where they differ.
    given.len() == expected.len() && bool::from(given.ct_eq(expected.as_bytes()))
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        if path == "/healthz" {
            let mut r = reply(StatusCode::OK, "text/plain", b"ok\n".to_vec());
            // Lets supervisors and tests tell which process answered on a port.
            r.headers_mut()
                .insert("x-weir-pid", http::HeaderValue::from(std::process::id()));
            return r;
        }
        let snap = self.gateway.snapshot();
        let auth = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if !authorized(snap.config.admin.token.as_deref(), auth) {
            let mut r = error_reply(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this admin endpoint needs `Authorization: Bearer <admin.token>`",
            );
            r.headers_mut().insert(
                "www-authenticate",
                http::HeaderValue::from_static("Bearer realm=\"weir-admin\""),
            );
            return r;
        }
        match (&method, path.as_str()) {
            (&Method::GET, "/readyz") => {
                if self.shutting_down.load(Ordering::Relaxed) {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        b"shutting down\n".to_vec(),
                    )
                } else {
                    reply(StatusCode::OK, "text/plain", b"ready\n".to_vec())
                }
            }
            (&Method::GET, "/metrics") => reply(StatusCode::OK, "text/plain; version=0.0.4", {
                let mut text = self.gateway.metrics.render(&snap.target_health());
                self.gateway.plugins.metrics.render(&mut text);
                self.gateway.plugins.shared.render(&mut text);
                text.into_bytes()
            }),
            (&Method::GET, "/config") => json_reply(
                StatusCode::OK,
                json!({
                    "generation": snap.generation,
                    "file": self.gateway.config_path.display().to_string(),
                    "last_reload": self.gateway.last_reload(),
                    "config": crate::config::redacted_json(&snap.config),
                }),
            ),
            (&Method::GET, "/routes") => {
                let routes: Vec<_> = snap
                    .config
                    .routes
                    .iter()
                    .zip(&snap.routes)
                    .map(|(rc, r)| {
                        let action = match &r.action {
                            Action::Proxy(u) => json!({ "upstream": &*u.name }),
                            Action::Respond { status, .. } => json!({ "respond": status }),
                        };
                        json!({
                            "name": rc.name, "hosts": rc.hosts, "paths": rc.paths,
                            "methods": rc.methods, "priority": rc.priority, "action": action,
                        })
                    })
                    .collect();
                json_reply(
                    StatusCode::OK,
                    json!({ "generation": snap.generation, "routes": routes }),
                )
            }
            (&Method::GET, "/upstreams") => {
                let ups: Vec<_> = snap
                    .upstreams
                    .iter()
                    .map(|u| {
                        let targets: Vec<_> = u
                            .targets
                            .iter()
                            .map(|t| {
                                json!({
                                    "addr": &*t.label,
                                    "weight": t.weight,
                                    "healthy": t.is_healthy(),
                                    "active_check_passing": t.passes_active_checks(),
                                    "ejected": t.is_ejected(),
                                    "inflight": t.inflight(),
                                })
                            })
                            .collect();
                        json!({ "name": &*u.name, "lb": u.config.lb, "targets": targets })
                    })
                    .collect();
                json_reply(StatusCode::OK, json!({ "upstreams": ups }))
            }
            (&Method::POST, "/reload") => {
                let gw = self.gateway.clone();
                let result = tokio::task::spawn_blocking(move || gw.reload("admin"))
                    .await
                    .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
                match result {
                    Ok(generation) => json_reply(
                        StatusCode::OK,
                        json!({ "ok": true, "generation": generation }),
                    ),
                    Err(reason) => json_reply(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({
                            "ok": false,
                            "error": "config_rejected",
                            "message": reason,
                            "generation": self.gateway.snapshot().generation,
                        }),
                    ),
                }
            }
            (_, "/readyz" | "/metrics" | "/config" | "/routes" | "/upstreams" | "/reload") => {
                error_reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "wrong method for this endpoint",
                )
            }
            _ => error_reply(StatusCode::NOT_FOUND, "not_found", "unknown admin endpoint"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::authorized;

    #[test]
    fn token_check() {
        assert!(authorized(None, None));
        assert!(!authorized(Some("s3cret"), None));
        assert!(!authorized(Some("s3cret"), Some(b"Bearer s3cre")));
        assert!(!authorized(Some("s3cret"), Some(b"s3cret")));
        assert!(authorized(Some("s3cret"), Some(b"Bearer s3cret")));
    }
}
