//! The file formats, exactly as written in TOML. Never used on the request path: [`super::compile`]
//! turns them into a [`super::Snapshot`]. Unknown keys are errors.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Path of the tenants file, relative to the config file.
    pub tenants: String,
    /// Where state is kept (the embedded usage store, the fleet's tenants copy, the fleet
    /// overrides copy), relative to the config file. Default `state`.
    pub state_dir: Option<String>,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub usage: UsageSection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub keys: KeysSection,
    /// Browser clients: answered preflights and CORS headers. Absent: no CORS handling.
    pub cors: Option<CorsSection>,
    /// One JSON line per request. Absent: no access log.
    pub access_log: Option<AccessLogSection>,
    #[serde(default)]
    pub tiers: BTreeMap<String, TierSection>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSection>,
    #[serde(default)]
    pub routes: Vec<RouteSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Seconds a graceful stop waits for in-flight requests.
    #[serde(default = "default_grace")]
    pub grace_period_seconds: u64,
    /// CIDRs of load balancers in front: behind them the client is the rightmost untrusted
    /// `X-Forwarded-For` hop.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The plain listener also speaks HTTP/2 with prior knowledge (h2c).
    #[serde(default)]
    pub h2c: bool,
    /// Every connection to the plain listener starts with a PROXY protocol header (v1 or v2),
    /// accepted only from `trusted_proxies`.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// TLS listeners. Entries with the same `listen` are one listener with several
    /// certificates, chosen by SNI; the first is the default.
    #[serde(default)]
    pub tls: Vec<TlsSection>,
    /// pingora's pid file; default `/tmp/vivgate-<listen>.pid`. Relative to the config file.
    pub pid_file: Option<String>,
    /// The socket a new process (`-u`) takes the listeners over through; default
    /// `/tmp/vivgate-<listen>-upgrade.sock`. Relative to the config file.
    pub upgrade_sock: Option<String>,
}

/// `[[server.tls]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub listen: String,
    /// PEM certificate chain, leaf first; relative to the config file.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1); relative to the config file.
    pub key: String,
    /// Offer HTTP/2 by ALPN (besides HTTP/1.1).
    #[serde(default = "yes")]
    pub http2: bool,
    /// Every connection starts with a PROXY protocol header, before the TLS handshake.
    #[serde(default)]
    pub proxy_protocol: bool,
}

fn yes() -> bool {
    true
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: default_listen(),
            threads: default_threads(),
            grace_period_seconds: default_grace(),
            trusted_proxies: Vec::new(),
            h2c: false,
            proxy_protocol: false,
            tls: Vec::new(),
            pid_file: None,
            upgrade_sock: None,
        }
    }
}

fn default_listen() -> String {
    "0.0.0.0:8080".into()
}
fn default_threads() -> usize {
    2
}
fn default_grace() -> u64 {
    5
}

