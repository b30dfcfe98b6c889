//! The `Authorization` header, strictly: `Bearer` (any case), exactly one space, and a key made
//! of token68 characters (`A-Z a-z 0-9 - . _ ~ + /`, then `=` padding only at the end). A
//! header that bends the grammar (no scheme, two spaces, a tab, a trailing space, a non-ASCII
//! byte) is refused rather than guessed at, since the backend or a log might read it otherwise.

/// The key in an `Authorization` value, or `None` when the value is malformed.
pub fn bearer_token(v: &[u8]) -> Option<&[u8]> {
    if v.len() < 8 || !v[..6].eq_ignore_ascii_case(b"bearer") || v[6] != b' ' {
        return None;
    }
    let key = &v[7..];
    let body_end = key.iter().position(|&b| b == b'=').unwrap_or(key.len());
    let (body, pad) = key.split_at(body_end);
    let token_char =
        |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
    (!body.is_empty() && body.iter().all(token_char) && pad.iter().all(|&b| b == b'='))
        .then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_strict_form_is_a_key() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer abc"), Some(&b"abc"[..]));
        assert_eq!(
            bearer_token(b"BEARER a-b.c_d~e+f/g=="),
            Some(&b"a-b.c_d~e+f/g=="[..])
        );
        for bad in [
            &b""[..],
            b"abc",
            b"Bearer",
            b"Bearer ",
            b"Bearer  abc",
            b"Bearer\tabc",
            b"Bearer abc ",
            b" Bearer abc",
            b"Bearer a bc",
            b"Basic abc",
            b"Bearerabc",
            b"Bearer =abc",
            b"Bearer a=b",
            b"Bearer ab\xc3\xa9",
            b"Bearer ab\x00",
            b"Bearer ab,cd",
            b"Bearer \"abc\"",
        ] {
            assert_eq!(bearer_token(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
