//! The PROXY protocol (v1 and v2) on listeners that enable it, from trusted proxies only.

use super::*;

/// The longest PROXY header read: a v1 line is at most 107 bytes, a v2 header 16 plus its
/// addresses and TLVs (a few hundred in practice).
pub(super) const MAX_PROXY_HEADER: usize = 4096;

/// Reads a PROXY protocol header (v1 or v2) from a trusted peer, and makes its source address
/// the connection's client address. Bytes after the header are put back for TLS or HTTP.
pub(super) async fn read_proxy_header(
    l4: &mut L4Stream,
    trusted: &[ipnet::IpNet],
    deadline: Instant,
) -> Result<(), &'static str> {
    let peer = l4
        .get_socket_digest()
        .and_then(|d| d.peer_addr().cloned())
        .and_then(|a| a.as_inet().copied())
        .ok_or("no peer address")?;
    if !trusted.iter().any(|n| n.contains(&peer.ip())) {
        return Err("a PROXY header from a peer not in server.trusted_proxies");
    }
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let (len, source) = loop {
        let n = match tokio::time::timeout_at(deadline, l4.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err("closed before a PROXY header"),
            Err(_) => return Err("no PROXY header in time"),
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        match proxy_source(&buf) {
            Ok(Some(found)) => break found,
            Ok(None) if buf.len() < MAX_PROXY_HEADER => continue,
            Ok(None) => return Err("PROXY header too long"),
            Err(why) => return Err(why),
        }
    };
    l4.rewind(&buf[len..]);
    if let Some(source) = source {
        // a fresh digest: the address pingora (and vivgate) read as the client's
        let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
        let _ = digest
            .peer_addr
            .set(Some(pingora::protocols::l4::socket::SocketAddr::Inet(
                source,
            )));
        l4.set_socket_digest(digest);
    }
    Ok(())
}

/// Parses a PROXY header at the start of `buf`: `Ok(None)` while incomplete, else its length
/// and source address (`None` for a LOCAL or UNKNOWN header: the peer's own address stands).
pub fn proxy_source(
    buf: &[u8],
) -> Result<Option<(usize, Option<std::net::SocketAddr>)>, &'static str> {
    use ppp::PartialResult as _;
    let parsed = ppp::HeaderResult::parse(buf);
    if parsed.is_incomplete() {
        // a v1 line ends at its CRLF (at most 107 bytes): whatever is missing then is missing
        let v1_ended =
            buf.starts_with(b"PROXY") && (buf.len() >= 107 || buf.windows(2).any(|w| w == b"\r\n"));
        return if v1_ended {
            Err("a malformed PROXY v1 header")
        } else {
            Ok(None)
        };
    }
    match parsed {
        ppp::HeaderResult::V1(Ok(h)) => {
            let source = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
                ppp::v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
                ppp::v1::Addresses::Unknown => None,
            };
            Ok(Some((h.header.len(), source)))
        }
        ppp::HeaderResult::V2(Ok(h)) => {
            let source = match (h.command, h.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => Some((a.source_address, a.source_port).into()),
                (_, ppp::v2::Addresses::IPv6(a)) => Some((a.source_address, a.source_port).into()),
                _ => None,
            };
            Ok(Some((h.len(), source)))
        }
        _ => Err("not a PROXY protocol header"),
    }
}
