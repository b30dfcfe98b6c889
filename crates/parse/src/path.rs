//! One canonical form for a request path, so the gateway's route match and the backend's router
//! see the same thing.
//!
//! The path is percent-decoded exactly once, checked, and re-encoded with one spelling per
//! character: unreserved characters and the sub-delimiters allowed in a segment stay literal,
//! everything else is `%XX` with upper-case hex. Routes match on that form and the backend
//! receives that form. Refused (never forwarded): encoded `/`, `\` or NUL, any control byte,
//! `.` and `..` segments (also when encoded), empty segments (`//`; one trailing `/` is
//! allowed), `;` path parameters, a `%` not followed by two hex digits, a path that does not
//! decode to UTF-8, and a target that does not start with `/` (absolute or authority form).

use std::borrow::Cow;
use std::fmt;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not origin form: `http://host/x`, `host:443`, `*`, or empty.
    NotOriginForm,
    /// `%2F`: a slash the backend might treat as a separator.
    EncodedSlash,
    /// `\` or `%5C`: a separator for some servers.
    Backslash,
    /// A NUL or another control byte, raw or encoded.
    Control,
    /// A `.` or `..` segment, raw or encoded (`%2e%2e`).
    DotSegment,
    /// `//` somewhere in the path.
    EmptySegment,
    /// `;` (a path parameter, raw or encoded).
    PathParam,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// The decoded path is not UTF-8.
    InvalidUtf8,
    /// A raw byte that is not allowed in a request target (space, `"`, `<`, non-ASCII …).
    RawByte,
    /// `%25` followed by two hex digits: an escape that a second decoder would decode again.
    DoubleEncoded,
}

impl PathError {
    /// The public reason, for the error envelope.
    pub fn as_str(&self) -> &'static str {
        match self {
            PathError::NotOriginForm => "the request target must be a path starting with /",
            PathError::EncodedSlash => "the path contains an encoded slash",
            PathError::Backslash => "the path contains a backslash",
            PathError::Control => "the path contains a control character",
            PathError::DotSegment => "the path contains a . or .. segment",
            PathError::EmptySegment => "the path contains an empty segment",
            PathError::PathParam => "the path contains a ; parameter",
            PathError::BadEscape => "the path contains a malformed percent escape",
            PathError::InvalidUtf8 => "the path is not valid UTF-8",
            PathError::RawByte => "the path contains a character that must be percent-encoded",
            PathError::DoubleEncoded => "the path is percent-encoded twice",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bytes that stay literal in the canonical form: RFC 3986 unreserved characters plus the
/// sub-delimiters, `:` and `@` allowed in a segment (`;` is refused separately).
const fn literal_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = (crate::unreserved_or_sub_delim(c) && c != b';') || c == b':' || c == b'@';
        b += 1;
    }
    t
}
static LITERAL: [bool; 256] = literal_table();

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The canonical form of `raw` (the path of a request target, without the query), borrowed
/// when `raw` is already canonical — the common case, with no allocation.
pub fn canonical_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    // fast path: only literal bytes and '/', no empty or dot segment
    if bytes[1..].iter().all(|&b| LITERAL[b as usize] || b == b'/') {
        check_segments(bytes)?;
        return Ok(Cow::Borrowed(raw));
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let c = h << 4 | l;
                match c {
                    b'/' => return Err(PathError::EncodedSlash),
                    _ => check_byte(c)?,
                }
                decoded.push(c);
                i += 3;
            }
            b'/' => {
                decoded.push(b);
                i += 1;
            }
            // raw: only what may appear unencoded in a segment
            _ if LITERAL[b as usize] => {
                decoded.push(b);
                i += 1;
            }
            _ => {
                check_byte(b)?;
                return Err(PathError::RawByte);
            }
        }
    }
    check_segments(&decoded)?;
    // decoded once, a `%XX` must not remain: a layer behind us that decodes again would see
    // `%2e%2e` or `%2f` as `..` or `/`
    if decoded
        .windows(3)
        .any(|w| w[0] == b'%' && hex(w[1]).is_some() && hex(w[2]).is_some())
    {
        return Err(PathError::DoubleEncoded);
    }
    let text = std::str::from_utf8(&decoded).map_err(|_| PathError::InvalidUtf8)?;
    let mut out = String::with_capacity(decoded.len() + 8);
    for &c in text.as_bytes() {
        if LITERAL[c as usize] || c == b'/' {
            out.push(c as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(HEX[(c >> 4) as usize] as char);
            out.push(HEX[(c & 15) as usize] as char);
        }
    }
    if out == raw {
        // already canonical (it had escapes that must stay escaped): no need to rewrite it
        return Ok(Cow::Borrowed(raw));
    }
    Ok(Cow::Owned(out))
}

