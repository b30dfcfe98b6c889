//! The embedded store's tests: durability, restarts, handovers, failures.

use super::*;

fn g(s: &str) -> GroupId {
    GroupId::from(s)
}

#[test]
fn flushed_counts_survive_a_reopen_and_refunds_flush_as_negative_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/usage.redb");
    let m = Month::from_ym(2026, 11);
    {
        let s = EmbeddedStore::open(&path, m, 13).unwrap();
        for _ in 0..5 {
            s.mem.take_call_now(&g("a"), m, 10, false);
        }
        s.add_bytes(&g("a"), m, 700, 1000, false);
        assert_eq!(s.flush().unwrap(), 1);
        let t = s.mem.take_call_now(&g("a"), m, 10, false);
        s.refund_call(&g("a"), m, t);
        s.refund_call(
            &g("a"),
            m,
            Take::Admitted {
                remaining: 0,
                overage: false,
            },
        );
        assert_eq!(s.flush().unwrap(), 1);
        assert_eq!(s.flush().unwrap(), 0, "nothing changed");
        // counted but never flushed: lost on a crash, by design
        s.mem.take_call_now(&g("b"), m, 10, false);
    }
    let s = EmbeddedStore::open(&path, m, 13).unwrap();
    assert_eq!(
        s.usage("a", m),
        Usage {
            calls: 4,
            bytes: 700,
            ..Usage::default()
        }
    );
    assert_eq!(s.usage("b", m), Usage::default());
    // the quota continues from the stored count
    for _ in 0..6 {
        assert!(matches!(
            s.mem.take_call_now(&g("a"), m, 10, false),
            Take::Admitted { .. }
        ));
    }
    assert_eq!(s.mem.take_call_now(&g("a"), m, 10, false), Take::Refused);
}

#[test]
fn retention_prunes_at_start_and_a_clock_jump_cannot_delete_live_months() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.redb");
    let m = |mo| Month::from_ym(2026, mo);
    // one month at a time, as a long-running fleet would: January to April, retention 3
    for (i, now) in [m(1), m(2), m(3), m(4)].into_iter().enumerate() {
        let s = EmbeddedStore::open(&path, now, 3).unwrap();
        s.add_bytes(&g("a"), now, 100 + i as u64, u64::MAX, false);
        s.flush().unwrap();
    }
    let s = EmbeddedStore::open(&path, m(4), 3).unwrap();
    assert_eq!(
        s.usage_checked("a", m(1)).unwrap().bytes,
        0,
        "January is past the retention"
    );
    assert_eq!(
        s.usage_checked("a", m(2)).unwrap().bytes,
        101,
        "read from the file"
    );
    assert_eq!(s.usage("a", m(4)).bytes, 103);
    drop(s);
    // the clock leaps to 2030: pruning advances one month past April, no more
    let s = EmbeddedStore::open(&path, Month::from_ym(2030, 1), 3).unwrap();
    assert_eq!(s.usage_checked("a", m(2)).unwrap().bytes, 0);
    assert_eq!(s.usage_checked("a", m(3)).unwrap().bytes, 102);
    assert_eq!(s.usage_checked("a", m(4)).unwrap().bytes, 103);
}

#[test]
fn counts_made_during_flushes_are_all_durable_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.redb");
    let m = Month::from_ym(2026, 11);
    let s = EmbeddedStore::open(&path, m, 13).unwrap();
    let groups: Vec<GroupId> = (0..50).map(|i| g(&format!("g{i}"))).collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|t| {
        let (s2, stop2) = (&s, &stop);
        let flusher = t.spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                s2.flush().unwrap();
            }
        });
        let mut writers = Vec::new();
        for w in 0..2 {
            let (s, groups) = (&s, &groups);
            writers.push(t.spawn(move || {
                for k in 0..20_000usize {
                    let gid = &groups[(k * 7 + w) % groups.len()];
                    s.mem.take_call_now(gid, m, u64::MAX, false);
                    if k % 3 == 0 {
                        let t = s.mem.take_call_now(gid, m, u64::MAX, false);
                        s.refund_call(gid, m, t);
                    }
                    s.add_bytes(gid, m, 10, u64::MAX, false);
                }
            }));
        }
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        flusher.join().unwrap();
    });
    s.flush().unwrap();
    let expected: Vec<Usage> = groups.iter().map(|gid| s.usage(gid, m)).collect();
    assert_eq!(expected.iter().map(|u| u.calls).sum::<u64>(), 40_000);
    assert_eq!(expected.iter().map(|u| u.bytes).sum::<u64>(), 400_000);
    drop(s);
    let s = EmbeddedStore::open(&path, m, 13).unwrap();
    for (gid, e) in groups.iter().zip(expected) {
        assert_eq!(s.usage_checked(gid, m).unwrap(), e, "{gid}");
    }
}

