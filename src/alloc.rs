//! `HeapSight<A>`: the `GlobalAlloc` wrapper. This file runs on every allocation and free.
//!
//! The fast path is one thread-local subtract-and-branch and own-thread counter stores:
//!
//! * **alloc**: subtract `size` from the countdown; still positive? count into this thread's
//!   slot, done. Otherwise the `#[cold]` [`alloc_slow`]: a new thread, the profiler guard, an
//!   exited thread, or a sample.
//! * **free**: subtract `size` from the free countdown (`free_left`, 0 for threads without a
//!   slot); still positive and the sampled-block filter byte zero? count, done. Otherwise
//!   [`free_slow`]: a flush (every [`counters::FREE_FLUSH`] bytes), a thread without a slot, or a
//!   block that may be sampled.
//!
//! No lock, no shared read-modify-write, no allocation, no hashing but the filter's shift-and-mask.
//! Blocks carry no header: the inner allocator sees exactly the caller's layout.
use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::*};
use std::alloc::System;

use crate::counters::{self, Slot};
use crate::guard::{InProfiler, ThreadState, LIFE_ACTIVE, LIFE_EXITED, LIFE_NEW, THREAD};
use crate::{config, filter, sampler, sites, stack};

/// A `#[global_allocator]` that profiles the heap of the program it serves.
///
/// It forwards `alloc`, `dealloc`, `realloc` and `alloc_zeroed` to the inner allocator `A`
/// unchanged, counts every call exactly, and samples allocations for the heap profile.
/// See the crate documentation for set-up.
///
/// ```
/// #[global_allocator]
/// static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();
/// # fn main() {}
/// ```
pub struct HeapSight<A = System> {
    inner: A,
}

impl HeapSight<System> {
    /// Profiles the system allocator (`malloc`).
    pub const fn system() -> Self {
        HeapSight { inner: System }
    }
}

impl<A> HeapSight<A> {
    /// Profiles `inner`, e.g. `HeapSight::new(mimalloc::MiMalloc)`. Usable in a `static`.
    pub const fn new(inner: A) -> Self {
        HeapSight { inner }
    }

    /// The wrapped allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }
}

// SAFETY: every method forwards to `A` with the caller's arguments unchanged and returns what `A`
// returned, so `A`'s guarantees hold for our callers. The bookkeeping around the calls neither
// touches the blocks nor panics (no unwinding across the allocator).
unsafe impl<A: GlobalAlloc> GlobalAlloc for HeapSight<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        debug_assert!(layout.align().is_power_of_two());
        // SAFETY: forwarded with the caller's layout, for which the caller vouches.
        let p = unsafe { self.inner.alloc(layout) };
        if !p.is_null() {
            on_alloc(p, layout.size());
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        debug_assert!(layout.align().is_power_of_two());
        // SAFETY: as in `alloc`.
        let p = unsafe { self.inner.alloc_zeroed(layout) };
        if !p.is_null() {
            on_alloc(p, layout.size());
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        debug_assert!(!ptr.is_null(), "dealloc of a null pointer");
        // Count (and retire a sample) before the block can be handed out again by `A`: another
        // thread could otherwise be given and sample this address before we remove ours.
        // Both branches end in a tail call, so the fast path needs no stack frame of its own.
        if on_free(ptr, layout.size()) {
            // SAFETY: the caller guarantees `ptr` was allocated by this allocator with `layout`,
            // hence by `A` with `layout`.
            unsafe { self.inner.dealloc(ptr, layout) }
        } else {
            // SAFETY: as above.
            unsafe { dealloc_slow(&self.inner, ptr, layout) }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        debug_assert!(!ptr.is_null(), "realloc of a null pointer");
        debug_assert!(
            Layout::from_size_align(new_size, layout.align()).is_ok(),
            "realloc to a size that overflows when rounded to the alignment"
        );
        // The old block may be a live sample: that case (and the filter's false positives) goes
        // out of line, so the common path keeps no sample on its stack.
        if filter::maybe_sampled(ptr) {
            // SAFETY: the caller's guarantees, passed on unchanged.
            return unsafe { realloc_maybe_sampled(&self.inner, ptr, layout, new_size) };
        }
        // SAFETY: forwarded unchanged; the caller's guarantees about `ptr`, `layout` and
        // `new_size` are the ones `A::realloc` requires.
        let new = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // One free of the old block and one allocation of the new one, as Go's growslice does.
            on_free_counted(ptr, layout.size());
            on_alloc(new, new_size);
        }
        new
    }
}

