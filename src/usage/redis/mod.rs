//! Usage shared by every gateway instance through Redis, without a Redis round trip per request.
//!
//! One Redis hash per (group, month): `vivgate:usage:{<group>}:<YYYY-MM>` (the braces are a
//! cluster hash tag), with fields `calls`, `calls_overage`, `bytes`, `bytes_overage`, and per
//! instance `L:<id>` (calls leased and not yet settled), `E:<id>` (when those leases expire, ms),
//! `G:<id>` and `Q:<id>` (calls granted and the last grant number, to undo grants whose reply
//! was lost) and `S:<id>` (the last settlement applied, for idempotent retries). It expires 35 days after
//! its month ends.
//!
//! - **Hard limits (calls, no overage billing):** an instance takes a *lease* of calls with one
//!   Lua script that checks and takes atomically (`calls` counts leased + served calls; a refusal
//!   takes nothing), then spends it locally with an atomic decrement. The lease is
//!   `min(lease_max, max(1, remaining / 16))`, so it shrinks as the quota runs out and the last
//!   calls are granted one at a time. A request waits for a grant only when its instance holds
//!   none, for at most the store timeout. Unused leases are returned after `lease_idle` without
//!   use, and on stop; the leases of an instance that died are reclaimed by the next grant once
//!   their expiry (`lease_ttl` on Redis's clock, renewed at every settlement) passes. An instance stops spending
//!   a lease it could not renew for half its TTL. So, while Redis is reachable, the calls
//!   forwarded for a group never exceed its quota, and idle credit comes back within
//!   `lease_idle` (or `lease_ttl` after a crash).
//! - **Overage groups and bandwidth:** counted locally and added to Redis at each settlement
//!   (every `flush_interval`, at most 1 s), where the script splits what lies past the limit into
//!   the `_overage` field. The bandwidth check reads Redis's total from the last settlement plus
//!   this instance's unsettled bytes, so the overshoot is bounded by the responses in flight plus
//!   one settlement interval of the other instances' traffic.
//! - **Redis down or slow** (each call bounded by `store_timeout`): leases held are spent first;
//!   then `allow` admits up to `outage_allowance` × quota calls per instance, counted locally and
//!   replayed exactly once when Redis is back (settlements carry a sequence number the script
//!   checks), and `deny` answers 503. Over-admission is bounded by instances × allowance: an
//!   instance's outage calls count against its allowance until Redis confirmed them, and it
//!   never admits more than the allowance past the quota as it last knew it.
//! - **Lost replies:** a settlement is re-sent with its number until confirmed (applied once).
//!   A grant Redis applied but whose reply was lost is undone by the instance's next grant or
//!   settlement: both carry the instance's own total of the calls its grants gave it, which Redis
//!   compares with `G:<id>`, its total of what it granted (see [`RECONCILE_LUA`]); grants carry a
//!   number and `Q:<id>` keeps a late one from being applied after a later script. So after a
//!   graceful stop Redis holds exactly what was served, whatever replies were lost.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use redis::aio::ConnectionManager;

use crate::clock::{Clock, Month};
use crate::usage::{GroupId, Take, Usage, UsageStore};
use conn::{cluster_nodes, Conn};
use metrics::StoreMetrics;

mod conn;
mod lease;
mod metrics;
pub mod overrides;
mod overrides_table;
mod read;
mod settle;

pub use crate::config::{OutagePolicy, RedisSettings};

/// How long a month's key outlives the month.
const KEY_TTL_AFTER_MONTH_MS: i64 = 35 * 86_400_000;

/// Shared by both scripts: the instance's own cumulative count of the calls its grants gave it
/// (`received`, ARGV) is the authority on what it holds. `G:<id>` is the same count as Redis
/// applied it; a grant Redis applied whose reply never reached the instance (Redis killed before
/// answering, a timeout) makes `G:<id>` larger, and that difference is taken back out of
/// `L:<id>` and `calls`. A missing `G:<id>` (no lease held, or reclaimed) starts from `received`.
const RECONCILE_LUA: &str = include_str!("reconcile.lua");

