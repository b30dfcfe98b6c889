//! Loading: reading the files (a large tenants file paced, on a reload), parsing them with field
//! paths in the errors, and the tenants from Redis (`tenants = "redis://…"`) or their copy.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::file::{ConfigFile, TenantsFile};
use super::{compact, compile, err, ConfigError, Snapshot};

pub(super) fn parse_toml<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let line = inner
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let message = match line {
            Some(l) => format!("{} (line {l})", inner.message().trim_end()),
            None => inner.message().trim_end().to_string(),
        };
        err(
            file,
            if field == "." { String::new() } else { field },
            message,
        )
    })
}

pub(super) fn read(file: &Path) -> Result<String, ConfigError> {
    let cannot = |e: std::io::Error| err(file, "", format!("cannot read: {e}"));
    if !crate::pace::enabled() {
        return std::fs::read_to_string(file).map_err(cannot);
    }
    // a paced reload reads a large tenants file 64 KiB at a time (each read faults in its
    // pages, in the kernel, where the reload cannot rest)
    use std::io::Read;
    let mut f = std::fs::File::open(file).map_err(cannot)?;
    let len = f.metadata().map(|m| m.len() as usize).unwrap_or(0);
    let mut bytes = Vec::with_capacity(len + 1);
    // checked as UTF-8 as it arrives (a whole-file check is one long burst): valid up to here
    let mut checked = 0;
    let not_utf8 = || err(file, "", "cannot read: stream did not contain valid UTF-8");
    loop {
        let n = (&mut f)
            .take(1 << 16)
            .read_to_end(&mut bytes)
            .map_err(cannot)?;
        match std::str::from_utf8(&bytes[checked..]) {
            Ok(_) => checked = bytes.len(),
            // a character cut at the end of this read: checked again with the next one
            Err(e) if e.error_len().is_none() && n > 0 => checked += e.valid_up_to(),
            Err(_) => return Err(not_utf8()),
        }
        if n == 0 {
            break;
        }
        crate::pace::tick_now();
    }
    debug_assert_eq!(checked, bytes.len());
    // SAFETY: the loop above checked every byte as UTF-8 and ends only with all of them checked
    // (at the end of the file, an incomplete character is an error)
    Ok(unsafe { String::from_utf8_unchecked(bytes) })
}

/// Reads and compiles a config file and the tenants file it names.
pub fn load(config_path: &Path) -> Result<Snapshot, ConfigError> {
    let text = read(config_path)?;
    let file: ConfigFile = parse_toml(config_path, &text)?;
    if crate::fleet::is_redis(&file.tenants) {
        return load_from_redis(config_path, file);
    }
    let dir = config_path.parent().unwrap_or(Path::new("."));
    let tenants_path = dir.join(&file.tenants);
    let tenants_text = read(&tenants_path).map_err(|mut e| {
        e.message = format!(
            "{} (named by `tenants` in {})",
            e.message,
            config_path.display()
        );
        e
    })?;
    compile_with_tenants(config_path, file, &tenants_path, &tenants_text)
}

/// `tenants = "redis://…"`: the tenant table from Redis (kept on disk as the last good copy), or
/// that copy when Redis cannot be read.
fn load_from_redis(config_path: &Path, file: ConfigFile) -> Result<Snapshot, ConfigError> {
    let url = file.tenants.clone();
    let label = PathBuf::from(&url);
    let copy = crate::fleet::snapshot_path(&super::state_dir(config_path, &file));
    match crate::fleet::read(&url) {
        Ok((tenants, version)) => {
            let text = crate::fleet::to_toml(&tenants);
            let mut snap = compile(config_path, file, &label, tenants)?;
            snap.tenants_source = crate::fleet::TenantsSource::Redis(version);
            snap.tenants_url = Some(url);
            // what compiled is the last good table
            if let Err(e) = crate::fleet::save_snapshot(&copy, &text, version) {
                tracing::warn!(path = %copy.display(), "cannot keep the tenants copy: {e}");
            }
            Ok(snap)
        }
        Err(e) => {
            let text = std::fs::read_to_string(&copy).map_err(|io| {
                err(
                    &label,
                    "",
                    format!("{e}; and no local copy at {} ({io})", copy.display()),
                )
            })?;
            let tenants: TenantsFile = parse_toml(&copy, &text)?;
            tracing::warn!(
                copy = %copy.display(),
                "tenants: Redis unreachable ({e}); serving the last good copy"
            );
            let mut snap = compile(config_path, file, &copy, tenants)?;
            snap.tenants_source = crate::fleet::TenantsSource::DiskSnapshot;
            snap.tenants_url = Some(url);
            Ok(snap)
        }
    }
}

/// Parses a tenants file (TOML, or the compact format by its name) without compiling it.
pub fn read_tenants_file(path: &Path) -> Result<TenantsFile, ConfigError> {
    let text = read(path)?;
    if compact::is_compact(path) {
        Ok(compact::parse(path, &text)?.0)
    } else {
        parse_toml(path, &text)
    }
}

