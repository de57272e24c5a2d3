//! Guarantee: the reported peak is a bound. `peak_inuse_bytes` is never above the true peak by
//! more than the other threads' unflushed frees (each below 64 KiB, `counters::FREE_FLUSH`),
//! whatever readers run meanwhile, and never below a peak made of blocks larger than the
//! sampling countdown (those always flush).
//!
//! Each run is a child process (a fresh peak): three threads each hold at most one 8 MiB block,
//! all three at once at every round (a barrier), while two threads read `stats()` without pause
//! and two more burn CPU so that readers are preempted mid-read. True peak: the in-use bytes at
//! the start plus 24 MiB. Checked on both sides in every run. Global allocator:
//! `HeapSight<Strict>` (tests/support/strict.rs).
use std::alloc::{alloc, dealloc, Layout};
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::Barrier;

use heapsight::HeapSight;

#[path = "support/strict.rs"]
mod strict;
mod support;

use strict::Strict;

#[global_allocator]
static GLOBAL: HeapSight<Strict> = HeapSight::new(Strict::system());

const BLOCK: usize = 8 << 20;
const HOLDERS: usize = 3;
const ROUNDS: usize = 400;
const RUNS: usize = 12;
const CHILD: &str = "HEAPSIGHT_REL_PEAK_CHILD";

/// One run: prints `peak over`/`under` figures; exits non-zero if a side of the bound fails.
fn one_run() -> Result<(), String> {
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(HOLDERS);
    let layout = Layout::from_size_align(BLOCK, 8).unwrap();
    // Every thread exists before the baseline (their set-up allocates).
    let ready = Barrier::new(HOLDERS + 4 + 1);
    let start = std::thread::scope(|s| {
        let holders: Vec<_> = (0..HOLDERS)
            .map(|_| {
                s.spawn(|| {
                    drop(std::hint::black_box(Box::new(0u8)));
                    ready.wait();
                    for _ in 0..ROUNDS {
                        // SAFETY: nonzero size; freed below with the same layout.
                        let p = std::hint::black_box(unsafe { alloc(layout) });
                        assert!(!p.is_null());
                        // All three blocks are live between these two waits.
                        barrier.wait();
                        // SAFETY: allocated above.
                        unsafe { dealloc(p, layout) };
                        barrier.wait();
                    }
                })
            })
            .collect();
        for reader in 0..4 {
            let (stop, ready) = (&stop, &ready);
            s.spawn(move || {
                drop(std::hint::black_box(Box::new(0u8)));
                ready.wait();
                let mut x = 0u64;
                while !stop.load(Relaxed) {
                    if reader < 2 {
                        x = x.wrapping_add(heapsight::stats().peak_inuse_bytes);
                    } else {
                        x = x.wrapping_mul(31).wrapping_add(1);
                    }
                }
                std::hint::black_box(x);
            });
        }
        let s0 = heapsight::stats();
        let start = s0.inuse_bytes.max(s0.peak_inuse_bytes);
        ready.wait();
        for h in holders {
            h.join().unwrap();
        }
        stop.store(true, Relaxed);
        start
    });
    let end = heapsight::stats();
    let true_peak = start + (HOLDERS * BLOCK) as u64;
    // Above: the other threads' unflushed frees, each below 64 KiB, plus this binary's own
    // thread set-up allocations (the holders' first `Box`, thread names), well below 64 KiB.
    let over_bound = (HOLDERS + 4 + 1) as u64 * 64 * 1024 + 64 * 1024;
    let over = end.peak_inuse_bytes as i64 - true_peak as i64;
    println!(
        "peak {} true {} over {over:+}",
        end.peak_inuse_bytes, true_peak
    );
    if over > over_bound as i64 {
        return Err(format!(
            "peak {} is {over} bytes above the true peak {true_peak} (bound {over_bound})",
            end.peak_inuse_bytes
        ));
    }
    if end.peak_inuse_bytes < true_peak - 64 * 1024 * (HOLDERS as u64) {
        return Err(format!(
            "peak {} is below the true peak {true_peak} made of 8 MiB blocks",
            end.peak_inuse_bytes
        ));
    }
    strict::check()?;
    Ok(())
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        match one_run() {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1)
            }
        }
    }
    support::watchdog(600, "rel_peak");
    let mut r = support::Runner::new();
    r.check_ok("peak_is_a_bound_under_load_with_readers", || {
        let mut worst = i64::MIN;
        for run in 0..RUNS {
            let out = support::rerun_with_env(&[(CHILD, std::ffi::OsStr::new("1"))], &[]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                return Err(format!("run {run}: {text}"));
            }
            if let Some(o) = text.split("over ").nth(1) {
                worst = worst.max(o.trim().trim_start_matches('+').parse().unwrap_or(0));
            }
        }
        println!("\n  {RUNS} runs, largest overshoot {worst:+} bytes");
        Ok(())
    });
    r.finish();
}
