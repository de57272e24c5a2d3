//! Exact counters: a known single-threaded workload moves six counters by exactly the expected
//! amounts, and the peak within its stated bound (exact at rate 1, where every allocation
//! flushes), at sample rates 0, 512 KiB and 1.
use std::alloc::{alloc, dealloc, realloc, Layout};

use heapsight::{HeapSight, Stats};

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

mod support;

#[derive(Debug, PartialEq, Eq)]
struct Delta {
    alloc_objects: u64,
    alloc_bytes: u64,
    free_objects: u64,
    free_bytes: u64,
    inuse_objects: i64,
    inuse_bytes: i64,
    peak_inuse_bytes: u64,
}

fn delta(a: &Stats, b: &Stats) -> Delta {
    Delta {
        alloc_objects: b.alloc_objects - a.alloc_objects,
        alloc_bytes: b.alloc_bytes - a.alloc_bytes,
        free_objects: b.free_objects - a.free_objects,
        free_bytes: b.free_bytes - a.free_bytes,
        inuse_objects: b.inuse_objects as i64 - a.inuse_objects as i64,
        inuse_bytes: b.inuse_bytes as i64 - a.inuse_bytes as i64,
        peak_inuse_bytes: b.peak_inuse_bytes - a.peak_inuse_bytes,
    }
}

fn check_invariants(s: &Stats) {
    assert_eq!(s.inuse_objects, s.alloc_objects - s.free_objects);
    assert_eq!(s.inuse_bytes, s.alloc_bytes - s.free_bytes);
    assert!(s.peak_inuse_bytes >= s.inuse_bytes);
}

/// The longest stretch of allocation a thread may make between two flushes at `rate`: the
/// longest countdown (1 MiB at rate 0; `26 ln 2 × rate + 1` otherwise; see `sampler`). The
/// peak is taken at flushes, so this is how far below the true peak it may be.
fn flush_gap(rate: u64) -> u64 {
    match rate {
        0 => 1 << 20,
        1 => 0,
        r => (26.0 * std::f64::consts::LN_2 * r as f64) as u64 + 2,
    }
}

/// The reported peak rise is the expected one, or below it by at most one flush gap of this
/// thread, or above it by at most what the other threads (the test runner's) freed unflushed.
fn check_peak(before: &Stats, after: &Stats, expected_peak: u64) {
    let gap = flush_gap(heapsight::sample_rate());
    let others = (after.thread_slots - 1) * (64 << 10);
    let peak = after.peak_inuse_bytes;
    let floor = expected_peak
        .saturating_sub(gap)
        .max(before.peak_inuse_bytes);
    assert!(
        peak >= floor && peak <= expected_peak + others,
        "peak {peak}, expected {expected_peak} (-{gap} / +{others})"
    );
}

/// 1,000 blocks of 100 B; free 400; grow 100 of the rest to 200 B with realloc; free the rest.
/// Peak: 100,000 bytes above the start, right after the 1,000 allocations.
fn raw_workload() {
    let small = Layout::from_size_align(100, 8).unwrap();
    let mut ptrs: Vec<*mut u8> = Vec::with_capacity(1000);
    let before = heapsight::stats();
    // SAFETY: every pointer comes from `alloc` with `small` (or `realloc` to 200 bytes) and is
    // freed exactly once with the layout it currently has.
    unsafe {
        for _ in 0..1000 {
            let p = alloc(small);
            assert!(!p.is_null());
            ptrs.push(p);
        }
        for p in ptrs.drain(..400) {
            dealloc(p, small);
        }
        for p in ptrs.iter_mut().take(100) {
            *p = realloc(*p, small, 200);
            assert!(!p.is_null());
        }
        let big = Layout::from_size_align(200, 8).unwrap();
        for (i, p) in ptrs.drain(..).enumerate() {
            dealloc(p, if i < 100 { big } else { small });
        }
    }
    let after = heapsight::stats();
    check_invariants(&after);
    let expected_peak = (before.inuse_bytes + 100_000).max(before.peak_inuse_bytes);
    check_peak(&before, &after, expected_peak);
    assert_eq!(
        delta(&before, &after),
        Delta {
            alloc_objects: 1100,
            alloc_bytes: 100_000 + 100 * 200,
            free_objects: 400 + 100 + 600,
            free_bytes: 400 * 100 + 100 * 100 + 100 * 200 + 500 * 100,
            inuse_objects: 0,
            inuse_bytes: 0,
            peak_inuse_bytes: after.peak_inuse_bytes - before.peak_inuse_bytes,
        }
    );
    drop(ptrs);
}

