//! The HTTP/1 response head a backend sends, for vivgate's own HTTP/1 path (issue 16): found
//! within a byte and a line limit, strictly CRLF-delimited, and with its body framing decided as
//! RFC 9112 §6.3 says, refusing what could be read two ways.
//!
//! Framing, in the RFC's order:
//! - a response to `HEAD`, and every 1xx, 204 and 304, has no body whatever its headers say
//!   (a 1xx other than 101 is interim: the final response follows it);
//! - `Transfer-Encoding` whose last coding is `chunked`: a chunked body; any other
//!   `Transfer-Encoding`: the body runs until the connection closes;
//! - otherwise `Content-Length`, plain digits, one value (identical repeats allowed);
//! - otherwise the body runs until the connection closes.
//!
//! Refused as the backend's fault (the gateway answers 502 and closes the upstream connection):
//! no complete head within `max_bytes`, more than `max_headers` lines, a bare LF or a lone CR,
//! an obsolete line fold, a status line httparse rejects, `Transfer-Encoding` together with
//! `Content-Length` (a response-splitting vector the RFC says to treat as an error), `chunked`
//! twice or not last in a 1.1 response, a coding that is not a plain token (parameters
//! included: no backend of vivgate's sends them), `Transfer-Encoding` in an HTTP/1.0 response,
//! `Content-Length` values that differ or are not plain digits.

use std::fmt;

use crate::head::MAX_HEADERS_CAP;

#[derive(Debug, Clone, Copy)]
pub struct ResponseLimits {
    /// Status line, header lines and the blank line, in bytes.
    pub max_bytes: usize,
    /// Header lines (the status line not counted), at most [`MAX_HEADERS_CAP`].
    pub max_headers: usize,
}

/// How the body after the head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, or 1xx, 204, 304.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// A chunked body (to be read by [`crate::chunked::ChunkedCheck`]'s rules).
    Chunked,
    /// Until the backend closes the connection.
    UntilClose,
}

/// A complete, well-framed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// Bytes of the head, the blank line included.
    pub len: usize,
    pub status: u16,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub framing: Framing,
    /// A 1xx other than 101: a final response follows on the same connection.
    pub interim: bool,
    /// The connection cannot carry another request after this response: `Connection: close`,
    /// HTTP/1.0 without `keep-alive`, a body that runs until close, or a 101.
    pub close: bool,
}

