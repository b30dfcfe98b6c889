//! `vivgate demo`: the gateway on 127.0.0.1:8080 in front of a built-in backend, with one demo
//! group per tier and status, and curl commands that show every answer of the contract.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use pingora::apps::http_app::HttpServer;
use tokio::net::TcpListener;

use crate::backend::Backend;
use crate::clock::SystemClock;
use crate::config;
use crate::gateway::Gateway;
use crate::keys::{format_key_hash, hash_key};
use crate::server::{health_checks, proxy_app, serve_counted};
use crate::usage::{MemoryStore, UsageStore};

/// A demo group: (plaintext key, group id, tier, status, overage billing, what it shows).
pub const DEMO_GROUPS: [(&str, &str, &str, &str, bool, &str); 7] = [
    (
        "demo-free-key",
        "000000000000000000000f01",
        "free",
        "active",
        false,
        "free tier, active",
    ),
    (
        "demo-basic-key",
        "000000000000000000000b01",
        "basic",
        "active",
        false,
        "basic tier, active",
    ),
    (
        "demo-pro-key",
        "000000000000000000000a01",
        "pro",
        "active",
        false,
        "pro tier, active",
    ),
    (
        "demo-proplus-key",
        "00000000000000000000aa01",
        "pro_plus",
        "active",
        true,
        "pro_plus, overage billing on",
    ),
    (
        "demo-tiny-key",
        "0000000000000000000071a1",
        "demo_tiny",
        "active",
        false,
        "3 calls a month, to show 402",
    ),
    (
        "demo-frozen-key",
        "00000000000000000000f0f0",
        "free",
        "frozen",
        false,
        "frozen group",
    ),
    (
        "demo-deactivated-key",
        "00000000000000000000dead",
        "free",
        "deactivated",
        false,
        "deactivated group",
    ),
];

/// The demo's config: the one the tests use (`tests/fixtures/vivgate.toml`), on `listen`, routed
/// to a backend at `backend` and with the `/offline/` upstream at `offline`.
pub fn demo_config(listen: SocketAddr, backend: SocketAddr, offline: SocketAddr) -> String {
    include_str!("../tests/fixtures/vivgate.toml")
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{listen}\""),
        )
        .replace("{backend}", &backend.to_string())
        .replace("{offline}", &offline.to_string())
}

/// The demo's tenants file, with the hashes of [`DEMO_GROUPS`]' keys.
pub fn demo_tenants() -> String {
    let mut out = String::new();
    for (key, id, tier, status, overage, what) in DEMO_GROUPS {
        out.push_str(&format!(
            "# {what}\n[[groups]]\nid = \"{id}\"\ntier = \"{tier}\"\nstatus = \"{status}\"\noverage_billing = {overage}\nkeys = [\"{}\"]\n\n",
            format_key_hash(&hash_key(key.as_bytes()))
        ));
    }
    out
}

/// A fresh admin token: 32 bytes from the OS's random source, in hex.
fn new_token() -> Result<String, Box<dyn std::error::Error>> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| format!("no random bytes for the admin token: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Runs the demo until Ctrl-C: the gateway on `listen`, the admin API and console on `admin`.
pub fn run(listen: SocketAddr, admin: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    if !admin.ip().is_loopback() {
        return Err(format!(
            "--admin {admin}: the demo's admin listener must be a loopback address"
        )
        .into());
    }
    let token = new_token()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let gw_listener = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let backend_listener = TcpListener::bind("127.0.0.1:0").await?;
        let backend_addr = backend_listener.local_addr()?;
        // a loopback port where nothing listens, for the 502 example
        let offline_addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
        let config = format!(
            "{}\n[admin]\nlisten = \"{admin}\"\ntoken = \"{}\"\n",
            demo_config(listen, backend_addr, offline_addr),
            format_key_hash(&hash_key(token.as_bytes()))
        );
        let snap = config::load_from_str(
            Path::new("<demo>/vivgate.toml"),
            &config,
            Path::new("<demo>/tenants.toml"),
            &demo_tenants(),
        )?;
        let gw = Arc::new(Gateway::new(
            snap,
            MemoryStore::counting_days(),
            Arc::new(SystemClock),
            None,
        ));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let backend = Arc::new(HttpServer::new_app(Backend::new()));
        // the demo stops as the gateway does: no new connections, the requests in flight
        // answered (at most the runner's default grace period)
        let (backend_open, gateway_open) = (Arc::default(), Arc::default());
        tokio::spawn(serve_counted(
            backend_listener,
            backend,
            stop_rx.clone(),
            Arc::clone(&backend_open),
        ));
        tokio::spawn(health_checks(gw.clone(), stop_rx.clone()));
        // the memory store credits its days at each flush, as the runner's flush task does
        let flusher = gw.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let gw = flusher.clone();
                let _ = tokio::task::spawn_blocking(move || gw.store().flush()).await;
            }
        });
        let (admin_addr, admin_thread) = crate::server::admin_listener::start(
            &admin.to_string(),
            gw.clone(),
            false,
            stop_rx.clone(),
        )
        .map_err(|e| format!("the demo's admin listener: {e}"))?;
        let admin_addr = admin_addr.unwrap_or(admin);
        let gateway = tokio::spawn(serve_counted(
            gw_listener,
            proxy_app(gw),
            stop_rx,
            Arc::clone(&gateway_open),
        ));
        println!("{}", instructions(listen, backend_addr, admin_addr, &token));
        tokio::signal::ctrl_c().await?;
        let _ = stop_tx.send(true);
        let _ = gateway.await;
        let open =
            |c: &Arc<std::sync::atomic::AtomicUsize>| c.load(std::sync::atomic::Ordering::Acquire);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while (open(&gateway_open) > 0 || open(&backend_open) > 0)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let _ = tokio::task::spawn_blocking(move || admin_thread.join()).await;
        println!("vivgate demo stopped");
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

