//! The compact tenants format, for large key sets: one group per line, fields separated by
//! spaces or tabs, `#` starts a comment line.
//!
//! ```text
//! # id                     tier  status  overage  keys (comma-separated, or -)
//! 651f0c2ab4e8a90012345678 pro   active  false    sha256:…,sha256:…
//! ```
//!
//! A tenants file whose name ends in `.tsv` is read in this format; any other name is TOML.
//! Both compile through the same validation. TOML parses at about 12 MB/s, so 1,000,000 keys
//! (160 MB of TOML) take 13 s to load; this format loads them in about a second.

use std::path::Path;

use super::file::{GroupSection, GroupStatus, TenantsFile};
use super::ConfigError;

pub fn is_compact(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "tsv")
}

/// Parses the text; also returns the line number (1-based) of each group.
pub fn parse(path: &Path, text: &str) -> Result<(TenantsFile, Vec<usize>), ConfigError> {
    // sized once: doubling a million-group vector copies it all in one go
    let count = text
        .as_bytes()
        .chunks(1 << 16)
        .map(|c| {
            crate::pace::tick_now();
            c.iter().filter(|&&b| b == b'\n').count()
        })
        .sum::<usize>()
        + 1;
    let mut groups = Vec::with_capacity(count);
    let mut lines = Vec::with_capacity(count);
    for (i, line) in text.lines().enumerate() {
        crate::pace::tick();
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |field: &str, message: String| ConfigError {
            file: path.to_path_buf(),
            field: format!("line {line_no}{field}"),
            message,
        };
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let [id, tier, status, overage, keys] = fields[..] else {
            return Err(err(
                "",
                format!(
                    "expected 5 fields (id tier status overage keys), found {}",
                    fields.len()
                ),
            ));
        };
        let status = match status {
            "active" => GroupStatus::Active,
            "frozen" => GroupStatus::Frozen,
            "deactivated" => GroupStatus::Deactivated,
            other => {
                return Err(err(
                    " (status)",
                    format!("unknown status {other:?}, expected active, frozen or deactivated"),
                ))
            }
        };
        let overage_billing = match overage {
            "true" => true,
            "false" => false,
            other => {
                return Err(err(
                    " (overage)",
                    format!("{other:?}: expected true or false"),
                ))
            }
        };
        let keys = match keys {
            "-" => Vec::new(),
            list => list.split(',').map(str::to_string).collect(),
        };
        groups.push(GroupSection {
            id: id.to_string(),
            tier: tier.to_string(),
            status,
            overage_billing,
            keys,
        });
        lines.push(line_no);
    }
    Ok((TenantsFile { groups }, lines))
}

/// Rewrites a compile error's field path `groups[i].rest` as `line N (rest)`.
pub fn field_to_line(field: &str, lines: &[usize]) -> String {
    let Some(rest) = field.strip_prefix("groups[") else {
        return field.to_string();
    };
    let Some((index, tail)) = rest.split_once(']') else {
        return field.to_string();
    };
    match index.parse::<usize>().ok().and_then(|i| lines.get(i)) {
        Some(line) => format!("line {line} ({})", tail.trim_start_matches('.')),
        None => field.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_groups_and_names_lines_in_errors() {
        let text =
            "# header\n\ng1 pro active false sha256:aa,sha256:bb\ng2\tfree\tfrozen\ttrue\t-\n";
        let (t, lines) = parse(Path::new("t.tsv"), text).unwrap();
        assert_eq!(lines, vec![3, 4]);
        assert_eq!(t.groups[0].keys, vec!["sha256:aa", "sha256:bb"]);
        assert_eq!(t.groups[1].status, GroupStatus::Frozen);
        assert!(t.groups[1].overage_billing && t.groups[1].keys.is_empty());

        let e = parse(Path::new("t.tsv"), "g1 pro paused false -\n").unwrap_err();
        assert_eq!(e.to_string(), "t.tsv: line 1 (status): unknown status \"paused\", expected active, frozen or deactivated");
        let e = parse(Path::new("t.tsv"), "\ng1 pro active\n").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("t.tsv: line 2: expected 5 fields"));
        assert_eq!(
            field_to_line("groups[1].keys[0]", &lines),
            "line 4 (keys[0])"
        );
    }
}
