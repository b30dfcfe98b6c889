//! One request's life after the checks, whichever transport carries it (pingora's HTTP/2
//! proxy, or vivgate's own HTTP/1 path in [`crate::forward`]): the server it goes to, the
//! headers added both ways, what is charged when forwarding fails, and the metrics, the
//! access log and the bandwidth metering at its end. Each rule is written once, here.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};

use crate::clock::Month;
use crate::config::{Cors, Group, Snapshot, Upstream};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::pipeline;
use crate::respond::Reply;
use crate::usage::UsageStore;

pub const X_REQUEST_ID: &str = "x-request-id";

/// Hop-by-hop headers a backend response must not pass on (the transport writes its own
/// `Connection` and framing headers for the client connection).
pub const HOP_BY_HOP: [&str; 5] = ["keep-alive", "proxy-connection", "te", "trailer", "upgrade"];

/// Client headers that never reach the backend: the gateway's own identity headers (with
/// either separator), and headers some frameworks let override the path, the method or the
/// client's identity (`X-Original-URL` on IIS and Symfony, `X-HTTP-Method-Override` on Express
/// and Laravel, `Forwarded`, `X-Real-IP`, …).
pub const STRIPPED: [&str; 14] = [
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-prefix",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether a client header never reaches the backend ([`STRIPPED`], `X-Vivreal-*`, and the
/// `_` spellings of `X-Request-Id` and `X-Forwarded-For`), by its name in any case and with any
/// `_` read as `-`: some backends (CGI, PHP, Rack) read `X_Forwarded_For` as
/// `X-Forwarded-For`, and would see the client's value beside the gateway's.
pub fn is_stripped_header(name: &[u8]) -> bool {
    let is = |s: &str| same_name(name, s);
    (name.len() >= 10 && same_name(&name[..10], "x-vivreal-"))
        || STRIPPED.iter().any(|s| is(s))
        || (name.contains(&b'_') && (is(X_REQUEST_ID) || is("x-forwarded-for")))
}

/// `name` spells `lower` (a lower-case name) in any case, with any `_` read as `-`.
fn same_name(name: &[u8], lower: &str) -> bool {
    name.len() == lower.len()
        && name.iter().zip(lower.bytes()).all(|(a, b)| {
            let a = if *a == b'_' {
                b'-'
            } else {
                a.to_ascii_lowercase()
            };
            a == b
        })
}

/// How a header from [`Exchange::answer_headers`] goes into an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Replaces any header of that name.
    Insert,
    /// Added beside any others of that name.
    Append,
}

/// Where forwarding a request went and what it cost, from the checks to the log line.
pub struct Exchange {
    pub request_id: HeaderValue,
    /// The snapshot a forwarded request was checked against.
    pub snap: Option<Arc<Snapshot>>,
    /// What the checks learned: identity, route, quota taken, CORS.
    pub p: pipeline::State,
    /// Connect attempts that failed and were retried on another server.
    pub connect_retries: u8,
    pub connected: bool,
    pub upstream_responded: bool,
    /// Why the gateway answered by itself, for the metrics.
    pub rejected: Option<&'static str>,
    /// When an upstream server was chosen (the latency histogram's start).
    pub upstream_started: Option<Instant>,
    /// For the access log: when the request began, the upstream server and its answer time.
    pub started: Instant,
    pub upstream_addr: Option<SocketAddr>,
    pub upstream_ms: Option<f64>,
    /// The client's address: the peer, or behind a trusted proxy the hop it names.
    pub client_ip: Option<IpAddr>,
    /// Every server of the route's upstream is down: the client may retry after this many
    /// seconds.
    pub all_down: Option<u64>,
    /// The backend's answer ended early (closed, timed out or badly framed mid-body) after its
    /// head had gone to the client: the client connection was closed, never completed.
    pub answer_cut: bool,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange {
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
            answer_cut: false,
        }
    }
}