/// Edge limits. Every default is documented, with its reason, in the README's security section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Request line, headers and blank line, in bytes; one more is a 431.
    pub max_head_bytes: usize,
    /// Header lines; one more is a 431.
    pub max_header_lines: usize,
    /// The whole head must arrive within this time of the connection (or of its first byte on
    /// a reused connection); else a 408.
    pub head_timeout_ms: u64,
    /// How long an idle keep-alive connection waits for its next request.
    pub keepalive_timeout_ms: u64,
    /// The longest pause while a request body is arriving.
    pub body_idle_timeout_ms: u64,
    /// The longest a write to the client may wait (a client that stops reading).
    pub client_write_timeout_ms: u64,
    /// Largest JSON body accepted on `json_body` routes, in bytes (at most 65,536).
    pub max_json_body: u64,
    /// Deepest nesting of arrays and objects in a JSON body.
    pub max_json_depth: usize,
    /// Largest unread request body the gateway reads and discards after a rejection to keep the
    /// connection alive; beyond it the connection is closed instead.
    pub max_drain_body: u64,
    /// Requests served on one connection before it is closed (0: no limit).
    pub max_requests_per_connection: u32,
    /// Client connections open at once, per process; one more gets a 503 and is closed.
    pub max_connections: usize,
    /// 401s from one client address within `failed_auth_window_ms` before that address is
    /// refused with 429s for `failed_auth_block_ms` (0: off).
    pub failed_auth_limit: u32,
    pub failed_auth_window_ms: u64,
    pub failed_auth_block_ms: u64,
    /// HTTP/2: streams open at once on one connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: the largest header list of one request, in bytes (HPACK-decoded).
    pub h2_max_header_list_bytes: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_head_bytes: 32_768,
            max_header_lines: 100,
            head_timeout_ms: 10_000,
            keepalive_timeout_ms: 60_000,
            body_idle_timeout_ms: 30_000,
            client_write_timeout_ms: 30_000,
            max_json_body: 65_536,
            max_json_depth: 64,
            max_drain_body: 65_536,
            max_requests_per_connection: 10_000,
            max_connections: 10_000,
            failed_auth_limit: 20,
            failed_auth_window_ms: 10_000,
            failed_auth_block_ms: 60_000,
            h2_max_concurrent_streams: 100,
            h2_max_header_list_bytes: 65_536,
        }
    }
}

/// `[access_log]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    /// `"stdout"` or a file path (relative to the config file).
    #[serde(default = "default_access_path")]
    pub path: String,
    /// Log the query string too (it may hold ids a tenant considers private).
    #[serde(default)]
    pub include_query: bool,
}

fn default_access_path() -> String {
    "stdout".into()
}

/// `[cors]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSection {
    /// Exact origins (`https://app.example.com`); the same list for every group, since a
    /// preflight carries no key.
    pub allowed_origins: Vec<String>,
    /// Methods a preflight may ask for; default: GET, HEAD, POST, PUT, PATCH, DELETE.
    pub allowed_methods: Option<Vec<String>>,
    /// Request headers a preflight may ask for; default: authorization, content-type,
    /// x-request-id.
    pub allowed_headers: Option<Vec<String>>,
    #[serde(default = "default_cors_max_age")]
    pub max_age_seconds: u64,
}

fn default_cors_max_age() -> u64 {
    600
}

/// API keys minted by `vivgate keys new`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    /// Prefixes whose keys carry a checksum: a key with one and a wrong checksum is refused
    /// (401) before any lookup. `[]`: no key is checked.
    #[serde(default = "default_checksum_prefixes")]
    pub checksum_prefixes: Vec<String>,
}

impl Default for KeysSection {
    fn default() -> Self {
        KeysSection {
            checksum_prefixes: default_checksum_prefixes(),
        }
    }
}

fn default_checksum_prefixes() -> Vec<String> {
    vec![crate::keys::checksum::DEFAULT_PREFIX.to_string()]
}

/// The operator API. No `listen`: no admin listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub listen: Option<String>,
    /// `sha256:<hex>` of the admin bearer token (from `vivgate hash-key`).
    pub token: Option<String>,
    /// Host names the admin listener answers to besides its own address and `localhost`
    /// (a name it is reached by through DNS or a proxy).
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageSection {
    /// `"embedded"` (durable, the default) or `"memory"` (lost on restart).
    #[serde(default = "default_store")]
    pub store: String,
    /// The embedded store's file, relative to the config file. Default: `usage.redb` in the
    /// state directory.
    pub path: Option<String>,
    #[serde(default = "default_flush_interval")]
    pub flush_interval_ms: u64,
    /// Months of usage kept, the current one included.
    #[serde(default = "default_retention")]
    pub retention_months: u32,
    /// `store = "redis"`: the shared store.
    #[serde(default = "default_redis_url")]
    pub redis_url: String,
    /// The longest the gateway waits for Redis on one call.
    #[serde(default = "default_store_timeout")]
    pub store_timeout_ms: u64,
    /// `"allow"` or `"deny"`: what happens to calls when Redis does not answer.
    #[serde(default = "default_outage_policy")]
    pub on_store_unavailable: String,
    /// Fraction of a group's quota one instance may admit while Redis is unavailable (allow).
    #[serde(default = "default_outage_allowance")]
    pub outage_allowance: f64,
    /// Largest quota lease an instance takes at once.
    #[serde(default = "default_lease_max")]
    pub lease_max: u64,
    /// An unused lease goes back to Redis after this long without a request of its group.
    #[serde(default = "default_lease_idle")]
    pub lease_idle_ms: u64,
    /// A lease not renewed for this long (its instance died) is reclaimed by the others.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_ms: u64,
}

