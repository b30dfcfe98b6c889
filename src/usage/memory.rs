//! The in-memory store: a `DashMap` of atomic counters per (group, month), exact under any
//! concurrency; the embedded store keeps its counts here too and journals what changed.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use dashmap::DashMap;

use super::days::{DayBook, DayClock, Days};
use super::{GroupId, Take, Usage, UsageStore};
use crate::clock::Month;

#[derive(Debug, Default)]
struct Cell {
    calls: AtomicU64,
    bytes: AtomicU64,
    calls_overage: AtomicU64,
    bytes_overage: AtomicU64,
    /// Changed since the last flush (journaled stores only).
    dirty: AtomicBool,
    /// The values last written to durable storage: calls, bytes, calls_overage, bytes_overage.
    flushed: [AtomicU64; 4],
}

impl Cell {
    fn values(&self) -> [u64; 4] {
        [
            self.calls.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
            self.calls_overage.load(Ordering::Acquire),
            self.bytes_overage.load(Ordering::Acquire),
        ]
    }
}

/// What changed in one (group, month) since the last flush, signed (a refund after a flush makes
/// a negative delta), and the values to record as flushed once it is durable.
#[derive(Debug, Clone)]
pub struct Delta {
    pub group: GroupId,
    pub month: Month,
    pub delta: [i64; 4],
    pub now: [u64; 4],
}

/// In-memory usage: exact atomic counters in a `DashMap` keyed by (group, month). No lock is held
/// across an await; the only locks are the map's shard locks, held for one atomic operation.
#[derive(Debug, Default)]
pub struct MemoryStore {
    cells: DashMap<(GroupId, Month), Cell, ahash::RandomState>,
    /// Cells changed since the last [`MemoryStore::take_deltas`], each listed once; `None` when
    /// nothing flushes this store.
    journal: Option<Mutex<Vec<(GroupId, Month)>>>,
    /// The days, for a store that keeps them itself (`store = "memory"`); credited at flush.
    days: Option<(DayBook, DayClock)>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that records which cells changed, for a durable store to flush.
    pub fn journaled() -> Self {
        MemoryStore {
            cells: DashMap::default(),
            journal: Some(Mutex::new(Vec::new())),
            days: None,
        }
    }

    /// The store of `store = "memory"`: it journals what changed, and each flush credits it to
    /// the day (see [`super::days`]).
    pub fn counting_days() -> Self {
        MemoryStore {
            days: Some(Default::default()),
            ..Self::journaled()
        }
    }

    fn with_cell<R>(&self, group: &GroupId, month: Month, f: impl FnOnce(&Cell) -> R) -> R {
        let key = (group.clone(), month);
        if let Some(cell) = self.cells.get(&key) {
            let r = f(&cell);
            self.mark(&cell, &key);
            return r;
        }
        let cell = self.cells.entry(key.clone()).or_default();
        let r = f(&cell);
        self.mark(&cell, &key);
        r
    }

    /// Journals a changed cell, once per flush.
    fn mark(&self, cell: &Cell, key: &(GroupId, Month)) {
        if let Some(journal) = &self.journal {
            // a load first: a cell counted again before the next flush is only read
            if !cell.dirty.load(Ordering::Acquire) && !cell.dirty.swap(true, Ordering::AcqRel) {
                if let Ok(mut j) = journal.lock() {
                    j.push(key.clone());
                }
            }
        }
    }

    /// Sets a cell to values read from durable storage (at start).
    pub fn load(&self, group: &GroupId, month: Month, u: Usage) {
        let cell = self.cells.entry((group.clone(), month)).or_default();
        let v = [u.calls, u.bytes, u.calls_overage, u.bytes_overage];
        cell.calls.store(u.calls, Ordering::Release);
        cell.bytes.store(u.bytes, Ordering::Release);
        cell.calls_overage.store(u.calls_overage, Ordering::Release);
        cell.bytes_overage.store(u.bytes_overage, Ordering::Release);
        for (f, x) in cell.flushed.iter().zip(v) {
            f.store(x, Ordering::Release);
        }
    }

