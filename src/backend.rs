//! A small real HTTP backend on pingora: the demo's stand-in for the Vivreal API, and the
//! backend the integration tests put behind the gateway. It records every request it receives.
//!
//! - `/slow/...?ms=N` answers after N milliseconds (default 2000);
//! - `/cdn/...?size=N&ms=M` answers N bytes of `application/octet-stream` (default 1024) after
//!   M milliseconds (default 0);
//! - `/status/N` answers status N with a JSON body of its own;
//! - anything else answers 200 with a JSON echo of what it received.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

/// A request as the backend received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The largest `/cdn/` answer, so a request cannot exhaust the demo's memory.
const MAX_CDN_BODY: u64 = 16 << 20;
/// How many received requests are kept (the oldest are dropped).
const MAX_RECORDED: usize = 10_000;

#[derive(Default, Clone)]
pub struct Backend {
    received: Arc<Mutex<std::collections::VecDeque<Received>>>,
    total: Arc<std::sync::atomic::AtomicU64>,
    /// Requests received per `X-Vivreal-Group-Id` (the gateway's identity header).
    per_group: Arc<Mutex<std::collections::HashMap<String, u64>>>,
}

impl Backend {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many requests were received in all (the record keeps only the last 10,000).
    pub fn total(&self) -> u64 {
        self.total.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many requests were received for `group` (by the `X-Vivreal-Group-Id` the gateway set).
    pub fn total_for(&self, group: &str) -> u64 {
        self.per_group
            .lock()
            .map(|m| m.get(group).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// The requests received so far (the last 10,000), oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn query_param(query: Option<&str>, name: &str) -> Option<u64> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
}

#[async_trait]
impl ServeHttp for Backend {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header().clone();
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = session.read_request_body().await {
            body.extend_from_slice(&chunk);
        }
        let received = Received {
            method: req.method.to_string(),
            uri: req.uri.to_string(),
            headers: req
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
        };
        self.total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(group) = received.header("x-vivreal-group-id") {
            if let Ok(mut m) = self.per_group.lock() {
                *m.entry(group.to_string()).or_default() += 1;
            }
        }
        if let Ok(mut v) = self.received.lock() {
            if v.len() >= MAX_RECORDED {
                v.pop_front();
            }
            v.push_back(received.clone());
        }
        let path = req.uri.path();
        let query = req.uri.query();
        let (status, content_type, out) = if path.starts_with("/slow/") {
            let ms = query_param(query, "ms").unwrap_or(2000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (
                200,
                "application/json",
                br#"{"success": true, "data": "slow", "error": null}"#.to_vec(),
            )
        } else if path.starts_with("/cdn/") {
            let size = query_param(query, "size").unwrap_or(1024).min(MAX_CDN_BODY) as usize;
            if let Some(ms) = query_param(query, "ms") {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            (200, "application/octet-stream", vec![b'x'; size])
        } else if let Some(code) = path
            .strip_prefix("/status/")
            .and_then(|c| c.parse::<u16>().ok())
        {
            (
                code,
                "application/json",
                format!(r#"{{"backend_status": {code}}}"#).into_bytes(),
            )
        } else {
            let echo = serde_json::json!({
                "success": true,
                "data": {
                    "method": received.method,
                    "uri": received.uri,
                    "group": received.header("x-vivreal-group-id"),
                    "tier": received.header("x-vivreal-tier"),
                    "body_bytes": received.body.len(),
                },
                "error": null,
            });
            (200, "application/json", echo.to_string().into_bytes())
        };
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("content-length", out.len())
            .body(out)
            .unwrap_or_default()
    }
}
