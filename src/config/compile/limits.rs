//! `[limits]`: the abuse and size limits, in the units the gateway uses.

use std::path::Path;
use std::time::Duration;

use super::super::file;
use super::super::{err, ConfigError, FailedAuthLimit, Limits, MAX_JSON_BODY_LIMIT};

pub(crate) fn limits(cfg: &Path, l: &file::LimitsSection) -> Result<Limits, ConfigError> {
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
