//! Several servers per upstream: round robin, one retry of a failed connect on another server,
//! and active health checks that take a dead server out of the rotation.

mod common;

use std::time::Duration;

use common::*;

const P: &str = "/pair/x";

fn with_pair(servers: [std::net::SocketAddr; 2], health_ms: u64) -> impl FnOnce(String) -> String {
    move |c: String| {
        c + &format!(
            r#"
[upstreams.pair]
servers = ["{}", "{}"]
connect_timeout_ms = 300
health_check_interval_ms = {health_ms}

[[routes]]
prefix = "/pair/"
methods = ["GET"]
upstream = "pair"
"#,
            servers[0], servers[1]
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_spread_round_robin() {
    let (b1, a1, _s1) = extra_backend().await;
    let (b2, a2, _s2) = extra_backend().await;
    let h = Harness::start_with(with_pair([a1, a2], 0)).await;
    for _ in 0..6 {
        let r = h.get(P, Some("key-pro")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["data"]["uri"], P);
    }
    assert_eq!((b1.received().len(), b2.received().len()), (3, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_is_retried_once_on_another_server() {
    let (live, a, _s) = extra_backend().await;
    let h = Harness::start_with(with_pair([dead_addr().await, a], 0)).await;
    for _ in 0..6 {
        let r = h.get(P, Some("key-pro")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["data"]["group"], group_id("key-pro"));
    }
    assert_eq!(live.received().len(), 6);
    assert_eq!(h.usage("key-pro").calls, 6, "each request counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_a_dead_server_out_and_all_dead_is_502() {
    let (live, a, _s) = extra_backend().await;
    let dead = dead_addr().await;
    let h = Harness::start_with(with_pair([dead, a], 100)).await;
    let up = |snap: &vivgate::config::Snapshot| {
        snap.upstreams
            .iter()
            .find(|u| u.name == "pair")
            .unwrap()
            .lb
            .clone()
    };
    let lb = up(&h.gw.snapshot());
    let start = std::time::Instant::now();
    loop {
        let backends = lb.backends().get_backend();
        let dead_b = backends
            .iter()
            .find(|b| b.addr.as_inet() == Some(&dead))
            .unwrap();
        if !lb.backends().ready(dead_b) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the health check never marked the dead server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..4 {
        assert_eq!(h.get(P, Some("key-pro")).await.status, 200);
    }
    assert_eq!(live.received().len(), 4);

    // both servers down: 502, and nothing is charged
    drop(_s);
    drop(live);
    let h2 = Harness::start_with(with_pair([dead, dead_addr().await], 100)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = h2.get(P, Some("key-pro")).await;
    assert_envelope(&r, 502, "unreachable");
    assert_eq!(h2.usage("key-pro").calls, 0);
}
