//! Exact global counters without shared read-modify-write on the fast path.
//!
//! Each thread owns a [`Slot`] and is its only writer: an update is `store(load + n)` with
//! `Relaxed` ordering, which on x86-64 is a plain `add`-free load and store to a line no other
//! thread writes (~0.5 ns), against ~9 ns for a contended `fetch_add` on a shared line.
//! Readers ([`totals`]) sum the slots. Slots live on a push-only lock-free list and are never
//! freed: at thread exit a slot is handed back (its totals stay in the sum) and the next new
//! thread adopts it, so thread churn neither leaks slots nor loses counts.
//!
//! A thread whose slot is gone (its thread-locals are being torn down) still allocates and frees:
//! those operations go to [`ORPHAN`] with atomic `fetch_add`. That is rare and keeps the counters
//! exact.
//!
//! # The shared in-use figure and the peak, off the fast path
//!
//! No thread sees the exact global in-use count as it changes, and the fast path does not try:
//! it only adds to its own slot. [`INUSE`] is the one shared in-use figure: each thread adds its
//! net change since its previous flush ([`resync`]) with one `fetch_add`, at three moments only:
//! when its allocation countdown expires (every ~rate bytes allocated, every 1 MiB at rate 0),
//! when its free countdown expires (every [`FREE_FLUSH`] bytes freed) and when it calls
//! [`crate::stats`]. The global peak ([`PEAK`]) is the highest value INUSE reached at a flush or
//! that a reader summed. So a flush costs the same whatever the number of threads, and no
//! allocation or free walks the slot list (only [`totals`], the reader behind `stats()`, does:
//! linear in the number of slots ever created).
//!
//! Bound: INUSE lags the true in-use count by every thread's unflushed change, which lies between
//! `-FREE_FLUSH` (frees since its flush) and its allocation countdown (allocations since its
//! flush: about `rate`, at most ~18 × rate, 1 MiB at rate 0). So the reported peak is below the
//! true one by at most the sum over threads of what each allocated since its last flush (for one
//! thread: less than one countdown), and above it by at most what the other threads freed since
//! their last flush (each less than `FREE_FLUSH`). An allocation larger than the countdown always
//! flushes, so a peak made of large blocks is exact. A reader ([`totals`]) adds nothing above
//! the true peak: it folds in allocations read *before* frees, at most the in-use bytes at one
//! moment (see there). So `peak ≤ true peak + Σ over other threads of unflushed frees` (each below
//! `FREE_FLUSH`) always, whatever readers run meanwhile. `tests/rel_peak.rs` checks that bound under
//! load with concurrent readers, over many runs; `tests/fast_path.rs` checks both sides;
//! [`crate::measure`]'s peak is exact (below).
//!
//! # Scopes: `measure()` and tags, with nothing added to the fast path
//!
//! A slot's own counts only grow, and only its thread writes them, so "what this thread allocated
//! between two moments" is the difference of two reads. Both [`crate::measure`] and the per-tag
//! counts are built on that and cost the allocation fast path nothing:
//!
//! * **Tags.** The slot remembers the *open interval*: the tag in force on its thread and the
//!   slot's `alloc_*` counts when that tag was entered. Switching tags (entering or leaving a
//!   guard, every poll of a tagged future) adds `now - start` to the old tag's per-thread total
//!   and opens a new interval: a dozen own-thread loads and stores. Readers add the totals of every
//!   slot plus each open interval, under a per-slot sequence counter (a seqlock whose only writer
//!   is the owner), so a reader never counts an interval both as open and as flushed. The per-tag
//!   totals live in a [`TagCounts`] block allocated the first time the slot's thread uses a tag,
//!   and kept with the slot like its other counts.
//! * **Peak within a scope.** While a `measure()` scope is open its thread's allocations take
//!   the slow path (see `guard::ThreadState::enter_scope`), which raises `scope_hw` to the slot's
//!   own net count after counting each one ([`note_scope_alloc`]): the exact maximum, since the
//!   net only rises at allocations. A scope saves `scope_hw`, sets it to the current net, and at
//!   the end folds its own maximum back into the saved value so an enclosing scope sees it.
use core::ptr;
use core::sync::atomic::{
    fence, AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    Ordering::*,
};

