//! Admin overrides (status overrides, revoked keys) across instances that share the usage store
//! in Redis (`[usage] store = "redis"`, tenants from a file): the real binary, a real
//! `redis-server` (see `common::redis_server`), every process started and stopped by the test.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::*;

/// One `vivgate` process with the shared store and an admin listener.
struct Instance {
    proc: Killer,
    config: PathBuf,
    port: u16,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Instance {
    async fn start(h: &Harness, redis: &RedisServer, name: &str) -> Instance {
        let (port, admin_port) = (free_port().await, free_port().await);
        let config = h.binary_config(
            name,
            port,
            "grace_period_seconds = 1",
            &format!(
                "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[usage]\nstore = \"redis\"\nredis_url = \"{}\"\n",
                redis.url()
            ),
        );
        let proc = spawn_binary(&config, &[], &[], port).await;
        Instance {
            proc,
            config,
            port,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            admin: format!("127.0.0.1:{admin_port}").parse().unwrap(),
        }
    }

    async fn restart(&mut self) {
        self.stop().await;
        self.proc = spawn_binary(&self.config, &[], &[], self.port).await;
    }

    async fn stop(&mut self) {
        let status = self.stop_with_any_status().await;
        assert!(status.success(), "{status:?}");
    }

    /// Stops; without Redis the last settlement fails, and the exit status says so.
    async fn stop_with_any_status(&mut self) -> std::process::ExitStatus {
        wait_exit(&mut self.proc, Some(libc::SIGTERM), Duration::from_secs(15)).await
    }

    async fn admin(&self, method: &str, path: &str, body: &str) -> Resp {
        Client::connect(self.admin)
            .await
            .request(
                &format!(
                    "{method} {path} HTTP/1.1\nHost: localhost\nContent-Length: {}",
                    body.len()
                ),
                body.as_bytes(),
            )
            .await
    }

    async fn call(&self, key: &str) -> Resp {
        Client::connect(self.addr)
            .await
            .get("/tenant/integrationObjects?type=a", Some(key))
            .await
    }

    async fn metric(&self, name: &str) -> Option<i64> {
        let text = self.admin("GET", "/metrics", "").await.text();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }
}

fn key_hash(key: &str) -> String {
    vivgate::keys::format_key_hash(&vivgate::keys::hash_key(key.as_bytes()))
}

/// Waits until `instance` answers `status` for `key`; returns how long that took.
async fn until(instance: &Instance, key: &str, status: u16) -> Duration {
    let start = Instant::now();
    loop {
        if instance.call(key).await.status == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{key} not answered {status} within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn assert_refused(i: &Instance, key: &str, status: u16, needle: &str) {
    let r = i.call(key).await;
    assert_envelope(&r, status, needle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_and_freezes_hold_across_instances_and_restarts() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let h = Harness::start().await;
    let mut a = Instance::start(&h, &redis, "a.toml").await;
    let mut b = Instance::start(&h, &redis, "b.toml").await;
    for i in [&a, &b] {
        assert_eq!(i.call("key-pro").await.status, 200);
        assert_eq!(i.call("key-free").await.status, 200);
    }

    // a key revoked through A is refused by B within a second
    let r = a
        .admin(
            "DELETE",
            &format!(
                "/groups/{}/keys/{}",
                group_id("key-pro"),
                key_hash("key-pro")
            ),
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["version"], 1);
    assert_refused(&a, "key-pro", 401, "Invalid or revoked API key").await;
    let revoke = until(&b, "key-pro", 401).await;
    assert!(
        revoke < Duration::from_secs(1),
        "revocation took {revoke:?}"
    );
    assert_refused(&b, "key-pro", 401, "Invalid or revoked API key").await;

    // a group frozen through B is refused by A within a second
    let r = b
        .admin(
            "PUT",
            &format!("/groups/{}/status", group_id("key-free")),
            r#"{"status": "frozen"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["version"], 2);
    let freeze = until(&a, "key-free", 400).await;
    assert!(freeze < Duration::from_secs(1), "freeze took {freeze:?}");
    println!("across instances: revoke {revoke:?}, freeze {freeze:?}");

    // both restarted: still refused
    a.restart().await;
    b.restart().await;
    for i in [&a, &b] {
        assert_refused(i, "key-pro", 401, "Invalid or revoked API key").await;
        assert_refused(i, "key-free", 400, "frozen").await;
        assert_eq!(i.call("key-tiny").await.status, 200);
    }
    let o = b.admin("GET", "/overrides", "").await.json();
    assert_eq!(o["data"]["status"][group_id("key-free")], "frozen");
    assert_eq!(o["data"]["revoked_keys"][0]["key"], key_hash("key-pro"));
    assert_eq!(o["data"]["revoked_keys"][0]["group"], group_id("key-pro"));
    assert_eq!(o["data"]["version"], 2);
    assert_eq!(o["data"]["from_copy"], false);

    // DELETE /overrides/… through A restores both on both
    let r = a
        .admin("DELETE", &format!("/overrides/{}", key_hash("key-pro")), "")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = a
        .admin(
            "DELETE",
            &format!("/overrides/{}", group_id("key-free")),
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["version"], 4);
    for i in [&a, &b] {
        assert!(until(i, "key-pro", 200).await < Duration::from_secs(1));
        assert!(until(i, "key-free", 200).await < Duration::from_secs(1));
    }
    // a removal of what is not there is a 404 and changes nothing
    let r = b
        .admin(
            "DELETE",
            &format!("/overrides/{}", group_id("key-free")),
            "",
        )
        .await;
    assert_envelope(&r, 404, "No such override");
    assert_eq!(
        b.admin("GET", "/overrides", "").await.json()["data"]["version"],
        4
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_redis_cannot_take_is_refused_and_changes_nothing() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let h = Harness::start().await;
    let mut a = Instance::start(&h, &redis, "a.toml").await;
    assert_eq!(a.metric("vivgate_overrides_from_copy").await, Some(0));
    redis.kill();
    let r = a
        .admin(
            "DELETE",
            &format!(
                "/groups/{}/keys/{}",
                group_id("key-pro"),
                key_hash("key-pro")
            ),
            "",
        )
        .await;
    assert_envelope(&r, 503, "The change could not be saved in Redis");
    let r = a
        .admin(
            "PUT",
            &format!("/groups/{}/status", group_id("key-free")),
            r#"{"status": "deactivated"}"#,
        )
        .await;
    assert_envelope(&r, 503, "The change could not be saved in Redis");
    // nothing changed here
    assert_eq!(a.call("key-pro").await.status, 200);
    assert_eq!(a.call("key-free").await.status, 200);
    let o = a.admin("GET", "/overrides", "").await.json();
    assert_eq!(o["data"]["revoked_keys"], serde_json::json!([]));
    // the instance says it serves the last table it read
    let start = Instant::now();
    while a.metric("vivgate_overrides_from_copy").await != Some(1) {
        assert!(start.elapsed() < Duration::from_secs(5), "metric not set");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.restart().await;
    let start = Instant::now();
    while a.metric("vivgate_overrides_from_copy").await != Some(0) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "metric not cleared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // and a change goes through again
    let r = a
        .admin(
            "DELETE",
            &format!(
                "/groups/{}/keys/{}",
                group_id("key-pro"),
                key_hash("key-pro")
            ),
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_refused(&a, "key-pro", 401, "Invalid or revoked API key").await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_an_instance_serves_the_copy_and_without_a_copy_refuses_to_start() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let h = Harness::start().await;
    let mut a = Instance::start(&h, &redis, "a.toml").await;
    let r = a
        .admin(
            "DELETE",
            &format!(
                "/groups/{}/keys/{}",
                group_id("key-pro"),
                key_hash("key-pro")
            ),
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    a.stop().await;
    let copy = h.dir.path().join("state").join("overrides-snapshot.json");
    assert!(copy.exists(), "the copy is kept beside the config");

    redis.kill();
    let log = h.dir.path().join("a.log");
    a.proc = spawn_binary_logging(&a.config, &[], &[], a.port, Some(&log)).await;
    assert_refused(&a, "key-pro", 401, "Invalid or revoked API key").await;
    assert_eq!(a.call("key-free").await.status, 200);
    assert_eq!(a.metric("vivgate_overrides_from_copy").await, Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("overrides: Redis unreachable") && text.contains("serving the last copy"),
        "{text}"
    );
    a.stop_with_any_status().await;

    // neither Redis nor a copy: the start is refused rather than serving without revocations
    std::fs::remove_file(&copy).unwrap();
    let out = vivgate().arg("--config").arg(&a.config).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to start without the fleet's revocations"),
        "{err}"
    );
    assert!(
        std::net::TcpStream::connect(a.addr).is_err(),
        "nothing listens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_without_an_answer_says_so_and_repeating_it_is_harmless() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let h = Harness::start().await;
    let mut a = Instance::start(&h, &redis, "a.toml").await;
    let mut b = Instance::start(&h, &redis, "b.toml").await;
    // Redis holds every write for 3 s: longer than the admin API waits (2 s)
    let c = redis::Client::open(redis.url()).unwrap();
    let mut con = c
        .get_multiplexed_async_connection_with_config(&common::redis_server::patient())
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3_000)
        .arg("WRITE")
        .query_async(&mut con)
        .await
        .unwrap();
    let path = format!("/groups/{}/status", group_id("key-free"));
    let r = a.admin("PUT", &path, r#"{"status": "frozen"}"#).await;
    assert_envelope(&r, 503, "may or may not have been saved");
    assert_envelope(&r, 503, "repeating it is harmless");
    // it was saved once Redis went on: both instances apply it
    for i in [&a, &b] {
        until(i, "key-free", 400).await;
    }
    // the same change again: in force, nothing new (the version stays)
    let r = a.admin("PUT", &path, r#"{"status": "frozen"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["version"], 1);
    assert_refused(&b, "key-free", 400, "frozen").await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_gets_the_fleets_overrides_back() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let h = Harness::start().await;
    let mut a = Instance::start(&h, &redis, "a.toml").await;
    let mut b = Instance::start(&h, &redis, "b.toml").await;
    let revoke = format!(
        "/groups/{}/keys/{}",
        group_id("key-pro"),
        key_hash("key-pro")
    );
    assert_eq!(a.admin("DELETE", &revoke, "").await.status, 200);
    let freeze = format!("/groups/{}/status", group_id("key-free"));
    let r = b.admin("PUT", &freeze, r#"{"status": "frozen"}"#).await;
    assert_eq!(r.json()["data"]["version"], 2);
    for i in [&a, &b] {
        until(i, "key-pro", 401).await;
        until(i, "key-free", 400).await;
    }
    // Redis restarts without its data (no persistence, a FLUSHALL, a failover to a replica
    // that lags): the instances keep what they enforce and put it back
    let c = redis::Client::open(redis.url()).unwrap();
    let mut con = c
        .get_multiplexed_async_connection_with_config(&common::redis_server::patient())
        .await
        .unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
    let start = Instant::now();
    loop {
        let v: Option<u64> = redis::cmd("GET")
            .arg("{vivgate-overrides}:version")
            .query_async(&mut con)
            .await
            .unwrap();
        if v == Some(2) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "not restored: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("restored in {:?}", start.elapsed());
    let revoked: Option<String> = redis::cmd("HGET")
        .arg("{vivgate-overrides}:revoked")
        .arg(key_hash("key-pro"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(revoked.as_deref(), Some(group_id("key-pro")));
    for i in [&a, &b] {
        assert_refused(i, "key-pro", 401, "Invalid or revoked API key").await;
        assert_refused(i, "key-free", 400, "frozen").await;
    }
    let restored = a.metric("vivgate_overrides_restored_total").await.unwrap()
        + b.metric("vivgate_overrides_restored_total").await.unwrap();
    assert!(restored >= 1, "{restored}");

    // lost again, and a change arrives before any instance noticed: the table is put back
    // first, then changed
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
    let r = a
        .admin(
            "DELETE",
            &format!("/overrides/{}", group_id("key-free")),
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["version"], 3);
    for i in [&a, &b] {
        until(i, "key-free", 200).await;
        assert_refused(i, "key-pro", 401, "Invalid or revoked API key").await;
    }
    // and a restart of both reads the same from Redis
    a.restart().await;
    b.restart().await;
    for i in [&a, &b] {
        assert_refused(i, "key-pro", 401, "Invalid or revoked API key").await;
        assert_eq!(i.call("key-free").await.status, 200);
    }
    a.stop().await;
    b.stop().await;
}