/// ARGV: limit, want, instance, (unused), ttl, key expiry, received (see [`RECONCILE_LUA`]),
/// grant number. Returns `{granted, calls}`; `{-1, 0}` for a stale grant.
const LEASE_SCRIPT: &str = include_str!("lease.lua");

/// KEYS: the group's month key and its days key. ARGV: instance, sequence number, (unused),
/// ttl, key expiry, lease used, lease returned, direct calls, bytes, calls limit, bytes limit,
/// overage ('1'), received ('': not now, a grant is in flight), the last grant number sent (see
/// [`RECONCILE_LUA`]) and the day the batch is credited to. Returns `{calls, bytes,
/// calls_overage, bytes_overage, leased}`.
const SETTLE_SCRIPT: &str = include_str!("settle.lua");

/// This instance's running day totals (see [`RedisStore::gateway_days_key`]).
#[derive(Default)]
struct GatewayDays {
    totals: std::collections::BTreeMap<(Month, u8), [i64; 2]>,
    unwritten: std::collections::BTreeSet<Month>,
}

/// One settlement, kept as sent until Redis confirms it, so a retry is the same batch with the
/// same sequence number (applied once).
#[derive(Debug, Clone, Copy, Default)]
struct Batch {
    seq: u64,
    /// The day of the month its counts are credited to (fixed with the batch: a re-sent batch
    /// credits the same day).
    day: u8,
    lease_used: u64,
    lease_returned: u64,
    /// Calls counted without a lease, `outage` included.
    direct: i64,
    /// Of `direct`, the calls admitted under the outage allowance: confirmed, they stop
    /// counting against it.
    outage: u64,
    bytes: i64,
}

#[derive(Default)]
struct Cell {
    /// Leased calls this instance may still spend.
    lease: AtomicU64,
    /// Calls served from leases, not yet settled.
    lease_used: AtomicU64,
    /// Leased calls given back (idle, refunds past a settlement, stop), not yet settled.
    lease_returned: AtomicU64,
    /// Calls counted without a lease (overage groups, refunds), not yet in a batch.
    direct: AtomicI64,
    /// Calls admitted under the outage allowance, not yet in a batch.
    outage_pending: AtomicI64,
    /// Calls admitted under the outage allowance that Redis has not confirmed yet: what counts
    /// against the allowance. A confirmed batch takes off only its own outage calls (never all:
    /// calls admitted after the batch was cut are not in Redis's total the instance now knows).
    outage_admitted: AtomicU64,
    bytes: AtomicI64,
    /// Redis's totals after the last settlement or grant: calls, bytes, calls_overage,
    /// bytes_overage.
    known: [AtomicU64; 4],
    last_use_ms: AtomicI64,
    /// When Redis last confirmed this instance's leases (grant or settlement).
    lease_confirmed_ms: AtomicI64,
    /// The group's quota ran out at this time: ask Redis again only after a short pause.
    exhausted_at_ms: AtomicI64,
    /// The month ended and its totals were copied to the month archive.
    archived: AtomicBool,
    limit: AtomicU64,
    bytes_limit: AtomicU64,
    overage: AtomicBool,
    /// Calls received in grant replies, since the cell was made (changed under `fetching`):
    /// what Redis applied beyond it was lost on the way back (see [`RECONCILE_LUA`]).
    received: AtomicU64,
    /// Grants sent, since the cell was made (changed under `fetching`).
    grants_sent: AtomicU64,
    /// Grants up to this number are known to agree with Redis (answered, or reconciled by a
    /// settlement); one beyond it may have left a lease in Redis that a settlement must undo.
    reconciled: AtomicU64,
    /// One grant request at a time per cell; a settlement that reconciles the grants holds it
    /// too, so no grant is in flight while it runs.
    fetching: tokio::sync::Mutex<()>,
    inflight: Mutex<Option<Batch>>,
}