#[repr(C, align(128))]
pub(crate) struct Slot {
    pub alloc_objects: AtomicU64,
    pub alloc_bytes: AtomicU64,
    pub free_objects: AtomicU64,
    pub free_bytes: AtomicU64,
    /// This slot's net bytes (`alloc_bytes - free_bytes`) as of its last flush into [`INUSE`].
    /// Read and written by the owner only (and by [`acquire_slot`]'s next owner, after the
    /// `owned` handover), hence `Relaxed`.
    flushed: AtomicI64,
    owned: AtomicBool,
    next: AtomicPtr<Slot>,
    // The fields below are written only when a scope begins or ends, a tag changes, or at a
    // resync; the fast path never touches them (they sit on the slot's second cache line).
    /// Highest own net bytes since the innermost `measure()` began (see the module docs);
    /// meaningless outside one.
    scope_hw: AtomicI64,
    /// Seqlock over `open_*` and `tags`: odd while the owner is switching tags.
    tag_seq: AtomicU32,
    /// The tag in force on the owning thread (0 = untagged) and this slot's `alloc_*` counts when
    /// it was entered.
    open_tag: AtomicU32,
    open_objects: AtomicU64,
    open_bytes: AtomicU64,
    /// Per-tag totals of closed intervals; null until the owning thread first enters a tag.
    tags: AtomicPtr<TagCounts>,
}

/// Number of tag ids, including 0 (untagged) and [`crate::tags`]'s overflow id.
pub(crate) const MAX_TAGS: usize = 1024;

/// Per-thread, per-tag exact allocation totals (of closed intervals). 16 KiB, allocated once per
/// slot that ever sees a tag, never freed (reused with the slot).
pub(crate) struct TagCounts {
    objects: [AtomicU64; MAX_TAGS],
    bytes: [AtomicU64; MAX_TAGS],
}

