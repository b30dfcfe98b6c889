//! The durable embedded usage store: counters in memory (a journaled [`MemoryStore`]), flushed
//! in batches to a redb file. The request path never touches the file.
//!
//! Layout: one table `usage`, key `(month index, group id)`, value `(calls, bytes,
//! calls_overage, bytes_overage)`. A flush adds the signed deltas since the previous flush in one
//! write transaction, so a crash between two flushes loses at most one interval and never
//! doubles anything. At start the current and the previous month are loaded into memory (what
//! quota decisions need); older months are read from the file on demand, and months older than
//! the retention are deleted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::clock::Month;
use crate::usage::days::{self, DayClock, Days};
use crate::usage::{Delta, GroupId, MemoryStore, Take, Usage, UsageStore};

const USAGE: TableDefinition<(u32, &str), (u64, u64, u64, u64)> = TableDefinition::new("usage");
/// Calls and bytes per day: key `(month index, group id, day of the month)`, the whole gateway
/// under the group id `""` (see [`crate::usage::days`]); written in the flush's transaction.
const DAYS: TableDefinition<(u32, &str, u8), (u64, u64)> = TableDefinition::new("days");
/// Small named values: `overrides` (the admin overrides, JSON), `flush_seq` (the number of the
/// last flush written), `last_month` (the newest month the store has seen, as an index).
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// How often the last flush is tried, a second apart, before the counts go to the log.
const FINAL_FLUSH_TRIES: u32 = 5;

pub struct EmbeddedStore {
    mem: MemoryStore,
    /// `None` only while the file is being reopened after an error.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    /// Months from this index on are complete in memory (loaded at open, or counted since and
    /// not pruned); older months are read from the file.
    complete_from: AtomicU32,
    /// One flush at a time; the number of the last flush attempted.
    flushing: Mutex<u64>,
    /// Set once an upgrade has taken the file over: flushes go to handover files instead.
    released: std::sync::atomic::AtomicBool,
    /// The clock days are credited by.
    day_clock: DayClock,
    /// Days of months before this index have been deleted.
    days_kept_from: AtomicU32,
}

/// A read hold on the open database.
struct DbGuard<'a>(std::sync::RwLockReadGuard<'a, Option<Database>>);

impl DbGuard<'_> {
    fn db(&self) -> &Database {
        // checked in `open_db`; the slot cannot change while it is held for reading
        self.0.as_ref().expect("open database")
    }
}

/// One delta in a handover file.
#[derive(serde::Serialize, serde::Deserialize)]
struct HandoverDelta {
    g: String,
    m: u32,
    d: [i64; 4],
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish()
    }
}

fn usage_of((calls, bytes, calls_overage, bytes_overage): (u64, u64, u64, u64)) -> Usage {
    Usage {
        calls,
        bytes,
        calls_overage,
        bytes_overage,
    }
}

/// A stored row plus signed deltas.
fn add4(old: (u64, u64, u64, u64), d: [i64; 4]) -> (u64, u64, u64, u64) {
    (
        add(old.0, d[0]),
        add(old.1, d[1]),
        add(old.2, d[2]),
        add(old.3, d[3]),
    )
}

fn add(v: u64, d: i64) -> u64 {
    if d >= 0 {
        v.saturating_add(d as u64)
    } else {
        v.saturating_sub(d.unsigned_abs())
    }
}

pub use crate::config::MAX_RETENTION_MONTHS;

