//! What `profile()` costs under the site lock, and what a profile keeps, with 10,000 sites.
//!
//!     cargo build --release -p heapsight-dev --example lock_hold
//!     target/release/examples/lock_hold K
//!
//! Builds the sites of `dev/benches/sites10k`, takes two profiles (printing the profiler bytes each
//! one holds: the first includes the symbol and stack caches it fills), then copies the table
//! under the lock K more times as `profile()` does, printing the median and least time the lock
//! was held. For instruction counts, run it under callgrind at two K and take the slope:
//!
//!     valgrind --tool=callgrind --cache-sim=yes --toggle-collect='heapsight::sites::copy_table' \
//!         target/release/examples/lock_hold 10     # and 30
#[path = "../benches/sites10k/mod.rs"]
mod sites10k;

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

fn main() {
    let k: usize = std::env::args()
        .nth(1)
        .map_or(200, |a| a.parse().expect("K: a number of copies"));
    let live = sites10k::setup();
    let bytes = || heapsight::stats().profiler_bytes;
    let b0 = bytes();
    let first = heapsight::profile();
    let b1 = bytes();
    let second = heapsight::profile();
    let b2 = bytes();
    let mut held: Vec<_> = (0..k.max(1))
        .map(|_| heapsight::bench_snapshot_lock_hold())
        .collect();
    held.sort();
    println!(
        "{} sites; profiler bytes held by the first profile {} (with the caches it fills), by the \
         second {}; lock held per copy: median {:?}, least {:?} ({k} copies)",
        second.sites().len(),
        b1 - b0,
        b2 - b1,
        held[held.len() / 2],
        held[0]
    );
    drop((first, second, live));
}
