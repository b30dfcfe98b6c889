//! The deployment artefacts under `deploy/`: the Prometheus alert rules (checked and
//! unit-tested with `promtool`), the Grafana dashboard (valid JSON that names only metric
//! families vivgate registers: compared with the registry's descriptors, since a scrape omits a
//! family with no sample yet), the Containerfile, and the Debian package's config.

use std::path::Path;
use std::process::Command;

use vivgate::metrics::Metrics;

fn deploy(path: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy")
            .join(path),
    )
    .unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// The `vivgate_…` metric names in `text`, as families (`_bucket`, `_sum` and `_count` are a
/// histogram's series).
fn families_named(text: &str) -> Vec<String> {
    let known = Metrics::family_names();
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("vivgate_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        i = end;
        if name == "vivgate_" {
            continue;
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|base| known.iter().any(|k| k == base))
            })
            .unwrap_or(name);
        out.push(family.to_string());
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn the_registry_names_the_families_the_rules_and_the_dashboard_need() {
    let known = Metrics::family_names();
    for name in [
        "vivgate_requests_total",
        "vivgate_upstream_response_seconds",
        "vivgate_connections_open",
        "vivgate_connections_max",
        "vivgate_failed_auth_blocked_addresses",
        "vivgate_groups_at_quota",
        "vivgate_redis_unavailable",
        "vivgate_overrides_version",
    ] {
        assert!(known.iter().any(|k| k == name), "{name} not in {known:?}");
    }
}

#[test]
fn the_dashboard_is_json_over_registered_families_only() {
    let text = deploy("grafana/vivgate.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(dash["uid"], "vivgate");
    let panels = dash["panels"].as_array().expect("panels");
    let mut exprs = Vec::new();
    for p in panels {
        assert!(p["title"].is_string() && p["gridPos"].is_object(), "{p}");
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().expect("an expr").to_string());
        }
    }
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let known = Metrics::family_names();
    let named = families_named(&exprs.join("\n"));
    let unknown: Vec<&String> = named.iter().filter(|n| !known.contains(n)).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard names unknown families: {unknown:?}"
    );
    // it covers traffic, rejections, backends, usage by tier and Redis
    for family in [
        "vivgate_requests_total",
        "vivgate_rejections_total",
        "vivgate_upstream_response_seconds",
        "vivgate_usage_calls",
        "vivgate_usage_bytes",
        "vivgate_redis_unavailable",
    ] {
        assert!(named.iter().any(|n| n == family), "no panel shows {family}");
    }
}

