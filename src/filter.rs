//! The free side's check: may this block be a live sample?
//!
//! Every free asks, so the answer must come from the block's address alone, with no table read
//! on the common path. Sampled blocks are made recognisable by where they are: a sampled
//! allocation is asked of the inner allocator with its alignment raised to [`sample_align`]
//! (4 KiB at the default rate), so the low bits of a sampled block's address are zero, and a free
//! whose address has any of those bits set ([`CHECK_MASK`]) is certainly not a sample: one
//! `test` against a word that stays in L1, whatever the number of live samples.
//!
//! # Cost and precision
//!
//! A free whose address *is* aligned that much (a false positive) asks [`is_sampled`], an exact,
//! lock-free set of the live sampled addresses, before it reads the clock or takes a lock. How
//! often that happens depends on the inner allocator, not on the number of live samples: glibc's
//! small blocks are 16-byte aligned chunks, so about 1 in 256 lands on a 4 KiB boundary; blocks
//! from size classes that are multiples of 4 KiB (mimalloc, jemalloc) always do, and pay one
//! probe on a free that costs the allocator far more. docs/benches.md has the measured rates.
//!
//! Blocks of [`LARGE`] (64 KiB) or more are the exception: they are sampled at the caller's
//! alignment and every free of one asks the exact set (one probe, next to the allocator's own
//! cost of freeing 64 KiB).
//!
//! The price is memory and moves: a sampled small block is asked with its size rounded up to its
//! raised alignment ([`inner_layout`]: the block then sits in a size class of its own, so a
//! freed sample's chunk is not handed back to the loop that allocated it), and a `realloc` that
//! takes a small block into or out of sampling moves it (allocate, copy, free) rather than
//! resize it in place, since the inner allocator must see one layout for a block throughout.
//! [`sample_align`] is at most `rate / 128`; measured at the default rate (256 MiB of live
//! blocks of one size, `dev/examples/align_cost.rs`, docs/reliability.md §19), samples cost
//! 0.65–1.09% of the bytes they stand for over glibc, mimalloc and jemalloc.
//! `Stats::sample_padding_bytes` is exactly what live samples ask beyond their sizes.
//!
//! # The exact level
//!
//! [`sampled_align`] is an exact, lock-free map from each live sampled address to the alignment
//! its block was allocated with from the inner allocator (open addressing, linear probing,
//! tombstones). It is the one owner of "the layout `A` saw" for a sampled block: every free and
//! realloc of a block that may be sampled asks it, inside the guard or out, in a signal handler,
//! with or without a site lock held, so no free needs the site table to know it (the caller's
//! size with this alignment is the block's inner layout). It is split into [`SHARDS`] independent
//! sets, one per live-sample shard of the site table ([`shard_of`]): shard `i` is written only
//! under that shard's lock (its only writer), readers are the free paths of every thread,
//! lock-free. Writers insert and delete in place; when tombstones or growth call for it they
//! rebuild into a second table and publish it. Tables are never freed (a reader may still probe
//! an old one): a retired table is reused as the next rebuild target when it has the right
//! capacity, and capacities only grow, so all tables together take at most four times the
//! largest. A rebuild sizes the table to 2–4 slots (16 bytes each: address and alignment) per
//! live sample: at 200,000 live samples 2^19 slots, 8 MiB. A reader that may have probed a table
//! while it was rebuilt sees the rebuild's sequence number and probes again (a seqlock whose only
//! writer holds the shard lock; the table being rebuilt is never the published one, so a probe
//! that saw no sequence change is whole even if it began mid-rebuild).
//!
//! # Probe bound
//!
//! The shard is the top [`SHARD_BITS`] bits of the address's hash, a slot's home the bits below
//! them: independent, so a shard's addresses spread over its whole table. Every table keeps at
//! least a quarter of its slots empty (a rebuild leaves at most half used), so linear probing
//! looks at ½(1 + 1/(1−α)) slots on average for a present address and ½(1 + 1/(1−α)²) for an
//! absent one, α ≤ ¾ the used fraction (Knuth): at most 2.5 and 8.5 slots, four to a cache line.
//! `tests::probe_lengths_stay_bounded_at_200k_samples` checks it against a table of 200,000.
use core::alloc::Layout;
use core::sync::atomic::{fence, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};

