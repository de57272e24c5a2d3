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
//! * **The filter** ([`crate::filter`]) is raised for every live sample and lowered when it is
//!   taken out, under the lock; a free consults it without the lock before coming here.
//!
//! * **Lifetimes**: each stack has a fixed row of [`LIFE_BINS`] half-octave counters; freeing a
//!   sampled block adds one to the bin of its age (allocation to free, from `Live::born_ns`).
//!   The row is allocated when the stack is interned, so the free path only increments a counter
//!   under the lock it already holds: no allocation, no unbounded log, nothing lost between two
//!   dumps (a ring buffer would drop lifetimes when nobody dumps for a while). Cost: 320 bytes per
//!   stack, bounded by the site cap. `profile()` copies the rows and turns them into histograms.
//! * **Peak**: the table keeps the sampled in-use byte estimate (fixed point, like the overflow
//!   sums) and, when a new sample lifts it past 1.1 × the last captured peak, copies the bucket
//!   counts into a reused buffer: O(buckets) per capture, and captures are geometric in the peak
//!   (about 25 per 10× growth), so rare. Only sampled allocations can trigger one; the unsampled
//!   path never sees it. `heapsight::peak_profile()` builds a profile from that copy.
//!
//! All memory here is allocated inside the profiler guard, so it comes from the inner allocator,
//! is never sampled, and is counted as the profiler's own in `Stats::profiler_bytes`.
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
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
    /// Set when the sample is taken out by a free: the lifetime bin it was counted in, so that
    /// `restore_sample` (a failed realloc) can take it back out exactly.
    died_bin: Option<u8>,
}

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

/// The peak capture: bucket counts at the sampled-heap high-water mark.
#[derive(Default)]
pub(crate) struct Peak {
    pub buckets: Vec<Bucket>,
    pub mixed: MixedSums,
    /// Sampled in-use byte estimate at the capture.
    pub inuse_bytes: f64,
    pub stacks: usize,
    pub overflow_samples: u64,
    pub live_samples: usize,
    /// Monotonic nanoseconds of the capture.
    pub at_ns: u64,
    pub captured: bool,
}

/// Capture a new peak when the sampled in-use estimate passes this multiple of the last one.
const PEAK_STEP: f64 = 1.1;

