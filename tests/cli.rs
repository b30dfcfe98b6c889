//! The `vivgate` binary itself: `check` on the shipped and the golden configs, `hash-key`, and a
//! running gateway reloaded by SIGHUP and stopped by SIGTERM.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;

fn check(path: &Path) -> (bool, String) {
    let out = vivgate()
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn tomls(dir: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no configs", dir.display());
    files
}

#[test]
fn shipped_config_checks() {
    let (ok, text) = check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/vivgate.toml"));
    assert!(ok, "{text}");
    assert!(text.contains(": ok ("), "{text}");
}

#[test]
fn every_valid_golden_config_checks() {
    for f in tomls("tests/configs/valid") {
        let (ok, text) = check(&f);
        assert!(ok, "{}: {text}", f.display());
    }
}

#[test]
fn every_invalid_golden_config_is_refused_naming_the_field() {
    let files = tomls("tests/configs/invalid");
    assert!(files.len() >= 10);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} must start with `# expect: `", f.display()));
        let (ok, out) = check(&f);
        assert!(!ok, "{} was accepted", f.display());
        assert!(out.starts_with("error: "), "{}: {out}", f.display());
        assert!(
            out.contains(expect),
            "{}: {out:?} should contain {expect:?}",
            f.display()
        );
        assert!(
            out.contains(".toml: ") || out.contains(".tsv: "),
            "the error names the file: {out}"
        );
    }
}

