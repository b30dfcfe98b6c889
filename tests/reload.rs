//! Config reload in-process: a good reload swaps keys and status at once and keeps the counters;
//! a bad one keeps the running snapshot; a change that needs a restart is refused by name.

mod common;

use common::*;
use vivgate::gateway::ReloadError;
use vivgate::keys::{format_key_hash, hash_key};

const P: &str = "/tenant/integrationObjects?type=a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_reload_applies_keys_and_status_and_keeps_counters() {
    let h = Harness::start().await;
    for _ in 0..3 {
        assert_eq!(h.get(P, Some("key-tiny")).await.status, 200);
    }
    let tiny_hash = format_key_hash(&hash_key(b"key-tiny"));
    let fresh_hash = format_key_hash(&hash_key(b"key-fresh"));
    let tenants = tenants_toml().replace(&tiny_hash, &fresh_hash).replace(
        "id = \"aaaaaaaaaaaaaaaaaaaaaa01\"\ntier = \"pro\"\nstatus = \"active\"",
        "id = \"aaaaaaaaaaaaaaaaaaaaaa01\"\ntier = \"pro\"\nstatus = \"frozen\"",
    );
    h.write_tenants(&tenants);
    let report = h.gw.reload().unwrap();
    assert_eq!(report.groups, [6, 6]);
    assert_eq!(report.keys, [7, 7]);
    assert_eq!(
        report.groups_changed,
        vec!["aaaaaaaaaaaaaaaaaaaaaa01".to_string()]
    );
    assert!(
        report.groups_added.is_empty() && report.groups_removed.is_empty() && !report.truncated
    );

    assert_envelope(&h.get(P, Some("key-tiny")).await, 401, "Invalid or revoked");
    assert_envelope(&h.get(P, Some("key-pro")).await, 400, "frozen");
    // the rotated-in key spends the same counters: 3 used of 5
    let r = h.get(P, Some("key-fresh")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("ratelimit"),
        Some("\"monthly-calls\";r=1;t=1339200")
    );
    assert_eq!(h.get(P, Some("key-fresh")).await.status, 200);
    assert_envelope(&h.get(P, Some("key-fresh")).await, 402, "quota");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reload_keeps_the_running_snapshot() {
    let h = Harness::start().await;
    h.write_tenants(
        "[[groups]]\nid = \"g\"\ntier = \"free\"\nstatus = \"active\"\nkeys = [\"key-pro\"]\n",
    );
    match h.gw.reload() {
        Err(ReloadError::Invalid(e)) => {
            assert_eq!(e.field, "groups[0].keys[0]");
            assert!(
                e.to_string()
                    .contains("tenants.toml: groups[0].keys[0]: not a key hash"),
                "{e}"
            );
        }
        other => panic!("expected an invalid-config refusal, got {other:?}"),
    }
    assert_eq!(h.get(P, Some("key-pro")).await.status, 200);

    h.write_tenants(&tenants_toml());
    let config = std::fs::read_to_string(h.dir.path().join("vivgate.toml")).unwrap();
    h.write_config(&config.replace("upstream = \"dead\"", "upstream = \"gone\""));
    let err = h.gw.reload().unwrap_err();
    assert!(
        err.to_string()
            .contains("upstream: unknown upstream \"gone\""),
        "{err}"
    );
    assert_eq!(h.get(P, Some("key-pro")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_need_a_restart_refuse_the_whole_reload() {
    let h = Harness::start().await;
    let config = std::fs::read_to_string(h.dir.path().join("vivgate.toml")).unwrap();
    // a tenants change that would otherwise apply, together with a listen change
    h.write_tenants(&tenants_toml().replace("status = \"frozen\"", "status = \"active\""));
    h.write_config(&config.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:9\""));
    assert_eq!(
        h.gw.reload(),
        Err(ReloadError::NeedsRestart("server.listen"))
    );
    h.write_config(&config.replace("threads = 2", "threads = 3"));
    assert_eq!(
        h.gw.reload(),
        Err(ReloadError::NeedsRestart("server.threads"))
    );
    assert!(h
        .gw
        .reload()
        .unwrap_err()
        .to_string()
        .contains("server.threads cannot change"));
    assert_envelope(&h.get(P, Some("key-frozen")).await, 400, "frozen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request_and_change_no_counter() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let h = Harness::start_with(|c| c.replace("api_calls = 5", "api_calls = 1000000")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, ok, addr) = (stop.clone(), ok.clone(), h.addr);
        clients.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            while !stop.load(Ordering::Relaxed) {
                let r = c.get(P, Some("key-tiny")).await;
                assert_eq!(
                    r.status,
                    200,
                    "a request failed during reloads: {}",
                    r.text()
                );
                ok.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let good = tenants_toml();
    let bad = "[[groups]]\nid = \"g\"\ntier = \"nope\"\nstatus = \"active\"\n";
    let mut reloads = (0, 0);
    for i in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if i % 2 == 0 {
            h.write_tenants(&good);
            h.gw.reload().unwrap();
            reloads.0 += 1;
        } else {
            h.write_tenants(bad);
            assert!(h.gw.reload().is_err());
            reloads.1 += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let served = ok.load(Ordering::Relaxed);
    assert!(served > 100, "only {served} requests in a second of load");
    assert_eq!(
        h.usage("key-tiny").calls,
        served,
        "every forwarded call counted once, none lost to a reload"
    );
    assert_eq!(h.backend.total(), served);
    eprintln!(
        "{served} requests, {} good and {} bad reloads, 0 failures",
        reloads.0, reloads.1
    );
}
