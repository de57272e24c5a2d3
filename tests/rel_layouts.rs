//! Guarantee 13: the inner allocator sees one layout per block for its whole life. Sampled blocks
//! are asked of it with a raised alignment (so that a free can recognise them by address; see
//! `filter`): their free and realloc must pass that same layout back, and a realloc that changes
//! whether the block is a sample moves it (allocate, copy, free) with its contents intact.
//!
//! The global allocator is `HeapSight<Strict>`: `Strict` forwards to `System` and keeps every
//! live block's layout in a fixed table (no allocation), counting any free or realloc whose
//! layout differs from the one the block was allocated with.
use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};
use std::sync::Mutex;

use heapsight::HeapSight;

mod support;

const CAP: usize = 1 << 18;
/// Open addressing: address (0 = empty, 1 = deleted) and the layout it was allocated with.
static TABLE: Mutex<[(usize, usize, usize); CAP]> = Mutex::new([(0, 0, 0); CAP]);
static MISMATCHES: AtomicU64 = AtomicU64::new(0);
static OVERFLOW: AtomicU64 = AtomicU64::new(0);
/// Inner allocations whose alignment was raised to 4 KiB or more above the caller's 8.
static RAISED: AtomicUsize = AtomicUsize::new(0);

fn home(p: usize) -> usize {
    ((p as u64 >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 46) as usize
}

fn remember(p: usize, l: Layout) {
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut i = home(p);
    for _ in 0..CAP {
        if t[i].0 <= 1 {
            t[i] = (p, l.size(), l.align());
            return;
        }
        i = (i + 1) % CAP;
    }
    OVERFLOW.fetch_add(1, Relaxed);
}

/// Forgets `p`, counting a mismatch if it was allocated with another layout.
fn forget(p: usize, l: Layout) {
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut i = home(p);
    for _ in 0..CAP {
        match t[i].0 {
            0 => break,
            q if q == p => {
                if (t[i].1, t[i].2) != (l.size(), l.align()) {
                    MISMATCHES.fetch_add(1, Relaxed);
                }
                t[i].0 = 1;
                return;
            }
            _ => i = (i + 1) % CAP,
        }
    }
    // Not found: allocated before the table was in use is impossible here, so a mismatch.
    MISMATCHES.fetch_add(1, Relaxed);
}

struct Strict;

// SAFETY: forwards every call to `System` unchanged; the bookkeeping takes a futex lock, does not
// allocate and does not touch the blocks.
unsafe impl GlobalAlloc for Strict {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's layout.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            if l.align() >= 4096 {
                RAISED.fetch_add(1, Relaxed);
            }
            remember(p as usize, l);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's layout.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            if l.align() >= 4096 {
                RAISED.fetch_add(1, Relaxed);
            }
            remember(p as usize, l);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        forget(p as usize, l);
        // SAFETY: the caller's block and layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: the caller's block, layout and size.
        let q = unsafe { System.realloc(p, l, n) };
        if !q.is_null() {
            forget(p as usize, l);
            // SAFETY: `n` rounded to `l.align()` fits (the caller's guarantee).
            remember(q as usize, unsafe {
                Layout::from_size_align_unchecked(n, l.align())
            });
        }
        q
    }
}

#[global_allocator]
static GLOBAL: HeapSight<Strict> = HeapSight::new(Strict);

/// Allocates, grows, shrinks, zero-allocates and frees blocks of many sizes, checking contents
/// across every realloc (sampled ones are moved).
fn churn(rounds: usize) {
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

fn at_rate(rate: u64) -> Result<(), String> {
    heapsight::set_sample_rate(rate);
    let s0 = heapsight::stats();
    let raised0 = RAISED.load(Relaxed);
    churn(20_000);
    let s1 = heapsight::stats();
    let samples = s1.samples - s0.samples;
    let raised = RAISED.load(Relaxed) - raised0;
    println!("  rate {rate}: {samples} samples, {raised} inner allocations at 4 KiB alignment");
    if MISMATCHES.load(Relaxed) != 0 || OVERFLOW.load(Relaxed) != 0 {
        return Err(format!(
            "{} frees or reallocs with another layout than the block's ({} table overflows)",
            MISMATCHES.load(Relaxed),
            OVERFLOW.load(Relaxed)
        ));
    }
    if samples == 0 {
        return Err("nothing sampled: the check tested nothing".into());
    }
    if rate >= 512 * 1024 && raised == 0 {
        return Err("no sample was given the raised alignment".into());
    }
    Ok(())
}

fn main() {
    let mut r = support::Runner::new();
    r.check_ok("default_rate_raises_sample_alignment", || {
        at_rate(512 * 1024)
    });
    r.check_ok("rate_64k", || at_rate(64 * 1024));
    r.check_ok("rate_4096", || at_rate(4096));
    r.check_ok("rate_1", || at_rate(1));
    r.check_ok("back_to_default", || at_rate(512 * 1024));
    r.finish();
}