#[test]
fn a_handover_is_merged_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.redb");
    let m = Month::from_ym(2026, 11);
    let old = EmbeddedStore::open(&path, m, 13).unwrap();
    old.mem.take_call_now(&g("a"), m, 100, false);
    old.release_for_handover().unwrap();
    // counted after the handover: goes to a handover file, not the (closed) database
    for _ in 0..3 {
        old.mem.take_call_now(&g("a"), m, 100, false);
    }
    assert_eq!(old.flush().unwrap(), 1);
    let files = old.handover_files();
    assert_eq!(files.len(), 1);
    let kept = std::fs::read(&files[0]).unwrap();
    let new = EmbeddedStore::open(&path, m, 13).unwrap();
    assert_eq!(
        new.usage("a", m).calls,
        4,
        "1 flushed before the handover, 3 after"
    );
    assert!(new.handover_files().is_empty(), "merged files are deleted");
    // a file that comes back (the merger died before deleting it) is not counted again
    std::fs::write(&files[0], kept).unwrap();
    new.flush().unwrap();
    assert_eq!(new.usage("a", m).calls, 4);
    drop(new);
    assert_eq!(
        EmbeddedStore::open(&path, m, 13)
            .unwrap()
            .usage("a", m)
            .calls,
        4
    );
}

#[test]
fn a_corrupt_file_is_an_error_not_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.redb");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let e = EmbeddedStore::open(&path, Month::from_ym(2026, 11), 13).unwrap_err();
    assert!(
        e.starts_with(&format!("usage store {}: cannot open", path.display())),
        "{e}"
    );
}

#[test]
fn days_are_credited_at_flush_kept_with_the_counts_and_pruned_after_the_previous_month() {
    use crate::clock::{utc_ms, ManualClock};
    use crate::usage::days::GATEWAY;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.redb");
    let nov = Month::from_ym(2026, 11);
    let clock = std::sync::Arc::new(ManualClock::new(utc_ms(2026, 11, 2, 23, 0, 0, 0)));
    {
        let s = EmbeddedStore::open(&path, nov, 13).unwrap();
        s.set_clock(clock.clone());
        for _ in 0..3 {
            s.mem.take_call_now(&g("a"), nov, 100, false);
        }
        s.mem.take_call_now(&g("b"), nov, 100, false);
        s.add_bytes(&g("a"), nov, 500, 10_000, false);
        s.flush().unwrap();
        // the next day: a refund of a call flushed the day before, and new calls
        clock.set(utc_ms(2026, 11, 3, 0, 0, 1, 0));
        s.refund_call(
            &g("a"),
            nov,
            Take::Admitted {
                remaining: 0,
                overage: false,
            },
        );
        for _ in 0..2 {
            s.mem.take_call_now(&g("b"), nov, 100, false);
        }
        s.flush().unwrap();
        let a = s.days("a", nov).unwrap();
        assert_eq!((a.len(), a[1], a[2]), (30, [3, 500], [0, 0]));
        assert_eq!(s.days("b", nov).unwrap()[1..3], [[1, 0], [2, 0]]);
        assert_eq!(
            s.days(GATEWAY, nov).unwrap()[1..3],
            [[4, 500], [2, 0]],
            "the sum of the groups' days"
        );
        // not flushed: not in the days (nor in the file)
        s.mem.take_call_now(&g("b"), nov, 100, false);
    }
    // the days are in the file, with the counts
    let s = EmbeddedStore::open(&path, nov, 13).unwrap();
    assert_eq!(s.days(GATEWAY, nov).unwrap()[1..3], [[4, 500], [2, 0]]);
    assert_eq!(s.usage("b", nov).calls, 3);
    // the first flush in January deletes November's days (two months back); its totals stay
    let jan = Month::from_ym(2027, 1);
    s.set_clock(std::sync::Arc::new(ManualClock::new(utc_ms(
        2027, 1, 1, 0, 0, 0, 0,
    ))));
    s.mem.take_call_now(&g("a"), jan, 100, false);
    s.flush().unwrap();
    assert_eq!(s.days(GATEWAY, nov).unwrap(), vec![[0, 0]; 30]);
    assert_eq!(s.days("a", jan).unwrap()[0], [1, 0]);
    assert_eq!(s.usage_checked("a", nov).unwrap().calls, 2);
}
