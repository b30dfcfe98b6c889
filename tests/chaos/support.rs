//! What every chaos scenario uses: a fixed-rate load of raw HTTP/1.1 clients that tallies every
//! outcome (answers by status, answers cut mid-body, connections closed unanswered, requests
//! that hung), and the `vivgate` binary as a process with its admin API and `/proc` figures.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use vivgate::clock::{Clock, Month, SystemClock};

/// The month the binaries count in (they run on the system clock).
pub fn this_month() -> String {
    Month::containing(SystemClock.now_ms()).to_string()
}

/// One client of the load: a connection of its own to `addr`, one request every `every`.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The answers are tallied under this name.
    pub label: &'static str,
    pub key: &'static str,
    pub path: String,
    pub every: Duration,
}

/// Everything a load saw.
#[derive(Default, Debug)]
pub struct Tally {
    pub statuses: BTreeMap<u16, u64>,
    /// Answers by target label and status.
    pub per_key: BTreeMap<(&'static str, u16), u64>,
    /// Error envelopes by status and message.
    pub errors: BTreeMap<(u16, String), u64>,
    /// The head arrived, then the connection closed before the body's end.
    pub cut: u64,
    /// The connection closed (or failed) before an answer's head.
    pub unanswered: u64,
    /// No connection could be made.
    pub refused: u64,
    /// No complete answer within the load's bound.
    pub hung: u64,
    /// Answers that break the contract (the first 20).
    pub bad: Vec<String>,
    pub latencies_us: Vec<u32>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in o.per_key {
            *self.per_key.entry(k).or_default() += v;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.cut += o.cut;
        self.unanswered += o.unanswered;
        self.refused += o.refused;
        self.hung += o.hung;
        for b in o.bad {
            if self.bad.len() < 20 {
                self.bad.push(b);
            }
        }
        self.latencies_us.extend(o.latencies_us);
    }

    pub fn answered(&self) -> u64 {
        self.statuses.values().sum()
    }

    pub fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    /// Answers with `status` to the targets labelled `label`.
    pub fn label_count(&self, label: &str, status: u16) -> u64 {
        self.per_key
            .iter()
            .filter(|((k, s), _)| *k == label && *s == status)
            .map(|(_, n)| n)
            .sum()
    }

    /// The `q` quantile (0–1) of the answers' latencies (sorted by [`Load::stop`]).
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies_us.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        Duration::from_micros(u64::from(self.latencies_us[i]))
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(u64::from(self.latencies_us.last().copied().unwrap_or(0)))
    }

    pub fn summary(&self) -> String {
        let (p50, p99, max) = (self.quantile(0.5), self.quantile(0.99), self.max());
        format!(
            "answers {:?}, cut {}, unanswered {}, refused {}, hung {}, p50 {p50:?}, p99 {p99:?}, max {max:?}, errors {:?}",
            self.statuses, self.cut, self.unanswered, self.refused, self.hung, self.errors
        )
    }
}

/// A running load; [`Load::stop`] ends it and returns the tally.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Load {
    /// Starts one client per target. A request without a complete answer within `hang` counts
    /// as hung (and its connection is dropped).
    pub fn start(targets: Vec<Target>, hang: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = targets
            .into_iter()
            .map(|t| tokio::spawn(client(t, hang, stop.clone())))
            .collect();
        Load { stop, tasks }
    }

    pub async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Tally::default();
        for t in self.tasks {
            all.merge(t.await.unwrap());
        }
        all.latencies_us.sort_unstable();
        all
    }
}

/// Why a request got no complete answer.
pub enum Fail {
    Unanswered,
    Cut,
}

pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub close: bool,
}

