//! API keys are stored and looked up as SHA-256 hashes; a plaintext key is never kept or logged.

use sha2::{Digest, Sha256};

pub mod checksum;
pub mod enroll;

pub type KeyHash = [u8; 32];

/// The first 16 bytes of a key hash: what the in-memory key map stores (20 bytes an entry
/// instead of 36). A presented key matches a stored one when the first 128 bits of their
/// SHA-256 agree; finding a key that does so for someone else's key is a 128-bit second
/// preimage, as out of reach as the full 256.
pub type KeyPrefix = [u8; 16];

pub fn key_prefix(hash: &KeyHash) -> KeyPrefix {
    let mut p = [0u8; 16];
    p.copy_from_slice(&hash[..16]);
    p
}

/// A map keyed by key-hash prefixes. SHA-256 output is already uniformly spread, so the map's
/// hash is its first 8 bytes: no second hash on the request path. A client cannot shape the
/// table: it holds only the hashes of keys we issued, and a lookup of any other hash probes one
/// bucket.
pub type KeyMap<V> =
    std::collections::HashMap<KeyPrefix, V, std::hash::BuildHasherDefault<PrefixHasher>>;

/// See [`KeyMap`]: takes the first 8 bytes written, ignores the length prefix.
#[derive(Default)]
pub struct PrefixHasher(u64);

impl std::hash::Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut head = [0u8; 8];
        let n = bytes.len().min(8);
        head[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(head);
    }
    fn write_usize(&mut self, _len: usize) {}
}

/// SHA-256 of a presented API key.
pub fn hash_key(key: &[u8]) -> KeyHash {
    Sha256::digest(key).into()
}

/// `sha256:<64 lowercase hex>`, the form the tenants file stores.
pub fn format_key_hash(hash: &KeyHash) -> String {
    format!("sha256:{}", hex::encode(hash))
}

/// Parses the stored form. Anything else (a plaintext key above all) is refused.
pub fn parse_key_hash(s: &str) -> Result<KeyHash, String> {
    let refuse = || {
        "not a key hash: keys are stored as sha256:<64 lowercase hex> (make one with \
         `vivgate hash-key`); a plaintext key is refused"
            .to_string()
    };
    let hex_part = s.strip_prefix("sha256:").ok_or_else(refuse)?;
    if hex_part.len() != 64
        || !hex_part
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(refuse());
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| refuse())?;
    Ok(out)
}

/// A short, non-reversible tag of a key hash for logs: the first 8 hex digits of the hash.
pub fn fingerprint(hash: &KeyHash) -> String {
    hex::encode(&hash[..4])
}

/// `vivgate hash-key`: one trailing newline (LF or CRLF) is stripped; empty input is an error.
pub fn hash_key_input(input: &[u8]) -> Result<String, &'static str> {
    let key = input
        .strip_suffix(b"\r\n")
        .or_else(|| input.strip_suffix(b"\n"))
        .unwrap_or(input);
    if key.is_empty() {
        return Err("empty key: write the API key on standard input");
    }
    // a key that is not a bearer token could never authenticate: its hash would be dead weight
    let mut header = b"Bearer ".to_vec();
    header.extend_from_slice(key);
    if vivgate_parse::auth::bearer_token(&header).is_none() {
        return Err("not a valid API key: a key is a bearer token (token68: letters, digits and                     - . _ ~ + /, optionally ending in =), on one line");
    }
    Ok(format_key_hash(&hash_key(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_key_strips_one_newline() {
        let a = hash_key_input(b"secret\n").unwrap();
        assert_eq!(a, hash_key_input(b"secret").unwrap());
        assert_eq!(a, hash_key_input(b"secret\r\n").unwrap());
        // a second newline, a space: not a key that could ever authenticate
        assert!(hash_key_input(b"secret\n\n").is_err());
        assert!(hash_key_input(b"my key with space").is_err());
        assert!(hash_key_input(b"abc==").is_ok());
        // sha256("secret")
        assert_eq!(
            a,
            "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
        );
        assert!(hash_key_input(b"\n").is_err());
        assert!(hash_key_input(b"").is_err());
    }

    #[test]
    fn parse_round_trips_and_refuses_plaintext() {
        let h = hash_key(b"k");
        assert_eq!(parse_key_hash(&format_key_hash(&h)).unwrap(), h);
        assert!(parse_key_hash("vk_live_abcdef").is_err());
        assert!(parse_key_hash(&format_key_hash(&h).to_uppercase()).is_err());
        assert!(parse_key_hash("sha256:abc").is_err());
    }
}
