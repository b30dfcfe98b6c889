//! The admin overrides (status overrides, revoked keys) of the whole fleet, kept in the shared
//! usage store's Redis when `[usage] store = "redis"`.
//!
//! Layout (every key carries the `{vivgate-overrides}` hash tag, so a Redis Cluster keeps them in
//! one slot and a change is one script):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{vivgate-overrides}:status` | hash | group id → `active`, `frozen` or `deactivated` |
//! | `{vivgate-overrides}:revoked` | hash | `sha256:<64 hex>` key hash → the group it belonged to |
//! | `{vivgate-overrides}:version` | integer | incremented by every change |
//!
//! A change is one Lua script that changes a hash, increments `version` and publishes it on the
//! channel `vivgate-overrides` (a change that changes nothing keeps the version). Every instance
//! subscribes first, then compares `version` with the one it serves at once and every
//! [`CHECK_EVERY`], so a lost announcement costs at most that long. The last table read is kept
//! on disk ([`RedisSettings::overrides_copy`]); an instance that cannot read Redis serves with
//! it, and one that has neither refuses to start.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::overrides_table::{read_copy, to_overrides, write_copy};
use super::{cluster_nodes, Conn, RedisStore};
use crate::overrides::{ChangeError, Changed, OverrideChange, Overrides};

pub const STATUS_KEY: &str = "{vivgate-overrides}:status";
pub const REVOKED_KEY: &str = "{vivgate-overrides}:revoked";
pub const VERSION_KEY: &str = "{vivgate-overrides}:version";
pub const CHANNEL: &str = "vivgate-overrides";
/// How often an instance compares the version in Redis with the one it serves.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// The longest an admin change, or the read at start, waits for Redis.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a change that got no answer in time keeps its connection open for one.
const LATE_ANSWER: Duration = Duration::from_secs(30);

/// KEYS: status, revoked, version. Returns `{version, status pairs, revoked pairs}`.
const READ_SCRIPT: &str = include_str!("overrides_read.lua");

/// KEYS: status, revoked, version. ARGV: `status` group status | `revoke` key group | `remove`
/// id, then the channel, then the version the instance serves. Setting what is already set
/// changes nothing (so a repeated change is harmless). Returns `{version, changed, status pairs,
/// revoked pairs}`, or `{-1}` without changing anything when Redis holds an older version than
/// the instance (it lost its data: the instance puts its table back first).
const CHANGE_SCRIPT: &str = include_str!("overrides_change.lua");

/// KEYS: status, revoked, version. ARGV: version, channel, the number of status pairs, then the
/// status pairs and the revoked pairs. Puts a whole table back when Redis holds an older version
/// than `version` (or none: Redis lost its data, or failed over to a replica that lags) and
/// announces it; does nothing otherwise. Returns 1 when it restored.
const RESTORE_SCRIPT: &str = include_str!("overrides_restore.lua");

type Table = (u64, Vec<String>, Vec<String>);

/// What the Redis store knows of the overrides.
pub(super) struct SharedOverrides {
    /// The gateway's table, once it follows (see [`RedisStore::follow`]).
    table: OnceLock<Arc<ArcSwap<Overrides>>>,
    /// The version in the table (and in the disk copy).
    version: Mutex<u64>,
    /// The table in force could not be confirmed with Redis (the metric `from_copy` says so).
    unconfirmed: AtomicBool,
    pub(super) from_copy: prometheus::IntGauge,
    pub(super) version_gauge: prometheus::IntGauge,
    pub(super) restored: prometheus::IntCounter,
}

impl SharedOverrides {
    pub(super) fn new() -> Self {
        SharedOverrides {
            table: OnceLock::new(),
            version: Mutex::new(0),
            unconfirmed: AtomicBool::new(false),
            from_copy: prometheus::IntGauge::new(
                "overrides_from_copy",
                "1 while the admin overrides in force are the disk copy (Redis unreachable)",
            )
            .expect("metric"),
            version_gauge: prometheus::IntGauge::new(
                "overrides_version",
                "Version of the fleet's admin overrides in force",
            )
            .expect("metric"),
            restored: prometheus::IntCounter::new(
                "overrides_restored_total",
                "Times this instance put its overrides back into a Redis that held an older version",
            )
            .expect("metric"),
        }
    }
}

