//! Configuration: the TOML files ([`file`]) and the compiled runtime [`Snapshot`] the request path
//! reads. Loading validates everything and either yields a whole snapshot or a [`ConfigError`]
//! naming the file and the field path (`routes[2].upstream: unknown upstream "cdnn"`).

pub mod compact;
pub mod file;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method};
use pingora::lb::{health_check::TcpHealthCheck, selection::RoundRobin, LoadBalancer};
use serde::de::DeserializeOwned;

pub use file::GroupStatus;
use file::{ConfigFile, MeterSpec, TenantsFile};

use crate::keys::{key_prefix, parse_key_hash, KeyHash, KeyMap};
use crate::usage::GroupId;

/// A config or tenants file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Field path such as `routes[2].upstream`; empty when the whole file is at fault.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.field,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

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
        compile_limits(Path::new(""), &file::LimitsSection::default())
            .expect("the default limits are valid")
    }
}

fn compile_limits(cfg: &Path, l: &file::LimitsSection) -> Result<Limits, ConfigError> {
    let range = |field: &str, v: u64, lo: u64, hi: u64, why: &str| {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(err(
                cfg,
                format!("limits.{field}"),
                format!("must be between {lo} and {hi}{why}"),
            ))
        }
    };
    range(
        "max_head_bytes",
        l.max_head_bytes as u64,
        1_024,
        1_048_576,
        "",
    )?;
    range(
        "max_header_lines",
        l.max_header_lines as u64,
        8,
        vivgate_parse::head::MAX_HEADERS_CAP as u64,
        "",
    )?;
    range("head_timeout_ms", l.head_timeout_ms, 100, 600_000, "")?;
    range(
        "keepalive_timeout_ms",
        l.keepalive_timeout_ms,
        100,
        3_600_000,
        "",
    )?;
    range(
        "body_idle_timeout_ms",
        l.body_idle_timeout_ms,
        100,
        600_000,
        "",
    )?;
    range(
        "max_json_body",
        l.max_json_body,
        1,
        MAX_JSON_BODY_LIMIT,
        " (the most pingora can re-send after the body was validated)",
    )?;
    range(
        "max_json_depth",
        l.max_json_depth as u64,
        1,
        128,
        " (serde_json's own recursion limit)",
    )?;
    range(
        "client_write_timeout_ms",
        l.client_write_timeout_ms,
        100,
        600_000,
        "",
    )?;
    range(
        "max_connections",
        l.max_connections as u64,
        1,
        10_000_000,
        "",
    )?;
    range(
        "h2_max_concurrent_streams",
        l.h2_max_concurrent_streams as u64,
        1,
        10_000,
        "",
    )?;
    range(
        "h2_max_header_list_bytes",
        l.h2_max_header_list_bytes as u64,
        1_024,
        1_048_576,
        "",
    )?;
    if l.failed_auth_limit > 0 {
        range(
            "failed_auth_window_ms",
            l.failed_auth_window_ms,
            100,
            86_400_000,
            "",
        )?;
        range(
            "failed_auth_block_ms",
            l.failed_auth_block_ms,
            100,
            86_400_000,
            "",
        )?;
    }
    Ok(Limits {
        head: vivgate_parse::head::HeadLimits {
            max_bytes: l.max_head_bytes,
            max_headers: l.max_header_lines,
        },
        head_timeout: Duration::from_millis(l.head_timeout_ms),
        keepalive_timeout: Duration::from_millis(l.keepalive_timeout_ms),
        body_idle_timeout: Duration::from_millis(l.body_idle_timeout_ms),
        client_write_timeout: Duration::from_millis(l.client_write_timeout_ms),
        max_json_body: l.max_json_body,
        max_json_depth: l.max_json_depth,
        max_drain_body: l.max_drain_body,
        max_requests_per_connection: (l.max_requests_per_connection > 0)
            .then_some(l.max_requests_per_connection),
        max_connections: l.max_connections,
        failed_auth: (l.failed_auth_limit > 0).then(|| FailedAuthLimit {
            limit: l.failed_auth_limit,
            window: Duration::from_millis(l.failed_auth_window_ms),
            block: Duration::from_millis(l.failed_auth_block_ms),
        }),
        h2_max_concurrent_streams: l.h2_max_concurrent_streams,
        h2_max_header_list_bytes: l.h2_max_header_list_bytes,
    })
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

