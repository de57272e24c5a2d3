//! Samples leave no trace on the loop that took them (over glibc, the system allocator).
//!
//! A sampled small block is asked of the inner allocator at a raised alignment (4 KiB at the
//! default rate; see `filter`), so every free whose address is that aligned pays a memo check or
//! a probe, and every realloc of it leaves the fast path. glibc's tcache hands a freed chunk to
//! the next allocation of its size: were the sample asked at the caller's size, the loop that took
//! the sample would be given its 4 KiB-aligned chunk back and keep it, paying on every iteration
//! from then on. The sample's size is rounded up to its alignment (`filter::inner_layout`), which
//! puts it above tcache's bins. Checked here by address, not by time: over many samples taken and
//! freed, how many iterations of an alloc+free (and of an alloc+realloc+free) loop see a
//! 4 KiB-aligned block.
use std::alloc::{alloc, dealloc, realloc, Layout};
use std::hint::black_box;

use heapsight::HeapSight;

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

mod support;

/// Iterations of each loop: 32 MiB of 32 B blocks, about 64 samples at the default rate.
const N: usize = 1 << 20;

/// Runs `step` (which returns the address of the block it allocated) `N` times and returns how
/// many of those addresses were 4 KiB-aligned, and how many samples were taken meanwhile.
fn aligned_iterations(step: impl Fn() -> usize) -> (usize, u64) {
    let s0 = heapsight::stats().samples;
    let aligned = (0..N).filter(|_| step() & 4095 == 0).count();
    (aligned, heapsight::stats().samples - s0)
}

#[inline(never)]
fn pair() -> usize {
    let l = Layout::from_size_align(black_box(32), 8).unwrap();
    // SAFETY: non-zero size; freed with its layout.
    unsafe {
        let p = black_box(alloc(l));
        assert!(!p.is_null());
        dealloc(p, l);
        p as usize
    }
}

#[inline(never)]
fn grow() -> usize {
    let l = Layout::from_size_align(black_box(32), 8).unwrap();
    // SAFETY: non-zero sizes; the grown block is freed with its new layout.
    unsafe {
        let p = black_box(alloc(l));
        assert!(!p.is_null());
        let q = black_box(realloc(p, l, 64));
        assert!(!q.is_null());
        dealloc(q, Layout::from_size_align(64, 8).unwrap());
        p as usize
    }
}

fn check(name: &str, step: fn() -> usize) -> Result<(), String> {
    // Warm-up: the first samples taken and freed.
    aligned_iterations(step);
    let (aligned, samples) = aligned_iterations(step);
    println!("  {name}: {samples} samples taken and freed, {aligned} of {N} iterations on a 4 KiB-aligned block");
    if samples < 16 {
        return Err(format!(
            "only {samples} samples: the check tested too little"
        ));
    }
    // One iteration per sample is the sample itself (its block is aligned); a loop that kept a
    // freed sample's chunk would be aligned on nearly every iteration.
    if aligned as u64 > 2 * samples + N as u64 / 256 {
        return Err(format!(
            "{aligned} of {N} iterations got a 4 KiB-aligned block: the loop reuses freed samples"
        ));
    }
    Ok(())
}

fn main() {
    heapsight::set_sample_rate(heapsight::DEFAULT_SAMPLE_RATE);
    heapsight::set_sampling_seed(42);
    let mut r = support::Runner::new();
    r.check_ok("alloc_free_loop_does_not_keep_a_freed_sample", || {
        check("alloc+free 32 B", pair)
    });
    r.check_ok("realloc_loop_does_not_keep_a_freed_sample", || {
        check("alloc+realloc+free", grow)
    });
    r.finish();
}
