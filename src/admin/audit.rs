//! The changes made through this instance's admin API: each goes to the log under the
//! `vivgate::audit` target, and the last [`KEPT`] stay in memory for `GET /audit` (and the
//! console). A restart forgets them; the log keeps them.

use std::collections::VecDeque;

use serde::Serialize;
use std::sync::Mutex;

/// How many changes `GET /audit` can show.
pub const KEPT: usize = 200;

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The caller's address.
    pub caller: String,
    /// The endpoint: `PUT /groups/<id>/status`.
    pub endpoint: String,
    /// What changed, in words (a key only by its fingerprint).
    pub change: String,
    /// Whether it took effect (a refused or failed change is kept too).
    pub ok: bool,
}

#[derive(Default)]
pub struct AuditLog {
    entries: Mutex<VecDeque<Entry>>,
}

impl AuditLog {
    /// Logs `entry` and keeps it (the oldest goes when [`KEPT`] are kept).
    pub fn record(&self, entry: Entry) {
        if entry.ok {
            tracing::info!(target: "vivgate::audit", caller = %entry.caller, endpoint = %entry.endpoint, "{}", entry.change);
        } else {
            tracing::warn!(target: "vivgate::audit", caller = %entry.caller, endpoint = %entry.endpoint, "{}", entry.change);
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() == KEPT {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// The changes kept, newest first.
    pub fn newest_first(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .rev()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_200_newest_first() {
        let log = AuditLog::default();
        for i in 0..250i64 {
            log.record(Entry {
                at_ms: i,
                caller: "127.0.0.1:1".into(),
                endpoint: "POST /reload".into(),
                change: format!("change {i}"),
                ok: true,
            });
        }
        let kept = log.newest_first();
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].change, "change 249");
        assert_eq!(kept[KEPT - 1].change, "change 50");
    }
}
