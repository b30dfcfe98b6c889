//! The error contract, row by row, through the real gateway and a real backend on loopback.
//! Every row runs over HTTP/1.1 and again over HTTP/2 (TLS, ALPN h2); the two tests of HTTP/1
//! framing (chunked bodies, `Expect: 100-continue`) run over HTTP/1.1 only.

mod common;

use common::*;

fn cobj(id: &str) -> String {
    format!("/tenant/collectionObjects?collectionId={id}")
}

async fn forwards_a_valid_request_with_identity_headers_and_rate_limit(proto: Proto) {
    let h = Harness::start_proto(proto).await;
    let mut c = h.client().await;
    let resp = c
        .request(
            &format!(
                "GET {} HTTP/1.1\nHost: t\nAuthorization: Bearer key-pro\nX-Vivreal-Group-Id: spoofed\nx-vivreal-tier: free\nX_Vivreal_Admin: 1\nExpect-Nothing: x",
                cobj(OID)
            ),
            b"",
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["success"], true);
    assert_eq!(v["data"]["group"], group_id("key-pro"));
    assert_eq!(v["data"]["tier"], "pro");
    assert_eq!(
        resp.header("ratelimit-policy"),
        Some("\"monthly-calls\";q=500000;qu=\"requests\"")
    );
    // 2026-11-15 12:00 → 2026-12-01 00:00 is 15.5 days
    assert_eq!(
        resp.header("ratelimit"),
        Some("\"monthly-calls\";r=499999;t=1339200")
    );

    let got = h.backend.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.uri, cobj(OID));
    assert_eq!(r.header("authorization"), None, "the key is not forwarded");
    assert_eq!(r.header("x-vivreal-group-id"), Some(group_id("key-pro")));
    assert_eq!(r.header("x-vivreal-tier"), Some("pro"));
    assert_eq!(r.header("x_vivreal_admin"), None);
    let vivreal: Vec<_> = r
        .headers
        .iter()
        .filter(|(n, _)| n.starts_with("x-vivreal") || n.starts_with("x_vivreal"))
        .collect();
    assert_eq!(
        vivreal.len(),
        2,
        "only the gateway's own identity headers: {vivreal:?}"
    );
    assert_eq!(r.header("x-request-id"), resp.header("x-request-id"));
    assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(h.usage("key-pro").calls, 1);
}

async fn request_ids_are_kept_when_valid_and_replaced_otherwise(proto: Proto) {
    let h = Harness::start_proto(proto).await;
    let mut c = h.client().await;
    let resp = c
        .request(&format!("GET {} HTTP/1.1\nHost: t\nAuthorization: Bearer key-pro\nX-Request-Id: client-id_1.2", cobj(OID)), b"")
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-request-id"), Some("client-id_1.2"));
    assert_eq!(resp.header_count("x-request-id"), 1);
    assert_eq!(
        h.backend.received()[0].header("x-request-id"),
        Some("client-id_1.2")
    );

    let resp = c
        .request(
            &format!("GET {} HTTP/1.1\nHost: t\nX-Request-Id: bad id!", cobj(OID)),
            b"",
        )
        .await;
    assert_envelope(&resp, 401, "Missing Authorization header");
    let id = resp.header("x-request-id").unwrap();
    assert_ne!(id, "bad id!");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
}

async fn missing_or_invalid_keys_are_401_whatever_the_path(proto: Proto) {
    let h = Harness::start_proto(proto).await;
    assert_envelope(
        &h.get(&cobj(OID), None).await,
        401,
        "Missing Authorization header",
    );
    assert_envelope(
        &h.get("/no/such/path", None).await,
        401,
        "Missing Authorization header",
    );
    assert_envelope(
        &h.get(&cobj(OID), Some("not-a-key")).await,
        401,
        "Invalid or revoked API key",
    );
    assert_envelope(
        &h.get("/no/such/path", Some("not-a-key")).await,
        401,
        "Invalid or revoked API key",
    );

    let mut c = h.client().await;
    for head in [
        format!("GET {} HTTP/1.1\nHost: t\nAuthorization: Basic a2V5LXBybzo=", cobj(OID)),
        format!("GET {} HTTP/1.1\nHost: t\nAuthorization: Bearer", cobj(OID)),
        format!("GET {} HTTP/1.1\nHost: t\nAuthorization: Bearer key-pro\nAuthorization: Bearer key-pro", cobj(OID)),
    ] {
        assert_envelope(&c.request(&head, b"").await, 401, "Invalid or revoked API key");
    }
    // the scheme is case-insensitive
    let ok = c
        .request(
            &format!(
                "GET {} HTTP/1.1\nHost: t\nAuthorization: bEARER key-pro",
                cobj(OID)
            ),
            b"",
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        h.backend.received().len(),
        1,
        "no rejected request reached the backend"
    );
}

