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
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::clock::Month;
use crate::usage::{Delta, GroupId, MemoryStore, Take, Usage, UsageStore};

const USAGE: TableDefinition<(u32, &str), (u64, u64, u64, u64)> = TableDefinition::new("usage");
/// Small named values; `overrides` holds the admin overrides as JSON.
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

pub struct EmbeddedStore {
    mem: MemoryStore,
    db: Database,
    path: PathBuf,
    retention_months: u32,
    /// One flush at a time; holds the oldest month kept.
    flushing: Mutex<Month>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish()
    }
}

fn add(v: u64, d: i64) -> u64 {
    if d >= 0 {
        v.saturating_add(d as u64)
    } else {
        v.saturating_sub(d.unsigned_abs())
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path`. A file that is not a valid store is an error,
    /// never a silent reset to zero.
    pub fn open(path: &Path, now: Month, retention_months: u32) -> Result<Self, String> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            format!("usage store {}: {what}: {e}", path.display())
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail("cannot create its directory", &e))?;
        }
        let db = Database::create(path).map_err(|e| fail("cannot open", &e))?;
        let keep_from = now.minus(retention_months.max(1) - 1);
        let store = EmbeddedStore {
            mem: MemoryStore::journaled(),
            db,
            path: path.to_path_buf(),
            retention_months: retention_months.max(1),
            flushing: Mutex::new(keep_from),
        };
        store
            .prune(keep_from)
            .map_err(|e| fail("cannot prune", &e))?;
        for month in [now.minus(1), now] {
            for (group, u) in store
                .read_month(month)
                .map_err(|e| fail("cannot read", &e))?
            {
                store.mem.load(&GroupId::from(group.as_str()), month, u);
            }
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn prune(&self, keep_from: Month) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(USAGE)?;
            table.retain(|(m, _), _| m >= keep_from.index())?;
        }
        txn.commit()?;
        self.mem.prune_before(keep_from);
        Ok(())
    }

    /// Every group's stored usage for one month.
    pub fn read_month(&self, month: Month) -> Result<Vec<(String, Usage)>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(USAGE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let m = month.index();
        let mut out = Vec::new();
        for row in table.range((m, "")..(m + 1, ""))? {
            let (k, v) = row?;
            let (calls, bytes, calls_overage, bytes_overage) = v.value();
            out.push((
                k.value().1.to_string(),
                Usage {
                    calls,
                    bytes,
                    calls_overage,
                    bytes_overage,
                },
            ));
        }
        Ok(out)
    }

    fn read_one(&self, group: &str, month: Month) -> Option<Usage> {
        let txn = self.db.begin_read().ok()?;
        let table = txn.open_table(USAGE).ok()?;
        let v = table.get((month.index(), group)).ok()??;
        let (calls, bytes, calls_overage, bytes_overage) = v.value();
        Some(Usage {
            calls,
            bytes,
            calls_overage,
            bytes_overage,
        })
    }

    fn write(&self, deltas: &[Delta]) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(USAGE)?;
            for d in deltas {
                let key = (d.month.index(), &*d.group);
                let old = table.get(key)?.map(|v| v.value()).unwrap_or((0, 0, 0, 0));
                let new = (
                    add(old.0, d.delta[0]),
                    add(old.1, d.delta[1]),
                    add(old.2, d.delta[2]),
                    add(old.3, d.delta[3]),
                );
                table.insert(key, new)?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

impl UsageStore for EmbeddedStore {
    fn take_call(
        &self,
        group: &GroupId,
        month: Month,
        limit: u64,
        overage_billing: bool,
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

    /// From memory when the month is loaded or was counted since the start, else from the file.
    fn usage(&self, group: &str, month: Month) -> Usage {
        self.mem
            .get(group, month)
            .or_else(|| self.read_one(group, month))
            .unwrap_or_default()
    }

    fn load_overrides(&self) -> Result<crate::overrides::Overrides, String> {
        let fail = |e: &dyn std::fmt::Display| {
            format!("usage store {}: overrides: {e}", self.path.display())
        };
        let txn = self.db.begin_read().map_err(|e| fail(&e))?;
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
        let txn = self.db.begin_write().map_err(|e| fail(&e))?;
        {
            let mut table = txn.open_table(META).map_err(|e| fail(&e))?;
            table
                .insert("overrides", json.as_str())
                .map_err(|e| fail(&e))?;
        }
        txn.commit().map_err(|e| fail(&e))
    }

    fn flush(&self) -> Result<usize, String> {
        let mut keep_from = self
            .flushing
            .lock()
            .map_err(|_| "flush lock poisoned".to_string())?;
        let deltas = self.mem.take_deltas();
        if !deltas.is_empty() {
            if let Err(e) = self.write(&deltas) {
                self.mem.retry(&deltas);
                return Err(format!(
                    "usage store {}: flush failed: {e}",
                    self.path.display()
                ));
            }
            self.mem.confirm(&deltas);
        }
        // once a month, drop what is past the retention
        if let Some(newest) = deltas.iter().map(|d| d.month).max() {
            let from = newest.minus(self.retention_months - 1);
            if from > *keep_from {
                self.prune(from).map_err(|e| {
                    format!("usage store {}: prune failed: {e}", self.path.display())
                })?;
                *keep_from = from;
            }
        }
        Ok(deltas.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> GroupId {
        GroupId::from(s)
    }

    #[test]
    fn flushed_counts_survive_a_reopen_and_refunds_flush_as_negative_deltas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/usage.redb");
        let m = Month::from_ym(2026, 11);
        {
            let s = EmbeddedStore::open(&path, m, 13).unwrap();
            for _ in 0..5 {
                s.mem.take_call_now(&g("a"), m, 10, false);
            }
            s.add_bytes(&g("a"), m, 700, 1000, false);
            assert_eq!(s.flush().unwrap(), 1);
            let t = s.mem.take_call_now(&g("a"), m, 10, false);
            s.refund_call(&g("a"), m, t);
            s.refund_call(
                &g("a"),
                m,
                Take::Admitted {
                    remaining: 0,
                    overage: false,
                },
            );
            assert_eq!(s.flush().unwrap(), 1);
            assert_eq!(s.flush().unwrap(), 0, "nothing changed");
            // counted but never flushed: lost on a crash, by design
            s.mem.take_call_now(&g("b"), m, 10, false);
        }
        let s = EmbeddedStore::open(&path, m, 13).unwrap();
        assert_eq!(
            s.usage("a", m),
            Usage {
                calls: 4,
                bytes: 700,
                ..Usage::default()
            }
        );
        assert_eq!(s.usage("b", m), Usage::default());
        // the quota continues from the stored count
        for _ in 0..6 {
            assert!(matches!(
                s.mem.take_call_now(&g("a"), m, 10, false),
                Take::Admitted { .. }
            ));
        }
        assert_eq!(s.mem.take_call_now(&g("a"), m, 10, false), Take::Refused);
    }

    #[test]
    fn old_months_are_read_from_the_file_and_pruned_past_retention() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.redb");
        let jan = Month::from_ym(2026, 1);
        {
            let s = EmbeddedStore::open(&path, jan, 3).unwrap();
            for (i, m) in [jan, jan.next(), jan.next().next(), jan.next().next().next()]
                .into_iter()
                .enumerate()
            {
                s.add_bytes(&g("a"), m, 100 + i as u64, u64::MAX, false);
            }
            s.flush().unwrap();
        }
        // April is current; retention 3 keeps February to April
        let april = Month::from_ym(2026, 4);
        let s = EmbeddedStore::open(&path, april, 3).unwrap();
        assert_eq!(s.usage("a", jan).bytes, 0, "pruned");
        assert_eq!(
            s.usage("a", Month::from_ym(2026, 2)).bytes,
            101,
            "read from the file"
        );
        assert_eq!(s.usage("a", april).bytes, 103);
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.redb");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let e = EmbeddedStore::open(&path, Month::from_ym(2026, 11), 13).unwrap_err();
        assert!(
            e.starts_with(&format!("usage store {}: cannot open", path.display())),
            "{e}"
        );
    }
}