fn default_redis_url() -> String {
    "redis://127.0.0.1:6379/0".into()
}
fn default_store_timeout() -> u64 {
    50
}
fn default_outage_policy() -> String {
    "allow".into()
}
fn default_outage_allowance() -> f64 {
    0.01
}
fn default_lease_max() -> u64 {
    100
}
fn default_lease_idle() -> u64 {
    1_000
}
fn default_lease_ttl() -> u64 {
    10_000
}

impl Default for UsageSection {
    fn default() -> Self {
        UsageSection {
            store: default_store(),
            path: None,
            flush_interval_ms: default_flush_interval(),
            retention_months: default_retention(),
            redis_url: default_redis_url(),
            store_timeout_ms: default_store_timeout(),
            on_store_unavailable: default_outage_policy(),
            outage_allowance: default_outage_allowance(),
            lease_max: default_lease_max(),
            lease_idle_ms: default_lease_idle(),
            lease_ttl_ms: default_lease_ttl(),
        }
    }
}

fn default_store() -> String {
    "embedded".into()
}
fn default_flush_interval() -> u64 {
    1_000
}
fn default_retention() -> u32 {
    13
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSection {
    pub api_calls: Option<u64>,
    pub cdn_bytes: Option<u64>,
    /// Requests per second a group of this tier may send (a short-window burst limit; 429).
    pub burst_per_second: Option<u32>,
    /// Overrides `usage.on_store_unavailable` for this tier.
    pub on_store_unavailable: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub servers: Vec<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_io_timeout")]
    pub read_timeout_ms: u64,
    #[serde(default = "default_io_timeout")]
    pub write_timeout_ms: u64,
    /// 0 turns active health checks off.
    #[serde(default = "default_health_interval")]
    pub health_check_interval_ms: u64,
    /// Connect to the servers over TLS, verifying their certificates.
    #[serde(default)]
    pub tls: bool,
    /// The name sent as SNI and verified in the servers' certificates; default: the host part of
    /// each server.
    pub sni: Option<String>,
    /// PEM file of the CAs the servers' certificates are verified against, instead of the
    /// system roots; relative to the config file.
    pub ca_file: Option<String>,
    /// Consecutive connect failures that mark a server down (0: no passive health).
    #[serde(default = "default_passive_failures")]
    pub passive_failures: u32,
    /// With active health checks off, how long a server marked down is skipped.
    #[serde(default = "default_passive_down")]
    pub passive_down_ms: u64,
}

fn default_passive_failures() -> u32 {
    3
}
fn default_passive_down() -> u64 {
    10_000
}

fn default_connect_timeout() -> u64 {
    2_000
}
fn default_io_timeout() -> u64 {
    30_000
}
fn default_health_interval() -> u64 {
    5_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub path: Option<String>,
    pub prefix: Option<String>,
    pub methods: Vec<String>,
    pub upstream: String,
    #[serde(default)]
    pub required_query: Vec<String>,
    #[serde(default)]
    pub id_query: Vec<String>,
    #[serde(default)]
    pub meter: MeterSpec,
    #[serde(default)]
    pub json_body: bool,
    /// Allow `Upgrade` requests (WebSocket) on this route; they escape byte metering.
    #[serde(default)]
    pub upgrade: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MeterSpec {
    One(String),
    Many(Vec<String>),
}

impl Default for MeterSpec {
    fn default() -> Self {
        MeterSpec::One("calls".into())
    }
}

pub use crate::tenants::{GroupSection, GroupStatus, TenantsFile};
