//! Guarantee 4: panics that unwind through allocating code, allocation (and profiling) inside a
//! panic hook, and `Drop` code that allocates while unwinding neither break the exact counters
//! nor deadlock, with every allocation sampled, with both unwinders, while another thread takes
//! profiles.
use std::hint::black_box;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

use heapsight::{HeapSight, Unwinder};

mod support;
use support::{assert_back_to, assert_sites_freed, exact};

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

static HOOK_CALLS: AtomicU64 = AtomicU64::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

/// A panic hook that allocates, reads the counters and takes a profile. Silent for the test's own
/// panics ("boom").
fn install_allocating_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("{info}");
        if !msg.contains("boom") {
            // Not one of the test's own panics: a failed assertion; say what it was.
            eprintln!("{msg}");
        }
        let copies: Vec<String> = vec![msg; 4];
        black_box(&copies);
        black_box(heapsight::stats());
        let p = heapsight::profile();
        black_box(p.sites().len());
        HOOK_CALLS.fetch_add(1, SeqCst);
    }));
}

/// Allocates when dropped, i.e. during unwinding.
struct AllocOnDrop(Vec<u8>);
impl Drop for AllocOnDrop {
    fn drop(&mut self) {
        let s = format!("dropping {} bytes", self.0.len());
        black_box(s);
    }
}

#[inline(never)]
fn allocate_then_panic(depth: usize, tag: usize) -> usize {
    let here = AllocOnDrop(vec![depth as u8; 32 + depth * 8]);
    let name = format!("level {depth}");
    if depth == 0 {
        panic!("boom {tag}");
    }
    let n = allocate_then_panic(depth - 1, tag);
    black_box((&here, &name));
    n + 1
}

fn with_profiler_thread(f: impl FnOnce()) {
    STOP.store(false, SeqCst);
    std::thread::scope(|s| {
        let profiler = s.spawn(|| {
            while !STOP.load(SeqCst) {
                drop(black_box(heapsight::profile()));
                std::thread::yield_now();
            }
        });
        f();
        STOP.store(true, SeqCst);
        // Join explicitly: `scope` alone waits for the closure, not for the thread's exit (its
        // thread-local destructors free memory after), which would race with the counters.
        profiler.join().unwrap();
    });
}

fn panics_unwinding_through_allocating_code() {
    install_allocating_hook();
    // Warm-up: the first panic and the first thread spawn set things up that stay in std.
    let _ = catch_unwind(|| allocate_then_panic(2, 0));
    with_profiler_thread(|| ());
    for unwinder in [Unwinder::Auto, Unwinder::Dwarf] {
        heapsight::set_unwinder(unwinder);
        for rate in [1, 4096] {
            heapsight::set_sample_rate(rate);
            let base = exact();
            let hooks0 = HOOK_CALLS.load(SeqCst);
            with_profiler_thread(|| {
                for i in 0..200 {
                    let r = catch_unwind(AssertUnwindSafe(|| allocate_then_panic(20, i)));
                    let payload = r.expect_err("should have panicked");
                    assert_eq!(
                        payload.downcast_ref::<String>().map(String::as_str),
                        Some(&*format!("boom {i}"))
                    );
                }
            });
            assert_eq!(HOOK_CALLS.load(SeqCst) - hooks0, 200);
            assert_back_to(base, format_args!("{unwinder:?}, rate {rate}"));
        }
    }
    heapsight::set_unwinder(Unwinder::Auto);
    heapsight::set_sample_rate(1);
    let p = heapsight::profile();
    assert!(
        assert_sites_freed(&p, "allocate_then_panic") >= 1,
        "never sampled"
    );
}

fn panicking_threads() {
    heapsight::set_sample_rate(1);
    let base = exact();
    for round in 0..50 {
        let handles: Vec<_> = (0..4)
            .map(|t| std::thread::spawn(move || allocate_then_panic(10, round * 4 + t)))
            .collect();
        for h in handles {
            // The payload (a String made by the panicking thread) is freed here, by another
            // thread, after its owner exited.
            assert!(h.join().is_err());
        }
    }
    assert_back_to(base, "panicking threads");
}

fn main() {
    support::watchdog(120, "rel_panic");
    support::run(&[
        (
            "panics_unwinding_through_allocating_code",
            panics_unwinding_through_allocating_code,
        ),
        ("panicking_threads", panicking_threads),
    ]);
}
