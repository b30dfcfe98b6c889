//! Scenario 2: four instances sharing a Redis usage store under load, one of them SIGKILLed
//! and started again every 15 s, four times. A killed instance's leases are reclaimed after
//! `lease_ttl_ms`; what it served since its last settlement is lost with it (and its quota room
//! can be admitted again). The README bounds both by one lease (`lease_max`) per kill; this
//! holds the loss to one settlement interval of the instance's traffic per kill and the
//! over-admission to one lease per kill, and checks that nothing is counted twice.

use std::time::Duration;

use crate::common::redis_server::RedisServer;
use crate::common::*;
use crate::support::*;

const INSTANCES: usize = 4;
const KILLS: usize = 4;
const EVERY: Duration = Duration::from_secs(15);
/// The tiny tier's quota: the load uses it up in about 45 s, after the first three kills.
const QUOTA: u64 = 18_000;
const LEASE_MAX: u64 = 100;
const FLUSH_MS: u64 = 200;
/// Each instance's offered load per group (the clients below).
const PRO_PER_S: u64 = 100;
const TINY_PER_S: u64 = 100;
const OVERAGE_PER_S: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "chaos: minutes long; .ci/run runs it with --ignored"]
async fn instances_killed_under_load_lose_at_most_a_lease_each() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let h = Harness::start().await;
    let url = redis.url();
    let mut gates = Vec::new();
    for i in 0..INSTANCES {
        let (config, port, admin) = fleet_config(
            &h,
            i,
            &url,
            false,
            QUOTA,
            &format!("lease_max = {LEASE_MAX}"),
        )
        .await;
        let log = h.dir.path().join(format!("i{i}/vivgate.log"));
        gates.push(Gate::start(&config, port, admin, &log).await);
    }
    let mut targets = Vec::new();
    for g in &gates {
        for (label, key, every) in [
            ("pro", "key-pro", 1000 / PRO_PER_S),
            ("tiny", "key-tiny", 1000 / TINY_PER_S),
            ("overage", "key-tiny-overage", 1000 / OVERAGE_PER_S),
        ] {
            targets.push(Target {
                addr: g.addr(),
                label,
                key,
                path: "/tenant/integrationObjects?type=a".into(),
                every: Duration::from_millis(every),
            });
        }
    }
    let load = Load::start(targets, Duration::from_secs(5));
    for k in 0..KILLS {
        tokio::time::sleep(EVERY - Duration::from_secs(1)).await;
        let i = k % INSTANCES;
        gates[i].kill();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (config, port, admin, log) = (
            gates[i].config.clone(),
            gates[i].port,
            gates[i].admin.port(),
            gates[i].log.clone(),
        );
        gates[i] = Gate::start(&config, port, admin, &log).await;
    }
    // the last kill's leases are reclaimed (lease_ttl_ms = 2000) while the load goes on
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tally = load.stop().await;
    for g in &mut gates {
        g.stop().await;
    }
    eprintln!("instances dying: {}", tally.summary());
    assert!(tally.bad.is_empty(), "{:?}", tally.bad);
    assert_eq!(tally.hung, 0, "{}", tally.summary());
    for (status, msg) in tally.errors.keys() {
        assert_eq!(*status, 402, "{msg}");
    }

    let mut report = Vec::new();
    for key in ["key-pro", "key-tiny", "key-tiny-overage"] {
        let group = group_id(key);
        let u = redis_usage(&url, group).await;
        let (served, stored) = (h.backend.total_for(group), field(&u, "calls"));
        report.push(format!(
            "{key}: served {served}, Redis {stored}, lost {}",
            served as i64 - stored as i64
        ));
        assert!(
            u.keys().all(|f| !f.starts_with("L:")),
            "{key}: a lease left: {u:?}"
        );
        // nothing counted twice, nothing counted that was not served
        assert!(stored <= served, "{key}: Redis {stored} > served {served}");
        let lost = served - stored;
        // what the killed instance served since its last settlement: one settlement interval of
        // its traffic per kill, two when a settlement was late or in flight (the README's
        // bound; measured: about half of one, see the report): a hard-quota group's calls are
        // counted when leased, and what the instance spent of its lease since its last
        // settlement goes when the lease is reclaimed; an overage group's are counted locally
        // and settled every interval
        let per_s = match key {
            "key-pro" => PRO_PER_S,
            "key-tiny" => TINY_PER_S,
            _ => OVERAGE_PER_S,
        };
        let interval = per_s * FLUSH_MS / 1000;
        let bound = KILLS as u64 * (2 * interval + 2);
        report.push(format!(
            "{key}: {:.1} lost per kill, one settlement interval of an instance's traffic is {interval}",
            lost as f64 / KILLS as f64
        ));
        assert!(bound <= KILLS as u64 * LEASE_MAX);
        assert!(
            lost <= bound,
            "{key}: {lost} lost over {KILLS} kills (bound {bound})"
        );
    }
    let tiny = h.backend.total_for(group_id("key-tiny"));
    let over = tiny.saturating_sub(QUOTA);
    report.push(format!(
        "tiny quota {QUOTA}: forwarded {tiny}, over-admitted {over} ({} per kill; bound {LEASE_MAX} per kill)",
        over as f64 / KILLS as f64
    ));
    eprintln!("{}", report.join("\n"));
    assert!(tiny >= QUOTA, "the quota was used up: {tiny}");
    assert!(over <= KILLS as u64 * LEASE_MAX, "over-admission {over}");
}
