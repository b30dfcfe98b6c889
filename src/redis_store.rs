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
//!   checks), and `deny` answers 503. Over-admission is bounded by instances × allowance.
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

pub mod overrides;

/// What to do when Redis cannot answer within the store timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutagePolicy {
    /// Keep admitting up to the outage allowance per instance, counting locally.
    Allow,
    /// Refuse with 503 once the leases held are spent.
    Deny,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedisSettings {
    pub url: String,
    pub timeout: Duration,
    pub flush_interval: Duration,
    pub policy: OutagePolicy,
    /// Per-tier policy overrides, by tier name.
    pub tier_policy: Vec<(String, OutagePolicy)>,
    /// Fraction of a quota one instance may admit while Redis is unavailable (allow policy).
    pub outage_allowance: f64,
    pub lease_max: u64,
    pub lease_idle: Duration,
    pub lease_ttl: Duration,
    /// Months a finished month stays readable (from the archive once its key expired).
    pub retention_months: u32,
    /// Where the last overrides read from Redis are kept (`state/overrides-snapshot.json`
    /// beside the config).
    pub overrides_copy: std::path::PathBuf,
}

// the allowance is checked to be within 0..=1 at load, never NaN
impl Eq for RedisSettings {}

/// How long a month's key outlives the month.
const KEY_TTL_AFTER_MONTH_MS: i64 = 35 * 86_400_000;

/// Shared by both scripts: the instance's own cumulative count of the calls its grants gave it
/// (`received`, ARGV) is the authority on what it holds. `G:<id>` is the same count as Redis
/// applied it; a grant Redis applied whose reply never reached the instance (Redis killed before
/// answering, a timeout) makes `G:<id>` larger, and that difference is taken back out of
/// `L:<id>` and `calls`. A missing `G:<id>` (no lease held, or reclaimed) starts from `received`.
const RECONCILE_LUA: &str = r#"
local function reconcile(key, inst, received)
  local g = redis.call('HGET', key, 'G:' .. inst)
  if g then
    local lost = tonumber(g) - received
    if lost > 0 then
      local l = tonumber(redis.call('HGET', key, 'L:' .. inst) or '0')
      local fix = math.min(lost, l)
      if fix > 0 then
        redis.call('HINCRBY', key, 'L:' .. inst, -fix)
        redis.call('HINCRBY', key, 'calls', -fix)
      end
    end
  end
  redis.call('HSET', key, 'G:' .. inst, received)
end
"#;

/// ARGV: limit, want, instance, (unused), ttl, key expiry, received (see [`RECONCILE_LUA`]),
/// grant number. Returns `{granted, calls}`; `{-1, 0}` for a stale grant.
const LEASE_SCRIPT: &str = r#"
local key = KEYS[1]
local limit, want, inst = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local ttl, expire_at = tonumber(ARGV[5]), tonumber(ARGV[6])
local received, q = tonumber(ARGV[7]), tonumber(ARGV[8])
-- grants are numbered per instance and key; one that arrives after a later script of its
-- instance (it waited in a connection while the instance moved on) is not applied
if q <= tonumber(redis.call('HGET', key, 'Q:' .. inst) or '0') then return {-1, 0} end
redis.call('HSET', key, 'Q:' .. inst, q)
reconcile(key, inst, received)
-- lease expiry on Redis's clock, so instances with skewed clocks agree
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- reclaim the leases of other instances whose leases expired (they died or lost Redis); the
-- caller's own are settled by the caller
local h = redis.call('HGETALL', key)
for i = 1, #h, 2 do
  local f = h[i]
  if string.sub(f, 1, 2) == 'E:' and f ~= 'E:' .. inst and tonumber(h[i + 1]) < now then
    local other = string.sub(f, 3)
    local l = tonumber(redis.call('HGET', key, 'L:' .. other) or '0')
    if l > 0 then redis.call('HINCRBY', key, 'calls', -l) end
    redis.call('HDEL', key, 'L:' .. other, 'G:' .. other, f)
  end
