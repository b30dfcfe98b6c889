//! The contract: the checks every request passes before it is forwarded, in the order of the
//! README's pipeline table, each a small function that returns the first failure as a
//! [`GatewayError`]. The order lives here and nowhere else: [`run`] (steps 0 to 7) and
//! [`check_head`] (steps 1 to 5, no I/O).
//!
//! | step | check | refusal |
//! |---|---|---|
//! | 0 | the parsed head: HTTP/2's head gets the front's HTTP/1 rules ([`head`]); one canonical path | 400 / 405 / 431 |
//! | 0a | a CORS preflight is answered here ([`cors`]) | 204 / 403 |
//! | 0b | the client address is not blocked for failed authentications ([`auth`]) | 429 |
//! | 1 | `Authorization: Bearer <key>`, a known, unrevoked key ([`auth`]) | 401 |
//! | 2 | the group is not deactivated (`GET /v1/usage` is answered next), not frozen | 403 / 400 |
//! | 3 | a route for the path and method; `Upgrade` only where allowed ([`route`]) | 404 / 405 / 400 |
//! | 4 | required query parameters ([`query`]) | 400 |
//! | 5 | ID query parameters ([`query`]) | 404 |
//! | 6 | a `json_body` route's body ([`body`]) | 400 / 413 / 408 |
//! | 6a | the tier's burst limit ([`burst`]) | 429 |
//! | 7 | the monthly quota of each meter ([`quota`]) | 402 / 503 |
//!
//! The byte-level checks of an HTTP/1 head (size, deadline, framing, the target's bytes) come
//! before all this, in the front (`crate::front`); they are step 0 for HTTP/1.
//!
//! Nothing here knows pingora: a transport hands the request over as a [`Transport`] (a view of
//! the parsed head, and a way to read the body), and the outcome comes back in [`State`] and
//! [`Outcome`], for the transport to answer or forward.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{HeaderMap, Method};

use crate::clock::Month;
use crate::config::{Group, Route, Snapshot};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::overrides::Overrides;
use crate::usage::{Meter, Take};

pub mod auth;
pub mod body;
pub mod burst;
pub mod cors;
pub mod head;
pub mod query;
pub mod quota;
pub mod route;
#[cfg(test)]
mod test_support;

pub use head::valid_request_id;

/// The path where a group reads its own usage with its own key (`GET /v1/usage`).
pub const OWN_USAGE_PATH: &str = "/v1/usage";

/// A parsed request head, as any transport sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a Method,
    /// The request target as sent: an origin-form path and query.
    pub target: &'a [u8],
    /// The target as the transport's own parser read it, when it may read one otherwise than
    /// sent (pingora escapes or drops some bytes): step 0 refuses any difference, since the
    /// backend would get the one and the checks see the other.
    pub parsed_target: Option<&'a [u8]>,
    pub headers: &'a HeaderMap,
    /// HTTP/2's `:authority`; `None` over HTTP/1 (its `Host` is among the headers).
    pub authority: Option<&'a str>,
    /// HTTP/2: the head did not pass the front's HTTP/1 checks, step 0 applies them.
    pub http2: bool,
    /// The client's address ([`head::client_ip`]).
    pub client: Option<IpAddr>,
}

/// What a transport offers the pipeline: the parsed head, and the body when a step needs it.
pub trait Transport: Send {
    fn request(&self) -> Request<'_>;

    /// Reads the whole body, at most `max` bytes (413 above), waiting at most `pause` for each
    /// piece (408). A transport that cannot read more on this connection after a failure
    /// closes it.
    fn read_body(
        &mut self,
        max: u64,
        pause: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, GatewayError>> + Send;
}

/// What the checks learned about a request, whatever they decided: the transport answers with
/// it (CORS and RateLimit headers), forwards with it (identity, canonical path) and meters
/// with it (the quota taken).
#[derive(Debug, Default)]
pub struct State {
    /// `[cors]` is configured: every answer varies by `Origin`.
    pub cors_vary: bool,
    /// The request's `Origin`, when `[cors]` allows it.
    pub cors_origin: Option<HeaderValue>,
    /// The canonical path, when the request spelled it otherwise: what the backend receives.
    pub canonical_path: Option<String>,
    pub group: Option<Group>,
    pub route: Option<Arc<Route>>,
    /// When the quota check ran (or, for a refusal before it, when the route matched).
    pub now_ms: i64,
    pub month: Option<Month>,
    /// The call taken from the quota.
    pub take: Option<Take>,
    /// Bandwidth used at the quota check.
    pub bytes_used: Option<u64>,
    /// The meter whose quota refused the request.
    pub quota_refused: Option<Meter>,
}

/// What passed every check becomes.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Forward it (the quota is taken: see [`State::take`]).
    Forward,
    /// An allowed CORS preflight: 204 with the CORS headers.
    Preflight,
    /// `GET /v1/usage`: the group's own usage, answered by the gateway.
    OwnUsage(Group),
}

