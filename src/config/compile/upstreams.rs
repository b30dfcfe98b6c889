//! `[upstreams]`: servers resolved at load, timeouts, TLS, and the load balancer and server
//! health of each.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pingora::lb::{health_check::TcpHealthCheck, selection::RoundRobin, LoadBalancer};

use super::super::file::ConfigFile;
use super::super::{err, ConfigError, Upstream, UpstreamTls};
use super::server::load_ca;

/// The upstreams, and their index by name.
pub(super) fn upstreams(
    cfg: &Path,
    file: &ConfigFile,
) -> Result<(Vec<Upstream>, HashMap<String, usize>), ConfigError> {
    let mut upstreams = Vec::new();
    let mut upstream_index = HashMap::new();
    for (name, u) in &file.upstreams {
        let field = |f: &str| format!("upstreams.{name}.{f}");
        if u.servers.is_empty() {
            return Err(err(cfg, field("servers"), "needs at least one server"));
        }
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut names = Vec::new();
        for (i, s) in u.servers.iter().enumerate() {
            let resolved = s
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| {
                    err(
                        cfg,
                        format!("upstreams.{name}.servers[{i}]"),
                        format!("cannot resolve {s:?} (expected host:port)"),
                    )
                })?;
            addrs.push(resolved);
            let host = s.rsplit_once(':').map_or(s.as_str(), |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            names.push((resolved, u.sni.clone().unwrap_or_else(|| host.to_string())));
        }
        let tls = if u.tls {
            for (_, n) in &names {
                if rustls_pki_types::ServerName::try_from(n.as_str()).is_err() {
                    return Err(err(
                        cfg,
                        field("sni"),
                        format!("{n:?} is not a server name"),
                    ));
                }
            }
            let mut key = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(name, &mut key);
            let ca = match &u.ca_file {
                None => None,
                Some(f) => {
                    let path = cfg.parent().unwrap_or(Path::new(".")).join(f);
                    let ca = load_ca(&path).map_err(|m| err(cfg, field("ca_file"), m))?;
                    for c in ca.iter() {
                        std::hash::Hash::hash(c.borrow_raw_cert(), &mut key);
                    }
                    Some(ca)
                }
            };
            let pool_key = std::hash::Hasher::finish(&key);
            Some(UpstreamTls {
                names,
                ca,
                pool_key,
            })
        } else {
            if u.sni.is_some() || u.ca_file.is_some() {
                return Err(err(cfg, field("tls"), "sni and ca_file need tls = true"));
            }
            None
        };
        for (f, v) in [
            ("connect_timeout_ms", u.connect_timeout_ms),
            ("read_timeout_ms", u.read_timeout_ms),
            ("write_timeout_ms", u.write_timeout_ms),
        ] {
            if v == 0 {
                return Err(err(cfg, field(f), "must be above 0"));
            }
        }
        let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(addrs.iter().copied())
            .map_err(|e| err(cfg, field("servers"), e.to_string()))?;
        let health_interval = (u.health_check_interval_ms > 0).then(|| {
            let mut hc = TcpHealthCheck::new();
            hc.peer_template.options.connection_timeout =
                Some(Duration::from_millis(u.connect_timeout_ms));
            lb.set_health_check(Box::new(crate::health::NamedTcpCheck {
                upstream: name.clone(),
                inner: hc,
            }));
            Duration::from_millis(u.health_check_interval_ms)
        });
        upstream_index.insert(name.clone(), upstreams.len());
        upstreams.push(Upstream {
            name: name.clone(),
            lb: Arc::new(lb),
            connect_timeout: Duration::from_millis(u.connect_timeout_ms),
            read_timeout: Duration::from_millis(u.read_timeout_ms),
            write_timeout: Duration::from_millis(u.write_timeout_ms),
            health: crate::health::ServerHealth::new(
                addrs
                    .iter()
                    .map(|&addr| crate::health::ServerId {
                        addr,
                        tls_name: tls.as_ref().and_then(|t| t.name(&addr)).map(str::to_string),
                    })
                    .collect(),
                u.passive_failures,
                health_interval
                    .is_none()
                    .then(|| Duration::from_millis(u.passive_down_ms)),
            ),
            health_interval,
            tls,
        });
    }

    Ok((upstreams, upstream_index))
}
