//! Stack lifecycle: a long-running program whose code paths change keeps attributing. Past the
//! site cap the table reclaims stacks with no live sample (least recently sampled first) instead
//! of sending new stacks to the overflow site; the reclaimed stacks' totals stay in the profile
//! (in the frame-less site), so totals still equal the exact counters, and a `delta` across the
//! reclamation stays right.
use std::hint::black_box;

use heapsight::HeapSight;

mod support;
use support::{on_distinct_stack, site_has};

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

const SHORT_LIVED: u64 = 200_000;
/// The default site cap (`HEAPSIGHT_MAX_SITES`).
const DEFAULT_MAX_SITES: usize = 16_384;
const HOLDERS: u64 = 100;

/// Allocates and frees one block on each of `n` distinct stacks (18 levels: 262,144 paths).
#[inline(never)]
fn short_lived_stacks(first: u64, n: u64) {
    for i in first..first + n {
        on_distinct_stack(i, 18, &mut || {
            black_box(vec![0u8; 64]);
        });
    }
}

/// The one allocation of a live-memory holder: `1000 + i` bytes.
#[inline(never)]
fn live_marker(i: u64) -> Box<[u8]> {
    black_box(vec![i as u8; 1000 + i as usize].into_boxed_slice())
}

fn sum(p: &heapsight::HeapProfile) -> (u64, u64, u64, u64) {
    p.sites().iter().fold((0, 0, 0, 0), |a, s| {
        (
            a.0 + s.alloc_objects,
            a.1 + s.alloc_bytes,
            a.2 + s.inuse_objects,
            a.3 + s.inuse_bytes,
        )
    })
}

/// Rate 1: every allocation is a sample of weight 1, so estimates are exact counts and must
/// equal the exact counters' differences.
fn live_stacks_keep_their_frames_after_200k_short_lived_ones() {
    assert_eq!(heapsight::max_sites(), DEFAULT_MAX_SITES);
    let mut keep: Vec<Box<[u8]>> = Vec::with_capacity(HOLDERS as usize);
    heapsight::set_sample_rate(1);
    let s0 = heapsight::stats();
    let p0 = heapsight::profile();

    short_lived_stacks(0, SHORT_LIVED);
    let (stacks, reclaimed, _, _) = heapsight::site_table_counts();
    println!("  ({stacks} stacks in the table, {reclaimed} reclaimed)");
    assert!(stacks <= DEFAULT_MAX_SITES, "{stacks} stacks");
    assert!(
        reclaimed >= SHORT_LIVED - DEFAULT_MAX_SITES as u64,
        "only {reclaimed} stacks reclaimed"
    );
    // A symbolized profile now fills the stack cache with the short-lived stacks, whose ids the
    // holders below then take over: the next profile must show the holders' frames.
    let mid = heapsight::profile();
    assert_eq!(mid.overflow_samples(), p0.overflow_samples());
    drop(mid);

    for i in 0..HOLDERS {
        on_distinct_stack(i, 17, &mut || keep.push(live_marker(i)));
    }
    let s1 = heapsight::stats();
    heapsight::set_sample_rate(0);
    let p1 = heapsight::profile();

    // Nothing went to the overflow site: every new stack found an idle one to reclaim.
    assert_eq!(p1.overflow_samples(), p0.overflow_samples());
    // Every holder on a site of its own, with its frames, exactly its block live.
    let holders: Vec<&heapsight::Site> = p1
        .sites()
        .iter()
        .filter(|s| site_has(s, "live_marker"))
        .collect();
    assert_eq!(holders.len(), HOLDERS as usize, "holder sites");
    let mut sizes: Vec<u64> = holders
        .iter()
        .map(|s| {
            assert_eq!((s.inuse_objects, s.samples), (1, 1), "a holder site");
            assert!(site_has(s, "on_distinct_stack"));
            s.inuse_bytes
        })
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, (0..HOLDERS).map(|i| 1000 + i).collect::<Vec<_>>());
    let distinct: std::collections::HashSet<Vec<usize>> = holders
        .iter()
        .map(|s| s.frames().iter().map(|f| f.address).collect())
        .collect();
    assert_eq!(distinct.len(), HOLDERS as usize, "holders share frames");
    // The frame-less site holds the reclaimed stacks' totals, nothing live.
    let frameless = p1
        .sites()
        .iter()
        .find(|s| s.overflow)
        .expect("frame-less site");
    assert!(frameless.frames().is_empty());
    assert_eq!((frameless.inuse_objects, frameless.inuse_bytes), (0, 0));
    assert!(frameless.alloc_objects >= reclaimed);

    // Totals across the reclamation equal the exact counters (allocations in the window; the
    // profiler's own allocations are in neither).
    let d = p1.delta(&p0);
    let (ao, ab, _, _) = sum(&d);
    let (xo, xb) = (
        s1.alloc_objects - s0.alloc_objects,
        s1.alloc_bytes - s0.alloc_bytes,
    );
    println!("  (delta: {ao} objects, {ab} bytes; exact counters: {xo} objects, {xb} bytes)");
    assert_eq!((ao, ab), (xo, xb), "delta totals vs exact counters");
    // In use: the holders' blocks (and whatever else the window left live, like `keep`'s buffer).
    let (_, _, io, ib) = sum(&p1);
    let live = (s1.inuse_objects, s1.inuse_bytes);
    println!("  (in use: profile {io} objects, {ib} bytes; exact {live:?})");
    assert!(io >= HOLDERS && io <= live.0, "in-use objects {io}");
    drop(keep);
}

/// A delta whose earlier profile saw stacks that were then reclaimed does not count their
/// earlier allocations again.
fn delta_across_reclamation_counts_each_allocation_once() {
    heapsight::set_sample_rate(1);
    let s0 = heapsight::stats();
    let p0 = heapsight::profile_unsymbolized();
    // New stacks (bit patterns not used above), enough to reclaim every stack p0 saw.
    short_lived_stacks(SHORT_LIVED, 40_000);
    let s1 = heapsight::stats();
    heapsight::set_sample_rate(0);
    let p1 = heapsight::profile_unsymbolized();
    let (ao, ab, _, _) = sum(&p1.delta(&p0));
    let (xo, xb) = (
        s1.alloc_objects - s0.alloc_objects,
        s1.alloc_bytes - s0.alloc_bytes,
    );
    println!("  (delta: {ao} objects, {ab} bytes; exact counters: {xo} objects, {xb} bytes)");
    assert_eq!((ao, ab), (xo, xb));
}

fn main() {
    support::watchdog(300, "rel_lifecycle");
    support::run(&[
        (
            "live_stacks_keep_their_frames_after_200k_short_lived_ones",
            live_stacks_keep_their_frames_after_200k_short_lived_ones,
        ),
        (
            "delta_across_reclamation_counts_each_allocation_once",
            delta_across_reclamation_counts_each_allocation_once,
        ),
    ]);
}
