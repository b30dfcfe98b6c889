//! The operator API on its own listener (`[admin] listen`): health, usage, reload. With
//! `admin.token` set, every endpoint but `/healthz` needs `Authorization: Bearer <token>`;
//! without one, `vivgate check` only accepts a loopback address. Errors use the envelope.

use std::sync::Arc;

use async_trait::async_trait;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};

use crate::clock::Month;
use crate::config::Group;
use crate::error::GatewayError;
use crate::gateway::{Gateway, ReloadError};
use crate::keys::hash_key;
use crate::overrides::{ChangeError, Changed, OverrideChange};
use crate::respond::Reply;
use crate::usage::UsageStore;

mod audit;
mod changes;
mod console;
mod guard;
mod listing;
pub mod traffic;

use audit::{AuditLog, Entry};

pub struct AdminApp {
    gw: Arc<Gateway>,
    audit: AuditLog,
    traffic: Arc<traffic::Traffic>,
}

/// Wall-clock milliseconds (the traffic view is about real time, whatever clock months use).
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl AdminApp {
    pub fn new(gw: Arc<Gateway>) -> Self {
        AdminApp {
            gw,
            audit: AuditLog::default(),
            traffic: Default::default(),
        }
    }

    /// Samples the gateway's counters every [`traffic::INTERVAL`] until `stop` turns true.
    pub fn sample_traffic(
        &self,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (gw, traffic) = (self.gw.clone(), self.traffic.clone());
        async move {
            let mut tick = tokio::time::interval(traffic::INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => traffic.sample(gw.metrics(), wall_ms()),
                    changed = stop.changed() => {
                        if changed.is_err() || *stop.borrow() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Logs a change made through this listener and keeps it for `GET /audit`.
    fn audit(&self, caller: &str, endpoint: impl Into<String>, change: String, ok: bool) {
        self.audit.record(Entry {
            at_ms: self.gw.clock().now_ms(),
            caller: caller.to_string(),
            endpoint: endpoint.into(),
            change,
            ok,
        });
    }
}

/// What an admin handler answers: one of the gateway's replies, or a refusal in the envelope.
type Answer = Result<Reply, GatewayError>;

fn ok(data: Value) -> Answer {
    Ok(Reply::success(&data))
}

/// The refusal for an override change that is not in force; the cause goes to the log.
fn change_failed(e: ChangeError) -> GatewayError {
    match e {
        ChangeError::NotSaved { shared, reason } => {
            tracing::error!("admin: override change not saved: {reason}");
            GatewayError::ChangeNotSaved { shared }
        }
        ChangeError::Unknown { reason } => {
            tracing::error!("admin: override change sent to Redis, no answer: {reason}");
            GatewayError::ChangeOutcomeUnknown
        }
    }
}

/// `data` with the fleet's overrides version after a change, when there is one.
fn with_version(mut data: Value, changed: &Changed) -> Value {
    if let (Some(v), Some(map)) = (changed.version, data.as_object_mut()) {
        map.insert("version".into(), json!(v));
    }
    data
}

/// A 500 whose cause goes to the log, not to the caller.
fn internal(cause: &str) -> GatewayError {
    tracing::error!("admin: {cause}");
    GatewayError::Internal
}

/// The refusal for a fleet tenants change that was not made (`not_found`: what a change that
/// is so already, or a group no longer in the table, answers); Redis's part goes to the log.
fn fleet_change_failed(e: crate::fleet::ChangeError, not_found: &'static str) -> GatewayError {
    use crate::fleet::ChangeError;
    match e {
        ChangeError::UnknownGroup(_) => GatewayError::NotFound("Unknown group"),
        ChangeError::AlreadySo(_) => GatewayError::NotFound(not_found),
        ChangeError::NotSaved(why) => {
            tracing::error!("admin: fleet tenants change not saved: {why}");
            GatewayError::ChangeNotSaved { shared: true }
        }
        ChangeError::Unknown(why) => {
            tracing::error!("admin: fleet tenants change sent to Redis, no answer: {why}");
            GatewayError::ChangeOutcomeUnknown
        }
    }
}

/// `month=YYYY-MM` (default: `now`) and `by=day` of a usage query.
fn month_and_by(query: &str, now: Month) -> Result<(Month, bool), GatewayError> {
    let (mut month, mut by_day) = (now, false);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match (&*k, &*v) {
            ("month", v) => {
                month = parse_month(v)
                    .ok_or_else(|| GatewayError::Invalid("month must be YYYY-MM".into()))?
            }
            ("by", "day") => by_day = true,
            ("by", _) => return Err(GatewayError::Invalid("by must be day".into())),
            _ => return Err(GatewayError::Invalid(format!("unknown parameter {k:?}"))),
        }
    }
    Ok((month, by_day))
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

impl AdminApp {
    /// One group's usage; a past month is read from the store's file, and a read error is an
    /// error (billing must never see zeros that are not).
    fn group_usage(&self, g: &Group, month: Month) -> Result<Value, String> {
        let u = self.gw.store().usage_checked(&g.id, month)?;
        let o = self.gw.overrides();
        Ok(listing::row_json(
            g,
            o.status_of(g),
            o.status.contains_key(&*g.id),
            &u,
        ))
    }

    /// A group's (or the gateway's) calls and bytes per day: `[{"day", "calls", "bytes"}]`;
    /// `null` for a month whose days are no longer kept (before the previous one).
    fn days_of(&self, group: &str, month: Month, now: Month) -> Result<Value, String> {
        if month < now.prev() {
            return Ok(Value::Null);
        }
        let days = self.gw.store().days(group, month)?;
        Ok(days
            .iter()
            .enumerate()
            .map(|(i, [calls, bytes])| json!({"day": i + 1, "calls": calls, "bytes": bytes}))
            .collect())
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

    async fn route(&self, session: &mut ServerSession, body: &[u8]) -> Answer {
        let req = session.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        let query = req.uri.query().unwrap_or("").to_string();
        let caller = session
            .client_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        if path == "/healthz" {
            return if self.gw.is_stopping() {
                Err(GatewayError::Stopping)
            } else {
                ok(json!({"status": "serving"}))
            };
        }
        let local = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        guard::check(
            &method,
            &req.uri,
            &req.headers,
            local,
            &self.gw.snapshot().admin_hosts,
        )?;
        // the console's files hold no data: the page asks for the token
        if matches!(method, Method::GET | Method::HEAD) {
            if let Some(file) = console::file(&path) {
                return Ok(file);
            }
        }
        if !self.authorized(session) {
            return Err(GatewayError::AdminUnauthorized);
        }
        let now = Month::containing(self.gw.clock().now_ms());
        match (method, path.as_str()) {
            (Method::GET, "/usage") => {
                let listing = listing::Listing::parse(&query, now)?;
                let snap = self.gw.snapshot();
                let overrides = self.gw.overrides();
                tokio::task::block_in_place(|| {
                    let tiers = snap.tiers.keys().map(String::as_str).collect();
                    listing::list(&listing, tiers, &snap.groups, &overrides, self.gw.store())
                })
                .map(|data| Reply::success(&data))
                .map_err(|e| internal(&e))
            }
            (Method::GET, p) if p.starts_with("/usage/") => {
                let (month, by_day) = month_and_by(&query, now)?;
                let snap = self.gw.snapshot();
                let Some(g) = snap.group(&p["/usage/".len()..]) else {
                    return Err(GatewayError::NotFound("Unknown group"));
                };
                tokio::task::block_in_place(|| {
                    let mut data =
                        json!({"month": month.to_string(), "group": self.group_usage(g, month)?});
                    if by_day {
                        data["days"] = self.days_of(&g.id, month, now)?;
                    }
                    Ok::<_, String>(data)
                })
                .map(|d| Reply::success(&d))
                .map_err(|e| internal(&e))
            }
            (Method::GET, "/days") => {
                let (month, _) = month_and_by(&query, now)?;
                tokio::task::block_in_place(|| {
                    self.days_of(crate::usage::days::GATEWAY, month, now)
                })
                .map(|days| Reply::success(&json!({"month": month.to_string(), "days": days})))
                .map_err(|e| internal(&e))
            }
            (Method::POST, "/reload") => match self.gw.clone().reload_in_background().await {
                Ok(report) => {
                    self.audit(
                        &caller,
                        "POST /reload",
                        format!(
                            "configuration reloaded: groups {:?}, keys {:?}, routes {:?}, TLS certificates {:?} ({} new)",
                            report.groups,
                            report.keys,
                            report.routes,
                            report.certificates,
                            report.certificates_new
                        ),
                        true,
                    );
                    ok(json!({"reloaded": true, "changes": report}))
                }
                Err(e @ (ReloadError::Invalid(_) | ReloadError::NeedsRestart(_))) => {
                    self.audit(
                        &caller,
                        "POST /reload",
                        format!("reload refused: {e}"),
                        false,
                    );
                    Err(GatewayError::Invalid(format!("Reload refused: {e}")))
                }
                Err(e @ ReloadError::NoSource) => Err(GatewayError::ReloadWithoutFiles(format!(
                    "Reload refused: {e}"
                ))),
                Err(e @ ReloadError::CouldNotRun(_)) => Err(internal(&e.to_string())),
            },
            (Method::GET, "/metrics") => {
                let snap = self.gw.snapshot();
                let metrics = self.gw.metrics();
                tokio::task::block_in_place(|| {
                    // per tier: calls, bytes, and the groups at 80 % / 100 % of each quota
                    #[derive(Default)]
                    struct Tier {
                        calls: u64,
                        bytes: u64,
                        at: [[i64; 2]; 2],
                    }
                    let mut per_tier: std::collections::BTreeMap<&str, Tier> = Default::default();
                    for t in snap.tiers.values() {
                        per_tier.insert(&t.name, Tier::default());
                    }
                    let share_at = |used: u64, limit: u64| {
                        let at = |num: u64, den: u64| {
                            limit > 0
                                && (used as u128) * den as u128 >= (limit as u128) * num as u128
                        };
                        [i64::from(at(4, 5)), i64::from(at(1, 1))]
                    };
                    for g in &snap.groups {
                        let u = self.gw.store().usage(&g.id, now);
                        let e = per_tier.entry(&g.tier.name).or_default();
                        e.calls += u.calls;
                        e.bytes += u.bytes;
                        for (meter, (used, limit)) in
                            [(u.calls, g.tier.api_calls), (u.bytes, g.tier.cdn_bytes)]
                                .into_iter()
                                .enumerate()
                        {
                            let [eighty, full] = share_at(used, limit);
                            e.at[meter][0] += eighty;
                            e.at[meter][1] += full;
                        }
                    }
                    for (tier, t) in per_tier {
                        metrics
                            .usage_calls
                            .with_label_values(&[tier])
                            .set(t.calls as i64);
                        metrics
                            .usage_bytes
                            .with_label_values(&[tier])
                            .set(t.bytes as i64);
                        for (meter, name) in ["calls", "bytes"].into_iter().enumerate() {
                            for (i, threshold) in ["0.8", "1"].into_iter().enumerate() {
                                metrics
                                    .groups_at_quota
                                    .with_label_values(&[tier, name, threshold])
                                    .set(t.at[meter][i]);
                            }
                        }
                    }
                    metrics
                        .connections_open
                        .set(self.gw.connections_open() as i64);
                    metrics
                        .connections_max
                        .set(snap.limits.max_connections as i64);
                    metrics.failed_auth_blocked.set(
                        self.gw
                            .failed_auth()
                            .blocked_count(std::time::Instant::now())
                            as i64,
                    );
                });
                let text = metrics.render(self.gw.clock().now_ms());
                Ok(Reply::other(
                    200,
                    "text/plain; version=0.0.4",
                    text.into_bytes(),
                ))
            }
            (Method::GET, "/traffic") => {
                let (samples, current) = self.traffic.view(self.gw.metrics(), wall_ms());
                ok(json!({
                    "interval_seconds": traffic::INTERVAL.as_secs(),
                    "kept": traffic::KEPT,
                    "samples": samples,
                    "current": current,
                }))
            }
            (Method::GET, "/audit") => ok(json!({
                "instance": "this instance",
                "kept": audit::KEPT,
                "changes": self.audit.newest_first(),
            })),
            (Method::GET, "/overrides") => {
                let o = self.gw.overrides();
                let revoked: Vec<Value> = o
                    .revoked
                    .iter()
                    .map(|(k, g)| json!({"key": k, "group": g}))
                    .collect();
                let mut data = json!({"status": &o.status, "revoked_keys": revoked});
                if let Some((version, from_copy)) = self.gw.store().overrides_state() {
                    // the fleet's table (Redis), as this instance holds it
                    data["version"] = json!(version);
                    data["from_copy"] = json!(from_copy);
                }
                ok(data)
            }
            (Method::DELETE, p) if p.starts_with("/overrides/") => {
                let raw = &p["/overrides/".len()..];
                // a key hash may be given bare, as in DELETE /groups/<id>/keys/<hash>
                let id = if raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
                    format!("sha256:{raw}")
                } else {
                    raw.to_string()
                };
                // the audit line names a key by its fingerprint only
                let shown = match crate::keys::parse_key_hash(&id) {
                    Ok(h) => format!("key {}", crate::keys::fingerprint(&h)),
                    Err(_) => format!("group {id}"),
                };
                match self.change_overrides(&OverrideChange::Remove(id.clone())) {
                    Ok(c) if c.found => {
                        self.audit(
                            &caller,
                            "DELETE /overrides",
                            format!("override removed: {shown}"),
                            true,
                        );
                        ok(with_version(json!({"removed": id}), &c))
                    }
                    Ok(_) => Err(GatewayError::NotFound("No such override")),
                    Err(e) => Err(change_failed(e)),
                }
            }
            (m, p) if p.starts_with("/groups/") => {
                self.group_change(m, &p["/groups/".len()..], body, &caller)
            }
            (_, "/usage") | (_, "/overrides") | (_, "/audit") | (_, "/days") | (_, "/traffic") => {
                Err(GatewayError::MethodNotAllowed("GET".into()))
            }
            (_, "/reload") => Err(GatewayError::MethodNotAllowed("POST".into())),
            _ => Err(GatewayError::NoRoute),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let id = match session.req_header().headers.get("x-request-id") {
            Some(v) if crate::pipeline::valid_request_id(v.as_bytes()) => v.clone(),
            _ => self.gw.next_request_id(),
        };
        // the body (bounded): only PUT /groups/<id>/status uses one
        let mut body = Vec::new();
        let mut too_large = false;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            if body.len() + chunk.len() > 65_536 {
                too_large = true;
                session.set_keepalive(None);
                break;
            }
            body.extend_from_slice(&chunk);
        }
        let answer = if too_large {
            Err(GatewayError::BodyTooLarge)
        } else {
            self.route(session, &body).await
        };
        let mut reply = answer.unwrap_or_else(|e| Reply::error(&e, || 0));
        console::strict_headers(&mut reply);
        reply
            .headers
            .push((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        reply
            .headers
            .push((HeaderName::from_static("x-request-id"), id));
        reply.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_change_not_made_says_why() {
        use crate::fleet::ChangeError::*;
        let answer = |e, not_found| {
            let g = fleet_change_failed(e, not_found);
            (g.status(), g.message().to_string())
        };
        // another instance revoked the key first, or a push removed the group: 404, not 503
        assert_eq!(
            answer(AlreadySo("no key".into()), "This group has no such key"),
            (404, "This group has no such key".to_string())
        );
        assert_eq!(
            answer(UnknownGroup("g".into()), "x"),
            (404, "Unknown group".to_string())
        );
        assert_eq!(answer(NotSaved("down".into()), "x").0, 503);
        let (status, message) = answer(Unknown("timeout".into()), "x");
        assert_eq!(status, 503);
        assert!(message.contains("may or may not"), "{message}");
    }

    #[test]
    fn months_parse_strictly() {
        assert_eq!(parse_month("2026-11"), Some(Month::from_ym(2026, 11)));
        assert_eq!(parse_month("2026-13"), None);
        assert_eq!(parse_month("2026-1"), None);
        assert_eq!(parse_month("26-11"), None);
        assert_eq!(parse_month("x"), None);
    }
}
