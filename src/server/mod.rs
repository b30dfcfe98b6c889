//! Running the gateway.
//!
//! [`start`] is the production runner: it loads the config, opens the usage store the config
//! names, builds the shared [`Gateway`] and runs it under pingora's `Server` (one service per
//! listener, active health checks, the usage flush) with the admin listener on a thread of its
//! own. `vivgate --config` runs it with [`Shutdown::Signals`]; the integration tests run the
//! same runner in-process with [`Shutdown::Watch`] and `:0` addresses, whose ports
//! [`Running::addresses`] reports. [`Running::wait`] returns once the server has stopped and
//! the usage store has been flushed one last time.
//!
//! [`serve`] is vivgate's own accept loop, for the demo and for the tests' extra listeners.

pub(crate) mod admin_listener;
mod notify;
mod serve;
mod services;
mod signals;

use std::net::{SocketAddr, TcpListener as StdTcpListener, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use tokio::sync::watch;

use crate::clock::{Clock, Month, SystemClock};
use crate::config::{self, UsageSettings};
use crate::front::{Front, ListenerSettings};
use crate::gateway::Gateway;
use crate::usage::embedded::EmbeddedStore;
use crate::usage::{MemoryStore, Store, UsageStore};

use serve::tls_acceptor;
pub use serve::{listener_app, proxy_app, serve, serve_counted};
pub(crate) use services::health_checks;
pub use signals::Shutdown;

/// The error of a start or a stop: what went wrong, in words for the operator.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How [`start`] runs, beyond what the config file says.
#[derive(Default)]
pub struct Options {
    /// `-u`: take the listening sockets (and the usage store) over from a running vivgate.
    pub upgrade: bool,
    /// The clock the gateway counts months by (the system clock when `None`); tests set it.
    pub clock: Option<Arc<dyn Clock>>,
}

/// The addresses a started gateway listens on, in the config's order; a `:0` port is the one
/// the system chose.
#[derive(Debug, Clone)]
pub struct Addresses {
    /// `server.listen`.
    pub listen: SocketAddr,
    /// `[[server.tls]]`, in the config's order.
    pub tls: Vec<SocketAddr>,
    /// `admin.listen`, once bound (after an upgrade the old process may still hold it).
    pub admin: Option<SocketAddr>,
}

/// A started gateway.
pub struct Running {
    pub gateway: Arc<Gateway>,
    pub addresses: Addresses,
    server: std::thread::JoinHandle<Result<(), String>>,
}

impl Running {
    /// Blocks until the gateway has stopped (see [`Shutdown`]) and flushed its usage store.
    ///
    /// pingora's runtimes drop their last tasks, which hold the gateway, just after the server
    /// returns: the usage store itself (an embedded store's file) is closed once the last
    /// holder of the gateway lets go, a moment later.
    pub fn wait(self) -> Result<(), BoxError> {
        match self.server.join() {
            Ok(result) => Ok(result?),
            Err(_) => Err("the server thread panicked".into()),
        }
    }
}

/// Runs the gateway described by `config_path` until `shutdown`, then flushes the usage store
/// one last time. See [`start`].
pub fn run(config_path: &Path, options: Options, shutdown: Shutdown) -> Result<(), BoxError> {
    let running = start(config_path, options, shutdown)?;
    notify::ready_when_serving(running.addresses.listen);
    running.wait()
}

/// Starts the gateway described by `config_path` on a thread of its own. It returns once its
/// `:0` listeners and the admin listener are bound; pingora binds the others (or, after an
/// upgrade, takes them over) as its services start.
///
/// With `options.upgrade` (`-u`), pingora's bootstrap first takes the listening sockets over
/// from the running process, which releases the usage store just before it hands them over
/// (see [`UsageStore::release_for_handover`]); the store is opened after that.
pub fn start(
    config_path: &Path,
    options: Options,
    shutdown: Shutdown,
) -> Result<Running, BoxError> {
    let snap = config::load(config_path)?;
    crate::memory::lazy_memory_return();
    let startup = snap.startup.clone();
    let conf = ServerConf {
        threads: startup.threads,
        grace_period_seconds: Some(startup.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(startup.grace_period_seconds),
        pid_file: startup.pid_file.to_string_lossy().into_owned(),
        upgrade_sock: startup.upgrade_sock.to_string_lossy().into_owned(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: options.upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let clock = options.clock.unwrap_or_else(|| Arc::new(SystemClock));
    let store = open_store(&startup.usage, &*clock, options.upgrade)?;
    let gw = Arc::new(Gateway::new(
        snap,
        store,
        clock,
        Some(config_path.to_path_buf()),
    ));
    gw.load_overrides()?;
    let (stop_admin, admin_stopped) = watch::channel(false);
    let mut addresses = add_listeners(&mut server, &gw, options.upgrade)?;
    add_background(&mut server, &gw);
    let mut admin = None;
    if let Some(addr) = &startup.admin_listen {
        let (bound, thread) =
            admin_listener::start(addr, gw.clone(), options.upgrade, admin_stopped)?;
        addresses.admin = bound;
        admin = Some(thread);
    }
    if gw.snapshot().tenants_source == crate::fleet::TenantsSource::DiskSnapshot {
        tracing::warn!("tenants: serving the disk copy until Redis answers");
    }
    gw.follow_tenants();
    tracing::info!(listen = %addresses.listen, config = %config_path.display(), "vivgate starting");

    let gateway = gw.clone();
    let thread = std::thread::Builder::new()
        .name("vivgate-server".into())
        .spawn(move || {
            server.run(RunArgs {
                shutdown_signal: shutdown.watcher(gw.clone()),
            });
            // every request has finished or been cut off: what is in memory now is final
            // (after a handover it goes to a handover file the new process merges)
            let flushed = gw.store().shutdown().map_err(|e| e.to_string());
            let _ = stop_admin.send(true);
            if let Some(admin) = admin {
                let _ = admin.join();
            }
            if flushed.is_ok() {
                tracing::info!("usage flushed; vivgate stopped");
            }
            flushed
        })?;
    Ok(Running {
        gateway,
        addresses,
        server: thread,
    })
}

/// The usage store `[usage]` names: Redis, the embedded file (after an upgrade's handover, the
/// old process may hold it a few seconds longer), or memory.
fn open_store(usage: &UsageSettings, clock: &dyn Clock, upgrade: bool) -> Result<Store, BoxError> {
    if let Some(redis) = &usage.redis {
        // leases are timed by the wall clock whatever clock the months are counted by
        let store = crate::usage::redis::RedisStore::connect(redis.clone(), Arc::new(SystemClock))?;
        tracing::info!(url = %redis.url, instance = store.instance(), "usage store: redis");
        return Ok(crate::usage::redis::SharedRedisStore(store).into());
    }
    match &usage.path {
        None => {
            tracing::warn!("usage store is \"memory\": counts are lost when the gateway stops");
            Ok(MemoryStore::counting_days().into())
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

/// One service per listener: the plain one and each TLS one.
///
/// One proxy (and upstream pool) per service: pingora runs each service on a runtime of its
/// own, and a pooled upstream connection reused from another runtime is driven by that
/// runtime's reactor (measured: 1.17× CPU per request on the plain listener of a process whose
/// TLS listener had shared the pool).
fn add_listeners(
    server: &mut Server,
    gw: &Arc<Gateway>,
    upgrade: bool,
) -> Result<Addresses, BoxError> {
    let snap = gw.snapshot();
    let startup = &snap.startup;
    let plain = ListenerSettings {
        proxy_protocol: startup.proxy_protocol,
        tls: None,
        h2c: startup.h2c,
    };
    let front = Front::new(
        gw.clone(),
        serve::new_proxy(&server.configuration, gw),
        plain,
    );
    let listen = add_listener(server, "vivgate".into(), front, &startup.listen, upgrade)?;
    let mut tls = Vec::new();
    for t in &startup.tls_listeners {
        let settings = ListenerSettings {
            proxy_protocol: t.proxy_protocol,
            tls: Some(tls_acceptor(gw, &t.listen, t.http2)?),
            h2c: false,
        };
        let front = Front::new(
            gw.clone(),
            serve::new_proxy(&server.configuration, gw),
            settings,
        );
        let name = format!("vivgate tls {}", t.listen);
        tls.push(add_listener(server, name, front, &t.listen, upgrade)?);
        tracing::info!(listen = %t.listen, http2 = t.http2, "TLS listener");
    }
    Ok(Addresses {
        listen,
        tls,
        admin: None,
    })
}

/// Adds the service of one listener on `listen`. A `:0` address is bound here, so that its
/// port can be reported, and handed to pingora through [`services::Prebound`]; any other
/// address pingora binds (or inherits, in an upgrade) when the service starts.
fn add_listener(
    server: &mut Server,
    name: String,
    front: Front,
    listen: &str,
    upgrade: bool,
) -> Result<SocketAddr, BoxError> {
    let addr = listen
        .to_socket_addrs()
        .map_err(|e| format!("listen {listen}: {e}"))?
        .next()
        .ok_or_else(|| format!("listen {listen}: no address"))?;
    let mut service = Service::new(name, front);
    if addr.port() == 0 && upgrade {
        return Err(format!("listen {listen}: a :0 address cannot be taken over (-u)").into());
    }
    if addr.port() != 0 {
        service.add_tcp(listen);
        server.add_service(service);
        return Ok(addr);
    }
    let socket = StdTcpListener::bind(addr).map_err(|e| format!("listen {listen}: {e}"))?;
    socket.set_nonblocking(true)?;
    let bound = socket.local_addr()?;
    service.add_tcp(&bound.to_string());
    server.add_service(services::Prebound {
        inner: service,
        sockets: vec![(bound.to_string(), socket)],
    });
    Ok(bound)
}

fn add_background(server: &mut Server, gw: &Arc<Gateway>) {
    server.add_service(background_service(
        "health checks",
        services::HealthService(gw.clone()),
    ));
    server.add_service(background_service(
        "usage flush",
        services::FlushService {
            gw: gw.clone(),
            every: gw.snapshot().startup.usage.flush_interval,
        },
    ));
}
