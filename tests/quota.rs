//! Monthly quotas through the real gateway: exact under concurrency, month rollover through the
//! injected clock, overage billing, bandwidth metering.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use vivgate::clock::{utc_ms, Month};
use vivgate::usage::UsageStore;

const TINY: &str = "/tenant/integrationObjects?type=blog";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_after_the_quota_is_402_with_reset_time() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    for i in 0..5u64 {
        let r = c.get(TINY, Some("key-tiny")).await;
        assert_eq!(r.status, 200, "call {i}: {}", r.text());
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"monthly-calls\";q=5;qu=\"requests\"")
        );
        assert_eq!(
            r.header("ratelimit"),
            Some(format!("\"monthly-calls\";r={};t=1339200", 4 - i).as_str())
        );
    }
    let r = c.get(TINY, Some("key-tiny")).await;
    assert_envelope(&r, 402, "Monthly API call quota exceeded");
    assert_envelope(&r, 402, "2026-12-01T00:00:00Z");
    assert_eq!(r.header("retry-after"), Some("1339200"));
    assert_eq!(
        r.header("ratelimit"),
        Some("\"monthly-calls\";r=0;t=1339200")
    );
    assert_eq!(h.backend.received().len(), 5);
    assert_eq!(
        h.usage("key-tiny").calls,
        5,
        "refused calls are not counted"
    );
    // the connection stays usable after a 402
    assert_eq!(c.get(TINY, Some("key-pro")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_shares_the_groups_usage() {
    let h = Harness::start().await;
    for _ in 0..3 {
        assert_eq!(h.get(TINY, Some("key-tiny")).await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(h.get(TINY, Some("key-rotated")).await.status, 200);
    }
    assert_envelope(&h.get(TINY, Some("key-rotated")).await, 402, "quota");
    assert_envelope(&h.get(TINY, Some("key-tiny")).await, 402, "quota");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_quota_is_forwarded_under_64_concurrent_clients() {
    let h = Harness::start_with(|c| c.replace("api_calls = 5", "api_calls = 300")).await;
    let ok = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (ok, refused, addr) = (ok.clone(), refused.clone(), h.addr);
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            for _ in 0..8 {
                let r = c.get(TINY, Some("key-tiny")).await;
                match r.status {
                    200 => ok.fetch_add(1, Ordering::Relaxed),
                    402 => {
                        assert_envelope(&r, 402, "Monthly API call quota exceeded");
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                    s => panic!("unexpected {s}: {}", r.text()),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(ok.load(Ordering::Relaxed), 300);
    assert_eq!(refused.load(Ordering::Relaxed), 64 * 8 - 300);
    assert_eq!(h.backend.received().len(), 300);
    assert_eq!(h.usage("key-tiny").calls, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_month_starts_from_zero_at_midnight_utc() {
    let h = Harness::start().await;
    // December 31st, one millisecond before January
    h.clock.set(utc_ms(2026, 12, 31, 23, 59, 59, 999));
    for _ in 0..5 {
        assert_eq!(h.get(TINY, Some("key-tiny")).await.status, 200);
    }
    let r = h.get(TINY, Some("key-tiny")).await;
    assert_envelope(&r, 402, "2027-01-01T00:00:00Z");
    assert_eq!(r.header("retry-after"), Some("1"), "rounded up, at least 1");
    h.clock.advance(1);
    let r = h.get(TINY, Some("key-tiny")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("ratelimit"),
        Some("\"monthly-calls\";r=4;t=2678400")
    );
    let store = h.gw.store();
    let tiny = group_id("key-tiny");
    assert_eq!(store.usage(tiny, Month::from_ym(2026, 12)).calls, 5);
    assert_eq!(store.usage(tiny, Month::from_ym(2027, 1)).calls, 1);

    // February in a leap year ends on the 29th
    h.clock.set(utc_ms(2028, 2, 28, 23, 59, 59, 999));
    let r = h.get(TINY, Some("key-tiny")).await;
    assert_eq!(r.header("ratelimit"), Some("\"monthly-calls\";r=4;t=86401"));
    h.clock.set(utc_ms(2028, 2, 29, 23, 59, 59, 999));
    let r = h.get(TINY, Some("key-tiny")).await;
    assert_eq!(r.header("ratelimit"), Some("\"monthly-calls\";r=3;t=1"));
    h.clock.advance(1);
    assert_eq!(
        h.get(TINY, Some("key-tiny")).await.header("ratelimit"),
        Some("\"monthly-calls\";r=4;t=2678400")
    );

    // February in a non-leap year ends on the 28th
    h.clock.set(utc_ms(2027, 2, 28, 23, 59, 59, 999));
    for _ in 0..5 {
        assert_eq!(h.get(TINY, Some("key-tiny")).await.status, 200);
    }
    let r = h.get(TINY, Some("key-tiny")).await;
    assert_envelope(&r, 402, "2027-03-01T00:00:00Z");
    assert_eq!(r.header("retry-after"), Some("1"));
    h.clock.advance(1);
    assert_eq!(
        h.get(TINY, Some("key-tiny")).await.header("ratelimit"),
        Some("\"monthly-calls\";r=4;t=2678400")
    );
    assert_eq!(store.usage(tiny, Month::from_ym(2027, 2)).calls, 5);
    assert_eq!(store.usage(tiny, Month::from_ym(2027, 3)).calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_belongs_to_the_month_of_its_check() {
    let h =
        Harness::start_with(|c| c.replace("read_timeout_ms = 500", "read_timeout_ms = 5000")).await;
    h.clock.set(utc_ms(2026, 11, 30, 23, 59, 59, 900));
    let addr = h.addr;
    let slow = tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        c.get("/cdn/a?size=700&ms=300", Some("key-tiny")).await
    });
    // wait until the backend has it, then cross midnight before it answers
    while h.backend.received().is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    h.clock.set(utc_ms(2026, 12, 1, 0, 0, 0, 100));
    assert_eq!(slow.await.unwrap().status, 200);
    let store = h.gw.store();
    let tiny = group_id("key-tiny");
    wait_for("the bytes to be metered", || {
        let done = store.usage(tiny, Month::from_ym(2026, 11)).bytes >= 700;
        async move { done }
    })
    .await;
    let nov = store.usage(tiny, Month::from_ym(2026, 11));
    assert_eq!((nov.calls, nov.bytes), (1, 700));
    assert_eq!(store.usage(tiny, Month::from_ym(2026, 12)).bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overage_groups_are_never_refused_and_overage_is_counted() {
    let h = Harness::start().await;
    for i in 0..8 {
        let r = h.get(TINY, Some("key-tiny-overage")).await;
        assert_eq!(r.status, 200, "call {i}");
        let remaining = 4u64.saturating_sub(i);
        assert_eq!(
            r.header("ratelimit"),
            Some(format!("\"monthly-calls\";r={remaining};t=1339200").as_str())
        );
    }
    let u = h.usage("key-tiny-overage");
    assert_eq!((u.calls, u.calls_overage), (8, 3));
    // bandwidth: 1500 bytes included; 2 × 1000 served → 500 of overage
    for _ in 0..2 {
        assert_eq!(
            h.get("/cdn/x?size=1000", Some("key-tiny-overage"))
                .await
                .status,
            200
        );
    }
    h.wait_bytes("key-tiny-overage", 2000).await;
    let u = h.usage("key-tiny-overage");
    assert_eq!((u.bytes, u.bytes_overage), (2000, 500));
    assert_eq!((u.calls, u.calls_overage), (10, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bytes_are_metered_and_the_bandwidth_quota_is_enforced() {
    let h = Harness::start().await;
    let r = h.get("/cdn/logo.png?size=1000", Some("key-tiny")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 1000);
    assert_eq!(
        r.header("ratelimit-policy"),
        Some(
            "\"monthly-calls\";q=5;qu=\"requests\", \"monthly-bytes\";q=1500;qu=\"content-bytes\""
        )
    );
    assert_eq!(
        r.header("ratelimit"),
        Some("\"monthly-calls\";r=4;t=1339200, \"monthly-bytes\";r=500;t=1339200")
    );
    h.wait_bytes("key-tiny", 1000).await;
    assert_eq!(h.usage("key-tiny").bytes, 1000);
    // 1000 < 1500 so this one is admitted, and may overshoot
    assert_eq!(
        h.get("/cdn/logo.png?size=1000", Some("key-tiny"))
            .await
            .status,
        200
    );
    h.wait_bytes("key-tiny", 2000).await;
    assert_eq!(h.usage("key-tiny").bytes, 2000);
    let r = h.get("/cdn/logo.png?size=10", Some("key-tiny")).await;
    assert_envelope(&r, 402, "Monthly CDN bandwidth quota exceeded");
    assert_eq!(r.header("retry-after"), Some("1339200"));
    // calls remain; only the bandwidth is used up
    assert_eq!(
        r.header("ratelimit"),
        Some("\"monthly-calls\";r=3;t=1339200, \"monthly-bytes\";r=0;t=1339200")
    );
    assert_eq!(
        h.usage("key-tiny").calls,
        2,
        "a bandwidth refusal spends no call"
    );
    // calls-only routes still work for the group
    assert_eq!(h.get(TINY, Some("key-tiny")).await.status, 200);
    // HEAD sends no body bytes, so it meters none
    let mut c = h.client().await;
    let head = c
        .request(
            "HEAD /cdn/logo.png?size=999 HTTP/1.1\nHost: t\nAuthorization: Bearer key-pro",
            b"",
        )
        .await;
    assert_eq!(head.status, 200);
    assert_eq!(h.usage("key-pro").bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_reads_its_own_usage_unmetered_even_when_frozen() {
    let h = Harness::start().await;
    for _ in 0..3 {
        assert_eq!(h.get(TINY, Some("key-tiny")).await.status, 200);
    }
    assert_eq!(h.get("/cdn/a?size=700", Some("key-tiny")).await.status, 200);
    h.wait_bytes("key-tiny", 700).await;
    for _ in 0..2 {
        let r = h.get("/v1/usage", Some("key-tiny")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v = r.json();
        assert_eq!(v["success"], true);
        assert!(v["error"].is_null());
        let d = &v["data"];
        assert_eq!(d["group"], group_id("key-tiny"));
        assert_eq!(d["tier"], "tiny");
        assert_eq!(d["month"], "2026-11");
        assert_eq!(d["resets_at"], "2026-12-01T00:00:00Z");
        assert_eq!(
            (d["calls"].as_u64(), d["calls_limit"].as_u64()),
            (Some(4), Some(5)),
            "{d}"
        );
        assert_eq!(
            (d["bytes"].as_u64(), d["bytes_limit"].as_u64()),
            (Some(700), Some(1500))
        );
        assert_eq!(d["calls_overage"], 0);
    }
    assert_eq!(h.usage("key-tiny").calls, 4, "reading usage is not metered");
    assert_eq!(h.backend.received().len(), 4, "and never forwarded");

    let r = h.get("/v1/usage", Some("key-frozen")).await;
    assert_eq!(r.status, 200, "a frozen group can see why: {}", r.text());
    assert_eq!(r.json()["data"]["status"], "frozen");
    assert_envelope(
        &h.get("/v1/usage", Some("key-deactivated")).await,
        403,
        "deactivated",
    );
    assert_envelope(
        &h.get("/v1/usage", None).await,
        401,
        "Missing Authorization",
    );
    let mut c = h.client().await;
    let r = c
        .request(
            "POST /v1/usage HTTP/1.1\nHost: t\nAuthorization: Bearer key-pro\nContent-Length: 0",
            b"",
        )
        .await;
    assert_envelope(&r, 404, "Not found");
}
