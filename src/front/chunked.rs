//! A chunked request body passes through [`ChunkGuard`] on its way to pingora: every byte is
//! checked by the strict framing check ([`vivgate_parse::chunked`]) before pingora's lenient
//! chunk parser sees it. A read that breaks the framing gives pingora none of its bytes and an
//! error instead, so nothing from the broken line on reaches a backend; pingora then closes
//! the client's connection and the backend's.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use pingora::listeners::ALPN;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use vivgate_parse::chunked::ChunkedCheck;

#[derive(Debug)]
pub(super) struct ChunkGuard {
    inner: Stream,
    check: ChunkedCheck,
    /// The framing broke: every later read fails too.
    broken: bool,
}

impl ChunkGuard {
    /// `check` has seen the body bytes that arrived with the head.
    pub(super) fn new(inner: Stream, check: ChunkedCheck) -> Self {
        ChunkGuard {
            inner,
            check,
            broken: false,
        }
    }

    /// The connection without the guard, once pingora gives it back; `None` (close it) unless
    /// the body ended where the strict check says it ends, so the two parsers never disagree
    /// about where the next request starts.
    pub(super) fn unwrap(stream: Stream) -> Option<Stream> {
        let guard = stream.into_any().downcast::<ChunkGuard>().ok()?;
        (guard.check.is_done() && !guard.broken).then_some(guard.inner)
    }
}

fn broken() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "malformed chunked request body",
    )
}

impl tokio::io::AsyncRead for ChunkGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.broken {
            return Poll::Ready(Err(broken()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if !this.check.is_done() => {
                if let Err(e) = this.check.feed(&buf.filled()[before..]) {
                    // none of this read reaches pingora
                    buf.set_filled(before);
                    this.broken = true;
                    tracing::debug!(reason = e.0, "chunked request body refused");
                    return Poll::Ready(Err(broken()));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl tokio::io::AsyncWrite for ChunkGuard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl pingora::protocols::Shutdown for ChunkGuard {
    async fn shutdown(&mut self) {
        <dyn pingora::protocols::IO as pingora::protocols::Shutdown>::shutdown(&mut *self.inner)
            .await
    }
}

impl pingora::protocols::UniqueID for ChunkGuard {
    fn id(&self) -> pingora::protocols::UniqueIDType {
        self.inner.id()
    }
}

impl pingora::protocols::Ssl for ChunkGuard {
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

impl pingora::protocols::GetTimingDigest for ChunkGuard {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl pingora::protocols::GetProxyDigest for ChunkGuard {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for ChunkGuard {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

impl pingora::protocols::Peek for ChunkGuard {}