end
local taken = tonumber(redis.call('HGET', key, 'calls') or '0')
local remaining = limit - taken
if remaining <= 0 then return {0, taken} end
local grant = math.min(want, math.max(1, math.floor(remaining / 16)), remaining)
redis.call('HINCRBY', key, 'calls', grant)
redis.call('HINCRBY', key, 'L:' .. inst, grant)
redis.call('HINCRBY', key, 'G:' .. inst, grant)
redis.call('HSET', key, 'E:' .. inst, now + ttl)
redis.call('PEXPIREAT', key, expire_at)
return {grant, taken + grant}
"#;

/// ARGV: instance, sequence number, (unused), ttl, key expiry, lease used, lease returned,
/// direct calls, bytes, calls limit, bytes limit, overage ('1'), received ('': not now, a grant
/// is in flight) and the last grant number sent (see [`RECONCILE_LUA`]). Returns `{calls, bytes,
/// calls_overage, bytes_overage, leased}`.
const SETTLE_SCRIPT: &str = r#"
local key = KEYS[1]
local inst, seq = ARGV[1], tonumber(ARGV[2])
local ttl, expire_at = tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease_used, lease_returned = tonumber(ARGV[6]), tonumber(ARGV[7])
local direct, bytes = tonumber(ARGV[8]), tonumber(ARGV[9])
local limit, blimit, overage = tonumber(ARGV[10]), tonumber(ARGV[11]), ARGV[12] == '1'
if ARGV[13] ~= '' then
  -- no grant of this instance was in flight when this was sent: the ones numbered up to
  -- ARGV[14] were answered or given up on, and none of them may be applied after this. A
  -- settlement that arrives after a later grant (it waited in a connection) knows too little
  -- to correct anything
  local q = tonumber(ARGV[14])
  if q >= tonumber(redis.call('HGET', key, 'Q:' .. inst) or '0') then
    redis.call('HSET', key, 'Q:' .. inst, q)
    reconcile(key, inst, tonumber(ARGV[13]))
  end
end
local applied = tonumber(redis.call('HGET', key, 'S:' .. inst) or '0')
if seq > applied then
  local l = tonumber(redis.call('HGET', key, 'L:' .. inst) or '0')
  local settled = math.min(l, lease_used + lease_returned)
  -- leases that expired and were reclaimed meanwhile are already out of `calls`: what was
  -- served from them is added back as a direct count
  local unreclaimed_used = math.min(lease_used, l)
  direct = direct + (lease_used - unreclaimed_used)
  local returned = math.min(lease_returned, l - unreclaimed_used)
  if settled > 0 then redis.call('HINCRBY', key, 'L:' .. inst, -settled) end
  if returned > 0 then redis.call('HINCRBY', key, 'calls', -returned) end
  if direct ~= 0 then
    local before = tonumber(redis.call('HGET', key, 'calls') or '0')
    local after = redis.call('HINCRBY', key, 'calls', direct)
    if overage and direct > 0 then
      local over = after - math.max(limit, before)
      if over > 0 then redis.call('HINCRBY', key, 'calls_overage', over) end
    end
  end
  if bytes ~= 0 then
    local before = tonumber(redis.call('HGET', key, 'bytes') or '0')
    local after = redis.call('HINCRBY', key, 'bytes', bytes)
    if overage and bytes > 0 then
      local over = after - math.max(blimit, before)
      if over > 0 then redis.call('HINCRBY', key, 'bytes_overage', over) end
    end
  end
  redis.call('HSET', key, 'S:' .. inst, seq)
end
local l = tonumber(redis.call('HGET', key, 'L:' .. inst) or '0')
if l > 0 then
  redis.call('HSET', key, 'E:' .. inst, now + ttl)
else
  -- nothing leased: the grant count starts again from the instance's at its next grant (the
  -- fence `Q:` stays, even after the last settlement, so a late grant is never applied)
  redis.call('HDEL', key, 'L:' .. inst, 'E:' .. inst, 'G:' .. inst)
