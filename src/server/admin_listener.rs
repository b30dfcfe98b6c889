//! The admin listener runs on a thread of its own, outside pingora's services, so it keeps
//! answering (`/healthz` → 503) while a stop drains the public listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::http_app::HttpServer;
use pingora::server::ShutdownWatch;
use tokio::net::TcpListener;

use super::serve::serve;
use super::BoxError;
use crate::admin::AdminApp;
use crate::gateway::Gateway;

fn bind(addr: &str) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Starts the admin API on `addr` until `stop` turns true; returns the address it listens on
/// (`None` while it waits for an old process to let go of the port) and its thread.
///
/// When taking over from an old process (`upgrade`), the old one still holds the admin port
/// until it exits: the port is then retried in the background instead of failing the start.
pub(crate) fn start(
    addr: &str,
    gw: Arc<Gateway>,
    upgrade: bool,
    stop: ShutdownWatch,
) -> Result<(Option<SocketAddr>, std::thread::JoinHandle<()>), BoxError> {
    let first = match bind(addr) {
        Ok(l) => Some(l),
        Err(e) if !upgrade => return Err(format!("admin.listen {addr}: {e}").into()),
        Err(_) => None,
    };
    let bound = first.as_ref().map(|l| l.local_addr()).transpose()?;
    let addr_owned = addr.to_string();
    // two workers: a slow request (a reload of a large tenants file) never holds up /healthz
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vivgate-admin")
        .enable_all()
        .build()?;
    let thread = std::thread::Builder::new()
        .name("vivgate-admin".into())
        .spawn(move || {
            rt.block_on(async move {
                let std_listener = match first {
                    Some(l) => l,
                    None => loop {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if *stop.borrow() {
                            // stopped before the old process let go of the port
                            return;
                        }
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
                let admin = AdminApp::new(gw);
                tokio::spawn(admin.sample_traffic(stop.clone()));
                let app = Arc::new(HttpServer::new_app(admin));
                serve(listener, app, stop).await;
            });
            // connections still open end with the runtime
            rt.shutdown_timeout(Duration::from_secs(1));
        })?;
    tracing::info!(admin = addr, "admin listener started");
    Ok((bound, thread))
}
