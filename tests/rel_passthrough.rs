//! Guarantee 8: zero-size layouts, huge alignments and allocation failure are passed through, and
//! a block that does not exist is never counted (nor sampled).
//!
//! The global allocator is `HeapSight::system()`. The failure cases call `GlobalAlloc` directly
//! on a second `static HeapSight<Flaky>` whose inner allocator returns null on demand; heapsight's
//! counters are process-wide, so its calls show in `stats()` like the global allocator's.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use heapsight::HeapSight;

mod support;
use support::{assert_back_to, exact, Exact};

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

/// Forwards to `System`, except: returns null for everything while `FAIL` is set, and for
/// zero-size layouts either returns null (`ZERO_NULL`) or a dangling, aligned, non-null pointer
/// without allocating (as a ZST-aware allocator may).
struct Flaky;
static FAIL: AtomicBool = AtomicBool::new(false);
static ZERO_NULL: AtomicBool = AtomicBool::new(false);

fn dangling(layout: Layout) -> *mut u8 {
    layout.align() as *mut u8
}

// SAFETY: forwards to `System` with the caller's arguments, or returns null (always allowed), or
// for zero-size layouts a non-null aligned pointer that `dealloc` recognises and ignores.
unsafe impl GlobalAlloc for Flaky {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if FAIL.load(SeqCst) || (layout.size() == 0 && ZERO_NULL.load(SeqCst)) {
            return std::ptr::null_mut();
        }
        if layout.size() == 0 {
            return dangling(layout);
        }
        // SAFETY: non-zero size, caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if FAIL.load(SeqCst) || layout.size() == 0 {
            return std::ptr::null_mut();
        }
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() != 0 {
            // SAFETY: a non-zero-size block came from `System` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if FAIL.load(SeqCst) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's block and sizes (non-zero, per the GlobalAlloc contract).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

static FLAKY: HeapSight<Flaky> = HeapSight::new(Flaky);

fn samples() -> u64 {
    heapsight::stats().samples
}

fn live_samples() -> usize {
    heapsight::profile_unsymbolized().live_samples()
}

/// The base counters plus one allocation of `size` bytes.
fn plus_alloc(base: Exact, size: u64) -> (u64, u64, u64, u64) {
    (
        base.alloc_objects + 1,
        base.alloc_bytes + size,
        base.free_objects,
        base.free_bytes,
    )
}

fn four(e: Exact) -> (u64, u64, u64, u64) {
    (e.alloc_objects, e.alloc_bytes, e.free_objects, e.free_bytes)
}

fn failed_alloc_is_not_counted() {
    for rate in [0, 1, 4096] {
        heapsight::set_sample_rate(rate);
        let live0 = live_samples();
        let base = exact();
        let s0 = samples();
        FAIL.store(true, SeqCst);
        for (size, align) in [(64, 8), (1 << 20, 16), (4096, 4096), (1, 1 << 21)] {
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero-size layouts; a null result is not dereferenced or freed.
            unsafe {
                assert!(FLAKY.alloc(l).is_null());
                assert!(FLAKY.alloc_zeroed(l).is_null());
            }
        }
        FAIL.store(false, SeqCst);
        assert_eq!(
            exact(),
            base,
            "rate {rate}: a failed allocation was counted"
        );
        assert_eq!(
            samples(),
            s0,
            "rate {rate}: a failed allocation was sampled"
        );
        assert_eq!(live_samples(), live0, "rate {rate}");
        // A failed realloc of a small block (both halves on the fast path at rates 0 and 4096,
        // where they are counted before the inner call and taken back after it fails).
        let base = exact();
        let l = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: non-zero layout; the block is freed once, with the layout it has.
        unsafe {
            let p = FLAKY.alloc(l);
            assert!(!p.is_null());
            let with_block = exact();
            FAIL.store(true, SeqCst);
            assert!(FLAKY.realloc(p, l, 128).is_null());
            FAIL.store(false, SeqCst);
            assert_eq!(
                exact(),
                with_block,
                "rate {rate}: a failed realloc was counted"
            );
            FLAKY.dealloc(p, l);
        }
        let after = exact();
        assert_eq!(
            four(after),
            (
                base.alloc_objects + 1,
                base.alloc_bytes + 64,
                base.free_objects + 1,
                base.free_bytes + 64
            ),
            "rate {rate}"
        );
    }
}

#[inline(never)]
fn failed_realloc_keeps_the_old_block() {
    heapsight::set_sample_rate(1);
    let live0 = live_samples();
    let before = exact();
    let l = Layout::from_size_align(100, 8).unwrap();
    // SAFETY: non-zero layout; the block is used within its 100 bytes and freed with `l`.
    unsafe {
        let p = FLAKY.alloc(l);
        assert!(!p.is_null());
        p.write_bytes(0xAB, 100);
        // At rate 1 the block is a live sample.
        assert_eq!(live_samples(), live0 + 1);
        let base = exact();
        assert_eq!(four(base), plus_alloc(before, 100));
        FAIL.store(true, SeqCst);
        let q = FLAKY.realloc(p, l, 200);
        FAIL.store(false, SeqCst);
        assert!(q.is_null());
        // Nothing happened to the counters, and the old block is still a live sample.
        assert_eq!(exact(), base, "a failed realloc was counted");
        assert_eq!(
            live_samples(),
            live0 + 1,
            "a failed realloc lost the old block's sample"
        );
        assert!(
            (0..100).all(|i| *p.add(i) == 0xAB),
            "the old block was touched"
        );
        let p = FLAKY.realloc(p, l, 200);
        assert!(!p.is_null());
        let after = exact();
        assert_eq!(
            four(after),
            (
                base.alloc_objects + 1,
                base.alloc_bytes + 200,
                base.free_objects + 1,
                base.free_bytes + 100
            )
        );
        assert_eq!(live_samples(), live0 + 1);
        FLAKY.dealloc(p, Layout::from_size_align(200, 8).unwrap());
    }
    assert_back_to(before, "failed realloc");
    assert_eq!(live_samples(), live0);
    let p = heapsight::profile();
    assert!(support::assert_sites_freed(&p, "failed_realloc_keeps_the_old_block") >= 1);
}

fn zero_size_layouts() {
    heapsight::set_sample_rate(1);
    let live0 = live_samples();
    let s0 = samples();
    let base = exact();
    // An inner allocator that refuses zero-size requests: nothing exists, nothing is counted.
    ZERO_NULL.store(true, SeqCst);
    for align in [1, 8, 4096] {
        let l = Layout::from_size_align(0, align).unwrap();
        // SAFETY: the GlobalAlloc contract makes zero-size requests the caller's risk; `Flaky`
        // handles them; a null result is not used.
        unsafe { assert!(FLAKY.alloc(l).is_null()) };
    }
    ZERO_NULL.store(false, SeqCst);
    assert_eq!(exact(), base, "a refused zero-size allocation was counted");
    // One that hands out dangling pointers: each is one 0-byte object until it is freed, and all
    // of them share one address, so none may be sampled (they would alias in the live table).
    let l = Layout::from_size_align(0, 64).unwrap();
    let ptrs: Vec<*mut u8> = (0..1000)
        .map(|_| {
            // SAFETY: as above.
            unsafe { FLAKY.alloc(l) }
        })
        .collect();
    assert!(ptrs.iter().all(|&p| p == 64 as *mut u8));
    let mid = heapsight::stats();
    for p in ptrs {
        // SAFETY: returned by `FLAKY.alloc(l)`.
        unsafe { FLAKY.dealloc(p, l) };
    }
    assert_back_to(base, "zero-size through a ZST-aware inner allocator");
    // `ptrs` itself (8000 bytes) was one allocation; 1000 zero-byte objects on top.
    assert_eq!(mid.alloc_objects - base.alloc_objects, 1001);
    assert_eq!(mid.alloc_bytes - base.alloc_bytes, 8000);
    // malloc(0) through the real global allocator: a unique block of 0 bytes, counted and freed.
    let l = Layout::from_size_align(0, 16).unwrap();
    // SAFETY: glibc malloc(0) returns a unique freeable pointer (or null, then not freed).
    unsafe {
        let p = GLOBAL.alloc(l);
        if !p.is_null() {
            GLOBAL.dealloc(p, l);
        }
    }
    assert_back_to(base, "malloc(0)");
    assert_eq!(live_samples(), live0, "a zero-size block was sampled");
    // Only the `ptrs` vector was sampled (rate 1 samples every non-empty allocation).
    assert_eq!(samples() - s0, 1, "zero-size blocks were sampled");
}

#[inline(never)]
fn huge_alignments() {
    for rate in [0, 1] {
        heapsight::set_sample_rate(rate);
        let live0 = live_samples();
        let base = exact();
        for align in [4096usize, 1 << 16, 1 << 21] {
            for size in [1usize, 4096, 100_000] {
                let l = Layout::from_size_align(size, align).unwrap();
                let b0 = exact();
                // SAFETY: non-zero layouts; blocks used within their size, freed with their layout.
                unsafe {
                    let p = std::alloc::alloc(l);
                    assert!(!p.is_null() && p as usize % align == 0);
                    assert_eq!(four(exact()), plus_alloc(b0, size as u64));
                    let z = std::alloc::alloc_zeroed(l);
                    assert!(!z.is_null() && z as usize % align == 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    let q = std::alloc::realloc(p, l, size * 3);
                    assert!(
                        !q.is_null() && q as usize % align == 0,
                        "realloc lost the alignment"
                    );
                    std::alloc::dealloc(z, l);
                    std::alloc::dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                }
                let b1 = exact();
                assert_eq!(b1.alloc_objects - b0.alloc_objects, 3);
                assert_eq!(b1.alloc_bytes - b0.alloc_bytes, 5 * size as u64);
                assert_eq!(b1.inuse_bytes, b0.inuse_bytes);
            }
        }
        // Many page-aligned blocks live at once: their addresses crowd few filter cells.
        let l = Layout::from_size_align(64, 4096).unwrap();
        // SAFETY: as above.
        let blocks: Vec<*mut u8> = (0..2000).map(|_| unsafe { std::alloc::alloc(l) }).collect();
        assert!(blocks.iter().all(|p| !p.is_null()));
        for p in blocks {
            // SAFETY: allocated just above with `l`.
            unsafe { std::alloc::dealloc(p, l) };
        }
        assert_back_to(base, "huge alignments");
        assert_eq!(
            live_samples(),
            live0,
            "rate {rate}: a sample of an aligned block leaked"
        );
    }
    let p = heapsight::profile();
    assert!(support::assert_sites_freed(&p, "huge_alignments") >= 1);
}

fn failure_through_the_global_allocator() {
    for rate in [0, 1] {
        heapsight::set_sample_rate(rate);
        let base = exact();
        let s0 = samples();
        let mut v: Vec<u8> = Vec::new();
        // 2^62 bytes is a valid layout that no allocator can satisfy; 2^46 (64 TiB) is refused
        // by the kernel. Both come back as errors from `System`, not as blocks.
        assert!(v.try_reserve_exact(1 << 62).is_err());
        assert!(v.try_reserve_exact(1 << 46).is_err());
        v.push(1);
        assert!(
            v.try_reserve_exact(1 << 46).is_err(),
            "realloc of a live block to 64 TiB"
        );
        assert_eq!(v, [1]);
        drop(v);
        assert_back_to(base, "failed reservations");
        let after = exact();
        // Only the one-byte push allocated.
        assert_eq!(
            after.alloc_objects - base.alloc_objects,
            1,
            "a failed allocation was counted"
        );
        assert!(samples() - s0 <= 1);
    }
}

fn main() {
    support::watchdog(120, "rel_passthrough");
    support::run(&[
        ("failed_alloc_is_not_counted", failed_alloc_is_not_counted),
        (
            "failed_realloc_keeps_the_old_block",
            failed_realloc_keeps_the_old_block,
        ),
        ("zero_size_layouts", zero_size_layouts),
        ("huge_alignments", huge_alignments),
        (
            "failure_through_the_global_allocator",
            failure_through_the_global_allocator,
        ),
    ]);
}