    /// Adds counts that are already durable (merged from another process's handover): they
    /// count for quotas here and are not flushed again.
    pub fn absorb(&self, group: &GroupId, month: Month, delta: [i64; 4]) {
        let cell = self.cells.entry((group.clone(), month)).or_default();
        let counters = [
            &cell.calls,
            &cell.bytes,
            &cell.calls_overage,
            &cell.bytes_overage,
        ];
        for ((c, f), d) in counters.into_iter().zip(&cell.flushed).zip(delta) {
            let apply = |v: u64| {
                Some(if d >= 0 {
                    v.saturating_add(d as u64)
                } else {
                    v.saturating_sub(d.unsigned_abs())
                })
            };
            let _ = c.fetch_update(Ordering::AcqRel, Ordering::Acquire, apply);
            let _ = f.fetch_update(Ordering::AcqRel, Ordering::Acquire, apply);
        }
    }

    /// The counters of a cell, if it is in memory.
    pub fn get(&self, group: &str, month: Month) -> Option<Usage> {
        self.cells.get(&(GroupId::from(group), month)).map(|c| {
            let [calls, bytes, calls_overage, bytes_overage] = c.values();
            Usage {
                calls,
                bytes,
                calls_overage,
                bytes_overage,
            }
        })
    }

    /// Everything that changed since the last call, as deltas against what was last flushed.
    /// Pass them to [`MemoryStore::confirm`] once durable, or back to [`MemoryStore::retry`].
    pub fn take_deltas(&self) -> Vec<Delta> {
        let Some(journal) = &self.journal else {
            return Vec::new();
        };
        let keys = journal
            .lock()
            .map(|mut j| std::mem::take(&mut *j))
            .unwrap_or_default();
        let mut out = Vec::with_capacity(keys.len());
        for (group, month) in keys {
            let Some(cell) = self.cells.get(&(group.clone(), month)) else {
                continue;
            };
            // clear first: a change after this re-journals the cell for the next flush
            cell.dirty.swap(false, Ordering::AcqRel);
            let now = cell.values();
            let mut delta = [0i64; 4];
            for i in 0..4 {
                delta[i] = now[i] as i64 - cell.flushed[i].load(Ordering::Acquire) as i64;
            }
            if delta != [0; 4] {
                out.push(Delta {
                    group,
                    month,
                    delta,
                    now,
                });
            }
        }
        out
    }

    /// Records deltas as durable.
    pub fn confirm(&self, deltas: &[Delta]) {
        for d in deltas {
            if let Some(cell) = self.cells.get(&(d.group.clone(), d.month)) {
                for (f, x) in cell.flushed.iter().zip(d.now) {
                    f.store(x, Ordering::Release);
                }
            }
        }
    }

    /// Puts back deltas whose write failed, for the next flush.
    pub fn retry(&self, deltas: &[Delta]) {
        for d in deltas {
            if let Some(cell) = self.cells.get(&(d.group.clone(), d.month)) {
                self.mark(&cell, &(d.group.clone(), d.month));
            }
        }
    }

    /// Drops cells of months before `keep_from` whose every count is already durable. A cell
    /// counted again later starts from zero and flushes as a delta, so nothing is lost.
    pub fn prune_clean_before(&self, keep_from: Month) {
        self.cells.retain(|(_, m), c| {
            *m >= keep_from
                || c.dirty.load(Ordering::Acquire)
                || c.values()
                    .iter()
                    .zip(&c.flushed)
                    .any(|(v, f)| *v != f.load(Ordering::Acquire))
        });
    }

    /// Takes one call synchronously; see [`UsageStore::take_call`].
    pub fn take_call_now(
        &self,
        group: &GroupId,
        month: Month,
        limit: u64,
        overage_billing: bool,
    ) -> Take {
        self.with_cell(group, month, |c| {
            if overage_billing {
                let before = c.calls.fetch_add(1, Ordering::AcqRel);
                let overage = before >= limit;
                if overage {
                    c.calls_overage.fetch_add(1, Ordering::AcqRel);
                }
                return Take::Admitted {
                    remaining: limit.saturating_sub(before + 1),
                    overage,
                };
            }
            let mut cur = c.calls.load(Ordering::Acquire);
            loop {
                if cur >= limit {
                    return Take::Refused;
                }
                match c.calls.compare_exchange_weak(
                    cur,
                    cur + 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        return Take::Admitted {
                            remaining: limit - cur - 1,
                            overage: false,
                        }
                    }
                    Err(actual) => cur = actual,
                }
            }
        })
    }
}

