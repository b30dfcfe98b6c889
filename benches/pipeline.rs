//! Criterion benchmarks of the decision pipeline without I/O, the quota counters under
//! contention, and building and swapping a 1,000,000-key snapshot.
//!
//! `cargo bench --bench pipeline` (results in benches/README.md).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// The shared config of the demo and the tests, with a `bench` tier no request uses up.
fn config() -> String {
    include_str!("../tests/fixtures/vivgate.toml")
        .replace("{backend}", "127.0.0.1:3000")
        .replace("{offline}", "127.0.0.1:9")
        + "\n[tiers.bench]\napi_calls = 1_000_000_000_000\ncdn_bytes = 1_000_000_000_000\n"
}

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
    let file: ConfigFile = toml::from_str(&config()).unwrap();
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
        let none = vivgate::overrides::Overrides::default();
        g.bench_function(BenchmarkId::new("check_head_and_take", n), |b| {
            b.iter(|| {
                i = (i + 1) % headers.len();
                let a = check_head(
                    &snap,
                    &none,
                    &headers[i],
                    &Method::GET,
                    "/tenant/collectionObjects",
                    Some("collectionId=651f0c2ab4e8a90012345678"),
                )
                .unwrap();
                let vivgate::pipeline::Admitted::Forward { group, .. } = a else {
                    unreachable!("bench requests are routed")
                };
                let t = store.take_call_now(&group.id, month, group.tier.api_calls, false);
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

/// The system allocator, counting the bytes currently allocated (for bytes per key).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One-off figures for 1,000,000 keys, printed beside criterion's: the time to parse and compile
/// a tenants TOML file, and the resident memory the compiled snapshot holds per key.
fn load_and_memory_report() {
    let n = 1_000_000;
    let mut text = String::with_capacity(n * 140);
    for i in 0..n {
        text.push_str(&format!(
            "[[groups]]\nid = \"{i:024x}\"\ntier = \"bench\"\nstatus = \"active\"\nkeys = [\"{}\"]\n\n",
            format_key_hash(&hash_key(key(i).as_bytes()))
        ));
    }
    let start = Instant::now();
    let snap = vivgate::config::load_from_str(
        Path::new("bench.toml"),
        &config(),
        Path::new("tenants.toml"),
        &text,
    )
    .unwrap();
    let load = start.elapsed();
    let mb = text.len() as f64 / 1e6;
    drop(text);
    let mut compact = String::with_capacity(n * 110);
    for i in 0..n {
        compact.push_str(&format!(
            "{i:024x} bench active false {}\n",
            format_key_hash(&hash_key(key(i).as_bytes()))
        ));
    }
    let start = Instant::now();
    let snap2 = vivgate::config::load_from_str(
        Path::new("bench.toml"),
        &config(),
        Path::new("tenants.tsv"),
        &compact,
    )
    .unwrap();
    let compact_load = start.elapsed();
    let compact_mb = compact.len() as f64 / 1e6;
    drop((snap2, compact));
    let held = LIVE.load(Ordering::Relaxed);
    drop(snap);
    let freed = held - LIVE.load(Ordering::Relaxed);
    println!(
        "1,000,000 keys: tenants TOML {mb:.0} MB parsed and compiled in {:.2} s; compact tenants file {compact_mb:.0} MB in {:.2} s; the snapshot holds {:.0} bytes per key (heap)",
        load.as_secs_f64(),
        compact_load.as_secs_f64(),
        freed as f64 / n as f64
    );
}

fn snapshot_build(c: &mut Criterion) {
    load_and_memory_report();
    let mut g = c.benchmark_group("snapshot_1m_keys");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    let slot = ArcSwap::from_pointee(snapshot(1000));
    g.bench_function("compile_and_swap", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let file: ConfigFile = toml::from_str(&config()).unwrap();
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
