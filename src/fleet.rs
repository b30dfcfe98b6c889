//! Tenants (groups, tiers, status, overage flag, key hashes) shared by every instance through
//! Redis: `tenants = "redis://host:port/db"` in the config instead of a file.
//!
//! Layout (every key carries the `{vivgate-tenants}` hash tag, so a Redis Cluster keeps them in
//! one slot and a change is one transaction):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{vivgate-tenants}:groups` | set | every group id |
//! | `{vivgate-tenants}:group:<id>` | hash | `tier`, `status` (`active`/`frozen`/`deactivated`), `overage_billing` (`0`/`1`), `keys` (the `sha256:<hex>` hashes, space-separated) |
//! | `{vivgate-tenants}:version` | integer | incremented by every change |
//!
//! A writer changes the keys in one `MULTI`/`EXEC` that also increments `version`, then
//! publishes the new version on the channel `vivgate-tenants`. Every instance keeps the whole
//! tenant table in memory (the request path never reads Redis), reloads when a message arrives,
//! and compares `version` every [`RESYNC_EVERY`] to repair a missed message. The last good
//! table is kept on disk; an instance that starts while Redis is unreachable serves with it.

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use redis::Commands;

use crate::tenants::{GroupSection, GroupStatus, TenantsFile};

pub const GROUPS_KEY: &str = "{vivgate-tenants}:groups";
pub const VERSION_KEY: &str = "{vivgate-tenants}:version";
pub const CHANNEL: &str = "vivgate-tenants";
/// How often an instance compares `version` with the one it serves.
pub const RESYNC_EVERY: Duration = Duration::from_secs(5);
/// The longest a tenants read may take at load.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

pub fn group_key(id: &str) -> String {
    format!("{{vivgate-tenants}}:group:{id}")
}

/// Whether a `tenants` value names Redis rather than a file.
pub fn is_redis(tenants: &str) -> bool {
    tenants.starts_with("redis://") || tenants.starts_with("redis+unix://")
}

fn connect(url: &str) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(url)?;
    let con = client.get_connection_with_timeout(READ_TIMEOUT)?;
    con.set_read_timeout(Some(READ_TIMEOUT))?;
    con.set_write_timeout(Some(READ_TIMEOUT))?;
    Ok(con)
}

/// The tenant table in Redis and its version.
pub fn read(url: &str) -> Result<(TenantsFile, u64), String> {
    let mut con = connect(url).map_err(|e| format!("redis {url}: {e}"))?;
    // read under WATCH so a concurrent push cannot give a table from two versions
    type Raw = Vec<(String, std::collections::HashMap<String, String>)>;
    let (groups, version): (Raw, u64) =
        redis::transaction(&mut con, &[VERSION_KEY, GROUPS_KEY], |con, pipe| {
            let version: Option<u64> = con.get(VERSION_KEY)?;
            let mut ids: Vec<String> = con.smembers(GROUPS_KEY)?;
            ids.sort();
            let mut groups = Vec::with_capacity(ids.len());
            for id in ids {
                let h: std::collections::HashMap<String, String> = con.hgetall(group_key(&id))?;
                groups.push((id, h));
            }
            // EXEC answers nil when a watched key changed meanwhile: read again
            let confirmed: Option<(Option<u64>,)> = pipe.get(VERSION_KEY).query(con)?;
            Ok(confirmed.map(|_| (groups, version.unwrap_or(0))))
        })
        .map_err(|e| format!("redis {url}: {e}"))?;
    to_file(groups).map(|f| (f, version))
}

