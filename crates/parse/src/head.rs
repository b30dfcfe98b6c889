//! The HTTP/1 request head, read before pingora's parser sees it: within a byte and a line
//! limit, strictly CRLF-delimited, and with one unambiguous framing.
//!
//! Refused as malformed (400): a bare LF or a lone CR, an obsolete line fold, a request line
//! httparse rejects, a target that is not origin form (absolute form, `*` but for `OPTIONS *`),
//! Content-Length and Transfer-Encoding together, more than one Content-Length or
//! Transfer-Encoding, a Content-Length that is not plain digits or has a leading zero, a
//! Transfer-Encoding other than `chunked`, a Transfer-Encoding on HTTP/1.0, a header name that
//! reads as a framing header once `_` is read as `-`, an empty Host, and an HTTP/1.1 request
//! without exactly one Host. Refused as
//! too large (431): more than `max_bytes` bytes up to and including the blank line, or more
//! than `max_headers` header lines. `CONNECT` is refused (405): the gateway tunnels nothing.

use std::fmt;

/// Hard cap on header lines whatever the configuration says (the parse array lives on the
/// stack).
pub const MAX_HEADERS_CAP: usize = 256;

#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Request line, header lines and the blank line, in bytes.
    pub max_bytes: usize,
    /// Header lines (the request line not counted), at most [`MAX_HEADERS_CAP`].
    pub max_headers: usize,
}

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Over the byte limit (431).
    TooLarge,
    /// Over the header line limit (431).
    TooManyHeaders,
    /// Not a well-formed HTTP/1 request head (400); the reason is for logs and tests.
    Malformed(&'static str),
    /// Ambiguous or unsupported message framing: a smuggling vector (400).
    Framing(&'static str),
    /// Not origin form: absolute-form, authority-form or asterisk-form target (400).
    NotOriginForm,
    /// `CONNECT` (405).
    Connect,
}

impl HeadError {
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => 431,
            HeadError::Connect => 405,
            _ => 400,
        }
    }
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::TooLarge => f.write_str("request head too large"),
            HeadError::TooManyHeaders => f.write_str("too many header lines"),
            HeadError::Malformed(why) | HeadError::Framing(why) => f.write_str(why),
            HeadError::NotOriginForm => f.write_str("request target is not origin form"),
            HeadError::Connect => f.write_str("CONNECT is not supported"),
        }
    }
}

/// What a complete, accepted head says about the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadInfo {
    /// Bytes of the head, blank line included; what follows is body or the next request.
    pub len: usize,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// `OPTIONS * HTTP/1.x`: a question about the server, answered by the gateway itself.
    pub server_options: bool,
    /// HTTP/1.1 without `Connection: close` (the connection may serve another request).
    pub keep_alive: bool,
}

/// Incremental scan of a head arriving in pieces: each call looks only at bytes it has not seen,
/// so a client sending one byte at a time costs linear time.
#[derive(Debug, Default, Clone)]
pub struct HeadScanner {
    /// Bytes already scanned (every `\n` before it checked).
    scanned: usize,
    /// Where the current line starts.
    line_start: usize,
    /// Lines ended so far, leading empty lines not counted.
    lines: usize,
    /// The line start whose first byte was checked for folding (it may arrive in a later read).
    fold_checked: usize,
}