/// `realloc` of a block whose filter byte is set: takes its sample out (if it is one) before `A`
/// may free the block (see `dealloc`), and puts it back if `A` fails.
///
/// # Safety
/// As `GlobalAlloc::realloc`: `ptr` was allocated by `inner` with `layout`, and `new_size`
/// rounded up to `layout.align()` does not overflow `isize`.
#[cold]
#[inline(never)]
unsafe fn realloc_maybe_sampled<A: GlobalAlloc>(
    inner: &A,
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
) -> *mut u8 {
    let taken = if filter::is_sampled(ptr) {
        take_sample_for_realloc(ptr)
    } else {
        None
    };
    // SAFETY: the caller's guarantees, passed on unchanged.
    let new = unsafe { inner.realloc(ptr, layout, new_size) };
    if new.is_null() {
        // The old block is untouched and still the caller's: put its sample back.
        if let Some(live) = taken {
            crate::guard::profiler_scope(|| sites::restore_sample(ptr, live));
        }
        return new;
    }
    on_free_counted(ptr, layout.size());
    on_alloc(new, new_size);
    new
}

#[inline(always)]
fn on_alloc(ptr: *mut u8, size: usize) {
    THREAD.with(|t| {
        // Subtract first, test the borrow after: `countdown > size` is "no borrow and not zero",
        // so this compiles to one `sub` on the thread-local and one `jbe` (3 instructions fewer
        // than load, compare, branch, subtract, store). The slow path adds `size` back before
        // anything else, so the countdown is never seen wrapped (see `alloc_slow`).
        let (c, borrow) = t.countdown.get().overflowing_sub(size as u64);
        t.countdown.set(c);
        if !borrow & (c != 0) {
            // SAFETY: `countdown > 0` only while this thread owns a slot that is installed in
            // `t.slot` (thread init sets the slot before the countdown; the guard and thread exit
            // clear both), and slots are never freed.
            unsafe { (*t.slot.get()).add_alloc(size) }
        } else {
            alloc_slow(t, ptr, size)
        }
    })
}

/// The free fast path: counts the free and returns `true`, or returns `false` (having changed
/// nothing) when it needs [`dealloc_slow`].
#[inline(always)]
fn on_free(ptr: *mut u8, size: usize) -> bool {
    THREAD.with(|t| {
        // As on alloc: subtract first, test after. `free_left` is 0 without a slot (new thread,
        // guard, exiting), so this one test also catches those; the slow path adds `size` back.
        let (c, borrow) = t.free_left.get().overflowing_sub(size as u64);
        t.free_left.set(c);
        if !borrow & (c != 0) & !filter::maybe_sampled(ptr) {
            // SAFETY: `free_left > 0` only while this thread's slot is installed in `t.slot`
            // (`set_slot` and the guard zero it whenever the slot is cleared), and slots are
            // never freed.
            unsafe { (*t.slot.get()).add_free(size) };
            true
        } else {
            // `dealloc_slow` adds `size` back (not here: the compiler would then keep the old
            // value in a register instead of subtracting in memory).
            false
        }
    })
}

/// The rare free: new thread, guard, exiting thread, flush due, or a block that may be sampled.
///
/// # Safety
/// As `GlobalAlloc::dealloc`: `ptr` was allocated by `inner` with `layout` and is not used
/// after this call.
#[cold]
#[inline(never)]
unsafe fn dealloc_slow<A: GlobalAlloc>(inner: &A, ptr: *mut u8, layout: Layout) {
    THREAD.with(|t| undo_and_free_slow(t, ptr, layout.size(), true));
    // SAFETY: the caller's guarantees, passed on unchanged.
    unsafe { inner.dealloc(ptr, layout) }
}

