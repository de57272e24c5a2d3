//! The cost of a dump with 10,000 sampled sites: how long `profile()` holds the site lock (the
//! copy), and the whole pprof dump with symbols cached.
//!
//!     cargo bench -p heapsight-dev --bench dump
//!
//! The 10,000 distinct stacks come from real calls (see `sites10k`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

mod sites10k;
use sites10k::{setup, SITES};

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

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