end
redis.call('PEXPIREAT', key, expire_at)
local v = redis.call('HMGET', key, 'calls', 'bytes', 'calls_overage', 'bytes_overage')
local function n(x) return math.max(0, tonumber(x or '0')) end
return {n(v[1]), n(v[2]), n(v[3]), n(v[4]), l}
"#;

/// One settlement, kept as sent until Redis confirms it, so a retry is the same batch with the
/// same sequence number (applied once).
#[derive(Debug, Clone, Copy, Default)]
struct Batch {
    seq: u64,
    lease_used: u64,
    lease_returned: u64,
    direct: i64,
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
    /// Calls counted without a lease (overage groups, outage allowance), not yet settled.
    direct: AtomicI64,
    /// Calls admitted under the outage allowance this month (against the allowance).
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

/// Prometheus metrics of the shared store.
struct StoreMetrics {
    lease_grants: prometheus::IntCounter,
    leased_calls: prometheus::IntCounter,
    latency: prometheus::Histogram,
    unavailable_seconds: prometheus::Counter,
    unavailable: prometheus::IntGauge,
    replayed_calls: prometheus::IntCounter,
    outage_admitted: prometheus::IntCounter,
    outage_bound: prometheus::IntGauge,
}

impl StoreMetrics {
    fn new() -> Self {
        use prometheus::{Counter, Histogram, HistogramOpts, IntCounter, IntGauge};
        StoreMetrics {
            lease_grants: IntCounter::new("redis_lease_grants_total", "Quota leases granted")
                .expect("metric"),
            leased_calls: IntCounter::new("redis_leased_calls_total", "Calls granted in leases")
                .expect("metric"),
            latency: Histogram::with_opts(
                HistogramOpts::new("redis_seconds", "Redis script latency").buckets(vec![
                    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
                ]),
            )
            .expect("metric"),
            unavailable_seconds: Counter::new(
                "redis_unavailable_seconds_total",
                "Time Redis was unavailable",
            )
            .expect("metric"),
            unavailable: IntGauge::new("redis_unavailable", "1 while Redis is unavailable")
                .expect("metric"),
            replayed_calls: IntCounter::new(
                "redis_replayed_calls_total",
                "Calls admitted during an outage and added to Redis after it",
            )
            .expect("metric"),
            outage_admitted: IntCounter::new(
                "redis_outage_admitted_calls_total",
                "Calls admitted under the outage allowance",
            )
            .expect("metric"),
            outage_bound: IntGauge::new(
                "redis_outage_allowance_calls",
                "Largest per-instance outage allowance of any group counted this month",
            )
            .expect("metric"),
        }
    }
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

    /// A lease confirmed by Redis recently enough to spend: within two settlement intervals
    /// (and half the TTL), so what an instance cut off from Redis spends before stopping is at
    /// most about two intervals of its traffic, long before other instances may reclaim it.
    fn lease_valid(&self, cell: &Cell, now: i64) -> bool {
        let window = (2 * self.settings.flush_interval + self.settings.timeout)
            .min(self.settings.lease_ttl / 2)
            .as_millis() as i64;
        now - cell.lease_confirmed_ms.load(Ordering::Relaxed) < window
    }

    /// A lease that can no longer be spent goes back (it is returned at the next settlement).
    fn drop_stale_lease(&self, cell: &Cell, now: i64) {
        if !self.lease_valid(cell, now) && cell.lease.load(Ordering::Acquire) > 0 {
            let back = cell.lease.swap(0, Ordering::AcqRel);
            cell.lease_returned.fetch_add(back, Ordering::AcqRel);
        }
    }

    fn spend_lease(&self, cell: &Cell, now: i64) -> bool {
        if !self.lease_valid(cell, now) {
            self.drop_stale_lease(cell, now);
            return false;
        }
        let spent = cell
            .lease
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| l.checked_sub(1))
            .is_ok();
        if spent {
            cell.lease_used.fetch_add(1, Ordering::AcqRel);
        }
        spent
    }

    fn remaining(&self, cell: &Cell, limit: u64) -> u64 {
        limit
            .saturating_sub(cell.known[0].load(Ordering::Acquire))
            .saturating_add(cell.lease.load(Ordering::Acquire))
            .min(limit)
    }

