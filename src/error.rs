//! Every response the gateway generates itself: one closed enum, one mapping to status and
//! public message, one writer of the Vivreal envelope.

use crate::usage::Meter;
use vivgate_parse::head::HeadError;

/// A request the gateway answers by itself. One variant per row of the contract; the public
/// message never carries internals (error chains, upstream addresses, key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    MissingKey,
    InvalidKey,
    GroupDeactivated,
    GroupFrozen,
    NoRoute,
    /// The path is routed, the method is not; carries the `Allow` header value.
    MethodNotAllowed(String),
    MissingParam(String),
    EmptyParam(String),
    DuplicateParam(String),
    MalformedId(String),
    InvalidJson,
    BodyTooLarge,
    /// A request the gateway could not read (a malformed body, say).
    BadRequest,
    /// The meter whose monthly quota is used up, and when it resets (`2026-12-01T00:00:00Z`).
    QuotaExceeded(Meter, String),
    UpstreamUnreachable,
    UpstreamTimeout,
    Internal,
    /// A request the gateway will not parse further: ambiguous framing, a path that is not
    /// canonical, a malformed head. The reason is public and never quotes the request.
    Malformed(&'static str),
    /// The request head is over `limits.max_head_bytes` or `limits.max_header_lines`.
    HeadTooLarge,
    /// The request head did not arrive within `limits.head_timeout_ms`.
    HeadTimeout,
    /// The request body paused longer than `limits.body_idle_timeout_ms`.
    BodyTimeout,
    /// `CONNECT`: the gateway tunnels nothing.
    ConnectNotAllowed,
    /// An `Upgrade` request on a route that does not allow it.
    UpgradeNotAllowed,
    /// A JSON body nested deeper than `limits.max_json_depth`.
    JsonTooDeep,
    /// Too many failed authentications from this client address; retry after this many seconds.
    AuthBlocked(u64),
    /// The group's tier allows this many requests per second, and they are spent.
    BurstLimited(u32),
    /// `limits.max_connections` connections are open.
    TooManyConnections,
    /// The shared usage store cannot answer and the outage policy is `deny`.
    UsageUnavailable,
    /// A CORS preflight from an origin, or for a method or headers, `[cors]` does not allow.
    CorsRefused,
    /// Every server of the route's upstream is down (health checks); retry after this many
    /// seconds.
    UpstreamsDown(u64),
    // The admin API's own refusals (its listener, its token):
    /// No admin token, or not the configured one.
    AdminUnauthorized,
    /// A `Host` that is not the admin listener's own address, `localhost` or an `admin.hosts`
    /// name (DNS rebinding).
    AdminHostRefused,
    /// A state-changing admin request from a page of another origin (cross-site request).
    AdminOriginRefused,
    /// A stop or an upgrade began (`/healthz`).
    Stopping,
    /// An admin resource that does not exist; the message names it.
    NotFound(&'static str),
    /// An admin request that cannot be carried out as sent; the message says why.
    Invalid(String),
    /// A reload of a gateway that was not started from files.
    ReloadWithoutFiles(String),
    /// An admin change that was not saved, nothing changed; `shared`: in Redis.
    ChangeNotSaved {
        shared: bool,
    },
    /// An admin change sent to Redis without an answer in time: it may or may not be saved.
    ChangeOutcomeUnknown,
}

/// The methods the gateway takes at all (`OPTIONS *`, and the `Allow` of a `CONNECT` refusal).
pub const ALLOW_ALL: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// The envelope for a head the front's scanner (or step 0 for HTTP/2) refused.
impl From<HeadError> for GatewayError {
    fn from(e: HeadError) -> Self {
        match e {
            HeadError::TooLarge | HeadError::TooManyHeaders => GatewayError::HeadTooLarge,
            HeadError::Malformed(why) | HeadError::Framing(why) => GatewayError::Malformed(why),
            HeadError::NotOriginForm => {
                GatewayError::Malformed("the request target must be a path starting with /")
            }
            HeadError::Connect => GatewayError::ConnectNotAllowed,
        }
    }
}

/// How long a client should wait before trying again (`Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    Seconds(u64),
    /// Until the month's quota resets (the caller knows when).
    QuotaReset,
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        use GatewayError::*;
        match self {
            MissingKey | InvalidKey => 401,
            GroupDeactivated | CorsRefused => 403,
            GroupFrozen => 400,
            NoRoute => 404,
            MethodNotAllowed(_) => 405,
            MissingParam(_) | EmptyParam(_) | DuplicateParam(_) => 400,
            MalformedId(_) => 404,
            InvalidJson | BadRequest => 400,
            BodyTooLarge => 413,
            QuotaExceeded(..) => 402,
            UpstreamUnreachable => 502,
            UpstreamTimeout => 504,
            Internal => 500,
            Malformed(_) | UpgradeNotAllowed | JsonTooDeep => 400,
            HeadTooLarge => 431,
            HeadTimeout | BodyTimeout => 408,
            ConnectNotAllowed => 405,
            AuthBlocked(_) | BurstLimited(_) => 429,
            TooManyConnections | UsageUnavailable | UpstreamsDown(_) => 503,
            AdminUnauthorized => 401,
            AdminHostRefused | AdminOriginRefused => 403,
            Stopping | ChangeOutcomeUnknown => 503,
            NotFound(_) => 404,
            Invalid(_) => 400,
            ReloadWithoutFiles(_) => 409,
            ChangeNotSaved { shared: true } => 503,
            ChangeNotSaved { shared: false } => 500,
        }
    }

    /// The `Allow` value a refusal carries.
    pub fn allow(&self) -> Option<&str> {
        match self {
            GatewayError::MethodNotAllowed(allow) => Some(allow),
            GatewayError::ConnectNotAllowed => Some(ALLOW_ALL),
            _ => None,
        }
    }

    /// The `Retry-After` a refusal carries.
    pub fn retry_after(&self) -> Option<RetryAfter> {
        use GatewayError::*;
        match self {
            QuotaExceeded(..) => Some(RetryAfter::QuotaReset),
            AuthBlocked(secs) | UpstreamsDown(secs) => Some(RetryAfter::Seconds(*secs)),
            BurstLimited(_) | UsageUnavailable | TooManyConnections => Some(RetryAfter::Seconds(1)),
            _ => None,
        }
    }

    /// A short, stable name for metrics (`rejections_total{reason=…}`).
    pub fn reason(&self) -> &'static str {
        use GatewayError::*;
        match self {
            MissingKey => "missing_key",
            InvalidKey => "invalid_key",
            GroupDeactivated => "group_deactivated",
            GroupFrozen => "group_frozen",
            NoRoute => "no_route",
            MethodNotAllowed(_) => "method_not_allowed",
            MissingParam(_) => "missing_param",
            EmptyParam(_) => "empty_param",
            DuplicateParam(_) => "duplicate_param",
            MalformedId(_) => "malformed_id",
            InvalidJson => "invalid_json",
            BodyTooLarge => "body_too_large",
            BadRequest => "bad_request",
            QuotaExceeded(Meter::Calls, _) => "quota_calls",
            QuotaExceeded(Meter::Bytes, _) => "quota_bytes",
            UpstreamUnreachable => "upstream_unreachable",
            UpstreamTimeout => "upstream_timeout",
            Internal => "internal",
            Malformed(_) => "malformed_request",
            HeadTooLarge => "head_too_large",
            HeadTimeout => "head_timeout",
            BodyTimeout => "body_timeout",
            ConnectNotAllowed => "connect",
            UpgradeNotAllowed => "upgrade_not_allowed",
            JsonTooDeep => "json_too_deep",
            AuthBlocked(_) => "auth_blocked",
            BurstLimited(_) => "burst_limited",
            TooManyConnections => "too_many_connections",
            UsageUnavailable => "usage_unavailable",
            CorsRefused => "cors_refused",
            UpstreamsDown(_) => "upstream_down",
            AdminUnauthorized => "admin_unauthorized",
            AdminHostRefused => "admin_host_refused",
            AdminOriginRefused => "admin_origin_refused",
            Stopping => "stopping",
            NotFound(_) => "not_found",
            Invalid(_) => "invalid",
            ReloadWithoutFiles(_) => "reload_without_files",
            ChangeNotSaved { .. } => "change_not_saved",
            ChangeOutcomeUnknown => "change_outcome_unknown",
        }
    }

    pub fn message(&self) -> String {
        use GatewayError::*;
        match self {
            MissingKey => "Missing Authorization header".into(),
            InvalidKey => "Invalid or revoked API key".into(),
            GroupDeactivated => "This group has been deactivated; contact your group admin".into(),
            GroupFrozen => {
                "This group account is frozen; contact your group admin to resolve the account \
                 status in the portal"
                    .into()
            }
            NoRoute => "Not found".into(),
            MethodNotAllowed(_) => "Method not allowed".into(),
            MissingParam(p) => format!("Missing required query parameter: {p}"),
            EmptyParam(p) => format!("Query parameter {p} must not be empty"),
            DuplicateParam(p) => format!("Query parameter {p} is given more than once"),
            MalformedId(p) => {
                format!("Invalid {p}: not found (IDs are 24-character hex strings)")
            }
            InvalidJson => "Invalid JSON body".into(),
            BodyTooLarge => "Request body too large".into(),
            BadRequest => "Bad request".into(),
            QuotaExceeded(Meter::Calls, reset) => {
                format!("Monthly API call quota exceeded; it resets at {reset}")
            }
            QuotaExceeded(Meter::Bytes, reset) => {
                format!("Monthly CDN bandwidth quota exceeded; it resets at {reset}")
            }
            UpstreamUnreachable => "Bad gateway: the service is unreachable".into(),
            UpstreamTimeout => "Gateway timeout: the service did not answer in time".into(),
            Internal => "Internal server error".into(),
            Malformed(why) => format!("Bad request: {why}"),
            HeadTooLarge => "Request header fields too large".into(),
            HeadTimeout => "Request timeout: the request head did not arrive in time".into(),
            BodyTimeout => "Request timeout: the request body stalled".into(),
            ConnectNotAllowed => "Method not allowed".into(),
            UpgradeNotAllowed => {
                "Bad request: protocol upgrade is not allowed on this route".into()
            }
            JsonTooDeep => "Invalid JSON body: nested too deeply".into(),
            AuthBlocked(_) => {
                "Too many failed authentication attempts from this address; retry later".into()
            }
            BurstLimited(n) => {
                format!("Too many requests: this group's tier allows {n} requests per second")
            }
            TooManyConnections => "Service unavailable: too many connections".into(),
            UsageUnavailable => "Usage service unavailable".into(),
            CorsRefused => "CORS preflight refused: origin, method or headers not allowed".into(),
            UpstreamsDown(_) => "Service unavailable: no healthy upstream server".into(),
            AdminUnauthorized => "Missing or invalid admin token".into(),
            AdminHostRefused => {
                "This host name is not allowed for the admin API (see admin.hosts)".into()
            }
            AdminOriginRefused => "Cross-site requests to the admin API are refused".into(),
            Stopping => "Stopping".into(),
            NotFound(what) => (*what).into(),
            Invalid(why) | ReloadWithoutFiles(why) => why.clone(),
            ChangeNotSaved { shared: true } => "The change could not be saved in Redis".into(),
            ChangeNotSaved { shared: false } => "The change could not be saved".into(),
            ChangeOutcomeUnknown => {
                "Redis did not answer in time: the change may or may not have been saved; \
                 repeating it is harmless"
                    .into()
            }
        }
    }
}

