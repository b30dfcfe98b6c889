//! The tenants, as every part of the gateway names them: a group's id and status, and the
//! tenants file format (TOML `[[groups]]`; the compact `.tsv` form is read into the same
//! types). Loaded and compiled by `crate::config`, kept in Redis by `crate::fleet`.

use std::sync::Arc;

use serde::Deserialize;

/// A group id as the counters know it; shared, cheap to clone.
pub type GroupId = Arc<str>;

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantsFile {
    #[serde(default)]
    pub groups: Vec<GroupSection>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupSection {
    pub id: String,
    pub tier: String,
    pub status: GroupStatus,
    #[serde(default)]
    pub overage_billing: bool,
    #[serde(default)]
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupStatus {
    Active,
    Frozen,
    Deactivated,
}

impl GroupStatus {
    /// The status as the tenants file and the admin API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupStatus::Active => "active",
            GroupStatus::Frozen => "frozen",
            GroupStatus::Deactivated => "deactivated",
        }
    }
}

impl std::fmt::Display for GroupStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