struct Table {
    stacks: Vec<Arc<[usize]>>,
    stack_index: HashMap<Arc<[usize]>, u32, FxBuild>,
    buckets: Vec<Bucket>,
    bucket_index: HashMap<BucketKey, u32, FxBuild>,
    mixed: MixedSums,
    live: HashMap<usize, Live, FxBuild>,
    samples: u64,
    overflow_samples: u64,
    /// Lifetime bins, one row per stack id.
    lifetimes: Vec<LifeRow>,
    /// Stack ids whose row has ever been written, so a snapshot copies only those rows, and the
    /// per-stack flag that keeps each id in that list once.
    life_used: Vec<u32>,
    life_flag: Vec<bool>,
    /// Sampled in-use bytes estimate, fixed point (2^-16 bytes), so it returns exactly to 0.
    inuse_fx: i128,
    peak: Peak,
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
            lifetimes: vec![[0; LIFE_BINS]],
            life_used: Vec::new(),
            life_flag: vec![false],
            inuse_fx: 0,
            peak: Peak::default(),
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
        self.lifetimes.push([0; LIFE_BINS]);
        self.life_flag.push(false);
        id
    }

    fn bucket_for(&mut self, key: BucketKey) -> u32 {
        if let Some(&b) = self.bucket_index.get(&key) {
            return b;
        }
        if self.buckets.len()
            >= MAX_SITES
                .load(Relaxed)
                .max(1)
                .saturating_mul(BUCKETS_PER_SITE)
        {
            return MIXED;
        }
        let b = self.buckets.len() as u32;
        self.buckets.push(Bucket {
            key,
            allocs: 0,
            frees: 0,
        });
        self.bucket_index.insert(key, b);
        b
    }

    /// The stack a live sample belongs to (overflow-bucket samples count as the overflow site).
    fn stack_of(&self, live: &Live) -> usize {
        if live.bucket == MIXED {
            OVERFLOW_STACK as usize
        } else {
            self.buckets[live.bucket as usize].key.stack as usize
        }
    }

    /// Takes a live sample out. `now_ns`: the time of the free, to count its lifetime (`None`
    /// when a stale entry is retired, whose death time is unknown).
    fn take_live(&mut self, ptr: usize, now_ns: Option<u64>) -> Option<Live> {
        let mut live = self.live.remove(&ptr)?;
        crate::filter::lower(ptr);
        let (o, b) = MixedSums::fixed(live.size, live.rate);
        self.inuse_fx -= b;
        if live.bucket == MIXED {
            self.mixed.frees += 1;
            self.mixed.inuse_objects_fx -= o;
            self.mixed.inuse_bytes_fx -= b;
        } else {
            self.buckets[live.bucket as usize].frees += 1;
        }
        if let Some(now) = now_ns {
            let bin = life_bin(now.saturating_sub(live.born_ns));
            let stack = self.stack_of(&live);
            if !self.life_flag[stack] {
                // First lifetime of this stack: remember the row (once per stack, so bounded by
                // the site cap like the rows themselves).
                self.life_flag[stack] = true;
                self.life_used.push(stack as u32);
            }
            let cell = &mut self.lifetimes[stack][bin];
            *cell = cell.saturating_add(1);
            live.died_bin = Some(bin as u8);
        }
        Some(live)
    }

    /// Copies the bucket counts as the new peak if the sampled in-use estimate passed
    /// `PEAK_STEP` × the last captured one. `clone_from` reuses the buffer's capacity, so a
    /// capture allocates only when the bucket count grew past every earlier capture.
    fn maybe_capture_peak(&mut self) {
        let inuse = self.inuse_fx as f64 / FX_ONE;
        if self.peak.captured && inuse <= self.peak.inuse_bytes * PEAK_STEP {
            return;
        }
        self.peak.buckets.clone_from(&self.buckets);
        self.peak.mixed = self.mixed;
        self.peak.inuse_bytes = inuse;
        self.peak.stacks = self.stacks.len();
        self.peak.overflow_samples = self.overflow_samples;
        self.peak.live_samples = self.live.len();
        self.peak.at_ns = crate::alloc::now_ns();
        self.peak.captured = true;
    }

    fn put_live(&mut self, ptr: usize, mut live: Live, new_sample: bool) {
        let (o, b) = MixedSums::fixed(live.size, live.rate);
        self.inuse_fx += b;
        if let Some(bin) = live.died_bin.take() {
            // A failed realloc puts back a sample whose free was counted: uncount its lifetime.
            let stack = self.stack_of(&live);
            let cell = &mut self.lifetimes[stack][bin as usize];
            *cell = cell.saturating_sub(1);
        }
        if live.bucket == MIXED {
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
            self.take_live(ptr, None);
        }
        self.live.insert(ptr, live);
        crate::filter::raise(ptr);
        if new_sample {
            self.maybe_capture_peak();
        }
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
pub(crate) fn record_sample(
    frames: &[usize],
    ptr: *mut u8,
    size: u64,
    rate: u64,
    tag: u32,
    born_ns: u64,
) {
    SAMPLES.fetch_add(1, Relaxed);
    with_table(|t| {
        t.samples += 1;
        let stack = t.intern_stack(frames);
        if stack == OVERFLOW_STACK {
            t.overflow_samples += 1;
        }
        let bucket = t.bucket_for(BucketKey {
            stack,
            tag,
            size,
            rate,
        });
        t.put_live(
            ptr as usize,
            Live {
                bucket,
                size,
                rate,
                born_ns,
                died_bin: None,
            },
            true,
        );
    })
}

/// Removes a live sample on free; `None` if `ptr` was not sampled (a filter false positive).
pub(crate) fn remove_sample(ptr: *mut u8) -> Option<Live> {
    // Read the clock before the lock (vDSO, no allocation): the lock is held for the table only.
    let now = crate::alloc::now_ns();
    with_table(|t| t.take_live(ptr as usize, Some(now)))
}

/// Puts back a sample taken out by [`remove_sample`] when a `realloc` failed and the old block
/// is still live.
pub(crate) fn restore_sample(ptr: *mut u8, live: Live) {
    with_table(|t| t.put_live(ptr as usize, live, false))
}

/// The lock boundary: copies what a profile needs and releases the lock. Stacks are immutable
/// once interned, so they are shared (`Arc`), not copied.
#[derive(Default)]
pub(crate) struct RawTable {
    pub stacks: Vec<Arc<[usize]>>,
    pub buckets: Vec<Bucket>,
    pub mixed: MixedSums,
    pub live_samples: usize,
    pub overflow_samples: u64,
    /// Lifetime rows of the stacks that have any, by stack id (sparse: most stacks of a long
    /// running program have few frees sampled, and copying every row costs page faults).
    pub lifetimes: Vec<(u32, LifeRow)>,
}

/// The lifetime rows ever written, of stacks below `stacks`.
fn used_rows(t: &Table, stacks: usize) -> Vec<(u32, LifeRow)> {
    t.life_used
        .iter()
        .filter(|&&s| (s as usize) < stacks)
        .map(|&s| (s, t.lifetimes[s as usize]))
        .collect()
}

fn copy_raw(t: &Table) -> RawTable {
    RawTable {
        stacks: t.stacks.clone(),
        buckets: t.buckets.clone(),
        mixed: t.mixed,
        live_samples: t.live.len(),
        overflow_samples: t.overflow_samples,
        lifetimes: used_rows(t, t.stacks.len()),
    }
}

pub(crate) fn snapshot() -> RawTable {
    with_table(|t| copy_raw(t))
}

/// The table as of the last peak capture, with the stacks interned by then, or `None` if no
/// sample was ever taken. Lifetime rows are the current ones (distributions so far).
pub(crate) fn peak_snapshot() -> Option<(RawTable, f64, u64)> {
    with_table(|t| {
        let p = &t.peak;
        if !p.captured {
            return None;
        }
        let raw = RawTable {
            stacks: t.stacks[..p.stacks].to_vec(),
            buckets: p.buckets.clone(),
            mixed: p.mixed,
            live_samples: p.live_samples,
            overflow_samples: p.overflow_samples,
            lifetimes: used_rows(t, p.stacks),
        };
        Some((raw, p.inuse_bytes, p.at_ns))
    })
}

/// Runs a copy of the table under the lock, as `profile()` does, and returns how long the lock
/// was held (for `benches/dump.rs`).
#[doc(hidden)]
pub fn bench_snapshot_lock_hold() -> std::time::Duration {
    crate::guard::profiler_scope(|| {
        let mut held = std::time::Duration::ZERO;
        let raw = {
            let start = std::time::Instant::now();
            let mut g = TABLE.lock();
            let raw = copy_raw(g.get_or_insert_with(Table::new));
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
    with_table(|t| t.buckets.clone())
}

/// Runs `f` with the table lock held (see `crate::with_site_lock_held`). Inside the guard.
pub(crate) fn with_lock_held<R>(f: impl FnOnce() -> R) -> R {
    with_table(|_| f())
}

/// `pthread_atfork` handlers: hold the stack-cache and symbol-cache locks, the DWARF unwinder's fork gate and the
/// site lock across `fork()`, so the child never inherits them held by a thread that does not
/// exist there (see `sync`). The cache lock first: its holder (a `profile()` symbolizing) finishes
/// without needing anything the forking thread holds; then the gate (captures in progress finish,
/// new ones do not wait); the site lock last, held only for the fork itself.
pub(crate) extern "C" fn atfork_prepare() {
    crate::snapshot::lock_for_fork();
    crate::symbols::lock_for_fork();
    crate::stack::fork_gate_close();
    TABLE.raw_lock();
}
pub(crate) extern "C" fn atfork_parent() {
    atfork_release(false)
}
pub(crate) extern "C" fn atfork_child() {
    atfork_release(true)
}
fn atfork_release(child: bool) {
    // SAFETY: both locks were taken by `atfork_prepare` on the forking thread, which is the
    // thread running this (in the parent) or its only copy (in the child).
    unsafe {
        TABLE.raw_unlock();
        crate::stack::fork_gate_open(child);
        crate::symbols::unlock_after_fork();
        crate::snapshot::unlock_after_fork();
    }
}
