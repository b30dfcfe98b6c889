//! Compiling the parsed files into a [`Snapshot`], one section at a time, in the order `vivgate
//! check` reports problems in; every refusal names the file and the field path.

use std::path::Path;

use super::file::{ConfigFile, TenantsFile};
use super::{err, ConfigError, Snapshot, StartupSettings};

mod cors;
mod limits;
mod routes;
mod server;
mod tenants;
mod tiers;
mod upstreams;
mod usage;

pub(crate) use limits::limits;

/// Compiles parsed files into a snapshot, validating every cross-reference.
pub fn compile(
    config_path: &Path,
    file: ConfigFile,
    tenants_path: &Path,
    tenants: TenantsFile,
) -> Result<Snapshot, ConfigError> {
    let cfg = config_path;
    let s = &file.server;
    let server::Server {
        tls_listeners,
        tls_certs,
    } = server::server(cfg, s)?;
    let limits = limits::limits(cfg, &file.limits)?;
    let usage = usage::usage(cfg, &file)?;
    let trusted_proxies = server::trusted_proxies(cfg, s)?;
    // [access_log]
    let access_log = file
        .access_log
        .as_ref()
        .map(|a| crate::access::AccessLogSettings {
            target: if a.path == "stdout" {
                crate::access::Target::Stdout
            } else {
                crate::access::Target::File(cfg.parent().unwrap_or(Path::new(".")).join(&a.path))
            },
            include_query: a.include_query,
        });

    let cors = match &file.cors {
        None => None,
        Some(c) => Some(cors::cors(cfg, c)?),
    };
    let admin = server::admin(cfg, &file.admin)?;
    let tiers = tiers::tiers(cfg, &file)?;
    let (upstreams, upstream_index) = upstreams::upstreams(cfg, &file)?;
    let routes = routes::compile_routes(cfg, &file, &upstream_index)?;
    let (groups, keys) = tenants::tenants(tenants_path, tenants, &tiers)?;
    Ok(Snapshot {
        startup: StartupSettings {
            listen: s.listen.clone(),
            threads: s.threads,
            grace_period_seconds: s.grace_period_seconds,
            usage,
            admin_listen: admin.listen,
            access_log,
            h2c: s.h2c,
            proxy_protocol: s.proxy_protocol,
            tls_listeners,
            pid_file: runtime_path(cfg, s.pid_file.as_deref(), &s.listen, ".pid"),
            upgrade_sock: runtime_path(cfg, s.upgrade_sock.as_deref(), &s.listen, "-upgrade.sock"),
        },
        config_path: config_path.to_path_buf(),
        tenants_path: tenants_path.to_path_buf(),
        tenants_source: crate::fleet::TenantsSource::File,
        tenants_url: None,
        limits,
        tiers,
        groups,
        keys,
        routes,
        upstreams,
        admin_token: admin.token,
        key_prefixes: key_prefixes(cfg, &file.keys)?,
        admin_hosts: admin.hosts,
        cors,
        trusted_proxies,
        tls_certs: std::sync::Arc::new(tls_certs),
    })
}
/// `server.pid_file` / `server.upgrade_sock`: as given (relative to the config file), or
/// `/tmp/vivgate-<listen><suffix>` (one per listener address, so several instances on a host
/// do not meet).
fn runtime_path(cfg: &Path, given: Option<&str>, listen: &str, suffix: &str) -> std::path::PathBuf {
    match given {
        Some(p) => cfg.parent().unwrap_or(Path::new(".")).join(p),
        None => {
            let tag: String = listen
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            std::path::PathBuf::from(format!("/tmp/vivgate-{tag}{suffix}"))
        }
    }
}

/// `[keys] checksum_prefixes`.
fn key_prefixes(cfg: &Path, k: &super::file::KeysSection) -> Result<Vec<Box<[u8]>>, ConfigError> {
    let mut out: Vec<Box<[u8]>> = Vec::new();
    for p in &k.checksum_prefixes {
        if !crate::keys::checksum::valid_prefix(p) {
            return Err(err(
                cfg,
                "keys.checksum_prefixes",
                format!("{p:?}: a prefix is 2 to 16 letters, digits, '_', '-' or '.'"),
            ));
        }
        if out
            .iter()
            .any(|o| o.starts_with(p.as_bytes()) || p.as_bytes().starts_with(o))
        {
            return Err(err(
                cfg,
                "keys.checksum_prefixes",
                format!("{p:?} overlaps another prefix"),
            ));
        }
        out.push(p.as_bytes().into());
    }
    Ok(out)
}

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
