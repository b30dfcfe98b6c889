//! `vivgate healthz`: is the gateway of a config serving? For a container's health check (a
//! small runtime image has no curl) and scripts. With an admin listener it asks `/healthz`
//! (200 serving; 503 once a stop or an upgrade began); without one it can only see whether the
//! public listener accepts a connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

#[derive(Deserialize)]
struct Lenient {
    server: Option<Listen>,
    admin: Option<Listen>,
}

#[derive(Deserialize)]
struct Listen {
    listen: Option<String>,
}

/// A wildcard listen address is asked on loopback.
fn reachable(listen: &str) -> Result<SocketAddr, String> {
    let mut addr = listen
        .to_socket_addrs()
        .map_err(|e| format!("{listen}: {e}"))?
        .next()
        .ok_or_else(|| format!("{listen}: no address"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(addr)
}

/// Probes the gateway `config` describes; `Ok` says what was seen, `Err` why it is not healthy.
pub fn probe(config: &Path, timeout: Duration) -> Result<String, String> {
    let text = std::fs::read_to_string(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let c: Lenient = toml::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
    if let Some(listen) = c.admin.and_then(|a| a.listen) {
        let addr = reachable(&listen)?;
        let mut s = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("admin listener {addr}: {e}"))?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| format!("admin listener {addr}: {e}"))?;
        let mut answer = Vec::new();
        let _ = s.take(64 * 1024).read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        let status = answer.split(' ').nth(1).unwrap_or("");
        return match status {
            "200" => Ok(format!("serving (admin listener {addr})")),
            "" => Err(format!("admin listener {addr}: no answer")),
            s => Err(format!(
                "admin listener {addr}: {s} (stopping or not serving)"
            )),
        };
    }
    let listen = c
        .server
        .and_then(|s| s.listen)
        .unwrap_or_else(|| "0.0.0.0:8080".into());
    let addr = reachable(&listen)?;
    TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("listener {addr}: {e}"))?;
    Ok(format!(
        "accepting connections on {addr} (no admin listener: /healthz cannot be asked)"
    ))
}
