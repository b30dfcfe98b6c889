//! The access log: one JSON line per request with the fields operators search by, never the key,
//! and the query string only when configured.

mod common;

use common::*;

async fn lines(h: &Harness, name: &str, n: usize) -> Vec<serde_json::Value> {
    let path = h.dir.path().join(name);
    let mut out = Vec::new();
    wait_for("the access log lines", || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        out = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        let done = out.len() >= n;
        async move { done }
    })
    .await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_json_line_per_request_without_key_or_query() {
    let h = Harness::start_with(|c| c + "\n[access_log]\npath = \"access.log\"\n").await;
    let ok = format!("/tenant/collectionObjects?collectionId={OID}&secret=qUeRy5ecret");
    let r = h.get(&ok, Some("key-pro")).await;
    assert_eq!(r.status, 200);
    let id = r.header("x-request-id").unwrap().to_string();
    assert_envelope(
        &h.get("/status/200?x=qUeRy5ecret", Some("sEcReTkEy42"))
            .await,
        401,
        "Invalid",
    );
    assert_envelope(
        &h.get("/offline/x", Some("key-pro")).await,
        502,
        "Bad gateway",
    );
    assert_envelope(
        &h.get("/%63dn/../x", Some("key-pro")).await,
        400,
        "Bad request",
    );

    let all = lines(&h, "access.log", 4).await;
    let text = std::fs::read_to_string(h.dir.path().join("access.log")).unwrap();
    for secret in ["key-pro", "sEcReTkEy42", "qUeRy5ecret", "Bearer"] {
        assert!(!text.contains(secret), "{secret} is in the access log");
    }
    let served = all
        .iter()
        .find(|l| l["request_id"] == id.as_str())
        .expect("the 200 is logged");
    assert_eq!(served["status"], 200);
    assert_eq!(served["method"], "GET");
    assert_eq!(served["path"], "/tenant/collectionObjects");
    assert_eq!(served["route"], "/tenant/collectionObjects");
    assert_eq!(served["group"], group_id("key-pro"));
    assert_eq!(served["tier"], "pro");
    assert_eq!(served["client"], "127.0.0.1");
    assert_eq!(served["upstream"], h.backend_addr.to_string());
    assert!(served["upstream_ms"].as_f64().unwrap() >= 0.0);
    assert!(served["total_ms"].as_f64().unwrap() >= served["upstream_ms"].as_f64().unwrap());
    assert!(served["bytes_out"].as_u64().unwrap() > 0);
    assert!(served["query"].is_null());
    assert!(served["time"]
        .as_str()
        .unwrap()
        .starts_with("2026-11-15T12:00:00."));
    let reasons: Vec<&str> = all.iter().filter_map(|l| l["reason"].as_str()).collect();
    for r in ["invalid_key", "upstream_unreachable", "malformed_request"] {
        assert!(reasons.contains(&r), "{r} in {reasons:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_is_logged_only_when_configured() {
    let h = Harness::start_with(|c| {
        c + "\n[access_log]\npath = \"logs/access.log\"\ninclude_query = true\n"
    })
    .await;
    assert_eq!(
        h.get("/status/200?type=abc", Some("key-pro")).await.status,
        200
    );
    let all = lines(&h, "logs/access.log", 1).await;
    assert_eq!(all[0]["query"], "type=abc");
}
