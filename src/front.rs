//! The thin front before pingora's HTTP/1 parser (DESIGN.md): it reads each request head
//! itself, with a whole-head deadline and byte and line limits, refuses ambiguous framing
//! ([`vivgate_parse::head`]), and answers every such refusal with the envelope and a close —
//! where pingora would send an empty 400 or 405, or wait on a slow client for as long as it
//! keeps sending. An accepted head is handed to pingora as the session's first bytes, so it is
//! parsed by the same code that proxies it, and the connection comes back here between
//! requests. It also holds the connection cap and the per-connection request cap.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use vivgate_parse::head::{HeadError, HeadScanner};

use crate::config::Limits;
use crate::error::{envelope, GatewayError};
use crate::gateway::Gateway;
use crate::proxy::VivGate;
use crate::usage::UsageStore;

/// First read buffer; grows up to the head limit (plus what one read brings past it).
const INITIAL_BUF: usize = 4096;
/// After a refusal: how long, and how many bytes, the rest of the client's request is read and
/// discarded so the answer is not lost to a reset.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// How long writing a refusal may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The HTTP/1 application: vivgate's checks on the raw head, then pingora's proxy.
pub struct Front<S: UsageStore> {
    gw: Arc<Gateway<S>>,
    proxy: Arc<HttpProxy<VivGate<S>>>,
}

/// Why reading a head ended without one.
enum NoHead {
    /// The client closed, went idle, or the server is stopping: nothing to answer.
    Closed,
    /// Answer with this envelope and close.
    Refuse(GatewayError),
}

impl<S: UsageStore> Front<S> {
    pub fn new(gw: Arc<Gateway<S>>, proxy: Arc<HttpProxy<VivGate<S>>>) -> Self {
        Front { gw, proxy }
    }

    async fn connection(&self, mut stream: Stream, shutdown: &ShutdownWatch) {
        let limits = self.gw.snapshot().limits;
        let Some(_open) = self.gw.open_connection(limits.max_connections) else {
            self.refuse(stream, GatewayError::TooManyConnections).await;
            return;
        };
        let mut served: u32 = 0;
        loop {
            let mut buf = BytesMut::with_capacity(INITIAL_BUF);
            match read_head(&mut stream, &mut buf, &limits, served == 0, shutdown).await {
                Ok(()) => {}
                Err(NoHead::Closed) => return,
                Err(NoHead::Refuse(e)) => {
                    self.refuse(stream, e).await;
                    return;
                }
            }
            served += 1;
            let mut session = ServerSession::new_http1(stream);
            // pingora parses the head from these bytes without reading again
            session.set_pipelined_prefix(buf);
            session.set_read_timeout(Some(limits.body_idle_timeout));
            session.set_write_timeout(Some(limits.client_write_timeout));
            if let Some(max) = limits.max_requests_per_connection {
                session.set_keepalive_reuses_remaining(Some(max.saturating_sub(served)));
            }
            let Some(reused) = self.proxy.process_new_http(session, shutdown).await else {
                return;
            };
            // pingora's pipelining is off, so a reused stream carries no bytes of the next
            // request (with overread bytes pingora closes instead): the next head starts here
            stream = reused.consume().0;
        }
    }

    /// Writes the envelope for `e` with `Connection: close`, then lingers briefly so the client
    /// reads it before the socket closes.
    async fn refuse(&self, mut stream: Stream, e: GatewayError) {
        let metrics = self.gw.metrics();
        let status =
            http::StatusCode::from_u16(e.status()).unwrap_or(http::StatusCode::BAD_REQUEST);
        metrics
            .requests
            .with_label_values(&["none", status.as_str()])
            .inc();
        metrics.rejections.with_label_values(&[e.reason()]).inc();
        tracing::debug!(reason = e.reason(), "request refused before parsing");
        let body = envelope(&e.message());
        let id = self.gw.next_request_id();
        let mut out = Vec::with_capacity(256 + body.len());
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\nx-request-id: {}\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or(""),
            body.len(),
            id.to_str().unwrap_or(""),
        );
        match e {
            GatewayError::ConnectNotAllowed => {
                out.extend_from_slice(b"allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n")
            }
            GatewayError::TooManyConnections => out.extend_from_slice(b"retry-after: 1\r\n"),
            _ => {}
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            stream.write_all(&out).await?;
            stream.shutdown().await
        })
        .await;
        // over the connection cap, nothing more is spent on the connection
        if !matches!(written, Ok(Ok(()))) || e == GatewayError::TooManyConnections {
            return;
        }
        let _ = tokio::time::timeout(LINGER_TIME, async {
            let mut sink = [0u8; 4096];
            let mut total = 0;
            while total < LINGER_BYTES {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
    }
}

/// Reads one request head into `buf`. The first request of a connection must arrive whole
/// within `head_timeout` of the connection; a later one may idle up to `keepalive_timeout`,
/// then must arrive whole within `head_timeout` of its first byte. A stop ends the wait for a
/// request that has not started.
async fn read_head(
    stream: &mut Stream,
    buf: &mut BytesMut,
    limits: &Limits,
    first: bool,
    shutdown: &ShutdownWatch,
) -> Result<(), NoHead> {
    let mut scanner = HeadScanner::new();
    let mut deadline = first.then(|| Instant::now() + limits.head_timeout);
    let mut shutdown = shutdown.clone();
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(INITIAL_BUF);
        }
        let started = !buf.is_empty();
        let wait_until = deadline.unwrap_or_else(|| Instant::now() + limits.keepalive_timeout);
        let read = tokio::time::timeout_at(wait_until, stream.read_buf(buf));
        let result = if started {
            read.await
        } else {
            tokio::select! {
                biased;
                r = read => r,
                _ = stopped(&mut shutdown) => return Err(NoHead::Closed),
            }
        };
        match result {
            // a head that started but did not finish in time is answered; silence is not
            Err(_) if started => return Err(NoHead::Refuse(GatewayError::HeadTimeout)),
            Err(_) => return Err(NoHead::Closed),
            Ok(Err(_)) | Ok(Ok(0)) => return Err(NoHead::Closed),
            Ok(Ok(_)) => {}
        }
        if deadline.is_none() {
            deadline = Some(Instant::now() + limits.head_timeout);
        }
        match scanner.scan(buf, limits.head) {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {}
            Err(e) => return Err(NoHead::Refuse(refusal(e))),
        }
    }
}

/// Resolves once the server is stopping (never, if the stop signal is gone).
async fn stopped(w: &mut ShutdownWatch) {
    loop {
        if *w.borrow() {
            return;
        }
        if w.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn refusal(e: HeadError) -> GatewayError {
    match e {
        HeadError::TooLarge | HeadError::TooManyHeaders => GatewayError::HeadTooLarge,
        HeadError::Malformed(why) | HeadError::Framing(why) => GatewayError::Malformed(why),
        HeadError::NotOriginForm => {
            GatewayError::Malformed("the request target must be a path starting with /")
        }
        HeadError::Connect => GatewayError::ConnectNotAllowed,
    }
}

#[async_trait]
impl<S: UsageStore> ServerApp for Front<S> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.connection(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}
