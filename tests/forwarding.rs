//! Forwarding: `realloc` and `alloc_zeroed` reach the inner allocator as themselves (not as
//! alloc + copy + free, which is what a wrapper that forwards only `alloc`/`dealloc` does), and
//! every call reaches it exactly once, with the caller's layout: no header.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

use heapsight::HeapSight;

struct Recorder;

static ARMED: AtomicBool = AtomicBool::new(false);
static ALLOC: AtomicUsize = AtomicUsize::new(0);
static ZEROED: AtomicUsize = AtomicUsize::new(0);
static REALLOC: AtomicUsize = AtomicUsize::new(0);
static DEALLOC: AtomicUsize = AtomicUsize::new(0);
static LAST_SIZE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to System unchanged; the counters are side effects only.
unsafe impl GlobalAlloc for Recorder {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if ARMED.load(Relaxed) {
            ALLOC.fetch_add(1, Relaxed);
            LAST_SIZE.store(l.size(), Relaxed);
        }
        // SAFETY: caller's contract passed through.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if ARMED.load(Relaxed) {
            ZEROED.fetch_add(1, Relaxed);
            LAST_SIZE.store(l.size(), Relaxed);
        }
        // SAFETY: caller's contract passed through.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if ARMED.load(Relaxed) {
            REALLOC.fetch_add(1, Relaxed);
            LAST_SIZE.store(n, Relaxed);
        }
        // SAFETY: caller's contract passed through.
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if ARMED.load(Relaxed) {
            DEALLOC.fetch_add(1, Relaxed);
            LAST_SIZE.store(l.size(), Relaxed);
        }
        // SAFETY: caller's contract passed through.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: HeapSight<Recorder> = HeapSight::new(Recorder);

fn counts() -> [usize; 4] {
    [
        ALLOC.load(Relaxed),
        ZEROED.load(Relaxed),
        REALLOC.load(Relaxed),
        DEALLOC.load(Relaxed),
    ]
}

mod support;

/// Exact at rate 0: every user call reaches the inner allocator exactly once, as itself, with the
/// caller's size (no header).
fn each_call_reaches_the_inner_allocator_as_itself() {
    heapsight::set_sample_rate(0);
    let l = Layout::from_size_align(48, 16).unwrap();
    ARMED.store(true, Relaxed);
    let before = counts();
    // SAFETY: valid non-zero layouts; each block is freed once with its current layout.
    unsafe {
        let p = GLOBAL.alloc(l);
        assert_eq!(LAST_SIZE.load(Relaxed), 48, "no header added");
        let z = GLOBAL.alloc_zeroed(l);
        assert_eq!(std::slice::from_raw_parts(z, 48), &[0u8; 48][..]);
        let q = GLOBAL.realloc(p, l, 4096);
        assert_eq!(LAST_SIZE.load(Relaxed), 4096);
        GLOBAL.dealloc(q, Layout::from_size_align(4096, 16).unwrap());
        assert_eq!(LAST_SIZE.load(Relaxed), 4096);
        GLOBAL.dealloc(z, l);
    }
    let after = counts();
    ARMED.store(false, Relaxed);
    let d: Vec<usize> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    assert_eq!(
        d,
        [1, 1, 1, 2],
        "alloc, alloc_zeroed, realloc, dealloc each forwarded once as themselves"
    );
}

/// At rate 1 the same calls are all sampled; the profiler's own allocations reach the inner
/// allocator too (that is where its memory comes from), but the user's realloc and alloc_zeroed
/// are still forwarded as such.
fn sampled_calls_are_forwarded_as_themselves() {
    heapsight::set_sample_rate(1);
    let l = Layout::from_size_align(48, 16).unwrap();
    let s0 = heapsight::stats();
    ARMED.store(true, Relaxed);
    // SAFETY: as above.
    unsafe {
        let z = GLOBAL.alloc_zeroed(l);
        let q = GLOBAL.realloc(z, l, 100);
        GLOBAL.dealloc(q, Layout::from_size_align(100, 16).unwrap());
    }
    ARMED.store(false, Relaxed);
    let s1 = heapsight::stats();
    assert!(ZEROED.load(Relaxed) >= 1 && REALLOC.load(Relaxed) >= 1);
    assert_eq!(
        s1.samples - s0.samples,
        2,
        "alloc_zeroed and the realloc's new block sampled"
    );
    assert_eq!(s1.alloc_objects - s0.alloc_objects, 2);
    assert_eq!(s1.free_objects - s0.free_objects, 2);
    heapsight::set_sample_rate(heapsight::DEFAULT_SAMPLE_RATE);
}

fn vec_growth_uses_realloc() {
    heapsight::set_sample_rate(0);
    let before = REALLOC.load(Relaxed);
    ARMED.store(true, Relaxed);
    let mut v: Vec<u64> = Vec::new();
    for i in 0..100 {
        v.push(i);
    }
    ARMED.store(false, Relaxed);
    assert_eq!(
        REALLOC.load(Relaxed) - before,
        5,
        "Vec growth 4->8->16->32->64->128 is five reallocs"
    );
    drop(v);
}

fn main() {
    support::run(&[
        (
            "each_call_reaches_the_inner_allocator_as_itself",
            each_call_reaches_the_inner_allocator_as_itself,
        ),
        (
            "sampled_calls_are_forwarded_as_themselves",
            sampled_calls_are_forwarded_as_themselves,
        ),
        ("vec_growth_uses_realloc", vec_growth_uses_realloc),
    ]);
}
