//! The site table: the only shared mutable state of the profiler, behind the only hook lock.
//!
//! * **Stacks** are interned: `stack id -> return addresses`, at most `max_sites` of them; past the
//!   cap a sample's stack becomes [`OVERFLOW_STACK`], one counted pseudo-site.
//! * **Buckets** are keyed by `(stack, tag, size, rate)` and count raw samples taken and freed.
//!   Keying by size and rate is what makes unbiasing exact: every sample in a bucket has the same
//!   weight `1/p(size, rate)`, so `count × weight` is the sum of per-sample weights (Go keys its
//!   buckets by stack and size for the same reason). Estimates are derived from integer counts,
//!   so a site whose blocks are all freed shows exactly 0 in use, never a rounding residue.
//! * **Live samples**: `address -> bucket` for sampled blocks not yet freed, so a free can take its
//!   block's contribution out at once: in-use is live, not as of some earlier collection.
//! * **The filter**: a 256 KiB table of saturating 8-bit counters indexed by address bits, raised
//!   for every live sample. A free reads one byte of it without a lock; only a nonzero byte sends it
//!   to the table. With `L` live samples the false-positive rate is at most `L / 2^18`
//!   (about 0.8% at 2,000 live samples, a 1 GiB heap at the default rate).
//!
//! All memory here is allocated inside the profiler guard, so it comes from the inner allocator,
//! is never sampled, and is counted as the profiler's own in `Stats::profiler_bytes`.
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use crate::sampler;
use crate::sync::SpinLock;

/// Stack id of the pseudo-site that receives samples once `max_sites` stacks exist.
pub(crate) const OVERFLOW_STACK: u32 = 0;
/// Default cap on distinct stacks. Each costs about its depth × 8 bytes plus ~100 bytes of index.
pub const DEFAULT_MAX_SITES: usize = 16_384;
/// Buckets (stack × size × rate × tag) allowed per site on average before samples go to the
/// overflow bucket.
const BUCKETS_PER_SITE: usize = 8;

pub(crate) static MAX_SITES: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_SITES);

const FILTER_BITS: u32 = 18;
const FILTER_LEN: usize = 1 << FILTER_BITS;
static FILTER: [AtomicU8; FILTER_LEN] = [const { AtomicU8::new(0) }; FILTER_LEN];

#[inline(always)]
fn filter_index(ptr: usize) -> usize {
    // Blocks are at least 16-byte aligned; bits 4..22 differ between neighbouring blocks.
    (ptr >> 4) & (FILTER_LEN - 1)
}

/// May `ptr` be a live sampled block? `false` is certain; `true` must be checked in the table.
#[inline(always)]
pub(crate) fn maybe_sampled(ptr: *mut u8) -> bool {
    FILTER[filter_index(ptr as usize)].load(Relaxed) != 0
}

/// The mask a thread's free path uses while it has a counter slot installed.
pub(crate) const FREE_MASK: usize = FILTER_LEN - 1;

/// The free fast path's one test: `true` when the free must go to the slow path, because the
/// block may be sampled *or* the thread has no slot to count into. `mask` is the thread's
/// `free_mask`: [`FREE_MASK`] while a slot is installed, 0 while not (new thread, profiler guard,
/// exited). With mask 0 every address reads filter byte 0, which [`arm_inactive_byte`] keeps at
/// 255 (sticky: samples never lower it), so "no slot" costs the fast path no test of its own.
/// Real blocks whose address maps to byte 0 (1 in 2^18) always take the slow path, like a filter
/// false positive.
#[inline(always)]
pub(crate) fn free_needs_slow_path(ptr: *mut u8, mask: usize) -> bool {
    debug_assert!(mask == 0 || mask == FREE_MASK);
    let i = ((ptr as usize) >> 4) & mask;
    // SAFETY: `mask` is a thread's `free_mask`, only ever 0 or `FREE_MASK = FILTER_LEN - 1`, so
    // `i < FILTER_LEN`. (Unchecked because the compiler cannot see that, and a bounds check
    // would add two instructions to every free.)
    unsafe { FILTER.get_unchecked(i) }.load(Relaxed) != 0
}

