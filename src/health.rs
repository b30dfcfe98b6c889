//! Server health: passive and active. After `threshold` consecutive connect failures a server
//! is marked down and skipped without waiting for the next active check; it comes back after
//! the next successful active health check, or, when the upstream has no active checks, once
//! `down_for` has passed: then one request tries it (the others keep skipping it) and a
//! connection that succeeds brings it back. A server whose active check fails is skipped until
//! one passes.
//!
//! The state of each server lives apart from the snapshot, and a reload hands it to the new
//! snapshot's server with the same identity (upstream name, address, TLS and SNI): a server
//! that was down stays down across a reload; a changed or new one starts up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

pub struct ServerHealth {
    /// 0: passive health is off.
    threshold: u32,
    /// `None`: only an active check brings a server back.
    down_for: Option<Duration>,
    servers: Vec<Server>,
}

/// What makes a server the same server across a reload (the upstream's name is matched by the
/// caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerId {
    pub addr: SocketAddr,
    /// The name sent as SNI and verified; `None`: plain TCP.
    pub tls_name: Option<String>,
}

struct Server {
    id: ServerId,
    state: Arc<ServerState>,
}

#[derive(Default)]
struct ServerState {
    failures: AtomicU32,
    /// When the server was marked down ([`now_ms`]); 0: up.
    down_since: AtomicU64,
    /// Its last active health check failed.
    check_failed: AtomicBool,
}

/// Milliseconds on a monotonic clock (from the first call), never 0: a step of the wall clock
/// does not keep a server down.
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    (start.elapsed().as_millis() as u64).saturating_add(1)
}

impl ServerHealth {
    pub fn new(servers: Vec<ServerId>, threshold: u32, down_for: Option<Duration>) -> Self {
        ServerHealth {
            threshold,
            down_for,
            servers: servers
                .into_iter()
                .map(|id| Server {
                    id,
                    state: Arc::default(),
                })
                .collect(),
        }
    }

    /// Plain-TCP servers at `addrs` (tests).
    pub fn plain(addrs: &[SocketAddr], threshold: u32, down_for: Option<Duration>) -> Self {
        let ids = addrs
            .iter()
            .map(|&addr| ServerId {
                addr,
                tls_name: None,
            })
            .collect();
        Self::new(ids, threshold, down_for)
    }

    /// Takes over the state of `old`'s servers that are the same servers (a reload of the same
    /// upstream): they stay down, or keep counting failures, where they were.
    pub fn adopt(&mut self, old: &ServerHealth) {
        for s in &mut self.servers {
            if let Some(o) = old.servers.iter().find(|o| o.id == s.id) {
                s.state = o.state.clone();
            }
        }
    }

    fn server(&self, addr: &SocketAddr) -> Option<&ServerState> {
        self.servers
            .iter()
            .find(|s| s.id.addr == *addr)
            .map(|s| &*s.state)
    }

    /// With active checks off, how long a server marked down is skipped.
    pub fn down_for(&self) -> Option<Duration> {
        self.down_for
    }

    /// Is `addr` marked down (and not yet due for another try), or did its last active check
    /// fail?
    pub fn is_down(&self, addr: &SocketAddr) -> bool {
        let Some(s) = self.server(addr) else {
            return false;
        };
        // (an active check's verdict counts only while the upstream has active checks: a reload
        // that turns them off must not keep a server out for good)
        if self.down_for.is_none() && s.check_failed.load(Relaxed) {
            return true;
        }
        let since = s.down_since.load(Relaxed);
        if since == 0 {
            return false;
        }
        match self.down_for {
            Some(d) if now_ms().saturating_sub(since) >= d.as_millis() as u64 => {
                // one request (the one that moves the mark) tries it again; a failure marks it
                // down afresh, a connection brings it back
                let now = now_ms();
                let trial = s
                    .down_since
                    .compare_exchange(since, now, Relaxed, Relaxed)
                    .is_ok();
                if trial {
                    s.failures.store(self.threshold.saturating_sub(1), Relaxed);
                }
                !trial
            }
            _ => true,
        }
    }

