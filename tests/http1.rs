//! vivgate's own HTTP/1 path (src/forward) against a backend scripted byte by byte: the
//! answer framings the recording backend never sends (chunked with extensions and trailers,
//! close-delimited, cut short, ambiguous), the upstream pool (reuse, and a connection the
//! backend closed while idle), a chunked request body re-framed, and a 101 tunnel.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted backend does with one request.
#[derive(Clone)]
enum Answer {
    /// Writes these bytes and keeps the connection.
    Keep(&'static [u8]),
    /// Writes these bytes and closes the connection.
    Close(&'static [u8]),
    /// Writes these bytes, then echoes whatever arrives until the peer closes.
    Echo(&'static [u8]),
    /// Writes the first bytes, then after 50 ms the second (bytes nobody asked for), and keeps
    /// the connection.
    Then(&'static [u8], &'static [u8]),
}

/// A backend that answers each request with the next scripted answer, and records every
/// request's raw bytes and how many connections it accepted.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    answers: Arc<Mutex<VecDeque<Answer>>>,
}

impl Scripted {
    async fn start() -> Scripted {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = Scripted {
            addr: l.local_addr().unwrap(),
            connections: Default::default(),
            requests: Default::default(),
            answers: Default::default(),
        };
        let (connections, requests, answers) =
            (s.connections.clone(), s.requests.clone(), s.answers.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = l.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(conn, requests.clone(), answers.clone()));
            }
        });
        s
    }

    fn script(&self, answers: &[Answer]) {
        self.answers.lock().unwrap().extend(answers.iter().cloned());
    }

    fn request(&self, i: usize) -> String {
        String::from_utf8_lossy(&self.requests.lock().unwrap()[i]).into_owned()
    }
}

/// One request's bytes: the head, then a `Content-Length` or chunked body (up to the blank
/// line after the last chunk).
fn request_end(buf: &[u8]) -> Option<usize> {
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
    if text.contains("transfer-encoding: chunked") {
        let end = buf[head..].windows(5).position(|w| w == b"0\r\n\r\n")?;
        return Some(head + end + 5);
    }
    let len = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    (buf.len() >= head + len).then_some(head + len)
}

async fn serve(
    mut conn: TcpStream,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    answers: Arc<Mutex<VecDeque<Answer>>>,
) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(end) = request_end(&buf) {
                break end;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        requests.lock().unwrap().push(buf.drain(..end).collect());
        let answer = answers
            .lock()
            .unwrap()
            .pop_front()
            .expect("a scripted answer");
        match answer {
            Answer::Keep(bytes) => conn.write_all(bytes).await.unwrap(),
            Answer::Close(bytes) => {
                conn.write_all(bytes).await.unwrap();
                return;
            }
            Answer::Then(bytes, later) => {
                conn.write_all(bytes).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                conn.write_all(later).await.unwrap();
            }
            Answer::Echo(bytes) => {
                conn.write_all(bytes).await.unwrap();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = conn.read(&mut chunk).await {
                    if n == 0 || conn.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                }
                return;
            }
        }
    }
}

/// A harness whose `/s/` routes go to `backend`; `/s/up/` allows upgrades.
async fn harness(backend: &Scripted) -> Harness {
    harness_with(backend, "").await
}

/// [`harness`] with more config text (a `[limits]` table, say).
async fn harness_with(backend: &Scripted, more: &str) -> Harness {
    let extra = format!(
        "\n[upstreams.scripted]\nservers = [\"{}\"]\nread_timeout_ms = 1000\nhealth_check_interval_ms = 0\n\n\
         [[routes]]\nprefix = \"/s/up/\"\nmethods = [\"GET\"]\nupstream = \"scripted\"\nupgrade = true\n\n\
         [[routes]]\nprefix = \"/s/\"\nmethods = [\"GET\", \"POST\", \"HEAD\"]\nupstream = \"scripted\"\n",
        backend.addr
    );
    Harness::start_with(|c| c + &extra + more).await
}

const GET: &str = "GET /s/a HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\n\r\n";

async fn raw_client(h: &Harness) -> TcpStream {
    TcpStream::connect(h.addr).await.unwrap()
}

