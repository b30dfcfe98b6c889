//! The checks a request passes before it is forwarded, each a small function that returns the
//! first failure as a [`GatewayError`]. The order they run in lives in one place:
//! `proxy::VivGate::check_request`.

use http::header::AUTHORIZATION;
use http::{HeaderMap, Method};

use crate::config::{Group, GroupStatus, PathRoutes, Route, Snapshot};
use crate::error::GatewayError;
use crate::keys::{hash_key, KeyHash};
use crate::overrides::Overrides;
use std::sync::Arc;
use vivgate_parse::auth::bearer_token;
use vivgate_parse::json::JsonError;
pub use vivgate_parse::query::is_object_id;
use vivgate_parse::query::{ambiguous_separator, param, Param};

/// The path where a group reads its own usage with its own key (`GET /v1/usage`).
pub const OWN_USAGE_PATH: &str = "/v1/usage";

/// A request that passed the head checks.
#[derive(Debug)]
pub enum Admitted<'s> {
    /// A routed request that passed steps 1 to 5, to forward.
    Forward {
        group: &'s Group,
        route: &'s Arc<Route>,
    },
    /// `GET /v1/usage`: answered by the gateway, not metered, and checked before the frozen
    /// status so a frozen group can see why.
    OwnUsage { group: &'s Group },
}

/// A request refused by steps 1 to 5, with its group and route when it got that far (a response
/// to an authenticated, routed request carries the RateLimit headers).
#[derive(Debug)]
pub struct Refused<'s> {
    pub error: GatewayError,
    pub matched: Option<(&'s Group, &'s Arc<Route>)>,
}

/// Steps 1 to 5, the checks on the request head, in the contract's order: key, deactivated,
/// (the group's own usage), frozen, route, upgrade, required parameters, ID parameters. `path`
/// is the canonical path ([`vivgate_parse::path::canonical_path`]). No I/O, no allocation on
/// success.
pub fn check_head<'s>(
    snap: &'s Snapshot,
    overrides: &Overrides,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
    query_string: Option<&str>,
) -> Result<Admitted<'s>, Refused<'s>> {
    let refused = |error| Refused {
        error,
        matched: None,
    };
    let (group, key) = authenticate(snap, headers).map_err(refused)?;
    let status = if overrides.is_empty() {
        group.status
    } else if overrides.is_revoked(&key) {
        return Err(refused(GatewayError::InvalidKey));
    } else {
        overrides.status_of(group)
    };
    if status == GroupStatus::Deactivated {
        return Err(refused(GatewayError::GroupDeactivated));
    }
    if path == OWN_USAGE_PATH && (*method == Method::GET || *method == Method::HEAD) {
        return Ok(Admitted::OwnUsage { group });
    }
    group_status(status).map_err(refused)?;
    let route = route(snap, method, path).map_err(refused)?;
    let matched = |error| Refused {
        error,
        matched: Some((group, route)),
    };
    if !route.upgrade && headers.contains_key(http::header::UPGRADE) {
        return Err(matched(GatewayError::UpgradeNotAllowed));
    }
    query(route, query_string).map_err(matched)?;
    Ok(Admitted::Forward { group, route })
}

/// Step 1: `Authorization: Bearer <key>` (scheme case-insensitive, one space, a token68 key),
/// exactly one such header, and a key whose SHA-256 is known. A missing header is `MissingKey`;
/// anything else that fails (another scheme, a malformed value, two headers, an unknown key) is
/// `InvalidKey`.
pub fn authenticate<'s>(
    snap: &'s Snapshot,
    headers: &HeaderMap,
) -> Result<(&'s Group, KeyHash), GatewayError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(GatewayError::MissingKey)?;
    if values.next().is_some() {
        return Err(GatewayError::InvalidKey);
    }
    let key = bearer_token(value.as_bytes()).ok_or(GatewayError::InvalidKey)?;
    let hash = hash_key(key);
    let group = snap.group_for(&hash).ok_or(GatewayError::InvalidKey)?;
    Ok((group, hash))
}

/// Step 2: a deactivated group is refused (403), a frozen one too (400, message says "frozen").
pub fn group_status(status: GroupStatus) -> Result<(), GatewayError> {
    match status {
        GroupStatus::Active => Ok(()),
        GroupStatus::Deactivated => Err(GatewayError::GroupDeactivated),
        GroupStatus::Frozen => Err(GatewayError::GroupFrozen),
    }
}

/// Step 3: the route for (method, path): exact path first, then the longest prefix. A routed path
/// with another method is a 405 that carries the `Allow` value.
pub fn route<'s>(
    snap: &'s Snapshot,
    method: &Method,
    path: &str,
) -> Result<&'s Arc<Route>, GatewayError> {
    let paths: &PathRoutes = snap.routes.lookup(path).ok_or(GatewayError::NoRoute)?;
    paths
        .for_method(method)
        .ok_or_else(|| GatewayError::MethodNotAllowed(paths.allow.clone()))
}

