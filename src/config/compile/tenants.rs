//! The tenants: groups (id, tier, status, overage billing) and the key-hash index.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use super::super::file::TenantsFile;
use super::super::{err, ConfigError, Group, Tier};
use super::valid_name;
use crate::keys::{key_prefix, parse_key_hash, KeyMap};

/// The groups and the index from a key hash to its group. The parsed groups are freed on the
/// way out (paced, on a reload).
pub(super) fn tenants(
    tenants_path: &Path,
    tenants: TenantsFile,
    tiers: &BTreeMap<String, Arc<Tier>>,
) -> Result<(Vec<Group>, KeyMap<u32>), ConfigError> {
    let tf = tenants_path;
    let mut groups = Vec::with_capacity(tenants.groups.len());
    // sized once: growing a million-entry table rehashes it all in one go
    let key_count = tenants.groups.iter().map(|g| g.keys.len()).sum();
    let mut keys: KeyMap<u32> = KeyMap::with_capacity_and_hasher(key_count, Default::default());
    let mut ids = HashSet::with_capacity(tenants.groups.len());
    for (gi, g) in tenants.groups.iter().enumerate() {
        crate::pace::tick();
        let field = |f: &str| format!("groups[{gi}].{f}");
        if !valid_name(&g.id) || g.id.len() > 64 {
            return Err(err(
                tf,
                field("id"),
                format!(
                    "{:?}: group ids are 1 to 64 characters of [A-Za-z0-9._-]",
                    g.id
                ),
            ));
        }
        if !ids.insert(g.id.as_str()) {
            return Err(err(
                tf,
                field("id"),
                format!("duplicate group id {:?}", g.id),
            ));
        }
        let tier = tiers.get(&g.tier).cloned().ok_or_else(|| {
            let known: Vec<&str> = tiers.keys().map(String::as_str).collect();
            err(
                tf,
                field("tier"),
                format!("unknown tier {:?} (known: {})", g.tier, known.join(", ")),
            )
        })?;
        for (ki, k) in g.keys.iter().enumerate() {
            let hash =
                parse_key_hash(k).map_err(|m| err(tf, format!("groups[{gi}].keys[{ki}]"), m))?;
            if let Some(&other) = keys.get(&key_prefix(&hash)) {
                return Err(err(
                    tf,
                    format!("groups[{gi}].keys[{ki}]"),
                    format!("the same key hash is already listed for groups[{other}]"),
                ));
            }
            keys.insert(key_prefix(&hash), gi as u32);
        }
        groups.push(Group {
            id: g.id.as_str().into(),
            tier,
            status: g.status,
            overage_billing: g.overage_billing,
        });
    }

    // a million parsed groups are millions of strings: freed a few at a time on a paced thread
    crate::pace::drop_vec(tenants.groups);
    Ok((groups, keys))
}
