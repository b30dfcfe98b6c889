//! The gateway's shared state: one `ArcSwap` config snapshot, the usage store and the clock.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::clock::Clock;
use crate::config::{self, ConfigError, Snapshot};
use crate::metrics::Metrics;
use crate::overrides::{ChangeError, Changed, OverrideChange, Overrides};
use crate::usage::{Store, UsageStore};

/// Why a reload was refused. The running snapshot stays in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadError {
    /// The gateway was built from an in-memory config (the demo), not from files.
    NoSource,
    Invalid(ConfigError),
    /// A setting that only takes effect at start changed; names the key.
    NeedsRestart(&'static str),
    /// The reload could not run at all (no thread for it).
    CouldNotRun(String),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::NoSource => write!(f, "this gateway was not started from a config file"),
            ReloadError::Invalid(e) => write!(f, "{e}"),
            ReloadError::CouldNotRun(e) => write!(f, "the reload could not run: {e}"),
            ReloadError::NeedsRestart(key) => {
                write!(
                    f,
                    "{key} cannot change while running; restart the gateway to change it"
                )
            }
        }
    }
}

impl std::error::Error for ReloadError {}

/// State shared by every request and every task of one gateway.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    store: Store,
    clock: Arc<dyn Clock>,
    /// The config file to re-read on reload; `None` for an in-memory config.
    source: Option<PathBuf>,
    request_ids: RequestIds,
    metrics: Metrics,
    /// Admin overrides (status, revoked keys), applied on top of the snapshot. Shared with a
    /// store that follows the fleet's overrides (Redis).
    overrides: Arc<ArcSwap<Overrides>>,
    /// Serializes admin changes to the overrides (read, change, save, swap).
    overrides_lock: std::sync::Mutex<()>,
    /// Set when a stop or an upgrade begins: `/healthz` answers 503 from then on.
    stopping: std::sync::atomic::AtomicBool,
    failed_auth: crate::abuse::FailedAuth,
    burst: crate::abuse::Burst,
    /// Client connections open now (for `limits.max_connections`).
    connections: std::sync::atomic::AtomicUsize,
    access_log: Option<crate::access::AccessLog>,
}

impl Gateway {
    pub fn new(
        snapshot: Snapshot,
        store: impl Into<Store>,
        clock: Arc<dyn Clock>,
        source: Option<PathBuf>,
    ) -> Self {
        let store = store.into();
        store.set_clock(clock.clone());
        let metrics = Metrics::new();
        store.register_metrics(metrics.registry());
        let access_log = snapshot.startup.access_log.as_ref().and_then(|a| {
            crate::access::AccessLog::open(a)
                .map_err(|e| tracing::error!("access log {:?}: {e}; no access log", a.target))
                .ok()
        });
        let gw = Gateway {
            snapshot: ArcSwap::from_pointee(snapshot),
            store,
            clock,
            source,
            request_ids: RequestIds::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            overrides: Arc::new(ArcSwap::from_pointee(Overrides::default())),
            metrics,
            overrides_lock: std::sync::Mutex::new(()),
            failed_auth: Default::default(),
            burst: Default::default(),
            connections: Default::default(),
            access_log,
        };
        gw.note_tenants_source(&gw.snapshot());
        gw
    }

    /// The current config snapshot; a request holds one for its whole life.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    /// The admin overrides in force.
    pub fn overrides(&self) -> arc_swap::Guard<Arc<Overrides>> {
        self.overrides.load()
    }

    /// Loads the overrides kept in the store (at start), and has a store that shares them with
    /// the fleet follow the others' changes from then on. A store that cannot be read is an
    /// error: starting without them would un-revoke keys.
    pub fn load_overrides(&self) -> Result<(), String> {
        let o = self.store.load_overrides()?.indexed();
        self.overrides.store(Arc::new(o));
        self.store.follow_overrides(self.overrides.clone());
        Ok(())
    }

    /// Applies an admin change: saved to the store first (for the fleet's store, Redis, applied
    /// there), then in force for the next request. On an error nothing changed here.
    pub fn change_overrides(&self, change: &OverrideChange) -> Result<Changed, ChangeError> {
        if let Some(shared) = self.store.change_shared_overrides(change) {
            return shared;
        }
        let not_saved = |reason: String| ChangeError::NotSaved {
            shared: false,
            reason,
        };
        let _one_at_a_time = self
            .overrides_lock
            .lock()
            .map_err(|_| not_saved("overrides lock poisoned".into()))?;
        let mut next = Overrides::clone(&self.overrides.load());
        let found = next.apply(change);
        let next = next.indexed();
        self.store.save_overrides(&next).map_err(not_saved)?;
        self.overrides.store(Arc::new(next));
        Ok(Changed {
            found,
            version: None,
        })
    }

