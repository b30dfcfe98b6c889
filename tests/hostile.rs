//! The adversarial suite: one test per attack class, with concrete payloads, each asserting the
//! answer (status and envelope) and that the recording backend saw only validated requests.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Sends `raw` bytes on a new connection and reads one response (`None`: closed unanswered).
async fn raw(h: &Harness, bytes: &[u8]) -> (Client, Option<Resp>) {
    let mut c = h.client().await;
    c.send_raw(bytes).await;
    let r = c.try_read_response().await;
    (c, r)
}

fn get_head(target: &str, key: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\r\n")
}

/// Refused path spellings: (target, what the envelope says).
const BAD_PATHS: &[(&str, &str)] = &[
    ("/cdn/../tenant/collectionObjects", ". or .. segment"),
    ("/cdn/./x", ". or .. segment"),
    ("/cdn/%2e%2e/x", ". or .. segment"),
    ("/cdn/%2E%2E/x", ". or .. segment"),
    ("/cdn/.%2e/x", ". or .. segment"),
    ("/cdn/%2e./x", ". or .. segment"),
    ("/cdn/%2e/x", ". or .. segment"),
    ("/cdn/..", ". or .. segment"),
    ("/cdn/x/..", ". or .. segment"),
    ("/info/../cdn/x", ". or .. segment"),
    ("/cdn/a%2fb", "encoded slash"),
    ("/cdn/a%2Fb", "encoded slash"),
    ("/cdn%2f..%2ftenant", "encoded slash"),
    ("/cdn/%2e%2e%2fx", "encoded slash"),
    ("/cdn/a%5cb", "backslash"),
    ("/cdn/a\\b", "must be percent-encoded"),
    ("/cdn/..\\x", "must be percent-encoded"),
    ("/cdn/a%00b", "control character"),
    ("/cdn/a%0a", "control character"),
    ("/cdn/a%0d%0aX-Injected:%201", "control character"),
    ("/cdn/a%09b", "control character"),
    ("/cdn/a%7f", "control character"),
    ("//cdn/x", "empty segment"),
    ("/cdn//x", "empty segment"),
    ("/cdn/x//", "empty segment"),
    ("//evil.example/cdn/x", "empty segment"),
    ("/cdn/a;b", "; parameter"),
    ("/cdn/a;jsessionid=1", "; parameter"),
    ("/cdn/a%3bb", "; parameter"),
    ("/cdn/a%", "malformed percent escape"),
    ("/cdn/a%2", "malformed percent escape"),
    ("/cdn/a%zz", "malformed percent escape"),
    ("/cdn/%u002e%u002e/x", "malformed percent escape"),
    ("/cdn/a%ff", "not valid UTF-8"),
    (
        "/cdn/%252e%252e/tenant/collectionObjects",
        "percent-encoded twice",
    ),
    ("/cdn/a%252fb", "percent-encoded twice"),
    ("/cdn/a%25%32%66b", "percent-encoded twice"),
    ("/cdn/a%c3", "not valid UTF-8"),
    ("/cdn/a%c0%af", "not valid UTF-8"),
    ("/cdn/a%e0%80%ae", "not valid UTF-8"),
    ("/cdn/x#frag", "must not carry a fragment"),
    ("/cdn/x?a=1#frag", "must not carry a fragment"),
    ("/cdn/a\"b", "must be percent-encoded"),
    ("/cdn/a<b>", "must be percent-encoded"),
    ("/cdn/a{b}", "must be percent-encoded"),
    ("/cdn/a|b", "must be percent-encoded"),
    ("http://evil.example/cdn/x", "path starting with /"),
    ("HTTP://evil.example/cdn/x", "path starting with /"),
    ("*", "path starting with /"),
    ("cdn/x", "path starting with /"),
    ("/cdn/caf\u{e9}", "must be percent-encoded"),
    ("/cdn/a^b", "must be percent-encoded"),
    ("/cdn/a`b", "must be percent-encoded"),
    ("/cdn/a[0]", "must be percent-encoded"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_are_refused_and_never_forwarded() {
    let h = Harness::start().await;
    assert!(BAD_PATHS.len() >= 40);
    for (target, needle) in BAD_PATHS {
        let (mut c, resp) = raw(&h, get_head(target, "key-pro").as_bytes()).await;
        let resp = resp.unwrap_or_else(|| panic!("{target:?}: closed without an answer"));
        assert_eq!(resp.status, 400, "{target:?}");
        assert_eq!(
            resp.header("content-type"),
            Some("application/json"),
            "{target:?}: {resp:?}"
        );
        assert_envelope(&resp, 400, needle);
        assert!(resp.text().contains("Bad request"), "{target:?}");
        assert!(c.is_closed().await, "{target:?}: the connection closes");
    }
    assert_eq!(h.backend.total(), 0, "no refused path reached the backend");
    assert_eq!(h.usage("key-pro").calls, 0, "refusals are not charged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equivalent_spellings_are_forwarded_in_canonical_form() {
    let h = Harness::start().await;
    let cases = [
        ("/%63dn/x", "/cdn/x"),
        ("/cdn/%78", "/cdn/x"),
        ("/cdn/%c3%a9", "/cdn/%C3%A9"),
        ("/cdn/%C3%A9", "/cdn/%C3%A9"),
        ("/cdn/a%25zz", "/cdn/a%25zz"), // a literal % stays encoded
        ("/cdn/a%20b", "/cdn/a%20b"),
        ("/cdn/.../x", "/cdn/.../x"),
        ("/cdn/a%7e", "/cdn/a~"),
        (
            &format!("/tenant/collectionObject%73?collectionId={OID}"),
            &format!("/tenant/collectionObjects?collectionId={OID}"),
        ),
        (
            &format!("/tenant/%63ollectionObjects?%63ollectionId={OID}&x=%2F"),
            &format!("/tenant/collectionObjects?%63ollectionId={OID}&x=%2F"),
        ),
    ];
    for (i, (target, forwarded)) in cases.iter().enumerate() {
        let (_, resp) = raw(&h, get_head(target, "key-pro").as_bytes()).await;
        let resp = resp.unwrap();
        assert_eq!(resp.status, 200, "{target}: {}", resp.text());
        let got = h.backend.received();
        assert_eq!(got.len(), i + 1);
        assert_eq!(&got[i].uri, forwarded, "{target}");
    }
    // matching is exact on the canonical path: no case folding, no trailing-slash guessing
    for target in ["/CDN/x", "/cdn", "/tenant/collectionobjects"] {
        let (_, resp) = raw(&h, get_head(target, "key-pro").as_bytes()).await;
        assert_envelope(&resp.unwrap(), 404, "Not found");
    }
    assert_eq!(h.backend.total(), cases.len() as u64);
}

/// Smuggling vectors (after the public request-smuggling research: CL.TE, TE.CL, TE.TE
/// obfuscations, duplicate and malformed lengths, folds, bare line ends). Each carries a
/// second request; the backend must see neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_vectors_are_refused_and_the_connection_closes() {
    let h = Harness::start().await;
    let smuggled = format!(
        "GET /tenant/collectionObjects?collectionId={OID} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\n\r\n"
    );
    let post = "POST /status/200 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\n";
    let vectors: Vec<(String, &str)> = vec![
        (format!("{post}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), "both Content-Length and Transfer-Encoding"),
        (format!("{post}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\n"), "both Content-Length and Transfer-Encoding"),
        (format!("{post}Content-Length: 0\r\nContent-Length: 44\r\n\r\n"), "more than one Content-Length"),
        (format!("{post}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"), "more than one Content-Length"),
        (format!("{post}Content-Length: 5, 5\r\n\r\nhello"), "invalid Content-Length"),
        (format!("{post}Content-Length: -1\r\n\r\n"), "invalid Content-Length"),
        (format!("{post}Content-Length: +5\r\n\r\nhello"), "invalid Content-Length"),
        (format!("{post}Content-Length: 0x05\r\n\r\nhello"), "invalid Content-Length"),
        (format!("{post}Content-Length: 5 5\r\n\r\n"), "invalid Content-Length"),
        (format!("{post}Content-Length: 18446744073709551616\r\n\r\n"), "invalid Content-Length"),
        (format!("{post}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n"), "more than one Transfer-Encoding"),
        (format!("{post}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"), "unsupported Transfer-Encoding"),
        (format!("{post}Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n"), "unsupported Transfer-Encoding"),
        (format!("{post}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"), "unsupported Transfer-Encoding"),
        (format!("{post}Transfer-Encoding: chunked;\r\n\r\n0\r\n\r\n"), "unsupported Transfer-Encoding"),
        (format!("{post}Transfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n"), "unsupported Transfer-Encoding"),
        (format!("{post}Transfer-Encoding: chunked\r\n \r\n\r\n0\r\n\r\n"), "obsolete line folding"),
        (format!("{post}Content-Length: 0\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n"), "obsolete line folding"),
        (format!("{post}X: y\r\n\tContent-Length: 5\r\n\r\n"), "obsolete line folding"),
        (format!("{post}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"), "malformed request head"),
        (format!("{post}Transfer-Encoding\x0b: chunked\r\n\r\n0\r\n\r\n"), "malformed request head"),
        (format!("{post}Content-Length: 0\nTransfer-Encoding: chunked\r\n\r\n"), "bare LF"),
        (format!("{post}Content-Length: 0\r\n\n"), "bare LF"),
        (format!("{post}Content-Length: 0\rX: y\r\n\r\n"), "bare CR"),
        ("POST /status/200 HTTP/1.0\r\nAuthorization: Bearer key-pro\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_string(), "Transfer-Encoding on HTTP/1.0"),
        ("GET /status/200 HTTP/1.1\r\nAuthorization: Bearer key-pro\r\n\r\n".to_string(), "exactly one Host"),
        ("GET /status/200 HTTP/1.1\r\nHost: a\r\nHost: b\r\nAuthorization: Bearer key-pro\r\n\r\n".to_string(), "exactly one Host"),
        ("GET /status/200 HTTP/1.1\r\nHost: key@evil.example\r\nAuthorization: Bearer key-pro\r\n\r\n".to_string(), "invalid Host"),
        ("GET /status/200 HTTP/1.1\r\nHost: evil.example/x\r\nAuthorization: Bearer key-pro\r\n\r\n".to_string(), "invalid Host"),
        ("GET /status/200 HTTP/1.1 extra\r\nHost: a\r\n\r\n".to_string(), "malformed request head"),
        ("GET /status/200 HTTP/2.0\r\nHost: a\r\n\r\n".to_string(), "malformed request head"),
        (format!("{post}Content-Length: 005\r\n\r\nhello"), "Content-Length with a leading zero"),
        (format!("{post}Content-Length: 0200\r\n\r\n"), "Content-Length with a leading zero"),
        (format!("{post}Transfer_Encoding: chunked\r\n\r\n0\r\n\r\n"), "a header name with _ that reads as a framing header"),
        (format!("{post}Content_Length: 99\r\n\r\n"), "a header name with _ that reads as a framing header"),
        (format!("{post}Content-Length: 5\r\nContent_Length: 99\r\n\r\nhello"), "a header name with _ that reads as a framing header"),
        ("GET /status/200 HTTP/1.1\r\nHost:\r\nAuthorization: Bearer key-pro\r\n\r\n".to_string(), "empty Host"),
        ("GET /status/200 HTTP/1.1\r\nHost: \r\nAuthorization: Bearer key-pro\r\n\r\n".to_string(), "empty Host"),
        ("G\x00T /status/200 HTTP/1.1\r\nHost: a\r\n\r\n".to_string(), "malformed request head"),
    ];
    for (head, needle) in &vectors {
        let mut bytes = head.clone().into_bytes();
        bytes.extend_from_slice(smuggled.as_bytes());
        let (mut c, resp) = raw(&h, &bytes).await;
        let resp = resp.unwrap_or_else(|| panic!("{head:?}: closed without an answer"));
        assert_envelope(&resp, 400, needle);
        assert_eq!(resp.header("connection"), Some("close"), "{head:?}");
        assert!(c.is_closed().await, "{head:?}: the connection closes");
    }
    assert_eq!(h.backend.total(), 0, "the backend saw no request at all");

    // a valid chunked request carrying a second request after its body: the first is served,
    // the connection then closes (no pipelining), the second is never forwarded
    let mut bytes =
        format!("{post}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").into_bytes();
    bytes.extend_from_slice(smuggled.as_bytes());
    let (mut c, resp) = raw(&h, &bytes).await;
    assert_eq!(resp.unwrap().status, 200);
    let second = c.try_read_response().await;
    assert!(
        second.is_none(),
        "the pipelined request is not answered: {second:?}"
    );
    assert_eq!(h.backend.total(), 1);
    assert_eq!(h.backend.received()[0].body, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_upgrade_and_h2_preface_are_refused() {
    let h = Harness::start().await;
    let (_, resp) = raw(
        &h,
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
    )
    .await;
    let resp = resp.unwrap();
    assert_envelope(&resp, 405, "Method not allowed");
    assert!(resp.header("allow").is_some());
    let (_, resp) = raw(&h, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    assert_envelope(&resp.unwrap(), 400, "Bad request");
    for upgrade in [
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        "Upgrade: websocket",
    ] {
        let head = format!(
            "GET /status/200 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\n{upgrade}\r\n\r\n"
        );
        let (_, resp) = raw(&h, head.as_bytes()).await;
        assert_envelope(&resp.unwrap(), 400, "upgrade is not allowed");
    }
    assert_eq!(h.backend.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_may_allow_upgrades() {
    let h = Harness::start_with(|c| {
        c.replace(
            "prefix = \"/status/\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"api\"",
            "prefix = \"/status/\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"api\"\nupgrade = true",
        )
    })
    .await;
    let head = "GET /status/200 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let (_, resp) = raw(&h, head.as_bytes()).await;
    // the test backend does not speak WebSocket: it answers 200, but the request got through
    assert_eq!(resp.unwrap().status, 200);
    assert_eq!(h.backend.total(), 1);
    assert_eq!(h.backend.received()[0].header("upgrade"), Some("websocket"));
    // never to HTTP/2: what it would carry through the tunnel would skip every check
    for upgrade in ["h2c", "websocket, H2C", "h2c/1"] {
        let head = format!("GET /status/200 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\nUpgrade: {upgrade}\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n");
        let (_, resp) = raw(&h, head.as_bytes()).await;
        assert_envelope(&resp.unwrap(), 400, "upgrade is not allowed");
    }
    assert_eq!(h.backend.total(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_pollution_is_refused() {
    let h = Harness::start().await;
    let other = "651f0c2ab4e8a90087654321";
    let cases = [
        format!("/tenant/collectionObjects?collectionId={OID}&collectionId={other}"),
        format!("/tenant/collectionObjects?collectionId={OID}&collectionId={OID}"),
        format!("/tenant/collectionObjects?collectionId={OID}&%63ollectionId={other}"),
        format!("/tenant/collectionObjects?%63%6f%6cl%65ctionId={OID}&collectionId={other}"),
        format!("/tenant/collectionObjects?collectionId={OID}&collectionId="),
        format!("/tenant/collectionObjects?collectionId=&collectionId={OID}"),
        format!("/tenant/collectionObjects?CollectionId={other}&collectionId={OID}"),
        format!("/tenant/collectionObjects?collectionId={OID}&collectionId%5B%24ne%5D=1"),
        format!("/tenant/collectionObjects?collectionId={OID}&collectionId%5B%5D={other}"),
        format!("/tenant/collectionObjects?collectionId={OID}&collectionId.x=1"),
        format!("/tenant/collectionObjects?collectionid={OID}"),
        format!("/tenant/siteDetails?siteId={OID}&siteId={other}"),
        format!("/tenant/siteDetails?siteId={OID}&site%49d={other}"),
        "/tenant/integrationObjects?type=a&type=b".to_string(),
        "/tenant/integrationObjects?type=a&t%79pe=b".to_string(),
        "/tenant/integrationObjects?type=a&%74ype=a".to_string(),
    ];
    for target in &cases {
        let (_, resp) = raw(&h, get_head(target, "key-pro").as_bytes()).await;
        assert_envelope(&resp.unwrap(), 400, "is given more than once");
    }
    // a raw `;` splits parameters for some servers only
    for target in [
        "/tenant/integrationObjects?type=a;type=b".to_string(),
        format!("/tenant/collectionObjects?collectionId={OID};x=1"),
    ] {
        let (_, resp) = raw(&h, get_head(&target, "key-pro").as_bytes()).await;
        assert_envelope(&resp.unwrap(), 400, "; in the query string");
    }
    // `a b` in two spellings is the same name
    let (_, resp) = raw(
        &h,
        get_head(
            "/tenant/integrationObjects?type=x&ty+pe=1&ty%20pe=2",
            "key-pro",
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(resp.unwrap().status, 200, "other names may repeat");
    assert_eq!(h.backend.total(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_never_reach_the_backend() {
    let h = Harness::start().await;
    let spoof = [
        "X-Vivreal-Group-Id: aaaaaaaaaaaaaaaaaaaaaa02",
        "x-vivreal-tier: enterprise",
        "X-VIVREAL-ADMIN: 1",
        "X_Vivreal_Group_Id: aaaaaaaaaaaaaaaaaaaaaa02",
        "x_vivreal_tier: enterprise",
        "X-Vivreal-Request-Signed: yes",
        "X-Forwarded-For: 203.0.113.9",
        "X-Forwarded-For: 198.51.100.1, 203.0.113.9",
        "Forwarded: for=203.0.113.9;proto=https",
        "X-Real-IP: 203.0.113.9",
        "True-Client-IP: 203.0.113.9",
        "X-Forwarded-Host: admin.internal",
        "X-Forwarded-Proto: https",
        "X-Original-URL: /admin/delete",
        "X-Rewrite-URL: /admin/delete",
        "X-HTTP-Method-Override: DELETE",
        "X-Method-Override: DELETE",
    ];
    let head = format!(
        "GET /status/200 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-free\r\n{}\r\n\r\n",
        spoof.join("\r\n")
    );
    let (_, resp) = raw(&h, head.as_bytes()).await;
    assert_eq!(resp.unwrap().status, 200);
    let got = h.backend.received();
    let r = &got[0];
    let vivreal: Vec<_> = r
        .headers
        .iter()
        .filter(|(n, _)| {
            let n = n.to_ascii_lowercase();
            n.starts_with("x-vivreal") || n.starts_with("x_vivreal")
        })
        .collect();
    assert_eq!(
        vivreal,
        vec![
            &(
                "x-vivreal-group-id".to_string(),
                group_id("key-free").to_string()
            ),
            &("x-vivreal-tier".to_string(), "free".to_string()),
        ]
    );
    assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        r.headers
            .iter()
            .filter(|(n, _)| n == "x-forwarded-for")
            .count(),
        1
    );
    for name in [
        "forwarded",
        "x-real-ip",
        "true-client-ip",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-method-override",
    ] {
        assert_eq!(r.header(name), None, "{name} is not forwarded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_authorization_headers_are_401() {
    let h = Harness::start_with(|c| c + "\n[limits]\nfailed_auth_limit = 0\n").await;
    let target = "/status/200";
    let variants: Vec<Vec<u8>> = vec![
        b"Authorization: key-pro".to_vec(),
        b"Authorization: Bearer  key-pro".to_vec(),
        b"Authorization: Bearer key-pro extra".to_vec(),
        b"Authorization: Bearer\tkey-pro".to_vec(),
        b"Authorization: Bearerkey-pro".to_vec(),
        b"Authorization: Basic a2V5LXBybzo=".to_vec(),
        b"Authorization: Bearer".to_vec(),
        b"Authorization: Bearer ".to_vec(),
        b"Authorization:".to_vec(),
        b"Authorization: Bearer key-pro\xc3\xa9".to_vec(),
        b"Authorization: Bearer \xffkey-pro".to_vec(),
        b"Authorization: Bearer key-pro\r\nAuthorization: Bearer key-pro".to_vec(),
        b"Authorization: Bearer key-pro\r\nauthorization: Bearer key-free".to_vec(),
        b"Authorization: Bearer key-pro, Bearer key-free".to_vec(),
        b"Authorization: Bearer \"key-pro\"".to_vec(),
        b"Authorization: Bearer key-pro=x".to_vec(),
        b"Authorization: Bearer =".to_vec(),
        b"Authorization: Token key-pro".to_vec(),
        b"Authorization: Bearer KEY-PRO".to_vec(),
        b"X-Api-Key: key-pro".to_vec(),
    ];
    for v in &variants {
        let mut head = format!("GET {target} HTTP/1.1\r\nHost: t\r\n").into_bytes();
        head.extend_from_slice(v);
        head.extend_from_slice(b"\r\n\r\n");
        let (_, resp) = raw(&h, &head).await;
        let resp = resp.unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(v)));
        assert_eq!(resp.status, 401, "{}", String::from_utf8_lossy(v));
        assert_envelope(&resp, 401, "");
    }
    // the strict form, with the scheme in any case, is accepted
    for v in ["Bearer key-pro", "bearer key-pro", "BEARER key-pro"] {
        let (_, resp) = raw(
            &h,
            format!("GET {target} HTTP/1.1\r\nHost: t\r\nAuthorization: {v}\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(resp.unwrap().status, 200, "{v}");
    }
    assert_eq!(h.backend.total(), 3);
}

/// A head of exactly `len` bytes (blank line included) with `lines` header lines.
fn sized_head(len: usize, lines: usize) -> String {
    let mut s =
        String::from("GET /status/200 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\n");
    for i in 2..lines - 1 {
        s.push_str(&format!("X-{i:03}: v\r\n"));
    }
    let fixed = s.len() + "X-Pad: \r\n\r\n".len();
    assert!(len >= fixed, "{len} < {fixed}");
    s.push_str(&format!("X-Pad: {}\r\n\r\n", "a".repeat(len - fixed)));
    assert_eq!(s.len(), len);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_limits_at_minus_one_zero_plus_one() {
    let h = Harness::start().await;
    for (len, status) in [(32_767, 200), (32_768, 200), (32_769, 431)] {
        let (mut c, resp) = raw(&h, sized_head(len, 10).as_bytes()).await;
        let resp = resp.unwrap();
        if status == 431 {
            assert_envelope(&resp, 431, "Request header fields too large");
            assert!(c.is_closed().await);
        } else {
            assert_eq!(resp.status, 200, "{len} bytes");
        }
    }
    for (lines, status) in [(99, 200), (100, 200), (101, 431)] {
        let (_, resp) = raw(&h, sized_head(4_000, lines).as_bytes()).await;
        let resp = resp.unwrap();
        assert_eq!(resp.status, status, "{lines} lines");
        if status == 431 {
            assert_envelope(&resp, 431, "too large");
        }
    }
    // an endless head is cut off at the limit, without waiting for its end
    let mut c = h.client().await;
    c.send_raw(format!("GET /status/200 HTTP/1.1\r\nX: {}", "a".repeat(40_000)).as_bytes())
        .await;
    assert_envelope(&c.read_response().await, 431, "too large");
    assert_eq!(h.backend.total(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_body_limits_and_bombs() {
    let h = Harness::start().await;
    let post = |body: &[u8]| {
        let mut b = format!(
            "POST /tenant/collectionObjects HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        b.extend_from_slice(body);
        b
    };
    // size: a JSON string padded to limit -1, limit, limit +1
    for (len, status) in [(65_535, 200), (65_536, 200), (65_537, 413)] {
        let body = format!("\"{}\"", "a".repeat(len - 2));
        let (_, resp) = raw(&h, &post(body.as_bytes())).await;
        let resp = resp.unwrap();
        assert_eq!(resp.status, status, "{len} bytes");
        if status == 413 {
            assert_envelope(&resp, 413, "too large");
        }
    }
    // depth: 63, 64, 65
    for (depth, status) in [(63, 200), (64, 200), (65, 400)] {
        let body = "[".repeat(depth) + &"]".repeat(depth);
        let (_, resp) = raw(&h, &post(body.as_bytes())).await;
        let resp = resp.unwrap();
        assert_eq!(resp.status, status, "depth {depth}");
        if status == 400 {
            assert_envelope(&resp, 400, "nested too deeply");
        }
    }
    let bombs: Vec<(Vec<u8>, u16)> = vec![
        ("[".repeat(60_000).into_bytes(), 400),
        ("{\"a\":".repeat(10_000).into_bytes(), 400),
        (("[".repeat(64) + &"]".repeat(63)).into_bytes(), 400), // unbalanced
        ("{\"a\":1,\"a\":2}".as_bytes().to_vec(), 200),         // duplicate keys are valid JSON
        (b"[1,2,3]".to_vec(), 200),
        (b"\"\\ud800\"".to_vec(), 400), // a lone surrogate: backends that decode refuse it
        (b"\xef\xbb\xbf{}".to_vec(), 400), // a BOM
        (b"{\"a\":\"\xff\"}".to_vec(), 400), // not UTF-8
        (b"NaN".to_vec(), 400),
        (b"{} {}".to_vec(), 400),
    ];
    let mut served = 4;
    for (body, status) in &bombs {
        let (_, resp) = raw(&h, &post(body)).await;
        let resp = resp.unwrap();
        assert_eq!(
            resp.status,
            *status,
            "{:?}",
            String::from_utf8_lossy(&body[..body.len().min(40)])
        );
        if *status == 400 {
            assert_envelope(&resp, 400, "JSON");
        } else {
            served += 1;
        }
    }
    assert_eq!(h.backend.total(), served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_get_408_or_a_close() {
    let h = Harness::start_with(|c| {
        c + "\n[limits]\nhead_timeout_ms = 600\nbody_idle_timeout_ms = 600\nkeepalive_timeout_ms = 800\n"
    })
    .await;
    // a head that stops half way
    let mut c = h.client().await;
    let t = Instant::now();
    c.send_raw(b"GET /status/200 HTTP/1.1\r\nHost: t\r\nAuthor")
        .await;
    let resp = c.read_response().await;
    assert_envelope(&resp, 408, "did not arrive in time");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(c.is_closed().await);

    // slowloris: one byte every 100 ms keeps every read short, but the whole head has 600 ms
    let mut c = h.client().await;
    let t = Instant::now();
    let head = get_head("/status/200", "key-pro");
    let mut answered = None;
    for b in head.as_bytes() {
        // stop before the gateway's linger ends, so our bytes do not meet a closed socket
        if t.elapsed() > Duration::from_millis(900) || c.try_send(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(r) = c.try_read_response().await {
        answered = Some(r);
    }
    let r = answered.expect("an answer before the close");
    assert_envelope(&r, 408, "did not arrive in time");

    // a connection that never sends is closed without an answer
    let mut c = h.client().await;
    assert!(c.try_read_response().await.is_none());

    // a JSON body that stalls: 408, the connection ends, nothing is forwarded
    let mut c = h.client().await;
    c.send_raw(b"POST /tenant/collectionObjects HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\nContent-Length: 10\r\n\r\n[1,")
        .await;
    let t = Instant::now();
    assert_envelope(&c.read_response().await, 408, "body stalled");
    assert!(c.is_closed().await);
    assert!(t.elapsed() < Duration::from_secs(5));

    // an idle keep-alive connection is closed after keepalive_timeout_ms
    let mut c = h.client().await;
    assert_eq!(c.get("/status/200", Some("key-pro")).await.status, 200);
    let t = Instant::now();
    assert!(c.try_read_response().await.is_none());
    assert!(
        t.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        h.backend.total(),
        1,
        "only the complete request was forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_request_caps() {
    let h = Harness::start_with(|c| {
        c + "\n[limits]\nmax_connections = 2\nmax_requests_per_connection = 3\n"
    })
    .await;
    let mut a = h.client().await;
    let mut b = h.client().await;
    assert_eq!(a.get("/status/200", Some("key-pro")).await.status, 200);
    assert_eq!(b.get("/status/200", Some("key-pro")).await.status, 200);
    let (mut c, resp) = raw(&h, get_head("/status/200", "key-pro").as_bytes()).await;
    let resp = resp.unwrap();
    assert_envelope(&resp, 503, "too many connections");
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert!(c.is_closed().await);
    // the third request on a connection is its last
    assert_eq!(a.get("/status/200", Some("key-pro")).await.status, 200);
    let last = a.get("/status/200", Some("key-pro")).await;
    assert_eq!(last.status, 200);
    assert_eq!(last.header("connection"), Some("close"));
    assert!(a.is_closed().await);
    drop(a);
    // a slot is free again
    wait_for("a connection slot", || async {
        let (_, r) = raw(&h, get_head("/status/200", "key-pro").as_bytes()).await;
        r.is_some_and(|r| r.status == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_guessing_is_blocked_per_address() {
    let h = Harness::start_with(|c| {
        c + "\n[limits]\nfailed_auth_limit = 3\nfailed_auth_window_ms = 10000\nfailed_auth_block_ms = 1500\n"
    })
    .await;
    for guess in ["guess-1", "guess-2", "guess-3"] {
        assert_envelope(&h.get("/status/200", Some(guess)).await, 401, "Invalid");
    }
    // blocked: even a valid key gets a 429 (no key lookup happens)
    let r = h.get("/status/200", Some("key-pro")).await;
    assert_envelope(&r, 429, "Too many failed authentication attempts");
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&secs), "{secs}");
    assert_eq!(h.backend.total(), 0);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(h.get("/status/200", Some("key-pro")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_limit_per_group_is_429_and_not_charged() {
    let h = Harness::start_with(|c| {
        c.replace("[tiers.tiny]\n", "[tiers.tiny]\nburst_per_second = 3\n")
    })
    .await;
    let mut c = h.client().await;
    let target = format!("/tenant/collectionObjects?collectionId={OID}");
    let mut ok = 0u64;
    let mut limited = 0;
    let t = Instant::now();
    for _ in 0..10 {
        let r = c.get(&target, Some("key-tiny-overage")).await;
        match r.status {
            200 => ok += 1,
            429 => {
                assert_envelope(&r, 429, "3 requests per second");
                assert_eq!(r.header("retry-after"), Some("1"));
                limited += 1;
            }
            s => panic!("{s}"),
        }
    }
    // requests within one elapsed span touch at most ceil(span) + 1 one-second windows, each
    // admitting at most 3
    let windows = t.elapsed().as_secs() + 2;
    assert!(ok <= 3 * windows, "ok {ok} in {:?}", t.elapsed());
    assert!(limited >= 1 || windows > 3, "ok {ok}, limited {limited}");
    assert!(ok >= 3, "ok {ok}");
    assert_eq!(
        h.usage("key-tiny-overage").calls + h.usage("key-tiny-overage").calls_overage,
        ok
    );
    assert_eq!(h.backend.total(), ok);
    // other groups are not limited
    for _ in 0..5 {
        assert_eq!(c.get(&target, Some("key-pro")).await.status, 200);
    }
}

/// Malformed chunk-size lines, each with the envelope's reason: RFC 9112 §7.1 strictly.
const BAD_CHUNKS: &[(&[u8], &str)] = &[
    // what outside testing found accepted: a bare `;`, an invalid extension token, a control
    // character, trailing whitespace, a bare LF inside an extension
    (
        b"5;\r\nhello\r\n0\r\n\r\n",
        "chunk extension without a name",
    ),
    (
        b"5;bad[=x\r\nhello\r\n0\r\n\r\n",
        "invalid chunk extension name",
    ),
    (
        b"5;\0ext\r\nhello\r\n0\r\n\r\n",
        "chunk extension without a name",
    ),
    (
        b"5 \r\nhello\r\n0\r\n\r\n",
        "whitespace after the chunk size",
    ),
    (b"5;\nhello\r\n0\r\n\r\n", "chunk extension without a name"),
    // and the classics
    (b"zz\r\nhello\r\n0\r\n\r\n", "chunk size is not hex digits"),
    (b"5\r\nhelloXX0\r\n\r\n", "chunk data longer than its size"),
    (b"-5\r\nhello\r\n0\r\n\r\n", "chunk size is not hex digits"),
    (b"0x5\r\nhello\r\n0\r\n\r\n", "chunk size is not hex digits"),
    (b"fffffffffffffffffff\r\nx\r\n", "chunk size too large"),
    (
        b"5 ;ext=\"\r\n\"\r\nhello\r\n0\r\n\r\n",
        "invalid quoted chunk extension value",
    ),
    (b"5\nhello\r\n0\r\n\r\n", "chunk size is not hex digits"),
    (b"5\r\nhello\n0\r\n\r\n", "chunk data longer than its size"),
    (b"0\r\nX: a\nY: b\r\n\r\n", "invalid trailer line"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_bodies_read_with_the_head_get_a_400_and_nothing_is_forwarded() {
    let h = Harness::start().await;
    for path in ["/status/200", "/tenant/collectionObjects"] {
        for (body, why) in BAD_CHUNKS {
            let mut req = format!(
                "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .into_bytes();
            req.extend_from_slice(body);
            let (mut c, resp) = raw(&h, &req).await;
            let what = format!("{path} {:?}", String::from_utf8_lossy(body));
            let r = resp.unwrap_or_else(|| panic!("{what}: closed unanswered"));
            assert_envelope(&r, 400, why);
            assert_eq!(r.header("connection"), Some("close"), "{what}");
            assert!(c.is_closed().await, "{what}: the connection closes");
        }
    }
    assert_eq!(h.backend.total(), 0, "nothing reached the backend");
    assert_eq!(h.usage("key-pro").calls, 0);
    // a well-framed body with extensions and a trailer goes through
    let body = b"5;name=value;q=\"a b\"\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n";
    let mut req = b"POST /status/200 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(body);
    let (_c, resp) = raw(&h, &req).await;
    assert_eq!(resp.unwrap().status, 200);
    assert_eq!(h.backend.received()[0].body, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunk_line_arriving_later_closes_and_nothing_from_it_on_is_forwarded() {
    let h = Harness::start().await;
    let smuggled = format!(
        "GET /tenant/collectionObjects?collectionId={OID} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-free\r\n\r\n"
    );
    for (bad, why) in BAD_CHUNKS.iter().take(5) {
        for path in ["/status/200", "/tenant/collectionObjects"] {
            let before = h.backend.total();
            let mut c = h.client().await;
            c.send_raw(
                format!(
                    "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n{{\"a\":1\r\n"
                )
                .as_bytes(),
            )
            .await;
            // the tail arrives a little later, in reads of its own: the bad line, what a
            // lenient parser would take as the rest of the body, and a second request
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut tail = bad.to_vec();
            tail.extend_from_slice(smuggled.as_bytes());
            let _ = c.try_send(&tail).await;
            let what = format!("{path} {:?} ({why})", String::from_utf8_lossy(bad));
            match c.try_read_response().await {
                None => {}
                // the buffered JSON route reads the body before anything is forwarded
                Some(r) => assert_envelope(&r, 400, ""),
            }
            assert!(c.is_closed().await, "{what}: the connection closes");
            // the streamed route forwarded the head and the first chunk; nothing after it
            for r in h.backend.received().iter().skip(before as usize) {
                assert_eq!(r.uri, "/status/200", "{what}");
                assert_eq!(
                    r.body, b"{\"a\":1",
                    "{what}: only the chunk before the bad line"
                );
            }
        }
    }
    assert_eq!(
        h.backend.total_for(group_id("key-free")),
        0,
        "the second request was never forwarded"
    );
    assert_eq!(h.usage("key-free").calls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_gets_no_100_continue() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    c.send_raw(b"POST /status/200 HTTP/1.0\r\nAuthorization: Bearer key-pro\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await;
    // an HTTP/1.1 client would get `100 Continue` now; this one waits for nothing, then sends
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send_raw(b"hello").await;
    let r = c.read_response().await;
    assert_eq!(r.status, 200, "the first answer is the final one");
    assert_eq!(h.backend.received()[0].body, b"hello");
    // HTTP/1.1 still gets it
    let mut c = h.client().await;
    c.send_raw(b"POST /status/200 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let r = c.read_response().await;
    assert_eq!(r.status, 100);
    c.send_raw(b"hello").await;
    assert_eq!(c.read_response().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_asterisk_is_the_servers_own_204() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    for _ in 0..2 {
        c.send_raw(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n").await;
        let r = c.read_response().await;
        assert_eq!(r.status, 204, "{}", r.text());
        assert!(r.body.is_empty());
        assert_eq!(
            r.header("allow"),
            Some("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
        );
        assert!(r.header("x-request-id").is_some());
        assert_eq!(r.header("connection"), None, "the connection stays open");
    }
    // the same connection goes on
    let r = c
        .get(
            &format!("/tenant/siteDetails?siteId={OID}"),
            Some("key-pro"),
        )
        .await;
    assert_eq!(r.status, 200);
    // HTTP/1.0, or a body: answered, then closed
    let (mut c, r) = raw(&h, b"OPTIONS * HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.unwrap().header("connection"), Some("close"));
    assert!(c.is_closed().await);
    let (mut c, r) = raw(
        &h,
        b"OPTIONS * HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert_eq!(r.unwrap().status, 204);
    assert!(c.is_closed().await);
    // `*` for anything but OPTIONS is still refused
    let (_, r) = raw(&h, b"GET * HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_envelope(&r.unwrap(), 400, "path starting with /");
    assert_eq!(h.backend.total(), 1, "only the GET was forwarded");
    assert_eq!(h.usage("key-pro").calls, 1, "OPTIONS * is not metered");
    // it counts against the requests a connection may make
    let h = Harness::start_with(|c| c + "\n[limits]\nmax_requests_per_connection = 2\n").await;
    let mut c = h.client().await;
    c.send_raw(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(c.read_response().await.header("connection"), None);
    c.send_raw(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(c.read_response().await.header("connection"), Some("close"));
    assert!(c.is_closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_2_is_served_as_http_1_1() {
    let h = Harness::start().await;
    let (_c, r) = raw(
        &h,
        format!("GET /tenant/siteDetails?siteId={OID} HTTP/1.2\r\nHost: t\r\nAuthorization: Bearer key-pro\r\n\r\n").as_bytes(),
    )
    .await;
    let r = r.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(h.backend.total(), 1);
    // a leading empty line and HTTP/1.9
    let (_c, r) = raw(
        &h,
        format!("\r\nGET /tenant/siteDetails?siteId={OID} HTTP/1.9\r\nHost: t\r\nAuthorization: Bearer key-pro\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.unwrap().status, 200);
    // a request line split across reads
    let mut c = h.client().await;
    c.send_raw(format!("GET /tenant/siteDetails?siteId={OID} HTTP/1.").as_bytes())
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send_raw(b"3\r\nHost: t\r\nAuthorization: Bearer key-pro\r\n\r\n")
        .await;
    assert_eq!(c.read_response().await.status, 200);
    assert_eq!(h.backend.total(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_client_is_the_forwarded_hop() {
    let h = Harness::start_with(|c| {
        c.replace(
            "threads = 2",
            "threads = 2\ntrusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]",
        ) + "\n[limits]\nfailed_auth_limit = 2\nfailed_auth_block_ms = 60000\n"
    })
    .await;
    let get = |xff: &'static str, key: &'static str| {
        let addr = h.addr;
        async move {
            Client::connect(addr)
                .await
                .request(
                    &format!("GET /status/200 HTTP/1.1\nHost: t\nAuthorization: Bearer {key}\nX-Forwarded-For: {xff}"),
                    b"",
                )
                .await
        }
    };
    assert_eq!(get("198.51.100.1, 10.1.2.3", "key-pro").await.status, 200);
    assert_eq!(get("not-an-address", "key-pro").await.status, 200);
    assert_eq!(
        get("203.0.113.9, 198.51.100.2", "key-pro").await.status,
        200
    );
    let seen: Vec<String> = h
        .backend
        .received()
        .iter()
        .map(|r| r.header("x-forwarded-for").unwrap_or("").to_string())
        .collect();
    // the rightmost untrusted hop; a malformed one ends the walk at the peer; a spoofed left
    // part is ignored
    assert_eq!(seen, ["198.51.100.1", "127.0.0.1", "198.51.100.2"]);

    // key guessing is counted per client, not per load balancer
    for _ in 0..2 {
        assert_eq!(get("203.0.113.1", "guess").await.status, 401);
    }
    assert_envelope(&get("203.0.113.1", "key-pro").await, 429, "Too many failed");
    assert_eq!(get("203.0.113.2", "key-pro").await.status, 200);
}

/// The same attack classes over HTTP/2 (TLS, ALPN h2), where a request is pseudo-headers and
/// HPACK rather than bytes on a line: path spellings, parameter pollution, spoofed identity and
/// override headers, Authorization variants and JSON bombs. Whatever HTTP/2 can carry gets the
/// same answer as over HTTP/1; what it cannot carry never reaches the gateway's checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_the_same_payloads_get_the_same_answers() {
    use common::tls::{h2_send, H2Outcome};
    let h = Harness::start_proto(Proto::H2).await;
    let (ca, addr) = (h.ca.clone().unwrap(), h.tls_addr.unwrap());
    let connect = || {
        let ca = ca.clone();
        async move {
            common::tls::h2_handshake(ca.connect(addr, "localhost", &[b"h2"]).await.unwrap()).await
        }
    };
    let mut send = connect().await;
    let key = |k: &str| format!("Bearer {k}").into_bytes();
    let auth = key("key-pro");

    // path spellings: every one HTTP/2 can carry is refused with the same envelope
    let mut carried = 0;
    for (target, needle) in BAD_PATHS {
        match h2_send(&send, "GET", target, &[("authorization", &auth)], b"").await {
            H2Outcome::Answered(r) => {
                assert_eq!(r.status, 400, "{target:?}");
                assert_envelope(&r, 400, needle);
                carried += 1;
            }
            H2Outcome::NotRepresentable => {}
            H2Outcome::Reset(e) => {
                // a stream error is fine; a lost connection is re-made for the next payload
                eprintln!("{target:?}: reset: {e}");
                send = connect().await;
            }
        }
    }
    eprintln!(
        "{carried} of {} path spellings carried over HTTP/2",
        BAD_PATHS.len()
    );
    assert!(carried >= 35, "only {carried} path spellings were carried");

    // parameter pollution
    let other = "651f0c2ab4e8a90087654321";
    for target in [
        format!("/tenant/collectionObjects?collectionId={OID}&collectionId={other}"),
        format!("/tenant/collectionObjects?collectionId={OID}&%63ollectionId={other}"),
        format!("/tenant/collectionObjects?CollectionId={other}&collectionId={OID}"),
        format!("/tenant/collectionObjects?collectionId={OID}&collectionId%5B%24ne%5D=1"),
        "/tenant/integrationObjects?type=a&t%79pe=b".to_string(),
    ] {
        let H2Outcome::Answered(r) =
            h2_send(&send, "GET", &target, &[("authorization", &auth)], b"").await
        else {
            panic!("{target}: no answer");
        };
        assert_envelope(&r, 400, "is given more than once");
    }

    // Authorization: the strict bearer form only, and one header only
    let refused: &[&[(&str, &[u8])]] = &[
        &[("authorization", b"key-pro")],
        &[("authorization", b"Bearer  key-pro")],
        &[("authorization", b"Bearer key-pro extra")],
        &[("authorization", b"Bearer\tkey-pro")],
        &[("authorization", b"Basic a2V5LXBybzo=")],
        &[("authorization", b"Bearer key-pro\xc3\xa9")],
        &[
            ("authorization", b"Bearer key-pro"),
            ("authorization", b"Bearer key-free"),
        ],
        &[("authorization", b"Bearer key-pro, Bearer key-free")],
        &[("x-api-key", b"key-pro")],
        &[],
    ];
    for headers in refused {
        let H2Outcome::Answered(r) = h2_send(&send, "GET", "/status/200", headers, b"").await
        else {
            panic!("{headers:?}: no answer");
        };
        assert_envelope(&r, 401, "");
    }
    // header names that read as framing headers to an HTTP/1 backend that maps `_` to `-`
    for (name, value) in [
        ("transfer_encoding", &b"chunked"[..]),
        ("content_length", b"99"),
    ] {
        let headers = [("authorization", &auth[..]), (name, value)];
        let H2Outcome::Answered(r) = h2_send(&send, "GET", "/status/200", &headers, b"").await
        else {
            panic!("{name}: no answer");
        };
        assert_envelope(
            &r,
            400,
            "a header name with _ that reads as a framing header",
        );
    }
    assert_eq!(h.backend.total(), 0, "nothing refused reached the backend");

    // spoofed identity and override headers are stripped; the gateway's own are set
    let spoofed: Vec<(&str, &[u8])> = vec![
        ("authorization", b"Bearer key-free"),
        ("x-vivreal-group-id", b"aaaaaaaaaaaaaaaaaaaaaa02"),
        ("x-vivreal-tier", b"enterprise"),
        ("x_vivreal_admin", b"1"),
        ("x-forwarded-for", b"203.0.113.9"),
        ("forwarded", b"for=203.0.113.9"),
        ("x-real-ip", b"203.0.113.9"),
        ("x-original-url", b"/admin/delete"),
        ("x-http-method-override", b"DELETE"),
    ];
    let H2Outcome::Answered(r) = h2_send(&send, "GET", "/status/200", &spoofed, b"").await else {
        panic!("no answer");
    };
    assert_eq!(r.status, 200, "{}", r.text());
    let got = h.backend.received();
    let fwd = &got[0];
    assert_eq!(fwd.header("x-vivreal-group-id"), Some(group_id("key-free")));
    assert_eq!(fwd.header("x-vivreal-tier"), Some("free"));
    assert_eq!(fwd.header("x_vivreal_admin"), None);
    assert_eq!(fwd.header("x-forwarded-for"), Some("127.0.0.1"));
    for name in [
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-http-method-override",
        "authorization",
    ] {
        assert_eq!(fwd.header(name), None, "{name} is not forwarded");
    }

    // JSON limits and bombs
    let json = |body: &[u8]| {
        let send = send.clone();
        let body = body.to_vec();
        async move {
            let auth = b"Bearer key-pro".to_vec();
            match h2_send(
                &send,
                "POST",
                "/tenant/collectionObjects",
                &[
                    ("authorization", &auth),
                    ("content-type", b"application/json"),
                ],
                &body,
            )
            .await
            {
                H2Outcome::Answered(r) => r,
                other => panic!("no answer: {other:?}"),
            }
        }
    };
    let too_big = format!("\"{}\"", "a".repeat(65_535));
    assert_envelope(&json(too_big.as_bytes()).await, 413, "too large");
    let deep = "[".repeat(65) + &"]".repeat(65);
    assert_envelope(&json(deep.as_bytes()).await, 400, "nested too deeply");
    for bomb in [
        "[".repeat(60_000).into_bytes(),
        b"\"\\ud800\"".to_vec(),
        b"\xef\xbb\xbf{}".to_vec(),
        b"{} {}".to_vec(),
    ] {
        assert_envelope(&json(&bomb).await, 400, "JSON");
    }
    assert_eq!(
        h.backend.total(),
        1,
        "only the spoofing request was forwarded"
    );
}

/// HTTP/2's own abuse: a rapid-reset flood (CVE-2023-44487) on one connection costs the
/// gateway streams it never forwards, and the server stays available.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_a_rapid_reset_flood_is_cut_off() {
    let h = Harness::start_proto(Proto::H2).await;
    let (ca, addr) = (h.ca.clone().unwrap(), h.tls_addr.unwrap());
    let tls = ca.connect(addr, "localhost", &[b"h2"]).await.unwrap();
    let send = common::tls::h2_handshake(tls).await;
    let mut cut = false;
    for _ in 0..2_000 {
        let Ok(mut s) = send.clone().ready().await else {
            cut = true;
            break;
        };
        let req = http::Request::builder()
            .uri("https://localhost/slow/x?ms=1000")
            .header("authorization", "Bearer key-pro")
            .body(())
            .unwrap();
        match s.send_request(req, true) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // either the connection was cut (GOAWAY) or every stream was reset before it was forwarded;
    // both leave the gateway serving others at once
    let started = Instant::now();
    let mut c = h.h2_client().await;
    let ok = c
        .get(
            &format!("/tenant/collectionObjects?collectionId={OID}"),
            Some("key-pro"),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(started.elapsed() < Duration::from_secs(2));
    eprintln!("rapid reset: connection cut = {cut}");
    assert!(
        h.backend.total() < 200,
        "{} of 2000 reset streams were forwarded",
        h.backend.total()
    );
}