async fn client(t: Target, hang: Duration, stop: Arc<AtomicBool>) -> Tally {
    let mut tally = Tally::default();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: chaos\r\nAuthorization: Bearer {}\r\n\r\n",
        t.path, t.key
    );
    let mut tick = tokio::time::interval(t.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if conn.is_none() {
            match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(t.addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    conn = Some((s, Vec::new()));
                }
                _ => {
                    tally.refused += 1;
                    continue;
                }
            }
        }
        let (stream, buf) = conn.as_mut().expect("connected above");
        let started = Instant::now();
        match tokio::time::timeout(hang, exchange(stream, buf, request.as_bytes())).await {
            Err(_) => {
                tally.hung += 1;
                conn = None;
            }
            Ok(Err(Fail::Unanswered)) => {
                tally.unanswered += 1;
                conn = None;
            }
            Ok(Err(Fail::Cut)) => {
                tally.cut += 1;
                conn = None;
            }
            Ok(Ok(a)) => {
                let us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                tally.latencies_us.push(us);
                *tally.statuses.entry(a.status).or_default() += 1;
                *tally.per_key.entry((t.label, a.status)).or_default() += 1;
                if a.status != 200 {
                    match envelope_error(&a.body) {
                        Some(msg) => *tally.errors.entry((a.status, msg)).or_default() += 1,
                        None if tally.bad.len() < 20 => tally.bad.push(format!(
                            "{} {}: {}",
                            a.status,
                            t.path,
                            String::from_utf8_lossy(&a.body)
                        )),
                        None => {}
                    }
                }
                if a.close {
                    conn = None;
                }
            }
        }
    }
    tally
}

/// The error message of a Vivreal error envelope; `None` when the body is not one.
pub fn envelope_error(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let o = v.as_object()?;
    (o.len() == 3 && o.get("success")? == false && o.get("data")?.is_null())
        .then(|| o.get("error")?.as_str().map(str::to_string))
        .flatten()
}

/// One request on `stream` and its whole answer (any 1xx skipped).
async fn exchange(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    request: &[u8],
) -> Result<Answer, Fail> {
    buf.clear();
    stream
        .write_all(request)
        .await
        .map_err(|_| Fail::Unanswered)?;
    read_answer(stream, buf).await
}

/// Reads one answer from `stream`, `buf` holding what was read before.
pub async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Answer, Fail> {
    let (status, close, framing, at) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = r.code.unwrap_or(0);
                if (100..200).contains(&status) {
                    buf.drain(..n);
                    continue;
                }
                let header = |name: &str| {
                    r.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
                };
                let close = header("connection").is_some_and(|v| v.contains("close"));
                let framing = if status == 204 || status == 304 {
                    Some(0)
                } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                    None
                } else {
                    Some(
                        header("content-length")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(usize::MAX),
                    )
                };
                break (status, close, framing, n);
            }
            Ok(httparse::Status::Partial) => {
                if fill(stream, buf).await == 0 {
                    return Err(Fail::Unanswered);
                }
            }
            Err(_) => return Err(Fail::Unanswered),
        }
    };
    buf.drain(..at);
    let body = match framing {
        Some(usize::MAX) => {
            // until close
            while fill(stream, buf).await > 0 {}
            std::mem::take(buf)
        }
        Some(len) => {
            while buf.len() < len {
                if fill(stream, buf).await == 0 {
                    return Err(Fail::Cut);
                }
            }
            buf.drain(..len).collect()
        }
        None => {
            let mut body = Vec::new();
            loop {
                let line = loop {
                    if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    if fill(stream, buf).await == 0 {
                        return Err(Fail::Cut);
                    }
                };
                let size = std::str::from_utf8(&buf[..line])
                    .ok()
                    .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                    .ok_or(Fail::Cut)?;
                buf.drain(..line + 2);
                while buf.len() < size + 2 {
                    if fill(stream, buf).await == 0 {
                        return Err(Fail::Cut);
                    }
                }
                body.extend(buf.drain(..size));
                buf.drain(..2);
                if size == 0 {
                    break body;
                }
            }
        }
    };
    Ok(Answer {
        status,
        body,
        close: close || framing == Some(usize::MAX),
    })
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 16384];
    let n = stream.read(&mut chunk).await.unwrap_or(0);
    buf.extend_from_slice(&chunk[..n]);
    n
}

