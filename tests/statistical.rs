//! Statistical accuracy of the per-site estimates, with a fixed seed and bounds from the model.
//!
//! A site making N allocations of S bytes at rate R samples each one independently with
//! probability p = 1 - exp(-S/R) and weights a sample by 1/p, so its count estimate is
//! (1/p) × Binomial(N, p): mean N, standard deviation sqrt(N (1-p) / p). Bytes are S times that.
//! Every estimate must fall within 4 standard deviations of the truth; in-use of a site whose
//! blocks were all freed must be exactly 0.
use std::alloc::{alloc, dealloc, Layout};

use heapsight::HeapSight;

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

mod support;

const RATE: u64 = heapsight::DEFAULT_SAMPLE_RATE;
const KEEP: usize = 20_000;
const KEEP_SIZE: usize = 4096;
const CHURN: usize = 200_000;
const CHURN_SIZE: usize = 512;

/// Allocates `n` blocks of 4 KiB and keeps them (written into `out`, preallocated by the caller).
#[inline(never)]
fn keep_4k(out: &mut Vec<*mut u8>, n: usize) {
    let l = Layout::from_size_align(KEEP_SIZE, 8).unwrap();
    for _ in 0..n {
        // SAFETY: non-zero size layout; the block is freed by `release` with the same layout.
        out.push(unsafe { alloc(l) });
    }
}

/// A second call site for the rate-change run (own body: identical functions can be folded
/// into one by the linker, and a tail call would leave no frame of its own).
#[inline(never)]
fn hold_two_rates(out: &mut Vec<*mut u8>, n: usize) {
    let l = Layout::from_size_align(KEEP_SIZE, 8).unwrap();
    for i in 0..n {
        // SAFETY: non-zero size layout; the block is freed by `release` with the same layout.
        let p = unsafe { alloc(l) };
        // SAFETY: `p` is a fresh 4 KiB block.
        unsafe { p.write(i as u8) };
        out.push(p);
    }
    std::hint::black_box(out.len());
}

fn release(blocks: &mut Vec<*mut u8>) {
    let l = Layout::from_size_align(KEEP_SIZE, 8).unwrap();
    for p in blocks.drain(..) {
        // SAFETY: allocated by `keep_4k*` with `l`, freed once.
        unsafe { dealloc(p, l) }
    }
}

/// Allocates and immediately frees `n` blocks of 512 B.
#[inline(never)]
fn churn_512(n: usize) {
    let l = Layout::from_size_align(CHURN_SIZE, 8).unwrap();
    for _ in 0..n {
        // SAFETY: non-zero size; freed right away with the same layout.
        unsafe {
            let p = alloc(l);
            std::hint::black_box(p);
            dealloc(p, l);
        }
    }
}

#[inline(never)]
fn churn_two_rates(n: usize) {
    let l = Layout::from_size_align(CHURN_SIZE, 8).unwrap();
    let mut sum = 0u8;
    for i in 0..n {
        // SAFETY: non-zero size; written and freed right away with the same layout.
        unsafe {
            let p = std::hint::black_box(alloc(l));
            p.write(i as u8);
            sum = sum.wrapping_add(p.read());
            dealloc(p, l);
        }
    }
    std::hint::black_box(sum);
}

/// Variance of the count estimate for `n` allocations of `size` bytes at `rate`.
fn var(n: usize, size: usize, rate: u64) -> f64 {
    let p = -(-(size as f64) / rate as f64).exp_m1();
    n as f64 * (1.0 - p) / p
}

fn within(what: &str, est: f64, truth: f64, sd: f64) {
    let z = (est - truth) / sd;
    println!("    {what:<40} estimate {est:>14.0} truth {truth:>14.0} sd {sd:>10.0} z {z:+.2}");
    assert!(z.abs() <= 4.0, "{what}: {est} is {z:.2} sd from {truth}");
}

