//! vivgate's own HTTP/1 forwarding path (issue 16): after the front accepted a request head,
//! [`exchange`] runs the same [`pipeline`] as the HTTP/2 path, answers a refusal itself, or
//! forwards the request on a pooled upstream connection and streams the answer back, with the
//! rules of [`crate::exchange`] for headers, charging, metering and logging.
//!
//! It is a loop of its own over the raw streams with buffers kept per connection, httparse for
//! heads and the strict chunk decoder of `vivgate-parse` both ways (prototype (b) of the issue;
//! `benches/README.md` has the measurements that chose it over pingora-core's v1 sessions).
//!
//! What goes to the backend: `HTTP/1.1`, the request line with the canonical path, the client's
//! header lines in their order and spelling minus credentials, `Expect`, the hop-by-hop headers
//! (and those `Connection` names), the stripped headers of [`crate::exchange::STRIPPED`] and
//! the framing headers; then the gateway's identity headers and framing: `Content-Length` for
//! a body of known size (a JSON body is sent as read), `Transfer-Encoding: chunked` with the
//! data re-framed for a chunked one. A body is sent whole before the answer is read.
//!
//! What goes to the client: the backend's status and header lines minus the hop-by-hop and
//! framing headers, the gateway's answer headers, and its own framing: `Content-Length` when
//! the backend gave one, otherwise chunked for an HTTP/1.1 client (the data re-framed) or the
//! body until close for HTTP/1.0.

use std::net::IpAddr;
use std::time::Duration;

use bytes::BytesMut;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use pingora::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vivgate_parse::chunked::ChunkedCheck;
use vivgate_parse::head::{HeadInfo, MAX_HEADERS_CAP};

use crate::config::{Limits, Snapshot};
use crate::error::GatewayError;
use crate::exchange::{Done, Exchange, X_REQUEST_ID};
use crate::gateway::Gateway;
use crate::pipeline::{self, Outcome, Request, Transport};
use crate::respond::Reply;

mod pool;
mod request;
mod response;
mod upstream;

pub use pool::Upstreams;
use request::*;

/// How long a refused request's unread body may take to drain before the connection closes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the client connection does after one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read the next request.
    KeepAlive,
    /// Close the connection. `unread`: the client sent bytes that were not read (a body, or
    /// what followed the request), so the close should linger for the answer to be read.
    Close { unread: bool },
}

/// Buffers kept for a client connection's whole life.
#[derive(Default)]
pub struct Buffers {
    /// The request head and what followed it.
    pub req: BytesMut,
    /// The backend's answer as it arrives.
    resp: BytesMut,
    /// What is written next, to either side.
    out: Vec<u8>,
    /// The request's header map, emptied after each request (its capacity stays).
    headers: HeaderMap,
}

/// One request on a client connection.
pub(crate) struct Conn<'c> {
    gw: &'c Gateway,
    ups: &'c Upstreams,
    stream: &'c mut Stream,
    head: ClientHead,
    /// What followed the head: body, or the next request's bytes, from `at` on.
    buf: &'c mut BytesMut,
    at: usize,
    resp: &'c mut BytesMut,
    out: &'c mut Vec<u8>,
    body: BodyIn,
    /// A JSON body read whole for step 6: forwarded as read.
    json: Option<Vec<u8>>,
    continue_sent: bool,
    /// The connection cannot serve another request.
    close: bool,
    limits: Limits,
    client: Option<IpAddr>,
    peer: Option<IpAddr>,
    bytes_in: usize,
    bytes_out: usize,
    /// The status written to the client.
    status: Option<u16>,
}

