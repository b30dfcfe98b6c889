//! The durable embedded usage store, through the real binary: a restart continues from the stored
//! counts, SIGTERM flushes everything, `kill -9` loses at most the last flush interval, and a
//! corrupt store refuses to start.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const P: &str = "/tenant/integrationObjects?type=a";

/// Runs the binary on the harness's config (its backend), with `[usage]` set by `usage`.
async fn start(h: &Harness, port: u16, usage: &str) -> Killer {
    start_with(h, port, usage, "").await
}

/// [`start`] with more lines for `[server]`.
async fn start_with(h: &Harness, port: u16, usage: &str, server: &str) -> Killer {
    let config = h.binary_config(
        "durable.toml",
        port,
        &format!("grace_period_seconds = 1\n{server}"),
        &format!("[usage]\n{usage}"),
    );
    spawn_binary(&config, &[], &[], port).await
}

/// A graceful stop by `sig`, which must exit 0.
async fn stop(mut k: Killer, sig: i32) {
    let status = wait_exit(&mut k, Some(sig), Duration::from_secs(15)).await;
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
}

/// Calls used this month by `key`'s tiny group, read from the RateLimit header of one more call.
async fn used_after_one_more(addr: SocketAddr, key: &str, limit: u64) -> u64 {
    let r = Client::connect(addr).await.get(P, Some(key)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.header("ratelimit").unwrap();
    let remaining: u64 = v
        .split(";r=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    limit - remaining - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_everything_and_a_restart_keeps_refusing_a_used_quota() {
    let h = Harness::start().await;
    let port = free_port().await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // a flush interval far longer than the test: only the final flush on stop can save the counts
    let usage = "store = \"embedded\"\npath = \"state/usage.redb\"\nflush_interval_ms = 60000";
    let gw = start(&h, port, usage).await;
    for _ in 0..5 {
        assert_eq!(
            Client::connect(addr)
                .await
                .get(P, Some("key-tiny"))
                .await
                .status,
            200
        );
    }
    for _ in 0..3 {
        assert_eq!(
            Client::connect(addr)
                .await
                .get(P, Some("key-tiny-overage"))
                .await
                .status,
            200
        );
    }
    stop(gw, libc::SIGTERM).await;
    assert!(h.dir.path().join("state/usage.redb").exists());

    let gw = start(&h, port, usage).await;
    let r = Client::connect(addr).await.get(P, Some("key-tiny")).await;
    assert_envelope(&r, 402, "Monthly API call quota exceeded");
    assert_eq!(used_after_one_more(addr, "key-tiny-overage", 5).await, 3);
    // SIGINT is a graceful stop too, with the same final flush
    stop(gw, libc::SIGINT).await;
    let gw = start(&h, port, usage).await;
    assert_eq!(used_after_one_more(addr, "key-tiny-overage", 5).await, 4);
    stop(gw, libc::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_at_most_the_last_flush_interval() {
    let h = Harness::start_with(|c| c.replace("api_calls = 5", "api_calls = 100000")).await;
    let port = free_port().await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let interval = Duration::from_millis(200);
    let usage = "store = \"embedded\"\nflush_interval_ms = 200";
    let gw = start(&h, port, usage).await;
    let mut c = Client::connect(addr).await;
    for _ in 0..40 {
        assert_eq!(c.get(P, Some("key-tiny")).await.status, 200);
    }
    // more than one interval passes: those 40 must be durable
    tokio::time::sleep(interval * 3).await;
    let burst_start = Instant::now();
    for _ in 0..10 {
        assert_eq!(c.get(P, Some("key-tiny")).await.status, 200);
    }
    let mut gw = gw;
    gw.0.kill().unwrap();
    gw.0.wait().unwrap();
    let burst = burst_start.elapsed();
    assert!(
        burst < interval,
        "the last 10 calls took {burst:?}; the bound below needs them inside one interval"
    );

    let gw = start(&h, port, usage).await;
    let stored = used_after_one_more(addr, "key-tiny", 100_000).await;
    eprintln!("kill -9: {stored} of 50 calls were durable; {} lost (all answered within the last {burst:?})", 50 - stored);
    assert!(
        (40..=50).contains(&stored),
        "stored {stored}: calls answered more than one flush interval before the kill were lost"
    );
    stop(gw, libc::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_store_is_a_startup_error() {
    let h = Harness::start().await;
    let port = free_port().await;
    let config = h.binary_config(
        "corrupt.toml",
        port,
        "",
        "[usage]\nstore = \"embedded\"\npath = \"usage.redb\"",
    );
    std::fs::write(h.dir.path().join("usage.redb"), vec![0x42; 16384]).unwrap();
    let out = vivgate().arg("--config").arg(&config).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("usage store") && err.contains("usage.redb: cannot open"),
        "{err}"
    );
    // and the file is left as it was, for the operator to inspect
    assert_eq!(
        std::fs::read(h.dir.path().join("usage.redb")).unwrap(),
        vec![0x42; 16384]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_loses_and_doubles_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let h = Harness::start_with(|c| c.replace("api_calls = 5", "api_calls = 1000000")).await;
    let port = free_port().await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let usage = "store = \"embedded\"\nflush_interval_ms = 200";
    // the upgrade socket where the config puts it (a systemd unit's RuntimeDirectory)
    std::fs::create_dir_all(h.dir.path().join("run")).unwrap();
    let sock = h.dir.path().join("run/upgrade.sock");
    let old = start_with(
        &h,
        port,
        usage,
        "upgrade_sock = \"run/upgrade.sock\"\npid_file = \"run/vivgate.pid\"",
    )
    .await;

    // load: a new connection per request, so both processes get some while both listen
    let done = Arc::new(AtomicBool::new(false));
    let (ok, failed, unanswered) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (done, ok, failed, unanswered) =
            (done.clone(), ok.clone(), failed.clone(), unanswered.clone());
        clients.push(tokio::spawn(async move {
            let head = format!(
                "GET {P} HTTP/1.1\nHost: t\nAuthorization: Bearer key-tiny\nConnection: close"
            );
            while !done.load(Ordering::Relaxed) {
                match Client::connect(addr).await.try_request(&head, b"").await {
                    Some(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    Some(_) => failed.fetch_add(1, Ordering::Relaxed),
                    // pingora closes connections that have not sent a request yet when a
                    // process starts to drain; nothing was served or counted for them
                    None => unanswered.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // the new binary waits for the sockets; the old one hands them over on SIGQUIT
    let config = h.dir.path().join("durable.toml");
    let new = vivgate()
        .arg("--config")
        .arg(&config)
        .arg("-u")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let new = Killer(new);
    // it waits on the configured upgrade socket
    wait_for("the new process's upgrade socket", || async {
        sock.exists()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut old = old;
    signal(&old.0, libc::SIGQUIT);
    // both serve for a while (pingora keeps the old one listening 5 s), then the old one
    // drains for its grace period and exits
    let old_status = wait_exit(&mut old, None, Duration::from_secs(20)).await;
    assert!(old_status.success(), "{old_status:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let served = ok.load(Ordering::Relaxed);
    assert!(served > 100, "only {served} requests");
    // the new process merges the old one's last counts at its next flush, then stops cleanly
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop(new, libc::SIGTERM).await;
    let fresh = start(&h, port, usage).await;
    let stored = used_after_one_more(addr, "key-tiny", 1_000_000).await;
    eprintln!(
        "upgrade under load: {served} calls served, {stored} stored, {} failed, {} connections closed unanswered",
        failed.load(Ordering::Relaxed),
        unanswered.load(Ordering::Relaxed)
    );
    assert_eq!(
        stored, served,
        "every call served across the upgrade is counted exactly once"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed during the upgrade"
    );
    stop(fresh, libc::SIGTERM).await;
}

/// The production runner in-process, as a library user runs it: the ports it bound for `:0`
/// are reported, a stop through its watch ends in the final flush (the flush interval is longer
/// than the test) and closes the admin listener, and a second start counts on from the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_in_process_reports_its_ports_and_flushes_on_stop() {
    let h = Harness::start().await;
    let config = h.binary_config(
        "runner.toml",
        0,
        "grace_period_seconds = 0",
        "[admin]\nlisten = \"127.0.0.1:0\"\n[usage]\nstore = \"embedded\"\npath = \"state/usage.redb\"\nflush_interval_ms = 60000",
    );
    for round in 0..2 {
        let (stop, rx) = tokio::sync::watch::channel(false);
        let c = config.clone();
        // the first run's last tasks may hold the store's file a moment after its stop
        let running = tokio::task::spawn_blocking(move || {
            let mut tries = 0;
            loop {
                let options = vivgate::Options::default();
                match vivgate::start(&c, options, vivgate::Shutdown::Watch(rx.clone())) {
                    Ok(r) => return r,
                    Err(e) if tries < 40 => {
                        tries += 1;
                        eprintln!("start refused ({e}), retrying");
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        })
        .await
        .unwrap();
        let (addr, admin) = (running.addresses.listen, running.addresses.admin.unwrap());
        assert_ne!(addr.port(), 0);
        assert_ne!(admin.port(), 0);
        let health = Client::connect(admin).await.get("/healthz", None).await;
        assert_eq!(health.status, 200, "{}", health.text());
        if round == 0 {
            for _ in 0..3 {
                let r = Client::connect(addr).await.get(P, Some("key-tiny")).await;
                assert_eq!(r.status, 200, "{}", r.text());
            }
        } else {
            assert_eq!(used_after_one_more(addr, "key-tiny", 5).await, 3);
            assert_eq!(
                Client::connect(addr)
                    .await
                    .get(P, Some("key-tiny"))
                    .await
                    .status,
                200
            );
            assert_envelope(
                &Client::connect(addr).await.get(P, Some("key-tiny")).await,
                402,
                "Monthly API call quota exceeded",
            );
        }
        stop.send(true).unwrap();
        tokio::task::spawn_blocking(move || running.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        wait_for("the admin listener to close", || async {
            tokio::net::TcpStream::connect(admin).await.is_err()
        })
        .await;
    }
}