    async fn take_hard(
        &self,
        group: &GroupId,
        month: Month,
        limit: u64,
        tier: Option<&str>,
    ) -> Take {
        let cell = self.cell(group, month);
        cell.limit.store(limit, Ordering::Relaxed);
        let now = self.clock.now_ms();
        cell.last_use_ms.store(now, Ordering::Relaxed);
        if self.spend_lease(&cell, now) {
            return Take::Admitted {
                remaining: self.remaining(&cell, limit),
                overage: false,
            };
        }
        // none held: wait for a grant. One request per cell asks Redis (each ask bounded by the
        // store timeout); the others queue behind it and spend what it got. The queue wait is
        // bounded too; past it, only a Redis that is down leads to the outage policy.
        let queue_limit = (self.settings.timeout * 20).max(Duration::from_secs(1));
        let wait = tokio::time::timeout(queue_limit, cell.fetching.lock()).await;
        let Ok(_guard) = wait else {
            if self.is_down(self.clock.now_ms()) {
                return self.outage_take(&cell, limit, tier, now);
            }
            return Take::Unavailable;
        };
        let now = self.clock.now_ms();
        if self.spend_lease(&cell, now) {
            return Take::Admitted {
                remaining: self.remaining(&cell, limit),
                overage: false,
            };
        }
        if now - cell.exhausted_at_ms.load(Ordering::Relaxed) < 250 {
            return Take::Refused;
        }
        if self.is_down(now) {
            return self.outage_take(&cell, limit, tier, now);
        }
        let want = self.settings.lease_max.max(1);
        let started = Instant::now();
        // numbered, and carrying what this instance received so far (both under `fetching`)
        let number = cell.grants_sent.fetch_add(1, Ordering::AcqRel) + 1;
        let result = self
            .script::<(i64, u64)>(
                &self.lease,
                Self::key(group, month),
                vec![
                    limit.to_string(),
                    want.to_string(),
                    self.instance.clone(),
                    now.to_string(),
                    self.settings.lease_ttl.as_millis().to_string(),
                    Self::expire_at(month).to_string(),
                    cell.received.load(Ordering::Acquire).to_string(),
                    number.to_string(),
                ],
            )
            .await;
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok((grant, _))) if grant < 0 => {
                // stale (cannot happen while `fetching` is held): nothing was granted
                Take::Unavailable
            }
            Ok(Ok((grant, taken))) => {
                let grant = grant as u64;
                self.mark_up();
                cell.received.fetch_add(grant, Ordering::AcqRel);
                cell.reconciled.fetch_max(number, Ordering::AcqRel);
                cell.known[0].store(taken, Ordering::Release);
                if grant == 0 {
                    cell.exhausted_at_ms.store(now, Ordering::Relaxed);
                    return Take::Refused;
                }
                self.metrics.lease_grants.inc();
                self.metrics.leased_calls.inc_by(grant);
                cell.lease_confirmed_ms.store(now, Ordering::Relaxed);
                cell.lease.fetch_add(grant - 1, Ordering::AcqRel);
                cell.lease_used.fetch_add(1, Ordering::AcqRel);
                Take::Admitted {
                    remaining: self.remaining(&cell, limit),
                    overage: false,
                }
            }
            Ok(Err(e)) => {
                tracing::debug!("redis lease: {e}");
                self.mark_down(now);
                self.outage_take(&cell, limit, tier, now)
            }
            Err(_) => {
                self.mark_down(now);
                self.outage_take(&cell, limit, tier, now)
            }
        }
    }

    /// Redis did not answer: the outage policy decides.
    fn outage_take(&self, cell: &Cell, limit: u64, tier: Option<&str>, now: i64) -> Take {
        if self.spend_lease(cell, now) {
            return Take::Admitted {
                remaining: self.remaining(cell, limit),
                overage: false,
            };
        }
        match self.policy_for(tier) {
            OutagePolicy::Deny => Take::Unavailable,
            OutagePolicy::Allow => {
                let allowance = ((limit as f64) * self.settings.outage_allowance).ceil() as u64;
                self.metrics
                    .outage_bound
                    .set(self.metrics.outage_bound.get().max(allowance as i64));
                // at most `allowance` per instance, and never more than `allowance` past the
                // quota as this instance last knew it
                let known = cell.known[0].load(Ordering::Acquire);
                let admitted = cell
                    .outage_admitted
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < allowance && known + n < limit.saturating_add(allowance))
                            .then_some(n + 1)
                    })
                    .is_ok();
                if !admitted {
                    return Take::Unavailable;
                }
                self.metrics.outage_admitted.inc();
                cell.direct.fetch_add(1, Ordering::AcqRel);
                Take::Admitted {
                    remaining: self.remaining(cell, limit),
                    overage: false,
                }
            }
        }
    }

    /// Sends every cell's unsettled counts to Redis (one script per cell); with `release`, also
    /// gives back every lease.
    async fn settle_all(&self, release: bool) -> usize {
        let _one = self.settling.lock().await;
        let now = self.clock.now_ms();
        let idle_ms = self.settings.lease_idle.as_millis() as i64;
        let cells: Vec<((GroupId, Month), Arc<Cell>)> = self
            .cells
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        let mut settled = 0;
        for ((group, month), cell) in cells {
            // the grants are reconciled while none is in flight: at a stop, after waiting for
            // one (so what it brings is returned below); otherwise only if none is (the next
            // settlement or grant does it)
            let no_grant_in_flight = if release {
                Some(cell.fetching.lock().await)
            } else {
                cell.fetching.try_lock().ok()
            };
            if release || now - cell.last_use_ms.load(Ordering::Relaxed) > idle_ms {
                let back = cell.lease.swap(0, Ordering::AcqRel);
                cell.lease_returned.fetch_add(back, Ordering::AcqRel);
            }
            self.drop_stale_lease(&cell, now);
            let reconcile = no_grant_in_flight.as_ref().map(|_| {
                (
                    cell.received.load(Ordering::Acquire),
                    cell.grants_sent.load(Ordering::Acquire),
                )
            });
            // a re-sent batch may leave newer counts behind: at a stop, send until none is left
            for _ in 0..if release { 3 } else { 1 } {
                match self.settle_cell(&group, month, &cell, now, reconcile).await {
                    Ok(true) => settled += 1,
                    Ok(false) => break,
                    Err(()) => {
                        self.mark_down(now);
                        return settled;
                    }
                }
            }
        }
        // a month that ended (an hour ago: late settlements are in) is copied to its archive
        let current = Month::containing(now);
        let archive_due: Vec<(GroupId, Month, Arc<Cell>)> = self
            .cells
            .iter()
            .filter(|e| {
                let m = e.key().1;
                m < current
                    && now >= m.next().start_ms() + ARCHIVE_AFTER_MS
                    && !e.value().archived.load(Ordering::Relaxed)
            })
            .map(|e| (e.key().0.clone(), e.key().1, e.value().clone()))
            .collect();
        for (group, month, cell) in archive_due {
            if self.archive(&group, month).await.is_ok() {
                cell.archived.store(true, Ordering::Relaxed);
            }
        }
        // months that ended, are archived and fully settled are dropped from memory
        self.cells.retain(|(_, m), c| {
            *m >= current.prev()
                || !c.archived.load(Ordering::Relaxed)
                || c.inflight.lock().map(|i| i.is_some()).unwrap_or(true)
                || c.direct.load(Ordering::Relaxed) != 0
                || c.bytes.load(Ordering::Relaxed) != 0
                || c.lease.load(Ordering::Relaxed) != 0
                || c.lease_used.load(Ordering::Relaxed) != 0
                || c.lease_returned.load(Ordering::Relaxed) != 0
                || c.grants_sent.load(Ordering::Relaxed) > c.reconciled.load(Ordering::Relaxed)
        });
        // up again only on an answer: a settlement that went through, or a probe
        if settled > 0 || self.ping().await {
            self.mark_up();
        }
        settled
    }

    /// Runs one script on the store's runtime, where the connection lives (a request's runtime
    /// may be gone by the time a reconnect needs it), bounded by the store timeout.
    async fn script<T: redis::FromRedisValue + Send + 'static>(
        &self,
        script: &redis::Script,
        key: String,
        args: Vec<String>,
    ) -> Result<redis::RedisResult<T>, ()> {
        let Some(mut conn) = self.conn.get().cloned() else {
            return Err(());
        };
        let script = script.clone();
        let mut task = self.handle.spawn(async move {
            let mut inv = script.prepare_invoke();
            inv.key(key);
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

    /// Whether every count and lease has been settled.
    fn nothing_pending(&self) -> bool {
        self.cells.iter().all(|c| {
            c.inflight.lock().map(|i| i.is_none()).unwrap_or(false)
                && c.direct.load(Ordering::Acquire) == 0
                && c.bytes.load(Ordering::Acquire) == 0
                && c.lease.load(Ordering::Acquire) == 0
                && c.lease_used.load(Ordering::Acquire) == 0
                && c.lease_returned.load(Ordering::Acquire) == 0
                && c.grants_sent.load(Ordering::Acquire) <= c.reconciled.load(Ordering::Acquire)
        })
    }

    /// Whether Redis answers a PING within the store timeout (asked only while it is down).
    async fn ping(&self) -> bool {
        if self.down_since.lock().map(|d| d.is_none()).unwrap_or(false) {
            return true;
        }
        let Some(mut conn) = self.conn.get().cloned() else {
            return false;
        };
        let task = self
            .handle
            .spawn(async move { redis::cmd("PING").query_async::<String>(&mut conn).await });
        matches!(
            tokio::time::timeout(self.settings.timeout, task).await,
            Ok(Ok(Ok(_)))
        )
    }

    /// `Ok(true)`: something was sent and confirmed; `Err`: Redis did not answer (the batch is
    /// kept and re-sent as is).
    /// `reconcile`: the calls received in grants and the grants sent, when no grant is in
    /// flight (the caller holds `fetching`).
    async fn settle_cell(
        &self,
        group: &str,
        month: Month,
        cell: &Cell,
        now: i64,
        reconcile: Option<(u64, u64)>,
    ) -> Result<bool, ()> {
        let batch = {
            let Ok(mut inflight) = cell.inflight.lock() else {
                return Err(());
            };
            match *inflight {
                Some(b) => b,
                None => {
                    let b = Batch {
                        seq: 0,
                        lease_used: cell.lease_used.swap(0, Ordering::AcqRel),
                        lease_returned: cell.lease_returned.swap(0, Ordering::AcqRel),
                        direct: cell.direct.swap(0, Ordering::AcqRel),
                        bytes: cell.bytes.swap(0, Ordering::AcqRel),
                    };
                    let holds_lease = cell.lease.load(Ordering::Acquire) > 0;
                    // a grant whose answer was lost may have left a lease in Redis
                    let unreconciled = reconcile
                        .is_some_and(|(_, sent)| sent > cell.reconciled.load(Ordering::Acquire));
                    if b.lease_used == 0
                        && b.lease_returned == 0
                        && b.direct == 0
                        && b.bytes == 0
                        && !holds_lease
                        && !unreconciled
                    {
                        return Ok(false);
                    }
                    let b = Batch {
                        seq: self.seq.fetch_add(1, Ordering::AcqRel) + 1,
                        ..b
                    };
                    *inflight = Some(b);
                    b
                }
            }
        };
        let started = Instant::now();
        let result = self
            .script::<(u64, u64, u64, u64, u64)>(
                &self.settle,
                Self::key(group, month),
                vec![
                    self.instance.clone(),
                    batch.seq.to_string(),
                    now.to_string(),
                    self.settings.lease_ttl.as_millis().to_string(),
                    Self::expire_at(month).to_string(),
                    batch.lease_used.to_string(),
                    batch.lease_returned.to_string(),
                    batch.direct.to_string(),
                    batch.bytes.to_string(),
                    cell.limit.load(Ordering::Relaxed).to_string(),
                    cell.bytes_limit.load(Ordering::Relaxed).to_string(),
                    if cell.overage.load(Ordering::Relaxed) {
                        "1"
                    } else {
                        "0"
                    }
                    .to_string(),
                    reconcile.map_or(String::new(), |(received, _)| received.to_string()),
                    reconcile.map_or(String::new(), |(_, sent)| sent.to_string()),
                ],
            )
            .await;
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok((calls, bytes, calls_over, bytes_over, _leased))) => {
                if let Ok(mut inflight) = cell.inflight.lock() {
                    // only the batch this answer is for
                    if inflight.is_some_and(|b| b.seq == batch.seq) {
                        *inflight = None;
                    }
                }
                cell.known[0].store(calls, Ordering::Release);
                cell.known[1].store(bytes, Ordering::Release);
                cell.known[2].store(calls_over, Ordering::Release);
                cell.known[3].store(bytes_over, Ordering::Release);
                cell.lease_confirmed_ms.store(now, Ordering::Relaxed);
                if let Some((_, sent)) = reconcile {
                    cell.reconciled.fetch_max(sent, Ordering::AcqRel);
                }
                let outage = cell.outage_admitted.swap(0, Ordering::AcqRel);
                if outage > 0 {
                    self.metrics.replayed_calls.inc_by(outage);
                }
                Ok(true)
            }
            Ok(Err(e)) => {
                tracing::debug!("redis settle: {e}");
                Err(())
            }
            Err(_) => Err(()),
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

    /// Copies a finished month's totals (served calls, leases excluded) to the month archive.
    async fn archive(&self, group: &str, month: Month) -> Result<(), String> {
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
    async fn read_archive(&self, group: &str, month: Month) -> Result<Usage, String> {
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
    async fn read(&self, group: &str, month: Month) -> Result<Usage, String> {
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

/// One Redis, or a Redis Cluster (`redis+cluster://host:port,host:port/`): the scripts touch one
/// key each, and the `{group}` hash tag keeps a key in one slot.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
    /// One connection of its own (the overrides: an admin change on a connection of its own
    /// knows that a refused connection applied nothing).
    Plain(redis::aio::MultiplexedConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Plain(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Plain(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Plain(c) => c.get_db(),
        }
    }
}

/// The node URLs of a `redis+cluster://a:1,b:2/` URL (`None`: a single Redis).
fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let rest = url.strip_prefix("redis+cluster://")?;
    let hosts = rest.split('/').next().unwrap_or("");
    Some(
        hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("redis://{h}"))
            .collect(),
    )
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
        } else if cell.outage_admitted.load(Ordering::Acquire) > 0 {
            cell.direct.fetch_sub(1, Ordering::AcqRel);
            cell.outage_admitted.fetch_sub(1, Ordering::AcqRel);
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
        let lease = cell.lease.load(Ordering::Acquire);
        let pending_direct = cell.direct.load(Ordering::Acquire);
        let pending_bytes = cell.bytes.load(Ordering::Acquire);
        Usage {
            // Redis counts this instance's unspent lease as taken
            calls: (cell.known[0].load(Ordering::Acquire) as i64 - lease as i64 + pending_direct)
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
        let m = &self.0.metrics;
        let _ = registry.register(Box::new(m.lease_grants.clone()));
        let _ = registry.register(Box::new(m.leased_calls.clone()));
        let _ = registry.register(Box::new(m.latency.clone()));
        let _ = registry.register(Box::new(m.unavailable_seconds.clone()));
        let _ = registry.register(Box::new(m.unavailable.clone()));
        let _ = registry.register(Box::new(m.replayed_calls.clone()));
        let _ = registry.register(Box::new(m.outage_admitted.clone()));
        let _ = registry.register(Box::new(m.outage_bound.clone()));
        let o = &self.0.overrides;
        let _ = registry.register(Box::new(o.from_copy.clone()));
        let _ = registry.register(Box::new(o.version_gauge.clone()));
        let _ = registry.register(Box::new(o.restored.clone()));
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
