//! A strict check of a chunked request body's framing (RFC 9112 §7.1), fed the bytes as they
//! arrive, before pingora's lenient chunk parser sees them:
//!
//! ```text
//! chunked-body   = *chunk last-chunk trailer-section CRLF
//! chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! chunk-size     = 1*HEXDIG
//! last-chunk     = 1*("0") [ chunk-ext ] CRLF
//! chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
//! chunk-ext-name = token
//! chunk-ext-val  = token / quoted-string
//! trailer-section = *( field-line CRLF )
//! ```
//!
//! Lines end with CRLF only (a bare LF or CR is refused); the size is hex digits only (no sign,
//! no `0x`, no whitespace before it or after it unless an extension follows), at most
//! [`MAX_SIZE_DIGITS`] of them; a size line is at most [`MAX_LINE`] bytes; quoted strings take
//! no obsolete (non-ASCII) text; a trailer line is `token ":" value` with visible ASCII, spaces
//! and tabs, and the trailers together are at most [`MAX_TRAILERS`] bytes. Chunk data is not
//! looked at, only counted, or handed out by [`ChunkedCheck::decode`].
//!
//! [`encode`] frames data as chunks again: what the gateway forwards of a chunked body (either
//! way) is the decoded data re-framed, never the sender's chunk lines.

use std::fmt;

/// The most hex digits of a chunk size (a size that fits in 64 bits).
pub const MAX_SIZE_DIGITS: u8 = 16;
/// The longest chunk-size line (size and extensions), CRLF not counted.
pub const MAX_LINE: usize = 4096;
/// The most bytes of the trailer section.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body was refused; the reason is for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of the chunk size (`digits` so far).
    Size,
    /// Whitespace after the size: only a `;` may follow.
    SizeSpace,
    /// After `;`: whitespace, then an extension name.
    ExtName {
        started: bool,
    },
    /// Whitespace after an extension name: `=` or `;` may follow.
    AfterName,
    /// After `=`: whitespace, then a token or a quoted string.
    ValueStart,
    Token,
    Quoted,
    QuotedPair,
    /// The quote that ends a quoted value.
    AfterQuoted,
    /// Whitespace after a value: only `;` may follow.
    AfterValue,
    /// The size line's CR was read.
    LineLf,
    /// Chunk data: `left` bytes to go.
    Data,
    DataCr,
    DataLf,
    /// The start of a trailer line, or the final CRLF.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    FinalLf,
    Done,
}

/// The check's state between pieces of the body. Feeding a body in any number of pieces gives
/// the same answer as feeding it whole.
#[derive(Debug, Clone)]
pub struct ChunkedCheck {
    state: State,
    digits: u8,
    size: u64,
    /// Data bytes left of the current chunk.
    left: u64,
    /// Bytes of the current size line, or of the trailer section.
    line: usize,
    /// Bytes of the body so far.
    total: u64,
}

impl Default for ChunkedCheck {
    fn default() -> Self {
        Self::new()
    }
}

fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

fn ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

impl ChunkedCheck {
    pub fn new() -> Self {
        ChunkedCheck {
            state: State::Size,
            digits: 0,
            size: 0,
            left: 0,
            line: 0,
            total: 0,
        }
    }

    /// Whether the whole body (last chunk, trailers and final CRLF) has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes of the body read so far.
    pub fn body_len(&self) -> u64 {
        self.total
    }

    /// Checks the next piece of the body. `Ok(n)`: the first `n` bytes of `buf` belong to the
    /// body and are well framed so far; `n < buf.len()` only once the body is complete (what
    /// follows is not the body's). `Err`: the framing is broken within `buf`.
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, ChunkError> {
        self.decode(buf, |_| {})
    }

