//! Test harness: the real gateway in-process on an ephemeral port, in front of the real
//! recording backend on another, and a raw HTTP/1.1 client that controls every byte.
#![allow(dead_code)]

pub mod redis_server;
pub mod relay;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::apps::http_app::HttpServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use vivgate::backend::Backend;
use vivgate::clock::{utc_ms, ManualClock, Month};
use vivgate::front::ListenerSettings;
use vivgate::keys::{format_key_hash, hash_key};
use vivgate::server::{health_checks, listener_app, proxy_app, serve, tls_acceptor};
use vivgate::usage::{MemoryStore, Usage, UsageStore};
use vivgate::Gateway;

pub const OID: &str = "651f0c2ab4e8a90012345678";

/// Groups every test config has: (key, group id, tier, status, overage).
pub const GROUPS: [(&str, &str, &str, &str, bool); 7] = [
    (
        "key-pro",
        "aaaaaaaaaaaaaaaaaaaaaa01",
        "pro",
        "active",
        false,
    ),
    (
        "key-free",
        "aaaaaaaaaaaaaaaaaaaaaa02",
        "free",
        "active",
        false,
    ),
    (
        "key-tiny",
        "aaaaaaaaaaaaaaaaaaaaaa03",
        "tiny",
        "active",
        false,
    ),
    (
        "key-tiny-overage",
        "aaaaaaaaaaaaaaaaaaaaaa04",
        "tiny",
        "active",
        true,
    ),
    (
        "key-frozen",
        "aaaaaaaaaaaaaaaaaaaaaa05",
        "pro",
        "frozen",
        false,
    ),
    (
        "key-deactivated",
        "aaaaaaaaaaaaaaaaaaaaaa06",
        "pro",
        "deactivated",
        false,
    ),
    ("key-rotated", "aaaaaaaaaaaaaaaaaaaaaa03", "", "", false), // a second key of the tiny group
];

pub fn group_id(key: &str) -> &'static str {
    GROUPS.iter().find(|g| g.0 == key).map(|g| g.1).unwrap()
}

/// The tenants file for [`GROUPS`].
pub fn tenants_toml() -> String {
    let mut out = String::new();
    for (key, id, tier, status, overage) in GROUPS {
        if tier.is_empty() {
            continue;
        }
        let mut keys = vec![format_key_hash(&hash_key(key.as_bytes()))];
        for (k2, id2, t2, ..) in GROUPS {
            if id2 == id && t2.is_empty() {
                keys.push(format_key_hash(&hash_key(k2.as_bytes())));
            }
        }
        let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
        out.push_str(&format!(
            "[[groups]]\nid = \"{id}\"\ntier = \"{tier}\"\nstatus = \"{status}\"\noverage_billing = {overage}\nkeys = [{}]\n\n",
            keys.join(", ")
        ));
    }
    out
}

/// A config with the contract's routes, a CDN prefix, a `tiny` tier of 5 calls and 1500 bytes,
/// and upstream `api` at `backend` (plus `dead` at `dead`, a port where nothing listens).
pub fn config_toml(backend: SocketAddr, dead: SocketAddr) -> String {
    format!(
        r#"tenants = "tenants.toml"

[server]
listen = "127.0.0.1:0"
threads = 2

[tiers.tiny]
api_calls = 5
cdn_bytes = 1500

[upstreams.api]
servers = ["{backend}"]
read_timeout_ms = 500
health_check_interval_ms = 0

[upstreams.dead]
servers = ["{dead}"]
connect_timeout_ms = 300
health_check_interval_ms = 0

[[routes]]
path = "/tenant/collectionObjects"
methods = ["GET"]
upstream = "api"
required_query = ["collectionId"]
id_query = ["collectionId"]
meter = "calls"

[[routes]]
path = "/tenant/collectionObjects"
methods = ["POST"]
upstream = "api"
json_body = true
meter = "calls"

[[routes]]
path = "/tenant/siteDetails"
methods = ["GET"]
upstream = "api"
required_query = ["siteId"]
id_query = ["siteId"]

[[routes]]
path = "/tenant/integrationObjects"
methods = ["GET"]
upstream = "api"
required_query = ["type"]

[[routes]]
prefix = "/cdn/"
methods = ["GET"]
upstream = "api"
meter = ["calls", "bytes"]

[[routes]]
prefix = "/slow/"
methods = ["GET"]
upstream = "api"

[[routes]]
prefix = "/status/"
methods = ["GET", "POST"]
upstream = "api"

[[routes]]
prefix = "/offline/"
methods = ["GET", "POST"]
upstream = "dead"
"#
    )
}

