//! `vivgate keys new --tenants FILE` / `--config FILE`: a new key's hash goes to its group in
//! the tenants file (TOML, edited in place so comments and layout stay; or the compact `.tsv`
//! format), written atomically, or to the fleet's tenants in Redis (one transaction, announced).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where a config keeps its tenants, and its checksum prefixes.
pub struct ConfigTenants {
    pub target: Target,
    pub checksum_prefixes: Vec<String>,
}

pub enum Target {
    File(PathBuf),
    Redis(String),
}

/// Reads only what `keys` needs from a config file (`tenants` and `[keys]`); the full check is
/// `vivgate check`.
pub fn config_tenants(config: &Path) -> Result<ConfigTenants, String> {
    #[derive(Deserialize)]
    struct Lenient {
        tenants: String,
        keys: Option<Keys>,
    }
    #[derive(Deserialize)]
    struct Keys {
        checksum_prefixes: Option<Vec<String>>,
    }
    let text = std::fs::read_to_string(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let c: Lenient = toml::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
    let target = if c.tenants.starts_with("redis://")
        || c.tenants.starts_with("rediss://")
        || c.tenants.starts_with("redis+cluster://")
    {
        Target::Redis(c.tenants)
    } else {
        Target::File(config.parent().unwrap_or(Path::new(".")).join(&c.tenants))
    };
    let checksum_prefixes = c
        .keys
        .and_then(|k| k.checksum_prefixes)
        .unwrap_or_else(|| vec![super::checksum::DEFAULT_PREFIX.to_string()]);
    Ok(ConfigTenants {
        target,
        checksum_prefixes,
    })
}

/// Adds `hash` (`sha256:<hex>`) to `group`'s keys in the tenants file at `path`.
pub fn add_to_file(path: &Path, group: &str, hash: &str) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| fail(&e))?;
    let new = if crate::config::compact::is_compact(path) {
        add_to_tsv(&text, group, hash)
    } else {
        add_to_toml(&text, group, hash)
    }
    .map_err(|e| fail(&e))?;
    write_atomically(path, new.as_bytes()).map_err(|e| fail(&e))
}

fn add_to_toml(text: &str, group: &str, hash: &str) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    let groups = doc
        .get_mut("groups")
        .and_then(|g| g.as_array_of_tables_mut())
        .ok_or("no [[groups]] in the file")?;
    let g = groups
        .iter_mut()
        .find(|t| t.get("id").and_then(|v| v.as_str()) == Some(group))
        .ok_or_else(|| format!("no group {group:?} in the file"))?;
    let keys = g
        .entry("keys")
        .or_insert(toml_edit::value(toml_edit::Array::new()))
        .as_array_mut()
        .ok_or("the group's keys are not an array")?;
    if keys.iter().any(|k| k.as_str() == Some(hash)) {
        return Err(format!("group {group:?} already has this key"));
    }
    keys.push(hash);
    Ok(doc.to_string())
}

fn add_to_tsv(text: &str, group: &str, hash: &str) -> Result<String, String> {
    let mut found = false;
    let mut out = String::with_capacity(text.len() + hash.len() + 1);
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let fields: Vec<&str> = body.split_whitespace().collect();
        if !found && !body.trim_start().starts_with('#') && fields.first() == Some(&group) {
            if fields.len() != 5 {
                return Err(format!(
                    "group {group:?}: expected 5 fields, found {}",
                    fields.len()
                ));
            }
            if fields[4].split(',').any(|k| k == hash) {
                return Err(format!("group {group:?} already has this key"));
            }
            let keys = if fields[4] == "-" {
                hash.to_string()
            } else {
                format!("{},{hash}", fields[4])
            };
            // the last field is replaced where it stands: separators and comments stay
            let at = body.rfind(fields[4]).unwrap_or(body.len());
            out.push_str(&body[..at]);
            out.push_str(&keys);
            out.push_str(&line[body.len()..]);
            found = true;
        } else {
            out.push_str(line);
        }
    }
    if !found {
        return Err(format!("no group {group:?} in the file"));
    }
    Ok(out)
}

/// Replaces `path` with `bytes` in one step: a new file beside it (same permissions, and the
/// same owner and group where this user may set them: root editing `/etc/vivgate/tenants.toml`
/// keeps it readable by the service's group), synced, renamed over it, and the directory synced.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::MetadataExt;
            f.set_permissions(meta.permissions())?;
            if std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid())).is_err() {
                // not root: at least the group, if this user is in it
                let _ = std::os::unix::fs::fchown(&f, None, Some(meta.gid()));
            }
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn toml_keeps_comments_and_layout() {
        let text = "# our customers\n[[groups]]\nid = \"a\" # the first\ntier = \"pro\"\nkeys = []\n\n[[groups]]\nid = \"b\"\ntier = \"free\"\nkeys = [\"sha256:22\"] # rotated 2026-11\n";
        let out = add_to_toml(text, "b", H).unwrap();
        assert!(
            out.starts_with("# our customers\n[[groups]]\nid = \"a\" # the first\n"),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "keys = [\"sha256:22\", \"{H}\"] # rotated 2026-11"
            )),
            "{out}"
        );
        let out = add_to_toml(text, "a", H).unwrap();
        assert!(out.contains(&format!("keys = [\"{H}\"]")), "{out}");
        assert!(add_to_toml(&out, "a", H)
            .unwrap_err()
            .contains("already has"));
        assert!(add_to_toml(text, "zz", H).unwrap_err().contains("no group"));
    }

    #[test]
    fn tsv_replaces_the_keys_field_only() {
        let text = "# id tier status overage keys\na\tpro\tactive\tfalse\t-\nb free active false sha256:22\n";
        let out = add_to_tsv(text, "a", H).unwrap();
        assert_eq!(out, format!("# id tier status overage keys\na\tpro\tactive\tfalse\t{H}\nb free active false sha256:22\n"));
        let out = add_to_tsv(text, "b", H).unwrap();
        assert!(
            out.ends_with(&format!("b free active false sha256:22,{H}\n")),
            "{out}"
        );
        assert!(add_to_tsv(text, "# id", H).is_err());
        assert!(add_to_tsv(text, "c", H).unwrap_err().contains("no group"));
    }

    #[test]
    fn the_write_is_atomic_and_keeps_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        std::fs::write(&path, "[[groups]]\nid = \"a\"\ntier = \"pro\"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        add_to_file(&path, "a", H).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("keys = [\"{H}\"]")), "{text}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn root_keeps_the_owner_and_group() {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("!!! SKIPPED: root_keeps_the_owner_and_group needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        std::fs::write(&path, "[[groups]]\nid = \"a\"\ntier = \"pro\"\n").unwrap();
        // as the package leaves it: root's, readable by the service's group (here: 1, daemon)
        std::os::unix::fs::chown(&path, Some(0), Some(1)).unwrap();
        add_to_file(&path, "a", H).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 1));
    }
}
