//! Sampled paths on several threads: do sampled allocations and frees of different blocks on
//! different threads wait for each other? Each thread keeps a ring of live blocks and replaces one
//! per step (a free and an allocation), at rate 1 (every allocation and every free goes through the
//! site table) and at 4 KiB. Prints, per rate, the throughput per thread with 2 and 4 threads
//! relative to one thread, as the median of interleaved rounds with its spread.
//!
//! `cargo bench -p heapsight-dev --bench sampled_threads` (or the built binary with `--rounds N`).
//! On a machine with fewer cores than threads the ratio also holds the CPU sharing: compare builds,
//! not the ratio to 1.
use std::hint::black_box;
use std::time::Instant;

use heapsight::HeapSight;

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

const RING: usize = 1024;

/// `steps` replacements in a ring of `RING` blocks of 16..1040 bytes.
#[inline(never)]
fn work(steps: usize, seed: u64) {
    let mut ring: Vec<Vec<u8>> = (0..RING).map(|_| Vec::new()).collect();
    let mut x = seed | 1;
    for i in 0..steps {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let size = 16 + (x % 1024) as usize;
        ring[i % RING] = black_box(vec![0u8; size]);
    }
    drop(black_box(ring));
}

/// Steps per second per thread with `threads` threads each doing `steps`.
fn per_thread(threads: usize, steps: usize) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || work(steps, 0x9e37_79b9 + t as u64));
        }
    });
    steps as f64 / start.elapsed().as_secs_f64()
}

fn median_spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    // `--single N`: N steps on one thread at rate 1 and nothing else, for instruction counts
    // under callgrind (the slope between two values of N cancels start-up).
    if let Some(n) = std::env::args()
        .skip_while(|a| a != "--single")
        .nth(1)
        .and_then(|n| n.parse().ok())
    {
        heapsight::set_sample_rate(1);
        work(n, 0x9e37_79b9);
        heapsight::set_sample_rate(0);
        return;
    }
    let rounds: usize = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(7);
    for (rate, steps) in [(1u64, 40_000usize), (4096, 400_000)] {
        heapsight::set_sample_rate(rate);
        per_thread(1, steps / 4); // warm-up: table entries, shards, thread slots
        let mut ratios: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut one = Vec::new();
        for _ in 0..rounds {
            // Interleaved: one, two, four threads in each round, so load drifts hit all alike.
            let base = per_thread(1, steps);
            one.push(base);
            ratios[0].push(per_thread(2, steps) / base);
            ratios[1].push(per_thread(4, steps) / base);
        }
        let (b, bl, bh) = median_spread(one);
        println!(
            "rate {rate:>5}: 1 thread {:.0} steps/s (spread {:.0}..{:.0})",
            b, bl, bh
        );
        for (n, r) in [2, 4].iter().zip(ratios) {
            let (m, lo, hi) = median_spread(r);
            println!(
                "rate {rate:>5}: {n} threads, per-thread throughput / 1 thread: {m:.3} (spread {lo:.3}..{hi:.3}, {rounds} rounds)"
            );
        }
    }
    heapsight::set_sample_rate(0);
    let s = heapsight::stats();
    println!("samples {}, profiler_bytes {}", s.samples, s.profiler_bytes);
}
