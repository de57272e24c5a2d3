//! Guarantee 6 (depth): a 1,000-frame stack is truncated to the configured depth (leaf-most
//! frames kept), not crashed, with either unwinder, on the main thread and on a thread with a
//! 256 KiB stack; `set_max_depth` clamps to 256.
use std::hint::black_box;

use heapsight::{HeapSight, Unwinder};

mod support;

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

#[inline(never)]
fn deep(levels: usize, size: usize) -> usize {
    if levels == 0 {
        return deep_leaf(size);
    }
    let n = deep(levels - 1, size);
    black_box(n) + 1
}

#[inline(never)]
fn deep_leaf(size: usize) -> usize {
    let v = vec![1u8; size];
    black_box(&v).len()
}

/// Samples per `deep_leaf` site, keyed by the site's return addresses.
fn deep_sites() -> std::collections::HashMap<Vec<usize>, (u64, usize)> {
    let p = heapsight::profile();
    p.sites()
        .iter()
        .filter(|s| support::site_has(s, "deep_leaf"))
        .map(|s| {
            (
                s.frames().iter().map(|f| f.address).collect(),
                (s.samples, s.frames().len()),
            )
        })
        .collect()
}

fn deep_stacks_are_truncated() {
    heapsight::set_sample_rate(1);
    for unwinder in [Unwinder::Auto, Unwinder::Dwarf] {
        heapsight::set_unwinder(unwinder);
        for (asked, depth) in [(128, 128), (256, 256), (1_000_000, 256), (64, 64)] {
            heapsight::set_max_depth(asked);
            assert_eq!(heapsight::max_depth(), depth);
            let before = deep_sites();
            assert_eq!(deep(1000, 1000), 2000);
            // And on a thread with a small stack.
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(|| deep(1000, 1000))
                .unwrap()
                .join()
                .unwrap();
            // The sites whose sample count grew are this run's.
            let grown: Vec<usize> = deep_sites()
                .into_iter()
                .filter(|(k, (n, _))| before.get(k).is_none_or(|(b, _)| n > b))
                .map(|(_, (_, len))| len)
                .collect();
            assert!(
                !grown.is_empty(),
                "{unwinder:?} depth {depth}: sample not found"
            );
            assert!(
                grown.iter().all(|&len| len == depth),
                "{unwinder:?}: stacks of 1,000 frames kept {grown:?} frames, not {depth}"
            );
        }
    }
    heapsight::set_unwinder(Unwinder::Auto);
    heapsight::set_max_depth(128);
}

fn main() {
    support::watchdog(120, "rel_depth");
    support::run(&[("deep_stacks_are_truncated", deep_stacks_are_truncated)]);
}
