//! Test harness: the real gateway in-process on an ephemeral port, in front of the real
//! recording backend on another, and a raw HTTP/1.1 client that controls every byte.
#![allow(dead_code)]

mod client;
mod fixtures;
mod ports;
mod process;
pub mod redis_server;
pub mod relay;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::apps::http_app::HttpServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use vivgate::backend::Backend;
use vivgate::clock::{utc_ms, ManualClock, Month};
use vivgate::front::ListenerSettings;
use vivgate::server::{listener_app, serve};
use vivgate::usage::{Usage, UsageStore};
use vivgate::{Gateway, Options, Shutdown};

// each test binary uses its own part of these
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use fixtures::*;
#[allow(unused_imports)]
pub use ports::*;
#[allow(unused_imports)]
pub use process::*;

/// Appended to the harness's config: its gateway counts in memory. The binaries that tests start
/// on the harness's config (see [`Harness::config_text`]) keep the default embedded store.
pub const HARNESS_STORE: &str = "\n# the in-process gateway's store\n[usage]\nstore = \"memory\"\n";

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
    /// The admin listener, when the config has one.
    pub admin_addr: Option<SocketAddr>,
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
        // the runner's h2c is a setting of the plain listener; the tests keep the plain listener
        // HTTP/1-only and add an h2c one beside it
        let hl = TcpListener::bind("127.0.0.1:0").await.unwrap();
        h.h2c_addr = Some(hl.local_addr().unwrap());
        let settings = ListenerSettings {
            h2c: true,
            ..Default::default()
        };
        let app = listener_app(h.gw.clone(), settings);
        tokio::spawn(serve(hl, app, h.stop.subscribe()));
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
            edit(config_toml(backend_addr, dead_addr().await)) + HARNESS_STORE,
        )
        .unwrap();
        std::fs::write(dir.path().join("tenants.toml"), tenants_toml()).unwrap();
        let clock = Arc::new(ManualClock::new(utc_ms(2026, 11, 15, 12, 0, 0, 0)));
        // the production runner, stopped by the harness's watch instead of signals
        let options = Options {
            clock: Some(clock.clone()),
            ..Default::default()
        };
        let running = vivgate::start(&config_path, options, Shutdown::Watch(stop_rx)).unwrap();
        let (addr, tls_addr) = (
            running.addresses.listen,
            running.addresses.tls.first().copied(),
        );
        let gw = running.gateway.clone();
        Harness {
            addr,
            tls_addr,
            h2c_addr: None,
            admin_addr: running.addresses.admin,
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

    /// The harness's config without its `[usage]` section, for a gateway of a test's own.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vivgate.toml"))
            .unwrap()
            .replace(HARNESS_STORE, "\n")
    }

    pub fn write_tenants(&self, text: &str) {
        std::fs::write(self.dir.path().join("tenants.toml"), text).unwrap();
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.dir.path().join("vivgate.toml"), text).unwrap();
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
