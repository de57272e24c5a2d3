//! The cost of a dump with 10,000 sampled sites: how long `profile()` holds the site lock (the
//! copy), and the whole pprof dump with symbols cached.
//!
//!     cargo bench -p heapsight-dev --bench dump
//!
//! 10,000 distinct stacks come from real calls: `step` walks 14 levels, going through `left` or
//! `right` by the bits of a path number, and allocates at the bottom; at rate 1 every allocation
//! is sampled, so every path is its own site.
#![allow(clippy::vec_box)] // each leaf allocation must be its own heap block: `Vec<Box<_>>`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

const SITES: u32 = 10_000;
const DEPTH: u32 = 14; // 2^14 > 10,000 paths

#[inline(never)]
fn left(bits: u32, depth: u32, out: &mut Vec<Box<[u8; 64]>>) -> usize {
    black_box(step(bits, depth, out)) + 1
}

#[inline(never)]
fn right(bits: u32, depth: u32, out: &mut Vec<Box<[u8; 64]>>) -> usize {
    black_box(step(bits, depth, out)) + 2
}

#[inline(never)]
fn step(bits: u32, depth: u32, out: &mut Vec<Box<[u8; 64]>>) -> usize {
    if depth == 0 {
        out.push(black_box(Box::new([0u8; 64])));
        return out.len();
    }
    let n = if bits & 1 == 0 {
        left(bits >> 1, depth - 1, out)
    } else {
        right(bits >> 1, depth - 1, out)
    };
    black_box(n)
}

fn setup() -> Vec<Box<[u8; 64]>> {
    let mut live = Vec::with_capacity(SITES as usize);
    heapsight::set_sample_rate(1);
    for path in 0..SITES {
        step(path, DEPTH, &mut live);
    }
    heapsight::set_sample_rate(0);
    live
}

fn dump(c: &mut Criterion) {
    let live = setup();
    let p = heapsight::profile(); // warms the symbol cache
    let sites = p.sites().len();
    assert!(
        sites >= SITES as usize,
        "expected {SITES} sites, got {sites}"
    );
    eprintln!(
        "sites: {sites}, symbol cache {} bytes",
        p.symbol_cache_bytes()
    );
    let mut g = c.benchmark_group("dump_10k_sites");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("lock_hold", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| heapsight::bench_snapshot_lock_hold())
                .sum()
        })
    });
    g.bench_function("profile", |b| b.iter(|| black_box(heapsight::profile())));
    g.bench_function("write_pprof", |b| {
        b.iter(|| {
            let mut v = Vec::with_capacity(1 << 20);
            p.write_pprof(&mut v).unwrap();
            black_box(v)
        })
    });
    g.bench_function("profile_and_write_pprof", |b| {
        b.iter(|| {
            let mut v = Vec::with_capacity(1 << 20);
            heapsight::profile().write_pprof(&mut v).unwrap();
            black_box(v)
        })
    });
    g.bench_function("write_text", |b| {
        b.iter(|| {
            let mut v = Vec::with_capacity(1 << 20);
            p.write_text(&mut v).unwrap();
            black_box(v)
        })
    });
    g.finish();
    drop(live);
}

criterion_group!(benches, dump);
criterion_main!(benches);
