//! The gateway's own answers on a pingora session: a [`Reply`] with the request id, the
//! RateLimit headers and CORS, written with the unread body drained first.

use super::*;

impl VivGate {
    /// `GET /v1/usage`: the group's usage and limits this month, in the success envelope.
    pub(super) async fn own_usage(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        group: &Group,
    ) -> Result<()> {
        let now = self.gw.clock().now_ms();
        let month = Month::containing(now);
        let u = self.gw.store().usage(&group.id, month);
        let data = serde_json::json!({
            "group": &*group.id,
            "tier": &*group.tier.name,
            "status": self.gw.overrides().status_of(group),
            "overage_billing": group.overage_billing,
            "month": month.to_string(),
            "resets_at": pipeline::quota::reset_at(month),
            "calls": u.calls,
            "calls_limit": group.tier.api_calls,
            "calls_overage": u.calls_overage,
            "bytes": u.bytes,
            "bytes_limit": group.tier.cdn_bytes,
            "bytes_overage": u.bytes_overage,
        });
        let reply =
            Reply::success(&data).with(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        self.answer(session, ctx, reply).await
    }

    /// An allowed preflight: 204 with the CORS headers, no key needed, nothing metered.
    pub(super) async fn preflight_ok(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        cors: &crate::config::Cors,
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(204, Some(8))?;
        if let Some(origin) = &ctx.p.cors_origin {
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
    pub(super) fn add_cors_headers(&self, resp: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
        if ctx.p.cors_vary {
            resp.append_header(header::VARY, "Origin")?;
        }
        let Some(origin) = &ctx.p.cors_origin else {
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
    pub(super) async fn reject(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        e: &GatewayError,
    ) -> Result<()> {
        self.answer(session, ctx, self.error_reply(ctx, e)).await
    }

    /// Writes one of the gateway's own answers (no body to a `HEAD`), after reading and
    /// dropping a small unread request body so the connection stays usable.
    pub(super) async fn answer(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        reply: Reply,
    ) -> Result<()> {
        let resp = self.reply_header(ctx, &reply)?;
        let max_drain = ctx.snap.as_ref().map_or_else(
            || self.gw.snapshot().limits.max_drain_body,
            |s| s.limits.max_drain_body,
        );
        drain_for_keepalive(session, max_drain).await;
        let head = session.req_header().method == http::Method::HEAD;
        session.write_response_header(Box::new(resp), head).await?;
        if !head {
            session
                .write_response_body(Some(Bytes::from(reply.body)), true)
                .await?;
        }
        Ok(())
    }

    /// The envelope for `e`; a 402 waits until the month of the quota check ends.
    pub(super) fn error_reply(&self, ctx: &Ctx, e: &GatewayError) -> Reply {
        Reply::error(e, || {
            let month = ctx.p.month.unwrap_or(Month::containing(ctx.p.now_ms));
            month.seconds_until_end(ctx.p.now_ms)
        })
    }

    /// The head of one of the gateway's own answers: the reply's, with the request id, the
    /// RateLimit headers once a route matched, and the CORS headers.
    pub(super) fn reply_header(&self, ctx: &Ctx, reply: &Reply) -> Result<ResponseHeader> {
        let mut resp = reply.response_header()?;
        resp.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
        if let Some((policy, state)) =
            pipeline::quota::rate_limit_headers(self.gw.store(), &ctx.p, None)
        {
            resp.insert_header("ratelimit-policy", policy)?;
            resp.insert_header("ratelimit", state)?;
        }
        self.add_cors_headers(&mut resp, ctx)?;
        Ok(resp)
    }
}
