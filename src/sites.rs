//! The site table: the profiler's shared mutable state, behind the only locks the hook takes.
//!
//! Two kinds of lock, never held together by the hook (so no order between them matters there):
//!
//! * **The table lock** ([`TABLE`]) guards stacks, buckets, lifetime rows, the overflow sums and
//!   the peak. A sampled allocation takes it once (intern the stack and bucket, count the sample),
//!   a free of a sampled block once (count the free and its lifetime). Each holds it for O(1) work:
//!   hash look-ups and counter updates; an index grows (rehash) only when a new stack or bucket
//!   needs room, geometrically, so amortised O(1) and never on a free.
//! * **Live-sample shards** ([`SHARDS`], 32 locks): `address -> Live` for sampled blocks not yet
//!   freed, each shard a hash map of the addresses that hash to it. Frees and allocations of
//!   different blocks on different threads meet here only when their addresses share a shard; a
//!   shard's rehash moves only its own 1/32 of the live samples. The free side's exact set of
//!   sampled addresses (`filter`) is split the same way and written only under the same lock.
//!
//! * **Stacks** are interned: `stack id -> return addresses`. Ids are reused: when
//!   `max_sites` stacks exist, a new stack first *reclaims* one with no live sample (least
//!   recently sampled first, among the [`RECLAIM_SCAN`] oldest); the reclaimed stack's counts
//!   (raw samples, weighted totals, lifetimes) move into the frame-less pseudo-site, so
//!   `alloc_objects`/`alloc_space` totals still add up. Only when no stack can be reclaimed does
//!   the cap bend to the live samples: a stack past the cap is interned while the table holds
//!   no more stacks than live samples (so memory past the cap is paid for by live samples, which
//!   exist in proportion to the heap over the rate — at rate 1 every live stack keeps its
//!   frames), and beyond that a sample goes to [`OVERFLOW_STACK`], counted in `overflow_samples`.
//! * **Buckets** are keyed by `(stack, tag, size, rate)` and count raw samples taken and freed.
//!   Keying by size and rate is what makes unbiasing exact: every sample in a bucket has the same
//!   weight `1/p(size, rate)`, so `count × weight` is the sum of per-sample weights (Go keys its
//!   buckets by stack and size for the same reason). Estimates are derived from integer counts,
//!   so a site whose blocks are all freed shows exactly 0 in use, never a rounding residue. A
//!   stack's buckets are chained from it, so reclaiming a stack frees its buckets too.
//! * **The filter** ([`crate::filter`]) is raised for every live sample and lowered when it is
//!   taken out, under the address's shard lock; a free consults it (and its exact, lock-free
//!   second level) before it takes a shard lock.
//! * **Lifetimes**: a stack gets a row of [`LIFE_BINS`] half-octave counters at its first sampled
//!   free (from room reserved when the stack was interned, so a free never allocates); freeing a
//!   sampled block adds one to the bin of its age (allocation to free, from
//!   `Live::born_ns`). A free only increments a counter: no unbounded log, nothing lost between
//!   two dumps. Cost: 320 bytes per stack that had a sampled free, bounded by the stacks.
//! * **Peak**: the table keeps the sampled in-use byte estimate (fixed point) and, when a new
//!   sample lifts it past 1.1 × the last captured peak, captures a peak in O(1): it starts a new
//!   *epoch*. A bucket keeps its counts as of the last epoch start, copied the first time the
//!   bucket changes after it (copy on write), so the counts at the peak are known for every
//!   bucket without copying any at the capture. A stack with samples live at the peak is not
//!   reclaimed until the next capture, so the peak keeps its frames.
//!
//! All memory here is allocated inside the profiler guard, so it comes from the inner allocator,
//! is never sampled, and is counted as the profiler's own in `Stats::profiler_bytes`. None of it
//! may abort the program: every growth is fallible, a sample that cannot be recorded is lost
//! (counted; the hook then moves its block off the raised alignment, see `alloc::unrecorded`),
//! and frees never allocate (see [`Table`]).
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::config::DEFAULT_MAX_SITES;
use crate::sampler;
use crate::sync::{self, Lock, Locks};

/// Stack id of the pseudo-site that receives samples once `max_sites` stacks exist and none can be
/// reclaimed, and the totals of reclaimed stacks.
pub(crate) const OVERFLOW_STACK: u32 = 0;
/// Buckets (stack × size × rate × tag) allowed per site on average before samples go to the
/// overflow bucket.
const BUCKETS_PER_SITE: usize = 8;
/// Stacks looked at, from the least recently sampled, to find one with no live sample.
/// Bounds the work under the table lock when the oldest stacks all hold live memory.
pub(crate) const RECLAIM_SCAN: usize = 64;
/// Live-sample shards (a power of two); the filter's exact level is sharded the same way.
const SHARD_COUNT: usize = crate::filter::SHARDS;
/// "No such id" in the intrusive lists.
const NONE: u32 = u32::MAX;

pub(crate) static MAX_SITES: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_SITES);

/// FxHash: keys here are addresses and small integers, hashed under a lock on the sampled path.
#[derive(Default, Clone, Copy)]
pub(crate) struct Fx(u64);
impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64)
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64)
    }
}
pub(crate) type FxBuild = BuildHasherDefault<Fx>;

/// A stack's return addresses, shared by the table and the snapshots that copy it: an
/// `Arc<[usize]>` whose allocation can fail. `std`'s `Arc` has no fallible constructor on stable
/// Rust, and a failed allocation inside the hook must drop the stack, not abort the program (see
/// [`Frames::try_new`]). One block: a reference count, the length, then the addresses (16 + 8n
/// bytes, as `Arc<[usize]>`).
pub(crate) struct Frames(core::ptr::NonNull<FramesHead>);

#[repr(C)]
pub(crate) struct FramesHead {
    refs: AtomicUsize,
    len: usize,
}

// SAFETY: the addresses are immutable after construction and the count is atomic, as `Arc`.
unsafe impl Send for Frames {}
// SAFETY: as above.
unsafe impl Sync for Frames {}

impl Frames {
    fn layout(len: usize) -> Option<core::alloc::Layout> {
        let (l, _) = core::alloc::Layout::new::<FramesHead>()
            .extend(core::alloc::Layout::array::<usize>(len).ok()?)
            .ok()?;
        Some(l.pad_to_align())
    }

    /// A copy of `frames`, or `None` if the global allocator cannot give the block.
    pub(crate) fn try_new(frames: &[usize]) -> Option<Frames> {
        let layout = Self::layout(frames.len())?;
        // SAFETY: the layout has a nonzero size (the header).
        let p = unsafe { std::alloc::alloc(layout) } as *mut FramesHead;
        let p = core::ptr::NonNull::new(p)?;
        // SAFETY: `p` is a fresh block of `layout`: the header, then room for `frames.len()`
        // usizes at offset `size_of::<FramesHead>()` (16, a multiple of usize's alignment).
        unsafe {
            p.as_ptr().write(FramesHead {
                refs: AtomicUsize::new(1),
                len: frames.len(),
            });
            core::ptr::copy_nonoverlapping(frames.as_ptr(), Self::data(p), frames.len());
        }
        Some(Frames(p))
    }

