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
//! # Peak in-use bytes without a shared counter on the fast path
//!
//! No thread sees the exact global in-use count as it changes. Each slot keeps `high_water`, the
//! highest *own* net byte count (`alloc_bytes - free_bytes` of this slot) since the slot's last
//! *flush*, and `others`, the in-use bytes of everybody else as [`INUSE`] knew them at that flush.
//! `others + high_water` is the slot's peak candidate.
//!
//! [`INUSE`] is the one shared in-use figure: each thread adds its net change since its previous
//! flush ([`resync`]) with one `fetch_add`, at three moments only: when its allocation countdown
//! expires (every ~rate bytes allocated, every 1 MiB at rate 0), when its free countdown expires
//! (every [`FREE_FLUSH`] bytes freed) and when it calls [`crate::stats`]. So the cost of a flush
//! does not depend on the number of threads, and no allocation or free walks the slot list (only
//! [`totals`], the reader behind `stats()`, does: linear in the number of slots ever created).
//!
//! Bound: `INUSE` lags the true in-use count by every thread's unflushed change, which lies
//! between `-FREE_FLUSH` (frees since its flush) and its allocation countdown (allocations since
//! its flush: about `rate`, at most ~18 × rate, 1 MiB at rate 0). A candidate takes the others as
//! of its owner's last flush: it is too high by what they freed since, but by no more than what
//! the owner allocated before its next flush (one countdown), and too low by what they allocated
//! since. So the global peak is exact for a single-threaded program, and otherwise off by at
//! most about one countdown per thread (`tests/threads.rs` checks a thread that only frees).
//!
//! The slot stores `high_water` as `headroom = high_water - net`: how far the own net count can
//! still grow before it makes a new high. An allocation subtracts its size; if that borrows, the
//! net count has just passed the old high and is itself the new one (`headroom = 0`). A free adds
//! its size. On x86-64 that is one `sub` on memory and a rarely taken branch per allocation and
//! one `add` per free, instead of computing `alloc_bytes - free_bytes` and comparing it with the
//! mark on every allocation: 3 instructions fewer per alloc+free pair (`benches/callgrind.py`).
//! Readers compute `high_water = net + headroom` ([`Slot::high_water`]); "reset the mark to the
//! current net" is `headroom = 0`.
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
//! * **Peak within a scope.** `high_water` is reset at every resync, so on its own it only knows
//!   the maximum since the last one. `scope_hw` keeps the maximum across resyncs: a resync folds
//!   `high_water` into it before resetting. A measured scope saves `scope_hw`, sets it to the
//!   current net, and at the end reads `max(scope_hw, high_water)`; it then folds its own maximum
//!   back into the saved value so an enclosing scope sees it.
use core::ptr;
use core::sync::atomic::{
    fence, AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering::*,
};

#[repr(C, align(128))]
pub(crate) struct Slot {
    pub alloc_objects: AtomicU64,
    pub alloc_bytes: AtomicU64,
    pub free_objects: AtomicU64,
    pub free_bytes: AtomicU64,
    /// Highest `alloc_bytes - free_bytes` of this slot since its last flush, minus the current
    /// `alloc_bytes - free_bytes` (see the module docs). Never negative.
    pub headroom: AtomicU64,
    /// In-use bytes of everybody else according to [`INUSE`] at this slot's last flush.
    pub others: AtomicI64,
    /// This slot's net bytes (`alloc_bytes - free_bytes`) as of its last flush into [`INUSE`].
    /// Read and written by the owner only (and by [`acquire_slot`]'s next owner, after the
    /// `owned` handover), hence `Relaxed`.
    flushed: AtomicI64,
    owned: AtomicBool,
    next: AtomicPtr<Slot>,
    // The fields below are written only when a scope begins or ends, a tag changes, or at a
    // resync; the fast path never touches them (they sit on the slot's second cache line).
    /// Highest own net bytes across resyncs since the innermost `measure()` began (see the module
    /// docs); meaningless outside one.
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
            headroom: AtomicU64::new(0),
            others: AtomicI64::new(0),
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

    /// Highest own net count since the last resync (see the module docs).
    pub fn high_water(&self) -> i64 {
        // Read `alloc_bytes`, then `headroom`, then `free_bytes`: the owner lowers `headroom`
        // before it raises `alloc_bytes`, and raises `free_bytes` before `headroom`. The Acquire
        // load of `alloc_bytes` pairs with its Release store in `add_alloc` (so the lowered
        // `headroom` is seen), the Acquire load of `headroom` with its Release store in
        // `add_free` (so the raised `free_bytes` is seen): a reader racing with the owner under-
        // but never over-estimates the mark.
        let ab = self.alloc_bytes.load(Acquire);
        let h = self.headroom.load(Acquire);
        let fb = self.free_bytes.load(Relaxed);
        (ab.wrapping_sub(fb) as i64).wrapping_add(h as i64)
    }