fn compile_cors(cfg: &Path, c: &file::CorsSection) -> Result<Cors, ConfigError> {
    let mut origins = HashSet::new();
    for (i, o) in c.allowed_origins.iter().enumerate() {
        // no pattern: `*` anywhere would be a literal that no browser sends
        let ok = (o.starts_with("https://") || o.starts_with("http://"))
            && !o.ends_with('/')
            && !o.contains('*')
            && o.bytes().all(|b| b.is_ascii_graphic())
            && o.split("://")
                .nth(1)
                .is_some_and(|h| !h.is_empty() && !h.contains('/'));
        if !ok {
            return Err(err(
                cfg,
                format!("cors.allowed_origins[{i}]"),
                format!("{o:?}: an origin is scheme://host[:port], exactly as browsers send it (no wildcards)"),
            ));
        }
        origins.insert(o.clone());
    }
    let methods: Vec<Method> = match &c.allowed_methods {
        None => ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
            .iter()
            .map(|m| Method::from_bytes(m.as_bytes()).expect("valid method"))
            .collect(),
        Some(list) => {
            let mut out = Vec::new();
            for (i, m) in list.iter().enumerate() {
                let parsed = Method::from_bytes(m.as_bytes())
                    .ok()
                    .filter(|_| m.bytes().all(|b| b.is_ascii_uppercase()))
                    .ok_or_else(|| {
                        err(
                            cfg,
                            format!("cors.allowed_methods[{i}]"),
                            format!("{m:?} is not an upper-case HTTP method"),
                        )
                    })?;
                out.push(parsed);
            }
            out
        }
    };
    let headers: Vec<String> = match &c.allowed_headers {
        None => vec![
            "authorization".into(),
            "content-type".into(),
            "x-request-id".into(),
        ],
        Some(list) => {
            for (i, h) in list.iter().enumerate() {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    return Err(err(
                        cfg,
                        format!("cors.allowed_headers[{i}]"),
                        format!("{h:?} is not a header name"),
                    ));
                }
            }
            list.iter().map(|h| h.to_ascii_lowercase()).collect()
        }
    };
    let value = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""));
    Ok(Cors {
        allow_methods: value(
            methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        allow_headers: value(headers.join(", ")),
        max_age: value(c.max_age_seconds.to_string()),
        origins,
        methods,
        headers,
    })
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
}

/// All routes of one exact path or prefix, by method.
#[derive(Debug, Default)]
pub struct PathRoutes {
    by_method: Vec<(Method, Arc<Route>)>,
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
    exact: HashMap<String, PathRoutes>,
    /// Sorted longest first.
    prefixes: Vec<(String, PathRoutes)>,
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
    pub redis: Option<crate::redis_store::RedisSettings>,
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
    /// `[cors]`; `None`: no CORS handling.
    pub cors: Option<Cors>,
    /// `server.trusted_proxies`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The certificates of each TLS listener, by address.
    pub tls_certs: crate::tls::Certificates,
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

fn err(file: &Path, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        field: field.into(),
        message: message.into(),
    }
}

fn parse_toml<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let line = inner
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let message = match line {
            Some(l) => format!("{} (line {l})", inner.message().trim_end()),
            None => inner.message().trim_end().to_string(),
        };
        err(
            file,
            if field == "." { String::new() } else { field },
            message,
        )
    })
}