/// The largest alignment a sample is given: 4 KiB (a page).
const MAX_SAMPLE_ALIGN: usize = 4096;

/// The least inner alignment of any live sample, minus one ([`set_check_mask`]): every live
/// sampled block has these address bits zero. 4 KiB − 1 while no sample is live.
static CHECK_MASK: AtomicUsize = AtomicUsize::new(MAX_SAMPLE_ALIGN - 1);

/// The alignment a sample taken at `rate` asks of the inner allocator: the largest power of two
/// up to `rate / 128` (the alignment asked is at most 1/128 of what the sample stands for; what the
/// inner allocator spends on it is measured in docs/reliability.md §15), at
/// most 4 KiB. Below 32 (rates under 4 KiB, where most allocations are samples) it is 1: no
/// block is raised, and every free checks the exact set.
pub(crate) fn sample_align(rate: u64) -> usize {
    let cap = (rate / 128).min(MAX_SAMPLE_ALIGN as u64) as usize;
    if cap < 32 {
        return 1;
    }
    1 << (usize::BITS - 1 - cap.leading_zeros())
}

/// Makes the free check catch every block aligned to `align` (a power of two): called by the
/// site table, under its lock, with the least alignment of any live sample, before a new sample
/// is handed out and after one is freed.
pub(crate) fn set_check_mask(align: usize) {
    // Relaxed: a sample's block is handed to the program only after this store, and its free
    // happens after that (in any program without a data race on the pointer), so the free's load
    // sees this value or a later one by coherence; every later one is also at most the block's
    // alignment minus one while the block is live.
    CHECK_MASK.store(align - 1, Relaxed);
}

/// Blocks of at least this many bytes are sampled at the caller's alignment and checked on every
/// free: a `realloc` of a sampled block then resizes in place as `A` would (a large block is
/// the one most likely to be sampled, and the costliest to move), and one probe is nothing next
/// to what freeing 64 KiB costs the allocator. It is the free countdown's length, so such a free
/// always leaves the fast path on the countdown test: the size costs the fast path nothing.
pub(crate) const LARGE: usize = crate::counters::FREE_FLUSH as usize;

/// May the block at `ptr` be a live sample, as far as its address tells? `false` is certain for
/// blocks under [`LARGE`] bytes (larger ones never reach this test on the fast path; see
/// [`maybe_sampled_sized`]); `true` must be checked with [`is_sampled`]. The free fast path's
/// test.
#[inline(always)]
pub(crate) fn maybe_sampled(ptr: *mut u8) -> bool {
    ptr as usize & CHECK_MASK.load(Relaxed) == 0
}

/// [`maybe_sampled`] for a block of `size` bytes, off the fast path.
pub(crate) fn maybe_sampled_sized(ptr: *mut u8, size: usize) -> bool {
    maybe_sampled(ptr) || size >= LARGE
}

/// The alignment to ask of the inner allocator for a sample of `layout` taken at `rate`.
pub(crate) fn sample_layout_align(rate: u64, size: usize, align: usize) -> usize {
    if size >= LARGE {
        align
    } else {
        sample_align(rate).max(align)
    }
}

/// The layout a block the caller asked with `layout` is given to the inner allocator with, when
/// it is allocated at `inner_align` (the block's recorded alignment: the caller's own, or a
/// sample's raised one). A raised block also has its size rounded up to `inner_align`: the block
/// then belongs to a size class of its own in the inner allocator, so that once the sample is freed
/// the loop that allocated it is not handed that aligned address back. glibc's tcache would
/// otherwise give the freed 4 KiB-aligned 32 B chunk to the loop's next 32 B allocation, and every
/// later free of the loop would pass the address check (and every realloc leave the fast path);
/// a chunk of 4 KiB is above tcache's largest bin (1,032 B). Size-class allocators (mimalloc,
/// jemalloc) already serve a small request at 4 KiB alignment from a class of at least 4 KiB, so
/// for them this asks for the memory they would have used anyway; glibc's sampled small blocks
/// take up to `inner_align` bytes each, the same bound as the padding (see the module docs).
/// `None` when the rounded size does not fit a `Layout` (then the block is not raised).
pub(crate) fn inner_layout(layout: Layout, inner_align: usize) -> Option<Layout> {
    if inner_align <= layout.align() {
        return Some(layout);
    }
    let size = layout.size().checked_add(inner_align - 1)? & !(inner_align - 1);
    Layout::from_size_align(size, inner_align).ok()
}