/// How a harness's clients speak to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 over plain TCP.
    H1,
    /// HTTP/2 over TLS (ALPN h2).
    H2,
}

pub struct Harness {
    pub addr: SocketAddr,
    /// The TLS listener (HTTP/1.1 and h2 by ALPN, certificate for `localhost` from `ca`) and the
    /// h2c listener, when started with [`Harness::start_proto`] or [`Harness::start_tls_with`].
    pub tls_addr: Option<SocketAddr>,
    pub h2c_addr: Option<SocketAddr>,
    pub ca: Option<Arc<tls::TestCa>>,
    pub proto: Proto,
    pub backend: Backend,
    pub backend_addr: SocketAddr,
    pub gw: Arc<Gateway>,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A port on loopback where nothing listens.
/// A loopback port where nothing listens, for as long as the test process lives: it is held by
/// a socket that is bound but not listening (so a connection is refused) and shares its port
/// with no one (no `SO_REUSEADDR`), so no other test's listener can be given it.
pub async fn dead_addr() -> SocketAddr {
    let r = Reserved::new();
    let a = r.addr;
    std::mem::forget(r);
    a
}

/// A port that was free a moment ago, for a process the test starts (redis-server, the binary).
pub async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// A loopback port held as [`dead_addr`] holds one, until the test releases it to listen there.
pub struct Reserved {
    pub addr: SocketAddr,
    fd: i32,
}

impl Reserved {
    pub fn new() -> Reserved {
        // SAFETY: plain socket calls on a descriptor this function owns; the address structs
        // are sized as the calls expect
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket");
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let r = libc::bind(
                fd,
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                len,
            );
            assert_eq!(r, 0, "bind");
            let mut got: libc::sockaddr_in = std::mem::zeroed();
            let mut got_len = len;
            let r = libc::getsockname(
                fd,
                &mut got as *mut libc::sockaddr_in as *mut libc::sockaddr,
                &mut got_len,
            );
            assert_eq!(r, 0, "getsockname");
            Reserved {
                addr: SocketAddr::from(([127, 0, 0, 1], u16::from_be(got.sin_port))),
                fd,
            }
        }
    }

    /// Frees the port (to listen on it right away).
    pub fn release(self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        // SAFETY: closes the descriptor this value owns, once
        unsafe {
            libc::close(self.fd);
        }
    }
}

impl Harness {
    /// Gateway and backend with [`config_toml`] and [`tenants_toml`]; the clock stands at
    /// 2026-11-15 12:00:00 UTC.
    pub async fn start() -> Harness {
        Self::start_with(|c| c).await
    }

    /// Like [`Harness::start`]; clients speak `proto` (HTTP/2 goes over the TLS listener).
    pub async fn start_proto(proto: Proto) -> Harness {
        let mut h = Self::start_tls_with(|c| c).await;
        h.proto = proto;
        h
    }

