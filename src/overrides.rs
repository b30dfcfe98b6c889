//! Runtime changes made through the admin API: group status overrides and revoked keys. They win
//! over the tenants file and are kept where the usage store keeps state (the redb file, or Redis
//! for the whole fleet), so neither a restart nor a reload of an older file un-revokes a key or
//! unfreezes a group. The request path reads them through one `ArcSwap` load; when there are
//! none it skips them.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::config::{Group, GroupStatus};
use crate::keys::{key_prefix, KeyHash, KeyPrefix};

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overrides {
    /// Group id → the status that wins over the tenants file.
    #[serde(default)]
    pub status: BTreeMap<String, GroupStatus>,
    /// Revoked key hash (`sha256:<hex>`) → the group it belonged to.
    #[serde(default)]
    pub revoked: BTreeMap<String, String>,
    #[serde(skip)]
    prefixes: HashSet<KeyPrefix>,
}

/// One admin change to the overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideChange {
    /// A status for a group that wins over the tenants.
    Status { group: String, status: GroupStatus },
    /// A revoked key (`sha256:<64 hex>`) and the group it belonged to.
    Revoke { key: String, group: String },
    /// Removes a group's status override (by group id) or a revocation (by `sha256:<hex>`).
    Remove(String),
}

/// Why an admin change is not in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeError {
    /// Nothing changed, in the store or here. `shared`: the store is the fleet's (Redis).
    NotSaved { shared: bool, reason: String },
    /// The change was sent to the shared store, which did not answer in time: it may or may not
    /// be saved (repeating it is harmless).
    Unknown { reason: String },
}

/// An admin change that is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    /// False when a removal found nothing to remove.
    pub found: bool,
    /// The fleet's overrides version after the change (shared stores).
    pub version: Option<u64>,
}

impl Overrides {
    /// Builds the lookup set; call after changing `revoked` or deserializing.
    pub fn indexed(mut self) -> Self {
        self.prefixes = self
            .revoked
            .keys()
            .filter_map(|k| crate::keys::parse_key_hash(k).ok())
            .map(|h| key_prefix(&h))
            .collect();
        self
    }

    pub fn is_empty(&self) -> bool {
        self.status.is_empty() && self.revoked.is_empty()
    }

    pub fn is_revoked(&self, hash: &KeyHash) -> bool {
        self.prefixes.contains(&key_prefix(hash))
    }

    /// The group's effective status.
    pub fn status_of(&self, g: &Group) -> GroupStatus {
        self.status.get(&*g.id).copied().unwrap_or(g.status)
    }

    /// Applies `change` (call [`Overrides::indexed`] afterwards); false when a removal found
    /// nothing to remove.
    pub fn apply(&mut self, change: &OverrideChange) -> bool {
        match change {
            OverrideChange::Status { group, status } => {
                self.status.insert(group.clone(), *status);
                true
            }
            OverrideChange::Revoke { key, group } => {
                self.revoked.insert(key.clone(), group.clone());
                true
            }
            OverrideChange::Remove(id) => {
                self.status.remove(id).is_some() | self.revoked.remove(id).is_some()
            }
        }
    }
}
