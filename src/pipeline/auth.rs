//! Steps 0b, 1 and 2: who is asking. A client address blocked for failed authentications is
//! refused before any key lookup (429); the key must be `Bearer <token68>` in exactly one
//! `Authorization` header and its SHA-256 known and not revoked (401); the key's group must
//! not be deactivated (403) nor frozen (400).

use std::net::IpAddr;
use std::time::Instant;

use http::header::AUTHORIZATION;
use http::HeaderMap;
use vivgate_parse::auth::bearer_token;

use super::{Admitted, Refused};
use crate::abuse::FailedAuth;
use crate::config::{Group, GroupStatus, Snapshot};
use crate::error::GatewayError;
use crate::keys::checksum::{self, Verdict};
use crate::keys::{hash_key, KeyHash};
use crate::overrides::Overrides;

/// The failed-auth limit (`limits.failed_auth`) and the client it applies to.
pub type FailedAuthLimit = Option<(crate::config::FailedAuthLimit, IpAddr)>;

/// Step 0b: a client blocked for failed authentications gets a 429 until the block ends.
pub fn not_blocked(limiter: &FailedAuth, limit: FailedAuthLimit) -> Result<(), GatewayError> {
    if let Some((_, ip)) = limit {
        if let Some(left) = limiter.blocked_now(ip) {
            return Err(GatewayError::AuthBlocked(left.as_secs().max(1)));
        }
    }
    Ok(())
}

/// Counts a 401 of steps 1 and 2 against the client; enough of them block it.
pub fn count_failure(
    limiter: &FailedAuth,
    limit: FailedAuthLimit,
    checked: &Result<Admitted<'_>, Refused<'_>>,
) {
    if let (Err(r), Some((limit, ip))) = (checked, limit) {
        if r.error.status() == 401 && limiter.record(ip, Instant::now(), limit) {
            tracing::info!(target: "vivgate::audit", client = %ip, "client blocked after failed authentications");
        }
    }
}

/// Step 1: `Authorization: Bearer <key>` (scheme case-insensitive, one space, a token68 key),
/// exactly one such header, a valid checksum when the key has a checksum prefix (refused before
/// hashing), and a key whose SHA-256 is known. A missing header is `MissingKey`; anything else
/// that fails (another scheme, a malformed value, two headers, a bad checksum, an unknown key)
/// is `InvalidKey`.
pub fn authenticate<'s>(
    snap: &'s Snapshot,
    headers: &HeaderMap,
) -> Result<(&'s Group, KeyHash), GatewayError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(GatewayError::MissingKey)?;
    if values.next().is_some() {
        return Err(GatewayError::InvalidKey);
    }
    let key = bearer_token(value.as_bytes()).ok_or(GatewayError::InvalidKey)?;
    if let Verdict::Invalid(_) = checksum::verify(key, &snap.key_prefixes) {
        return Err(GatewayError::InvalidKey);
    }
    let hash = hash_key(key);
    let group = snap.group_for(&hash).ok_or(GatewayError::InvalidKey)?;
    Ok((group, hash))
}

/// Step 2, with the admin overrides: a revoked key is refused as an unknown one (401), and a
/// status override wins over the tenants table.
pub fn effective_status(
    group: &Group,
    key: &KeyHash,
    overrides: &Overrides,
) -> Result<GroupStatus, GatewayError> {
    if overrides.is_empty() {
        Ok(group.status)
    } else if overrides.is_revoked(key) {
        Err(GatewayError::InvalidKey)
    } else {
        Ok(overrides.status_of(group))
    }
}

/// Step 2: a deactivated group is refused (403).
pub fn not_deactivated(status: GroupStatus) -> Result<(), GatewayError> {
    match status {
        GroupStatus::Deactivated => Err(GatewayError::GroupDeactivated),
        _ => Ok(()),
    }
}

/// Step 2: a frozen group is refused (400, the message says "frozen").
pub fn not_frozen(status: GroupStatus) -> Result<(), GatewayError> {
    match status {
        GroupStatus::Frozen => Err(GatewayError::GroupFrozen),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::test_support::snapshot;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn authenticate_tells_missing_from_invalid() {
        let s = snapshot();
        assert_eq!(
            authenticate(&s, &headers(&[])).unwrap_err(),
            GatewayError::MissingKey
        );
        assert_eq!(
            authenticate(&s, &headers(&["Bearer nope"])).unwrap_err(),
            GatewayError::InvalidKey
        );
        assert_eq!(
            authenticate(&s, &headers(&["Bearer k1", "Bearer k1"])).unwrap_err(),
            GatewayError::InvalidKey
        );
        let (g, hash) = authenticate(&s, &headers(&["bearer k1"])).unwrap();
        assert_eq!(&*g.id, "g1");
        assert_eq!(hash, hash_key(b"k1"));
        let (g2, _) = authenticate(&s, &headers(&["Bearer k2"])).unwrap();
        assert_eq!(not_frozen(g.status), Ok(()));
        assert_eq!(not_frozen(g2.status), Err(GatewayError::GroupFrozen));
    }
}
