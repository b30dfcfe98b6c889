//! Calls and bytes per day, for the console's charts and `GET /usage/<id>?by=day`.
//!
//! Never counted on the request path: at each flush (memory and embedded stores) or settlement
//! (Redis), what a group counted since the last one is credited to the day the flush runs, in
//! UTC (counts of a month that has ended go to its last day). So a day's figure can hold up to
//! one flush interval (1 s by default) of the day before. The whole gateway's day is kept beside
//! the groups' (under the group id `""`), added at the same time. Days are kept for the current
//! and the previous month; older months keep their monthly totals only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::{Delta, GroupId};
use crate::clock::{Clock, Month, SystemClock};

/// The group id under which the whole gateway's days are kept.
pub const GATEWAY: &str = "";

/// Calls and bytes of each day of a month, the 1st first.
pub type Days = Vec<[u64; 2]>;

/// The number of days in `month`.
pub fn days_in(month: Month) -> usize {
    ((month.next().start_ms() - month.start_ms()) / 86_400_000) as usize
}

/// The day (1-based) a flush at `now_ms` credits counts of `month` to.
pub fn day_for(month: Month, now_ms: i64) -> u8 {
    let current = Month::containing(now_ms);
    if month < current {
        days_in(month) as u8
    } else if month > current {
        1
    } else {
        ((now_ms - month.start_ms()) / 86_400_000 + 1) as u8
    }
}

/// The calls and bytes of a delta that count in the days (served calls and bytes; a refund
/// after a flush is a negative delta, taken off the day it is flushed on, never below zero).
pub fn day_delta(d: &Delta) -> [i64; 2] {
    [d.delta[0], d.delta[1]]
}

/// The clock a store credits days by: the gateway's (a test's manual clock), the system's until
/// the gateway sets it.
#[derive(Default)]
pub struct DayClock(OnceLock<Arc<dyn Clock>>);

impl DayClock {
    pub fn set(&self, clock: Arc<dyn Clock>) {
        let _ = self.0.set(clock);
    }

    pub fn now_ms(&self) -> i64 {
        self.0
            .get()
            .map_or_else(|| SystemClock.now_ms(), |c| c.now_ms())
    }
}

impl std::fmt::Debug for DayClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DayClock")
    }
}

fn apply(v: &mut u64, d: i64) {
    *v = if d >= 0 {
        v.saturating_add(d as u64)
    } else {
        v.saturating_sub(d.unsigned_abs())
    };
}

/// The days of the memory store (`store = "memory"`): lost with the process, like its counts.
#[derive(Debug, Default)]
pub struct DayBook {
    days: Mutex<HashMap<(GroupId, Month), Days>>,
    /// Days of months before this index are gone.
    kept_from: std::sync::atomic::AtomicU32,
}

impl DayBook {
    /// Credits `deltas` to the day of `now_ms`, for each group and for the gateway.
    pub fn add(&self, deltas: &[Delta], now_ms: i64) {
        let mut days = self.days.lock().unwrap_or_else(|e| e.into_inner());
        let gateway = GroupId::from(GATEWAY);
        for d in deltas {
            let [calls, bytes] = day_delta(d);
            if calls == 0 && bytes == 0 {
                continue;
            }
            let day = day_for(d.month, now_ms) as usize - 1;
            let row = days
                .entry((d.group.clone(), d.month))
                .or_insert_with(|| vec![[0, 0]; days_in(d.month)]);
            let before = row[day];
            apply(&mut row[day][0], calls);
            apply(&mut row[day][1], bytes);
            // the gateway's day moves as the group's did (a refund stops at zero)
            let moved = [
                row[day][0] as i64 - before[0] as i64,
                row[day][1] as i64 - before[1] as i64,
            ];
            let total = days
                .entry((gateway.clone(), d.month))
                .or_insert_with(|| vec![[0, 0]; days_in(d.month)]);
            apply(&mut total[day][0], moved[0]);
            apply(&mut total[day][1], moved[1]);
        }
        // the current and the previous month are kept (looked at when the month changes)
        let keep_from = Month::containing(now_ms).prev();
        let kept_from = &self.kept_from;
        if kept_from.load(std::sync::atomic::Ordering::Relaxed) < keep_from.index() {
            days.retain(|(_, m), _| *m >= keep_from);
            kept_from.store(keep_from.index(), std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn get(&self, group: &str, month: Month) -> Days {
        self.days
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(GroupId::from(group), month))
            .cloned()
            .unwrap_or_else(|| vec![[0, 0]; days_in(month)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::utc_ms;

    #[test]
    fn a_flush_credits_the_day_it_runs() {
        let nov = Month::from_ym(2026, 11);
        assert_eq!(days_in(nov), 30);
        assert_eq!(days_in(Month::from_ym(2028, 2)), 29);
        assert_eq!(day_for(nov, utc_ms(2026, 11, 1, 0, 0, 0, 0)), 1);
        assert_eq!(day_for(nov, utc_ms(2026, 11, 15, 23, 59, 59, 999)), 15);
        // late counts of a month that ended go to its last day
        assert_eq!(day_for(nov, utc_ms(2026, 12, 1, 0, 0, 0, 500)), 30);

        let book = DayBook::default();
        let delta = |g: &str, calls: i64, bytes: i64| Delta {
            group: GroupId::from(g),
            month: nov,
            delta: [calls, bytes, 0, 0],
            now: [0; 4],
        };
        book.add(
            &[delta("a", 3, 100), delta("b", 2, 0)],
            utc_ms(2026, 11, 2, 10, 0, 0, 0),
        );
        book.add(&[delta("a", -1, 50)], utc_ms(2026, 11, 3, 10, 0, 0, 0));
        let a = book.get("a", nov);
        assert_eq!((a.len(), a[1], a[2], a[3]), (30, [3, 100], [0, 50], [0, 0]));
        // a refund stops at zero, for the group and the gateway alike
        let all = book.get(GATEWAY, nov);
        assert_eq!((all[1], all[2]), ([5, 100], [0, 50]));
        // the previous month is kept, the one before is dropped
        book.add(&[], utc_ms(2026, 12, 31, 0, 0, 0, 0));
        assert_eq!(book.get("a", nov)[1], [3, 100]);
        book.add(&[], utc_ms(2027, 1, 1, 0, 0, 0, 0));
        assert_eq!(book.get("a", nov)[1], [0, 0]);
    }
}
