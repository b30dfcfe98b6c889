//! Settlements: what each group's cell counted since the last one goes to Redis (one script per
//! cell, a sequence number per batch so a retry is applied once), idle and stale leases go
//! back, grants whose answer was lost are reconciled, finished months are archived.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{Batch, Cell, RedisStore, ARCHIVE_AFTER_MS};
use crate::clock::Month;
use crate::usage::GroupId;

impl RedisStore {
    /// Sends every cell's unsettled counts to Redis (one script per cell); with `release`, also
    /// gives back every lease.
    pub(super) async fn settle_all(&self, release: bool) -> usize {
        let _one = self.settling.lock().await;
        let now = self.clock.now_ms();
        let idle_ms = self.settings.lease_idle.as_millis() as i64;
        let cells: Vec<((GroupId, Month), Arc<Cell>)> = self
            .cells
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        let mut settled = 0;
        for ((group, month), cell) in cells {
            // the grants are reconciled while none is in flight: at a stop, after waiting for
            // one (so what it brings is returned below); otherwise only if none is (the next
            // settlement or grant does it)
            let no_grant_in_flight = if release {
                Some(cell.fetching.lock().await)
            } else {
                cell.fetching.try_lock().ok()
            };
            if release || now - cell.last_use_ms.load(Ordering::Relaxed) > idle_ms {
                let back = cell.lease.swap(0, Ordering::AcqRel);
                cell.lease_returned.fetch_add(back, Ordering::AcqRel);
            }
            self.drop_stale_lease(&cell, now);
            let reconcile = no_grant_in_flight.as_ref().map(|_| {
                (
                    cell.received.load(Ordering::Acquire),
                    cell.grants_sent.load(Ordering::Acquire),
                )
            });
            // a re-sent batch may leave newer counts behind: at a stop, send until none is left
            for _ in 0..if release { 3 } else { 1 } {
                match self.settle_cell(&group, month, &cell, now, reconcile).await {
                    Ok(true) => settled += 1,
                    Ok(false) => break,
                    Err(()) => {
                        self.mark_down(now);
                        return settled;
                    }
                }
            }
        }
        // a month that ended (an hour ago: late settlements are in) is copied to its archive
        let current = Month::containing(now);
        let archive_due: Vec<(GroupId, Month, Arc<Cell>)> = self
            .cells
            .iter()
            .filter(|e| {
                let m = e.key().1;
                m < current
                    && now >= m.next().start_ms() + ARCHIVE_AFTER_MS
                    && !e.value().archived.load(Ordering::Relaxed)
            })
            .map(|e| (e.key().0.clone(), e.key().1, e.value().clone()))
            .collect();
        for (group, month, cell) in archive_due {
            if self.archive(&group, month).await.is_ok() {
                cell.archived.store(true, Ordering::Relaxed);
            }
        }
        // months that ended, are archived and fully settled are dropped from memory
        self.cells.retain(|(_, m), c| {
            *m >= current.prev()
                || !c.archived.load(Ordering::Relaxed)
                || c.inflight.lock().map(|i| i.is_some()).unwrap_or(true)
                || c.direct.load(Ordering::Relaxed) != 0
                || c.outage_pending.load(Ordering::Relaxed) != 0
                || c.bytes.load(Ordering::Relaxed) != 0
                || c.lease.load(Ordering::Relaxed) != 0
                || c.lease_used.load(Ordering::Relaxed) != 0
                || c.lease_returned.load(Ordering::Relaxed) != 0
                || c.grants_sent.load(Ordering::Relaxed) > c.reconciled.load(Ordering::Relaxed)
        });
        self.add_gateway_days().await;
        // up again only on an answer: a settlement that went through, or a probe
        if settled > 0 || self.ping().await {
            self.mark_up();
        }
        settled
    }

