//! JSON request bodies: not empty, at most `max_depth` arrays and objects deep, and valid JSON.
//! The depth is checked first, in one pass without recursion, so a nesting bomb costs a scan.

/// Why a body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonError {
    Empty,
    TooDeep,
    Invalid,
}

/// Checks `body`. serde_json validates the syntax; it is only reached once the depth is known
/// to be within bounds.
pub fn check(body: &[u8], max_depth: usize) -> Result<(), JsonError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(JsonError::Empty);
    }
    if depth(body) > max_depth {
        return Err(JsonError::TooDeep);
    }
    // JSON text is UTF-8 (RFC 8259); serde_json does not check strings it skips
    let text = std::str::from_utf8(body).map_err(|_| JsonError::Invalid)?;
    serde_json::from_str::<Valid>(text)
        .map(|_| ())
        .map_err(|_| JsonError::Invalid)
}

/// Any JSON value, checked the way a backend that parses it would: every string decoded (escapes
/// and surrogate pairs), every number read, nothing kept. (serde's `IgnoredAny` skips strings
/// without decoding them and would pass `"\ud800"`, which serde_json's `Value` refuses.)
struct Valid;

impl<'de> serde::Deserialize<'de> for Valid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValidVisitor)
    }
}

struct ValidVisitor;

impl<'de> serde::de::Visitor<'de> for ValidVisitor {
    type Value = Valid;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_str<E>(self, _: &str) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_unit<E>(self) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Valid, A::Error> {
        while a.next_element::<Valid>()?.is_some() {}
        Ok(Valid)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Valid, A::Error> {
        while a.next_entry::<Valid, Valid>()?.is_some() {}
        Ok(Valid)
    }
}

/// The deepest nesting of `[` and `{` outside strings (an upper bound on invalid input).
pub fn depth(body: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &b in body {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        assert_eq!(check(b"{}", 64), Ok(()));
        assert_eq!(
            check(br#"{"a":[1,{"b":"[[[{"}]}"#, 2),
            Err(JsonError::TooDeep)
        );
        assert_eq!(check(br#"{"a":[1,{"b":"[[[{"}]}"#, 3), Ok(()));
        assert_eq!(check(br#"{"a":"\"[[["}"#, 1), Ok(()));
        assert_eq!(check(b"", 64), Err(JsonError::Empty));
        assert_eq!(check(b"  \n", 64), Err(JsonError::Empty));
        assert_eq!(check(b"{", 64), Err(JsonError::Invalid));
        assert_eq!(check(b"{\"a\":1} x", 64), Err(JsonError::Invalid));
        assert_eq!(check(b"{\"a\":\"\xff\"}", 64), Err(JsonError::Invalid));
        assert_eq!(check(br#""\ud800""#, 64), Err(JsonError::Invalid));
        assert_eq!(check(br#""\ud83d\ude00""#, 64), Ok(()));
        assert_eq!(
            check(
                br#"{"a\u0000":[true,null,-1.5e3,18446744073709551615]}"#,
                64
            ),
            Ok(())
        );
        let at = "[".repeat(64) + &"]".repeat(64);
        assert_eq!(check(at.as_bytes(), 64), Ok(()));
        let over = "[".repeat(65) + &"]".repeat(65);
        assert_eq!(check(over.as_bytes(), 64), Err(JsonError::TooDeep));
        let bomb = "[".repeat(100_000);
        assert_eq!(check(bomb.as_bytes(), 64), Err(JsonError::TooDeep));
    }
}