/// Serves the request whose head (`info`, accepted by the front) starts `bufs.req`. `keep`:
/// the connection may serve another request after this one (the request cap allows it).
/// On [`Next::KeepAlive`] the buffers are empty, ready for the next request.
#[allow(clippy::too_many_arguments)]
pub async fn exchange(
    gw: &Gateway,
    ups: &Upstreams,
    snap: std::sync::Arc<Snapshot>,
    stream: &mut Stream,
    bufs: &mut Buffers,
    info: HeadInfo,
    peer: Option<IpAddr>,
    keep: bool,
) -> Next {
    // the head leaves the buffer (no copy: both share its allocation until the head is
    // dropped at the end of the exchange); what follows it stays
    let raw = bufs.req.split_to(info.len).freeze();
    let Some(head) = ClientHead::parse(raw, info, std::mem::take(&mut bufs.headers)) else {
        // the front's rules held, so this is not expected
        tracing::warn!("an accepted request head could not be parsed");
        return Next::Close { unread: true };
    };
    let mut ex = Exchange {
        request_id: match head.headers.get(X_REQUEST_ID) {
            Some(v) if pipeline::valid_request_id(v.as_bytes()) => v.clone(),
            _ => gw.next_request_id(),
        },
        client_ip: pipeline::head::client_ip(peer, &head.headers, &snap.trusted_proxies),
        ..Exchange::default()
    };
    let mut c = Conn {
        gw,
        ups,
        stream,
        body: BodyIn::new(&head.info),
        at: 0,
        head,
        buf: &mut bufs.req,
        resp: &mut bufs.resp,
        out: &mut bufs.out,
        json: None,
        continue_sent: false,
        close: !(info.keep_alive && keep),
        limits: snap.limits,
        client: ex.client_ip,
        peer,
        bytes_in: info.len,
        bytes_out: 0,
        status: None,
    };
    let outcome = pipeline::run(gw, &snap, &mut c, &mut ex.p).await;
    match outcome {
        Ok(Outcome::Forward) => {
            ex.snap = Some(snap);
            c.forward(&mut ex).await;
        }
        Ok(Outcome::Preflight) => {
            let reply = match &snap.cors {
                Some(cors) => ex.preflight_reply(cors),
                None => ex.error_reply(&GatewayError::Internal),
            };
            c.answer(&ex, reply, false).await;
        }
        Ok(Outcome::OwnUsage(group)) => {
            let reply = crate::exchange::own_usage_reply(gw, &group);
            c.answer(&ex, reply, true).await;
        }
        Err(e) => {
            ex.rejected = Some(e.reason());
            if matches!(e, GatewayError::Malformed(_) | GatewayError::AuthBlocked(_)) {
                // a request the gateway could not read unambiguously ends the connection; so
                // does a blocked client's, so it cannot idle on a connection slot
                c.close = true;
            }
            let reply = ex.error_reply(&e);
            c.answer(&ex, reply, true).await;
        }
    }
    let (path, query) = {
        let target = std::str::from_utf8(&c.head.raw[c.head.target.clone()]).unwrap_or("");
        match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        }
    };
    ex.finish(
        gw,
        &Done {
            method: c.head.method.as_str(),
            path,
            query,
            status: c.status,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
        },
    );
    let unread = !c.body.is_done() || c.pipelined();
    let close = c.close || unread;
    let mut headers = c.head.headers;
    headers.clear();
    bufs.headers = headers;
    if close {
        return Next::Close { unread };
    }
    bufs.req.clear();
    Next::KeepAlive
}

impl Conn<'_> {
    /// Writes to the client within `client_write_timeout`.
    async fn client_write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let stream = &mut *self.stream;
        upstream::within(self.limits.client_write_timeout, async {
            stream.write_all(bytes).await?;
            // pingora's streams buffer writes
            stream.flush().await
        })
        .await
    }

    /// Writes one of the gateway's own answers (no body to a `HEAD`) with the gateway's
    /// headers, after dropping a small unread request body so the connection stays usable.
    /// `all_headers`: the answer headers of [`Exchange::answer_headers`]; otherwise (a
    /// preflight) only the request id.
    async fn answer(&mut self, ex: &Exchange, reply: Reply, all_headers: bool) {
        self.drain().await;
        let mut extra = std::mem::take(self.out);
        extra.clear();
        if all_headers {
            ex.answer_headers(self.gw, None, |name, value, _| {
                put_line(&mut extra, name.as_str().as_bytes(), value.as_bytes())
            });
        } else {
            put_line(
                &mut extra,
                X_REQUEST_ID.as_bytes(),
                ex.request_id.as_bytes(),
            );
        }
        extra.extend_from_slice(self.connection_line());
        let mut bytes = reply.http1(&extra);
        if self.head.method == Method::HEAD {
            bytes.truncate(bytes.len() - reply.body.len());
        }
        *self.out = extra;
        self.status = Some(reply.status);
        if self.client_write(&bytes).await.is_err() {
            self.close = true;
        }
    }
}

impl Conn<'_> {
    /// The client sent more after this request's end without waiting for the answer. Like
    /// pingora's, this path does not serve pipelined requests: the connection closes after the
    /// answer, and what followed is never read as a request.
    fn pipelined(&self) -> bool {
        self.body.is_done() && self.at < self.buf.len()
    }

    /// The `Connection` line of an answer: whether the client may send another request.
    fn connection_line(&self) -> &'static [u8] {
        if self.close || self.pipelined() {
            b"connection: close\r\n"
        } else {
            b"connection: keep-alive\r\n"
        }
    }
}

/// Whether the `Connection` header values list `name` (such a header is hop-by-hop).
fn connection_lists<'v>(values: impl Iterator<Item = &'v [u8]>, name: &[u8]) -> bool {
    values
        .flat_map(|v| v.split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
}

/// Appends `name: value` CRLF.
fn put_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
