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
use std::os::fd::AsRawFd as _;

use pingora::apps::{HttpServerApp, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::listeners::ALPN;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Ssl as _, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use vivgate_parse::chunked::ChunkedCheck;
use vivgate_parse::head::{HeadError, HeadInfo, HeadScanner};

use crate::config::Limits;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::proxy::VivGate;
use crate::respond::Reply;
use crate::usage::UsageStore;
use http::HeaderName;

mod chunked;
use chunked::ChunkGuard;

/// First read buffer; grows up to the head limit (plus what one read brings past it).
const INITIAL_BUF: usize = 4096;
/// After a refusal: how long, and how many bytes, the rest of the client's request is read and
/// discarded so the answer is not lost to a reset.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// How long writing a refusal may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The methods the gateway takes at all (`OPTIONS *`, and the `Allow` of a `CONNECT` refusal).
pub const ALLOW_ALL: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// The application of one listener: the PROXY header and the TLS handshake if the listener has
/// them, then HTTP/2 (pingora's, by ALPN or h2c prior knowledge) or HTTP/1 with vivgate's checks
/// on the raw head, then pingora's proxy.
pub struct Front<S: UsageStore> {
    gw: Arc<Gateway<S>>,
    proxy: Arc<HttpProxy<VivGate<S>>>,
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

/// The HTTP/2 client preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest PROXY header read: a v1 line is at most 107 bytes, a v2 header 16 plus its
/// addresses and TLVs (a few hundred in practice).
const MAX_PROXY_HEADER: usize = 4096;

/// Why reading a head ended without one.
enum NoHead {
    /// The client closed, went idle, or the server is stopping: nothing to answer.
    Closed,
    /// Answer with this envelope and close.
    Refuse(GatewayError),
}

impl<S: UsageStore> Front<S> {
    pub fn new(
        gw: Arc<Gateway<S>>,
        proxy: Arc<HttpProxy<VivGate<S>>>,
        listener: ListenerSettings,
    ) -> Self {
        Front {
            gw,
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

    async fn http1(
        &self,
        mut stream: Stream,
        limits: &Limits,
        first_by: Instant,
        shutdown: &ShutdownWatch,
    ) {
        let limits = *limits;
        let mut served: u32 = 0;
        let mut stop = shutdown.clone();
        loop {
            let mut buf = BytesMut::with_capacity(INITIAL_BUF);
            let first = (served == 0).then_some(first_by);
            let head = match read_head(&mut stream, &mut buf, &limits, first, &mut stop).await {
                Ok(head) => head,
                Err(NoHead::Closed) => return,
                Err(NoHead::Refuse(e)) => {
                    self.refuse(stream, e, &buf).await;
                    return;
                }
            };
            if head.server_options {
                // `OPTIONS *`: about the server, not a resource; no key, nothing forwarded
                served += 1;
                let again = head.keep_alive
                    && !head.chunked
                    && head.content_length.unwrap_or(0) == 0
                    && buf.len() == head.len
                    && limits
                        .max_requests_per_connection
                        .is_none_or(|max| served < max);
                if !self.server_options(&mut stream, again).await || !again {
                    return;
                }
                continue;
            }
            // a chunked body is checked strictly as it arrives: what came with the head now,
            // the rest through the guard, before pingora's parser sees it
            let mut guarded = false;
            if head.chunked {
                let mut check = ChunkedCheck::new();
                if let Err(e) = check.feed(&buf[head.len..]) {
                    tracing::debug!(reason = e.0, "chunked request body refused");
                    self.refuse(stream, GatewayError::Malformed(e.0), &buf)
                        .await;
                    return;
                }
                if !check.is_done() {
                    stream = Box::new(ChunkGuard::new(stream, check));
                    guarded = true;
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
            if guarded {
                let Some(inner) = ChunkGuard::unwrap(stream) else {
                    return;
                };
                stream = inner;
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

/// The value of the one complete `Origin` line among the header lines that arrived (the head
/// may be cut short: a line counts once its CRLF is in); `None` without one, with two, or when
/// it is not plain text.
fn origin_line(head: &[u8]) -> Option<&str> {
    // what follows the last LF is not a whole line yet
    let whole = &head[..head.iter().rposition(|b| *b == b'\n')?];
    let mut found = None;
    // the request line first, then header lines up to the blank line
    for line in whole.split(|b| *b == b'\n').skip(1) {
        // a bare LF: the head is broken from here on
        let Some(line) = line.strip_suffix(b"\r") else {
            break;
        };
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if line[..colon].eq_ignore_ascii_case(b"origin") {
            if found.is_some() {
                return None;
            }
            let value = std::str::from_utf8(&line[colon + 1..]).ok()?;
            found = Some(value.trim_matches([' ', '\t']));
        }
    }
    found
}

/// Reads one request head into `buf`. The first request of a connection must arrive whole
/// by `first` (`head_timeout` after the connection began); a later one may idle up to `keepalive_timeout`,
/// then must arrive whole within `head_timeout` of its first byte. A stop ends the wait for a
/// request that has not started.
async fn read_head(
    stream: &mut Stream,
    buf: &mut BytesMut,
    limits: &Limits,
    first: Option<Instant>,
    shutdown: &mut ShutdownWatch,
) -> Result<HeadInfo, NoHead> {
    let mut scanner = HeadScanner::new();
    let mut deadline = first;
    let mut request_line = false;
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
                _ = stopped(shutdown) => return Err(NoHead::Closed),
            }
        };
        match result {
            // a head that started but did not finish in time is answered; silence is not
            Err(_) if started => return Err(NoHead::Refuse(GatewayError::HeadTimeout)),
            Err(_) => return Err(NoHead::Closed),
            Ok(Err(_)) | Ok(Ok(0)) => return Err(NoHead::Closed),
            Ok(Ok(_)) => {}
        }
        if !request_line {
            // HTTP/1.2 and up are served as HTTP/1.1
            request_line = vivgate_parse::head::normalize_minor_version(buf);
        }
        match scanner.scan(buf, limits.head) {
            Ok(Some(head)) => return Ok(head),
            Ok(None) => {}
            Err(e) => return Err(NoHead::Refuse(refusal(e))),
        }
        // a head that started must now arrive whole (the clock is read only for a split head)
        if deadline.is_none() {
            deadline = Some(Instant::now() + limits.head_timeout);
        }
    }
}

/// A stream whose first bytes (the HTTP/2 client preface) must arrive by a deadline: a read
/// still waiting for them then fails with `TimedOut`. Everything else passes through.
#[derive(Debug)]
struct PrefaceBy {
    inner: Stream,
    left: usize,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl PrefaceBy {
    fn new(inner: Stream, deadline: Instant) -> Self {
        PrefaceBy {
            inner,
            left: H2_PREFACE.len(),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }
}

impl tokio::io::AsyncRead for PrefaceBy {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.left = this.left.saturating_sub(buf.filled().len() - before);
                Poll::Ready(Ok(()))
            }
            Poll::Pending
                if this.left > 0
                    && std::future::Future::poll(this.deadline.as_mut(), cx).is_ready() =>
            {
                Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()))
            }
            other => other,
        }
    }
}

impl tokio::io::AsyncWrite for PrefaceBy {
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

#[async_trait]
impl pingora::protocols::Shutdown for PrefaceBy {
    async fn shutdown(&mut self) {
        <dyn pingora::protocols::IO as pingora::protocols::Shutdown>::shutdown(&mut *self.inner)
            .await
    }
}

impl pingora::protocols::UniqueID for PrefaceBy {
    fn id(&self) -> pingora::protocols::UniqueIDType {
        self.inner.id()
    }
}

impl pingora::protocols::Ssl for PrefaceBy {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl pingora::protocols::GetTimingDigest for PrefaceBy {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl pingora::protocols::GetProxyDigest for PrefaceBy {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for PrefaceBy {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

impl pingora::protocols::Peek for PrefaceBy {}

/// Reads the first bytes of a plain connection, as far as telling the HTTP/2 preface from an
/// HTTP/1 request, and puts them back. `None`: the client closed or went silent.
async fn sniff_preface(l4: &mut L4Stream, deadline: Instant) -> Option<bool> {
    let mut buf = Vec::with_capacity(H2_PREFACE.len());
    let mut chunk = [0u8; 24];
    let h2 = loop {
        let want = H2_PREFACE.len() - buf.len();
        let n = match tokio::time::timeout_at(deadline, l4.read(&mut chunk[..want])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => {
                l4.rewind(&buf);
                // an HTTP/1 head that started is answered by the HTTP/1 path (408 or parse)
                return (!buf.is_empty()).then_some(false);
            }
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if !H2_PREFACE.starts_with(&buf) {
            break false;
        }
        if buf.len() == H2_PREFACE.len() {
            break true;
        }
    };
    l4.rewind(&buf);
    Some(h2)
}

/// Reads a PROXY protocol header (v1 or v2) from a trusted peer, and makes its source address
/// the connection's client address. Bytes after the header are put back for TLS or HTTP.
async fn read_proxy_header(
    l4: &mut L4Stream,
    trusted: &[ipnet::IpNet],
    deadline: Instant,
) -> Result<(), &'static str> {
    let peer = l4
        .get_socket_digest()
        .and_then(|d| d.peer_addr().cloned())
        .and_then(|a| a.as_inet().copied())
        .ok_or("no peer address")?;
    if !trusted.iter().any(|n| n.contains(&peer.ip())) {
        return Err("a PROXY header from a peer not in server.trusted_proxies");
    }
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let (len, source) = loop {
        let n = match tokio::time::timeout_at(deadline, l4.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err("closed before a PROXY header"),
            Err(_) => return Err("no PROXY header in time"),
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        match proxy_source(&buf) {
            Ok(Some(found)) => break found,
            Ok(None) if buf.len() < MAX_PROXY_HEADER => continue,
            Ok(None) => return Err("PROXY header too long"),
            Err(why) => return Err(why),
        }
    };
    l4.rewind(&buf[len..]);
    if let Some(source) = source {
        // a fresh digest: the address pingora (and vivgate) read as the client's
        let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
        let _ = digest
            .peer_addr
            .set(Some(pingora::protocols::l4::socket::SocketAddr::Inet(
                source,
            )));
        l4.set_socket_digest(digest);
    }
    Ok(())
}

/// Parses a PROXY header at the start of `buf`: `Ok(None)` while incomplete, else its length
/// and source address (`None` for a LOCAL or UNKNOWN header: the peer's own address stands).
pub fn proxy_source(
    buf: &[u8],
) -> Result<Option<(usize, Option<std::net::SocketAddr>)>, &'static str> {
    use ppp::PartialResult as _;
    let parsed = ppp::HeaderResult::parse(buf);
    if parsed.is_incomplete() {
        // a v1 line ends at its CRLF (at most 107 bytes): whatever is missing then is missing
        let v1_ended =
            buf.starts_with(b"PROXY") && (buf.len() >= 107 || buf.windows(2).any(|w| w == b"\r\n"));
        return if v1_ended {
            Err("a malformed PROXY v1 header")
        } else {
            Ok(None)
        };
    }
    match parsed {
        ppp::HeaderResult::V1(Ok(h)) => {
            let source = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
                ppp::v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
                ppp::v1::Addresses::Unknown => None,
            };
            Ok(Some((h.header.len(), source)))
        }
        ppp::HeaderResult::V2(Ok(h)) => {
            let source = match (h.command, h.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => Some((a.source_address, a.source_port).into()),
                (_, ppp::v2::Addresses::IPv6(a)) => Some((a.source_address, a.source_port).into()),
                _ => None,
            };
            Ok(Some((h.len(), source)))
        }
        _ => Err("not a PROXY protocol header"),
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

/// The envelope for a head the scanner refused.
pub fn refusal(e: HeadError) -> GatewayError {
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
