//! Thread set-up and tear-down: a thread's counter slot, stack bounds, generator and countdowns.
//!
//! A thread meets heapsight at its first slow-path call (its countdowns start at 0, so its first
//! allocation or free goes there). [`init_thread`] gives it a slot and arms its fast path; the
//! [`ExitHook`] thread-local hands the slot back when the thread's destructors run. The hook
//! (`alloc`) calls these; `measure()` and tags reach a thread's slot through [`current_slot`].
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};

use crate::counters::{self, Slot};
use crate::guard::{InProfiler, Life, ThreadState, THREAD};
use crate::{clock, sampler, stack};

/// Where a thread's slot goes at exit: a thread-local whose destructor hands the slot back.
/// Its destructor is registered by [`init_thread`], inside the guard (the registration may
/// allocate).
struct ExitHook;

impl Drop for ExitHook {
    fn drop(&mut self) {
        THREAD.with(|t| {
            if t.life.get() != Life::Active {
                return;
            }
            let slot = t.owned_slot();
            t.life.set(Life::Exited);
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

/// Gives this thread a slot, an exit hook, stack bounds, a seeded generator and countdowns.
/// Leaves `life` as `Active` on success, `Exited` if the thread is already tearing down.
/// Call inside the guard (`_guard` proves it), on a thread whose `life` is `New`.
pub(crate) fn init_thread(t: &ThreadState, _guard: &InProfiler<'_>) {
    // The exit hook is a thread-local with a destructor; if this thread's destructors are already
    // running we cannot get one, and a slot taken now would never be handed back.
    if EXIT_HOOK.try_with(|_| ()).is_err() {
        t.life.set(Life::Exited);
        return;
    }
    let Some(slot) = counters::acquire_slot() else {
        // No memory for a slot: counted in the shared fallback from now on, as after exit.
        t.life.set(Life::Exited);
        return;
    };
    let (lo, hi) = stack::thread_stack_bounds();
    t.stack_lo.set(lo);
    t.stack_hi.set(hi);
    let n = THREAD_SEQ.fetch_add(1, Relaxed);
    t.rng.set(sampler::mix_seed(
        seed().wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
    ));
    t.set_slot(slot);
    t.set_free_left(counters::FREE_FLUSH);
    t.life.set(Life::Active);
    counters::resync(slot);
    rearm(t);
}

/// Draws this thread's next countdown from the current global rate.
pub(crate) fn rearm(t: &ThreadState) {
    let rate = sampler::rate();
    let mut rng = t.rng.get();
    let gap = sampler::next_gap(&mut rng, rate);
    t.rng.set(rng);
    t.drawn_rate.set(rate);
    t.set_countdown(gap);
}

/// This thread's counter slot, initialising the thread first if it has not allocated yet (so a
/// scope or tag entered before the first allocation still counts it). `None` inside the
/// profiler, once the thread's slot was handed back at exit, and while no allocation went through
/// `HeapSight` yet (then heapsight is not the global allocator, or the process has not allocated
/// at all: the Rust runtime allocates before `main`, so a program's own code does not see that).
pub(crate) fn current_slot(t: &ThreadState) -> Option<&'static Slot> {
    if t.in_profiler.get() {
        return None;
    }
    if t.life.get() == Life::New {
        // Initialising here would otherwise set heapsight up (fork handlers, warm-up) in a
        // program whose allocations never reach it; once active, the process set-up is done.
        if !is_active() {
            return None;
        }
        let g = InProfiler::enter(t)?;
        init_thread(t, &g);
    }
    let s = t.slot.get();
    // SAFETY: a non-null slot outside the guard is this thread's owned slot; slots are never
    // freed.
    (!s.is_null()).then(|| unsafe { &*s })
}

static SEED: AtomicU64 = AtomicU64::new(0);
static THREAD_SEQ: AtomicU64 = AtomicU64::new(0);

fn seed() -> u64 {
    let s = SEED.load(Relaxed);
    if s != 0 {
        return s;
    }
    let fresh = sampler::mix_seed(
        clock::now_ns() ^ ((std::process::id() as u64) << 32) ^ (&SEED as *const _ as u64),
    );
    match SEED.compare_exchange(0, fresh, Relaxed, Relaxed) {
        Ok(_) => fresh,
        Err(s) => s,
    }
}

/// Seeds the generators: this thread's now, every thread initialised later from the sequence.
pub(crate) fn reseed(seed: u64) {
    SEED.store(sampler::mix_seed(seed), Relaxed);
    THREAD_SEQ.store(0, Relaxed);
    THREAD.with(|t| {
        t.rng.set(sampler::mix_seed(seed));
        if t.life.get() == Life::Active {
            rearm(t)
        }
    })
}

/// Re-arms the calling thread at once after a rate change (others pick it up at their next
/// countdown expiry).
pub(crate) fn rearm_current() {
    THREAD.with(|t| {
        if t.life.get() == Life::Active {
            rearm(t)
        }
    })
}

/// Set when the process set-up runs, at the first thread initialised through `HeapSight`.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Whether heapsight is the global allocator: true once an allocation went through `HeapSight`.
pub(crate) fn is_active() -> bool {
    ACTIVE.load(Relaxed)
}

pub(crate) fn mark_active() {
    ACTIVE.store(true, Relaxed);
}