/// Counts a free whose sample, if any, was already taken out (realloc).
#[inline(always)]
fn on_free_counted(ptr: *mut u8, size: usize) {
    THREAD.with(|t| {
        let (c, borrow) = t.free_left.get().overflowing_sub(size as u64);
        t.free_left.set(c);
        if !borrow & (c != 0) {
            // SAFETY: as in `on_free`.
            unsafe { (*t.slot.get()).add_free(size) }
        } else {
            undo_and_free_slow(t, ptr, size, false)
        }
    })
}

#[cold]
#[inline(never)]
fn take_sample_for_realloc(ptr: *mut u8) -> Option<sites::Live> {
    THREAD.with(|t| {
        // The profiler's own blocks are never sampled, and the profiler may be holding the site
        // lock right now: do not look.
        let _g = InProfiler::enter(t)?;
        sites::remove_sample(ptr)
    })
}

/// Where a thread's slot goes at exit: a thread-local whose destructor hands the slot back.
/// Its destructor is registered by the thread's first slow-path call, inside the guard (the
/// registration may allocate).
struct ExitHook;

impl Drop for ExitHook {
    fn drop(&mut self) {
        THREAD.with(|t| {
            if t.life.get() != LIFE_ACTIVE {
                return;
            }
            let slot = t.own_slot();
            t.life.set(LIFE_EXITED);
            t.set_slot(core::ptr::null());
            if !slot.is_null() {
                // SAFETY: slots are never freed.
                counters::release_slot(unsafe { &*slot });
            }
        })
    }
}

thread_local! {
    static EXIT_HOOK: ExitHook = const { ExitHook };
}

#[cold]
#[inline(never)]
fn alloc_slow(t: &ThreadState, ptr: *mut u8, size: usize) {
    // Undo the fast path's subtraction: the countdown is back to what it was before this call
    // (0 under the guard, before thread init and after exit), so no allocation sees it wrapped.
    t.countdown.set(t.countdown.get().wrapping_add(size as u64));
    if t.in_profiler.get() {
        counters::profiler_alloc(size);
        return;
    }
    if t.life.get() == LIFE_NEW {
        init_thread(t);
    }
    if t.life.get() != LIFE_ACTIVE {
        counters::orphan_alloc(size);
        return;
    }
    // SAFETY: an active thread outside the guard has its slot installed.
    let slot: &Slot = unsafe { &*t.slot.get() };
    slot.add_alloc(size);
    let c = t.countdown.get();
    if c > size as u64 {
        // Only after thread init: the fresh countdown does not cover this allocation.
        t.countdown.set(c - size as u64);
        return;
    }
    // The countdown fell inside this allocation: it is sampled, with the weight of the rate the
    // countdown was drawn with.
    let rate = t.drawn_rate.get();
    rearm(t);
    // Constant time whatever the thread count (one shared `fetch_add`; see `counters`).
    counters::resync(slot);
    if rate != 0 {
        take_sample(t, ptr, size as u64, rate);
    }
}

/// The free slow path, entered right after the fast path subtracted `size` from `free_left`:
/// adds it back first, so the countdown is as before this free (0 for threads without a slot)
/// and no reader of it sees a wrapped value.
#[cold]
#[inline(never)]
fn undo_and_free_slow(t: &ThreadState, ptr: *mut u8, size: usize, check_sample: bool) {
    t.free_left.set(t.free_left.get().wrapping_add(size as u64));
    free_slow(t, ptr, size, check_sample)
}

#[inline(always)]
fn free_slow(t: &ThreadState, ptr: *mut u8, size: usize, check_sample: bool) {
    if t.in_profiler.get() {
        // The profiler's own memory; never sampled, so no table look-up (we may hold its lock).
        counters::profiler_free(size);
        return;
    }
    // Known to be sampled (exact, lock-free) before the clock is read or the lock taken.
    if check_sample && filter::maybe_sampled(ptr) && filter::is_sampled(ptr) {
        if let Some(_g) = InProfiler::enter(t) {
            sites::remove_sample(ptr);
        }
    }
    if t.life.get() == LIFE_NEW {
        init_thread(t);
    }
    let slot = t.slot.get();
    if slot.is_null() {
        counters::orphan_free(size);
        return;
    }
    // SAFETY: this thread's owned, never-freed slot.
    let slot: &Slot = unsafe { &*slot };
    slot.add_free(size);
    let c = t.free_left.get();
    if c > size as u64 {
        t.free_left.set(c - size as u64);
    } else {
        // The free countdown expired: flush this thread's net change (constant time).
        counters::resync(slot);
        t.free_left.set(counters::FREE_FLUSH);
    }
}