impl HeadScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks at `buf` (everything received so far on this request). `Ok(None)`: the head is not
    /// complete yet and still within limits; read more.
    pub fn scan(&mut self, buf: &[u8], limits: HeadLimits) -> Result<Option<HeadInfo>, HeadError> {
        let max_headers = limits.max_headers.min(MAX_HEADERS_CAP);
        self.check_fold(buf)?;
        while let Some(off) = memchr::memchr2(b'\r', b'\n', &buf[self.scanned..]) {
            let i = self.scanned + off;
            if buf[i] == b'\r' {
                match buf.get(i + 1) {
                    Some(b'\n') => {}
                    Some(_) => return Err(HeadError::Malformed("bare CR in the request head")),
                    None => break, // wait for the byte after it
                }
                self.scanned = i + 1;
                continue;
            }
            // a '\n', preceded by '\r'
            if i == 0 || buf[i - 1] != b'\r' {
                return Err(HeadError::Malformed("bare LF in the request head"));
            }
            let empty = i - 1 == self.line_start;
            self.scanned = i + 1;
            self.line_start = i + 1;
            if empty {
                if self.lines == 0 {
                    continue; // empty lines before the request line are ignored (RFC 9112 2.2)
                }
                if i + 1 > limits.max_bytes {
                    return Err(HeadError::TooLarge);
                }
                return check_complete(buf, i + 1, max_headers).map(Some);
            }
            self.lines += 1;
            if self.lines > max_headers + 1 {
                return Err(HeadError::TooManyHeaders);
            }
            self.check_fold(buf)?;
        }
        if self.scanned < buf.len() {
            self.scanned = buf.len() - usize::from(buf.last() == Some(&b'\r'));
        }
        if buf.len() > limits.max_bytes {
            return Err(HeadError::TooLarge);
        }
        Ok(None)
    }
}

impl HeadScanner {
    /// A header line that starts with whitespace continues the previous one: obsolete folding.
    /// Checked once the line's first byte has arrived, whichever read brings it.
    fn check_fold(&mut self, buf: &[u8]) -> Result<(), HeadError> {
        if self.lines == 0 || self.fold_checked == self.line_start {
            return Ok(());
        }
        let Some(&first) = buf.get(self.line_start) else {
            return Ok(());
        };
        self.fold_checked = self.line_start;
        if matches!(first, b' ' | b'\t') {
            return Err(HeadError::Framing("obsolete line folding"));
        }
        Ok(())
    }
}

/// One-shot form of [`HeadScanner::scan`].
/// The request target's own rules: origin form, no fragment, and only the bytes RFC 3986
/// allows unencoded in a path and query (anything else would be escaped by pingora for routing
/// but forwarded raw, so the backend would see another target). HTTP/1 heads are checked in
/// [`scan`]; an HTTP/2 `:path` is checked with this alone.
pub fn check_target(target: &str) -> Result<(), HeadError> {
    if !target.starts_with('/') {
        return Err(HeadError::NotOriginForm);
    }
    if target.contains('#') {
        return Err(HeadError::Malformed(
            "the request target must not carry a fragment",
        ));
    }
    if !target.bytes().all(target_byte) {
        return Err(HeadError::Malformed(
            "the request target has a character that must be percent-encoded",
        ));
    }
    Ok(())
}

pub fn scan(buf: &[u8], limits: HeadLimits) -> Result<Option<HeadInfo>, HeadError> {
    HeadScanner::new().scan(buf, limits)
}

/// Unreserved, sub-delimiters, `:`, `@`, `/`, `?` and `%`.
fn target_byte(b: u8) -> bool {
    crate::unreserved_or_sub_delim(b) || matches!(b, b':' | b'@' | b'/' | b'?' | b'%')
}

/// What `host[:port]` may hold (reg-name, IP literal, port), without `@`.
fn authority_byte(b: u8) -> bool {
    crate::unreserved_or_sub_delim(b) || matches!(b, b':' | b'%' | b'[' | b']')
}

/// A `Host` (or HTTP/2 `:authority`): an authority without userinfo (pingora would answer
/// `user@host` with its own 400) and without path characters.
pub fn check_host(value: &[u8]) -> Result<(), HeadError> {
    if value.is_empty() {
        return Err(HeadError::Malformed("empty Host"));
    }
    if value.iter().all(|&b| authority_byte(b)) {
        Ok(())
    } else {
        Err(HeadError::Malformed("invalid Host"))
    }
}

