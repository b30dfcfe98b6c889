//! The README's "Getting started" walkthroughs, run for real: the config and tenants files of
//! "Put your own backend behind it" and the group of "Onboard a customer" are read from the
//! README itself (so the README cannot drift from what works), with its addresses moved to free
//! ports in front of a real backend, and the steps the README gives are taken with the real
//! binary: `keys new`, `check`, start, calls with and without the key, `POST /reload`, usage.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The fenced block that opens with `first_line`, without its fences.
fn block(readme: &str, fence: &str, first_line: &str) -> String {
    let start = readme
        .find(&format!("```{fence}\n{first_line}\n"))
        .unwrap_or_else(|| panic!("the README has no {fence} block starting {first_line:?}"));
    let body = &readme[start + fence.len() + 4..];
    body[..body.find("\n```").unwrap()].to_string() + "\n"
}

/// `vivgate keys new --group <group> --tenants <tenants>`, as the README says; the key.
fn keys_new(dir: &Path, group: &str) -> String {
    let out = vivgate()
        .current_dir(dir)
        .args([
            "keys",
            "new",
            "--group",
            group,
            "--tenants",
            "my-tenants.toml",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert!(key.starts_with("vgk_"), "{key}");
    key
}

fn check(dir: &Path) {
    let out = vivgate()
        .current_dir(dir)
        .args(["check", "--config", "my-vivgate.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn admin(addr: SocketAddr, method: &str, path: &str) -> Resp {
    Client::connect(addr)
        .await
        .request(
            &format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"),
            b"",
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_getting_started_walkthroughs_work_as_written() {
    let text = readme();
    let config = block(&text, "toml", "# my-vivgate.toml");
    let tenants = block(&text, "toml", "# my-tenants.toml");
    let onboarding = block(&text, "sh", "# 1. the group, in my-tenants.toml");
    let new_group = onboarding
        .split("<<'TOML'\n")
        .nth(1)
        .and_then(|rest| rest.split("\nTOML\n").next())
        .expect("the onboarding's heredoc")
        .to_string();
    let id = |toml: &str| -> String {
        let line = toml.lines().find(|l| l.starts_with("id = ")).unwrap();
        line.split('"').nth(1).unwrap().to_string()
    };
    let (first, second) = (id(&tenants), id(&new_group));
    // every command the walkthroughs give uses these ids and files
    for needed in [
        format!("vivgate keys new --group {first} --tenants my-tenants.toml"),
        format!("vivgate keys new --group {second} --tenants my-tenants.toml"),
        "vivgate check --config my-vivgate.toml".to_string(),
        "curl -X POST http://127.0.0.1:9901/reload".to_string(),
        format!("curl http://127.0.0.1:9901/usage/{second}"),
    ] {
        assert!(
            text.contains(&needed),
            "the README no longer says {needed:?}"
        );
    }

    // "Put your own backend behind it": the README's files, its addresses moved to free ports
    let (backend, backend_addr, _stop) = extra_backend().await;
    let (port, admin_port) = (free_port().await, free_port().await);
    for addr in ["127.0.0.1:3000", "127.0.0.1:8080", "127.0.0.1:9901"] {
        assert!(config.contains(addr), "the README's config lacks {addr}");
    }
    let config = config
        .replace("127.0.0.1:3000", &backend_addr.to_string())
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:9901", &format!("127.0.0.1:{admin_port}"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("my-vivgate.toml"), config).unwrap();
    std::fs::write(dir.path().join("my-tenants.toml"), tenants).unwrap();
    let key = keys_new(dir.path(), &first);
    check(dir.path());
    let mut child = spawn_binary(&dir.path().join("my-vivgate.toml"), &[], &[], port).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();

    let r = Client::connect(addr)
        .await
        .get("/anything", Some(&key))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["data"]["uri"], "/anything", "{body}");
    assert_eq!(body["data"]["group"], first.as_str(), "{body}");
    assert_eq!(body["data"]["tier"], "free", "{body}");
    let r = Client::connect(addr).await.get("/anything", None).await;
    assert_envelope(&r, 401, "Missing Authorization header");
    assert_eq!(backend.total(), 1, "the 401 never reached the backend");

    // "Onboard a customer": the group appended, a key, a check, a reload, a call, its usage
    let path = dir.path().join("my-tenants.toml");
    let before = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{before}\n{new_group}\n")).unwrap();
    let second_key = keys_new(dir.path(), &second);
    check(dir.path());
    let r = Client::connect(addr)
        .await
        .get("/anything", Some(&second_key))
        .await;
    assert_envelope(&r, 401, "Invalid or revoked API key");
    let r = admin(admin_addr, "POST", "/reload").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["reloaded"], true, "{}", r.text());
    for _ in 0..3 {
        let r = Client::connect(addr)
            .await
            .get("/anything", Some(&second_key))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["data"]["tier"], "pro", "{}", r.text());
    }
    let r = admin(admin_addr, "GET", &format!("/usage/{second}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let usage = r.json();
    assert_eq!(usage["data"]["group"]["calls"], 3, "{usage}");
    assert_eq!(usage["data"]["group"]["calls_limit"], 500_000, "{usage}");
    // the first key still works after the reload
    let r = Client::connect(addr)
        .await
        .get("/anything", Some(&key))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_exit(&mut child, Some(libc::SIGTERM), Duration::from_secs(15)).await;
}
