//! heapsight: an always-on heap profiler for Rust, as your `#[global_allocator]`.
//!
//! (The full manual is assembled below as the features land.)
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod alloc;
mod config;
mod counters;
mod guard;
mod sampler;
mod sites;
mod snapshot;
mod stack;
mod symbols;
mod sync;

pub use crate::alloc::HeapSight;
pub use crate::config::ParseError;
pub use crate::snapshot::{HeapProfile, Site};
pub use crate::stack::Unwinder;
pub use crate::symbols::{Frame, Symbol};

/// Go's default `MemProfileRate`, heapsight's default: one sample per 512 KiB allocated.
pub const DEFAULT_SAMPLE_RATE: u64 = sampler::DEFAULT_RATE;

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
    /// Highest `inuse_bytes` reached. Exact while one thread allocates at a time; with several
    /// threads allocating at once it can be off by about what one thread allocates between two of
    /// its samples (≈ the sample rate; 1 MiB at rate 0). See the crate docs.
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
}

/// Reads the exact counters. Lock-free, allocation-free, safe to call from any thread at any time.
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
            // Calling thread: also re-base our own peak candidate (see `counters`).
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
        sample_rate: sample_rate(),
        samples: sites::SAMPLES.load(std::sync::atomic::Ordering::Relaxed),
        profiler_bytes: counters::profiler_bytes() as u64,
        thread_slots: counters::slot_count() as u64,
        dwarf_captures: stack::DWARF_CAPTURES.load(std::sync::atomic::Ordering::Relaxed),
    }
}

/// Sets the sampling rate: on average one sample per `bytes` allocated (Go's `MemProfileRate`).
/// 0 turns sampling off, 1 samples every allocation. The default is 512 KiB, or
/// `HEAPSIGHT_SAMPLE_RATE` from the environment.
///
/// The calling thread switches at once; every other thread switches at its next sample, within
/// about one interval of the old rate (1 MiB if it was 0). Samples already taken keep the weight of
/// the rate they were taken at, so estimates stay unbiased across a change.
pub fn set_sample_rate(bytes: u64) {
    alloc::set_sample_rate(bytes)
}

/// The sampling rate in force, in bytes.
pub fn sample_rate() -> u64 {
    alloc::sample_rate()
}

/// Seeds the sampling generator, for reproducible profiles (tests, benchmarks). Reseeds the
/// calling thread at once; threads started later derive their seeds from it in start order.
pub fn set_sampling_seed(seed: u64) {
    alloc::set_seed(seed)
}

/// Sets how many frames a sampled stack keeps (leaf-most; default 128, at most 256). Also
/// `HEAPSIGHT_MAX_DEPTH`.
pub fn set_max_depth(frames: usize) {
    alloc::MAX_DEPTH.store(frames.clamp(1, stack::MAX_DEPTH_LIMIT), std::sync::atomic::Ordering::Relaxed);
}

/// Sets the cap on distinct sampled stacks (default 16,384); samples with a new stack beyond it go
/// to one overflow site. Also `HEAPSIGHT_MAX_SITES`.
pub fn set_max_sites(sites: usize) {
    sites::MAX_SITES.store(sites.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// Chooses how sampled stacks are captured (default [`Unwinder::Auto`]). Also
/// `HEAPSIGHT_UNWINDER=auto|fp|dwarf`.
pub fn set_unwinder(u: Unwinder) {
    stack::set_unwinder(u)
}

/// Takes a heap profile: every sampled call site with unbiased estimates of allocated and live
/// objects and bytes, stacks symbolized in process (cached). Safe to call from any thread while
/// the program runs; the site lock is held only to copy the table.
pub fn profile() -> HeapProfile {
    snapshot::take(true)
}

/// Like [`profile`] but without symbolizing: frames carry addresses only, for offline
/// symbolization (`go tool pprof BINARY PROFILE`).
pub fn profile_unsymbolized() -> HeapProfile {
    snapshot::take(false)
}
