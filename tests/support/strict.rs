//! `Strict<A>`: a layout-checking inner allocator for the test binaries (`HeapSight<Strict>`).
//!
//! jemalloc's sized free files a block under the size class its layout names, so a wrong layout
//! given back to the inner allocator is heap corruption there (glibc and mimalloc ignore it, so
//! a test over `System` alone cannot see it). `Strict` forwards every call to its inner
//! allocator `A` (default `System`) unchanged and checks the layouts on the way:
//!
//! * every live block's address and layout sit in one fixed, lock-free table (open addressing
//!   over static atomics: no allocation, no lock, so signal handlers that allocate, forked
//!   children and threads racing are all fine);
//! * a free or realloc whose layout differs from the one the block was allocated with counts a
//!   **mismatch**, one of an address the table does not hold counts an **unknown** free; the
//!   first few of each are kept (address and both layouts) for the failure message;
//! * it keeps its own exact totals: live blocks and bytes as `A` sees them, calls, and
//!   allocations per alignment, to compare heapsight's counters with. At a quiet moment
//!   `live_bytes == stats().inuse_bytes + stats().profiler_bytes` (every block `A` holds is the
//!   program's or the profiler's, at the caller's size).
//!
//! Test knobs (all off by default): inject failures (every Nth call, or the next N calls on this
//! thread) without calling `A`, and a re-entry hook run before `A` is called (an inner allocator
//! that itself allocates, as a logging or lazily initialised one does).
//!
//! One table per process: use one `Strict` (the global allocator's). Include with
//! `#[path = "support/strict.rs"] mod strict;`.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::*};

/// Slots of the table: the most blocks live at once (the program's and the profiler's). Address
/// space only: pages are touched as slots are used.
pub const CAP: usize = 1 << 21;

/// Never a block address.
const EMPTY: usize = 0;
/// A slot whose block was freed: probes go on past it; inserts reuse it.
const TOMB: usize = usize::MAX;

/// Block addresses (or `EMPTY` / `TOMB`).
static KEYS: [AtomicUsize; CAP] = [const { AtomicUsize::new(EMPTY) }; CAP];
/// The layout each key was allocated with: `size << 8 | log2(align)`.
static LAYOUTS: [AtomicUsize; CAP] = [const { AtomicUsize::new(0) }; CAP];

static MISMATCHES: AtomicU64 = AtomicU64::new(0);
static UNKNOWN: AtomicU64 = AtomicU64::new(0);
static OVERFLOW: AtomicU64 = AtomicU64::new(0);
static LIVE_BLOCKS: AtomicI64 = AtomicI64::new(0);
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static FREES: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static INJECTED: AtomicU64 = AtomicU64::new(0);
/// Successful allocations (and moves by realloc) per log2 of the alignment asked.
static BY_ALIGN: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];

/// The first few errors: (kind 1 = mismatch / 2 = unknown, address, layout given, layout held).
const KEEP: usize = 8;
static FIRST: [[AtomicUsize; 4]; KEEP] = [const { [const { AtomicUsize::new(0) }; 4] }; KEEP];
static FIRST_N: AtomicUsize = AtomicUsize::new(0);

