//! The only file that knows pingora's phases. `VivGate` runs the checks of [`crate::pipeline`]
//! in `request_filter`, answers failures with the envelope, and forwards the rest.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use crate::clock::{format_utc, Month};
use crate::config::{Group, Route, Snapshot};
use crate::error::{envelope, GatewayError};
use crate::gateway::Gateway;
use crate::pipeline;
use crate::usage::{Meter, Take, UsageStore};
use vivgate_parse::path::canonical_path;

const X_REQUEST_ID: &str = "x-request-id";

/// How long a rejected request's unread body may take to drain before the connection is closed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The pingora proxy application.
pub struct VivGate<S: UsageStore> {
    gw: Arc<Gateway<S>>,
}

impl<S: UsageStore> VivGate<S> {
    pub fn new(gw: Arc<Gateway<S>>) -> Self {
        VivGate { gw }
    }
}

/// What the head checks decided for a request that passed them.
enum Checked {
    Forward,
    OwnUsage(Group),
}

/// Per-request state.
pub struct Ctx {
    request_id: HeaderValue,
    snap: Option<Arc<Snapshot>>,
    group: Option<Group>,
    route: Option<Arc<Route>>,
    /// When the quota check ran (or, for a rejection before it, when the route matched).
    now_ms: i64,
    month: Option<Month>,
    take: Option<Take>,
    /// Bandwidth used at the quota check.
    bytes_used: Option<u64>,
    /// The meter whose quota refused the request.
    quota_refused: Option<Meter>,
    /// Connect attempts that failed and were retried on another server.
    connect_retries: u8,
    connected: bool,
    upstream_responded: bool,
    /// Why the gateway answered by itself, for the metrics.
    rejected: Option<&'static str>,
    /// When an upstream server was chosen (the latency histogram's start).
    upstream_started: Option<std::time::Instant>,
    /// The canonical path, when the request spelled it otherwise: what the backend receives.
    canonical_path: Option<String>,
    /// The request's `Origin`, when `[cors]` allows it: every answer carries the CORS headers.
    cors_origin: Option<HeaderValue>,
    /// `[cors]` is configured: every answer carries `Vary: Origin`, whatever the origin.
    cors_vary: bool,
    /// For the access log: when the request began, the upstream server and its answer time.
    started: Instant,
    upstream_addr: Option<std::net::SocketAddr>,
    upstream_ms: Option<f64>,
    /// The client's address: the peer, or behind a trusted proxy the hop it names.
    client_ip: Option<std::net::IpAddr>,
    /// Every server of the route's upstream is down: the client may retry after this many
    /// seconds.
    all_down: Option<u64>,
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx {
            request_id: HeaderValue::from_static(""),
            snap: None,
            group: None,
            route: None,
            now_ms: 0,
            month: None,
            take: None,
            bytes_used: None,
            quota_refused: None,
            connect_retries: 0,
            connected: false,
            upstream_responded: false,
            rejected: None,
            upstream_started: None,
            canonical_path: None,
            cors_origin: None,
            cors_vary: false,
            started: Instant::now(),
            upstream_addr: None,
            upstream_ms: None,
            client_ip: None,
            all_down: None,
        }
    }
}

impl<S: UsageStore> VivGate<S> {
    /// The contract's order of checks. Returns the first failure; on success the request is
    /// counted against its quota and ready to forward.
    async fn check_request(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        snap: Arc<Snapshot>,
    ) -> Result<Checked, GatewayError> {
        let req = session.req_header();
        // step 0: what was parsed is what was sent (pingora escapes or drops some bytes in the
        // URI it parses, and forwards the raw target) ...
        if req.uri.path_and_query().map(|p| p.as_str().as_bytes()) != Some(req.raw_path()) {
            return Err(GatewayError::Malformed("the request target is ambiguous"));
        }
        // ... and one canonical path, or nothing
        let path =
            canonical_path(req.uri.path()).map_err(|e| GatewayError::Malformed(e.as_str()))?;
        let client = client_ip(session, &snap.trusted_proxies);
        ctx.client_ip = client;
        let failed_auth = snap.limits.failed_auth.zip(client);
        if let Some((_, ip)) = failed_auth {
            if let Some(left) = self.gw.failed_auth().blocked_now(ip) {
                return Err(GatewayError::AuthBlocked(left.as_secs().max(1)));
            }
        }
        let overrides = self.gw.overrides();
        let checked = pipeline::check_head(
            &snap,
            &overrides,
            &req.headers,
            &req.method,
            &path,
            req.uri.query(),
        );
        if let (Err(r), Some((limit, ip))) = (&checked, failed_auth) {
            if r.error.status() == 401 && self.gw.failed_auth().record(ip, Instant::now(), limit) {
                tracing::info!(target: "vivgate::audit", client = %ip, "client blocked after failed authentications");
            }
        }
        if let Cow::Owned(p) = path {
            ctx.canonical_path = Some(p);
        }
        let (group, route, refused) = match checked {
            Ok(pipeline::Admitted::Forward { group, route }) => (group, route.clone(), None),
            Ok(pipeline::Admitted::OwnUsage { group }) => {
                return Ok(Checked::OwnUsage(group.clone()));
            }
            Err(pipeline::Refused {
                error,
                matched: Some((g, r)),
            }) => (g, r.clone(), Some(error)),
            Err(pipeline::Refused {
                error,
                matched: None,
            }) => return Err(error),
        };
        ctx.group = Some(group.clone());
        ctx.route = Some(route.clone());
        ctx.now_ms = self.gw.clock().now_ms();
        ctx.month = Some(Month::containing(ctx.now_ms));
        if let Some(error) = refused {
            return Err(error);
        }
        ctx.snap = Some(snap.clone());
        if route.json_body {
            self.read_json_body(session, &snap).await?;
            // a body may take a while: the quota check is the request's moment
            ctx.now_ms = self.gw.clock().now_ms();
            ctx.month = Some(Month::containing(ctx.now_ms));
        }
        if let Some(n) = group.tier.burst_per_second {
            if !self.gw.burst().admit(&group.id, n) {
                return Err(GatewayError::BurstLimited(n));
            }
        }
        self.take_quota(ctx).await?;
        Ok(Checked::Forward)
    }