/// A server chosen for one attempt.
pub struct Server<'u> {
    pub addr: pingora::protocols::l4::socket::SocketAddr,
    /// The name to send as SNI and verify, for a TLS upstream.
    pub tls_name: Option<&'u str>,
}

impl Server<'_> {
    /// The peer to connect to, with the upstream's timeouts and TLS settings.
    pub fn peer(&self, up: &Upstream) -> pingora::upstreams::peer::HttpPeer {
        use pingora::upstreams::peer::HttpPeer;
        let mut peer = match (&up.tls, self.tls_name) {
            (Some(tls), Some(name)) => {
                let mut peer = HttpPeer::new(self.addr.clone(), true, name.to_string());
                peer.options.ca = tls.ca.clone();
                peer.group_key = tls.pool_key;
                peer
            }
            // `select_server` gives every server of a TLS upstream its name: pingora would
            // skip verification for an empty one
            _ => HttpPeer::new(self.addr.clone(), false, String::new()),
        };
        peer.options.connection_timeout = Some(up.connect_timeout);
        peer.options.total_connection_timeout = Some(up.connect_timeout);
        peer.options.read_timeout = Some(up.read_timeout);
        peer.options.write_timeout = Some(up.write_timeout);
        peer
    }
}

/// How a request ended, as the transport saw it.
pub struct Done<'a> {
    pub method: &'a str,
    /// The path as sent (the canonical one is logged when the checks made one).
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The status written to the client; `None` when nothing was.
    pub status: Option<u16>,
    pub bytes_in: usize,
    /// Response body bytes sent to the client.
    pub bytes_out: usize,
}

impl Exchange {
    /// The upstream of the request's route (after [`Outcome::Forward`](pipeline::Outcome)).
    pub fn upstream(&self) -> Option<&Upstream> {
        let (snap, route) = (self.snap.as_ref()?, self.p.route.as_ref()?);
        Some(&snap.upstreams[route.upstream])
    }

