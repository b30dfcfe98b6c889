//! Usage counters behind a store trait.
//!
//! Counters are kept per group and per UTC month, outside the config snapshot, so a reload or a
//! key rotation never resets them. [`MemoryStore`] is the in-memory store: a `DashMap` of atomic
//! counters, exact under any concurrency. Durable and shared stores plug in behind the same
//! [`UsageStore`] trait.

use std::future::Future;

use std::sync::Arc;

use crate::clock::Month;

pub mod days;
pub mod embedded;
mod memory;
pub mod redis;

pub(crate) use memory::Delta;
pub use memory::MemoryStore;

/// What a route meters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Meter {
    /// One API call per forwarded request.
    Calls,
    /// Response body bytes sent to the client.
    Bytes,
}

pub use crate::tenants::GroupId;

/// One group's usage in one month.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub calls: u64,
    pub bytes: u64,
    pub calls_overage: u64,
    pub bytes_overage: u64,
}

/// The outcome of taking one API call from a group's monthly quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Counted. `remaining` is what is left of the quota after this call (0 at or past it);
    /// `overage` is true when the call was admitted at or past the limit (overage groups only).
    Admitted { remaining: u64, overage: bool },
    /// The quota is used up; nothing was counted.
    Refused,
    /// A shared store could not answer and its outage policy refuses; nothing was counted.
    Unavailable,
}

/// Where usage lives.
///
/// Contract for every implementation:
/// - `take_call` is exact: with a limit of N and any number of concurrent callers, exactly N
///   calls are admitted for a group without overage billing; a refused call counts nothing.
///   Groups with overage billing are always admitted; calls admitted at or past the limit are
///   also counted in `calls_overage`.
/// - `take_call` may wait (a shared store waiting for a quota lease), but never longer than the
///   store's own timeout. An in-process store resolves at once and never waits on I/O.
/// - The other methods never wait.
pub trait UsageStore: Send + Sync + 'static {
    fn take_call(
        &self,
        group: &GroupId,
        month: Month,
        limit: u64,
        overage_billing: bool,
        tier: &str,
    ) -> impl Future<Output = Take> + Send;

    /// Gives back a call taken by `take_call` whose request never reached a backend.
    fn refund_call(&self, group: &GroupId, month: Month, take: Take);

    /// Bandwidth used so far in `month`.
    fn bytes_used(&self, group: &GroupId, month: Month) -> u64;

    /// Adds response bytes served in `month`. For overage groups, what lies beyond `limit` is
    /// also counted in `bytes_overage`.
    fn add_bytes(&self, group: &GroupId, month: Month, n: u64, limit: u64, overage_billing: bool);

    /// A copy of one group's counters for one month (zeros if nothing was counted).
    fn usage(&self, group: &str, month: Month) -> Usage;

    /// Like `usage`, for operators and billing: a month that can only be read from durable
    /// storage is read there, and a read error is an error, never zeros.
    fn usage_checked(&self, group: &str, month: Month) -> Result<Usage, String> {
        Ok(self.usage(group, month))
    }

    /// `usage_checked` for many groups of one month at once (the operators' listing): a store
    /// reads its durable storage in one pass or in pipelined batches, not once per group.
    fn usage_many(&self, groups: &[&str], month: Month) -> Result<Vec<Usage>, String> {
        groups
            .iter()
            .map(|g| self.usage_checked(g, month))
            .collect()
    }

    /// Calls and bytes per day of `month` for `group` ([`days::GATEWAY`]: the whole gateway),
    /// as credited at flushes; zeros for a month whose days are no longer kept.
    fn days(&self, _group: &str, month: Month) -> Result<days::Days, String> {
        Ok(vec![[0, 0]; days::days_in(month)])
    }

    /// The clock the store credits days by (the gateway's).
    fn set_clock(&self, _clock: Arc<dyn crate::clock::Clock>) {}

    /// Makes everything counted so far durable; a no-op for a store that is not. Called by a
    /// background task at the flush interval and once more when the gateway stops. Never
    /// called on the request path.
    fn flush(&self) -> Result<usize, String> {
        Ok(0)
    }

    /// The admin overrides kept with the usage; none for a store that is not durable.
    fn load_overrides(&self) -> Result<crate::overrides::Overrides, String> {
        Ok(Default::default())
    }

    /// Keeps the admin overrides durably before they take effect.
    fn save_overrides(&self, _overrides: &crate::overrides::Overrides) -> Result<(), String> {
        Ok(())
    }

    /// A store that keeps the overrides for the whole fleet (Redis) makes an admin change
    /// itself: in the shared store first, then in the table given to `follow_overrides`.
    /// `None`: the gateway keeps them, through `save_overrides`.
    fn change_shared_overrides(
        &self,
        _change: &crate::overrides::OverrideChange,
    ) -> Option<Result<crate::overrides::Changed, crate::overrides::ChangeError>> {
        None
    }

    /// Keeps `table` up to date with the fleet's overrides (a store that shares them; started
    /// once, after `load_overrides`).
    fn follow_overrides(&self, _table: Arc<arc_swap::ArcSwap<crate::overrides::Overrides>>) {}

    /// For a store that shares the overrides: the version in force, and whether it comes from
    /// the disk copy because Redis could not be read.
    fn overrides_state(&self) -> Option<(u64, bool)> {
        None
    }

    /// A zero-downtime upgrade begins: make everything durable and let a new process take the
    /// storage over. What this process counts afterwards (its in-flight requests) must reach
    /// the new one. A no-op for a store that is not durable.
    fn release_for_handover(&self) -> Result<(), String> {
        Ok(())
    }

    /// The gateway stops: the last flush (a shared store also gives back what it holds).
    fn shutdown(&self) -> Result<(), String> {
        self.flush().map(|_| ())
    }

    /// Adds the store's own metrics to the gateway's registry.
    fn register_metrics(&self, _registry: &prometheus::Registry) {}
}