    /// `GET /v1/usage`: the group's usage and limits this month, in the success envelope.
    async fn own_usage(&self, session: &mut Session, ctx: &Ctx, group: &Group) -> Result<()> {
        let now = self.gw.clock().now_ms();
        let month = Month::containing(now);
        let u = self.gw.store().usage(&group.id, month);
        let body = serde_json::json!({
            "success": true,
            "data": {
                "group": &*group.id,
                "tier": &*group.tier.name,
                "status": self.gw.overrides().status_of(group),
                "overage_billing": group.overage_billing,
                "month": month.to_string(),
                "resets_at": reset_at(month),
                "calls": u.calls,
                "calls_limit": group.tier.api_calls,
                "calls_overage": u.calls_overage,
                "bytes": u.bytes,
                "bytes_limit": group.tier.cdn_bytes,
                "bytes_overage": u.bytes_overage,
            },
            "error": null,
        })
        .to_string();
        let mut resp = ResponseHeader::build(200, Some(4))?;
        resp.insert_header(header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(header::CONTENT_LENGTH, body.len())?;
        resp.insert_header(header::CACHE_CONTROL, "no-store")?;
        resp.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
        self.add_cors_headers(&mut resp, ctx)?;
        drain_for_keepalive(session, self.gw.snapshot().limits.max_drain_body).await;
        let head = session.req_header().method == http::Method::HEAD;
        session.write_response_header(Box::new(resp), head).await?;
        if !head {
            session
                .write_response_body(Some(Bytes::from(body)), true)
                .await?;
        }
        Ok(())
    }

    /// Reads the whole body (bounded by `limits.max_json_body`) with pingora's retry buffer on,
    /// so pingora re-sends exactly these bytes upstream, and validates it as JSON.
    async fn read_json_body(
        &self,
        session: &mut Session,
        snap: &Snapshot,
    ) -> Result<(), GatewayError> {
        let max = snap.limits.max_json_body;
        if content_length(session.req_header()).is_some_and(|n| n > max) {
            return Err(GatewayError::BodyTooLarge);
        }
        if expects_continue(session.req_header()) && !session.is_body_done() {
            send_continue(session)
                .await
                .map_err(|_| GatewayError::BadRequest)?;
        }
        session.enable_retry_buffering();
        let mut body = Vec::new();
        // HTTP/1 reads carry the session's read timeout; pingora's HTTP/2 reads have none
        let pause = snap.limits.body_idle_timeout;
        loop {
            let read = match tokio::time::timeout(pause, session.read_request_body()).await {
                Ok(read) => read,
                Err(_) => Err(Error::new(ErrorType::ReadTimedout)),
            };
            match read {
                Ok(Some(chunk)) => {
                    if (body.len() + chunk.len()) as u64 > max {
                        return Err(GatewayError::BodyTooLarge);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.etype() == &ErrorType::ReadTimedout => {
                    session.set_keepalive(None);
                    return Err(GatewayError::BodyTimeout);
                }
                Err(_) => {
                    // a body whose framing broke leaves the connection unreadable
                    session.set_keepalive(None);
                    return Err(GatewayError::BadRequest);
                }
            }
        }
        pipeline::json_body(&body, snap.limits.max_json_depth)
    }

    /// Step 7: the monthly quota of each meter of the route, for `ctx.month` (the month when the
    /// route matched, or when a JSON body finished arriving: the quota check's moment, one clock
    /// read). Bandwidth is checked before calls so a bandwidth refusal does not spend a call.
    async fn take_quota(&self, ctx: &mut Ctx) -> Result<(), GatewayError> {
        let (Some(group), Some(route), Some(month)) = (&ctx.group, &ctx.route, ctx.month) else {
            return Err(GatewayError::Internal);
        };
        let store = self.gw.store();
        let tier = &group.tier;
        if route.meters.bytes {
            let used = store.bytes_used(&group.id, month);
            ctx.bytes_used = Some(used);
            if used >= tier.cdn_bytes && !group.overage_billing {
                ctx.quota_refused = Some(Meter::Bytes);
                return Err(GatewayError::QuotaExceeded(Meter::Bytes, reset_at(month)));
            }
        }
        if route.meters.calls {
            match store
                .take_call(
                    &group.id,
                    month,
                    tier.api_calls,
                    group.overage_billing,
                    &tier.name,
                )
                .await
            {
                Take::Refused => {
                    ctx.quota_refused = Some(Meter::Calls);
                    return Err(GatewayError::QuotaExceeded(Meter::Calls, reset_at(month)));
                }
                Take::Unavailable => return Err(GatewayError::UsageUnavailable),
                t => ctx.take = Some(t),
            }
        }
        Ok(())
    }

    /// `RateLimit-Policy` and `RateLimit` for the route's meters, or `None` when the request
    /// was not authenticated to a routed path. `served` is the response body size, if known.
    fn rate_limit_headers(
        &self,
        ctx: &Ctx,
        served: Option<u64>,
    ) -> Option<(HeaderValue, HeaderValue)> {
        let (group, route, month) = (ctx.group.as_ref()?, ctx.route.as_ref()?, ctx.month?);
        let tier = &group.tier;
        let policy = tier.policy(route.meters)?.clone();
        let t = month.seconds_until_end(ctx.now_ms);
        let mut state = String::with_capacity(96);
        let mut num = itoa::Buffer::new();
        let mut push = |name: &str, r: u64| {
            if !state.is_empty() {
                state.push_str(", ");
            }
            state.push_str(name);
            state.push_str(";r=");
            state.push_str(num.format(r));
            state.push_str(";t=");
            state.push_str(num.format(t));
        };
        if route.meters.calls {
            let r = match ctx.take {
                Some(Take::Admitted { remaining, .. }) => remaining,
                _ if ctx.quota_refused == Some(Meter::Calls) => 0,
                _ => {
                    let used = self.gw.store().usage(&group.id, month).calls;
                    tier.api_calls.saturating_sub(used)
                }
            };
            push("\"monthly-calls\"", r);
        }
        if route.meters.bytes {
            let used = ctx
                .bytes_used
                .unwrap_or_else(|| self.gw.store().bytes_used(&group.id, month));
            let r = tier
                .cdn_bytes
                .saturating_sub(used.saturating_add(served.unwrap_or(0)));
            push("\"monthly-bytes\"", r);
        }
        Some((policy, HeaderValue::try_from(state).ok()?))
    }

    /// Notes that answers vary by `Origin`, and an allowed `Origin` (one header, listed).
    fn note_origin(&self, session: &Session, ctx: &mut Ctx, cors: &crate::config::Cors) {
        ctx.cors_vary = true;
        let mut origins = session.req_header().headers.get_all(header::ORIGIN).iter();
        if let (Some(origin), None) = (origins.next(), origins.next()) {
            if origin.to_str().is_ok_and(|o| cors.origins.contains(o)) {
                ctx.cors_origin = Some(origin.clone());
            }
        }
    }

    /// For a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`, on a
    /// well-formed path) says whether it is allowed; `None` for any other request.
    fn preflight(
        &self,
        session: &Session,
        ctx: &Ctx,
        cors: &crate::config::Cors,
    ) -> Option<Result<(), GatewayError>> {
        let req = session.req_header();
        req.headers.get(header::ORIGIN)?;
        let allowed = ctx.cors_origin.is_some();
        if req.method != http::Method::OPTIONS || canonical_path(req.uri.path()).is_err() {
            return None;
        }
        let asked = req.headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        let method_ok = cors
            .methods
            .iter()
            .any(|m| m.as_str().as_bytes() == asked.as_bytes());
        let headers_ok = req
            .headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .all(|v| {
                v.to_str().is_ok_and(|list| {
                    list.split(',')
                        .map(|h| h.trim().to_ascii_lowercase())
                        .filter(|h| !h.is_empty())
                        .all(|h| cors.headers.contains(&h))
                })
            });
        Some(if allowed && method_ok && headers_ok {
            Ok(())
        } else {
            Err(GatewayError::CorsRefused)
        })
    }

    /// An allowed preflight: 204 with the CORS headers, no key needed, nothing metered.
    async fn preflight_ok(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        cors: &crate::config::Cors,
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(204, Some(8))?;
        if let Some(origin) = &ctx.cors_origin {
            resp.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())?;
        }
        resp.insert_header(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            cors.allow_methods.clone(),
        )?;
        resp.insert_header(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            cors.allow_headers.clone(),
        )?;
        resp.insert_header(header::ACCESS_CONTROL_MAX_AGE, cors.max_age.clone())?;
        resp.insert_header(header::VARY, "Origin")?;
        resp.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
        drain_for_keepalive(session, self.gw.snapshot().limits.max_drain_body).await;
        session.write_response_header(Box::new(resp), true).await
    }

    /// With `[cors]`, `Vary: Origin` on every answer (a shared cache must not give one origin's
    /// answer to another), and the CORS headers on an answer to an allowed origin.
    fn add_cors_headers(&self, resp: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
        if ctx.cors_vary {
            resp.append_header(header::VARY, "Origin")?;
        }
        let Some(origin) = &ctx.cors_origin else {
            return Ok(());
        };
        resp.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())?;
        resp.insert_header(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(crate::config::CORS_EXPOSE_HEADERS),
        )?;
        Ok(())
    }

    /// Writes the envelope for `e`, keeping the connection alive where HTTP allows.
    async fn reject(&self, session: &mut Session, ctx: &Ctx, e: &GatewayError) -> Result<()> {
        let body = envelope(&e.message());
        let resp = self.envelope_header(ctx, e, body.len())?;
        let max_drain = ctx.snap.as_ref().map_or_else(
            || self.gw.snapshot().limits.max_drain_body,
            |s| s.limits.max_drain_body,
        );
        drain_for_keepalive(session, max_drain).await;
        let head = session.req_header().method == http::Method::HEAD;
        session.write_response_header(Box::new(resp), head).await?;
        if !head {
            session
                .write_response_body(Some(Bytes::from(body)), true)
                .await?;
        }
        Ok(())
    }

    /// Status, content type and length, request id, the RateLimit headers once a route matched,
    /// and the headers a status needs.
    fn envelope_header(&self, ctx: &Ctx, e: &GatewayError, len: usize) -> Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(e.status(), Some(8))?;
        resp.insert_header(header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(header::CONTENT_LENGTH, len)?;
        resp.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
        match e {
            GatewayError::MethodNotAllowed(allow) => {
                resp.insert_header(header::ALLOW, allow.as_str())?;
            }
            GatewayError::QuotaExceeded(..) => {
                let month = ctx.month.unwrap_or(Month::containing(ctx.now_ms));
                resp.insert_header(header::RETRY_AFTER, month.seconds_until_end(ctx.now_ms))?;
            }
            GatewayError::AuthBlocked(secs) | GatewayError::UpstreamsDown(secs) => {
                resp.insert_header(header::RETRY_AFTER, *secs)?
            }
            GatewayError::BurstLimited(_) | GatewayError::UsageUnavailable => {
                resp.insert_header(header::RETRY_AFTER, 1)?
            }
            _ => {}
        }
        if let Some((policy, state)) = self.rate_limit_headers(ctx, None) {
            resp.insert_header("ratelimit-policy", policy)?;
            resp.insert_header("ratelimit", state)?;
        }
        self.add_cors_headers(&mut resp, ctx)?;
        Ok(resp)
    }
}

/// The client's address. Behind a trusted proxy (`server.trusted_proxies`) it is the rightmost
/// `X-Forwarded-For` hop that is not itself trusted (every header line, right to left); a
/// malformed hop ends the walk there. Otherwise, and without the header, the peer address.
fn client_ip(session: &Session, trusted: &[ipnet::IpNet]) -> Option<std::net::IpAddr> {
    let peer = session.client_addr()?.as_inet()?.ip();
    if trusted.is_empty() || !trusted.iter().any(|n| n.contains(&peer)) {
        return Some(peer);
    }
    let values: Vec<&http::HeaderValue> = session
        .req_header()
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .collect();
    let mut client = peer;
    for v in values.iter().rev() {
        let Ok(list) = v.to_str() else {
            return Some(client);
        };
        for hop in list.rsplit(',') {
            let Ok(ip) = hop.trim().parse::<std::net::IpAddr>() else {
                return Some(client);
            };
            client = ip;
            if !trusted.iter().any(|n| n.contains(&ip)) {
                return Some(ip);
            }
        }
    }
    Some(client)
}

/// What the client is told when proxying fails: a server that could not be reached is a 502,
/// one that did not answer in time a 504, a bad request a 400, anything else a 500. `None`
/// when the client is gone and nothing can be sent.
fn classify(etype: &ErrorType, esource: &ErrorSource) -> Option<GatewayError> {
    use ErrorType::*;
    match (etype, esource) {
        (ReadTimedout | WriteTimedout, ErrorSource::Upstream) => {
            Some(GatewayError::UpstreamTimeout)
        }
        (ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError, _) => {
            Some(GatewayError::UpstreamUnreachable)
        }
        (HTTPStatus(code), _) if *code < 500 => Some(GatewayError::BadRequest),
        (HTTPStatus(_), _) => Some(GatewayError::Internal),
        (_, ErrorSource::Upstream) => Some(GatewayError::UpstreamUnreachable),
        (
            ReadError | WriteError | ConnectionClosed | ReadTimedout | WriteTimedout,
            ErrorSource::Downstream,
        ) => None,
        (_, ErrorSource::Downstream) => Some(GatewayError::BadRequest),
        (_, ErrorSource::Internal | ErrorSource::Unset) => Some(GatewayError::Internal),
    }
}

/// The front's HTTP/1 head rules that apply to an HTTP/2 request (its framing is the h2
/// crate's): no CONNECT, an origin-form `:path` of allowed bytes, a valid authority and `Host`,
/// and the head limits (header lines and bytes: 431).
fn check_h2_head(req: &RequestHeader, limits: &crate::config::Limits) -> Result<(), GatewayError> {
    use vivgate_parse::head::{check_host, check_target};
    if req.method == http::Method::CONNECT {
        return Err(GatewayError::ConnectNotAllowed);
    }
    let target = std::str::from_utf8(req.raw_path())
        .map_err(|_| GatewayError::Malformed("the request target is not ASCII"))?;
    check_target(target).map_err(crate::front::refusal)?;
    if let Some(a) = req.uri.authority() {
        check_host(a.as_str().as_bytes()).map_err(crate::front::refusal)?;
    }
    for h in req.headers.get_all(header::HOST) {
        check_host(h.as_bytes()).map_err(crate::front::refusal)?;
    }
    // forwarded to HTTP/1 backends, where `Transfer_Encoding` may read as Transfer-Encoding
    for n in req.headers.keys() {
        vivgate_parse::head::check_field_name(n.as_str().as_bytes())
            .map_err(crate::front::refusal)?;
    }
    // the request line and the blank line of an HTTP/1 head, roughly; browsers send each cookie
    // as a field of its own over HTTP/2, which is one `Cookie` line over HTTP/1
    let mut bytes = req.method.as_str().len() + target.len() + 16;
    let mut lines = 0;
    let mut cookie_seen = false;
    for (n, v) in req.headers.iter() {
        if n == header::COOKIE {
            bytes += v.len() + if cookie_seen { 2 } else { 10 };
            lines += usize::from(!cookie_seen);
            cookie_seen = true;
        } else {
            bytes += n.as_str().len() + v.len() + 4;
            lines += 1;
        }
    }
    if lines > limits.head.max_headers || bytes > limits.head.max_bytes {
        return Err(GatewayError::HeadTooLarge);
    }
    Ok(())
}

/// The `Cookie` fields of `headers` as one value, `"; "` between them.
fn join_cookies(headers: &http::HeaderMap) -> HeaderValue {
    let mut out = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(v.as_bytes());
    }
    // joined valid values with "; " are a valid value
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn reset_at(month: Month) -> String {
    format_utc(month.next().start_ms())
}

fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// `Expect: 100-continue`, on HTTP/1.1 or HTTP/2: an HTTP/1.0 client gets no 1xx (RFC 9110
/// §10.1.1: the expectation is ignored).
fn expects_continue(req: &RequestHeader) -> bool {
    req.version != http::Version::HTTP_10
        && req
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Sends `100 Continue`. pingora would mark the connection to close because the body is not
/// read yet when the 100 goes out; the final answer decides that instead.
async fn send_continue(session: &mut Session) -> Result<()> {
    session.set_close_on_response_before_downstream_finish(false);
    let sent = session.write_continue_response().await;
    session.set_close_on_response_before_downstream_finish(true);
    sent
}

/// Before answering early: read and discard an unread request body of at most `max` bytes so
/// the connection can serve the next request; otherwise (larger, slow, or a client waiting for
/// `100 Continue`) mark the connection to close.
async fn drain_for_keepalive(session: &mut Session, max: u64) {
    if session.is_body_done() {
        return;
    }
    if expects_continue(session.req_header())
        || content_length(session.req_header()).is_some_and(|n| n > max)
    {
        session.set_keepalive(None);
        return;
    }
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut total = 0u64;
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    total += chunk.len() as u64;
                    if total > max {
                        return false;
                    }
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    })
    .await;
    if !matches!(drained, Ok(true)) {
        session.set_keepalive(None);
    }
}

