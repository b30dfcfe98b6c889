//! `[tiers]`: the built-in tiers, overridden or extended.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::super::file::ConfigFile;
use super::super::{err, ConfigError, Tier, BUILTIN_TIERS};
use super::valid_name;

pub(super) fn tiers(
    cfg: &Path,
    file: &ConfigFile,
) -> Result<BTreeMap<String, Arc<Tier>>, ConfigError> {
    let mut tiers: BTreeMap<String, Arc<Tier>> = BUILTIN_TIERS
        .iter()
        .map(|&(n, c, b)| (n.to_string(), Arc::new(Tier::new(n, c, b))))
        .collect();
    for (name, t) in &file.tiers {
        let builtin = tiers.get(name).cloned();
        let field = |f: &str| format!("tiers.{name}.{f}");
        let api_calls = match (t.api_calls, &builtin) {
            (Some(v), _) => v,
            (None, Some(b)) => b.api_calls,
            (None, None) => {
                return Err(err(
                    cfg,
                    field("api_calls"),
                    "missing (a new tier sets both limits)",
                ))
            }
        };
        let cdn_bytes = match (t.cdn_bytes, &builtin) {
            (Some(v), _) => v,
            (None, Some(b)) => b.cdn_bytes,
            (None, None) => {
                return Err(err(
                    cfg,
                    field("cdn_bytes"),
                    "missing (a new tier sets both limits)",
                ))
            }
        };
        if !valid_name(name) {
            return Err(err(
                cfg,
                format!("tiers.{name}"),
                "tier names use [A-Za-z0-9._-]",
            ));
        }
        let mut tier = Tier::new(name, api_calls, cdn_bytes);
        tier.burst_per_second = match t.burst_per_second {
            Some(0) => return Err(err(cfg, field("burst_per_second"), "must be at least 1")),
            other => other,
        };
        tiers.insert(name.clone(), Arc::new(tier));
    }

    Ok(tiers)
}