/// Counts a new live sample at `ptr`, allocated from the inner allocator at `inner_align` (a
/// power of two): [`sampled_align`] answers it from now on. Call with the lock of `ptr`'s shard
/// ([`shard_of`]) held (the only writer of its exact set), inside the profiler guard (a rebuild
/// allocates). If `ptr` is in the set already (a stale entry), its alignment is replaced.
/// `false` (nothing changed) if the set needed to grow and could not.
pub(crate) fn raise(ptr: usize, inner_align: usize) -> bool {
    debug_assert!(inner_align.is_power_of_two());
    // Before the block is handed out: a thread's memo "this address is not a sample" is only
    // trusted while the epoch it was taken at is current (see `sample_epoch`).
    SAMPLE_EPOCH.fetch_add(1, Relaxed);
    set_insert(ptr, inner_align.trailing_zeros() as usize)
}

/// Bumped by every new sample. A free that found an aligned address not sampled may remember
/// that with the epoch it read before probing: while the epoch is unchanged, no block at that
/// address became a sample. (A block freed by this thread was this thread's, so only a later
/// allocation could make its address a sample, and that allocation's sample bumps the epoch
/// before the block is handed out, which happens before its free reads the epoch.)
static SAMPLE_EPOCH: AtomicU64 = AtomicU64::new(0);

#[inline(always)]
pub(crate) fn sample_epoch() -> u64 {
    SAMPLE_EPOCH.load(Relaxed)
}

/// Takes a live sample at `ptr` out. Call with the lock of `ptr`'s shard held.
pub(crate) fn lower(ptr: usize) {
    set_remove(ptr);
}

/// One slot: an address ([`EMPTY`], [`TOMB`] or a live sample's) and the log2 of the alignment
/// that sample was allocated with from the inner allocator. 16 bytes, four to a cache line.
#[repr(C, align(16))]
struct Entry {
    key: AtomicUsize,
    align_log2: AtomicUsize,
}

/// An open-addressing map of addresses to inner alignments.
struct Set {
    shift: u32,
    slots: Box<[Entry]>,
}

/// Never a block address: no allocator returns address 0 for a live block...
const EMPTY: usize = 0;
/// ...or a block starting at the last byte of the address space.
const TOMB: usize = usize::MAX;

