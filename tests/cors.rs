//! Browser clients: `[cors]` preflights are answered without a key and without metering, every
//! answer to an allowed origin (envelopes included, the front's own refusals too) carries the
//! CORS headers, and every answer carries `Vary: Origin`.

mod common;

use common::*;

const ORIGIN: &str = "https://app.vivreal.test";

async fn cors_harness() -> Harness {
    Harness::start_with(|c| {
        c + &format!("\n[cors]\nallowed_origins = [\"{ORIGIN}\", \"http://localhost:3000\"]\n")
    })
    .await
}

fn preflight(origin: &str, method: &str, headers: &str) -> String {
    format!(
        "OPTIONS /tenant/collectionObjects HTTP/1.1\nHost: t\nOrigin: {origin}\nAccess-Control-Request-Method: {method}\nAccess-Control-Request-Headers: {headers}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_preflight_is_204_without_a_key_and_not_metered() {
    let h = cors_harness().await;
    let mut c = h.client().await;
    let r = c
        .request(
            &preflight(ORIGIN, "GET", "Authorization, X-Request-Id"),
            b"",
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, HEAD, POST, PUT, PATCH, DELETE")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization, content-type, x-request-id")
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(r.header("vary"), Some("Origin"));
    // the connection stays usable, and nothing reached the backend or was counted
    assert_eq!(
        c.get(
            &format!("/tenant/collectionObjects?collectionId={OID}"),
            Some("key-tiny")
        )
        .await
        .status,
        200
    );
    assert_eq!(h.backend.total(), 1);
    assert_eq!(h.usage("key-tiny").calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_preflight_is_a_403_envelope() {
    let h = cors_harness().await;
    for (origin, method, headers) in [
        ("https://evil.test", "GET", "authorization"),
        ("https://app.vivreal.test.evil.test", "GET", "authorization"),
        ("http://app.vivreal.test", "GET", "authorization"),
        (ORIGIN, "TRACE", "authorization"),
        (ORIGIN, "get", "authorization"),
        (ORIGIN, "GET", "authorization, x-evil"),
    ] {
        let r = h
            .client()
            .await
            .request(&preflight(origin, method, headers), b"")
            .await;
        assert_envelope(&r, 403, "CORS preflight refused");
        if origin != ORIGIN {
            assert_eq!(r.header("access-control-allow-origin"), None, "{origin}");
        }
    }
    assert_eq!(h.backend.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_an_allowed_origin_carry_the_cors_headers() {
    let h = cors_harness().await;
    let target = format!("/tenant/collectionObjects?collectionId={OID}");
    // an envelope: a browser can read the error message
    let r = h
        .client()
        .await
        .request(
            &format!("GET {target} HTTP/1.1\nHost: t\nOrigin: {ORIGIN}"),
            b"",
        )
        .await;
    assert_envelope(&r, 401, "Missing Authorization header");
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
    assert!(r
        .header("access-control-expose-headers")
        .unwrap()
        .contains("ratelimit"));
    // a backend answer
    let r = h
        .client()
        .await
        .request(
            &format!("GET {target} HTTP/1.1\nHost: t\nOrigin: http://localhost:3000\nAuthorization: Bearer key-pro"),
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    // another origin gets no CORS headers (the browser then hides the answer)
    let r = h
        .client()
        .await
        .request(
            &format!("GET {target} HTTP/1.1\nHost: t\nOrigin: https://evil.test\nAuthorization: Bearer key-pro"),
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(
        r.header("vary"),
        Some("Origin"),
        "a cache keys it by origin"
    );
    // and without any Origin
    let r = h.get(&target, Some("key-pro")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(r.header("access-control-allow-origin"), None);
    // a group's own usage, for a browser dashboard
    let r = h
        .client()
        .await
        .request(
            &format!(
                "GET /v1/usage HTTP/1.1\nHost: t\nOrigin: {ORIGIN}\nAuthorization: Bearer key-pro"
            ),
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(r.header("vary"), Some("Origin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_to_other_origins_vary_by_origin_too() {
    let h = cors_harness().await;
    for (origin, key) in [("https://evil.test", None), ("", Some("nope"))] {
        let origin_line = if origin.is_empty() {
            String::new()
        } else {
            format!("\nOrigin: {origin}")
        };
        let auth = key.map_or(String::new(), |k| format!("\nAuthorization: Bearer {k}"));
        let r = h
            .client()
            .await
            .request(
                &format!(
                    "GET /tenant/siteDetails?siteId={OID} HTTP/1.1\nHost: t{origin_line}{auth}"
                ),
                b"",
            )
            .await;
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.header("vary"), Some("Origin"), "{origin:?}");
        assert_eq!(r.header("access-control-allow-origin"), None);
    }
    // two Origin headers: neither is trusted
    let r = h
        .client()
        .await
        .request(
            &format!("GET /tenant/siteDetails?siteId={OID} HTTP/1.1\nHost: t\nOrigin: {ORIGIN}\nOrigin: {ORIGIN}"),
            b"",
        )
        .await;
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fronts_own_refusals_carry_the_cors_headers() {
    let h = Harness::start_with(|c| {
        c + &format!(
            "\n[cors]\nallowed_origins = [\"{ORIGIN}\"]\n[limits]\nhead_timeout_ms = 600\nmax_header_lines = 8\n"
        )
    })
    .await;
    let cors = |r: &Resp, origin: Option<&str>| {
        assert_eq!(r.header("vary"), Some("Origin"), "{}", r.text());
        assert_eq!(
            r.header("access-control-allow-origin"),
            origin,
            "{}: {:?}",
            r.status,
            r.headers
        );
        if origin.is_some() {
            assert!(r
                .header("access-control-expose-headers")
                .unwrap()
                .contains("x-request-id"));
        }
    };
    // 431: one header line too many, the Origin among the first
    let mut head =
        format!("GET /tenant/siteDetails?siteId={OID} HTTP/1.1\r\nHost: t\r\nOrigin: {ORIGIN}\r\n");
    for i in 0..8 {
        head.push_str(&format!("X-Filler-{i}: a\r\n"));
    }
    head.push_str("\r\n");
    let mut c = h.client().await;
    c.send_raw(head.as_bytes()).await;
    let r = c.read_response().await;
    assert_envelope(&r, 431, "");
    cors(&r, Some(ORIGIN));
    // 400: a malformed head (a bare LF after the Origin line)
    let mut c = h.client().await;
    c.send_raw(
        format!("GET / HTTP/1.1\r\nHost: t\r\nOrigin: {ORIGIN}\r\nX: a\nY: b\r\n\r\n").as_bytes(),
    )
    .await;
    let r = c.read_response().await;
    assert_envelope(&r, 400, "");
    cors(&r, Some(ORIGIN));
    // 408: the head stops after the Origin line
    let mut c = h.client().await;
    c.send_raw(format!("GET / HTTP/1.1\r\nHost: t\r\nOrigin: {ORIGIN}\r\nX-Slow: ").as_bytes())
        .await;
    let r = c.read_response().await;
    assert_envelope(&r, 408, "");
    cors(&r, Some(ORIGIN));
    // another origin, or an Origin line that did not arrive whole: Vary only
    let mut c = h.client().await;
    c.send_raw(b"GET / HTTP/1.1\r\nHost: t\r\nOrigin: https://evil.test\r\nX: a\nY: b\r\n\r\n")
        .await;
    let r = c.read_response().await;
    assert_envelope(&r, 400, "");
    cors(&r, None);
    let mut c = h.client().await;
    c.send_raw(format!("GET / HTTP/1.1\r\nHost: t\r\nOrigin: {ORIGIN}").as_bytes())
        .await;
    let r = c.read_response().await;
    assert_envelope(&r, 408, "");
    cors(&r, None);
    assert_eq!(h.backend.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cors_a_preflight_is_an_ordinary_request() {
    let h = Harness::start().await;
    let r = h
        .client()
        .await
        .request(&preflight(ORIGIN, "GET", "authorization"), b"")
        .await;
    assert_envelope(&r, 401, "Missing Authorization header");
    assert_eq!(r.header("access-control-allow-origin"), None);
}
