//! A chunked request body passes through [`ChunkGuard`] on its way to pingora: every byte is
//! checked by the strict framing check ([`vivgate_parse::chunked`]) before pingora's lenient
//! chunk parser sees it. A read that breaks the framing gives pingora none of its bytes and an
//! error instead, so nothing from the broken line on reaches a backend; pingora then closes
//! the client's connection and the backend's.

use std::pin::Pin;
use std::task::{Context, Poll};

use pingora::protocols::Stream;
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

pass_through_io!(ChunkGuard);
