//! The front of every client connection: the connection cap, the PROXY header and the TLS
//! handshake, then HTTP/2 to pingora's server, or HTTP/1 here. For HTTP/1 it reads each request
//! head itself, with a whole-head deadline and byte and line limits, refuses ambiguous framing
//! ([`vivgate_parse::head`]), and answers every such refusal with the envelope and a close; an
//! accepted head goes to vivgate's own HTTP/1 path ([`crate::forward`]), and the connection
//! comes back here between requests. It also holds the per-connection request cap.

use std::io::Write as _;

use std::sync::Arc;

use std::time::Duration;

use async_trait::async_trait;

use bytes::BytesMut;

use std::os::fd::AsRawFd as _;

use pingora::apps::{HttpServerApp, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::listeners::ALPN;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Ssl as _, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use vivgate_parse::chunked::ChunkedCheck;
use vivgate_parse::head::{HeadInfo, HeadScanner};

use crate::config::Limits;
use crate::error::{GatewayError, ALLOW_ALL};
use crate::gateway::Gateway;
use crate::proxy::VivGate;
use crate::respond::Reply;

use http::HeaderName;

/// A stream wrapper's traits other than `AsyncRead`, each passed through to `self.inner` (a
/// [`Stream`]): writes, shutdown, id, TLS, digests, peek.
macro_rules! pass_through_io {
    ($t:ty) => {
        impl tokio::io::AsyncWrite for $t {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }
            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }
            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }

        #[async_trait::async_trait]
        impl pingora::protocols::Shutdown for $t {
            async fn shutdown(&mut self) {
                <dyn pingora::protocols::IO as pingora::protocols::Shutdown>::shutdown(
                    &mut *self.inner,
                )
                .await
            }
        }

        impl pingora::protocols::UniqueID for $t {
            fn id(&self) -> pingora::protocols::UniqueIDType {
                self.inner.id()
            }
        }

        impl pingora::protocols::Ssl for $t {
            fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
                self.inner.get_ssl()
            }
            fn get_ssl_digest(&self) -> Option<std::sync::Arc<pingora::protocols::tls::SslDigest>> {
                self.inner.get_ssl_digest()
            }
            fn selected_alpn_proto(&self) -> Option<pingora::listeners::ALPN> {
                self.inner.selected_alpn_proto()
            }
        }

        impl pingora::protocols::GetTimingDigest for $t {
            fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
                self.inner.get_timing_digest()
            }
        }

        impl pingora::protocols::GetProxyDigest for $t {
            fn get_proxy_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora::protocols::raw_connect::ProxyDigest>> {
                self.inner.get_proxy_digest()
            }
        }

        impl pingora::protocols::GetSocketDigest for $t {
            fn get_socket_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora::protocols::SocketDigest>> {
                self.inner.get_socket_digest()
            }
        }

        impl pingora::protocols::Peek for $t {}
    };
}

mod head;
mod preface;
mod proxy_protocol;

use head::*;
use preface::*;
use proxy_protocol::*;

/// First read buffer; grows up to the head limit (plus what one read brings past it).
const INITIAL_BUF: usize = 4096;
/// After a refusal: how long, and how many bytes, the rest of the client's request is read and
/// discarded so the answer is not lost to a reset.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// How long writing a refusal may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The application of one listener: the PROXY header and the TLS handshake if the listener has
/// them, then HTTP/2 (pingora's, by ALPN or h2c prior knowledge) or HTTP/1 with vivgate's checks
/// on the raw head, then pingora's proxy.
pub struct Front {
    gw: Arc<Gateway>,
    upstreams: crate::forward::Upstreams,
    proxy: Arc<HttpProxy<VivGate>>,
    listener: ListenerSettings,
}

/// What a listener does before HTTP.
#[derive(Default)]
pub struct ListenerSettings {
    /// Every connection starts with a PROXY protocol header (v1 or v2).
    pub proxy_protocol: bool,
    /// Terminate TLS with this acceptor.
    pub tls: Option<Acceptor>,
    /// Plain HTTP/2 with prior knowledge is accepted.
    pub h2c: bool,
}

/// Why reading a head ended without one.
enum NoHead {
    /// The client closed, went idle, or the server is stopping: nothing to answer.
    Closed,
    /// Answer with this envelope and close.
    Refuse(GatewayError),
}

impl Front {
    pub fn new(
        gw: Arc<Gateway>,
        proxy: Arc<HttpProxy<VivGate>>,
        listener: ListenerSettings,
    ) -> Self {
        Front {
            gw,
            upstreams: Default::default(),
            proxy,
            listener,
        }
    }

