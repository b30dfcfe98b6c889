//! The operators' console in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven over WebDriver, against the real gateway (the production runner)
//! in front of a real backend, its admin listener with a token. A screenshot of each screen is
//! saved under `target/console-screenshots/`.
//!
//! Without Chromium the tests say loudly that they were skipped, unless
//! `VIVGATE_REQUIRE_BROWSER=1` (CI) makes that a failure. Only Chromium is tested.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use vivgate::usage::UsageStore;

const TOKEN_HASH: &str = "sha256:16175223c8ddce5ace0493c948569c211b03c4c6bb3d3e484434999448cffe01"; // "admin-secret"

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A headless Chromium session, or `None` (skipped) when Chromium is not installed.
async fn browser() -> Option<(Browser, Driver)> {
    if !installed("chromedriver") || !installed("chromium") {
        if std::env::var("VIVGATE_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!("VIVGATE_REQUIRE_BROWSER=1 but chromium or chromedriver is not installed (apt-get install chromium chromium-driver)");
        }
        eprintln!("!!! SKIPPED: chromium or chromedriver is not installed (apt-get install chromium chromium-driver)");
        return None;
    }
    let port = free_port().await;
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver = Driver { child, port };
    let addr: SocketAddr = format!("127.0.0.1:{}", driver.port).parse().unwrap();
    wait_for("chromedriver to listen", || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"args": [
            "--headless=new",
            // as root (CI), Chromium's sandbox cannot start
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1400,1000",
        ]}),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session with headless Chromium");
    Some((client, driver))
}

