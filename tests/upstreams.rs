//! Several servers per upstream: round robin, one retry of a failed connect on another server,
//! active health checks that take a dead server out of the rotation, passive health (consecutive
//! connect failures), and a 503 with `Retry-After` when every server is down.

mod common;

use std::time::Duration;

use common::*;

const P: &str = "/pair/x";

fn with_pair(servers: [std::net::SocketAddr; 2], health_ms: u64) -> impl FnOnce(String) -> String {
    with_pair_and(servers, health_ms, "")
}

/// Like [`with_pair`], with more `[upstreams.pair]` lines.
fn with_pair_and(
    servers: [std::net::SocketAddr; 2],
    health_ms: u64,
    upstream_lines: &'static str,
) -> impl FnOnce(String) -> String {
    move |c: String| {
        c + &format!(
            r#"
[upstreams.pair]
servers = ["{}", "{}"]
connect_timeout_ms = 300
health_check_interval_ms = {health_ms}
{upstream_lines}

[[routes]]
prefix = "/pair/"
methods = ["GET"]
upstream = "pair"
"#,
            servers[0], servers[1]
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_spread_round_robin() {
    let (b1, a1, _s1) = extra_backend().await;
    let (b2, a2, _s2) = extra_backend().await;
    let h = Harness::start_with(with_pair([a1, a2], 0)).await;
    for _ in 0..6 {
        let r = h.get(P, Some("key-pro")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["data"]["uri"], P);
    }
    assert_eq!((b1.received().len(), b2.received().len()), (3, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_is_retried_once_on_another_server() {
    let (live, a, _s) = extra_backend().await;
    let h = Harness::start_with(with_pair([dead_addr().await, a], 0)).await;
    for _ in 0..6 {
        let r = h.get(P, Some("key-pro")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["data"]["group"], group_id("key-pro"));
    }
    assert_eq!(live.received().len(), 6);
    assert_eq!(h.usage("key-pro").calls, 6, "each request counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_a_dead_server_out_and_all_dead_is_503() {
    let (live, a, _s) = extra_backend().await;
    let dead = dead_addr().await;
    let h = Harness::start_with(with_pair([dead, a], 100)).await;
    let up = |snap: &vivgate::config::Snapshot| {
        snap.upstreams
            .iter()
            .find(|u| u.name == "pair")
            .unwrap()
            .lb
            .clone()
    };
    let lb = up(&h.gw.snapshot());
    let start = std::time::Instant::now();
    loop {
        let backends = lb.backends().get_backend();
        let dead_b = backends
            .iter()
            .find(|b| b.addr.as_inet() == Some(&dead))
            .unwrap();
        if !lb.backends().ready(dead_b) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the health check never marked the dead server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..4 {
        assert_eq!(h.get(P, Some("key-pro")).await.status, 200);
    }
    assert_eq!(live.received().len(), 4);

    // both servers down: 503 at once, with Retry-After, and nothing is charged
    drop(_s);
    drop(live);
    let h2 = Harness::start_with(with_pair([dead, dead_addr().await], 100)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = h2.get(P, Some("key-pro")).await;
    assert_envelope(&r, 503, "no healthy upstream server");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(h2.usage("key-pro").calls, 0);
}

/// Runs `f` on the passive health of upstream `pair`.
fn pair_health<R>(h: &Harness, f: impl FnOnce(&vivgate::health::ServerHealth) -> R) -> R {
    let snap = h.gw.snapshot();
    f(&snap
        .upstreams
        .iter()
        .find(|u| u.name == "pair")
        .unwrap()
        .health)
}

fn is_down(h: &Harness, addr: &std::net::SocketAddr) -> bool {
    pair_health(h, |p| p.is_down(addr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_health_marks_a_failing_server_down_and_all_down_is_503() {
    // no active checks: connect failures alone take the dead server out
    let (live, a, _s) = extra_backend().await;
    let dead = dead_addr().await;
    let h = Harness::start_with(with_pair_and(
        [dead, a],
        0,
        "passive_failures = 2\npassive_down_ms = 60000",
    ))
    .await;
    for _ in 0..8 {
        let r = h.get(P, Some("key-pro")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(is_down(&h, &dead));
    assert!(!is_down(&h, &a));
    assert_eq!(live.received().len(), 8);
    let m = h.gw.metrics().render(0);
    assert!(
        m.contains("vivgate_upstream_servers_marked_down_total 1"),
        "{m}"
    );

    // every server failing: the first request finds out (502), later ones get a 503 at once
    let dead2 = dead_addr().await;
    let h2 = Harness::start_with(with_pair_and(
        [dead, dead2],
        0,
        "passive_failures = 1\npassive_down_ms = 60000",
    ))
    .await;
    assert_envelope(&h2.get(P, Some("key-pro")).await, 502, "unreachable");
    let started = std::time::Instant::now();
    let r = h2.get(P, Some("key-pro")).await;
    assert_envelope(&r, 503, "no healthy upstream server");
    assert_eq!(r.header("retry-after"), Some("60"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "at once, without a connect attempt"
    );
    assert_eq!(h2.usage("key-pro").calls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_marked_down_comes_back_after_a_successful_active_check() {
    let (live, a, _s) = extra_backend().await;
    let reserved = Reserved::new();
    let revived = reserved.addr;
    let h = Harness::start_with(with_pair_and([revived, a], 300, "passive_failures = 1")).await;
    // the active check takes the dead server out at once; passive health marks it down too,
    // as a connect failure between two checks would
    assert!(pair_health(&h, |p| p.failed(&revived)));
    for _ in 0..2 {
        assert_eq!(h.get(P, Some("key-pro")).await.status, 200);
    }
    assert!(is_down(&h, &revived));
    assert_eq!(live.received().len(), 2);

    // the server comes up; the next active check brings it back into the rotation
    let backend = vivgate::backend::Backend::new();
    let l = tokio::net::TcpListener::bind(reserved.release())
        .await
        .unwrap();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(vivgate::server::serve(
        l,
        std::sync::Arc::new(pingora::apps::http_app::HttpServer::new_app(
            backend.clone(),
        )),
        rx,
    ));
    wait_for("the revived server to be back", || {
        let down = is_down(&h, &revived);
        async move { !down }
    })
    .await;
    for _ in 0..4 {
        assert_eq!(h.get(P, Some("key-pro")).await.status, 200);
    }
    assert!(
        !backend.received().is_empty(),
        "the revived server serves again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_verify_the_server_certificate() {
    let ca = common::tls::TestCa::default();
    let (backend, addr, _stop) = common::tls::tls_backend(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let other_file = dir.path().join("other.pem");
    std::fs::write(&other_file, common::tls::TestCa::new("other").pem()).unwrap();
    let upstream = |name: &str, ca: &std::path::Path, sni: &str| {
        format!(
            "\n[upstreams.{name}]\nservers = [\"{addr}\"]\ntls = true\nsni = \"{sni}\"\n\
             ca_file = {:?}\nhealth_check_interval_ms = 0\npassive_failures = 0\n\
             \n[[routes]]\nprefix = \"/{name}/\"\nmethods = [\"GET\"]\nupstream = \"{name}\"\n",
            ca.display().to_string()
        )
    };
    let tail = upstream("good", &ca_file, "localhost")
        + &upstream("untrusted", &other_file, "localhost")
        + &upstream("misnamed", &ca_file, "api.example.com");
    let h = Harness::start_with(move |c| c + &tail).await;
    for _ in 0..3 {
        let r = h.get("/good/x?y=1", Some("key-pro")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["data"]["uri"], "/good/x?y=1");
    }
    assert_eq!(backend.received().len(), 3);
    // a certificate from another CA, or for another name, is never talked to
    for p in ["/untrusted/x", "/misnamed/x"] {
        let r = h.get(p, Some("key-pro")).await;
        assert_envelope(&r, 502, "unreachable");
    }
    assert_eq!(backend.received().len(), 3);
    assert_eq!(
        h.usage("key-pro").calls,
        3,
        "failed handshakes are not charged"
    );
}

/// A port that first refuses connections and later, when told, accepts them and counts them
/// (each is closed at once): a connection attempt to it can be seen.
struct Watched {
    addr: std::net::SocketAddr,
    reserved: std::sync::Mutex<Option<Reserved>>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Watched {
    async fn refusing() -> Watched {
        let r = Reserved::new();
        Watched {
            addr: r.addr,
            reserved: std::sync::Mutex::new(Some(r)),
            accepted: Default::default(),
        }
    }

    /// From now on the port accepts and counts.
    async fn listen(&self) {
        let r = self.reserved.lock().unwrap().take().unwrap();
        let l = tokio::net::TcpListener::bind(r.release()).await.unwrap();
        let n = self.accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(s);
            }
        });
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_marked_down_stays_down_across_a_reload() {
    let (live, a, _s) = extra_backend().await;
    let down = Watched::refusing().await;
    let h = Harness::start_with(with_pair_and(
        [down.addr, a],
        0,
        "passive_failures = 2\npassive_down_ms = 60000",
    ))
    .await;
    for _ in 0..6 {
        assert_eq!(h.get(P, Some("key-pro")).await.status, 200);
    }
    assert!(is_down(&h, &down.addr));
    // from here on a connection attempt to it would be seen
    down.listen().await;
    // a reload that changes something else (a tier is added)
    let config = std::fs::read_to_string(h.dir.path().join("vivgate.toml")).unwrap();
    h.write_config(&format!(
        "{config}\n[tiers.extra]\napi_calls = 10\ncdn_bytes = 10\n"
    ));
    h.gw.reload().unwrap();
    assert!(is_down(&h, &down.addr), "still down after the reload");
    let before = live.received().len();
    for _ in 0..6 {
        assert_eq!(h.get(P, Some("key-pro")).await.status, 200);
    }
    assert_eq!(down.accepted(), 0, "the server marked down was not tried");
    assert_eq!(live.received().len(), before + 6);

    // a server whose address changed is another server: it starts up
    let (_live2, b, _s2) = extra_backend().await;
    let config = std::fs::read_to_string(h.dir.path().join("vivgate.toml")).unwrap();
    h.write_config(&config.replace(&a.to_string(), &b.to_string()));
    h.gw.reload().unwrap();
    assert!(!is_down(&h, &b), "a new server starts up");
    assert!(is_down(&h, &down.addr), "the same dead one stays down");
}