    fn data(p: core::ptr::NonNull<FramesHead>) -> *mut usize {
        // SAFETY: the addresses follow the header inside the same block.
        unsafe { (p.as_ptr() as *mut u8).add(core::mem::size_of::<FramesHead>()) as *mut usize }
    }

    /// Whether both are the same block (the snapshot's cache key).
    pub(crate) fn ptr_eq(a: &Frames, b: &Frames) -> bool {
        a.0 == b.0
    }
}

impl core::ops::Deref for Frames {
    type Target = [usize];
    fn deref(&self) -> &[usize] {
        // SAFETY: the block stays allocated while this reference exists; `len` addresses were
        // written at construction and never change.
        unsafe { core::slice::from_raw_parts(Self::data(self.0), self.0.as_ref().len) }
    }
}

impl Clone for Frames {
    fn clone(&self) -> Frames {
        // SAFETY: the block is live while `self` holds a reference. Relaxed, as `Arc::clone`.
        unsafe { self.0.as_ref() }.refs.fetch_add(1, Relaxed);
        Frames(self.0)
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        // SAFETY: the block is live while `self` holds a reference.
        let head = unsafe { self.0.as_ref() };
        // Release/Acquire as `Arc`: every use of the addresses happens before the free.
        if head
            .refs
            .fetch_sub(1, core::sync::atomic::Ordering::Release)
            != 1
        {
            return;
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        let len = head.len;
        if let Some(layout) = Self::layout(len) {
            // SAFETY: the last reference: allocated in `try_new` with this very layout.
            unsafe { std::alloc::dealloc(self.0.as_ptr() as *mut u8, layout) }
        }
    }
}

impl core::fmt::Debug for Frames {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        (**self).fmt(f)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct BucketKey {
    pub stack: u32,
    pub tag: u32,
    pub size: u64,
    pub rate: u64,
}

/// One bucket's counts as copied out of the table: all samples of one stack, tag, size and rate.
/// The snapshot keeps these very copies (`HeapProfile::buckets`), with `stack` renumbered to the
/// profile's stacks and `est` filled outside the lock, and the encoders read them. The overflow
/// bucket ([`OverflowSums`]) is written as one with `size == 0 && rate == 0`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Bucket {
    /// The stack: a table stack id as copied, an index into `HeapProfile::stacks` in a profile.
    pub stack: usize,
    pub tag: u32,
    pub size: u64,
    pub rate: u64,
    /// Samples taken in this bucket.
    pub allocs: u64,
    /// Of those, samples whose block has been freed (or reallocated).
    pub frees: u64,
    /// The unbiased estimates (all 0 in the table's copy: computed outside the lock).
    pub est: Estimates,
}

impl Bucket {
    fn copy(key: BucketKey, allocs: u64, frees: u64) -> Bucket {
        Bucket {
            stack: key.stack as usize,
            tag: key.tag,
            size: key.size,
            rate: key.rate,
            allocs,
            frees,
            est: Estimates::default(),
        }
    }

    /// The overflow bucket of mixed sizes and rates (see [`OverflowSums`]).
    pub(crate) fn is_overflow(&self) -> bool {
        self.size == 0 && self.rate == 0
    }

    /// The allocation size a profile labels the bucket with: its size, or for the overflow
    /// bucket the average (Go's `blockSize = AllocBytes / AllocObjects`).
    pub(crate) fn label_size(&self) -> i64 {
        if self.size == 0 && self.est.alloc_objects > 0.0 {
            (self.est.alloc_bytes / self.est.alloc_objects).round() as i64
        } else {
            self.size as i64
        }
    }
}

/// Unbiased estimates for one bucket: raw sample counts times `1 / p(size, rate)`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Estimates {
    pub alloc_objects: f64,
    pub alloc_bytes: f64,
    pub inuse_objects: f64,
    pub inuse_bytes: f64,
}

impl Estimates {
    pub(crate) fn add(&mut self, o: &Estimates) {
        self.alloc_objects += o.alloc_objects;
        self.alloc_bytes += o.alloc_bytes;
        self.inuse_objects += o.inuse_objects;
        self.inuse_bytes += o.inuse_bytes;
    }
}

/// The estimates of `allocs` samples of `size` bytes taken at `rate`, `frees` of them freed.
pub(crate) fn estimates(size: u64, rate: u64, allocs: u64, frees: u64) -> Estimates {
    let w = sampler::weight(size, rate);
    let live = allocs.saturating_sub(frees) as f64;
    Estimates {
        alloc_objects: allocs as f64 * w,
        alloc_bytes: allocs as f64 * w * size as f64,
        inuse_objects: live * w,
        inuse_bytes: live * w * size as f64,
    }
}

/// A bucket in the table.
struct Slot {
    key: BucketKey,
    allocs: u64,
    frees: u64,
    /// Counts at the start of epoch `epoch` (valid when `epoch` is the table's: see [`Peak`]).
    peak_allocs: u64,
    peak_frees: u64,
    epoch: u32,
    /// Bumped when the slot is freed, so a `Live` of an earlier occupant is recognised.
    gen: u32,
    /// Next bucket of the same stack, or next free slot.
    next: u32,
    used: bool,
}

impl Slot {
    /// Counts at the last peak capture of epoch `epoch`.
    fn at_peak(&self, epoch: u32) -> (u64, u64) {
        if self.epoch == epoch {
            (self.peak_allocs, self.peak_frees)
        } else {
            (self.allocs, self.frees)
        }
    }
    /// Keeps the counts at the last peak before the first change after it.
    fn touch(&mut self, epoch: u32) {
        if self.epoch != epoch {
            self.peak_allocs = self.allocs;
            self.peak_frees = self.frees;
            self.epoch = epoch;
        }
    }
}

/// Bucket index of the overflow bucket (see [`OverflowSums`]).
const OVERFLOW_BUCKET: u32 = u32::MAX;

/// The overflow bucket: weighted sums of what has no bucket of its own, on the frame-less
/// [`OVERFLOW_STACK`]: samples past the caps (of mixed sizes and rates, hence sums, not counts),
/// and the totals of reclaimed stacks. In-use sums are fixed point (2^-16 objects and bytes) so that adding and
/// later subtracting the same sample's weight returns exactly to 0.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct OverflowSums {
    pub samples: u64,
    pub frees: u64,
    pub alloc_objects: f64,
    pub alloc_bytes: f64,
    inuse_objects_fx: i128,
    inuse_bytes_fx: i128,
}

const FX_ONE: f64 = 65536.0;