impl Slot {
    const fn new() -> Self {
        Slot {
            alloc_objects: AtomicU64::new(0),
            alloc_bytes: AtomicU64::new(0),
            free_objects: AtomicU64::new(0),
            free_bytes: AtomicU64::new(0),
            flushed: AtomicI64::new(0),
            owned: AtomicBool::new(false),
            next: AtomicPtr::new(ptr::null_mut()),
            scope_hw: AtomicI64::new(0),
            tag_seq: AtomicU32::new(0),
            open_tag: AtomicU32::new(0),
            open_objects: AtomicU64::new(0),
            open_bytes: AtomicU64::new(0),
            tags: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Net bytes this slot has seen allocated and not freed here (negative after cross-thread
    /// frees).
    pub fn net(&self) -> i64 {
        self.alloc_bytes
            .load(Relaxed)
            .wrapping_sub(self.free_bytes.load(Relaxed)) as i64
    }

    /// Counts one allocation. Only the owning thread calls this.
    #[inline(always)]
    pub fn add_alloc(&self, size: usize) {
        own_add(&self.alloc_objects, 1, Relaxed);
        own_add(&self.alloc_bytes, size as u64, Relaxed);
    }

    /// Takes back an allocation counted by [`Self::add_alloc`] whose inner call failed. Only the
    /// owning thread calls this, right after that call returned null.
    pub fn sub_alloc(&self, size: usize) {
        own_add(&self.alloc_objects, 1u64.wrapping_neg(), Relaxed);
        own_add(&self.alloc_bytes, (size as u64).wrapping_neg(), Relaxed);
    }

    /// Counts one free. Only the owning thread calls this.
    ///
    /// The stores are `Release` (plain stores on x86-64, `stlr` on aarch64): they pair with the
    /// `fence(Acquire)` in [`totals`] after it read the frees. A block freed here may have been
    /// allocated by another thread; its allocation happened before this free, so a reader that
    /// sees the free also sees the allocation in the other slot, and `alloc >= free` holds in
    /// every sum. (`Relaxed` would give that only on x86.)
    #[inline(always)]
    pub fn add_free(&self, size: usize) {
        own_add(&self.free_objects, 1, Release);
        own_add(&self.free_bytes, size as u64, Release);
    }

    /// Takes back a free counted by [`Self::add_free`] (a `realloc` whose inner call failed).
    pub fn sub_free(&self, size: usize) {
        own_add(&self.free_objects, 1u64.wrapping_neg(), Relaxed);
        own_add(&self.free_bytes, (size as u64).wrapping_neg(), Relaxed);
    }
}

/// `c += n` (wrapping) on a counter only the calling thread writes: a load and a store, no
/// read-modify-write instruction (see the module docs). `store` orders the store.
#[inline(always)]
fn own_add(c: &AtomicU64, n: u64, store: Ordering) {
    c.store(c.load(Relaxed).wrapping_add(n), store)
}

/// Bytes a thread frees between two flushes into [`INUSE`] (its free path's countdown). Also
/// `filter::LARGE`: a free of this much or more always fails the countdown test, which is how
/// the fast path sends large blocks to the exact sample check without testing their size.
pub(crate) const FREE_FLUSH: u64 = 64 * 1024;

/// The process's in-use bytes as of every thread's last flush (see the module docs). Only
/// flushes, orphan operations and slot hand-backs change it, each with one `fetch_add`.
static INUSE: AtomicI64 = AtomicI64::new(0);

/// Head of the push-only slot list.
static SLOTS: AtomicPtr<Slot> = AtomicPtr::new(ptr::null_mut());
/// Counts of threads that had no slot (tearing down): shared, updated with `fetch_add`.
static ORPHAN: Slot = Slot::new();
/// Highest in-use byte count observed by any flush or reader (see the module docs).
static PEAK: AtomicU64 = AtomicU64::new(0);
/// Bytes the profiler itself holds: site tables, live-sample index, symbol cache, snapshots.
static PROFILER_BYTES: AtomicI64 = AtomicI64::new(0);
/// Number of slots ever created (= most threads alive at once).
static SLOT_COUNT: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn orphan_alloc(size: usize) {
    ORPHAN.alloc_objects.fetch_add(1, Relaxed);
    ORPHAN.alloc_bytes.fetch_add(size as u64, Relaxed);
    INUSE.fetch_add(size as i64, Relaxed);
}

/// Takes back an allocation counted by [`orphan_alloc`] whose block is not handed out after all.
pub(crate) fn orphan_uncount(size: usize) {
    ORPHAN.alloc_objects.fetch_sub(1, Relaxed);
    ORPHAN.alloc_bytes.fetch_sub(size as u64, Relaxed);
    INUSE.fetch_sub(size as i64, Relaxed);
}

pub(crate) fn orphan_free(size: usize) {
    // Release: pairs with the `fence(Acquire)` in `totals`, as in `Slot::add_free`.
    ORPHAN.free_objects.fetch_add(1, Release);
    ORPHAN.free_bytes.fetch_add(size as u64, Release);
    INUSE.fetch_sub(size as i64, Relaxed);
}

pub(crate) fn profiler_alloc(size: usize) {
    PROFILER_BYTES.fetch_add(size as i64, Relaxed);
}

pub(crate) fn profiler_free(size: usize) {
    PROFILER_BYTES.fetch_sub(size as i64, Relaxed);
}

pub(crate) fn profiler_bytes() -> u64 {
    PROFILER_BYTES.load(Relaxed).max(0) as u64
}

pub(crate) fn slot_count() -> usize {
    SLOT_COUNT.load(Relaxed)
}

fn for_each_slot(mut f: impl FnMut(&'static Slot)) {
    let mut p = SLOTS.load(Acquire);
    while !p.is_null() {
        // SAFETY: slots are leaked on creation and never freed; `next` was set before the slot
        // was published with a Release CAS that the Acquire load above synchronises with.
        let s: &'static Slot = unsafe { &*p };
        f(s);
        p = s.next.load(Acquire);
    }
}

/// Takes a free slot, or creates one. Must run inside the profiler guard: a new slot is
/// allocated through the global allocator, which then forwards it uncounted. `None` when that
/// allocation fails (the thread is then counted in the shared fallback, exactly).
pub(crate) fn acquire_slot() -> Option<&'static Slot> {
    debug_assert!(crate::guard::in_profiler());
    let mut found: Option<&'static Slot> = None;
    for_each_slot(|s| {
        if found.is_none()
            && s.owned
                .compare_exchange(false, true, Acquire, Relaxed)
                .is_ok()
        {
            found = Some(s);
        }
    });
    if found.is_some() {
        return found;
    }
    // Not `Box::new`, which aborts when the allocation fails.
    // SAFETY: `Slot` has a nonzero size.
    let p = unsafe { std::alloc::alloc(core::alloc::Layout::new::<Slot>()) } as *mut Slot;
    if p.is_null() {
        return None;
    }
    // SAFETY: a fresh block with `Slot`'s layout, never freed (slots are leaked).
    let s: &'static Slot = unsafe {
        p.write(Slot::new());
        &*p
    };
    s.owned.store(true, Relaxed);
    SLOT_COUNT.fetch_add(1, Relaxed);
    let mut head = SLOTS.load(Relaxed);
    loop {
        s.next.store(head, Relaxed);
        match SLOTS.compare_exchange_weak(head, s as *const Slot as *mut Slot, Release, Relaxed) {
            Ok(_) => return Some(s),
            Err(h) => head = h,
        }
    }
}

/// Hands a slot back at thread exit. Its totals stay in the sum.
pub(crate) fn release_slot(s: &'static Slot) {
    // Close the open tag interval: the next owner starts untagged, and its allocations must not
    // count for this thread's last tag (a leaked `TagGuard` would otherwise leave it open).
    switch_tag(s, 0);
    // Flush: the slot's net change goes into INUSE (and its candidate into PEAK) before nobody
    // owns it. The next owner starts from `flushed` = the slot's net then.
    resync(s);
    // Release: pairs with the `Acquire` CAS in `acquire_slot`, so the next owner sees `flushed`.
    s.owned.store(false, Release);
}

/// Raw sums over all slots. Frees are read before allocations so that, for operations that
/// happened before the call, `alloc >= free` holds in the result.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Totals {
    pub alloc_objects: u64,
    pub alloc_bytes: u64,
    pub free_objects: u64,
    pub free_bytes: u64,
    pub peak: u64,
}

impl Totals {
    pub fn inuse_bytes(&self) -> u64 {
        self.alloc_bytes.saturating_sub(self.free_bytes)
    }
}

pub(crate) fn totals() -> Totals {
    let mut t = Totals::default();
    // The peak candidate is read the other way round: allocations first, then frees. Every
    // counter only grows, so allocations read before a moment `m` (between the two passes) are at
    // most those made by `m`, and frees read after it at least those made by `m`: `allocs - frees`
    // is at most the true in-use bytes at `m`, never above the true peak. (Read the order the
    // totals use, frees then allocations, it would count every block allocated and freed during
    // the read as live: without bound under load.)
    let mut early_allocs = 0u64;
    let mut add_early = |s: &Slot| {
        early_allocs = early_allocs.wrapping_add(s.alloc_bytes.load(Relaxed));
    };
    add_early(&ORPHAN);
    for_each_slot(add_early);
    // `m`: the allocation reads above come before the free reads below.
    fence(SeqCst);
    let mut add_frees = |s: &Slot| {
        t.free_objects = t.free_objects.wrapping_add(s.free_objects.load(Relaxed));
        t.free_bytes = t.free_bytes.wrapping_add(s.free_bytes.load(Relaxed));
    };
    add_frees(&ORPHAN);
    for_each_slot(add_frees);
    // Pairs with the `Release` stores of `free_*` (`Slot::add_free`, `orphan_free`): every
    // allocation that happened before a free read above is in the allocation sums read below.
    fence(Acquire);
    let mut add_allocs = |s: &Slot| {
        t.alloc_objects = t.alloc_objects.wrapping_add(s.alloc_objects.load(Relaxed));
        t.alloc_bytes = t.alloc_bytes.wrapping_add(s.alloc_bytes.load(Relaxed));
    };
    add_allocs(&ORPHAN);
    for_each_slot(add_allocs);
    let candidate = early_allocs.saturating_sub(t.free_bytes);
    t.peak = PEAK.fetch_max(candidate, Relaxed).max(candidate);
    t
}

/// Flushes this slot into the shared in-use figure: adds the slot's net change since its last
/// flush to [`INUSE`] (one `fetch_add`) and raises [`PEAK`] to the sum. Constant time: no slot
/// but this one is read. Only the slot's owner calls this (and `release_slot` on the owner's
/// behalf, at its exit).
pub(crate) fn resync(own: &Slot) {
    let net = own.net();
    let delta = net.wrapping_sub(own.flushed.load(Relaxed));
    own.flushed.store(net, Relaxed);
    // Relaxed: read-modify-writes of one atomic are totally ordered, so the sum returned includes
    // every earlier flush; nothing else is published through INUSE.
    let inuse = INUSE.fetch_add(delta, Relaxed).wrapping_add(delta);
    PEAK.fetch_max(inuse.max(0) as u64, Relaxed);
}

/// A thread's own counts, exact, for `measure()`: allocations, bytes allocated, frees, bytes
/// freed.
pub(crate) fn own_counts(own: &Slot) -> [u64; 4] {
    [
        own.alloc_objects.load(Relaxed),
        own.alloc_bytes.load(Relaxed),
        own.free_objects.load(Relaxed),
        own.free_bytes.load(Relaxed),
    ]
}

/// After the slow path counted an allocation inside a `measure()` scope: the own net count only
/// rises at allocations, so raising `scope_hw` here keeps the scope's exact maximum.
pub(crate) fn note_scope_alloc(own: &Slot) {
    let net = own.net();
    if net > own.scope_hw.load(Relaxed) {
        own.scope_hw.store(net, Relaxed);
    }
}

/// Starts a measured scope on the owner's slot: returns the enclosing scope's running maximum
/// (to hand back to [`end_scope`]) and starts tracking from the current net. No allocation, no
/// lock, no shared write.
pub(crate) fn begin_scope(own: &Slot) -> i64 {
    let enclosing = own.scope_hw.load(Relaxed);
    own.scope_hw.store(own.net(), Relaxed);
    enclosing
}

/// The highest own net bytes reached since the innermost [`begin_scope`].
pub(crate) fn peek_scope_max(own: &Slot) -> i64 {
    own.scope_hw.load(Relaxed)
}

/// Ends a measured scope: folds its maximum into the enclosing scope's, which [`begin_scope`]
/// returned.
pub(crate) fn end_scope(own: &Slot, enclosing: i64) {
    let max = peek_scope_max(own);
    own.scope_hw.store(enclosing.max(max), Relaxed);
}

/// Makes sure the slot has its per-tag totals block. Only the owner calls this; allocates (inside
/// the profiler guard) the first time only.
/// `None` if the block cannot be allocated (then the interval being closed is not credited to
/// its tag; nothing aborts).
fn tag_counts(own: &Slot) -> Option<&'static TagCounts> {
    let p = own.tags.load(Acquire);
    if !p.is_null() {
        // SAFETY: a non-null `tags` was leaked by the code below and is never freed.
        return Some(unsafe { &*p });
    }
    // Zeroed memory is a valid `TagCounts` (atomics of 0); not `Box::new`, which aborts when the
    // allocation fails.
    let p = crate::guard::profiler_scope(|| {
        // SAFETY: `TagCounts` has a nonzero size.
        unsafe { std::alloc::alloc_zeroed(core::alloc::Layout::new::<TagCounts>()) }
    }) as *mut TagCounts;
    if p.is_null() {
        return None;
    }
    // SAFETY: a fresh zeroed block with `TagCounts`'s layout, leaked (never freed).
    let block: &'static TagCounts = unsafe { &*p };
    // Release: a reader that sees the pointer sees the zeroed block.
    own.tags
        .store(block as *const TagCounts as *mut TagCounts, Release);
    Some(block)
}

