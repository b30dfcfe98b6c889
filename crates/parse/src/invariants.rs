//! The properties the fuzz targets (`fuzz/`) check on arbitrary input, shared with the
//! regression test that replays their seed corpora in the normal test run. Each function
//! panics when a property fails.

use crate::head::{HeadLimits, HeadScanner};
use std::borrow::Cow;

/// A canonical path is accepted again unchanged, starts with `/`, and holds no empty or dot
/// segment and no character the canonicaliser refuses.
pub fn path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(canon) = crate::path::canonical_path(raw) else {
        return;
    };
    let again = crate::path::canonical_path(&canon).expect("a canonical path is accepted");
    assert_eq!(again, canon, "canonicalisation is idempotent");
    assert!(matches!(again, Cow::Borrowed(_)));
    assert!(canon.starts_with('/'));
    assert!(!canon.contains("//"));
    for seg in canon.split('/') {
        assert!(seg != "." && seg != "..", "{canon:?}");
    }
    assert!(!canon.contains(['\\', ';', '?', '#', '\0']), "{canon:?}");
    assert!(
        !canon.contains("%2F") && !canon.contains("%2f"),
        "{canon:?}"
    );
}

/// Looking a name up never panics, and a name found once is found with its first value.
pub fn query(data: &[u8]) {
    use crate::query::{param, Param};
    let split = data.iter().position(|&b| b == 0).unwrap_or(0);
    let (name, q) = data.split_at(split);
    let name = String::from_utf8_lossy(name);
    let q = q.strip_prefix(&[0u8][..]).unwrap_or(q);
    match param(q, &name) {
        Param::Once(v) => {
            let mut same = form_urlencoded::parse(q).filter(|(k, _)| k.eq_ignore_ascii_case(&name));
            let (k, first) = same.next().expect("a parameter found once is there");
            assert_eq!((&*k, &*first), (&*name, &*v));
            assert!(same.next().is_none());
        }
        Param::Repeated => assert!(
            form_urlencoded::parse(q)
                .filter(|(k, _)| k.len() >= name.len()
                    && k.as_bytes()[..name.len()].eq_ignore_ascii_case(name.as_bytes()))
                .count()
                >= 1
        ),
        Param::Absent => assert!(!form_urlencoded::parse(q).any(|(k, _)| *k == name)),
    }
}

/// An accepted key is the value's tail, non-empty token68, with no space or non-ASCII byte.
pub fn auth(data: &[u8]) {
    if let Some(key) = crate::auth::bearer_token(data) {
        assert!(data.ends_with(key));
        assert_eq!(data.len(), key.len() + 7);
        assert!(!key.is_empty());
        assert!(key.iter().all(|b| b.is_ascii_graphic()), "{key:?}");
    }
}

/// An accepted body parses as JSON and is within the depth; a refused one for depth is deep.
pub fn json(data: &[u8]) {
    match crate::json::check(data, 64) {
        Ok(()) => {
            assert!(serde_json::from_slice::<serde_json::Value>(data).is_ok());
            assert!(crate::json::depth(data) <= 64);
        }
        Err(crate::json::JsonError::TooDeep) => assert!(crate::json::depth(data) > 64),
        Err(_) => {}
    }
}

/// The head scan gives the same answer whole and in two pieces, and an accepted head is within
/// the limits and ends with a blank line.
pub fn head(data: &[u8]) {
    let limits = HeadLimits {
        max_bytes: 4096,
        max_headers: 32,
    };
    let whole = crate::head::scan(data, limits);
    if let Ok(Some(info)) = whole {
        assert!(info.len <= limits.max_bytes);
        assert!(data[..info.len].ends_with(b"\r\n\r\n"));
    }
    for cut in [1, data.len() / 2, data.len().saturating_sub(1)] {
        if cut == 0 || cut >= data.len() {
            continue;
        }
        let mut s = HeadScanner::new();
        let first = s.scan(&data[..cut], limits);
        let result = match first {
            Ok(None) => s.scan(data, limits),
            // decided on the first piece: the whole input must decide the same
            other => {
                assert_eq!(other, whole, "cut at {cut}");
                continue;
            }
        };
        assert_eq!(result, whole, "cut at {cut}");
    }
}

/// The chunked check gives the same answer whole and in pieces (three cuts, and byte by byte
/// for short input), and what it accepts as a whole body ends with CRLF.
pub fn chunked(data: &[u8]) {
    use crate::chunked::ChunkedCheck;
    let mut whole = ChunkedCheck::new();
    let expected = whole.feed(data);
    if let Ok(n) = expected {
        assert!(n <= data.len());
        if whole.is_done() {
            assert!(data[..n].ends_with(b"\r\n"));
            assert_eq!(ChunkedCheck::check(&data[..n]), Ok(()));
        } else {
            assert_eq!(n, data.len(), "only a finished body stops early");
        }
    }
    let pieces = |cuts: &[usize]| {
        let mut c = ChunkedCheck::new();
        let mut at = 0;
        let mut total = 0;
        for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
            if cut < at || cut > data.len() {
                continue;
            }
            match c.feed(&data[at..cut]) {
                Ok(n) => total += n,
                Err(e) => return (Err(e), c.is_done()),
            }
            at = cut;
        }
        (Ok(total), c.is_done())
    };
    for cuts in [
        vec![1],
        vec![data.len() / 2],
        vec![data.len() / 3, 2 * data.len() / 3],
    ] {
        assert_eq!(pieces(&cuts), (expected, whole.is_done()), "cuts {cuts:?}");
    }
    if data.len() <= 256 {
        let every: Vec<usize> = (1..data.len()).collect();
        assert_eq!(pieces(&every), (expected, whole.is_done()), "byte by byte");
    }
}

/// A response head that is accepted ends with CRLF CRLF within the input, is accepted the same
/// on its own, and every shorter prefix of it is incomplete, never an error.
pub fn response(data: &[u8]) {
    use crate::response::{parse_response_head, ResponseLimits};
    let limits = ResponseLimits {
        max_bytes: 4096,
        max_headers: 32,
    };
    for to_head in [false, true] {
        let Ok(Some(h)) = parse_response_head(data, to_head, limits) else {
            continue;
        };
        assert!(h.len <= data.len() && h.len <= limits.max_bytes);
        assert!(data[..h.len].ends_with(b"\r\n\r\n"));
        assert_eq!(
            parse_response_head(&data[..h.len], to_head, limits),
            Ok(Some(h))
        );
        for cut in [0, 1, h.len / 2, h.len - 1] {
            assert_eq!(
                parse_response_head(&data[..cut], to_head, limits),
                Ok(None),
                "cut at {cut}"
            );
        }
        if to_head || h.status == 204 || h.status == 304 || (100..200).contains(&h.status) {
            assert_eq!(h.framing, crate::response::Framing::None);
        }
    }
}
