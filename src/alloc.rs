//! `HeapSight<A>`: the `GlobalAlloc` wrapper. This file runs on every allocation and free.
//!
//! The fast path counts *before* it calls the inner allocator, so that after the call there is
//! nothing left to do but check for null:
//!
//! * **alloc**: subtract `size` from the sampling countdown; still positive? count into this
//!   thread's slot, remember `size` (to take the count back if the call fails), call `A`.
//!   Otherwise the `#[cold]` [`alloc_slow`]: a new thread, the profiler guard, a `measure()`
//!   scope, an exited thread, a flush, or a sample.
//! * **free**: an address that cannot be a sample's (`filter::maybe_sampled`: one test against
//!   a word), and `size` subtracted from the free countdown (`free_left`, 0 for threads without
//!   a slot) still positive? count, tail-call `A`. Otherwise [`dealloc_maybe_sampled`] (an
//!   aligned address: the thread's memo or one exact probe, then on as above) or
//!   [`dealloc_slow`]: a flush (every [`counters::FREE_FLUSH`] bytes, which also catches every
//!   block that large), a thread without a slot, or a sample.
//! * **realloc**: both at once, the free of the old block and the allocation of the new.
//!
//! No lock, no shared read-modify-write, no allocation, no hashing. Blocks carry no header: the
//! inner allocator sees the caller's layout, except that a sampled small block is asked at a
//! raised alignment (see `filter`), which it then sees for that block's whole life.
use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::alloc::System;

use crate::counters::{self, Slot};
use crate::guard::{InProfiler, Life, ThreadState, THREAD};
use crate::{clock, filter, setup, sites, stack, thread};

/// A `#[global_allocator]` that profiles the heap of the program it serves.
///
/// It forwards `alloc`, `dealloc`, `realloc` and `alloc_zeroed` to the inner allocator `A`,
/// counts every call exactly, and samples allocations for the heap profile. A sampled block
/// smaller than 64 KiB is asked of `A` at a raised alignment (4 KiB at the default rate), so that
/// its free can be told by its address; its free and realloc give `A` that same layout, and a
/// realloc that takes such a block into or out of sampling moves it (allocate, copy, free).
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

// SAFETY: every method forwards to `A` with the caller's arguments, or (for a sampled block) with
// the caller's size at a larger power-of-two alignment that `A` then sees for that block's whole
// life, and returns what `A` returned (or, for a moved realloc, a block `A` allocated with the
// contents copied), so `A`'s guarantees hold for our callers. The bookkeeping around the calls
// neither touches the blocks nor panics (no unwinding across the allocator).
unsafe impl<A: GlobalAlloc> GlobalAlloc for HeapSight<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: `allocate` calls the closure once, with `layout` or `layout` with a larger
        // power-of-two alignment (same size), which `A` accepts as it accepts `layout`.
        allocate(layout, |l| unsafe { self.inner.alloc(l) }, &self.inner)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        allocate(
            layout,
            |l| unsafe { self.inner.alloc_zeroed(l) },
            &self.inner,
        )
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        debug_assert!(!ptr.is_null(), "dealloc of a null pointer");
        // Count (and retire a sample) before the block can be handed out again by `A`: another
        // thread could otherwise be given and sample this address before we remove ours.
        // Both branches end in a tail call, so the fast path needs no stack frame of its own.
        // The filter first: a block that may be sampled leaves before the countdown is touched,
        // and the filter's load can feed a compare on memory.
        if filter::maybe_sampled(ptr) {
            // SAFETY: the caller guarantees `ptr` was allocated by this allocator with `layout`,
            // hence by `A` with `layout`.
            unsafe { dealloc_maybe_sampled(&self.inner, ptr, layout) }
        } else if count_free(layout.size()) {
            // SAFETY: as above.
            unsafe { self.inner.dealloc(ptr, layout) }
        } else {
            // SAFETY: as above.
            unsafe { dealloc_slow(&self.inner, ptr, layout, layout.size()) }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        debug_assert!(!ptr.is_null(), "realloc of a null pointer");
        debug_assert!(
            Layout::from_size_align(new_size, layout.align()).is_ok(),
            "realloc to a size that overflows when rounded to the alignment"
        );
        // One free of the old block and one allocation of the new one, as Go's growslice does.
        if count_realloc(ptr, layout.size(), new_size) {
            // SAFETY: forwarded unchanged; the caller's guarantees about `ptr`, `layout` and
            // `new_size` are the ones `A::realloc` requires.
            let new = unsafe { self.inner.realloc(ptr, layout, new_size) };
            if new.is_null() {
                uncount_failed_realloc(layout.size(), new_size);
            }
            new
        } else {
            // SAFETY: the caller's guarantees, passed on unchanged.
            unsafe { realloc_slow(&self.inner, ptr, layout, new_size) }
        }
    }
}

