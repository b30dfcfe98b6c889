//! HTTP/2 cookies joined for an HTTP/1 backend (the other header rules are in
//! [`crate::exchange`]).

use super::*;

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