    /// Marks the gateway as stopping (a load balancer should drain it).
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub fn next_request_id(&self) -> http::HeaderValue {
        self.request_ids.next()
    }

    /// Re-reads the config and tenants files and swaps the new snapshot in whole, or keeps the
    /// running one and says why. Usage counters live in the store and are not touched.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let path = self.source.as_deref().ok_or(ReloadError::NoSource)?;
        let result = config::load(path)
            .map_err(ReloadError::Invalid)
            .and_then(|new| self.swap(new));
        let label = if result.is_ok() { "ok" } else { "refused" };
        self.metrics.reloads.with_label_values(&[label]).inc();
        result
    }

    /// [`Gateway::reload`] on the reload thread: one long-lived thread at a low CPU priority
    /// (nice 10) and paced ([`crate::pace`]: short bursts with rests between), so that compiling
    /// a large key set neither takes much CPU time from the requests being served nor holds a
    /// core for a whole scheduler slice at a time; the caller awaits the result. One thread for
    /// every reload (they run one at a time): each snapshot is built in the heap its
    /// predecessor was freed to, where a thread per reload left each one's pages behind in an
    /// abandoned heap (the soak's RSS crept up with every reload; benches/README.md, "Soak").
    pub async fn reload_in_background(self: Arc<Self>) -> Result<ReloadReport, ReloadError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: ReloadJob = Box::new(move || {
            // a caller that went away (an admin client that gave up) has nothing to wait for
            if !tx.is_closed() {
                let _ = tx.send(self.reload_here());
            }
        });
        reload_thread(job).map_err(ReloadError::CouldNotRun)?;
        rx.await
            .unwrap_or_else(|_| Err(ReloadError::CouldNotRun("the reload thread ended".into())))
    }

    /// [`Gateway::reload_in_background`] for a caller on a thread of its own (the Redis tenants
    /// follower): waits for the reload thread's answer.
    pub fn reload_on_reload_thread(self: &Arc<Self>) -> Result<ReloadReport, ReloadError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let gw = self.clone();
        reload_thread(Box::new(move || {
            let _ = tx.send(gw.reload_here());
        }))
        .map_err(ReloadError::CouldNotRun)?;
        rx.recv()
            .unwrap_or_else(|_| Err(ReloadError::CouldNotRun("the reload thread ended".into())))
    }

    /// One reload on the reload thread: paced, a panic answered as an error, and what the old
    /// snapshot held given back.
    fn reload_here(&self) -> Result<ReloadReport, ReloadError> {
        crate::pace::enable();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.reload()))
            .unwrap_or_else(|_| {
                self.metrics.reloads.with_label_values(&["refused"]).inc();
                Err(ReloadError::CouldNotRun("the reload panicked".into()))
            });
        // the old snapshot is gone by now unless a request still holds it
        crate::memory::return_freed_memory();
        result
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn note_tenants_source(&self, snap: &Snapshot) {
        use crate::fleet::TenantsSource;
        let (copy, version) = match snap.tenants_source {
            TenantsSource::File => (0, 0),
            TenantsSource::Redis(v) => (0, v as i64),
            TenantsSource::DiskSnapshot => (1, 0),
        };
        self.metrics.tenants_from_copy.set(copy);
        self.metrics.tenants_version.set(version);
    }

    /// The Redis tenants version served, if the tenants came from Redis.
    pub fn tenants_version(&self) -> Option<u64> {
        match self.snapshot().tenants_source {
            crate::fleet::TenantsSource::Redis(v) => Some(v),
            _ => None,
        }
    }

    /// `tenants = "redis://…"`: follows the tenant table in Redis on a thread of its own
    /// (announced changes at once, a version check every few seconds, a catch-up after an
    /// outage). Does nothing for a tenants file.
    pub fn follow_tenants(self: &Arc<Self>) {
        let Some(url) = self.snapshot().tenants_url.clone() else {
            return;
        };
        let (a, b, c) = (
            Arc::downgrade(self),
            Arc::downgrade(self),
            Arc::downgrade(self),
        );
        crate::fleet::follow(
            url,
            move || c.strong_count() > 0,
            move || a.upgrade().and_then(|gw| gw.tenants_version()),
            move || {
                if let Some(gw) = b.upgrade() {
                    match gw.reload_on_reload_thread() {
                        Ok(r) => tracing::info!(
                            version = ?gw.tenants_version(),
                            changed = r.groups_changed.len() + r.groups_added.len() + r.groups_removed.len(),
                            "tenants reloaded from Redis"
                        ),
                        Err(e) => tracing::error!("tenants reload from Redis failed: {e}"),
                    }
                }
            },
        );
    }

    pub fn access_log(&self) -> Option<&crate::access::AccessLog> {
        self.access_log.as_ref()
    }

    pub fn failed_auth(&self) -> &crate::abuse::FailedAuth {
        &self.failed_auth
    }

    pub fn burst(&self) -> &crate::abuse::Burst {
        &self.burst
    }

    /// Counts a client connection open until the guard drops; `None` when `max` are open.
    /// Client connections open now.
    pub fn connections_open(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn open_connection(&self, max: usize) -> Option<ConnectionGuard<'_>> {
        use std::sync::atomic::Ordering;
        let prev = self.connections.fetch_add(1, Ordering::AcqRel);
        let guard = ConnectionGuard(&self.connections);
        (prev < max).then_some(guard)
    }

    /// Swaps in a compiled snapshot unless it changes a setting that needs a restart.
    pub fn swap(&self, new: Snapshot) -> Result<ReloadReport, ReloadError> {
        let old = self.snapshot.load_full();
        let (a, b) = (&old.startup, &new.startup);
        if a.listen != b.listen {
            return Err(ReloadError::NeedsRestart("server.listen"));
        }
        if a.threads != b.threads {
            return Err(ReloadError::NeedsRestart("server.threads"));
        }
        if a.grace_period_seconds != b.grace_period_seconds {
            return Err(ReloadError::NeedsRestart("server.grace_period_seconds"));
        }
        if a.usage != b.usage {
            return Err(ReloadError::NeedsRestart("usage"));
        }
        if a.admin_listen != b.admin_listen {
            return Err(ReloadError::NeedsRestart("admin.listen"));
        }
        if (&a.pid_file, &a.upgrade_sock) != (&b.pid_file, &b.upgrade_sock) {
            return Err(ReloadError::NeedsRestart(
                "server.pid_file / server.upgrade_sock",
            ));
        }
        if a.access_log != b.access_log {
            return Err(ReloadError::NeedsRestart("access_log"));
        }
        if a.h2c != b.h2c {
            return Err(ReloadError::NeedsRestart("server.h2c"));
        }
        if a.proxy_protocol != b.proxy_protocol {
            return Err(ReloadError::NeedsRestart("server.proxy_protocol"));
        }
        // the listeners are built at start; their certificates are what a reload may change
        if a.tls_listeners != b.tls_listeners {
            return Err(ReloadError::NeedsRestart(
                "server.tls (listen, http2, proxy_protocol)",
            ));
        }
        let (la, lb) = (&old.limits, &new.limits);
        if (la.h2_max_concurrent_streams, la.h2_max_header_list_bytes)
            != (lb.h2_max_concurrent_streams, lb.h2_max_header_list_bytes)
        {
            return Err(ReloadError::NeedsRestart("limits.h2_*"));
        }
        let report = ReloadReport::between(&old, &new);
        let mut new = new;
        // the same servers keep their health (a server that is down stays skipped)
        for up in &mut new.upstreams {
            if let Some(o) = old.upstreams.iter().find(|o| o.name == up.name) {
                up.health.adopt(&o.health);
            }
        }
        drop(old);
        self.note_tenants_source(&new);
        let replaced = self.snapshot.swap(Arc::new(new));
        retire(replaced);
        Ok(report)
    }
}