/// Checks a site's four estimates against the truth; `var_count` is the count estimate's variance.
fn check_site(
    p: &heapsight::HeapProfile,
    f: &str,
    size: usize,
    allocs: usize,
    live: usize,
    var_alloc: f64,
    var_live: f64,
) {
    let [ao, ab, io, ib, samples] = support::site_totals(p, f);
    println!("  site {f}: {samples} samples");
    assert!(samples > 0.0, "no samples for {f}");
    let s = size as f64;
    within("alloc_objects", ao, allocs as f64, var_alloc.sqrt());
    within(
        "alloc_bytes",
        ab,
        (allocs * size) as f64,
        s * var_alloc.sqrt(),
    );
    if live == 0 {
        assert_eq!((io, ib), (0.0, 0.0), "{f}: every block was freed");
    } else {
        within("inuse_objects", io, live as f64, var_live.sqrt());
        within("inuse_bytes", ib, (live * size) as f64, s * var_live.sqrt());
    }
}

fn main() {
    heapsight::set_sampling_seed(0x5eed);

    support::run(&[
        ("estimates_within_4_sd_at_512k", || {
            heapsight::set_sample_rate(RATE);
            let mut kept = Vec::with_capacity(KEEP);
            keep_4k(&mut kept, KEEP);
            churn_512(CHURN);
            let p = heapsight::profile();
            let v = var(KEEP, KEEP_SIZE, RATE);
            check_site(&p, "keep_4k", KEEP_SIZE, KEEP, KEEP, v, v);
            check_site(
                &p,
                "churn_512",
                CHURN_SIZE,
                CHURN,
                0,
                var(CHURN, CHURN_SIZE, RATE),
                0.0,
            );
            drop(p);
            // In-use is live: freeing half the kept blocks takes their weight out at once. The
            // estimate for the remaining half is the weighted count of samples among them.
            let l = Layout::from_size_align(KEEP_SIZE, 8).unwrap();
            for q in kept.drain(..KEEP / 2) {
                // SAFETY: allocated by keep_4k with `l`, freed once.
                unsafe { dealloc(q, l) }
            }
            let p = heapsight::profile();
            let [_, _, io, ib, _] = support::site_totals(&p, "keep_4k");
            within(
                "inuse_objects after freeing half",
                io,
                (KEEP / 2) as f64,
                v.sqrt() / 2f64.sqrt(),
            );
            within(
                "inuse_bytes after freeing half",
                ib,
                (KEEP / 2 * KEEP_SIZE) as f64,
                KEEP_SIZE as f64 * (v / 2.0).sqrt(),
            );
            drop(p);
            release(&mut kept);
            let p = heapsight::profile();
            let [_, _, io, ib, _] = support::site_totals(&p, "keep_4k");
            assert_eq!((io, ib), (0.0, 0.0), "all kept blocks freed");
        }),
        ("estimates_within_4_sd_across_a_rate_change", || {
            // Half of each workload at 512 KiB, half at 64 KiB: samples keep the weight of the
            // rate their countdown was drawn with. Variances add.
            let low = 64 * 1024;
            let mut kept = Vec::with_capacity(KEEP);
            heapsight::set_sample_rate(RATE);
            hold_two_rates(&mut kept, KEEP / 2);
            churn_two_rates(CHURN / 2);
            heapsight::set_sample_rate(low);
            hold_two_rates(&mut kept, KEEP / 2);
            churn_two_rates(CHURN / 2);
            heapsight::set_sample_rate(RATE);
            let p = heapsight::profile();
            let vk = var(KEEP / 2, KEEP_SIZE, RATE) + var(KEEP / 2, KEEP_SIZE, low);
            check_site(&p, "hold_two_rates", KEEP_SIZE, KEEP, KEEP, vk, vk);
            let vc = var(CHURN / 2, CHURN_SIZE, RATE) + var(CHURN / 2, CHURN_SIZE, low);
            check_site(&p, "churn_two_rates", CHURN_SIZE, CHURN, 0, vc, 0.0);
            drop(p);
            release(&mut kept);
        }),
    ]);
}