    async fn connection(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let limits = self.gw.snapshot().limits;
        let Some(_open) = self.gw.open_connection(limits.max_connections) else {
            if self.listener.tls.is_none() && !self.listener.proxy_protocol {
                self.refuse(stream, GatewayError::TooManyConnections, &[])
                    .await;
            }
            return;
        };
        let plain = self.listener.tls.is_none() && !self.listener.proxy_protocol;
        // one deadline from the connection's start: a PROXY header, a handshake and the first
        // head together
        let first_by = Instant::now() + limits.head_timeout;
        let stream = if plain && !self.listener.h2c {
            stream
        } else {
            match self.before_http(stream, first_by).await {
                Some((s, false)) => s,
                Some((s, true)) => {
                    // pingora's HTTP/2 server: its stream limits come from `h2_options`
                    ServerApp::process_new(&self.proxy, s, shutdown).await;
                    return;
                }
                None => return,
            }
        };
        self.http1(stream, &limits, first_by, shutdown).await;
    }

    /// The PROXY header, the TLS handshake and the protocol choice, all within the head
    /// deadline. `None`: the connection is closed (a missing or untrusted PROXY header, a failed
    /// handshake, silence). The flag is true for HTTP/2.
    async fn before_http(&self, stream: Stream, deadline: Instant) -> Option<(Stream, bool)> {
        let mut l4: Box<L4Stream> = stream.into_any().downcast().ok()?;
        if self.listener.proxy_protocol {
            let trusted = self.gw.snapshot().trusted_proxies.clone();
            if let Err(why) = read_proxy_header(&mut l4, &trusted, deadline).await {
                self.gw
                    .metrics()
                    .rejections
                    .with_label_values(&["proxy_protocol"])
                    .inc();
                tracing::debug!(why, "connection closed: PROXY protocol");
                return None;
            }
        }
        if let Some(acceptor) = &self.listener.tls {
            let tls = match tokio::time::timeout_at(deadline, acceptor.tls_handshake(*l4)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return None;
                }
            };
            if matches!(tls.selected_alpn_proto(), Some(ALPN::H2)) {
                // pingora's HTTP/2 handshake waits for the preface without a limit
                let preface = PrefaceBy::new(Box::new(tls), deadline);
                return Some((Box::new(preface), true));
            }
            return Some((Box::new(tls), false));
        }
        let h2 = self.listener.h2c && sniff_preface(&mut l4, deadline).await?;
        Some((l4, h2))
    }

    /// vivgate's own HTTP/1 path ([`crate::forward`]): the connection's buffers live as long
    /// as it does, and bytes the client sent after a request are the next one's start.
    async fn http1(
        &self,
        mut stream: Stream,
        limits: &Limits,
        first_by: Instant,
        shutdown: &ShutdownWatch,
    ) {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let mut served: u32 = 0;
        let mut stop = shutdown.clone();
        let mut bufs = crate::forward::Buffers::default();
        loop {
            // each request is read with the limits in force when it starts
            let snap = self.gw.snapshot();
            let limits = if served == 0 { *limits } else { snap.limits };
            let first = (served == 0).then_some(first_by);
            let head = match read_head(&mut stream, &mut bufs.req, &limits, first, &mut stop).await
            {
                Ok(head) => head,
                Err(NoHead::Closed) => return,
                Err(NoHead::Refuse(e)) => {
                    self.refuse(stream, e, &bufs.req).await;
                    return;
                }
            };
            served += 1;
            let keep = limits
                .max_requests_per_connection
                .is_none_or(|max| served < max)
                && !*stop.borrow();
            if head.server_options {
                let again = keep
                    && head.keep_alive
                    && !head.chunked
                    && head.content_length.unwrap_or(0) == 0
                    && bufs.req.len() == head.len;
                if !self.server_options(&mut stream, again).await || !again {
                    return;
                }
                bufs.req.clear();
                continue;
            }
            if head.chunked {
                // the body's bytes that came with the head are checked before any step runs (the
                // rest by the decoder that forwards them)
                if let Err(e) = ChunkedCheck::new().feed(&bufs.req[head.len..]) {
                    tracing::debug!(reason = e.0, "chunked request body refused");
                    self.refuse(stream, GatewayError::Malformed(e.0), &bufs.req)
                        .await;
                    return;
                }
            }
            let next = crate::forward::exchange(
                &self.gw,
                &self.upstreams,
                snap,
                &mut stream,
                &mut bufs,
                head,
                peer,
                keep,
            )
            .await;
            if let crate::forward::Next::Close { unread } = next {
                let shut = tokio::time::timeout(WRITE_TIMEOUT, stream.shutdown()).await;
                if unread && matches!(shut, Ok(Ok(()))) {
                    linger(&mut stream).await;
                }
                return;
            }
        }
    }

    /// Answers `OPTIONS *` (RFC 9110 §9.3.7) with 204 and the methods the gateway takes: a
    /// fixed list, not the routes', so nothing about them can be probed. `keep`: the
    /// connection stays open for another request. False when the answer could not be written.
    async fn server_options(&self, stream: &mut Stream, keep: bool) -> bool {
        let metrics = self.gw.metrics();
        metrics.requests.with_label_values(&["none", "204"]).inc();
        let id = self.gw.next_request_id();
        let reply = Reply::other(204, "", Vec::new())
            .with(
                http::header::ALLOW,
                http::HeaderValue::from_static(ALLOW_ALL),
            )
            .with(HeaderName::from_static("x-request-id"), id);
        let out = reply.http1(if keep { b"" } else { b"connection: close\r\n" });
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            stream.write_all(&out).await?;
            stream.flush().await
        })
        .await;
        matches!(written, Ok(Ok(())))
    }

    /// Writes the envelope for `e` with `Connection: close`, then lingers briefly so the client
    /// reads it before the socket closes. `head` is what arrived of the request head: with
    /// `[cors]`, an allowed `Origin` line in it gets the CORS headers, as every other envelope.
    async fn refuse(&self, mut stream: Stream, e: GatewayError, head: &[u8]) {
        let metrics = self.gw.metrics();
        let status =
            http::StatusCode::from_u16(e.status()).unwrap_or(http::StatusCode::BAD_REQUEST);
        metrics
            .requests
            .with_label_values(&["none", status.as_str()])
            .inc();
        metrics.rejections.with_label_values(&[e.reason()]).inc();
        tracing::debug!(reason = e.reason(), "request refused before parsing");
        // (no quota was checked: a refusal here is never a 402)
        let reply = Reply::error(&e, || 0);
        let mut extra = Vec::with_capacity(160);
        let id = self.gw.next_request_id();
        let _ = write!(
            extra,
            "connection: close\r\nx-request-id: {}\r\n",
            id.to_str().unwrap_or("")
        );
        if let Some(cors) = &self.gw.snapshot().cors {
            extra.extend_from_slice(b"vary: Origin\r\n");
            if let Some(origin) = origin_line(head).filter(|o| cors.origins.contains(*o)) {
                let _ = write!(
                    extra,
                    "access-control-allow-origin: {origin}\r\naccess-control-expose-headers: {}\r\n",
                    crate::config::CORS_EXPOSE_HEADERS
                );
            }
        }
        let out = reply.http1(&extra);
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            stream.write_all(&out).await?;
            stream.shutdown().await
        })
        .await;
        // over the connection cap, nothing more is spent on the connection
        if !matches!(written, Ok(Ok(()))) || e == GatewayError::TooManyConnections {
            return;
        }
        linger(&mut stream).await;
    }
}