/// `alloc` and `alloc_zeroed`: counts before calling the inner allocator (`call`), and takes the
/// count back if it fails; the rare cases go to [`alloc_slow`] (`inner` frees a block there).
#[inline(always)]
fn allocate<A: GlobalAlloc>(
    layout: Layout,
    call: impl Fn(Layout) -> *mut u8,
    inner: &A,
) -> *mut u8 {
    debug_assert!(layout.align().is_power_of_two());
    if count_alloc(layout.size()) {
        let p = call(layout);
        if p.is_null() {
            // The size is this call's own (`layout`), not a thread-local a nested allocation
            // could overwrite during `call` (an inner allocator that allocates, a signal handler).
            uncount_failed_alloc(layout.size());
        }
        p
    } else {
        alloc_slow(layout, call, inner)
    }
}

/// The allocation fast path: counts an allocation of `size` and returns `true`, or returns
/// `false` (having changed nothing) when it needs [`alloc_slow`].
#[inline(always)]
fn count_alloc(size: usize) -> bool {
    THREAD.with(|t| {
        // Subtract first, test the sign after: `countdown > size` is "the difference is positive
        // as a signed number" (countdowns and sizes are below 2^63), so this compiles to one
        // `sub` on the thread-local and one branch. The slow path adds `size` back. Until it
        // has, the countdown is negative: a signal handler that allocates on this thread in that
        // window (inside the guard or before thread init, with no slot) subtracts its own size
        // from a negative number and takes the slow path too. (An unsigned test would see the
        // wrapped value as a huge countdown and count into a missing slot.)
        let c = t.countdown.get().wrapping_sub(size as u64);
        t.countdown.set(c);
        if c as i64 > 0 {
            // SAFETY: `countdown > 0` only while this thread owns a slot that is installed in
            // `t.slot` (thread init sets the slot before the countdown; the guard, scopes and
            // thread exit zero the countdown whenever the slot is not installed), and slots are
            // never freed.
            unsafe { (*t.slot.get()).add_alloc(size) };
            true
        } else {
            false
        }
    })
}

/// The inner allocator returned null after [`count_alloc`] counted `size`: a failed allocation
/// is not an allocation, so take it back (count and countdown). Whatever allocations ran on this
/// thread during the inner call (each counted and undone with its own size) left the slot where
/// it was, so the counts come back exact.
#[cold]
#[inline(never)]
fn uncount_failed_alloc(size: usize) {
    THREAD.with(|t| {
        t.countdown.set(t.countdown.get().wrapping_add(size as u64));
        let slot = t.slot.get();
        if !slot.is_null() {
            // SAFETY: the fast path just counted into this thread's installed slot (the inner
            // call returns with the guard as it found it, so the slot is installed again);
            // slots are never freed.
            unsafe { (*slot).sub_alloc(size) };
        }
    })
}

/// The free fast path for a block the filter cleared: counts the free and returns `true`, or
/// returns `false` (having subtracted `size` from `free_left`) when it needs [`dealloc_slow`].
#[inline(always)]
fn count_free(size: usize) -> bool {
    THREAD.with(|t| {
        // As on alloc: subtract first, test the sign after. `free_left` is 0 without a slot (new thread,
        // guard, exiting), so this one test also catches those; the slow path adds `size` back.
        let c = t.free_left.get().wrapping_sub(size as u64);
        t.free_left.set(c);
        if c as i64 > 0 {
            // SAFETY: `free_left > 0` only while this thread's slot is installed in `t.slot`
            // (`set_slot` and the guard zero it whenever the slot is not), and slots are never
            // freed.
            unsafe { (*t.slot.get()).add_free(size) };
            true
        } else {
            // `dealloc_slow` adds `size` back (not here: the compiler would then keep the old
            // value in a register instead of subtracting in memory).
            false
        }
    })
}

/// Both halves of a `realloc` on the fast path, or `false` (nothing changed) when either half
/// needs the slow path or the old block may be sampled.
#[inline(always)]
fn count_realloc(ptr: *mut u8, old_size: usize, new_size: usize) -> bool {
    // A block of `filter::LARGE` bytes or more fails the free countdown test (see there).
    !filter::maybe_sampled(ptr) && count_realloc_unsampled(old_size, new_size)
}

