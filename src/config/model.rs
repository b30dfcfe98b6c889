//! The compiled configuration the gateway runs on: one [`Snapshot`] (in one `ArcSwap`), built
//! whole by [`super::compile`] or not at all. The request path reads nothing else.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method};
use pingora::lb::{selection::RoundRobin, LoadBalancer};

use super::file::{self, GroupStatus};
use crate::keys::{key_prefix, KeyHash, KeyMap};
use crate::tenants::GroupId;

/// The built-in tiers, with the Vivreal contract's monthly numbers (GB = 10^9 bytes).
pub const BUILTIN_TIERS: [(&str, u64, u64); 4] = [
    ("free", 1_000, 1_000_000_000),
    ("basic", 50_000, 25_000_000_000),
    ("pro", 500_000, 100_000_000_000),
    ("pro_plus", 2_000_000, 500_000_000_000),
];

/// The most pingora 0.9 can re-send after the gateway read a body (its retry buffer).
pub const MAX_JSON_BODY_LIMIT: u64 = 65_536;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub name: Arc<str>,
    pub api_calls: u64,
    pub cdn_bytes: u64,
    /// Ready-made header values: the name (`X-Vivreal-Tier`) and the `RateLimit-Policy` for
    /// routes that meter calls, bytes, or both.
    pub header: HeaderValue,
    pub policy_calls: HeaderValue,
    pub policy_bytes: HeaderValue,
    pub policy_both: HeaderValue,
    /// Requests per second a group of this tier may send; `None`: no burst limit.
    pub burst_per_second: Option<u32>,
}

impl Tier {
    pub fn new(name: &str, api_calls: u64, cdn_bytes: u64) -> Tier {
        let calls = format!("\"monthly-calls\";q={api_calls};qu=\"requests\"");
        let bytes = format!("\"monthly-bytes\";q={cdn_bytes};qu=\"content-bytes\"");
        let value = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
        Tier {
            name: name.into(),
            api_calls,
            cdn_bytes,
            header: value(name),
            policy_both: value(&format!("{calls}, {bytes}")),
            policy_calls: value(&calls),
            policy_bytes: value(&bytes),
            burst_per_second: None,
        }
    }