    /// Like [`Harness::start_with`], with a TLS listener and an h2c listener as well.
    pub async fn start_tls_with(edit: impl FnOnce(String) -> String) -> Harness {
        let ca = Arc::new(tls::TestCa::default());
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca.write(dir.path(), "localhost", &["localhost"]);
        let tls_section = format!(
            "\n[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        );
        let mut h = Self::start_in(dir, |c| edit(c) + &tls_section).await;
        let (stop_tx, gw) = (h.stop.subscribe(), h.gw.clone());
        let tl = TcpListener::bind("127.0.0.1:0").await.unwrap();
        h.tls_addr = Some(tl.local_addr().unwrap());
        let settings = ListenerSettings {
            tls: Some(tls_acceptor(&gw, "127.0.0.1:0", true).unwrap()),
            ..Default::default()
        };
        tokio::spawn(serve(
            tl,
            listener_app(gw.clone(), settings),
            stop_tx.clone(),
        ));
        let hl = TcpListener::bind("127.0.0.1:0").await.unwrap();
        h.h2c_addr = Some(hl.local_addr().unwrap());
        let settings = ListenerSettings {
            h2c: true,
            ..Default::default()
        };
        tokio::spawn(serve(hl, listener_app(gw, settings), stop_tx));
        h.ca = Some(ca);
        h
    }

    /// Like [`Harness::start`], with the config text passed through `edit` first.
    pub async fn start_with(edit: impl FnOnce(String) -> String) -> Harness {
        Self::start_in(tempfile::tempdir().unwrap(), edit).await
    }

    async fn start_in(dir: tempfile::TempDir, edit: impl FnOnce(String) -> String) -> Harness {
        let (stop, stop_rx) = watch::channel(false);
        let backend = Backend::new();
        let bl = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_addr = bl.local_addr().unwrap();
        tokio::spawn(serve(
            bl,
            Arc::new(HttpServer::new_app(backend.clone())),
            stop_rx.clone(),
        ));

        let config_path: PathBuf = dir.path().join("vivgate.toml");
        std::fs::write(
            &config_path,
            edit(config_toml(backend_addr, dead_addr().await)),
        )
        .unwrap();
        std::fs::write(dir.path().join("tenants.toml"), tenants_toml()).unwrap();
        let snap = vivgate::config::load(&config_path).unwrap();
        let clock = Arc::new(ManualClock::new(utc_ms(2026, 11, 15, 12, 0, 0, 0)));
        let gw = Arc::new(Gateway::new(
            snap,
            MemoryStore::new(),
            clock.clone(),
            Some(config_path),
        ));

        let gl = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = gl.local_addr().unwrap();
        tokio::spawn(serve(gl, proxy_app(gw.clone()), stop_rx.clone()));
        tokio::spawn(health_checks(gw.clone(), stop_rx));
        Harness {
            addr,
            tls_addr: None,
            h2c_addr: None,
            ca: None,
            proto: Proto::H1,
            backend,
            backend_addr,
            gw,
            clock,
            dir,
            stop,
        }
    }

    /// A client of the harness's protocol.
    pub async fn client(&self) -> Client {
        match self.proto {
            Proto::H1 => Client::connect(self.addr).await,
            Proto::H2 => self.h2_client().await,
        }
    }

    /// An HTTP/2 client over TLS (ALPN h2) to the TLS listener.
    pub async fn h2_client(&self) -> Client {
        let (ca, addr) = (self.ca.as_ref().unwrap(), self.tls_addr.unwrap());
        let tls = ca.connect(addr, "localhost", &[b"h2"]).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        Client::h2(tls::h2_handshake(tls).await)
    }

    /// An HTTP/1.1 client over TLS to the TLS listener.
    pub async fn tls_client(&self) -> Client {
        let (ca, addr) = (self.ca.as_ref().unwrap(), self.tls_addr.unwrap());
        let tls = ca.connect(addr, "localhost", &[b"http/1.1"]).await.unwrap();
        Client::over(Box::new(tls))
    }

    /// One request on a new connection.
    pub async fn get(&self, path: &str, key: Option<&str>) -> Resp {
        let mut c = self.client().await;
        c.get(path, key).await
    }

    pub fn usage(&self, key: &str) -> Usage {
        let month = Month::containing(self.gw.clock().now_ms());
        self.gw.store().usage(group_id(key), month)
    }

    /// Waits until `key`'s group has at least `bytes` metered this month. Bytes are metered
    /// when the gateway logs a request, which can be just after the client has the response.
    pub async fn wait_bytes(&self, key: &str, bytes: u64) {
        wait_for("the response bytes to be metered", || {
            let done = self.usage(key).bytes >= bytes;
            async move { done }
        })
        .await;
    }

    pub fn write_tenants(&self, text: &str) {
        std::fs::write(self.dir.path().join("tenants.toml"), text).unwrap();
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.dir.path().join("vivgate.toml"), text).unwrap();
    }
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// Asserts a gateway envelope: the status, `Content-Type: application/json`, exactly the three
/// fields, and an error message that contains `needle`.
#[track_caller]
pub fn assert_envelope(resp: &Resp, status: u16, needle: &str) {
    assert_eq!(resp.status, status, "status; body: {}", resp.text());
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "content type"
    );
    let v = resp.json();
    let obj = v.as_object().expect("envelope is an object");
    assert_eq!(
        obj.len(),
        3,
        "envelope has exactly success, data, error: {v}"
    );
    assert_eq!(v["success"], serde_json::Value::Bool(false));
    assert!(v["data"].is_null(), "data is null: {v}");
    let msg = v["error"].as_str().expect("error is a string");
    assert!(
        msg.contains(needle),
        "error {msg:?} should contain {needle:?}"
    );
    assert!(
        resp.header("x-request-id").is_some(),
        "every response has X-Request-Id"
    );
}

