//! The client's side of one request: its head as the pipeline reads it, its body as it
//! arrives (a `Content-Length` body counted, a chunked one decoded by the strict decoder of
//! [`vivgate_parse::chunked`]), and `100 Continue`.

use super::*;

/// The request head, parsed once from the bytes the front accepted.
pub(super) struct ClientHead {
    /// The head's bytes, split off the connection's buffer without a copy; the header values
    /// are slices of it.
    pub raw: bytes::Bytes,
    pub method: Method,
    /// The request target's place in `raw`.
    pub target: std::ops::Range<usize>,
    pub headers: HeaderMap,
    /// 0 for HTTP/1.0.
    pub minor: u8,
    pub info: HeadInfo,
}

impl ClientHead {
    /// `raw` is what the front accepted (its rules already held: one framing, a valid target
    /// and header names), so httparse reads it whole.
    /// `headers` is an empty map to fill (the connection's, kept between requests with its
    /// capacity).
    pub fn parse(raw: bytes::Bytes, info: HeadInfo, mut headers: HeaderMap) -> Option<ClientHead> {
        let head = &raw[..];
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
        let mut req = httparse::Request::new(&mut lines);
        match req.parse(head) {
            Ok(httparse::Status::Complete(n)) if n == head.len() => {}
            _ => return None,
        }
        let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
        let path = req.path?;
        let start = path.as_ptr() as usize - head.as_ptr() as usize;
        headers.reserve(req.headers.len());
        for h in req.headers.iter() {
            headers.append(
                HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                // a slice of the head: no copy, no allocation
                HeaderValue::from_maybe_shared(raw.slice_ref(h.value)).ok()?,
            );
        }
        let target = start..start + path.len();
        let minor = req.version?;
        Some(ClientHead {
            raw,
            method,
            target,
            headers,
            minor,
            info,
        })
    }

    /// `Expect: 100-continue` on HTTP/1.1 (an HTTP/1.0 client gets no 1xx, RFC 9110 §10.1.1).
    pub fn expects_continue(&self) -> bool {
        self.minor >= 1
            && self
                .headers
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    }

    /// An `Upgrade` the route allowed (the pipeline refused it elsewhere).
    pub fn upgrade(&self) -> Option<&HeaderValue> {
        self.headers.get(header::UPGRADE)
    }
}

/// Where the request body stands.
pub(super) enum BodyIn {
    /// No body, or all of it read.
    Done,
    /// `left` bytes of a `Content-Length` body to go.
    Length {
        left: u64,
    },
    Chunked(ChunkedCheck),
}

/// Why reading the request body stopped.
#[derive(Debug)]
pub(super) enum BodyError {
    /// The chunked framing broke (400).
    Framing(&'static str),
    /// The client paused longer than `body_idle_timeout` (408).
    Timeout,
    /// The client closed or the connection failed: nothing to answer.
    Gone,
}

impl BodyIn {
    pub fn new(info: &HeadInfo) -> BodyIn {
        if info.chunked {
            BodyIn::Chunked(ChunkedCheck::new())
        } else {
            match info.content_length {
                Some(n) if n > 0 => BodyIn::Length { left: n },
                _ => BodyIn::Done,
            }
        }
    }

    pub fn is_done(&self) -> bool {
        match self {
            BodyIn::Done => true,
            BodyIn::Length { .. } => false,
            BodyIn::Chunked(c) => c.is_done(),
        }
    }