    /// [`ChunkedCheck::feed`], decoding: `data` is called with each piece of chunk data in
    /// `buf`, in order (the framing, extensions and trailers are not passed on).
    pub fn decode(&mut self, buf: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < buf.len() {
            if self.state == State::Done {
                break;
            }
            if self.state == State::Data {
                let take = (buf.len() - i).min(usize::try_from(self.left).unwrap_or(usize::MAX));
                data(&buf[i..i + take]);
                i += take;
                self.left -= take as u64;
                if self.left == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            self.step(buf[i])?;
            i += 1;
        }
        self.total += i as u64;
        Ok(i)
    }

    /// Checks one whole body: `Ok` only if `buf` is exactly one complete chunked body.
    pub fn check(buf: &[u8]) -> Result<(), ChunkError> {
        let mut c = ChunkedCheck::new();
        let n = c.feed(buf)?;
        if !c.is_done() {
            return Err(ChunkError("incomplete chunked body"));
        }
        if n != buf.len() {
            return Err(ChunkError("bytes after the chunked body"));
        }
        Ok(())
    }

    fn size_line_byte(&mut self) -> Result<(), ChunkError> {
        self.line += 1;
        if self.line > MAX_LINE {
            return Err(ChunkError("chunk-size line too long"));
        }
        Ok(())
    }

    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        use State::*;
        let e = |why| Err(ChunkError(why));
        match self.state {
            Size => {
                self.size_line_byte()?;
                if let Some(d) = hex(b) {
                    if self.digits == MAX_SIZE_DIGITS {
                        return e("chunk size too large");
                    }
                    self.digits += 1;
                    self.size = self.size << 4 | d;
                    return Ok(());
                }
                if self.digits == 0 {
                    return e("chunk size is not hex digits");
                }
                self.state = match b {
                    b'\r' => LineLf,
                    b';' => ExtName { started: false },
                    b' ' | b'\t' => SizeSpace,
                    _ => return e("chunk size is not hex digits"),
                };
            }
            SizeSpace => {
                self.size_line_byte()?;
                self.state = match b {
                    b';' => ExtName { started: false },
                    b' ' | b'\t' => SizeSpace,
                    _ => return e("whitespace after the chunk size"),
                };
            }
            ExtName { started } => {
                self.size_line_byte()?;
                self.state = match b {
                    b' ' | b'\t' if !started => ExtName { started: false },
                    b if tchar(b) => ExtName { started: true },
                    _ if !started => return e("chunk extension without a name"),
                    b'=' => ValueStart,
                    b';' => ExtName { started: false },
                    b' ' | b'\t' => AfterName,
                    b'\r' => LineLf,
                    _ => return e("invalid chunk extension name"),
                };
            }
            AfterName => {
                self.size_line_byte()?;
                self.state = match b {
                    b if ws(b) => AfterName,
                    b'=' => ValueStart,
                    b';' => ExtName { started: false },
                    _ => return e("invalid chunk extension"),
                };
            }
            ValueStart => {
                self.size_line_byte()?;
                self.state = match b {
                    b if ws(b) => ValueStart,
                    b'"' => Quoted,
                    b if tchar(b) => Token,
                    _ => return e("invalid chunk extension value"),
                };
            }
            Token => {
                self.size_line_byte()?;
                self.state = match b {
                    b if tchar(b) => Token,
                    b';' => ExtName { started: false },
                    b if ws(b) => AfterValue,
                    b'\r' => LineLf,
                    _ => return e("invalid chunk extension value"),
                };
            }
            Quoted => {
                self.size_line_byte()?;
                self.state = match b {
                    b'"' => AfterQuoted,
                    b'\\' => QuotedPair,
                    b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e => Quoted,
                    _ => return e("invalid quoted chunk extension value"),
                };
            }
            QuotedPair => {
                self.size_line_byte()?;
                self.state = match b {
                    b'\t' | b' ' | 0x21..=0x7e => Quoted,
                    _ => return e("invalid quoted chunk extension value"),
                };
            }
            AfterQuoted => {
                self.size_line_byte()?;
                self.state = match b {
                    b if ws(b) => AfterValue,
                    b';' => ExtName { started: false },
                    b'\r' => LineLf,
                    _ => return e("invalid chunk extension"),
                };
            }
            AfterValue => {
                self.size_line_byte()?;
                self.state = match b {
                    b if ws(b) => AfterValue,
                    b';' => ExtName { started: false },
                    _ => return e("invalid chunk extension"),
                };
            }
            LineLf => {
                if b != b'\n' {
                    return e("bare CR in a chunk-size line");
                }
                self.line = 0;
                if self.size == 0 {
                    self.state = TrailerStart;
                } else {
                    self.left = self.size;
                    self.state = Data;
                }
                self.digits = 0;
                self.size = 0;
            }
            Data => unreachable!("data is counted in feed"),
            DataCr => {
                if b != b'\r' {
                    return e("chunk data longer than its size");
                }
                self.state = DataLf;
            }
            DataLf => {
                if b != b'\n' {
                    return e("bare CR after chunk data");
                }
                self.state = Size;
            }
            TrailerStart => {
                self.trailer_byte()?;
                self.state = match b {
                    b'\r' => FinalLf,
                    b if tchar(b) => TrailerName,
                    _ => return e("invalid trailer line"),
                };
            }
            TrailerName => {
                self.trailer_byte()?;
                self.state = match b {
                    b if tchar(b) => TrailerName,
                    b':' => TrailerValue,
                    _ => return e("invalid trailer line"),
                };
            }
            TrailerValue => {
                self.trailer_byte()?;
                self.state = match b {
                    b'\t' | b' ' | 0x21..=0x7e => TrailerValue,
                    b'\r' => TrailerLf,
                    _ => return e("invalid trailer line"),
                };
            }
            TrailerLf => {
                self.trailer_byte()?;
                if b != b'\n' {
                    return e("bare CR in a trailer line");
                }
                self.state = TrailerStart;
            }
            FinalLf => {
                if b != b'\n' {
                    return e("bare CR at the end of the chunked body");
                }
                self.state = Done;
            }
            Done => {}
        }
        Ok(())
    }