impl UsageStore for MemoryStore {
    fn take_call(
        &self,
        group: &GroupId,
        month: Month,
        limit: u64,
        overage_billing: bool,
        _tier: &str,
    ) -> impl Future<Output = Take> + Send {
        std::future::ready(self.take_call_now(group, month, limit, overage_billing))
    }

    fn refund_call(&self, group: &GroupId, month: Month, take: Take) {
        if let Take::Admitted { overage, .. } = take {
            let dec = |a: &AtomicU64| {
                let _ = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                    Some(v.saturating_sub(1))
                });
            };
            self.with_cell(group, month, |c| {
                dec(&c.calls);
                if overage {
                    dec(&c.calls_overage);
                }
            });
        }
    }

    fn bytes_used(&self, group: &GroupId, month: Month) -> u64 {
        self.cells
            .get(&(group.clone(), month))
            .map_or(0, |c| c.bytes.load(Ordering::Acquire))
    }

    fn add_bytes(&self, group: &GroupId, month: Month, n: u64, limit: u64, overage_billing: bool) {
        if n == 0 {
            return;
        }
        self.with_cell(group, month, |c| {
            let before = c.bytes.fetch_add(n, Ordering::AcqRel);
            if overage_billing {
                let over = (before + n).saturating_sub(before.max(limit));
                if over > 0 {
                    c.bytes_overage.fetch_add(over, Ordering::AcqRel);
                }
            }
        });
    }

    fn days(&self, group: &str, month: Month) -> Result<Days, String> {
        Ok(match &self.days {
            Some((book, _)) => book.get(group, month),
            None => vec![[0, 0]; super::days::days_in(month)],
        })
    }

    fn set_clock(&self, clock: std::sync::Arc<dyn crate::clock::Clock>) {
        if let Some((_, c)) = &self.days {
            c.set(clock);
        }
    }

    fn flush(&self) -> Result<usize, String> {
        let Some((book, clock)) = &self.days else {
            return Ok(0);
        };
        let deltas = self.take_deltas();
        book.add(&deltas, clock.now_ms());
        self.confirm(&deltas);
        Ok(deltas.len())
    }

    fn usage(&self, group: &str, month: Month) -> Usage {
        self.get(group, month).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> GroupId {
        GroupId::from(s)
    }

    #[test]
    fn exact_under_contention() {
        let store = MemoryStore::new();
        let m = Month::from_ym(2026, 11);
        let admitted = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        if let Take::Admitted { .. } = store.take_call_now(&g("a"), m, 777, false) {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 777);
        assert_eq!(store.usage("a", m).calls, 777);
    }

    #[test]
    fn overage_counts_past_the_limit_and_refund_reverses() {
        let store = MemoryStore::new();
        let m = Month::from_ym(2026, 11);
        let mut last = Take::Refused;
        for _ in 0..5 {
            last = store.take_call_now(&g("o"), m, 3, true);
        }
        assert_eq!(
            last,
            Take::Admitted {
                remaining: 0,
                overage: true
            }
        );
        assert_eq!(
            store.usage("o", m),
            Usage {
                calls: 5,
                calls_overage: 2,
                ..Usage::default()
            }
        );
        store.refund_call(&g("o"), m, last);
        assert_eq!(store.usage("o", m).calls, 4);
        assert_eq!(store.usage("o", m).calls_overage, 1);
        // months are independent
        assert_eq!(store.usage("o", m.next()), Usage::default());
    }

    #[test]
    fn bytes_overage_is_the_part_beyond_the_limit() {
        let store = MemoryStore::new();
        let m = Month::from_ym(2026, 11);
        store.add_bytes(&g("b"), m, 60, 100, true);
        store.add_bytes(&g("b"), m, 60, 100, true);
        store.add_bytes(&g("b"), m, 10, 100, true);
        let u = store.usage("b", m);
        assert_eq!((u.bytes, u.bytes_overage), (130, 30));
        store.add_bytes(&g("n"), m, 130, 100, false);
        let u = store.usage("n", m);
        assert_eq!((u.bytes, u.bytes_overage), (130, 0));
        assert_eq!(store.bytes_used(&g("n"), m), 130);
    }
}