pub struct RedisStore {
    /// Set at start for one Redis; for a cluster, once the first connection succeeds.
    conn: std::sync::OnceLock<Conn>,
    settings: RedisSettings,
    instance: String,
    clock: Arc<dyn Clock>,
    cells: DashMap<(GroupId, Month), Arc<Cell>, ahash::RandomState>,
    lease: redis::Script,
    settle: redis::Script,
    /// Settlement sequence numbers, increasing over the whole store (per key, Redis applies a
    /// number once and only numbers above the last it applied).
    seq: AtomicU64,
    /// One settlement pass at a time (the loop, `flush`, `shutdown`).
    settling: tokio::sync::Mutex<()>,
    /// Redis is considered down until this time (ms); 0: up.
    down_until_ms: AtomicI64,
    down_since: Mutex<Option<Instant>>,
    metrics: StoreMetrics,
    /// The clock days are credited by (the gateway's).
    day_clock: crate::usage::days::DayClock,
    /// What this instance settled per day, for the gateway's days hash: (month, day) →
    /// calls, bytes (running totals), and the months changed since they were last written.
    gateway_days: Mutex<GatewayDays>,
    /// The fleet's admin overrides (see [`overrides`]).
    overrides: overrides::SharedOverrides,
    /// The store's own runtime, where the connection lives and settlements run (dropped in
    /// the background: the store may be dropped inside another runtime).
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl RedisStore {
    /// Connects (bounded by the store timeout per attempt, a few attempts) and starts the
    /// settlement loop.
    pub fn connect(
        settings: RedisSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<RedisStore>, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("vivgate-redis")
            .enable_all()
            .build()
            .map_err(|e| format!("redis runtime: {e}"))?;
        let conn = std::sync::OnceLock::new();
        let cluster_nodes = cluster_nodes(&settings.url);
        if cluster_nodes.is_none() {
            let client = redis::Client::open(settings.url.as_str())
                .map_err(|e| format!("usage.redis_url: {e}"))?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_response_timeout(Some(settings.timeout))
                .set_connection_timeout(Some(settings.timeout.max(Duration::from_millis(200))))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            // lazy: the gateway starts (and serves by its outage policy) while Redis is down
            let _in_rt = rt.enter();
            let manager = ConnectionManager::new_lazy_with_config(client, config)
                .map_err(|e| format!("redis {}: {e}", settings.url))?;
            let _ = conn.set(Conn::Single(manager));
        }
        let handle = rt.handle().clone();
        static STORES: AtomicU64 = AtomicU64::new(0);
        let instance = format!(
            "{}-{}-{}-{:x}",
            std::process::id(),
            STORES.fetch_add(1, Ordering::Relaxed),
            clock.now_ms(),
            rand_u32()
        );
        let store = Arc::new(RedisStore {
            conn,
            instance,
            clock,
            cells: DashMap::default(),
            lease: redis::Script::new(&format!("{RECONCILE_LUA}{LEASE_SCRIPT}")),
            settle: redis::Script::new(&format!("{RECONCILE_LUA}{SETTLE_SCRIPT}")),
            seq: AtomicU64::new(0),
            settling: tokio::sync::Mutex::new(()),
            down_until_ms: AtomicI64::new(0),
            down_since: Mutex::new(None),
            metrics: StoreMetrics::new(),
            day_clock: Default::default(),
            gateway_days: Default::default(),
            overrides: overrides::SharedOverrides::new(),
            rt: Some(rt),
            handle,
            settings,
        });
        if let Some(nodes) = cluster_nodes {
            // a cluster client needs its first connection to learn the slots: keep trying in
            // the background; until then the outage policy applies
            let client = redis::cluster::ClusterClientBuilder::new(nodes)
                .connection_timeout(store.settings.timeout.max(Duration::from_millis(200)))
                .response_timeout(store.settings.timeout)
                .retries(1)
                .build()
                .map_err(|e| format!("usage.redis_url: {e}"))?;
            let weak = Arc::downgrade(&store);
            store.handle.spawn(async move {
                loop {
                    match client.get_async_connection().await {
                        Ok(c) => {
                            if let Some(store) = weak.upgrade() {
                                let _ = store.conn.set(Conn::Cluster(c));
                            }
                            return;
                        }
                        Err(e) => tracing::debug!("redis cluster: {e}"),
                    }
                    if weak.strong_count() == 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
        let weak = Arc::downgrade(&store);
        let every = store.settings.flush_interval;
        store.handle.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(store) = weak.upgrade() else { return };
                store.settle_all(false).await;
            }
        });
        Ok(store)
    }

    /// This instance's id in Redis (`L:<id>`, `E:<id>`, `S:<id>`).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn key(group: &str, month: Month) -> String {
        format!("vivgate:usage:{{{group}}}:{month}")
    }

    /// One hash per finished month: group → `calls bytes calls_overage bytes_overage`, kept for
    /// the retention period after the month's own keys expired.
    fn archive_key(month: Month) -> String {
        format!("vivgate:usage-archive:{month}")
    }

    /// A group's days of a month, beside its month key (same hash tag, so the settlement
    /// script writes both): fields `<day>:calls`, `<day>:bytes`.
    fn days_key(group: &str, month: Month) -> String {
        format!("vivgate:usage-days:{{{group}}}:{month}")
    }

    /// The whole gateway's days of a month: fields `<day>:<instance>:calls|bytes`, each
    /// instance's running total of what it settled (written whole, so a repeat is harmless).
    fn gateway_days_key(month: Month) -> String {
        format!("vivgate:gateway-days:{month}")
    }

    fn expire_at(month: Month) -> i64 {
        month.next().start_ms() + KEY_TTL_AFTER_MONTH_MS
    }

    fn cell(&self, group: &GroupId, month: Month) -> Arc<Cell> {
        if let Some(c) = self.cells.get(&(group.clone(), month)) {
            return c.clone();
        }
        self.cells
            .entry((group.clone(), month))
            .or_default()
            .clone()
    }

    fn is_down(&self, now: i64) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) > now
    }

    fn mark_down(&self, now: i64) {
        // requests stop asking Redis for a second; the settlement loop keeps probing
        self.down_until_ms.store(now + 1_000, Ordering::Relaxed);
        if let Ok(mut since) = self.down_since.lock() {
            if since.is_none() {
                *since = Some(Instant::now());
                self.metrics.unavailable.set(1);
                tracing::warn!("redis unavailable: serving by the outage policy");
            }
        }
    }

    fn mark_up(&self) {
        self.down_until_ms.store(0, Ordering::Relaxed);
        if let Ok(mut since) = self.down_since.lock() {
            if let Some(t) = since.take() {
                self.metrics
                    .unavailable_seconds
                    .inc_by(t.elapsed().as_secs_f64());
                self.metrics.unavailable.set(0);
                tracing::info!(seconds = t.elapsed().as_secs_f64(), "redis available again");
            }
        }
    }

    fn policy_for(&self, tier: Option<&str>) -> OutagePolicy {
        tier.and_then(|t| {
            self.settings
                .tier_policy
                .iter()
                .find(|(n, _)| n == t)
                .map(|(_, p)| *p)
        })
        .unwrap_or(self.settings.policy)
    }

    /// Runs one script on the store's runtime, where the connection lives (a request's runtime
    /// may be gone by the time a reconnect needs it), bounded by the store timeout.
    async fn script<T: redis::FromRedisValue + Send + 'static>(
        &self,
        script: &redis::Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<redis::RedisResult<T>, ()> {
        let Some(mut conn) = self.conn.get().cloned() else {
            return Err(());
        };
        let script = script.clone();
        let mut task = self.handle.spawn(async move {
            let mut inv = script.prepare_invoke();
            for key in keys {
                inv.key(key);
            }
            for a in args {
                inv.arg(a);
            }
            inv.invoke_async::<T>(&mut conn).await
        });
        match tokio::time::timeout(self.settings.timeout, &mut task).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(()),
            Err(_) => {
                // given up on: no second attempt (a script load and re-send after NOSCRIPT)
                // goes out later
                task.abort();
                Err(())
            }
        }
    }

    /// Runs `f` on the store's runtime and waits for it from any thread, async context or not.
    fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(Arc<Self>) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>
            + Send
            + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        let me = self.clone();
        self.handle.spawn(async move {
            let _ = tx.send(f(me).await);
        });
        rx.recv_timeout(Duration::from_secs(10)).ok()
    }
}