/// Steps 4 and 5: required parameters must appear exactly once and not be empty (400); ID parameters,
/// when present, must appear once (400) and be 24 hex characters (404). Names and values are
/// compared after URL decoding, so `%63ollectionId` is `collectionId` and
/// `collectionId=a&%63ollectionId=b` names it twice; `CollectionId`, `collectionId[$ne]` and
/// `collectionId.x` count as other occurrences (backends that fold case or nest keys read them
/// as the same name), and a raw `;` is refused on routes with query rules.
pub fn query(route: &Route, query: Option<&str>) -> Result<(), GatewayError> {
    if route.required_query.is_empty() && route.id_query.is_empty() {
        return Ok(());
    }
    let raw = query.unwrap_or("").as_bytes();
    if ambiguous_separator(raw) {
        return Err(GatewayError::Malformed(
            "a ; in the query string is read as a separator by some servers and not by others",
        ));
    }
    // an ID parameter that is also required is read once, here; its verdict waits for step 5
    // (bit i: `id_query[i]` was read here; in `valid`: it is an object id)
    let (mut read, mut valid) = (0u64, 0u64);
    for name in &route.required_query {
        match param(raw, name) {
            Param::Absent => return Err(GatewayError::MissingParam(name.clone())),
            Param::Repeated => return Err(GatewayError::DuplicateParam(name.clone())),
            Param::Once(v) if v.is_empty() => return Err(GatewayError::EmptyParam(name.clone())),
            Param::Once(v) => {
                if let Some(i) = route.id_query.iter().position(|n| n == name) {
                    if i < 64 {
                        read |= 1 << i;
                        valid |= u64::from(is_object_id(&v)) << i;
                    }
                }
            }
        }
    }
    for (i, name) in route.id_query.iter().enumerate() {
        if i < 64 && read & (1 << i) != 0 {
            if valid & (1 << i) == 0 {
                return Err(GatewayError::MalformedId(name.clone()));
            }
            continue;
        }
        match param(raw, name) {
            Param::Absent => {}
            Param::Repeated => return Err(GatewayError::DuplicateParam(name.clone())),
            Param::Once(v) if is_object_id(&v) => {}
            Param::Once(_) => return Err(GatewayError::MalformedId(name.clone())),
        }
    }
    Ok(())
}

/// Step 6: a JSON body: not empty, nested at most `max_depth` deep, and valid JSON (any value).
pub fn json_body(body: &[u8], max_depth: usize) -> Result<(), GatewayError> {
    match vivgate_parse::json::check(body, max_depth) {
        Ok(()) => Ok(()),
        Err(JsonError::TooDeep) => Err(GatewayError::JsonTooDeep),
        Err(JsonError::Empty | JsonError::Invalid) => Err(GatewayError::InvalidJson),
    }
}

