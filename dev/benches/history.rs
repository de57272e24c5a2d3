//! What the history costs: time per recorded point with N live sites, the ring's memory when
//! full (the default hour of 10 s points), and the time of `growing()` over a full ring.
//!
//!     cargo bench -p heapsight-dev --bench history            # N = 100, 1000, 10000
//!     cargo bench -p heapsight-dev --bench history -- 1000 5  # one N, 5 timed points (callgrind)
//!
//! Wall clock is the median of the timed points with its min-max, on whatever machine runs it;
//! for a deterministic figure run the second form under `valgrind --tool=callgrind` with two
//! point counts and take the slope (docs/benches.md).
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

/// Calls `f` at the end of a chain of `levels` frames whose return addresses follow `bits`:
/// `2^levels` distinct stacks.
fn on_distinct_stack(bits: u64, levels: u32, f: &mut dyn FnMut()) {
    if levels == 0 {
        f()
    } else if bits & 1 == 0 {
        left(bits >> 1, levels - 1, f)
    } else {
        right(bits >> 1, levels - 1, f)
    }
}

#[inline(never)]
fn left(bits: u64, levels: u32, f: &mut dyn FnMut()) {
    on_distinct_stack(bits, levels, f);
    std::hint::black_box(bits);
}

#[inline(never)]
fn right(bits: u64, levels: u32, f: &mut dyn FnMut()) {
    on_distinct_stack(bits, levels, f);
    std::hint::black_box(levels);
}

/// `n` live sites (every allocation sampled), one 256-byte block each.
fn sites(n: usize) -> Vec<Vec<u8>> {
    heapsight::set_sample_rate(1);
    let levels = (n as f64).log2().ceil() as u32;
    let mut keep = Vec::with_capacity(n);
    for i in 0..n as u64 {
        on_distinct_stack(i, levels, &mut || keep.push(vec![1u8; 256]));
    }
    heapsight::set_sample_rate(heapsight::DEFAULT_SAMPLE_RATE);
    keep
}

fn median_spread(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn run(n: usize, reps: usize, fill: bool) {
    let keep = sites(n);
    heapsight::history::reset(
        heapsight::history::DEFAULT_INTERVAL,
        heapsight::history::DEFAULT_WINDOW,
    );
    let t = Instant::now();
    heapsight::history::record_now();
    let first = t.elapsed();
    let times: Vec<Duration> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            heapsight::history::record_now();
            t.elapsed()
        })
        .collect();
    let (med, lo, hi) = median_spread(times);
    // In the full run, as many plain profiles: how much of a point is the profile it is built
    // from. (Not in the one-N form, whose callgrind slope is then the points' alone.)
    let pmed = if fill {
        median_spread(
            (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    drop(heapsight::profile());
                    t.elapsed()
                })
                .collect(),
        )
        .0
    } else {
        Duration::ZERO
    };
    println!(
        "{n:>6} sites: first point {:8.2} ms (symbolizes new stacks); then per point {:7.3} ms median ({:.3}-{:.3}, {reps} points); profile() alone {:.3} ms",
        ms(first),
        ms(med),
        ms(lo),
        ms(hi),
        ms(pmed)
    );
    if fill {
        let before = heapsight::stats().profiler_bytes;
        let h = heapsight::history();
        let cap = h.capacity();
        drop(h);
        while heapsight::history().len() < cap {
            heapsight::history::record_now();
        }
        let h = heapsight::history();
        let after = heapsight::stats().profiler_bytes;
        let t = Instant::now();
        let g = h.growing();
        let growing = t.elapsed();
        println!(
            "        full ring: {} points, History::bytes {} ({:.0} KiB), profiler_bytes grew {:.0} KiB; growing() {:.2} ms ({} reported)",
            h.len(),
            h.bytes(),
            h.bytes() as f64 / 1024.0,
            (after as f64 - before as f64) / 1024.0,
            ms(growing),
            g.len()
        );
    }
    drop(keep);
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    match args.as_slice() {
        [n, reps] => run(n.parse().unwrap(), reps.parse().unwrap(), false),
        _ => {
            for n in [100, 1000, 10_000] {
                run(n, 21, true);
            }
        }
    }
}