/// One `vivgate` binary, its public port and its admin listener.
pub struct Gate {
    pub proc: Killer,
    pub port: u16,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Gate {
    /// Starts the binary on `config` (which listens on `port`, admin on `admin_port`), its output
    /// appended to `log`; waits until both listeners answer.
    pub async fn start(config: &Path, port: u16, admin_port: u16, log: &Path) -> Gate {
        Self::start_with(config, port, admin_port, log, |_| {}).await
    }

    /// Like [`Gate::start`], `prepare` adjusting the command first (limits, environment).
    pub async fn start_with(
        config: &Path,
        port: u16,
        admin_port: u16,
        log: &Path,
        prepare: impl FnOnce(&mut std::process::Command),
    ) -> Gate {
        let out = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap()
        };
        let mut cmd = vivgate();
        cmd.arg("--config").arg(config).stdout(out()).stderr(out());
        prepare(&mut cmd);
        let proc = Killer(cmd.spawn().unwrap());
        let mut gate = Gate {
            proc,
            port,
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            config: config.to_path_buf(),
            log: log.to_path_buf(),
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = gate.proc.0.try_wait() {
                panic!(
                    "the binary exited ({status}) before listening; its log:\n{}",
                    gate.log_text()
                );
            }
            if TcpStream::connect(gate.addr()).await.is_ok()
                && TcpStream::connect(gate.admin).await.is_ok()
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the binary did not listen within 20 s; its log:\n{}",
                gate.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gate
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> i32 {
        self.proc.0.id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Open file descriptors.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Resident memory minus what the allocator has freed lazily (`MADV_FREE`, which stays in
    /// RSS until the kernel needs it), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", self.pid()))
            .unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        field("Rss:").saturating_sub(field("LazyFree:"))
    }

    /// An admin API request; its status and body.
    pub async fn admin(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut c = Client::connect(self.admin).await;
        let r = c
            .request(
                &format!(
                    "{method} {path} HTTP/1.1\nHost: {}\nConnection: close\nContent-Type: application/json\nContent-Length: {}",
                    self.admin,
                    body.len()
                ),
                body.as_bytes(),
            )
            .await;
        (r.status, r.text())
    }

    /// The sum of a metric's samples over all its labels (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let (status, text) = self.admin("GET", "/metrics", "").await;
        assert_eq!(status, 200, "{text}");
        metric_sum(&text, name)
    }

    /// A group's usage this month by the admin API: (calls, bytes), overage included.
    pub async fn usage(&self, group: &str) -> (u64, u64) {
        let (status, text) = self.admin("GET", &format!("/usage/{group}"), "").await;
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let d = &v["data"]["group"];
        (
            d["calls"].as_u64().unwrap_or(0),
            d["bytes"].as_u64().unwrap_or(0),
        )
    }

    /// Waits (at most 5 s) until [`Gate::usage`] of `group` is `want`, and returns the last value:
    /// bytes are metered as a request ends, just after its client has the answer.
    pub async fn usage_settled(&self, group: &str, want: (u64, u64)) -> (u64, u64) {
        let start = Instant::now();
        loop {
            let got = self.usage(group).await;
            if got == want || start.elapsed() > Duration::from_secs(5) {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, and the exit (a graceful stop) within 30 s.
    pub async fn stop(&mut self) {
        let status = wait_exit(&mut self.proc, Some(libc::SIGTERM), Duration::from_secs(30)).await;
        assert!(status.success(), "{status}; log:\n{}", self.log_text());
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.proc.0.kill();
        let _ = self.proc.0.wait();
    }
}

pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A free loopback port, and another: (public, admin).
pub async fn two_ports() -> (u16, u16) {
    loop {
        let (a, b) = (free_port().await, free_port().await);
        if a != b {
            return (a, b);
        }
    }
}

/// `text` with `from` replaced, which must be there.
pub fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is not in the config");
    text.replacen(from, to, 1)
}

/// A config for a binary: the harness's, listening on `port`, the admin API on `admin_port`,
/// `server_extra` added to `[server]` and `tail` appended.
pub fn gate_config(
    h: &Harness,
    name: &str,
    port: u16,
    admin_port: u16,
    server_extra: &str,
    tail: &str,
) -> PathBuf {
    h.binary_config(
        name,
        port,
        server_extra,
        &format!("{tail}\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n"),
    )
}

/// The id of the `i`th group of [`extra_groups`].
pub fn extra_group_id(i: usize) -> String {
    format!("{:024x}", 0xb000_0000_0000u64 + i as u64)
}

/// `n` more groups for a tenants file, of the pro tier, the `i`th with the key `{key}-{i}`.
pub fn extra_groups(key: &str, n: usize) -> String {
    use vivgate::keys::{format_key_hash, hash_key};
    (0..n)
        .map(|i| {
            format!(
                "[[groups]]\nid = \"{}\"\ntier = \"pro\"\nstatus = \"active\"\nkeys = [\"{}\"]\n\n",
                extra_group_id(i),
                format_key_hash(&hash_key(format!("{key}-{i}").as_bytes()))
            )
        })
        .collect()
}

/// Instance `i` of a fleet sharing `redis_url` as its usage store: its config in a directory
/// of its own (each instance keeps its own copies of the tenants and overrides there), the tiny
/// tier's quota set to `quota`, `usage_extra` added to `[usage]`, and with `fleet_tenants` the
/// tenants read from the same Redis. Returns the config and its (public, admin) ports.
pub async fn fleet_config(
    h: &Harness,
    i: usize,
    redis_url: &str,
    fleet_tenants: bool,
    quota: u64,
    usage_extra: &str,
) -> (PathBuf, u16, u16) {
    let (port, admin_port) = two_ports().await;
    std::fs::create_dir_all(h.dir.path().join(format!("i{i}"))).unwrap();
    let tail = format!(
        "[usage]\nstore = \"redis\"\nredis_url = \"{redis_url}\"\nflush_interval_ms = 200\nlease_idle_ms = 300\nlease_ttl_ms = 2000\n{usage_extra}\n"
    );
    let config = gate_config(
        h,
        &format!("i{i}/vivgate.toml"),
        port,
        admin_port,
        "grace_period_seconds = 1",
        &tail,
    );
    let mut text = edit(
        &std::fs::read_to_string(&config).unwrap(),
        "api_calls = 5",
        &format!("api_calls = {quota}"),
    );
    if fleet_tenants {
        text = edit(
            &text,
            "tenants = \"tenants.toml\"",
            &format!("tenants = \"{redis_url}\""),
        );
    } else {
        text = edit(
            &text,
            "tenants = \"tenants.toml\"",
            "tenants = \"../tenants.toml\"",
        );
    }
    std::fs::write(&config, text).unwrap();
    (config, port, admin_port)
}

/// `vivgate tenants push`: the test groups into the Redis that `config` names.
pub fn push_tenants(h: &Harness, config: &Path) {
    let out = vivgate()
        .args(["tenants", "push", "--config"])
        .arg(config)
        .arg("--file")
        .arg(h.dir.path().join("tenants.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A group's usage hash in Redis this month: `calls`, `calls_overage`, `bytes`, `bytes_overage`
/// and the per-instance fields.
pub async fn redis_usage(url: &str, group: &str) -> std::collections::HashMap<String, String> {
    let c = redis::Client::open(url).unwrap();
    let mut con = c
        .get_multiplexed_async_connection_with_config(&crate::common::redis_server::patient())
        .await
        .unwrap();
    redis::cmd("HGETALL")
        .arg(format!("vivgate:usage:{{{group}}}:{}", this_month()))
        .query_async(&mut con)
        .await
        .unwrap()
}

/// A number field of [`redis_usage`] (0 when absent).
pub fn field(h: &std::collections::HashMap<String, String>, name: &str) -> u64 {
    h.get(name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The status `addr` answers a GET of `key` with (0: no answer).
pub async fn status_of(addr: SocketAddr, key: &str) -> u16 {
    let mut c = Client::connect(addr).await;
    c.try_request(
        &format!("GET /tenant/integrationObjects?type=probe HTTP/1.1\nHost: t\nAuthorization: Bearer {key}\nConnection: close"),
        b"",
    )
    .await
    .map_or(0, |r| r.status)
}
