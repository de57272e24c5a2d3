//! `later.delta(&earlier)`: the allocations made between two snapshots.
//!
//! Site-table counters only grow (`allocs`, `frees` per bucket), so the allocations between two
//! snapshots are per-bucket differences of raw counts, unbiased afresh with the bucket's weight
//! (exact: one bucket has one size and one rate). In-use is the later snapshot's: what is live at
//! its end, wherever it was allocated. Lifetimes are the per-stack differences: blocks freed in
//! between. The overflow bucket of mixed sizes has only weighted sums, so its difference is taken
//! on the estimates. A stack the site table reclaimed between the two snapshots moved its counts
//! into that bucket: its earlier counts are taken out of the bucket's difference (they were
//! made before `earlier`), and its earlier lifetimes out of the frame-less site's row.
use std::collections::HashMap;

use crate::owned::Owned;
use crate::sites::{estimates, Bucket, Estimates, FxBuild};
use crate::snapshot::HeapProfile;

/// A bucket's identity across two profiles: stack addresses, tag, size, rate.
type Key = (Vec<usize>, u32, u64, u64);

fn key(p: &HeapProfile, r: &Bucket) -> Key {
    (
        p.stacks[r.stack].iter().map(|f| f.address).collect(),
        r.tag,
        r.size,
        r.rate,
    )
}

pub(crate) fn delta(later: &HeapProfile, earlier: &HeapProfile) -> HeapProfile {
    let before: HashMap<Key, &Bucket, FxBuild> = earlier
        .buckets
        .iter()
        .map(|r| (key(earlier, r), r))
        .collect();
    let stack_addrs = |p: &HeapProfile, i: usize| -> Vec<usize> {
        p.stacks[i].iter().map(|f| f.address).collect()
    };
    let earlier_stack: HashMap<Vec<usize>, usize, FxBuild> = (0..earlier.stacks.len())
        .map(|i| (stack_addrs(earlier, i), i))
        .collect();

    // Buckets of `earlier` that `later` no longer has: reclaimed stacks, whose counts are now in
    // the overflow bucket (and lifetimes in stack 0's row).
    let later_keys: std::collections::HashSet<Key, FxBuild> =
        later.buckets.iter().map(|r| key(later, r)).collect();
    let later_stacks: std::collections::HashSet<Vec<usize>, FxBuild> = (0..later.stacks.len())
        .map(|i| stack_addrs(later, i))
        .collect();
    let mut gone = (0u64, 0u64, 0f64, 0f64);
    for r in &earlier.buckets {
        if !r.is_overflow() && !later_keys.contains(&key(earlier, r)) {
            gone.0 += r.allocs;
            gone.1 += r.frees;
            gone.2 += r.est.alloc_objects;
            gone.3 += r.est.alloc_bytes;
        }
    }
    let mut gone_row = [0u32; crate::sites::LIFE_BINS];
    for (i, row) in &earlier.lifetimes {
        if *i != 0 && !later_stacks.contains(&stack_addrs(earlier, *i)) {
            for (g, n) in gone_row.iter_mut().zip(row) {
                *g = g.saturating_add(*n);
            }
        }
    }
    let mut buckets = Vec::new();
    for r in &later.buckets {
        let overflow = r.is_overflow();
        let old = before.get(&key(later, r));
        let (old_allocs, old_frees) = old.map_or((0, 0), |o| (o.allocs, o.frees));
        let (old_allocs, old_frees) = if overflow {
            (old_allocs + gone.0, old_frees + gone.1)
        } else {
            (old_allocs, old_frees)
        };
        let allocs = r.allocs - old_allocs.min(r.allocs);
        let est = if overflow {
            // The overflow bucket: weighted sums only.
            let (ao, ab) = old.map_or((0.0, 0.0), |o| (o.est.alloc_objects, o.est.alloc_bytes));
            let (ao, ab) = (ao + gone.2, ab + gone.3);
            Estimates {
                alloc_objects: (r.est.alloc_objects - ao).max(0.0),
                alloc_bytes: (r.est.alloc_bytes - ab).max(0.0),
                ..r.est
            }
        } else {
            let fresh = estimates(r.size, r.rate, allocs, 0);
            Estimates {
                alloc_objects: fresh.alloc_objects,
                alloc_bytes: fresh.alloc_bytes,
                ..r.est
            }
        };
        if allocs == 0 && est.inuse_objects <= 0.0 && est.alloc_objects <= 0.0 {
            continue;
        }
        let frees = r.frees - old_frees.min(r.frees);
        buckets.push(Bucket {
            allocs,
            frees,
            est,
            ..*r
        });
    }
    let lifetimes = later
        .lifetimes
        .iter()
        .filter_map(|(i, row)| {
            let old = earlier_stack
                .get(&stack_addrs(later, *i))
                .and_then(|&j| earlier.lifetime_row(j));
            let mut out = *row;
            if let Some(old) = old {
                for (o, e) in out.iter_mut().zip(old) {
                    *o = o.saturating_sub(*e);
                }
            }
            if *i == 0 {
                for (o, e) in out.iter_mut().zip(&gone_row) {
                    *o = o.saturating_sub(*e);
                }
            }
            out.iter().any(|&n| n != 0).then_some((*i, out))
        })
        .collect();
    let mut p = HeapProfile {
        time_nanos: later.time_nanos,
        duration_nanos: later.time_nanos.saturating_sub(earlier.time_nanos).max(0),
        rate: later.rate,
        stats: later.stats,
        stacks: later.stacks.clone(),
        buckets: buckets.into(),
        sites: Owned::default(),
        symbolized: later.symbolized,
        live_samples: later.live_samples,
        overflow_samples: later
            .overflow_samples
            .saturating_sub(earlier.overflow_samples),
        symbol_cache_bytes: later.symbol_cache_bytes,
        symbol_notes: later.symbol_notes.clone(),
        notes: later.notes.clone(),
        tag_names: later.tag_names.clone(),
        tag_labels: later.tag_labels.clone(),
        lifetimes: Owned::new(lifetimes),
        sites_by_tag: Owned::default(),
    };
    p.assemble();
    p
}