    /// A connection to `addr` failed. True when this marks it down.
    pub fn failed(&self, addr: &SocketAddr) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let Some(s) = self.server(addr) else {
            return false;
        };
        let n = s.failures.fetch_add(1, Relaxed) + 1;
        // (a failed trial restarts the down period; only a first mark is reported)
        n >= self.threshold && s.down_since.swap(now_ms(), Relaxed) == 0
    }

    /// A connection to `addr` succeeded: its failures are no longer consecutive, and a server
    /// on trial is up again.
    pub fn connected(&self, addr: &SocketAddr) {
        if let Some(s) = self.server(addr) {
            if s.check_failed.load(Relaxed) {
                s.check_failed.store(false, Relaxed);
            }
            if s.failures.load(Relaxed) != 0 {
                s.failures.store(0, Relaxed);
            }
            if s.down_since.load(Relaxed) != 0 {
                s.down_since.store(0, Relaxed);
            }
        }
    }

    /// Whether the last active health check of `addr` failed.
    pub fn check_failing(&self, addr: &SocketAddr) -> bool {
        self.server(addr)
            .is_some_and(|s| s.check_failed.load(Relaxed))
    }

    /// An active health check of `addr` passed (`ok`) or failed. True when a pass brings back
    /// a server that was down.
    pub fn checked(&self, addr: &SocketAddr, ok: bool) -> bool {
        let Some(s) = self.server(addr) else {
            return false;
        };
        if !ok {
            s.check_failed.store(true, Relaxed);
            return false;
        }
        s.failures.store(0, Relaxed);
        let was_failing = s.check_failed.swap(false, Relaxed);
        (s.down_since.swap(0, Relaxed) != 0) | was_failing
    }
}

/// pingora's TCP health check, named: when a server's health flips, pingora logs the check's
/// summary of it, which by default is the whole `Backend` debug dump (peer options and all,
/// ~1.5 KB); this one says which upstream and address.
pub struct NamedTcpCheck {
    pub upstream: String,
    pub inner: Box<pingora::lb::health_check::TcpHealthCheck>,
}

#[async_trait::async_trait]
impl pingora::lb::health_check::HealthCheck for NamedTcpCheck {
    async fn check(&self, target: &pingora::lb::Backend) -> pingora::Result<()> {
        self.inner.check(target).await
    }

    async fn health_status_change(&self, target: &pingora::lb::Backend, healthy: bool) {
        self.inner.health_status_change(target, healthy).await
    }

    fn backend_summary(&self, target: &pingora::lb::Backend) -> String {
        format!("upstream {} server {}", self.upstream, target.addr)
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_after_consecutive_failures_and_back_after_a_check_or_a_pause() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let h = ServerHealth::plain(&[a], 3, None);
        assert!(!h.failed(&a));
        assert!(!h.failed(&a));
        h.connected(&a);
        assert!(!h.failed(&a));
        assert!(!h.failed(&a));
        assert!(!h.is_down(&a));
        assert!(h.failed(&a), "the third consecutive failure marks it down");
        assert!(h.is_down(&a));
        assert!(!h.failed(&a), "already down");
        assert!(h.checked(&a, true));
        assert!(!h.is_down(&a));
        // a failed active check keeps it out until one passes
        h.checked(&a, false);
        assert!(h.is_down(&a));
        assert!(h.checked(&a, true));
        assert!(!h.is_down(&a));

        let timed = ServerHealth::plain(&[a], 1, Some(Duration::from_millis(30)));
        assert!(timed.failed(&a));
        assert!(timed.is_down(&a));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!timed.is_down(&a), "one request tries it");
        assert!(timed.is_down(&a), "the others keep skipping it");
        assert!(!timed.failed(&a), "a failed trial restarts the pause");
        assert!(timed.is_down(&a));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!timed.is_down(&a), "the next trial");
        timed.connected(&a);
        assert!(
            !timed.is_down(&a) && !timed.is_down(&a),
            "a connection brings it back"
        );

        let off = ServerHealth::plain(&[a], 0, None);
        assert!(!off.failed(&a) && !off.is_down(&a));
    }

    #[test]
    fn a_reload_keeps_the_state_of_the_same_servers_only() {
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let id = |addr, tls_name: Option<&str>| ServerId {
            addr,
            tls_name: tls_name.map(str::to_string),
        };
        let old = ServerHealth::new(vec![id(a, None), id(b, Some("api"))], 1, None);
        assert!(old.failed(&a));
        assert!(old.failed(&b));
        old.checked(&b, false);
        // a stays the same; b now has another SNI: a changed server starts up
        let mut new = ServerHealth::new(vec![id(a, None), id(b, Some("api2"))], 1, None);
        new.adopt(&old);
        assert!(new.is_down(&a), "the same server stays down");
        assert!(!new.is_down(&b), "a changed server starts up");
        // the state is shared with the old snapshot's requests still in flight
        assert!(old.checked(&a, true));
        assert!(!new.is_down(&a));
        // a failed active check, then a reload that turns active checks off: it does not keep
        // the server out
        old.checked(&a, false);
        let mut passive_only =
            ServerHealth::new(vec![id(a, None)], 1, Some(Duration::from_millis(100)));
        passive_only.adopt(&old);
        assert!(!passive_only.is_down(&a));
    }
}