    /// The `RateLimit-Policy` value for a route's meters.
    pub fn policy(&self, meters: Meters) -> Option<&HeaderValue> {
        match (meters.calls, meters.bytes) {
            (true, true) => Some(&self.policy_both),
            (true, false) => Some(&self.policy_calls),
            (false, true) => Some(&self.policy_bytes),
            (false, false) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Group {
    pub id: GroupId,
    pub tier: Arc<Tier>,
    pub status: GroupStatus,
    pub overage_billing: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meters {
    pub calls: bool,
    pub bytes: bool,
}

/// `[limits]`, checked and in the units the gateway uses.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub head: vivgate_parse::head::HeadLimits,
    pub head_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub client_write_timeout: Duration,
    pub max_json_body: u64,
    pub max_json_depth: usize,
    pub max_drain_body: u64,
    /// `None`: no limit.
    pub max_requests_per_connection: Option<u32>,
    pub max_connections: usize,
    /// `None`: the failed-authentication limiter is off.
    pub failed_auth: Option<FailedAuthLimit>,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_header_list_bytes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedAuthLimit {
    pub limit: u32,
    pub window: Duration,
    pub block: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        super::compile::limits(std::path::Path::new(""), &file::LimitsSection::default())
            .expect("the default limits are valid")
    }
}

/// The headers a browser script may read on an answer to an allowed origin.
pub const CORS_EXPOSE_HEADERS: &str = "x-request-id, ratelimit, ratelimit-policy, retry-after";

/// `[cors]`, checked, with the answer headers ready.
#[derive(Debug)]
pub struct Cors {
    pub origins: HashSet<String>,
    pub methods: Vec<Method>,
    /// Lower-cased.
    pub headers: Vec<String>,
    pub allow_methods: HeaderValue,
    pub allow_headers: HeaderValue,
    pub max_age: HeaderValue,
}

#[derive(Debug)]
pub struct Route {
    /// The route's path or prefix, as configured (the metrics label).
    pub name: Arc<str>,
    /// Index into [`Snapshot::upstreams`].
    pub upstream: usize,
    pub required_query: Vec<String>,
    pub id_query: Vec<String>,
    pub meters: Meters,
    pub json_body: bool,
    /// `Upgrade` requests (WebSocket) are allowed on this route.
    pub upgrade: bool,
    /// This route's `requests_total{status="200"}` counter, looked up once (the label lookup
    /// hashes both labels under a lock on every request otherwise).
    pub ok_requests: std::sync::OnceLock<prometheus::IntCounter>,
    /// Its series of `vivgate_upstream_response_seconds`, resolved once.
    pub upstream_seconds: std::sync::OnceLock<prometheus::Histogram>,
}

/// All routes of one exact path or prefix, by method.
#[derive(Debug, Default)]
pub struct PathRoutes {
    pub(super) by_method: Vec<(Method, Arc<Route>)>,
    /// The `Allow` header value for a 405.
    pub allow: String,
}

impl PathRoutes {
    pub fn for_method(&self, m: &Method) -> Option<&Arc<Route>> {
        self.by_method.iter().find(|(x, _)| x == m).map(|(_, r)| r)
    }
}

/// Routes: exact paths first, then the longest matching prefix.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub(super) exact: HashMap<String, PathRoutes>,
    /// Sorted longest first.
    pub(super) prefixes: Vec<(String, PathRoutes)>,
}

impl RouteTable {
    /// Number of (method, path or prefix) pairs routed.
    pub fn len(&self) -> usize {
        self.exact
            .values()
            .chain(self.prefixes.iter().map(|(_, r)| r))
            .map(|r| r.by_method.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn lookup(&self, path: &str) -> Option<&PathRoutes> {
        if let Some(r) = self.exact.get(path) {
            return Some(r);
        }
        self.prefixes
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map(|(_, r)| r)
    }
}

pub struct Upstream {
    pub name: String,
    pub lb: Arc<LoadBalancer<RoundRobin>>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// `None`: no active health checks.
    pub health_interval: Option<Duration>,
    /// `Some`: the servers are reached over TLS.
    pub tls: Option<UpstreamTls>,
    pub health: crate::health::ServerHealth,
}

/// `upstreams.<name>.tls`: how the servers' certificates are verified.
pub struct UpstreamTls {
    /// The SNI and verified name of each server, in `lb` address order.
    pub names: Vec<(SocketAddr, String)>,
    /// `ca_file`'s certificates; `None`: the system roots.
    pub ca: Option<Arc<pingora::protocols::tls::CaType>>,
    /// Keeps this upstream's pooled connections apart: pingora's pool key has the address and
    /// SNI but not the CA a connection was verified against.
    pub pool_key: u64,
}

impl UpstreamTls {
    pub fn name(&self, addr: &SocketAddr) -> Option<&str> {
        self.names
            .iter()
            .find(|(a, _)| a == addr)
            .map(|(_, n)| n.as_str())
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish()
    }
}

/// Settings that only take effect at start; a reload that changes them is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupSettings {
    /// `[access_log]`; `None`: no access log (a reload cannot change it).
    pub access_log: Option<crate::access::AccessLogSettings>,
    pub listen: String,
    pub threads: usize,
    pub grace_period_seconds: u64,
    pub usage: UsageSettings,
    /// The admin listener's address, if any.
    pub admin_listen: Option<String>,
    /// `server.h2c`: the plain listener also takes HTTP/2 with prior knowledge.
    pub h2c: bool,
    /// `server.proxy_protocol`: the plain listener expects a PROXY header.
    pub proxy_protocol: bool,
    /// `[[server.tls]]`, one entry per address.
    pub tls_listeners: Vec<TlsListener>,
    /// `server.pid_file` and `server.upgrade_sock`, resolved (defaults under /tmp).
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
}

/// A TLS listener (its certificates are in [`Snapshot::tls_certs`], which a reload may change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListener {
    pub listen: String,
    pub http2: bool,
    pub proxy_protocol: bool,
}

/// Where usage is kept (`[usage]`); fixed at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSettings {
    /// `None`: in memory only (or in Redis, see `redis`). `Some(path)`: the embedded store's
    /// file (resolved).
    pub path: Option<PathBuf>,
    /// `store = "redis"`: the shared store's settings.
    pub redis: Option<RedisSettings>,
    pub flush_interval: Duration,
    pub retention_months: u32,
}

/// Everything the request path needs, compiled from both files. Immutable; a reload builds a
/// new one and swaps it in whole.
#[derive(Debug)]
pub struct Snapshot {
    pub startup: StartupSettings,
    pub config_path: PathBuf,
    pub tenants_path: PathBuf,
    pub limits: Limits,
    /// Where the tenants came from: a file, Redis (at a version), or the disk copy.
    pub tenants_source: crate::fleet::TenantsSource,
    /// `tenants = "redis://…"`: the URL the tenant table follows.
    pub tenants_url: Option<String>,
    pub tiers: BTreeMap<String, Arc<Tier>>,
    pub groups: Vec<Group>,
    pub keys: KeyMap<u32>,
    pub routes: RouteTable,
    pub upstreams: Vec<Upstream>,
    /// The admin bearer token's hash; `None`: the admin API is open (loopback only).
    pub admin_token: Option<KeyHash>,
    /// `keys.checksum_prefixes`: keys with one of these prefixes must carry a valid checksum.
    pub key_prefixes: Vec<Box<[u8]>>,
    /// `admin.hosts`, lowercase: names the admin listener answers to besides its own address
    /// and `localhost`.
    pub admin_hosts: Vec<Box<str>>,
    /// `[cors]`; `None`: no CORS handling.
    pub cors: Option<Cors>,
    /// `server.trusted_proxies`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The certificates of each TLS listener, by address.
    pub tls_certs: Arc<crate::tls::Certificates>,
}

impl Snapshot {
    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.iter().find(|g| &*g.id == id)
    }

    /// The group a key hash belongs to.
    pub fn group_for(&self, hash: &KeyHash) -> Option<&Group> {
        self.keys
            .get(&key_prefix(hash))
            .map(|&i| &self.groups[i as usize])
    }
}

/// The most months of usage retention accepted (a century).
pub const MAX_RETENTION_MONTHS: u32 = 1200;

/// What to do when Redis cannot answer within the store timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutagePolicy {
    /// Keep admitting up to the outage allowance per instance, counting locally.
    Allow,
    /// Refuse with 503 once the leases held are spent.
    Deny,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedisSettings {
    pub url: String,
    pub timeout: Duration,
    pub flush_interval: Duration,
    pub policy: OutagePolicy,
    /// Per-tier policy overrides, by tier name.
    pub tier_policy: Vec<(String, OutagePolicy)>,
    /// Fraction of a quota one instance may admit while Redis is unavailable (allow policy).
    pub outage_allowance: f64,
    pub lease_max: u64,
    pub lease_idle: Duration,
    pub lease_ttl: Duration,
    /// Months a finished month stays readable (from the archive once its key expired).
    pub retention_months: u32,
    /// Where the last overrides read from Redis are kept (`state/overrides-snapshot.json`
    /// beside the config).
    pub overrides_copy: std::path::PathBuf,
}

// the allowance is checked to be within 0..=1 at load, never NaN
impl Eq for RedisSettings {}
