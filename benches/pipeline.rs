//! Criterion benchmarks of the decision pipeline without I/O, the quota counters under
//! contention, and building and swapping a 1,000,000-key snapshot.
//!
//! `cargo bench --bench pipeline` (results in benches/README.md).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Method};

use vivgate::clock::Month;
use vivgate::config::file::{ConfigFile, GroupSection, GroupStatus, TenantsFile};
use vivgate::config::{compile, Snapshot};
use vivgate::keys::{format_key_hash, hash_key};
use vivgate::pipeline::check_head;
use vivgate::usage::{GroupId, MemoryStore, Take};

const CONFIG: &str = r#"tenants = "tenants.toml"
[tiers.bench]
api_calls = 1_000_000_000_000
cdn_bytes = 1_000_000_000_000
[upstreams.api]
servers = ["127.0.0.1:3000"]
[[routes]]
path = "/tenant/collectionObjects"
methods = ["GET"]
upstream = "api"
required_query = ["collectionId"]
id_query = ["collectionId"]
[[routes]]
path = "/tenant/siteDetails"
methods = ["GET"]
upstream = "api"
required_query = ["siteId"]
id_query = ["siteId"]
[[routes]]
prefix = "/cdn/"
methods = ["GET"]
upstream = "api"
meter = ["calls", "bytes"]
"#;

fn key(i: usize) -> String {
    format!("vk_bench_{i:08}")
}

/// `n` keys, one group each (the most memory per key).
fn tenants(n: usize) -> TenantsFile {
    TenantsFile {
        groups: (0..n)
            .map(|i| GroupSection {
                id: format!("{i:024x}"),
                tier: "bench".into(),
                status: GroupStatus::Active,
                overage_billing: false,
                keys: vec![format_key_hash(&hash_key(key(i).as_bytes()))],
            })
            .collect(),
    }
}

fn snapshot(n: usize) -> Snapshot {
    let file: ConfigFile = toml::from_str(CONFIG).unwrap();
    compile(
        Path::new("bench.toml"),
        file,
        Path::new("tenants.toml"),
        tenants(n),
    )
    .unwrap()
}

fn pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("decision_pipeline");
    g.throughput(Throughput::Elements(1));
    for n in [1_000usize, 100_000, 1_000_000] {
        let snap = snapshot(n);
        let store = MemoryStore::new();
        let month = Month::from_ym(2026, 11);
        // 1,000 keys spread over the whole key space, round robin
        let headers: Vec<HeaderMap> = (0..1000)
            .map(|j| {
                let mut h = HeaderMap::new();
                let v = format!("Bearer {}", key(j * n / 1000));
                h.insert(
                    http::header::AUTHORIZATION,
                    HeaderValue::from_str(&v).unwrap(),
                );
                h.insert(
                    http::header::HOST,
                    HeaderValue::from_static("api.vivreal.io"),
                );
                h.insert(
                    http::header::ACCEPT,
                    HeaderValue::from_static("application/json"),
                );
                h
            })
            .collect();
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("check_head_and_take", n), |b| {
            b.iter(|| {
                i = (i + 1) % headers.len();
                let a = check_head(
                    &snap,
                    &headers[i],
                    &Method::GET,
                    "/tenant/collectionObjects",
                    Some("collectionId=651f0c2ab4e8a90012345678"),
                )
                .unwrap();
                let t = store.take_call_now(&a.group.id, month, a.group.tier.api_calls, false);
                black_box(matches!(t, Take::Admitted { .. }))
            })
        });
    }
    g.finish();
}

fn counters(c: &mut Criterion) {
    let mut g = c.benchmark_group("quota_take");
    g.throughput(Throughput::Elements(1));
    let month = Month::from_ym(2026, 11);
    let groups: Vec<GroupId> = (0..10_000)
        .map(|i| GroupId::from(format!("{i:024x}")))
        .collect();
    for threads in [1usize, 2] {
        for (name, spread) in [("one_group", 1usize), ("many_groups", groups.len())] {
            let store = Arc::new(MemoryStore::new());
            g.bench_function(BenchmarkId::new(name, format!("{threads}_threads")), |b| {
                b.iter_custom(|iters| {
                    let per = iters / threads as u64 + 1;
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for t in 0..threads {
                            let (store, groups) = (&store, &groups);
                            s.spawn(move || {
                                for k in 0..per as usize {
                                    let gid = &groups[(k * 7 + t * 13) % spread];
                                    black_box(store.take_call_now(gid, month, u64::MAX, false));
                                }
                            });
                        }
                    });
                    // time per take, whichever thread made it
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (per * threads as u64) as f64)
                })
            });
        }
    }
    g.finish();
}

fn snapshot_build(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot_1m_keys");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    let slot = ArcSwap::from_pointee(snapshot(1000));
    g.bench_function("compile_and_swap", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let file: ConfigFile = toml::from_str(CONFIG).unwrap();
                let t = tenants(1_000_000);
                let start = Instant::now();
                let snap =
                    compile(Path::new("bench.toml"), file, Path::new("tenants.toml"), t).unwrap();
                slot.store(Arc::new(snap));
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, pipeline, counters, snapshot_build);
criterion_main!(benches);