/// Validates `tenants_path` against the config at `config_path` (as if the config named it):
/// what `vivgate tenants push` checks before writing. Returns the Redis URL the config names.
pub fn check_tenants_for_push(
    config_path: &Path,
    tenants_path: &Path,
) -> Result<(String, TenantsFile), ConfigError> {
    let text = read(config_path)?;
    let file: ConfigFile = parse_toml(config_path, &text)?;
    if !crate::fleet::is_redis(&file.tenants) {
        return Err(err(
            config_path,
            "tenants",
            "names a file, not a redis:// URL: there is nothing to push to",
        ));
    }
    let url = file.tenants.clone();
    let tenants_text = read(tenants_path)?;
    compile_with_tenants(config_path, file, tenants_path, &tenants_text)?;
    Ok((url, read_tenants_file(tenants_path)?))
}

/// The Redis URL a config names in `tenants`, for `vivgate tenants export`.
pub fn tenants_url(config_path: &Path) -> Result<String, ConfigError> {
    let text = read(config_path)?;
    let file: ConfigFile = parse_toml(config_path, &text)?;
    if !crate::fleet::is_redis(&file.tenants) {
        return Err(err(
            config_path,
            "tenants",
            "names a file, not a redis:// URL",
        ));
    }
    Ok(file.tenants)
}

/// Parses the tenants text in the format its file name says (`.toml`, or the compact line
/// format of [`compact`]) and compiles. Errors in a compact file name its line.
fn compile_with_tenants(
    config_path: &Path,
    file: ConfigFile,
    tenants_path: &Path,
    tenants_text: &str,
) -> Result<Snapshot, ConfigError> {
    if !compact::is_compact(tenants_path) {
        let tenants: TenantsFile = parse_toml(tenants_path, tenants_text)?;
        return compile(config_path, file, tenants_path, tenants);
    }
    let (tenants, lines) = compact::parse(tenants_path, tenants_text)?;
    compile(config_path, file, tenants_path, tenants).map_err(|mut e| {
        if e.file == tenants_path {
            e.field = compact::field_to_line(&e.field, &lines);
        }
        e
    })
}

/// Compiles config and tenants text that did not come from files (the demo, tests); the paths
/// only label errors.
pub fn load_from_str(
    config_path: &Path,
    config_text: &str,
    tenants_path: &Path,
    tenants_text: &str,
) -> Result<Snapshot, ConfigError> {
    let file: ConfigFile = parse_toml(config_path, config_text)?;
    compile_with_tenants(config_path, file, tenants_path, tenants_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_paths_follow_state_dir() {
        let load = |extra: &str| {
            let text = format!("tenants = \"t.toml\"\n{extra}\n[upstreams.api]\nservers = [\"127.0.0.1:1\"]\n[[routes]]\nprefix = \"/\"\nmethods = [\"GET\"]\nupstream = \"api\"\n");
            load_from_str(
                Path::new("/etc/vivgate/vivgate.toml"),
                &text,
                Path::new("/etc/vivgate/t.toml"),
                "",
            )
            .unwrap()
            .startup
            .usage
        };
        // default: `state` beside the config
        assert_eq!(
            load("").path.unwrap(),
            Path::new("/etc/vivgate/state/usage.redb")
        );
        let u = load("state_dir = \"/var/lib/vivgate\"");
        assert_eq!(u.path.unwrap(), Path::new("/var/lib/vivgate/usage.redb"));
        // `usage.path` still wins, relative to the config
        let u = load("state_dir = \"/var/lib/vivgate\"\n[usage]\npath = \"u.redb\"");
        assert_eq!(u.path.unwrap(), Path::new("/etc/vivgate/u.redb"));
        let u = load("state_dir = \"/var/lib/vivgate\"\n[usage]\nstore = \"redis\"");
        assert_eq!(
            u.redis.unwrap().overrides_copy,
            Path::new("/var/lib/vivgate/overrides-snapshot.json")
        );
        let e = load_from_str(
            Path::new("v.toml"),
            "tenants = \"t.toml\"\n[usage]\npath = \"\"\n",
            Path::new("t.toml"),
            "",
        )
        .unwrap_err();
        assert_eq!(e.field, "usage.path");
    }

    #[test]
    fn a_paced_read_checks_utf8_across_its_reads() {
        let dir = tempfile::tempdir().unwrap();
        // a two-byte character across the first 64 KiB boundary, then several more reads
        let mut text = "a".repeat((1 << 16) - 1);
        text.push('é');
        text.push_str(&"b".repeat(200_000));
        let good = dir.path().join("good.tsv");
        std::fs::write(&good, &text).unwrap();
        let invalid = dir.path().join("invalid.tsv");
        let mut bytes = text.clone().into_bytes();
        bytes.insert(150_000, 0xff);
        std::fs::write(&invalid, &bytes).unwrap();
        let cut = dir.path().join("cut.tsv");
        std::fs::write(&cut, [text.as_bytes(), &[0xc3]].concat()).unwrap();
        std::thread::spawn(move || {
            crate::pace::enable();
            assert_eq!(read(&good).unwrap(), text);
            for bad in [invalid, cut] {
                let e = read(&bad).unwrap_err();
                assert!(e.message.contains("valid UTF-8"), "{}", e.message);
            }
        })
        .join()
        .unwrap();
    }
}
