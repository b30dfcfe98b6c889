//! Runtime changes made through the admin API: group status overrides and revoked keys. They win
//! over the tenants file and are kept in the usage store, so neither a restart nor a reload of an
//! older file un-revokes a key or unfreezes a group. The request path reads them through one
//! `ArcSwap` load; when there are none it skips them.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::config::{Group, GroupStatus};
use crate::keys::{format_key_hash, key_prefix, KeyHash, KeyPrefix};

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

    pub fn revoke(&mut self, hash: &KeyHash, group: &str) {
        self.revoked
            .insert(format_key_hash(hash), group.to_string());
        self.prefixes.insert(key_prefix(hash));
    }
}
