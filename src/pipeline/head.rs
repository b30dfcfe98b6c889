//! Step 0, the parsed head: an HTTP/2 head gets the rules the front applies to an HTTP/1 head
//! (its framing is the h2 crate's), and the path is made canonical or refused.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header;
use vivgate_parse::head::{check_field_name, check_host, check_target};
use vivgate_parse::path::canonical_path;

use super::Request;
use crate::config::Limits;
use crate::error::GatewayError;

/// Step 0: the head rules HTTP/2 did not get from the front, then one canonical path (borrowed
/// when the request already spelled it canonically), and the query string as sent.
pub fn check<'r>(
    req: &Request<'r>,
    limits: &Limits,
) -> Result<(Cow<'r, str>, Option<&'r str>), GatewayError> {
    let target = std::str::from_utf8(req.target)
        .map_err(|_| GatewayError::Malformed("the request target is not ASCII"))?;
    if req.http2 {
        h2_head(req, target, limits)?;
    }
    // what the transport parsed is what was sent
    if req.parsed_target.is_some_and(|p| p != req.target) {
        return Err(GatewayError::Malformed("the request target is ambiguous"));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let path = canonical_path(path).map_err(|e| GatewayError::Malformed(e.as_str()))?;
    Ok((path, query))
}

/// The front's HTTP/1 head rules that apply to an HTTP/2 request: no CONNECT, an origin-form
/// `:path` of allowed bytes, a valid authority and `Host`, no header name that reads as a
/// framing header to an HTTP/1 backend, and the head limits (header lines and bytes: 431).
fn h2_head(req: &Request<'_>, target: &str, limits: &Limits) -> Result<(), GatewayError> {
    if *req.method == http::Method::CONNECT {
        return Err(GatewayError::ConnectNotAllowed);
    }
    check_target(target).map_err(GatewayError::from)?;
    if let Some(a) = req.authority {
        check_host(a.as_bytes()).map_err(GatewayError::from)?;
    }
    for h in req.headers.get_all(header::HOST) {
        check_host(h.as_bytes()).map_err(GatewayError::from)?;
    }
    // forwarded to HTTP/1 backends, where `Transfer_Encoding` may read as Transfer-Encoding
    for n in req.headers.keys() {
        check_field_name(n.as_str().as_bytes()).map_err(GatewayError::from)?;
    }
    // the request line and the blank line of an HTTP/1 head, roughly; browsers send each cookie
    // as a field of its own over HTTP/2, which is one `Cookie` line over HTTP/1
    let mut bytes = req.method.as_str().len() + req.target.len() + 16;
    let mut lines = 0;
    let mut cookie_seen = false;
    for (n, v) in req.headers.iter() {
        if n == header::COOKIE {
            bytes += v.len() + if cookie_seen { 2 } else { 10 };
            lines += usize::from(!cookie_seen);
            cookie_seen = true;
        } else {
            bytes += n.as_str().len() + v.len() + 4;
            lines += 1;
        }
    }
    if lines > limits.head.max_headers || bytes > limits.head.max_bytes {
        return Err(GatewayError::HeadTooLarge);
    }
    Ok(())
}

/// The client's address. Behind a trusted proxy (`server.trusted_proxies`) it is the rightmost
/// `X-Forwarded-For` hop that is not itself trusted (every header line, right to left); a
/// malformed hop ends the walk there. Otherwise, and without the header, the peer address.
pub fn client_ip(
    peer: Option<IpAddr>,
    headers: &http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> Option<IpAddr> {
    let peer = peer?;
    if trusted.is_empty() || !trusted.iter().any(|n| n.contains(&peer)) {
        return Some(peer);
    }
    let values: Vec<&http::HeaderValue> = headers.get_all("x-forwarded-for").iter().collect();
    let mut client = peer;
    for v in values.iter().rev() {
        let Ok(list) = v.to_str() else {
            return Some(client);
        };
        for hop in list.rsplit(',') {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                return Some(client);
            };
            client = ip;
            if !trusted.iter().any(|n| n.contains(&ip)) {
                return Some(ip);
            }
        }
    }
    Some(client)
}

/// A client-chosen request id is kept if it matches `[A-Za-z0-9._-]{1,64}`.
pub fn valid_request_id(v: &[u8]) -> bool {
    (1..=64).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-123_x.y"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(&[b'a'; 65]));
        assert!(!valid_request_id(b"a b"));
    }
}
