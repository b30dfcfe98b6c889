//! The fleet's overrides table as Redis holds it (hash fields and values) and as the disk copy
//! keeps it (JSON with its version).

use std::path::Path;

use super::overrides::{REVOKED_KEY, STATUS_KEY};
use crate::overrides::Overrides;
use crate::tenants::GroupStatus;

/// The disk copy: the table and its version.
#[derive(serde::Serialize, serde::Deserialize)]
struct Copy {
    version: u64,
    #[serde(flatten)]
    overrides: Overrides,
}

pub(super) fn parse_status(s: &str) -> Option<GroupStatus> {
    match s {
        "active" => Some(GroupStatus::Active),
        "frozen" => Some(GroupStatus::Frozen),
        "deactivated" => Some(GroupStatus::Deactivated),
        _ => None,
    }
}

/// The table as Redis holds it. An entry that is not valid (a tool wrote a status vivgate does
/// not know, or a malformed key hash) is left out and logged: the valid ones stay in force.
pub(super) fn to_overrides(status: Vec<String>, revoked: Vec<String>) -> Overrides {
    let mut o = Overrides::default();
    for pair in status.chunks_exact(2) {
        match parse_status(&pair[1]) {
            Some(s) => {
                o.status.insert(pair[0].clone(), s);
            }
            None => tracing::error!(
                key = STATUS_KEY,
                group = %pair[0],
                "overrides: unknown status {:?} left out",
                pair[1]
            ),
        }
    }
    for pair in revoked.chunks_exact(2) {
        if crate::keys::parse_key_hash(&pair[0]).is_ok() {
            o.revoked.insert(pair[0].clone(), pair[1].clone());
        } else {
            tracing::error!(
                key = REVOKED_KEY,
                "overrides: a field that is not a sha256:<hex> key hash left out"
            );
        }
    }
    o.indexed()
}

/// Keeps `overrides` as the disk copy, unless the copy there is as new (instances may share the
/// directory, and writes may finish out of order).
pub(super) fn write_copy(path: &Path, version: u64, overrides: &Overrides) -> std::io::Result<()> {
    if read_copy(path).is_ok_and(|(on_disk, _)| on_disk >= version) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let json = serde_json::to_vec_pretty(&Copy {
        version,
        overrides: overrides.clone(),
    })
    .map_err(std::io::Error::other)?;
    // several instances may share the directory, and one may write twice at once: a temp file
    // of this write, renamed
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("json.{}.{n}.tmp", std::process::id()));
    std::fs::write(&tmp, json)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(tmp, path)
}

pub(super) fn read_copy(path: &Path) -> Result<(u64, Overrides), String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    let c: Copy = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    Ok((c.version, c.overrides.indexed()))
}
