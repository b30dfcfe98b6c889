//! Telling HTTP/2 from HTTP/1: the HTTP/2 client preface, within the head deadline, whether
//! sniffed on a plain connection (h2c) or awaited after an ALPN `h2` handshake.

use super::*;

/// The HTTP/2 client preface (RFC 9113 §3.4).
pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A stream whose first bytes (the HTTP/2 client preface) must arrive by a deadline: a read
/// still waiting for them then fails with `TimedOut`. Everything else passes through.
#[derive(Debug)]
pub(super) struct PrefaceBy {
    inner: Stream,
    left: usize,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl PrefaceBy {
    pub(super) fn new(inner: Stream, deadline: Instant) -> Self {
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

pass_through_io!(PrefaceBy);

/// Reads the first bytes of a plain connection, as far as telling the HTTP/2 preface from an
/// HTTP/1 request, and puts them back. `None`: the client closed or went silent.
pub(super) async fn sniff_preface(l4: &mut L4Stream, deadline: Instant) -> Option<bool> {
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