/// Fail every Nth inner call (0 = never), counted over all threads.
static FAIL_EVERY: AtomicU64 = AtomicU64::new(0);
static CALLS: AtomicU64 = AtomicU64::new(0);
/// `fn()` run before each inner call at re-entry depth 0 (null = none).
static HOOK: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Calls left to fail on this thread.
    static FAIL_NEXT: Cell<u64> = const { Cell::new(0) };
    /// Inside the re-entry hook on this thread.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
    /// Inside a call of `A` on this thread (see [`inside_inner`]).
    static IN_INNER: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f` (a call of `A`) marked as inside the inner allocator on this thread.
fn in_inner<R>(f: impl FnOnce() -> R) -> R {
    IN_INNER.with(|c| c.set(c.get() + 1));
    let r = f();
    IN_INNER.with(|c| c.set(c.get() - 1));
    r
}

/// Whether this thread is inside a call of the inner allocator `A` right now: a signal handler
/// that allocates must not then (glibc's malloc is not async-signal-safe; heapsight's own code
/// is what such a handler tests).
pub fn inside_inner() -> bool {
    IN_INNER.with(|c| c.get() != 0)
}

fn pack(l: Layout) -> usize {
    l.size() << 8 | l.align().trailing_zeros() as usize
}

fn unpack(v: usize) -> (usize, usize) {
    (v >> 8, 1 << (v & 0xff))
}

fn home(p: usize) -> usize {
    ((p as u64 >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - CAP.trailing_zeros())) as usize
}

fn note(kind: usize, p: usize, given: usize, held: usize) {
    let i = FIRST_N.fetch_add(1, Relaxed);
    if i < KEEP {
        for (s, v) in FIRST[i].iter().zip([kind, p, given, held]) {
            s.store(v, Relaxed);
        }
    }
}

fn remember(p: usize, l: Layout) {
    LIVE_BLOCKS.fetch_add(1, Relaxed);
    LIVE_BYTES.fetch_add(l.size() as i64, Relaxed);
    BY_ALIGN[l.align().trailing_zeros() as usize].fetch_add(1, Relaxed);
    let mut i = home(p);
    for _ in 0..CAP {
        let k = KEYS[i].load(Relaxed);
        if (k == EMPTY || k == TOMB) && KEYS[i].compare_exchange(k, p, Relaxed, Relaxed).is_ok() {
            // Release: the block reaches the thread that frees it only after this store (through
            // the program's own synchronisation), so that free reads this layout.
            LAYOUTS[i].store(pack(l), Release);
            return;
        }
        i = (i + 1) % CAP;
    }
    OVERFLOW.fetch_add(1, Relaxed);
}

/// Forgets `p`; counts a mismatch if it was allocated with a layout other than `l`, an unknown
/// free if it is not in the table. Returns whether it was found.
fn forget(p: usize, l: Layout) -> bool {
    let mut i = home(p);
    // Slots never go back to EMPTY, so an EMPTY slot ends the probe for any address.
    for _ in 0..CAP {
        match KEYS[i].load(Relaxed) {
            EMPTY => break,
            k if k == p => {
                let held = LAYOUTS[i].load(Acquire);
                if held != pack(l) {
                    MISMATCHES.fetch_add(1, Relaxed);
                    note(1, p, pack(l), held);
                }
                let (size, _) = unpack(held);
                KEYS[i].store(TOMB, Relaxed);
                LIVE_BLOCKS.fetch_sub(1, Relaxed);
                LIVE_BYTES.fetch_sub(size as i64, Relaxed);
                return true;
            }
            _ => i = (i + 1) % CAP,
        }
    }
    UNKNOWN.fetch_add(1, Relaxed);
    note(2, p, pack(l), 0);
    false
}

/// Runs the re-entry hook (not from inside it), then says whether this call is one to fail
/// (injected). Calls the hook itself makes never fail: a failure injected for a call is that
/// call's, whatever the hook allocated meanwhile.
fn before_call() -> bool {
    if IN_HOOK.with(|c| c.get()) {
        return false;
    }
    let h = HOOK.load(Relaxed);
    if h != 0 {
        IN_HOOK.with(|c| c.set(true));
        // SAFETY: only `set_reentry_hook` stores here, a `fn()` cast to usize.
        let f: fn() = unsafe { std::mem::transmute::<usize, fn()>(h) };
        f();
        IN_HOOK.with(|c| c.set(false));
    }
    let next = FAIL_NEXT.with(|c| {
        let n = c.get();
        if n > 0 {
            c.set(n - 1);
        }
        n > 0
    });
    let every = FAIL_EVERY.load(Relaxed);
    let fail = next || (every != 0 && CALLS.fetch_add(1, Relaxed).wrapping_add(1) % every == 0);
    if fail {
        INJECTED.fetch_add(1, Relaxed);
    }
    fail
}

/// The layout-checking allocator; see the module docs.
pub struct Strict<A = System> {
    inner: A,
}

impl Strict<System> {
    pub const fn system() -> Self {
        Strict { inner: System }
    }
}

impl<A> Strict<A> {
    pub const fn new(inner: A) -> Self {
        Strict { inner }
    }
}

// SAFETY: forwards every call to `A` with the caller's arguments and returns what `A` returned
// (or null for an injected failure, which `GlobalAlloc` allows); the bookkeeping uses only static
// atomics and const thread-locals without destructors: no allocation, no lock, no panic.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Strict<A> {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if before_call() {
            return std::ptr::null_mut();
        }
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: the caller's layout.
        let p = in_inner(|| unsafe { self.inner.alloc(l) });
        if !p.is_null() {
            remember(p as usize, l);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if before_call() {
            return std::ptr::null_mut();
        }
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: the caller's layout.
        let p = in_inner(|| unsafe { self.inner.alloc_zeroed(l) });
        if !p.is_null() {
            remember(p as usize, l);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        FREES.fetch_add(1, Relaxed);
        // Before `A` can hand the address out again.
        forget(p as usize, l);
        // SAFETY: the caller's block and layout (a mismatch is counted, and the test fails).
        in_inner(|| unsafe { self.inner.dealloc(p, l) })
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if before_call() {
            return std::ptr::null_mut();
        }
        REALLOCS.fetch_add(1, Relaxed);
        // Out of the table before `A` may free the address (another thread could be given it).
        let known = forget(p as usize, l);
        // SAFETY: the caller's block, layout and size.
        let q = in_inner(|| unsafe { self.inner.realloc(p, l, n) });
        if q.is_null() {
            if known {
                remember(p as usize, l);
            }
        } else {
            // SAFETY: `n` rounded up to `l.align()` fits (the caller's guarantee).
            remember(q as usize, unsafe {
                Layout::from_size_align_unchecked(n, l.align())
            });
        }
        q
    }
}

/// Strict's own figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Blocks `A` holds now, and their bytes (the sizes asked of `A`).
    pub live_blocks: i64,
    pub live_bytes: i64,
    /// Successful and failed calls that reached `A` (injected failures do not).
    pub allocs: u64,
    pub frees: u64,
    pub reallocs: u64,
    /// Failures injected (calls that never reached `A`).
    pub injected: u64,
    /// Frees and reallocs with another layout than the block's, and of blocks not in the table.
    pub mismatches: u64,
    pub unknown: u64,
    /// Blocks that found no slot (the table is full; the check is then incomplete).
    pub overflow: u64,
}

pub fn totals() -> Totals {
    Totals {
        live_blocks: LIVE_BLOCKS.load(Relaxed),
        live_bytes: LIVE_BYTES.load(Relaxed),
        allocs: ALLOCS.load(Relaxed),
        frees: FREES.load(Relaxed),
        reallocs: REALLOCS.load(Relaxed),
        injected: INJECTED.load(Relaxed),
        mismatches: MISMATCHES.load(Relaxed),
        unknown: UNKNOWN.load(Relaxed),
        overflow: OVERFLOW.load(Relaxed),
    }
}

/// Blocks allocated (or moved by realloc) at an alignment of `align` or more, since start-up.
pub fn allocs_aligned_at_least(align: usize) -> u64 {
    BY_ALIGN[align.trailing_zeros() as usize..]
        .iter()
        .map(|c| c.load(Relaxed))
        .sum()
}

/// The first errors, one line each (for failure messages).
pub fn first_errors() -> String {
    let mut s = String::new();
    for e in FIRST.iter().take(FIRST_N.load(Relaxed).min(KEEP)) {
        let [kind, p, given, held] = [0, 1, 2, 3].map(|i| e[i].load(Relaxed));
        let (gs, ga) = unpack(given);
        if kind == 1 {
            let (hs, ha) = unpack(held);
            let _ = writeln!(
                s,
                "  {p:#x}: freed as (size {gs}, align {ga}), allocated as (size {hs}, align {ha})"
            );
        } else {
            let _ = writeln!(
                s,
                "  {p:#x}: freed as (size {gs}, align {ga}), never allocated"
            );
        }
    }
    s
}

/// `Err` with the first errors if any free or realloc gave `A` a wrong layout or an unknown
/// block, or the table overflowed.
pub fn check() -> Result<(), String> {
    let t = totals();
    if t.mismatches == 0 && t.unknown == 0 && t.overflow == 0 {
        return Ok(());
    }
    Err(format!(
        "Strict: the inner allocator was given {} wrong layouts and {} unknown blocks \
         ({} blocks found no table slot); first:\n{}",
        t.mismatches,
        t.unknown,
        t.overflow,
        first_errors()
    ))
}

/// Panics loudly if [`check`] fails.
pub fn assert_clean() {
    if let Err(e) = check() {
        panic!("{e}");
    }
}

/// `Err` unless, at a quiet moment, the blocks `A` holds are exactly heapsight's in-use bytes plus
/// the profiler's own: what `A` really holds, against what heapsight says is held.
pub fn check_counters(s: &heapsight::Stats) -> Result<(), String> {
    let t = totals();
    let said = s.inuse_bytes as i64 + s.profiler_bytes as i64 + s.sample_padding_bytes as i64;
    if t.live_bytes != said {
        return Err(format!(
            "the inner allocator holds {} bytes in {} blocks; heapsight says {} in use + {} \
             profiler + {} sample padding = {said} (off by {})",
            t.live_bytes,
            t.live_blocks,
            s.inuse_bytes,
            s.profiler_bytes,
            s.sample_padding_bytes,
            said - t.live_bytes
        ));
    }
    Ok(())
}

/// Fails every `n`th inner call from now on, on any thread (0: stop).
pub fn fail_every(n: u64) {
    CALLS.store(0, Relaxed);
    FAIL_EVERY.store(n, Relaxed);
}

/// Fails the next `n` inner calls made on this thread.
pub fn fail_next_on_this_thread(n: u64) {
    FAIL_NEXT.with(|c| c.set(n));
}

/// Runs `hook` before each inner call (not from inside the hook itself): an inner allocator that
/// allocates through the global allocator. `None` removes it.
pub fn set_reentry_hook(hook: Option<fn()>) {
    HOOK.store(hook.map_or(0, |f| f as usize), Relaxed);
}
