//! The backend's side: a pooled or new connection to a server of the route's upstream, the
//! request sent on it, and the answer's head read back, with the upstream's timeouts and the
//! charging rules of [`Exchange`].

use super::*;
use crate::config::Upstream;
use crate::exchange::Server;
use vivgate_parse::response::{parse_response_head, ResponseHead, ResponseLimits};

/// A backend's response head: at most 64 KiB and the most header lines the parser takes.
const RESPONSE_LIMITS: ResponseLimits = ResponseLimits {
    max_bytes: 64 * 1024,
    max_headers: MAX_HEADERS_CAP,
};

/// Why an attempt on one connection ended without a response head.
pub(super) enum Attempt {
    /// The connection failed before any byte of the answer: on a reused connection the server
    /// may have closed it while it was idle.
    Stale,
    /// Answer the client with this (after charging rules).
    Failed(GatewayError),
    /// The client's body broke or stopped.
    Client(BodyError),
}

/// Runs `io` within `limit`; a timeout is an error of kind `TimedOut`.
pub(super) async fn within<T>(
    limit: Duration,
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match tokio::time::timeout(limit, io).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Writes all of `bytes` and flushes (pingora's streams buffer writes).
pub(super) async fn write(s: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
    s.write_all(bytes).await?;
    s.flush().await
}

fn upstream_error(e: &std::io::Error) -> GatewayError {
    if e.kind() == std::io::ErrorKind::TimedOut {
        GatewayError::UpstreamTimeout
    } else {
        GatewayError::UpstreamUnreachable
    }
}

impl Conn<'_> {
    /// Forwards the checked request and relays the answer; every failure is answered (or the
    /// connection closed) here.
    pub(super) async fn forward(&mut self, ex: &mut Exchange) {
        let (Some(snap), Some(route)) = (ex.snap.clone(), ex.p.route.clone()) else {
            return self.failed(ex, Some(GatewayError::Internal)).await;
        };
        let up = &snap.upstreams[route.upstream];
        if self.json.is_none() && self.send_continue().await.is_err() {
            self.close = true;
            return self.failed(ex, None).await;
        }
        // a request with no body left to stream can be sent again
        let replayable = self.json.is_some() || self.body.is_done();
        // `fresh`: the request was sent once on a pooled connection that failed; the backend
        // may have served it, so the call stays charged whatever the second attempt does
        let mut fresh = false;
        loop {
            let server = ex.select_server(up);
            ex.connected |= fresh;
            let Some(server) = server else {
                return self
                    .failed(ex, Some(GatewayError::UpstreamUnreachable))
                    .await;
            };
            let key = (
                server
                    .addr
                    .as_inet()
                    .copied()
                    .unwrap_or(([0, 0, 0, 0], 0).into()),
                up.tls.as_ref().map_or(0, |t| t.pool_key),
            );
            let pooled = if fresh {
                None
            } else {
                self.ups.pool.take(&key)
            };
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(s) => s,
                None => match self.ups.connector.new_stream(&server.peer(up)).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "upstream connect failed");
                        if ex.connect_failed(self.gw, up) {
                            continue;
                        }
                        return self
                            .failed(ex, Some(GatewayError::UpstreamUnreachable))
                            .await;
                    }
                },
            };
            ex.connected_to(up);
            match self.send(ex, up, &route, &server, &mut conn).await {
                Ok(head) => {
                    ex.upstream_answered(self.gw);
                    let reusable = self.relay(ex, up, &route, &mut conn, head).await;
                    if reusable {
                        self.ups.pool.put(key, conn);
                    }
                    return;
                }
                Err(Attempt::Stale) if reused && replayable && !fresh => {
                    tracing::debug!("a pooled upstream connection was closed; trying a new one");
                    fresh = true;
                }
                Err(Attempt::Stale) => {
                    return self
                        .failed(ex, Some(GatewayError::UpstreamUnreachable))
                        .await
                }
                Err(Attempt::Failed(e)) => return self.failed(ex, Some(e)).await,
                Err(Attempt::Client(e)) => {
                    self.close = true;
                    let answer = match e {
                        BodyError::Framing(why) => Some(GatewayError::Malformed(why)),
                        BodyError::Timeout => Some(GatewayError::BodyTimeout),
                        BodyError::Gone => None,
                    };
                    return self.failed(ex, answer).await;
                }
            }
        }
    }

    /// Forwarding failed before anything of an answer reached the client: the charging rules,
    /// then the envelope (`None`: the client is gone) and a close.
    pub(super) async fn failed(&mut self, ex: &mut Exchange, err: Option<GatewayError>) {
        self.close = true;
        if let Some(err) = ex.forwarding_failed(self.gw, err) {
            let reply = ex.error_reply(&err);
            self.answer(ex, reply, true).await;
        }
    }

    /// Sends the request and reads the answer's head (skipping interim 1xx answers).
    async fn send(
        &mut self,
        ex: &Exchange,
        up: &Upstream,
        route: &crate::config::Route,
        server: &Server<'_>,
        conn: &mut Stream,
    ) -> Result<ResponseHead, Attempt> {
        let mut out = std::mem::take(self.out);
        out.clear();
        self.request_head(ex, route, server, &mut out);
        if let Some(json) = &self.json {
            out.extend_from_slice(json);
        }
        let sent = within(up.write_timeout, write(conn, &out)).await;
        *self.out = out;
        if let Err(e) = sent {
            return Err(match e.kind() {
                std::io::ErrorKind::TimedOut => Attempt::Failed(GatewayError::UpstreamTimeout),
                _ => Attempt::Stale,
            });
        }
        if self.json.is_none() && !self.body.is_done() {
            self.stream_body(up, conn).await?;
        }
        self.resp.clear();
        loop {
            if self.resp.capacity() - self.resp.len() < 4096 {
                self.resp.reserve(16 * 1024);
            }
            match within(up.read_timeout, conn.read_buf(self.resp)).await {
                Ok(0) if self.resp.is_empty() => return Err(Attempt::Stale),
                Ok(0) => return Err(Attempt::Failed(GatewayError::UpstreamUnreachable)),
                Ok(_) => {}
                Err(e) if self.resp.is_empty() && e.kind() != std::io::ErrorKind::TimedOut => {
                    return Err(Attempt::Stale)
                }
                Err(e) => return Err(Attempt::Failed(upstream_error(&e))),
            }
            let to_head = self.head.method == Method::HEAD;
            loop {
                match parse_response_head(self.resp, to_head, RESPONSE_LIMITS) {
                    Ok(None) => break,
                    Ok(Some(head)) if head.interim => {
                        // the gateway answered `Expect` itself: a backend's 100 is dropped
                        let rest = self.resp.len() - head.len;
                        self.resp.copy_within(head.len.., 0);
                        self.resp.truncate(rest);
                    }
                    Ok(Some(head)) => return Ok(head),
                    Err(e) => {
                        tracing::warn!(error = %e, "upstream response refused");
                        return Err(Attempt::Failed(GatewayError::UpstreamUnreachable));
                    }
                }
            }
        }
    }

    /// The request head for the backend (see the module's documentation).
    fn request_head(
        &self,
        ex: &Exchange,
        route: &crate::config::Route,
        server: &Server<'_>,
        out: &mut Vec<u8>,
    ) {
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
        let mut req = httparse::Request::new(&mut lines);
        let _ = req.parse(&self.head.raw);
        out.extend_from_slice(self.head.method.as_str().as_bytes());
        out.push(b' ');
        match &ex.p.canonical_path {
            Some(path) => {
                out.extend_from_slice(path.as_bytes());
                let target = &self.head.raw[self.head.target.clone()];
                if let Some(q) = target.iter().position(|b| *b == b'?') {
                    out.extend_from_slice(&target[q..]);
                }
            }
            None => out.extend_from_slice(&self.head.raw[self.head.target.clone()]),
        }
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let connection = self.head.headers.get_all(header::CONNECTION);
        let named =
            |name: &str| connection_lists(connection.iter().map(|v| v.as_bytes()), name.as_bytes());
        let mut host = false;
        for h in req.headers.iter() {
            let n = h.name.as_bytes();
            if n.eq_ignore_ascii_case(b"authorization")
                || n.eq_ignore_ascii_case(b"expect")
                || n.eq_ignore_ascii_case(b"connection")
                || n.eq_ignore_ascii_case(b"transfer-encoding")
                || n.eq_ignore_ascii_case(b"content-length")
                || n.eq_ignore_ascii_case(b"upgrade")
                || n.eq_ignore_ascii_case(X_REQUEST_ID.as_bytes())
                || n.eq_ignore_ascii_case(b"x-forwarded-for")
                || crate::exchange::HOP_BY_HOP
                    .iter()
                    .any(|hop| n.eq_ignore_ascii_case(hop.as_bytes()))
                || crate::exchange::is_stripped_header(n)
                || named(h.name)
            {
                continue;
            }
            host |= n.eq_ignore_ascii_case(b"host");
            put_line(out, n, h.value);
        }
        if !host {
            // an HTTP/1.0 request may come without one; HTTP/1.1 needs it: the server's name
            use std::io::Write as _;
            match server.tls_name {
                Some(name) => put_line(out, b"host", name.as_bytes()),
                None => {
                    let _ = write!(out, "host: {}\r\n", server.addr);
                }
            }
        }
        ex.forward_headers(self.peer, |name, value| {
            put_line(out, name.as_bytes(), value)
        });
        if let Some(json) = &self.json {
            let mut n = itoa::Buffer::new();
            put_line(out, b"content-length", n.format(json.len()).as_bytes());
        } else if self.head.info.chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        } else if let Some(len) = self.head.info.content_length {
            let mut n = itoa::Buffer::new();
            put_line(out, b"content-length", n.format(len).as_bytes());
        }
        if let Some(upgrade) = self.head.upgrade().filter(|_| route.upgrade) {
            out.extend_from_slice(b"connection: upgrade\r\n");
            put_line(out, b"upgrade", upgrade.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Streams the rest of the request body to the backend: a `Content-Length` body as it
    /// comes, a chunked one decoded and re-framed.
    async fn stream_body(&mut self, up: &Upstream, conn: &mut Stream) -> Result<(), Attempt> {
        let chunked = self.head.info.chunked;
        loop {
            let mut out = std::mem::take(self.out);
            out.clear();
            let (buf, mut at) = (&self.buf[..], self.at);
            let taken = self.body.take(buf, &mut at, &mut |d: &[u8]| {
                if chunked {
                    vivgate_parse::chunked::encode(d, &mut out);
                } else {
                    out.extend_from_slice(d);
                }
            });
            self.at = at;
            if let Err(e) = taken {
                *self.out = out;
                return Err(Attempt::Client(e));
            }
            let done = self.body.is_done();
            if done && chunked {
                out.extend_from_slice(vivgate_parse::chunked::LAST_CHUNK);
            }
            let sent = if out.is_empty() {
                Ok(())
            } else {
                within(up.write_timeout, write(conn, &out)).await
            };
            *self.out = out;
            if let Err(e) = sent {
                return Err(Attempt::Failed(upstream_error(&e)));
            }
            if done {
                return Ok(());
            }
            self.fill().await.map_err(Attempt::Client)?;
        }
    }
}
