//! How the process gives memory back (mimalloc is the allocator of the `vivgate` binary).

/// mimalloc's option `purge_decommits` (index 5 in both its v2 and v3 headers).
const MI_OPTION_PURGE_DECOMMITS: libmimalloc_sys::mi_option_t = 5;

/// Makes mimalloc give freed memory back with `MADV_FREE` (the kernel takes the pages only when
/// it needs them; until then they count in the RSS and are reused without a fault) instead of
/// `MADV_DONTNEED` (the pages discarded at once). A reload of a million keys frees a few hundred
/// MiB: discarded at once, that stalled requests on a shared core for about 30 ms, and the next
/// reload faulted every page in again ("Reloads under load" in benches/README.md). An operator's
/// `MIMALLOC_PURGE_DECOMMITS` is left to win. Called once, after the start-up load.
pub fn lazy_memory_return() {
    // the start-up load's own garbage (the tenants text, the parsed groups: hundreds of MiB for a
    // million keys) is discarded now, while no request waits, so the RSS starts low
    // SAFETY: mi_collect takes a flag; mimalloc options may be set at any time (index above)
    unsafe { libmimalloc_sys::mi_collect(true) };
    if std::env::var_os("MIMALLOC_PURGE_DECOMMITS").is_some() {
        return;
    }
    // SAFETY: as above
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DECOMMITS, 0) };
}

/// Gives back what this thread's heap holds free, now: called on the reload thread after each
/// reload. The old snapshot is freed on that thread, and mimalloc purges freed pages only at a
/// later allocation of the same thread, which may not come before the next reload: without this
/// the RSS stayed at the high-water mark of two snapshots (tests/chaos, the reload storm: +6.7
/// MiB after a storm of 1,000-group tables, +2.3 MiB with it).
pub fn return_freed_memory() {
    // SAFETY: mi_collect takes a flag
    unsafe { libmimalloc_sys::mi_collect(true) };
}
