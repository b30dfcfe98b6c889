//! Scenario 5: a reload every 100 ms for 30 s under load (SIGHUP and `POST /reload` in turn),
//! every other one with a broken file, the good ones swapping a table of 1,000 extra groups in
//! and out. No request may fail, the counts must be exact, and memory must come back.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::*;

const STORM: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_millis(100);

/// Writes `text` to `path` whole: a reload never reads half a file.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "chaos: minutes long; .ci/run runs it with --ignored"]
async fn a_reload_storm_fails_no_request_and_keeps_counts_and_memory() {
    let h = Harness::start().await;
    let (port, admin_port) = two_ports().await;
    let tenants = h.dir.path().join("storm-tenants.toml");
    let base = tenants_toml();
    let big = format!("{base}{}", extra_groups("storm-key", 1000));
    write_atomically(&tenants, &base);
    let config = gate_config(
        &h,
        "storm.toml",
        port,
        admin_port,
        "grace_period_seconds = 1",
        "",
    );
    let good_config = edit(
        &std::fs::read_to_string(&config).unwrap(),
        "tenants = \"tenants.toml\"",
        "tenants = \"storm-tenants.toml\"",
    );
    write_atomically(&config, &good_config);
    let broken_config = good_config.replace("[server]", "[server\n");
    let broken_tenants = format!("{base}[[groups]]\nid = \"{:024x}\"\ntier = \"no-such-tier\"\nstatus = \"active\"\nkeys = []\n", 0xc0ffee);
    let log = h.dir.path().join("storm.log");
    let mut gate = Gate::start(&config, port, admin_port, &log).await;

    let (pro, overage) = (group_id("key-pro"), group_id("key-tiny-overage"));
    let mut targets = Vec::new();
    for i in 0..8 {
        let (label, key, path) = match i % 4 {
            0 => ("cdn", "key-pro", "/cdn/storm.bin?size=2000"),
            1 => (
                "overage",
                "key-tiny-overage",
                "/tenant/integrationObjects?type=a",
            ),
            _ => ("pro", "key-pro", "/tenant/integrationObjects?type=a"),
        };
        targets.push(Target {
            addr: gate.addr(),
            label,
            key,
            path: path.to_string(),
            every: Duration::from_millis(4),
        });
    }
    let load = Load::start(targets, Duration::from_secs(5));
    // warm-up, then memory as the load holds it
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before = gate.rss_kib();
    let fds_before = gate.fds();

    let start = Instant::now();
    let (mut sighups, mut posts, mut broken, mut peak) = (0u32, 0u32, 0u32, 0u64);
    let mut post_answers = std::collections::BTreeMap::<u16, u32>::new();
    let mut i = 0u32;
    while start.elapsed() < STORM {
        let good = i.is_multiple_of(2);
        if good {
            write_atomically(&config, &good_config);
            write_atomically(&tenants, if i.is_multiple_of(4) { &big } else { &base });
        } else if i % 4 == 1 {
            write_atomically(&config, &broken_config);
        } else {
            write_atomically(&tenants, &broken_tenants);
        }
        if !good {
            broken += 1;
        }
        if (i / 2).is_multiple_of(2) {
            signal(&gate.proc.0, libc::SIGHUP);
            sighups += 1;
        } else {
            let (status, body) = gate.admin("POST", "/reload", "").await;
            assert_eq!(status, if good { 200 } else { 400 }, "{body}");
            if !good {
                assert!(envelope_error(body.as_bytes()).is_some(), "{body}");
            }
            *post_answers.entry(status).or_default() += 1;
            posts += 1;
        }
        tokio::time::sleep(EVERY).await;
        // the broken file goes away again before the next reload
        write_atomically(&config, &good_config);
        if !good {
            write_atomically(&tenants, &base);
        }
        peak = peak.max(gate.rss_kib());
        if i.is_multiple_of(50) {
            eprintln!("{:?}: RSS-LazyFree {} KiB", start.elapsed(), gate.rss_kib());
        }
        i += 1;
    }
    // the last reload leaves the base table in place, as before the storm
    write_atomically(&tenants, &base);
    let (status, body) = gate.admin("POST", "/reload", "").await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = gate.rss_kib();
    let fds_after = gate.fds();
    let tally = load.stop().await;
    eprintln!(
        "reload storm: {} reloads ({sighups} SIGHUP, {posts} POST /reload {post_answers:?}), {broken} with a broken file; {}",
        i,
        tally.summary()
    );
    let reloads_ok = gate.metric("vivgate_reloads_total{result=\"ok\"}").await;
    let reloads_refused = gate
        .metric("vivgate_reloads_total{result=\"refused\"}")
        .await;
    eprintln!(
        "reloads by the metrics: ok {reloads_ok}, refused {reloads_refused}; RSS-LazyFree before {rss_before} KiB, peak {peak} KiB, after {rss_after} KiB; fds {fds_before} -> {fds_after}"
    );

    let log_text = gate.log_text();
    let mut reasons = std::collections::BTreeMap::<String, u32>::new();
    for l in log_text
        .lines()
        .filter(|l| l.contains("reload") && (l.contains("ERROR") || l.contains("WARN")))
    {
        // the message without its time stamp
        let l = l.split_once("Z ").map_or(l, |x| x.1);
        let l = l.split(" caller=").next().unwrap_or(l);
        let l = l.split("/tmp/").next().unwrap_or(l).to_string()
            + l.rsplit(".toml").next().unwrap_or("");
        *reasons.entry(l.chars().take(300).collect()).or_default() += 1;
    }
    eprintln!("refusals in the log: {reasons:#?}");
    // no request failed
    assert!(tally.answered() > 10_000, "{}", tally.summary());
    assert_eq!(tally.count(200), tally.answered(), "{}", tally.summary());
    assert_eq!(
        (tally.cut, tally.unanswered, tally.refused, tally.hung),
        (0, 0, 0, 0),
        "{}",
        tally.summary()
    );
    assert!(tally.bad.is_empty(), "{:?}", tally.bad);
    // every reload was applied or refused (SIGHUPs that arrive during a reload may coalesce)
    assert!(
        reloads_refused >= f64::from(broken / 2),
        "refused {reloads_refused}"
    );
    assert!(reloads_ok >= f64::from((i - broken) / 2), "ok {reloads_ok}");
    // exact counts: what the backend served, what the clients got and what the gateway holds
    let cdn_ok = tally.label_count("cdn", 200);
    let served_pro = h.backend.total_for(pro);
    assert_eq!(served_pro, cdn_ok + tally.label_count("pro", 200));
    let (calls, bytes) = gate.usage_settled(pro, (served_pro, cdn_ok * 2000)).await;
    assert_eq!(calls, served_pro, "calls of {pro}");
    assert_eq!(bytes, cdn_ok * 2000, "bytes of {pro}");
    let (ov_calls, _) = gate.usage(overage).await;
    assert_eq!(ov_calls, h.backend.total_for(overage), "calls of {overage}");
    assert_eq!(ov_calls, tally.label_count("overage", 200));
    // memory back to its level (within 10 % and 1 MiB), no descriptor left behind
    assert!(
        rss_after <= rss_before + rss_before / 10 + 1024,
        "RSS-LazyFree {rss_before} KiB before, {rss_after} KiB after"
    );
    assert!(
        fds_after <= fds_before + 2,
        "fds {fds_before} -> {fds_after}"
    );
    gate.stop().await;
    // after the graceful stop, the store file holds the same: a restart reports it
    let mut again = Gate::start(&config, port, admin_port, &log).await;
    assert_eq!(again.usage(pro).await, (calls, bytes));
    again.stop().await;
}