/// The multiplicative hash of an address: its top [`SHARD_BITS`] bits pick the shard, the bits
/// below them the home slot (see the module docs). Addresses are at least 16-byte aligned in
/// practice, hence the shift; distinct addresses still hash apart when they are not.
#[inline]
fn hash(ptr: usize) -> u64 {
    (ptr as u64 >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Set {
    /// A leaked empty set of `cap` slots, or null if the memory cannot be had (the hook must not
    /// abort).
    fn try_new(cap: usize) -> *mut Set {
        debug_assert!(cap.is_power_of_two() && cap >= 2);
        let mut slots = Vec::new();
        if slots.try_reserve_exact(cap).is_err() {
            return core::ptr::null_mut();
        }
        slots.extend((0..cap).map(|_| Entry {
            key: AtomicUsize::new(EMPTY),
            align_log2: AtomicUsize::new(0),
        }));
        let layout = core::alloc::Layout::new::<Set>();
        // SAFETY: `Set` has a nonzero size.
        let p = unsafe { std::alloc::alloc(layout) } as *mut Set;
        if p.is_null() {
            return p;
        }
        // SAFETY: `p` is a fresh block with `Set`'s layout. `into_boxed_slice` does not
        // reallocate: the capacity is exactly `cap` (`try_reserve_exact` on an empty vector).
        unsafe {
            p.write(Set {
                shift: 64 - cap.trailing_zeros(),
                slots: slots.into_boxed_slice(),
            })
        };
        p
    }

    /// The home slot: the hash bits right below the shard's, so independent of the shard.
    #[inline]
    fn home(&self, ptr: usize) -> usize {
        ((hash(ptr) << SHARD_BITS) >> self.shift) as usize
    }

    /// The inner alignment (log2) of `ptr` if it is in the set (readers: lock-free; the answer
    /// holds if no rebuild of this table overlapped the probe). At most `cap` steps: the writer
    /// keeps empty slots.
    fn get(&self, ptr: usize) -> Option<usize> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(ptr);
        for _ in 0..self.slots.len() {
            let e = &self.slots[i];
            match e.key.load(Relaxed) {
                EMPTY => return None,
                // The alignment was stored before the key (`set_insert`), both before the block
                // was handed out, and this free happens after that.
                v if v == ptr => return Some(e.align_log2.load(Relaxed)),
                _ => i = (i + 1) & mask,
            }
        }
        None
    }

    /// Slots a look-up of `ptr` reads (for the probe-bound test).
    #[cfg(test)]
    fn probe_len(&self, ptr: usize) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = self.home(ptr);
        for n in 1..=self.slots.len() {
            match self.slots[i].key.load(Relaxed) {
                EMPTY => return n,
                v if v == ptr => return n,
                _ => i = (i + 1) & mask,
            }
        }
        self.slots.len()
    }
}

/// Shards of the exact level, one per live-sample shard of the site table: shard `i` is written
/// only under that shard's lock (its only writer), so shards never need a lock of their own.
pub(crate) const SHARDS: usize = 32;
const SHARD_BITS: u32 = SHARDS.trailing_zeros();

/// The shard of an address: the top bits of its hash (sampled blocks share their low address
/// bits, so they are hashed, not masked).
pub(crate) fn shard_of(ptr: usize) -> usize {
    (hash(ptr) >> (64 - SHARD_BITS)) as usize
}

/// One shard of the exact level.
struct Level2 {
    /// The table readers probe (null before the shard's first sample).
    current: AtomicPtr<Set>,
    /// Bumped around every rebuild (see the module docs).
    seq: AtomicU64,
    // Writer-only state, under the shard lock (atomics only to be `static`; all `Relaxed`).
    /// A retired table, the next rebuild target when its capacity fits (null if none).
    spare: AtomicPtr<Set>,
    /// Addresses in `current`, and slots that are not `EMPTY` (addresses plus tombstones).
    live: AtomicUsize,
    used: AtomicUsize,
}

static LEVEL2: [Level2; SHARDS] = [const {
    Level2 {
        current: AtomicPtr::new(core::ptr::null_mut()),
        seq: AtomicU64::new(0),
        spare: AtomicPtr::new(core::ptr::null_mut()),
        live: AtomicUsize::new(0),
        used: AtomicUsize::new(0),
    }
}; SHARDS];

fn level2(ptr: usize) -> &'static Level2 {
    &LEVEL2[shard_of(ptr)]
}

/// The alignment the live sampled block at `ptr` was allocated with from the inner allocator, or
/// `None` if `ptr` is not a live sample. Exact, lock-free, allocation-free, no clock: the second
/// look of a free whose address passed [`maybe_sampled_sized`], and the one source of a sampled
/// block's inner layout (see the module docs).
///
/// Wait-free against this thread's own writes (a signal handler that frees while the thread it
/// interrupted is rebuilding this shard probes the published table, which a rebuild never
/// writes); it probes again only while *other* threads' rebuilds of the shard overlap its probe.
pub(crate) fn sampled_align(ptr: *mut u8) -> Option<usize> {
    let ptr = ptr as usize;
    let l2 = level2(ptr);
    loop {
        // Acquire: pairs with the writer's Release store of `seq` after a rebuild, so the table
        // published before it is seen whole.
        let s1 = l2.seq.load(Acquire);
        let t = l2.current.load(Acquire);
        if t.is_null() {
            return None;
        }
        // SAFETY: tables are leaked, never freed (see the module docs), so `t` is valid; a
        // concurrent rebuild into it only changes values, caught by the sequence check below.
        let found = unsafe { &*t }.get(ptr);
        // Pairs with the writer's `fence(Release)` after its odd `seq` store: if the probe read
        // any value a rebuild wrote, the load below sees the bumped sequence. A sequence still
        // odd and unchanged means a rebuild was in progress all along, into a table other than
        // the one published (`t`), which the probe therefore saw whole.
        fence(Acquire);
        if l2.seq.load(Relaxed) == s1 {
            return found.map(|log2| 1 << log2);
        }
        core::hint::spin_loop();
    }
}