/// Why a response head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    TooLarge,
    TooManyHeaders,
    Malformed(&'static str),
    Framing(&'static str),
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseError::TooLarge => f.write_str("response head too large"),
            ResponseError::TooManyHeaders => f.write_str("too many response header lines"),
            ResponseError::Malformed(why) | ResponseError::Framing(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ResponseError {}

/// Parses the response head at the start of `buf`: `Ok(None)` while it is incomplete and under
/// the limits. `to_head` says whether the request was a `HEAD`.
pub fn parse_response_head(
    buf: &[u8],
    to_head: bool,
    limits: ResponseLimits,
) -> Result<Option<ResponseHead>, ResponseError> {
    let window = &buf[..buf.len().min(limits.max_bytes)];
    let Some(len) = head_end(window)? else {
        return if buf.len() >= limits.max_bytes {
            Err(ResponseError::TooLarge)
        } else {
            Ok(None)
        };
    };
    let max_headers = limits.max_headers.min(MAX_HEADERS_CAP);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
    let mut parsed = httparse::Response::new(&mut headers[..max_headers]);
    match parsed.parse(&buf[..len]) {
        Ok(httparse::Status::Complete(n)) if n == len => {}
        Ok(_) => return Err(ResponseError::Malformed("malformed response head")),
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooManyHeaders),
        Err(_) => return Err(ResponseError::Malformed("malformed response head")),
    }
    let status = parsed.code.expect("complete");
    let minor_version = parsed.version.expect("complete");
    let fields = Fields::read(parsed.headers)?;
    let interim = (100..200).contains(&status) && status != 101;
    let framing = if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::None
    } else {
        fields.framing(minor_version)?
    };
    let close = status == 101
        || framing == Framing::UntilClose
        || fields.close
        || (minor_version == 0 && !fields.keep_alive);
    Ok(Some(ResponseHead {
        len,
        status,
        minor_version,
        framing,
        interim,
        close,
    }))
}

/// The length of the head (up to and including CRLF CRLF), refusing a bare LF or a lone CR on
/// the way, and an obsolete line fold.
fn head_end(buf: &[u8]) -> Result<Option<usize>, ResponseError> {
    let mut line_start = 0;
    for i in memchr::memchr2_iter(b'\r', b'\n', buf) {
        if buf[i] == b'\r' {
            match buf.get(i + 1) {
                Some(b'\n') => continue,
                Some(_) => return Err(ResponseError::Malformed("a CR without LF in the head")),
                None => return Ok(None),
            }
        }
        if i == 0 || buf[i - 1] != b'\r' {
            return Err(ResponseError::Malformed("a bare LF in the head"));
        }
        if i + 1 == line_start + 2 && line_start > 0 {
            // an empty line: the end of the head
            return Ok(Some(i + 1));
        }
        if line_start > 0 && matches!(buf.get(line_start), Some(b' ' | b'\t')) {
            return Err(ResponseError::Malformed("an obsolete line fold"));
        }
        line_start = i + 1;
    }
    Ok(None)
}

/// What the framing and connection headers say.
#[derive(Default)]
struct Fields {
    content_length: Option<u64>,
    /// The codings of every `Transfer-Encoding` line, in order, lowercased.
    codings: Vec<String>,
    transfer_encoding: bool,
    close: bool,
    keep_alive: bool,
}

impl Fields {
    fn read(headers: &[httparse::Header]) -> Result<Fields, ResponseError> {
        let mut f = Fields::default();
        for h in headers {
            if h.name.eq_ignore_ascii_case("content-length") {
                for v in h.value.split(|&b| b == b',') {
                    let n = content_length(v)?;
                    if f.content_length.is_some_and(|m| m != n) {
                        return Err(ResponseError::Framing("Content-Length values differ"));
                    }
                    f.content_length = Some(n);
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                f.transfer_encoding = true;
                for c in h.value.split(|&b| b == b',') {
                    let c = c.trim_ascii();
                    if c.is_empty() {
                        continue;
                    }
                    // a coding that is not a token (obs-text, say) is not one we can skip over
                    let Ok(c) = std::str::from_utf8(c) else {
                        return Err(ResponseError::Framing(
                            "a Transfer-Encoding that is not a token",
                        ));
                    };
                    if !c.bytes().all(is_tchar) {
                        return Err(ResponseError::Framing(
                            "a Transfer-Encoding that is not a token",
                        ));
                    }
                    f.codings.push(c.to_ascii_lowercase());
                }
            } else if h.name.eq_ignore_ascii_case("connection") {
                for t in tokens(h.value) {
                    f.close |= t.eq_ignore_ascii_case("close");
                    f.keep_alive |= t.eq_ignore_ascii_case("keep-alive");
                }
            }
        }
        Ok(f)
    }

    fn framing(&self, minor_version: u8) -> Result<Framing, ResponseError> {
        if self.transfer_encoding {
            if self.content_length.is_some() {
                return Err(ResponseError::Framing(
                    "Transfer-Encoding and Content-Length together",
                ));
            }
            if minor_version == 0 {
                return Err(ResponseError::Framing("Transfer-Encoding in HTTP/1.0"));
            }
            if self.codings.is_empty() {
                return Err(ResponseError::Framing("an empty Transfer-Encoding"));
            }
            let chunked = self.codings.iter().filter(|c| *c == "chunked").count();
            return match (chunked, self.codings.last().map(String::as_str)) {
                (0, _) => Ok(Framing::UntilClose),
                (1, Some("chunked")) => Ok(Framing::Chunked),
                _ => Err(ResponseError::Framing("chunked twice or not last")),
            };
        }
        Ok(match self.content_length {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        })
    }
}

/// A token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The comma-separated tokens of a field value, trimmed, empty ones left out.
fn tokens(value: &[u8]) -> impl Iterator<Item = &str> {
    value
        .split(|&b| b == b',')
        .filter_map(|t| std::str::from_utf8(t).ok())
        .map(|t| t.trim_matches([' ', '\t']))
        .filter(|t| !t.is_empty())
}

fn content_length(v: &[u8]) -> Result<u64, ResponseError> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(ResponseError::Framing("Content-Length is not plain digits"));
    }
    Ok(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ResponseLimits = ResponseLimits {
        max_bytes: 1024,
        max_headers: 16,
    };

    fn parse(s: &str) -> Result<Option<ResponseHead>, ResponseError> {
        parse_response_head(s.as_bytes(), false, LIMITS)
    }

    fn framing(s: &str) -> Framing {
        parse(s).unwrap().unwrap().framing
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"),
            Framing::Length(12)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 12, 12\r\nContent-Length: 12\r\n\r\n"),
            Framing::Length(12)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Framing::UntilClose
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), Framing::UntilClose);
        for s in [
            "204 No Content",
            "304 Not Modified",
            "100 Continue",
            "101 Switching",
        ] {
            let head = format!("HTTP/1.1 {s}\r\nContent-Length: 5\r\n\r\n");
            assert_eq!(framing(&head), Framing::None, "{s}");
        }
        let to_head = parse_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            true,
            LIMITS,
        );
        assert_eq!(to_head.unwrap().unwrap().framing, Framing::None);
    }

    #[test]
    fn connection_reuse() {
        let h = |s: &str| parse(s).unwrap().unwrap();
        assert!(!h("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").close);
        assert!(h("HTTP/1.1 200 OK\r\nConnection: x, close\r\nContent-Length: 0\r\n\r\n").close);
        assert!(h("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").close);
        assert!(!h("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n").close);
        assert!(h("HTTP/1.1 200 OK\r\n\r\n").close, "a body until close");
        assert!(h("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n").close);
        let interim = h("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n");
        assert!(interim.interim && !interim.close);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for (head, why) in [
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "together"),
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "differ"),
            ("HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n", "digits"),
            ("HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n", "digits"),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "not last"),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "twice"),
            ("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "1.0"),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: ,\r\n\r\n", "empty"),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip;q=1, chunked\r\n\r\n", "not a token"),
            ("HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\n", "bare LF"),
            ("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", "CR without LF"),
            ("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "fold"),
            ("HTTP/1.1 2000 OK\r\n\r\n", "malformed"),
        ] {
            let e = parse(head).expect_err(head);
            assert!(e.to_string().contains(why), "{head:?}: {e}");
        }
    }

    #[test]
    fn a_coding_that_is_not_a_token_is_refused() {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, \x80zip\r\n\r\n";
        assert_eq!(
            parse_response_head(head, false, LIMITS),
            Err(ResponseError::Framing(
                "a Transfer-Encoding that is not a token"
            ))
        );
    }

    #[test]
    fn limits_and_incomplete_heads() {
        assert_eq!(parse("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n"), Ok(None));
        assert_eq!(parse("HTTP/1.1 200 OK\r"), Ok(None));
        let big = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(1024));
        assert_eq!(parse(&big), Err(ResponseError::TooLarge));
        let many: String = (0..17).map(|i| format!("X-{i}: a\r\n")).collect();
        let many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(parse(&many), Err(ResponseError::TooManyHeaders));
        // the head ends at the blank line: the body's bytes are not looked at
        let h = parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.len, 38);
    }

    proptest::proptest! {
        /// A well-formed head followed by any bytes is found whole, its framing read from its
        /// one Content-Length, and every prefix of it is incomplete rather than an error.
        #[test]
        fn heads_are_found_whole_and_prefixes_wait(
            status in 200u16..600,
            names in proptest::collection::vec("[A-Za-z][A-Za-z0-9-]{0,12}", 0..8),
            value in "[ -~]{0,20}",
            length in proptest::option::of(0u64..1_000_000),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let mut head = format!("HTTP/1.1 {status} Reason\r\n");
            for n in &names {
                let n = n.to_ascii_lowercase();
                if ["content-length", "transfer-encoding", "connection"].contains(&n.as_str()) {
                    continue;
                }
                head.push_str(&format!("{n}: {}\r\n", value.trim()));
            }
            if let Some(l) = length {
                head.push_str(&format!("Content-Length: {l}\r\n"));
            }
            head.push_str("\r\n");
            let mut buf = head.clone().into_bytes();
            buf.extend_from_slice(&body);
            let limits = ResponseLimits { max_bytes: 4096, max_headers: 16 };
            let h = parse_response_head(&buf, false, limits).unwrap().unwrap();
            proptest::prop_assert_eq!(h.len, head.len());
            let expected = match (status, length) {
                (204 | 304, _) => Framing::None,
                (_, Some(l)) => Framing::Length(l),
                (_, None) => Framing::UntilClose,
            };
            proptest::prop_assert_eq!(h.framing, expected);
            for cut in 0..head.len() {
                proptest::prop_assert_eq!(parse_response_head(&buf[..cut], false, limits), Ok(None));
            }
        }
    }
}
