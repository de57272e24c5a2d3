//! Guarantee 1: the unsampled path forwards each call exactly once, makes no allocation of its
//! own, never re-enters the allocator, and takes no lock; on the sampled path everything the
//! profiler does is inside its guard and uncounted.
//!
//! The global allocator is `Outer(HeapSight::new(Recorder))`: `Outer` only tracks how deep this
//! thread is inside the global allocator (1 = a call from the program; 2+ = a call made from
//! inside heapsight), and `Recorder` (heapsight's inner allocator) counts every call it receives,
//! split by whether heapsight's reentrancy guard was held at the time
//! (`heapsight::in_profiler()`). The process runs with `HEAPSIGHT_SAMPLE_RATE=0` from its first
//! allocation (the binary re-executes itself with it), so no block is a live sample and the
//! sampled-block filter is empty until the rate-1 test.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::SeqCst};

use heapsight::HeapSight;

mod support;
use support::exact;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

struct Outer(HeapSight<Recorder>);

/// Runs one call of the global allocator one level deeper.
fn nested<R>(f: impl FnOnce() -> R) -> R {
    DEPTH.with(|d| d.set(d.get() + 1));
    let r = f();
    DEPTH.with(|d| d.set(d.get() - 1));
    r
}

// SAFETY: forwards every call unchanged to `HeapSight`, which forwards to `Recorder` → `System`.
unsafe impl GlobalAlloc for Outer {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: caller's layout.
        nested(|| unsafe { self.0.alloc(l) })
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: caller's layout.
        nested(|| unsafe { self.0.alloc_zeroed(l) })
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: caller's block.
        nested(|| unsafe { self.0.dealloc(p, l) })
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: caller's block and size.
        nested(|| unsafe { self.0.realloc(p, l, n) })
    }
}

#[global_allocator]
static GLOBAL: Outer = Outer(HeapSight::new(Recorder));

/// Calls seen by the inner allocator: `[alloc, alloc_zeroed, realloc, dealloc]`, for the
/// program (guard not held) and for the profiler (guard held).
static USER: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static PROF: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
/// Program calls that arrived nested inside another allocator call: recursion outside the guard.
static USER_NESTED: AtomicU64 = AtomicU64::new(0);
/// Profiler calls that arrived at depth 1, i.e. not from inside heapsight's hook: `profile()`
/// does that legitimately, the hook never may.
static PROF_TOP: AtomicU64 = AtomicU64::new(0);
/// Net bytes the profiler holds according to the calls we saw.
static PROF_NET: AtomicI64 = AtomicI64::new(0);

struct Recorder;

fn record(kind: usize, bytes: i64) {
    if heapsight::in_profiler() {
        PROF[kind].fetch_add(1, SeqCst);
        PROF_NET.fetch_add(bytes, SeqCst);
        if DEPTH.with(|d| d.get()) <= 1 {
            PROF_TOP.fetch_add(1, SeqCst);
        }
    } else {
        USER[kind].fetch_add(1, SeqCst);
        if DEPTH.with(|d| d.get()) != 1 {
            USER_NESTED.fetch_add(1, SeqCst);
        }
    }
}

// SAFETY: forwards to `System` unchanged; the bookkeeping does not allocate.
unsafe impl GlobalAlloc for Recorder {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        record(0, l.size() as i64);
        // SAFETY: caller's layout.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        record(1, l.size() as i64);
        // SAFETY: caller's layout.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        record(2, n as i64 - l.size() as i64);
        // SAFETY: caller's block and size.
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        record(3, -(l.size() as i64));
        // SAFETY: caller's block.
        unsafe { System.dealloc(p, l) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Calls {
    user: [u64; 4],
    prof: [u64; 4],
    user_nested: u64,
    prof_top: u64,
    prof_net: i64,
}

fn calls() -> Calls {
    Calls {
        user: USER.each_ref().map(|a| a.load(SeqCst)),
        prof: PROF.each_ref().map(|a| a.load(SeqCst)),
        user_nested: USER_NESTED.load(SeqCst),
        prof_top: PROF_TOP.load(SeqCst),
        prof_net: PROF_NET.load(SeqCst),
    }
}

fn sub(a: [u64; 4], b: [u64; 4]) -> [u64; 4] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2], a[3] - b[3]]
}

/// Per round: one `alloc`, one `alloc_zeroed`, one `realloc`, two `dealloc`, of varied sizes.
#[inline(never)]
fn workload(rounds: usize) {
    for i in 0..rounds {
        let l = Layout::from_size_align(16 + i % 200, 8).unwrap();
        let l2 = Layout::from_size_align(l.size() * 2 + 1, 8).unwrap();
        // `black_box`: LLVM may delete an allocation whose block is never used, and the test
        // counts calls.
        use std::hint::black_box;
        // SAFETY: non-zero layouts; every block is freed once with the layout it has.
        unsafe {
            let a = black_box(std::alloc::alloc(l));
            let z = black_box(std::alloc::alloc_zeroed(l));
            assert!(!a.is_null() && !z.is_null());
            let r = black_box(std::alloc::realloc(a, l, l2.size()));
            assert!(!r.is_null());
            std::alloc::dealloc(z, l);
            std::alloc::dealloc(r, l2);
        }
    }
}

