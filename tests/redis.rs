//! Several gateway instances sharing one quota through a real `redis-server`, started by the
//! test on an ephemeral port in a temp dir and stopped by it. Without `redis-server` these tests
//! say loudly that they were skipped, unless `VIVGATE_REQUIRE_REDIS=1` (CI) makes that a failure.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::relay::Relay;
use common::*;
use tokio::sync::watch;
use vivgate::clock::{utc_ms, Clock, ManualClock, Month, SystemClock};
use vivgate::usage::redis::{RedisStore, SharedRedisStore};
use vivgate::usage::UsageStore;
use vivgate::{Gateway, Options, Running, Shutdown};

/// N gateway instances on one backend and one Redis, with the harness's config; the tiny tier
/// gets `quota` calls.
struct Fleet {
    h: Harness,
    addrs: Vec<SocketAddr>,
    gws: Vec<Arc<Gateway>>,
    stops: Vec<watch::Sender<bool>>,
    runs: Vec<Option<Running>>,
    clock: Arc<ManualClock>,
    config: String,
}

const TINY: &str = "key-tiny";

impl Fleet {
    async fn start(redis: &RedisServer, n: usize, quota: u64, usage_extra: &str) -> Fleet {
        Self::start_url(&redis.url(), n, quota, usage_extra).await
    }

    async fn start_url(url: &str, n: usize, quota: u64, usage_extra: &str) -> Fleet {
        let h = Harness::start().await;
        // a graceful stop without a grace period: the tests stop an instance once its load ends
        let config = h
            .config_text()
            .replace("threads = 2", "threads = 2\ngrace_period_seconds = 0")
            .replace("api_calls = 5", &format!("api_calls = {quota}"))
            + &format!(
                "\n[usage]\nstore = \"redis\"\nredis_url = \"{url}\"\nflush_interval_ms = 200\nlease_idle_ms = 300\nlease_ttl_ms = 2000\n{usage_extra}\n"
            );
        let clock = Arc::new(ManualClock::new(utc_ms(2026, 11, 15, 12, 0, 0, 0)));
        let mut f = Fleet {
            h,
            addrs: Vec::new(),
            gws: Vec::new(),
            stops: Vec::new(),
            runs: Vec::new(),
            clock,
            config,
        };
        for _ in 0..n {
            f.add().await;
        }
        f
    }

    /// Starts one more instance, with the production runner.
    async fn add(&mut self) -> usize {
        let path = self.h.dir.path().join("fleet.toml");
        std::fs::write(&path, &self.config).unwrap();
        let (stop, stop_rx) = watch::channel(false);
        // the month comes from `clock`; the store times its leases by the wall clock
        let options = Options {
            clock: Some(self.clock.clone()),
            ..Default::default()
        };
        let running = tokio::task::spawn_blocking(move || {
            vivgate::start(&path, options, Shutdown::Watch(stop_rx)).unwrap()
        })
        .await
        .unwrap();
        self.addrs.push(running.addresses.listen);
        self.gws.push(running.gateway.clone());
        self.stops.push(stop);
        self.runs.push(Some(running));
        self.gws.len() - 1
    }

    /// Stops instance `i` gracefully: no new connections, then the final settlement (leases
    /// given back).
    async fn stop(&mut self, i: usize) {
        let _ = self.stops[i].send(true);
        let running = self.runs[i].take().expect("stopped once");
        tokio::task::spawn_blocking(move || running.wait())
            .await
            .unwrap()
            .unwrap();
    }

    fn key(&self, month: Month) -> String {
        format!("vivgate:usage:{{{}}}:{month}", group_id(TINY))
    }
}

fn target() -> String {
    format!("/tenant/collectionObjects?collectionId={OID}")
}