async fn deactivated_is_403_and_frozen_is_400_before_routing(proto: Proto) {
    let h = Harness::start_proto(proto).await;
    assert_envelope(
        &h.get(&cobj(OID), Some("key-deactivated")).await,
        403,
        "deactivated",
    );
    assert_envelope(
        &h.get("/no/such/path", Some("key-deactivated")).await,
        403,
        "deactivated",
    );
    assert_envelope(&h.get(&cobj(OID), Some("key-frozen")).await, 400, "frozen");
    assert_envelope(
        &h.get("/no/such/path", Some("key-frozen")).await,
        400,
        "frozen",
    );
    let r = h.get(&cobj(OID), Some("key-frozen")).await;
    assert_eq!(r.header("ratelimit"), None, "no route matched yet");
    assert!(h.backend.received().is_empty());
}

async fn unknown_paths_are_404_and_wrong_methods_405_with_allow(proto: Proto) {
    let h = Harness::start_proto(proto).await;
    assert_envelope(
        &h.get("/tenant/nothing", Some("key-pro")).await,
        404,
        "Not found",
    );
    // exact paths are exact
    assert_envelope(
        &h.get("/tenant/siteDetails/", Some("key-pro")).await,
        404,
        "Not found",
    );
    let mut c = h.client().await;
    let r = c
        .request(&format!("DELETE /tenant/siteDetails?siteId={OID} HTTP/1.1\nHost: t\nAuthorization: Bearer key-pro"), b"")
        .await;
    assert_envelope(&r, 405, "Method not allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = c
        .request(
            &format!(
                "PUT {} HTTP/1.1\nHost: t\nAuthorization: Bearer key-pro\nContent-Length: 0",
                cobj(OID)
            ),
            b"",
        )
        .await;
    assert_envelope(&r, 405, "Method not allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST"));
    // HEAD is accepted wherever GET is
    let r = c.request(&format!("HEAD /tenant/siteDetails?siteId={OID} HTTP/1.1\nHost: t\nAuthorization: Bearer key-pro"), b"").await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(h.backend.received().len(), 1);
    assert_eq!(h.backend.received()[0].method, "HEAD");
}

async fn required_query_parameters_are_checked_per_route(proto: Proto) {
    let h = Harness::start_proto(proto).await;
    let k = Some("key-pro");
    assert_envelope(
        &h.get("/tenant/collectionObjects", k).await,
        400,
        "collectionId",
    );
    assert_envelope(&h.get("/tenant/siteDetails?site=1", k).await, 400, "siteId");
    assert_envelope(&h.get("/tenant/integrationObjects", k).await, 400, "type");
    assert_envelope(
        &h.get("/tenant/integrationObjects?type=", k).await,
        400,
        "type",
    );
    assert_envelope(
        &h.get("/tenant/integrationObjects?type=a&type=b", k).await,
        400,
        "more than once",
    );
    assert_envelope(
        &h.get("/tenant/integrationObjects?type=a&%74ype=a", k).await,
        400,
        "more than once",
    );
    let r = h.get("/tenant/integrationObjects", k).await;
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"monthly-calls\";q=500000;qu=\"requests\"")
    );
    assert!(h.backend.received().is_empty());
    assert_eq!(
        h.get("/tenant/integrationObjects?type=blog", k)
            .await
            .status,
        200
    );
    assert_eq!(h.usage("key-pro").calls, 1, "rejected requests are free");
}

