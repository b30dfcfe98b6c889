//! Chaos: the real `vivgate` binary under faults that repeat while load runs, each scenario
//! ending with its invariants checked from outside (the backend's own count of what it served,
//! Redis's and the store's totals, the admin API, `/proc`).
//!
//! Every scenario is `#[ignore]`: they take minutes, so the plain `cargo test` leaves them out
//! and `.ci/run` runs them with `cargo test --test chaos -- --ignored --test-threads 1`.
//! Everything listens on loopback; every loop is bounded in time; every process is stopped by
//! its pid (dropped `Killer`s and `RedisServer`s kill what a failing scenario leaves).

#[path = "../common/mod.rs"]
mod common;

mod support;

mod backend_flapping;
mod disk_full;
mod instances_dying;
mod redis_restarting;
mod reload_storm;
