//! Short-window abuse limits, separate from the monthly quotas: failed authentications per
//! client address (key guessing) and a per-group burst limit per second.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use pingora_limits::rate::Rate;

use crate::config::FailedAuthLimit;

/// Addresses tracked at most. Past it, entries whose window and block are over are dropped (at
/// most once a second); while it stays full, new addresses are not tracked.
const MAX_TRACKED: usize = 100_000;

/// The unit an address is counted in: an IPv4 address, or an IPv6 /64 (one subscriber usually
/// holds a whole /64, so counting /128s would let it pick a fresh address per guess).
fn client_unit(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    window_start: Instant,
    count: u32,
    blocked_until: Option<Instant>,
}

/// Counts 401s per client address. After `limit` of them within `window`, the address is
/// blocked for `block`: its requests get a 429 before any key lookup.
#[derive(Debug, Default)]
pub struct FailedAuth {
    by_addr: DashMap<IpAddr, Failures, ahash::RandomState>,
    /// Addresses blocked now or recently: while 0, [`FailedAuth::blocked`] touches no map.
    blocked: AtomicUsize,
    /// When the map was last pruned (for the once-a-second bound).
    last_prune: std::sync::Mutex<Option<Instant>>,
}

impl FailedAuth {
    pub fn new() -> Self {
        Self::default()
    }

    /// [`FailedAuth::blocked`] now; the clock is read only while some address is blocked.
    pub fn blocked_now(&self, addr: IpAddr) -> Option<Duration> {
        if self.blocked.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.blocked(addr, Instant::now())
    }

    /// How long `addr` is still blocked for, if it is.
    pub fn blocked(&self, addr: IpAddr, now: Instant) -> Option<Duration> {
        if self.blocked.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let until = self.by_addr.get(&client_unit(addr))?.blocked_until?;
        until.checked_duration_since(now).filter(|d| !d.is_zero())
    }

    /// How many addresses are blocked at `now` (for the metrics; walks the tracked addresses,
    /// at most `MAX_TRACKED`, only while some are blocked).
    pub fn blocked_count(&self, now: Instant) -> usize {
        if self.blocked.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.by_addr
            .iter()
            .filter(|e| e.blocked_until.is_some_and(|until| until > now))
            .count()
    }

    /// Records a failed authentication from `addr`; true when it starts a block.
    pub fn record(&self, addr: IpAddr, now: Instant, limit: FailedAuthLimit) -> bool {
        let addr = client_unit(addr);
        if self.by_addr.len() >= MAX_TRACKED && !self.by_addr.contains_key(&addr) {
            let due = self.last_prune.lock().is_ok_and(|mut last| {
                let due = last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
                if due {
                    *last = Some(now);
                }
                due
            });
            if due {
                self.prune(now, limit);
            }
            if self.by_addr.len() >= MAX_TRACKED {
                return false;
            }
        }
        let mut e = self.by_addr.entry(addr).or_insert(Failures {
            window_start: now,
            count: 0,
            blocked_until: None,
        });
        if let Some(until) = e.blocked_until {
            if until > now {
                return false;
            }
            e.blocked_until = None;
            self.blocked.fetch_sub(1, Ordering::Relaxed);
            e.count = 0;
            e.window_start = now;
        }
        if now.duration_since(e.window_start) > limit.window {
            e.window_start = now;
            e.count = 0;
        }
        e.count += 1;
        if e.count >= limit.limit {
            e.blocked_until = Some(now + limit.block);
            self.blocked.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    fn prune(&self, now: Instant, limit: FailedAuthLimit) {
        self.by_addr.retain(|_, f| match f.blocked_until {
            Some(until) if until > now => true,
            Some(_) => {
                self.blocked.fetch_sub(1, Ordering::Relaxed);
                false
            }
            None => now.duration_since(f.window_start) <= limit.window,
        });
    }
}

/// Requests per group in the current second, estimated (a count-min sketch: it may over-count
/// when groups collide in all of its rows, never under-count). Not a billing quota.
pub struct Burst {
    rate: Rate,
}

impl Default for Burst {
    fn default() -> Self {
        Burst {
            rate: Rate::new(Duration::from_secs(1)),
        }
    }
}

impl Burst {
    /// Counts one request of `group`; true when it is within `per_second`.
    pub fn admit(&self, group: &str, per_second: u32) -> bool {
        self.rate.observe(&group, 1) <= per_second as isize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_and_releases_after_the_block() {
        let f = FailedAuth::new();
        let limit = FailedAuthLimit {
            limit: 3,
            window: Duration::from_secs(10),
            block: Duration::from_secs(60),
        };
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        assert!(!f.record(a, t0, limit));
        assert!(!f.record(a, t0, limit));
        assert_eq!(f.blocked(a, t0), None);
        assert!(f.record(a, t0, limit));
        assert_eq!(f.blocked(a, t0), Some(Duration::from_secs(60)));
        assert_eq!(f.blocked(b, t0), None);
        let later = t0 + Duration::from_secs(61);
        assert_eq!(f.blocked(a, later), None);
        // a new window starts after the block
        assert!(!f.record(a, later, limit));
        assert_eq!(f.blocked.load(Ordering::Relaxed), 0);
        // an IPv6 /64 is one client
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let v6other: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert!(!f.record(v6a, t0, limit));
        assert!(!f.record(v6b, t0, limit));
        assert!(f.record(v6a, t0, limit));
        assert!(f.blocked(v6b, t0).is_some());
        assert_eq!(f.blocked(v6other, t0), None);
        // failures spread wider than the window never block
        let mut t = later;
        for _ in 0..10 {
            t += Duration::from_secs(11);
            assert!(!f.record(b, t, limit));
        }
    }

    #[test]
    fn burst_admits_up_to_the_rate() {
        let b = Burst::default();
        let admitted = (0..10).filter(|_| b.admit("g", 4)).count();
        // the test runs within one second window, or straddles two
        assert!((4..=8).contains(&admitted), "{admitted}");
        assert!(b.admit("other", 4));
    }
}