impl OverflowSums {
    fn fixed(size: u64, rate: u64) -> (i128, i128) {
        let w = sampler::weight(size, rate);
        ((w * FX_ONE) as i128, (w * size as f64 * FX_ONE) as i128)
    }
    fn inuse_objects(&self) -> f64 {
        self.inuse_objects_fx as f64 / FX_ONE
    }
    fn inuse_bytes(&self) -> f64 {
        self.inuse_bytes_fx as f64 / FX_ONE
    }
    /// The overflow bucket as a profile holds it.
    pub fn bucket(&self) -> Bucket {
        Bucket {
            allocs: self.samples,
            frees: self.frees,
            est: Estimates {
                alloc_objects: self.alloc_objects,
                alloc_bytes: self.alloc_bytes,
                inuse_objects: self.inuse_objects(),
                inuse_bytes: self.inuse_bytes(),
            },
            ..Bucket::default()
        }
    }
    /// Adds a reclaimed bucket's `allocs` samples (of which `frees` freed, all of them when the
    /// bucket's stack had no live sample) of one size and rate.
    fn absorb(&mut self, size: u64, rate: u64, allocs: u64, frees: u64) {
        let w = sampler::weight(size, rate);
        self.samples += allocs;
        self.frees += frees;
        self.alloc_objects += allocs as f64 * w;
        self.alloc_bytes += allocs as f64 * w * size as f64;
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Live {
    bucket: u32,
    /// The bucket slot's generation when the sample was counted in it.
    gen: u32,
    size: u64,
    rate: u64,
    /// Monotonic nanoseconds at sampling, for lifetimes.
    pub born_ns: u64,
    /// Set when the sample is taken out by a free: the lifetime bin it was counted in, so that
    /// `restore_sample` (a failed realloc) can take it back out exactly.
    died_bin: Option<u8>,
    /// log2 of the alignment the block was allocated with from the inner allocator (see
    /// `filter::sample_align`); its free and realloc must pass the same. A byte: `Live` stays
    /// 40 bytes.
    inner_align_log2: u8,
}

impl Live {
    /// The alignment the block was allocated with from the inner allocator.
    pub fn inner_align(&self) -> usize {
        1 << self.inner_align_log2
    }

    /// The bytes its raised layout asks of the inner allocator beyond the caller's size, as
    /// [`SAMPLE_PADDING`] counts them: a raised block's size is rounded up to its alignment
    /// (`filter::inner_layout`); an unraised one is recorded at alignment 1 and asks nothing more.
    pub(crate) fn padding(&self) -> u64 {
        let align = self.inner_align() as u64;
        if align > 1 {
            self.size.div_ceil(align) * align - self.size
        } else {
            0
        }
    }

    /// The class that bounds the free side's address check: a large block is recognised by its
    /// size (`filter::LARGE`), whatever its alignment, so it does not lower the check.
    fn align_class(&self) -> usize {
        if self.size >= crate::filter::LARGE as u64 {
            return ALIGN_CLASSES - 1;
        }
        (self.inner_align_log2 as usize).min(ALIGN_CLASSES - 1)
    }
}

/// Alignment classes 1, 2, 4, ... up to the largest sample alignment (4 KiB).
const ALIGN_CLASSES: usize = 13;

/// Lifetime bins per stack: half-octaves of nanoseconds from 2^8 ns (256 ns) to 2^48 ns (78 h).
pub(crate) const LIFE_BINS: usize = 80;
const LIFE_MIN_LOG2: u32 = 8;
/// One stack's lifetime counts (raw freed samples per bin).
pub(crate) type LifeRow = [u32; LIFE_BINS];

/// The bin of a lifetime: `2 * (floor(log2 ns) - 8) + (next bit)`, so each octave has two bins
/// (bounds `2^k` and `1.5 * 2^k`); below 384 ns goes to bin 0, above 2^48 ns to the last.
pub(crate) fn life_bin(ns: u64) -> usize {
    if ns < 1 << LIFE_MIN_LOG2 {
        return 0;
    }
    let l = 63 - ns.leading_zeros();
    let half = ((ns >> (l - 1)) & 1) as usize;
    (2 * (l - LIFE_MIN_LOG2) as usize + half).min(LIFE_BINS - 1)
}

/// The lower bound of a lifetime bin, in nanoseconds (inverse of [`life_bin`]).
pub(crate) fn life_bin_low(bin: usize) -> u64 {
    let l = bin as u32 / 2 + LIFE_MIN_LOG2;
    (1u64 << l) + ((bin as u64 & 1) << (l - 1))
}

/// The peak capture: what the table looked like at the sampled-heap high-water mark. Bucket
/// counts at the peak live in the buckets themselves (`Slot::at_peak`); here the rest.
#[derive(Default)]
pub(crate) struct Peak {
    pub overflow_sums: OverflowSums,
    /// Sampled in-use byte estimate at the capture.
    pub inuse_bytes: f64,
    pub overflow_samples: u64,
    pub live_samples: usize,
    /// Monotonic nanoseconds of the capture.
    pub at_ns: u64,
    pub captured: bool,
    /// Buckets at the peak of stacks reclaimed since, that had samples live at the peak: their
    /// frames and counts at the peak, so the peak profile still attributes them. Emptied at
    /// the first reclamation after the next capture (see [`Table::retire_for_peak`]).
    retired: Vec<(Frames, BucketKey, u64, u64)>,
    /// The epoch `retired` belongs to.
    retired_epoch: u32,
}

/// Capture a new peak when the sampled in-use estimate passes this multiple of the last one.
const PEAK_STEP: f64 = 1.1;

/// An interned stack (or a free id, `frames == None`).
struct Stack {
    frames: Option<Frames>,
    /// [`frames_hash`] of the frames, and the next stack with the same hash (`NONE`-terminated).
    hash: u64,
    same_hash: u32,
    /// Samples of this stack counted in and not yet counted out (a free counts out after taking
    /// the sample from its shard, so this is never below the samples in the shards).
    live: u32,
    /// First bucket of this stack (chained through `Slot::next`).
    buckets: u32,
    /// Lifetime row, or `NONE` before the first sampled free.
    row: u32,
    /// Least-recently-sampled list (`NONE`-terminated); the overflow stack is not in it.
    prev: u32,
    next: u32,
}

impl Stack {
    /// A stack with no samples, buckets or lifetime row, in no list.
    fn unlinked(frames: Option<Frames>, hash: u64) -> Stack {
        Stack {
            frames,
            hash,
            same_hash: NONE,
            live: 0,
            buckets: NONE,
            row: NONE,
            prev: NONE,
            next: NONE,
        }
    }
}

/// # Never an allocation that cannot fail
///
/// Every allocation here runs inside the hook (a sampled allocation, or a free of a sampled
/// block), so none may abort the program when the inner allocator says no: each growth is a
/// `try_reserve` made before anything changes, and a stack or bucket that gets no room sends its
/// sample to the frame-less site ([`UNATTRIBUTED_SAMPLES`]). Frees never allocate: freed stacks
/// and lifetime rows are chained through themselves, and a lifetime row, created at a stack's
/// first sampled free, comes out of capacity reserved when the stack was interned
/// (`row_claims`).
struct Table {
    stacks: Vec<Stack>,
    /// Free stack ids, chained through `Stack::next` (`NONE`-terminated).
    free_stacks: u32,
    /// Interned stacks, not counting the overflow stack.
    stacks_used: usize,
    /// Frames hash -> first stack with that hash (then `Stack::same_hash`). Keyed by a hash
    /// computed before the lock, so the lock is held for one probe and one frame comparison.
    stack_index: HashMap<u64, u32, FxBuild>,
    /// Least recently sampled stack, and most recently.
    lru_head: u32,
    lru_tail: u32,
    buckets: Vec<Slot>,
    free_buckets: u32,
    buckets_used: usize,
    bucket_index: HashMap<BucketKey, u32, FxBuild>,
    overflow_sums: OverflowSums,
    rows: Vec<LifeRow>,
    /// Free rows, chained through their first cell (`NONE`-terminated), and how many.
    free_rows: u32,
    free_row_count: usize,
    /// Stacks (the frame-less one included) without a row yet. Invariant: `rows` has room for a
    /// row for each without allocating (`capacity - len + free_row_count >= row_claims`), so the
    /// first sampled free of a stack never allocates.
    row_claims: usize,
    /// Samples counted in and not yet out, and the most there ever were.
    live: usize,
    live_high: usize,
    /// Live samples by log2 of their inner alignment (capped at the largest sample alignment):
    /// the free-side check must catch the least aligned of them (see `filter`).
    live_by_align: [u32; ALIGN_CLASSES],
    samples: u64,
    overflow_samples: u64,
    reclaimed_stacks: u64,
    /// Sampled in-use bytes estimate, fixed point (2^-16 bytes), so it returns exactly to 0.
    inuse_fx: i128,
    /// Peak captures so far: bucket counts as of the last one are kept under this epoch.
    epoch: u32,
    peak: Peak,
}

impl Table {
    /// An empty table, or `None` if its first allocations fail.
    fn try_new() -> Option<Self> {
        let mut stacks = Vec::new();
        stacks.try_reserve(1).ok()?;
        // Stack 0 is the frame-less pseudo-site.
        stacks.push(Stack::unlinked(Some(Frames::try_new(&[])?), 0));
        let mut rows = Vec::new();
        // Its lifetime row's room (see `row_claims`).
        rows.try_reserve(1).ok()?;
        Some(Table {
            stacks,
            free_stacks: NONE,
            stacks_used: 0,
            stack_index: HashMap::default(),
            lru_head: NONE,
            lru_tail: NONE,
            buckets: Vec::new(),
            free_buckets: NONE,
            buckets_used: 0,
            bucket_index: HashMap::default(),
            overflow_sums: OverflowSums::default(),
            rows,
            free_rows: NONE,
            free_row_count: 0,
            row_claims: 1,
            live: 0,
            live_high: 0,
            live_by_align: [0; ALIGN_CLASSES],
            samples: 0,
            overflow_samples: 0,
            reclaimed_stacks: 0,
            inuse_fx: 0,
            epoch: 0,
            peak: Peak::default(),
        })
    }

    /// Makes room for one more stack's lifetime row (see `row_claims`); `false` if it cannot.
    fn claim_row(&mut self) -> bool {
        let spare = self.rows.capacity() - self.rows.len() + self.free_row_count;
        if spare <= self.row_claims {
            let more = self.row_claims + 1 - self.free_row_count;
            if self.rows.try_reserve(more).is_err() {
                return false;
            }
        }
        self.row_claims += 1;
        true
    }

    fn lru_unlink(&mut self, s: u32) {
        let (p, n) = (self.stacks[s as usize].prev, self.stacks[s as usize].next);
        if p == NONE {
            self.lru_head = n;
        } else {
            self.stacks[p as usize].next = n;
        }
        if n == NONE {
            self.lru_tail = p;
        } else {
            self.stacks[n as usize].prev = p;
        }
    }

    fn lru_push_back(&mut self, s: u32) {
        let t = self.lru_tail;
        self.stacks[s as usize].prev = t;
        self.stacks[s as usize].next = NONE;
        if t == NONE {
            self.lru_head = s;
        } else {
            self.stacks[t as usize].next = s;
        }
        self.lru_tail = s;
    }

    fn lru_touch(&mut self, s: u32) {
        if self.lru_tail != s {
            self.lru_unlink(s);
            self.lru_push_back(s);
        }
    }

    /// Most stacks the table may hold now: the cap, or more while every stack past the cap is
    /// matched by a live sample (see the module docs).
    fn stack_room(&self) -> usize {
        MAX_SITES.load(Relaxed).max(1).max(self.live)
    }

    /// The stack with these frames (`hash` = [`frames_hash`] of them), if interned.
    fn find_stack(&self, frames: &[usize], hash: u64) -> Option<u32> {
        let mut id = *self.stack_index.get(&hash)?;
        while id != NONE {
            let s = &self.stacks[id as usize];
            if s.frames.as_deref() == Some(frames) {
                return Some(id);
            }
            id = s.same_hash;
        }
        None
    }

    fn intern_stack(&mut self, frames: &[usize], hash: u64) -> u32 {
        if let Some(id) = self.find_stack(frames, hash) {
            self.lru_touch(id);
            return id;
        }
        let cap = MAX_SITES.load(Relaxed).max(1);
        if self.stacks_used >= cap {
            let freed = self.reclaim_one(NONE);
            if freed && self.stacks_used >= cap {
                // Above the cap (it was lowered): one more, so the table shrinks back to it.
                self.reclaim_one(NONE);
            }
            if !freed && self.stacks_used >= self.stack_room() {
                return OVERFLOW_STACK;
            }
        }
        // Room for everything a new stack takes, before anything changes; without it the sample
        // goes to the frame-less site.
        let room = self.free_stacks != NONE || self.stacks.try_reserve(1).is_ok();
        let copy = if room && self.stack_index.try_reserve(1).is_ok() {
            Frames::try_new(frames)
        } else {
            None
        };
        let Some(copy) = copy else {
            return unattributed(OVERFLOW_STACK);
        };
        if !self.claim_row() {
            return unattributed(OVERFLOW_STACK);
        }
        let stack = Stack::unlinked(Some(copy), hash);
        let id = if self.free_stacks != NONE {
            let id = self.free_stacks;
            self.free_stacks = self.stacks[id as usize].next;
            self.stacks[id as usize] = stack;
            id
        } else {
            self.stacks.push(stack);
            (self.stacks.len() - 1) as u32
        };
        if let Some(next) = self.stack_index.insert(hash, id) {
            self.stacks[id as usize].same_hash = next;
        }
        self.stacks_used += 1;
        self.lru_push_back(id);
        id
    }

    /// Did any sample of stack `s` live at the last peak capture?
    fn live_at_peak(&self, s: u32) -> bool {
        if !self.peak.captured {
            return false;
        }
        let mut b = self.stacks[s as usize].buckets;
        while b != NONE {
            let slot = &self.buckets[b as usize];
            let (a, f) = slot.at_peak(self.epoch);
            if a > f {
                return true;
            }
            b = slot.next;
        }
        false
    }

    /// Reclaims the least recently sampled stack with no live sample among the first
    /// [`RECLAIM_SCAN`] of the list, other than `keep`. Stacks passed over go to the back of the
    /// list, so the next scan looks at others.
    fn reclaim_one(&mut self, keep: u32) -> bool {
        let mut s = self.lru_head;
        for _ in 0..RECLAIM_SCAN {
            if s == NONE {
                break;
            }
            let next = self.stacks[s as usize].next;
            if s != keep && self.stacks[s as usize].live == 0 {
                self.reclaim(s);
                return true;
            }
            if s == self.lru_tail {
                break;
            }
            self.lru_touch(s);
            s = next;
        }
        false
    }

    /// Frees stack `s` (no live sample) and its buckets; its counts move to the frame-less site.
    /// Its counts at the last peak move there too, unless some of its samples were live at the
    /// peak: then they keep their frames in [`Peak::retired`].
    fn reclaim(&mut self, s: u32) {
        // When the list cannot grow, the stack's counts at the peak go to the frame-less site.
        let keep_for_peak = self.live_at_peak(s) && self.retire_for_peak(s);
        let mut b = self.stacks[s as usize].buckets;
        while b != NONE {
            let slot = &mut self.buckets[b as usize];
            let key = slot.key;
            self.overflow_sums
                .absorb(key.size, key.rate, slot.allocs, slot.frees);
            if self.peak.captured && !keep_for_peak {
                let (a, f) = slot.at_peak(self.epoch);
                self.peak.overflow_sums.absorb(key.size, key.rate, a, f);
            }
            let next = slot.next;
            slot.used = false;
            slot.gen = slot.gen.wrapping_add(1);
            slot.next = self.free_buckets;
            self.free_buckets = b;
            self.buckets_used -= 1;
            self.bucket_index.remove(&key);
            b = next;
        }
        let row = self.stacks[s as usize].row;
        if row != NONE {
            let mut old = core::mem::replace(&mut self.rows[row as usize], [0; LIFE_BINS]);
            let into = self.row_of(OVERFLOW_STACK);
            for (i, o) in into.iter_mut().zip(old) {
                *i = i.saturating_add(o);
            }
            old = [0; LIFE_BINS];
            old[0] = self.free_rows;
            self.rows[row as usize] = old;
            self.free_rows = row;
            self.free_row_count += 1;
        } else {
            self.row_claims -= 1;
        }
        self.lru_unlink(s);
        let free_head = self.free_stacks;
        let st = &mut self.stacks[s as usize];
        drop(st.frames.take());
        st.buckets = NONE;
        st.row = NONE;
        st.next = free_head;
        let (hash, next) = (st.hash, st.same_hash);
        self.unindex(s, hash, next);
        self.free_stacks = s;
        self.stacks_used -= 1;
        self.reclaimed_stacks += 1;
    }

    /// Takes stack `s` (hash `hash`, followed by `next` in its chain) out of the index.
    fn unindex(&mut self, s: u32, hash: u64, next: u32) {
        let Some(head) = self.stack_index.get_mut(&hash) else {
            return;
        };
        if *head == s {
            if next == NONE {
                self.stack_index.remove(&hash);
            } else {
                *head = next;
            }
            return;
        }
        let mut p = *head;
        while p != NONE {
            let n = self.stacks[p as usize].same_hash;
            if n == s {
                self.stacks[p as usize].same_hash = next;
                return;
            }
            p = n;
        }
    }

    /// Keeps stack `s`'s frames and counts at the last peak in [`Peak::retired`]. Entries of an
    /// earlier epoch are dropped first: the list holds only stacks retired since the last capture,
    /// at most the buckets that existed at it (each pushed once, so clearing is amortised O(1)).
    /// `false` (nothing kept) when the list cannot grow.
    fn retire_for_peak(&mut self, s: u32) -> bool {
        if self.peak.retired_epoch != self.epoch {
            self.peak.retired.clear();
            self.peak.retired_epoch = self.epoch;
        }
        let Some(frames) = self.stacks[s as usize].frames.clone() else {
            return false;
        };
        let mut n = 0;
        let mut b = self.stacks[s as usize].buckets;
        while b != NONE {
            n += 1;
            b = self.buckets[b as usize].next;
        }
        if self.peak.retired.try_reserve(n).is_err() {
            return false;
        }
        let mut b = self.stacks[s as usize].buckets;
        while b != NONE {
            let slot = &self.buckets[b as usize];
            let (a, f) = slot.at_peak(self.epoch);
            if a > 0 {
                self.peak.retired.push((frames.clone(), slot.key, a, f));
            }
            b = slot.next;
        }
        true
    }

    /// The lifetime row of stack `s`, created on first use from the room its interning
    /// reserved (`row_claims`): never an allocation, so a free never needs memory.
    fn row_of(&mut self, s: u32) -> &mut LifeRow {
        if self.stacks[s as usize].row == NONE {
            let r = if self.free_rows != NONE {
                let r = self.free_rows;
                self.free_rows = self.rows[r as usize][0];
                self.rows[r as usize][0] = 0;
                self.free_row_count -= 1;
                r
            } else {
                debug_assert!(self.rows.len() < self.rows.capacity(), "row not reserved");
                self.rows.push([0; LIFE_BINS]);
                (self.rows.len() - 1) as u32
            };
            self.row_claims -= 1;
            self.stacks[s as usize].row = r;
        }
        &mut self.rows[self.stacks[s as usize].row as usize]
    }

    fn bucket_for(&mut self, key: BucketKey) -> u32 {
        if let Some(&b) = self.bucket_index.get(&key) {
            return b;
        }
        let cap = |t: &Table| t.stack_room().saturating_mul(BUCKETS_PER_SITE);
        if self.buckets_used >= cap(self)
            && !(self.reclaim_one(key.stack) && self.buckets_used < cap(self))
        {
            return OVERFLOW_BUCKET;
        }
        let slot = |gen| Slot {
            key,
            allocs: 0,
            frees: 0,
            peak_allocs: 0,
            peak_frees: 0,
            epoch: self.epoch,
            gen,
            next: self.stacks[key.stack as usize].buckets,
            used: true,
        };
        // Room first (see `Table`): without it the sample goes to the overflow bucket.
        let room = self.free_buckets != NONE || self.buckets.try_reserve(1).is_ok();
        if !room || self.bucket_index.try_reserve(1).is_err() {
            return unattributed(OVERFLOW_BUCKET);
        }
        let b = if self.free_buckets != NONE {
            let b = self.free_buckets;
            self.free_buckets = self.buckets[b as usize].next;
            let gen = self.buckets[b as usize].gen;
            self.buckets[b as usize] = slot(gen);
            b
        } else {
            self.buckets.push(slot(0));
            (self.buckets.len() - 1) as u32
        };
        self.stacks[key.stack as usize].buckets = b;
        self.buckets_used += 1;
        self.bucket_index.insert(key, b);
        b
    }

    /// Is `live` still counted in the bucket it names (not reclaimed since)?
    fn counted_in_bucket(&self, live: &Live) -> bool {
        live.bucket != OVERFLOW_BUCKET
            && self
                .buckets
                .get(live.bucket as usize)
                .is_some_and(|s| s.used && s.gen == live.gen)
    }

    /// Counts a sample in (a new one, or one put back by `restore_sample`). Returns the sample
    /// as counted: a restored sample whose stack was reclaimed meanwhile moves to the frame-less
    /// site, where the reclaimed stack's counts went.
    fn count_in(&mut self, mut live: Live, new_sample: bool) -> Live {
        let (o, b) = OverflowSums::fixed(live.size, live.rate);
        self.inuse_fx += b;
        self.live += 1;
        SAMPLE_PADDING.fetch_add(live.padding(), Relaxed);
        // Before the block is handed (back) to the program: its free must pass the check.
        self.live_by_align[live.align_class()] += 1;
        self.publish_check_mask();
        self.live_high = self.live_high.max(self.live);
        if !new_sample && !self.counted_in_bucket(&live) {
            live.bucket = OVERFLOW_BUCKET;
        }
        let stack = if live.bucket == OVERFLOW_BUCKET {
            if new_sample {
                let w = sampler::weight(live.size, live.rate);
                self.overflow_sums.samples += 1;
                self.overflow_sums.alloc_objects += w;
                self.overflow_sums.alloc_bytes += w * live.size as f64;
            } else {
                self.overflow_sums.frees = self.overflow_sums.frees.saturating_sub(1);
            }
            self.overflow_sums.inuse_objects_fx += o;
            self.overflow_sums.inuse_bytes_fx += b;
            OVERFLOW_STACK
        } else {
            let epoch = self.epoch;
            let slot = &mut self.buckets[live.bucket as usize];
            slot.touch(epoch);
            if new_sample {
                slot.allocs += 1;
            } else {
                slot.frees -= 1;
            }
            let s = slot.key.stack;
            self.stacks[s as usize].live += 1;
            s
        };
        if let Some(bin) = live.died_bin.take() {
            // A failed realloc puts back a sample whose free was counted: uncount its lifetime.
            let cell = &mut self.row_of(stack)[bin as usize];
            *cell = cell.saturating_sub(1);
        }
        if new_sample {
            self.maybe_capture_peak();
        }
        live
    }

    /// Sets the free-side check to the least aligned live sample's alignment (all of it when
    /// none is live). Under the table lock, so lowering for a new sample and raising after the
    /// last sample of a class is freed never interleave; a free racing with a raise still finds
    /// its own block, which is at least as aligned as the new mask asks.
    fn publish_check_mask(&self) {
        let class = self
            .live_by_align
            .iter()
            .position(|&n| n > 0)
            .unwrap_or(ALIGN_CLASSES - 1);
        crate::filter::set_check_mask(1 << class);
    }

    /// Counts a sample out. `bin`: its lifetime bin (`None` when a stale entry is retired, whose
    /// death time is unknown).
    fn count_out(&mut self, live: &Live, bin: Option<usize>) {
        let (o, b) = OverflowSums::fixed(live.size, live.rate);
        self.inuse_fx -= b;
        self.live -= 1;
        SAMPLE_PADDING.fetch_sub(live.padding(), Relaxed);
        let class = &mut self.live_by_align[live.align_class()];
        *class = class.saturating_sub(1);
        self.publish_check_mask();
        let stack = if self.counted_in_bucket(live) {
            let epoch = self.epoch;
            let slot = &mut self.buckets[live.bucket as usize];
            slot.touch(epoch);
            slot.frees += 1;
            let s = slot.key.stack;
            self.stacks[s as usize].live -= 1;
            s
        } else {
            // Overflow samples (a sample's stack is never reclaimed while it is live, so every
            // other sample is still in its bucket).
            self.overflow_sums.frees += 1;
            self.overflow_sums.inuse_objects_fx -= o;
            self.overflow_sums.inuse_bytes_fx -= b;
            OVERFLOW_STACK
        };
        if let Some(bin) = bin {
            let cell = &mut self.row_of(stack)[bin];
            *cell = cell.saturating_add(1);
        }
    }

    /// Starts a new peak epoch if the sampled in-use estimate passed `PEAK_STEP` × the last
    /// captured one. O(1): bucket counts are kept lazily (see [`Slot::touch`]).
    fn maybe_capture_peak(&mut self) {
        let inuse = self.inuse_fx as f64 / FX_ONE;
        if self.peak.captured && inuse <= self.peak.inuse_bytes * PEAK_STEP {
            return;
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            // After 2^32 captures (never in practice: captures are geometric in the peak),
            // epoch 0 would look current to buckets last touched 2^32 captures ago. Bring every
            // bucket to the new epoch with its current counts, which is what it then means.
            for s in self.buckets.iter_mut() {
                s.epoch = 1;
                s.peak_allocs = s.allocs;
                s.peak_frees = s.frees;
            }
            self.epoch = 1;
        }
        self.peak.overflow_sums = self.overflow_sums;
        self.peak.inuse_bytes = inuse;
        self.peak.overflow_samples = self.overflow_samples;
        self.peak.live_samples = self.live;
        self.peak.at_ns = crate::clock::now_ns();
        self.peak.captured = true;
    }
}

static TABLE: Lock<Option<Table>> = Lock::new(&sync::SITE_TABLE_LOCK, None);

/// The hash a stack is indexed by, computed before the table lock is taken.
fn frames_hash(frames: &[usize]) -> u64 {
    let mut h = Fx::default();
    h.write_usize(frames.len());
    for &f in frames {
        h.write_usize(f);
    }
    h.finish()
}

type LiveMap = HashMap<usize, Live, FxBuild>;

/// The live-sample shards (see the module docs).
static SHARDS: Locks<Option<LiveMap>, SHARD_COUNT> =
    Locks::new(&sync::LIVE_SHARD_LOCKS, [const { None }; SHARD_COUNT]);

/// The shard of an address: the same as the free-side exact set's, so that each of its shards is
/// written only under one shard lock here.
/// (Hashed rather than masked: page-aligned blocks share their low address bits.)
fn shard_of(ptr: usize) -> usize {
    crate::filter::shard_of(ptr)
}

/// Raw sample count, readable without the lock.
pub(crate) static SAMPLES: AtomicU64 = AtomicU64::new(0);

/// What the inner allocator was asked for beyond the callers' sizes by the live sampled blocks
/// it raised (see `Live::padding`), exactly; its own rounding and alignment gaps come on top
/// (measured per allocator by `dev/examples/align_cost.rs`, docs/reliability.md).
pub(crate) static SAMPLE_PADDING: AtomicU64 = AtomicU64::new(0);

/// Samples dropped for lack of memory: not taken (no room in the live-sample index; see
/// [`record_sample`] returned `false`), or a failed `realloc`'s sample that could not be put back.
pub(crate) static LOST_SAMPLES: AtomicU64 = AtomicU64::new(0);
/// Samples counted only in the frame-less site because the table could not allocate room for
/// their stack or bucket.
pub(crate) static UNATTRIBUTED_SAMPLES: AtomicU64 = AtomicU64::new(0);

fn unattributed(id: u32) -> u32 {
    UNATTRIBUTED_SAMPLES.fetch_add(1, Relaxed);
    id
}

/// Runs `f` on the table, created on first use; `None` if it cannot be created (no memory).
fn with_table<R>(f: impl FnOnce(&mut Table) -> R) -> Option<R> {
    debug_assert!(crate::guard::in_profiler());
    let mut g = TABLE.lock();
    if g.is_none() {
        *g = Some(Table::try_new()?);
    }
    g.as_mut().map(f)
}

fn with_shard<R>(ptr: usize, f: impl FnOnce(&mut LiveMap) -> R) -> R {
    debug_assert!(crate::guard::in_profiler());
    let mut g = SHARDS.lock(shard_of(ptr));
    f(g.get_or_insert_with(HashMap::default))
}

/// Puts a counted sample in its shard and its address, with its inner alignment, in the free
/// side's exact set. A block at this address that we still think is live was freed behind our
/// back (by a different allocator, say): it is retired rather than left to leak its weight, and
/// the set takes this block's alignment. `false` if the shard or the set could not grow (nothing
/// changed then).
fn insert_live(ptr: usize, live: Live) -> bool {
    let (stale, ok) = with_shard(ptr, |m| {
        if m.try_reserve(1).is_err() || !crate::filter::raise(ptr, live.inner_align()) {
            return (None, false);
        }
        (m.insert(ptr, live), true)
    });
    if let Some(old) = stale {
        with_table(|t| t.count_out(&old, None));
    }
    ok
}

/// Records a sampled allocation; `false` if it could not be (no memory for the table, its shard
/// or the free side's exact set: counted in [`LOST_SAMPLES`]). Must run inside the
/// profiler guard, after the stack was captured (the unwinder is never called under a lock).
pub(crate) fn record_sample(
    frames: &[usize],
    ptr: *mut u8,
    size: u64,
    rate: u64,
    tag: u32,
    born_ns: u64,
    inner_align: usize,
) -> bool {
    SAMPLES.fetch_add(1, Relaxed);
    let hash = frames_hash(frames);
    let live = with_table(|t| {
        t.samples += 1;
        let stack = t.intern_stack(frames, hash);
        if stack == OVERFLOW_STACK {
            t.overflow_samples += 1;
        }
        let bucket = t.bucket_for(BucketKey {
            stack,
            tag,
            size,
            rate,
        });
        let gen = if bucket == OVERFLOW_BUCKET {
            0
        } else {
            t.buckets[bucket as usize].gen
        };
        let live = Live {
            bucket,
            gen,
            size,
            rate,
            born_ns,
            died_bin: None,
            inner_align_log2: inner_align.trailing_zeros() as u8,
        };
        t.count_in(live, true)
    });
    insert_counted(ptr, live)
}

/// Puts a sample counted in the table (`None`: not counted, no table) into its shard. If it
/// cannot go in (no memory) it is counted out again and lost; `false` then.
fn insert_counted(ptr: *mut u8, live: Option<Live>) -> bool {
    let kept = live.is_some_and(|live| {
        insert_live(ptr as usize, live) || {
            with_table(|t| t.count_out(&live, None));
            false
        }
    });
    if !kept {
        LOST_SAMPLES.fetch_add(1, Relaxed);
    }
    kept
}

/// Removes a live sample on free; `None` if `ptr` was not sampled (a filter false positive).
pub(crate) fn remove_sample(ptr: *mut u8) -> Option<Live> {
    let ptr = ptr as usize;
    let mut live = with_shard(ptr, |m| {
        let live = m.remove(&ptr)?;
        crate::filter::lower(ptr);
        Some(live)
    })?;
    // Read the clock outside the locks (vDSO, no allocation).
    let now = crate::clock::now_ns();
    let bin = life_bin(now.saturating_sub(live.born_ns));
    with_table(|t| t.count_out(&live, Some(bin)));
    live.died_bin = Some(bin as u8);
    Some(live)
}

/// Puts back a sample taken out by [`remove_sample`] when a `realloc` failed and the old block
/// is still live.
/// It needs room in its shard, like a new sample: without it the sample is lost (counted in
/// [`LOST_SAMPLES`]; the block is then the program's, unsampled, with the layout `A` gave it:
/// only a block at the caller's layout is reallocated in place).
pub(crate) fn restore_sample(ptr: *mut u8, live: Live) {
    insert_counted(ptr, with_table(|t| t.count_in(live, false)));
}

/// The lock boundary: copies what a profile needs and releases the lock. Stacks are immutable
/// while interned, so they are shared (`Arc`), not copied.
#[derive(Default)]
pub(crate) struct TableCopy {
    /// By stack id; `None` for a free id. Id 0 is the frame-less pseudo-site.
    pub stacks: StackList,
    pub buckets: Vec<Bucket>,
    pub overflow_sums: OverflowSums,
    pub live_samples: usize,
    pub overflow_samples: u64,
    /// Lifetime rows of the stacks that have any, by stack id (sparse: most stacks of a long
    /// running program have few frees sampled, and copying every row costs page faults).
    pub lifetimes: Vec<(u32, LifeRow)>,
}

/// Stacks by id (`None` for a free id), as a snapshot holds them.
type StackList = Vec<Option<Frames>>;

/// The stacks by id, and the lifetime rows of those that have one.
fn stacks_and_rows(t: &Table) -> (StackList, Vec<(u32, LifeRow)>) {
    let stacks = t.stacks.iter().map(|s| s.frames.clone()).collect();
    let rows = t
        .stacks
        .iter()
        .enumerate()
        .filter(|(_, s)| s.row != NONE)
        .map(|(i, s)| (i as u32, t.rows[s.row as usize]))
        .collect();
    (stacks, rows)
}

fn copy_table(t: &Table) -> TableCopy {
    let (stacks, lifetimes) = stacks_and_rows(t);
    TableCopy {
        stacks,
        buckets: used_buckets(t, 0, |s| (s.allocs, s.frees)),
        overflow_sums: t.overflow_sums,
        live_samples: t.live,
        overflow_samples: t.overflow_samples,
        lifetimes,
    }
}

/// The used buckets with counts, in a vector sized once for them, `extra` more and the overflow
/// bucket the snapshot appends: no regrowth under the lock, and no spare capacity (up to half the
/// vector, from doubling) kept in every profile.
fn used_buckets(t: &Table, extra: usize, counts: impl Fn(&Slot) -> (u64, u64)) -> Vec<Bucket> {
    let mut out = Vec::with_capacity(t.buckets_used + extra + 1);
    out.extend(
        t.buckets
            .iter()
            .filter(|s| s.used)
            .map(|s| {
                let (allocs, frees) = counts(s);
                Bucket::copy(s.key, allocs, frees)
            })
            .filter(|b| b.allocs > 0),
    );
    out
}

pub(crate) fn copy() -> TableCopy {
    with_table(|t| copy_table(t)).unwrap_or_default()
}

/// The table as of the last peak capture, or `None` if no sample was ever taken. Lifetime rows
/// are the current ones (distributions so far).
pub(crate) fn copy_at_peak() -> Option<(TableCopy, f64, u64)> {
    with_table(|t| {
        if !t.peak.captured {
            return None;
        }
        let epoch = t.epoch;
        let (mut stacks, lifetimes) = stacks_and_rows(t);
        let p = &t.peak;
        let retired = if p.retired_epoch == epoch {
            p.retired.len()
        } else {
            0
        };
        let mut buckets = used_buckets(t, retired, |s| s.at_peak(epoch));
        if p.retired_epoch == epoch {
            // Reclaimed since the capture but live at it: extra stack ids past the table's.
            for (frames, key, allocs, frees) in &p.retired {
                let same = matches!(stacks.last(), Some(Some(l)) if Frames::ptr_eq(l, frames))
                    && stacks.len() > t.stacks.len();
                if !same {
                    stacks.push(Some(frames.clone()));
                }
                let stack = (stacks.len() - 1) as u32;
                buckets.push(Bucket::copy(BucketKey { stack, ..*key }, *allocs, *frees));
            }
        }
        let raw = TableCopy {
            stacks,
            buckets,
            overflow_sums: p.overflow_sums,
            live_samples: p.live_samples,
            overflow_samples: p.overflow_samples,
            lifetimes,
        };
        Some((raw, p.inuse_bytes, p.at_ns))
    })
    .flatten()
}

/// Stacks interned now, stacks reclaimed so far, samples live now and the most ever live at
/// once (for tests and benchmarks).
#[doc(hidden)]
pub fn table_counts() -> (usize, u64, usize, usize) {
    crate::guard::profiler_scope(|| {
        with_table(|t| (t.stacks_used, t.reclaimed_stacks, t.live, t.live_high)).unwrap_or_default()
    })
}

/// Runs a copy of the table under the lock, as `profile()` does, and returns how long the lock
/// was held (for `dev/benches/dump.rs` and `dev/examples/lock_hold.rs`).
#[doc(hidden)]
pub fn bench_snapshot_lock_hold() -> std::time::Duration {
    crate::guard::profiler_scope(|| {
        let mut held = std::time::Duration::ZERO;
        let raw = {
            let start = std::time::Instant::now();
            let g = TABLE.lock();
            let raw = g.as_ref().map(copy_table);
            drop(g);
            held += start.elapsed();
            raw
        };
        drop(raw);
        held
    })
}

/// A copy of the buckets only (for per-tag estimates), so the weights are computed outside the
/// lock. Must run inside the profiler guard.
pub(crate) fn buckets() -> Vec<Bucket> {
    with_table(|t| used_buckets(t, 0, |s| (s.allocs, s.frees))).unwrap_or_default()
}

/// Runs `f` with every site lock held (see `crate::with_site_lock_held`). Inside the guard.
pub(crate) fn with_lock_held<R>(f: impl FnOnce() -> R) -> R {
    sync::lock_site_tables();
    let r = f();
    // SAFETY: `lock_site_tables` above took every site lock on this thread, and nothing released
    // them; no guard exists for them.
    unsafe { sync::unlock_site_tables() };
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unbiased_estimates_per_bucket() {
        // One sample of 1 MiB at 512 KiB: p = 1 - e^-2.
        let e = estimates(1 << 20, 1 << 19, 1, 0);
        let w = 1.0 / (1.0 - (-2f64).exp());
        assert!((e.alloc_objects - w).abs() < 1e-12);
        assert!((e.inuse_bytes - w * (1 << 20) as f64).abs() < 1e-6);
        let freed = estimates(1 << 20, 1 << 19, 3, 3);
        assert_eq!(freed.inuse_objects, 0.0);
        assert_eq!(freed.inuse_bytes, 0.0);
    }

    /// The per-item costs docs/reliability.md states and tests/rel_bounded.rs's bound uses.
    #[test]
    fn entry_sizes() {
        assert_eq!(core::mem::size_of::<Stack>(), 40);
        assert_eq!(core::mem::size_of::<Slot>(), 72);
        assert_eq!(core::mem::size_of::<Live>(), 40);
        assert_eq!(core::mem::size_of::<LifeRow>(), 320);
        assert_eq!(core::mem::size_of::<(u64, u32)>(), 16);
        assert_eq!(core::mem::size_of::<(BucketKey, u32)>(), 32);
        assert_eq!(core::mem::size_of::<(usize, Live)>(), 48);
    }

    /// Stacks whose hashes collide share an index entry through `same_hash`; reclaiming any of
    /// them (head, middle, last) keeps the others found, and ids are reused.
    #[test]
    fn same_hash_chain_survives_reclaim() {
        let mut t = Table::try_new().unwrap();
        let a = t.intern_stack(&[1, 2], 7);
        let b = t.intern_stack(&[3, 4], 7);
        let c = t.intern_stack(&[5], 7);
        let d = t.intern_stack(&[6], 8);
        assert_eq!([a, b, c, d], [1, 2, 3, 4]);
        assert_eq!(t.intern_stack(&[1, 2], 7), a);
        assert_eq!(t.intern_stack(&[3, 4], 7), b);
        assert_eq!(t.intern_stack(&[5], 7), c);
        t.reclaim(b);
        assert_eq!(t.find_stack(&[3, 4], 7), None);
        assert_eq!(t.find_stack(&[1, 2], 7), Some(a));
        assert_eq!(t.find_stack(&[5], 7), Some(c));
        t.reclaim(c);
        assert_eq!(t.find_stack(&[5], 7), None);
        assert_eq!(t.find_stack(&[1, 2], 7), Some(a));
        t.reclaim(a);
        assert_eq!(t.find_stack(&[1, 2], 7), None);
        assert!(!t.stack_index.contains_key(&7));
        assert_eq!(t.find_stack(&[6], 8), Some(d));
        assert_eq!((t.stacks_used, t.reclaimed_stacks), (1, 3));
        let e = t.intern_stack(&[7], 7);
        assert!([a, b, c].contains(&e), "id {e} not reused");
        assert_eq!(t.find_stack(&[7], 7), Some(e));
        // The least-recently-sampled list holds exactly the interned stacks.
        let mut n = 0;
        let mut s = t.lru_head;
        while s != NONE {
            n += 1;
            s = t.stacks[s as usize].next;
        }
        assert_eq!(n, t.stacks_used);
    }
}