fn to_file(
    groups: Vec<(String, std::collections::HashMap<String, String>)>,
) -> Result<TenantsFile, String> {
    let mut out = Vec::with_capacity(groups.len());
    for (id, h) in groups {
        let field = |f: &str| {
            h.get(f)
                .cloned()
                .ok_or_else(|| format!("{}: missing field {f:?}", group_key(&id)))
        };
        let status = match field("status")?.as_str() {
            "active" => GroupStatus::Active,
            "frozen" => GroupStatus::Frozen,
            "deactivated" => GroupStatus::Deactivated,
            other => return Err(format!("{}: unknown status {other:?}", group_key(&id))),
        };
        let overage_billing = match h.get("overage_billing").map(String::as_str) {
            None | Some("0") | Some("false") => false,
            Some("1") | Some("true") => true,
            Some(other) => {
                return Err(format!(
                    "{}: overage_billing {other:?} (expected 0 or 1)",
                    group_key(&id)
                ))
            }
        };
        out.push(GroupSection {
            tier: field("tier")?,
            status,
            overage_billing,
            keys: h
                .get("keys")
                .map(|k| k.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            id,
        });
    }
    Ok(TenantsFile { groups: out })
}

/// Replaces the whole tenant table in one transaction, bumps the version and announces it.
/// Returns the new version.
pub fn push(url: &str, tenants: &TenantsFile) -> Result<u64, String> {
    let mut con = connect(url).map_err(|e| format!("redis {url}: {e}"))?;
    let version: u64 = redis::transaction(&mut con, &[GROUPS_KEY], |con, pipe| {
        let old: Vec<String> = con.smembers(GROUPS_KEY)?;
        pipe.atomic();
        for id in &old {
            pipe.del(group_key(id)).ignore();
        }
        pipe.del(GROUPS_KEY).ignore();
        for g in &tenants.groups {
            pipe.sadd(GROUPS_KEY, &g.id).ignore();
            pipe.hset_multiple(
                group_key(&g.id),
                &[
                    ("tier", g.tier.clone()),
                    ("status", g.status.as_str().to_string()),
                    (
                        "overage_billing",
                        if g.overage_billing { "1" } else { "0" }.to_string(),
                    ),
                    ("keys", g.keys.join(" ")),
                ],
            )
            .ignore();
        }
        pipe.incr(VERSION_KEY, 1);
        pipe.query::<Option<(u64,)>>(con).map(|r| r.map(|(v,)| v))
    })
    .map_err(|e| format!("redis {url}: {e}"))?;
    announce(&mut con, version);
    Ok(version)
}

/// Why a change of one group in the fleet's table was not made, or may not have been.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeError {
    /// The group is not in the table: nothing changed.
    UnknownGroup(String),
    /// What was asked is so already (the key is there, or is not): nothing changed.
    AlreadySo(String),
    /// Redis could not be reached or refused it: nothing changed.
    NotSaved(String),
    /// Redis did not answer in time: the change may or may not have been made (repeating it
    /// is harmless).
    Unknown(String),
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeError::UnknownGroup(g) => write!(f, "unknown group {g:?}"),
            ChangeError::AlreadySo(why) => f.write_str(why),
            ChangeError::NotSaved(why) => write!(f, "not saved: {why}"),
            ChangeError::Unknown(why) => {
                write!(
                    f,
                    "no answer from Redis, the change may or may not be saved: {why}"
                )
            }
        }
    }
}

impl std::error::Error for ChangeError {}

/// Sets one group's status (the admin API on any instance). Returns the new version.
pub fn set_status(url: &str, group: &str, status: GroupStatus) -> Result<u64, ChangeError> {
    change_group(url, group, |_| Ok(("status", status.as_str().to_string())))
}

/// Adds one key hash to a group (`vivgate keys new --config`), in one transaction, announced.
pub fn add_key(url: &str, group: &str, key_hash: &str) -> Result<u64, ChangeError> {
    crate::keys::parse_key_hash(key_hash).map_err(ChangeError::NotSaved)?;
    change_group(url, group, |keys| {
        if keys.split_whitespace().any(|k| k == key_hash) {
            return Err(format!("group {group:?} already has this key"));
        }
        let all: Vec<&str> = keys.split_whitespace().chain([key_hash]).collect();
        Ok(("keys", all.join(" ")))
    })
}

/// Removes one key hash from its group (the admin API on any instance).
pub fn revoke_key(url: &str, group: &str, key_hash: &str) -> Result<u64, ChangeError> {
    change_group(url, group, |keys| {
        let kept: Vec<&str> = keys.split_whitespace().filter(|k| *k != key_hash).collect();
        if kept.len() == keys.split_whitespace().count() {
            return Err(format!("group {group:?} has no key {key_hash}"));
        }
        Ok(("keys", kept.join(" ")))
    })
}