/// A byte stream a [`Client`] speaks HTTP/1.1 on (TCP or TLS).
pub trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Conn for T {}

/// A raw HTTP/1.1 client on one connection, or an HTTP/2 client that takes the same request
/// text (see [`tls::h2_request`]).
pub struct Client {
    stream: Box<dyn Conn>,
    buf: Vec<u8>,
    /// The request in flight was a HEAD: its response has no body.
    head: bool,
    h2: Option<h2::client::SendRequest<bytes::Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::over(Box::new(TcpStream::connect(addr).await.unwrap()))
    }

    pub fn over(stream: Box<dyn Conn>) -> Client {
        Client {
            stream,
            buf: Vec::new(),
            head: false,
            h2: None,
        }
    }

    pub fn h2(send: h2::client::SendRequest<bytes::Bytes>) -> Client {
        Client {
            stream: Box::new(tokio::io::duplex(64).0),
            buf: Vec::new(),
            head: false,
            h2: Some(send),
        }
    }

    pub fn is_h2(&self) -> bool {
        self.h2.is_some()
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Like [`Client::send_raw`], for a peer that may have closed.
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Sends `head` (request line and headers, without the final blank line) and `body`.
    pub async fn request(&mut self, head: &str, body: &[u8]) -> Resp {
        self.try_request(head, body)
            .await
            .expect("connection closed before a response head")
    }

    /// Like [`Client::request`]; `None` when the server closed the connection without
    /// answering (or the request could not be sent).
    pub async fn try_request(&mut self, head: &str, body: &[u8]) -> Option<Resp> {
        if let Some(send) = &mut self.h2 {
            return tls::h2_request(send, head, body).await;
        }
        let mut raw = head
            .trim_end()
            .replace('\n', "\r\n")
            .replace("\r\r\n", "\r\n")
            .into_bytes();
        raw.extend_from_slice(b"\r\n\r\n");
        raw.extend_from_slice(body);
        self.head = head.starts_with("HEAD ");
        self.stream.write_all(&raw).await.ok()?;
        self.try_read_response().await
    }

    pub async fn get(&mut self, path: &str, key: Option<&str>) -> Resp {
        let auth = key
            .map(|k| format!("\nAuthorization: Bearer {k}"))
            .unwrap_or_default();
        self.request(&format!("GET {path} HTTP/1.1\nHost: t{auth}"), b"")
            .await
    }

    pub async fn post(&mut self, path: &str, key: &str, body: &[u8]) -> Resp {
        self.request(
            &format!(
                "POST {path} HTTP/1.1\nHost: t\nAuthorization: Bearer {key}\nContent-Type: application/json\nContent-Length: {}",
                body.len()
            ),
            body,
        )
        .await
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("response within 10 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads one response (any 1xx responses are returned as they come).
    pub async fn read_response(&mut self) -> Resp {
        self.try_read_response()
            .await
            .expect("connection closed before a response head")
    }

    /// Like [`Client::read_response`]; `None` when the connection closes before a head.
    pub async fn try_read_response(&mut self) -> Option<Resp> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut headers);
            match r.parse(&self.buf).unwrap() {
                httparse::Status::Complete(n) => {
                    let status = r.code.unwrap();
                    let hs: Vec<(String, String)> = r
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    self.buf.drain(..n);
                    let mut resp = Resp {
                        status,
                        headers: hs,
                        body: Vec::new(),
                    };
                    if (100..200).contains(&status) || status == 204 || status == 304 || self.head {
                        return Some(resp);
                    }
                    resp.body = self.read_body(&resp).await;
                    return Some(resp);
                }
                httparse::Status::Partial => {
                    if self.fill().await == 0 {
                        return None;
                    }
                }
            }
        }
    }

    async fn read_body(&mut self, resp: &Resp) -> Vec<u8> {
        if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                assert!(self.fill().await > 0, "connection closed mid-body");
            }
            return self.buf.drain(..len).collect();
        }
        if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            let mut body = Vec::new();
            loop {
                while !self.buf.windows(2).any(|w| w == b"\r\n") {
                    assert!(self.fill().await > 0);
                }
                let pos = self.buf.windows(2).position(|w| w == b"\r\n").unwrap();
                let size = usize::from_str_radix(
                    std::str::from_utf8(&self.buf[..pos]).unwrap().trim(),
                    16,
                )
                .unwrap();
                self.buf.drain(..pos + 2);
                while self.buf.len() < size + 2 {
                    assert!(self.fill().await > 0);
                }
                body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
                if size == 0 {
                    return body;
                }
            }
        }
        while self.fill().await > 0 {}
        std::mem::take(&mut self.buf)
    }

    /// True when the server has closed the connection (reads EOF within 2 s).
    pub async fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), self.stream.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// Another recording backend on its own port; it stops when the returned sender is dropped.
