//! Reading a month's totals for operators and billing: the month's own key, or its archive once
//! the key expired; and the archive itself.

use std::time::Duration;

use super::conn::Conn;
use super::{month_plus, RedisStore};
use crate::clock::Month;
use crate::usage::Usage;

impl RedisStore {
    /// How long an operator's read may wait for Redis (the store timeout, at least 500 ms).
    fn read_deadline(&self) -> Duration {
        self.settings.timeout.max(Duration::from_millis(500))
    }

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
        match tokio::time::timeout(self.read_deadline(), task).await {
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
        let v = answer(self.read_deadline(), task).await?;
        Ok(archived(v.as_deref()))
    }

    /// `read` for many groups: the month's keys in pipelined batches (one Redis Cluster slot per
    /// group, so there each batch's commands are sent concurrently instead), then the archive
    /// for the groups whose key is gone.
    pub(super) async fn read_many(
        &self,
        groups: Vec<String>,
        month: Month,
    ) -> Result<Vec<Usage>, String> {
        const BATCH: usize = 1000;
        let conn = self
            .conn
            .get()
            .cloned()
            .ok_or("redis cluster not connected yet")?;
        let deadline = self.read_deadline() * 10;
        let keys: Vec<String> = groups.iter().map(|g| Self::key(g, month)).collect();
        let task = self.handle.spawn(async move {
            let mut out: Vec<Vec<(String, i64)>> = Vec::with_capacity(keys.len());
            for batch in keys.chunks(BATCH) {
                if let Conn::Cluster(c) = &conn {
                    let mut set = tokio::task::JoinSet::new();
                    for (i, key) in batch.iter().enumerate() {
                        let (mut c, key) = (c.clone(), key.clone());
                        set.spawn(async move {
                            let r = redis::cmd("HGETALL")
                                .arg(key)
                                .query_async::<Vec<(String, i64)>>(&mut c)
                                .await;
                            (i, r)
                        });
                    }
                    let mut got = vec![Vec::new(); batch.len()];
                    while let Some(done) = set.join_next().await {
                        let (i, r) = done.map_err(|e| e.to_string())?;
                        got[i] = r.map_err(|e| e.to_string())?;
                    }
                    out.extend(got);
                } else {
                    let mut pipe = redis::pipe();
                    for key in batch {
                        pipe.cmd("HGETALL").arg(key);
                    }
                    let mut c = conn.clone();
                    let got: Vec<Vec<(String, i64)>> =
                        pipe.query_async(&mut c).await.map_err(|e| e.to_string())?;
                    out.extend(got);
                }
            }
            Ok::<_, String>(out)
        });
        let all = answer(deadline, task).await?;
        let mut usages: Vec<Usage> = all.iter().map(|f| served(f)).collect();
        // a finished month's groups without a key: their key expired (the archive has them) or
        // they had no usage
        let missing: Vec<usize> = (0..all.len()).filter(|&i| all[i].is_empty()).collect();
        if !missing.is_empty() && month.next().start_ms() <= self.clock.now_ms() {
            let names: Vec<String> = missing.iter().map(|&i| groups[i].clone()).collect();
            for (i, u) in missing
                .into_iter()
                .zip(self.read_archive_many(names, month).await?)
            {
                usages[i] = u;
            }
        }
        Ok(usages)
    }