/// [`count_realloc`] for an old block known not to be sampled.
#[inline(always)]
fn count_realloc_unsampled(old_size: usize, new_size: usize) -> bool {
    THREAD.with(|t| {
        // Signed tests, as in `count_alloc`: a countdown another call on this thread left
        // negative (a signal handler inside its window) sends this one to the slow path too.
        let f = t.free_left.get().wrapping_sub(old_size as u64);
        let c = t.countdown.get().wrapping_sub(new_size as u64);
        if (f as i64 > 0) & (c as i64 > 0) {
            t.free_left.set(f);
            t.countdown.set(c);
            // SAFETY: both countdowns are nonzero only while the slot is installed (as in
            // `count_alloc` and `count_free`).
            let slot = unsafe { &*t.slot.get() };
            slot.add_free(old_size);
            slot.add_alloc(new_size);
            true
        } else {
            false
        }
    })
}

/// The inner `realloc` failed after [`count_realloc`] counted: the old block is still the
/// caller's and no new one exists, so take both halves back (sizes from the call itself, as in
/// [`uncount_failed_alloc`]).
#[cold]
#[inline(never)]
fn uncount_failed_realloc(old_size: usize, new_size: usize) {
    THREAD.with(|t| {
        t.countdown
            .set(t.countdown.get().wrapping_add(new_size as u64));
        t.free_left
            .set(t.free_left.get().wrapping_add(old_size as u64));
        let slot = t.slot.get();
        if !slot.is_null() {
            // SAFETY: as in `uncount_failed_alloc`.
            let slot = unsafe { &*slot };
            slot.sub_alloc(new_size);
            slot.sub_free(old_size);
        }
    })
}

/// The rare allocation: undoes the fast path's subtraction, plans the allocation (a sample is
/// asked of `A` with its alignment raised; see `filter`), calls the inner allocator (`call`), and
/// counts (and maybe samples) the block it returned.
#[cold]
#[inline(never)]
fn alloc_slow<A: GlobalAlloc>(
    layout: Layout,
    call: impl Fn(Layout) -> *mut u8,
    inner: &A,
) -> *mut u8 {
    // Which allocator is inside, for `memory()`'s allocator row: one load once recorded.
    crate::memory::note_inner_type(core::any::type_name::<A>);
    let size = layout.size();
    let mut plan = THREAD.with(|t| {
        // Undo the fast path's subtraction: the countdown is back to what it was before this
        // call (0 under the guard, in a scope, before thread init and after exit), so no
        // allocation sees it wrapped.
        t.countdown.set(t.countdown.get().wrapping_add(size as u64));
        plan_alloc(t, layout)
    });
    let mut p = call(plan.inner_layout(layout));
    if p.is_null() && plan.inner_layout(layout) != layout {
        // `A` refused the raised alignment: allocate as asked and let this sample go (the next
        // countdown is drawn already, so no later allocation is biased by it), counted as lost.
        sites::LOST_SAMPLES.fetch_add(1, Relaxed);
        plan = plan.unsampled();
        p = call(layout);
    }
    if p.is_null() {
        THREAD.with(|t| plan.undo(t));
        return p;
    }
    if !THREAD.with(|t| finish_alloc(t, plan, p, size)) {
        // SAFETY: `p` was allocated by `call` with `plan.inner_layout(layout)` and is not yet
        // the caller's; `call` allocates from `inner`.
        p = unsafe { unrecorded(p, plan.inner_layout(layout), layout, 0, &call, inner) };
        if p.is_null() {
            THREAD.with(|t| plan.uncount(t, size));
        }
    }
    p
}

/// A planned sample that could not be recorded (`finish_alloc` returned false) must not stay at
/// an alignment the free side cannot know: the block is moved to one allocated as the caller
/// asked (`keep` bytes copied), and the raised one freed with the layout it has. Null if that
/// allocation fails (the raised block is freed all the same).
///
/// # Safety
/// `p` was allocated by `inner` (through `call`) with `raised`, holds `keep` initialised bytes,
/// and is not used after; `asked` has the same size.
#[cold]
unsafe fn unrecorded<A: GlobalAlloc>(
    p: *mut u8,
    raised: Layout,
    asked: Layout,
    keep: usize,
    call: &impl Fn(Layout) -> *mut u8,
    inner: &A,
) -> *mut u8 {
    if raised == asked {
        return p;
    }
    let q = call(asked);
    // SAFETY: `p` and `q` (if not null) are distinct live blocks of at least `keep` bytes; `p` is
    // freed once, with the layout `inner` allocated it with.
    unsafe {
        if !q.is_null() {
            core::ptr::copy_nonoverlapping(p, q, keep);
        }
        inner.dealloc(p, raised);
    }
    q
}

