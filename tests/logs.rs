//! No log line carries an API key or a query value: the real binary at the most verbose log
//! level (`RUST_LOG=trace`, pingora's targets asked for trace too), through every attack class
//! that logs something — malformed heads, unknown and malformed keys, key guessing, upstream
//! failures and timeouts, oversize heads, slow clients — over HTTP/1.1, and over HTTP/2 on TLS
//! and h2c.

mod common;

use std::time::Duration;

use common::*;

const SECRET_KEY: &str = "sEcReTkEy0123456789";
const SECRET_VALUE: &str = "qUeRyVaLuE9876543210";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_or_query_value_reaches_the_log() {
    let h = Harness::start().await;
    let port = free_port().await;
    let tls_port = free_port().await;
    let ca = common::tls::TestCa::default();
    let (cert, key) = ca.write(h.dir.path(), "localhost", &["localhost"]);
    let config = h.binary_config(
        "logs.toml",
        port,
        "grace_period_seconds = 1\nh2c = true",
        &format!(
            "[limits]\nhead_timeout_ms = 1000\nfailed_auth_limit = 3\nfailed_auth_block_ms = 500\n\
             [[server.tls]]\nlisten = \"127.0.0.1:{tls_port}\"\ncert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    );
    let log = h.dir.path().join("vivgate.log");
    let mut child = spawn_binary_logging(
        &config,
        &[],
        &[(
            "RUST_LOG",
            "trace,pingora_core=trace,pingora_proxy=trace,pingora_http=trace,\
             pingora_proxy::proxy_h1=trace,pingora_core::protocols::http::v1::server=trace,\
             h2=trace,h2::codec=trace,rustls=trace",
        )],
        port,
        Some(&log),
    )
    .await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let send = |bytes: Vec<u8>| async move {
        let mut c = Client::connect(addr).await;
        c.send_raw(&bytes).await;
        c.try_read_response().await
    };
    let q = format!("token={SECRET_VALUE}&collectionId={SECRET_VALUE}");
    let attacks: Vec<(String, Option<u16>)> = vec![
        // served, and failing upstreams (pingora logs a summary of those at ERROR)
        (format!("GET /status/200?{q} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\n\r\n"), Some(200)),
        (format!("GET /offline/x?{q} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\n\r\n"), Some(502)),
        (format!("GET /slow/x?ms=2000&{q} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\n\r\n"), Some(504)),
        (format!("GET /tenant/collectionObjects?{q} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\n\r\n"), Some(404)),
        // malformed heads carrying a key and a query value
        (format!("GET /status/200?{q} HTTP/1.1\r\nHost: t\nAuthorization: Bearer {SECRET_KEY}\r\n\r\n"), Some(400)),
        (format!("POST /status/200?{q} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {SECRET_KEY}\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"), Some(400)),
        (format!("GET /status/200?{q} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {SECRET_KEY}\r\n folded\r\n\r\n"), Some(400)),
        (format!("GET /status/200?{q} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {SECRET_KEY}\r\nX: {}\r\n\r\n", "a".repeat(40_000)), Some(431)),
        (format!("GET /cdn/../x?{q} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {SECRET_KEY}\r\n\r\n"), Some(400)),
        (format!("G\x01T /status/200?{q} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {SECRET_KEY}\r\n\r\n"), Some(400)),
        (format!("GET /status/200?{q} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {SECRET_KEY}"), Some(408)),
        // unknown, malformed, and guessed keys (the third guess starts a block)
        (format!("GET /status/200?{q} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {SECRET_KEY}\r\n\r\n"), Some(401)),
        (format!("GET /status/200?{q} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer  {SECRET_KEY}\u{e9}\r\n\r\n"), Some(401)),
        (format!("GET /status/200?{q} HTTP/1.1\r\nHost: t\r\nAuthorization: {SECRET_KEY}\r\n\r\n"), Some(401)),
        (format!("GET /status/200?{q} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\n\r\n"), Some(429)),
    ];
    for (bytes, status) in attacks {
        let resp = send(bytes.clone().into_bytes()).await;
        assert_eq!(
            resp.map(|r| r.status),
            status,
            "{}",
            &bytes[..bytes.len().min(60)]
        );
    }
    // the same secrets over HTTP/2: on TLS (ALPN h2) and on the plain listener (h2c)
    let tls_addr: std::net::SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    // pingora starts each listener's service on its own runtime: the TLS one may come up later
    wait_for("the TLS listener", || async {
        tokio::net::TcpStream::connect(tls_addr).await.is_ok()
    })
    .await;
    let tls = ca.connect(tls_addr, "localhost", &[b"h2"]).await.unwrap();
    let over_tls = common::tls::h2_handshake(tls).await;
    let over_h2c =
        common::tls::h2_handshake(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
    tokio::time::sleep(Duration::from_millis(600)).await; // the key-guessing block ends
    for send in [over_tls, over_h2c] {
        let secret_auth = format!("Bearer {SECRET_KEY}").into_bytes();
        type Attack<'a> = (String, Vec<(&'a str, &'a [u8])>, u16);
        let h2_attacks: Vec<Attack> = vec![
            (
                format!("/status/200?{q}"),
                vec![("authorization", b"Bearer key-pro")],
                200,
            ),
            (
                format!("/offline/x?{q}"),
                vec![("authorization", b"Bearer key-pro")],
                502,
            ),
            (
                format!("/cdn/../x?{q}"),
                vec![("authorization", &secret_auth)],
                400,
            ),
            (
                format!("/status/200?{q}"),
                vec![("authorization", &secret_auth)],
                401,
            ),
        ];
        for (target, headers, status) in h2_attacks {
            match common::tls::h2_send(&send, "GET", &target, &headers, b"").await {
                common::tls::H2Outcome::Answered(r) => assert_eq!(r.status, status, "{target}"),
                other => panic!("{target}: {other:?}"),
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = wait_exit(&mut child, Some(libc::SIGTERM), Duration::from_secs(15)).await;
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    // the log is really at trace level and saw the traffic
    assert!(text.contains("vivgate starting"), "{text}");
    assert!(text.contains("DEBUG"), "debug lines are written: {text}");
    assert!(
        text.contains("/offline/x"),
        "upstream failures are logged (path only)"
    );
    assert!(text.contains("client blocked after failed authentications"));
    for secret in [SECRET_KEY, SECRET_VALUE, "key-pro", "Bearer"] {
        let hits: Vec<&str> = text.lines().filter(|l| l.contains(secret)).collect();
        assert!(hits.is_empty(), "{secret:?} is in the log: {hits:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_goes_down_is_logged_in_one_line() {
    let h = Harness::start().await;
    let port = free_port().await;
    let config = h.binary_config("health.toml", port, "grace_period_seconds = 0", "");
    let text = std::fs::read_to_string(&config).unwrap();
    let checked = text.replace(
        "connect_timeout_ms = 300\nhealth_check_interval_ms = 0",
        "connect_timeout_ms = 300\nhealth_check_interval_ms = 100",
    );
    assert_ne!(checked, text, "the fixture's dead upstream");
    std::fs::write(&config, checked).unwrap();
    let log = h.dir.path().join("health.log");
    let mut child = spawn_binary_logging(&config, &[], &[], port, Some(&log)).await;
    wait_for("the health check's line", || async {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("server down"))
    })
    .await;
    wait_exit(
        &mut child,
        Some(libc::SIGTERM),
        std::time::Duration::from_secs(10),
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text.lines().find(|l| l.contains("server down")).unwrap();
    assert!(
        line.contains("upstream=dead") && line.contains("server=127.0.0.1:"),
        "{line}"
    );
    assert!(
        !text.contains("PeerOptions") && !text.contains("BasicPeer"),
        "{text}"
    );
    assert!(text.lines().all(|l| l.len() < 400), "{text}");
}