/// Sets filter byte 0 for good (see [`free_needs_slow_path`]). Called by global set-up and on
/// every guard entry, before any thread can run the free path with mask 0: a block reaches a
/// slot-less free only after some thread allocated it, and every allocating thread passed here
/// first (thread set-up or guard), so the store happens-before the free that reads it.
pub(crate) fn arm_inactive_byte() {
    if FILTER[0].load(Relaxed) != u8::MAX {
        FILTER[0].store(u8::MAX, Relaxed);
    }
}

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

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct BucketKey {
    pub stack: u32,
    pub tag: u32,
    pub size: u64,
    pub rate: u64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Bucket {
    pub key: BucketKey,
    /// Samples taken in this bucket.
    pub allocs: u64,
    /// Of those, samples whose block has been freed (or reallocated).
    pub frees: u64,
}

/// Bucket index meaning "the overflow bucket", whose samples have mixed sizes and rates.
const MIXED: u32 = u32::MAX;

/// Weighted sums for the overflow bucket. In-use sums are fixed point (2^-16 objects and bytes)
/// so that adding and later subtracting the same sample's weight returns exactly to 0.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct MixedSums {
    pub samples: u64,
    pub frees: u64,
    pub alloc_objects: f64,
    pub alloc_bytes: f64,
    inuse_objects_fx: i128,
    inuse_bytes_fx: i128,
}

const FX_ONE: f64 = 65536.0;

