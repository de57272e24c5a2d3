//! Reentrancy and locks: at sample rate 1, with `profile()` running concurrently on another thread,
//! nothing deadlocks (a watchdog aborts a hang) and none of the profiler's own allocations is
//! counted as the program's.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use heapsight::HeapSight;

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

mod support;

/// Aborts the process if the test has not finished by `limit`: a hang detector, not a timing
/// assertion (the test takes a few seconds; the limit is minutes).
fn watchdog(limit: Duration) -> Arc<AtomicBool> {
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    thread::spawn(move || {
        let start = Instant::now();
        while !d.load(Ordering::Relaxed) {
            if start.elapsed() > limit {
                eprintln!("watchdog: no progress after {limit:?}: deadlock");
                std::process::abort();
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
    done
}

fn profiler_allocations_are_not_counted() {
    heapsight::set_sample_rate(1);
    // Some samples so the profile has content to copy, symbolize and drop.
    let keep: Vec<Vec<u8>> = (0..1000).map(|i| vec![0; i]).collect();
    let _warm = heapsight::profile();
    drop(_warm);
    let before = heapsight::stats();
    let p = heapsight::profile();
    assert!(p.sites().len() > 1);
    let live = p.live_samples();
    drop(p);
    let after = heapsight::stats();
    assert!(live >= 1000, "{live}");
    assert_eq!(
        after.alloc_objects, before.alloc_objects,
        "profile() allocations counted as the program's"
    );
    assert_eq!(
        after.free_objects, before.free_objects,
        "profile() frees counted as the program's"
    );
    assert!(after.profiler_bytes > 0);
    drop(keep);
}

fn concurrent_profiles_at_rate_1() {
    heapsight::set_sample_rate(1);
    let done = watchdog(Duration::from_secs(300));
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let dumper = thread::spawn(move || {
        let mut n = 0;
        while !s.load(Ordering::Relaxed) {
            let p = heapsight::profile();
            n += p.sites().len().min(1);
            let _ = heapsight::stats();
        }
        n
    });
    let workers: Vec<_> = (0..3)
        .map(|t| {
            thread::spawn(move || {
                let mut keep = Vec::new();
                for i in 0..60_000usize {
                    let mut v = Vec::with_capacity(8 + i % 300);
                    v.push(t as u8);
                    if i % 3 == 0 {
                        keep.push(v);
                    }
                    if keep.len() > 500 {
                        keep.drain(..250);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let dumps = dumper.join().unwrap();
    done.store(true, Ordering::Relaxed);
    assert!(dumps > 0);
    heapsight::set_sample_rate(heapsight::DEFAULT_SAMPLE_RATE);
}

fn main() {
    support::run(&[
        (
            "profiler_allocations_are_not_counted",
            profiler_allocations_are_not_counted,
        ),
        (
            "concurrent_profiles_at_rate_1",
            concurrent_profiles_at_rate_1,
        ),
    ]);
}