/// Is `ptr` a live sampled block? ([`sampled_align`] is some.)
#[cfg(test)]
pub(crate) fn is_sampled(ptr: *mut u8) -> bool {
    sampled_align(ptr).is_some()
}

fn set_insert(ptr: usize, align_log2: usize) -> bool {
    let l2 = level2(ptr);
    let live = l2.live.load(Relaxed);
    let mut t = l2.current.load(Relaxed);
    // SAFETY (both derefs): tables are leaked and only written under the shard lock, held here.
    let cap = if t.is_null() {
        0
    } else {
        unsafe { &*t }.slots.len()
    };
    // Keep at least a quarter of the slots empty (short probes, and `get` terminates).
    if (l2.used.load(Relaxed) + 1) * 4 > cap * 3 {
        let bigger = rebuild(l2, (live + 1) * 2);
        if !bigger.is_null() {
            t = bigger;
        } else if t.is_null() || l2.used.load(Relaxed) + 2 > cap {
            // No memory for a rebuild, and no slot to spare (one must stay empty).
            return false;
        }
    }
    // SAFETY: as above.
    let set = unsafe { &*t };
    let mask = set.slots.len() - 1;
    let mut i = set.home(ptr);
    let mut free = None;
    loop {
        let e = &set.slots[i];
        match e.key.load(Relaxed) {
            EMPTY => break,
            TOMB => {
                free.get_or_insert(i);
            }
            v if v == ptr => {
                // A stale entry (its block was freed behind our back): this block's alignment.
                e.align_log2.store(align_log2, Relaxed);
                return true;
            }
            _ => {}
        }
        i = (i + 1) & mask;
    }
    let at = match free {
        Some(f) => f,
        None => {
            l2.used.fetch_add(1, Relaxed);
            i
        }
    };
    // Relaxed: the block is handed to the program only after the allocation returns, and its
    // free happens after that (see `set_check_mask`). The alignment first: a reader that finds
    // the key reads it.
    set.slots[at].align_log2.store(align_log2, Relaxed);
    set.slots[at].key.store(ptr, Relaxed);
    l2.live.store(live + 1, Relaxed);
    true
}

fn set_remove(ptr: usize) {
    let l2 = level2(ptr);
    let t = l2.current.load(Relaxed);
    if t.is_null() {
        return;
    }
    // SAFETY: as in `set_insert`.
    let set = unsafe { &*t };
    let mask = set.slots.len() - 1;
    let mut i = set.home(ptr);
    for _ in 0..set.slots.len() {
        match set.slots[i].key.load(Relaxed) {
            EMPTY => return,
            v if v == ptr => {
                // A tombstone, never EMPTY: probes for other addresses must go on past it.
                set.slots[i].key.store(TOMB, Relaxed);
                l2.live.fetch_sub(1, Relaxed);
                return;
            }
            _ => i = (i + 1) & mask,
        }
    }
}

