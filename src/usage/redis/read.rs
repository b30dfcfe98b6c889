//! Reading a month's totals for operators and billing: the month's own key, or its archive once
//! the key expired; and the archive itself.

use std::time::Duration;

use super::{month_plus, RedisStore};
use crate::clock::Month;
use crate::usage::Usage;

impl RedisStore {
    /// Copies a finished month's totals (served calls, leases excluded) to the month archive.
    pub(super) async fn archive(&self, group: &str, month: Month) -> Result<(), String> {
        let u = self.read(group, month).await?;
        let Some(mut conn) = self.conn.get().cloned() else {
            return Err("redis not connected".into());
        };
        let key = Self::archive_key(month);
        let value = format!(
            "{} {} {} {}",
            u.calls, u.bytes, u.calls_overage, u.bytes_overage
        );
        let keep_until = month_plus(month, self.settings.retention_months).start_ms();
        let group = group.to_string();
        let task = self.handle.spawn(async move {
            redis::pipe()
                .hset(&key, group, value)
                .ignore()
                .cmd("PEXPIREAT")
                .arg(&key)
                .arg(keep_until)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
        });
        match tokio::time::timeout(self.settings.timeout.max(Duration::from_millis(500)), task)
            .await
        {
            Ok(Ok(Ok(()))) => Ok(()),
            _ => Err("redis did not archive the month".into()),
        }
    }

    /// A month whose own key expired, from its archive (zeros if it was never archived).
    pub(super) async fn read_archive(&self, group: &str, month: Month) -> Result<Usage, String> {
        let mut conn = self
            .conn
            .get()
            .cloned()
            .ok_or("redis cluster not connected yet")?;
        let (key, field) = (Self::archive_key(month), group.to_string());
        let task = self.handle.spawn(async move {
            redis::cmd("HGET")
                .arg(key)
                .arg(field)
                .query_async::<Option<String>>(&mut conn)
                .await
        });
        let v = tokio::time::timeout(self.settings.timeout.max(Duration::from_millis(500)), task)
            .await
            .map_err(|_| "redis did not answer in time".to_string())?
            .map_err(|e| format!("redis: {e}"))?
            .map_err(|e| format!("redis: {e}"))?;
        let Some(v) = v else {
            return Ok(Usage::default());
        };
        let n: Vec<u64> = v.split(' ').filter_map(|x| x.parse().ok()).collect();
        let g = |i: usize| n.get(i).copied().unwrap_or(0);
        Ok(Usage {
            calls: g(0),
            bytes: g(1),
            calls_overage: g(2),
            bytes_overage: g(3),
        })
    }

    /// Reads one month's totals straight from Redis.
    pub(super) async fn read(&self, group: &str, month: Month) -> Result<Usage, String> {
        let mut conn = self
            .conn
            .get()
            .cloned()
            .ok_or("redis cluster not connected yet")?;
        let key = Self::key(group, month);
        let task = self.handle.spawn(async move {
            redis::cmd("HGETALL")
                .arg(key)
                .query_async::<Vec<(String, i64)>>(&mut conn)
                .await
        });
        let fields =
            tokio::time::timeout(self.settings.timeout.max(Duration::from_millis(500)), task)
                .await
                .map_err(|_| "redis did not answer in time".to_string())?
                .map_err(|e| format!("redis: {e}"))?
                .map_err(|e| format!("redis: {e}"))?;
        if fields.is_empty() {
            return self.read_archive(group, month).await;
        }
        let get = |name: &str| {
            fields
                .iter()
                .find(|(f, _)| f == name)
                .map_or(0, |(_, v)| (*v).max(0) as u64)
        };
        // `calls` holds leased calls not served yet: billing reads what was served
        let leased: i64 = fields
            .iter()
            .filter(|(f, _)| f.starts_with("L:"))
            .map(|(_, v)| *v)
            .sum();
        Ok(Usage {
            calls: get("calls").saturating_sub(leased.max(0) as u64),
            bytes: get("bytes"),
            calls_overage: get("calls_overage"),
            bytes_overage: get("bytes_overage"),
        })
    }
}