/// `{"success": false, "data": null, "error": "<message>"}` (the whole answer, headers
/// included, is `respond::Reply`).
pub fn envelope(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + message.len());
    out.extend_from_slice(br#"{"success": false, "data": null, "error": "#);
    // serde_json escapes quotes, backslashes and control characters.
    out.extend_from_slice(
        serde_json::to_string(message)
            .unwrap_or_else(|_| "\"\"".into())
            .as_bytes(),
    );
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_valid_json_with_the_contract_fields() {
        let body = envelope("say \"hi\"\n");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["success"], false);
        assert!(v["data"].is_null());
        assert_eq!(v["error"], "say \"hi\"\n");
        assert_eq!(v.as_object().unwrap().len(), 3);
    }

    #[test]
    fn frozen_says_frozen_and_statuses_follow_the_contract() {
        assert!(GatewayError::GroupFrozen.message().contains("frozen"));
        assert_eq!(GatewayError::GroupFrozen.status(), 400);
        assert_eq!(GatewayError::GroupDeactivated.status(), 403);
        assert_eq!(GatewayError::MalformedId("siteId".into()).status(), 404);
        let q = GatewayError::QuotaExceeded(Meter::Bytes, "2027-01-01T00:00:00Z".into());
        assert_eq!(q.status(), 402);
        assert!(q.message().contains("Monthly CDN bandwidth quota exceeded"));
        assert!(q.message().contains("2027-01-01T00:00:00Z"));
    }
}