async fn malformed_ids_are_404_after_the_presence_check(proto: Proto) {
    let h = Harness::start_proto(proto).await;
    let k = Some("key-pro");
    assert_envelope(&h.get(&cobj("123"), k).await, 404, "collectionId");
    assert_envelope(
        &h.get(&cobj("651f0c2ab4e8a9001234567z"), k).await,
        404,
        "24-character hex",
    );
    assert_envelope(
        &h.get(&cobj("651f0c2ab4e8a900123456789"), k).await,
        404,
        "collectionId",
    );
    assert_envelope(
        &h.get("/tenant/siteDetails?siteId=../../etc", k).await,
        404,
        "siteId",
    );
    // presence (400) comes before format (404)
    assert_envelope(
        &h.get("/tenant/collectionObjects?collectionId=", k).await,
        400,
        "collectionId",
    );
    assert_eq!(
        h.get(&cobj("651F0C2AB4E8A90012345678"), k).await.status,
        200
    );
    assert_eq!(h.backend.received().len(), 1);
}

async fn json_bodies_are_validated_and_forwarded_byte_for_byte(proto: Proto) {
    let h = Harness::start_proto(proto).await;
    let mut c = h.client().await;
    let p = "/tenant/collectionObjects";
    assert_envelope(&c.post(p, "key-pro", b"{oops").await, 400, "Invalid JSON");
    assert_envelope(&c.post(p, "key-pro", b"").await, 400, "Invalid JSON");
    assert_envelope(&c.post(p, "key-pro", b"{} []").await, 400, "Invalid JSON");
    assert!(h.backend.received().is_empty());

    let body = br#"{ "title" : "caf\u00e9",  "n": [1, 2.50, null] }"#;
    let r = c.post(p, "key-pro", body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(h.backend.received()[0].body, body.to_vec());

    // exactly the 64 KiB cap passes whole; one byte more is 413
    let mut big = b"\"".to_vec();
    big.resize(65_535, b'a');
    big.push(b'"');
    let r = c.post(p, "key-pro", &big).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(h.backend.received()[1].body.len(), 65_536);
    assert_eq!(h.backend.received()[1].body, big);
    big.insert(1, b'a');
    assert_envelope(&c.post(p, "key-pro", &big).await, 413, "too large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_json_bodies_are_capped_too() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let head = "POST /tenant/collectionObjects HTTP/1.1\nHost: t\nAuthorization: Bearer key-pro\nTransfer-Encoding: chunked";
    let r = c.request(head, b"7\r\n{\"a\":1}\r\n0\r\n\r\n").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(h.backend.received()[0].body, b"{\"a\":1}".to_vec());

    let mut body = Vec::new();
    for _ in 0..3 {
        body.extend_from_slice(b"8000\r\n");
        body.extend(std::iter::repeat_n(b' ', 0x8000));
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut c = h.client().await;
    assert_envelope(&c.request(head, &body).await, 413, "too large");
    assert_eq!(h.backend.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_and_not_forwarded() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    c.send_raw(
        b"POST /tenant/collectionObjects HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\nExpect: 100-continue\r\nContent-Length: 8\r\n\r\n",
    )
    .await;
    let interim = c.read_response().await;
    assert_eq!(interim.status, 100);
    c.send_raw(b"{\"b\": 2}").await;
    let r = c.read_response().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = &h.backend.received()[0];
    assert_eq!(got.body, b"{\"b\": 2}".to_vec());
    assert_eq!(got.header("expect"), None);

    // the connection stays alive through the 100: a bad body next gets its 400, then a 200
    assert_eq!(r.header("connection"), Some("keep-alive"));
    c.send_raw(
        b"POST /tenant/collectionObjects HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    )
    .await;
    assert_eq!(c.read_response().await.status, 100);
    c.send_raw(b"nope").await;
    let r = c.read_response().await;
    assert_envelope(&r, 400, "Invalid JSON");
    assert_eq!(r.header("connection"), Some("keep-alive"));
    assert_eq!(c.get(&cobj(OID), Some("key-pro")).await.status, 200);

    // a backend that cannot be reached after the 100 still gets its envelope
    c.send_raw(
        b"POST /offline/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    )
    .await;
    assert_eq!(c.read_response().await.status, 100);
    c.send_raw(b"{}").await;
    assert_envelope(&c.read_response().await, 502, "unreachable");
    assert_eq!(
        h.usage("key-pro").calls,
        2,
        "the unreachable one is not charged"
    );

    // a request that fails its checks gets its final answer, no 100
    let mut c = h.client().await;
    c.send_raw(b"POST /tenant/collectionObjects HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 8\r\n\r\n").await;
    assert_envelope(&c.read_response().await, 401, "Missing Authorization");
}

async fn rejections_keep_the_connection_alive(proto: Proto) {
    let h = Harness::start_proto(proto).await;
    let mut c = h.client().await;
    assert_envelope(&c.get(&cobj(OID), None).await, 401, "Missing");
    assert_envelope(&c.get("/nope", Some("key-pro")).await, 404, "Not found");
    assert_envelope(
        &c.get(&cobj("1"), Some("key-pro")).await,
        404,
        "collectionId",
    );
    // a rejected POST whose body was never read is drained, and the connection stays usable
    let r = c
        .request("POST /tenant/collectionObjects HTTP/1.1\nHost: t\nContent-Type: application/json\nContent-Length: 7", b"{\"a\":1}")
        .await;
    assert_envelope(&r, 401, "Missing");
    // (HTTP/2 has no connection header: the stream ends, the connection stays)
    let expected = (!c.is_h2()).then_some("keep-alive");
    assert_eq!(r.header("connection"), expected);
    assert_envelope(
        &c.post("/tenant/collectionObjects", "key-pro", b"nope")
            .await,
        400,
        "Invalid JSON",
    );
    let ok = c.get(&cobj(OID), Some("key-pro")).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(h.backend.received().len(), 1);
    assert_eq!(
        h.backend.received()[0].uri,
        cobj(OID),
        "no rejected bytes were forwarded"
    );
}

async fn backend_answers_pass_through_unchanged(proto: Proto) {
    let h = Harness::start_proto(proto).await;
    let r = h.get("/status/404", Some("key-pro")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), r#"{"backend_status": 404}"#);
    let r = h.get("/status/500", Some("key-pro")).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.text(), r#"{"backend_status": 500}"#);
    assert!(r.header("x-request-id").is_some());
    assert_eq!(
        h.usage("key-pro").calls,
        2,
        "answered by the backend, so counted"
    );
}

async fn unreachable_backend_is_502_and_free_slow_backend_is_504(proto: Proto) {
    let h = Harness::start_proto(proto).await;
    let r = h.get("/offline/x", Some("key-pro")).await;
    assert_envelope(&r, 502, "unreachable");
    assert_eq!(
        h.usage("key-pro").calls,
        0,
        "a backend never reached is not charged"
    );
    assert!(!r.text().contains("127.0.0.1"), "no upstream address leaks");

    let r = h.get("/slow/x?ms=2000", Some("key-pro")).await;
    assert_envelope(&r, 504, "timeout");
    assert_eq!(
        h.usage("key-pro").calls,
        1,
        "a backend that was reached is charged"
    );
}

/// Runs each named contract test over HTTP/1.1 (`<name>::http1`) and HTTP/2 (`<name>::http2`).
macro_rules! over_http1_and_http2 {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn http1() {
                    super::$name(Proto::H1).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn http2() {
                    super::$name(Proto::H2).await
                }
            }
        )*
    };
}

over_http1_and_http2!(
    forwards_a_valid_request_with_identity_headers_and_rate_limit,
    request_ids_are_kept_when_valid_and_replaced_otherwise,
    missing_or_invalid_keys_are_401_whatever_the_path,
    deactivated_is_403_and_frozen_is_400_before_routing,
    unknown_paths_are_404_and_wrong_methods_405_with_allow,
    required_query_parameters_are_checked_per_route,
    malformed_ids_are_404_after_the_presence_check,
    json_bodies_are_validated_and_forwarded_byte_for_byte,
    rejections_keep_the_connection_alive,
    backend_answers_pass_through_unchanged,
    unreachable_backend_is_502_and_free_slow_backend_is_504,
);
