//! The gateway's own answers on a pingora session: a [`Reply`] with the headers of
//! [`Exchange::answer_headers`], written with the unread body drained first.

use super::*;

/// Puts the gateway's headers for every answer into a pingora response head.
pub(super) fn put_answer_headers(
    gw: &Gateway,
    ctx: &Ctx,
    resp: &mut ResponseHeader,
    served: Option<u64>,
) -> Result<()> {
    let mut put = Ok(());
    ctx.answer_headers(gw, served, |name, value, how| {
        if put.is_ok() {
            put = match how {
                Put::Insert => resp.insert_header(name, value),
                Put::Append => resp.append_header(name, value).map(|_| ()),
            };
        }
    });
    put
}

impl VivGate {
    /// `GET /v1/usage`: the group's usage and limits this month, in the success envelope.
    pub(super) async fn own_usage(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        group: &Group,
    ) -> Result<()> {
        let reply = crate::exchange::own_usage_reply(&self.gw, group);
        self.answer(session, ctx, reply).await
    }

    /// An allowed preflight: 204 with the CORS headers, no key needed, nothing metered.
    pub(super) async fn preflight_ok(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        cors: &crate::config::Cors,
    ) -> Result<()> {
        let reply = ctx.preflight_reply(cors);
        let mut resp = ResponseHeader::build(204, Some(8))?;
        for (n, v) in reply.headers {
            resp.append_header(n, v)?;
        }
        resp.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
        drain_for_keepalive(session, self.gw.snapshot().limits.max_drain_body).await;
        session.write_response_header(Box::new(resp), true).await
    }

    /// Writes the envelope for `e`, keeping the connection alive where HTTP allows.
    pub(super) async fn reject(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        e: &GatewayError,
    ) -> Result<()> {
        self.answer(session, ctx, ctx.error_reply(e)).await
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

    /// The head of one of the gateway's own answers: the reply's, with the gateway's headers.
    pub(super) fn reply_header(&self, ctx: &Ctx, reply: &Reply) -> Result<ResponseHeader> {
        let mut resp = reply.response_header()?;
        put_answer_headers(&self.gw, ctx, &mut resp, None)?;
        Ok(resp)
    }
}
