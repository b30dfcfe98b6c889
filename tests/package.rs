//! The Debian package, installed for real: `.ci/package` builds it (`deploy/debian/build`) and
//! runs this test as root with `VIVGATE_DEB` naming the `.deb`. It installs with `dpkg -i` on a
//! machine where systemd is not running, checks what the maintainer scripts did (the user, the
//! directories, nothing started), that the installed `vivgate check` accepts the installed
//! config, that the installed unit verifies with the binary and its man page in place, that a
//! key added to the installed tenants file survives a reinstall, that the installed binary run
//! as the service user serves on loopback and keeps its state in `/var/lib/vivgate`, and that a
//! purge leaves nothing behind. Ignored under plain `cargo test`: it installs into the system.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    println!(
        "$ {program} {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Purges the package when dropped, so a failing test leaves no package behind.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if Path::new("/usr/bin/vivgate").exists() {
            let _ = run("dpkg", &["--purge", "vivgate"]);
        }
    }
}

/// The pids of processes running the installed binary.
fn installed_processes() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.starts_with("/usr/bin/vivgate"))
        })
        .collect()
}

fn user(name: &str) -> Option<Vec<String>> {
    let out = run("getent", &["passwd", name]);
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(':')
            .map(String::from)
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "installs into the system: run by .ci/package as root, with VIVGATE_DEB"]
async fn the_package_installs_serves_and_purges_cleanly() {
    let deb = std::env::var("VIVGATE_DEB")
        .expect("VIVGATE_DEB must name the .deb to install (deploy/debian/build makes it)");
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "dpkg -i needs root");
    assert!(
        !Path::new("/usr/bin/vivgate").exists() && user("vivgate").is_none(),
        "vivgate is installed already: purge it first (dpkg --purge vivgate)"
    );
    let _purge = Purge;

    // installs where systemd is not running: the maintainer scripts must not fail, and start
    // nothing
    run_ok("dpkg", &["-i", &deb]);
    let status = run_ok("dpkg-query", &["-W", "-f=${Status}", "vivgate"]);
    assert_eq!(status, "install ok installed");
    assert_eq!(
        installed_processes(),
        Vec::<u32>::new(),
        "the package started vivgate"
    );

    // the system user, its state and log directories, the config readable by it only
    let passwd = user("vivgate").expect("the vivgate user");
    let uid: u32 = passwd[2].parse().unwrap();
    let gid: u32 = passwd[3].parse().unwrap();
    assert!(uid < 1000, "a system user: {passwd:?}");
    assert_eq!(passwd[5], "/var/lib/vivgate");
    assert_eq!(passwd[6], "/usr/sbin/nologin");
    for dir in ["/var/lib/vivgate", "/var/log/vivgate"] {
        let m = std::fs::metadata(dir).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, gid), "{dir}");
        assert_eq!(m.permissions().mode() & 0o777, 0o750, "{dir}");
    }
    for file in ["/etc/vivgate/vivgate.toml", "/etc/vivgate/tenants.toml"] {
        let m = std::fs::metadata(file).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, gid), "{file}");
        assert_eq!(m.permissions().mode() & 0o777, 0o640, "{file}");
    }
    // through dpkg's stat overrides, so a new version of a file gets them too
    let overrides = run_ok("dpkg-statoverride", &["--list", "/etc/vivgate/*"]);
    for file in ["/etc/vivgate/vivgate.toml", "/etc/vivgate/tenants.toml"] {
        assert!(
            overrides.contains(&format!("root vivgate 640 {file}")),
            "{overrides}"
        );
    }
    let conffiles = run_ok("dpkg-query", &["-W", "-f=${Conffiles}", "vivgate"]);
    for file in ["/etc/vivgate/vivgate.toml", "/etc/vivgate/tenants.toml"] {
        assert!(
            conffiles.contains(file),
            "{file} is not a conffile: {conffiles}"
        );
    }
    for file in [
        "/usr/lib/systemd/system/vivgate.service",
        "/usr/lib/vivgate/upgrade",
        "/usr/share/man/man1/vivgate.1.gz",
        "/usr/share/man/man1/vivgate-keys-new.1.gz",
        "/usr/share/bash-completion/completions/vivgate",
        "/usr/share/zsh/vendor-completions/_vivgate",
        "/usr/share/fish/vendor_completions.d/vivgate.fish",
        "/usr/share/vivgate/prometheus/vivgate.rules.yml",
        "/usr/share/vivgate/grafana/vivgate.json",
        "/usr/share/doc/vivgate/copyright",
    ] {
        assert!(Path::new(file).exists(), "{file} is not installed");
    }
    // the installed check accepts the installed config, as the service user (ExecStartPre)
    let out = Command::new("/usr/bin/vivgate")
        .args(["check", "--config", "/etc/vivgate/vivgate.toml"])
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the shipped tenants file opens nothing
    let checked = String::from_utf8_lossy(&out.stdout);
    assert!(
        checked.contains(": ok (") && checked.contains("1 groups, 0 keys"),
        "{checked}"
    );

    // the installed unit verifies with the binary, its upgrade script and its man page in
    // place (Documentation=man:vivgate(1))
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        run_ok(
            "systemd-analyze",
            &["verify", "/usr/lib/systemd/system/vivgate.service"],
        );
    } else if std::env::var("VIVGATE_REQUIRE_SYSTEMD_ANALYZE").as_deref() == Ok("1") {
        panic!("VIVGATE_REQUIRE_SYSTEMD_ANALYZE=1 but systemd-analyze is not installed");
    }

    // onboarding a customer with the installed binary: a key in the installed tenants file,
    // kept by a reinstall (a conffile the administrator changed)
    let minted = Command::new("/usr/bin/vivgate")
        .args([
            "keys",
            "new",
            "--group",
            "651f0c2ab4e8a90012345678",
            "--tenants",
            "/etc/vivgate/tenants.toml",
        ])
        .output()
        .unwrap();
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let with_key = std::fs::read_to_string("/etc/vivgate/tenants.toml").unwrap();
    assert!(with_key.contains("keys = [\"sha256:"), "{with_key}");
    run_ok("dpkg", &["-i", &deb]);
    assert_eq!(
        std::fs::read_to_string("/etc/vivgate/tenants.toml").unwrap(),
        with_key,
        "the reinstall kept the changed tenants file"
    );
    let m = std::fs::metadata("/etc/vivgate/tenants.toml").unwrap();
    assert_eq!(
        m.gid(),
        gid,
        "the rewritten tenants file is still readable by the service"
    );
    let checked = run_ok(
        "/usr/bin/vivgate",
        &["check", "--config", "/etc/vivgate/vivgate.toml"],
    );
    assert!(checked.contains("1 groups, 1 keys"), "{checked}");
    assert_eq!(
        installed_processes(),
        Vec::<u32>::new(),
        "the reinstall started vivgate"
    );

    // the installed binary, as the service user, on loopback in front of the test's backend,
    // keeping its usage store in the package's state directory
    let h = Harness::start().await;
    let port = free_port().await;
    let config = h.binary_config("package.toml", port, "grace_period_seconds = 1", "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("state_dir = \"/var/lib/vivgate\"\n{text}")).unwrap();
    for entry in std::fs::read_dir(h.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    std::fs::set_permissions(h.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let child = Command::new("/usr/bin/vivgate")
        .arg("--config")
        .arg(&config)
        .uid(uid)
        .gid(gid)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = Killer(child);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for("the installed binary to listen", || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let path = "/tenant/integrationObjects?type=a";
    let r = Client::connect(addr).await.get(path, Some("key-pro")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["data"]["uri"], path, "{body}");
    assert_eq!(body["data"]["group"], group_id("key-pro"), "{body}");
    let r = Client::connect(addr).await.get(path, None).await;
    assert_envelope(&r, 401, "Missing Authorization header");
    let status = wait_exit(&mut child, Some(libc::SIGTERM), Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
    let store = std::fs::metadata("/var/lib/vivgate/usage.redb").expect("the usage store");
    assert_eq!(store.uid(), uid, "written by the service user");

    // a purge removes the package, its config, its state, its logs and its user
    run_ok("dpkg", &["--purge", "vivgate"]);
    let out = run("dpkg-query", &["-W", "-f=${Status}", "vivgate"]);
    assert!(
        !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("installed"),
        "still installed"
    );
    for gone in [
        "/usr/bin/vivgate",
        "/usr/lib/vivgate",
        "/usr/lib/systemd/system/vivgate.service",
        "/etc/vivgate",
        "/var/lib/vivgate",
        "/var/log/vivgate",
        "/usr/share/man/man1/vivgate.1.gz",
        "/usr/share/doc/vivgate",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} is left after the purge");
    }
    assert!(
        user("vivgate").is_none(),
        "the user is left after the purge"
    );
    assert!(
        !run("getent", &["group", "vivgate"]).status.success(),
        "the group is left after the purge"
    );
    assert!(
        !run("dpkg-statoverride", &["--list", "/etc/vivgate/*"])
            .status
            .success(),
        "a stat override is left after the purge"
    );

    // a vivgate group made beforehand (configuration management, a fixed GID) is used
    run_ok("groupadd", &["--system", "vivgate"]);
    let group = run_ok("getent", &["group", "vivgate"]);
    let gid: u32 = group.split(':').nth(2).unwrap().parse().unwrap();
    run_ok("dpkg", &["-i", &deb]);
    let passwd = user("vivgate").expect("the vivgate user");
    assert_eq!(passwd[3], gid.to_string(), "{passwd:?}");
    run_ok("dpkg", &["--purge", "vivgate"]);
    assert!(user("vivgate").is_none());
}