#[test]
fn the_alert_rules_name_registered_families_only_and_pass_promtool() {
    let rules = deploy("prometheus/vivgate.rules.yml");
    let known = Metrics::family_names();
    let named = families_named(&rules);
    let unknown: Vec<&String> = named.iter().filter(|n| !known.contains(n)).collect();
    assert!(
        unknown.is_empty(),
        "the rules name unknown families: {unknown:?}"
    );
    assert!(named.len() >= 10, "{named:?}");

    if Command::new("promtool").arg("--version").output().is_err() {
        if std::env::var("VIVGATE_REQUIRE_PROMTOOL").as_deref() == Ok("1") {
            panic!("VIVGATE_REQUIRE_PROMTOOL=1 but promtool is not installed (apt-get install prometheus)");
        }
        eprintln!("!!! SKIPPED: promtool is not installed (apt-get install prometheus)");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    for args in [
        &["check", "rules", "vivgate.rules.yml"][..],
        &["test", "rules", "vivgate.rules.test.yml"][..],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
        assert!(text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
}

/// The Containerfile's instructions, continuation lines joined.
fn containerfile() -> Vec<String> {
    let text = deploy("container/Containerfile");
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[test]
fn the_containerfile_pins_its_bases_runs_as_a_user_checks_health_and_copies_no_secret() {
    let lines = containerfile();
    let froms: Vec<&String> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "a multi-stage build: {froms:?}");
    for from in &froms {
        let image = from.split_whitespace().nth(1).unwrap();
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty()
                && tag != "latest"
                && tag.chars().next().unwrap().is_ascii_digit()
                && tag.contains('.'),
            "{from}: a base image pinned to a release"
        );
    }
    // the runtime stage: everything after the last FROM
    let last = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let runtime = &lines[last..];
    let user = runtime
        .iter()
        .find(|l| l.starts_with("USER "))
        .expect("a USER");
    let name = user
        .split_whitespace()
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap();
    assert!(name != "root" && name != "0", "{user}");
    let user_at = runtime.iter().position(|l| l.starts_with("USER ")).unwrap();
    let entry_at = runtime
        .iter()
        .position(|l| l.starts_with("ENTRYPOINT"))
        .unwrap();
    assert!(user_at < entry_at, "the user is set before the entry point");
    let health = runtime
        .iter()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .expect("a HEALTHCHECK");
    assert!(health.contains("\"healthz\""), "{health}");
    assert!(runtime.iter().any(|l| l.starts_with("VOLUME")
        && l.contains("/etc/vivgate")
        && l.contains("/var/lib/vivgate")));
    // what it copies into the image holds no key, token or private key
    for l in runtime
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        for src in l
            .split_whitespace()
            .skip(1)
            .filter(|w| w.starts_with("deploy/"))
        {
            let text = deploy(src.trim_start_matches("deploy/"));
            let hash = text
                .split("sha256:")
                .skip(1)
                .any(|rest| rest.len() >= 64 && rest[..64].bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(!hash, "{src} holds a key or token hash");
            assert!(!text.contains("PRIVATE KEY"), "{src}");
        }
    }
    // the build context leaves out build output, git and key material
    let ignore =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".containerignore"))
            .unwrap();
    for needed in ["target", ".git", "**/*.pem", "**/*.key"] {
        assert!(
            ignore.lines().any(|l| l.trim() == needed),
            ".containerignore lacks {needed}"
        );
    }
}

/// `vivgate check` accepts `deploy/<config>`, whose tenants hold no key (an artefact that is
/// published must not open every installation).
fn checks_without_keys(config: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_vivgate"))
        .args(["check", "--config"])
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy")
                .join(config),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(", 0 keys,"), "{text}");
}

#[test]
fn the_containers_config_checks() {
    checks_without_keys("container/vivgate.toml");
}

/// The Debian package's config and tenants (deploy/debian; installed and run for real by
/// tests/package.rs under `.ci/package`): they check, hold no key, listen on loopback only, and
/// keep state and runtime files where the unit gives the service write access.
#[test]
fn the_packages_config_checks_and_matches_the_unit() {
    checks_without_keys("debian/vivgate.toml");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config: toml::Value = deploy("debian/vivgate.toml").parse().unwrap();
    let server = &config["server"];
    for listen in [&server["listen"], &config["admin"]["listen"]] {
        assert!(
            listen.as_str().unwrap().starts_with("127.0.0.1:"),
            "as shipped, loopback only: {listen}"
        );
    }
    let unit = deploy("systemd/vivgate.service");
    let writable: Vec<&str> = unit
        .lines()
        .find_map(|l| l.strip_prefix("ReadWritePaths="))
        .unwrap()
        .split_whitespace()
        .collect();
    for path in [
        config["state_dir"].as_str().unwrap(),
        server["pid_file"].as_str().unwrap(),
        server["upgrade_sock"].as_str().unwrap(),
    ] {
        assert!(
            writable.iter().any(|w| path.starts_with(w)),
            "{path} is not writable under the unit ({writable:?})"
        );
    }
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for asset in [
        "\"deploy/debian/vivgate.toml\", \"etc/vivgate/vivgate.toml\"",
        "\"deploy/debian/tenants.toml\", \"etc/vivgate/tenants.toml\"",
        "\"deploy/systemd/upgrade\", \"usr/lib/vivgate/upgrade\"",
    ] {
        assert!(cargo.contains(asset), "Cargo.toml's package lacks {asset}");
    }
}