/// Closes the slot's open tag interval (crediting it to its tag) and opens one for `tag`.
/// Only the owning thread calls this. Allocates only the first time the slot sees a tag.
pub(crate) fn switch_tag(own: &Slot, tag: u32) {
    let old = own.open_tag.load(Relaxed);
    if old == tag {
        return;
    }
    debug_assert!((tag as usize) < MAX_TAGS);
    let counts = if old != 0 || tag != 0 {
        tag_counts(own)
    } else {
        None
    };
    let ao = own.alloc_objects.load(Relaxed);
    let ab = own.alloc_bytes.load(Relaxed);
    // Seqlock write side (sole writer, so plain stores): odd, fence, data, even with Release.
    let seq = own.tag_seq.load(Relaxed);
    own.tag_seq.store(seq.wrapping_add(1), Relaxed);
    fence(Release);
    if let (Some(c), true) = (counts, old != 0) {
        let i = old as usize;
        let dobj = ao.wrapping_sub(own.open_objects.load(Relaxed));
        let dbytes = ab.wrapping_sub(own.open_bytes.load(Relaxed));
        c.objects[i].store(c.objects[i].load(Relaxed).wrapping_add(dobj), Relaxed);
        c.bytes[i].store(c.bytes[i].load(Relaxed).wrapping_add(dbytes), Relaxed);
    }
    own.open_tag.store(tag, Relaxed);
    own.open_objects.store(ao, Relaxed);
    own.open_bytes.store(ab, Relaxed);
    own.tag_seq.store(seq.wrapping_add(2), Release);
}