fn read(file: &Path) -> Result<String, ConfigError> {
    let cannot = |e: std::io::Error| err(file, "", format!("cannot read: {e}"));
    if !crate::pace::enabled() {
        return std::fs::read_to_string(file).map_err(cannot);
    }
    // a paced reload reads a large tenants file 64 KiB at a time (each read faults in its
    // pages, in the kernel, where the reload cannot rest)
    use std::io::Read;
    let mut f = std::fs::File::open(file).map_err(cannot)?;
    let len = f.metadata().map(|m| m.len() as usize).unwrap_or(0);
    let mut bytes = Vec::with_capacity(len + 1);
    // checked as UTF-8 as it arrives (a whole-file check is one long burst): valid up to here
    let mut checked = 0;
    let not_utf8 = || err(file, "", "cannot read: stream did not contain valid UTF-8");
    loop {
        let n = (&mut f)
            .take(1 << 16)
            .read_to_end(&mut bytes)
            .map_err(cannot)?;
        match std::str::from_utf8(&bytes[checked..]) {
            Ok(_) => checked = bytes.len(),
            // a character cut at the end of this read: checked again with the next one
            Err(e) if e.error_len().is_none() && n > 0 => checked += e.valid_up_to(),
            Err(_) => return Err(not_utf8()),
        }
        if n == 0 {
            break;
        }
        crate::pace::tick_now();
    }
    debug_assert_eq!(checked, bytes.len());
    // SAFETY: the loop above checked every byte as UTF-8 and ends only with all of them checked
    // (at the end of the file, an incomplete character is an error)
    Ok(unsafe { String::from_utf8_unchecked(bytes) })
}

/// Reads and compiles a config file and the tenants file it names.
pub fn load(config_path: &Path) -> Result<Snapshot, ConfigError> {
    let text = read(config_path)?;
    let file: ConfigFile = parse_toml(config_path, &text)?;
    if crate::fleet::is_redis(&file.tenants) {
        return load_from_redis(config_path, file);
    }
    let dir = config_path.parent().unwrap_or(Path::new("."));
    let tenants_path = dir.join(&file.tenants);
    let tenants_text = read(&tenants_path).map_err(|mut e| {
        e.message = format!(
            "{} (named by `tenants` in {})",
            e.message,
            config_path.display()
        );
        e
    })?;
    compile_with_tenants(config_path, file, &tenants_path, &tenants_text)
}

/// `tenants = "redis://…"`: the tenant table from Redis (kept on disk as the last good copy), or
/// that copy when Redis cannot be read.
fn load_from_redis(config_path: &Path, file: ConfigFile) -> Result<Snapshot, ConfigError> {
    let url = file.tenants.clone();
    let label = PathBuf::from(&url);
    let copy = crate::fleet::snapshot_path(config_path);
    match crate::fleet::read(&url) {
        Ok((tenants, version)) => {
            let text = crate::fleet::to_toml(&tenants);
            let mut snap = compile(config_path, file, &label, tenants)?;
            snap.tenants_source = crate::fleet::TenantsSource::Redis(version);
            snap.tenants_url = Some(url);
            // what compiled is the last good table
            if let Err(e) = crate::fleet::save_snapshot(&copy, &text, version) {
                tracing::warn!(path = %copy.display(), "cannot keep the tenants copy: {e}");
            }
            Ok(snap)
        }
        Err(e) => {
            let text = std::fs::read_to_string(&copy).map_err(|io| {
                err(
                    &label,
                    "",
                    format!("{e}; and no local copy at {} ({io})", copy.display()),
                )
            })?;
            let tenants: TenantsFile = parse_toml(&copy, &text)?;
            tracing::warn!(
                copy = %copy.display(),
                "tenants: Redis unreachable ({e}); serving the last good copy"
            );
            let mut snap = compile(config_path, file, &copy, tenants)?;
            snap.tenants_source = crate::fleet::TenantsSource::DiskSnapshot;
            snap.tenants_url = Some(url);
            Ok(snap)
        }
    }
}

/// Parses a tenants file (TOML, or the compact format by its name) without compiling it.
pub fn read_tenants_file(path: &Path) -> Result<TenantsFile, ConfigError> {
    let text = read(path)?;
    if compact::is_compact(path) {
        Ok(compact::parse(path, &text)?.0)
    } else {
        parse_toml(path, &text)
    }
}

/// Validates `tenants_path` against the config at `config_path` (as if the config named it):
/// what `vivgate tenants push` checks before writing. Returns the Redis URL the config names.
pub fn check_tenants_for_push(
    config_path: &Path,
    tenants_path: &Path,
) -> Result<(String, TenantsFile), ConfigError> {
    let text = read(config_path)?;
    let file: ConfigFile = parse_toml(config_path, &text)?;
    if !crate::fleet::is_redis(&file.tenants) {
        return Err(err(
            config_path,
            "tenants",
            "names a file, not a redis:// URL: there is nothing to push to",
        ));
    }
    let url = file.tenants.clone();
    let tenants_text = read(tenants_path)?;
    compile_with_tenants(config_path, file, tenants_path, &tenants_text)?;
    Ok((url, read_tenants_file(tenants_path)?))
}