fn meta_u64(txn: &redb::ReadTransaction, key: &str) -> Result<Option<u64>, redb::Error> {
    let table = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(table.get(key)?.and_then(|v| v.value().parse().ok()))
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path`. A file that is not a valid store is an error,
    /// never a silent reset to zero.
    ///
    /// Retention: rows older than `retention_months` (the current month included) are deleted
    /// here, at start only. The cutoff trusts the clock by at most one month beyond the newest
    /// month the store has seen, so a clock that jumps ahead cannot delete live months.
    pub fn open(path: &Path, now: Month, retention_months: u32) -> Result<Self, String> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            format!("usage store {}: {what}: {e}", path.display())
        };
        let retention = retention_months.clamp(1, MAX_RETENTION_MONTHS);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail("cannot create its directory", &e))?;
        }
        let db = Database::create(path).map_err(|e| fail("cannot open", &e))?;
        let (seq, last) = {
            let txn = db.begin_read().map_err(|e| fail("cannot read", &e))?;
            let seq = meta_u64(&txn, "flush_seq").map_err(|e| fail("cannot read", &e))?;
            let last = meta_u64(&txn, "last_month").map_err(|e| fail("cannot read", &e))?;
            (seq.unwrap_or(0), last.map(|m| Month::from_index(m as u32)))
        };
        let trusted = match last {
            Some(l) if now > l.next() => {
                tracing::warn!(
                    "usage store: the clock says {now}, the store has seen up to {l}; pruning as if it were {}",
                    l.next()
                );
                l.next()
            }
            Some(l) if now < l => l,
            _ => now,
        };
        let keep_from = trusted.minus(retention - 1);
        let store = EmbeddedStore {
            mem: MemoryStore::journaled(),
            db: RwLock::new(Some(db)),
            path: path.to_path_buf(),
            complete_from: AtomicU32::new(now.minus(1).index()),
            flushing: Mutex::new(seq),
            released: std::sync::atomic::AtomicBool::new(false),
            day_clock: DayClock::default(),
            days_kept_from: AtomicU32::new(0),
        };
        store
            .start_txn(keep_from, trusted)
            .map_err(|e| fail("cannot prune", &e))?;
        for month in [now.minus(1), now] {
            for (group, u) in store
                .read_month(month)
                .map_err(|e| fail("cannot read", &e))?
            {
                store.mem.load(&GroupId::from(group.as_str()), month, u);
            }
        }
        store
            .merge_handovers()
            .map_err(|e| fail("cannot merge handover files", &e))?;
        Ok(store)
    }

    /// Like [`EmbeddedStore::open`], retrying for up to `wait` while another process still
    /// holds the file (the old process of an upgrade releases it just before it hands over).
    pub fn open_waiting(
        path: &Path,
        now: Month,
        retention_months: u32,
        wait: std::time::Duration,
    ) -> Result<Self, String> {
        let start = std::time::Instant::now();
        loop {
            match Self::open(path, now, retention_months) {
                Err(e) if e.contains("already open") && start.elapsed() < wait => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// `usage.redb.handover-<pid>-<nanos>-<n>` files in the store's directory, oldest first.
    fn handover_files(&self) -> Vec<PathBuf> {
        let (Some(dir), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return Vec::new();
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let prefix = format!("{}.handover-", name.to_string_lossy());
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        let n = p
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        n.starts_with(&prefix) && !n.ends_with(".tmp")
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Adds what an old process counted after it handed the file over: each file's deltas and
    /// a marker naming it go in one transaction, so a file is merged exactly once even if this
    /// process dies before deleting it.
    fn merge_handovers(&self) -> Result<usize, String> {
        let mut merged = 0;
        for file in self.handover_files() {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let marker = format!("handover:{name}");
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let deltas: Vec<HandoverDelta> =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            let applied = (|| -> Result<bool, redb::Error> {
                let guard = self.open_db()?;
                let db = guard.db();
                let txn = db.begin_write()?;
                {
                    let mut meta = txn.open_table(META)?;
                    if meta.get(marker.as_str())?.is_some() {
                        return Ok(false);
                    }
                    meta.insert(marker.as_str(), "1")?;
                    let mut table = txn.open_table(USAGE)?;
                    for d in &deltas {
                        let key = (d.m, d.g.as_str());
                        let old = table.get(key)?.map(|v| v.value()).unwrap_or((0, 0, 0, 0));
                        let new = add4(old, d.d);
                        table.insert(key, new)?;
                    }
                    // the old process wrote no days for what it handed over
                    let rows = deltas
                        .iter()
                        .map(|d| (d.g.as_str(), Month::from_index(d.m), [d.d[0], d.d[1]]));
                    self.add_days(&txn, rows)?;
                }
                txn.commit()?;
                Ok(true)
            })()
            .map_err(|e| e.to_string())?;
            if applied {
                for d in &deltas {
                    self.mem
                        .absorb(&GroupId::from(d.g.as_str()), Month::from_index(d.m), d.d);
                }
                merged += deltas.len();
            }
            let _ = std::fs::remove_file(&file);
        }
        Ok(merged)
    }

    /// After a handover: deltas go to a new handover file (written whole, synced, renamed).
    fn write_handover(&self, deltas: &[Delta], seq: u64) -> Result<(), String> {
        let rows: Vec<HandoverDelta> = deltas
            .iter()
            .map(|d| HandoverDelta {
                g: d.group.to_string(),
                m: d.month.index(),
                d: d.delta,
            })
            .collect();
        let json = serde_json::to_string(&rows).map_err(|e| e.to_string())?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let base = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = self.path.with_file_name(format!(
            "{base}.handover-{}-{nanos}-{seq:08}",
            std::process::id()
        ));
        let tmp = self.path.with_file_name(format!(
            "{base}.handover-{}-{nanos}-{seq:08}.tmp",
            std::process::id()
        ));
        let io = |e: std::io::Error| format!("{}: {e}", tmp.display());
        std::fs::write(&tmp, json).map_err(io)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, &target).map_err(io)?;
        Ok(())
    }

    /// The open database, held for reading (not while it is being reopened).
    fn open_db(&self) -> Result<DbGuard<'_>, redb::Error> {
        let guard = self
            .db
            .read()
            .map_err(|_| redb::Error::Corrupted("store lock poisoned".into()))?;
        if guard.is_none() {
            if self.released.load(Ordering::SeqCst) {
                return Err(redb::Error::Io(std::io::Error::other(
                    "the file was handed over to the new process (upgrade)",
                )));
            }
            // the file was closed to be reopened after a write error, and the reopen failed too
            // (the disk is still full, or read-only): not corruption, and retried next flush
            return Err(redb::Error::Io(std::io::Error::other(
                "the file is not open: reopening it after the last write error failed",
            )));
        }
        Ok(DbGuard(guard))
    }

    /// Deletes rows before `keep_from` and records `newest` as the newest month seen.
    fn start_txn(&self, keep_from: Month, newest: Month) -> Result<(), redb::Error> {
        let guard = self.open_db()?;
        let db = guard.db();
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(USAGE)?;
            table.retain(|(m, _), _| m >= keep_from.index())?;
            let mut meta = txn.open_table(META)?;
            meta.insert("last_month", newest.index().to_string().as_str())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// After a write error redb refuses every later operation until the file is reopened.
    fn reopen(&self) -> Result<(), redb::Error> {
        let mut slot = self
            .db
            .write()
            .map_err(|_| redb::Error::Corrupted("store lock poisoned".into()))?;
        slot.take(); // release the file lock first
        *slot = Some(Database::create(&self.path).map_err(redb::Error::from)?);
        Ok(())
    }

    /// Every group's stored usage for one month.
    pub fn read_month(&self, month: Month) -> Result<Vec<(String, Usage)>, redb::Error> {
        let guard = self.open_db()?;
        let db = guard.db();
        let txn = db.begin_read()?;
        let table = match txn.open_table(USAGE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let m = month.index();
        let mut out = Vec::new();
        for row in table.range((m, "")..(m + 1, ""))? {
            let (k, v) = row?;
            out.push((k.value().1.to_string(), usage_of(v.value())));
        }
        Ok(out)
    }

    fn read_one(&self, group: &str, month: Month) -> Result<Usage, redb::Error> {
        let guard = self.open_db()?;
        let db = guard.db();
        let txn = db.begin_read()?;
        let table = match txn.open_table(USAGE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Usage::default()),
            Err(e) => return Err(e.into()),
        };
        Ok(table
            .get((month.index(), group))?
            .map(|v| usage_of(v.value()))
            .unwrap_or_default())
    }

    /// `read_one` for many groups, in one read transaction.
    fn read_many(&self, groups: &[&str], month: Month) -> Result<Vec<Usage>, redb::Error> {
        let guard = self.open_db()?;
        let db = guard.db();
        let txn = db.begin_read()?;
        let table = match txn.open_table(USAGE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Ok(vec![Usage::default(); groups.len()])
            }
            Err(e) => return Err(e.into()),
        };
        groups
            .iter()
            .map(|g| {
                Ok(table
                    .get((month.index(), *g))?
                    .map(|v| usage_of(v.value()))
                    .unwrap_or_default())
            })
            .collect()
    }

    /// Adds the deltas and records the flush number, in one transaction.
    fn write(&self, deltas: &[Delta], seq: u64) -> Result<(), redb::Error> {
        let guard = self.open_db()?;
        let db = guard.db();
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(USAGE)?;
            for d in deltas {
                let key = (d.month.index(), &*d.group);
                let old = table.get(key)?.map(|v| v.value()).unwrap_or((0, 0, 0, 0));
                let new = add4(old, d.delta);
                table.insert(key, new)?;
            }
            let rows = deltas
                .iter()
                .map(|d| (&*d.group, d.month, days::day_delta(d)));
            self.add_days(&txn, rows)?;
            let mut meta = txn.open_table(META)?;
            meta.insert("flush_seq", seq.to_string().as_str())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Credits a flush's counts to today, per group and for the gateway, in its transaction;
    /// deletes the days of months before the previous one.
    fn add_days<'a>(
        &self,
        txn: &redb::WriteTransaction,
        rows: impl Iterator<Item = (&'a str, Month, [i64; 2])>,
    ) -> Result<(), redb::Error> {
        let now = self.day_clock.now_ms();
        let mut table = txn.open_table(DAYS)?;
        let mut gateway: std::collections::BTreeMap<(u32, u8), [i64; 2]> = Default::default();
        for (group, month, [calls, bytes]) in rows {
            if calls == 0 && bytes == 0 {
                continue;
            }
            let day = days::day_for(month, now);
            let key = (month.index(), group, day);
            let (c, b) = table.get(key)?.map(|v| v.value()).unwrap_or((0, 0));
            let (nc, nb) = (add(c, calls), add(b, bytes));
            table.insert(key, (nc, nb))?;
            // the gateway's day moves as the group's did (a refund stops at zero)
            let total = gateway.entry((month.index(), day)).or_default();
            total[0] += nc as i64 - c as i64;
            total[1] += nb as i64 - b as i64;
        }
        for ((month, day), [calls, bytes]) in gateway {
            let key = (month, days::GATEWAY, day);
            let (c, b) = table.get(key)?.map(|v| v.value()).unwrap_or((0, 0));
            table.insert(key, (add(c, calls), add(b, bytes)))?;
        }
        let keep_from = Month::containing(now).prev().index();
        if self.days_kept_from.load(Ordering::Acquire) < keep_from {
            table.retain_in((0, "", 0)..(keep_from, "", 0), |_, _| false)?;
            self.days_kept_from.store(keep_from, Ordering::Release);
        }
        Ok(())
    }

    /// A group's days of a month (the gateway's under [`days::GATEWAY`]).
    fn read_days(&self, group: &str, month: Month) -> Result<Days, redb::Error> {
        let mut out = vec![[0, 0]; days::days_in(month)];
        let guard = self.open_db()?;
        let db = guard.db();
        let txn = db.begin_read()?;
        let table = match txn.open_table(DAYS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        let m = month.index();
        for row in table.range((m, group, 0)..=(m, group, u8::MAX))? {
            let (k, v) = row?;
            let (_, _, day) = k.value();
            if let Some(slot) = out.get_mut(usize::from(day).wrapping_sub(1)) {
                let (c, b) = v.value();
                *slot = [c, b];
            }
        }
        Ok(out)
    }

    /// The flush number the file holds (after a reopen: did the failed write land?).
    fn stored_seq(&self) -> Result<u64, redb::Error> {
        let guard = self.open_db()?;
        let db = guard.db();
        let txn = db.begin_read()?;
        Ok(meta_u64(&txn, "flush_seq")?.unwrap_or(0))
    }
}

impl UsageStore for EmbeddedStore {
    fn take_call(
        &self,
        group: &GroupId,
        month: Month,
        limit: u64,
        overage_billing: bool,
        _tier: &str,
    ) -> impl std::future::Future<Output = Take> + Send {
        std::future::ready(self.mem.take_call_now(group, month, limit, overage_billing))
    }

    fn refund_call(&self, group: &GroupId, month: Month, take: Take) {
        self.mem.refund_call(group, month, take)
    }

    fn bytes_used(&self, group: &GroupId, month: Month) -> u64 {
        self.mem.bytes_used(group, month)
    }

    fn add_bytes(&self, group: &GroupId, month: Month, n: u64, limit: u64, overage_billing: bool) {
        self.mem.add_bytes(group, month, n, limit, overage_billing)
    }

    /// From memory for the months memory holds whole (every month the request path uses);
    /// older months come from the file. Never waits on the file for a current month.
    fn usage(&self, group: &str, month: Month) -> Usage {
        if month.index() >= self.complete_from.load(Ordering::Acquire) {
            return self.mem.get(group, month).unwrap_or_default();
        }
        self.read_one(group, month).unwrap_or_default()
    }

    fn usage_checked(&self, group: &str, month: Month) -> Result<Usage, String> {
        if month.index() >= self.complete_from.load(Ordering::Acquire) {
            return Ok(self.mem.get(group, month).unwrap_or_default());
        }
        self.read_one(group, month)
            .map_err(|e| format!("usage store {}: {e}", self.path.display()))
    }

    fn usage_many(&self, groups: &[&str], month: Month) -> Result<Vec<Usage>, String> {
        if month.index() >= self.complete_from.load(Ordering::Acquire) {
            return Ok(groups
                .iter()
                .map(|g| self.mem.get(g, month).unwrap_or_default())
                .collect());
        }
        self.read_many(groups, month)
            .map_err(|e| format!("usage store {}: {e}", self.path.display()))
    }

    fn days(&self, group: &str, month: Month) -> Result<Days, String> {
        self.read_days(group, month)
            .map_err(|e| format!("usage store {}: {e}", self.path.display()))
    }

    fn set_clock(&self, clock: std::sync::Arc<dyn crate::clock::Clock>) {
        self.day_clock.set(clock);
    }

    fn load_overrides(&self) -> Result<crate::overrides::Overrides, String> {
        let fail = |e: &dyn std::fmt::Display| {
            format!("usage store {}: overrides: {e}", self.path.display())
        };
        let guard = self.open_db().map_err(|e| fail(&e))?;
        let db = guard.db();
        let txn = db.begin_read().map_err(|e| fail(&e))?;
        let table = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Default::default()),
            Err(e) => return Err(fail(&e)),
        };
        match table.get("overrides").map_err(|e| fail(&e))? {
            None => Ok(Default::default()),
            Some(v) => serde_json::from_str(v.value()).map_err(|e| fail(&e)),
        }
    }

    fn save_overrides(&self, o: &crate::overrides::Overrides) -> Result<(), String> {
        let fail = |e: &dyn std::fmt::Display| {
            format!("usage store {}: overrides: {e}", self.path.display())
        };
        let json = serde_json::to_string(o).map_err(|e| fail(&e))?;
        let result = (|| -> Result<(), redb::Error> {
            let guard = self.open_db()?;
            let db = guard.db();
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(META)?;
                table.insert("overrides", json.as_str())?;
            }
            txn.commit()?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = self.reopen();
            return Err(fail(&e));
        }
        Ok(())
    }

    fn release_for_handover(&self) -> Result<(), String> {
        self.flush()?;
        let _one_flush_at_a_time = self
            .flushing
            .lock()
            .map_err(|_| "flush lock poisoned".to_string())?;
        self.released.store(true, Ordering::SeqCst);
        let mut slot = self
            .db
            .write()
            .map_err(|_| "store lock poisoned".to_string())?;
        slot.take(); // closes the file: the new process can open it now
        Ok(())
    }

    /// The last flush. The disk may be full or read-only right now, so it is tried again for a
    /// few seconds; when it still fails, nothing on disk can keep the counts, and each group's
    /// unsaved counts go to the log (`usage not saved`, target `vivgate::audit`) for billing to
    /// add back by hand, and the stop ends with an error.
    fn shutdown(&self) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 1..=FINAL_FLUSH_TRIES {
            match self.flush() {
                Ok(_) => return Ok(()),
                Err(e) => {
                    tracing::error!(
                        "{e} (the last flush, attempt {attempt} of {FINAL_FLUSH_TRIES})"
                    );
                    last = e;
                }
            }
            if attempt < FINAL_FLUSH_TRIES {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        // under the flush lock: a flush still running cannot take these too
        let _one_flush_at_a_time = self
            .flushing
            .lock()
            .map_err(|_| "flush lock poisoned".to_string())?;
        let deltas = self.mem.take_deltas();
        for d in &deltas {
            let [calls, bytes, calls_overage, bytes_overage] = d.delta;
            tracing::error!(
                target: "vivgate::audit",
                group = %d.group,
                month = %d.month,
                calls,
                bytes,
                calls_overage,
                bytes_overage,
                "usage not saved"
            );
        }
        Err(format!(
            "{last}; the unsaved counts of {} groups are in the log (\"usage not saved\")",
            deltas.len()
        ))
    }

    fn flush(&self) -> Result<usize, String> {
        let mut seq = self
            .flushing
            .lock()
            .map_err(|_| "flush lock poisoned".to_string())?;
        if self.released.load(Ordering::SeqCst) {
            let deltas = self.mem.take_deltas();
            if !deltas.is_empty() {
                *seq += 1;
                if let Err(e) = self.write_handover(&deltas, *seq) {
                    self.mem.retry(&deltas);
                    return Err(format!(
                        "usage store {}: handover write failed: {e}",
                        self.path.display()
                    ));
                }
                self.mem.confirm(&deltas);
            }
            return Ok(deltas.len());
        }
        if let Err(e) = self.merge_handovers() {
            tracing::error!("usage store {}: {e}", self.path.display());
        }
        let deltas = self.mem.take_deltas();
        if !deltas.is_empty() {
            *seq += 1;
            if let Err(e) = self.write(&deltas, *seq) {
                // redb refuses everything after an I/O error until reopened; then the flush
                // number tells whether the commit landed before the error surfaced
                let landed = self.reopen().and_then(|()| self.stored_seq()).ok() == Some(*seq);
                if !landed {
                    self.mem.retry(&deltas);
                    return Err(format!(
                        "usage store {}: flush failed: {e}",
                        self.path.display()
                    ));
                }
            }
            self.mem.confirm(&deltas);
        }
        // memory keeps the current and the previous month whole; older clean cells go
        if let Some(newest) = deltas.iter().map(|d| d.month).max() {
            let keep = newest.minus(1);
            if keep.index() > self.complete_from.load(Ordering::Acquire) {
                self.complete_from.store(keep.index(), Ordering::Release);
                self.mem.prune_clean_before(keep);
            }
        }
        Ok(deltas.len())
    }
}

#[cfg(test)]
#[path = "embedded_tests.rs"]
mod tests;