/// Every check, in the contract's order. A refusal is the first failure; on
/// [`Outcome::Forward`] the request is counted against its quota and ready to forward.
pub async fn run<T: Transport>(
    gw: &Gateway,
    snap: &Snapshot,
    t: &mut T,
    st: &mut State,
) -> Result<Outcome, GatewayError> {
    let json_body = {
        let req = t.request();
        if let Some(cors) = &snap.cors {
            cors::note_origin(&req, cors, st);
        }
        // 0: the parsed head, and one canonical path
        let (path, query) = head::check(&req, &snap.limits)?;
        // 0a: a CORS preflight is answered without a key
        if let Some(cors) = &snap.cors {
            if cors::preflight(&req, cors, st)? {
                return Ok(Outcome::Preflight);
            }
        }
        // 0b: a client blocked for failed authentications, before any key lookup
        let failed_auth = snap.limits.failed_auth.zip(req.client);
        auth::not_blocked(gw.failed_auth(), failed_auth)?;
        // 1 to 5
        let checked = check_head(snap, &gw.overrides(), req.headers, req.method, &path, query);
        auth::count_failure(gw.failed_auth(), failed_auth, &checked);
        if let std::borrow::Cow::Owned(p) = path {
            st.canonical_path = Some(p);
        }
        let (group, route, refused) = match checked {
            Ok(Admitted::Forward { group, route }) => (group, route, None),
            Ok(Admitted::OwnUsage { group }) => return Ok(Outcome::OwnUsage(group.clone())),
            Err(Refused {
                error,
                matched: Some((group, route)),
            }) => (group, route, Some(error)),
            Err(Refused {
                error,
                matched: None,
            }) => return Err(error),
        };
        st.group = Some(group.clone());
        st.route = Some(route.clone());
        st.now_ms = gw.clock().now_ms();
        st.month = Some(Month::containing(st.now_ms));
        if let Some(error) = refused {
            return Err(error);
        }
        route.json_body
    };
    // 6: a JSON body, read whole and checked before anything is forwarded
    if json_body {
        body::json(t, &snap.limits).await?;
        // a body may take a while: the quota check is the request's moment
        st.now_ms = gw.clock().now_ms();
        st.month = Some(Month::containing(st.now_ms));
    }
    // 6a: the tier's burst limit
    burst::admit(gw.burst(), st)?;
    // 7: the monthly quota of each meter
    quota::take(gw.store(), st).await?;
    Ok(Outcome::Forward)
}

/// A request that passed steps 1 to 5.
#[derive(Debug)]
pub enum Admitted<'s> {
    /// A routed request, to forward once steps 6 to 7 pass.
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

/// Steps 1 to 5, the checks on the request head: key, deactivated, (the group's own usage),
/// frozen, route, upgrade, required parameters, ID parameters. `path` is the canonical path.
/// No I/O, no allocation on success.
pub fn check_head<'s>(
    snap: &'s Snapshot,
    overrides: &Overrides,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Result<Admitted<'s>, Refused<'s>> {
    let refused = |error| Refused {
        error,
        matched: None,
    };
    // 1: the key
    let (group, key) = auth::authenticate(snap, headers).map_err(refused)?;
    // 2: the group's status (a revoked key is a 401 like an unknown one)
    let status = auth::effective_status(group, &key, overrides).map_err(refused)?;
    auth::not_deactivated(status).map_err(refused)?;
    if path == OWN_USAGE_PATH && (*method == Method::GET || *method == Method::HEAD) {
        return Ok(Admitted::OwnUsage { group });
    }
    auth::not_frozen(status).map_err(refused)?;
    // 3: the route, and an `Upgrade` only where it allows one
    let route = route::find(snap, method, path).map_err(refused)?;
    let matched = |error| Refused {
        error,
        matched: Some((group, route)),
    };
    route::upgrade(route, headers).map_err(matched)?;
    // 4 and 5: the query parameters
    query::check(route, query).map_err(matched)?;
    Ok(Admitted::Forward { group, route })
}
