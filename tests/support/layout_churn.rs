//! The layout churn of `rel_layouts` and `rel_jemalloc`: blocks of many sizes allocated, grown,
//! shrunk, zero-allocated and freed through the global allocator (`HeapSight<Strict<_>>`), with
//! contents checked across every realloc, then `strict::check()`. Include with
//! `#[path = "support/layout_churn.rs"] mod layout_churn;` next to `mod strict;`.
use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};

use super::strict;

/// Allocates, grows, shrinks, zero-allocates and frees blocks of many sizes, checking contents
/// across every realloc (sampled ones are moved).
pub fn churn(rounds: usize) {
    let mut live: Vec<(*mut u8, Layout, u8)> = Vec::with_capacity(4096);
    let mut x = 0x2545_F491u64;
    for round in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let size = 1 + (x % 20_000) as usize;
        let l = Layout::from_size_align(size, 8).unwrap();
        let tag = round as u8;
        // SAFETY: every block is used within its layout and freed once with the layout it has.
        unsafe {
            let p = if round % 5 == 0 {
                alloc_zeroed(l)
            } else {
                alloc(l)
            };
            assert!(!p.is_null());
            if round % 5 == 0 {
                assert!((0..size).all(|i| *p.add(i) == 0), "alloc_zeroed not zero");
            }
            p.write_bytes(tag, size);
            live.push((p, l, tag));
            if live.len() > 2000 || round % 3 == 0 {
                let k = (x as usize >> 8) % live.len();
                let (p, l, tag) = live.swap_remove(k);
                if round % 2 == 0 {
                    dealloc(p, l);
                } else {
                    let n = 1 + (x >> 20) as usize % 40_000;
                    let q = realloc(p, l, n);
                    assert!(!q.is_null());
                    let kept = l.size().min(n);
                    assert!(
                        (0..kept).all(|i| *q.add(i) == tag),
                        "realloc lost the contents"
                    );
                    let nl = Layout::from_size_align(n, 8).unwrap();
                    q.write_bytes(tag, n);
                    live.push((q, nl, tag));
                }
            }
        }
    }
    for (p, l, tag) in live {
        // SAFETY: as above.
        unsafe {
            assert!((0..l.size()).all(|i| *p.add(i) == tag));
            dealloc(p, l);
        }
    }
}

pub fn at_rate(rate: u64) -> Result<(), String> {
    heapsight::set_sample_rate(rate);
    let s0 = heapsight::stats();
    let raised0 = strict::allocs_aligned_at_least(4096);
    churn(20_000);
    let s1 = heapsight::stats();
    let samples = s1.samples - s0.samples;
    let raised = strict::allocs_aligned_at_least(4096) - raised0;
    println!("  rate {rate}: {samples} samples, {raised} inner allocations at 4 KiB alignment");
    strict::check()?;
    if samples == 0 {
        return Err("nothing sampled: the check tested nothing".into());
    }
    if rate >= 512 * 1024 && raised == 0 {
        return Err("no sample was given the raised alignment".into());
    }
    Ok(())
}
