//! The operator API on its own listener (`[admin] listen`): health, usage, reload. With
//! `admin.token` set, every endpoint but `/healthz` needs `Authorization: Bearer <token>`;
//! without one, `vivgate check` only accepts a loopback address. Errors use the envelope.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};

use crate::clock::Month;
use crate::config::Group;
use crate::error::envelope;
use crate::gateway::{Gateway, ReloadError};
use crate::keys::hash_key;
use crate::usage::UsageStore;

pub struct AdminApp<S: UsageStore> {
    gw: Arc<Gateway<S>>,
}

impl<S: UsageStore> AdminApp<S> {
    pub fn new(gw: Arc<Gateway<S>>) -> Self {
        AdminApp { gw }
    }
}

fn reply(status: StatusCode, body: Vec<u8>, content_type: &str) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}

fn ok(data: Value) -> Response<Vec<u8>> {
    let body = json!({"success": true, "data": data, "error": null}).to_string();
    reply(StatusCode::OK, body.into_bytes(), "application/json")
}

fn fail(status: StatusCode, message: &str) -> Response<Vec<u8>> {
    reply(status, envelope(message), "application/json")
}

/// `YYYY-MM`
fn parse_month(s: &str) -> Option<Month> {
    let (y, m) = s.split_once('-')?;
    if y.len() != 4 || m.len() != 2 {
        return None;
    }
    let (y, m): (i32, u32) = (y.parse().ok()?, m.parse().ok()?);
    (1..=12).contains(&m).then(|| Month::from_ym(y, m))
}

impl<S: UsageStore> AdminApp<S> {
    fn group_usage(&self, g: &Group, month: Month) -> Value {
        let u = self.gw.store().usage(&g.id, month);
        json!({
            "id": &*g.id,
            "tier": &*g.tier.name,
            "status": g.status,
            "calls": u.calls,
            "calls_limit": g.tier.api_calls,
            "bytes": u.bytes,
            "bytes_limit": g.tier.cdn_bytes,
            "calls_overage": u.calls_overage,
            "bytes_overage": u.bytes_overage,
        })
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = self.gw.snapshot().admin_token else {
            return true;
        };
        let mut values = session
            .req_header()
            .headers
            .get_all(http::header::AUTHORIZATION)
            .iter();
        let (Some(v), None) = (values.next(), values.next()) else {
            return false;
        };
        let v = v.as_bytes();
        v.len() > 7
            && v[..7].eq_ignore_ascii_case(b"bearer ")
            && hash_key(v[7..].trim_ascii()) == token
    }

    async fn route(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        let query = req.uri.query().unwrap_or("").to_string();
        let caller = session
            .client_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        if path == "/healthz" {
            return if self.gw.is_stopping() {
                fail(StatusCode::SERVICE_UNAVAILABLE, "Stopping")
            } else {
                ok(json!({"status": "serving"}))
            };
        }
        if !self.authorized(session) {
            return fail(StatusCode::UNAUTHORIZED, "Missing or invalid admin token");
        }
        let now = Month::containing(self.gw.clock().now_ms());
        match (method, path.as_str()) {
            (Method::GET, "/usage") => {
                let month =
                    match form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "month") {
                        None => now,
                        Some((_, v)) => match parse_month(&v) {
                            Some(m) => m,
                            None => return fail(StatusCode::BAD_REQUEST, "month must be YYYY-MM"),
                        },
                    };
                let snap = self.gw.snapshot();
                let groups: Vec<Value> = snap
                    .groups
                    .iter()
                    .map(|g| self.group_usage(g, month))
                    .collect();
                ok(json!({"month": month.to_string(), "groups": groups}))
            }
            (Method::GET, p) if p.starts_with("/usage/") => {
                let snap = self.gw.snapshot();
                match snap.group(&p["/usage/".len()..]) {
                    Some(g) => {
                        ok(json!({"month": now.to_string(), "group": self.group_usage(g, now)}))
                    }
                    None => fail(StatusCode::NOT_FOUND, "Unknown group"),
                }
            }
            (Method::POST, "/reload") => match self.gw.reload() {
                Ok(()) => {
                    tracing::info!(target: "vivgate::audit", endpoint = "POST /reload", %caller, "configuration reloaded");
                    ok(json!({"reloaded": true}))
                }
                Err(e @ (ReloadError::Invalid(_) | ReloadError::NeedsRestart(_))) => {
                    tracing::warn!(target: "vivgate::audit", endpoint = "POST /reload", %caller, "reload refused: {e}");
                    fail(StatusCode::BAD_REQUEST, &format!("Reload refused: {e}"))
                }
                Err(e @ ReloadError::NoSource) => {
                    fail(StatusCode::CONFLICT, &format!("Reload refused: {e}"))
                }
            },
            (_, "/usage" | "/reload") => fail(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed"),
            _ => fail(StatusCode::NOT_FOUND, "Not found"),
        }
    }
}

#[async_trait]
impl<S: UsageStore> ServeHttp for AdminApp<S> {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let id = match session.req_header().headers.get("x-request-id") {
            Some(v) if crate::pipeline::valid_request_id(v.as_bytes()) => v.clone(),
            _ => self.gw.next_request_id(),
        };
        // admin requests carry no meaningful body; read and drop what there is (bounded)
        let mut seen = 0usize;
        let mut too_large = false;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            seen += chunk.len();
            if seen > 65_536 {
                too_large = true;
                session.set_keepalive(None);
                break;
            }
        }
        let mut resp = if too_large {
            fail(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large")
        } else {
            self.route(session).await
        };
        resp.headers_mut().insert("x-request-id", id);
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_parse_strictly() {
        assert_eq!(parse_month("2026-11"), Some(Month::from_ym(2026, 11)));
        assert_eq!(parse_month("2026-13"), None);
        assert_eq!(parse_month("2026-1"), None);
        assert_eq!(parse_month("26-11"), None);
        assert_eq!(parse_month("x"), None);
    }
}