    /// Writes this instance's running day totals of the months changed since the last time to
    /// the gateway's days hashes, one key (one Redis Cluster slot) at a time. The totals are
    /// written whole, so a write that timed out but landed does no harm when it is repeated.
    async fn add_gateway_days(&self) {
        let writes: Vec<(Month, Vec<(String, i64)>)> = {
            let Ok(mut days) = self.gateway_days.lock() else {
                return;
            };
            // the current and the previous month are kept
            let keep_from = Month::containing(self.day_clock.now_ms()).prev();
            days.totals.retain(|(m, _), _| *m >= keep_from);
            let months: Vec<Month> = std::mem::take(&mut days.unwritten).into_iter().collect();
            months
                .into_iter()
                .map(|month| {
                    let fields = days
                        .totals
                        .range((month, 0)..=(month, u8::MAX))
                        .flat_map(|((_, day), [calls, bytes])| {
                            [
                                (format!("{day}:{}:calls", self.instance), *calls),
                                (format!("{day}:{}:bytes", self.instance), *bytes),
                            ]
                        })
                        .collect();
                    (month, fields)
                })
                .collect()
        };
        for (month, fields) in writes {
            let written = match self.conn.get().cloned() {
                None => false,
                Some(mut conn) => {
                    let key = Self::gateway_days_key(month);
                    let mut pipe = redis::pipe();
                    pipe.cmd("HSET").arg(&key).arg(fields).ignore();
                    pipe.cmd("PEXPIREAT")
                        .arg(&key)
                        .arg(Self::expire_at(month))
                        .ignore();
                    let task = self
                        .handle
                        .spawn(async move { pipe.query_async::<()>(&mut conn).await });
                    matches!(
                        tokio::time::timeout(self.settings.timeout, task).await,
                        Ok(Ok(Ok(())))
                    )
                }
            };
            if !written {
                if let Ok(mut days) = self.gateway_days.lock() {
                    days.unwritten.insert(month);
                }
            }
        }
    }

    /// Whether every count and lease has been settled.
    pub(super) fn nothing_pending(&self) -> bool {
        let days_written = self
            .gateway_days
            .lock()
            .map(|d| d.unwritten.is_empty())
            .unwrap_or(false);
        days_written
            && self.cells.iter().all(|c| {
                c.inflight.lock().map(|i| i.is_none()).unwrap_or(false)
                    && c.direct.load(Ordering::Acquire) == 0
                    && c.outage_pending.load(Ordering::Acquire) == 0
                    && c.bytes.load(Ordering::Acquire) == 0
                    && c.lease.load(Ordering::Acquire) == 0
                    && c.lease_used.load(Ordering::Acquire) == 0
                    && c.lease_returned.load(Ordering::Acquire) == 0
                    && c.grants_sent.load(Ordering::Acquire) <= c.reconciled.load(Ordering::Acquire)
            })
    }

    /// Whether Redis answers a PING within the store timeout (asked only while it is down).
    pub(super) async fn ping(&self) -> bool {
        if self.down_since.lock().map(|d| d.is_none()).unwrap_or(false) {
            return true;
        }
        let Some(mut conn) = self.conn.get().cloned() else {
            return false;
        };
        let task = self
            .handle
            .spawn(async move { redis::cmd("PING").query_async::<String>(&mut conn).await });
        matches!(
            tokio::time::timeout(self.settings.timeout, task).await,
            Ok(Ok(Ok(_)))
        )
    }

