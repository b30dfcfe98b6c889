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
        for c in [
            Box::new(tenants_from_copy.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(tenants_version.clone()),
            Box::new(requests.clone()),
            Box::new(rejections.clone()),
            Box::new(upstream_seconds.clone()),
            Box::new(reloads.clone()),
            Box::new(flush_failures.clone()),
            Box::new(answers_cut.clone()),
            Box::new(servers_marked_down.clone()),
            Box::new(usage_calls.clone()),
            Box::new(usage_bytes.clone()),
            Box::new(flush_age.clone()),
        ] {
            let _ = registry.register(c);
        }
        Metrics {
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
            flush_age,
            last_flush_ms: AtomicI64::new(0),
        }
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
