//! Scenario 3: the embedded store's writes fail under load (a full file system, a file-size
//! limit, a read-only remount). Serving goes on, counting goes on in memory, the failures show
//! in the metrics and the log, and once writes work again everything counted reaches the file:
//! a `kill -9` right after, and a restart, find every call the backend served.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::*;

/// Where mounting is not possible: a failure with `VIVGATE_REQUIRE_MOUNT=1` (CI), else a loud
/// skip.
fn cannot_mount(what: &str) {
    if std::env::var("VIVGATE_REQUIRE_MOUNT").as_deref() == Ok("1") {
        panic!("VIVGATE_REQUIRE_MOUNT=1 but the test cannot mount {what} (it needs root)");
    }
    eprintln!("!!! SKIPPED: this machine does not let the test mount {what}");
}

/// A small tmpfs mounted by the test, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    /// `None` (with a message) where the test may not mount (not root, no CAP_SYS_ADMIN).
    fn tmpfs(at: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            cannot_mount("a tmpfs");
            return None;
        }
        Some(Mount(at.to_path_buf()))
    }

    /// An ext4 file system in `img` on a loop device, mounted with `errors=remount-ro`.
    fn ext4(at: &Path, img: &Path) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let made = Command::new("truncate")
            .arg("-s")
            .arg("32M")
            .arg(img)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("mkfs.ext4")
                .arg("-q")
                .arg(img)
                .status()
                .is_ok_and(|s| s.success());
        if !made || !Self::mount_ext4(at, img) {
            cannot_mount("an ext4 image on a loop device");
            return None;
        }
        Some(Mount(at.to_path_buf()))
    }

    fn mount_ext4(at: &Path, img: &Path) -> bool {
        Command::new("mount")
            .args(["-o", "loop,errors=remount-ro"])
            .arg(img)
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// ext4's own test hook: an error that makes the kernel remount it read-only at once, with
    /// files open for writing (a plain `mount -o remount,ro` is refused while one is).
    fn ext4_error(&self) {
        let out = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(&self.0)
            .output()
            .unwrap();
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let name = dev.rsplit('/').next().unwrap();
        std::fs::write(
            format!("/sys/fs/ext4/{name}/trigger_fs_error"),
            "chaos test\n",
        )
        .unwrap();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// How the store's writes are made to fail, and mended.
enum Fault {
    /// The file system is filled by another file; mended by deleting it.
    Full(Mount),
    /// `RLIMIT_FSIZE` of the gateway lowered to 1 byte; mended by raising it.
    FileSize,
    /// The file system turned read-only by the kernel (ext4 after an error, as with
    /// `errors=remount-ro`); it cannot be made writable again while mounted, so it is not mended
    /// while the gateway runs: see [`read_only_until_the_stop`].
    ReadOnly(Mount, PathBuf),
}

fn set_file_size_limit(pid: i32, limit: u64) {
    let new = libc::rlimit {
        rlim_cur: limit,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit with a valid rlimit to set and no old value to read
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &new, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

impl Fault {
    fn apply(&self, gate: &Gate) {
        match self {
            Fault::Full(m) => {
                let mut f = std::fs::File::create(m.0.join("filler")).unwrap();
                let chunk = vec![0u8; 64 * 1024];
                while f.write_all(&chunk).is_ok() {}
                let _ = f.flush();
            }
            Fault::FileSize => set_file_size_limit(gate.pid(), 1),
            Fault::ReadOnly(m, _) => m.ext4_error(),
        }
    }

    /// Makes writes work again; false when that cannot be done while the gateway runs.
    fn mend(&self, gate: &Gate) -> bool {
        match self {
            Fault::Full(m) => std::fs::remove_file(m.0.join("filler")).unwrap(),
            Fault::FileSize => set_file_size_limit(gate.pid(), libc::RLIM_INFINITY),
            Fault::ReadOnly(..) => return false,
        }
        true
    }

    fn name(&self) -> &'static str {
        match self {
            Fault::Full(_) => "file system full",
            Fault::FileSize => "file-size limit",
            Fault::ReadOnly(..) => "read-only file system",
        }
    }
}

/// The gateway's stderr, gathered by a thread (a pipe: no file-size limit applies to it).
fn gather_stderr(gate: &mut Gate) -> Arc<Mutex<String>> {
    let err = gate.proc.0.stderr.take().expect("stderr piped");
    let text = Arc::new(Mutex::new(String::new()));
    let t = text.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let mut t = t.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
    text
}

/// Groups first seen while the store's writes fail.
const NEW_GROUPS: usize = 500;

/// The calls of [`extra_groups`] in the admin API's table, and how many of them have calls.
async fn new_group_calls(gate: &Gate) -> (u64, usize) {
    let (status, text) = gate.admin("GET", "/usage", "").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let groups = v["data"]["groups"].as_array().unwrap();
    let ids: std::collections::HashSet<String> = (0..NEW_GROUPS).map(extra_group_id).collect();
    let calls: Vec<u64> = groups
        .iter()
        .filter(|g| g["id"].as_str().is_some_and(|id| ids.contains(id)))
        .map(|g| g["calls"].as_u64().unwrap())
        .filter(|c| *c > 0)
        .collect();
    (calls.iter().sum(), calls.len())
}

async fn store_writes_fail_and_recover(h: &Harness, store_dir: &Path, fault: Fault) {
    let (port, admin_port) = two_ports().await;
    let tail = format!(
        "[usage]\nstore = \"embedded\"\npath = {:?}\nflush_interval_ms = 100\n",
        store_dir.join("usage.redb").display().to_string()
    );
    let name = fault.name().replace(' ', "-");
    let config = gate_config(
        h,
        &format!("{name}.toml"),
        port,
        admin_port,
        "grace_period_seconds = 1",
        &tail,
    );
    std::fs::write(
        h.dir.path().join("disk-tenants.toml"),
        tenants_toml() + &extra_groups("disk-key", NEW_GROUPS),
    )
    .unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        edit(
            &text,
            "tenants = \"tenants.toml\"",
            "tenants = \"disk-tenants.toml\"",
        ),
    )
    .unwrap();
    let log = h.dir.path().join(format!("{name}.log"));
    let mut gate = Gate::start_with(&config, port, admin_port, &log, |c| {
        c.stderr(Stdio::piped());
    })
    .await;
    let stderr = gather_stderr(&mut gate);
    let pro = group_id("key-pro");
    let targets = (0..6)
        .map(|i| Target {
            addr: gate.addr(),
            label: if i % 3 == 0 { "cdn" } else { "api" },
            key: "key-pro",
            path: if i % 3 == 0 {
                "/cdn/disk.bin?size=1000".into()
            } else {
                "/tenant/integrationObjects?type=a".into()
            },
            every: Duration::from_millis(5),
        })
        .collect();
    let served_before = h.backend.total_for(pro);
    let (calls_before, bytes_before) = gate.usage(pro).await;
    let load = Load::start(targets, Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let failures_before = gate.metric("vivgate_usage_flush_failures_total").await;
    fault.apply(&gate);
    // calls of groups the store has not seen yet: the file must take new pages
    let mut c = Client::connect(gate.addr()).await;
    for i in 0..NEW_GROUPS {
        let r = c
            .get(
                "/tenant/integrationObjects?type=a",
                Some(&format!("disk-key-{i}")),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failures = gate.metric("vivgate_usage_flush_failures_total").await - failures_before;
    let age = gate.metric("vivgate_usage_flush_age_seconds").await;
    assert!(
        gate.proc.0.try_wait().unwrap().is_none(),
        "the gateway died: {}",
        stderr.lock().unwrap()
    );
    let logged = stderr
        .lock()
        .unwrap()
        .lines()
        .filter(|l| l.contains("flush") && (l.contains("WARN") || l.contains("ERROR")))
        .count();
    eprintln!(
        "{}: {failures} failed flushes in 3 s, flush age {age} s, {logged} log lines; e.g. {:?}",
        fault.name(),
        stderr
            .lock()
            .unwrap()
            .lines()
            .rfind(|l| l.contains("flush"))
            .unwrap_or("")
    );
    assert!(failures >= 10.0, "{failures} failed flushes");
    assert!(age >= 2.0, "flush age {age}");
    assert!(logged >= 1, "the failure is in the log");

    if !fault.mend(&gate) {
        let tally = load.stop().await;
        assert_eq!(tally.count(200), tally.answered(), "{}", tally.summary());
        let served = h.backend.total_for(pro) - served_before;
        let bytes = tally.label_count("cdn", 200) * 1000;
        let want = (calls_before + served, bytes_before + bytes);
        assert_eq!(gate.usage_settled(pro, want).await, want);
        let Fault::ReadOnly(m, img) = fault else {
            unreachable!("only a read-only file system cannot be mended")
        };
        return read_only_until_the_stop(
            gate,
            stderr,
            m,
            &img,
            calls_before + served,
            bytes_before + bytes,
        )
        .await;
    }
    let start = Instant::now();
    loop {
        if gate.metric("vivgate_usage_flush_age_seconds").await < 0.5 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no flush within 5 s of the repair"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = start.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = load.stop().await;
    eprintln!(
        "{}: flushing again {recovered:?} after the repair; {}",
        fault.name(),
        tally.summary()
    );
    // serving went on, every answer a 200
    assert!(tally.answered() > 1000, "{}", tally.summary());
    assert_eq!(tally.count(200), tally.answered(), "{}", tally.summary());
    assert_eq!(
        (tally.cut, tally.unanswered, tally.refused, tally.hung),
        (0, 0, 0, 0)
    );
    // counting went on in memory
    let served = h.backend.total_for(pro) - served_before;
    let (new_calls, new_groups) = new_group_calls(&gate).await;
    assert_eq!((new_calls, new_groups), (NEW_GROUPS as u64, NEW_GROUPS));
    let bytes = tally.label_count("cdn", 200) * 1000;
    assert_eq!(served, tally.count(200));
    let want = (calls_before + served, bytes_before + bytes);
    assert_eq!(gate.usage_settled(pro, want).await, want);
    // and reached the file: a flush after the load, then kill -9 (no last flush) and a restart
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    while gate.metric("vivgate_usage_flush_age_seconds").await >= 0.1 {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "no flush after the load"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.kill();
    let mut again = Gate::start(&config, port, admin_port, &log).await;
    assert_eq!(
        again.usage(pro).await,
        (calls_before + served, bytes_before + bytes),
        "what the restarted gateway read from the file"
    );
    for i in [0, NEW_GROUPS / 2, NEW_GROUPS - 1] {
        let (calls, _) = again.usage(&extra_group_id(i)).await;
        assert_eq!(calls, 1, "the call of a new group made during the fault");
    }
    again.stop().await;
}

/// A store that stays read-only: the stop tries the last flush for a few seconds, then writes
/// every unsaved count to the log and exits with an error. The file (mounted again after the
/// stop) plus the logged counts must hold every call: nothing is lost without a trace.
async fn read_only_until_the_stop(
    mut gate: Gate,
    stderr: Arc<Mutex<String>>,
    m: Mount,
    img: &Path,
    calls: u64,
    bytes: u64,
) {
    let status = wait_exit(&mut gate.proc, Some(libc::SIGTERM), Duration::from_secs(30)).await;
    assert!(
        !status.success(),
        "a stop that could not save the counts exits with an error"
    );
    // the reader thread has the whole output once the pipe closes
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = stderr.lock().unwrap().clone();
    let field = |l: &str, name: &str| -> Option<String> {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")).map(str::to_string))
    };
    let mut unsaved = std::collections::HashMap::<String, (u64, u64)>::new();
    for l in text
        .lines()
        .filter(|l| l.contains("usage not saved") && l.contains(" group="))
    {
        let group = field(l, "group").unwrap();
        let e = unsaved.entry(group).or_default();
        e.0 += field(l, "calls").unwrap().parse::<u64>().unwrap();
        e.1 += field(l, "bytes").unwrap().parse::<u64>().unwrap();
    }
    let pro = group_id("key-pro");
    eprintln!(
        "read-only file system: the stop logged the unsaved counts of {} groups ({:?} for {pro}); {:?}",
        unsaved.len(),
        unsaved.get(pro),
        text.lines().rfind(|l| l.contains("the last flush")).unwrap_or("")
    );
    assert!(
        unsaved.len() > NEW_GROUPS,
        "the new groups' calls and the load's are unsaved"
    );
    // the file as it was left, mounted again (writable: a fresh mount), read by a new gateway
    let at = m.0.clone();
    // the gateway has exited: a plain unmount (the loop device is released with it), then
    // mount again, retried while the kernel lets go of the old loop device
    std::mem::forget(m);
    let _ = Command::new("umount").arg(&at).status();
    let start = Instant::now();
    while !Mount::mount_ext4(&at, img) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "mount the image again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = Mount(at);
    let mut again = Gate::start(&gate.config, gate.port, gate.admin.port(), &gate.log).await;
    let (saved_calls, saved_bytes) = again.usage(pro).await;
    let (lost_calls, lost_bytes) = unsaved.get(pro).copied().unwrap_or_default();
    assert_eq!(
        (saved_calls + lost_calls, saved_bytes + lost_bytes),
        (calls, bytes),
        "file + log"
    );
    for i in [0, NEW_GROUPS - 1] {
        let (saved, _) = again.usage(&extra_group_id(i)).await;
        let logged = unsaved.get(&extra_group_id(i)).map_or(0, |u| u.0);
        assert_eq!(
            saved + logged,
            1,
            "the new group's call, in the file or the log"
        );
    }
    again.stop().await;
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "chaos: minutes long; .ci/run runs it with --ignored"]
async fn the_embedded_store_loses_nothing_when_its_writes_fail() {
    let h = Harness::start().await;
    // a file-size limit: works anywhere
    let plain = h.dir.path().join("state-fsize");
    std::fs::create_dir_all(&plain).unwrap();
    store_writes_fail_and_recover(&h, &plain, Fault::FileSize).await;
    // a full file system and a read-only one: where the test may mount
    let at = h.dir.path().join("state-tmpfs");
    if let Some(m) = Mount::tmpfs(&at, "4m") {
        store_writes_fail_and_recover(&h, &at, Fault::Full(m)).await;
    }
    let at = h.dir.path().join("state-ro");
    let img = h.dir.path().join("state-ro.img");
    if let Some(m) = Mount::ext4(&at, &img) {
        store_writes_fail_and_recover(&h, &at, Fault::ReadOnly(m, img)).await;
    }
}
