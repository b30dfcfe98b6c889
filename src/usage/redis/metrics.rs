//! The shared store's Prometheus metrics.

/// Prometheus metrics of the shared store.
pub(super) struct StoreMetrics {
    pub(super) lease_grants: prometheus::IntCounter,
    pub(super) leased_calls: prometheus::IntCounter,
    pub(super) latency: prometheus::Histogram,
    pub(super) unavailable_seconds: prometheus::Counter,
    pub(super) unavailable: prometheus::IntGauge,
    pub(super) replayed_calls: prometheus::IntCounter,
    pub(super) outage_admitted: prometheus::IntCounter,
    pub(super) outage_bound: prometheus::IntGauge,
}

impl StoreMetrics {
    pub(super) fn new() -> Self {
        use prometheus::{Counter, Histogram, HistogramOpts, IntCounter, IntGauge};
        StoreMetrics {
            lease_grants: IntCounter::new("redis_lease_grants_total", "Quota leases granted")
                .expect("metric"),
            leased_calls: IntCounter::new("redis_leased_calls_total", "Calls granted in leases")
                .expect("metric"),
            latency: Histogram::with_opts(
                HistogramOpts::new("redis_seconds", "Redis script latency").buckets(vec![
                    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
                ]),
            )
            .expect("metric"),
            unavailable_seconds: Counter::new(
                "redis_unavailable_seconds_total",
                "Time Redis was unavailable",
            )
            .expect("metric"),
            unavailable: IntGauge::new("redis_unavailable", "1 while Redis is unavailable")
                .expect("metric"),
            replayed_calls: IntCounter::new(
                "redis_replayed_calls_total",
                "Calls admitted during an outage and added to Redis after it",
            )
            .expect("metric"),
            outage_admitted: IntCounter::new(
                "redis_outage_admitted_calls_total",
                "Calls admitted under the outage allowance",
            )
            .expect("metric"),
            outage_bound: IntGauge::new(
                "redis_outage_allowance_calls",
                "Largest per-instance outage allowance of any group counted this month",
            )
            .expect("metric"),
        }
    }
}