pub async fn extra_backend() -> (Backend, SocketAddr, watch::Sender<bool>) {
    let (stop, stop_rx) = watch::channel(false);
    let backend = Backend::new();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(serve(
        l,
        Arc::new(HttpServer::new_app(backend.clone())),
        stop_rx,
    ));
    (backend, addr, stop)
}

/// The `vivgate` binary, for tests that run it as a process.
pub fn vivgate() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_vivgate"))
}

/// Kills and reaps the child when dropped, so a failing test leaves no process behind.
pub struct Killer(pub std::process::Child);
impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) on a child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

pub async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Harness {
    /// Writes `name` beside the harness config for the real binary: the gateway on
    /// 127.0.0.1:`port`, `server_extra` lines added to `[server]`, `tail` appended; returns its path.
    pub fn binary_config(&self, name: &str, port: u16, server_extra: &str, tail: &str) -> PathBuf {
        let config = std::fs::read_to_string(self.dir.path().join("vivgate.toml"))
            .unwrap()
            .replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{port}\"\n{server_extra}"),
            );
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("{config}\n{tail}\n")).unwrap();
        path
    }
}

/// Runs the binary on `config` with `args` and `env`, and waits until 127.0.0.1:`port` accepts.
pub async fn spawn_binary(
    config: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    port: u16,
) -> Killer {
    spawn_binary_logging(config, args, env, port, None).await
}

/// Like [`spawn_binary`], with stdout and stderr appended to `log` when given.
pub async fn spawn_binary_logging(
    config: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    port: u16,
    log: Option<&std::path::Path>,
) -> Killer {
    let out = |l: Option<&std::path::Path>| match l {
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
            .into(),
        None => std::process::Stdio::null(),
    };
    let child = vivgate()
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().copied())
        .stdout(out(log))
        .stderr(out(log))
        .spawn()
        .unwrap();
    let child = Killer(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for("the binary to listen", || async {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
    child
}

/// Sends `sig` (none: only waits) and waits, at most `within`, for the process to exit.
pub async fn wait_exit(
    k: &mut Killer,
    sig: Option<i32>,
    within: Duration,
) -> std::process::ExitStatus {
    if let Some(sig) = sig {
        signal(&k.0, sig);
    }
    let start = Instant::now();
    loop {
        if let Some(status) = k.0.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < within,
            "the process did not exit within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