/// Everything the connection sends until it closes (within 5 s).
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_and_close_delimited_answers_are_re_framed_for_the_client() {
    let b = Scripted::start().await;
    b.script(&[
        Answer::Keep(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n5;ext=\"a b\"\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"),
        Answer::Close(b"HTTP/1.1 200 OK\r\nX-Up: 2\r\n\r\nuntil the end"),
    ]);
    let h = harness(&b).await;
    let mut c = h.client().await;
    let r = c.get("/s/a", Some("key-pro")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.header("x-up"), Some("1"));
    assert_eq!(r.header("connection"), Some("keep-alive"));
    // the body until the backend closed reaches an HTTP/1.1 client chunked, and its connection
    // stays usable
    let r = c.get("/s/b", Some("key-pro")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "until the end"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.header("connection"), Some("keep-alive"));
    assert_eq!(b.connections.load(Ordering::SeqCst), 1);

    // an HTTP/1.0 client gets the decoded body, ended by the close
    b.script(&[Answer::Keep(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )]);
    let mut s = raw_client(&h).await;
    s.write_all(b"GET /s/c HTTP/1.0\r\nHost: t\r\nAuthorization: Bearer key-pro\r\n\r\n")
        .await
        .unwrap();
    let got = String::from_utf8(read_to_close(&mut s).await).unwrap();
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.contains("connection: close\r\n"), "{got}");
    assert!(
        !got.to_ascii_lowercase().contains("transfer-encoding"),
        "{got}"
    );
    assert!(got.ends_with("\r\n\r\nabc"), "{got}");
    // the backend's chunked answer was read to its end: its connection went back to the pool
    assert_eq!(b.connections.load(Ordering::SeqCst), 2);

    // an HTTP/1.0 request may come without Host; the backend gets HTTP/1.1 with one
    b.script(&[Answer::Keep(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )]);
    let mut s = raw_client(&h).await;
    s.write_all(b"GET /s/d HTTP/1.0\r\nAuthorization: Bearer key-pro\r\n\r\n")
        .await
        .unwrap();
    let got = String::from_utf8(read_to_close(&mut s).await).unwrap();
    assert!(
        got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("\r\n\r\nok"),
        "{got}"
    );
    let sent = b.request(3);
    assert!(sent.starts_with("GET /s/d HTTP/1.1\r\n"), "{sent}");
    assert!(
        sent.contains(&format!("\r\nhost: {}\r\n", b.addr)),
        "{sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_short_closes_the_client_connection() {
    let b = Scripted::start().await;
    b.script(&[
        Answer::Close(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten.."),
        Answer::Close(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
    ]);
    let h = harness(&b).await;
    for _ in 0..2 {
        let mut s = raw_client(&h).await;
        s.write_all(GET.as_bytes()).await.unwrap();
        let got = String::from_utf8(read_to_close(&mut s).await).unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        let body = &got[got.find("\r\n\r\n").unwrap() + 4..];
        // fewer bytes than the length, or chunks without the last one: never complete-looking
        assert!(
            body == "only ten.." || body == "5\r\nhello\r\n",
            "the client got what came, then a close: {body:?}"
        );
    }
    // both were charged: the backend was reached
    assert_eq!(h.usage("key-pro").calls, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_malformed_answers_are_a_502() {
    let b = Scripted::start().await;
    b.script(&[
        Answer::Keep(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        Answer::Keep(b"HTTP/1.1 200 OK\r\nContent-Length: 5\nX: y\r\n\r\nhello"),
        Answer::Keep(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"),
        Answer::Keep(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
        // a coding the gateway does not decode: passed on without its header it would read as
        // the body itself
        Answer::Close(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b\x08\x00"),
    ]);
    let h = harness(&b).await;
    for _ in 0..5 {
        let mut c = h.client().await;
        let r = c.get("/s/a", Some("key-pro")).await;
        assert_envelope(&r, 502, "unreachable");
        assert_eq!(r.header("connection"), Some("close"));
    }
    // none of them went back to the pool
    assert_eq!(b.connections.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_are_reused_and_one_closed_while_idle_is_retried() {
    let b = Scripted::start().await;
    let ok: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    b.script(&[Answer::Keep(ok), Answer::Keep(ok), Answer::Keep(ok)]);
    let h = harness(&b).await;
    for _ in 0..3 {
        // a new client each time: the upstream connection outlives client connections (it goes
        // back to the pool just after the answer is written: the pause lets it)
        let mut c = h.client().await;
        let r = c.get("/s/a", Some("key-pro")).await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.connections.load(Ordering::SeqCst), 1);

    // the backend closes its side after answering, without saying so: the next request finds
    // the pooled connection closed and is sent again on a new one
    b.script(&[Answer::Close(ok), Answer::Keep(ok)]);
    let mut c = h.client().await;
    let r = c.get("/s/a", Some("key-pro")).await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = c.get("/s/b", Some("key-pro")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(b.connections.load(Ordering::SeqCst), 2);
    assert_eq!(
        b.requests.lock().unwrap().len(),
        5,
        "each request reached the backend once"
    );

    // a POST is not sent twice: the pooled connection is checked before it is used
    b.script(&[Answer::Close(ok), Answer::Keep(ok)]);
    let r = c.get("/s/c", Some("key-pro")).await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = c
        .request(
            "POST /s/d HTTP/1.1\nHost: t\nAuthorization: Bearer key-pro\nContent-Length: 4",
            b"data",
        )
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(b.requests.lock().unwrap().len(), 7);
    assert!(b.request(6).ends_with("\r\n\r\ndata"), "{}", b.request(6));
    assert_eq!(h.usage("key-pro").calls, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_reaches_the_backend_re_framed() {
    let b = Scripted::start().await;
    b.script(&[Answer::Keep(b"HTTP/1.1 204 No Content\r\n\r\n")]);
    let h = harness(&b).await;
    let mut c = h.client().await;
    let r = c
        .request(
            "POST /s/a HTTP/1.1\nHost: t\nAuthorization: Bearer key-pro\nX-Vivreal_Group-Id: victim\nX_Forwarded_For: 192.0.2.1\nX_Real_IP: 192.0.2.2\nX_Request_Id: spoofed\nTransfer-Encoding: chunked",
            b"5;name=value\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: t\r\n\r\n",
        )
        .await;
    assert_eq!((r.status, r.text().as_str()), (204, ""));
    let got = b.request(0);
    let (head, body) = got.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("\r\ntransfer-encoding: chunked"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("authorization"),
        "{head}"
    );
    assert!(head.contains("\r\nx-vivreal-group-id: "), "{head}");
    // the `_` spellings of the headers the gateway sets or strips do not get through
    for spoofed in ["victim", "192.0.2.1", "192.0.2.2", "spoofed"] {
        assert!(!head.contains(spoofed), "{spoofed}: {head}");
    }
    // the data, framed by the gateway: no extension, no trailer
    assert_eq!(body, "5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_upgrade_tunnels_bytes_both_ways() {
    let b = Scripted::start().await;
    b.script(&[Answer::Echo(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )]);
    // a tunnel idle for `keepalive_timeout_ms` closes
    let h = harness_with(&b, "\n[limits]\nkeepalive_timeout_ms = 500\n").await;
    let mut s = raw_client(&h).await;
    s.write_all(b"GET /s/up/ws HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-pro\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the 101");
        got.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 101 switching protocols\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    let upstream = b.request(0).to_ascii_lowercase();
    assert!(
        upstream.contains("\r\nupgrade: websocket\r\n"),
        "{upstream}"
    );
    s.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"ping");
    let started = std::time::Instant::now();
    let rest = read_to_close(&mut s).await;
    assert!(rest.is_empty(), "{rest:?}");
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(400) && idle < Duration::from_secs(3),
        "closed after {idle:?} idle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_a_backend_sent_while_idle_are_never_read_as_an_answer() {
    let b = Scripted::start().await;
    // after a complete answer the backend sends what would read as a second one
    b.script(&[
        Answer::Then(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale",
        ),
        Answer::Keep(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh"),
    ]);
    let h = harness(&b).await;
    let mut c = h.client().await;
    let r = c.get("/s/a", Some("key-pro")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "first"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = c.get("/s/b", Some("key-pro")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "fresh"));
    // the connection holding the stray bytes was dropped, not reused
    assert_eq!(b.connections.load(Ordering::SeqCst), 2);
    assert_eq!(b.requests.lock().unwrap().len(), 2);
}
