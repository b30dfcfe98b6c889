//! The edge for real: TLS termination (SNI, ALPN, rotation by reload, bad certificates), HTTP/2
//! over TLS and h2c with the same pipeline and envelopes, the PROXY protocol, and a chunked
//! HTTP/2 upload that must not poison the backend pool (pingora issue #935).

mod common;

use std::time::Duration;

use common::tls::{h2_handshake, read_h2_response, TestCa};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn cobj() -> String {
    format!("/tenant/collectionObjects?collectionId={OID}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_speaks_http1_and_h2_by_alpn_with_the_same_pipeline() {
    let h = Harness::start_tls_with(|c| c).await;

    // HTTP/1.1 over TLS
    let mut c = h.tls_client().await;
    let ok = c.get(&cobj(), Some("key-pro")).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["data"]["group"], group_id("key-pro"));
    assert_envelope(
        &c.get(&cobj(), None).await,
        401,
        "Missing Authorization header",
    );
    // the same connection carries on after a rejection
    assert_eq!(c.get(&cobj(), Some("key-pro")).await.status, 200);

    // HTTP/2 over TLS: one connection, several streams, envelopes and forwarding alike
    let mut c = h.h2_client().await;
    let ok = c.get(&cobj(), Some("key-pro")).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["data"]["tier"], "pro");
    assert!(ok.header("ratelimit").is_some());
    assert_envelope(
        &c.get(&cobj(), Some("nope")).await,
        401,
        "Invalid or revoked API key",
    );
    assert_envelope(
        &c.get(&cobj(), Some("key-frozen")).await,
        400,
        "This group account is frozen",
    );
    assert_envelope(
        &c.get("/tenant/collectionObjects", Some("key-pro")).await,
        400,
        "collectionId",
    );
    assert_envelope(
        &c.get(
            "/tenant/collectionObjects?collectionId=zzz",
            Some("key-pro"),
        )
        .await,
        404,
        "",
    );
    assert_envelope(&c.get("/nowhere", Some("key-pro")).await, 404, "");
    let bad_json = c
        .post("/tenant/collectionObjects", "key-pro", b"{\"a\":")
        .await;
    assert_envelope(&bad_json, 400, "Invalid JSON");

    let got = h.backend.received();
    assert_eq!(got.len(), 3, "only the valid requests reach the backend");
    for r in &got {
        assert_eq!(r.uri, cobj());
        assert_eq!(r.header("authorization"), None);
        assert_eq!(r.header("x-vivreal-group-id"), Some(group_id("key-pro")));
        assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
    }
    assert_eq!(h.usage("key-pro").calls, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_and_http1_share_the_plain_listener() {
    let h = Harness::start_tls_with(|c| c).await;
    let addr = h.h2c_addr.unwrap();
    let mut c = Client::h2(h2_handshake(TcpStream::connect(addr).await.unwrap()).await);
    let ok = c.get(&cobj(), Some("key-pro")).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_envelope(&c.get(&cobj(), None).await, 401, "Missing Authorization");

    // HTTP/1.1 still works there, including a head that arrives in small pieces
    let mut c = Client::connect(addr).await;
    c.send_raw(b"GET /tenant/coll").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = c
        .request(
            &format!(
                "ectionObjects?collectionId={OID} HTTP/1.1\nHost: t\nAuthorization: Bearer key-pro"
            ),
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // and the hostile checks of the front still apply to HTTP/1 there
    let mut c = Client::connect(addr).await;
    let r = c
        .request(
            "GET / HTTP/1.1\nHost: t\nContent-Length: 1\nContent-Length: 2",
            b"",
        )
        .await;
    assert_envelope(&r, 400, "Bad request");
    assert_eq!(h.backend.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_stream_and_header_limits_hold() {
    let h = Harness::start_tls_with(|c| {
        c + "\n[limits]\nh2_max_concurrent_streams = 7\nh2_max_header_list_bytes = 4096\n"
    })
    .await;
    let (ca, addr) = (h.ca.as_ref().unwrap(), h.tls_addr.unwrap());
    let tls = ca.connect(addr, "localhost", &[b"h2"]).await.unwrap();
    let send = h2_handshake(tls).await;
    let mut send = send.ready().await.unwrap();
    // the server's SETTINGS arrive with the first exchange
    let mut c = Client::h2(send.clone());
    assert_eq!(c.get(&cobj(), Some("key-pro")).await.status, 200);
    assert_eq!(send.current_max_send_streams(), 7);

    // a header list over the limit never reaches the backend
    let req = http::Request::builder()
        .uri(format!("https://localhost{}", cobj()))
        .header("authorization", "Bearer key-pro")
        .header("x-big", "a".repeat(8000))
        .body(())
        .unwrap();
    let refused = match send.send_request(req, true) {
        Ok((resp, _)) => read_h2_response(resp).await,
        Err(_) => None,
    };
    if let Some(r) = &refused {
        assert_eq!(r.status, 431, "{}", r.text());
    }
    assert_eq!(h.backend.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_h2_upload_does_not_poison_the_backend_pool() {
    let h = Harness::start_tls_with(|c| c).await;
    let mut c = h.h2_client().await;
    for round in 0..4 {
        // a JSON route (buffered and validated) and a streamed route, in turn
        let path = if round % 2 == 0 {
            "/tenant/collectionObjects"
        } else {
            "/status/200"
        };
        // no content-length: the body arrives in DATA frames and goes upstream chunked
        let ca = h.ca.as_ref().unwrap();
        let tls = ca
            .connect(h.tls_addr.unwrap(), "localhost", &[b"h2"])
            .await
            .unwrap();
        let send = h2_handshake(tls).await;
        let mut send = send.ready().await.unwrap();
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("https://localhost{path}"))
            .header("authorization", "Bearer key-pro")
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let (resp, mut body) = send.send_request(req, false).unwrap();
        body.send_data(bytes::Bytes::from_static(b"{\"title\":"), false)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        body.send_data(bytes::Bytes::from(format!("\"post {round}\"}}")), true)
            .unwrap();
        let r = read_h2_response(resp).await.unwrap();
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        // the pooled backend connection serves the next request correctly
        let r = c.get(&cobj(), Some("key-pro")).await;
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
    }
    let got = h.backend.received();
    let posts: Vec<_> = got.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(posts.len(), 4);
    for (i, p) in posts.iter().enumerate() {
        assert_eq!(p.body, format!("{{\"title\":\"post {i}\"}}").as_bytes());
    }
    assert_eq!(got.iter().filter(|r| r.method == "GET").count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_certificate_and_a_reload_rotates_it() {
    let ca = TestCa::default();
    let dir = tempfile::tempdir().unwrap();
    let (a_cert, a_key) = ca.write(dir.path(), "a", &["a.test", "127.0.0.1"]);
    let (b_cert, b_key) = ca.write(dir.path(), "b", &["*.b.test"]);
    let section = format!(
        "\n[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n\
         \n[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
        a_cert.display().to_string(),
        a_key.display().to_string(),
        b_cert.display().to_string(),
        b_key.display().to_string(),
    );
    let h = Harness::start_tls_with(move |c| c + &section).await;
    let addr = h.tls_addr.unwrap();
    let pem_der = |path: &std::path::Path| {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_file(path)
            .unwrap()
            .to_vec()
    };
    let localhost = pem_der(&h.dir.path().join("localhost.pem"));
    let a = pem_der(&a_cert);
    let b = pem_der(&b_cert);
    assert_eq!(ca.presented(addr, "a.test").await.unwrap(), a);
    assert_eq!(ca.presented(addr, "api.b.test").await.unwrap(), b);
    let harness_ca = h.ca.as_ref().unwrap();
    assert_eq!(
        harness_ca.presented(addr, "localhost").await.unwrap(),
        localhost
    );
    // a client that sends no SNI (an address) gets the first certificate
    assert_eq!(ca.presented(addr, "127.0.0.1").await.unwrap(), a);
    // a client that wants a name no certificate covers fails verification
    assert!(ca.presented(addr, "c.test").await.is_err());

    // rotation: new files, then a reload; the next handshake has the new certificate
    let (new_a, _) = ca.write(dir.path(), "a", &["a.test", "127.0.0.1"]);
    let rotated = pem_der(&new_a);
    assert_ne!(rotated, a);
    let report = h.gw.reload().unwrap();
    assert_eq!(report.certificates, [3, 3]);
    assert_eq!(
        report.certificates_new, 1,
        "the reload reports the rotation"
    );
    assert_eq!(ca.presented(addr, "a.test").await.unwrap(), rotated);

    // a certificate whose key does not match is refused, and the running one stays
    let other = TestCa::new("other");
    let (_, wrong_key) = other.issue(&["a.test"]);
    std::fs::write(&a_key, wrong_key).unwrap();
    let e = h.gw.reload().unwrap_err().to_string();
    assert!(e.contains("server.tls[0].key"), "{e}");
    assert_eq!(ca.presented(addr, "a.test").await.unwrap(), rotated);
    let mut c = h.tls_client().await;
    assert_eq!(c.get(&cobj(), Some("key-pro")).await.status, 200);

    // listeners are built at start: a reload that changes one is refused, naming it
    ca.write(dir.path(), "a", &["a.test", "127.0.0.1"]);
    let config_path = h.dir.path().join("vivgate.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        config.replace("[server]", "[server]\nh2c = true"),
    )
    .unwrap();
    let e = h.gw.reload().unwrap_err().to_string();
    assert!(e.contains("server.h2c"), "{e}");
    std::fs::write(
        &config_path,
        config.replace(
            "[[server.tls]]\nlisten = \"127.0.0.1:0\"",
            "[[server.tls]]\nlisten = \"127.0.0.1:1\"",
        ),
    )
    .unwrap();
    let e = h.gw.reload().unwrap_err().to_string();
    assert!(e.contains("server.tls"), "{e}");
}

#[test]
fn bad_certificates_are_config_errors_naming_the_field() {
    let ca = TestCa::default();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.write(dir.path(), "ok", &["localhost"]);
    let (other_cert, _) = ca.write(dir.path(), "other", &["localhost"]);
    std::fs::write(dir.path().join("tenants.toml"), tenants_toml()).unwrap();
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate").unwrap();
    let check = |cert: &str, key: &str| {
        let config = format!(
            "tenants = \"tenants.toml\"\n[tiers.tiny]\napi_calls = 5\ncdn_bytes = 1500\n\
             [server]\nlisten = \"127.0.0.1:0\"\n\
             [[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = {cert:?}\nkey = {key:?}\n"
        );
        let path = dir.path().join("vivgate.toml");
        std::fs::write(&path, config).unwrap();
        let out = vivgate()
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    let (cert, key, other_cert) = (
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        other_cert.to_str().unwrap(),
    );
    let (ok, out) = check(cert, key);
    assert!(ok, "{out}");
    let (ok, out) = check("missing.pem", key);
    assert!(!ok && out.contains("server.tls[0].cert"), "{out}");
    let (ok, out) = check("garbage.pem", key);
    assert!(!ok && out.contains("server.tls[0].cert"), "{out}");
    let (ok, out) = check(cert, "missing.key");
    assert!(!ok && out.contains("server.tls[0].key"), "{out}");
    let (ok, out) = check(other_cert, key);
    assert!(
        !ok && out.contains("server.tls[0].key") && out.contains("does not match"),
        "{out}"
    );
}

/// A gateway whose plain listener expects a PROXY header, trusting `trusted`.
async fn proxy_protocol_harness(trusted: &str) -> (Harness, std::net::SocketAddr) {
    let trusted = trusted.to_string();
    let h = Harness::start_with(move |c| {
        c.replace(
            "[server]",
            &format!("[server]\ntrusted_proxies = [{trusted:?}]"),
        )
    })
    .await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let settings = vivgate::front::ListenerSettings {
        proxy_protocol: true,
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(vivgate::server::serve(
        l,
        vivgate::server::listener_app(h.gw.clone(), settings),
        rx,
    ));
    std::mem::forget(tx);
    (h, addr)
}

fn get_request() -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\n\r\n",
        cobj()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_names_the_client_from_trusted_peers_only() {
    let (h, addr) = proxy_protocol_harness("127.0.0.1/32").await;
    // v1, with the request in the same packet
    let mut c = Client::connect(addr).await;
    c.send_raw(
        format!(
            "PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n{}",
            get_request()
        )
        .as_bytes(),
    )
    .await;
    let r = c.read_response().await;
    assert_eq!(r.status, 200, "{}", r.text());
    // v2, IPv6, split across writes
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[0x21, 0x21, 0, 36]);
    let src: std::net::Ipv6Addr = "2001:db8::42".parse().unwrap();
    v2.extend_from_slice(&src.octets());
    v2.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    v2.extend_from_slice(&51000u16.to_be_bytes());
    v2.extend_from_slice(&443u16.to_be_bytes());
    let mut c = Client::connect(addr).await;
    c.send_raw(&v2[..10]).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.send_raw(&v2[10..]).await;
    c.send_raw(get_request().as_bytes()).await;
    let r = c.read_response().await;
    assert_eq!(r.status, 200, "{}", r.text());
    // the access log's client, the limiter's and the backend's are the PROXY source
    let got = h.backend.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].header("x-forwarded-for"), Some("203.0.113.7"));
    assert_eq!(got[1].header("x-forwarded-for"), Some("2001:db8::42"));

    // no header, or garbage: closed without an answer, nothing forwarded
    for bytes in [get_request(), "PROXY TCP4 nonsense\r\n\r\n".to_string()] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf));
    }
    assert_eq!(h.backend.received().len(), 2);

    // a peer that is not a trusted proxy may not name a client
    let (h, addr) = proxy_protocol_harness("10.9.9.9/32").await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n{}",
            get_request()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    assert_eq!(h.backend.received().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_silent_http2_clients_are_timed_out() {
    let h = Harness::start_tls_with(|c| c + "\n[limits]\nhead_timeout_ms = 300\n").await;
    let (ca, addr) = (h.ca.as_ref().unwrap(), h.tls_addr.unwrap());

    // TLS done, h2 agreed, then silence: the preface is due within the head timeout
    let mut tls = ca.connect(addr, "localhost", &[b"h2"]).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    loop {
        // the server's SETTINGS may come first; then the connection ends
        match tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("a silent HTTP/2 client was kept for 3 s"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(2));

    // a JSON body that stalls: 408, as over HTTP/1 (a harness whose head timeout leaves the
    // handshake room on a loaded machine)
    let h = Harness::start_tls_with(|c| c + "\n[limits]\nbody_idle_timeout_ms = 300\n").await;
    let (ca, addr) = (h.ca.as_ref().unwrap(), h.tls_addr.unwrap());
    let tls = ca.connect(addr, "localhost", &[b"h2"]).await.unwrap();
    let send = h2_handshake(tls).await;
    let mut send = send.ready().await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri("https://localhost/tenant/collectionObjects")
        .header("authorization", "Bearer key-pro")
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(b"{\"a\":"), false)
        .unwrap();
    let r = read_h2_response(resp).await.unwrap();
    assert_envelope(&r, 408, "stalled");
    drop(body);
    assert_eq!(h.backend.received().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_heads_get_the_http1_head_rules() {
    use common::tls::{h2_send, H2Outcome};
    let h = Harness::start_tls_with(|c| c).await;
    let (ca, addr) = (h.ca.as_ref().unwrap(), h.tls_addr.unwrap());
    let send = h2_handshake(ca.connect(addr, "localhost", &[b"h2"]).await.unwrap()).await;
    let auth: &[u8] = b"Bearer key-pro";
    let answer = |o: H2Outcome| match o {
        H2Outcome::Answered(r) => r,
        other => panic!("{other:?}"),
    };
    // a Host with userinfo, or one that is not the :authority: pingora refuses the stream when
    // it accepts it (its own 400 or a reset), before any hook can answer
    for host in [&b"user@evil.example"[..], b"evil.example/x", b"localhost:1"] {
        match h2_send(
            &send,
            "GET",
            "/status/200",
            &[("authorization", auth), ("host", host)],
            b"",
        )
        .await
        {
            H2Outcome::Answered(r) => assert_eq!(r.status, 400, "{}", r.text()),
            H2Outcome::Reset(_) => {}
            H2Outcome::NotRepresentable => panic!("{host:?}"),
        }
    }
    // more header lines than an HTTP/1 head may have: 431
    let many: Vec<(String, Vec<u8>)> = (0..120)
        .map(|i| (format!("x-h{i}"), b"v".to_vec()))
        .collect();
    let mut headers: Vec<(&str, &[u8])> = vec![("authorization", auth)];
    headers.extend(many.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
    let r = answer(h2_send(&send, "GET", "/status/200", &headers, b"").await);
    assert_envelope(&r, 431, "too large");
    assert_eq!(h.backend.received().len(), 0);
    let ok = answer(h2_send(&send, "GET", "/status/200", &[("authorization", auth)], b"").await);
    assert_eq!(ok.status, 200);

    // a browser's cookies, one field each over HTTP/2, count as one line (as over HTTP/1) and
    // reach the backend joined in one Cookie header
    let cookies: Vec<String> = (0..150).map(|i| format!("c{i}=v{i}")).collect();
    let mut headers: Vec<(&str, &[u8])> = vec![("authorization", auth)];
    headers.extend(cookies.iter().map(|c| ("cookie", c.as_bytes())));
    let r = answer(h2_send(&send, "GET", "/status/200", &headers, b"").await);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = h.backend.received();
    let fwd = got.last().unwrap();
    let sent: Vec<_> = fwd.headers.iter().filter(|(n, _)| n == "cookie").collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1, cookies.join("; "));
}

#[test]
fn a_proxy_protocol_listener_needs_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tenants.toml"), tenants_toml()).unwrap();
    let path = dir.path().join("vivgate.toml");
    std::fs::write(
        &path,
        "tenants = \"tenants.toml\"\n[tiers.tiny]\napi_calls = 5\ncdn_bytes = 1500\n\
         [server]\nlisten = \"127.0.0.1:0\"\nproxy_protocol = true\n",
    )
    .unwrap();
    let e = vivgate::config::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("server.proxy_protocol") && e.contains("trusted_proxies"),
        "{e}"
    );
}