/// What the slow path does with an allocation, decided before the inner call.
#[derive(Clone, Copy)]
enum Plan {
    /// The profiler's own memory (inside the guard): forwarded, counted as the profiler's.
    Profiler,
    /// Counted in the shared fallback: a thread without a slot (exiting), or the program's
    /// block reallocated inside the guard (a sample's realloc there).
    Orphan,
    /// Counted in this thread's slot. `took`: bytes taken off the sampling countdown at the
    /// plan (0 when the countdown expired and a fresh one was drawn); `sample`: the rate the
    /// expired countdown was drawn with and the alignment asked of the inner allocator.
    Count {
        took: u64,
        expired: bool,
        sample: Option<(u64, usize)>,
    },
}

impl Plan {
    fn inner_layout(self, layout: Layout) -> Layout {
        match self {
            // `plan_alloc` checked that the size fits at this alignment (the fallback is never
            // taken; it only avoids a panic path in the allocator).
            Plan::Count {
                sample: Some((_, align)),
                ..
            } => filter::inner_layout(layout, align).unwrap_or(layout),
            _ => layout,
        }
    }

    fn unsampled(self) -> Plan {
        match self {
            Plan::Count { took, expired, .. } => Plan::Count {
                took,
                expired,
                sample: None,
            },
            p => p,
        }
    }

    /// The inner call failed: give back what the plan took off the countdown.
    fn undo(self, t: &ThreadState) {
        if let Plan::Count { took, .. } = self {
            t.set_countdown(t.sampling_countdown().wrapping_add(took));
        }
    }

    /// Takes back what [`finish_alloc`] counted for a block that is not handed out after all.
    fn uncount(self, t: &ThreadState, size: usize) {
        match self {
            Plan::Profiler => counters::profiler_free(size),
            Plan::Orphan => counters::orphan_uncount(size),
            Plan::Count { .. } => {
                let slot = t.slot.get();
                if slot.is_null() {
                    counters::orphan_uncount(size);
                } else {
                    // SAFETY: this thread's installed slot; slots are never freed.
                    unsafe { (*slot).sub_alloc(size) }
                }
            }
        }
    }
}

/// Decides, before the inner call, how an allocation is counted and whether it is a sample. A
/// sample is decided here once: the countdown is consumed or redrawn now, so an allocation
/// nested in the inner call (a signal handler, an inner allocator that allocates) neither sees
/// this one's expired countdown nor re-arms it under it, and [`finish_alloc`] records every
/// sample planned here.
fn plan_alloc(t: &ThreadState, layout: Layout) -> Plan {
    if t.in_profiler.get() {
        return Plan::Profiler;
    }
    if t.life.get() == Life::New {
        init_this_thread(t);
    }
    if t.life.get() != Life::Active {
        return Plan::Orphan;
    }
    let size = layout.size() as u64;
    let c = t.sampling_countdown();
    if c > size {
        // In a scope, or just after thread init (a fresh countdown does not cover this
        // allocation yet).
        t.set_countdown(c - size);
        return Plan::Count {
            took: size,
            expired: false,
            sample: None,
        };
    }
    // The countdown falls inside this allocation: a fresh one now.
    let rate = t.drawn_rate.get();
    thread::rearm(t);
    let mut plan = Plan::Count {
        took: 0,
        expired: true,
        sample: None,
    };
    if rate == 0 {
        return plan;
    }
    // A sample: its address must pass the free check (see `filter`), so it is asked at the
    // sample alignment (the site table widens the check to it when it records the sample).
    // The alignment recorded for the block is the raised one, or 1 when it is not raised (a rate
    // below the smallest sample alignment, a large block): `filter::inner_layout` then gives the
    // caller's layout back, so every path reads "raised or not" from the one recorded value.
    let align = filter::sample_layout_align(rate, layout.size(), layout.align());
    let align = if align > layout.align() { align } else { 1 };
    if filter::inner_layout(layout, align).is_some() {
        // (Too large to align further, within a page of `isize::MAX`: no sample this time.)
        plan = plan_sample(plan, rate, align);
    }
    plan
}