/// Draws this thread's next countdown from the current global rate.
fn rearm(t: &ThreadState) {
    let rate = RATE.load(Relaxed);
    let mut rng = t.rng.get();
    let gap = sampler::next_gap(&mut rng, rate);
    t.rng.set(rng);
    t.drawn_rate.set(rate);
    t.set_countdown(gap);
}

#[cold]
#[inline(never)]
fn take_sample(t: &ThreadState, ptr: *mut u8, size: u64, rate: u64) {
    let Some(_g) = InProfiler::enter(t) else {
        return;
    };
    // Zero only the `depth` slots the capture may use, not the whole 2 KiB buffer: zeroing all
    // of it was ~60% of the instructions of a sampled alloc+free (callgrind, benches/callgrind.py).
    let mut storage = core::mem::MaybeUninit::<[usize; stack::BUF_LEN]>::uninit();
    let depth = (MAX_DEPTH.load(Relaxed) + stack::ENTRY_FRAMES).min(stack::BUF_LEN);
    let p = storage.as_mut_ptr() as *mut usize;
    // SAFETY: `p` points to `BUF_LEN` usizes on our stack and `depth <= BUF_LEN`; the first
    // `depth` are initialised (zeroed) before the slice over them is made.
    let buf = unsafe {
        core::ptr::write_bytes(p, 0, depth);
        core::slice::from_raw_parts_mut(p, depth)
    };
    let n = stack::capture(buf, (t.stack_lo.get(), t.stack_hi.get()));
    sites::record_sample(&buf[..n], ptr, size, rate, t.tag.get(), now_ns());
}

/// Monotonic nanoseconds (vDSO clock_gettime: no system call, no allocation).
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// This thread's counter slot, initialising the thread first if it has not allocated yet (so a
/// scope or tag entered before the first allocation still counts it). `None` inside the
/// profiler and once the thread's slot was handed back at exit.
pub(crate) fn thread_slot(t: &ThreadState) -> Option<&'static Slot> {
    if t.in_profiler.get() {
        return None;
    }
    if t.life.get() == LIFE_NEW {
        init_thread(t);
    }
    let s = t.slot.get();
    // SAFETY: a non-null slot outside the guard is this thread's owned slot; slots are never
    // freed.
    (!s.is_null()).then(|| unsafe { &*s })
}

/// Gives this thread a slot, an exit hook, stack bounds, a seeded generator and a countdown.
/// Leaves `life` as ACTIVE on success, EXITED if the thread is already tearing down.
#[cold]
#[inline(never)]
fn init_thread(t: &ThreadState) {
    init_global();
    let Some(_g) = InProfiler::enter(t) else {
        return;
    };
    // The exit hook is a thread-local with a destructor; if this thread's destructors are already
    // running we cannot get one, and a slot taken now would never be handed back.
    if EXIT_HOOK.try_with(|_| ()).is_err() {
        t.life.set(LIFE_EXITED);
        return;
    }
    let slot = counters::acquire_slot();
    let (lo, hi) = stack::thread_stack_bounds();
    t.stack_lo.set(lo);
    t.stack_hi.set(hi);
    let n = THREAD_SEQ.fetch_add(1, Relaxed);
    t.rng.set(sampler::mix_seed(
        seed().wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
    ));
    t.set_slot(slot);
    t.set_free_left(counters::FREE_FLUSH);
    t.life.set(LIFE_ACTIVE);
    counters::resync(slot);
    rearm(t);
}

