//! Running the gateway: under pingora's `Server` for production (`vivgate --config`), or on a
//! listener of our own (`serve`) for the demo and the tests, with the same proxy application.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora::proxy::{http_proxy, HttpProxy};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use tokio::net::TcpListener;

use crate::admin::AdminApp;
use crate::clock::{Clock, Month, SystemClock};
use crate::config;
use crate::front::{Front, ListenerSettings};
use crate::gateway::Gateway;
use crate::proxy::VivGate;
use crate::usage::embedded::EmbeddedStore;
use crate::usage::{MemoryStore, Store, UsageStore};

/// The application of a plain listener (vivgate's front, then pingora's proxy), ready for
/// [`serve`].
pub fn proxy_app(gw: Arc<Gateway>) -> Arc<Front> {
    listener_app(gw, ListenerSettings::default())
}

/// The application of a listener with `settings` (PROXY header, TLS, h2c), ready for [`serve`].
pub fn listener_app(gw: Arc<Gateway>, settings: ListenerSettings) -> Arc<Front> {
    let conf = Arc::new(ServerConf::default());
    Arc::new(Front::new(gw.clone(), new_proxy(&conf, &gw), settings))
}

/// The TLS acceptor of the snapshot's listener `listen`: certificates are read from the current
/// snapshot at each handshake, so a reload rotates them.
pub fn tls_acceptor(gw: &Arc<Gateway>, listen: &str, http2: bool) -> Result<Acceptor, String> {
    let gw = gw.clone();
    crate::tls::acceptor(
        listen,
        http2,
        Arc::new(move || gw.snapshot().tls_certs.clone()),
    )
}

/// pingora's proxy with vivgate's HTTP/2 limits (from pingora's bounded defaults) and idle
/// timeout. They take effect at start.
fn new_proxy(conf: &Arc<ServerConf>, gw: &Arc<Gateway>) -> Arc<HttpProxy<VivGate>> {
    let limits = gw.snapshot().limits;
    let mut proxy = http_proxy(conf, VivGate::new(gw.clone()));
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_concurrent_streams(limits.h2_max_concurrent_streams);
    h2.max_header_list_size(limits.h2_max_header_list_bytes);
    proxy.h2_options = Some(h2);
    let mut options = HttpServerOptions::default();
    // the front has already seen the h2c preface before pingora peeks at it again
    options.h2c = true;
    options.h2_idle_timeout = Some(limits.keepalive_timeout);
    proxy.server_options = Some(options);
    Arc::new(proxy)
}

/// Accepts connections on `listener` and hands each to `app` until `shutdown` turns true.
/// Connections already accepted finish on their own tasks.
pub async fn serve<A>(listener: TcpListener, app: Arc<A>, mut shutdown: ShutdownWatch)
where
    A: ServerApp + Send + Sync + 'static,
{
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _peer)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                let fd = tcp.as_raw_fd();
                let mut l4: L4Stream = tcp.into();
                l4.set_socket_digest(SocketDigest::from_raw_fd(fd));
                let stream: Stream = Box::new(l4);
                let app = app.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let mut next = Some(stream);
                    while let Some(s) = next {
                        next = app.process_new(s, &shutdown).await;
                    }
                });
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
}

/// Runs active health checks of every upstream of the current snapshot, each at its own
/// interval, until `shutdown`.
pub async fn health_checks(gw: Arc<Gateway>, mut shutdown: ShutdownWatch) {
    // keyed by balancer: a reload builds new balancers, and each is checked at once
    let mut last: std::collections::HashMap<usize, Instant> = Default::default();
    loop {
        let snap = gw.snapshot();
        last.retain(|k, _| {
            snap.upstreams
                .iter()
                .any(|u| Arc::as_ptr(&u.lb) as usize == *k)
        });
        for up in &snap.upstreams {
            let Some(every) = up.health_interval else {
                continue;
            };
            let key = Arc::as_ptr(&up.lb) as usize;
            if last.get(&key).is_some_and(|t| t.elapsed() < every) {
                continue;
            }
            up.lb.backends().run_health_check(true).await;
            for b in up.lb.backends().get_backend().iter() {
                if let Some(addr) = b.addr.as_inet() {
                    if up.health.checked(addr, up.lb.backends().ready(b)) {
                        tracing::info!(upstream = %up.name, server = %addr, "server back up after a successful health check");
                    }
                }
            }
            last.insert(key, Instant::now());
        }
        // not held across the sleep: a reload retires the old snapshot as soon as it can
        drop(snap);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

struct HealthService(Arc<Gateway>);

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, shutdown: ShutdownWatch) {
        health_checks(self.0.clone(), shutdown).await
    }
}