fn plan_sample(plan: Plan, rate: u64, align: usize) -> Plan {
    match plan {
        Plan::Count { took, expired, .. } => Plan::Count {
            took,
            expired,
            sample: Some((rate, align)),
        },
        p => p,
    }
}

/// Counts the block `A` returned as planned, and records the sample if one was planned. Returns
/// false only for a planned sample that was not recorded (then the caller moves the block off
/// its raised alignment; see [`unrecorded`]).
fn finish_alloc(t: &ThreadState, plan: Plan, ptr: *mut u8, size: usize) -> bool {
    let (expired, sample) = match plan {
        Plan::Profiler => {
            counters::profiler_alloc(size);
            return true;
        }
        Plan::Orphan => {
            counters::orphan_alloc(size);
            return true;
        }
        Plan::Count {
            expired, sample, ..
        } => (expired, sample),
    };
    let slot = t.slot.get();
    if slot.is_null() {
        // Planned while active; nothing between the plan and here hands the slot back (the
        // inner call returns with the guard as it found it). Counted all the same.
        counters::orphan_alloc(size);
        return sample.is_none();
    }
    // SAFETY: this thread's installed slot; slots are never freed.
    let slot: &Slot = unsafe { &*slot };
    slot.add_alloc(size);
    if t.scope_depth.get() > 0 {
        counters::note_scope_alloc(slot);
    }
    if expired {
        // A flush with every fresh countdown (constant time whatever the thread count: one
        // shared `fetch_add`; see `counters`).
        counters::resync(slot);
    }
    match sample {
        // Sampled with the weight of the rate its countdown was drawn with.
        Some((rate, align)) => take_sample(t, ptr, size as u64, rate, align),
        None => true,
    }
}

/// The layout `A` allocated a live sample at `ptr` with: the caller's layout raised to the
/// alignment the free side's exact set recorded ([`filter::inner_layout`]), or `None` if `ptr`
/// is not a live sample.
/// The one answer every free and realloc path uses.
fn sampled_layout(ptr: *mut u8, layout: Layout) -> Option<Layout> {
    if !filter::maybe_sampled_sized(ptr, layout.size()) {
        return None;
    }
    let align = filter::sampled_align(ptr)?;
    // The recorded alignment is the one `A` was asked for this very layout, so this is the
    // layout it was asked with.
    filter::inner_layout(layout, align)
}

/// A free whose address passed the sample check (see `filter`): the exact, lock-free look-up
/// decides, and a block that is not a sample (an aligned block that merely looks like one) goes
/// on as on the fast path.
///
/// # Safety
/// As `GlobalAlloc::dealloc`.
#[cold]
#[inline(never)]
unsafe fn dealloc_maybe_sampled<A: GlobalAlloc>(inner: &A, ptr: *mut u8, layout: Layout) {
    // A program often frees the same address over and over (a buffer allocated and freed in a
    // loop, which the allocator hands back each time); when it is aligned like a sample, the
    // thread's memo of the last such address saves the probe.
    let epoch = filter::sample_epoch();
    let known = THREAD.with(|t| t.known_not_sampled(ptr as usize, epoch));
    if !known {
        if let Some(a) = filter::sampled_align(ptr) {
            // SAFETY: the caller's guarantees; `a` is the block's inner alignment.
            return unsafe { dealloc_sampled(inner, ptr, layout, a) };
        }
    }
    if count_free(layout.size()) {
        if !known {
            THREAD.with(|t| t.remember_not_sampled(ptr as usize, epoch));
        }
        // SAFETY: as above.
        unsafe { inner.dealloc(ptr, layout) }
    } else {
        // SAFETY: as above; known not to be a sample.
        unsafe { dealloc_unsampled(inner, ptr, layout, layout.size()) }
    }
}

/// The rare free: new thread, guard, exiting thread, flush due, or a block that may be sampled.
/// `undo` is what the fast path subtracted from `free_left` (see `count_free`), added back first.
///
/// # Safety
/// As `GlobalAlloc::dealloc`: `ptr` was allocated by `inner` with `layout` and is not used
/// after this call.
#[cold]
#[inline(never)]
unsafe fn dealloc_slow<A: GlobalAlloc>(inner: &A, ptr: *mut u8, layout: Layout, undo: usize) {
    match sampled_layout(ptr, layout) {
        Some(l) => {
            THREAD.with(|t| t.free_left.set(t.free_left.get().wrapping_add(undo as u64)));
            // SAFETY: the caller's guarantees; `l` is the block's inner layout.
            unsafe { dealloc_sampled(inner, ptr, layout, l.align()) }
        }
        // SAFETY: the caller's guarantees.
        None => unsafe { dealloc_unsampled(inner, ptr, layout, undo) },
    }
}

