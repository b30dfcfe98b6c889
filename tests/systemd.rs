//! The systemd unit (`deploy/systemd/`): the binary's readiness messages, read from a fake
//! `NOTIFY_SOCKET` (these machines have no systemd as PID 1), through a start, a zero-downtime
//! upgrade done by the unit's `ExecReload` script and a stop; and the unit itself, checked by
//! `systemd-analyze verify` and scored by `systemd-analyze security --offline=yes`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Datagrams the binary sends to its `NOTIFY_SOCKET`.
struct FakeSystemd {
    socket: UnixDatagram,
    path: PathBuf,
}

impl FakeSystemd {
    fn new(dir: &Path) -> FakeSystemd {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        FakeSystemd { socket, path }
    }

    /// The next message (its lines) within 10 s.
    fn next(&self) -> Vec<String> {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = self.socket.recv(&mut buf) {
                return String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(String::from)
                    .collect();
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no notification");
        }
    }

    /// Messages until one has `line`.
    fn until(&self, line: &str) -> Vec<String> {
        loop {
            let m = self.next();
            if m.iter().any(|l| l == line) {
                return m;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_mainpid_across_an_upgrade_by_the_units_reload_and_stopping() {
    let h = Harness::start().await;
    let port = free_port().await;
    std::fs::create_dir_all(h.dir.path().join("run")).unwrap();
    let config = h.binary_config(
        "systemd.toml",
        port,
        "grace_period_seconds = 1\nupgrade_sock = \"run/upgrade.sock\"\npid_file = \"run/vivgate.pid\"",
        "[usage]\nstore = \"embedded\"\npath = \"state/usage.redb\"\nflush_interval_ms = 200",
    );
    let systemd = FakeSystemd::new(h.dir.path());
    let notify = systemd.path.to_str().unwrap().to_string();
    let mut old = spawn_binary(&config, &[], &[("NOTIFY_SOCKET", &notify)], port).await;
    let ready = systemd.until("READY=1");
    assert!(
        ready.contains(&format!("MAINPID={}", old.0.id())),
        "{ready:?}"
    );
    assert!(
        ready.iter().any(|l| l.starts_with("STATUS=serving on")),
        "{ready:?}"
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let p = "/tenant/integrationObjects?type=x";
    assert_eq!(
        Client::connect(addr)
            .await
            .get(p, Some("key-pro"))
            .await
            .status,
        200
    );

    // `systemctl reload`: the unit's ExecReload script with systemd's MAINPID, the vivgate on
    // PATH standing in for /usr/bin/vivgate
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/upgrade"),
    )
    .unwrap()
    .replace("/usr/bin/vivgate", env!("CARGO_BIN_EXE_vivgate"));
    let script_path = h.dir.path().join("upgrade");
    std::fs::write(&script_path, script).unwrap();
    // (its output to a file: the new process keeps the script's stdout, as it keeps the
    // journal's under systemd)
    let said_path = h.dir.path().join("upgrade.out");
    let status = Command::new("sh")
        .arg(&script_path)
        .arg(&config)
        .env("MAINPID", old.0.id().to_string())
        .env("NOTIFY_SOCKET", &notify)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&said_path).unwrap())
        .stderr(std::fs::File::create(h.dir.path().join("upgrade.err")).unwrap())
        .status()
        .unwrap();
    let said = std::fs::read_to_string(&said_path).unwrap();
    assert!(status.success(), "{said}");
    let new_pid: u32 = said
        .split("process ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert_ne!(new_pid, old.0.id());
    let _new = PidGuard(new_pid);
    // the old one says it hands over; the new one that it is the main process now
    let mut seen = Vec::new();
    let ready = loop {
        let m = systemd.next();
        seen.push(m.clone());
        if m.iter().any(|l| l == "READY=1") {
            break m;
        }
    };
    assert!(ready.contains(&format!("MAINPID={new_pid}")), "{seen:?}");
    assert!(
        seen.iter()
            .flatten()
            .any(|l| l.starts_with("STATUS=handing the listeners over")),
        "{seen:?}"
    );
    assert!(
        !seen.iter().flatten().any(|l| l == "STOPPING=1"),
        "an upgrade is not a stop: {seen:?}"
    );
    let status = wait_exit(&mut old, None, Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
    assert_eq!(
        Client::connect(addr)
            .await
            .get(p, Some("key-pro"))
            .await
            .status,
        200
    );

    // a stop of the new main process
    signal_pid(new_pid, libc::SIGTERM);
    let stopping = systemd.until("STOPPING=1");
    assert!(
        stopping.iter().any(|l| l.starts_with("STATUS=stopping")),
        "{stopping:?}"
    );
    wait_gone(new_pid, Duration::from_secs(15)).await;
}

/// Kills the upgrade's new process (not this test's child: the script started it) if the test
/// fails before stopping it.
struct PidGuard(u32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        // SAFETY: kill(2); the process is this test's (through the script), or gone
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// The upgrade script's child is not this test's `Child`: it is signalled and waited for by pid.
fn signal_pid(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a process this test started (through the script)
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

async fn wait_gone(pid: u32, within: Duration) {
    let start = Instant::now();
    // SAFETY: signal 0 only checks that the process exists
    while unsafe { libc::kill(pid as i32, 0) } == 0 {
        assert!(start.elapsed() < within, "process {pid} did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn the_unit_verifies_and_scores_well() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var("VIVGATE_REQUIRE_SYSTEMD_ANALYZE").as_deref() == Ok("1") {
            panic!("VIVGATE_REQUIRE_SYSTEMD_ANALYZE=1 but systemd-analyze is not installed");
        }
        eprintln!("!!! SKIPPED: systemd-analyze is not installed (apt-get install systemd)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("deploy/systemd/vivgate.service")).unwrap();
    for needed in [
        "Type=notify",
        "NotifyAccess=all",
        "ExecStartPre=/usr/bin/vivgate check",
        "ExecReload=/usr/lib/vivgate/upgrade",
        "Restart=on-failure",
        "RuntimeDirectory=vivgate",
        "StateDirectory=vivgate",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "LimitNOFILE=65536",
        "TimeoutStopSec=30",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(needed)),
            "the unit lacks {needed}"
        );
    }
    // verified where the package puts things: here, the built binary and the script in place
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vivgate.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/vivgate", env!("CARGO_BIN_EXE_vivgate"))
            .replace(
                "/usr/lib/vivgate/upgrade",
                root.join("deploy/systemd/upgrade").to_str().unwrap(),
            ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for vivgate.service: ")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in:\n{text}"));
    println!("systemd-analyze security --offline=yes: {score}");
    assert!(score <= 2.0, "exposure {score}:\n{text}");
}