/// A Redis error after the command may have been sent: the outcome is unknown.
fn outcome_unknown(e: &redis::RedisError) -> bool {
    !(e.is_connection_refusal() || matches!(e.kind(), redis::ErrorKind::Server(_)))
}

impl RedisStore {
    /// The fleet's overrides from Redis, or from the disk copy (said in the log and the metric
    /// `vivgate_overrides_from_copy`) when Redis does not answer; neither is an error. A copy
    /// newer than what Redis holds (Redis lost its data) is put back into Redis.
    pub(super) fn load_overrides_blocking(self: &Arc<Self>) -> Result<Overrides, String> {
        let read =
            self.run(|s| Box::pin(async move { s.read_overrides_fresh(ADMIN_TIMEOUT).await }));
        let path = &self.settings.overrides_copy;
        let copy = read_copy(path);
        let o = &self.overrides;
        let (version, table, from_copy) = match read {
            Some(Ok((version, table))) => match copy {
                Ok((newer, kept)) if newer > version => {
                    tracing::error!(
                        redis = version,
                        copy = newer,
                        "overrides: Redis holds an older version than the copy (did Redis lose its data?); putting the copy back"
                    );
                    let restore = kept.clone();
                    let _ = self.run(move |s| {
                        Box::pin(async move { s.restore_overrides(newer, &restore).await })
                    });
                    (newer, kept, false)
                }
                _ => (version, table, false),
            },
            failed => {
                let why = match failed {
                    Some(Err(e)) => e,
                    _ => "no answer in time".to_string(),
                };
                let (version, table) = copy.map_err(|e| {
                    format!(
                        "overrides: Redis {} could not be read ({why}) and there is no usable copy at {} ({e}); \
                         refusing to start without the fleet's revocations",
                        self.settings.url,
                        path.display()
                    )
                })?;
                tracing::warn!(
                    copy = %path.display(),
                    version,
                    "overrides: Redis unreachable ({why}); serving the last copy"
                );
                (version, table, true)
            }
        };
        if let Err(e) = write_copy(path, version, &table) {
            tracing::warn!(path = %path.display(), "cannot keep the overrides copy: {e}");
        }
        *o.version.lock().unwrap_or_else(|p| p.into_inner()) = version;
        o.version_gauge.set(version as i64);
        o.from_copy.set(i64::from(from_copy));
        o.unconfirmed.store(from_copy, Ordering::Release);
        Ok(table)
    }

