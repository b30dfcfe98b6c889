//! Time for quotas: an injectable clock and UTC calendar months.
//!
//! Quotas are per UTC calendar month. Everything that decides which month a request belongs to
//! takes its time from a [`Clock`], so tests can stand on 23:59:59.999 of the last day of a month
//! and step across the boundary.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch (UTC).
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => -(e.duration().as_millis() as i64),
        }
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        Self(AtomicI64::new(now_ms))
    }
    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A UTC calendar month, stored as `year * 12 + (month - 1)` so months order and step simply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Month(i32);

impl Month {
    pub fn from_ym(year: i32, month: u32) -> Month {
        debug_assert!((1..=12).contains(&month));
        Month(year * 12 + month as i32 - 1)
    }

    /// The month that contains the instant `ms` (milliseconds since the epoch, UTC).
    pub fn containing(ms: i64) -> Month {
        let days = ms.div_euclid(86_400_000);
        let (y, m, _) = civil_from_days(days);
        Month::from_ym(y, m)
    }

    /// Months since year 0 (`year * 12 + month - 1`); the store's key.
    pub fn index(self) -> u32 {
        self.0.max(0) as u32
    }

    pub fn from_index(index: u32) -> Month {
        Month(index as i32)
    }

    /// The month `n` months before this one.
    pub fn minus(self, n: u32) -> Month {
        Month(self.0 - n as i32)
    }

    pub fn year(self) -> i32 {
        self.0.div_euclid(12)
    }

    /// 1..=12
    pub fn month(self) -> u32 {
        self.0.rem_euclid(12) as u32 + 1
    }

    pub fn next(self) -> Month {
        Month(self.0 + 1)
    }

    pub fn prev(self) -> Month {
        Month(self.0 - 1)
    }

    /// Milliseconds since the epoch of 00:00:00.000 UTC on the 1st of this month.
    pub fn start_ms(self) -> i64 {
        days_from_civil(self.year(), self.month(), 1) * 86_400_000
    }

    /// Whole seconds from `now_ms` until the next month starts, rounded up, at least 1.
    pub fn seconds_until_end(self, now_ms: i64) -> u64 {
        let left = self.next().start_ms() - now_ms;
        (left.max(1) as u64).div_ceil(1000)
    }
}

impl std::fmt::Display for Month {
    /// `2026-11`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year(), self.month())
    }
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    ((if m <= 2 { y + 1 } else { y }) as i32, m, d)
}

/// (year, month 1..=12, day) → days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y as i64 - 1 } else { y as i64 };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `ms` since the epoch → `2026-12-01T00:00:00Z` (whole seconds).
pub fn format_utc(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `2026-11-15T12:00:00.123Z`: [`format_utc`] with milliseconds (log lines).
pub fn format_utc_ms(ms: i64) -> String {
    let base = format_utc(ms);
    format!("{}.{:03}Z", &base[..base.len() - 1], ms.rem_euclid(1000))
}

/// Milliseconds since the epoch of a UTC date and time; for tests and tools.
pub fn utc_ms(year: i32, month: u32, day: u32, h: u32, min: u32, s: u32, ms: u32) -> i64 {
    days_from_civil(year, month, day) * 86_400_000
        + (h as i64 * 3600 + min as i64 * 60 + s as i64) * 1000
        + ms as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_cross_year_and_leap_february() {
        let before = utc_ms(2026, 12, 31, 23, 59, 59, 999);
        assert_eq!(Month::containing(before), Month::from_ym(2026, 12));
        assert_eq!(Month::containing(before + 1), Month::from_ym(2027, 1));
        assert_eq!(Month::containing(before).seconds_until_end(before), 1);

        let leap = utc_ms(2028, 2, 29, 23, 59, 59, 999);
        assert_eq!(Month::containing(leap), Month::from_ym(2028, 2));
        assert_eq!(Month::containing(leap + 1), Month::from_ym(2028, 3));
        let non_leap = utc_ms(2027, 2, 28, 23, 59, 59, 999);
        assert_eq!(Month::containing(non_leap), Month::from_ym(2027, 2));
        assert_eq!(Month::containing(non_leap + 1), Month::from_ym(2027, 3));
        assert_eq!(utc_ms(2027, 3, 1, 0, 0, 0, 0), non_leap + 1);
    }

    #[test]
    fn round_trips_every_day_for_centuries() {
        for days in -800_000i64..800_000 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn seconds_until_end_rounds_up() {
        let m = Month::from_ym(2026, 11);
        let end = m.next().start_ms();
        assert_eq!(m.seconds_until_end(end - 1), 1);
        assert_eq!(m.seconds_until_end(end - 1000), 1);
        assert_eq!(m.seconds_until_end(end - 1001), 2);
        assert_eq!(format_utc(end), "2026-12-01T00:00:00Z");
        assert_eq!(m.to_string(), "2026-11");
    }
}