    /// `read_archive` for many groups: `HMGET`s of the month's archive hash, in batches.
    async fn read_archive_many(
        &self,
        groups: Vec<String>,
        month: Month,
    ) -> Result<Vec<Usage>, String> {
        let conn = self
            .conn
            .get()
            .cloned()
            .ok_or("redis cluster not connected yet")?;
        let key = Self::archive_key(month);
        let deadline = self.read_deadline() * 10;
        let task = self.handle.spawn(async move {
            let mut out: Vec<Option<String>> = Vec::with_capacity(groups.len());
            for batch in groups.chunks(1000) {
                let mut c = conn.clone();
                let got: Vec<Option<String>> = redis::cmd("HMGET")
                    .arg(&key)
                    .arg(batch)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| e.to_string())?;
                out.extend(got);
            }
            Ok::<_, String>(out)
        });
        let values = answer(deadline, task).await?;
        Ok(values.iter().map(|v| archived(v.as_deref())).collect())
    }

    /// A group's days of a month (fields `d:<day>:calls|bytes` of its month key), or the whole
    /// gateway's (its days hash).
    pub(super) async fn read_days(
        &self,
        group: &str,
        month: Month,
    ) -> Result<crate::usage::days::Days, String> {
        use crate::usage::days;
        let mut conn = self
            .conn
            .get()
            .cloned()
            .ok_or("redis cluster not connected yet")?;
        let n = days::days_in(month);
        if group == days::GATEWAY {
            // every instance's running totals, summed per day
            let key = Self::gateway_days_key(month);
            let task = self.handle.spawn(async move {
                redis::cmd("HGETALL")
                    .arg(key)
                    .query_async::<Vec<(String, i64)>>(&mut conn)
                    .await
            });
            let fields = answer(self.read_deadline(), task).await?;
            let mut sums = vec![[0i64; 2]; n];
            for (field, v) in fields {
                let mut parts = field.split(':');
                let (Some(day), Some(what)) = (parts.next(), parts.next_back()) else {
                    continue;
                };
                let Some(slot) = day
                    .parse::<usize>()
                    .ok()
                    .and_then(|d| sums.get_mut(d.wrapping_sub(1)))
                else {
                    continue;
                };
                match what {
                    "calls" => slot[0] += v,
                    "bytes" => slot[1] += v,
                    _ => {}
                }
            }
            return Ok(sums
                .iter()
                .map(|[c, b]| [(*c).max(0) as u64, (*b).max(0) as u64])
                .collect());
        }
        let key = Self::days_key(group, month);
        let fields: Vec<String> = (1..=n)
            .flat_map(|d| [format!("{d}:calls"), format!("{d}:bytes")])
            .collect();
        let task = self.handle.spawn(async move {
            redis::cmd("HMGET")
                .arg(key)
                .arg(fields)
                .query_async::<Vec<Option<i64>>>(&mut conn)
                .await
        });
        let values = answer(self.read_deadline(), task).await?;
        let v = |i: usize| values.get(i).copied().flatten().unwrap_or(0).max(0) as u64;
        Ok((0..n).map(|d| [v(2 * d), v(2 * d + 1)]).collect())
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
        let fields = answer(self.read_deadline(), task).await?;
        if fields.is_empty() {
            return self.read_archive(group, month).await;
        }
        Ok(served(&fields))
    }
}

/// A month's totals from its hash: `calls` holds leased calls not served yet, and billing reads
/// what was served.
fn served(fields: &[(String, i64)]) -> Usage {
    let get = |name: &str| {
        fields
            .iter()
            .find(|(f, _)| f == name)
            .map_or(0, |(_, v)| (*v).max(0) as u64)
    };
    let leased: i64 = fields
        .iter()
        .filter(|(f, _)| f.starts_with("L:"))
        .map(|(_, v)| *v)
        .sum();
    Usage {
        calls: get("calls").saturating_sub(leased.max(0) as u64),
        bytes: get("bytes"),
        calls_overage: get("calls_overage"),
        bytes_overage: get("bytes_overage"),
    }
}

/// An archive entry, `calls bytes calls_overage bytes_overage` (zeros if there is none).
fn archived(v: Option<&str>) -> Usage {
    let Some(v) = v else {
        return Usage::default();
    };
    let n: Vec<u64> = v.split(' ').filter_map(|x| x.parse().ok()).collect();
    let g = |i: usize| n.get(i).copied().unwrap_or(0);
    Usage {
        calls: g(0),
        bytes: g(1),
        calls_overage: g(2),
        bytes_overage: g(3),
    }
}

/// Waits for a read spawned on the store's runtime, at most `deadline`: a timeout, a task that
/// failed and a Redis error are each a message.
async fn answer<T, E: std::fmt::Display>(
    deadline: Duration,
    task: tokio::task::JoinHandle<Result<T, E>>,
) -> Result<T, String> {
    tokio::time::timeout(deadline, task)
        .await
        .map_err(|_| "redis did not answer in time".to_string())?
        .map_err(|e| format!("redis: {e}"))?
        .map_err(|e| format!("redis: {e}"))
}
