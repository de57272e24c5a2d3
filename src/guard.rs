//! The per-thread state of the hook, and the one reentrancy guard: [`InProfiler`].
//!
//! Every allocation reads this thread's [`ThreadState`]. It is a `const`-initialised
//! `thread_local!` without `Drop`, so access compiles to a plain TLS-relative load: no lazy
//! initialisation, no destructor registration, and it stays readable while the thread's other
//! thread-locals are being destroyed (frees keep arriving then).
//!
//! # Why one guard, and why it zeroes the fast-path fields
//!
//! The profiler's slow path allocates (site tables grow, `profile()` builds its snapshot,
//! symbolization fills caches). Those allocations come back into `GlobalAlloc::alloc` on the same
//! thread. If they were profiled they would recurse (a sample inside a sample), take the site lock
//! twice, and be counted as the program's memory. While [`InProfiler`] is held:
//!
//! * `countdown` and `free_left` are 0 and `slot` null, so the *unchanged* fast path fails its
//!   countdown check on alloc (`countdown > size`) and on free (`free_left > size`) and drops
//!   into the cold path, which sees `in_profiler` and forwards the call with no counting, no
//!   sampling and no lock. The fast path pays nothing for the guard. (A `measure()` scope holds
//!   the allocation fast path off the same way, so that the slow path can track its exact peak.)
//! * The bytes are added to the profiler's own tally instead ([`crate::counters::profiler_bytes`]).
//!
//! The guard is entered *before* any lock is taken, so no lock of ours is ever awaited by a
//! thread that could re-enter profiling while holding it.
use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{compiler_fence, Ordering::SeqCst};

use crate::counters::Slot;

/// Where a thread is in its life, as the hook sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Life {
    /// Has not been through the slow path yet: no counter slot.
    New,
    /// Owns a counter slot; the fast path is armed (outside the guard and `measure()` scopes).
    Active,
    /// Its slot was handed back at thread exit; later (de)allocations use the shared fallback.
    Exited,
}

pub(crate) struct ThreadState {
    /// Bytes left before this thread's next sample. The fast path allocates without a second
    /// look while `countdown > size`; 0 forces the cold path (new thread, guard held, exited).
    pub countdown: Cell<u64>,
    /// This thread's counter slot, written only by this thread.
    pub slot: Cell<*const Slot>,
    /// Bytes this thread may still free before its next flush (see `counters::flush`): the free
    /// path's countdown. 0 whenever `slot` is null (new thread, guard held, exited), so that the
    /// free fast path's one countdown test also sends threads without a slot to the cold path.
    pub free_left: Cell<u64>,
    /// The sample rate the current `countdown` was drawn with: the weight of the sample it
    /// triggers depends on this rate, not on the rate in force when it fires.
    pub drawn_rate: Cell<u64>,
    /// xorshift64* state for the exponential draws.
    pub rng: Cell<u64>,
    pub life: Cell<Life>,
    pub in_profiler: Cell<bool>,
    /// Open `measure()` scopes on this thread. While there is one, every allocation takes the
    /// slow path (which tracks the scope's exact peak) and the sampling countdown is parked in
    /// `scope_countdown`.
    pub scope_depth: Cell<u32>,
    scope_countdown: Cell<u64>,
    /// The last address this thread's frees found aligned like a sample but not sampled, and
    /// the sample epoch it was checked at (see `alloc::dealloc_maybe_sampled`).
    not_sampled_addr: Cell<usize>,
    not_sampled_epoch: Cell<u64>,
    saved_countdown: Cell<u64>,
    saved_free_left: Cell<u64>,
    saved_slot: Cell<*const Slot>,
    /// Interned tag id of the innermost live `tag()` guard (0 = untagged).
    pub tag: Cell<u32>,
    /// This thread's stack `[lo, hi)`, for the bounds-checked frame-pointer walk (0 = unknown).
    pub stack_lo: Cell<usize>,
    pub stack_hi: Cell<usize>,
}

impl ThreadState {
    const fn new() -> Self {
        ThreadState {
            countdown: Cell::new(0),
            slot: Cell::new(ptr::null()),
            free_left: Cell::new(0),
            drawn_rate: Cell::new(0),
            rng: Cell::new(0),
            life: Cell::new(Life::New),
            in_profiler: Cell::new(false),
            scope_depth: Cell::new(0),
            scope_countdown: Cell::new(0),
            not_sampled_addr: Cell::new(0),
            not_sampled_epoch: Cell::new(0),
            saved_countdown: Cell::new(0),
            saved_free_left: Cell::new(0),
            saved_slot: Cell::new(ptr::null()),
            tag: Cell::new(0),
            stack_lo: Cell::new(0),
            stack_hi: Cell::new(0),
        }
    }

    /// The slot this thread owns, whether or not the fast path is armed (null if none).
    pub fn owned_slot(&self) -> *const Slot {
        if self.in_profiler.get() {
            self.saved_slot.get()
        } else {
            self.slot.get()
        }
    }