static RATE: AtomicU64 = AtomicU64::new(sampler::DEFAULT_RATE);
pub(crate) static MAX_DEPTH: AtomicUsize = AtomicUsize::new(stack::DEFAULT_MAX_DEPTH);
static SEED: AtomicU64 = AtomicU64::new(0);
static THREAD_SEQ: AtomicU64 = AtomicU64::new(0);
static GLOBAL_STATE: AtomicU8 = AtomicU8::new(0);

fn seed() -> u64 {
    let s = SEED.load(Relaxed);
    if s != 0 {
        return s;
    }
    let fresh = sampler::mix_seed(
        now_ns() ^ ((std::process::id() as u64) << 32) ^ (&SEED as *const _ as u64),
    );
    match SEED.compare_exchange(0, fresh, Relaxed, Relaxed) {
        Ok(_) => fresh,
        Err(s) => s,
    }
}

pub(crate) fn sample_rate() -> u64 {
    RATE.load(Relaxed)
}

/// Sets the rate and re-arms the calling thread at once; other threads pick it up at their next
/// countdown expiry (within about one interval of the old rate, 1 MiB if it was 0).
pub(crate) fn set_sample_rate(rate: u64) {
    init_global();
    RATE.store(rate, Relaxed);
    THREAD.with(|t| {
        if t.life.get() == LIFE_ACTIVE {
            rearm(t)
        }
    })
}

pub(crate) fn set_seed(seed: u64) {
    init_global();
    SEED.store(sampler::mix_seed(seed), Relaxed);
    THREAD_SEQ.store(0, Relaxed);
    THREAD.with(|t| {
        t.rng.set(sampler::mix_seed(seed));
        if t.life.get() == LIFE_ACTIVE {
            rearm(t)
        }
    })
}

/// One-time process set-up: environment, fork handlers, unwinder warm-up. Runs on the first
/// slow-path call (normally the process's first allocation, before `main`) and from the start-up
/// constructor below, whichever comes first; a thread that finds it in progress carries on with
/// the defaults rather than wait inside the allocator.
pub(crate) fn init_global() {
    if GLOBAL_STATE.load(Acquire) == 2 {
        return;
    }
    if GLOBAL_STATE
        .compare_exchange(0, 1, Acquire, Relaxed)
        .is_err()
    {
        return;
    }
    read_env();
    #[cfg(unix)]
    // SAFETY: the handlers are `extern "C"` functions that only take and release spin locks and
    // the unwinder's fork gate (see `sites::atfork_prepare`).
    unsafe {
        libc::pthread_atfork(
            Some(sites::atfork_prepare),
            Some(sites::atfork_parent),
            Some(sites::atfork_child),
        );
    }
    if config::getenv(b"HEAPSIGHT_DUMP_ON_EXIT\0").is_some_and(|v| !v.is_empty()) {
        // SAFETY: registers a plain `extern "C" fn()` that catches its own panics.
        unsafe { libc::atexit(crate::dump::dump_at_exit) };
    }
    core::hint::black_box(&START_UP);
    GLOBAL_STATE.store(2, Release);
}

fn read_env() {
    let env = config::env_settings();
    if let Some(r) = env.sample_rate {
        RATE.store(r, Relaxed);
    }
    if let Some(d) = env.max_depth {
        MAX_DEPTH.store(d, Relaxed);
    }
    if let Some(n) = env.max_sites {
        sites::MAX_SITES.store(n, Relaxed);
    }
    if let Some(u) = env.unwinder {
        stack::set_unwinder(u);
    }
}

/// Start-up constructor (Linux `.init_array`): finishes global set-up and warms the DWARF
/// unwinder up once, outside any allocation, so libgcc's first-call initialisation (which walks
/// the loaded objects under the loader lock) never first happens inside the hook.
#[cfg(all(target_os = "linux", not(heapsight_portable)))]
#[used]
#[link_section = ".init_array"]
static START_UP: extern "C" fn() = {
    extern "C" fn start_up() {
        init_global();
        crate::guard::profiler_scope(|| {
            let mut buf = [0usize; 8];
            stack::capture_dwarf(&mut buf);
        });
        stack::DWARF_CAPTURES.store(0, Relaxed);
    }
    start_up
};
#[cfg(not(all(target_os = "linux", not(heapsight_portable))))]
static START_UP: () = ();
