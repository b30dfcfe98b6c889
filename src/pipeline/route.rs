//! Step 3: the route for (method, canonical path): an exact path first, then the longest
//! prefix. A routed path with another method is a 405 with `Allow`; an `Upgrade` request is a
//! 400 unless the route allows upgrades (a tunnel escapes byte metering).

use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::config::{PathRoutes, Route, Snapshot};
use crate::error::GatewayError;

/// The route for (method, path), or 404 / 405 (with the `Allow` value).
pub fn find<'s>(
    snap: &'s Snapshot,
    method: &Method,
    path: &str,
) -> Result<&'s Arc<Route>, GatewayError> {
    let paths: &PathRoutes = snap.routes.lookup(path).ok_or(GatewayError::NoRoute)?;
    paths
        .for_method(method)
        .ok_or_else(|| GatewayError::MethodNotAllowed(paths.allow.clone()))
}

/// An `Upgrade` only on a route with `upgrade = true`, and never to HTTP/2 (`h2c`, `h2`): the
/// requests it would carry through the tunnel would never pass these checks.
pub fn upgrade(route: &Route, headers: &HeaderMap) -> Result<(), GatewayError> {
    let mut values = headers.get_all(http::header::UPGRADE).iter().peekable();
    if values.peek().is_none() {
        return Ok(());
    }
    if !route.upgrade {
        return Err(GatewayError::UpgradeNotAllowed);
    }
    let http2 = values
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|p| p.trim_ascii().split(|b| *b == b'/').next().unwrap_or(b""))
        .any(|name| name.eq_ignore_ascii_case(b"h2c") || name.eq_ignore_ascii_case(b"h2"));
    if http2 {
        return Err(GatewayError::UpgradeNotAllowed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::test_support::snapshot;

    #[test]
    fn routes_exact_then_longest_prefix_then_405() {
        let s = snapshot();
        assert!(find(&s, &Method::GET, "/x").is_ok());
        assert!(find(&s, &Method::HEAD, "/x").is_ok(), "HEAD wherever GET");
        assert_eq!(
            find(&s, &Method::PUT, "/x").unwrap_err(),
            GatewayError::MethodNotAllowed("GET, HEAD, POST".into())
        );
        assert_eq!(
            find(&s, &Method::GET, "/x/").unwrap_err(),
            GatewayError::NoRoute
        );
        assert!(find(&s, &Method::GET, "/cdn/a.png").is_ok());
        // the longest prefix decides, even when only a shorter one has the method
        assert_eq!(
            find(&s, &Method::GET, "/cdn/private/a").unwrap_err(),
            GatewayError::MethodNotAllowed("DELETE".into())
        );
        assert_eq!(
            find(&s, &Method::GET, "/cd").unwrap_err(),
            GatewayError::NoRoute
        );
    }

    proptest::proptest! {
        /// An accepted (method, canonical path) matches at most one route, and it is the one a
        /// plain reading of the config gives: the exact path, else the longest prefix.
        #[test]
        fn a_canonical_path_matches_at_most_one_route(
            routes in proptest::collection::btree_set((proptest::bool::ANY, "(/[ab]{1,2}){1,3}/?"), 1..8),
            paths in proptest::collection::vec("(/[ab.%2fF]{0,3}){1,4}/?", 1..24),
        ) {
            let mut cfg = String::from(
                "tenants = \"t.toml\"\n[upstreams.exact]\nservers = [\"127.0.0.1:1\"]\n\
                 [upstreams.prefix]\nservers = [\"127.0.0.1:1\"]\n",
            );
            // a prefix ends with '/' (config rule)
            let routes: std::collections::BTreeSet<(bool, String)> = routes
                .into_iter()
                .map(|(p, r)| if p && !r.ends_with('/') { (p, r + "/") } else { (p, r) })
                .collect();
            for (is_prefix, path) in &routes {
                let (kind, up) = if *is_prefix { ("prefix", "prefix") } else { ("path", "exact") };
                cfg.push_str(&format!(
                    "[[routes]]\n{kind} = {path:?}\nmethods = [\"GET\"]\nupstream = \"{up}\"\n"
                ));
            }
            let snap = crate::config::load_from_str(
                std::path::Path::new("c.toml"),
                &cfg,
                std::path::Path::new("t.toml"),
                "",
            )
            .expect("generated routes are valid");
            let up = |name: &str| snap.upstreams.iter().position(|u| u.name == name).unwrap();
            for raw in &paths {
                let Ok(path) = vivgate_parse::path::canonical_path(raw) else { continue };
                let exact = routes.iter().filter(|(p, r)| !p && *r == *path).count();
                let longest = routes
                    .iter()
                    .filter(|(p, r)| *p && path.starts_with(r.as_str()))
                    .map(|(_, r)| r.len())
                    .max();
                proptest::prop_assert!(exact <= 1);
                match find(&snap, &Method::GET, &path) {
                    Ok(r) if exact == 1 => {
                        proptest::prop_assert_eq!(r.upstream, up("exact"));
                        proptest::prop_assert_eq!(&*r.name, &*path);
                    }
                    Ok(r) => {
                        proptest::prop_assert_eq!(r.upstream, up("prefix"));
                        proptest::prop_assert_eq!(Some(r.name.len()), longest);
                        proptest::prop_assert!(path.starts_with(&*r.name));
                    }
                    Err(e) => {
                        proptest::prop_assert_eq!(e, GatewayError::NoRoute);
                        proptest::prop_assert!(exact == 0 && longest.is_none());
                    }
                }
            }
        }
    }
}
