//! Quota leases: a request spends a lease this instance holds, or waits for one grant (one
//! request per group asks Redis, the others queue behind it), or falls to the outage policy.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Cell, OutagePolicy, RedisStore};
use crate::clock::Month;
use crate::usage::{GroupId, Take};

impl RedisStore {
    /// A lease confirmed by Redis recently enough to spend: within two settlement intervals
    /// (and half the TTL), so what an instance cut off from Redis spends before stopping is at
    /// most about two intervals of its traffic, long before other instances may reclaim it.
    pub(super) fn lease_valid(&self, cell: &Cell, now: i64) -> bool {
        let window = (2 * self.settings.flush_interval + self.settings.timeout)
            .min(self.settings.lease_ttl / 2)
            .as_millis() as i64;
        now - cell.lease_confirmed_ms.load(Ordering::Relaxed) < window
    }

    /// A lease that can no longer be spent goes back (it is returned at the next settlement).
    pub(super) fn drop_stale_lease(&self, cell: &Cell, now: i64) {
        if !self.lease_valid(cell, now) && cell.lease.load(Ordering::Acquire) > 0 {
            let back = cell.lease.swap(0, Ordering::AcqRel);
            cell.lease_returned.fetch_add(back, Ordering::AcqRel);
        }
    }

    pub(super) fn spend_lease(&self, cell: &Cell, now: i64) -> bool {
        if !self.lease_valid(cell, now) {
            self.drop_stale_lease(cell, now);
            return false;
        }
        let spent = cell
            .lease
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| l.checked_sub(1))
            .is_ok();
        if spent {
            cell.lease_used.fetch_add(1, Ordering::AcqRel);
        }
        spent
    }

    pub(super) fn remaining(&self, cell: &Cell, limit: u64) -> u64 {
        limit
            .saturating_sub(cell.known[0].load(Ordering::Acquire))
            .saturating_add(cell.lease.load(Ordering::Acquire))
            .min(limit)
    }

    pub(super) async fn take_hard(
        &self,
        group: &GroupId,
        month: Month,
        limit: u64,
        tier: Option<&str>,
    ) -> Take {
        let cell = self.cell(group, month);
        cell.limit.store(limit, Ordering::Relaxed);
        let now = self.clock.now_ms();
        cell.last_use_ms.store(now, Ordering::Relaxed);
        if self.spend_lease(&cell, now) {
            return Take::Admitted {
                remaining: self.remaining(&cell, limit),
                overage: false,
            };
        }
        // none held: wait for a grant. One request per cell asks Redis (each ask bounded by the
        // store timeout); the others queue behind it and spend what it got. The queue wait is
        // bounded too; past it, only a Redis that is down leads to the outage policy.
        let queue_limit = (self.settings.timeout * 20).max(Duration::from_secs(1));
        let wait = tokio::time::timeout(queue_limit, cell.fetching.lock()).await;
        let Ok(_guard) = wait else {
            if self.is_down(self.clock.now_ms()) {
                return self.outage_take(&cell, limit, tier, now);
            }
            return Take::Unavailable;
        };
        let now = self.clock.now_ms();
        if self.spend_lease(&cell, now) {
            return Take::Admitted {
                remaining: self.remaining(&cell, limit),
                overage: false,
            };
        }
        if now - cell.exhausted_at_ms.load(Ordering::Relaxed) < 250 {
            return Take::Refused;
        }
        if self.is_down(now) {
            return self.outage_take(&cell, limit, tier, now);
        }
        let want = self.settings.lease_max.max(1);
        let started = Instant::now();
        // numbered, and carrying what this instance received so far (both under `fetching`)
        let number = cell.grants_sent.fetch_add(1, Ordering::AcqRel) + 1;
        let result = self
            .script::<(i64, u64)>(
                &self.lease,
                vec![Self::key(group, month)],
                vec![
                    limit.to_string(),
                    want.to_string(),
                    self.instance.clone(),
                    now.to_string(),
                    self.settings.lease_ttl.as_millis().to_string(),
                    Self::expire_at(month).to_string(),
                    cell.received.load(Ordering::Acquire).to_string(),
                    number.to_string(),
                ],
            )
            .await;
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok((grant, _))) if grant < 0 => {
                // stale (cannot happen while `fetching` is held): nothing was granted
                Take::Unavailable
            }
            Ok(Ok((grant, taken))) => {
                let grant = grant as u64;
                self.mark_up();
                cell.received.fetch_add(grant, Ordering::AcqRel);
                cell.reconciled.fetch_max(number, Ordering::AcqRel);
                cell.known[0].store(taken, Ordering::Release);
                if grant == 0 {
                    cell.exhausted_at_ms.store(now, Ordering::Relaxed);
                    return Take::Refused;
                }
                self.metrics.lease_grants.inc();
                self.metrics.leased_calls.inc_by(grant);
                cell.lease_confirmed_ms.store(now, Ordering::Relaxed);
                cell.lease.fetch_add(grant - 1, Ordering::AcqRel);
                cell.lease_used.fetch_add(1, Ordering::AcqRel);
                Take::Admitted {
                    remaining: self.remaining(&cell, limit),
                    overage: false,
                }
            }
            Ok(Err(e)) => {
                tracing::debug!("redis lease: {e}");
                self.mark_down(now);
                self.outage_take(&cell, limit, tier, now)
            }
            Err(_) => {
                self.mark_down(now);
                self.outage_take(&cell, limit, tier, now)
            }
        }
    }

    /// Redis did not answer: the outage policy decides.
    pub(super) fn outage_take(
        &self,
        cell: &Cell,
        limit: u64,
        tier: Option<&str>,
        now: i64,
    ) -> Take {
        if self.spend_lease(cell, now) {
            return Take::Admitted {
                remaining: self.remaining(cell, limit),
                overage: false,
            };
        }
        match self.policy_for(tier) {
            OutagePolicy::Deny => Take::Unavailable,
            OutagePolicy::Allow => {
                let allowance = ((limit as f64) * self.settings.outage_allowance).ceil() as u64;
                self.metrics
                    .outage_bound
                    .set(self.metrics.outage_bound.get().max(allowance as i64));
                // at most `allowance` per instance, and never more than `allowance` past the
                // quota as this instance last knew it. `known` is read after `n`, at each try: a
                // settlement stores Redis's new total before it takes its batch's calls off
                // `n`, so a try that sees the smaller `n` sees the larger total too
                let admitted = cell
                    .outage_admitted
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        let known = cell.known[0].load(Ordering::Acquire);
                        (n < allowance && known + n < limit.saturating_add(allowance))
                            .then_some(n + 1)
                    })
                    .is_ok();
                if !admitted {
                    return Take::Unavailable;
                }
                self.metrics.outage_admitted.inc();
                cell.outage_pending.fetch_add(1, Ordering::AcqRel);
                Take::Admitted {
                    remaining: self.remaining(cell, limit),
                    overage: false,
                }
            }
        }
    }
}
