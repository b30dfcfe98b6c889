//! Steps 4 and 5: the route's query parameters. Required ones must be present once and not
//! empty (400); ID ones, when present, once and 24 hex characters (404).

use vivgate_parse::query::{ambiguous_separator, is_object_id, param, Param};

use crate::config::Route;
use crate::error::GatewayError;

/// Steps 4 and 5: required parameters must appear exactly once and not be empty (400); ID parameters,
/// when present, must appear once (400) and be 24 hex characters (404). Names and values are
/// compared after URL decoding, so `%63ollectionId` is `collectionId` and
/// `collectionId=a&%63ollectionId=b` names it twice; `CollectionId`, `collectionId[$ne]` and
/// `collectionId.x` count as other occurrences (backends that fold case or nest keys read them
/// as the same name), and a raw `;` is refused on routes with query rules.
pub fn check(route: &Route, query: Option<&str>) -> Result<(), GatewayError> {
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
            upstream_seconds: Default::default(),
        }
    }

    #[test]
    fn query_rules_in_order() {
        let r = route_with(&["collectionId"], &["collectionId"]);
        let id = "651f0c2ab4e8a90012345678";
        assert_eq!(check(&r, Some(&format!("collectionId={id}"))), Ok(()));
        assert_eq!(
            check(&r, None),
            Err(GatewayError::MissingParam("collectionId".into()))
        );
        assert_eq!(
            check(&r, Some("collectionId=")),
            Err(GatewayError::EmptyParam("collectionId".into()))
        );
        assert_eq!(
            check(&r, Some(&format!("collectionId={id}&%63ollectionId={id}"))),
            Err(GatewayError::DuplicateParam("collectionId".into()))
        );
        assert_eq!(
            check(&r, Some("collectionId=xyz")),
            Err(GatewayError::MalformedId("collectionId".into()))
        );
        assert_eq!(
            check(&r, Some("collectionId=651f0c2ab4e8a9001234567g")),
            Err(GatewayError::MalformedId("collectionId".into()))
        );
        // every required parameter (step 4) before any ID (step 5), IDs in their listed order,
        // whether or not an ID is also required
        let two = route_with(&["collectionId", "siteId"], &["collectionId"]);
        assert_eq!(
            check(&two, Some("collectionId=xyz")),
            Err(GatewayError::MissingParam("siteId".into()))
        );
        assert_eq!(
            check(&two, Some("collectionId=xyz&siteId=1")),
            Err(GatewayError::MalformedId("collectionId".into()))
        );
        let mixed = route_with(&["collectionId"], &["siteId", "collectionId"]);
        assert_eq!(
            check(&mixed, Some("collectionId=xyz&siteId=1&siteId=2")),
            Err(GatewayError::DuplicateParam("siteId".into()))
        );
        assert_eq!(
            check(&mixed, Some("collectionId=xyz&siteId=1")),
            Err(GatewayError::MalformedId("siteId".into()))
        );
        assert_eq!(
            check(&mixed, Some(&format!("collectionId=xyz&siteId={id}"))),
            Err(GatewayError::MalformedId("collectionId".into()))
        );
        assert_eq!(
            check(&mixed, Some(&format!("collectionId={id}&siteId={id}"))),
            Ok(())
        );
        // an optional ID parameter is only checked when present
        let opt = route_with(&[], &["siteId"]);
        assert_eq!(check(&opt, Some("other=1")), Ok(()));
        assert_eq!(
            check(&opt, Some("siteId=1")),
            Err(GatewayError::MalformedId("siteId".into()))
        );
    }
}
