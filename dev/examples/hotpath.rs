//! The hot path under a deterministic instruction counter: N unsampled 32 B alloc+free pairs
//! through the inner allocator alone and through heapsight (rate 0 and the default 512 KiB), plus
//! sampled pairs at rate 1 (frame pointers and DWARF). Each case is its own `#[inline(never)]`
//! function, so callgrind's inclusive count per function is the cost of the case:
//!
//!     python3 dev/benches/callgrind.py          # builds this, runs valgrind, prints the table
//!
//! The allocators are called directly (`GlobalAlloc::alloc(&ALLOC, ..)`) rather than through
//! `__rust_alloc`, so that one binary holds every configuration side by side; the global allocator
//! is heapsight (the per-thread state and site table are process-wide, whichever static calls in).
//! Run it without valgrind for a quick wall-clock p50 of the sampled pair.
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::Instant;

use heapsight::HeapSight;
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();
static HS_MIMALLOC: HeapSight<MiMalloc> = HeapSight::new(MiMalloc);

const LAYOUT: Layout = match Layout::from_size_align(32, 8) {
    Ok(l) => l,
    Err(_) => panic!(),
};

#[inline(always)]
fn pairs<A: GlobalAlloc>(a: &A, n: u64) {
    // The size as a run-time value, as it is behind `__rust_alloc(size, align)`: otherwise the
    // compiler specialises the hook for the constant 32 (immediates instead of a register).
    let layout = black_box(LAYOUT);
    for _ in 0..n {
        // SAFETY: non-zero layout; freed with the layout it was allocated with.
        unsafe {
            let p = a.alloc(layout);
            black_box(p);
            a.dealloc(p, layout);
        }
    }
}

// One named function per case: callgrind collects inside one of them at a time. Each body
// differs (its marker byte), so the compiler cannot fold the cases into one.
macro_rules! cases {
    ($($name:ident: $marker:literal => $alloc:expr;)*) => {$(
        #[inline(never)]
        fn $name(n: u64) {
            black_box($marker);
            pairs(&$alloc, n)
        }
    )*};
}

cases! {
    case_system: 1u8 => System;
    case_heapsight_system_rate0: 2u8 => GLOBAL;
    case_heapsight_system_default: 3u8 => GLOBAL;
    case_mimalloc: 4u8 => MiMalloc;
    case_heapsight_mimalloc_rate0: 5u8 => HS_MIMALLOC;
    case_heapsight_mimalloc_default: 6u8 => HS_MIMALLOC;
    case_sampled_fp: 7u8 => GLOBAL;
    case_sampled_dwarf: 8u8 => GLOBAL;
}

/// Median nanoseconds of one sampled pair, timing each pair on its own.
fn p50_ns(reps: usize) -> f64 {
    let mut t: Vec<u64> = Vec::with_capacity(reps);
    for _ in 0..reps {
        let s = Instant::now();
        pairs(&GLOBAL, 1);
        t.push(s.elapsed().as_nanos() as u64);
    }
    t.sort_unstable();
    t[reps / 2] as f64
}

/// A named kernel run under callgrind.
type Case = (&'static str, fn(u64));

const CASES: [Case; 8] = [
    ("system", case_system),
    ("heapsight_system_rate0", case_heapsight_system_rate0),
    ("heapsight_system_default", case_heapsight_system_default),
    ("mimalloc", case_mimalloc),
    ("heapsight_mimalloc_rate0", case_heapsight_mimalloc_rate0),
    (
        "heapsight_mimalloc_default",
        case_heapsight_mimalloc_default,
    ),
    ("sampled_fp", case_sampled_fp),
    ("sampled_dwarf", case_sampled_dwarf),
];

/// Puts the process in the state a case measures: sample rate and unwinder.
fn configure(case: &str) {
    let (rate, unwinder) = match case {
        "sampled_fp" => (1, heapsight::Unwinder::FramePointers),
        "sampled_dwarf" => (1, heapsight::Unwinder::Dwarf),
        c if c.ends_with("_default") => (heapsight::DEFAULT_SAMPLE_RATE, heapsight::Unwinder::Auto),
        _ => (0, heapsight::Unwinder::Auto),
    };
    heapsight::set_unwinder(unwinder);
    heapsight::set_sample_rate(rate);
}

/// `hotpath CASE N` runs one case N times (what callgrind.py does, one valgrind run per case,
/// collecting only inside `case_*`). `hotpath` alone times every case with the wall clock.
fn main() {
    heapsight::set_sampling_seed(1);
    // Warm every path up (thread slot, first samples, site-table growth), outside the cases.
    heapsight::set_sample_rate(1);
    pairs(&GLOBAL, 100);
    pairs(&HS_MIMALLOC, 100);
    pairs(&MiMalloc, 100);

    let args: Vec<String> = std::env::args().collect();
    if let [_, case, n] = &args[..] {
        let (_, f) = CASES
            .iter()
            .find(|(name, _)| name == case)
            .expect("unknown case");
        configure(case);
        f(n.parse().expect("N"));
        return;
    }
    let n = 2_000_000;
    for (name, f) in CASES {
        configure(name);
        let n = if name.starts_with("sampled") {
            20_000
        } else {
            n
        };
        let t = Instant::now();
        f(n);
        println!(
            "{name:<28} {:>8.1} ns/pair (mean of {n})",
            t.elapsed().as_nanos() as f64 / n as f64
        );
    }
    for (name, reps) in [("sampled_fp", 20_000), ("sampled_dwarf", 2_000)] {
        configure(name);
        println!(
            "{name:<28} {:>8.0} ns/pair (p50 of {reps} single timed pairs)",
            p50_ns(reps)
        );
    }
}
