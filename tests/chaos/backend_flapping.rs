//! Scenario 4: the backend down 2 s and up 3 s, five times, under load. While it is down the
//! clients get 502/503 envelopes; after it returns, 200 within the health check interval; no
//! request hangs; an answer cut mid-body reaches its client as a closed connection (never as a
//! complete-looking answer) and is counted apart; no descriptor is left behind.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::common::*;
use crate::support::*;

/// The CDN answer's size and how it is written: in pieces with pauses, so that a backend that
/// goes down can cut it mid-body.
const CDN_BODY: usize = 64 * 1024;
const PIECE: usize = 4096;
const PAUSE: Duration = Duration::from_millis(2);
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);

/// A backend that can go down and come back on the same port: down, its listener is closed and
/// every connection it holds is dropped at once (as a crashed process's would be).
struct FlapBackend {
    addr: SocketAddr,
    running: Option<tokio::task::JoinHandle<()>>,
    /// Requests whose answer was written whole, per `X-Vivreal-Group-Id`.
    served: Arc<Mutex<HashMap<String, u64>>>,
    /// Request heads received.
    received: Arc<AtomicU64>,
}

impl FlapBackend {
    async fn start() -> FlapBackend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut b = FlapBackend {
            addr: l.local_addr().unwrap(),
            running: None,
            served: Arc::default(),
            received: Arc::default(),
        };
        b.serve(l);
        b
    }

    fn serve(&mut self, l: TcpListener) {
        let (served, received) = (self.served.clone(), self.received.clone());
        self.running = Some(tokio::spawn(async move {
            // dropped with the accept loop: every connection task is aborted
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    Ok((s, _)) = l.accept() => {
                        conns.spawn(connection(s, served.clone(), received.clone()));
                    }
                    Some(_) = conns.join_next() => {}
                }
            }
        }));
    }

    async fn down(&mut self) {
        if let Some(t) = self.running.take() {
            t.abort();
            let _ = t.await;
        }
    }

    async fn up(&mut self) {
        let start = Instant::now();
        let l = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(5),
                        "rebind {}: {e}",
                        self.addr
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        self.serve(l);
    }

    fn served(&self, group: &str) -> u64 {
        self.served.lock().unwrap().get(group).copied().unwrap_or(0)
    }
}

async fn connection(
    mut s: TcpStream,
    served: Arc<Mutex<HashMap<String, u64>>>,
    received: Arc<AtomicU64>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let (path, group, n) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Request::new(&mut headers);
            match r.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let group = r
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("x-vivreal-group-id"))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                        .unwrap_or_default();
                    break (r.path.unwrap_or("").to_string(), group, n);
                }
                Ok(httparse::Status::Partial) => match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                },
                Err(_) => return,
            }
        };
        buf.drain(..n);
        received.fetch_add(1, Ordering::Relaxed);
        let ok = if path.starts_with("/cdn/") {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {CDN_BODY}\r\n\r\n"
            );
            let mut ok = s.write_all(head.as_bytes()).await.is_ok();
            let piece = [b'x'; PIECE];
            for _ in 0..CDN_BODY / PIECE {
                tokio::time::sleep(PAUSE).await;
                ok = ok && s.write_all(&piece).await.is_ok();
            }
            ok
        } else {
            let body = br#"{"success": true, "data": "flap", "error": null}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).await.is_ok() && s.write_all(body).await.is_ok()
        };
        if !ok {
            return;
        }
        *served.lock().unwrap().entry(group).or_default() += 1;
    }
}

