//! One fleet: tenants in Redis, followed by every instance. A real `redis-server` (see
//! `common::redis_server`); without one these tests say so loudly, unless
//! `VIVGATE_REQUIRE_REDIS=1` makes that a failure.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::*;
use tokio::net::TcpListener;
use tokio::sync::watch;
use vivgate::clock::{utc_ms, ManualClock};
use vivgate::config::file::TenantsFile;
use vivgate::{Gateway, Options, Shutdown};

/// The harness config with `tenants = "<redis url>"` and an admin listener, written as `name`
/// in the harness dir.
fn fleet_config(h: &Harness, redis: &RedisServer, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(h.dir.path().join("vivgate.toml"))
        .unwrap()
        .replace(
            "tenants = \"tenants.toml\"",
            &format!("tenants = \"{}\"", redis.url()),
        )
        + "\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let path = h.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn cli(args: &[&str]) -> std::process::Output {
    vivgate().args(args).output().unwrap()
}

fn push(config: &Path, file: &Path) {
    let out = cli(&[
        "tenants",
        "push",
        "--config",
        config.to_str().unwrap(),
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn normalized(mut t: TenantsFile) -> TenantsFile {
    t.groups.sort_by(|a, b| a.id.cmp(&b.id));
    for g in &mut t.groups {
        g.keys.sort();
    }
    t
}

struct Instance {
    gw: Arc<Gateway>,
    addr: SocketAddr,
    admin: SocketAddr,
    _stop: watch::Sender<bool>,
}

/// One instance, run by the production runner (memory store, fleet tenants from Redis).
async fn instance(config: &Path) -> Instance {
    let (stop, rx) = watch::channel(false);
    let options = Options {
        clock: Some(Arc::new(ManualClock::new(utc_ms(
            2026, 11, 15, 12, 0, 0, 0,
        )))),
        ..Default::default()
    };
    let config = config.to_path_buf();
    // the start reads the tenants from Redis
    let running = tokio::task::spawn_blocking(move || {
        vivgate::start(&config, options, Shutdown::Watch(rx)).unwrap()
    })
    .await
    .unwrap();
    Instance {
        gw: running.gateway.clone(),
        addr: running.addresses.listen,
        admin: running.addresses.admin.unwrap(),
        _stop: stop,
    }
}

async fn status_of(addr: SocketAddr, key: &str) -> u16 {
    Client::connect(addr)
        .await
        .get("/tenant/integrationObjects?type=a", Some(key))
        .await
        .status
}

/// Waits until every instance answers `status` for `key`; returns how long that took.
async fn until_all(instances: &[Instance], key: &str, status: u16) -> Duration {
    let start = Instant::now();
    for i in instances {
        loop {
            if status_of(i.addr, key).await == status {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "not applied within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_minted_with_a_fleet_config_goes_into_redis() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let h = Harness::start().await;
    let config = fleet_config(&h, &redis, "fleet.toml");
    push(&config, &h.dir.path().join("tenants.toml"));
    let (before, version) = vivgate::fleet::read(&redis.url()).unwrap();
    let pro = group_id("key-pro");
    let out = cli(&[
        "keys",
        "new",
        "--group",
        pro,
        "--config",
        config.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("fleet's tenants"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let (key, hash) = (lines.next().unwrap(), lines.next().unwrap());
    assert!(key.starts_with("vgk_"));
    let (after, new_version) = vivgate::fleet::read(&redis.url()).unwrap();
    assert_eq!(
        new_version,
        version + 1,
        "one change, announced with a new version"
    );
    let keys_of = |t: &TenantsFile| t.groups.iter().find(|g| g.id == pro).unwrap().keys.clone();
    let mut expected = keys_of(&before);
    expected.push(hash.to_string());
    assert_eq!(keys_of(&after), expected);
    // an unknown group changes nothing
    let out = cli(&[
        "keys",
        "new",
        "--group",
        "nope",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert_eq!(vivgate::fleet::read(&redis.url()).unwrap().1, new_version);
}

/// `sudo vivgate check` of a fleet config saves the tenants copy as root: the copy still
/// belongs to the state directory's owner (the service, which may have to start from it).
#[test]
fn a_tenants_copy_written_by_root_belongs_to_the_state_directorys_owner() {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("!!! SKIPPED: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    // the service's user and group (here: daemon, 1)
    std::os::unix::fs::chown(&state, Some(1), Some(1)).unwrap();
    let copy = vivgate::fleet::snapshot_path(&state);
    vivgate::fleet::save_snapshot(&copy, "[[groups]]\n", 7).unwrap();
    let meta = std::fs::metadata(&copy).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1, 1));
    assert!(std::fs::read_to_string(&copy)
        .unwrap()
        .contains("version 7"));
}

/// Keys added and revoked at the same time, from many writers (instances' admin APIs, several
/// operators' `keys new`), on one group: none is lost, and every change has its own version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_key_changes_to_one_group_lose_none() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let h = Harness::start().await;
    let config = fleet_config(&h, &redis, "fleet.toml");
    push(&config, &h.dir.path().join("tenants.toml"));
    let url = redis.url();
    let pro = group_id("key-pro");
    let (before, version) = vivgate::fleet::read(&url).unwrap();
    let keys_of = |t: &TenantsFile| {
        let mut k = t.groups.iter().find(|g| g.id == pro).unwrap().keys.clone();
        k.sort();
        k
    };
    let old = keys_of(&before);
    assert!(!old.is_empty());
    let hash = |i: usize| format!("sha256:{i:064x}");
    // 8 writers add 5 keys each; one more revokes the group's existing keys meanwhile
    let mut writers = Vec::new();
    for w in 0..8 {
        let url = url.clone();
        writers.push(std::thread::spawn(move || {
            for i in 0..5 {
                vivgate::fleet::add_key(&url, pro, &hash(w * 5 + i + 1)).unwrap();
            }
        }));
    }
    let revoker = {
        let (url, old) = (url.clone(), old.clone());
        std::thread::spawn(move || {
            for k in &old {
                vivgate::fleet::revoke_key(&url, pro, k).unwrap();
            }
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    revoker.join().unwrap();
    let (after, new_version) = vivgate::fleet::read(&url).unwrap();
    let mut expected: Vec<String> = (1..=40).map(hash).collect();
    expected.sort();
    assert_eq!(keys_of(&after), expected, "every added key, no revoked one");
    assert_eq!(new_version, version + 40 + old.len() as u64);
    // the other groups are untouched
    let others = |t: &TenantsFile| {
        let mut g: Vec<_> = t
            .groups
            .iter()
            .filter(|g| g.id != pro)
            .map(|g| (g.id.clone(), g.keys.clone()))
            .collect();
        g.sort();
        g
    };
    assert_eq!(others(&after), others(&before));
    // a repeat and a revocation of a key the group does not have are refused, changing nothing
    let e = vivgate::fleet::add_key(&url, pro, &hash(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("already has"), "{e}");
    let e = vivgate::fleet::revoke_key(&url, pro, &old[0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("has no key"), "{e}");
    let e = vivgate::fleet::add_key(&url, "nope", &hash(99))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown group"), "{e}");
    assert_eq!(vivgate::fleet::read(&url).unwrap().1, new_version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_export_gives_the_same_tenants() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let h = Harness::start().await;
    let config = fleet_config(&h, &redis, "fleet.toml");
    let file = h.dir.path().join("tenants.toml");
    push(&config, &file);
    let out = cli(&["tenants", "export", "--config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported: TenantsFile = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let original = vivgate::config::read_tenants_file(&file).unwrap();
    assert_eq!(normalized(exported), normalized(original));

    // a file that does not validate is refused and Redis keeps what it had
    let bad = h.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[groups]]\nid = \"g\"\ntier = \"nope\"\nstatus = \"active\"\n",
    )
    .unwrap();
    let out = cli(&[
        "tenants",
        "push",
        "--config",
        config.to_str().unwrap(),
        "--file",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("groups[0].tier") && err.contains("unknown tier"),
        "{err}"
    );
    let (now, _) = vivgate::fleet::read(&redis.url()).unwrap();
    assert_eq!(now.groups.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_instance_reaches_all_four_within_a_second() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let h = Harness::start().await;
    let config = fleet_config(&h, &redis, "fleet.toml");
    push(&config, &h.dir.path().join("tenants.toml"));
    let mut fleet = Vec::new();
    for _ in 0..4 {
        fleet.push(instance(&config).await);
    }
    for i in &fleet {
        assert_eq!(status_of(i.addr, "key-pro").await, 200);
        assert_eq!(status_of(i.addr, "key-free").await, 200);
    }

    // revoke a key through instance 0's admin API
    let hash = vivgate::keys::format_key_hash(&vivgate::keys::hash_key(b"key-pro"));
    let mut admin = Client::connect(fleet[0].admin).await;
    let r = admin
        .request(
            &format!(
                "DELETE /groups/{}/keys/{hash} HTTP/1.1\nHost: localhost",
                group_id("key-pro")
            ),
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let revoke = until_all(&fleet, "key-pro", 401).await;
    assert!(
        revoke < Duration::from_secs(1),
        "revocation took {revoke:?}"
    );

    // freeze a group through instance 0's admin API
    let body = br#"{"status": "frozen"}"#;
    let r = admin
        .request(
            &format!(
                "PUT /groups/{}/status HTTP/1.1\nHost: localhost\nContent-Length: {}",
                group_id("key-free"),
                body.len()
            ),
            body,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let freeze = until_all(&fleet, "key-free", 400).await;
    assert!(freeze < Duration::from_secs(1), "freeze took {freeze:?}");

    // a change written straight into Redis, as the portal would, following the README layout
    let c = redis::Client::open(redis.url()).unwrap();
    let mut con = c
        .get_multiplexed_async_connection_with_config(&common::redis_server::patient())
        .await
        .unwrap();
    let key = format!("{{vivgate-tenants}}:group:{}", group_id("key-tiny"));
    let _: () = redis::pipe()
        .atomic()
        .hset(&key, "status", "deactivated")
        .ignore()
        .incr("{vivgate-tenants}:version", 1)
        .ignore()
        .query_async(&mut con)
        .await
        .unwrap();
    let _: u64 = redis::cmd("PUBLISH")
        .arg("vivgate-tenants")
        .arg("portal")
        .query_async(&mut con)
        .await
        .unwrap();
    let portal = until_all(&fleet, "key-tiny", 403).await;
    assert!(
        portal < Duration::from_secs(1),
        "portal change took {portal:?}"
    );
    println!(
        "propagation over 4 instances: revoke {revoke:?}, freeze {freeze:?}, portal {portal:?}"
    );
    for i in &fleet {
        assert_eq!(i.gw.tenants_version(), fleet[0].gw.tenants_version());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_serves_the_disk_copy_and_catches_up() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let h = Harness::start().await;
    let config = fleet_config(&h, &redis, "fleet.toml");
    push(&config, &h.dir.path().join("tenants.toml"));
    // a first instance reads Redis and keeps the copy on disk
    let first = instance(&config).await;
    assert_eq!(status_of(first.addr, "key-pro").await, 200);
    assert!(vivgate::fleet::snapshot_path(&config.parent().unwrap().join("state")).exists());
    drop(first);

    redis.kill();
    let second = instance(&config).await;
    assert_eq!(
        second.gw.snapshot().tenants_source,
        vivgate::fleet::TenantsSource::DiskSnapshot
    );
    assert_eq!(
        status_of(second.addr, "key-pro").await,
        200,
        "never an empty table"
    );
    assert_eq!(status_of(second.addr, "key-nobody").await, 401);
    assert_eq!(second.gw.metrics().tenants_from_copy.get(), 1);

    // Redis comes back (it kept its data) and a change is made meanwhile: applied
    redis.restart().await;
    let file = h.dir.path().join("tenants2.toml");
    std::fs::write(
        &file,
        tenants_toml().replace(
            &format!(
                "id = \"{}\"\ntier = \"pro\"\nstatus = \"active\"",
                group_id("key-pro")
            ),
            &format!(
                "id = \"{}\"\ntier = \"pro\"\nstatus = \"frozen\"",
                group_id("key-pro")
            ),
        ),
    )
    .unwrap();
    push(&config, &file);
    let took = until_all(std::slice::from_ref(&second), "key-pro", 400).await;
    assert!(took < Duration::from_secs(4), "caught up in {took:?}");
    assert_eq!(second.gw.metrics().tenants_from_copy.get(), 0);
}

/// A tenants file of `n` groups (one key each, `key-<i>`) plus the harness groups.
fn large_tenants(n: usize) -> String {
    let mut out = tenants_toml();
    for i in 0..n {
        let hash =
            vivgate::keys::format_key_hash(&vivgate::keys::hash_key(format!("key-{i}").as_bytes()));
        out.push_str(&format!(
            "[[groups]]\nid = \"g{i:06}\"\ntier = \"free\"\nstatus = \"active\"\nkeys = [\"{hash}\"]\n\n"
        ));
    }
    out
}

/// A status change written straight into Redis as the README's layout says (one transaction
/// with the version, then the announcement); returns the new version.
async fn write_status(
    con: &mut redis::aio::MultiplexedConnection,
    group: &str,
    status: &str,
) -> u64 {
    let (version,): (u64,) = redis::pipe()
        .atomic()
        .hset(
            format!("{{vivgate-tenants}}:group:{group}"),
            "status",
            status,
        )
        .ignore()
        .incr("{vivgate-tenants}:version", 1)
        .query_async(con)
        .await
        .unwrap();
    let _: u64 = redis::cmd("PUBLISH")
        .arg("vivgate-tenants")
        .arg(version)
        .query_async(con)
        .await
        .unwrap();
    version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_pushed_right_after_redis_returns_reaches_every_instance_within_a_second() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let h = Harness::start().await;
    let config = fleet_config(&h, &redis, "fleet.toml");
    // 1,000 groups besides the harness's
    let file = h.dir.path().join("large.toml");
    std::fs::write(&file, large_tenants(1_000)).unwrap();
    push(&config, &file);
    let fleet = vec![instance(&config).await, instance(&config).await];
    for i in &fleet {
        assert_eq!(status_of(i.addr, "key-free").await, 200);
    }
    // a fixed request rate, well below saturation: 50 requests a second to each instance
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for i in &fleet {
        let (addr, stop) = (i.addr, stop.clone());
        load.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let path = format!("/tenant/siteDetails?siteId={OID}");
                assert_eq!(c.get(&path, Some("key-pro")).await.status, 200);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let mut took = Vec::new();
    for round in 0..20 {
        redis.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.restart().await;
        let c = redis::Client::open(redis.url()).unwrap();
        let mut con = c
            .get_multiplexed_async_connection_with_config(&common::redis_server::patient())
            .await
            .unwrap();
        // a first change as soon as Redis answers: each instance catches up with it (a reload
        // of the whole table) when it reconnects; a second one follows at a time that moves
        // through the reconnection from round to round (0 to 570 ms), so in some rounds it
        // arrives while an instance is catching up
        write_status(&mut con, "g000001", ["frozen", "active"][round % 2]).await;
        tokio::time::sleep(Duration::from_millis(30 * round as u64)).await;
        let (status, code) = [("frozen", 400), ("active", 200)][round % 2];
        let second = write_status(&mut con, group_id("key-free"), status).await;
        let pushed = Instant::now();
        for i in &fleet {
            while i.gw.tenants_version() < Some(second) {
                assert!(
                    pushed.elapsed() < Duration::from_secs(10),
                    "round {round}: never applied"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        took.push(pushed.elapsed());
        for i in &fleet {
            assert_eq!(status_of(i.addr, "key-free").await, code, "round {round}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    println!("after each of 20 reconnects, the change reached both instances in {took:?}");
    assert!(
        took.iter().all(|t| *t < Duration::from_secs(1)),
        "every time within 1 s: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_marked_down_stays_down_across_a_tenants_change() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    // upstream `pair`: a port that refuses connections, and a live backend
    let (live, live_addr, _s) = extra_backend().await;
    let reserved = Reserved::new();
    let down = reserved.addr;
    let h = Harness::start_with(move |c| {
        c + &format!(
            "\n[upstreams.pair]\nservers = [\"{down}\", \"{live_addr}\"]\nconnect_timeout_ms = 300\n\
             health_check_interval_ms = 0\npassive_failures = 2\npassive_down_ms = 60000\n\n\
             [[routes]]\nprefix = \"/pair/\"\nmethods = [\"GET\"]\nupstream = \"pair\"\n"
        )
    })
    .await;
    let config = fleet_config(&h, &redis, "fleet.toml");
    push(&config, &h.dir.path().join("tenants.toml"));
    let i = instance(&config).await;
    let mut c = Client::connect(i.addr).await;
    for _ in 0..6 {
        assert_eq!(c.get("/pair/x", Some("key-pro")).await.status, 200);
    }
    // the refusing port now accepts and counts: a connection attempt would be seen
    let l = TcpListener::bind(reserved.release()).await.unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let n = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    // a tenants change pushed through Redis reloads the instance
    let before = i.gw.tenants_version();
    let r = redis::Client::open(redis.url()).unwrap();
    let mut con = r
        .get_multiplexed_async_connection_with_config(&common::redis_server::patient())
        .await
        .unwrap();
    let version = write_status(&mut con, group_id("key-tiny"), "frozen").await;
    assert!(Some(version) > before);
    wait_for("the tenants change", || async {
        i.gw.tenants_version() == Some(version)
    })
    .await;
    let served = live.received().len();
    for _ in 0..6 {
        assert_eq!(c.get("/pair/x", Some("key-pro")).await.status, 200);
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the server marked down was not tried"
    );
    assert_eq!(live.received().len(), served + 6);
}
