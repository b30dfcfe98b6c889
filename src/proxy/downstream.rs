//! The client's side of a request: the session as the pipeline's transport, `100 Continue`,
//! and draining an unread body so the connection can be reused.

use super::*;

/// A pingora session as the pipeline's [`Transport`]: its parsed head, and its body read with
/// pingora's retry buffer on, so pingora re-sends exactly the bytes that were checked.
pub(super) struct Downstream<'s> {
    pub(super) session: &'s mut Session,
    pub(super) client: Option<std::net::IpAddr>,
}

impl Transport for Downstream<'_> {
    fn request(&self) -> Request<'_> {
        let req = self.session.req_header();
        Request {
            method: &req.method,
            target: req.raw_path(),
            parsed_target: Some(
                req.uri
                    .path_and_query()
                    .map_or(&b""[..], |p| p.as_str().as_bytes()),
            ),
            headers: &req.headers,
            authority: req.uri.authority().map(|a| a.as_str()),
            http2: self.session.is_http2(),
            client: self.client,
        }
    }

    async fn read_body(&mut self, max: u64, pause: Duration) -> Result<Vec<u8>, GatewayError> {
        let session = &mut *self.session;
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
                Ok(None) => return Ok(body),
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
    }
}

pub(super) fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// `Expect: 100-continue`, on HTTP/1.1 or HTTP/2: an HTTP/1.0 client gets no 1xx (RFC 9110
/// §10.1.1: the expectation is ignored).
pub(super) fn expects_continue(req: &RequestHeader) -> bool {
    req.version != http::Version::HTTP_10
        && req
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Sends `100 Continue`. pingora would mark the connection to close because the body is not
/// read yet when the 100 goes out; the final answer decides that instead.
pub(super) async fn send_continue(session: &mut Session) -> Result<()> {
    session.set_close_on_response_before_downstream_finish(false);
    let sent = session.write_continue_response().await;
    session.set_close_on_response_before_downstream_finish(true);
    sent
}

/// Before answering early: read and discard an unread request body of at most `max` bytes so
/// the connection can serve the next request; otherwise (larger, slow, or a client waiting for
/// `100 Continue`) mark the connection to close.
pub(super) async fn drain_for_keepalive(session: &mut Session, max: u64) {
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