fn check_complete(buf: &[u8], len: usize, max_headers: usize) -> Result<HeadInfo, HeadError> {
    // left uninitialised: writing 256 empty headers (8 KiB) cost more than the parse
    let mut storage =
        [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS_CAP];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(&buf[..len], &mut storage[..max_headers]) {
        Ok(httparse::Status::Complete(n)) if n == len => {}
        Ok(_) => return Err(HeadError::Malformed("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed("malformed request head")),
    }
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    if method == "CONNECT" {
        return Err(HeadError::Connect);
    }
    let server_options = method == "OPTIONS" && target == "*";
    if !server_options {
        check_target(target)?;
    }
    let http11 = req.version == Some(1);
    let (mut cl, mut te, mut hosts) = (None, None, 0);
    let mut cl_seen = 0;
    let mut te_seen = 0;
    let mut close = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            cl_seen += 1;
            cl = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te_seen += 1;
            te = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
            check_host(h.value)?;
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= h
                .value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        } else if h.name.as_bytes().contains(&b'_') {
            check_field_name(h.name.as_bytes())?;
        }
    }
    if cl_seen > 1 {
        return Err(HeadError::Framing("more than one Content-Length"));
    }
    if te_seen > 1 {
        return Err(HeadError::Framing("more than one Transfer-Encoding"));
    }
    if cl.is_some() && te.is_some() {
        return Err(HeadError::Framing(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    let content_length = match cl {
        None => None,
        Some(v) if !v.is_empty() && v.len() <= 18 && v.iter().all(u8::is_ascii_digit) => {
            // a leading zero reads as octal to some servers: `0` alone is the only one
            if v.len() > 1 && v[0] == b'0' {
                return Err(HeadError::Framing("Content-Length with a leading zero"));
            }
            Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
        }
        Some(_) => return Err(HeadError::Framing("invalid Content-Length")),
    };
    let chunked = match te {
        None => false,
        Some(_) if !http11 => return Err(HeadError::Framing("Transfer-Encoding on HTTP/1.0")),
        Some(v) if v.eq_ignore_ascii_case(b"chunked") => true,
        Some(_) => return Err(HeadError::Framing("unsupported Transfer-Encoding")),
    };
    if http11 && hosts != 1 {
        return Err(HeadError::Malformed(
            "an HTTP/1.1 request needs exactly one Host",
        ));
    }
    if hosts > 1 {
        return Err(HeadError::Malformed("more than one Host"));
    }
    Ok(HeadInfo {
        len,
        content_length,
        chunked,
        server_options,
        keep_alive: http11 && !close,
    })
}

/// A field name that reads as `Content-Length`, `Transfer-Encoding`, `Host` or `Connection` to a
/// server that takes `_` for `-` (`Transfer_Encoding`): refused, since the backend would see a
/// second framing the gateway did not check.
pub fn check_field_name(name: &[u8]) -> Result<(), HeadError> {
    if !name.contains(&b'_') {
        return Ok(());
    }
    for framing in [
        &b"content-length"[..],
        b"transfer-encoding",
        b"host",
        b"connection",
    ] {
        if name.len() == framing.len()
            && name.iter().zip(framing).all(|(a, b)| {
                (if *a == b'_' {
                    b'-'
                } else {
                    a.to_ascii_lowercase()
                }) == *b
            })
        {
            return Err(HeadError::Framing(
                "a header name with _ that reads as a framing header",
            ));
        }
    }
    Ok(())
}

/// `HTTP/1.x` with `x` above 1 is served as HTTP/1.1 (RFC 9112 §2.3: a higher minor version is
/// compatible): once the request line has arrived whole in `buf`, its version is rewritten in
/// place so the parsers that accept only 1.0 and 1.1 take it. Returns whether the request line
/// has arrived (no need to look again).
pub fn normalize_minor_version(buf: &mut [u8]) -> bool {
    // empty lines before the request line are skipped (RFC 9112 §2.2), as the scanner does
    let start = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    let Some(lf) = memchr::memchr(b'\n', &buf[start..]).map(|i| start + i) else {
        return false;
    };
    // the line without its CR (a bare LF is the scanner's to refuse)
    let end = if lf > start && buf[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    };
    if end - start >= 9
        && &buf[end - 9..end - 1] == b" HTTP/1."
        && (b'2'..=b'9').contains(&buf[end - 1])
    {
        buf[end - 1] = b'1';
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: HeadLimits = HeadLimits {
        max_bytes: 32_768,
        max_headers: 100,
    };

    fn ok(raw: &str) -> HeadInfo {
        scan(raw.as_bytes(), L).unwrap().unwrap()
    }

    fn err(raw: &str) -> HeadError {
        scan(raw.as_bytes(), L).unwrap_err()
    }

    #[test]
    fn plain_requests() {
        let h = ok("GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!((h.len, h.content_length, h.chunked), (28, None, false));
        let raw = "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        let h = ok(raw);
        assert_eq!((h.len, h.content_length), (raw.len() - 5, Some(5)));
        assert!(ok("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").chunked);
        ok("GET /x HTTP/1.0\r\n\r\n");
        ok("\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(scan(b"GET /x HTTP/1.1\r\nHost: a\r\n\r", L), Ok(None));
        assert_eq!(scan(b"GET /x HTTP/1.1\r\nHost: a\r\n", L), Ok(None));
    }

    #[test]
    fn smuggling_vectors() {
        use HeadError::*;
        for (raw, e) in [
            ("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", Framing("both Content-Length and Transfer-Encoding")),
            ("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", Framing("more than one Content-Length")),
            ("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", Framing("more than one Content-Length")),
            ("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", Framing("invalid Content-Length")),
            ("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", Framing("invalid Content-Length")),
            ("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", Framing("invalid Content-Length")),
            ("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", Framing("invalid Content-Length")),
            ("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", Framing("more than one Transfer-Encoding")),
            ("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Framing("unsupported Transfer-Encoding")),
            ("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", Framing("unsupported Transfer-Encoding")),
            ("POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Framing("Transfer-Encoding on HTTP/1.0")),
            ("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n Transfer-Encoding: chunked\r\n\r\n", Framing("obsolete line folding")),
            ("GET /x HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", Malformed("bare LF in the request head")),
            ("GET /x HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", Malformed("bare CR in the request head")),
            ("GET /x HTTP/1.1\r\nTransfer-Encoding : chunked\r\nHost: a\r\n\r\n", Malformed("malformed request head")),
            ("GET /x HTTP/1.1\r\n\r\n", Malformed("an HTTP/1.1 request needs exactly one Host")),
            ("GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Malformed("an HTTP/1.1 request needs exactly one Host")),
            ("GET /x HTTP/1.1\r\nHost: user@evil\r\n\r\n", Malformed("invalid Host")),
            ("GET /x HTTP/1.1\r\nHost: a/b\r\n\r\n", Malformed("invalid Host")),
            ("GET http://evil/x HTTP/1.1\r\nHost: a\r\n\r\n", NotOriginForm),
            ("GET * HTTP/1.1\r\nHost: a\r\n\r\n", NotOriginForm),
            ("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 005\r\n\r\n", Framing("Content-Length with a leading zero")),
            ("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0200\r\n\r\n", Framing("Content-Length with a leading zero")),
            ("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 00\r\n\r\n", Framing("Content-Length with a leading zero")),
            ("POST /x HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n\r\n", Framing("a header name with _ that reads as a framing header")),
            ("POST /x HTTP/1.1\r\nHost: a\r\nContent_Length: 99\r\n\r\n", Framing("a header name with _ that reads as a framing header")),
            ("POST /x HTTP/1.1\r\nHost: a\r\ncontent_LENGTH: 99\r\n\r\n", Framing("a header name with _ that reads as a framing header")),
            ("GET /x HTTP/1.1\r\nHost:\r\n\r\n", Malformed("empty Host")),
            ("GET /x HTTP/1.1\r\nHost:   \r\n\r\n", Malformed("empty Host")),
            ("CONNECT evil:443 HTTP/1.1\r\nHost: evil:443\r\n\r\n", Connect),
            ("GET /x HTTP/2.0\r\nHost: a\r\n\r\n", Malformed("malformed request head")),
            ("GET  /x HTTP/1.1\r\nHost: a\r\n\r\n", Malformed("malformed request head")),
            ("GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n", Malformed("the request target has a character that must be percent-encoded")),
        ] {
            assert_eq!(err(raw), e, "{raw:?}");
        }
    }

    #[test]
    fn what_is_accepted_besides() {
        assert_eq!(
            ok("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").content_length,
            Some(0)
        );
        ok("GET /x HTTP/1.1\r\nHost: a\r\nX_Custom_Name: y\r\nContent_Type: z\r\n\r\n");
        let o = ok("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(o.server_options && o.keep_alive);
        assert!(!ok("OPTIONS /x HTTP/1.1\r\nHost: a\r\n\r\n").server_options);
        assert!(
            !ok("GET /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n").keep_alive
        );
        assert!(!ok("GET /x HTTP/1.0\r\n\r\n").keep_alive);
    }

    #[test]
    fn a_higher_minor_version_is_read_as_http_1_1() {
        let mut raw = b"GET / HTTP/1.2\r\nHost: a\r\n\r\n".to_vec();
        assert!(normalize_minor_version(&mut raw));
        assert_eq!(raw, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let mut raw = b"\r\nGET / HTTP/1.9\r\n".to_vec();
        assert!(normalize_minor_version(&mut raw));
        assert_eq!(raw, b"\r\nGET / HTTP/1.1\r\n");
        for same in [
            &b"GET / HTTP/1.0\r\n"[..],
            b"GET / HTTP/2.0\r\n",
            b"GET / HTTP/1.12\r\n",
            b"GET /HTTP/1.5\r\n",
        ] {
            let mut raw = same.to_vec();
            assert!(normalize_minor_version(&mut raw));
            assert_eq!(raw, same);
        }
        let mut partial = b"GET / HTTP/1.2".to_vec();
        assert!(
            !normalize_minor_version(&mut partial),
            "not a whole line yet"
        );
        assert_eq!(partial, b"GET / HTTP/1.2");
    }

    #[test]
    fn limits_at_the_byte_and_the_line() {
        let head = |pad: usize| {
            format!(
                "GET /x HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
                "a".repeat(pad)
            )
        };
        let base = head(0).len();
        let exact = head(L.max_bytes - base);
        assert_eq!(ok(&exact).len, L.max_bytes);
        assert_eq!(err(&head(L.max_bytes - base + 1)), HeadError::TooLarge);
        // an unterminated head is refused as soon as it passes the limit
        let partial = "a".repeat(L.max_bytes + 1);
        assert_eq!(err(&partial), HeadError::TooLarge);
        assert_eq!(scan("a".repeat(L.max_bytes).as_bytes(), L), Ok(None));
        let lines = |n: usize| {
            let mut s = String::from("GET /x HTTP/1.1\r\nHost: a\r\n");
            for i in 1..n {
                s.push_str(&format!("X-{i}: v\r\n"));
            }
            s + "\r\n"
        };
        ok(&lines(100));
        assert_eq!(err(&lines(101)), HeadError::TooManyHeaders);
    }

    #[test]
    fn incremental_scan_equals_one_shot() {
        let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
        let mut s = HeadScanner::new();
        let mut result = None;
        for end in 1..=raw.len() {
            if let Some(h) = s.scan(&raw[..end], L).unwrap() {
                result = Some(h);
                break;
            }
        }
        assert_eq!(result, scan(raw, L).unwrap());
        // a fold whose line break ends one read and whose space starts the next
        let fold = b"GET /x HTTP/1.1\r\n X: y\r\n\r\n";
        let mut s = HeadScanner::new();
        assert_eq!(s.scan(&fold[..17], L), Ok(None));
        assert_eq!(
            s.scan(fold, L),
            Err(HeadError::Framing("obsolete line folding"))
        );
        let bad = b"GET /x HTTP/1.1\r\nHost: a\nX: y\r\n\r\n";
        let mut s = HeadScanner::new();
        let r = (1..=bad.len()).find_map(|end| s.scan(&bad[..end], L).err());
        assert_eq!(r, Some(HeadError::Malformed("bare LF in the request head")));
    }
}