impl MixedSums {
    fn fixed(size: u64, rate: u64) -> (i128, i128) {
        let w = sampler::weight(size, rate);
        ((w * FX_ONE) as i128, (w * size as f64 * FX_ONE) as i128)
    }
    pub fn inuse_objects(&self) -> f64 {
        self.inuse_objects_fx as f64 / FX_ONE
    }
    pub fn inuse_bytes(&self) -> f64 {
        self.inuse_bytes_fx as f64 / FX_ONE
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Live {
    bucket: u32,
    size: u64,
    rate: u64,
    /// Monotonic nanoseconds at sampling, for lifetimes.
    pub born_ns: u64,
}

struct Table {
    stacks: Vec<Arc<[usize]>>,
    stack_index: HashMap<Arc<[usize]>, u32, FxBuild>,
    buckets: Vec<Bucket>,
    bucket_index: HashMap<BucketKey, u32, FxBuild>,
    mixed: MixedSums,
    live: HashMap<usize, Live, FxBuild>,
    samples: u64,
    overflow_samples: u64,
}

impl Table {
    fn new() -> Self {
        Table {
            // Stack 0 is the overflow pseudo-site; it has no frames.
            stacks: vec![Arc::from(&[][..])],
            stack_index: HashMap::default(),
            buckets: Vec::new(),
            bucket_index: HashMap::default(),
            mixed: MixedSums::default(),
            live: HashMap::default(),
            samples: 0,
            overflow_samples: 0,
        }
    }

    fn intern_stack(&mut self, frames: &[usize]) -> u32 {
        if let Some(&id) = self.stack_index.get(frames) {
            return id;
        }
        // `stacks` holds the overflow entry too, hence `<=`.
        if self.stacks.len() > MAX_SITES.load(Relaxed).max(1) {
            return OVERFLOW_STACK;
        }
        let id = self.stacks.len() as u32;
        let arc: Arc<[usize]> = Arc::from(frames);
        self.stacks.push(arc.clone());
        self.stack_index.insert(arc, id);
        id
    }

    fn bucket_for(&mut self, key: BucketKey) -> u32 {
        if let Some(&b) = self.bucket_index.get(&key) {
            return b;
        }
        if self.buckets.len() >= MAX_SITES.load(Relaxed).max(1).saturating_mul(BUCKETS_PER_SITE) {
            return MIXED;
        }
        let b = self.buckets.len() as u32;
        self.buckets.push(Bucket { key, allocs: 0, frees: 0 });
        self.bucket_index.insert(key, b);
        b
    }

    fn take_live(&mut self, ptr: usize) -> Option<Live> {
        let live = self.live.remove(&ptr)?;
        filter_lower(ptr);
        if live.bucket == MIXED {
            let (o, b) = MixedSums::fixed(live.size, live.rate);
            self.mixed.frees += 1;
            self.mixed.inuse_objects_fx -= o;
            self.mixed.inuse_bytes_fx -= b;
        } else {
            self.buckets[live.bucket as usize].frees += 1;
        }
        Some(live)
    }

    fn put_live(&mut self, ptr: usize, live: Live, new_sample: bool) {
        if live.bucket == MIXED {
            let (o, b) = MixedSums::fixed(live.size, live.rate);
            if new_sample {
                let w = sampler::weight(live.size, live.rate);
                self.mixed.samples += 1;
                self.mixed.alloc_objects += w;
                self.mixed.alloc_bytes += w * live.size as f64;
            } else {
                self.mixed.frees -= 1;
            }
            self.mixed.inuse_objects_fx += o;
            self.mixed.inuse_bytes_fx += b;
        } else {
            let bucket = &mut self.buckets[live.bucket as usize];
            if new_sample {
                bucket.allocs += 1;
            } else {
                bucket.frees -= 1;
            }
        }
        // A block at this address that we still think is live was freed behind our back (by a
        // different allocator, say): retire it rather than leak its weight.
        if self.live.contains_key(&ptr) {
            self.take_live(ptr);
        }
        self.live.insert(ptr, live);
        filter_raise(ptr);
    }
}

fn filter_raise(ptr: usize) {
    let cell = &FILTER[filter_index(ptr)];
    let v = cell.load(Relaxed);
    // 255 is sticky: a cell that saturated can no longer count its samples out, so it stays set
    // (frees through it then always check the table, which stays correct).
    if v < u8::MAX {
        cell.store(v + 1, Relaxed);
    }
}

fn filter_lower(ptr: usize) {
    let cell = &FILTER[filter_index(ptr)];
    let v = cell.load(Relaxed);
    if v > 0 && v < u8::MAX {
        cell.store(v - 1, Relaxed);
    }
}

static TABLE: SpinLock<Option<Table>> = SpinLock::new(None);

/// Raw sample count, readable without the lock.
pub(crate) static SAMPLES: AtomicU64 = AtomicU64::new(0);

fn with_table<R>(f: impl FnOnce(&mut Table) -> R) -> R {
    debug_assert!(crate::guard::in_profiler());
    let mut g = TABLE.lock();
    f(g.get_or_insert_with(Table::new))
}

/// Records a sampled allocation. Must run inside the profiler guard, after the stack was captured
/// (the unwinder is never called under the lock).
pub(crate) fn record_sample(frames: &[usize], ptr: *mut u8, size: u64, rate: u64, tag: u32, born_ns: u64) {
    SAMPLES.fetch_add(1, Relaxed);
    with_table(|t| {
        t.samples += 1;
        let stack = t.intern_stack(frames);
        if stack == OVERFLOW_STACK {
            t.overflow_samples += 1;
        }
        let bucket = t.bucket_for(BucketKey { stack, tag, size, rate });
        t.put_live(ptr as usize, Live { bucket, size, rate, born_ns }, true);
    })
}

/// Removes a live sample on free; `None` if `ptr` was not sampled (a filter false positive).
pub(crate) fn remove_sample(ptr: *mut u8) -> Option<Live> {
    with_table(|t| t.take_live(ptr as usize))
}

/// Puts back a sample taken out by [`remove_sample`] when a `realloc` failed and the old block
/// is still live.
pub(crate) fn restore_sample(ptr: *mut u8, live: Live) {
    with_table(|t| t.put_live(ptr as usize, live, false))
}

/// The lock boundary: copies what a profile needs and releases the lock. Stacks are immutable
/// once interned, so they are shared (`Arc`), not copied.
pub(crate) struct RawTable {
    pub stacks: Vec<Arc<[usize]>>,
    pub buckets: Vec<Bucket>,
    pub mixed: MixedSums,
    pub live_samples: usize,
    pub samples: u64,
    pub overflow_samples: u64,
}

pub(crate) fn snapshot() -> RawTable {
    with_table(|t| RawTable {
        stacks: t.stacks.clone(),
        buckets: t.buckets.clone(),
        mixed: t.mixed,
        live_samples: t.live.len(),
        samples: t.samples,
        overflow_samples: t.overflow_samples,
    })
}

/// Counts that `stats()` reports without copying the table.
pub(crate) fn table_counts() -> (usize, usize, u64) {
    with_table(|t| (t.stacks.len() - 1, t.live.len(), t.overflow_samples))
}

/// `pthread_atfork` handlers: hold the site lock across `fork()` so the child never inherits it
/// locked by a thread that does not exist there.
pub(crate) extern "C" fn atfork_prepare() {
    TABLE.raw_lock();
}
pub(crate) extern "C" fn atfork_release() {
    // SAFETY: taken by `atfork_prepare` on the forking thread, which is the thread running this
    // (in the parent) or its only copy (in the child).
    unsafe { TABLE.raw_unlock() }
}