    fn trailer_byte(&mut self) -> Result<(), ChunkError> {
        self.line += 1;
        if self.line > MAX_TRAILERS {
            return Err(ChunkError("trailer section too large"));
        }
        Ok(())
    }
}

/// Appends one chunk holding `data` to `out` (nothing for empty data: an empty chunk would end
/// the body).
pub fn encode(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    let mut n = data.len();
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body: the last chunk and an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &[u8]) {
        assert_eq!(
            ChunkedCheck::check(body),
            Ok(()),
            "{:?}",
            String::from_utf8_lossy(body)
        );
        // byte by byte, the same
        let mut c = ChunkedCheck::new();
        for (i, b) in body.iter().enumerate() {
            assert_eq!(c.feed(std::slice::from_ref(b)), Ok(1), "at {i}");
        }
        assert!(c.is_done());
    }

    fn bad(body: &[u8]) -> &'static str {
        match ChunkedCheck::check(body) {
            Err(e) => e.0,
            Ok(()) => panic!("accepted {:?}", String::from_utf8_lossy(body)),
        }
    }

    #[test]
    fn well_framed_bodies() {
        ok(b"0\r\n\r\n");
        ok(b"000\r\n\r\n");
        ok(b"5\r\nhello\r\n0\r\n\r\n");
        ok(b"A\r\n0123456789\r\n0\r\n\r\n");
        ok(b"5;a=b\r\nhello\r\n0\r\n\r\n");
        ok(b"5;a\r\nhello\r\n0;x=\"q \\\" s\"\r\n\r\n");
        ok(b"5 ;a = b ; c\r\nhello\r\n0\r\n\r\n");
        ok(b"5\r\nhello\r\n0\r\nExpires: never\r\nX-T: a b\r\n\r\n");
        ok(b"0000000000000005\r\nhello\r\n0\r\n\r\n");
    }

    #[test]
    fn the_outside_findings_are_refused() {
        // (the issue's list: a bare ';', an invalid token, a control character, trailing
        // whitespace, a bare LF inside an extension)
        assert_eq!(
            bad(b"5;\r\nhello\r\n0\r\n\r\n"),
            "chunk extension without a name"
        );
        assert_eq!(
            bad(b"5;bad[=x\r\nhello\r\n0\r\n\r\n"),
            "invalid chunk extension name"
        );
        assert_eq!(
            bad(b"5;\0ext\r\nhello\r\n0\r\n\r\n"),
            "chunk extension without a name"
        );
        assert_eq!(
            bad(b"5 \r\nhello\r\n0\r\n\r\n"),
            "whitespace after the chunk size"
        );
        assert_eq!(
            bad(b"5;\nhello\r\n0\r\n\r\n"),
            "chunk extension without a name"
        );
        assert_eq!(
            bad(b"5;a\nhello\r\n0\r\n\r\n"),
            "invalid chunk extension name"
        );
    }

    #[test]
    fn malformed_sizes_and_lines() {
        for (body, why) in [
            (&b"\r\n"[..], "chunk size is not hex digits"),
            (b" 5\r\nhello\r\n0\r\n\r\n", "chunk size is not hex digits"),
            (b"+5\r\nhello\r\n0\r\n\r\n", "chunk size is not hex digits"),
            (b"-5\r\nhello\r\n0\r\n\r\n", "chunk size is not hex digits"),
            (b"0x5\r\nhello\r\n0\r\n\r\n", "chunk size is not hex digits"),
            (b"5\nhello\r\n0\r\n\r\n", "chunk size is not hex digits"),
            (b"5\r\rhello\r\n0\r\n\r\n", "bare CR in a chunk-size line"),
            (b"10000000000000005\r\n", "chunk size too large"),
            (
                b"5\r\nhello!\r\n0\r\n\r\n",
                "chunk data longer than its size",
            ),
            (b"5\r\nhello\n0\r\n\r\n", "chunk data longer than its size"),
            (b"5\r\nhello\r0\r\n\r\n", "bare CR after chunk data"),
            (
                b"5;a=\r\nhello\r\n0\r\n\r\n",
                "invalid chunk extension value",
            ),
            (
                b"5;a=\"x\r\nhello\r\n0\r\n\r\n",
                "invalid quoted chunk extension value",
            ),
            (
                b"5;a=\"\xe9\"\r\nhello\r\n0\r\n\r\n",
                "invalid quoted chunk extension value",
            ),
            (b"5;a=b \r\nhello\r\n0\r\n\r\n", "invalid chunk extension"),
            (b"5;a \r\nhello\r\n0\r\n\r\n", "invalid chunk extension"),
            (
                b"5;a=b\"c\r\nhello\r\n0\r\n\r\n",
                "invalid chunk extension value",
            ),
            (b"0\r\nX: \x01\r\n\r\n", "invalid trailer line"),
            (b"0\r\nX y: z\r\n\r\n", "invalid trailer line"),
            (b"0\r\n: z\r\n\r\n", "invalid trailer line"),
            (b"0\r\n X: z\r\n\r\n", "invalid trailer line"),
            (b"0\r\nX: z\n\r\n", "invalid trailer line"),
            (b"0\r\n\n", "invalid trailer line"),
            (b"0\r\n\rX", "bare CR at the end of the chunked body"),
            (b"5\r\nhel", "incomplete chunked body"),
            (b"0\r\n\r\nGET", "bytes after the chunked body"),
        ] {
            assert_eq!(bad(body), why, "{:?}", String::from_utf8_lossy(body));
        }
        let long = format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(MAX_LINE));
        assert_eq!(bad(long.as_bytes()), "chunk-size line too long");
        let trailers = format!("0\r\nX: {}\r\n\r\n", "a".repeat(MAX_TRAILERS));
        assert_eq!(bad(trailers.as_bytes()), "trailer section too large");
    }

    #[test]
    fn the_body_ends_where_its_framing_ends() {
        let mut c = ChunkedCheck::new();
        assert_eq!(c.feed(b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n"), Ok(13));
        assert!(c.is_done());
        assert_eq!(c.body_len(), 13);
        assert_eq!(c.feed(b"more"), Ok(0));
    }

    use proptest::prelude::*;

    /// One well-formed chunk-size line's extensions: `;name`, `;name=token` or
    /// `;name="quoted"`, with optional whitespace where the grammar allows it.
    fn ext() -> impl Strategy<Value = String> {
        let token = "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,8}";
        let quoted = "[ !#-\\[\\]-~]{0,8}".prop_map(|q| format!("\"{q}\""));
        let value = prop_oneof![token.prop_map(String::from), quoted];
        (
            "[ \t]{0,2}",
            "[ \t]{0,2}",
            token,
            proptest::option::of(("[ \t]{0,2}", "[ \t]{0,2}", value)),
        )
            .prop_map(|(a, b, name, v)| match v {
                Some((c, d, v)) => format!("{a};{b}{name}{c}={d}{v}"),
                None => format!("{a};{b}{name}"),
            })
    }

    /// A well-formed chunked body: its chunks' sizes, extensions and trailers vary.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        (
            proptest::collection::vec(
                (
                    1usize..40,
                    proptest::collection::vec(ext(), 0..3),
                    any::<bool>(),
                ),
                0..6,
            ),
            proptest::collection::vec(ext(), 0..2),
            proptest::collection::vec(("[a-zA-Z-]{1,8}", "[ -~]{0,12}"), 0..3),
        )
            .prop_map(|(chunks, last_ext, trailers)| {
                let mut out = Vec::new();
                for (size, exts, upper) in chunks {
                    let hex = if upper {
                        format!("{size:X}")
                    } else {
                        format!("{size:x}")
                    };
                    out.extend_from_slice(format!("{hex}{}\r\n", exts.concat()).as_bytes());
                    out.extend(std::iter::repeat_n(b'x', size));
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(format!("0{}\r\n", last_ext.concat()).as_bytes());
                for (name, value) in trailers {
                    out.extend_from_slice(format!("{name}:{value}\r\n").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                out
            })
    }

    proptest! {
        #[test]
        fn well_formed_bodies_are_accepted_in_any_pieces(body in body(), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..4)) {
            prop_assert_eq!(ChunkedCheck::check(&body), Ok(()));
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
            at.sort_unstable();
            let mut c = ChunkedCheck::new();
            let mut from = 0;
            for cut in at.into_iter().chain(std::iter::once(body.len())) {
                prop_assert_eq!(c.feed(&body[from..cut]), Ok(cut - from));
                from = cut;
            }
            prop_assert!(c.is_done());
            prop_assert_eq!(c.body_len(), body.len() as u64);
        }

        #[test]
        fn a_bare_lf_or_cr_anywhere_in_the_framing_is_refused(body in body(), at in any::<prop::sample::Index>(), lf in any::<bool>()) {
            // replace one CRLF of the framing (never inside chunk data, which is all 'x') by a
            // lone LF or CR
            let crlfs: Vec<usize> = body.windows(2).enumerate().filter(|(_, w)| *w == b"\r\n").map(|(i, _)| i).collect();
            let i = crlfs[at.index(crlfs.len())];
            let mut broken = body.clone();
            if lf { broken.remove(i); } else { broken.remove(i + 1); }
            prop_assert!(ChunkedCheck::check(&broken).is_err(), "{:?}", String::from_utf8_lossy(&broken));
        }

        #[test]
        fn any_body_re_framed_and_decoded_again_is_byte_identical(
            body in body(),
            data in proptest::collection::vec(any::<u8>(), 0..300),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..5),
        ) {
            // a well-formed body, decoded in pieces, then re-framed in other pieces
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
            at.sort_unstable();
            let (mut decoded, mut c, mut from) = (Vec::new(), ChunkedCheck::new(), 0);
            for cut in at.into_iter().chain(std::iter::once(body.len())) {
                prop_assert_eq!(c.decode(&body[from..cut], |d| decoded.extend_from_slice(d)), Ok(cut - from));
                from = cut;
            }
            prop_assert!(c.is_done());
            for payload in [decoded, data] {
                let mut framed = Vec::new();
                let mut rest = &payload[..];
                for cut in &cuts {
                    let (piece, tail) = rest.split_at(cut.index(rest.len() + 1));
                    encode(piece, &mut framed);
                    rest = tail;
                }
                encode(rest, &mut framed);
                framed.extend_from_slice(LAST_CHUNK);
                let mut again = Vec::new();
                let mut c = ChunkedCheck::new();
                prop_assert_eq!(c.decode(&framed, |d| again.extend_from_slice(d)), Ok(framed.len()));
                prop_assert!(c.is_done());
                prop_assert_eq!(again, payload);
            }
        }

        #[test]
        fn any_input_gets_the_same_answer_in_pieces(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            crate::invariants::chunked(&data);
        }
    }
}
