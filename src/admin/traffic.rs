//! The last 15 minutes of traffic, for the console: every [`INTERVAL`] the admin listener
//! reads the gateway's counters (the ones `/metrics` shows; nothing is added to the request
//! path) and keeps what changed in a ring of [`KEPT`] samples: answers, rejections by reason,
//! and per route answers, server errors (5xx, the gateway's own 502/503/504 included) and the
//! backend's latency (p50 and p99, interpolated in the histogram's buckets as Prometheus's
//! `histogram_quantile` does).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use prometheus::core::Collector;
use serde::Serialize;

use crate::metrics::Metrics;

/// How often a sample is taken.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// 15 minutes of samples.
pub const KEPT: usize = 180;

#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteSample {
    pub requests: u64,
    pub errors: u64,
    /// Backend answers whose latency was observed.
    pub upstream: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// The end of the interval (ms since the epoch) and its length.
    pub at_ms: i64,
    pub seconds: f64,
    pub requests: u64,
    pub rejections: BTreeMap<String, u64>,
    pub routes: BTreeMap<String, RouteSample>,
}

/// The counters' values at the last sample.
#[derive(Debug, Default, Clone)]
struct Totals {
    at_ms: i64,
    /// (route, status) → answers
    requests: HashMap<(String, String), u64>,
    rejections: HashMap<String, u64>,
    /// route → cumulative bucket counts (upper bound, count), and the total count
    upstream: HashMap<String, (Vec<(f64, u64)>, u64)>,
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    m.get_label()
        .iter()
        .find(|l| l.name() == name)
        .map_or("", |l| l.value())
}

impl Totals {
    fn read(metrics: &Metrics, at_ms: i64) -> Totals {
        let mut t = Totals {
            at_ms,
            ..Default::default()
        };
        for family in metrics.requests.collect() {
            for m in family.get_metric() {
                let key = (
                    label(m, "route").to_string(),
                    label(m, "status").to_string(),
                );
                t.requests.insert(key, m.get_counter().get_value() as u64);
            }
        }
        for family in metrics.rejections.collect() {
            for m in family.get_metric() {
                t.rejections.insert(
                    label(m, "reason").to_string(),
                    m.get_counter().get_value() as u64,
                );
            }
        }
        for family in metrics.upstream_seconds.collect() {
            for m in family.get_metric() {
                let h = m.get_histogram();
                let buckets = h
                    .get_bucket()
                    .iter()
                    .map(|b| (b.upper_bound(), b.cumulative_count()))
                    .collect();
                t.upstream.insert(
                    label(m, "route").to_string(),
                    (buckets, h.get_sample_count()),
                );
            }
        }
        t
    }

    /// What changed from `before` to `self`.
    fn since(&self, before: &Totals) -> Sample {
        let mut s = Sample {
            at_ms: self.at_ms,
            seconds: (self.at_ms - before.at_ms).max(1) as f64 / 1000.0,
            ..Default::default()
        };
        for ((route, status), n) in &self.requests {
            let d = n - before
                .requests
                .get(&(route.clone(), status.clone()))
                .copied()
                .unwrap_or(0)
                .min(*n);
            if d == 0 {
                continue;
            }
            s.requests += d;
            let r = s.routes.entry(route.clone()).or_default();
            r.requests += d;
            if status.starts_with('5') {
                r.errors += d;
            }
        }
        for (reason, n) in &self.rejections {
            let d = n - before.rejections.get(reason).copied().unwrap_or(0).min(*n);
            if d > 0 {
                s.rejections.insert(reason.clone(), d);
            }
        }
        for (route, (buckets, count)) in &self.upstream {
            let (old_buckets, old_count) = before
                .upstream
                .get(route)
                .cloned()
                .unwrap_or_else(|| (Vec::new(), 0));
            let n = count - old_count.min(*count);
            if n == 0 {
                continue;
            }
            let delta: Vec<(f64, u64)> = buckets
                .iter()
                .enumerate()
                .map(|(i, (le, c))| {
                    let old = old_buckets.get(i).map_or(0, |b| b.1);
                    (*le, c - old.min(*c))
                })
                .collect();
            let r = s.routes.entry(route.clone()).or_default();
            r.upstream = n;
            r.p50_ms = quantile(&delta, n, 0.5).map(|x| x * 1000.0);
            r.p99_ms = quantile(&delta, n, 0.99).map(|x| x * 1000.0);
        }
        s
    }
}