/// Checks one run of `workload(rounds)`: exactly one forwarded call per program call, the
/// counters moved by exactly the program's operations, no program call arrived nested.
fn check_workload(rounds: u64) -> (Calls, Calls) {
    let c0 = calls();
    let e0 = exact();
    workload(rounds as usize);
    let e1 = exact();
    let c1 = calls();
    assert_eq!(
        sub(c1.user, c0.user),
        [rounds, rounds, rounds, 2 * rounds],
        "inner allocator calls for the program: [alloc, alloc_zeroed, realloc, dealloc]"
    );
    assert_eq!(
        c1.user_nested, 0,
        "a program allocation re-entered the allocator"
    );
    // realloc = one free + one allocation.
    assert_eq!(e1.alloc_objects - e0.alloc_objects, 3 * rounds);
    assert_eq!(e1.free_objects - e0.free_objects, 3 * rounds);
    assert_eq!(e1.inuse_bytes, e0.inuse_bytes);
    (c0, c1)
}

fn unsampled_path_forwards_once_and_never_recurses() {
    assert_eq!(heapsight::sample_rate(), 0);
    let s0 = heapsight::stats();
    let (c0, c1) = check_workload(20_000);
    assert_eq!(
        sub(c1.prof, c0.prof),
        [0; 4],
        "the unsampled path allocated for itself"
    );
    assert_eq!(c1.prof_net, c0.prof_net);
    let s1 = heapsight::stats();
    assert_eq!(s1.samples, s0.samples);
    assert_eq!(s1.profiler_bytes, s0.profiler_bytes);
}

fn unsampled_path_takes_no_lock() {
    assert_eq!(heapsight::sample_rate(), 0);
    // Nothing was ever sampled in this process, so no free can pass the sampled-block filter.
    assert_eq!(heapsight::profile_unsymbolized().live_samples(), 0);
    static HELD: AtomicBool = AtomicBool::new(false);
    static DONE: AtomicBool = AtomicBool::new(false);
    let holder = std::thread::spawn(|| {
        heapsight::with_site_lock_held(|| {
            HELD.store(true, SeqCst);
            while !DONE.load(SeqCst) {
                std::thread::yield_now();
            }
        })
    });
    while !HELD.load(SeqCst) {
        std::thread::yield_now();
    }
    // If any of this waited for the site lock, it would wait for `DONE`, which only this thread
    // sets: a deadlock, reported by the watchdog.
    check_workload(20_000);
    let _ = heapsight::stats();
    let v: Vec<Box<[u8]>> = (0..3000)
        .map(|i| vec![0u8; i % 4000 + 1].into_boxed_slice())
        .collect();
    drop(v);
    // Blocks aligned to 4 MiB map to filter byte 0, the one the free fast path keeps set as its
    // "no slot" signal: their frees go to the slow path, which must still not take the lock
    // (it did, once: a regression that deadlocked here 1 run in 3).
    let aligned = std::alloc::Layout::from_size_align(64, 4 << 20).unwrap();
    for _ in 0..4 {
        // SAFETY: a valid non-zero layout; the block is freed once with the same layout.
        unsafe {
            let p = std::alloc::alloc(aligned);
            assert!(!p.is_null());
            assert_eq!(
                (p as usize >> 4) & ((1 << 18) - 1),
                0,
                "maps to filter byte 0"
            );
            std::alloc::dealloc(p, aligned);
        }
    }
    DONE.store(true, SeqCst);
    holder.join().unwrap();
}

fn sampled_path_stays_inside_the_guard() {
    heapsight::set_sample_rate(1);
    let s0 = heapsight::stats();
    let rounds = 5_000;
    let (c0, c1) = check_workload(rounds);
    let s1 = heapsight::stats();
    heapsight::set_sample_rate(0);
    // Every allocation is sampled at rate 1: alloc, alloc_zeroed and the realloc's new block.
    assert_eq!(s1.samples - s0.samples, 3 * rounds);
    let prof = sub(c1.prof, c0.prof);
    assert!(
        prof[0] + prof[1] + prof[2] > 0,
        "sampling never allocated? {prof:?}"
    );
    // What the profiler allocated for itself is exactly what `profiler_bytes` says it holds.
    assert_eq!(
        s1.profiler_bytes as i64 - s0.profiler_bytes as i64,
        c1.prof_net - c0.prof_net,
        "profiler_bytes disagrees with the inner allocator"
    );
    assert_eq!(
        c1.prof_top, c0.prof_top,
        "the hook allocated outside an allocator call"
    );
    // And `profile()`: it allocates as the profiler only, never as the program.
    let e0 = exact();
    let u0 = calls().user;
    let p = heapsight::profile();
    assert!(!p.sites().is_empty());
    drop(p);
    assert_eq!(calls().user, u0, "profile() allocated as the program");
    assert_eq!(exact(), e0);
}

fn main() {
    if std::env::var_os("HEAPSIGHT_SAMPLE_RATE").as_deref() != Some("0".as_ref()) {
        let code = std::process::Command::new(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env("HEAPSIGHT_SAMPLE_RATE", "0")
            .status()
            .expect("re-run with HEAPSIGHT_SAMPLE_RATE=0")
            .code()
            .unwrap_or(1);
        std::process::exit(code);
    }
    support::watchdog(120, "rel_forwarding");
    support::run(&[
        (
            "unsampled_path_forwards_once_and_never_recurses",
            unsampled_path_forwards_once_and_never_recurses,
        ),
        ("unsampled_path_takes_no_lock", unsampled_path_takes_no_lock),
        (
            "sampled_path_stays_inside_the_guard",
            sampled_path_stays_inside_the_guard,
        ),
    ]);
}
