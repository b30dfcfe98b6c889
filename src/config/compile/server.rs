//! `[server]` and `[admin]`: listeners (plain, TLS with their certificates, PROXY protocol),
//! trusted proxies, and the admin listener with its token.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;

use super::super::file::{self, AdminSection, ServerSection};
use super::super::{err, ConfigError, TlsListener};
use crate::keys::{parse_key_hash, KeyHash};

/// What `[server]` compiles to besides the settings copied as they are.
pub(super) struct Server {
    pub tls_listeners: Vec<TlsListener>,
    pub tls_certs: crate::tls::Certificates,
}

/// `[server]`: the listen address, threads, TLS listeners and the PROXY protocol's needs.
pub(super) fn server(cfg: &Path, s: &ServerSection) -> Result<Server, ConfigError> {
    if s.listen
        .to_socket_addrs()
        .map_or(true, |mut a| a.next().is_none())
    {
        return Err(err(
            cfg,
            "server.listen",
            format!("not an address: {:?}", s.listen),
        ));
    }
    if s.threads == 0 {
        return Err(err(cfg, "server.threads", "must be at least 1"));
    }

    let (tls_listeners, tls_certs) = compile_tls(cfg, &s.tls)?;
    // (port 0 is an ephemeral port of its own each time, as in tests)
    if !s.listen.ends_with(":0") && tls_listeners.iter().any(|t| t.listen == s.listen) {
        return Err(err(
            cfg,
            "server.tls",
            format!("{} is already server.listen", s.listen),
        ));
    }

    if s.trusted_proxies.is_empty() {
        if s.proxy_protocol {
            return Err(err(
                cfg,
                "server.proxy_protocol",
                "needs server.trusted_proxies: a PROXY header is accepted from them only",
            ));
        }
        if let Some(i) = s.tls.iter().position(|t| t.proxy_protocol) {
            return Err(err(
                cfg,
                format!("server.tls[{i}].proxy_protocol"),
                "needs server.trusted_proxies: a PROXY header is accepted from them only",
            ));
        }
    }

    Ok(Server {
        tls_listeners,
        tls_certs,
    })
}

/// `server.trusted_proxies`: addresses or CIDRs.
pub(super) fn trusted_proxies(
    cfg: &Path,
    s: &ServerSection,
) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let mut trusted_proxies = Vec::new();
    for (i, c) in s.trusted_proxies.iter().enumerate() {
        let net = c
            .parse::<ipnet::IpNet>()
            .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                err(
                    cfg,
                    format!("server.trusted_proxies[{i}]"),
                    format!("{c:?} is not an address or a CIDR"),
                )
            })?;
        trusted_proxies.push(net);
    }

    Ok(trusted_proxies)
}

/// `[admin]`, checked.
pub(super) struct Admin {
    pub listen: Option<String>,
    pub token: Option<KeyHash>,
    pub hosts: Vec<Box<str>>,
}

/// `[admin]`: the listener (loopback only without a token), the token's hash, the host names.
pub(super) fn admin(cfg: &Path, a: &AdminSection) -> Result<Admin, ConfigError> {
    let admin_token = match &a.token {
        None => None,
        Some(t) => Some(parse_key_hash(t).map_err(|m| err(cfg, "admin.token", m))?),
    };
    let admin_listen = match &a.listen {
        None => None,
        Some(l) => {
            let addrs: Vec<SocketAddr> = l
                .to_socket_addrs()
                .map_err(|_| err(cfg, "admin.listen", format!("not an address: {l:?}")))?
                .collect();
            if addrs.is_empty() {
                return Err(err(cfg, "admin.listen", format!("not an address: {l:?}")));
            }
            if admin_token.is_none() && !addrs.iter().all(|a| a.ip().is_loopback()) {
                return Err(err(
                    cfg,
                    "admin.listen",
                    format!("{l:?} is not a loopback address: set admin.token to expose the admin API beyond this host"),
                ));
            }
            Some(l.clone())
        }
    };
    if a.listen.is_none() && a.token.is_some() {
        return Err(err(
            cfg,
            "admin.token",
            "set admin.listen too, or remove the token",
        ));
    }

    let mut hosts = Vec::new();
    for h in &a.hosts {
        // a name, without a port: the port is not what DNS rebinding changes
        let valid = !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
        if !valid {
            return Err(err(
                cfg,
                "admin.hosts",
                format!("{h:?} is not a host name (letters, digits, '.', '-'; no port)"),
            ));
        }
        // as the request side is compared: lowercase, without a final dot
        hosts.push(
            h.trim_end_matches('.')
                .to_ascii_lowercase()
                .into_boxed_str(),
        );
    }
    Ok(Admin {
        listen: admin_listen,
        token: admin_token,
        hosts,
    })
}

/// `[[server.tls]]`: one listener per address, each with its certificates in order.
pub(super) fn compile_tls(
    cfg: &Path,
    entries: &[file::TlsSection],
) -> Result<(Vec<TlsListener>, crate::tls::Certificates), ConfigError> {
    let mut listeners: Vec<TlsListener> = Vec::new();
    let mut certs = crate::tls::Certificates::default();
    for (i, t) in entries.iter().enumerate() {
        let field = |f: &str| format!("server.tls[{i}].{f}");
        if t.listen
            .to_socket_addrs()
            .map_or(true, |mut a| a.next().is_none())
        {
            return Err(err(
                cfg,
                field("listen"),
                format!("not an address: {:?}", t.listen),
            ));
        }
        let listener = TlsListener {
            listen: t.listen.clone(),
            http2: t.http2,
            proxy_protocol: t.proxy_protocol,
        };
        match listeners.iter().find(|l| l.listen == t.listen) {
            None => listeners.push(listener),
            Some(l) if *l == listener => {}
            Some(_) => {
                return Err(err(
                    cfg,
                    field("listen"),
                    "entries for one address must agree on http2 and proxy_protocol",
                ))
            }
        }
        let dir = cfg.parent().unwrap_or(Path::new("."));
        let pair = crate::tls::load_pair(&dir.join(&t.cert), &dir.join(&t.key))
            .map_err(|(f, m)| err(cfg, field(f), m))?;
        certs.0.entry(t.listen.clone()).or_default().push(pair);
    }
    Ok((listeners, certs))
}

/// A PEM file of CA certificates, checked, as pingora's per-peer CA list.
pub(super) fn load_ca(path: &Path) -> Result<Arc<pingora::protocols::tls::CaType>, String> {
    use rustls_pki_types::pem::PemObject;
    let ders: Vec<rustls_pki_types::CertificateDer<'static>> =
        rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
    if ders.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    let mut store = rustls::RootCertStore::empty();
    for d in &ders {
        store
            .add(d.clone())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let wrapped = ders
        .into_iter()
        .map(|d| {
            let raw = d.to_vec();
            // pingora parses again (and panics on what it cannot parse): keep that out of the
            // gateway
            std::panic::catch_unwind(|| {
                pingora::utils::tls::WrappedX509::new(raw, pingora::utils::tls::parse_x509)
            })
            .map_err(|_| format!("{}: a certificate pingora cannot parse", path.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::from(wrapped.into_boxed_slice()))
}
