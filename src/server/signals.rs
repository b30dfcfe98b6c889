//! How the runner learns to stop: from the process's signals (production), or from a watch the
//! caller holds (a library user, the integration tests; signal handlers are process-wide).

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::sync::watch;

use crate::gateway::Gateway;
use crate::usage::UsageStore;

/// What stops a running gateway.
pub enum Shutdown {
    /// SIGHUP reloads the config; SIGTERM and SIGINT stop gracefully; SIGQUIT hands the
    /// listening sockets and the usage store over to a new process (`-u`).
    Signals,
    /// A graceful stop once the value turns `true` (or the sender is dropped).
    Watch(watch::Receiver<bool>),
}

impl Shutdown {
    pub(super) fn watcher(self, gw: Arc<Gateway>) -> Box<dyn ShutdownSignalWatch> {
        match self {
            Shutdown::Signals => Box::new(Signals(gw)),
            Shutdown::Watch(rx) => Box::new(Watched {
                gw,
                rx: tokio::sync::Mutex::new(rx),
            }),
        }
    }
}

struct Watched {
    gw: Arc<Gateway>,
    rx: tokio::sync::Mutex<watch::Receiver<bool>>,
}

#[async_trait]
impl ShutdownSignalWatch for Watched {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.rx.lock().await;
        let _ = rx.wait_for(|stop| *stop).await;
        self.gw.begin_stop();
        ShutdownSignal::GracefulTerminate
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
                // a task of its own: a stop or an upgrade signal is read while a reload runs
                _ = hup.recv() => {
                    let gw = self.0.clone();
                    tokio::spawn(async move {
                        match gw.reload_in_background().await {
                            Ok(r) => tracing::info!(
                                target: "vivgate::audit",
                                "SIGHUP: configuration reloaded: groups {:?}, keys {:?}, routes {:?}, TLS certificates {:?} ({} new)",
                                r.groups, r.keys, r.routes, r.certificates, r.certificates_new
                            ),
                            Err(e) => tracing::error!(target: "vivgate::audit", "SIGHUP: reload refused, keeping the running configuration: {e}"),
                        }
                    });
                }
                _ = term.recv() => {
                    self.0.begin_stop();
                    super::notify::stopping();
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = int.recv() => {
                    self.0.begin_stop();
                    super::notify::stopping();
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = quit.recv() => {
                    // the new process opens the store once this one lets go of it
                    if let Err(e) = self.0.store().release_for_handover() {
                        tracing::error!("SIGQUIT ignored: the usage store could not be handed over: {e}");
                        continue;
                    }
                    self.0.begin_stop();
                    super::notify::handing_over();
                    return ShutdownSignal::GracefulUpgrade;
                }
            }
        }
    }
}