    /// Takes the body's part of `buf[*at..]`, decoded, into `out`, and moves `*at` past it.
    pub fn take(
        &mut self,
        buf: &[u8],
        at: &mut usize,
        out: &mut impl FnMut(&[u8]),
    ) -> Result<(), BodyError> {
        let avail = &buf[*at..];
        match self {
            BodyIn::Done => {}
            BodyIn::Length { left } => {
                let n = avail
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                out(&avail[..n]);
                *at += n;
                *left -= n as u64;
                if *left == 0 {
                    *self = BodyIn::Done;
                }
            }
            BodyIn::Chunked(c) => {
                let n = c.decode(avail, out).map_err(|e| BodyError::Framing(e.0))?;
                *at += n;
            }
        }
        Ok(())
    }
}

impl Conn<'_> {
    /// Reads more of the client's bytes into the buffer, waiting at most `body_idle_timeout`.
    pub(super) async fn fill(&mut self) -> Result<(), BodyError> {
        if self.at == self.buf.len() && self.at > 0 {
            // everything read was taken: start over
            self.buf.clear();
            self.at = 0;
        }
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        match tokio::time::timeout(
            self.limits.body_idle_timeout,
            self.stream.read_buf(self.buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => Err(BodyError::Gone),
            Ok(Ok(n)) => {
                self.bytes_in += n;
                Ok(())
            }
            Err(_) => Err(BodyError::Timeout),
        }
    }

    /// Sends `100 Continue` once, when the client asked for it and its body has not come.
    pub(super) async fn send_continue(&mut self) -> Result<(), BodyError> {
        if self.continue_sent || !self.head.expects_continue() || self.body.is_done() {
            return Ok(());
        }
        self.continue_sent = true;
        self.client_write(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| BodyError::Gone)
    }

    /// Before answering early: reads and drops an unread request body of at most
    /// `max_drain_body` bytes so the connection can serve the next request; otherwise (larger,
    /// slow, or a client waiting for `100 Continue`) the connection closes after the answer.
    pub(super) async fn drain(&mut self) {
        if self.body.is_done() {
            return;
        }
        let max = self.limits.max_drain_body;
        let too_large = matches!(self.body, BodyIn::Length { left } if left > max);
        if (self.head.expects_continue() && !self.continue_sent) || too_large {
            self.close = true;
            return;
        }
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            let mut total = 0u64;
            loop {
                let (buf, mut at) = (&self.buf[..], self.at);
                self.body
                    .take(buf, &mut at, &mut |d: &[u8]| total += d.len() as u64)
                    .map_err(|_| ())?;
                self.at = at;
                if total > max {
                    return Err(());
                }
                if self.body.is_done() {
                    return Ok(());
                }
                self.fill().await.map_err(|_| ())?;
            }
        })
        .await;
        if !matches!(drained, Ok(Ok(()))) {
            self.close = true;
        }
    }
}

impl Transport for Conn<'_> {
    fn request(&self) -> Request<'_> {
        Request {
            method: &self.head.method,
            target: &self.head.raw[self.head.target.clone()],
            parsed_target: None,
            headers: &self.head.headers,
            authority: None,
            http2: false,
            client: self.client,
        }
    }

    async fn read_body(&mut self, max: u64, pause: Duration) -> Result<Vec<u8>, GatewayError> {
        if matches!(self.body, BodyIn::Length { left } if left > max) {
            return Err(GatewayError::BodyTooLarge);
        }
        if self.send_continue().await.is_err() {
            self.close = true;
            return Err(GatewayError::BadRequest);
        }
        let _ = pause; // the connection's limits carry the same `body_idle_timeout`
        let mut body = Vec::new();
        loop {
            let (buf, mut at) = (&self.buf[..], self.at);
            let taken = self
                .body
                .take(buf, &mut at, &mut |d: &[u8]| body.extend_from_slice(d));
            self.at = at;
            let failed = match taken {
                Err(e) => Some(e),
                Ok(()) if body.len() as u64 > max => {
                    self.close = true;
                    return Err(GatewayError::BodyTooLarge);
                }
                Ok(()) if self.body.is_done() => {
                    self.json = Some(body.clone());
                    return Ok(body);
                }
                Ok(()) => self.fill().await.err(),
            };
            if let Some(e) = failed {
                self.close = true;
                return Err(match e {
                    BodyError::Framing(why) => GatewayError::Malformed(why),
                    BodyError::Timeout => GatewayError::BodyTimeout,
                    BodyError::Gone => GatewayError::BadRequest,
                });
            }
        }
    }
}
