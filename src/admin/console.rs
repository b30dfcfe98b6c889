//! The operators' console: a page, a script and a style sheet compiled into the binary and
//! served by the admin listener at `/` (no CDN, no build step). The page signs in with the admin
//! token (kept in the tab's `sessionStorage`, sent as a bearer header) and reads and changes
//! everything through the admin API, like any other client.
//!
//! Every admin answer carries headers that keep a browser strict: a Content-Security-Policy
//! that allows only the listener's own script, styles and API (no inline script, no framing),
//! `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`.

use http::header::{HeaderName, HeaderValue};

use crate::respond::Reply;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// The console's file at `path`, if it is one.
pub(super) fn file(path: &str) -> Option<Reply> {
    let (content_type, body) = match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", PAGE),
        "/console.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "/console.css" => ("text/css; charset=utf-8", STYLE),
        _ => return None,
    };
    Some(Reply::other(200, content_type, body.as_bytes().to_vec()))
}

/// The headers of every admin answer (the API's JSON included: it is never to be framed,
/// sniffed or leaked through a referrer either).
pub(super) fn strict_headers(reply: &mut Reply) {
    const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
        img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
        frame-ancestors 'none'";
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        reply.headers.push((
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        ));
    }
}