/// The Redis URL a config names in `tenants`, for `vivgate tenants export`.
pub fn tenants_url(config_path: &Path) -> Result<String, ConfigError> {
    let text = read(config_path)?;
    let file: ConfigFile = parse_toml(config_path, &text)?;
    if !crate::fleet::is_redis(&file.tenants) {
        return Err(err(
            config_path,
            "tenants",
            "names a file, not a redis:// URL",
        ));
    }
    Ok(file.tenants)
}

/// Parses the tenants text in the format its file name says (`.toml`, or the compact line
/// format of [`compact`]) and compiles. Errors in a compact file name its line.
fn compile_with_tenants(
    config_path: &Path,
    file: ConfigFile,
    tenants_path: &Path,
    tenants_text: &str,
) -> Result<Snapshot, ConfigError> {
    if !compact::is_compact(tenants_path) {
        let tenants: TenantsFile = parse_toml(tenants_path, tenants_text)?;
        return compile(config_path, file, tenants_path, tenants);
    }
    let (tenants, lines) = compact::parse(tenants_path, tenants_text)?;
    compile(config_path, file, tenants_path, tenants).map_err(|mut e| {
        if e.file == tenants_path {
            e.field = compact::field_to_line(&e.field, &lines);
        }
        e
    })
}

/// Compiles config and tenants text that did not come from files (the demo, tests); the paths
/// only label errors.
pub fn load_from_str(
    config_path: &Path,
    config_text: &str,
    tenants_path: &Path,
    tenants_text: &str,
) -> Result<Snapshot, ConfigError> {
    let file: ConfigFile = parse_toml(config_path, config_text)?;
    compile_with_tenants(config_path, file, tenants_path, tenants_text)
}