    /// `Ok(true)`: something was sent and confirmed; `Err`: Redis did not answer (the batch is
    /// kept and re-sent as is).
    /// `reconcile`: the calls received in grants and the grants sent, when no grant is in
    /// flight (the caller holds `fetching`).
    pub(super) async fn settle_cell(
        &self,
        group: &str,
        month: Month,
        cell: &Cell,
        now: i64,
        reconcile: Option<(u64, u64)>,
    ) -> Result<bool, ()> {
        let batch = {
            let Ok(mut inflight) = cell.inflight.lock() else {
                return Err(());
            };
            match *inflight {
                Some(b) => b,
                None => {
                    // the outage calls first: each was counted in `outage_admitted` before
                    // `outage_pending`, so the batch never takes off a call it does not carry
                    let outage = cell.outage_pending.swap(0, Ordering::AcqRel);
                    let b = Batch {
                        seq: 0,
                        day: crate::usage::days::day_for(month, self.day_clock.now_ms()),
                        lease_used: cell.lease_used.swap(0, Ordering::AcqRel),
                        lease_returned: cell.lease_returned.swap(0, Ordering::AcqRel),
                        direct: cell.direct.swap(0, Ordering::AcqRel) + outage,
                        outage: outage.max(0) as u64,
                        bytes: cell.bytes.swap(0, Ordering::AcqRel),
                    };
                    let holds_lease = cell.lease.load(Ordering::Acquire) > 0;
                    // a grant whose answer was lost may have left a lease in Redis
                    let unreconciled = reconcile
                        .is_some_and(|(_, sent)| sent > cell.reconciled.load(Ordering::Acquire));
                    if b.lease_used == 0
                        && b.lease_returned == 0
                        && b.direct == 0
                        && b.outage == 0
                        && b.bytes == 0
                        && !holds_lease
                        && !unreconciled
                    {
                        return Ok(false);
                    }
                    let b = Batch {
                        seq: self.seq.fetch_add(1, Ordering::AcqRel) + 1,
                        ..b
                    };
                    *inflight = Some(b);
                    b
                }
            }
        };
        let started = Instant::now();
        let result = self
            .script::<(u64, u64, u64, u64, u64)>(
                &self.settle,
                vec![Self::key(group, month), Self::days_key(group, month)],
                vec![
                    self.instance.clone(),
                    batch.seq.to_string(),
                    now.to_string(),
                    self.settings.lease_ttl.as_millis().to_string(),
                    Self::expire_at(month).to_string(),
                    batch.lease_used.to_string(),
                    batch.lease_returned.to_string(),
                    batch.direct.to_string(),
                    batch.bytes.to_string(),
                    cell.limit.load(Ordering::Relaxed).to_string(),
                    cell.bytes_limit.load(Ordering::Relaxed).to_string(),
                    if cell.overage.load(Ordering::Relaxed) {
                        "1"
                    } else {
                        "0"
                    }
                    .to_string(),
                    reconcile.map_or(String::new(), |(received, _)| received.to_string()),
                    reconcile.map_or(String::new(), |(_, sent)| sent.to_string()),
                    batch.day.to_string(),
                ],
            )
            .await;
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok((calls, bytes, calls_over, bytes_over, _leased))) => {
                // the batch is applied, now or by an earlier send whose answer was lost (a
                // cell's batches go one at a time): its counts join the gateway's day once
                let served = batch.lease_used as i64 + batch.direct;
                if served != 0 || batch.bytes != 0 {
                    if let Ok(mut days) = self.gateway_days.lock() {
                        let d = days.totals.entry((month, batch.day)).or_default();
                        d[0] += served;
                        d[1] += batch.bytes;
                        days.unwritten.insert(month);
                    }
                }
                if let Ok(mut inflight) = cell.inflight.lock() {
                    // only the batch this answer is for
                    if inflight.is_some_and(|b| b.seq == batch.seq) {
                        *inflight = None;
                    }
                }
                cell.known[0].store(calls, Ordering::Release);
                cell.known[1].store(bytes, Ordering::Release);
                cell.known[2].store(calls_over, Ordering::Release);
                cell.known[3].store(bytes_over, Ordering::Release);
                cell.lease_confirmed_ms.store(now, Ordering::Relaxed);
                if let Some((_, sent)) = reconcile {
                    cell.reconciled.fetch_max(sent, Ordering::AcqRel);
                }
                if batch.outage > 0 {
                    let _ = cell.outage_admitted.fetch_update(
                        Ordering::AcqRel,
                        Ordering::Acquire,
                        |n| Some(n.saturating_sub(batch.outage)),
                    );
                    self.metrics.replayed_calls.inc_by(batch.outage);
                }
                Ok(true)
            }
            Ok(Err(e)) => {
                tracing::debug!("redis settle: {e}");
                Err(())
            }
            Err(_) => Err(()),
        }
    }
}
