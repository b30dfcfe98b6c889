//! `[usage]`: where usage is kept (embedded, memory, or Redis with its lease and outage
//! settings).

use std::path::Path;
use std::time::Duration;

use super::super::file::ConfigFile;
use super::super::{err, ConfigError, UsageSettings};

pub(super) fn usage(cfg: &Path, file: &ConfigFile) -> Result<UsageSettings, ConfigError> {
    let u = &file.usage;
    let path = match u.store.as_str() {
        "memory" | "redis" => None,
        "embedded" => match &u.path {
            Some(p) if p.is_empty() => return Err(err(cfg, "usage.path", "must not be empty")),
            Some(p) => Some(cfg.parent().unwrap_or(Path::new(".")).join(p)),
            None => Some(super::super::state_dir(cfg, file).join("usage.redb")),
        },
        other => {
            return Err(err(
                cfg,
                "usage.store",
                format!("unknown store {other:?} (expected \"embedded\", \"redis\" or \"memory\")"),
            ))
        }
    };
    if !(10..=60_000).contains(&u.flush_interval_ms) {
        return Err(err(
            cfg,
            "usage.flush_interval_ms",
            "must be between 10 and 60000",
        ));
    }
    if !(1..=super::super::MAX_RETENTION_MONTHS).contains(&u.retention_months) {
        return Err(err(
            cfg,
            "usage.retention_months",
            format!(
                "must be between 1 and {}",
                super::super::MAX_RETENTION_MONTHS
            ),
        ));
    }
    let policy = |field: &str, v: &str| match v {
        "allow" => Ok(super::super::OutagePolicy::Allow),
        "deny" => Ok(super::super::OutagePolicy::Deny),
        other => Err(err(
            cfg,
            field,
            format!("{other:?}: expected \"allow\" or \"deny\""),
        )),
    };
    let redis = if u.store == "redis" {
        if !(u.redis_url.starts_with("redis://")
            || u.redis_url.starts_with("redis+unix://")
            || u.redis_url.starts_with("redis+cluster://"))
        {
            return Err(err(
                cfg,
                "usage.redis_url",
                "must be a redis://, redis+unix:// or redis+cluster://host:port,host:port URL",
            ));
        }
        if !(1..=10_000).contains(&u.store_timeout_ms) {
            return Err(err(
                cfg,
                "usage.store_timeout_ms",
                "must be between 1 and 10000",
            ));
        }
        if !(0.0..=1.0).contains(&u.outage_allowance) {
            return Err(err(
                cfg,
                "usage.outage_allowance",
                "must be between 0 and 1",
            ));
        }
        if u.lease_max == 0 {
            return Err(err(cfg, "usage.lease_max", "must be at least 1"));
        }
        if u.lease_ttl_ms < 2 * u.flush_interval_ms.max(u.lease_idle_ms) {
            return Err(err(
                cfg,
                "usage.lease_ttl_ms",
                "must be at least twice flush_interval_ms and lease_idle_ms (leases are renewed at each flush)",
            ));
        }
        let mut tier_policy = Vec::new();
        for (name, t) in &file.tiers {
            if let Some(p) = &t.on_store_unavailable {
                tier_policy.push((
                    name.clone(),
                    policy(&format!("tiers.{name}.on_store_unavailable"), p)?,
                ));
            }
        }
        Some(super::super::RedisSettings {
            url: u.redis_url.clone(),
            timeout: Duration::from_millis(u.store_timeout_ms),
            flush_interval: Duration::from_millis(u.flush_interval_ms.min(1_000)),
            policy: policy("usage.on_store_unavailable", &u.on_store_unavailable)?,
            tier_policy,
            outage_allowance: u.outage_allowance,
            lease_max: u.lease_max,
            lease_idle: Duration::from_millis(u.lease_idle_ms),
            lease_ttl: Duration::from_millis(u.lease_ttl_ms),
            retention_months: u.retention_months,
            overrides_copy: super::super::state_dir(cfg, file).join("overrides-snapshot.json"),
        })
    } else {
        None
    };
    let usage = UsageSettings {
        path,
        redis,
        flush_interval: Duration::from_millis(u.flush_interval_ms),
        retention_months: u.retention_months,
    };

    Ok(usage)
}
