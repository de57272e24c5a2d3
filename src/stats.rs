//! The exact counters read as one value: [`Stats`], summed over the threads' counter slots with
//! the figures of the tables and the capture beside them.
use std::sync::atomic::Ordering::Relaxed;

use crate::{counters, guard, sampler, sites, stack};

/// Exact process-wide allocation counters, from [`stats`].
///
/// `alloc_*` and `free_*` count every call since start-up (a `realloc` is one free and one
/// allocation); `inuse_* = alloc_* - free_*`. Bytes are `Layout::size()` bytes as requested, not
/// what the inner allocator rounded them to. The profiler's own memory is not in these counters;
/// it is `profiler_bytes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Allocations made.
    pub alloc_objects: u64,
    /// Bytes allocated.
    pub alloc_bytes: u64,
    /// Blocks freed.
    pub free_objects: u64,
    /// Bytes freed.
    pub free_bytes: u64,
    /// Blocks live now.
    pub inuse_objects: u64,
    /// Bytes live now.
    pub inuse_bytes: u64,
    /// Highest `inuse_bytes` reached, as seen at flushes: below the true peak by at most what
    /// each thread allocated since its last flush (less than one sampling countdown, ≈ the
    /// rate; 1 MiB at rate 0), above it by less than 64 KiB per other thread. Exact for a peak
    /// made of blocks larger than the countdown. See the crate docs.
    pub peak_inuse_bytes: u64,
    /// The sample rate in force (bytes; 0 = off).
    pub sample_rate: u64,
    /// Samples taken since start-up.
    pub samples: u64,
    /// Bytes the profiler itself holds (site table, live-sample index, symbol cache, snapshots
    /// not yet dropped, per-thread slots).
    pub profiler_bytes: u64,
    /// Counter slots in use or parked for reuse (the most threads that were alive at once).
    pub thread_slots: u64,
    /// Sampled stacks captured with the DWARF unwinder (fallback or forced).
    pub dwarf_captures: u64,
    /// Tag interning attempts (a new name or label set) refused because the tag table was full
    /// ([`MAX_TAG_NAMES`](crate::MAX_TAG_NAMES)): their allocations count under the
    /// [`OVERFLOW_TAG`](crate::OVERFLOW_TAG) tag. The first refusal is also reported on stderr.
    pub tag_names_refused: u64,
    /// What live sampled blocks ask of the inner allocator beyond their sizes, exactly: a
    /// sampled block under 64 KiB is asked at a raised alignment (4 KiB at the default rate)
    /// with its size rounded up to it, so that its free can be told by its address. So the
    /// inner allocator holds `inuse_bytes + profiler_bytes + sample_padding_bytes` (plus its own
    /// overhead, which depends on the allocator: docs/reliability.md).
    pub sample_padding_bytes: u64,
    /// Samples dropped because the profiler could not allocate the memory to record them (the
    /// inner allocator refused the profiler's own allocation). The program's allocation is never
    /// the one that fails: the sample is what is given up. 0 unless memory ran out.
    pub lost_samples: u64,
    /// Samples counted in the frame-less site (as past the site cap) because the site table could
    /// not allocate room for their stack or bucket. 0 unless memory ran out.
    pub unattributed_samples: u64,
}

/// Reads the exact counters. Lock-free, allocation-free, safe to call from any thread at any time.
///
/// Only allocations through [`HeapSight`](crate::HeapSight) are counted: in a program whose
/// `#[global_allocator]` is something else every counter stays 0 — check
/// [`is_active`](crate::is_active) before reading zeros as "no allocations".
///
/// Counters are summed over per-thread slots without stopping the threads, so while other threads
/// allocate the result is a consistent-enough moment, not an atomic snapshot; in a quiet moment it
/// is exact.
pub fn stats() -> Stats {
    let t = guard::THREAD.with(|th| {
        let own = th.slot.get();
        if own.is_null() {
            counters::totals()
        } else {
            // Calling thread: also flush our own change into the shared in-use figure and the
            // peak (see `counters`).
            // SAFETY: the non-null slot of this thread is owned by it and never freed.
            let own = unsafe { &*own };
            let t = counters::totals();
            counters::resync(own);
            t
        }
    });
    Stats {
        alloc_objects: t.alloc_objects,
        alloc_bytes: t.alloc_bytes,
        free_objects: t.free_objects,
        free_bytes: t.free_bytes,
        inuse_objects: t.alloc_objects.saturating_sub(t.free_objects),
        inuse_bytes: t.inuse_bytes(),
        peak_inuse_bytes: t.peak,
        sample_rate: sampler::rate(),
        samples: sites::SAMPLES.load(Relaxed),
        profiler_bytes: counters::profiler_bytes(),
        thread_slots: counters::slot_count() as u64,
        dwarf_captures: stack::DWARF_CAPTURES.load(Relaxed),
        tag_names_refused: crate::tags::refused(),
        sample_padding_bytes: sites::SAMPLE_PADDING.load(Relaxed),
        lost_samples: sites::LOST_SAMPLES.load(Relaxed),
        unattributed_samples: sites::UNATTRIBUTED_SAMPLES.load(Relaxed),
    }
}

/// What readers print instead of zeros when [`is_active`](crate::is_active) is false.
pub(crate) const NOT_ACTIVE: &str = "heapsight is not the global allocator";