/// [`dealloc_slow`] for a block known not to be a live sample.
///
/// # Safety
/// As [`dealloc_slow`].
unsafe fn dealloc_unsampled<A: GlobalAlloc>(inner: &A, ptr: *mut u8, layout: Layout, undo: usize) {
    THREAD.with(|t| {
        t.free_left.set(t.free_left.get().wrapping_add(undo as u64));
        count_free_slow(t, layout.size(), false)
    });
    // SAFETY: the caller's guarantees, passed on unchanged.
    unsafe { inner.dealloc(ptr, layout) }
}

/// The free of a live sample, wherever it happens (inside the guard too: profiler code may drop
/// a value the program allocated). `A` gets the caller's size at `inner_align`, the alignment it
/// allocated the block with; the sample is retired first. A thread that holds one of heapsight's
/// locks (a signal handler interrupted it, or `with_site_lock_held`) cannot retire it now: the
/// block is then kept (never given back to `A`, so its address cannot be handed out again while
/// the exact set still holds it), counted as the profiler's, and its sample retired later
/// ([`retire_later`]).
///
/// # Safety
/// As `GlobalAlloc::dealloc`; `inner_align` is what [`filter::sampled_align`] returned for `ptr`.
#[cold]
#[inline(never)]
unsafe fn dealloc_sampled<A: GlobalAlloc>(
    inner: &A,
    ptr: *mut u8,
    layout: Layout,
    inner_align: usize,
) {
    let size = layout.size();
    let retired = THREAD.with(|t| {
        let retired = retire(t, ptr).is_some();
        count_free_slow(t, size, true);
        if !retired {
            counters::profiler_alloc(size);
        }
        retired
    });
    if retired {
        let inner_layout = filter::inner_layout(layout, inner_align).unwrap_or(layout);
        // SAFETY: the caller's block, with the layout `A` allocated it with (the caller's raised
        // to the alignment recorded for it, which was checked to fit when it was planned).
        unsafe { inner.dealloc(ptr, inner_layout) }
    }
}

/// Takes the live sample at `ptr` out of the site table (any thread, inside the guard or not),
/// or, if this thread holds one of heapsight's locks, queues it for later and returns `None`.
fn retire(t: &ThreadState, ptr: *mut u8) -> Option<Option<sites::Live>> {
    if crate::sync::held_here() {
        retire_later(ptr as usize);
        return None;
    }
    // Inside the guard already (profiler code dropping a program value) or entering it now.
    let _g = InProfiler::enter(t);
    let live = sites::remove_sample(ptr);
    retire_queued();
    Some(live)
}

/// Samples whose blocks were freed while their thread held a heapsight lock (see
/// [`dealloc_sampled`]): retired by the next thread that retires or takes a sample. Their blocks
/// are kept, so their addresses stay out of the allocator until then. Should it ever be full,
/// a sample stays live in the profile (an overstatement, never a wrong layout).
static UNRETIRED: [AtomicUsize; 64] = [const { AtomicUsize::new(0) }; 64];
static UNRETIRED_N: AtomicUsize = AtomicUsize::new(0);

fn retire_later(ptr: usize) {
    for s in UNRETIRED.iter() {
        if s.compare_exchange(0, ptr, Relaxed, Relaxed).is_ok() {
            UNRETIRED_N.fetch_add(1, Relaxed);
            return;
        }
    }
}

/// Retires the queued samples. Inside the guard, holding no lock.
fn retire_queued() {
    if UNRETIRED_N.load(Relaxed) == 0 {
        return;
    }
    for s in UNRETIRED.iter() {
        let p = s.swap(0, Relaxed);
        if p != 0 {
            UNRETIRED_N.fetch_sub(1, Relaxed);
            // Its block stays kept as the profiler's (counted at the caller's size when it was
            // kept): the rounding its raised layout asked for moves from the sample to the
            // profiler, so the inner allocator's bytes stay accounted for exactly.
            if let Some(live) = sites::remove_sample(p as *mut u8) {
                counters::profiler_alloc(live.padding() as usize);
            }
        }
    }
}

