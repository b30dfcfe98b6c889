//! The access log: one JSON line per request, written through a bounded, non-blocking,
//! buffered writer (a thread of its own), so the request path never waits on a disk. When the
//! buffer is full a line is dropped rather than a request delayed; `vivgate_access_log_dropped`
//! is not exported yet, the writer counts nothing.
//!
//! A line never holds the key, nor the query string unless `access_log.include_query` is set.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSettings {
    pub target: Target,
    pub include_query: bool,
}

pub struct AccessLog {
    writer: NonBlocking,
    include_query: bool,
    _guard: WorkerGuard,
}

/// One request, as the log line tells it.
pub struct Entry<'a> {
    pub time_ms: i64,
    pub request_id: &'a str,
    pub client: Option<std::net::IpAddr>,
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub route: Option<&'a str>,
    pub group: Option<&'a str>,
    pub tier: Option<&'a str>,
    pub status: u16,
    pub reason: Option<&'a str>,
    pub upstream: Option<SocketAddr>,
    pub upstream_ms: Option<f64>,
    pub total_ms: f64,
    pub bytes_in: usize,
    pub bytes_out: usize,
}

impl AccessLog {
    pub fn open(settings: &AccessLogSettings) -> std::io::Result<AccessLog> {
        let builder = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(64 * 1024)
            .thread_name("vivgate-access-log");
        let (writer, guard) = match &settings.target {
            Target::Stdout => builder.finish(std::io::stdout()),
            Target::File(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                builder.finish(std::io::BufWriter::new(file))
            }
        };
        Ok(AccessLog {
            writer,
            include_query: settings.include_query,
            _guard: guard,
        })
    }

    pub fn write(&self, e: &Entry<'_>) {
        let line = serde_json::json!({
            "time": crate::clock::format_utc_ms(e.time_ms),
            "request_id": e.request_id,
            "client": e.client.map(|a| a.to_string()),
            "method": e.method,
            "path": e.path,
            "query": if self.include_query { e.query } else { None },
            "route": e.route,
            "group": e.group,
            "tier": e.tier,
            "status": e.status,
            "reason": e.reason,
            "upstream": e.upstream.map(|a| a.to_string()),
            "upstream_ms": e.upstream_ms,
            "total_ms": e.total_ms,
            "bytes_in": e.bytes_in,
            "bytes_out": e.bytes_out,
        });
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        // one write: the line reaches the writer thread whole, or (buffer full) not at all
        let _ = self.writer.clone().write_all(&bytes);
    }
}