type ReloadJob = Box<dyn FnOnce() + Send>;

/// Runs `job` on the reload thread, started on first use (and again if it ever ended).
fn reload_thread(job: ReloadJob) -> Result<(), String> {
    static SENDER: std::sync::Mutex<Option<std::sync::mpsc::Sender<ReloadJob>>> =
        std::sync::Mutex::new(None);
    let mut sender = SENDER.lock().map_err(|_| "reload thread lock poisoned")?;
    let job = match sender.as_ref() {
        Some(s) => match s.send(job) {
            Ok(()) => return Ok(()),
            // the thread ended: a new one takes the job
            Err(std::sync::mpsc::SendError(job)) => job,
        },
        None => job,
    };
    let (tx, rx) = std::sync::mpsc::channel::<ReloadJob>();
    std::thread::Builder::new()
        .name("vivgate-reload".into())
        .spawn(move || {
            // Linux keeps the nice value per thread: this lowers this thread only
            // SAFETY: gettid and setpriority take no pointers
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, 10);
            }
            for job in rx {
                // a reload's own panic is answered as an error (`reload_here`); this keeps
                // the thread going after any other
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        })
        .map_err(|e| e.to_string())?;
    tx.send(job)
        .map_err(|_| "the reload thread ended".to_string())?;
    *sender = Some(tx);
    Ok(())
}

