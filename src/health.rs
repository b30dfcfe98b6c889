//! Passive health: a server whose connections keep failing is skipped without waiting for the
//! next active check. After `threshold` consecutive connect failures it is marked down; it comes
//! back after the next successful active health check, or, when the upstream has no active
//! checks, once `down_for` has passed: then one request tries it (the others keep skipping it)
//! and a connection that succeeds brings it back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

pub struct PassiveHealth {
    /// 0: passive health is off.
    threshold: u32,
    /// `None`: only an active check brings a server back.
    down_for: Option<Duration>,
    servers: Vec<Server>,
}

struct Server {
    addr: SocketAddr,
    failures: AtomicU32,
    /// When the server was marked down ([`now_ms`]); 0: up.
    down_since: AtomicU64,
}

/// Milliseconds on a monotonic clock (from the first call), never 0: a step of the wall clock
/// does not keep a server down.
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    (start.elapsed().as_millis() as u64).saturating_add(1)
}

impl PassiveHealth {
    pub fn new(addrs: &[SocketAddr], threshold: u32, down_for: Option<Duration>) -> Self {
        PassiveHealth {
            threshold,
            down_for,
            servers: addrs
                .iter()
                .map(|&addr| Server {
                    addr,
                    failures: AtomicU32::new(0),
                    down_since: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    fn server(&self, addr: &SocketAddr) -> Option<&Server> {
        self.servers.iter().find(|s| s.addr == *addr)
    }

    /// With active checks off, how long a server marked down is skipped.
    pub fn down_for(&self) -> Option<Duration> {
        self.down_for
    }

    /// Is `addr` marked down (and not yet due for another try)?
    pub fn is_down(&self, addr: &SocketAddr) -> bool {
        let Some(s) = self.server(addr) else {
            return false;
        };
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
            if s.failures.load(Relaxed) != 0 {
                s.failures.store(0, Relaxed);
            }
            if s.down_since.load(Relaxed) != 0 {
                s.down_since.store(0, Relaxed);
            }
        }
    }

    /// An active health check found `addr` healthy: it is up again.
    pub fn checked_ok(&self, addr: &SocketAddr) -> bool {
        let Some(s) = self.server(addr) else {
            return false;
        };
        s.failures.store(0, Relaxed);
        s.down_since.swap(0, Relaxed) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_after_consecutive_failures_and_back_after_a_check_or_a_pause() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let h = PassiveHealth::new(&[a], 3, None);
        assert!(!h.failed(&a));
        assert!(!h.failed(&a));
        h.connected(&a);
        assert!(!h.failed(&a));
        assert!(!h.failed(&a));
        assert!(!h.is_down(&a));
        assert!(h.failed(&a), "the third consecutive failure marks it down");
        assert!(h.is_down(&a));
        assert!(!h.failed(&a), "already down");
        assert!(h.checked_ok(&a));
        assert!(!h.is_down(&a));

        let timed = PassiveHealth::new(&[a], 1, Some(Duration::from_millis(30)));
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

        let off = PassiveHealth::new(&[a], 0, None);
        assert!(!off.failed(&a) && !off.is_down(&a));
    }
}
