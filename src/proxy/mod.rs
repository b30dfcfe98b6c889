//! The only module that knows pingora's phases. `VivGate` runs the checks of [`crate::pipeline`]
//! in `request_filter`, answers failures with the envelope, and forwards the rest.

use std::sync::Arc;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use crate::config::Group;
use crate::error::GatewayError;
use crate::exchange::{is_stripped_header, Done, Exchange, Put, HOP_BY_HOP, X_REQUEST_ID};
use crate::gateway::Gateway;
use crate::pipeline::{self, Outcome, Request, Transport};
use crate::respond::Reply;

mod answer;
mod downstream;
mod headers;

/// Per-request state through pingora's phases.
pub type Ctx = Exchange;
use answer::put_answer_headers;
use downstream::*;
use headers::*;

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
        let (Some(snap), Some(route)) = (ctx.snap.clone(), ctx.p.route.clone()) else {
            return Error::e_explain(ErrorType::InternalError, "no route in context");
        };
        let up = &snap.upstreams[route.upstream];
        let Some(server) = ctx.select_server(up) else {
            return Error::e_explain(ErrorType::ConnectNoRoute, "every server is down");
        };
        let peer = server.peer(up);
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
        let snap = ctx.snap.clone();
        let retry = match (&snap, ctx.p.route.clone()) {
            (Some(snap), Some(route)) => {
                ctx.connect_failed(&self.gw, &snap.upstreams[route.upstream])
            }
            _ => false,
        };
        e.set_retry(retry);
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
        if let (Some(snap), Some(route)) = (ctx.snap.clone(), ctx.p.route.clone()) {
            ctx.connected_to(&snap.upstreams[route.upstream]);
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
        if req
            .headers
            .keys()
            .any(|n| is_stripped_header(n.as_str().as_bytes()))
        {
            let names: Vec<HeaderName> = req
                .headers
                .keys()
                .filter(|n| is_stripped_header(n.as_str().as_bytes()))
                .cloned()
                .collect();
            for n in names {
                req.remove_header(&n);
            }
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let mut set = Ok(());
        ctx.forward_headers(peer, |name, value| {
            if set.is_ok() {
                set = HeaderValue::from_bytes(value)
                    .map_err(|_| Error::explain(ErrorType::InternalError, "identity header"))
                    .and_then(|v| req.insert_header(name, v));
            }
        });
        set?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_answered(&self.gw);
        if resp
            .headers
            .keys()
            .any(|n| HOP_BY_HOP.contains(&n.as_str()))
        {
            for name in HOP_BY_HOP {
                resp.remove_header(name);
            }
        }
        let served = resp
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        put_answer_headers(&self.gw, ctx, resp, served)
    }

    /// Upstream failures become envelopes: a server that could not be reached is a 502, one
    /// that did not answer in time a 504. The connection is closed after either.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        ctx: &mut Ctx,
    ) -> FailToProxy {
        session.set_keepalive(None);
        let err = ctx.forwarding_failed(&self.gw, classify(e.etype(), e.esource()));
        let code = err.as_ref().map_or(0, GatewayError::status);
        let answered = session
            .response_written()
            .is_some_and(|r| !r.status.is_informational());
        // the backend failed after the answer's head went out: the client sees the connection
        // close mid-body (a client that resets its stream is not a cut answer)
        ctx.answer_cut |=
            answered && ctx.upstream_responded && *e.esource() == ErrorSource::Upstream;
        if let Some(err) = err {
            // a `100 Continue` we sent is not a final answer: the envelope still goes out
            if !answered {
                let reply = ctx.error_reply(&err);
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
        if ctx.client_ip.is_none() {
            ctx.client_ip = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
        }
        let req = session.req_header();
        let down = session.as_downstream();
        ctx.finish(
            &self.gw,
            &Done {
                method: req.method.as_str(),
                path: req.uri.path(),
                query: req.uri.query(),
                status: session.response_written().map(|r| r.status.as_u16()),
                bytes_in: down.body_bytes_read(),
                bytes_out: down.body_bytes_sent(),
            },
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
