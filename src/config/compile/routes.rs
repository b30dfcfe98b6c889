//! `[[routes]]`: exact paths and prefixes, in canonical form, with their methods, upstream,
//! query rules, meters, JSON body and upgrade settings.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use http::Method;

use super::super::file::{ConfigFile, MeterSpec};
use super::super::{err, ConfigError, Meters, PathRoutes, Route, RouteTable};

/// A method, the index of the `[[routes]]` entry that routes it, and the compiled route.
type MethodRoute = (Method, usize, Arc<Route>);

pub(super) fn compile_routes(
    cfg: &Path,
    file: &ConfigFile,
    upstream_index: &HashMap<String, usize>,
) -> Result<RouteTable, ConfigError> {
    // (is_prefix, path) -> method -> (route index, route)
    let mut table: BTreeMap<(bool, String), Vec<MethodRoute>> = BTreeMap::new();
    for (ri, r) in file.routes.iter().enumerate() {
        let field = |f: &str| format!("routes[{ri}].{f}");
        let (is_prefix, path) = match (&r.path, &r.prefix) {
            (Some(p), None) => (false, p.clone()),
            (None, Some(p)) => (true, p.clone()),
            (Some(_), Some(_)) => {
                return Err(err(
                    cfg,
                    format!("routes[{ri}]"),
                    "set `path` or `prefix`, not both",
                ))
            }
            (None, None) => {
                return Err(err(
                    cfg,
                    format!("routes[{ri}]"),
                    "needs `path` (exact) or `prefix`",
                ))
            }
        };
        let which = if is_prefix { "prefix" } else { "path" };
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            return Err(err(
                cfg,
                field(which),
                format!("{path:?}: must start with / and hold no ?, # or space"),
            ));
        }
        if is_prefix && !path.ends_with('/') {
            return Err(err(
                cfg,
                field(which),
                format!("{path:?}: a prefix ends with / (\"/cdn\" would also match \"/cdnx\")"),
            ));
        }
        // requests match on the canonical path: a route in another spelling would never match
        match vivgate_parse::path::canonical_path(&path) {
            Ok(c) if *c == *path => {}
            Ok(c) => {
                return Err(err(
                    cfg,
                    field(which),
                    format!("{path:?}: write it in canonical form, {c:?}"),
                ))
            }
            Err(e) => return Err(err(cfg, field(which), format!("{path:?}: {e}"))),
        }
        let upstream = *upstream_index.get(&r.upstream).ok_or_else(|| {
            err(
                cfg,
                field("upstream"),
                format!("unknown upstream {:?}", r.upstream),
            )
        })?;
        if r.methods.is_empty() {
            return Err(err(cfg, field("methods"), "needs at least one method"));
        }
        let mut methods = Vec::new();
        for (mi, m) in r.methods.iter().enumerate() {
            let parsed = Method::from_bytes(m.as_bytes())
                .ok()
                .filter(|_| m.bytes().all(|b| b.is_ascii_uppercase()))
                .filter(|p| *p != Method::CONNECT)
                .ok_or_else(|| {
                    err(
                        cfg,
                        format!("routes[{ri}].methods[{mi}]"),
                        format!("{m:?} is not an upper-case HTTP method"),
                    )
                })?;
            if !methods.contains(&parsed) {
                methods.push(parsed);
            }
        }
        for (list, f) in [
            (&r.required_query, "required_query"),
            (&r.id_query, "id_query"),
        ] {
            if let Some((qi, _)) = list.iter().enumerate().find(|(_, q)| q.is_empty()) {
                return Err(err(
                    cfg,
                    format!("routes[{ri}].{f}[{qi}]"),
                    "empty parameter name",
                ));
            }
        }
        let names: Vec<String> = match &r.meter {
            MeterSpec::One(s) => vec![s.clone()],
            MeterSpec::Many(v) => v.clone(),
        };
        let mut meters = Meters::default();
        for n in &names {
            match n.as_str() {
                "calls" => meters.calls = true,
                "bytes" => meters.bytes = true,
                other => {
                    return Err(err(
                        cfg,
                        field("meter"),
                        format!("unknown meter {other:?} (expected \"calls\" or \"bytes\")"),
                    ))
                }
            }
        }
        let route = Arc::new(Route {
            name: path.as_str().into(),
            upstream,
            required_query: r.required_query.clone(),
            id_query: r.id_query.clone(),
            meters,
            json_body: r.json_body,
            upgrade: r.upgrade,
            ok_requests: Default::default(),
            upstream_seconds: Default::default(),
        });
        let entry = table.entry((is_prefix, path.clone())).or_default();
        for m in methods {
            if let Some((_, other, _)) = entry.iter().find(|(x, _, _)| *x == m) {
                return Err(err(
                    cfg,
                    format!("routes[{ri}]"),
                    format!("duplicate route: {m} {which} {path:?} is already routed by routes[{other}]"),
                ));
            }
            entry.push((m, ri, route.clone()));
        }
    }

    let mut out = RouteTable::default();
    for ((is_prefix, path), mut list) in table {
        // HEAD is accepted wherever GET is, unless a route names HEAD itself.
        if let Some((_, ri, r)) = list.iter().find(|(m, _, _)| *m == Method::GET).cloned() {
            if !list.iter().any(|(m, _, _)| *m == Method::HEAD) {
                list.push((Method::HEAD, ri, r));
            }
        }
        let mut names: Vec<&str> = list.iter().map(|(m, _, _)| m.as_str()).collect();
        names.sort_unstable();
        let allow = names.join(", ");
        let pr = PathRoutes {
            by_method: list.into_iter().map(|(m, _, r)| (m, r)).collect(),
            allow,
        };
        if is_prefix {
            out.prefixes.push((path, pr));
        } else {
            out.exact.insert(path, pr);
        }
    }
    out.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
    Ok(out)
}
