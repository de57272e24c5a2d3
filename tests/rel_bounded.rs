//! Guarantee 6: bounded memory. 100,000 distinct short-lived stacks pass through a capped site
//! table: idle stacks are reclaimed, so the table stays at the cap, nothing goes to the overflow
//! site, and the profiler's own memory (`Stats::profiler_bytes`) stays under the bound derived in
//! `profiler_bytes_bound` (and in docs/reliability.md) and does not grow. When every stack holds
//! live memory, new stacks go to the overflow site, and stop going there once the memory is freed.
//! Also a profile with more than 100,000 sites (the encoders' largest input). Deep stacks:
//! rel_depth; reclamation and totals: rel_lifecycle.
use std::hint::black_box;

use heapsight::HeapSight;

mod support;
use support::on_distinct_stack;

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

/// `stack::ENTRY_FRAMES`: frames captured beyond `max_depth` so that trimming the allocator's
/// own frames still leaves `max_depth` of the program's.
const ENTRY_FRAMES: u64 = 24;

/// An upper bound on `profiler_bytes` with no profile alive and no symbol cache, derived from
/// the site table's structures (src/sites.rs; entry sizes checked by its `entry_sizes` test) and
/// the unsymbolized stack cache (src/snapshot.rs), for `sites` interned stacks of at most `depth`
/// return addresses, `buckets` (stack, size, rate, tag) buckets, `live` live samples (the most
/// ever live at once) and `slots` thread slots:
///
/// * a hashbrown table of `n` entries of `t` bytes has at most `2 × 8/7 × n` buckets (the next
///   power of two above `n × 8/7`), each `t + 1` bytes (a control byte), plus 16 bytes;
/// * a `Vec` of `n` elements has capacity at most `2n` (doubling), at least 4;
/// * per stack: its frames (16 + 8 × depth; twice, as a stack reclaimed while it had samples
///   live at the last peak keeps its frames for the peak profile until the next capture), a
///   40-byte entry in `stacks`, an index entry (8-byte hash + 4-byte id → 16) and a lifetime row
///   (320, reserved when the stack is interned; free ids and rows are chained through
///   themselves);
/// * per bucket: 72 bytes in `buckets`, an index entry (24-byte key + 4-byte id → 32) and at
///   most one retired peak entry (56);
/// * per live sample: a shard entry (8-byte address + 40-byte `Live` = 48), plus per shard a
///   margin of 16 entries in the map and 64 slots of 16 bytes in the exact set, with its spare;
/// * the unsymbolized stack cache: per stack an entry (48) and a canonical trimmed stack
///   (16 + 24 × depth, and a 16-byte set entry);
/// * per thread: one 128-byte counter slot.
fn profiler_bytes_bound(sites: u64, depth: u64, buckets: u64, live: u64, slots: u64) -> u64 {
    let table = |n: u64, t: u64| (2 * n * 8).div_ceil(7).max(4) * (t + 1) + 16;
    let vec = |n: u64, t: u64| 2 * n.max(4) * t;
    let stacks = 2 * sites * (16 + 8 * depth) + vec(sites, 40) + table(sites, 16) + vec(sites, 320);
    let buckets = vec(buckets, 72) + table(buckets, 32) + vec(buckets, 56);
    let live = table(live + 16, 48) + 32 * (table(16, 48) + 2 * (64 * 16 + 24));
    let cache = table(sites, 48) + sites * (16 + 24 * depth) + table(sites, 16);
    stacks + buckets + live + cache + slots * 128 + 4096
}

/// The bound for the current settings: the table holds at most `max(cap, live samples)` stacks
/// (plus the frame-less one) and 8 buckets per stack. Valid before the first symbolized profile:
/// the symbol cache and the debug info `backtrace` loads for it are not in it.
fn bound_now() -> u64 {
    let s = heapsight::stats();
    let (_, _, _, live_high) = heapsight::site_table_counts();
    let sites = heapsight::max_sites().max(live_high) as u64 + 1;
    println!("  (most samples ever live at once: {live_high})");
    let depth = heapsight::max_depth() as u64 + ENTRY_FRAMES;
    profiler_bytes_bound(sites, depth, 8 * sites, live_high as u64, s.thread_slots)
}

/// Allocates and frees one block on each of `n` distinct stacks (17 levels: 131,072 paths).
#[inline(never)]
fn distinct_stacks(first: u64, n: u64) {
    for i in first..first + n {
        on_distinct_stack(i, 17, &mut || {
            black_box(vec![0u8; 64]);
        });
    }
}

fn overflow_site(p: &heapsight::HeapProfile) -> Option<&heapsight::Site> {
    p.sites().iter().find(|s| s.overflow)
}

fn check_bound(what: &str) -> u64 {
    let used = heapsight::stats().profiler_bytes;
    let bound = bound_now();
    println!("  ({what}: profiler_bytes {used}, bound {bound})");
    assert!(
        used <= bound,
        "profiler_bytes {used} over the bound {bound}"
    );
    used
}