/// Adds every slot's exact per-tag allocation totals (closed intervals plus the open one) into
/// `out[id] = (objects, bytes)` for ids below `out.len()`. Lock-free, allocation-free.
pub(crate) fn add_tag_totals(out: &mut [(u64, u64)]) {
    let n = out.len().min(MAX_TAGS);
    for_each_slot(|s| {
        let p = s.tags.load(Acquire);
        if p.is_null() {
            return; // this slot never saw a tag
        }
        // SAFETY: non-null `tags` is a leaked, never-freed block.
        let c: &TagCounts = unsafe { &*p };
        // Seqlock read side: copy, then keep the copy only if no switch overlapped it. A switch
        // takes nanoseconds; if the owner keeps switching we still stop after a bounded number of
        // tries and take the last copy (then off by at most one interval, never unbounded).
        let mut local = [(0u64, 0u64); MAX_TAGS];
        for attempt in 0..1000 {
            let s1 = s.tag_seq.load(Acquire);
            if s1 & 1 == 1 && attempt < 999 {
                core::hint::spin_loop();
                continue;
            }
            for (i, l) in local[..n].iter_mut().enumerate() {
                *l = (c.objects[i].load(Relaxed), c.bytes[i].load(Relaxed));
            }
            let open = s.open_tag.load(Relaxed) as usize;
            // Read after the Acquire above, so at least the counts the start was taken from.
            let dobj = s
                .alloc_objects
                .load(Relaxed)
                .saturating_sub(s.open_objects.load(Relaxed));
            let dbytes = s
                .alloc_bytes
                .load(Relaxed)
                .saturating_sub(s.open_bytes.load(Relaxed));
            if open != 0 && open < n {
                local[open].0 = local[open].0.wrapping_add(dobj);
                local[open].1 = local[open].1.wrapping_add(dbytes);
            }
            fence(Acquire);
            if s.tag_seq.load(Relaxed) == s1 {
                break;
            }
        }
        for (o, l) in out[..n].iter_mut().zip(&local[..n]) {
            o.0 = o.0.wrapping_add(l.0);
            o.1 = o.1.wrapping_add(l.1);
        }
    });
}
