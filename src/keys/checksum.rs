//! Keys minted by `vivgate keys new`: a recognisable prefix, 43 base62 characters drawn from the
//! OS's random source (256 bits), and 6 base62 characters of the CRC32 of everything before
//! them, as GitHub's token format does. The prefix lets secret scanners find a leaked key; the
//! checksum lets the gateway refuse a mistyped or made-up key before any hash lookup, and
//! `vivgate keys check` tell offline whether a key is well-formed.
//!
//! Which prefixes carry a checksum is configured (`[keys] checksum_prefixes`); keys without
//! such a prefix (minted elsewhere) are looked up as before.

/// The prefix of `vivgate keys new` unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "vgk_";

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// 43 base62 characters: 43 × log2(62) = 256.03 bits.
const BODY: usize = 43;
const CHECK: usize = 6;

/// The CRC32 of `head` as 6 base62 characters (62^6 > 2^32).
fn check_chars(head: &[u8]) -> [u8; CHECK] {
    let mut n = crc32fast::hash(head) as u64;
    let mut out = [b'0'; CHECK];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// A new key with `prefix`: 43 uniform base62 characters from the OS's random source (bytes
/// of 248 or more are drawn again, so every character is uniform), then the checksum.
pub fn mint(prefix: &str) -> Result<String, String> {
    let mut body = Vec::with_capacity(BODY);
    let mut pool = [0u8; 64];
    while body.len() < BODY {
        getrandom::fill(&mut pool).map_err(|e| format!("the OS's random source: {e}"))?;
        body.extend(
            pool.iter()
                .filter(|&&b| b < 248)
                .map(|&b| ALPHABET[usize::from(b % 62)])
                .take(BODY - body.len()),
        );
    }
    let mut key = prefix.as_bytes().to_vec();
    key.extend_from_slice(&body);
    let check = check_chars(&key);
    key.extend_from_slice(&check);
    String::from_utf8(key).map_err(|e| e.to_string())
}

/// What a key is, for the prefixes that carry a checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It has none of the prefixes: minted elsewhere, looked up as it is.
    NotChecked,
    /// It has one and is well-formed.
    Valid,
    /// It has one and the length, the characters or the checksum are wrong.
    Invalid(&'static str),
}

/// Checks `key` against the checksum prefixes (on the request path: a prefix comparison, and a
/// CRC32 of about 50 bytes for a key that has one).
pub fn verify(key: &[u8], prefixes: &[Box<[u8]>]) -> Verdict {
    let Some(prefix) = prefixes.iter().find(|p| key.starts_with(p)) else {
        return Verdict::NotChecked;
    };
    let rest = &key[prefix.len()..];
    if rest.len() != BODY + CHECK {
        return Verdict::Invalid("wrong length");
    }
    if !rest.iter().all(u8::is_ascii_alphanumeric) {
        return Verdict::Invalid("a character that is not a letter or a digit");
    }
    let (head, check) = key.split_at(key.len() - CHECK);
    if check_chars(head) != check {
        return Verdict::Invalid("bad checksum");
    }
    Verdict::Valid
}

/// A checksum prefix as configured: 2 to 16 letters, digits or `_`, `-`, `.`.
pub fn valid_prefix(p: &str) -> bool {
    (2..=16).contains(&p.len())
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes(ps: &[&str]) -> Vec<Box<[u8]>> {
        ps.iter().map(|p| p.as_bytes().into()).collect()
    }

    #[test]
    fn minted_keys_verify_and_a_typo_does_not() {
        let ps = prefixes(&[DEFAULT_PREFIX, "acme_"]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let k = mint(DEFAULT_PREFIX).unwrap();
            assert_eq!(k.len(), DEFAULT_PREFIX.len() + 49);
            assert!(k.starts_with("vgk_"));
            assert_eq!(verify(k.as_bytes(), &ps), Verdict::Valid);
            // a token68 bearer token
            assert!(vivgate_parse::auth::bearer_token(format!("Bearer {k}").as_bytes()).is_some());
            assert!(seen.insert(k.clone()), "no repeats");
            // every single-character change is caught
            let mut typo = k.clone().into_bytes();
            let i = DEFAULT_PREFIX.len() + (typo[10] as usize % 49);
            typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
            assert_ne!(verify(&typo, &ps), Verdict::Valid);
        }
        let acme = mint("acme_").unwrap();
        assert_eq!(verify(acme.as_bytes(), &ps), Verdict::Valid);
        assert_eq!(verify(b"key-pro", &ps), Verdict::NotChecked);
        assert_eq!(verify(b"vgk_short", &ps), Verdict::Invalid("wrong length"));
        let bad = format!("vgk_{}", "-".repeat(49));
        assert_eq!(
            verify(bad.as_bytes(), &ps),
            Verdict::Invalid("a character that is not a letter or a digit")
        );
        let forged = format!("vgk_{}", "A".repeat(49));
        assert_eq!(
            verify(forged.as_bytes(), &ps),
            Verdict::Invalid("bad checksum")
        );
        // without the prefix configured, the same key is not checked
        assert_eq!(
            verify(forged.as_bytes(), &prefixes(&["acme_"])),
            Verdict::NotChecked
        );
    }

    #[test]
    fn the_characters_are_uniform() {
        let mut counts = [0u32; 62];
        for _ in 0..400 {
            for b in mint("p_").unwrap().as_bytes()[2..2 + BODY].iter() {
                counts[ALPHABET.iter().position(|a| a == b).unwrap()] += 1;
            }
        }
        // 17,200 draws: each of the 62 expected 277 times
        assert!(
            counts.iter().all(|&c| (180..380).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(valid_prefix("vgk_") && valid_prefix("acme-live.") && !valid_prefix("x"));
        assert!(!valid_prefix("has space") && !valid_prefix("abcdefghijklmnopq"));
    }
}