    /// Counts one allocation. Only the owning thread calls this.
    #[inline(always)]
    pub fn add_alloc(&self, size: usize) {
        let size = size as u64;
        self.lower_headroom(size);
        self.alloc_objects
            .store(self.alloc_objects.load(Relaxed) + 1, Relaxed);
        self.alloc_bytes
            .store(self.alloc_bytes.load(Relaxed).wrapping_add(size), Release);
    }

    /// `headroom -= size`, and 0 if that borrows: the net count just passed the high-water mark,
    /// so it is the new mark. (A reader that sees the wrapped value in between reads it as a
    /// negative headroom: an underestimate of the mark, never an overestimate.)
    #[inline(always)]
    fn lower_headroom(&self, size: u64) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `self.headroom` is a live, aligned `AtomicU64`, written only by this (the
        // owning) thread. The `sub` is a read and an aligned 8-byte write of it, each
        // single-copy atomic on x86-64: the same accesses as the `Relaxed` load and store of the
        // portable version below, which the compiler does not fuse into one `sub` with a branch
        // on its borrow (4 instructions instead of 2 on every allocation; benches/callgrind.py).
        unsafe {
            core::arch::asm!(
                "sub qword ptr [{slot} + {h}], {size}",
                "jae 2f",
                "mov qword ptr [{slot} + {h}], 0",
                "2:",
                slot = in(reg) self as *const Slot,
                h = const core::mem::offset_of!(Slot, headroom),
                size = in(reg) size,
                options(nostack),
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let (h, borrow) = self.headroom.load(Relaxed).overflowing_sub(size);
            self.headroom.store(if borrow { 0 } else { h }, Relaxed);
        }
    }

    /// Counts one free. Only the owning thread calls this.
    ///
    /// The `free_*` stores are `Release` (plain stores on x86-64, `stlr` on aarch64): they pair
    /// with the `fence(Acquire)` in [`totals`] after it read the frees. A block freed here may
    /// have been allocated by another thread; its allocation happened before this free, so a
    /// reader that sees the free also sees the allocation in the other slot, and `alloc >= free`
    /// holds in every sum. (`Relaxed` would give that only on x86.)
    #[inline(always)]
    pub fn add_free(&self, size: usize) {
        let size = size as u64;
        self.free_objects
            .store(self.free_objects.load(Relaxed) + 1, Release);
        self.free_bytes
            .store(self.free_bytes.load(Relaxed).wrapping_add(size), Release);
        // Release, after `free_bytes`: pairs with the `Acquire` load of `headroom` in
        // [`Slot::high_water`] (see there).
        self.headroom
            .store(self.headroom.load(Relaxed).wrapping_add(size), Release);
    }
}

/// Bytes a thread frees between two flushes into [`INUSE`] (its free path's countdown).
pub(crate) const FREE_FLUSH: u64 = 1 << 20;

/// The process's in-use bytes as of every thread's last flush (see the module docs). Only
/// flushes, orphan operations and slot hand-backs change it, each with one `fetch_add`.
static INUSE: AtomicI64 = AtomicI64::new(0);

/// Head of the push-only slot list.
static SLOTS: AtomicPtr<Slot> = AtomicPtr::new(ptr::null_mut());
/// Counts of threads that had no slot (tearing down): shared, updated with `fetch_add`.
static ORPHAN: Slot = Slot::new();
/// Highest in-use byte count observed by any resync or reader.
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
/// allocated through the global allocator, which then forwards it uncounted.
pub(crate) fn acquire_slot() -> &'static Slot {
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
    if let Some(s) = found {
        return s;
    }
    let s: &'static Slot = Box::leak(Box::new(Slot::new()));
    s.owned.store(true, Relaxed);
    SLOT_COUNT.fetch_add(1, Relaxed);
    let mut head = SLOTS.load(Relaxed);
    loop {
        s.next.store(head, Relaxed);
        match SLOTS.compare_exchange_weak(head, s as *const Slot as *mut Slot, Release, Relaxed) {
            Ok(_) => return s,
            Err(h) => head = h,
        }
    }
}

/// Hands a slot back at thread exit. Its totals stay in the sum; its peak candidate is folded
/// into the global peak first, because an unowned slot's candidate is not read.
pub(crate) fn release_slot(s: &'static Slot) {
    // Close the open tag interval: the next owner starts untagged, and its allocations must not
    // count for this thread's last tag (a leaked `TagGuard` would otherwise leave it open).
    switch_tag(s, 0);
    // Flush: the slot's net change goes into INUSE (and its candidate into PEAK) before nobody
    // owns it. The next owner starts from `flushed` = the slot's net then.
    resync(s);
    PEAK.fetch_max(candidate(s), Relaxed);
    // Release: pairs with the `Acquire` CAS in `acquire_slot`, so the next owner sees `flushed`.
    s.owned.store(false, Release);
}

