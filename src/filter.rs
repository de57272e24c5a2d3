//! The free side's sampled-block filter: may this block be a live sample?
//!
//! Every free asks, so the answer must come from one load, without a lock, a hash or a branch
//! that depends on more than one byte. The filter is a table of saturating 8-bit counters indexed
//! by address bits, raised for every live sample ([`raise`]) and lowered when it is freed
//! ([`lower`]); a zero byte proves the block is not sampled ([`maybe_sampled`]), a nonzero one
//! sends the free to the exact level and then the site table. Every address whose free reads a
//! given byte belongs to one shard ([`shard_of`]), and a byte and its shard are written only under
//! that shard's lock in the site table; readers are the free paths of every thread, lock-free.
//!
//! # Cost and precision
//!
//! 2^18 bytes (256 KiB). A free reads one byte at an address-dependent offset: one byte per 16 B
//! of address, so one 64-byte line of the filter covers 1 KiB of heap and 32 KiB of it (an L1)
//! covers 512 KiB. A program whose frees spread over more than that reads filter lines that are
//! not all in L1 (the D1 misses in docs/benches.md). With `L` live samples at most `L` bytes are nonzero, so at most a
//! fraction `L / 2^18` of unsampled frees take the slow path (0.8% at 2,000 live samples, a 1 GiB
//! heap at the default rate; ~17% at 50,000, ~53% at 200,000 — see docs/benches.md). A one-hash
//! filter needs about 100 entries per live sample for 1% false positives, so no filter of this
//! kind stays L1-sized beyond a few hundred live samples; that trade-off is measured in
//! docs/benches.md rather than hidden here.
//!
//! # The exact second level
//!
//! A nonzero byte is only "maybe". Before a free reads the clock or takes the site lock it asks
//! [`is_sampled`], an exact, lock-free set of the live sampled addresses (open addressing, linear
//! probing, tombstones): a false positive of the byte filter costs one short probe sequence, not
//! a lock. It is split into [`SHARDS`] independent sets, one per shard. Writers (under the shard
//! lock) insert and delete in place; when tombstones or growth
//! call for it they rebuild into a second table and publish it. Tables are never freed (a
//! reader may still probe an old one): a retired table is reused as the next rebuild target when
//! it has the right capacity, and capacities only grow, so all tables together take at most
//! four times the largest. A rebuild sizes the table to 2–4 slots (8 bytes each) per live
//! sample: at 200,000 live samples 2^19 slots, 4 MiB. A reader that
//! may have probed a table while it was rebuilt sees the rebuild's sequence number and probes
//! again (a seqlock whose only writer holds the shard lock).
use core::sync::atomic::{fence, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering::*};

const FILTER_BITS: u32 = 18;
const FILTER_LEN: usize = 1 << FILTER_BITS;
static FILTER: [AtomicU8; FILTER_LEN] = [const { AtomicU8::new(0) }; FILTER_LEN];

#[inline(always)]
fn index(ptr: usize) -> usize {
    // Blocks are at least 16-byte aligned; bits 4..22 differ between neighbouring blocks.
    (ptr >> 4) & (FILTER_LEN - 1)
}

/// May `ptr` be a live sampled block? `false` is certain; `true` must be checked in the table.
/// The free fast path's test.
///
/// Relaxed is enough: the byte of a sampled block was raised (under the site lock) before the
/// allocation that sampled it returned the block, and a free of that block happens after that
/// return in any program without a data race on the pointer, so the free's load sees the raise
/// (or a later value) by coherence. A sample raised for another block at the same index between
/// can only make the answer a conservative `true`.
#[inline(always)]
pub(crate) fn maybe_sampled(ptr: *mut u8) -> bool {
    FILTER[index(ptr as usize)].load(Relaxed) != 0
}

/// Counts a new live sample at `ptr`. Call with the lock of `ptr`'s shard ([`shard_of`]) held
/// (the only writer of its filter byte and its exact shard), inside the profiler guard (a
/// rebuild of the exact set allocates).
pub(crate) fn raise(ptr: usize) {
    set_insert(ptr);
    let cell = &FILTER[index(ptr)];
    let v = cell.load(Relaxed);
    // 255 is sticky: a cell that saturated can no longer count its samples out, so it stays set
    // (frees through it then always check the table, which stays correct).
    if v < u8::MAX {
        cell.store(v + 1, Relaxed);
    }
}

/// Takes a live sample at `ptr` out. Call with the lock of `ptr`'s shard held.
pub(crate) fn lower(ptr: usize) {
    set_remove(ptr);
    let cell = &FILTER[index(ptr)];
    let v = cell.load(Relaxed);
    if v > 0 && v < u8::MAX {
        cell.store(v - 1, Relaxed);
    }
}

