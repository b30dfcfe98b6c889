//! The state of one request through pingora's phases.

use super::*;

/// Per-request state.
pub struct Ctx {
    pub(super) request_id: HeaderValue,
    /// The snapshot a forwarded request was checked against.
    pub(super) snap: Option<Arc<Snapshot>>,
    /// What the checks learned: identity, route, quota taken, CORS.
    pub(super) p: pipeline::State,
    /// Connect attempts that failed and were retried on another server.
    pub(super) connect_retries: u8,
    pub(super) connected: bool,
    pub(super) upstream_responded: bool,
    /// Why the gateway answered by itself, for the metrics.
    pub(super) rejected: Option<&'static str>,
    /// When an upstream server was chosen (the latency histogram's start).
    pub(super) upstream_started: Option<std::time::Instant>,
    /// For the access log: when the request began, the upstream server and its answer time.
    pub(super) started: Instant,
    pub(super) upstream_addr: Option<std::net::SocketAddr>,
    pub(super) upstream_ms: Option<f64>,
    /// The client's address: the peer, or behind a trusted proxy the hop it names.
    pub(super) client_ip: Option<std::net::IpAddr>,
    /// Every server of the route's upstream is down: the client may retry after this many
    /// seconds.
    pub(super) all_down: Option<u64>,
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx {
            request_id: HeaderValue::from_static(""),
            snap: None,
            p: pipeline::State::default(),
            connect_retries: 0,
            connected: false,
            upstream_responded: false,
            rejected: None,
            upstream_started: None,
            started: Instant::now(),
            upstream_addr: None,
            upstream_ms: None,
            client_ip: None,
            all_down: None,
        }
    }
}
