//! The backend's answer to the client: its head with the gateway's headers and the client
//! connection's own framing, then its body as it arrives; or, after a `101`, a tunnel.

use super::upstream::within;
use super::*;
use crate::config::{Route, Upstream};
use crate::exchange::{Put, HOP_BY_HOP};
use vivgate_parse::response::{Framing, ResponseHead};

/// Write what was gathered of the answer once it reaches this size.
const WRITE_AT: usize = 32 * 1024;

/// The answer's body as it is read.
enum BodyOut {
    Length(u64),
    Chunked(ChunkedCheck),
    UntilClose,
}

impl Conn<'_> {
    /// Relays the answer whose head is at the start of the response buffer. True when the
    /// upstream connection can carry another request.
    pub(super) async fn relay(
        &mut self,
        ex: &mut Exchange,
        up: &Upstream,
        route: &Route,
        conn: &mut Stream,
        head: ResponseHead,
    ) -> bool {
        if head.status == 101 {
            if !(route.upgrade && self.head.upgrade().is_some()) {
                tracing::warn!(route = %route.name, "a 101 answer to a request without an allowed Upgrade");
                self.failed(ex, Some(GatewayError::UpstreamUnreachable))
                    .await;
                return false;
            }
            self.tunnel(ex, up, conn, head).await;
            return false;
        }
        if head.framing == Framing::UntilClose && self.transfer_coded(&head) {
            // e.g. `Transfer-Encoding: gzip`: the gateway does not decode it, and without the
            // header the client could not either
            tracing::warn!(route = %route.name, "an answer in a transfer coding other than chunked");
            self.failed(ex, Some(GatewayError::UpstreamUnreachable))
                .await;
            return false;
        }
        let http11 = self.head.minor >= 1;
        let (mut body, chunked_out) = match head.framing {
            Framing::None => (None, false),
            Framing::Length(n) => (Some(BodyOut::Length(n)), false),
            Framing::Chunked => (Some(BodyOut::Chunked(ChunkedCheck::new())), http11),
            Framing::UntilClose => (Some(BodyOut::UntilClose), http11),
        };
        if !http11 && matches!(head.framing, Framing::Chunked | Framing::UntilClose) {
            // an HTTP/1.0 client learns where the body ends from the close
            self.close = true;
        }
        let mut out = std::mem::take(self.out);
        out.clear();
        self.response_head(ex, &head, chunked_out, &mut out);
        self.status = Some(head.status);
        let mut at = head.len;
        let mut ended = body.is_none();
        let mut reusable = !head.close;
        // body bytes gathered in `out`: metered once they are written
        let mut pending = 0;
        loop {
            // what the buffer holds of the body, into `out`
            if let Some(b) = &mut body {
                let avail = &self.resp[at..];
                let mut data = |d: &[u8], out: &mut Vec<u8>| {
                    pending += d.len();
                    if chunked_out {
                        vivgate_parse::chunked::encode(d, out);
                    } else {
                        out.extend_from_slice(d);
                    }
                };
                match b {
                    BodyOut::Length(left) => {
                        let n = avail
                            .len()
                            .min(usize::try_from(*left).unwrap_or(usize::MAX));
                        data(&avail[..n], &mut out);
                        at += n;
                        *left -= n as u64;
                        ended = *left == 0;
                    }
                    BodyOut::Chunked(c) => match c.decode(avail, |d| data(d, &mut out)) {
                        Ok(n) => {
                            at += n;
                            ended = c.is_done();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "upstream chunked body refused; the answer is cut");
                            self.cut(ex, &mut out, pending).await;
                            return false;
                        }
                    },
                    BodyOut::UntilClose => {
                        data(avail, &mut out);
                        at = self.resp.len();
                    }
                }
            }
            if ended {
                if chunked_out {
                    out.extend_from_slice(vivgate_parse::chunked::LAST_CHUNK);
                }
                // bytes after the answer: the backend cannot be read unambiguously again
                reusable &= at == self.resp.len();
                let written = self.client_write(&out).await;
                *self.out = out;
                if written.is_err() {
                    self.close = true;
                    return false;
                }
                self.bytes_out += pending;
                return reusable;
            }
            if out.len() >= WRITE_AT || at == self.resp.len() {
                if self.client_write(&out).await.is_err() {
                    *self.out = out;
                    self.close = true;
                    return false;
                }
                self.bytes_out += pending;
                pending = 0;
                out.clear();
            }
            self.resp.clear();
            at = 0;
            if self.resp.capacity() < 16 * 1024 {
                self.resp.reserve(16 * 1024);
            }
            match within(up.read_timeout, conn.read_buf(self.resp)).await {
                Ok(0) if matches!(body, Some(BodyOut::UntilClose)) => ended = true,
                Ok(0) | Err(_) => {
                    tracing::warn!(route = %route.name, "the backend's answer ended early; the client connection is closed");
                    self.cut(ex, &mut out, pending).await;
                    return false;
                }
                Ok(_) => {}
            }
        }
    }

    /// The answer's head has a `Transfer-Encoding` (its framing then is not chunked: another
    /// coding).
    fn transfer_coded(&self, head: &ResponseHead) -> bool {
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
        let mut resp = httparse::Response::new(&mut lines);
        let _ = resp.parse(&self.resp[..head.len]);
        resp.headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
    }

    /// An answer cut short: what was gathered goes out, then the client connection closes
    /// (a chunked answer without its last chunk, or fewer bytes than its length, never reads
    /// as complete). `pending`: the body bytes in `out`, metered if they are written.
    async fn cut(&mut self, ex: &mut Exchange, out: &mut Vec<u8>, pending: usize) {
        ex.answer_cut = true;
        if self.client_write(out).await.is_ok() {
            self.bytes_out += pending;
        }
        out.clear();
        self.close = true;
    }

    /// The answer's head for the client (see the module's documentation).
    fn response_head(
        &self,
        ex: &Exchange,
        head: &ResponseHead,
        chunked_out: bool,
        out: &mut Vec<u8>,
    ) {
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
        let mut resp = httparse::Response::new(&mut lines);
        let _ = resp.parse(&self.resp[..head.len]);
        let mut code = itoa::Buffer::new();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(code.format(head.status).as_bytes());
        out.push(b' ');
        out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        let cors = ex.p.cors_origin.is_some();
        let mut length = None;
        // the names the backend's `Connection` lists are hop-by-hop too (looked up without
        // collecting them: no allocation for the common `Connection: keep-alive`)
        let headers = &*resp.headers;
        let listed = |n: &[u8]| {
            connection_lists(
                headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("connection"))
                    .map(|h| h.value),
                n,
            )
        };
        for h in headers {
            let n = h.name.as_bytes();
            if n.eq_ignore_ascii_case(b"content-length") {
                length = Some(h.value);
                continue;
            }
            let upgrade = head.status == 101 && n.eq_ignore_ascii_case(b"upgrade");
            if n.eq_ignore_ascii_case(b"connection")
                || n.eq_ignore_ascii_case(b"transfer-encoding")
                || (!upgrade
                    && HOP_BY_HOP
                        .iter()
                        .any(|hop| n.eq_ignore_ascii_case(hop.as_bytes())))
                || n.eq_ignore_ascii_case(X_REQUEST_ID.as_bytes())
                || n.eq_ignore_ascii_case(b"ratelimit")
                || n.eq_ignore_ascii_case(b"ratelimit-policy")
                || (cors
                    && (n.eq_ignore_ascii_case(b"access-control-allow-origin")
                        || n.eq_ignore_ascii_case(b"access-control-expose-headers")))
                || (!upgrade && listed(n))
            {
                continue;
            }
            put_line(out, n, h.value);
        }
        let served = match head.framing {
            Framing::Length(n) => Some(n),
            _ => None,
        };
        ex.answer_headers(self.gw, served, |name, value, how| {
            debug_assert!(how == Put::Insert || name == header::VARY);
            put_line(out, name.as_str().as_bytes(), value.as_bytes())
        });
        match head.framing {
            Framing::Length(n) => {
                let mut num = itoa::Buffer::new();
                put_line(out, b"content-length", num.format(n).as_bytes());
            }
            // HEAD and 304 say the size the body would have; 1xx and 204 have none
            Framing::None if head.status != 204 && head.status >= 200 => {
                if let Some(len) = length {
                    put_line(out, b"content-length", len);
                }
            }
            Framing::None => {}
            Framing::Chunked | Framing::UntilClose if chunked_out => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n")
            }
            Framing::Chunked | Framing::UntilClose => {}
        }
        if head.status == 101 {
            out.extend_from_slice(b"connection: upgrade\r\n");
        } else {
            out.extend_from_slice(self.connection_line());
        }
        out.extend_from_slice(b"\r\n");
    }

    /// After a `101`: the head goes to the client, then bytes flow both ways until either side
    /// closes.
    async fn tunnel(
        &mut self,
        ex: &mut Exchange,
        up: &Upstream,
        conn: &mut Stream,
        head: ResponseHead,
    ) {
        self.close = true;
        let mut out = std::mem::take(self.out);
        out.clear();
        self.response_head(ex, &head, false, &mut out);
        self.status = Some(101);
        // the backend's first bytes of the new protocol (unmetered, as the tunnel)
        out.extend_from_slice(&self.resp[head.len..]);
        let written = self.client_write(&out).await;
        *self.out = out;
        if written.is_err() {
            return;
        }
        // what the client sent after its head belongs to the new protocol
        if self.at < self.buf.len() {
            let sent = within(
                up.write_timeout,
                super::upstream::write(conn, &self.buf[self.at..]),
            )
            .await;
            self.at = self.buf.len();
            if sent.is_err() {
                return;
            }
        }
        // (a tunnel escapes byte metering, as the README says: only the bytes before it count)
        let (to_backend, to_client) = pump(
            self.stream,
            conn,
            self.limits.keepalive_timeout,
            (up.write_timeout, self.limits.client_write_timeout),
        )
        .await;
        tracing::debug!(to_backend, to_client, "tunnel closed");
    }
}

/// Copies bytes both ways until either side closes or fails, a write takes longer than its
/// timeout (`writes`: to the backend, to the client), or no byte has moved either way for `idle`
/// (a tunnel must not hold a connection slot and a backend connection forever). Returns the
/// bytes sent to the backend and to the client.
async fn pump(
    client: &mut Stream,
    backend: &mut Stream,
    idle: Duration,
    writes: (Duration, Duration),
) -> (u64, u64) {
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut to_backend, mut to_client) = (0u64, 0u64);
    loop {
        let read = tokio::time::timeout(idle, async {
            tokio::select! {
                r = client.read(&mut up) => (true, r),
                r = backend.read(&mut down) => (false, r),
            }
        })
        .await;
        let (from_client, n) = match read {
            Ok((from_client, Ok(n))) if n > 0 => (from_client, n),
            // a close, an error, or the idle limit: the tunnel ends
            _ => return (to_backend, to_client),
        };
        let written = if from_client {
            to_backend += n as u64;
            within(writes.0, super::upstream::write(backend, &up[..n])).await
        } else {
            to_client += n as u64;
            within(writes.1, super::upstream::write(client, &down[..n])).await
        };
        if written.is_err() {
            return (to_backend, to_client);
        }
    }
}