/// An open-addressing set of addresses. Slots hold an address, [`EMPTY`] or [`TOMB`].
struct Set {
    shift: u32,
    slots: Box<[AtomicUsize]>,
}

/// Never a block address: no allocator returns address 0 for a live block...
const EMPTY: usize = 0;
/// ...or a block starting at the last byte of the address space.
const TOMB: usize = usize::MAX;

impl Set {
    fn new(cap: usize) -> Set {
        debug_assert!(cap.is_power_of_two() && cap >= 2);
        Set {
            shift: 64 - cap.trailing_zeros(),
            slots: (0..cap).map(|_| AtomicUsize::new(EMPTY)).collect(),
        }
    }

    #[inline]
    fn home(&self, ptr: usize) -> usize {
        ((ptr as u64 >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// Whether `ptr` is in the set (readers: lock-free; the answer holds if no rebuild of this
    /// table overlapped the probe). At most `cap` steps: the writer keeps empty slots.
    fn contains(&self, ptr: usize) -> bool {
        let mask = self.slots.len() - 1;
        let mut i = self.home(ptr);
        for _ in 0..self.slots.len() {
            match self.slots[i].load(Relaxed) {
                EMPTY => return false,
                v if v == ptr => return true,
                _ => i = (i + 1) & mask,
            }
        }
        false
    }
}

/// Shards of the exact level, one per live-sample shard of the site table: shard `i` is written
/// only under that shard's lock (its only writer), so shards never need a lock of their own.
pub(crate) const SHARDS: usize = 32;

/// The shard of an address: a hash of its filter byte, so that every address whose free reads a
/// given filter byte is in one shard, and that byte is only written under that shard's lock.
/// (Hashed rather than masked: page-aligned blocks share their low address bits.)
pub(crate) fn shard_of(ptr: usize) -> usize {
    let i = index(ptr) as u64;
    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SHARDS.trailing_zeros())) as usize
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

/// Is `ptr` a live sampled block? Exact, lock-free, allocation-free, no clock: the second look of
/// a free whose filter byte is nonzero. Returns `true` (the conservative answer, checked under
/// the lock) only if rebuilds keep overlapping its probes.
pub(crate) fn is_sampled(ptr: *mut u8) -> bool {
    let ptr = ptr as usize;
    let l2 = level2(ptr);
    for _ in 0..16 {
        // Acquire: pairs with the writer's Release store of the even `seq` after a rebuild, so
        // the table published before it is seen whole.
        let s1 = l2.seq.load(Acquire);
        let t = l2.current.load(Acquire);
        if t.is_null() {
            return false;
        }
        // SAFETY: tables are leaked, never freed (see the module docs), so `t` is valid; a
        // concurrent rebuild of it only changes values, caught by the sequence check below.
        let found = unsafe { &*t }.contains(ptr);
        // Pairs with the writer's `fence(Release)` after its odd `seq` store: if the probe read
        // any value the rebuild wrote, the load below sees the bumped sequence.
        fence(Acquire);
        if l2.seq.load(Relaxed) == s1 && s1 & 1 == 0 {
            return found;
        }
        core::hint::spin_loop();
    }
    true
}

fn set_insert(ptr: usize) {
    let l2 = level2(ptr);
    let live = l2.live.load(Relaxed);
    let mut t = l2.current.load(Relaxed);
    // SAFETY (both derefs): tables are leaked and only written under the shard lock, held here.
    let cap = if t.is_null() {
        0
    } else {
        unsafe { &*t }.slots.len()
    };
    // Keep at least a quarter of the slots empty (short probes, and `contains` terminates).
    if (l2.used.load(Relaxed) + 1) * 4 > cap * 3 {
        t = rebuild(l2, (live + 1) * 2);
    }
    // SAFETY: as above.
    let set = unsafe { &*t };
    let mask = set.slots.len() - 1;
    let mut i = set.home(ptr);
    let mut free = None;
    loop {
        match set.slots[i].load(Relaxed) {
            EMPTY => break,
            TOMB => {
                free.get_or_insert(i);
            }
            v if v == ptr => return,
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
    // free happens after that (see `maybe_sampled`).
    set.slots[at].store(ptr, Relaxed);
    l2.live.store(live + 1, Relaxed);
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
        match set.slots[i].load(Relaxed) {
            EMPTY => return,
            v if v == ptr => {
                // A tombstone, never EMPTY: probes for other addresses must go on past it.
                set.slots[i].store(TOMB, Relaxed);
                l2.live.fetch_sub(1, Relaxed);
                return;
            }
            _ => i = (i + 1) & mask,
        }
    }
}

/// Copies the live addresses into a table of at least `min_cap` slots (the spare if it fits,
/// else a new one), publishes it and keeps the old one as the spare. Shard lock held.
fn rebuild(l2: &Level2, min_cap: usize) -> *mut Set {
    let cap = min_cap.next_power_of_two().max(64);
    let old = l2.current.load(Relaxed);
    let spare = l2.spare.load(Relaxed);
    // SAFETY: leaked tables, written only under the shard lock (held).
    let target: *mut Set = if !spare.is_null() && unsafe { &*spare }.slots.len() == cap {
        spare
    } else {
        Box::into_raw(Box::new(Set::new(cap)))
    };
    let seq = l2.seq.load(Relaxed);
    l2.seq.store(seq + 1, Relaxed);
    // Pairs with the readers' `fence(Acquire)`: a reader that reads any slot written below (the
    // target may be a table it loaded before the last swap) then sees the odd sequence number.
    fence(Release);
    // SAFETY: as above.
    let tgt = unsafe { &*target };
    for s in tgt.slots.iter() {
        s.store(EMPTY, Relaxed);
    }
    let mask = tgt.slots.len() - 1;
    let mut used = 0;
    if !old.is_null() {
        // SAFETY: as above.
        for s in unsafe { &*old }.slots.iter() {
            let v = s.load(Relaxed);
            if v != EMPTY && v != TOMB {
                let mut i = tgt.home(v);
                while tgt.slots[i].load(Relaxed) != EMPTY {
                    i = (i + 1) & mask;
                }
                tgt.slots[i].store(v, Relaxed);
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

    /// One test (the filter and the set are process-wide): per-byte counting, then a heap-like
    /// layout with 200,000 live samples among 4,000,000 blocks, against the naive oracle (the
    /// list of sampled blocks): the exact level never errs, the byte filter's false-positive
    /// fraction is printed (docs/benches.md quotes it), and everything lowers back to zero.
    #[test]
    fn filter_and_exact_set_against_the_oracle() {
        // Addresses far above any heap of the test process.
        let a = 0x7fff_0000_0000usize;
        let b = a + (FILTER_LEN << 4);
        let c = a + 16;
        assert!(!maybe_sampled(a as *mut u8));
        raise(a);
        raise(b);
        assert!(maybe_sampled(a as *mut u8) && maybe_sampled(b as *mut u8));
        assert!(!maybe_sampled(c as *mut u8));
        assert!(is_sampled(a as *mut u8) && is_sampled(b as *mut u8));
        assert!(
            !is_sampled(c as *mut u8),
            "same byte as neither, not in the set"
        );
        lower(a);
        assert!(maybe_sampled(b as *mut u8), "b is still live");
        assert!(!is_sampled(a as *mut u8) && is_sampled(b as *mut u8));
        lower(b);
        assert!(!maybe_sampled(a as *mut u8) && !is_sampled(b as *mut u8));

        // A heap: 4M contiguous blocks of 16..1024 bytes (16-byte multiples); 200k of them
        // sampled, chosen by a fixed generator.
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut addr = 0x6000_0000_0000usize;
        let blocks: Vec<usize> = (0..4_000_000)
            .map(|_| {
                let p = addr;
                addr += 16 * (1 + (next() % 64) as usize);
                p
            })
            .collect();
        let mut sampled = vec![false; blocks.len()];
        let mut live = 0;
        while live < 200_000 {
            let i = (next() % blocks.len() as u64) as usize;
            if !sampled[i] {
                sampled[i] = true;
                raise(blocks[i]);
                live += 1;
            }
        }
        let (mut unsampled, mut maybe) = (0u64, 0u64);
        for (&p, &s) in blocks.iter().zip(&sampled) {
            assert_eq!(is_sampled(p as *mut u8), s, "exact level wrong at {p:#x}");
            if s {
                assert!(maybe_sampled(p as *mut u8));
            } else {
                unsampled += 1;
                maybe += maybe_sampled(p as *mut u8) as u64;
            }
        }
        eprintln!(
            "200000 live samples: {:.2}% of unsampled frees see a nonzero filter byte \
             (then one lock-free probe, no clock, no lock); exact set {} slots",
            100.0 * maybe as f64 / unsampled as f64,
            // SAFETY: tables are never freed.
            LEVEL2
                .iter()
                .map(|l| unsafe { &*l.current.load(Relaxed) }.slots.len())
                .sum::<usize>()
        );
        for (&p, &s) in blocks.iter().zip(&sampled) {
            if s {
                lower(p);
            }
        }
        for &p in blocks.iter().step_by(97) {
            assert!(!is_sampled(p as *mut u8) && !maybe_sampled(p as *mut u8));
        }
        assert!(LEVEL2.iter().all(|l| l.live.load(Relaxed) == 0));
    }
}