fn candidate(s: &Slot) -> u64 {
    s.others.load(Relaxed).saturating_add(s.high_water()).max(0) as u64
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
    let mut add_frees = |s: &Slot| {
        t.free_objects = t.free_objects.wrapping_add(s.free_objects.load(Relaxed));
        t.free_bytes = t.free_bytes.wrapping_add(s.free_bytes.load(Relaxed));
    };
    add_frees(&ORPHAN);
    for_each_slot(add_frees);
    // Pairs with the `Release` stores of `free_*` (`Slot::add_free`, `orphan_free`): every
    // allocation that happened before a free read above is in the allocation sums read below.
    core::sync::atomic::fence(Acquire);
    let mut peak = PEAK.load(Relaxed);
    let mut add_allocs = |s: &Slot| {
        t.alloc_objects = t.alloc_objects.wrapping_add(s.alloc_objects.load(Relaxed));
        t.alloc_bytes = t.alloc_bytes.wrapping_add(s.alloc_bytes.load(Relaxed));
    };
    add_allocs(&ORPHAN);
    for_each_slot(|s| {
        add_allocs(s);
        if s.owned.load(Relaxed) {
            peak = peak.max(candidate(s));
        }
    });
    peak = peak.max(t.inuse_bytes());
    PEAK.fetch_max(peak, Relaxed);
    t.peak = peak;
    t
}

/// Flushes this slot into the shared in-use figure and re-bases its peak candidate on it: folds
/// the old candidate into the global peak, adds the slot's net change since its last flush to
/// [`INUSE`] (one `fetch_add`), and sets `others` = everybody else's in-use as INUSE now knows it
/// and `high_water` = own net now. Constant time: no slot but this one is read. Only the slot's
/// owner calls this (and `release_slot` on the owner's behalf, at its exit).
pub(crate) fn resync(own: &Slot) {
    PEAK.fetch_max(candidate(own), Relaxed);
    // Keep the maximum for an enclosing `measure()` before `high_water` forgets it.
    fold_scope_hw(own);
    let net = own.net();
    let delta = net.wrapping_sub(own.flushed.load(Relaxed));
    own.flushed.store(net, Relaxed);
    // Relaxed: read-modify-writes of one atomic are totally ordered, so the sum returned includes
    // every earlier flush; nothing else is published through INUSE.
    let inuse = INUSE.fetch_add(delta, Relaxed).wrapping_add(delta);
    PEAK.fetch_max(inuse.max(0) as u64, Relaxed);
    own.others.store(inuse.wrapping_sub(net), Relaxed);
    own.headroom.store(0, Relaxed);
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

fn fold_scope_hw(own: &Slot) {
    let hw = own.high_water();
    if hw > own.scope_hw.load(Relaxed) {
        own.scope_hw.store(hw, Relaxed);
    }
}

/// Starts a measured scope on the owner's slot: returns the enclosing scope's running maximum
/// (to hand back to [`end_scope`]) and starts tracking from the current net. No allocation, no
/// lock; one shared `fetch_max` (not on the allocation path).
pub(crate) fn begin_scope(own: &Slot) -> i64 {
    // Resetting `high_water` below would lose the peak candidate it carries: fold it into the
    // global peak first, exactly as a resync would.
    PEAK.fetch_max(candidate(own), Relaxed);
    let enclosing = own.scope_hw.load(Relaxed).max(own.high_water());
    let net = own.net();
    // `others + net` is still a valid candidate (what the process held if the others did not
    // move since the last resync), only no longer the highest since then, which PEAK now has.
    own.headroom.store(0, Relaxed);
    own.scope_hw.store(net, Relaxed);
    enclosing
}

/// The highest own net bytes reached since the innermost [`begin_scope`].
pub(crate) fn peek_scope_max(own: &Slot) -> i64 {
    own.scope_hw.load(Relaxed).max(own.high_water())
}

/// Ends a measured scope: folds its maximum into the enclosing scope's, which [`begin_scope`]
/// returned.
pub(crate) fn end_scope(own: &Slot, enclosing: i64) {
    let max = peek_scope_max(own);
    own.scope_hw.store(enclosing.max(max), Relaxed);
}

/// Makes sure the slot has its per-tag totals block. Only the owner calls this; allocates (inside
/// the profiler guard) the first time only.
fn tag_counts(own: &Slot) -> &'static TagCounts {
    let p = own.tags.load(Acquire);
    if !p.is_null() {
        // SAFETY: a non-null `tags` was leaked by the code below and is never freed.
        return unsafe { &*p };
    }
    let block: &'static TagCounts = crate::guard::profiler_scope(|| {
        Box::leak(Box::new(TagCounts {
            objects: [const { AtomicU64::new(0) }; MAX_TAGS],
            bytes: [const { AtomicU64::new(0) }; MAX_TAGS],
        }))
    });
    // Release: a reader that sees the pointer sees the zeroed block.
    own.tags
        .store(block as *const TagCounts as *mut TagCounts, Release);
    block
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
        Some(tag_counts(own))
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