/// The store a gateway runs with, chosen by `[usage] store`: one type, so nothing above the
/// store is generic over it.
pub enum Store {
    Memory(MemoryStore),
    Embedded(embedded::EmbeddedStore),
    Redis(redis::SharedRedisStore),
}

impl From<MemoryStore> for Store {
    fn from(s: MemoryStore) -> Self {
        Store::Memory(s)
    }
}

impl From<embedded::EmbeddedStore> for Store {
    fn from(s: embedded::EmbeddedStore) -> Self {
        Store::Embedded(s)
    }
}

impl From<redis::SharedRedisStore> for Store {
    fn from(s: redis::SharedRedisStore) -> Self {
        Store::Redis(s)
    }
}

/// `$body` for whichever store `$store` is, as `$s`.
macro_rules! each {
    ($store:expr, $s:ident => $body:expr) => {
        match $store {
            Store::Memory($s) => $body,
            Store::Embedded($s) => $body,
            Store::Redis($s) => $body,
        }
    };
}

impl UsageStore for Store {
    async fn take_call(
        &self,
        group: &GroupId,
        month: Month,
        limit: u64,
        overage_billing: bool,
        tier: &str,
    ) -> Take {
        each!(self, s => s.take_call(group, month, limit, overage_billing, tier).await)
    }

    fn refund_call(&self, group: &GroupId, month: Month, take: Take) {
        each!(self, s => s.refund_call(group, month, take))
    }

    fn bytes_used(&self, group: &GroupId, month: Month) -> u64 {
        each!(self, s => s.bytes_used(group, month))
    }

    fn add_bytes(&self, group: &GroupId, month: Month, n: u64, limit: u64, overage_billing: bool) {
        each!(self, s => s.add_bytes(group, month, n, limit, overage_billing))
    }

    fn usage(&self, group: &str, month: Month) -> Usage {
        each!(self, s => s.usage(group, month))
    }

    fn usage_checked(&self, group: &str, month: Month) -> Result<Usage, String> {
        each!(self, s => s.usage_checked(group, month))
    }

    fn usage_many(&self, groups: &[&str], month: Month) -> Result<Vec<Usage>, String> {
        each!(self, s => s.usage_many(groups, month))
    }

    fn days(&self, group: &str, month: Month) -> Result<days::Days, String> {
        each!(self, s => s.days(group, month))
    }

    fn set_clock(&self, clock: Arc<dyn crate::clock::Clock>) {
        each!(self, s => s.set_clock(clock))
    }

    fn flush(&self) -> Result<usize, String> {
        each!(self, s => s.flush())
    }

    fn load_overrides(&self) -> Result<crate::overrides::Overrides, String> {
        each!(self, s => s.load_overrides())
    }

    fn save_overrides(&self, overrides: &crate::overrides::Overrides) -> Result<(), String> {
        each!(self, s => s.save_overrides(overrides))
    }

    fn change_shared_overrides(
        &self,
        change: &crate::overrides::OverrideChange,
    ) -> Option<Result<crate::overrides::Changed, crate::overrides::ChangeError>> {
        each!(self, s => s.change_shared_overrides(change))
    }

    fn follow_overrides(&self, table: Arc<arc_swap::ArcSwap<crate::overrides::Overrides>>) {
        each!(self, s => s.follow_overrides(table))
    }

    fn overrides_state(&self) -> Option<(u64, bool)> {
        each!(self, s => s.overrides_state())
    }

    fn release_for_handover(&self) -> Result<(), String> {
        each!(self, s => s.release_for_handover())
    }

    fn shutdown(&self) -> Result<(), String> {
        each!(self, s => s.shutdown())
    }

    fn register_metrics(&self, registry: &prometheus::Registry) {
        each!(self, s => s.register_metrics(registry))
    }
}