/// The store's metrics: its own and the fleet overrides'.
fn collectors(
    m: &StoreMetrics,
    o: &overrides::SharedOverrides,
) -> Vec<Box<dyn prometheus::core::Collector>> {
    vec![
        Box::new(m.lease_grants.clone()),
        Box::new(m.leased_calls.clone()),
        Box::new(m.latency.clone()),
        Box::new(m.unavailable_seconds.clone()),
        Box::new(m.unavailable.clone()),
        Box::new(m.replayed_calls.clone()),
        Box::new(m.outage_admitted.clone()),
        Box::new(m.outage_bound.clone()),
        Box::new(o.from_copy.clone()),
        Box::new(o.version_gauge.clone()),
        Box::new(o.restored.clone()),
    ]
}

/// The names of the metric families this store adds (without the `vivgate_` prefix).
pub fn metric_family_names() -> Vec<String> {
    collectors(&StoreMetrics::new(), &overrides::SharedOverrides::new())
        .iter()
        .flat_map(|c| c.desc())
        .map(|d| d.fq_name.clone())
        .collect()
}

/// A finished month is archived this long after it ends (settlements of its last second are in).
const ARCHIVE_AFTER_MS: i64 = 3_600_000;

/// `month` plus `n` months.
fn month_plus(month: Month, n: u32) -> Month {
    (0..n).fold(month, |m, _| m.next())
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    // the instance id only needs to differ between processes started in the same millisecond
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    u32::from_le_bytes(b)
}

