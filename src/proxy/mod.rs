//! The only module that knows pingora's phases. `VivGate` runs the checks of [`crate::pipeline`]
//! in `request_filter`, answers failures with the envelope, and forwards the rest.

use std::sync::Arc;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use crate::clock::Month;
use crate::config::{Group, Snapshot};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::pipeline::{self, Outcome, Request, Transport};
use crate::respond::Reply;
use crate::usage::UsageStore;

mod answer;
mod ctx;
mod downstream;
mod headers;

pub use ctx::Ctx;
use downstream::*;
use headers::*;

const X_REQUEST_ID: &str = "x-request-id";

/// How long a rejected request's unread body may take to drain before the connection is closed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The pingora proxy application.
pub struct VivGate {
    gw: Arc<Gateway>,
}

impl VivGate {
    pub fn new(gw: Arc<Gateway>) -> Self {
        VivGate { gw }
    }
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

#[async_trait]
impl ProxyHttp for VivGate {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    /// Runs the contract's checks ([`pipeline::run`]); a failure is answered here with the
    /// envelope and never forwarded.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.request_id = match session.req_header().headers.get(X_REQUEST_ID) {
            Some(v) if pipeline::valid_request_id(v.as_bytes()) => v.clone(),
            _ => self.gw.next_request_id(),
        };
        let snap = self.gw.snapshot();
        if session.is_http2() {
            // a stream whose client stops taking data (no WINDOW_UPDATE) must not hold its
            // upstream connection forever; the front sets this for HTTP/1
            session.set_write_timeout(Some(snap.limits.client_write_timeout));
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.client_ip =
            pipeline::head::client_ip(peer, &session.req_header().headers, &snap.trusted_proxies);
        let mut downstream = Downstream {
            session,
            client: ctx.client_ip,
        };
        let outcome = pipeline::run(&self.gw, &snap, &mut downstream, &mut ctx.p).await;
        match outcome {
            Ok(Outcome::Forward) => {
                ctx.snap = Some(snap);
                if expects_continue(session.req_header()) && !session.is_body_done() {
                    send_continue(session).await?;
                }
                Ok(false)
            }
            Ok(Outcome::Preflight) => {
                let cors = snap.cors.as_ref().ok_or_else(|| {
                    Error::explain(ErrorType::InternalError, "a preflight without [cors]")
                })?;
                self.preflight_ok(session, ctx, cors).await?;
                Ok(true)
            }
            Ok(Outcome::OwnUsage(group)) => {
                self.own_usage(session, ctx, &group).await?;
                Ok(true)
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
        let (Some(snap), Some(route)) = (&ctx.snap, &ctx.p.route) else {
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
        let servers = match (&ctx.snap, &ctx.p.route) {
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
        if let (Some(snap), Some(route), Some(addr)) = (&ctx.snap, &ctx.p.route, &ctx.upstream_addr)
        {
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
        if let Some(path) = &ctx.p.canonical_path {
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
        if let Some(g) = &ctx.p.group {
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
        if let Some((policy, state)) =
            pipeline::quota::rate_limit_headers(self.gw.store(), &ctx.p, served)
        {
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
            if let (Some(take), Some(group), Some(month)) =
                (ctx.p.take.take(), &ctx.p.group, ctx.p.month)
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
                let reply = self.error_reply(ctx, &err);
                if let Ok(resp) = self.reply_header(ctx, &reply) {
                    let _ = session.write_response_header(Box::new(resp), false).await;
                    let _ = session
                        .write_response_body(Some(Bytes::from(reply.body)), true)
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
        match &ctx.p.route {
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
                path: ctx.p.canonical_path.as_deref().unwrap_or(req.uri.path()),
                query: req.uri.query(),
                route: ctx.p.route.as_ref().map(|r| &*r.name),
                group: ctx.p.group.as_ref().map(|g| &*g.id),
                tier: ctx.p.group.as_ref().map(|g| &*g.tier.name),
                status: session.response_written().map_or(0, |r| r.status.as_u16()),
                reason: ctx.rejected,
                upstream: ctx.upstream_addr,
                upstream_ms: ctx.upstream_ms,
                total_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
                bytes_in: down.body_bytes_read(),
                bytes_out: down.body_bytes_sent(),
            });
        }
        let (Some(group), Some(route), Some(month)) = (&ctx.p.group, &ctx.p.route, ctx.p.month)
        else {
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
    use crate::error::envelope;

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
