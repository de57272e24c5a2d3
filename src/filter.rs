//! The free side's sampled-block filter: may this block be a live sample?
//!
//! Every free asks, so the answer must come from one load, without a lock, a hash or a branch
//! that depends on more than one byte. The filter is a table of saturating 8-bit counters indexed
//! by address bits, raised for every live sample ([`raise`]) and lowered when it is freed
//! ([`lower`]); a zero byte proves the block is not sampled ([`maybe_sampled`]), a nonzero one
//! sends the free to the site table. Writers are serialised by the site lock; readers are the free
//! paths of every thread, lock-free.
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
use core::sync::atomic::{AtomicU8, Ordering::Relaxed};

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

/// Counts a new live sample at `ptr`. Call with the site lock held (the only writer).
pub(crate) fn raise(ptr: usize) {
    let cell = &FILTER[index(ptr)];
    let v = cell.load(Relaxed);
    // 255 is sticky: a cell that saturated can no longer count its samples out, so it stays set
    // (frees through it then always check the table, which stays correct).
    if v < u8::MAX {
        cell.store(v + 1, Relaxed);
    }
}

/// Takes a live sample at `ptr` out. Call with the site lock held.
pub(crate) fn lower(ptr: usize) {
    let cell = &FILTER[index(ptr)];
    let v = cell.load(Relaxed);
    if v > 0 && v < u8::MAX {
        cell.store(v - 1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_and_lower_count_samples_per_byte() {
        // Two addresses that share a byte, one that does not. Addresses far above any heap, so
        // no block of the test process is reported as sampled meanwhile.
        let a = 0x7fff_0000_0000usize;
        let b = a + (FILTER_LEN << 4);
        let c = a + 16;
        assert!(!maybe_sampled(a as *mut u8));
        raise(a);
        raise(b);
        assert!(maybe_sampled(a as *mut u8) && maybe_sampled(b as *mut u8));
        assert!(!maybe_sampled(c as *mut u8));
        lower(a);
        assert!(maybe_sampled(b as *mut u8), "b is still live");
        lower(b);
        assert!(!maybe_sampled(a as *mut u8));
    }
}