fn hash_key(input: &[u8]) -> (bool, String, String) {
    let mut child = vivgate()
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn hash_key_prints_the_stored_form() {
    let expected = "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b\n";
    assert_eq!(
        hash_key(b"secret\n"),
        (true, expected.to_string(), String::new())
    );
    assert_eq!(hash_key(b"secret").1, expected);
    let (ok, out, err) = hash_key(b"\n");
    assert!(!ok && out.is_empty() && err.contains("empty key"), "{err}");
    let (ok, _, err) = hash_key(b"");
    assert!(!ok && err.contains("empty key"));
    // input that could never authenticate is refused, not hashed
    for bad in [&b"my key with space"[..], b"secret\n\n", b"tab\there"] {
        let (ok, out, err) = hash_key(bad);
        assert!(
            !ok && out.is_empty() && err.contains("not a valid API key"),
            "{err}"
        );
    }
}

/// `vivgate keys <args>` with `stdin`: success, stdout, stderr.
fn keys(args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    let mut child = vivgate()
        .arg("keys")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_key_goes_into_the_tenants_file_and_works_after_a_reload() {
    let h = Harness::start().await;
    let tenants = h.dir.path().join("tenants.toml");
    let before = std::fs::read_to_string(&tenants).unwrap();
    let pro = group_id("key-pro");
    let (ok, out, err) = keys(
        &[
            "new",
            "--group",
            pro,
            "--tenants",
            tenants.to_str().unwrap(),
        ],
        b"",
    );
    assert!(ok, "{err}");
    let mut lines = out.lines();
    let (key, hash) = (lines.next().unwrap().to_string(), lines.next().unwrap());
    assert!(key.starts_with("vgk_") && key.len() == 53, "{key}");
    assert_eq!(
        hash,
        vivgate::keys::format_key_hash(&vivgate::keys::hash_key(key.as_bytes()))
    );
    assert!(err.contains("shown once"), "{err}");
    let after = std::fs::read_to_string(&tenants).unwrap();
    assert!(after.contains(hash) && after.len() > before.len());
    // only that group changed
    assert_eq!(after.replace(&format!(", \"{hash}\""), ""), before);

    // the key works after a reload, and is checked offline
    let p = "/tenant/integrationObjects?type=x";
    assert_envelope(&h.get(p, Some(&key)).await, 401, "Invalid or revoked");
    h.gw.reload().unwrap();
    assert_eq!(h.get(p, Some(&key)).await.status, 200);
    let (ok, out, _) = keys(&["check"], format!("{key}\n").as_bytes());
    assert!(ok && out.contains("valid"), "{out}");
    // what `keys new > key.txt` saves: the key, then its hash
    let (ok, out, err) = keys(&["check"], format!("{key}\n{hash}\n").as_bytes());
    assert!(ok && out.contains("valid"), "{out}{err}");

    // a typo is refused offline and by the gateway alike
    let mut typo = key.clone().into_bytes();
    typo[20] = if typo[20] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).unwrap();
    let (ok, _, err) = keys(&["check"], typo.as_bytes());
    assert!(!ok && err.contains("invalid: bad checksum"), "{err}");
    assert_envelope(&h.get(p, Some(&typo)).await, 401, "Invalid or revoked");
    let (ok, _, err) = keys(&["check"], b"key-pro");
    assert!(!ok && err.contains("not a vivgate key"), "{err}");

    // refusals: an unknown group, a key already there
    let (ok, _, err) = keys(
        &[
            "new",
            "--group",
            "nope",
            "--tenants",
            tenants.to_str().unwrap(),
        ],
        b"",
    );
    assert!(!ok && err.contains("no group \"nope\""), "{err}");
    assert_eq!(
        std::fs::read_to_string(&tenants).unwrap(),
        after,
        "nothing written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_key_with_a_bad_checksum_is_refused_before_the_lookup() {
    // a key with the checksum prefix whose hash IS in the tenants file, but whose checksum is
    // wrong: refused as an unknown key, so the check comes before the hash lookup
    let forged = format!("vgk_{}", "A".repeat(49));
    let hash = vivgate::keys::format_key_hash(&vivgate::keys::hash_key(forged.as_bytes()));
    let h = Harness::start().await;
    let pro = group_id("key-pro");
    let text = std::fs::read_to_string(h.dir.path().join("tenants.toml")).unwrap();
    let pro_hash = vivgate::keys::format_key_hash(&vivgate::keys::hash_key(b"key-pro"));
    h.write_tenants(&text.replace(
        &format!("\"{pro_hash}\""),
        &format!("\"{pro_hash}\", \"{hash}\""),
    ));
    h.gw.reload().unwrap();
    let p = "/tenant/integrationObjects?type=x";
    assert_envelope(&h.get(p, Some(&forged)).await, 401, "Invalid or revoked");
    assert_eq!(h.get(p, Some("key-pro")).await.status, 200, "{pro}");
    // with the prefix out of keys.checksum_prefixes, the same key is looked up as it is
    let config =
        h.config_text() + "\n[keys]\nchecksum_prefixes = [\"acme_\"]\n" + common::HARNESS_STORE;
    h.write_config(&config);
    h.gw.reload().unwrap();
    assert_eq!(h.get(p, Some(&forged)).await.status, 200);
}

#[test]
fn no_config_and_no_command_is_a_usage_error() {
    let out = vivgate().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reloads_on_sighup_and_stops_on_sigterm() {
    // The backend and the config come from the in-process harness; the gateway under test is the
    // real binary, on a port picked by binding port 0 (then freed for the binary to take).
    let h = Harness::start().await;
    let port = free_port().await;
    let config = h.binary_config("vivgate.toml", port, "grace_period_seconds = 1", "");
    let mut child = spawn_binary(&config, &[], &[], port).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let path = "/tenant/integrationObjects?type=a";

    let get =
        |key: &'static str| async move { Client::connect(addr).await.get(path, Some(key)).await };
    assert_eq!(get("key-pro").await.status, 200);
    assert_envelope(&get("key-new").await, 401, "Invalid or revoked");

    // revoke key-pro, add key-new to the same group, and reload
    let new_hash = vivgate::keys::format_key_hash(&vivgate::keys::hash_key(b"key-new"));
    let old_hash = vivgate::keys::format_key_hash(&vivgate::keys::hash_key(b"key-pro"));
    h.write_tenants(&tenants_toml().replace(&old_hash, &new_hash));
    signal(&child.0, libc::SIGHUP);
    wait_for("the reload", || async {
        get("key-new").await.status == 200
    })
    .await;
    assert_envelope(&get("key-pro").await, 401, "Invalid or revoked");

    // a broken tenants file is refused and the running config stays
    h.write_tenants(
        "[[groups]]\nid = \"x\"\ntier = \"free\"\nstatus = \"active\"\nkeys = [\"plaintext\"]\n",
    );
    signal(&child.0, libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        get("key-new").await.status,
        200,
        "still serving after a bad reload"
    );
    assert_eq!(
        child.0.try_wait().unwrap(),
        None,
        "SIGHUP must not kill the process"
    );

    let status = wait_exit(&mut child, Some(libc::SIGTERM), Duration::from_secs(10)).await;
    assert!(
        status.success(),
        "SIGTERM stops the gateway promptly and cleanly: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_its_keys_and_prints_curl_commands() {
    let (port, admin_port) = (free_port().await, free_port().await);
    let child = vivgate()
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin",
            &format!("127.0.0.1:{admin_port}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Killer(child);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // the first lines name the console's address and the admin token
    let stdout = child.0.stdout.take().unwrap();
    let (head, rest) = tokio::task::spawn_blocking(move || {
        let mut r = std::io::BufReader::new(stdout);
        let mut head = String::new();
        while !head.contains("admin token") {
            assert_ne!(
                std::io::BufRead::read_line(&mut r, &mut head).unwrap(),
                0,
                "{head}"
            );
        }
        (head, r)
    })
    .await
    .unwrap();
    let token = head
        .split("admin token, new at every start: ")
        .nth(1)
        .and_then(|t| t.split(')').next())
        .expect("the token is printed")
        .to_string();
    assert_eq!(token.len(), 64, "{head}");
    assert!(
        head.contains(&format!(
            "console and admin API on http://127.0.0.1:{admin_port}/"
        )),
        "{head}"
    );
    wait_for("the demo to listen", || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let get = |path: &'static str, key: &'static str| async move {
        Client::connect(addr).await.get(path, Some(key)).await
    };
    let ok = get(
        "/tenant/collectionObjects?collectionId=651f0c2ab4e8a90012345678",
        "demo-pro-key",
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["data"]["tier"], "pro");
    assert_envelope(
        &get(
            "/tenant/siteDetails?siteId=651f0c2ab4e8a90012345678",
            "demo-frozen-key",
        )
        .await,
        400,
        "frozen",
    );
    assert_envelope(
        &get("/tenant/siteDetails?siteId=x", "demo-deactivated-key").await,
        403,
        "deactivated",
    );
    assert_envelope(&get("/offline/x", "demo-pro-key").await, 502, "unreachable");
    for _ in 0..3 {
        assert_eq!(
            get("/tenant/integrationObjects?type=x", "demo-tiny-key")
                .await
                .status,
            200
        );
    }
    assert_envelope(
        &get("/tenant/integrationObjects?type=x", "demo-tiny-key").await,
        402,
        "quota",
    );

    // the admin API and the console, with the printed token
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let call = |method: &'static str, path: String, token: Option<String>, body: &'static str| async move {
        let auth = token
            .map(|t| format!("\nAuthorization: Bearer {t}"))
            .unwrap_or_default();
        Client::connect(admin)
            .await
            .request(
                &format!(
                    "{method} {path} HTTP/1.1\nHost: localhost\nContent-Length: {}{auth}",
                    body.len()
                ),
                body.as_bytes(),
            )
            .await
    };
    let page = call("GET", "/".into(), None, "").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("vivgate console"));
    assert_envelope(
        &call("GET", "/usage".into(), None, "").await,
        401,
        "admin token",
    );
    let usage = call(
        "GET",
        "/usage?sort=calls:desc&limit=1".into(),
        Some(token.clone()),
        "",
    )
    .await;
    assert_eq!(usage.status, 200, "{}", usage.text());
    assert_eq!(
        usage.json()["data"]["groups"][0]["calls"],
        3,
        "the tiny group's 3 calls (the refused 4th is free)"
    );
    let basic = "000000000000000000000b01";
    let r = call(
        "PUT",
        format!("/groups/{basic}/status"),
        Some(token.clone()),
        r#"{"status": "frozen"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_envelope(
        &get("/tenant/siteDetails?siteId=x", "demo-basic-key").await,
        400,
        "frozen",
    );
    // the demo flushes every second: the day's calls of the pro group appear
    wait_for("the day's calls", || {
        let (call, token) = (&call, token.clone());
        async move {
            let d = call(
                "GET",
                "/usage/000000000000000000000a01?by=day".into(),
                Some(token),
                "",
            )
            .await
            .json();
            d["data"]["days"]
                .as_array()
                .is_some_and(|days| days.iter().any(|x| x["calls"] == 1))
        }
    })
    .await;

    // Ctrl-C stops the demo as the gateway stops: a request in flight is answered
    let slow = tokio::spawn(async move {
        Client::connect(addr)
            .await
            .get("/slow/report?ms=400", Some("demo-pro-key"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    wait_exit(&mut child, Some(libc::SIGINT), Duration::from_secs(10)).await;
    let answer = slow.await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut out = head;
    let mut rest = rest;
    std::io::Read::read_to_string(&mut rest, &mut out).unwrap();
    for needle in [
        "demo-pro-key",
        "demo-frozen-key",
        "curl -i",
        "402",
        "504",
        "502",
        "Admin API:",
        "/usage?sort=calls:desc",
    ] {
        assert!(out.contains(needle), "demo output lacks {needle:?}:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn months_are_utc_whatever_the_host_time_zone() {
    let h = Harness::start().await;
    for tz in ["XYZ-14", "ABC+12", "UTC0"] {
        let port = free_port().await;
        let config = h.binary_config(
            &format!("tz-{port}.toml"),
            port,
            "",
            "[usage]\nstore = \"memory\"",
        );
        let _child = spawn_binary(&config, &[], &[("TZ", tz)], port).await;
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let r = Client::connect(addr)
            .await
            .get("/tenant/integrationObjects?type=a", Some("key-pro"))
            .await;
        assert_eq!(r.status, 200);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let expected = vivgate::clock::Month::containing(now_ms).seconds_until_end(now_ms) as i64;
        let t: i64 = r
            .header("ratelimit")
            .unwrap()
            .rsplit("t=")
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (t - expected).abs() <= 2,
            "TZ={tz}: t={t}, seconds to the next UTC month {expected}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_asks_the_admin_listener() {
    let h = Harness::start().await;
    let (port, admin_port) = (free_port().await, free_port().await);
    let config = h.binary_config(
        "healthz.toml",
        port,
        "grace_period_seconds = 2",
        &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\""),
    );
    let healthz = |config: &std::path::Path| {
        let out = vivgate()
            .args(["healthz", "--timeout-ms", "1000", "--config"])
            .arg(config)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, text) = healthz(&config);
    assert!(
        !ok && text.contains("admin listener"),
        "nothing runs yet: {text}"
    );
    let mut child = spawn_binary(&config, &[], &[], port).await;
    wait_for("the admin listener", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", admin_port))
            .await
            .is_ok()
    })
    .await;
    let (ok, text) = healthz(&config);
    assert!(ok && text.contains("serving"), "{text}");
    // a stop began: 503 until the process is gone
    signal(&child.0, libc::SIGTERM);
    wait_for("healthz to fail", || {
        let config = config.clone();
        async move { !healthz(&config).0 }
    })
    .await;
    let (_, text) = healthz(&config);
    assert!(
        text.contains("503") || text.contains("admin listener"),
        "{text}"
    );
    wait_exit(&mut child, None, Duration::from_secs(10)).await;
    // without an admin listener, whether the listener accepts
    let plain = h.binary_config("plain.toml", port, "grace_period_seconds = 0", "");
    let mut child = spawn_binary(&plain, &[], &[], port).await;
    let (ok, text) = healthz(&plain);
    assert!(ok && text.contains("accepting connections"), "{text}");
    wait_exit(&mut child, Some(libc::SIGTERM), Duration::from_secs(10)).await;
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line() {
    for (shell, needle) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef vivgate"),
        ("fish", "complete -c vivgate"),
    ] {
        let out = vivgate().args(["completions", shell]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}");
        assert!(text.contains(needle), "{shell}: {text}");
        // every subcommand is completed
        for sub in ["check", "hash-key", "keys", "healthz", "demo", "tenants"] {
            assert!(text.contains(sub), "{shell} lacks {sub}");
        }
    }
    let out = vivgate().arg("man").output().unwrap();
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        man.starts_with(".ie") || man.contains(".TH vivgate"),
        "{man}"
    );
    assert!(man.contains("keys") && man.contains("healthz"), "{man}");
    // signals and files as sections of tagged paragraphs, not filled into prose
    for section in [
        ".SH SIGNALS\n.TP\n\\fBSIGHUP\\fR\n",
        ".SH FILES\n.TP\n\\fB/etc/vivgate/vivgate.toml\\fR\n",
    ] {
        assert!(man.contains(section), "{section:?} in {man}");
    }
    assert!(
        man.contains("/var/lib/vivgate") && !man.contains(".SH EXTRA"),
        "{man}"
    );
    // every page the main page refers to exists (the package installs them all); the
    // directory is made
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("man/man1");
    let out = vivgate().args(["man", "--dir"]).arg(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(dir.join("vivgate.1")).unwrap(), man);
    let dir = dir.as_path();
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for page in [
        "vivgate.1",
        "vivgate-check.1",
        "vivgate-keys.1",
        "vivgate-keys-new.1",
        "vivgate-keys-check.1",
        "vivgate-demo.1",
    ] {
        assert!(pages.iter().any(|p| p == page), "{page} missing: {pages:?}");
    }
    for page in &pages {
        let text = std::fs::read_to_string(dir.join(page)).unwrap();
        for refers in [man.as_ref(), text.as_str()]
            .into_iter()
            .flat_map(|t| t.split('\n'))
            .filter_map(|l| l.strip_suffix("(1)"))
        {
            let to = format!("{}.1", refers.replace("\\-", "-"));
            assert!(
                pages.contains(&to),
                "{page} refers to {to}, missing: {pages:?}"
            );
        }
    }
    let new = std::fs::read_to_string(dir.join("vivgate-keys-new.1")).unwrap();
    assert!(new.contains("\\-\\-group"), "{new}");
}