/// A client-chosen request id is kept if it matches `[A-Za-z0-9._-]{1,64}`.
pub fn valid_request_id(v: &[u8]) -> bool {
    (1..=64).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Meters;

    fn route_with(required: &[&str], ids: &[&str]) -> Route {
        Route {
            name: "/t".into(),
            upstream: 0,
            required_query: required.iter().map(|s| s.to_string()).collect(),
            id_query: ids.iter().map(|s| s.to_string()).collect(),
            meters: Meters::default(),
            json_body: false,
            upgrade: false,
            ok_requests: Default::default(),
        }
    }

    fn snapshot() -> Snapshot {
        let key = crate::keys::format_key_hash(&hash_key(b"k1"));
        let frozen = crate::keys::format_key_hash(&hash_key(b"k2"));
        crate::config::load_from_str(
            std::path::Path::new("c.toml"),
            r#"tenants = "t.toml"
[upstreams.a]
servers = ["127.0.0.1:1"]
[[routes]]
path = "/x"
methods = ["GET", "POST"]
upstream = "a"
[[routes]]
prefix = "/cdn/"
methods = ["GET"]
upstream = "a"
[[routes]]
prefix = "/cdn/private/"
methods = ["DELETE"]
upstream = "a"
"#,
            std::path::Path::new("t.toml"),
            &format!(
                "[[groups]]\nid = \"g1\"\ntier = \"free\"\nstatus = \"active\"\nkeys = [\"{key}\"]\n\
                 [[groups]]\nid = \"g2\"\ntier = \"pro\"\nstatus = \"frozen\"\nkeys = [\"{frozen}\"]\n"
            ),
        )
        .unwrap()
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn authenticate_tells_missing_from_invalid() {
        let s = snapshot();
        assert_eq!(
            authenticate(&s, &headers(&[])).unwrap_err(),
            GatewayError::MissingKey
        );
        assert_eq!(
            authenticate(&s, &headers(&["Bearer nope"])).unwrap_err(),
            GatewayError::InvalidKey
        );
        assert_eq!(
            authenticate(&s, &headers(&["Bearer k1", "Bearer k1"])).unwrap_err(),
            GatewayError::InvalidKey
        );
        let (g, hash) = authenticate(&s, &headers(&["bearer k1"])).unwrap();
        assert_eq!(&*g.id, "g1");
        assert_eq!(hash, hash_key(b"k1"));
        let (g2, _) = authenticate(&s, &headers(&["Bearer k2"])).unwrap();
        assert_eq!(group_status(g.status), Ok(()));
        assert_eq!(group_status(g2.status), Err(GatewayError::GroupFrozen));
    }

    #[test]
    fn routes_exact_then_longest_prefix_then_405() {
        let s = snapshot();
        assert!(route(&s, &Method::GET, "/x").is_ok());
        assert!(route(&s, &Method::HEAD, "/x").is_ok(), "HEAD wherever GET");
        assert_eq!(
            route(&s, &Method::PUT, "/x").unwrap_err(),
            GatewayError::MethodNotAllowed("GET, HEAD, POST".into())
        );
        assert_eq!(
            route(&s, &Method::GET, "/x/").unwrap_err(),
            GatewayError::NoRoute
        );
        assert!(route(&s, &Method::GET, "/cdn/a.png").is_ok());
        // the longest prefix decides, even when only a shorter one has the method
        assert_eq!(
            route(&s, &Method::GET, "/cdn/private/a").unwrap_err(),
            GatewayError::MethodNotAllowed("DELETE".into())
        );
        assert_eq!(
            route(&s, &Method::GET, "/cd").unwrap_err(),
            GatewayError::NoRoute
        );
    }

    #[test]
    fn query_rules_in_order() {
        let r = route_with(&["collectionId"], &["collectionId"]);
        let id = "651f0c2ab4e8a90012345678";
        assert_eq!(query(&r, Some(&format!("collectionId={id}"))), Ok(()));
        assert_eq!(
            query(&r, None),
            Err(GatewayError::MissingParam("collectionId".into()))
        );
        assert_eq!(
            query(&r, Some("collectionId=")),
            Err(GatewayError::EmptyParam("collectionId".into()))
        );
        assert_eq!(
            query(&r, Some(&format!("collectionId={id}&%63ollectionId={id}"))),
            Err(GatewayError::DuplicateParam("collectionId".into()))
        );
        assert_eq!(
            query(&r, Some("collectionId=xyz")),
            Err(GatewayError::MalformedId("collectionId".into()))
        );
        assert_eq!(
            query(&r, Some("collectionId=651f0c2ab4e8a9001234567g")),
            Err(GatewayError::MalformedId("collectionId".into()))
        );
        // every required parameter (step 4) before any ID (step 5), IDs in their listed order,
        // whether or not an ID is also required
        let two = route_with(&["collectionId", "siteId"], &["collectionId"]);
        assert_eq!(
            query(&two, Some("collectionId=xyz")),
            Err(GatewayError::MissingParam("siteId".into()))
        );
        assert_eq!(
            query(&two, Some("collectionId=xyz&siteId=1")),
            Err(GatewayError::MalformedId("collectionId".into()))
        );
        let mixed = route_with(&["collectionId"], &["siteId", "collectionId"]);
        assert_eq!(
            query(&mixed, Some("collectionId=xyz&siteId=1&siteId=2")),
            Err(GatewayError::DuplicateParam("siteId".into()))
        );
        assert_eq!(
            query(&mixed, Some("collectionId=xyz&siteId=1")),
            Err(GatewayError::MalformedId("siteId".into()))
        );
        assert_eq!(
            query(&mixed, Some(&format!("collectionId=xyz&siteId={id}"))),
            Err(GatewayError::MalformedId("collectionId".into()))
        );
        assert_eq!(
            query(&mixed, Some(&format!("collectionId={id}&siteId={id}"))),
            Ok(())
        );
        // an optional ID parameter is only checked when present
        let opt = route_with(&[], &["siteId"]);
        assert_eq!(query(&opt, Some("other=1")), Ok(()));
        assert_eq!(
            query(&opt, Some("siteId=1")),
            Err(GatewayError::MalformedId("siteId".into()))
        );
    }

    #[test]
    fn json_rules() {
        assert_eq!(json_body(b"{\"a\":1}", 64), Ok(()));
        assert_eq!(json_body(b"3", 64), Ok(()));
        assert_eq!(json_body(b" [] ", 64), Ok(()));
        assert_eq!(json_body(b"", 64), Err(GatewayError::InvalidJson));
        assert_eq!(json_body(b"{", 64), Err(GatewayError::InvalidJson));
        assert_eq!(json_body(b"{} {}", 64), Err(GatewayError::InvalidJson));
        assert_eq!(json_body(b"[[1]]", 1), Err(GatewayError::JsonTooDeep));
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
                match route(&snap, &Method::GET, &path) {
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

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-123_x.y"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(&[b'a'; 65]));
        assert!(!valid_request_id(b"a b"));
    }
}
