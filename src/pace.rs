//! Pacing for background work that shares cores with the workers.
//!
//! A reload of a million keys is about a second and a half of CPU. Left alone, the scheduler
//! lets it run a whole time slice (a millisecond or more) each time it is picked, and every
//! request in flight on that core waits that long: on a saturated core the p99 latency more than
//! doubled during a reload. A thread that calls [`enable`] instead works in short bursts
//! (`BURST`) and sleeps between them (`REST`), so a worker waits at most about one burst, and the
//! reload takes up to a third of a core while it runs. The long loops of a reload (reading,
//! parsing, compiling, comparing, freeing) call [`tick`] or [`tick_now`]; on threads that did
//! not call [`enable`] (start-up, `vivgate check`, the tenants follower) they cost one
//! thread-local read and never sleep. Both reload paths (SIGHUP, `POST /reload`) are paced.
//! Not paced: a TOML tenants file's parse (the `toml` crate's own loop; large key sets belong in
//! the compact format) and work inside the kernel (page faults, see `src/main.rs`).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The longest stretch of work between two rests.
pub const BURST: Duration = Duration::from_micros(250);
/// The rest after each burst.
pub const REST: Duration = Duration::from_micros(500);
/// Calls of [`tick`] between two clock reads.
const EVERY: u32 = 64;

thread_local! {
    static PACER: Cell<Option<(Instant, u32)>> = const { Cell::new(None) };
}

/// Paces the calling thread from now on.
pub fn enable() {
    PACER.with(|p| p.set(Some((Instant::now(), 0))));
}

/// True when the calling thread is paced.
pub fn enabled() -> bool {
    PACER.with(|p| p.get().is_some())
}

/// One step of a long loop: on a paced thread, rests when the current burst has run `BURST`.
#[inline]
pub fn tick() {
    PACER.with(|p| {
        let Some((since, n)) = p.get() else { return };
        if n + 1 < EVERY {
            p.set(Some((since, n + 1)));
            return;
        }
        p.set(Some((since, 0)));
        rest_if_due(p);
    });
}

/// [`tick`] for loops whose steps are large (a 64 KiB read, a few hundred frees): reads the
/// clock on every call.
#[inline]
pub fn tick_now() {
    PACER.with(rest_if_due);
}

/// On a paced thread whose burst has run `BURST`: rests, and starts the next burst.
fn rest_if_due(p: &Cell<Option<(Instant, u32)>>) {
    let Some((since, _)) = p.get() else { return };
    if since.elapsed() >= BURST {
        std::thread::sleep(REST);
        p.set(Some((Instant::now(), 0)));
    }
}

/// Drops the items of `v` a few at a time, pacing between them (a million groups are a million
/// frees).
pub fn drop_vec<T>(mut v: Vec<T>) {
    const CHUNK: usize = 256;
    while !v.is_empty() {
        v.truncate(v.len().saturating_sub(CHUNK));
        tick_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paced_thread_rests_between_bursts_and_others_never_do() {
        // unpaced: a million ticks do not sleep
        let t = Instant::now();
        for _ in 0..1_000_000 {
            tick();
        }
        assert!(!enabled());
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        // paced: 40 ms of busy work gets at least 40 / 0.25 rests of 0.5 ms
        std::thread::spawn(|| {
            enable();
            let t = Instant::now();
            let mut busy = Duration::ZERO;
            while busy < Duration::from_millis(40) {
                let b = Instant::now();
                while b.elapsed() < Duration::from_micros(5) {}
                busy += b.elapsed();
                tick();
            }
            let rested = t.elapsed() - busy;
            assert!(rested >= Duration::from_millis(40), "rested {rested:?}");
        })
        .join()
        .unwrap();
    }
}
