//! The process-wide peak, taken off the fast path at flushes (see `counters`):
//! * a peak made of blocks larger than the sampling countdown is exact, also when the net count
//!   falls and then climbs past the old mark by a partial amount;
//! * a peak reached by small blocks between two flushes is reported within its stated bound:
//!   at most one countdown of the allocating thread below, and at most `FREE_FLUSH` per other
//!   thread above;
//! * a thread whose first allocator call is a free (no counter slot yet: `free_mask` 0, routed
//!   to the slow path by filter byte 0) is counted exactly.
use std::alloc::{alloc, dealloc, Layout};
use std::hint::black_box;

use heapsight::HeapSight;

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

mod support;

const MIB: usize = 1 << 20;
/// Bytes a thread frees between two flushes (`counters::FREE_FLUSH`).
const FREE_FLUSH: u64 = 64 * 1024;
/// The longest countdown at rate 0 (`sampler::OFF_INTERVAL`), and the longest gap drawn at rate
/// `r` (26 random bits: `26 ln 2 × r + 1`; see `sampler`).
const OFF_INTERVAL: u64 = 1 << 20;
fn max_gap(rate: u64) -> u64 {
    (26.0 * std::f64::consts::LN_2 * rate as f64) as u64 + 2
}

/// +40 MiB, -40 MiB, +24 MiB (below the mark: no new peak), +32 MiB (passes it by 16 MiB):
/// the peak is exactly 56 MiB above the start, not 40 and not 96 (all times `k`, so that each
/// run sets a new process record).
fn peak_after_a_dip(k: usize) {
    let l = |mib: usize| Layout::from_size_align(mib * k * MIB, 16).unwrap();
    let before = heapsight::stats();
    // SAFETY: each block is allocated with a non-zero layout and freed once with the same one.
    let after = unsafe {
        // black_box: the compiler may delete an allocation nobody looks at.
        let a = black_box(alloc(l(40)));
        assert!(!a.is_null());
        dealloc(a, l(40));
        let b = black_box(alloc(l(24)));
        let c = black_box(alloc(l(32)));
        assert!(!b.is_null() && !c.is_null());
        dealloc(b, l(24));
        dealloc(c, l(32));
        heapsight::stats()
    };
    let expected = before.inuse_bytes + (56 * k * MIB) as u64;
    assert!(
        expected > before.peak_inuse_bytes,
        "must set a new record to test anything"
    );
    assert_eq!(after.peak_inuse_bytes, expected);
    assert_eq!(after.inuse_bytes, before.inuse_bytes);
    assert_eq!(after.alloc_objects - before.alloc_objects, 3);
    assert_eq!(after.free_bytes - before.free_bytes, (96 * k * MIB) as u64);
}

/// Small allocations, many small frees below the mark, then small allocations back up to it and
/// past it. The top is reached between two flushes, so the reported peak may miss what this
/// thread allocated since its last flush (less than one countdown: `gap`), and other threads'
/// unflushed frees (less than `FREE_FLUSH` each) may lift it. `k` scales the block count so that
/// each run sets a new process record.
fn peak_with_small_blocks(k: usize, gap: u64) {
    let l = Layout::from_size_align(4096, 16).unwrap();
    let before = heapsight::stats();
    let mut v: Vec<*mut u8> = Vec::with_capacity(3000 * k);
    let vec_bytes = (3000 * k * std::mem::size_of::<*mut u8>()) as u64;
    // SAFETY: every pointer comes from `alloc(l)` and is freed exactly once with `l`.
    unsafe {
        for _ in 0..2000 * k {
            v.push(black_box(alloc(l)));
        }
        for p in v.drain(..1500 * k) {
            dealloc(p, l);
        }
        for _ in 0..2500 * k {
            v.push(black_box(alloc(l)));
        }
        for p in v.drain(..) {
            dealloc(p, l);
        }
    }
    drop(v);
    let after = heapsight::stats();
    // Highest net: 500 + 2500 = 3000 blocks live (above the first mark of 2000), plus the vector.
    let expected = before.inuse_bytes + vec_bytes + (3000 * k * 4096) as u64;
    assert!(
        expected - gap > before.peak_inuse_bytes,
        "must set a new record to test anything"
    );
    let others = (after.thread_slots - 1) * FREE_FLUSH;
    let peak = after.peak_inuse_bytes;
    assert!(
        peak + gap >= expected && peak <= expected + others,
        "peak {peak}, true peak {expected}: not within -{gap} / +{others}"
    );
    assert_eq!(after.inuse_bytes, before.inuse_bytes);
}

/// A new thread frees a block the main thread allocated as its first act: counted exactly.
fn first_call_on_a_thread_is_a_free() {
    let b: Box<[u8; 1000]> = Box::new([7; 1000]);
    let before = heapsight::stats();
    std::thread::spawn(move || drop(b)).join().unwrap();
    let after = heapsight::stats();
    // Whatever the thread's start-up allocated it freed again (joined); the box is gone.
    assert_eq!(after.inuse_bytes as i64 - before.inuse_bytes as i64, -1000);
    assert_eq!(after.inuse_objects as i64 - before.inuse_objects as i64, -1);
}

fn at_rate(rate: u64, f: fn()) {
    heapsight::set_sample_rate(rate);
    f();
}

fn main() {
    // Peak tests first, in increasing size: each must set a new process record.
    support::run(&[
        ("peak_with_small_blocks_rate_0", || {
            at_rate(0, || peak_with_small_blocks(1, OFF_INTERVAL))
        }),
        ("peak_with_small_blocks_rate_default", || {
            at_rate(512 * 1024, || {
                peak_with_small_blocks(4, max_gap(512 * 1024))
            })
        }),
        ("peak_after_a_dip_rate_0", || {
            at_rate(0, || peak_after_a_dip(1))
        }),
        ("peak_after_a_dip_rate_default", || {
            at_rate(512 * 1024, || peak_after_a_dip(2))
        }),
        ("peak_after_a_dip_rate_1", || {
            at_rate(1, || peak_after_a_dip(3))
        }),
        ("first_call_on_a_thread_is_a_free_rate_default", || {
            at_rate(512 * 1024, first_call_on_a_thread_is_a_free)
        }),
        ("first_call_on_a_thread_is_a_free_rate_1", || {
            at_rate(1, first_call_on_a_thread_is_a_free)
        }),
    ]);
}