    /// The next server for an attempt: round robin over the servers neither the load balancer
    /// nor the passive health marks down. `None` when every one is down
    /// ([`Exchange::all_down`] says how long to wait).
    pub fn select_server<'u>(&mut self, up: &'u Upstream) -> Option<Server<'u>> {
        // each attempt starts unconnected: what is charged depends on the last one
        self.connected = false;
        self.upstream_started = Some(Instant::now());
        let health = &up.health;
        let Some(backend) = up.lb.select_with(b"", 256, |b, healthy| {
            healthy && b.addr.as_inet().is_none_or(|a| !health.is_down(a))
        }) else {
            let wait = up.health_interval.or(health.down_for()).unwrap_or_default();
            self.all_down = Some(wait.as_secs().max(1));
            return None;
        };
        self.upstream_addr = backend.addr.as_inet().copied();
        let tls_name = match &up.tls {
            Some(tls) => Some(self.upstream_addr.and_then(|a| tls.name(&a))?),
            None => None,
        };
        Some(Server {
            addr: backend.addr,
            tls_name,
        })
    }

    /// A connect attempt failed: counts it against the server's passive health, and says
    /// whether to retry once on another server (nothing was sent, so any method is safe).
    pub fn connect_failed(&mut self, gw: &Gateway, up: &Upstream) -> bool {
        if let Some(addr) = &self.upstream_addr {
            if up.health.failed(addr) {
                tracing::warn!(upstream = %up.name, server = %addr, "server marked down after consecutive connect failures");
                gw.metrics().servers_marked_down.inc();
            }
        }
        let servers = up.lb.backends().get_backend().len();
        if self.connect_retries == 0 && servers > 1 {
            self.connect_retries += 1;
            true
        } else {
            false
        }
    }

    /// The connection to the server is up: from here the call is charged.
    pub fn connected_to(&mut self, up: &Upstream) {
        self.connected = true;
        if let Some(addr) = &self.upstream_addr {
            up.health.connected(addr);
        }
    }

    /// The backend's response head arrived: its latency is observed.
    pub fn upstream_answered(&mut self, gw: &Gateway) {
        self.upstream_responded = true;
        if let Some(t) = self.upstream_started {
            let secs = t.elapsed().as_secs_f64();
            if let Some(r) = &self.p.route {
                r.upstream_seconds
                    .get_or_init(|| gw.metrics().upstream_seconds.with_label_values(&[&r.name]))
                    .observe(secs);
            }
            self.upstream_ms = Some(secs * 1000.0);
        }
    }

    /// Forwarding failed with `err` (`None`: the client is gone): the call is refunded when the
    /// backend was never reached, and the answer is the envelope of the error, or of every
    /// server being down.
    pub fn forwarding_failed(
        &mut self,
        gw: &Gateway,
        err: Option<GatewayError>,
    ) -> Option<GatewayError> {
        let err = match self.all_down {
            Some(secs) => Some(GatewayError::UpstreamsDown(secs)),
            None => err,
        };
        self.rejected = Some(err.as_ref().map_or("client_gone", GatewayError::reason));
        if !self.connected {
            if let (Some(take), Some(group), Some(month)) =
                (self.p.take.take(), &self.p.group, self.p.month)
            {
                gw.store().refund_call(&group.id, month, take);
            }
        }
        err
    }

    /// The headers a forwarded request gets from the gateway, replacing any of those names:
    /// the trusted identity (`X-Vivreal-Group-Id`, `X-Vivreal-Tier`), the request id and
    /// `X-Forwarded-For`. `peer`: the connection's address, when the checks found no client.
    pub fn forward_headers(&self, peer: Option<IpAddr>, mut f: impl FnMut(&'static str, &[u8])) {
        if let Some(g) = &self.p.group {
            // group ids are checked at load to be [A-Za-z0-9._-], always a valid header value
            f("x-vivreal-group-id", g.id.as_bytes());
            f("x-vivreal-tier", g.tier.header.as_bytes());
        }
        f(X_REQUEST_ID, self.request_id.as_bytes());
        if let Some(ip) = self.client_ip.or(peer) {
            // formatted on the stack: an IPv6 address is at most 45 characters
            use std::io::Write as _;
            let mut buf = [0u8; 48];
            let mut w = &mut buf[..];
            let _ = write!(w, "{ip}");
            let len = 48 - w.len();
            f("x-forwarded-for", &buf[..len]);
        }
    }

    /// The headers every answer gets from the gateway, forwarded or its own: the request id,
    /// the RateLimit headers once a route matched (`served`: the body size, when known), and
    /// the CORS headers.
    pub fn answer_headers(
        &self,
        gw: &Gateway,
        served: Option<u64>,
        mut f: impl FnMut(HeaderName, HeaderValue, Put),
    ) {
        f(
            HeaderName::from_static(X_REQUEST_ID),
            self.request_id.clone(),
            Put::Insert,
        );
        if let Some((policy, state)) =
            pipeline::quota::rate_limit_headers(gw.store(), &self.p, served)
        {
            f(
                HeaderName::from_static("ratelimit-policy"),
                policy,
                Put::Insert,
            );
            f(HeaderName::from_static("ratelimit"), state, Put::Insert);
        }
        if self.p.cors_vary {
            f(
                header::VARY,
                HeaderValue::from_static("Origin"),
                Put::Append,
            );
        }
        if let Some(origin) = &self.p.cors_origin {
            f(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                origin.clone(),
                Put::Insert,
            );
            f(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(crate::config::CORS_EXPOSE_HEADERS),
                Put::Insert,
            );
        }
    }

    /// The envelope for `e`; a 402 waits until the month of the quota check ends.
    pub fn error_reply(&self, e: &GatewayError) -> Reply {
        Reply::error(e, || {
            let month = self.p.month.unwrap_or(Month::containing(self.p.now_ms));
            month.seconds_until_end(self.p.now_ms)
        })
    }

    /// An allowed preflight: 204 with the CORS headers, no key needed, nothing metered. (The
    /// transport adds only the request id.)
    pub fn preflight_reply(&self, cors: &Cors) -> Reply {
        let mut reply = Reply::other(204, "", Vec::new());
        if let Some(origin) = &self.p.cors_origin {
            reply = reply.with(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        }
        reply
            .with(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                cors.allow_methods.clone(),
            )
            .with(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                cors.allow_headers.clone(),
            )
            .with(header::ACCESS_CONTROL_MAX_AGE, cors.max_age.clone())
            .with(header::VARY, HeaderValue::from_static("Origin"))
    }

    /// Counts, logs and meters the request at its end: the requests and rejections metrics,
    /// the access log line, and on a bandwidth-metered route the response body bytes actually
    /// sent. (A call whose backend was never reached was refunded in
    /// [`Exchange::forwarding_failed`].)
    pub fn finish(&self, gw: &Gateway, done: &Done) {
        let metrics = gw.metrics();
        let status = done.status.unwrap_or(200);
        match &self.p.route {
            Some(r) if status == 200 => r
                .ok_requests
                .get_or_init(|| metrics.requests.with_label_values(&[&r.name, "200"]))
                .inc(),
            r => {
                let route_name = r.as_ref().map_or("none", |r| &*r.name);
                let mut code = itoa::Buffer::new();
                metrics
                    .requests
                    .with_label_values(&[route_name, code.format(status)])
                    .inc()
            }
        }
        if let Some(reason) = self.rejected {
            metrics.rejections.with_label_values(&[reason]).inc();
        }
        if self.answer_cut {
            metrics.answers_cut.inc();
        }
        if let Some(log) = gw.access_log() {
            log.write(&crate::access::Entry {
                time_ms: gw.clock().now_ms(),
                request_id: self.request_id.to_str().unwrap_or(""),
                client: self.client_ip,
                method: done.method,
                path: self.p.canonical_path.as_deref().unwrap_or(done.path),
                query: done.query,
                route: self.p.route.as_ref().map(|r| &*r.name),
                group: self.p.group.as_ref().map(|g| &*g.id),
                tier: self.p.group.as_ref().map(|g| &*g.tier.name),
                status: done.status.unwrap_or(0),
                reason: self.rejected,
                upstream: self.upstream_addr,
                upstream_ms: self.upstream_ms,
                total_ms: self.started.elapsed().as_secs_f64() * 1000.0,
                bytes_in: done.bytes_in,
                bytes_out: done.bytes_out,
            });
        }
        let (Some(group), Some(route), Some(month)) = (&self.p.group, &self.p.route, self.p.month)
        else {
            return;
        };
        if route.meters.bytes && self.upstream_responded {
            gw.store().add_bytes(
                &group.id,
                month,
                done.bytes_out as u64,
                group.tier.cdn_bytes,
                group.overage_billing,
            );
        }
        tracing::debug!(
            request_id = self.request_id.to_str().unwrap_or(""),
            group = %group.id,
            status = done.status.unwrap_or(0),
            "request done"
        );
    }
}

/// `GET /v1/usage`: the group's usage and limits this month, in the success envelope.
pub fn own_usage_reply(gw: &Gateway, group: &Group) -> Reply {
    let now = gw.clock().now_ms();
    let month = Month::containing(now);
    let u = gw.store().usage(&group.id, month);
    let data = serde_json::json!({
        "group": &*group.id,
        "tier": &*group.tier.name,
        "status": gw.overrides().status_of(group),
        "overage_billing": group.overage_billing,
        "month": month.to_string(),
        "resets_at": pipeline::quota::reset_at(month),
        "calls": u.calls,
        "calls_limit": group.tier.api_calls,
        "calls_overage": u.calls_overage,
        "bytes": u.bytes,
        "bytes_limit": group.tier.cdn_bytes,
        "bytes_overage": u.bytes_overage,
    });
    Reply::success(&data).with(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))
}