    /// Puts `table` at `version` back into Redis if Redis holds an older version (see
    /// [`RESTORE_SCRIPT`]).
    async fn restore_overrides(&self, version: u64, table: &Overrides) -> Result<bool, String> {
        let mut conn = self.overrides_conn(CHECK_EVERY).await?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RESTORE_SCRIPT)
            .arg(3)
            .arg(STATUS_KEY)
            .arg(REVOKED_KEY)
            .arg(VERSION_KEY)
            .arg(version)
            .arg(CHANNEL)
            .arg(table.status.len());
        for (group, status) in &table.status {
            cmd.arg(group).arg(status.as_str());
        }
        for (key, group) in &table.revoked {
            cmd.arg(key).arg(group);
        }
        let task = self.handle.spawn(async move {
            tokio::time::timeout(CHECK_EVERY, cmd.query_async::<u64>(&mut conn)).await
        });
        let restored = task
            .await
            .map_err(|e| e.to_string())?
            .map_err(|_| "no answer in time".to_string())?
            .map_err(|e| e.to_string())?;
        if restored == 1 {
            self.overrides.restored.inc();
        }
        Ok(restored == 1)
    }

    /// A connection for the overrides: one of their own to a single Redis (so a refused
    /// connection means nothing was sent, and their timeouts are not the request path's), or
    /// the store's cluster connection.
    async fn overrides_conn(&self, within: Duration) -> Result<Conn, String> {
        if cluster_nodes(&self.settings.url).is_some() {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                if let Some(c) = self.conn.get() {
                    return Ok(c.clone());
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err("redis cluster not connected".into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let client = redis::Client::open(self.settings.url.as_str()).map_err(|e| e.to_string())?;
        // answers are awaited by the callers, each with its own bound
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(within))
            .set_response_timeout(None);
        let connect = client.get_multiplexed_async_connection_with_config(&config);
        match tokio::time::timeout(within, connect).await {
            Ok(Ok(c)) => Ok(Conn::Plain(c)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no connection in time".into()),
        }
    }

    /// Reads the whole table on `conn` (EVAL with the script's text: nothing to load first).
    async fn read_overrides(
        &self,
        conn: &mut Conn,
        within: Duration,
    ) -> Result<(u64, Overrides), String> {
        let mut c = conn.clone();
        // bounded inside the task, so a connection that hangs is let go with it
        let task = self.handle.spawn(async move {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(READ_SCRIPT)
                .arg(3)
                .arg(STATUS_KEY)
                .arg(REVOKED_KEY)
                .arg(VERSION_KEY);
            tokio::time::timeout(within, cmd.query_async::<Table>(&mut c)).await
        });
        let (version, status, revoked) = task
            .await
            .map_err(|e| e.to_string())?
            .map_err(|_| "no answer in time".to_string())?
            .map_err(|e| e.to_string())?;
        Ok((version, to_overrides(status, revoked)))
    }

    async fn read_overrides_fresh(&self, within: Duration) -> Result<(u64, Overrides), String> {
        let mut conn = self.overrides_conn(within).await?;
        self.read_overrides(&mut conn, within).await
    }

    /// Puts a table read from Redis in force if it is newer than the one served (replies may
    /// arrive out of order: an older one is never applied); keeps the disk copy in step.
    fn apply_overrides(&self, version: u64, table: Overrides) {
        let o = &self.overrides;
        self.redis_answers(version);
        // nothing follows yet (the gateway has not loaded them): nothing to put in force
        let Some(table_in_force) = o.table.get() else {
            return;
        };
        let mut current = o.version.lock().unwrap_or_else(|p| p.into_inner());
        if version <= *current {
            return;
        }
        table_in_force.store(Arc::new(table.clone()));
        *current = version;
        o.version_gauge.set(version as i64);
        drop(current);
        // written off the store's thread: a slow disk must not hold up leases and settlements
        let path = self.settings.overrides_copy.clone();
        self.handle.spawn_blocking(move || {
            if let Err(e) = write_copy(&path, version, &table) {
                tracing::warn!(path = %path.display(), "cannot keep the overrides copy: {e}");
            }
        });
    }

    /// Redis answered: the overrides in force are confirmed again.
    fn redis_answers(&self, version: u64) {
        if self.overrides.unconfirmed.swap(false, Ordering::AcqRel) {
            self.overrides.from_copy.set(0);
            tracing::info!(version, "overrides: Redis answers again");
        }
    }

    fn overrides_unreachable(&self, why: &str) {
        if !self.overrides.unconfirmed.swap(true, Ordering::AcqRel) {
            self.overrides.from_copy.set(1);
            tracing::warn!("overrides: Redis unreachable ({why}); serving the last table read");
        }
    }

    /// Compares the version in Redis with the one served: a newer one is read and put in
    /// force; an older one (Redis lost its data or failed over to a replica that lags) gets
    /// the table this instance serves put back, so a revocation is never lost that way. `conn`
    /// is kept between checks, and made again after an error.
    async fn check_overrides(&self, conn: &mut Option<Conn>) -> Result<(), String> {
        let c = match conn {
            Some(c) => c,
            None => conn.insert(self.overrides_conn(CHECK_EVERY).await?),
        };
        let checked = async {
            let mut c2 = c.clone();
            let version = self
                .handle
                .spawn(async move {
                    let mut get = redis::cmd("GET");
                    get.arg(VERSION_KEY);
                    tokio::time::timeout(CHECK_EVERY, get.query_async::<Option<u64>>(&mut c2)).await
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|_| "no answer in time".to_string())?
                .map_err(|e| e.to_string())?
                .unwrap_or(0);
            let current = *self
                .overrides
                .version
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if version > current {
                let (version, table) = self.read_overrides(c, CHECK_EVERY).await?;
                self.apply_overrides(version, table);
            } else if version < current {
                let table = self
                    .overrides
                    .table
                    .get()
                    .map(|t| Overrides::clone(&t.load()))
                    .unwrap_or_default();
                if self.restore_overrides(current, &table).await? {
                    tracing::error!(
                        redis = version,
                        restored = current,
                        "overrides: Redis held an older version (did Redis lose its data?); put this instance's table back"
                    );
                }
                self.redis_answers(current);
            } else {
                self.redis_answers(version);
            }
            Ok::<(), String>(())
        };
        let result = checked.await;
        if result.is_err() {
            *conn = None;
        }
        result
    }

    /// An admin change: made in Redis first (one script), then in force here; other instances
    /// apply it when it is announced, or at their next version check.
    pub(super) fn change_overrides_blocking(
        self: &Arc<Self>,
        change: &OverrideChange,
    ) -> Result<Changed, ChangeError> {
        let args: [String; 3] = match change {
            OverrideChange::Status { group, status } => {
                ["status".into(), group.clone(), status.as_str().into()]
            }
            OverrideChange::Revoke { key, group } => ["revoke".into(), key.clone(), group.clone()],
            OverrideChange::Remove(id) => ["remove".into(), id.clone(), String::new()],
        };
        let not_saved = |reason: String| ChangeError::NotSaved {
            shared: true,
            reason,
        };
        let result = self.run(move |s| {
            Box::pin(async move {
                for _ in 0..2 {
                    let served = *s
                        .overrides
                        .version
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    let r = s.send_change(&args, served).await?;
                    if r.0 >= 0 {
                        return Ok(r);
                    }
                    // Redis lost what this instance serves: put it back, then change
                    let table = s
                        .overrides
                        .table
                        .get()
                        .map(|t| Overrides::clone(&t.load()))
                        .unwrap_or_default();
                    s.restore_overrides(served, &table).await.map_err(Err)?;
                }
                Err(Err(
                    "Redis keeps an older version of the overrides".to_string()
                ))
            })
        });
        match result {
            Some(Ok((version, changed, status, revoked))) => {
                let version = version as u64;
                self.apply_overrides(version, to_overrides(status, revoked));
                let found = changed > 0 || !matches!(change, OverrideChange::Remove(_));
                Ok(Changed {
                    found,
                    version: Some(version),
                })
            }
            // Err(Ok(_)): sent, no answer; Err(Err(_)): refused before anything was applied
            Some(Err(Ok(reason))) => Err(ChangeError::Unknown { reason }),
            Some(Err(Err(reason))) => Err(not_saved(reason)),
            None => Err(ChangeError::Unknown {
                reason: "no answer in time".into(),
            }),
        }
    }

    /// Sends one change (see [`CHANGE_SCRIPT`]). `Err(Ok(_))`: sent, no answer (the outcome is
    /// unknown); `Err(Err(_))`: refused before anything was applied.
    async fn send_change(
        &self,
        args: &[String; 3],
        served: u64,
    ) -> Result<(i64, u64, Vec<String>, Vec<String>), Result<String, String>> {
        // a connection that cannot be made sent nothing
        let mut conn = self.overrides_conn(ADMIN_TIMEOUT).await.map_err(Err)?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CHANGE_SCRIPT)
            .arg(3)
            .arg(STATUS_KEY)
            .arg(REVOKED_KEY)
            .arg(VERSION_KEY);
        for a in args {
            cmd.arg(a);
        }
        cmd.arg(CHANNEL).arg(served);
        // the change keeps its connection after the caller stopped waiting, so a slow Redis
        // still applies it rather than dropping it with the connection
        let task = self.handle.spawn(async move {
            let answer = cmd.query_async::<(i64, u64, Vec<String>, Vec<String>)>(&mut conn);
            match tokio::time::timeout(LATE_ANSWER, answer).await {
                Ok(r) => r,
                Err(_) => Err(redis::RedisError::from(std::io::Error::from(
                    std::io::ErrorKind::TimedOut,
                ))),
            }
        });
        match tokio::time::timeout(ADMIN_TIMEOUT, task).await {
            Ok(Ok(Ok(r))) => Ok(r),
            Ok(Ok(Err(e))) if outcome_unknown(&e) => Err(Ok(e.to_string())),
            Ok(Ok(Err(e))) => Err(Err(e.to_string())),
            Ok(Err(e)) => Err(Err(e.to_string())),
            Err(_) => Err(Ok("no answer within 2 s".to_string())),
        }
    }

    /// Follows the fleet's overrides into `table`: subscribes to [`CHANNEL`] first, then compares
    /// versions at once and every [`CHECK_EVERY`], and reads the table at every announcement.
    pub(super) fn follow(self: &Arc<Self>, table: Arc<ArcSwap<Overrides>>) {
        if self.overrides.table.set(table).is_err() {
            return;
        }
        let weak = Arc::downgrade(self);
        self.handle.spawn(follow_loop(weak));
    }

    /// The version served and whether it is the disk copy.
    pub(super) fn overrides_state(&self) -> (u64, bool) {
        (
            *self
                .overrides
                .version
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
            self.overrides.from_copy.get() == 1,
        )
    }

    /// A subscription to [`CHANNEL`]: on the Redis of the URL, or on a node of a cluster (a
    /// message published on any node reaches the subscribers of every node).
    async fn subscribe(&self) -> Result<redis::aio::PubSub, String> {
        let urls = match cluster_nodes(&self.settings.url) {
            Some(nodes) => nodes,
            None => vec![self.settings.url.clone()],
        };
        let mut last = String::from("no Redis to subscribe to");
        for url in urls {
            let client = match redis::Client::open(url.as_str()) {
                Ok(c) => c,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let attempt = async {
                let mut p = client.get_async_pubsub().await?;
                p.subscribe(CHANNEL).await?;
                Ok::<_, redis::RedisError>(p)
            };
            match tokio::time::timeout(CHECK_EVERY, attempt).await {
                Ok(Ok(p)) => return Ok(p),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "no answer in time".into(),
            }
        }
        Err(last)
    }
}

async fn next_message(stream: &mut redis::aio::PubSubStream) -> Option<redis::Msg> {
    use futures_core::Stream;
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

async fn follow_loop(store: Weak<RedisStore>) {
    loop {
        let Some(s) = store.upgrade() else { return };
        // subscribed first: a change announced from here on is heard; the version check
        // right after covers the ones made before
        let mut stream = match s.subscribe().await {
            Ok(p) => p.into_on_message(),
            Err(e) => {
                s.overrides_unreachable(&e);
                drop(s);
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let mut conn = None;
        if let Err(e) = s.check_overrides(&mut conn).await {
            s.overrides_unreachable(&e);
        }
        drop(s);
        let mut next_check = tokio::time::Instant::now() + CHECK_EVERY;
        loop {
            let heard = tokio::select! {
                m = next_message(&mut stream) => match m {
                    Some(_) => true,
                    // the subscription ended (Redis restarted or went away): subscribe again
                    None => break,
                },
                _ = tokio::time::sleep_until(next_check) => false,
            };
            let Some(s) = store.upgrade() else { return };
            if !heard {
                next_check = tokio::time::Instant::now() + CHECK_EVERY;
            }
            if let Err(e) = s.check_overrides(&mut conn).await {
                s.overrides_unreachable(&e);
            }
        }
    }
}