/// The `q` quantile of `count` observations in cumulative `buckets` (upper bound, count),
/// interpolated linearly inside the bucket it falls in; past the last bound, that bound.
fn quantile(buckets: &[(f64, u64)], count: u64, q: f64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(le, c) in buckets {
        if c as f64 >= rank {
            let inside = (c - below) as f64;
            let into = if inside > 0.0 {
                (rank - below as f64) / inside
            } else {
                1.0
            };
            return Some(lower + (le - lower) * into);
        }
        lower = le;
        below = c;
    }
    Some(lower)
}

#[derive(Default)]
pub struct Traffic {
    inner: Mutex<(VecDeque<Sample>, Option<Totals>)>,
}

impl Traffic {
    /// Takes a sample at `now_ms` (the first one only sets the starting point).
    pub fn sample(&self, metrics: &Metrics, now_ms: i64) {
        let now = Totals::read(metrics, now_ms);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(before) = &inner.1 {
            let s = now.since(before);
            if inner.0.len() == KEPT {
                inner.0.pop_front();
            }
            inner.0.push_back(s);
        }
        inner.1 = Some(now);
    }

    /// The samples, oldest first, and what changed since the last one (the chart's last
    /// point, not kept).
    pub fn view(&self, metrics: &Metrics, now_ms: i64) -> (Vec<Sample>, Option<Sample>) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let current = inner
            .1
            .as_ref()
            .map(|before| Totals::read(metrics, now_ms).since(before));
        (inner.0.iter().cloned().collect(), current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_in_their_bucket() {
        // 100 observations: 50 up to 1 ms, 40 up to 5 ms, 10 up to 10 ms
        let b = [(0.001, 50), (0.005, 90), (0.01, 100)];
        assert_eq!(quantile(&b, 100, 0.5), Some(0.001));
        let p99 = quantile(&b, 100, 0.99).unwrap();
        assert!((p99 - 0.0095).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(&b, 0, 0.5), None);
        // past the last bucket (the +Inf one is not listed): the last bound
        assert_eq!(quantile(&[(0.001, 1)], 2, 0.99), Some(0.001));
    }

    #[test]
    fn a_sample_is_what_changed_and_the_ring_keeps_15_minutes() {
        let metrics = Metrics::new();
        let traffic = Traffic::default();
        traffic.sample(&metrics, 0);
        metrics.requests.with_label_values(&["/a", "200"]).inc_by(8);
        metrics.requests.with_label_values(&["/a", "502"]).inc_by(2);
        metrics
            .requests
            .with_label_values(&["none", "401"])
            .inc_by(3);
        metrics
            .rejections
            .with_label_values(&["invalid_key"])
            .inc_by(3);
        for _ in 0..10 {
            metrics
                .upstream_seconds
                .with_label_values(&["/a"])
                .observe(0.002);
        }
        traffic.sample(&metrics, 5_000);
        let (samples, current) = traffic.view(&metrics, 6_000);
        assert_eq!(samples.len(), 1);
        let s = &samples[0];
        assert_eq!((s.requests, s.seconds), (13, 5.0));
        assert_eq!(s.rejections["invalid_key"], 3);
        let a = &s.routes["/a"];
        assert_eq!((a.requests, a.errors, a.upstream), (10, 2, 10));
        assert!(a.p50_ms.unwrap() > 1.0 && a.p50_ms.unwrap() <= 2.5);
        assert_eq!(current.unwrap().requests, 0);
        for i in 0..200 {
            traffic.sample(&metrics, 10_000 + i * 5_000);
        }
        assert_eq!(traffic.view(&metrics, 0).0.len(), KEPT);
    }
}