/// `Vec<u64>` growth is visible: capacities 4, 8, 16, 32, 64, 128 are one allocation and five
/// reallocations, each counted as a free of the old block and an allocation of the new one.
fn vec_growth() {
    let before = heapsight::stats();
    let mut v: Vec<u64> = Vec::new();
    for i in 0..100 {
        v.push(i);
    }
    let grown = heapsight::stats();
    assert_eq!(v.capacity(), 128);
    let d = delta(&before, &grown);
    assert_eq!(d.alloc_objects, 6);
    assert_eq!(d.alloc_bytes, (32 + 64 + 128 + 256 + 512 + 1024) as u64);
    assert_eq!(d.free_objects, 5);
    assert_eq!(d.free_bytes, (32 + 64 + 128 + 256 + 512) as u64);
    assert_eq!(d.inuse_objects, 1);
    assert_eq!(d.inuse_bytes, 1024);
    drop(v);
    let after = heapsight::stats();
    assert_eq!(delta(&grown, &after).free_bytes, 1024);
    assert_eq!(after.inuse_bytes, before.inuse_bytes);
}

/// The peak rises by exactly the largest net growth of the window when that is a new record
/// made of blocks larger than any countdown (each such allocation flushes).
fn new_peak() {
    let before = heapsight::stats();
    let blocks: Vec<Vec<u8>> = (0..64).map(|_| Vec::with_capacity(1 << 20)).collect();
    let holder = 64 * std::mem::size_of::<Vec<u8>>() as u64;
    drop(blocks);
    let after = heapsight::stats();
    check_invariants(&after);
    assert_eq!(
        after.peak_inuse_bytes,
        (before.inuse_bytes + 64 * (1 << 20) + holder).max(before.peak_inuse_bytes)
    );
    assert_eq!(after.inuse_bytes, before.inuse_bytes);
}

/// Reading the counters does not allocate.
fn stats_does_not_allocate() {
    let a = heapsight::stats();
    let b = heapsight::stats();
    assert_eq!(
        delta(&a, &b),
        Delta {
            alloc_objects: 0,
            alloc_bytes: 0,
            free_objects: 0,
            free_bytes: 0,
            inuse_objects: 0,
            inuse_bytes: 0,
            peak_inuse_bytes: 0
        }
    );
}

fn at_rate(rate: u64, f: fn()) {
    heapsight::set_sample_rate(rate);
    assert_eq!(heapsight::sample_rate(), rate);
    f();
}

fn main() {
    assert_eq!(heapsight::sample_rate(), heapsight::DEFAULT_SAMPLE_RATE);
    support::run(&[
        ("stats_does_not_allocate", stats_does_not_allocate),
        ("raw_workload_rate_default", || {
            at_rate(512 * 1024, raw_workload)
        }),
        ("raw_workload_rate_0", || at_rate(0, raw_workload)),
        ("raw_workload_rate_1", || at_rate(1, raw_workload)),
        ("vec_growth_rate_default", || {
            at_rate(512 * 1024, vec_growth)
        }),
        ("vec_growth_rate_0", || at_rate(0, vec_growth)),
        ("vec_growth_rate_1", || at_rate(1, vec_growth)),
        ("new_peak_rate_0", || at_rate(0, new_peak)),
        ("new_peak_rate_default", || at_rate(512 * 1024, new_peak)),
        ("new_peak_rate_1", || at_rate(1, new_peak)),
        ("samples_taken_at_rate_1", || {
            at_rate(1, || {
                let s0 = heapsight::stats();
                let v: Vec<Box<u32>> = (0..10).map(Box::new).collect();
                let s1 = heapsight::stats();
                // Ten boxes and the vector: eleven allocations, each one a sample.
                assert_eq!(s1.samples - s0.samples, 11);
                assert_eq!(s1.alloc_objects - s0.alloc_objects, 11);
                drop(v);
            })
        }),
    ]);
}