/// Compiles parsed files into a snapshot, validating every cross-reference.
pub fn compile(
    config_path: &Path,
    file: ConfigFile,
    tenants_path: &Path,
    tenants: TenantsFile,
) -> Result<Snapshot, ConfigError> {
    let cfg = config_path;

    // [server]
    let s = &file.server;
    if s.listen
        .to_socket_addrs()
        .map_or(true, |mut a| a.next().is_none())
    {
        return Err(err(
            cfg,
            "server.listen",
            format!("not an address: {:?}", s.listen),
        ));
    }
    if s.threads == 0 {
        return Err(err(cfg, "server.threads", "must be at least 1"));
    }

    let (tls_listeners, tls_certs) = compile_tls(cfg, &s.tls)?;
    // (port 0 is an ephemeral port of its own each time, as in tests)
    if !s.listen.ends_with(":0") && tls_listeners.iter().any(|t| t.listen == s.listen) {
        return Err(err(
            cfg,
            "server.tls",
            format!("{} is already server.listen", s.listen),
        ));
    }

    if s.trusted_proxies.is_empty() {
        if s.proxy_protocol {
            return Err(err(
                cfg,
                "server.proxy_protocol",
                "needs server.trusted_proxies: a PROXY header is accepted from them only",
            ));
        }
        if let Some(i) = s.tls.iter().position(|t| t.proxy_protocol) {
            return Err(err(
                cfg,
                format!("server.tls[{i}].proxy_protocol"),
                "needs server.trusted_proxies: a PROXY header is accepted from them only",
            ));
        }
    }

    // [limits]
    let l = &file.limits;
    let limits = compile_limits(cfg, l)?;

    // [usage]
    let u = &file.usage;
    let path = match u.store.as_str() {
        "memory" | "redis" => None,
        "embedded" if u.path.is_empty() => return Err(err(cfg, "usage.path", "must not be empty")),
        "embedded" => Some(cfg.parent().unwrap_or(Path::new(".")).join(&u.path)),
        other => {
            return Err(err(
                cfg,
                "usage.store",
                format!("unknown store {other:?} (expected \"embedded\", \"redis\" or \"memory\")"),
            ))
        }
    };
    if !(10..=60_000).contains(&u.flush_interval_ms) {
        return Err(err(
            cfg,
            "usage.flush_interval_ms",
            "must be between 10 and 60000",
        ));
    }
    if !(1..=crate::store::MAX_RETENTION_MONTHS).contains(&u.retention_months) {
        return Err(err(
            cfg,
            "usage.retention_months",
            format!(
                "must be between 1 and {}",
                crate::store::MAX_RETENTION_MONTHS
            ),
        ));
    }
    let policy = |field: &str, v: &str| match v {
        "allow" => Ok(crate::redis_store::OutagePolicy::Allow),
        "deny" => Ok(crate::redis_store::OutagePolicy::Deny),
        other => Err(err(
            cfg,
            field,
            format!("{other:?}: expected \"allow\" or \"deny\""),
        )),
    };
    let redis = if u.store == "redis" {
        if !(u.redis_url.starts_with("redis://")
            || u.redis_url.starts_with("redis+unix://")
            || u.redis_url.starts_with("redis+cluster://"))
        {
            return Err(err(
                cfg,
                "usage.redis_url",
                "must be a redis://, redis+unix:// or redis+cluster://host:port,host:port URL",
            ));
        }
        if !(1..=10_000).contains(&u.store_timeout_ms) {
            return Err(err(
                cfg,
                "usage.store_timeout_ms",
                "must be between 1 and 10000",
            ));
        }
        if !(0.0..=1.0).contains(&u.outage_allowance) {
            return Err(err(
                cfg,
                "usage.outage_allowance",
                "must be between 0 and 1",
            ));
        }
        if u.lease_max == 0 {
            return Err(err(cfg, "usage.lease_max", "must be at least 1"));
        }
        if u.lease_ttl_ms < 2 * u.flush_interval_ms.max(u.lease_idle_ms) {
            return Err(err(
                cfg,
                "usage.lease_ttl_ms",
                "must be at least twice flush_interval_ms and lease_idle_ms (leases are renewed at each flush)",
            ));
        }
        let mut tier_policy = Vec::new();
        for (name, t) in &file.tiers {
            if let Some(p) = &t.on_store_unavailable {
                tier_policy.push((
                    name.clone(),
                    policy(&format!("tiers.{name}.on_store_unavailable"), p)?,
                ));
            }
        }
        Some(crate::redis_store::RedisSettings {
            url: u.redis_url.clone(),
            timeout: Duration::from_millis(u.store_timeout_ms),
            flush_interval: Duration::from_millis(u.flush_interval_ms.min(1_000)),
            policy: policy("usage.on_store_unavailable", &u.on_store_unavailable)?,
            tier_policy,
            outage_allowance: u.outage_allowance,
            lease_max: u.lease_max,
            lease_idle: Duration::from_millis(u.lease_idle_ms),
            lease_ttl: Duration::from_millis(u.lease_ttl_ms),
            retention_months: u.retention_months,
            overrides_copy: cfg
                .parent()
                .unwrap_or(Path::new("."))
                .join("state")
                .join("overrides-snapshot.json"),
        })
    } else {
        None
    };
    let usage = UsageSettings {
        path,
        redis,
        flush_interval: Duration::from_millis(u.flush_interval_ms),
        retention_months: u.retention_months,
    };

    let mut trusted_proxies = Vec::new();
    for (i, c) in s.trusted_proxies.iter().enumerate() {
        let net = c
            .parse::<ipnet::IpNet>()
            .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                err(
                    cfg,
                    format!("server.trusted_proxies[{i}]"),
                    format!("{c:?} is not an address or a CIDR"),
                )
            })?;
        trusted_proxies.push(net);
    }

    // [access_log]
    let access_log = file
        .access_log
        .as_ref()
        .map(|a| crate::access::AccessLogSettings {
            target: if a.path == "stdout" {
                crate::access::Target::Stdout
            } else {
                crate::access::Target::File(cfg.parent().unwrap_or(Path::new(".")).join(&a.path))
            },
            include_query: a.include_query,
        });

    // [cors]
    let cors = match &file.cors {
        None => None,
        Some(c) => Some(compile_cors(cfg, c)?),
    };

    // [admin]
    let a = &file.admin;
    let admin_token = match &a.token {
        None => None,
        Some(t) => Some(parse_key_hash(t).map_err(|m| err(cfg, "admin.token", m))?),
    };
    let admin_listen = match &a.listen {
        None => None,
        Some(l) => {
            let addrs: Vec<SocketAddr> = l
                .to_socket_addrs()
                .map_err(|_| err(cfg, "admin.listen", format!("not an address: {l:?}")))?
                .collect();
            if addrs.is_empty() {
                return Err(err(cfg, "admin.listen", format!("not an address: {l:?}")));
            }
            if admin_token.is_none() && !addrs.iter().all(|a| a.ip().is_loopback()) {
                return Err(err(
                    cfg,
                    "admin.listen",
                    format!("{l:?} is not a loopback address: set admin.token to expose the admin API beyond this host"),
                ));
            }
            Some(l.clone())
        }
    };
    if a.listen.is_none() && a.token.is_some() {
        return Err(err(
            cfg,
            "admin.token",
            "set admin.listen too, or remove the token",
        ));
    }

    // [tiers]
    let mut tiers: BTreeMap<String, Arc<Tier>> = BUILTIN_TIERS
        .iter()
        .map(|&(n, c, b)| (n.to_string(), Arc::new(Tier::new(n, c, b))))
        .collect();
    for (name, t) in &file.tiers {
        let builtin = tiers.get(name).cloned();
        let field = |f: &str| format!("tiers.{name}.{f}");
        let api_calls = match (t.api_calls, &builtin) {
            (Some(v), _) => v,
            (None, Some(b)) => b.api_calls,
            (None, None) => {
                return Err(err(
                    cfg,
                    field("api_calls"),
                    "missing (a new tier sets both limits)",
                ))
            }
        };
        let cdn_bytes = match (t.cdn_bytes, &builtin) {
            (Some(v), _) => v,
            (None, Some(b)) => b.cdn_bytes,
            (None, None) => {
                return Err(err(
                    cfg,
                    field("cdn_bytes"),
                    "missing (a new tier sets both limits)",
                ))
            }
        };
        if !valid_name(name) {
            return Err(err(
                cfg,
                format!("tiers.{name}"),
                "tier names use [A-Za-z0-9._-]",
            ));
        }
        let mut tier = Tier::new(name, api_calls, cdn_bytes);
        tier.burst_per_second = match t.burst_per_second {
            Some(0) => return Err(err(cfg, field("burst_per_second"), "must be at least 1")),
            other => other,
        };
        tiers.insert(name.clone(), Arc::new(tier));
    }

    // [upstreams]
    let mut upstreams = Vec::new();
    let mut upstream_index = HashMap::new();
    for (name, u) in &file.upstreams {
        let field = |f: &str| format!("upstreams.{name}.{f}");
        if u.servers.is_empty() {
            return Err(err(cfg, field("servers"), "needs at least one server"));
        }
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut names = Vec::new();
        for (i, s) in u.servers.iter().enumerate() {
            let resolved = s
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| {
                    err(
                        cfg,
                        format!("upstreams.{name}.servers[{i}]"),
                        format!("cannot resolve {s:?} (expected host:port)"),
                    )
                })?;
            addrs.push(resolved);
            let host = s.rsplit_once(':').map_or(s.as_str(), |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            names.push((resolved, u.sni.clone().unwrap_or_else(|| host.to_string())));
        }
        let tls = if u.tls {
            for (_, n) in &names {
                if rustls_pki_types::ServerName::try_from(n.as_str()).is_err() {
                    return Err(err(
                        cfg,
                        field("sni"),
                        format!("{n:?} is not a server name"),
                    ));
                }
            }
            let mut key = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(name, &mut key);
            let ca = match &u.ca_file {
                None => None,
                Some(f) => {
                    let path = cfg.parent().unwrap_or(Path::new(".")).join(f);
                    let ca = load_ca(&path).map_err(|m| err(cfg, field("ca_file"), m))?;
                    for c in ca.iter() {
                        std::hash::Hash::hash(c.borrow_raw_cert(), &mut key);
                    }
                    Some(ca)
                }
            };
            let pool_key = std::hash::Hasher::finish(&key);
            Some(UpstreamTls {
                names,
                ca,
                pool_key,
            })
        } else {
            if u.sni.is_some() || u.ca_file.is_some() {
                return Err(err(cfg, field("tls"), "sni and ca_file need tls = true"));
            }
            None
        };
        for (f, v) in [
            ("connect_timeout_ms", u.connect_timeout_ms),
            ("read_timeout_ms", u.read_timeout_ms),
            ("write_timeout_ms", u.write_timeout_ms),
        ] {
            if v == 0 {
                return Err(err(cfg, field(f), "must be above 0"));
            }
        }
        let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(addrs.iter().copied())
            .map_err(|e| err(cfg, field("servers"), e.to_string()))?;
        let health_interval = (u.health_check_interval_ms > 0).then(|| {
            let mut hc = TcpHealthCheck::new();
            hc.peer_template.options.connection_timeout =
                Some(Duration::from_millis(u.connect_timeout_ms));
            lb.set_health_check(hc);
            Duration::from_millis(u.health_check_interval_ms)
        });
        upstream_index.insert(name.clone(), upstreams.len());
        upstreams.push(Upstream {
            name: name.clone(),
            lb: Arc::new(lb),
            connect_timeout: Duration::from_millis(u.connect_timeout_ms),
            read_timeout: Duration::from_millis(u.read_timeout_ms),
            write_timeout: Duration::from_millis(u.write_timeout_ms),
            health: crate::health::ServerHealth::new(
                addrs
                    .iter()
                    .map(|&addr| crate::health::ServerId {
                        addr,
                        tls_name: tls.as_ref().and_then(|t| t.name(&addr)).map(str::to_string),
                    })
                    .collect(),
                u.passive_failures,
                health_interval
                    .is_none()
                    .then(|| Duration::from_millis(u.passive_down_ms)),
            ),
            health_interval,
            tls,
        });
    }

    // [[routes]]
    let routes = compile_routes(cfg, &file, &upstream_index)?;

    // tenants
    let tf = tenants_path;
    let mut groups = Vec::with_capacity(tenants.groups.len());
    // sized once: growing a million-entry table rehashes it all in one go
    let key_count = tenants.groups.iter().map(|g| g.keys.len()).sum();
    let mut keys: KeyMap<u32> = KeyMap::with_capacity_and_hasher(key_count, Default::default());
    let mut ids = HashSet::with_capacity(tenants.groups.len());
    for (gi, g) in tenants.groups.iter().enumerate() {
        crate::pace::tick();
        let field = |f: &str| format!("groups[{gi}].{f}");
        if !valid_name(&g.id) || g.id.len() > 64 {
            return Err(err(
                tf,
                field("id"),
                format!(
                    "{:?}: group ids are 1 to 64 characters of [A-Za-z0-9._-]",
                    g.id
                ),
            ));
        }
        if !ids.insert(g.id.as_str()) {
            return Err(err(
                tf,
                field("id"),
                format!("duplicate group id {:?}", g.id),
            ));
        }
        let tier = tiers.get(&g.tier).cloned().ok_or_else(|| {
            let known: Vec<&str> = tiers.keys().map(String::as_str).collect();
            err(
                tf,
                field("tier"),
                format!("unknown tier {:?} (known: {})", g.tier, known.join(", ")),
            )
        })?;
        for (ki, k) in g.keys.iter().enumerate() {
            let hash =
                parse_key_hash(k).map_err(|m| err(tf, format!("groups[{gi}].keys[{ki}]"), m))?;
            if let Some(&other) = keys.get(&key_prefix(&hash)) {
                return Err(err(
                    tf,
                    format!("groups[{gi}].keys[{ki}]"),
                    format!("the same key hash is already listed for groups[{other}]"),
                ));
            }
            keys.insert(key_prefix(&hash), gi as u32);
        }
        groups.push(Group {
            id: g.id.as_str().into(),
            tier,
            status: g.status,
            overage_billing: g.overage_billing,
        });
    }

    // a million parsed groups are millions of strings: freed a few at a time on a paced thread
    crate::pace::drop_vec(tenants.groups);
    Ok(Snapshot {
        startup: StartupSettings {
            listen: s.listen.clone(),
            threads: s.threads,
            grace_period_seconds: s.grace_period_seconds,
            usage,
            admin_listen,
            access_log,
            h2c: s.h2c,
            proxy_protocol: s.proxy_protocol,
            tls_listeners,
        },
        config_path: config_path.to_path_buf(),
        tenants_path: tenants_path.to_path_buf(),
        tenants_source: crate::fleet::TenantsSource::File,
        tenants_url: None,
        limits,
        tiers,
        groups,
        keys,
        routes,
        upstreams,
        admin_token,
        cors,
        trusted_proxies,
        tls_certs,
    })
}

