//! Prometheus metrics, in a registry per gateway (`GET /metrics` on the admin listener).
//! The request path touches only pre-registered counters and one histogram.

use std::sync::atomic::{AtomicI64, Ordering};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Answers by route (its path or prefix; `none` when no route matched) and status.
    pub requests: IntCounterVec,
    /// Requests the gateway answered itself, by reason.
    pub rejections: IntCounterVec,
    /// Time from choosing an upstream server to its response head, by route.
    pub upstream_seconds: HistogramVec,
    /// Reloads by result (`ok`, `refused`).
    pub reloads: IntCounterVec,
    pub flush_failures: IntCounter,
    /// Answers whose head reached the client but whose body the backend cut short.
    pub answers_cut: IntCounter,
    /// Upstream servers marked down by passive health (consecutive connect failures).
    pub servers_marked_down: IntCounter,
    /// Calls and bytes used this month, summed per tier (set at scrape time).
    pub usage_calls: IntGaugeVec,
    pub usage_bytes: IntGaugeVec,
    /// 1 while the tenants come from the disk copy because Redis could not be read.
    pub tenants_from_copy: prometheus::IntGauge,
    /// The Redis tenants version served (0 for a tenants file).
    pub tenants_version: prometheus::IntGauge,
    /// Client connections open, and `limits.max_connections` (set at scrape time).
    pub connections_open: prometheus::IntGauge,
    pub connections_max: prometheus::IntGauge,
    /// Client addresses the failed-authentication limiter blocks now (set at scrape time).
    pub failed_auth_blocked: prometheus::IntGauge,
    /// Groups at or past 80 % and 100 % of a quota this month, by tier and meter (counts, set
    /// at scrape time: no series per group).
    pub groups_at_quota: IntGaugeVec,
    flush_age: prometheus::Gauge,
    last_flush_ms: AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The registry behind `/metrics`, for collectors registered elsewhere (a store's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("vivgate".into()), None).unwrap_or_default();
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Answers by route and status"),
            &["route", "status"],
        )
        .expect("valid metric");
        let rejections = IntCounterVec::new(
            Opts::new(
                "rejections_total",
                "Requests answered by the gateway itself, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let upstream_seconds = HistogramVec::new(
            HistogramOpts::new(
                "upstream_response_seconds",
                "Upstream response head latency, by route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new("reloads_total", "Config reloads by result"),
            &["result"],
        )
        .expect("valid metric");
        let flush_failures = IntCounter::new(
            "usage_flush_failures_total",
            "Usage store flushes that failed",
        )
        .expect("valid metric");
        let answers_cut = IntCounter::new(
            "upstream_answers_cut_total",
            "Answers cut mid-body by the backend (the client connection was closed)",
        )
        .expect("valid metric");
        let servers_marked_down = IntCounter::new(
            "upstream_servers_marked_down_total",
            "Upstream servers marked down after consecutive connect failures",
        )
        .expect("valid metric");
        let usage_calls = IntGaugeVec::new(
            Opts::new("usage_calls", "API calls used this month, per tier"),
            &["tier"],
        )
        .expect("valid metric");
        let usage_bytes = IntGaugeVec::new(
            Opts::new("usage_bytes", "CDN bytes used this month, per tier"),
            &["tier"],
        )
        .expect("valid metric");
        let flush_age = prometheus::Gauge::new(
            "usage_flush_age_seconds",
            "Seconds since the usage store last flushed successfully (the kill -9 exposure)",
        )
        .expect("valid metric");
        let tenants_from_copy = prometheus::IntGauge::new(
            "tenants_from_copy",
            "1 while the tenants are served from the disk copy because Redis could not be read",
        )
        .expect("valid metric");
        let tenants_version = prometheus::IntGauge::new(
            "tenants_version",
            "The Redis tenants version served (0 for a tenants file)",
        )
        .expect("valid metric");
        let connections_open =
            prometheus::IntGauge::new("connections_open", "Client connections open now")
                .expect("valid metric");
        let connections_max = prometheus::IntGauge::new(
            "connections_max",
            "limits.max_connections: more connections are answered 503",
        )
        .expect("valid metric");
        let failed_auth_blocked = prometheus::IntGauge::new(
            "failed_auth_blocked_addresses",
            "Client addresses blocked now after too many failed authentications",
        )
        .expect("valid metric");
        let groups_at_quota = IntGaugeVec::new(
            Opts::new(
                "groups_at_quota",
                "Groups at or past a share of a monthly quota this month (threshold 0.8 or 1)",
            ),
            &["tier", "meter", "threshold"],
        )
        .expect("valid metric");
        let m = Metrics {
            registry,
            requests,
            rejections,
            upstream_seconds,
            reloads,
            flush_failures,
            answers_cut,
            servers_marked_down,
            usage_calls,
            usage_bytes,
            tenants_from_copy,
            tenants_version,
            connections_open,
            connections_max,
            failed_auth_blocked,
            groups_at_quota,
            flush_age,
            last_flush_ms: AtomicI64::new(0),
        };
        for c in m.collectors() {
            let _ = m.registry.register(c);
        }
        m
    }

    /// Every metric family the gateway can export, prefixed (a scrape omits a family with no
    /// sample yet): its own and the Redis store's.
    pub fn family_names() -> Vec<String> {
        let m = Metrics::new();
        let mut names: Vec<String> = m
            .collectors()
            .iter()
            .flat_map(|c| c.desc())
            .map(|d| d.fq_name.clone())
            .chain(crate::usage::redis::metric_family_names())
            .map(|n| format!("vivgate_{n}"))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.tenants_from_copy.clone()),
            Box::new(self.connections_open.clone()),
            Box::new(self.connections_max.clone()),
            Box::new(self.failed_auth_blocked.clone()),
            Box::new(self.groups_at_quota.clone()),
            Box::new(self.tenants_version.clone()),
            Box::new(self.requests.clone()),
            Box::new(self.rejections.clone()),
            Box::new(self.upstream_seconds.clone()),
            Box::new(self.reloads.clone()),
            Box::new(self.flush_failures.clone()),
            Box::new(self.answers_cut.clone()),
            Box::new(self.servers_marked_down.clone()),
            Box::new(self.usage_calls.clone()),
            Box::new(self.usage_bytes.clone()),
            Box::new(self.flush_age.clone()),
        ]
    }

    pub fn flushed(&self, now_ms: i64, ok: bool) {
        if ok {
            self.last_flush_ms.store(now_ms, Ordering::Relaxed);
        } else {
            self.flush_failures.inc();
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, now_ms: i64) -> String {
        let last = self.last_flush_ms.load(Ordering::Relaxed);
        self.flush_age.set(if last == 0 {
            0.0
        } else {
            (now_ms - last).max(0) as f64 / 1000.0
        });
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