fn instructions(listen: SocketAddr, backend: SocketAddr, admin: SocketAddr, token: &str) -> String {
    let base = format!("http://{listen}");
    let id = "651f0c2ab4e8a90012345678";
    let mut s = format!(
        "vivgate demo: gateway on {base}, demo backend on http://{backend}\n\
         console and admin API on http://{admin}/ (admin token, new at every start: {token})\n\nDemo keys:\n"
    );
    for (key, id, tier, status, overage, what) in DEMO_GROUPS {
        s.push_str(&format!(
            "  {key:<22} group {id}  tier {tier:<9} {status:<11}{}  ({what})\n",
            if overage { " overage" } else { "" }
        ));
    }
    let pro = "-H 'Authorization: Bearer demo-pro-key'";
    let rows = [
        ("200 forwarded", format!("curl -i {pro} '{base}/tenant/collectionObjects?collectionId={id}'")),
        ("401 missing key", format!("curl -i '{base}/tenant/collectionObjects?collectionId={id}'")),
        ("401 invalid key", format!("curl -i -H 'Authorization: Bearer nope' '{base}/tenant/siteDetails?siteId={id}'")),
        ("400 frozen group", format!("curl -i -H 'Authorization: Bearer demo-frozen-key' '{base}/tenant/siteDetails?siteId={id}'")),
        ("403 deactivated group", format!("curl -i -H 'Authorization: Bearer demo-deactivated-key' '{base}/tenant/siteDetails?siteId={id}'")),
        ("404 unknown path", format!("curl -i {pro} '{base}/tenant/nothing'")),
        ("405 wrong method", format!("curl -i -X DELETE {pro} '{base}/tenant/siteDetails?siteId={id}'")),
        ("400 missing parameter", format!("curl -i {pro} '{base}/tenant/integrationObjects'")),
        ("404 malformed ID", format!("curl -i {pro} '{base}/tenant/collectionObjects?collectionId=123'")),
        ("400 invalid JSON", format!("curl -i {pro} -H 'Content-Type: application/json' -d '{{oops' '{base}/tenant/collectionObjects'")),
        ("200 valid JSON", format!("curl -i {pro} -H 'Content-Type: application/json' -d '{{\"title\": \"hi\"}}' '{base}/tenant/collectionObjects'")),
        ("402 quota (4th call)", format!("for i in 1 2 3 4; do curl -s -H 'Authorization: Bearer demo-tiny-key' '{base}/tenant/integrationObjects?type=x'; echo; done")),
        ("CDN bytes metered", format!("curl -si {pro} '{base}/cdn/logo.png?size=2048' | head -n 12")),
        ("200 the group's own usage (not metered)", format!("curl -s {pro} '{base}/v1/usage'")),
        ("502 backend unreachable", format!("curl -i {pro} '{base}/offline/x'")),
        ("504 backend too slow", format!("curl -i {pro} '{base}/slow/report?ms=3000'")),
    ];
    s.push_str("\nTry:\n");
    for (what, cmd) in rows {
        s.push_str(&format!("  # {what}\n  {cmd}\n"));
    }
    let auth = format!("-H 'Authorization: Bearer {token}'");
    let a = format!("http://{admin}");
    let admin_rows = [
        ("the console: open it in a browser and paste the token", format!("{a}/")),
        ("usage of every group this month, most calls first", format!("curl -s {auth} '{a}/usage?sort=calls:desc&limit=10'")),
        ("freeze the basic group (its key then gets 400 frozen)", format!("curl -s -X PUT {auth} -d '{{\"status\": \"frozen\"}}' '{a}/groups/000000000000000000000b01/status'")),
        ("unfreeze it (the tenants say active: the override goes)", format!("curl -s -X PUT {auth} -d '{{\"status\": \"active\"}}' '{a}/groups/000000000000000000000b01/status'")),
        ("Prometheus metrics", format!("curl -s {auth} '{a}/metrics' | grep vivgate_requests_total")),
    ];
    s.push_str("\nAdmin API:\n");
    for (what, cmd) in admin_rows {
        s.push_str(&format!("  # {what}\n  {cmd}\n"));
    }
    s.push_str("\nCtrl-C stops the demo.");
    s
}