/// `[[server.tls]]`: one listener per address, each with its certificates in order.
fn compile_tls(
    cfg: &Path,
    entries: &[file::TlsSection],
) -> Result<(Vec<TlsListener>, crate::tls::Certificates), ConfigError> {
    let mut listeners: Vec<TlsListener> = Vec::new();
    let mut certs = crate::tls::Certificates::default();
    for (i, t) in entries.iter().enumerate() {
        let field = |f: &str| format!("server.tls[{i}].{f}");
        if t.listen
            .to_socket_addrs()
            .map_or(true, |mut a| a.next().is_none())
        {
            return Err(err(
                cfg,
                field("listen"),
                format!("not an address: {:?}", t.listen),
            ));
        }
        let listener = TlsListener {
            listen: t.listen.clone(),
            http2: t.http2,
            proxy_protocol: t.proxy_protocol,
        };
        match listeners.iter().find(|l| l.listen == t.listen) {
            None => listeners.push(listener),
            Some(l) if *l == listener => {}
            Some(_) => {
                return Err(err(
                    cfg,
                    field("listen"),
                    "entries for one address must agree on http2 and proxy_protocol",
                ))
            }
        }
        let dir = cfg.parent().unwrap_or(Path::new("."));
        let pair = crate::tls::load_pair(&dir.join(&t.cert), &dir.join(&t.key))
            .map_err(|(f, m)| err(cfg, field(f), m))?;
        certs.0.entry(t.listen.clone()).or_default().push(pair);
    }
    Ok((listeners, certs))
}