/// Hop-by-hop headers a backend response must not pass on (pingora writes its own
/// `Connection`, and framing headers for the client connection).
const HOP_BY_HOP: [&str; 5] = ["keep-alive", "proxy-connection", "te", "trailer", "upgrade"];

/// Client headers that never reach the backend: the gateway's own identity headers (with
/// either separator), and headers some frameworks let override the path, the method or the
/// client's identity (`X-Original-URL` on IIS and Symfony, `X-HTTP-Method-Override` on Express
/// and Laravel, `Forwarded`, `X-Real-IP`, …). Header names arrive lower-cased.
const STRIPPED: [&str; 14] = [
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-prefix",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

fn is_stripped_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    let b = n.as_bytes();
    (b.len() >= 10
        && (b[..10].eq_ignore_ascii_case(b"x-vivreal-")
            || b[..10].eq_ignore_ascii_case(b"x_vivreal_")))
        || STRIPPED.contains(&n)
}

#[async_trait]
impl<S: UsageStore> ProxyHttp for VivGate<S> {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    /// Runs every check; a failure is answered here with the envelope and never forwarded.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.request_id = match session.req_header().headers.get(X_REQUEST_ID) {
            Some(v) if pipeline::valid_request_id(v.as_bytes()) => v.clone(),
            _ => self.gw.next_request_id(),
        };
        let snap = self.gw.snapshot();
        if let Some(cors) = &snap.cors {
            self.note_origin(session, ctx, cors);
        }
        if session.is_http2() {
            // a stream whose client stops taking data (no WINDOW_UPDATE) must not hold its
            // upstream connection forever; the front sets this for HTTP/1
            session.set_write_timeout(Some(snap.limits.client_write_timeout));
            // HTTP/2 has no head scan in the front: its method, `:path`, authority and header
            // list get the same rules here, before anything else (CORS preflights included)
            if let Err(e) = check_h2_head(session.req_header(), &snap.limits) {
                ctx.rejected = Some(e.reason());
                self.reject(session, ctx, &e).await?;
                return Ok(true);
            }
        }
        if let Some(cors) = &snap.cors {
            if let Some(preflight) = self.preflight(session, ctx, cors) {
                match preflight {
                    Ok(()) => self.preflight_ok(session, ctx, cors).await?,
                    Err(e) => {
                        ctx.rejected = Some(e.reason());
                        self.reject(session, ctx, &e).await?;
                    }
                }
                return Ok(true);
            }
        }
        match self.check_request(session, ctx, snap).await {
            Ok(Checked::OwnUsage(group)) => {
                self.own_usage(session, ctx, &group).await?;
                Ok(true)
            }
            Ok(Checked::Forward) => {
                if expects_continue(session.req_header()) && !session.is_body_done() {
                    send_continue(session).await?;
                }
                Ok(false)
            }
            Err(e) => {
                ctx.rejected = Some(e.reason());
                if matches!(e, GatewayError::Malformed(_) | GatewayError::AuthBlocked(_)) {
                    // a request the gateway could not read unambiguously ends the connection;
                    // so does a blocked client's, so it cannot idle on a connection slot
                    session.set_keepalive(None);
                }
                self.reject(session, ctx, &e).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let (Some(snap), Some(route)) = (&ctx.snap, &ctx.route) else {
            return Error::e_explain(ErrorType::InternalError, "no route in context");
        };
        // each attempt starts unconnected: what is charged depends on the last one
        ctx.connected = false;
        ctx.upstream_started = Some(std::time::Instant::now());
        let up = &snap.upstreams[route.upstream];
        let health = &up.health;
        let Some(backend) = up.lb.select_with(b"", 256, |b, healthy| {
            healthy && b.addr.as_inet().is_none_or(|a| !health.is_down(a))
        }) else {
            let wait = up.health_interval.or(health.down_for()).unwrap_or_default();
            ctx.all_down = Some(wait.as_secs().max(1));
            return Error::e_explain(ErrorType::ConnectNoRoute, "every server is down");
        };
        ctx.upstream_addr = backend.addr.as_inet().copied();
        let mut peer = match &up.tls {
            Some(tls) => {
                // never a TLS peer without a name: pingora skips verification for an empty SNI
                let name = ctx
                    .upstream_addr
                    .and_then(|a| tls.name(&a))
                    .ok_or_else(|| Error::explain(ErrorType::InternalError, "no TLS name"))?;
                let mut peer = HttpPeer::new(backend.addr, true, name.to_string());
                peer.options.ca = tls.ca.clone();
                peer.group_key = tls.pool_key;
                peer
            }
            None => HttpPeer::new(backend.addr, false, String::new()),
        };
        peer.options.connection_timeout = Some(up.connect_timeout);
        peer.options.total_connection_timeout = Some(up.connect_timeout);
        peer.options.read_timeout = Some(up.read_timeout);
        peer.options.write_timeout = Some(up.write_timeout);
        Ok(Box::new(peer))
    }

    /// A connect failure is retried once, on the next server of the same upstream (nothing was
    /// sent, so any method is safe), when the upstream has more than one server.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<pingora::Error>,
    ) -> Box<pingora::Error> {
        let servers = match (&ctx.snap, &ctx.route) {
            (Some(snap), Some(route)) => {
                let up = &snap.upstreams[route.upstream];
                if let Some(addr) = &ctx.upstream_addr {
                    if up.health.failed(addr) {
                        tracing::warn!(upstream = %up.name, server = %addr, "server marked down after consecutive connect failures");
                        self.gw.metrics().servers_marked_down.inc();
                    }
                }
                up.lb.backends().get_backend().len()
            }
            _ => 0,
        };
        if ctx.connect_retries == 0 && servers > 1 {
            ctx.connect_retries += 1;
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.connected = true;
        if let (Some(snap), Some(route), Some(addr)) = (&ctx.snap, &ctx.route, &ctx.upstream_addr) {
            snap.upstreams[route.upstream].health.connected(addr);
        }
        Ok(())
    }

    /// Drops the client's credentials, `Expect`, any `X-Vivreal-*` header and the override
    /// headers of [`STRIPPED`], then sets the
    /// trusted identity headers, the request id and `X-Forwarded-For`.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(path) = &ctx.canonical_path {
            // the backend receives exactly the path that was checked and routed
            let uri = match req.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
            let uri = http::Uri::try_from(uri)
                .map_err(|_| Error::explain(ErrorType::InternalError, "canonical path"))?;
            req.set_uri(uri);
        }
        req.remove_header(&header::AUTHORIZATION);
        req.remove_header(&header::EXPECT);
        // HTTP/2 cookie fields are joined into one header for an HTTP/1 backend (RFC 9113
        // §8.2.3); pingora passes them on as separate lines
        if session.is_http2() && req.headers.get_all(header::COOKIE).iter().nth(1).is_some() {
            let joined = join_cookies(&req.headers);
            req.remove_header(&header::COOKIE);
            req.insert_header(header::COOKIE, joined)?;
        }
        if req.headers.keys().any(is_stripped_header) {
            let names: Vec<HeaderName> = req
                .headers
                .keys()
                .filter(|n| is_stripped_header(n))
                .cloned()
                .collect();
            for n in names {
                req.remove_header(&n);
            }
        }
        if let Some(g) = &ctx.group {
            // group ids are checked at load to be [A-Za-z0-9._-], always a valid header value
            req.insert_header("x-vivreal-group-id", &*g.id)?;
            req.insert_header("x-vivreal-tier", g.tier.header.clone())?;
        }
        req.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
        let client = ctx.client_ip.or_else(|| {
            session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip())
        });
        if let Some(ip) = client {
            // formatted on the stack: an IPv6 address is at most 45 characters
            use std::io::Write as _;
            let mut buf = [0u8; 48];
            let mut w = &mut buf[..];
            let _ = write!(w, "{ip}");
            let len = 48 - w.len();
            req.insert_header("x-forwarded-for", &buf[..len])?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_responded = true;
        if let Some(t) = ctx.upstream_started {
            let secs = t.elapsed().as_secs_f64();
            self.gw.metrics().upstream_seconds.observe(secs);
            ctx.upstream_ms = Some(secs * 1000.0);
        }
        if resp
            .headers
            .keys()
            .any(|n| HOP_BY_HOP.contains(&n.as_str()))
        {
            for name in HOP_BY_HOP {
                resp.remove_header(name);
            }
        }
        resp.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
        let served = resp
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        if let Some((policy, state)) = self.rate_limit_headers(ctx, served) {
            resp.insert_header("ratelimit-policy", policy)?;
            resp.insert_header("ratelimit", state)?;
        }
        self.add_cors_headers(resp, ctx)?;
        Ok(())
    }

    /// Upstream failures become envelopes: a server that could not be reached is a 502, one
    /// that did not answer in time a 504. The connection is closed after either.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        ctx: &mut Ctx,
    ) -> FailToProxy {
        let err = match ctx.all_down {
            Some(secs) => Some(GatewayError::UpstreamsDown(secs)),
            None => classify(e.etype(), e.esource()),
        };
        let code = err.as_ref().map_or(0, GatewayError::status);
        ctx.rejected = Some(err.as_ref().map_or("client_gone", GatewayError::reason));
        session.set_keepalive(None);
        // a request whose backend was never reached is not charged
        if !ctx.connected {
            if let (Some(take), Some(group), Some(month)) = (ctx.take.take(), &ctx.group, ctx.month)
            {
                self.gw.store().refund_call(&group.id, month, take);
            }
        }
        if let Some(err) = err {
            // a `100 Continue` we sent is not a final answer: the envelope still goes out
            if session
                .response_written()
                .is_none_or(|r| r.status.is_informational())
            {
                let body = envelope(&err.message());
                if let Ok(resp) = self.envelope_header(ctx, &err, body.len()) {
                    let _ = session.write_response_header(Box::new(resp), false).await;
                    let _ = session
                        .write_response_body(Some(Bytes::from(body)), true)
                        .await;
                }
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Meters what was served: the response body bytes actually sent on bandwidth-metered
    /// routes. (A call whose backend was never reached was refunded in `fail_to_proxy`.)
    async fn logging(&self, session: &mut Session, _e: Option<&pingora::Error>, ctx: &mut Ctx) {
        let metrics = self.gw.metrics();
        let status = session
            .response_written()
            .map_or(http::StatusCode::OK, |r| r.status);
        match &ctx.route {
            Some(r) if status == http::StatusCode::OK => r
                .ok_requests
                .get_or_init(|| metrics.requests.with_label_values(&[&r.name, "200"]))
                .inc(),
            r => {
                let route_name = r.as_ref().map_or("none", |r| &*r.name);
                metrics
                    .requests
                    .with_label_values(&[route_name, status.as_str()])
                    .inc()
            }
        }
        if let Some(reason) = ctx.rejected {
            metrics.rejections.with_label_values(&[reason]).inc();
        }
        if let Some(log) = self.gw.access_log() {
            let req = session.req_header();
            let down = session.as_downstream();
            log.write(&crate::access::Entry {
                time_ms: self.gw.clock().now_ms(),
                request_id: ctx.request_id.to_str().unwrap_or(""),
                client: ctx.client_ip.or_else(|| {
                    session
                        .client_addr()
                        .and_then(|a| a.as_inet())
                        .map(|a| a.ip())
                }),
                method: req.method.as_str(),
                path: ctx.canonical_path.as_deref().unwrap_or(req.uri.path()),
                query: req.uri.query(),
                route: ctx.route.as_ref().map(|r| &*r.name),
                group: ctx.group.as_ref().map(|g| &*g.id),
                tier: ctx.group.as_ref().map(|g| &*g.tier.name),
                status: session.response_written().map_or(0, |r| r.status.as_u16()),
                reason: ctx.rejected,
                upstream: ctx.upstream_addr,
                upstream_ms: ctx.upstream_ms,
                total_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
                bytes_in: down.body_bytes_read(),
                bytes_out: down.body_bytes_sent(),
            });
        }
        let (Some(group), Some(route), Some(month)) = (&ctx.group, &ctx.route, ctx.month) else {
            return;
        };
        let store = self.gw.store();
        if route.meters.bytes && ctx.upstream_responded {
            let sent = session.as_downstream().body_bytes_sent() as u64;
            store.add_bytes(
                &group.id,
                month,
                sent,
                group.tier.cdn_bytes,
                group.overage_billing,
            );
        }
        tracing::debug!(
            request_id = ctx.request_id.to_str().unwrap_or(""),
            group = %group.id,
            status = session.response_written().map_or(0, |r| r.status.as_u16()),
            "request done"
        );
    }

    /// What pingora's own error log says about a request: never the query string (it may hold
    /// ids a tenant considers private) and never a header.
    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        let req = session.req_header();
        format!(
            "{} {} request_id={}",
            req.method,
            req.uri.path(),
            ctx.request_id.to_str().unwrap_or("")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_failures_map_to_502_504_and_internal_faults_to_500() {
        use ErrorSource::*;
        use ErrorType::*;
        for t in [
            ConnectRefused,
            ConnectTimedout,
            ConnectNoRoute,
            ConnectError,
        ] {
            assert_eq!(
                classify(&t, &Unset),
                Some(GatewayError::UpstreamUnreachable)
            );
        }
        assert_eq!(
            classify(&ConnectionClosed, &Upstream),
            Some(GatewayError::UpstreamUnreachable)
        );
        assert_eq!(
            classify(&ReadTimedout, &Upstream),
            Some(GatewayError::UpstreamTimeout)
        );
        assert_eq!(
            classify(&WriteTimedout, &Upstream),
            Some(GatewayError::UpstreamTimeout)
        );
        assert_eq!(
            classify(&InternalError, &Internal),
            Some(GatewayError::Internal)
        );
        assert_eq!(
            classify(&HTTPStatus(500), &Unset),
            Some(GatewayError::Internal)
        );
        assert_eq!(
            classify(&HTTPStatus(400), &Downstream),
            Some(GatewayError::BadRequest)
        );
        assert_eq!(
            classify(&InvalidHTTPHeader, &Downstream),
            Some(GatewayError::BadRequest)
        );
        assert_eq!(classify(&ConnectionClosed, &Downstream), None);
        assert_eq!(classify(&ReadTimedout, &Downstream), None);
        let e = GatewayError::Internal;
        assert_eq!(
            (e.status(), e.message().as_str()),
            (500, "Internal server error")
        );
        assert_eq!(
            envelope(&e.message()),
            br#"{"success": false, "data": null, "error": "Internal server error"}"#.to_vec()
        );
    }
}