/// After the answer and a shutdown of the write side: reads and drops what the client still
/// sends (at most `LINGER_BYTES`, for at most `LINGER_TIME`), so that the close does not reset
/// the connection before the client has read the answer.
async fn linger(stream: &mut Stream) {
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

#[async_trait]
impl ServerApp for Front {
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

#[cfg(test)]
mod tests {
    use super::origin_line;

    #[test]
    fn the_origin_line_is_read_from_whole_lines_only() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nOrigin: https://app.example\r\nX: y\r\n\r\n";
        assert_eq!(origin_line(head), Some("https://app.example"));
        // a cut head: the line counts once its line end arrived
        assert_eq!(
            origin_line(b"GET / HTTP/1.1\r\norigin:  https://a.example \r\nX-Lon"),
            Some("https://a.example")
        );
        assert_eq!(
            origin_line(b"GET / HTTP/1.1\r\nOrigin: https://a.exa"),
            None
        );
        // two of them, or none
        assert_eq!(
            origin_line(b"GET / HTTP/1.1\r\nOrigin: https://a\r\nOrigin: https://b\r\n\r\n"),
            None
        );
        assert_eq!(origin_line(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), None);
        // the request line is not a header, and the body is not read
        assert_eq!(
            origin_line(b"GET /origin: HTTP/1.1\r\n\r\nOrigin: x\r\n"),
            None
        );
        assert_eq!(origin_line(b""), None);
        // a malformed head: the whole lines before the break count
        assert_eq!(
            origin_line(b"GET / HTTP/1.1\r\nOrigin: https://a\r\nX: a\nOrigin: https://b\r\n"),
            Some("https://a")
        );
    }
}