/// A PEM file of CA certificates, checked, as pingora's per-peer CA list.
fn load_ca(path: &Path) -> Result<Arc<pingora::protocols::tls::CaType>, String> {
    use rustls_pki_types::pem::PemObject;
    let ders: Vec<rustls_pki_types::CertificateDer<'static>> =
        rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
    if ders.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    let mut store = rustls::RootCertStore::empty();
    for d in &ders {
        store
            .add(d.clone())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let wrapped = ders
        .into_iter()
        .map(|d| {
            let raw = d.to_vec();
            // pingora parses again (and panics on what it cannot parse): keep that out of the
            // gateway
            std::panic::catch_unwind(|| {
                pingora::utils::tls::WrappedX509::new(raw, pingora::utils::tls::parse_x509)
            })
            .map_err(|_| format!("{}: a certificate pingora cannot parse", path.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::from(wrapped.into_boxed_slice()))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A method, the index of the `[[routes]]` entry that routes it, and the compiled route.
type MethodRoute = (Method, usize, Arc<Route>);

fn compile_routes(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paced_read_checks_utf8_across_its_reads() {
        let dir = tempfile::tempdir().unwrap();
        // a two-byte character across the first 64 KiB boundary, then several more reads
        let mut text = "a".repeat((1 << 16) - 1);
        text.push('é');
        text.push_str(&"b".repeat(200_000));
        let good = dir.path().join("good.tsv");
        std::fs::write(&good, &text).unwrap();
        let invalid = dir.path().join("invalid.tsv");
        let mut bytes = text.clone().into_bytes();
        bytes.insert(150_000, 0xff);
        std::fs::write(&invalid, &bytes).unwrap();
        let cut = dir.path().join("cut.tsv");
        std::fs::write(&cut, [text.as_bytes(), &[0xc3]].concat()).unwrap();
        std::thread::spawn(move || {
            crate::pace::enable();
            assert_eq!(read(&good).unwrap(), text);
            for bad in [invalid, cut] {
                let e = read(&bad).unwrap_err();
                assert!(e.message.contains("valid UTF-8"), "{}", e.message);
            }
        })
        .join()
        .unwrap();
    }
}