/// Changes one field of a group: `edit` gets the group's keys as Redis holds them and gives the
/// field and its new value, or says what is so already. The group is read under `WATCH` and
/// written in the same `MULTI`/`EXEC` with the version, so two changes at once never lose one:
/// a change that raced another is read and made again on top of it.
fn change_group(
    url: &str,
    group: &str,
    edit: impl Fn(&str) -> Result<(&'static str, String), String>,
) -> Result<u64, ChangeError> {
    let mut con = connect(url).map_err(|e| ChangeError::NotSaved(format!("redis {url}: {e}")))?;
    let key = group_key(group);
    let outcome: Result<u64, ChangeError> =
        redis::transaction(&mut con, &[key.as_str()], |con, pipe| {
            let keys: Option<String> = con.hget(&key, "keys")?;
            let exists: bool = keys.is_some() || con.exists(&key)?;
            if !exists {
                return Ok(Some(Err(ChangeError::UnknownGroup(group.to_string()))));
            }
            let (field, value) = match edit(keys.as_deref().unwrap_or("")) {
                Ok(change) => change,
                Err(so) => return Ok(Some(Err(ChangeError::AlreadySo(so)))),
            };
            pipe.atomic();
            pipe.hset(&key, field, value).ignore();
            pipe.incr(VERSION_KEY, 1);
            // EXEC answers nil when the group changed after the read: read and edit again
            pipe.query::<Option<(u64,)>>(con)
                .map(|r| r.map(|(v,)| Ok(v)))
        })
        .map_err(|e| {
            let why = format!("redis {url}: {e}");
            // the transaction may have been sent when the answer stopped coming
            if e.is_timeout() || e.is_connection_dropped() {
                ChangeError::Unknown(why)
            } else {
                ChangeError::NotSaved(why)
            }
        })?;
    let version = outcome?;
    announce(&mut con, version);
    Ok(version)
}

fn announce(con: &mut redis::Connection, version: u64) {
    let _: redis::RedisResult<u64> = con.publish(CHANNEL, version);
}

/// The tenant table as a tenants file (`vivgate tenants export`).
pub fn to_toml(tenants: &TenantsFile) -> String {
    let mut out = String::new();
    for g in &tenants.groups {
        let keys: Vec<String> = g.keys.iter().map(|k| format!("{k:?}")).collect();
        out.push_str(&format!(
            "[[groups]]\nid = {:?}\ntier = {:?}\nstatus = {:?}\noverage_billing = {}\nkeys = [{}]\n\n",
            g.id,
            g.tier,
            g.status.as_str(),
            g.overage_billing,
            keys.join(", ")
        ));
    }
    out
}

/// Where the last good table is kept: `tenants-snapshot.toml` in the state directory
/// ([`crate::config::state_dir`]).
pub fn snapshot_path(state_dir: &Path) -> PathBuf {
    state_dir.join("tenants-snapshot.toml")
}

/// Writes the last good table (atomically: a temp file renamed over the old one).
pub fn save_snapshot(path: &Path, tenants_toml: &str, version: u64) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(
        &tmp,
        format!("# vivgate tenants, version {version}, from Redis\n{tenants_toml}"),
    )?;
    // written by root (`sudo vivgate check`), the copy still belongs to whom the state
    // directory belongs to: the service, which may need to start from it
    if let Some(dir) = path.parent().filter(|_| nix_is_root()) {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(dir)?;
        std::os::unix::fs::chown(&tmp, Some(owner.uid()), Some(owner.gid()))?;
    }
    std::fs::rename(tmp, path)
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Follows changes: reloads `reload` when a version is announced, and compares the version
/// every [`RESYNC_EVERY`] to repair a missed message. After every (re)connection it subscribes
/// first and compares the version right after, so a change made while it could not hear, or
/// while it was subscribing, is applied at once. Runs on a thread of its own until the process
/// exits.
pub fn follow(
    url: String,
    alive: impl Fn() -> bool + Send + 'static,
    served_version: impl Fn() -> Option<u64> + Send + 'static,
    reload: impl Fn() + Send + 'static,
) {
    let _ = std::thread::Builder::new()
        .name("vivgate-tenants".into())
        .spawn(move || loop {
            if !alive() {
                return;
            }
            let check = |con: &mut redis::Connection| -> redis::RedisResult<()> {
                let v: Option<u64> = con.get(VERSION_KEY)?;
                if v.is_some() && v != served_version() {
                    reload();
                }
                Ok(())
            };
            // subscribed first: from here on an announcement is heard ...
            let Ok(mut sub_con) = connect(&url) else {
                std::thread::sleep(RECONNECT_PAUSE);
                continue;
            };
            let _ = sub_con.set_read_timeout(Some(Duration::from_millis(500)));
            let mut pubsub = sub_con.as_pubsub();
            if pubsub.subscribe(CHANNEL).is_err() {
                std::thread::sleep(RECONNECT_PAUSE);
                continue;
            }
            // ... and what changed before is caught up now
            let Ok(mut con) = connect(&url) else {
                std::thread::sleep(RECONNECT_PAUSE);
                continue;
            };
            if check(&mut con).is_err() {
                std::thread::sleep(RECONNECT_PAUSE);
                continue;
            }
            let mut last_check = Instant::now();
            loop {
                if !alive() {
                    return;
                }
                match pubsub.get_message() {
                    Ok(_) => reload(),
                    Err(e) if e.is_timeout() => {}
                    Err(_) => break,
                }
                if last_check.elapsed() >= RESYNC_EVERY {
                    last_check = Instant::now();
                    if check(&mut con).is_err() {
                        break;
                    }
                }
            }
        });
}

/// How long the follower waits before it tries Redis again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// Where a snapshot's tenants came from (for logs and metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TenantsSource {
    #[default]
    File,
    /// Redis, at this version.
    Redis(u64),
    /// The disk copy, because Redis could not be read.
    DiskSnapshot,
}
