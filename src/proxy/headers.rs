//! Header hygiene between the client and the backend: what never reaches the backend, what a
//! backend's answer must not pass on, and HTTP/2 cookies joined for an HTTP/1 backend.

use super::*;

/// Hop-by-hop headers a backend response must not pass on (pingora writes its own
/// `Connection`, and framing headers for the client connection).
pub(super) const HOP_BY_HOP: [&str; 5] =
    ["keep-alive", "proxy-connection", "te", "trailer", "upgrade"];

/// Client headers that never reach the backend: the gateway's own identity headers (with
/// either separator), and headers some frameworks let override the path, the method or the
/// client's identity (`X-Original-URL` on IIS and Symfony, `X-HTTP-Method-Override` on Express
/// and Laravel, `Forwarded`, `X-Real-IP`, …). Header names arrive lower-cased.
pub(super) const STRIPPED: [&str; 14] = [
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-prefix",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

pub(super) fn is_stripped_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    let b = n.as_bytes();
    (b.len() >= 10
        && (b[..10].eq_ignore_ascii_case(b"x-vivreal-")
            || b[..10].eq_ignore_ascii_case(b"x_vivreal_")))
        || STRIPPED.contains(&n)
}

/// The `Cookie` fields of `headers` as one value, `"; "` between them.
pub(super) fn join_cookies(headers: &http::HeaderMap) -> HeaderValue {
    let mut out = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(v.as_bytes());
    }
    // joined valid values with "; " are a valid value
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}