/// How long until `addr` answers a GET of `key` with 200.
async fn until_200(addr: SocketAddr, key: &str) -> Duration {
    let start = Instant::now();
    loop {
        let mut c = Client::connect(addr).await;
        if let Some(r) = c
            .try_request(
                &format!("GET /tenant/integrationObjects?type=probe HTTP/1.1\nHost: t\nAuthorization: Bearer {key}\nConnection: close"),
                b"",
            )
            .await
        {
            if r.status == 200 {
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no 200 within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "chaos: minutes long; .ci/run runs it with --ignored"]
async fn a_flapping_backend_gets_envelopes_cuts_and_recovery_right() {
    let h = Harness::start().await;
    let mut backend = FlapBackend::start().await;
    let (port, admin_port) = two_ports().await;
    let config = gate_config(
        &h,
        "flap.toml",
        port,
        admin_port,
        "grace_period_seconds = 1",
        "",
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let text = edit(
        &text,
        &format!("servers = [\"{}\"]", h.backend_addr),
        &format!("servers = [\"{}\"]", backend.addr),
    );
    let text = edit(
        &text,
        "health_check_interval_ms = 0",
        &format!("health_check_interval_ms = {}", HEALTH_INTERVAL.as_millis()),
    );
    std::fs::write(&config, text).unwrap();
    let mut gate = Gate::start(&config, port, admin_port, &h.dir.path().join("flap.log")).await;
    let pro = group_id("key-pro");
    let free = group_id("key-tiny-overage");

    let mut targets = Vec::new();
    for i in 0..6 {
        let (label, key, path) = if i % 2 == 0 {
            ("cdn", "key-pro", "/cdn/flap.bin")
        } else {
            (
                "api",
                "key-tiny-overage",
                "/tenant/integrationObjects?type=a",
            )
        };
        targets.push(Target {
            addr: gate.addr(),
            label,
            key,
            path: path.to_string(),
            every: Duration::from_millis(5),
        });
    }
    let load = Load::start(targets, Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fds_before = gate.fds();
    let mut recoveries = Vec::new();
    for _ in 0..5 {
        backend.down().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        backend.up().await;
        recoveries.push(until_200(gate.addr(), "key-tiny-overage").await);
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(*recoveries.last().unwrap()))
            .await;
    }
    let fds_end = gate.fds();
    let tally = load.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_after = gate.fds();
    let cut_metric = gate.metric("vivgate_upstream_answers_cut_total").await;
    let (calls, bytes) = gate.usage(pro).await;
    eprintln!(
        "backend flapping: {}; recoveries {recoveries:?}; gateway counted {cut_metric} cuts; fds {fds_before} (under load) -> {fds_end} (under load) -> {fds_after} (idle)",
        tally.summary()
    );
    eprintln!(
        "CDN group: {calls} calls and {bytes} bytes charged; the backend received {} heads in all and wrote {} CDN answers whole",
        backend.received.load(Ordering::Relaxed),
        backend.served(pro)
    );

    // only 200s and the upstream envelopes
    assert!(tally.bad.is_empty(), "{:?}", tally.bad);
    for (status, n) in &tally.statuses {
        assert!(
            matches!(status, 200 | 502 | 503),
            "{n} answers {status}: {}",
            tally.summary()
        );
    }
    assert!(
        tally.count(502) + tally.count(503) > 0,
        "the outages were seen: {}",
        tally.summary()
    );
    for (status, msg) in tally.errors.keys() {
        assert!(
            matches!(
                (status, msg.as_str()),
                (502, "Bad gateway: the service is unreachable")
                    | (503, "Service unavailable: no healthy upstream server")
            ),
            "{status} {msg}"
        );
    }
    // nothing hung; the slowest answer is within the upstream timeouts (connect refused at once,
    // read 500 ms)
    assert_eq!(tally.hung, 0, "{}", tally.summary());
    assert!(
        tally.max() < Duration::from_millis(1500),
        "{}",
        tally.summary()
    );
    // back within the health check interval (twice it: a check may have just missed the
    // return; plus the probe's own round trip)
    for r in &recoveries {
        assert!(
            *r <= 2 * HEALTH_INTERVAL + Duration::from_millis(300),
            "recovered after {r:?}"
        );
    }
    // every cut answer reached its client as a closed connection, and each was counted
    assert!(tally.cut > 0, "no answer was cut: {}", tally.summary());
    assert_eq!(cut_metric, tally.cut as f64, "{}", tally.summary());
    // bytes charged: the whole CDN answers, plus at most what went out of the cut ones
    let whole = tally.label_count("cdn", 200) * CDN_BODY as u64;
    assert!(
        (whole..=whole + tally.cut * CDN_BODY as u64).contains(&bytes),
        "{bytes} bytes charged, {whole} in whole answers"
    );
    // the API route's calls: charged for what reached the backend (a request the backend read
    // and never answered stays charged: it may have been served), never for what did not
    let (api_calls, _) = gate.usage(free).await;
    assert!(
        (backend.served(free)..=backend.received.load(Ordering::Relaxed)).contains(&api_calls),
        "{api_calls} API calls charged, {} answered whole",
        backend.served(free)
    );
    // no descriptor left behind: under load as before, and idle with the clients gone
    assert!(fds_end <= fds_before + 4, "fds {fds_before} -> {fds_end}");
    assert!(fds_after <= fds_before, "fds {fds_before} -> {fds_after}");
    gate.stop().await;
}
