//! 10,000 sampled sites from real calls, for the dump benchmarks (`benches/dump.rs`,
//! `examples/lock_hold.rs`): `step` walks 14 levels, going through `left` or `right` by the bits
//! of a path number, and allocates at the bottom; at rate 1 every allocation is sampled, so every
//! path is its own site.
#![allow(clippy::vec_box)] // each leaf allocation must be its own heap block: `Vec<Box<_>>`

use std::hint::black_box;

pub const SITES: u32 = 10_000;
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

/// Samples one live block at each of [`SITES`] sites, then turns sampling off; the blocks are
/// returned to be kept alive.
pub fn setup() -> Vec<Box<[u8; 64]>> {
    let mut live = Vec::with_capacity(SITES as usize);
    heapsight::set_sample_rate(1);
    for path in 0..SITES {
        step(path, DEPTH, &mut live);
    }
    heapsight::set_sample_rate(0);
    live
}
