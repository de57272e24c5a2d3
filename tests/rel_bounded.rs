//! Guarantee 6: bounded memory. 100,000 distinct stacks hit the site cap and land in the overflow
//! site; the profiler's own memory (`Stats::profiler_bytes`) stays under the bound derived in
//! `profiler_bytes_bound` (and in docs/reliability.md) and does not grow past the cap. Also a
//! profile with more than 100,000 sites (the encoders' largest input). Deep stacks: rel_depth.
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
/// the site table's structures (src/sites.rs), for `sites` interned stacks (cap + the overflow
/// entry) of at most `depth` return addresses, `buckets` (stack, size, rate, tag) buckets,
/// `live` live samples and `slots` thread slots:
///
/// * a hashbrown table of `n` entries of `t` bytes has at most `2 × 8/7 × n` buckets (the next
///   power of two above `n × 8/7`), each `t + 1` bytes (a control byte), plus 16 bytes;
/// * a `Vec` of `n` elements has capacity at most `2n` (doubling), at least 4;
/// * per stack: its `Arc<[usize]>` (16 + 8 × depth), a 16-byte `Arc` in `stacks`, and an index
///   entry (16-byte key + 4-byte id, padded to 24);
/// * per bucket: 40 bytes in `buckets` and an index entry (24-byte key + 4-byte id → 32);
/// * per live sample: an index entry (8-byte address + 32-byte `Live` = 40), for the most samples
///   ever live at once;
/// * per thread: one 128-byte counter slot.
fn profiler_bytes_bound(sites: u64, depth: u64, buckets: u64, live: u64, slots: u64) -> u64 {
    let table = |n: u64, t: u64| (2 * n * 8).div_ceil(7).max(4) * (t + 1) + 16;
    let vec = |n: u64, t: u64| 2 * n.max(4) * t;
    let stacks = sites * (16 + 8 * depth) + vec(sites, 16) + table(sites, 24);
    let buckets = vec(buckets, 40) + table(buckets, 32);
    let live = table(live, 40);
    stacks + buckets + live + slots * 128 + 4096
}

/// The bound for the current settings, with the table's bucket cap (8 per site). Valid before the
/// first symbolized profile: the symbol cache and the debug info `backtrace` loads for it are
/// not in it.
fn bound_now() -> u64 {
    let s = heapsight::stats();
    let sites = heapsight::max_sites() as u64 + 1;
    let depth = heapsight::max_depth() as u64 + ENTRY_FRAMES;
    // The live-sample index keeps the capacity of its largest size (hash tables do not shrink),
    // so the bound needs the most samples ever live at once. Each live sample is a live block of
    // at least one byte (zero-size blocks are never sampled: rel_passthrough), so the peak of
    // live bytes bounds it.
    let live = s.peak_inuse_bytes;
    profiler_bytes_bound(sites, depth, 8 * sites, live, s.thread_slots)
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

/// Sets the site cap, allocates on 100,000 new distinct stacks, and checks that the table stopped
/// at the cap, that the rest went to the overflow site, that the profiler's memory is under the
/// bound, and that still more new stacks do not grow it.
fn cap_holds(cap: usize) {
    heapsight::set_max_sites(cap);
    heapsight::set_sample_rate(1);
    let over0 = heapsight::profile_unsymbolized().overflow_samples();
    distinct_stacks(0, 100_000);
    let p = heapsight::profile_unsymbolized();
    let regular = p.sites().iter().filter(|s| !s.overflow).count();
    assert!(regular <= cap, "{regular} sites past a cap of {cap}");
    assert!(
        regular >= cap * 9 / 10,
        "a cap of {cap} but only {regular} sites"
    );
    let over = overflow_site(&p).expect("no overflow site");
    assert!(over.frames().is_empty());
    let overflowed = p.overflow_samples() - over0;
    assert!(
        overflowed >= 100_000 - cap as u64,
        "only {overflowed} samples overflowed"
    );
    // Rate 1: every sample weighs 1, so the overflow site's count estimate is its sample count,
    // and it has nothing in use (every block was freed).
    assert_eq!(over.alloc_objects, over.samples);
    assert_eq!((over.inuse_objects, over.inuse_bytes), (0, 0));
    drop(p);
    let used = heapsight::stats().profiler_bytes;
    let bound = bound_now();
    println!("  (cap {cap}: profiler_bytes {used}, bound {bound})");
    assert!(
        used <= bound,
        "profiler_bytes {used} over the bound {bound}"
    );
    // Once the cap is reached, more new stacks cost nothing: they share the overflow site.
    distinct_stacks(100_000, 30_000);
    assert_eq!(
        heapsight::stats().profiler_bytes,
        used,
        "the profiler grew past the site cap"
    );
}

fn cap_of_1000_sites() {
    cap_holds(1000)
}

fn default_cap() {
    cap_holds(16_384)
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
        ("default_cap", default_cap),
        ("profile_with_100k_sites", profile_with_100k_sites),
    ]);
}