/// The store as the gateway uses it: an `Arc`, so the settlement loop and the requests share it.
#[derive(Clone)]
pub struct SharedRedisStore(pub Arc<RedisStore>);

impl UsageStore for SharedRedisStore {
    async fn take_call(
        &self,
        group: &GroupId,
        month: Month,
        limit: u64,
        overage_billing: bool,
        tier: &str,
    ) -> Take {
        self.take_call_for_tier(group, month, limit, overage_billing, Some(tier))
            .await
    }

    fn refund_call(&self, group: &GroupId, month: Month, take: Take) {
        let Take::Admitted { .. } = take else { return };
        let cell = self.0.cell(group, month);
        if cell.overage.load(Ordering::Relaxed) {
            cell.direct.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        // a leased call goes back to the lease (if its use is not settled yet) or to Redis
        let taken_back = cell
            .lease_used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if taken_back {
            cell.lease.fetch_add(1, Ordering::AcqRel);
        } else if cell
            .outage_pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > 0).then(|| n - 1)
            })
            .is_ok()
        {
            // an outage call not in a batch yet: it no longer counts against the allowance (one
            // in a batch does until the batch is confirmed; the next batch takes it off Redis's)
            let _ = cell
                .outage_admitted
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        } else {
            cell.direct.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn bytes_used(&self, group: &GroupId, month: Month) -> u64 {
        let cell = self.0.cell(group, month);
        let pending = cell.bytes.load(Ordering::Acquire).max(0) as u64;
        cell.known[1].load(Ordering::Acquire) + pending
    }

    fn add_bytes(&self, group: &GroupId, month: Month, n: u64, limit: u64, overage_billing: bool) {
        let cell = self.0.cell(group, month);
        cell.bytes_limit.store(limit, Ordering::Relaxed);
        if overage_billing {
            cell.overage.store(true, Ordering::Relaxed);
        }
        cell.bytes.fetch_add(n as i64, Ordering::AcqRel);
    }

    fn usage(&self, group: &str, month: Month) -> Usage {
        let key: GroupId = group.into();
        let Some(cell) = self.0.cells.get(&(key, month)).map(|c| c.clone()) else {
            return Usage::default();
        };
        // what Redis has not been told yet: the counts waiting for a batch, and the batch sent
        // and not confirmed (kept while Redis is down)
        let inflight = cell
            .inflight
            .lock()
            .ok()
            .and_then(|b| *b)
            .unwrap_or_default();
        let lease = cell.lease.load(Ordering::Acquire) as i64;
        let returned =
            cell.lease_returned.load(Ordering::Acquire) as i64 + inflight.lease_returned as i64;
        let pending_direct = cell.direct.load(Ordering::Acquire)
            + cell.outage_pending.load(Ordering::Acquire)
            + inflight.direct;
        let pending_bytes = cell.bytes.load(Ordering::Acquire) + inflight.bytes;
        Usage {
            // Redis counts this instance's unspent lease as taken, and a returned one until told
            calls: (cell.known[0].load(Ordering::Acquire) as i64 - lease - returned
                + pending_direct)
                .max(0) as u64,
            bytes: (cell.known[1].load(Ordering::Acquire) as i64 + pending_bytes).max(0) as u64,
            calls_overage: cell.known[2].load(Ordering::Acquire),
            bytes_overage: cell.known[3].load(Ordering::Acquire),
        }
    }

    fn usage_checked(&self, group: &str, month: Month) -> Result<Usage, String> {
        let group = group.to_string();
        self.0
            .run(move |s| Box::pin(async move { s.read(&group, month).await }))
            .unwrap_or_else(|| Err("redis did not answer in time".into()))
    }

    fn days(&self, group: &str, month: Month) -> Result<crate::usage::days::Days, String> {
        let group = group.to_string();
        self.0
            .run(move |s| Box::pin(async move { s.read_days(&group, month).await }))
            .unwrap_or_else(|| Err("redis did not answer in time".into()))
    }

    fn set_clock(&self, clock: Arc<dyn Clock>) {
        self.0.day_clock.set(clock);
    }

    fn usage_many(&self, groups: &[&str], month: Month) -> Result<Vec<Usage>, String> {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        self.0
            .run(move |s| Box::pin(async move { s.read_many(groups, month).await }))
            .unwrap_or_else(|| Err("redis did not answer in time".into()))
    }

    fn flush(&self) -> Result<usize, String> {
        let n = self
            .0
            .run(|s| Box::pin(async move { s.settle_all(false).await }))
            .ok_or("redis settlement did not finish in time")?;
        if self.0.is_down(self.0.clock.now_ms()) {
            return Err("redis unavailable: counts kept in memory and retried".into());
        }
        Ok(n)
    }

    fn release_for_handover(&self) -> Result<(), String> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<(), String> {
        // a few attempts: the first call on a connection Redis dropped (a restart) fails while
        // the connection is made again
        for attempt in 0..4 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(250));
            }
            self.0
                .run(|s| Box::pin(async move { s.settle_all(true).await }))
                .ok_or("redis settlement did not finish in time")?;
            if !self.0.is_down(self.0.clock.now_ms()) && self.0.nothing_pending() {
                return Ok(());
            }
        }
        Err("redis unavailable at stop: unsettled counts are lost".into())
    }

    fn register_metrics(&self, registry: &prometheus::Registry) {
        for c in collectors(&self.0.metrics, &self.0.overrides) {
            let _ = registry.register(c);
        }
    }

    fn load_overrides(&self) -> Result<crate::overrides::Overrides, String> {
        self.0.load_overrides_blocking()
    }

    fn change_shared_overrides(
        &self,
        change: &crate::overrides::OverrideChange,
    ) -> Option<Result<crate::overrides::Changed, crate::overrides::ChangeError>> {
        Some(self.0.change_overrides_blocking(change))
    }

    fn follow_overrides(&self, table: Arc<arc_swap::ArcSwap<crate::overrides::Overrides>>) {
        self.0.follow(table);
    }

    fn overrides_state(&self) -> Option<(u64, bool)> {
        Some(self.0.overrides_state())
    }
}

impl SharedRedisStore {
    /// `take_call` with the group's tier, for per-tier outage policies.
    pub async fn take_call_for_tier(
        &self,
        group: &GroupId,
        month: Month,
        limit: u64,
        overage_billing: bool,
        tier: Option<&str>,
    ) -> Take {
        let s = &self.0;
        if !overage_billing {
            return s.take_hard(group, month, limit, tier).await;
        }
        let cell = s.cell(group, month);
        cell.limit.store(limit, Ordering::Relaxed);
        cell.overage.store(true, Ordering::Relaxed);
        cell.last_use_ms.store(s.clock.now_ms(), Ordering::Relaxed);
        let before = cell.direct.fetch_add(1, Ordering::AcqRel);
        let used = (cell.known[0].load(Ordering::Acquire) as i64 + before).max(0) as u64;
        Take::Admitted {
            remaining: limit.saturating_sub(used + 1),
            overage: used >= limit,
        }
    }
}