fn screenshots() -> PathBuf {
    // CARGO_TARGET_TMPDIR is target/tmp
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(b: &Browser, name: &str) {
    let png = b.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Polls `check` until it gives `Some`, at most 10 s.
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text(b: &Browser, css: &str) -> Option<String> {
    b.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

async fn visible(b: &Browser, css: &str) -> bool {
    match b.find(Locator::Css(css)).await {
        Ok(e) => e.is_displayed().await.unwrap_or(false),
        Err(_) => false,
    }
}

async fn click(b: &Browser, css: &str) {
    let e = until(css, || async { b.find(Locator::Css(css)).await.ok() }).await;
    e.click().await.unwrap();
}

/// The group ids of the table's rows, in order.
async fn rows(b: &Browser) -> Vec<String> {
    let mut out = Vec::new();
    for r in b
        .find_all(Locator::Css("#groups tbody tr[data-group]"))
        .await
        .unwrap_or_default()
    {
        if let Ok(Some(id)) = r.attr("data-group").await {
            out.push(id);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_lists_charts_and_freezes_in_chromium() {
    let Some((b, _driver)) = browser().await else {
        return;
    };
    let h = Harness::start_with(|c| {
        c + &format!("\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN_HASH}\"\n")
    })
    .await;
    let admin = h.admin_addr.unwrap();
    // some traffic, flushed so that the day's counts are in
    let p = "/tenant/integrationObjects?type=x";
    for (key, n) in [("key-tiny", 3), ("key-pro", 5), ("key-free", 2)] {
        for _ in 0..n {
            assert_eq!(h.get(p, Some(key)).await.status, 200);
        }
    }
    assert_eq!(
        h.get("/cdn/x?size=1234", Some("key-tiny")).await.status,
        200
    );
    h.wait_bytes("key-tiny", 1234).await;
    tokio::task::block_in_place(|| h.gw.store().flush().unwrap());
    let (tiny, pro) = (group_id("key-tiny"), group_id("key-pro"));

    let result = async {
        b.goto(&format!("http://{admin}/")).await.unwrap();
        until("the sign-in form", || async {
            visible(&b, "#signin").await.then_some(())
        })
        .await;
        screenshot(&b, "01-sign-in").await;

        // a wrong token: an error, and no data
        b.find(Locator::Css("#token"))
            .await
            .unwrap()
            .send_keys("wrong-token")
            .await
            .unwrap();
        click(&b, "#signin-form button[type=submit]").await;
        let error = until("the refusal", || async {
            text(&b, "#signin-error")
                .await
                .filter(|t| t.contains("refused"))
        })
        .await;
        assert!(error.contains("Missing or invalid admin token"), "{error}");
        assert!(!visible(&b, "#view-groups").await);
        assert!(rows(&b).await.is_empty());
        screenshot(&b, "02-wrong-token").await;

        // the right one: the seeded groups with their numbers
        b.find(Locator::Css("#token"))
            .await
            .unwrap()
            .send_keys("admin-secret")
            .await
            .unwrap();
        click(&b, "#signin-form button[type=submit]").await;
        let listed = until("the groups", || async {
            let r = rows(&b).await;
            (r.len() == 6).then_some(r)
        })
        .await;
        let mut ids: Vec<&str> = GROUPS
            .iter()
            .filter(|g| !g.2.is_empty())
            .map(|g| g.1)
            .collect();
        ids.sort();
        assert_eq!(listed, ids, "in id order");
        let calls = text(&b, &format!("tr[data-group='{tiny}'] td.calls"))
            .await
            .unwrap();
        assert_eq!(
            calls, "4 / 5",
            "3 calls and a CDN answer of the tiny tier's 5"
        );
        let bytes = text(&b, &format!("tr[data-group='{tiny}'] td.bytes"))
            .await
            .unwrap();
        assert_eq!(bytes, "1.23 KB / 1.50 KB");
        assert_eq!(
            text(&b, &format!("tr[data-group='{pro}'] td.calls"))
                .await
                .unwrap(),
            "5 / 500,000"
        );
        screenshot(&b, "03-groups").await;

        // sort by the share of the quota used, largest first
        click(&b, "button[data-sort='calls_used']").await;
        until("the sort", || async {
            (rows(&b).await.first().map(String::as_str) == Some(tiny)).then_some(())
        })
        .await;
        // search by part of an id
        b.find(Locator::Css("#search"))
            .await
            .unwrap()
            .send_keys(&pro[16..])
            .await
            .unwrap();
        until("the search", || async {
            (rows(&b).await == [pro]).then_some(())
        })
        .await;
        assert_eq!(text(&b, "#range").await.unwrap(), "1–1 of 1 groups");
        b.find(Locator::Css("#search"))
            .await
            .unwrap()
            .clear()
            .await
            .unwrap();
        b.find(Locator::Css("#search"))
            .await
            .unwrap()
            .send_keys(" ")
            .await
            .unwrap();
        until("the full list again", || async {
            (rows(&b).await.len() == 6).then_some(())
        })
        .await;

        // the daily chart has the day's calls (the harness's clock: the 15th)
        click(&b, &format!("tr[data-group='{tiny}'] .act-days")).await;
        let calls = until("the daily chart", || async {
            let bar = b
                .find(Locator::Css("#days-chart rect[data-day='15']"))
                .await
                .ok()?;
            bar.attr("data-calls").await.ok().flatten()
        })
        .await;
        assert_eq!(calls, "4");
        let title = text(&b, "#days-title").await.unwrap();
        assert!(title.contains(tiny) && title.contains("4 calls"), "{title}");
        screenshot(&b, "04-days").await;

        // traffic now
        click(&b, "#nav button[data-view='traffic']").await;
        until("the routes", || async {
            text(&b, "#routes tbody")
                .await
                .filter(|t| t.contains("/tenant/integrationObjects"))
        })
        .await;
        until("the requests-per-second chart", || async {
            visible(&b, "#rps-chart svg circle.dot").await.then_some(())
        })
        .await;
        screenshot(&b, "05-traffic").await;

        // freeze a group from the page, with a confirmation
        click(&b, "#nav button[data-view='groups']").await;
        click(&b, &format!("tr[data-group='{pro}'] .act-freeze")).await;
        until("the confirmation", || async {
            visible(&b, "#confirm").await.then_some(())
        })
        .await;
        screenshot(&b, "06-confirm").await;
        click(&b, "#confirm-ok").await;
        until("the frozen badge", || async {
            text(&b, &format!("tr[data-group='{pro}'] .badge"))
                .await
                .filter(|t| t == "frozen")
        })
        .await;
        screenshot(&b, "07-frozen").await;

        // the change is listed
        click(&b, "#nav button[data-view='changes']").await;
        let audit = until("the change list", || async {
            text(&b, "#audit tbody")
                .await
                .filter(|t| t.contains("status frozen"))
        })
        .await;
        assert!(
            audit.contains(&format!("PUT /groups/{pro}/status")),
            "{audit}"
        );
        screenshot(&b, "08-changes").await;
    }
    .await;
    b.close().await.unwrap();
    let () = result;

    // the gateway answers the frozen group's key with the contract's envelope
    assert_envelope(&h.get(p, Some("key-pro")).await, 400, "frozen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_with_strict_headers() {
    let h = Harness::start_with(|c| {
        c + &format!("\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN_HASH}\"\n")
    })
    .await;
    let a = h.admin_addr.unwrap();
    for (path, kind, needle) in [
        (
            "/",
            "text/html",
            "<script src=\"/console.js\" defer></script>",
        ),
        ("/console.js", "text/javascript", "sessionStorage"),
        ("/console.css", "text/css", ".badge"),
    ] {
        // no token needed: the files hold no data
        let r = Client::connect(a)
            .await
            .request(&format!("GET {path} HTTP/1.1\nHost: localhost"), b"")
            .await;
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
        assert!(r.text().contains(needle), "{path}");
        let csp = r.header("content-security-policy").unwrap();
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "connect-src 'self'",
        ] {
            assert!(csp.contains(part), "{csp}");
        }
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    }
    // the page has no inline script or style
    let page = Client::connect(a)
        .await
        .request("GET / HTTP/1.1\nHost: localhost", b"")
        .await
        .text();
    assert_eq!(page.matches("<script").count(), 1);
    assert!(!page.contains("<style") && !page.contains("style="));
    let handler = page.split(" on").skip(1).any(|rest| {
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase())
            .collect();
        !name.is_empty() && rest[name.len()..].starts_with('=')
    });
    assert!(!handler, "no inline event handler");
    // the data still needs the token, and a rebinding Host gets nothing
    assert_envelope(
        &Client::connect(a)
            .await
            .request("GET /usage HTTP/1.1\nHost: localhost", b"")
            .await,
        401,
        "admin token",
    );
    assert_envelope(
        &Client::connect(a)
            .await
            .request("GET / HTTP/1.1\nHost: evil.example", b"")
            .await,
        403,
        "host name",
    );
}