/// Copies the live addresses into a table of at least `min_cap` slots (the spare if it fits,
/// else a new one), publishes it and keeps the old one as the spare. Shard lock held. Null (and
/// nothing changed) if a new table was needed and its memory could not be had.
fn rebuild(l2: &Level2, min_cap: usize) -> *mut Set {
    let cap = min_cap.next_power_of_two().max(64);
    let old = l2.current.load(Relaxed);
    let spare = l2.spare.load(Relaxed);
    // SAFETY: leaked tables, written only under the shard lock (held).
    let target: *mut Set = if !spare.is_null() && unsafe { &*spare }.slots.len() == cap {
        spare
    } else {
        let fresh = Set::try_new(cap);
        if fresh.is_null() {
            return fresh;
        }
        fresh
    };
    let seq = l2.seq.load(Relaxed);
    l2.seq.store(seq + 1, Relaxed);
    // Pairs with the readers' `fence(Acquire)`: a reader that reads any slot written below (the
    // target may be a table it loaded before the last swap) then sees the odd sequence number.
    fence(Release);
    // SAFETY: as above.
    let tgt = unsafe { &*target };
    for s in tgt.slots.iter() {
        s.key.store(EMPTY, Relaxed);
    }
    let mask = tgt.slots.len() - 1;
    let mut used = 0;
    if !old.is_null() {
        // SAFETY: as above.
        for s in unsafe { &*old }.slots.iter() {
            let v = s.key.load(Relaxed);
            if v != EMPTY && v != TOMB {
                let mut i = tgt.home(v);
                while tgt.slots[i].key.load(Relaxed) != EMPTY {
                    i = (i + 1) & mask;
                }
                let e = &tgt.slots[i];
                e.align_log2.store(s.align_log2.load(Relaxed), Relaxed);
                e.key.store(v, Relaxed);
                used += 1;
            }
        }
    }
    l2.used.store(used, Relaxed);
    l2.live.store(used, Relaxed);
    l2.current.store(target, Release);
    l2.seq.store(seq + 2, Release);
    // The old table becomes the spare; a smaller spare it replaces is left as it is (leaked and
    // never read again once no reader holds it; capacities only grow, so that is bounded).
    l2.spare
        .store(if old.is_null() { spare } else { old }, Relaxed);
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_alignment_follows_the_rate() {
        assert_eq!(sample_align(512 * 1024), 4096);
        assert_eq!(sample_align(1 << 30), 4096);
        assert_eq!(sample_align(64 * 1024), 512);
        assert_eq!(sample_align(100 * 1024), 512);
        assert_eq!(sample_align(4096), 32);
        assert_eq!(sample_align(4095), 1);
        assert_eq!(sample_align(1), 1);
        assert_eq!(sample_align(0), 1);
        for r in [1u64, 1000, 4096, 65536, 100_000, 524_288, 1 << 40] {
            let a = sample_align(r);
            assert!(a.is_power_of_two() && (1..=4096).contains(&a));
            assert!(
                a as u64 <= (r / 128).max(1),
                "rate {r}: padding above 1/128"
            );
        }
    }

    /// Slots a look-up of `ptr` reads in its shard's published table.
    fn probe_len(ptr: usize) -> usize {
        let t = level2(ptr).current.load(Relaxed);
        // SAFETY: tables are never freed; no writer runs during the test's reads.
        unsafe { &*t }.probe_len(ptr)
    }

    /// One test (the set is process-wide): a heap-like layout with 200,000 live samples among
    /// 4,000,000 blocks, half of them raised to 4 KiB and half at their heap address (as at rate
    /// 1), against the naive oracle (the list of sampled blocks and their alignments): the exact
    /// level never errs, every raised block passes the address check, the fraction of unsampled
    /// blocks that pass it is printed (docs/benches.md quotes it), probes stay within the stated
    /// bound (module docs), and everything lowers back to zero.
    #[test]
    fn raised_blocks_are_asked_at_a_whole_number_of_alignments() {
        let l = |s, a| Layout::from_size_align(s, a).unwrap();
        // Not raised: the caller's layout, size untouched (even when not a multiple of align).
        assert_eq!(inner_layout(l(5, 8), 1), Some(l(5, 8)));
        assert_eq!(inner_layout(l(5, 8), 8), Some(l(5, 8)));
        assert_eq!(inner_layout(l(70_000, 16), 16), Some(l(70_000, 16)));
        // Raised: the size rounded up to the raised alignment.
        assert_eq!(inner_layout(l(32, 8), 4096), Some(l(4096, 4096)));
        assert_eq!(inner_layout(l(4096, 8), 4096), Some(l(4096, 4096)));
        assert_eq!(inner_layout(l(4097, 8), 4096), Some(l(8192, 4096)));
        assert_eq!(inner_layout(l(1, 1), 32), Some(l(32, 32)));
        // Too large to round: not raised.
        assert_eq!(inner_layout(l(isize::MAX as usize - 10, 1), 4096), None);
        // Against a naive oracle.
        for size in [1usize, 15, 16, 17, 31, 33, 1000, 4095, 5000, 65_535] {
            for (align, inner) in [(1, 32), (8, 512), (16, 4096), (64, 64)] {
                let got = inner_layout(l(size, align), inner).unwrap();
                let want_size = if inner > align {
                    size.div_ceil(inner) * inner
                } else {
                    size
                };
                assert_eq!((got.size(), got.align()), (want_size, inner.max(align)));
            }
        }
    }

    #[test]
    fn check_and_exact_set_against_the_oracle() {
        // Addresses far above any heap of the test process, 16-byte aligned like malloc's.
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut addr = 0x6000_0000_0000usize;
        let mut blocks: Vec<usize> = (0..4_000_000)
            .map(|_| {
                let p = addr;
                addr += 16 * (1 + (next() % 64) as usize);
                p
            })
            .collect();
        // The inner alignment of each sampled block (0: not sampled).
        let mut sampled = vec![0usize; blocks.len()];
        let mut live = 0;
        while live < 200_000 {
            let i = (next() % blocks.len() as u64) as usize;
            if sampled[i] == 0 {
                let align = if live % 2 == 0 {
                    // Raised: placed at a 4 KiB boundary.
                    blocks[i] = 0x7000_0000_0000 + live * 4096;
                    4096
                } else {
                    // Taken at a rate too low to raise: where malloc put it.
                    1
                };
                sampled[i] = align;
                assert!(raise(blocks[i], align));
                live += 1;
            }
        }
        let (mut unsampled, mut maybe) = (0u64, 0u64);
        let (mut hit_probes, mut miss_probes, mut longest) = (0usize, 0usize, 0usize);
        for (&p, &a) in blocks.iter().zip(&sampled) {
            let want = (a != 0).then_some(a);
            assert_eq!(
                sampled_align(p as *mut u8),
                want,
                "exact level wrong at {p:#x}"
            );
            let n = probe_len(p);
            longest = longest.max(n);
            if a != 0 {
                hit_probes += n;
                if a == 4096 {
                    assert!(maybe_sampled(p as *mut u8));
                }
            } else {
                miss_probes += n;
                unsampled += 1;
                maybe += maybe_sampled(p as *mut u8) as u64;
            }
        }
        let hit = hit_probes as f64 / live as f64;
        let miss = miss_probes as f64 / unsampled as f64;
        eprintln!(
            "200000 live samples: {:.3}% of unsampled frees pass the address check \
             (then one lock-free probe, no clock, no lock); exact set {} slots; \
             slots read per look-up: {hit:.2} (sampled), {miss:.2} (not), longest {longest}",
            100.0 * maybe as f64 / unsampled as f64,
            // SAFETY: tables are never freed.
            LEVEL2
                .iter()
                .map(|l| unsafe { &*l.current.load(Relaxed) }.slots.len())
                .sum::<usize>()
        );
        assert!(
            maybe * 100 < unsampled,
            "more than 1% of frees leave the fast path"
        );
        // The bound of the module docs at the highest load a table reaches (3/4).
        assert!(hit <= 2.5, "{hit:.2} slots per look-up of a sample");
        assert!(miss <= 8.5, "{miss:.2} slots per look-up of a non-sample");
        for (&p, &a) in blocks.iter().zip(&sampled) {
            if a != 0 {
                lower(p);
            }
        }
        for &p in blocks.iter().step_by(97) {
            assert!(!is_sampled(p as *mut u8));
        }
        assert!(LEVEL2.iter().all(|l| l.live.load(Relaxed) == 0));
    }
}