/// pingora handles only QUIT, TERM and INT, and an unhandled SIGHUP would kill the process:
/// SIGHUP reloads the config here; TERM and INT stop gracefully; QUIT hands over to a new
/// process (`-u`).
struct Signals(Arc<Gateway>);

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut hup), Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => match self.0.clone().reload_in_background().await {
                    Ok(r) => tracing::info!(
                        target: "vivgate::audit",
                        "SIGHUP: configuration reloaded: groups {:?}, keys {:?}, routes {:?}, TLS certificates {:?} ({} new)",
                        r.groups, r.keys, r.routes, r.certificates, r.certificates_new
                    ),
                    Err(e) => tracing::error!(target: "vivgate::audit", "SIGHUP: reload refused, keeping the running configuration: {e}"),
                },
                _ = term.recv() => {
                    self.0.begin_stop();
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = int.recv() => {
                    self.0.begin_stop();
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = quit.recv() => {
                    // the new process opens the store once this one lets go of it
                    if let Err(e) = self.0.store().release_for_handover() {
                        tracing::error!("SIGQUIT ignored: the usage store could not be handed over: {e}");
                        continue;
                    }
                    self.0.begin_stop();
                    return ShutdownSignal::GracefulUpgrade;
                }
            }
        }
    }
}

/// Flushes the usage store at its interval until the runtime stops; the final flush happens
/// after the server has stopped (see [`run`]).
struct FlushService {
    gw: Arc<Gateway>,
    every: Duration,
}

#[async_trait]
impl BackgroundService for FlushService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // keeps flushing through the grace period of a stop, so a kill -9 then still loses at
        // most one interval; the runtime's shutdown ends this loop
        loop {
            tokio::time::sleep(self.every).await;
            let gw = self.gw.clone();
            let result = tokio::task::spawn_blocking(move || gw.store().flush()).await;
            let now = self.gw.clock().now_ms();
            match result {
                Ok(Ok(_)) => self.gw.metrics().flushed(now, true),
                Ok(Err(e)) => {
                    self.gw.metrics().flushed(now, false);
                    tracing::error!("{e}; the counts stay in memory and are retried");
                }
                Err(e) => {
                    self.gw.metrics().flushed(now, false);
                    tracing::error!("usage flush task failed: {e}");
                }
            }
        }
    }
}

