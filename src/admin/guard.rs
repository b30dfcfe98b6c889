//! The admin listener's defences against a browser, checked before the token.
//!
//! - **DNS rebinding.** A web page on `evil.example` whose name is then pointed at 127.0.0.1 can
//!   read and change a token-less loopback admin API from the operator's own browser; its
//!   requests carry `Host: evil.example`. So a `Host` must name the listener: the address the
//!   connection reached, `localhost`, or a name in `admin.hosts`. The port is not compared (a
//!   rebinding changes the name, and a proxy or a port mapping may change the port).
//! - **Cross-site requests.** A page of any origin can send a form `POST` (no preflight) to
//!   the admin API; with no token in the way it would reload or unfreeze. A state-changing
//!   request (`POST`, `PUT`, `PATCH`, `DELETE`) with an `Origin` is refused unless the origin
//!   is the admin listener itself: `http(s)://` + its `Host`, or a name of `admin.hosts` (behind
//!   a proxy that sends its own `Host`). A request without an `Origin` (curl, scripts) is not a
//!   browser's cross-site request. And any request a browser marks `Sec-Fetch-Site:
//!   cross-site` is refused, reads included (a page elsewhere has no business setting off even
//!   a listing of every group).

use std::net::IpAddr;

use http::header::{HOST, ORIGIN};
use http::{HeaderMap, Method};

use crate::error::GatewayError;

/// The `Host` of a request: the header (HTTP/1) or the URI's authority (HTTP/2); `None` when
/// there is none, and an error when there are several.
fn host_of(headers: &HeaderMap, uri: &http::Uri) -> Result<Option<String>, GatewayError> {
    let mut values = headers.get_all(HOST).iter();
    match (values.next(), values.next()) {
        (Some(_), Some(_)) => Err(GatewayError::AdminHostRefused),
        (Some(v), None) => v
            .to_str()
            .map(|s| Some(s.trim().to_string()))
            .map_err(|_| GatewayError::AdminHostRefused),
        (None, _) => Ok(uri.authority().map(|a| a.as_str().to_string())),
    }
}

/// The name part of `host[:port]` (an IPv6 literal without its brackets), lowercase.
fn name_of(authority: &str) -> Option<String> {
    let name = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty()
            || after[1..].bytes().all(|b| b.is_ascii_digit()) && after.starts_with(':'))
        {
            return None;
        }
        inside
    } else {
        match authority.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return None,
            None => authority,
        }
    };
    (!name.is_empty()).then(|| name.trim_end_matches('.').to_ascii_lowercase())
}

/// Whether `name` is the listener: `localhost`, the address the connection reached (`local`),
/// or one of `allowed`.
fn is_own_name(name: &str, local: Option<IpAddr>, allowed: &[Box<str>]) -> bool {
    if name == "localhost" || allowed.iter().any(|a| **a == *name) {
        return true;
    }
    match (name.parse::<IpAddr>(), local) {
        (Ok(ip), Some(local)) => ip == local || ip.to_canonical() == local.to_canonical(),
        _ => false,
    }
}

/// Refuses a request a browser was made to send on another site's behalf; see the module.
pub(super) fn check(
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    local: Option<IpAddr>,
    allowed: &[Box<str>],
) -> Result<(), GatewayError> {
    if headers
        .get_all("sec-fetch-site")
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return Err(GatewayError::AdminOriginRefused);
    }
    let host = host_of(headers, uri)?;
    if let Some(host) = &host {
        match name_of(host) {
            Some(name) if is_own_name(&name, local, allowed) => {}
            _ => return Err(GatewayError::AdminHostRefused),
        }
    }
    let changes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let mut origins = headers.get_all(ORIGIN).iter();
    let Some(origin) = origins.next() else {
        return Ok(());
    };
    if !changes {
        return Ok(());
    }
    let authority = origin.to_str().ok().and_then(|o| {
        o.strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"))
    });
    let same = origins.next().is_none()
        && authority.is_some_and(|authority| {
            host.as_deref()
                .is_some_and(|host| authority.eq_ignore_ascii_case(host))
                || name_of(authority).is_some_and(|n| allowed.iter().any(|a| **a == *n))
        });
    if same {
        Ok(())
    } else {
        Err(GatewayError::AdminOriginRefused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        method: Method,
        headers: &[(&str, &str)],
        local: &str,
        allowed: &[&str],
    ) -> Result<(), GatewayError> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let allowed: Vec<Box<str>> = allowed.iter().map(|a| (*a).into()).collect();
        check(
            &method,
            &"/usage".parse().unwrap(),
            &map,
            Some(local.parse().unwrap()),
            &allowed,
        )
    }

    #[test]
    fn a_host_must_name_the_listener() {
        let ok = |h: &str| {
            run(
                Method::GET,
                &[("host", h)],
                "127.0.0.1",
                &["admin.internal"],
            )
        };
        for good in [
            "127.0.0.1:9090",
            "127.0.0.1",
            "localhost:9090",
            "LOCALHOST",
            "localhost.",
            "admin.internal:80",
            "Admin.Internal",
        ] {
            assert_eq!(ok(good), Ok(()), "{good}");
        }
        for bad in [
            "evil.example:9090",
            "127.0.0.2:9090",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "[::1]:9090",
            "127.0.0.1:x",
            "",
            "admin.internal.evil",
        ] {
            assert_eq!(ok(bad), Err(GatewayError::AdminHostRefused), "{bad}");
        }
        assert_eq!(
            run(Method::GET, &[("host", "[::1]:9090")], "::1", &[]),
            Ok(())
        );
        assert_eq!(
            run(
                Method::GET,
                &[("host", "127.0.0.1"), ("host", "127.0.0.1")],
                "127.0.0.1",
                &[]
            ),
            Err(GatewayError::AdminHostRefused)
        );
        // no Host at all (HTTP/1.0 from a script): not a browser
        assert_eq!(run(Method::GET, &[], "127.0.0.1", &[]), Ok(()));
    }

    #[test]
    fn a_change_from_another_origin_is_refused() {
        let host = ("host", "127.0.0.1:9090");
        for m in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert_eq!(run(m.clone(), &[host], "127.0.0.1", &[]), Ok(()));
            assert_eq!(
                run(
                    m.clone(),
                    &[host, ("origin", "http://127.0.0.1:9090")],
                    "127.0.0.1",
                    &[]
                ),
                Ok(())
            );
            for bad in [
                "http://evil.example",
                "null",
                "http://127.0.0.1:9091",
                "http://localhost:9090",
                "file://",
            ] {
                assert_eq!(
                    run(m.clone(), &[host, ("origin", bad)], "127.0.0.1", &[]),
                    Err(GatewayError::AdminOriginRefused),
                    "{m} {bad}"
                );
            }
        }
        // reading is not refused (the browser keeps a cross-origin answer from the page)
        assert_eq!(
            run(
                Method::GET,
                &[host, ("origin", "http://evil.example")],
                "127.0.0.1",
                &[]
            ),
            Ok(())
        );
    }
}