/// `clients` connections spread over `addrs` send calls for `key` until `served` reaches `goal`
/// or `deadline` passes; returns (statuses seen, 200s).
async fn load(
    addrs: &[SocketAddr],
    clients: usize,
    key: &'static str,
    goal: u64,
    deadline: Duration,
) -> (Vec<u16>, u64) {
    let served = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + deadline;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let addr = addrs[c % addrs.len()];
        let served = served.clone();
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            let mut client = Client::connect(addr).await;
            while served.load(Ordering::Relaxed) < goal && Instant::now() < end {
                let Some(r) = client
                    .try_request(
                        &format!(
                            "GET {} HTTP/1.1\nHost: t\nAuthorization: Bearer {key}",
                            target()
                        ),
                        b"",
                    )
                    .await
                else {
                    client = Client::connect(addr).await;
                    continue;
                };
                match r.status {
                    200 => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    402 => {
                        assert_envelope(&r, 402, "quota exceeded");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    503 => {
                        assert_envelope(&r, 503, "Usage service unavailable");
                        assert_eq!(r.header("retry-after"), Some("1"));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    s => panic!("unexpected {s}: {}", r.text()),
                }
                statuses.push(r.status);
                if r.header("connection") == Some("close") {
                    client = Client::connect(addr).await;
                }
            }
            statuses
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all, served.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_forward_exactly_the_quota() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let mut fleet = Fleet::start(&redis, 4, 1_000, "").await;
    let addrs = fleet.addrs.clone();
    // 64 clients keep sending after the quota is spent, for a while: nothing more gets through
    let (statuses, served) = load(&addrs, 64, TINY, u64::MAX, Duration::from_secs(6)).await;
    assert_eq!(served, 1_000, "forwarded across 4 instances");
    assert!(statuses.iter().filter(|s| **s == 402).count() > 0);
    assert_eq!(
        fleet.h.backend.total(),
        1_000,
        "the backend saw exactly the quota"
    );
    for i in 0..4 {
        fleet.stop(i).await;
    }
    let key = fleet.key(Month::from_ym(2026, 11));
    assert_eq!(
        redis.hget(&key, "calls").await,
        1_000,
        "Redis holds what was served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_loses_nothing() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let mut fleet = Fleet::start(&redis, 2, 300, "").await;
    let (_, first) = load(&fleet.addrs, 8, TINY, 120, Duration::from_secs(10)).await;
    assert!(first >= 120, "{first}");
    fleet.stop(0).await;
    let i = fleet.add().await;
    let addrs = vec![fleet.addrs[1], fleet.addrs[i]];
    let (_, rest) = load(&addrs, 8, TINY, u64::MAX, Duration::from_secs(4)).await;
    assert_eq!(first + rest, 300, "the quota holds across the restart");
    assert_eq!(fleet.h.backend.total(), 300);
    fleet.stop(1).await;
    fleet.stop(i).await;
    assert_eq!(
        redis
            .hget(&fleet.key(Month::from_ym(2026, 11)), "calls")
            .await,
        300
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_with_allow_admits_the_allowance_and_replays_it() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    // allowance 5 % of 1,000 = 50 calls per instance while Redis is down
    let mut fleet = Fleet::start(&redis, 2, 1_000, "outage_allowance = 0.05").await;
    let (_, before) = load(&fleet.addrs, 8, TINY, 200, Duration::from_secs(10)).await;
    assert!(before >= 200, "{before}");
    redis.kill();
    let (statuses, during) = load(&fleet.addrs, 8, TINY, u64::MAX, Duration::from_secs(3)).await;
    // what the instances held in leases, then 50 each; after that 503s
    assert!(statuses.contains(&503), "503 once the allowance is spent");
    assert!(during >= 100, "the allowance was admitted: {during}");
    assert!(
        during <= 100 + 2 * 100,
        "leases (at most lease_max each) plus 2 x 50: {during}"
    );
    redis.restart().await;
    // the instances notice within a settlement interval and replay what they counted
    let key = fleet.key(Month::from_ym(2026, 11));
    let served = before + during;
    let r = &redis;
    wait_for("the outage counts to be replayed", || {
        let key = key.clone();
        async move { r.hget(&key, "calls").await >= served }
    })
    .await;
    fleet.stop(0).await;
    fleet.stop(1).await;
    assert_eq!(
        redis.hget(&key, "calls").await,
        served,
        "Redis holds exactly what was served"
    );
    assert_eq!(fleet.h.backend.total(), served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_with_deny_answers_503_after_the_leases() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let mut fleet = Fleet::start(&redis, 2, 1_000, "on_store_unavailable = \"deny\"").await;
    let (_, before) = load(&fleet.addrs, 4, TINY, 50, Duration::from_secs(10)).await;
    assert!(before >= 50, "{before}");
    redis.kill();
    let (statuses, during) = load(&fleet.addrs, 4, TINY, u64::MAX, Duration::from_secs(2)).await;
    assert!(statuses.contains(&503));
    assert!(during <= 2 * 100, "only leases already held: {during}");
    // an overage group is never refused for an outage: it is counted and replayed
    let (_, overage) = load(
        &fleet.addrs,
        2,
        "key-tiny-overage",
        10,
        Duration::from_secs(5),
    )
    .await;
    assert!(overage >= 10, "{overage}");
    redis.restart().await;
    let (_, after) = load(&fleet.addrs, 4, TINY, 20, Duration::from_secs(10)).await;
    assert!(after >= 20, "served again once Redis is back: {after}");
    fleet.stop(0).await;
    fleet.stop(1).await;
    let key = fleet.key(Month::from_ym(2026, 11));
    assert_eq!(redis.hget(&key, "calls").await, before + during + after);
    let okey = format!("vivgate:usage:{{{}}}:2026-11", group_id("key-tiny-overage"));
    assert_eq!(redis.hget(&okey, "calls").await, overage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_month_rolls_over_on_every_instance() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let mut fleet = Fleet::start(&redis, 2, 40, "").await;
    let (_, nov) = load(&fleet.addrs, 4, TINY, u64::MAX, Duration::from_secs(2)).await;
    assert_eq!(nov, 40);
    fleet.clock.set(utc_ms(2026, 12, 1, 0, 0, 0, 0));
    assert_eq!(
        Month::containing(fleet.clock.now_ms()),
        Month::from_ym(2026, 12)
    );
    let (_, dec) = load(&fleet.addrs, 4, TINY, u64::MAX, Duration::from_secs(2)).await;
    assert_eq!(dec, 40, "a new month, a new quota, on both instances");
    fleet.stop(0).await;
    fleet.stop(1).await;
    assert_eq!(
        redis
            .hget(&fleet.key(Month::from_ym(2026, 11)), "calls")
            .await,
        40
    );
    assert_eq!(
        redis
            .hget(&fleet.key(Month::from_ym(2026, 12)), "calls")
            .await,
        40
    );
    assert_eq!(fleet.h.backend.total(), 80);
    // the days: the group's beside its month key, the gateway's as each instance's totals
    let tiny = group_id(TINY);
    assert_eq!(
        redis
            .hget(
                &format!("vivgate:usage-days:{{{tiny}}}:2026-11"),
                "15:calls"
            )
            .await,
        40
    );
    assert_eq!(
        redis
            .hget(&format!("vivgate:usage-days:{{{tiny}}}:2026-12"), "1:calls")
            .await,
        40
    );
    assert_eq!(gateway_day(&redis, "2026-11", 15, "calls").await, 40);
    assert_eq!(gateway_day(&redis, "2026-12", 1, "calls").await, 40);
    // the day fields stay out of the month key (its grants read it whole)
    let c = redis::Client::open(redis.url()).unwrap();
    let mut con = c
        .get_multiplexed_async_connection_with_config(&common::redis_server::patient())
        .await
        .unwrap();
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(fleet.key(Month::from_ym(2026, 11)))
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(fields.iter().all(|f| !f.contains(":calls")), "{fields:?}");
    // as the store reads them back
    let store = fleet.gws[1].clone();
    let (group_days, gateway_days) = tokio::task::block_in_place(|| {
        (
            store
                .store()
                .days(group_id(TINY), Month::from_ym(2026, 11))
                .unwrap(),
            store.store().days("", Month::from_ym(2026, 12)).unwrap(),
        )
    });
    assert_eq!(
        (group_days.len(), group_days[14], group_days[13]),
        (30, [40, 0], [0, 0])
    );
    assert_eq!((gateway_days.len(), gateway_days[0]), (31, [40, 0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_settles_and_returns_its_leases_on_sigterm() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let h = Harness::start().await;
    let port = free_port().await;
    let config = h.binary_config(
        "redis.toml",
        port,
        "grace_period_seconds = 1",
        &format!(
            "[usage]\nstore = \"redis\"\nredis_url = \"{}\"\nlease_idle_ms = 60000\nlease_ttl_ms = 120000\n",
            redis.url()
        ),
    );
    let mut child = spawn_binary(&config, &[], &[], port).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = Client::connect(addr).await;
    for _ in 0..7 {
        assert_eq!(c.get(&target(), Some("key-pro")).await.status, 200);
    }
    drop(c);
    // the binary's clock is the real one: this month's key
    let month = Month::containing(SystemClock.now_ms());
    let key = format!("vivgate:usage:{{{}}}:{month}", group_id("key-pro"));
    // a lease is held (7 served of a larger grant) until the stop gives it back
    assert!(redis.hget(&key, "calls").await > 7);
    let status = wait_exit(&mut child, Some(libc::SIGTERM), Duration::from_secs(15)).await;
    assert!(status.success());
    assert_eq!(
        redis.hget(&key, "calls").await,
        7,
        "served calls only, leases returned"
    );
    let c = redis::Client::open(redis.url()).unwrap();
    let mut con = c
        .get_multiplexed_async_connection_with_config(&common::redis_server::patient())
        .await
        .unwrap();
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        !fields
            .iter()
            .any(|f| f.starts_with("L:") || f.starts_with("E:")),
        "no lease left: {fields:?}"
    );
}

/// Three redis-server nodes in cluster mode (no replicas), on free ports whose cluster-bus
/// ports (+10000) are free too.
struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    async fn start() -> Option<RedisCluster> {
        if Command::new("redis-cli").arg("--version").output().is_err() {
            if std::env::var("VIVGATE_REQUIRE_REDIS").as_deref() == Ok("1") {
                panic!("VIVGATE_REQUIRE_REDIS=1 but redis-cli is not installed");
            }
            eprintln!("!!! SKIPPED: redis-cli is not installed (apt-get install redis-server)");
            return None;
        }
        let mut nodes = Vec::new();
        let mut port = 21_000 + (std::process::id() % 20_000) as u16;
        while nodes.len() < 3 {
            port += 1;
            let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
            if !free(port) || !free(port + 10_000) {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                ])
                .args(["--appendonly", "no", "--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let node = RedisServer { child, port, dir };
            node.wait_ready().await;
            nodes.push(node);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        for n in &nodes {
            let port = n.port;
            wait_for("the cluster to be ok", || async move {
                let out = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok")
            })
            .await;
        }
        Some(RedisCluster { nodes })
    }

    fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}/", hosts.join(","))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_url_works_the_same() {
    let Some(cluster) = RedisCluster::start().await else {
        return;
    };
    let mut fleet = Fleet::start_url(&cluster.url(), 2, 200, "").await;
    // the cluster connection is made in the background (until then the outage policy
    // applies): wait until each instance reads through it
    for gw in &fleet.gws {
        wait_for("the cluster connection", || {
            let gw = gw.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    gw.store()
                        .usage_checked(group_id("key-pro"), Month::from_ym(2026, 11))
                        .is_ok()
                })
                .await
                .unwrap()
            }
        })
        .await;
    }
    let addrs = fleet.addrs.clone();
    let (_, served) = load(&addrs, 16, TINY, u64::MAX, Duration::from_secs(3)).await;
    assert_eq!(
        served, 200,
        "the quota holds across 2 instances on a cluster"
    );
    fleet.stop(0).await;
    fleet.stop(1).await;
    let gws = fleet.gws.clone();
    let usage = {
        let gw = gws[0].clone();
        tokio::task::spawn_blocking(move || {
            gw.store()
                .usage_checked(group_id(TINY), Month::from_ym(2026, 11))
        })
        .await
        .unwrap()
        .unwrap()
    };
    assert_eq!(usage.calls, 200, "read back through the cluster");
    // the days too: the group's beside its key, the gateway's summed over both instances
    let gw = gws[1].clone();
    let (group_days, gateway_days) = tokio::task::spawn_blocking(move || {
        let nov = Month::from_ym(2026, 11);
        (
            gw.store().days(group_id(TINY), nov).unwrap(),
            gw.store().days("", nov).unwrap(),
        )
    })
    .await
    .unwrap();
    assert_eq!(group_days[14], [200, 0]);
    assert_eq!(gateway_days[14], [200, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_month_stays_readable_from_its_archive() {
    use vivgate::usage::{GroupId, Take};
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let h = Harness::start().await;
    let config = h.config_text().replace("api_calls = 5", "api_calls = 100")
        + &format!(
            "\n[usage]\nstore = \"redis\"\nredis_url = \"{}\"\n",
            redis.url()
        );
    let snap = vivgate::config::load_from_str(
        Path::new("vivgate.toml"),
        &config,
        Path::new("tenants.toml"),
        &tenants_toml(),
    )
    .unwrap();
    // the store's clock stands two hours after the end of November
    let clock = Arc::new(ManualClock::new(utc_ms(2026, 12, 1, 2, 0, 0, 0)));
    let store = SharedRedisStore(
        RedisStore::connect(snap.startup.usage.redis.clone().unwrap(), clock).unwrap(),
    );
    let nov = Month::from_ym(2026, 11);
    let g: GroupId = group_id(TINY).into();
    for _ in 0..7 {
        let t = store.take_call(&g, nov, 100, false, "tiny").await;
        assert!(matches!(t, Take::Admitted { .. }), "{t:?}");
    }
    store.add_bytes(&g, nov, 1_234, 1_500, false);
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.flush().unwrap())
        .await
        .unwrap();
    // the month's own key expires some weeks after the month (here: now)
    let key = format!("vivgate:usage:{{{}}}:2026-11", group_id(TINY));
    let c = redis::Client::open(redis.url()).unwrap();
    let mut con = c
        .get_multiplexed_async_connection_with_config(&common::redis_server::patient())
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    let s = store.clone();
    let g2 = g.clone();
    let u = tokio::task::spawn_blocking(move || s.usage_checked(&g2, nov))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((u.calls, u.bytes), (7, 1_234), "read from the archive");
    // the archive is kept for the retention period (13 months after November 2026)
    let expire_at: i64 = redis::cmd("PEXPIRETIME")
        .arg("vivgate:usage-archive:2026-11")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(expire_at, utc_ms(2027, 12, 1, 0, 0, 0, 0));
}

/// Every `L:` (a lease Redis thinks an instance holds) left in a usage hash.
/// The whole gateway's `what` (calls, bytes) on `day` of `month`: every instance's total.
async fn gateway_day(redis: &RedisServer, month: &str, day: u32, what: &str) -> u64 {
    let c = redis::Client::open(redis.url()).unwrap();
    let mut con = c
        .get_multiplexed_async_connection_with_config(&common::redis_server::patient())
        .await
        .unwrap();
    let fields: Vec<(String, i64)> = redis::cmd("HGETALL")
        .arg(format!("vivgate:gateway-days:{month}"))
        .query_async(&mut con)
        .await
        .unwrap();
    fields
        .iter()
        .filter(|(f, _)| f.starts_with(&format!("{day}:")) && f.ends_with(&format!(":{what}")))
        .map(|(_, v)| v)
        .sum::<i64>() as u64
}

async fn lease_fields(redis: &RedisServer, key: &str) -> Vec<(String, String)> {
    let c = redis::Client::open(redis.url()).unwrap();
    let mut con = c
        .get_multiplexed_async_connection_with_config(&common::redis_server::patient())
        .await
        .unwrap();
    let fields: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(key)
        .query_async(&mut con)
        .await
        .unwrap();
    fields
        .into_iter()
        .filter(|(f, _)| f.starts_with("L:"))
        .collect()
}

/// Makes Redis log every command it runs (its slow log, with a threshold of 0).
async fn log_every_command(redis: &RedisServer) {
    let c = redis::Client::open(redis.url()).unwrap();
    let mut con = c
        .get_multiplexed_async_connection_with_config(&common::redis_server::patient())
        .await
        .unwrap();
    for (name, value) in [
        ("slowlog-log-slower-than", "0"),
        ("slowlog-max-len", "100000"),
    ] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut con)
            .await
            .unwrap();
    }
}

/// The grant numbers (the lease script's last argument) Redis ran for `key`, from its log.
async fn grants_run(redis: &RedisServer, key: &str) -> Vec<String> {
    let c = redis::Client::open(redis.url()).unwrap();
    let mut con = c
        .get_multiplexed_async_connection_with_config(&common::redis_server::patient())
        .await
        .unwrap();
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(100_000)
        .query_async(&mut con)
        .await
        .unwrap();
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    };
    let mut out = Vec::new();
    for e in entries {
        let redis::Value::Array(fields) = e else {
            continue;
        };
        let Some(redis::Value::Array(args)) = fields.get(3) else {
            continue;
        };
        let args: Vec<String> = args.iter().map(text).collect();
        // EVALSHA sha 1 key + the lease script's 8 arguments
        if args.len() == 12 && args[0].eq_ignore_ascii_case("evalsha") && args[3] == key {
            out.push(args[11].clone());
        }
    }
    out
}

/// Sends `n` calls of `key` to `addr` one after another; each must be served.
async fn serve_calls(addr: SocketAddr, key: &str, n: usize) {
    let mut c = Client::connect(addr).await;
    for i in 0..n {
        let r = c.get(&target(), Some(key)).await;
        assert_eq!(r.status, 200, "call {i}: {}", r.text());
    }
}

/// After a graceful stop, Redis holds for `key`'s group exactly what the backend served for it,
/// and no lease.
async fn assert_redis_holds_what_was_served(fleet: &Fleet, redis: &RedisServer, key: &str) {
    let group = group_id(key);
    let hash = format!("vivgate:usage:{{{group}}}:2026-11");
    let served = fleet.h.backend.total_for(group);
    assert_eq!(
        redis.hget(&hash, "calls").await,
        served,
        "{key}: Redis holds exactly what the backend served"
    );
    assert_eq!(
        lease_fields(redis, &hash).await,
        vec![],
        "{key}: no lease left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_whose_reply_is_lost_leaves_no_phantom_calls() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let relay = Relay::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    let mut fleet = Fleet::start_url(&relay.url(), 1, 1_000, "").await;
    let addr = fleet.addrs[0];
    // a first grant, for another group, loads the scripts into Redis
    serve_calls(addr, "key-pro", 1).await;
    // the next command on the tiny group's hash is its first grant: Redis applies it, and the
    // connection drops before the reply reaches the instance
    let key = fleet.key(Month::from_ym(2026, 11));
    relay.lose_reply_to(key.as_bytes());
    log_every_command(&redis).await;
    serve_calls(addr, TINY, 1).await;
    assert_eq!(relay.cut(), 1, "the grant's reply was lost");
    assert_eq!(grants_run(&redis, &key).await, ["1"], "Redis ran grant 1");
    // the instance reconnects and leases again
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    serve_calls(addr, TINY, 20).await;
    fleet.stop(0).await;
    assert_eq!(fleet.h.backend.total_for(group_id(TINY)), 21);
    assert_redis_holds_what_was_served(&fleet, &redis, TINY).await;
    assert_redis_holds_what_was_served(&fleet, &redis, "key-pro").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_applied_after_its_timeout_leaves_no_phantom_calls() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let mut fleet = Fleet::start(&redis, 1, 1_000, "").await;
    let addr = fleet.addrs[0];
    serve_calls(addr, "key-pro", 1).await;
    // Redis holds every write for 400 ms: the grant times out at the instance (50 ms), which
    // serves the call by its outage policy, and Redis applies the grant afterwards
    let c = redis::Client::open(redis.url()).unwrap();
    let mut con = c
        .get_multiplexed_async_connection_with_config(&common::redis_server::patient())
        .await
        .unwrap();
    log_every_command(&redis).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(400)
        .arg("WRITE")
        .query_async(&mut con)
        .await
        .unwrap();
    serve_calls(addr, TINY, 1).await;
    let key = fleet.key(Month::from_ym(2026, 11));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // the grant the instance gave up on ran once the pause ended
    assert_eq!(grants_run(&redis, &key).await, ["1"], "Redis ran grant 1");
    serve_calls(addr, TINY, 20).await;
    fleet.stop(0).await;
    assert_eq!(fleet.h.backend.total_for(group_id(TINY)), 21);
    assert_redis_holds_what_was_served(&fleet, &redis, TINY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_whose_reply_is_lost_is_applied_once() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let relay = Relay::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    let mut fleet = Fleet::start_url(&relay.url(), 1, 1_000, "").await;
    let addr = fleet.addrs[0];
    // a grant and a settlement for another group load both scripts into Redis
    serve_calls(addr, "key-pro", 1).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    log_every_command(&redis).await;
    // an overage group on a bandwidth route: counted locally, added at each settlement; the
    // first settlement's reply is lost after Redis applied it
    let group = group_id("key-tiny-overage");
    let key = format!("vivgate:usage:{{{group}}}:2026-11");
    relay.lose_reply_to(key.as_bytes());
    let mut c = Client::connect(addr).await;
    for _ in 0..10 {
        let r = c.get("/cdn/f?size=300", Some("key-tiny-overage")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    wait_for("the settlement's reply to be lost", || async {
        relay.cut() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for _ in 0..10 {
        let r = c.get("/cdn/f?size=300", Some("key-tiny-overage")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    fleet.stop(0).await;
    // the lost one was sent again, with its number, and applied once
    let c = redis::Client::open(redis.url()).unwrap();
    let mut con = c
        .get_multiplexed_async_connection_with_config(&common::redis_server::patient())
        .await
        .unwrap();
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(100_000)
        .query_async(&mut con)
        .await
        .unwrap();
    let mut seqs = Vec::new();
    for e in entries {
        let redis::Value::Array(fields) = e else {
            continue;
        };
        let Some(redis::Value::Array(args)) = fields.get(3) else {
            continue;
        };
        let arg = |i: usize| match args.get(i) {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        if arg(3) == key && args.len() > 12 {
            seqs.push(arg(5));
        }
    }
    seqs.sort();
    assert!(
        seqs.windows(2).any(|w| w[0] == w[1]),
        "a settlement was sent twice with one number: {seqs:?}"
    );
    assert_eq!(fleet.h.backend.total_for(group), 20);
    assert_eq!(redis.hget(&key, "calls").await, 20, "calls applied once");
    assert_eq!(redis.hget(&key, "bytes").await, 6_000, "bytes applied once");
    let days = format!("vivgate:usage-days:{{{group}}}:2026-11");
    assert_eq!(
        redis.hget(&days, "15:bytes").await,
        6_000,
        "the day's bytes applied once"
    );
    assert_eq!(redis.hget(&days, "15:calls").await, 20);
    // the batch whose answer was lost joined the gateway's day once, when it was re-sent
    let pro = format!("vivgate:usage:{{{}}}:2026-11", group_id("key-pro"));
    assert_eq!(
        gateway_day(&redis, "2026-11", 15, "calls").await,
        20 + redis.hget(&pro, "calls").await
    );
    assert_eq!(gateway_day(&redis, "2026-11", 15, "bytes").await, 6_000);
    assert_eq!(
        redis.hget(&key, "bytes_overage").await,
        4_500,
        "past the tier's 1,500 bytes"
    );
}

/// Three instances under a steady load of two groups (one with a large quota, one whose hard
/// quota runs out during the run), Redis killed (SIGKILL) and restarted 20 times: after a
/// graceful stop of every instance, Redis holds exactly what the backend served, per group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_twenty_times_under_load_ends_exact() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let mut fleet = Fleet::start(&redis, 3, 3_000, "store_timeout_ms = 2").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..6 {
        let addr = fleet.addrs[c % 3];
        let key = if c % 2 == 0 { "key-pro" } else { TINY };
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
            let mut client = Client::connect(addr).await;
            while !stop.load(Ordering::Relaxed) {
                let Some(r) = client
                    .try_request(
                        &format!(
                            "GET {} HTTP/1.1\nHost: t\nAuthorization: Bearer {key}",
                            target()
                        ),
                        b"",
                    )
                    .await
                else {
                    client = Client::connect(addr).await;
                    continue;
                };
                assert!(
                    matches!(r.status, 200 | 402 | 503),
                    "{}: {}",
                    r.status,
                    r.text()
                );
                *statuses.entry(r.status).or_default() += 1;
                if r.header("connection") == Some("close") {
                    client = Client::connect(addr).await;
                }
                // a fixed offered load, well below what the instances can serve
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            statuses
        }));
    }
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        redis.kill();
        tokio::time::sleep(Duration::from_millis(150)).await;
        redis.restart().await;
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    for c in clients {
        for (s, n) in c.await.unwrap() {
            *statuses.entry(s).or_default() += n;
        }
    }
    eprintln!("answers: {statuses:?}");
    for i in 0..3 {
        fleet.stop(i).await;
    }
    for key in ["key-pro", TINY] {
        let group = group_id(key);
        let hash = format!("vivgate:usage:{{{group}}}:2026-11");
        eprintln!(
            "{key}: served {}, Redis calls {}, leases left {:?}",
            fleet.h.backend.total_for(group),
            redis.hget(&hash, "calls").await,
            lease_fields(&redis, &hash).await
        );
    }
    assert_redis_holds_what_was_served(&fleet, &redis, "key-pro").await;
    assert_redis_holds_what_was_served(&fleet, &redis, TINY).await;
}

/// One instance, two Redis outages in a month, past the quota: its outage allowance is spent
/// once, not once per outage. The first outage's counts are settled in two batches (one cut
/// while Redis was down, one after), and the second outage comes before the second batch: what
/// the instance admitted but has not settled yet still counts against the allowance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outage_allowance_is_not_renewed_by_a_partial_settlement() {
    use vivgate::config::{OutagePolicy, RedisSettings};
    use vivgate::usage::{GroupId, Take};
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    // settlements only when the test flushes (the loop's interval is an hour)
    let settings = RedisSettings {
        url: redis.url(),
        timeout: Duration::from_millis(200),
        flush_interval: Duration::from_secs(3600),
        policy: OutagePolicy::Allow,
        tier_policy: Vec::new(),
        outage_allowance: 0.1,
        lease_max: 10,
        lease_idle: Duration::from_secs(3600),
        lease_ttl: Duration::from_secs(7200),
        retention_months: 13,
        overrides_copy: state.path().join("overrides.json"),
    };
    let store = SharedRedisStore(RedisStore::connect(settings, Arc::new(SystemClock)).unwrap());
    let month = Month::containing(SystemClock.now_ms());
    let g: GroupId = "outage-twice".into();
    let key = format!("vivgate:usage:{{outage-twice}}:{month}");
    let take = || {
        let (s, g) = (store.clone(), g.clone());
        async move { s.take_call(&g, month, 100, false, "tiny").await }
    };
    let flush = || {
        let s = store.clone();
        async move {
            tokio::task::spawn_blocking(move || s.flush())
                .await
                .unwrap()
        }
    };
    // the quota of 100, used up through leases and settled
    let mut admitted = 0;
    while matches!(take().await, Take::Admitted { .. }) {
        admitted += 1;
        assert!(admitted <= 100, "more than the quota through leases");
    }
    assert_eq!(admitted, 100);
    flush().await.unwrap();
    assert_eq!(redis.hget(&key, "calls").await, 100);

    // first outage: one call admitted, a settlement cut while Redis is down, then the rest of
    // the allowance (10 % of 100)
    redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await; // past the "quota ran out" pause
    assert!(matches!(take().await, Take::Admitted { .. }));
    assert!(flush().await.is_err(), "Redis is down");
    let mut outage = 1;
    loop {
        match take().await {
            Take::Admitted { .. } => outage += 1,
            Take::Unavailable => break,
            Take::Refused => panic!("refused as over quota while Redis is down"),
        }
        assert!(outage <= 10, "more than the allowance in one outage");
    }
    assert_eq!(outage, 10, "the allowance: 10 % of 100");
    // what this instance shows meanwhile (/v1/usage, RateLimit, metrics) counts them all: the
    // batch kept for Redis and the calls after it
    assert_eq!(store.usage(&g, month).calls, 110);

    // Redis back: the batch cut during the outage (1 call) is applied; the other 9 are not
    // settled yet when Redis goes down again
    redis.restart().await;
    let mut settled = false;
    for _ in 0..20 {
        if flush().await.is_ok() && redis.hget(&key, "calls").await == 101 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(settled, "the first batch was applied");
    assert_eq!(store.usage(&g, month).calls, 110);
    redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = take().await;
    assert!(
        matches!(second, Take::Unavailable),
        "the allowance was spent in the first outage: {second:?}"
    );

    // Redis back for good: everything admitted is settled, and it is 100 + the allowance
    redis.restart().await;
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.shutdown())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(redis.hget(&key, "calls").await, 110);
}