/// Runs the gateway described by `config_path` under pingora's server until a stop signal,
/// then flushes the usage store one last time.
///
/// With `upgrade` (`-u`), pingora's bootstrap first takes the listening sockets over from the
/// running process, which releases the usage store just before it hands them over (see
/// [`UsageStore::release_for_handover`]); the store is opened after that.
pub fn run(config_path: &Path, upgrade: bool) -> Result<(), Box<dyn std::error::Error>> {
    let snap = config::load(config_path)?;
    crate::memory::lazy_memory_return();
    let startup = snap.startup.clone();
    let tag = sanitize(&startup.listen);
    let conf = ServerConf {
        threads: startup.threads,
        grace_period_seconds: Some(startup.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(startup.grace_period_seconds),
        pid_file: format!("/tmp/vivgate-{tag}.pid"),
        upgrade_sock: format!("/tmp/vivgate-{tag}-upgrade.sock"),
        ..ServerConf::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let clock = Arc::new(SystemClock);
    let store = open_store(&startup.usage, clock.clone(), upgrade)?;
    let gw = Gateway::new(snap, store, clock, Some(config_path.to_path_buf()));
    run_with(server, Arc::new(gw), upgrade)
}

/// The usage store `[usage]` names: Redis, the embedded file (after an upgrade's handover, the
/// old process may hold it a few seconds longer), or memory.
fn open_store(
    usage: &crate::config::UsageSettings,
    clock: Arc<SystemClock>,
    upgrade: bool,
) -> Result<Store, Box<dyn std::error::Error>> {
    if let Some(redis) = &usage.redis {
        let store = crate::usage::redis::RedisStore::connect(redis.clone(), clock)?;
        tracing::info!(url = %redis.url, instance = store.instance(), "usage store: redis");
        return Ok(crate::usage::redis::SharedRedisStore(store).into());
    }
    match &usage.path {
        None => {
            tracing::warn!("usage store is \"memory\": counts are lost when the gateway stops");
            Ok(MemoryStore::new().into())
        }
        Some(path) => {
            let now = Month::containing(clock.now_ms());
            let wait = Duration::from_secs(if upgrade { 10 } else { 0 });
            let store = EmbeddedStore::open_waiting(path, now, usage.retention_months, wait)?;
            tracing::info!(path = %path.display(), "usage store opened");
            Ok(store.into())
        }
    }
}

fn run_with(
    mut server: Server,
    gw: Arc<Gateway>,
    upgrade: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    gw.load_overrides()?;
    let snap = gw.snapshot();
    let startup = &snap.startup;
    // one proxy (and upstream pool) per service: pingora runs each service on a runtime of its
    // own, and a pooled upstream connection reused from another runtime is driven by that
    // runtime's reactor (measured: 1.17× CPU per request on the plain listener of a process
    // whose TLS listener had shared the pool)
    let plain = ListenerSettings {
        proxy_protocol: startup.proxy_protocol,
        tls: None,
        h2c: startup.h2c,
    };
    let mut service = Service::new(
        "vivgate".to_string(),
        Front::new(gw.clone(), new_proxy(&server.configuration, &gw), plain),
    );
    service.add_tcp(&startup.listen);
    server.add_service(service);
    for t in &startup.tls_listeners {
        let settings = ListenerSettings {
            proxy_protocol: t.proxy_protocol,
            tls: Some(tls_acceptor(&gw, &t.listen, t.http2)?),
            h2c: false,
        };
        let mut service = Service::new(
            format!("vivgate tls {}", t.listen),
            Front::new(gw.clone(), new_proxy(&server.configuration, &gw), settings),
        );
        service.add_tcp(&t.listen);
        server.add_service(service);
        tracing::info!(listen = %t.listen, http2 = t.http2, "TLS listener");
    }
    server.add_service(background_service(
        "health checks",
        HealthService(gw.clone()),
    ));
    server.add_service(background_service(
        "usage flush",
        FlushService {
            gw: gw.clone(),
            every: startup.usage.flush_interval,
        },
    ));
    if let Some(addr) = &startup.admin_listen {
        start_admin(addr, gw.clone(), upgrade)?;
    }
    if snap.tenants_source == crate::fleet::TenantsSource::DiskSnapshot {
        tracing::warn!("tenants: serving the disk copy until Redis answers");
    }
    gw.follow_tenants();
    tracing::info!(listen = %startup.listen, config = %snap.config_path.display(), "vivgate starting");
    drop(snap);
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals(gw.clone())),
    });
    // every request has finished or been cut off: what is in memory now is final (after a
    // handover it goes to a handover file the new process merges)
    gw.store().shutdown()?;
    tracing::info!("usage flushed; vivgate stopped");
    Ok(())
}

/// The admin listener runs on a thread of its own, outside pingora's services, so it keeps
/// answering (`/healthz` → 503) while a stop drains the public listener.
///
/// When taking over from an old process (`upgrade`), the old one still holds the admin port
/// until it exits: the port is then retried in the background instead of failing the start.
fn start_admin(
    addr: &str,
    gw: Arc<Gateway>,
    upgrade: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let bind = |addr: &str| -> std::io::Result<std::net::TcpListener> {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    };
    let first = match bind(addr) {
        Ok(l) => Some(l),
        Err(e) if !upgrade => return Err(format!("admin.listen {addr}: {e}").into()),
        Err(_) => None,
    };
    let addr_owned = addr.to_string();
    // two workers: a slow request (a reload of a large tenants file) never holds up /healthz
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vivgate-admin")
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("vivgate-admin".into())
        .spawn(move || {
            rt.block_on(async move {
                let std_listener = match first {
                    Some(l) => l,
                    None => loop {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if let Ok(l) = bind(&addr_owned) {
                            tracing::info!(admin = %addr_owned, "admin listener taken over");
                            break l;
                        }
                    },
                };
                let Ok(listener) = TcpListener::from_std(std_listener) else {
                    tracing::error!("admin listener could not start");
                    return;
                };
                // the process exit ends this thread; it never shuts down on its own
                let (_keep, never) = tokio::sync::watch::channel(false);
                let app = Arc::new(pingora::apps::http_app::HttpServer::new_app(AdminApp::new(
                    gw,
                )));
                serve(listener, app, never).await;
            })
        })?;
    tracing::info!(admin = addr, "admin listener started");
    Ok(())
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