/// Bytes refused wherever they come from.
fn check_byte(c: u8) -> Result<(), PathError> {
    match c {
        b'\\' => Err(PathError::Backslash),
        b';' => Err(PathError::PathParam),
        0..=0x1f | 0x7f => Err(PathError::Control),
        _ => Ok(()),
    }
}

/// `//`, and `.` or `..` segments, in a decoded path that starts with `/`. One trailing `/` is
/// a segment of its own (`/cdn/`), not an empty one.
fn check_segments(path: &[u8]) -> Result<(), PathError> {
    let mut segs = path[1..].split(|&b| b == b'/').peekable();
    while let Some(seg) = segs.next() {
        match seg {
            b"" if segs.peek().is_some() => return Err(PathError::EmptySegment),
            b"." | b".." => return Err(PathError::DotSegment),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in [
            "/",
            "/v1/content",
            "/cdn/",
            "/a/b.c/d~e",
            "/x:y@z",
            "/%25",
            "/caf%C3%A9",
        ] {
            assert!(
                matches!(canonical_path(p), Ok(Cow::Borrowed(q)) if q == p),
                "{p}"
            );
        }
    }

    #[test]
    fn equivalent_spellings_become_one() {
        for (raw, canon) in [
            ("/v1/cont%65nt", "/v1/content"),
            ("/v1/%63ontent", "/v1/content"),
            ("/a%2db", "/a-b"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/%7e", "/~"),
            ("/a%20b", "/a%20b"),
            ("/%41", "/A"),
        ] {
            assert_eq!(canonical_path(raw).unwrap(), canon, "{raw}");
        }
    }

    #[test]
    fn tricks_are_refused() {
        use PathError::*;
        for (raw, err) in [
            ("", NotOriginForm),
            ("*", NotOriginForm),
            ("http://evil/x", NotOriginForm),
            ("evil:443", NotOriginForm),
            ("/info/../private", DotSegment),
            ("/info/./x", DotSegment),
            ("/..", DotSegment),
            ("/info/%2e%2e/private", DotSegment),
            ("/info/.%2E/private", DotSegment),
            ("/%2e/x", DotSegment),
            ("/a%2fb", EncodedSlash),
            ("/a%2Fb", EncodedSlash),
            ("/a%5cb", Backslash),
            ("/a\\b", Backslash),
            ("/a%00b", Control),
            ("/a%0d%0ab", Control),
            ("/a%7f", Control),
            ("//x", EmptySegment),
            ("/a//b", EmptySegment),
            ("/a;b", PathParam),
            ("/a%3bb", PathParam),
            ("/a%", BadEscape),
            ("/a%2", BadEscape),
            ("/a%zz", BadEscape),
            ("/a%ff", InvalidUtf8),
            ("/a%252e%252e/b", DoubleEncoded),
            ("/a%252fb", DoubleEncoded),
            ("/a%25%32%66b", DoubleEncoded),
            ("/a%c3", InvalidUtf8),
            ("/a b", RawByte),
            ("/a\"b", RawByte),
            ("/a<b", RawByte),
            ("/a{b", RawByte),
            ("/a#b", RawByte),
            ("/a?b", RawByte),
            ("/é", RawByte),
        ] {
            assert_eq!(canonical_path(raw).unwrap_err(), err, "{raw:?}");
        }
    }

    proptest! {
        #[test]
        fn canonicalisation_is_idempotent(raw in "/[a-zA-Z0-9%/._~;:@!$&'()*+,=\\\\ -]{0,40}") {
            if let Ok(c) = canonical_path(&raw) {
                let again = canonical_path(&c).expect("a canonical path is accepted");
                prop_assert_eq!(&*again, &*c);
                prop_assert!(matches!(again, Cow::Borrowed(_)));
            }
        }

        #[test]
        fn escapes_of_any_byte_are_idempotent(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            let mut raw = String::from("/");
            for b in bytes {
                raw.push_str(&format!("%{b:02x}"));
            }
            if let Ok(c) = canonical_path(&raw) {
                prop_assert_eq!(&*canonical_path(&c).unwrap(), &*c);
            }
        }
    }
}