    /// The sampling countdown, wherever it is kept: in `countdown` while the fast path is armed,
    /// parked while a `measure()` scope or the guard holds the fast path off.
    pub fn sampling_countdown(&self) -> u64 {
        if self.scope_depth.get() > 0 {
            self.scope_countdown.get()
        } else if self.in_profiler.get() {
            self.saved_countdown.get()
        } else {
            self.countdown.get()
        }
    }

    /// Sets the sampling countdown (see [`Self::sampling_countdown`]): into the fast path's
    /// field only when nothing holds it off, so the guard's exit or a scope's end installs it.
    pub fn set_countdown(&self, c: u64) {
        if self.scope_depth.get() > 0 {
            self.scope_countdown.set(c)
        } else if self.in_profiler.get() {
            self.saved_countdown.set(c)
        } else {
            self.countdown.set(c)
        }
    }

    /// Re-arms the free path's flush countdown; under the guard it is parked until the guard
    /// drops.
    pub fn set_free_left(&self, c: u64) {
        if self.in_profiler.get() {
            self.saved_free_left.set(c)
        } else {
            self.free_left.set(c)
        }
    }

    /// Installs (or clears) the slot; under the guard it is parked until the guard drops.
    /// Clearing it also zeroes both countdowns, so the fast paths stop counting into it at once.
    pub fn set_slot(&self, s: *const Slot) {
        if s.is_null() {
            self.set_countdown(0);
            self.scope_countdown.set(0);
            self.set_free_left(0);
        }
        if self.in_profiler.get() {
            self.saved_slot.set(s)
        } else {
            self.slot.set(s)
        }
    }

    /// Whether this thread's last free of `ptr` found it not sampled, with no sample taken since
    /// (`epoch`: the sample epoch read before the caller's check; see `filter::sample_epoch`).
    #[inline(always)]
    pub fn known_not_sampled(&self, ptr: usize, epoch: u64) -> bool {
        self.not_sampled_addr.get() == ptr && self.not_sampled_epoch.get() == epoch
    }

    /// Remembers that `ptr` was found not sampled at `epoch`.
    #[inline(always)]
    pub fn remember_not_sampled(&self, ptr: usize, epoch: u64) {
        self.not_sampled_addr.set(ptr);
        self.not_sampled_epoch.set(epoch);
    }

    /// Opens a `measure()` scope: the first one parks the sampling countdown and zeroes the fast
    /// path's, so that every allocation until the last scope ends goes through the slow path.
    /// Call outside the guard.
    pub fn enter_scope(&self) {
        debug_assert!(!self.in_profiler.get());
        let d = self.scope_depth.get();
        if d == 0 {
            self.scope_countdown.set(self.countdown.replace(0));
        }
        self.scope_depth.set(d + 1);
    }

    /// Closes a scope; the last one re-arms the fast path with the parked countdown (0 if the
    /// thread lost its slot meanwhile). Call outside the guard.
    pub fn leave_scope(&self) {
        let d = self.scope_depth.get().saturating_sub(1);
        self.scope_depth.set(d);
        if d == 0 {
            self.countdown.set(self.scope_countdown.replace(0));
        }
    }
}

thread_local! {
    pub(crate) static THREAD: ThreadState = const { ThreadState::new() };
}

/// Held while this thread runs profiler code; see the module docs.
pub(crate) struct InProfiler<'a> {
    t: &'a ThreadState,
}

impl<'a> InProfiler<'a> {
    /// Enters the profiler, or returns `None` if this thread is already inside it.
    pub fn enter(t: &'a ThreadState) -> Option<Self> {
        if t.in_profiler.get() {
            return None;
        }
        // The flag first, the slot last (and the reverse on drop): a signal handler that
        // allocates on this thread in between must never find an armed countdown with no slot
        // (the fast path would count into a null slot). With the flag set early, it finds
        // either the fast path still armed with its slot, or the slow path inside the guard.
        t.in_profiler.set(true);
        compiler_fence(SeqCst);
        t.saved_countdown.set(t.countdown.replace(0));
        t.saved_free_left.set(t.free_left.replace(0));
        compiler_fence(SeqCst);
        t.saved_slot.set(t.slot.replace(ptr::null()));
        Some(InProfiler { t })
    }
}

impl Drop for InProfiler<'_> {
    fn drop(&mut self) {
        // The reverse of `enter` (see there): the slot before the countdowns, the flag last.
        self.t.slot.set(self.t.saved_slot.get());
        compiler_fence(SeqCst);
        self.t.free_left.set(self.t.saved_free_left.get());
        self.t.countdown.set(self.t.saved_countdown.get());
        compiler_fence(SeqCst);
        self.t.in_profiler.set(false);
    }
}

/// Runs `f` inside the profiler on this thread: everything it allocates is the profiler's own,
/// forwarded to the inner allocator uncounted and unsampled. Used by every public entry point that
/// allocates (`profile()`, encoders, symbolization) and by `Drop` of the values they return.
pub(crate) fn profiler_scope<R>(f: impl FnOnce() -> R) -> R {
    THREAD.with(|t| {
        let _g = InProfiler::enter(t);
        f()
    })
}

/// Whether this thread is inside the profiler right now (for tests and debug assertions).
pub(crate) fn in_profiler() -> bool {
    THREAD.with(|t| t.in_profiler.get())
}
