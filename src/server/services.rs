//! The background services of the production runner (active health checks, the usage flush)
//! and [`Prebound`], which hands pingora a listening socket the runner bound itself.

use std::collections::HashMap;
use std::net::TcpListener as StdTcpListener;
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ListenFds, RuntimeOpts, ShutdownWatch};
use pingora::services::background::BackgroundService;
use pingora::services::Service;

use crate::gateway::Gateway;
use crate::usage::UsageStore;

/// Runs active health checks of every upstream of the current snapshot, each at its own
/// interval, until `shutdown`.
pub(crate) async fn health_checks(gw: Arc<Gateway>, mut shutdown: ShutdownWatch) {
    // keyed by balancer: a reload builds new balancers, and each is checked at once
    let mut last: HashMap<usize, Instant> = Default::default();
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
                    let (ready, was_failing) =
                        (up.lb.backends().ready(b), up.health.check_failing(addr));
                    if up.health.checked(addr, ready) {
                        tracing::info!(upstream = %up.name, server = %addr, "server back up after a successful health check");
                    } else if !ready && !was_failing {
                        // one line (pingora's own says it with a dump of the peer's options)
                        tracing::warn!(upstream = %up.name, server = %addr, "server down: its active health check failed");
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

pub(super) struct HealthService(pub Arc<Gateway>);

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, shutdown: ShutdownWatch) {
        health_checks(self.0.clone(), shutdown).await
    }
}

/// Flushes the usage store at its interval until the runtime stops; the final flush happens
/// after the server has stopped (see [`super::Running::wait`]).
pub(super) struct FlushService {
    pub gw: Arc<Gateway>,
    pub every: Duration,
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

/// A listening service whose socket the runner bound before pingora started (a `:0` address,
/// so that the caller learns the port): at start it puts the socket into pingora's table of
/// listening sockets under the address the inner service listens on, where pingora's listener
/// takes it as it takes a socket inherited in an upgrade. The table is then also what a later
/// upgrade hands over.
pub(super) struct Prebound<S> {
    pub inner: S,
    pub sockets: Vec<(String, StdTcpListener)>,
}

#[async_trait]
impl<S: Service> Service for Prebound<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        if let Some(table) = &fds {
            let mut table = table.lock();
            for (addr, socket) in self.sockets.drain(..) {
                // pingora's listener owns the descriptor from here on
                table.add(addr, socket.into_raw_fd());
            }
        }
        self.inner
            .start_service(fds, shutdown, listeners_per_fd)
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}
