//! Step 6: a `json_body` route's body, read whole (at most `limits.max_json_body`: 413 above;
//! a pause longer than `limits.body_idle_timeout_ms`: 408) and checked before anything is
//! forwarded: not empty, valid JSON (any value), nested at most `limits.max_json_depth` (400).

use vivgate_parse::json::JsonError;

use super::Transport;
use crate::config::Limits;
use crate::error::GatewayError;

/// Step 6 for the body `t` brings.
pub async fn json<T: Transport>(t: &mut T, limits: &Limits) -> Result<(), GatewayError> {
    let body = t
        .read_body(limits.max_json_body, limits.body_idle_timeout)
        .await?;
    check(&body, limits.max_json_depth)
}

/// A JSON body: not empty, nested at most `max_depth` deep, and valid JSON (any value).
pub fn check(body: &[u8], max_depth: usize) -> Result<(), GatewayError> {
    match vivgate_parse::json::check(body, max_depth) {
        Ok(()) => Ok(()),
        Err(JsonError::TooDeep) => Err(GatewayError::JsonTooDeep),
        Err(JsonError::Empty | JsonError::Invalid) => Err(GatewayError::InvalidJson),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_rules() {
        assert_eq!(check(b"{\"a\":1}", 64), Ok(()));
        assert_eq!(check(b"3", 64), Ok(()));
        assert_eq!(check(b" [] ", 64), Ok(()));
        assert_eq!(check(b"", 64), Err(GatewayError::InvalidJson));
        assert_eq!(check(b"{", 64), Err(GatewayError::InvalidJson));
        assert_eq!(check(b"{} {}", 64), Err(GatewayError::InvalidJson));
        assert_eq!(check(b"[[1]]", 1), Err(GatewayError::JsonTooDeep));
    }
}