/// `realloc` off the fast path: takes the old block's sample out (if it is one) before `A` may
/// free the block (see `dealloc`), puts it back if `A` fails, and counts both halves through the
/// slow paths. When the old block or the new one has a sample alignment that is not the
/// caller's, the block is moved (allocate, copy, free): `A` must see one layout per block.
///
/// # Safety
/// As `GlobalAlloc::realloc`: `ptr` was allocated by `inner` with `layout`, and `new_size`
/// rounded up to `layout.align()` does not overflow `isize`.
#[cold]
#[inline(never)]
unsafe fn realloc_slow<A: GlobalAlloc>(
    inner: &A,
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
) -> *mut u8 {
    let sampled = sampled_layout(ptr, layout);
    if sampled.is_none() && count_realloc_unsampled(layout.size(), new_size) {
        // An aligned block that only looked like a sample: the fast path after all.
        // SAFETY: the caller's guarantees, passed on unchanged.
        let new = unsafe { inner.realloc(ptr, layout, new_size) };
        if new.is_null() {
            uncount_failed_realloc(layout.size(), new_size);
        }
        return new;
    }
    let old_inner = sampled.unwrap_or(layout);
    // A sample is taken out before `A` may free its address; `kept`: it cannot be now (this
    // thread holds a lock), so the old block is kept rather than freed, and its sample queued
    // for retirement once the new block exists (see `dealloc_sampled`).
    let kept = sampled.is_some() && crate::sync::held_here();
    let taken = if sampled.is_some() && !kept {
        THREAD.with(|t| retire(t, ptr)).flatten()
    } else {
        None
    };
    // SAFETY: the caller guarantees `new_size` rounded up to `layout.align()` fits.
    let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
    let plan = THREAD.with(|t| {
        if sampled.is_some() && t.in_profiler.get() {
            // The program's block, reallocated by profiler code: still the program's.
            Plan::Orphan
        } else {
            plan_alloc(t, new_layout)
        }
    });
    let new_inner = plan.inner_layout(new_layout);
    let new = if old_inner == layout && new_inner == new_layout && !kept {
        // SAFETY: the caller's guarantees, passed on unchanged.
        unsafe { inner.realloc(ptr, layout, new_size) }
    } else {
        // SAFETY: `new_inner` is the caller's new size with a power-of-two alignment; the old
        // block is valid for `layout.size()` bytes, the new one for `new_size`, they do not
        // overlap (both live at once), and the old one is freed with the layout `A` allocated
        // it with (or kept).
        unsafe {
            let n = inner.alloc(new_inner);
            if !n.is_null() {
                core::ptr::copy_nonoverlapping(ptr, n, layout.size().min(new_size));
                if !kept {
                    inner.dealloc(ptr, old_inner);
                }
            }
            n
        }
    };
    if new.is_null() {
        // The old block is untouched and still the caller's: put its sample back.
        if let Some(live) = taken {
            crate::guard::profiler_scope(|| sites::restore_sample(ptr, live));
        }
        THREAD.with(|t| plan.undo(t));
        return new;
    }
    let recorded = THREAD.with(|t| {
        count_free_slow(t, layout.size(), sampled.is_some());
        if kept {
            retire_later(ptr as usize);
            counters::profiler_alloc(layout.size());
        }
        finish_alloc(t, plan, new, new_size)
    });
    if recorded {
        return new;
    }
    let call = |l: Layout| {
        // SAFETY: `l` is `new_layout`, valid (checked above).
        unsafe { inner.alloc(l) }
    };
    // SAFETY: `new` was allocated from `inner` with `new_inner` and holds `new_size` bytes of
    // the caller's data.
    let moved = unsafe { unrecorded(new, new_inner, new_layout, new_size, &call, inner) };
    if moved.is_null() {
        THREAD.with(|t| plan.uncount(t, new_size));
    }
    moved
}