/// Sets the site cap, allocates on 100,000 new distinct short-lived stacks, and checks that the
/// table stopped at the cap by reclaiming idle stacks (none went to the overflow site), that the
/// profiler's memory is under the bound, and that still more new stacks do not grow it.
fn cap_holds(cap: usize) {
    heapsight::set_max_sites(cap);
    heapsight::set_sample_rate(1);
    let over0 = heapsight::profile_unsymbolized().overflow_samples();
    let (_, reclaimed0, _, _) = heapsight::site_table_counts();
    distinct_stacks(0, 100_000);
    let (stacks, reclaimed, _, _) = heapsight::site_table_counts();
    assert!(stacks <= cap, "{stacks} stacks past a cap of {cap}");
    assert!(
        reclaimed - reclaimed0 >= 100_000 - cap as u64,
        "only {} stacks reclaimed",
        reclaimed - reclaimed0
    );
    let p = heapsight::profile_unsymbolized();
    let regular = p.sites().iter().filter(|s| !s.overflow).count();
    assert!(regular <= cap, "{regular} sites past a cap of {cap}");
    assert_eq!(p.overflow_samples(), over0, "samples overflowed");
    // Rate 1: every sample weighs 1, so the frame-less site (the reclaimed stacks' totals) counts
    // its samples, and it has nothing in use (every block was freed).
    let over = overflow_site(&p).expect("no frame-less site");
    assert!(over.frames().is_empty());
    assert_eq!(over.alloc_objects, over.samples);
    assert_eq!((over.inuse_objects, over.inuse_bytes), (0, 0));
    drop(p);
    check_bound(&format!("cap {cap}"));
    // Once the cap is reached, more new stacks reuse reclaimed entries. (The indexes may still
    // double once: a hash table reuses the slots of removed keys only after a rehash, which
    // grows it when it is more than half full. The bound allows for that.)
    distinct_stacks(100_000, 30_000);
    check_bound(&format!("cap {cap}, 30,000 more stacks"));
}

fn cap_of_1000_sites() {
    cap_holds(1000)
}

fn default_cap() {
    cap_holds(16_384)
}

/// `n` distinct stacks (from bit pattern `first`) that each keep one 64 KiB block live.
#[inline(never)]
fn holders(first: u64, n: u64) -> Vec<Vec<u8>> {
    let mut keep = Vec::with_capacity(n as usize);
    for i in first..first + n {
        on_distinct_stack(i, 17, &mut || keep.push(black_box(vec![0u8; 64 << 10])));
    }
    keep
}

/// Allocates and frees one 64 KiB block on each of `n` distinct stacks.
#[inline(never)]
fn big_short_lived(first: u64, n: u64) {
    for i in first..first + n {
        on_distinct_stack(i, 17, &mut || {
            black_box(vec![0u8; 64 << 10]);
        });
    }
}

/// With every stack of a full table holding live memory there is nothing to reclaim, and new
/// stacks go to the overflow site; once the memory is freed they are reclaimed again, even those
/// live at the last peak capture.
fn overflow_takes_only_what_cannot_be_reclaimed() {
    let cap = 1000;
    heapsight::set_max_sites(cap);
    // 4 KiB: a 64 KiB block is sampled with probability 1 - e^-16, and few other allocations
    // are, so the live samples are about one per holder and do not pay for more stacks.
    heapsight::set_sample_rate(4096);
    let keep = holders(1 << 16, cap as u64);
    let over0 = heapsight::profile_unsymbolized().overflow_samples();
    big_short_lived(0, 5_000);
    let over1 = heapsight::profile_unsymbolized().overflow_samples();
    println!("  ({} of 5000 samples overflowed)", over1 - over0);
    assert!(over1 - over0 >= 2_500, "{} overflowed", over1 - over0);
    check_bound("full of live stacks");
    drop(keep);
    big_short_lived(5_000, 5_000);
    let p = heapsight::profile_unsymbolized();
    assert_eq!(
        p.overflow_samples(),
        over1,
        "overflow after the memory was freed"
    );
    assert!(p.sites().iter().filter(|s| !s.overflow).count() <= cap);
    drop(p);
    check_bound("after");
}

fn profile_with_100k_sites() {
    heapsight::set_max_sites(200_000);
    heapsight::set_sample_rate(1);
    distinct_stacks(0, 1 << 17);
    // Unsymbolized: symbolizing 10^5 stacks takes about a second in release and minutes in a
    // debug build (backtrace's DWARF parser unoptimized).
    let p = heapsight::profile_unsymbolized();
    let regular = p.sites().iter().filter(|s| !s.overflow).count();
    assert!(regular >= 100_000, "{regular} sites");
    // The 17-level paths: at least 17 frames each, all distinct.
    let deep: std::collections::HashSet<Vec<usize>> = p
        .sites()
        .iter()
        .filter(|s| s.frames().len() >= 17)
        .map(|s| s.frames().iter().map(|f| f.address).collect())
        .collect();
    assert!(deep.len() >= 100_000, "{} distinct deep stacks", deep.len());
    let total: u64 = p.sites().iter().map(|s| s.inuse_bytes).sum();
    black_box(total);
    println!(
        "  ({regular} sites; profiler_bytes {} with the profile alive)",
        heapsight::stats().profiler_bytes
    );
    drop(deep);
}

fn main() {
    support::watchdog(120, "rel_bounded");
    support::run(&[
        // The bounds hold with no symbolized profile taken: in-process symbolization adds the
        // debug info `backtrace` loads (tens of MB), also counted in `profiler_bytes`.
        ("cap_of_1000_sites", cap_of_1000_sites),
        (
            "overflow_takes_only_what_cannot_be_reclaimed",
            overflow_takes_only_what_cannot_be_reclaimed,
        ),
        ("default_cap", default_cap),
        ("profile_with_100k_sites", profile_with_100k_sites),
    ]);
}