/// Drops a replaced snapshot on the calling (reload) thread: waits, at most 10 s, until the
/// requests that still hold it are done, so the last of them does not spend its time freeing a
/// million keys on a worker thread.
fn retire(old: Arc<Snapshot>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    if let Ok(mut snap) = Arc::try_unwrap(old) {
        crate::pace::drop_vec(std::mem::take(&mut snap.groups));
    }
}

/// What a reload changed: counts before and after, and the groups added, removed or changed
/// (tier, status or overage billing), at most [`ReloadReport::MAX_LISTED`] of each.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    pub groups: [usize; 2],
    pub keys: [usize; 2],
    pub routes: [usize; 2],
    pub upstreams: [usize; 2],
    /// TLS certificates served before and after, and how many of the new ones are new (a
    /// rotation); each certificate is told by its leaf.
    pub certificates: [usize; 2],
    pub certificates_new: usize,
    pub groups_added: Vec<String>,
    pub groups_removed: Vec<String>,
    pub groups_changed: Vec<String>,
    /// True when a list above was cut at `MAX_LISTED`.
    pub truncated: bool,
}

impl ReloadReport {
    pub const MAX_LISTED: usize = 100;

    fn between(old: &Snapshot, new: &Snapshot) -> ReloadReport {
        let mut before = std::collections::HashMap::with_capacity(old.groups.len());
        for g in &old.groups {
            before.insert(&*g.id, g);
            crate::pace::tick();
        }
        let mut r = ReloadReport {
            groups: [old.groups.len(), new.groups.len()],
            keys: [old.keys.len(), new.keys.len()],
            routes: [old.routes.len(), new.routes.len()],
            upstreams: [old.upstreams.len(), new.upstreams.len()],
            certificates: [old.tls_certs.count(), new.tls_certs.count()],
            certificates_new: new.tls_certs.new_since(&old.tls_certs),
            groups_added: Vec::new(),
            groups_removed: Vec::new(),
            groups_changed: Vec::new(),
            truncated: false,
        };
        let mut push = |list: &mut Vec<String>, id: &str| {
            if list.len() < Self::MAX_LISTED {
                list.push(id.to_string());
            } else {
                r.truncated = true;
            }
        };
        let mut seen = std::collections::HashSet::with_capacity(new.groups.len());
        for g in &new.groups {
            crate::pace::tick();
            seen.insert(&*g.id);
            match before.get(&*g.id) {
                None => push(&mut r.groups_added, &g.id),
                Some(o)
                    if o.tier.name != g.tier.name
                        || o.status != g.status
                        || o.overage_billing != g.overage_billing =>
                {
                    push(&mut r.groups_changed, &g.id)
                }
                Some(_) => {}
            }
        }
        for g in &old.groups {
            crate::pace::tick();
            if !seen.contains(&*g.id) {
                push(&mut r.groups_removed, &g.id);
            }
        }
        r
    }
}

/// Request ids for requests that bring none: a per-process random prefix and a counter,
/// 32 hex characters, unique within the process and unlikely to repeat across processes.
struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        RequestIds {
            prefix: h.finish(),
            counter: AtomicU64::new(0),
        }
    }

    fn next(&self) -> http::HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 32];
        hex::encode_to_slice(self.prefix.to_be_bytes(), &mut buf[..16]).ok();
        hex::encode_to_slice(n.to_be_bytes(), &mut buf[16..]).ok();
        // 32 hex digits are always a valid header value
        http::HeaderValue::from_bytes(&buf).unwrap_or(http::HeaderValue::from_static("0"))
    }
}

/// One open client connection; see [`Gateway::open_connection`].
pub struct ConnectionGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}