/// Counts a free off the fast path: the program's (`program`: a sample is always the program's,
/// wherever it is freed) or, inside the guard, the profiler's own.
fn count_free_slow(t: &ThreadState, size: usize, program: bool) {
    if t.in_profiler.get() {
        if program {
            // The slot is parked under the guard: the shared fallback counts it, exactly.
            counters::orphan_free(size);
        } else {
            // The profiler's own memory; never sampled.
            counters::profiler_free(size);
        }
        return;
    }
    if t.life.get() == Life::New {
        init_this_thread(t);
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

/// A thread's first slow-path call: the process set-up if this is the first thread, then the
/// thread's own (both inside the guard, so what they allocate is the profiler's).
#[cold]
#[inline(never)]
fn init_this_thread(t: &ThreadState) {
    setup::init_global();
    let Some(g) = InProfiler::enter(t) else {
        return;
    };
    setup::activate();
    thread::init_thread(t, &g);
}

/// Records a planned sample. Returns whether the free side's exact set now holds `ptr` with
/// `inner_align` (see [`finish_alloc`]).
#[cold]
#[inline(never)]
fn take_sample(t: &ThreadState, ptr: *mut u8, size: u64, rate: u64, inner_align: usize) -> bool {
    // A sample is planned only outside the guard (`plan_alloc`), and the inner call returns with
    // the guard as it found it, so this enters it.
    let Some(_g) = InProfiler::enter(t) else {
        return false;
    };
    retire_queued();
    // Zero only the `depth` slots the capture may use, not the whole 2 KiB buffer (most of a
    // sampled allocation's cost if zeroed in full; docs/benches.md).
    let mut storage = core::mem::MaybeUninit::<[usize; stack::BUF_LEN]>::uninit();
    let depth = (stack::MAX_DEPTH.load(Relaxed) + stack::ENTRY_FRAMES).min(stack::BUF_LEN);
    let p = storage.as_mut_ptr() as *mut usize;
    // SAFETY: `p` points to `BUF_LEN` usizes on our stack and `depth <= BUF_LEN`; the first
    // `depth` are initialised (zeroed) before the slice over them is made.
    let buf = unsafe {
        core::ptr::write_bytes(p, 0, depth);
        core::slice::from_raw_parts_mut(p, depth)
    };
    let n = stack::capture(buf, (t.stack_lo.get(), t.stack_hi.get()));
    // `false`: the profiler's memory could not grow to record it (counted as lost).
    sites::record_sample(
        &buf[..n],
        ptr,
        size,
        rate,
        t.tag.get(),
        clock::now_ns(),
        inner_align,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::profiler_scope;
    use crate::owned::Owned;

    // `Owned` (thread layer) against the real hook: this test needs the hook and `stats()`,
    // which sit above it, so it lives here.
    /// A hook of its own: the unit tests' global allocator is the system's, so allocations made
    /// through this instance are the only ones the counters see in this test binary.
    static HOOK: crate::HeapSight = crate::HeapSight::system();

    /// A block allocated through [`HOOK`], freed through it on drop: a `Vec<u8>` of the hook.
    struct Block(*mut u8, Layout);

    impl Block {
        fn new(size: usize) -> Block {
            let layout = Layout::from_size_align(size, 8).unwrap();
            // SAFETY: `layout` has a nonzero size.
            let p = unsafe { HOOK.alloc(layout) };
            assert!(!p.is_null());
            Block(p, layout)
        }
    }

    impl Drop for Block {
        fn drop(&mut self) {
            // SAFETY: allocated by `HOOK` with this layout in `Block::new`, freed once, here.
            unsafe { HOOK.dealloc(self.0, self.1) }
        }
    }

    /// (program frees, program bytes freed, profiler bytes)
    fn counts() -> (u64, u64, u64) {
        let s = crate::stats();
        (s.free_objects, s.free_bytes, s.profiler_bytes)
    }

    #[test]
    fn counts_stay_exact_when_dropped_outside_the_guard() {
        const SIZE: usize = 4096;
        std::thread::spawn(|| {
            // Give this thread its counter slot first (outside the guard, as a program would).
            drop(Block::new(8));
            let before = counts();

            let owned = profiler_scope(|| Owned::new(Block::new(SIZE)));
            let (f, fb, prof) = counts();
            assert_eq!((f, fb), (before.0, before.1));
            assert_eq!(
                prof,
                before.2 + SIZE as u64,
                "allocated as the profiler's own"
            );
            assert!(!crate::guard::in_profiler());
            drop(owned);
            assert_eq!(
                counts(),
                before,
                "freed as the profiler's own, not the program's"
            );

            // Without `Owned`, the same drop is counted as a free the program never made, and
            // the profiler's tally never comes down: what the type is for.
            let bare = profiler_scope(|| Block::new(SIZE));
            drop(bare);
            let (f, fb, prof) = counts();
            assert_eq!((f, fb), (before.0 + 1, before.1 + SIZE as u64));
            assert_eq!(prof, before.2 + SIZE as u64);
            // Put the tally back for any later reader.
            crate::counters::profiler_free(SIZE);
        })
        .join()
        .unwrap();
    }
}
